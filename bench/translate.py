"""Micro-benchmark: 1M virtual-to-physical translations and 8-byte reads, kdshell beside kdmp-parser.

    python bench/translate.py [--count 1000000] [--kind full|bitmap6]

Builds a synthetic x64 machine (4 KiB pages spread over many page tables, a few 2 MiB pages),
writes it with kdshell's own writer into a temporary directory, then times:
  - kdshell translate, warm   (translation cache hits: repeated addresses)
  - kdshell translate, cold   (cache flushed every call: a full 4-level walk from cached tables)
  - kdshell read(va, 8)       (warm)
  - kdmp-parser translate_virtual (C++ walk per call, through its Python binding)
Run by hand; nothing here is asserted (see DESIGN.md: bench/ is not CI).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from dumpfactory import write_kind  # noqa: E402
from test_paging import KERNEL, PS, Machine  # noqa: E402

import kdshell  # noqa: E402


def build(pages_4k: int = 4096) -> tuple[Machine, list[int]]:
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


def timed(label: str, fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    print(f"{label:<40} {n:>9,}  {dt:7.3f} s  {dt / n * 1e6:7.3f} us/op")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--kind", default="full", choices=["full", "bitmap5", "bitmap6"])
    args = ap.parse_args()
    n = args.count
    m, vas = build()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_kind(tmp, args.kind, m.bytes_pages(), directory_table_base=m.dtb)
        print(f"{args.kind} dump: {os.path.getsize(path) / 1e6:.1f} MB, {len(m.pages)} pages, "
              f"{len(vas)} mapped test addresses")
        seq = [vas[i % len(vas)] + (i * 8) % 0xE00 for i in range(n)]
        with kdshell.open(path) as s:
            mem = s.memory
            tr = mem.translate
            timed("kdshell translate (warm cache)", lambda: [tr(va) for va in seq], n)
            paging = mem.paging

            def cold():
                flush = paging.flush
                for va in seq:
                    flush()
                    tr(va)

            timed("kdshell translate (cold: walk each time)", cold, n)
            read = mem.read
            timed("kdshell read(va, 8) (warm)", lambda: [read(va, 8) for va in seq], n)
            print(f"  container page lookups: {s.pages.lookups:,} (table and data pages, cached after)")
        try:
            import kdmp_parser
        except ImportError:
            print("kdmp-parser is not installed: pip install kdmp-parser")
            return
        d = kdmp_parser.KernelDumpParser(path)
        tv = d.translate_virtual
        timed("kdmp-parser translate_virtual", lambda: [tv(va) for va in seq], n)
        for va in vas[:200]:  # and they agree
            assert tv(va) == s_translate(path, va), hex(va)
        print("kdshell and kdmp-parser agree on the first 200 addresses")


def s_translate(path, va):
    with kdshell.open(path) as s:
        return s.memory.translate(va)


if __name__ == "__main__":
    main()
