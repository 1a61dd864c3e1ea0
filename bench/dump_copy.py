""".dump /f against `cp` on dense, sparse and fragmented complete dumps (issue 23, part 1).

    python bench/dump_copy.py [--dir /tmp/kdshell-dumpcopy] [--runs 3] [--old /path/to/other/checkout]

Sources (built once in --dir, bitmap dumps, DumpType 5; their page data written straight into the
file, holes left as holes):
- dense:      2 GiB of non-zero pages (a PFN stamp and a pattern) in runs of 1-256 over a 64 GiB map;
- sparse:     a 32 GiB machine with every page present (8 M pages), every 1024th page stamped
              and the rest zero: a 32 GiB file of holes, as Windows writes a mostly idle machine;
- fragmented: 1.5 M single-page runs (every other PFN of a 12 GiB map), every 1024th stamped.

Each row: the best and median of --runs of `cp --sparse=auto SRC DST` + fsync, and of
`.dump /f DST` in a fresh process (open + command, imports excluded), measured alternately in
one run (the machine is shared: ratios, not absolute times); peak RSS (VmHWM) of the kdshell
process. With --old, another checkout (e.g. main's code) runs the same command and its output is
compared byte for byte with this one's. Run by hand; never part of CI.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = 4096


class _FilePages:
    """A FileSource (kdshell.dumpfile.write) over a raw page file: page i of the file is the
    i-th present page in PFN order."""

    def __init__(self, path: Path, runs: list[tuple[int, int]]) -> None:
        self.runs = runs
        self.fd = os.open(path, os.O_RDONLY)
        self.count = sum(n for _, n in runs)

    def present_runs(self) -> list[tuple[int, int]]:
        return self.runs

    def page(self, pfn: int) -> bytes:
        raise NotImplementedError

    def page_count(self) -> int:
        return self.count

    def present_bitmap(self) -> None:
        return None

    def fileno(self) -> int:
        return self.fd

    def file_extents(self, runs: object) -> list[tuple[int, int]]:
        return [(0, self.count * PAGE)]


def build(path: Path, runs: list[tuple[int, int]], stamp_every: int, dense: bool) -> None:
    sys.path.insert(0, str(REPO))
    from kdshell.dumpfile.write import DumpHeaderFields, make_context_amd64, write_bitmap

    raw = path.with_suffix(".raw")
    count = sum(n for _, n in runs)
    with open(raw, "wb") as f:
        f.truncate(count * PAGE)
        if dense:
            body = bytes(range(256)) * 16
            chunk = bytearray()
            done = 0
            for first, n in runs:
                for pfn in range(first, first + n):
                    chunk += pfn.to_bytes(8, "little") + body[8:]
                    if len(chunk) >= 8 << 20:
                        f.write(chunk)
                        done += len(chunk)
                        chunk = bytearray()
            f.write(chunk)
        else:
            i = 0
            for first, n in runs:
                for pfn in range(first - first % stamp_every + (stamp_every if first % stamp_every else 0),
                                 first + n, stamp_every):
                    f.seek((i + pfn - first) * PAGE)
                    f.write(pfn.to_bytes(8, "little") * 512)
                i += n
    fields = DumpHeaderFields(build=19041, number_processors=2, bugcheck_code=0xE2, directory_table_base=0x1AD000,
                              context=make_context_amd64(rip=0xFFFFF80000001000, rsp=0xFFFFF80000200000))
    src = _FilePages(raw, runs)
    try:
        write_bitmap(path, fields, src, 5, overwrite=True)
    finally:
        os.close(src.fd)
        raw.unlink()


def sources(d: Path) -> dict[str, tuple[Path, object]]:
    import random

    rng = random.Random(23)
    dense, pfn = [], 0x100
    while sum(n for _, n in dense) < (2 << 30) // PAGE:
        n = rng.randint(1, 256)
        dense.append((pfn, n))
        pfn += n + rng.randint(1, 1800)
    return {
        "dense": (d / "dense-2g.dmp", lambda p: build(p, dense, 1, True)),
        "sparse": (d / "sparse-32g.dmp", lambda p: build(p, [(1, (32 << 30) // PAGE - 1)], 1024, False)),
        "fragmented": (d / "frag-1.5m.dmp", lambda p: build(p, [(2 * i + 1, 1) for i in range(1_500_000)], 1024,
                                                           False)),
    }


CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import kdshell, kdshell.session, kdshell.commands, kdshell.export.convert  # imports are not timed
t = time.perf_counter()
s = kdshell.open(sys.argv[2], image_path='', symbol_path='')
s.progress = None
ok = s.run('.dump /f ' + sys.argv[3])
dt = time.perf_counter() - t
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(json.dumps({'s': dt, 'ok': ok, 'hwm_mb': int(hwm) / 1024}))
"""


def run_kdshell(repo: Path, src: Path, dst: Path) -> dict:
    if dst.exists():
        dst.unlink()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD, str(repo), str(src), str(dst)], capture_output=True, text=True,
                       env=env, cwd="/")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if not out["ok"]:
        raise SystemExit(f".dump /f failed: {r.stdout}{r.stderr}")
    return out


def run_cp(src: Path, dst: Path) -> float:
    if dst.exists():
        dst.unlink()
    t = time.perf_counter()
    subprocess.run(["cp", "--sparse=auto", str(src), str(dst)], check=True)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - t


def same_content(a: Path, b: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(a), str(b)]).returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/kdshell-dumpcopy")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--old", help="another checkout to run the same .dump /f (one run) and compare outputs")
    ap.add_argument("--old-skip", help="sources not to run --old on (e.g. sparse: main's code maps 21 GB)")
    ap.add_argument("--only", help="comma-separated: dense,sparse,fragmented")
    ap.add_argument("--keep", action="store_true", help="keep the sources (default: delete them at the end)")
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    todo = sources(d)
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
          f"Python {platform.python_version()}; {args.runs} runs each, alternated; times: best / median")
    print(f"{'source':<11} {'file':>9} {'on disk':>9} {'cp+fsync':>17} {'.dump /f':>17} {'ratio':>6} {'RSS':>7}"
          + "  =source" + ("  old .dump /f, same bytes" if args.old else ""))
    for name, (path, make) in todo.items():
        if not path.exists():
            t = time.perf_counter()
            make(path)
            print(f"  built {path.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        st = os.stat(path)
        cps, ours, hwm = [], [], 0.0
        for _ in range(args.runs):
            cps.append(run_cp(path, d / "cp.out"))
            r = run_kdshell(REPO, path, d / "new.out")
            ours.append(r["s"])
            hwm = max(hwm, r["hwm_mb"])
        line = (f"{name:<11} {st.st_size / 2**30:>7.1f}G {st.st_blocks * 512 / 2**30:>7.2f}G "
                f"{min(cps):>7.3f}/{statistics.median(cps):<7.3f}s {min(ours):>7.3f}/{statistics.median(ours):<7.3f}s "
                f"{statistics.median(ours) / statistics.median(cps):>5.2f}x {hwm:>5.0f}MB")
        line += "  " + ("yes" if same_content(path, d / "new.out") else "no ")
        if args.old and name not in (args.old_skip or "").split(","):
            r = run_kdshell(Path(args.old), path, d / "old.out")
            line += f"  {r['s']:.2f} s, {r['hwm_mb']:.0f} MB, {'same' if same_content(d / 'old.out', d / 'new.out') else 'DIFFERENT'}"
            (d / "old.out").unlink()
        print(line, flush=True)
        for f in ("cp.out", "new.out"):
            (d / f).unlink(missing_ok=True)
        if not args.keep:
            path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
