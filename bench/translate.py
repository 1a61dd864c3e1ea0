"""Micro-benchmark: 1M virtual-to-physical translations and 8-byte reads, kdshell beside kdmp-parser.

    python bench/translate.py [--count 1000000] [--kind full|bitmap5|bitmap6] [--volatility3]

Builds a synthetic x64 machine (4 KiB pages spread over many page tables, a few 2 MiB pages),
writes it with kdshell's own writer into a temporary directory, then times:
  - kdshell translate, warm   (translation cache hits: repeated addresses)
  - kdshell translate, cold   (caches flushed every call: a full 4-level walk from cached table pages)
  - kdshell translate, first touch (translations flushed, last-level tables kept)
  - kdshell read(va, 8)       (warm)
  - kdmp-parser translate_virtual (C++ walk per call, through its Python binding)
  - volatility3's Intel32e layer on its crash layer (with --volatility3; types 1 and 5 only)
Run by hand; nothing here is asserted (see DESIGN.md: bench/ is not CI). `measure` is also used
by bench/run_all.py on the large machines.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # bench/readers.py


def build(pages_4k: int = 4096):
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from test_paging import KERNEL, PS, Machine

    m = Machine(first_table_pfn=0x1000)
    vas = []
    base = 0xFFFFF80400000000
    rng = random.Random(7)
    for i in range(pages_4k):
        va = base + rng.randrange(0, 1 << 30) // 0x1000 * 0x1000  # spread over 512 page tables
        m.map(va, 0x10000 + i)
        vas.append(va)
    for i in range(8):
        va = 0xFFFFF80600000000 + i * 0x200000
        m.map_large(va, 0x4000000 + i * 0x200000, depth=2, flags=KERNEL | PS)
        m.data(0x4000 + i * 0x200)
        vas.append(va + 0x100)
    return m, vas


def addresses(vas: list[int], count: int) -> list[int]:
    """`count` addresses cycling through `vas`, each at a different offset in its page."""
    return [vas[i % len(vas)] + (i * 8) % 0xE00 for i in range(count)]


def measure(reader: str, path: str, seq: list[int], dtb: int | None = None, *, cold: bool = False,
            tables: bool = True,
            check: list[tuple[int, int]] = ()) -> dict:
    """Translate every address of `seq` with `reader` (bench/readers.py). `cold` flushes
    kdshell's translation cache before every call (kdshell only). `check` pairs (va, pa) must
    come out right. Returns seconds per translation and the open time."""
    from readers import import_reader, open_reader

    import_reader(reader)
    t0 = time.perf_counter()
    r = open_reader(reader, path, dtb)
    opened = time.perf_counter() - t0
    tr = r.translator()
    wrong = [(va, pa, tr(va)) for va, pa in check if tr(va) != pa]
    if wrong:
        va, pa, got = wrong[0]
        raise AssertionError(f"{reader}: {len(wrong)} wrong translations, e.g. {va:#x} -> {got} (expected {pa:#x})")
    if cold:
        flush = r.flusher()
        t = time.perf_counter()
        for va in seq:
            flush(tables)
            tr(va)
    elif reader == "kdmp-parser":  # as its documentation shows: translate_virtual(va, dtb), no wrapper
        tv, dtb0 = r.dump.translate_virtual, r.dtb
        t = time.perf_counter()
        for va in seq:
            tv(va, dtb0)
    else:
        t = time.perf_counter()
        for va in seq:
            tr(va)
    per = (time.perf_counter() - t) / max(1, len(seq))
    r.close()
    return {"open_s": opened, "per_op_s": per, "count": len(seq)}


def timed(label: str, fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    print(f"{label:<40} {n:>9,}  {dt:7.3f} s  {dt / n * 1e6:7.3f} us/op")
    return dt


def report(label: str, result: dict) -> None:
    n, per = result["count"], result["per_op_s"]
    print(f"{label:<40} {n:>9,}  {per * n:7.3f} s  {per * 1e6:7.3f} us/op")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--kind", default="full", choices=["full", "bitmap5", "bitmap6"])
    ap.add_argument("--volatility3", action="store_true", help="also time volatility3 (types 1 and 5)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from dumpfactory import write_kind

    import kdshell
    from kdshell.memory import paging

    n = args.count
    m, vas = build()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(write_kind(tmp, args.kind, m.bytes_pages(), directory_table_base=m.dtb))
        print(f"{args.kind} dump: {os.path.getsize(path) / 1e6:.1f} MB, {len(m.pages)} pages, "
              f"{len(vas)} mapped test addresses")
        seq = addresses(vas, n)
        with kdshell.open(path) as s:
            truth = [(va, s.memory.translate(va)) for va in vas[:200]]
        for reader, walk in (("kdshell", "compiled walk"), ("kdshell-python", "Python walk")):
            if reader == "kdshell" and not paging.COMPILED:
                print("kdshell's compiled walk is not built (no C compiler at install): pip install -e .")
                continue
            report(f"kdshell translate, {walk} (warm cache)", measure(reader, path, seq, check=truth))
            report(f"kdshell translate, {walk} (cold: walk each time)", measure(reader, path, seq, cold=True))
            report(f"kdshell translate, {walk} (first touch)", measure(reader, path, seq, cold=True, tables=False))
        paging.COMPILED = paging._CompiledTranslator is not None
        with kdshell.open(path) as s:
            read = s.memory.read
            timed("kdshell read(va, 8) (warm)", lambda: [read(va, 8) for va in seq], n)
            print(f"  container page lookups: {s.spaces.pages.lookups:,} (table and data pages, cached after)")
        try:
            import kdmp_parser  # noqa: F401
        except ImportError:
            print("kdmp-parser is not installed: pip install kdmp-parser")
        else:
            report("kdmp-parser translate_virtual", measure("kdmp-parser", path, seq, check=truth))
            print("kdshell and kdmp-parser agree on the first 200 addresses")
        if args.volatility3:
            from readers import VOL3_INSTALL, available

            if not available("volatility3"):
                print(f"volatility3 is not installed: {VOL3_INSTALL}")
            elif args.kind == "bitmap6":
                print("volatility3's crash layer reads DumpType 1 and 5 only")
            else:
                few = seq[: max(1, n // 10)]
                report("volatility3 Intel32e.translate", measure("volatility3", path, few, check=truth))


if __name__ == "__main__":
    main()
