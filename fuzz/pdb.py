"""Fuzz target: the PDB reader (MSF, info, DBI, publics/globals/module symbols, OMAP, TPI/IPI),
the `dt` renderer over the types it decodes, and the local-variable records `dv` reads.

One input is a whole PDB file, opened from bytes (PdbFile(data=...)); a SymbolFileError (or
another KdError, e.g. a field-path error) is a clean answer. Then: every symbol, address
lookups around the symbols, wildcard searches, and -- picked by the input's hash, so the cost
per input stays bounded on PDBs with thousands of types -- up to 40 type records decoded,
up to 12 named types rendered (with and without memory behind them, recursing 3 levels), and
the locals of up to 8 functions found and placed in a made-up frame.

Seeds: the corpus's Microsoft PDBs (amdppm, user32) and the fixture PDBs built by clang/lld.
"""
from __future__ import annotations

import hashlib
import random

from fuzz import seeds as _seeds
from fuzz.engine import u32

NAME = "pdb"
TIMEOUT = 20.0


def seeds() -> list[tuple[str, bytes]]:
    return _seeds.pdbs()


def HOT(data: bytes) -> list[tuple[int, int]]:
    """The superblock, the stream directory and the first bytes of the first streams."""
    hot = [(0, 0x60)]
    bs = u32(data, 0x20)
    if bs in (512, 1024, 2048, 4096):
        block_map = u32(data, 0x34) * bs
        if 0 < block_map < len(data):
            hot.append((block_map, block_map + 0x40))
            first_dir = u32(data, block_map) * bs
            if 0 < first_dir < len(data):
                hot.append((first_dir, min(len(data), first_dir + bs)))
                count = u32(data, first_dir)
                if 0 < count < 64:  # the first block of streams 1-4 (info, TPI, DBI, IPI)
                    sizes = [u32(data, first_dir + 4 + 4 * i) for i in range(count)]
                    pos = first_dir + 4 + 4 * count
                    for i, size in enumerate(sizes[:5]):
                        if size == 0xFFFFFFFF:
                            continue
                        nblocks = -(-size // bs)
                        if i > 0 and nblocks:
                            blk = u32(data, pos) * bs
                            if 0 < blk < len(data):
                                hot.append((blk, min(len(data), blk + 0x100)))
                        pos += 4 * nblocks
    return hot


def one_input(data: bytes) -> None:
    from kdshell.symbols.locals import locate, procedure_at
    from kdshell.symbols.pdb import PdbFile
    from kdshell.symbols.typeformat import DtOptions, render

    rng = random.Random(hashlib.sha1(data).digest())
    with PdbFile(data=data) as pdb:
        pdb.key, pdb.age, pdb.pointer_size, pdb.warnings
        syms = pdb.all_symbols
        pdb.publics
        for s in syms[:: max(1, len(syms) // 50)] or []:
            pdb.lookup(s.rva)
            pdb.symbol_at(s.rva + 1)
            pdb.neighbors(s.rva)
            pdb.function_bounds(s.rva)
            pdb.module_of(s.rva)
            pdb.address_of(s.name)
            pdb.symbol_type(s)
        for rva in (0, 0x1000, 0xFFFFFFFF, rng.randrange(1 << 32)):
            pdb.symbol_at(rva)
            pdb.lookup(rva)
        pdb.symbols("*a*")
        pdb.symbols("Ke*")
        pdb.section_contributions
        tpi = pdb.tpi
        if tpi.end > tpi.begin:
            span = range(tpi.begin, tpi.end)
            for ti in rng.sample(span, min(40, len(span))):
                pdb.type_by_index(ti)
        names = pdb.names()
        for name in rng.sample(names, min(12, len(names))):
            t = pdb.find(name)
            if t is None:
                continue
            render(t, options=DtOptions(recurse=3))
            render(t, 0x1000, lambda a, n: bytes(n), options=DtOptions(blocks=True, recurse=2))
        pdb.names("*_E*")
        functions = [s for s in syms if s.kind == "function" and s.module >= 0]
        frame = {"rsp": 0x10000, "rbp": 0x10100, "rcx": 1, "esp": 0x10000, "ebp": 0x10100, "vframe": 0x10100}
        for s in rng.sample(functions, min(8, len(functions))):
            proc = procedure_at(pdb, s.rva)
            for var in proc.variables if proc is not None else ():
                locate(proc, var, frame, s.rva + 1, 8)
        return f"{min(len(syms), 9)}:{min(len(names), 9)}:{len(pdb.warnings)}"
