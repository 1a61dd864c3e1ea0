"""The benchmark machines: the test machines' large mode (fixtures/machine/large.py) plus one
contiguous kernel region for sequential virtual reads, written as every physical dump kind.

    from machines import bench_machine
    info = bench_machine("/tmp/kdshell-bench", kind="kernel", total_gib=64, present_pages=1 << 20)
    info["path"], info["dtb"], info["translations"], info["sequential"]   # (va, size) of the region

Files are cached in the directory (keyed by kind, machine size and present pages) with a JSON
sidecar holding what the benchmarks need; a rebuild happens only when the sidecar is missing or
its format changed. Kinds: "kernel" (DumpType 6), "bitmap5" (5), "rdmp8" (8), "complete" (1:
every RAM page of the machine, almost all of it holes -- about a minute for 64 GiB).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: fixtures.machine

FORMAT = 2  # bump when the machine changes: cached files are rebuilt
SEQUENTIAL_VA = 0xFFFF_C000_0000_0000
KINDS = ("kernel", "bitmap5", "rdmp8", "complete")


def _name(kind: str, total_gib: int, present_pages: int, sequential_mib: int) -> str:
    return f"bench-{total_gib}g-{present_pages}-{sequential_mib}m-{kind}"


def bench_machine(directory, kind: str = "kernel", total_gib: int = 64, present_pages: int = 1 << 20,
                  sequential_mib: int = 64, quiet: bool = False) -> dict:
    """Build (or reuse) a large machine's dump; returns its facts (see the module docstring)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = _name(kind, total_gib, present_pages, sequential_mib)
    path, meta = directory / f"{stem}.dmp", directory / f"{stem}.json"
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
        if info.get("format") == FORMAT and info.get("size") == path.stat().st_size:
            info["translations"] = [tuple(t) for t in info["translations"]]
            info["runs"] = [tuple(r) for r in info["runs"]]
            return info
    t0 = time.perf_counter()
    info = _write(path, kind, total_gib, present_pages, sequential_mib)
    info.update(format=FORMAT, size=path.stat().st_size, build_s=round(time.perf_counter() - t0, 1))
    meta.write_text(json.dumps(info))
    if not quiet:
        print(f"  built {path.name} ({info['size'] / 2**30:.0f} GiB sparse, {info['build_s']} s)", file=sys.stderr)
    return info


def _write(path: Path, kind: str, total_gib: int, present_pages: int, sequential_mib: int) -> dict:
    from fixtures.machine.large import PresentPages, large_machine
    from fixtures.machine.pagetables import KERNEL_RW, NX
    from kdshell.dumpfile.write import (DumpHeaderFields, make_context_amd64, make_exception, write_bitmap,
                                        write_full, write_rdmp)

    mem, runs, tables, system, user, translations = large_machine(total_gib, present_pages)
    # A contiguous kernel region on present frames, each page stamped with its VA: what a
    # sequential read (`.writemem`, `s`, `db L?`) walks through.
    pages = sequential_mib * 256
    for i in range(pages):
        va = SEQUENTIAL_VA + i * 0x1000
        pfn = tables.frames.alloc()
        tables.map(system, va, pfn << 12, KERNEL_RW | NX)
        mem.write(pfn << 12, va.to_bytes(8, "little") + pfn.to_bytes(8, "little"))
    fields = DumpHeaderFields(
        build=19041, number_processors=8, bugcheck_code=0xE2, directory_table_base=system.dtb,
        ps_loaded_module_list=0xFFFFF80000008000, ps_active_process_head=0xFFFFF80000008010,
        context=make_context_amd64(rip=0xFFFFF80000001000, rsp=0xFFFFF80000200000),
        exception=make_exception(0x80000003, 0xFFFFF80000001000, flags=1),
        physical_memory_runs=mem.runs if kind != "complete" else None,
    )
    present = PresentPages(mem, runs)
    if kind == "complete":
        write_full(path, fields, mem, overwrite=True)
        runs = list(mem.runs)
    elif kind in ("kernel", "bitmap5"):
        write_bitmap(path, fields, present, 6 if kind == "kernel" else 5,
                     bit_count=-(-(mem.highest_pfn + 1) // 64) * 64, overwrite=True)
    elif kind == "rdmp8":
        write_rdmp(path, fields, present, 8, overwrite=True)
    else:
        raise ValueError(f"unknown bench machine kind {kind!r}")
    kernel = [t for t in translations if t[0] >= 1 << 63]  # the System DTB's; the last 256 are user
    return dict(path=str(path), kind=kind, total_gib=total_gib, dtb=system.dtb, user_dtb=user.dtb,
                present_pages=sum(n for _, n in runs), runs=runs, translations=kernel,
                sequential=(SEQUENTIAL_VA, sequential_mib << 20))


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="build the benchmark machines' dumps")
    ap.add_argument("--dir", default="/tmp/kdshell-bench")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--gib", type=int, default=64)
    ap.add_argument("--present", type=int, default=1 << 20)
    a = ap.parse_args()
    for k in a.kinds.split(","):
        i = bench_machine(a.dir, k, a.gib, a.present)
        print(i["path"], i["size"], i.get("build_s"))
