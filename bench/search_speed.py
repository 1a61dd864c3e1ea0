"""`s` against bytes.find on the same bytes, and over a sparse 4 GiB range (issue 23, part 2).

    python bench/search_speed.py [--dir /tmp/kdshell-bench] [--runs 3] [--old /path/to/other/checkout]

On bench/machines.py's 64 GiB machine (DumpType 5, built in --dir when missing):
- dense: `s -q` for a value that is not there over the 64 MiB contiguous kernel region, repeated
  --repeat times, against `bytes.find` over the same bytes already in memory (the ceiling);
- sparse: `s -q` over the 4 GiB of kernel address space holding the machine's 16 K scattered
  pages (most PDEs and PTEs empty).
Each number is the median of --runs fresh processes (open excluded, imports excluded), run
alternately with --old's checkout when given; peak RSS (VmHWM) of the process. Run by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPARSE_BASE = 0xFFFF_B000_0000_0000  # fixtures/machine/large.py: 16 K pages over 4 GiB from here

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import kdshell, kdshell.session, kdshell.commands
info = json.loads(open(sys.argv[2]).read())
s = kdshell.open(info['path'], image_path='', symbol_path='')
s.progress = None
va0, size = info['sequential']
repeat = int(sys.argv[3])
mem = s.spaces.space(info['dtb'])
out = {}
data = mem.read(va0, size)
t = time.perf_counter()
for _ in range(repeat):
    data.find(b'\xde\xad\xbe\xef\x01\x02\x03\x04')
out['find_mbs'] = size * repeat / (time.perf_counter() - t) / 1e6
del data
t = time.perf_counter()
for _ in range(repeat):
    text = s.capture(f's -q {va0:x} L?{size:x} 0403020104030201')
out['s_mbs'] = size * repeat / (time.perf_counter() - t) / 1e6
t = time.perf_counter()
text = s.capture(f's -q {int(sys.argv[4]):x} L?100000000 0403020104030201')
out['sparse_s'] = time.perf_counter() - t
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
out['hwm_mb'] = int(hwm) / 1024
print(json.dumps(out))
"""


def child(repo: Path, meta: Path, repeat: int) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(repo), str(meta), str(repeat), str(SPARSE_BASE)],
                       capture_output=True, text=True, cwd="/")
    if r.returncode:
        raise SystemExit(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/tmp/kdshell-bench")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=8, help="searches of the 64 MiB region per process")
    ap.add_argument("--old", help="another checkout, run alternately")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    sys.path.insert(0, str(REPO))
    from machines import bench_machine

    info = bench_machine(args.dir, "bitmap5", 64, 1 << 20, quiet=True)
    meta = Path(args.dir) / "search-speed.json"
    meta.write_text(json.dumps({k: info[k] for k in ("path", "dtb", "sequential")}))
    repos = {"this": REPO} | ({"old": Path(args.old)} if args.old else {})
    results: dict[str, list[dict]] = {k: [] for k in repos}
    for _ in range(args.runs):
        for name, repo in repos.items():
            results[name].append(child(repo, meta, args.repeat))
    print(f"{os.cpu_count()} cores (shared); median of {args.runs} processes, run alternately")
    print(f"{'checkout':<6} {'bytes.find':>12} {'s (64 MiB)':>12} {'ratio':>6} {'s over 4 GiB sparse':>20} {'RSS':>7}")
    for name, rows in results.items():
        med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
        print(f"{name:<6} {med('find_mbs'):>8.0f} MB/s {med('s_mbs'):>7.0f} MB/s {med('s_mbs') / med('find_mbs'):>5.2f}x "
              f"{med('sparse_s'):>18.3f} s {max(r['hwm_mb'] for r in rows):>5.0f}MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
