"""Benchmark: `!analyze -v` (issue #8: under 1 s on the bundled sample).

    python bench/analyze.py [--repeat 20] [--dump FILE -y SYMPATH]

Rows (median and worst of --repeat runs, seconds):
  - cold              a new session per run: the dump opened, modules listed, symbols of the
                      stack's modules loaded, the analysis and its WinDbg text (what a user waits
                      for after `kdshell -z X -c "!analyze -v; q"`, minus interpreter start)
  - cold + banner     the same with the session banner first (which now runs the short analysis)
  - warm              the command again in the same session (symbols loaded, walker warm)
  - engine only       kdshell.analysis.analyze.analyze(session), warm: no text
  - process           `python -m kdshell -c "!analyze -v; q"` end to end, interpreter included

Without --dump it uses the bundled sample (kdshell/data/sample) and the real triage dump from the
corpus ($KDSHELL_CORPUS, default ../shared/corpus) with its symbol store when present. Run by
hand; nothing is asserted (DESIGN.md: bench/ is not CI).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import kdshell  # noqa: E402
from kdshell.analysis.analyze import analyze  # noqa: E402
from kdshell.cli import bundled_sample  # noqa: E402
from tests.fetch_corpus import corpus_dir  # noqa: E402

CORPUS = corpus_dir()  # $KDSHELL_CORPUS, default ../shared/corpus


def timed(func, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        out.append(time.perf_counter() - t0)
    return out


def row(name: str, times: list[float]) -> str:
    return f"  {name:<16} median {statistics.median(times):7.3f} s   worst {max(times):7.3f} s   (n={len(times)})"


def bench(dump: str, symbols: str, repeat: int) -> None:
    print(f"{Path(dump).name}  (-y {symbols or '(none)'})")

    def cold():
        with kdshell.open(dump, symbol_path=symbols, image_path=symbols) as s:
            s.progress = None
            s.capture("!analyze -v")

    def cold_banner():
        with kdshell.open(dump, symbol_path=symbols, image_path=symbols) as s:
            s.progress = None
            s.banner()
            s.capture("!analyze -v")

    print(row("cold", timed(cold, repeat)))
    print(row("cold + banner", timed(cold_banner, repeat)))
    with kdshell.open(dump, symbol_path=symbols, image_path=symbols) as s:
        s.progress = None
        s.capture("!analyze -v")
        print(row("warm", timed(lambda: s.capture("!analyze -v"), repeat)))
        print(row("engine only", timed(lambda: analyze(s), repeat)))
    cmd = [sys.executable, "-m", "kdshell", "--offline", "-z", dump, "-c", "!analyze -v; q"]  # no downloads timed
    if symbols:
        cmd[3:3] = ["-y", symbols]
    print(row("process", timed(lambda: subprocess.run(cmd, capture_output=True, check=True, cwd=REPO),
                               max(3, repeat // 4))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--dump")
    ap.add_argument("-y", dest="symbols", default="")
    args = ap.parse_args()
    if args.dump:
        bench(args.dump, args.symbols, args.repeat)
        return
    sample = bundled_sample()
    if sample is None:
        sys.exit("the bundled sample is not installed (kdshell/data/sample)")
    bench(sample[0], sample[1], args.repeat)
    triage = CORPUS / "dumps" / "triage-x64-19041-1000007e.dmp"
    if triage.exists():
        print()
        bench(str(triage), str(CORPUS / "symbols"), args.repeat)
        print()
        bench(str(triage), "", args.repeat)


if __name__ == "__main__":
    main()
