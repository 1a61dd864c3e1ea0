"""Open and page-read speed of bitmap kernel dumps, kdshell side by side with kdmp-parser.

    python bench/open_read.py [--present 1M,8M] [--reads 100000] [--dir /tmp/kdshell-bench]
                              [--large-machine]

Builds (once, cached in --dir) sparse DumpType 6 files of a 64 GiB machine with the given numbers
of present pages, then for each file and each reader, in a fresh subprocess: time to open (to a
first page read), peak resident memory, and the mean time of random physical page reads (each
read copies the page, so the data is really read). Prints a table with the kdmp-parser/kdshell
ratios. Run by hand; not part of CI. `measure` is also used by bench/run_all.py.

--large-machine builds the files with the test machines' large mode instead
(fixtures/machine/large.py: a PC memory map, real x64 page tables in the present pages, a
user address space), so the same files also serve translation benchmarks.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: fixtures.machine.large
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/readers.py

MACHINE_PFNS = 1 << 24  # 64 GiB
SEED = 20261122


def parse_count(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
    return int(text.rstrip("KM")) * mult


def present_runs(count: int) -> list[tuple[int, int]]:
    """Deterministic runs of present PFNs (lengths 1..512) spread over the 64 GiB machine."""
    rng = random.Random(SEED + count)
    runs, total = [], 0
    gap_mean = max(1, (MACHINE_PFNS - count) // max(1, count // 128))
    pfn = 0x100
    while total < count:
        length = min(rng.randint(1, 256), count - total)
        if pfn + length >= MACHINE_PFNS:
            break
        runs.append((pfn, length))
        total += length
        pfn += length + rng.randint(1, 2 * gap_mean)
    return runs


class SparsePages:
    """Present PFNs whose pages are zero except a stamp on every 1024th page (keeps the file sparse)."""

    def __init__(self, runs):
        self.runs = runs

    def present_runs(self):
        return self.runs

    def page(self, pfn: int) -> bytes:
        if pfn % 1024:
            return bytes(4096)
        return pfn.to_bytes(8, "little") * 512


def build(path: Path, count: int) -> None:
    from kdshell.dumpfile.header import DUMP_TYPE_BITMAP_KERNEL
    from kdshell.dumpfile.write import DumpHeaderFields, make_context_amd64, write_bitmap

    fields = DumpHeaderFields(
        build=19041, number_processors=8, bugcheck_code=0xE2, directory_table_base=0x1AD000,
        context=make_context_amd64(rip=0xFFFFF80000001000, rsp=0xFFFFF80000200000),
    )
    t = time.perf_counter()
    write_bitmap(path, fields, SparsePages(present_runs(count)), DUMP_TYPE_BITMAP_KERNEL,
                 bit_count=MACHINE_PFNS, overwrite=True)
    print(f"  built {path.name} in {time.perf_counter() - t:.1f} s", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# The measurement, run in a subprocess per (reader, file) so peak memory is the reader's own.

def sample_pfns(runs, reads: int, seed: int = SEED) -> list[int]:
    """`reads` PFNs drawn from the ends of the present runs (the same sample for every reader)."""
    rng = random.Random(seed)
    pfns = [pfn for first, count in runs for pfn in (first, first + count - 1)]
    return [rng.choice(pfns) for _ in range(reads)]


def measure(reader: str, path: str, reads: int, runs=None) -> dict:
    """Open `path` with `reader` (bench/readers.py), read a first page, then `reads` random
    present pages; time to open, mean read time, and the process's peak RSS so far."""
    from readers import import_reader, memory_mb, open_reader

    sample = sample_pfns(runs if runs is not None else present_runs_from_file(path), reads)
    import_reader(reader)  # imports are outside the timing: start-up has its own benchmark
    t0 = time.perf_counter()
    r = open_reader(reader, path)
    page = r.page
    page(sample[0])
    opened = time.perf_counter() - t0
    t1 = time.perf_counter()
    for pfn in sample:
        page(pfn)
    per_read = (time.perf_counter() - t1) / reads
    return {"open_s": opened, "read_us": per_read * 1e6, **memory_mb()}


def present_runs_from_file(path: str) -> list[tuple[int, int]]:
    count = int(Path(path).stem.split("-")[-1])
    if Path(path).stem.startswith("large64g"):
        from fixtures.machine.large import memory_map
        from fixtures.machine.large import present_runs as large_runs

        return large_runs(memory_map(64), count)
    return present_runs(count)


def build_large(path: Path, count: int) -> None:
    from fixtures.machine.large import write_large

    t = time.perf_counter()
    write_large(path, kind="kernel", total_gib=64, present_pages=count)
    print(f"  built {path.name} (large machine) in {time.perf_counter() - t:.1f} s", file=sys.stderr)


def run_child(reader: str, path: Path, reads: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", reader, str(path), str(reads)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


def baseline_mb() -> float:
    """Peak memory of a Python that imports both readers and opens nothing."""
    code = ("import sys; sys.path.insert(0, %r); import kdshell.session, kdshell.commands, kdmp_parser, readers; "
            "print(readers.memory_mb()['peak_mb'])" % str(Path(__file__).resolve().parent))
    return float(subprocess.check_output([sys.executable, "-c", code]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--present", default="1M,8M")
    ap.add_argument("--reads", type=int, default=100_000)
    ap.add_argument("--dir", default="/tmp/kdshell-bench")
    ap.add_argument("--large-machine", action="store_true",
                    help="build the files with fixtures/machine/large.py (real page tables)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        reader, path, reads = args.child
        print(json.dumps(measure(reader, path, int(reads))))
        return 0

    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    print(f"bitmap kernel dumps of a 64 GiB machine; {args.reads} random page reads; "
          f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"baseline interpreter + imports: {baseline_mb():.0f} MB peak")
    header = (f"{'present pages':>14} {'reader':>10} {'open (s)':>10} {'read (us)':>10} {'peak (MB)':>10} "
              f"{'anon (MB)':>10}")
    print(header)
    for text in args.present.split(","):
        count = parse_count(text)
        if args.large_machine:
            path = directory / f"large64g-{count}.dmp"
            if not path.exists():
                build_large(path, count)
        else:
            path = directory / f"bitmap64g-{count}.dmp"
            if not path.exists():
                build(path, count)
        results = {r: run_child(r, path, args.reads) for r in ("kdshell", "kdmp-parser")}
        for reader, r in results.items():
            print(f"{count:>14} {reader:>10} {r['open_s']:>10.4f} {r['read_us']:>10.2f} {r['peak_mb']:>10.0f} "
                  f"{r.get('anon_mb', 0):>10.0f}")
        k, p = results["kdshell"], results["kdmp-parser"]
        print(f"{'':>14} {'ratio':>10} {p['open_s'] / k['open_s']:>9.1f}x {p['read_us'] / k['read_us']:>9.1f}x "
              f"{p['peak_mb'] / k['peak_mb']:>9.1f}x   (kdmp-parser / kdshell: above 1 means kdshell is better)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
