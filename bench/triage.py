"""Benchmark: `kdshell triage` over a folder of small dumps (issue 22: at least 50 small dumps per
second per core, near-linear with cores).

    python bench/triage.py [--count 300] [--dir /tmp/kdshell-bench-triage] [--markdown FILE]

The folder holds --count small dumps written from the test machines (fixtures/machine: the seven
scenarios' small dumps, each copy with its own crash time in the header, so every file has its
own content and sha256). Rows (wall time of triage.run, in this process; imports excluded; the
CPU column is the workers' own CPU time per dump, record["triage"]["cpu_ms"], which a busy shared
machine does not inflate as it does the wall time):
  - 1 core          -j 1: every dump analysed in this process, one after another
  - all cores       -j N (N = os.cpu_count()): the process pool, its start-up included
  - LocalCluster 2  --cluster local:2: Dask, two worker processes, start-up included; and the
                    cluster's start-up and shut-down alone (what a fleet's long-lived cluster saves)
  - warm cache      the same folder again with the results cache filled by a first run
Nothing is asserted; run by hand (DESIGN.md: bench/ is not CI).
"""
from __future__ import annotations

import argparse
import os
import shutil
import struct
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("KDSHELL_OFFLINE", "1")   # no symbol server: the dumps' own modules only

from kdshell import triage  # noqa: E402

SCENARIOS = ("d1", "7e", "7e-plain", "3b", "e2", "50", "d1-x86")
FILETIME_2024 = 133_500_000_000_000_000  # 2024-01-18: crash times spread over the days after it
DAY = 864_000_000_000


def make_folder(root: Path, count: int) -> Path:
    from fixtures.machine.catalog import build_scenario

    folder = root / f"small-{count}"
    if folder.is_dir() and len(list(folder.glob("*.dmp"))) == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sources = {}
    for name in SCENARIOS:
        entry = build_scenario(name, root / "machines", kinds=["small"])
        sources[name] = Path(entry["dumps"]["small"]).read_bytes()
    for i in range(count):
        name = SCENARIOS[i % len(SCENARIOS)]
        data = bytearray(sources[name])
        at = 0xFA8 if data[4:8] == b"DU64" else 0xFC0  # DUMP_HEADER64/32 SystemTime
        struct.pack_into("<Q", data, at, FILETIME_2024 + (i * 7919 % 60) * DAY + i * 10_000_000)
        (folder / f"{i:04d}-{name}.dmp").write_bytes(bytes(data))
    return folder


def timed(label: str, folder: Path, options: triage.Options, rows: list[str], count: int, cores: int) -> float:
    t0 = time.perf_counter()
    records = triage.run([str(folder)], options)
    took = time.perf_counter() - t0
    failed = sum(1 for r in records if "error" in r)
    rate = count / took
    cpu = [r["triage"]["cpu_ms"] for r in records if r["triage"].get("cpu_ms") is not None and not r["triage"]["cached"]]
    per_core = f"{1000 * len(cpu) / sum(cpu):.0f}" if cpu and sum(cpu) else "-"
    rows.append(f"| {label} | {count} | {took:.2f} s | {rate:.0f} | {rate / cores:.0f} | {per_core} | {failed} failed |")
    print(rows[-1], flush=True)
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "kdshell-bench-triage"))
    p.add_argument("--markdown", help="also write the table to this file")
    args = p.parse_args()
    folder = make_folder(Path(args.dir), args.count)
    cores = os.cpu_count() or 1
    rows = ["| run | dumps | wall | dumps/s | dumps/s/core (wall) | dumps/s/core (CPU) | note |",
            "|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    triage.run([str(next(folder.glob("*.dmp")))], triage.Options(jobs=1, cache=""))  # imports, warm
    one = timed("1 core (-j 1)", folder, triage.Options(jobs=1, cache=""), rows, args.count, 1)
    many = timed(f"all cores (-j {cores}), pool start-up included", folder, triage.Options(jobs=cores, cache=""),
                 rows, args.count, cores)
    try:
        from distributed import Client, LocalCluster

        timed("LocalCluster 2 workers, start-up included", folder, triage.Options(cluster="local:2", cache=""),
              rows, args.count, 2)
        t0 = time.perf_counter()
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster):
            pass
        rows.append(f"| LocalCluster 2 workers: start-up and shut-down alone | - | {time.perf_counter() - t0:.2f} s "
                    "| - | - | - | no dumps |")
        print(rows[-1], flush=True)
    except ImportError:
        rows.append("| LocalCluster | - | - | - | - | - | distributed not installed |")
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "triage.sqlite")
        triage.run([str(folder)], triage.Options(jobs=cores, cache=db))
        timed("warm cache rerun (every file hashed, none analysed)", folder, triage.Options(jobs=cores, cache=db),
              rows, args.count, cores)
    rows.append("")
    rows.append(f"scaling: all cores / 1 core = {many / one:.2f} on {cores} cores")
    print(rows[-1])
    if args.markdown:
        Path(args.markdown).write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
