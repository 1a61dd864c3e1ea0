"""Run a fuzzing campaign on one target, by hand.

    python -m fuzz.run containers --minutes 10            # atheris if installed, else builtin
    python -m fuzz.run pdb --minutes 5 --engine builtin --seed 7
    python -m fuzz.run pe_unwind --runs 20000 --engine builtin
    python -m fuzz.run expressions --minutes 5 --out /tmp/kdshell-fuzz
    python -m fuzz.run --list

Targets: containers, pdb, pe_unwind, expressions (fuzz/<target>.py). Work files go to
--out/<target>/: the growing corpus (atheris), findings as <kind>-<sha1>.bin with a .txt
beside it (signature and traceback), their minimized forms under minimized/, and stats.json
(inputs tried, distinct bugs). A finding becomes a regression test by copying its minimized
input into tests/regressions/<target>/ and adding it to tests/regressions/MANIFEST.json (see
tests/regressions/README.md); tests/test_regressions.py replays them all.

Engines:
  atheris  libFuzzer with coverage feedback, kdshell's modules instrumented (pip install atheris;
           not a kdshell dependency). The target runs in a child process, restarted if libFuzzer
           stops it (out of memory: -rss_limit_mb); exceptions and hangs are caught and recorded
           by the harness wrapper so the campaign goes on after a finding.
  builtin  mutation of the seeds without coverage (fuzz/engine.py), in this process, with an
           address-space limit (--memory-mb) so unbounded memory becomes a finding.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TARGETS = ("containers", "pdb", "pe_unwind", "expressions")


def load(target: str):
    if target not in TARGETS:
        raise SystemExit(f"unknown target {target!r}: one of {', '.join(TARGETS)}")
    return importlib.import_module(f"fuzz.{target}")


def _import_all_kdshell() -> None:
    """Import every kdshell module (so atheris instruments them all, not only the eager ones)."""
    import kdshell

    for pkg in (kdshell,):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith(("__main__", ".repl")):
                continue
            try:
                importlib.import_module(info.name)
            except Exception as exc:  # noqa: BLE001 - a module that cannot import is reported, not fatal
                print(f"fuzz: cannot import {info.name}: {exc}", file=sys.stderr)


# -- atheris ---------------------------------------------------------------------------------------
def atheris_child(target: str, out: Path, libfuzzer_args: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["kdshell"]):
        _import_all_kdshell()
    from fuzz import engine

    harness = load(target)
    seen: set[str] = set()
    stats_file = out / f"stats-{os.getpid()}.json"
    state = {"inputs": 0, "bugs": 0, "last": time.monotonic()}
    for f in out.glob("*.txt"):  # findings of earlier runs: don't save them again
        first = f.read_text().split("\n", 1)[0]
        if ": " in first:
            seen.add(first.split(": ", 2)[1])

    def test_one_input(data: bytes) -> None:
        outcome, finding = engine.run_one(harness, data)
        state["inputs"] += 1
        if finding is not None and finding.signature not in seen:
            seen.add(finding.signature)
            state["bugs"] += 1
            path = engine.save_finding(finding, out)
            print(f"\nFINDING {finding.line()}  -> {path}", file=sys.stderr, flush=True)
        now = time.monotonic()
        if now - state["last"] > 2:
            state["last"] = now
            stats_file.write_text(json.dumps({"inputs": state["inputs"], "bugs": state["bugs"]}))

    atheris.Setup([sys.argv[0], *libfuzzer_args], test_one_input)
    try:
        atheris.Fuzz()
    finally:
        stats_file.write_text(json.dumps({"inputs": state["inputs"], "bugs": state["bugs"]}))


def run_atheris(target: str, seconds: float, out: Path, rss_mb: int, extra: list[str]) -> dict:
    harness = load(target)
    corpus, seed_dir = out / "corpus", out / "seeds"
    corpus.mkdir(parents=True, exist_ok=True)
    seed_dir.mkdir(parents=True, exist_ok=True)
    for name, data in harness.seeds():
        (seed_dir / name).write_bytes(data)
    for old in list(out.glob("stats-*.json")) + [out / "libfuzzer.log"]:
        if old.exists():
            old.unlink()
    start = time.monotonic()
    restarts = 0
    while True:
        left = int(seconds - (time.monotonic() - start))
        if left < 5:
            break
        cmd = [sys.executable, "-m", "fuzz.run", "--atheris-child", target, "--out", str(out.parent), "--",
               f"-max_total_time={left}", "-timeout=0", f"-rss_limit_mb={rss_mb}",
               f"-artifact_prefix={out}/", "-print_final_stats=1", *extra, str(corpus), str(seed_dir)]
        began = time.monotonic()
        with open(out / "libfuzzer.log", "a") as log:  # libFuzzer's chatter; findings print here too
            p = subprocess.run(cmd, cwd=REPO, stderr=log)
        if p.returncode == 0:
            break
        restarts += 1
        print(f"fuzz: libFuzzer stopped (exit {p.returncode}, see {out}/libfuzzer.log); restarting",
              file=sys.stderr)
        if restarts > 50 or time.monotonic() - began < 5:
            break
    # Inputs tried: libFuzzer's final count of each run (its log), else the wrapper's own count
    # (written every 2 s: a run stopped by the RSS limit has no final stats).
    import re

    log_text = (out / "libfuzzer.log").read_text(errors="replace") if (out / "libfuzzer.log").exists() else ""
    final = [int(n) for n in re.findall(r"stat::number_of_executed_units:\s*(\d+)", log_text)]
    counted = sum(json.loads(f.read_text())["inputs"] for f in out.glob("stats-*.json"))
    inputs = max(sum(final), counted)
    corpus_size = len(list(corpus.iterdir()))
    return {"inputs": inputs, "restarts": restarts, "seconds": round(time.monotonic() - start),
            "corpus": corpus_size}


# -- builtin -----------------------------------------------------------------------------------------
def run_builtin(target: str, seconds: float | None, runs: int | None, out: Path, seed: int,
                memory_mb: int) -> dict:
    from fuzz import engine

    harness = load(target)
    if memory_mb:
        engine.limit_memory(memory_mb)
    out.mkdir(parents=True, exist_ok=True)

    def found(finding):
        path = engine.save_finding(finding, out)
        engine.log(f"FINDING {finding.line()}  -> {path}")

    stats = engine.fuzz(harness, seconds=seconds, runs=runs, seed=seed, on_finding=found, log=engine.log)
    return {"inputs": stats.inputs, "answers": stats.answers, "clean_errors": stats.clean_errors,
            "outcomes": len(stats.outcomes), "seconds": round(stats.seconds)}


def minimize_findings(target: str, out: Path, seconds: float) -> list[dict]:
    from fuzz import engine

    harness = load(target)
    done = []
    (out / "minimized").mkdir(exist_ok=True)
    for path in sorted(out.glob("*.bin")):
        data = path.read_bytes()
        _, finding = engine.run_one(harness, data)
        if finding is None:
            done.append({"file": path.name, "reproduces": False})
            continue
        small = engine.minimize(harness, data, finding.signature, seconds=seconds)
        (out / "minimized" / path.name).write_bytes(small)
        done.append({"file": path.name, "signature": finding.signature, "size": len(data),
                     "minimized": len(small)})
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("target", nargs="?")
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--runs", type=int, default=None, help="builtin engine: stop after this many inputs")
    ap.add_argument("--engine", choices=("auto", "atheris", "builtin"), default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/kdshell-fuzz")
    ap.add_argument("--memory-mb", type=int, default=4096, help="address-space / RSS limit")
    ap.add_argument("--minimize-seconds", type=float, default=120, help="per finding, after the run")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--atheris-child", action="store_true", help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1:] if "--" in argv else []  # libFuzzer's own flags, after --
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = ap.parse_args(argv)
    if args.list:
        for t in TARGETS:
            print(f"{t:12} {load(t).__doc__.splitlines()[0]}")
        return 0
    if not args.target:
        ap.error("a target is needed (--list shows them)")
    out = Path(args.out) / args.target
    out.mkdir(parents=True, exist_ok=True)
    if args.atheris_child:
        atheris_child(args.target, out, rest)
        return 0
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "builtin"
    seconds = args.minutes * 60 if args.minutes is not None else (None if args.runs else 60)
    print(f"fuzz: {args.target} with {engine} for "
          f"{f'{seconds:.0f} s' if seconds else f'{args.runs} inputs'}; work files in {out}", file=sys.stderr)
    if engine == "atheris":
        stats = run_atheris(args.target, seconds or 60, out, args.memory_mb, rest)
    else:
        stats = run_builtin(args.target, seconds, args.runs, out, args.seed, args.memory_mb)
    stats["engine"] = engine
    stats["findings"] = minimize_findings(args.target, out, args.minimize_seconds)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
