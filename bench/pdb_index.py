"""PDB open/index speed and address -> symbol lookups, kdshell beside `symbolic` when installed.

    python bench/pdb_index.py [--lookups 10000] [--repeat 5] [PDB ...]

Default PDBs: the corpus's real Microsoft PDBs ($KDSHELL_CORPUS/symbols, default ../shared/corpus)
and the fixture PDBs.
For each: time to open (superblock, directory, info, DBI), to build the address index (publics,
globals, module symbols; first `symbol_at`), to decode every type record, and the mean time of
random RVA -> (name, displacement) lookups. With `symbolic` (PyPI; not a dependency) installed,
the same lookups through its symcache, and how often both name the same
symbol start where kdshell's answer is code (symbolic indexes functions only).
Best of --repeat runs (the first run of each file is also shown: cold page cache, first import).
Run by hand; not part of CI.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kdshell.symbols.pdb import PdbFile  # noqa: E402
from tests.fetch_corpus import corpus_dir  # noqa: E402


def default_pdbs() -> list[Path]:
    """The corpus's PDBs ($KDSHELL_CORPUS, as the tests read it) and the fixtures'; says on
    stderr when the corpus has none instead of leaving its rows out silently."""
    corpus = sorted((corpus_dir() / "symbols").glob("*.pdb/*/*.pdb"))
    if not corpus:
        print(f"no corpus PDBs under {corpus_dir() / 'symbols'}: set KDSHELL_CORPUS (the tests' setting) "
              "to the corpus directory to get their rows", file=sys.stderr)
    fixtures = sorted((REPO / "fixtures" / "images" / "bin").glob("*.pdb"))
    return corpus + fixtures


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


def bench_kdshell(path: Path, lookups: int, repeat: int, rng_seed: int):
    opens, indexes, firsts = [], [], None
    for i in range(repeat):
        t0 = time.perf_counter()
        pdb = PdbFile(path)
        t1 = time.perf_counter()
        pdb.symbol_at(0)
        t2 = time.perf_counter()
        opens.append(t1 - t0)
        indexes.append(t2 - t1)
        if i == 0:
            firsts = (t1 - t0, t2 - t1)
        if i < repeat - 1:
            pdb.close()
    syms = pdb.all_symbols
    t0 = time.perf_counter()
    for ti in range(pdb.tpi.begin, pdb.tpi.end):
        pdb.type_by_index(ti)
    pdb.names()
    types_time = time.perf_counter() - t0
    rng = random.Random(rng_seed)
    lo = syms[0].rva if syms else 0
    hi = (syms[-1].rva + 0x1000) if syms else 0x1000
    rvas = [rng.randrange(lo, hi) for _ in range(lookups)]
    t0 = time.perf_counter()
    answers = [pdb.symbol_at(r) for r in rvas]
    lookup_time = time.perf_counter() - t0
    answers = [None if a is None else (a[0], a[1], _is_code(pdb.lookup(r)[0]))
               for a, r in zip(answers, rvas)]
    info = dict(key=pdb.key, symbols=len(syms), types=pdb.type_count, open=min(opens),
                index=min(indexes), first=firsts, types_time=types_time,
                lookup=lookup_time / max(1, lookups), rvas=rvas, answers=answers)
    pdb.close()
    return info


def _is_code(sym) -> bool:
    return sym.kind == "function" or (sym.kind == "public" and bool(sym.flags & 2))


def bench_symbolic(path: Path, rvas: list[int], answers):
    try:
        import symbolic
    except ImportError:
        return None
    t0 = time.perf_counter()
    archive = symbolic.Archive.open(str(path))
    obj = next(iter(archive.iter_objects()))
    cache = obj.make_symcache()
    t1 = time.perf_counter()
    got = []
    for r in rvas:
        hit = cache.lookup(r)
        got.append(hit[-1].sym_addr if hit else None)  # last = outermost (not inlined)
    t2 = time.perf_counter()
    # symbolic indexes code only (a data address gets the last function before it), so
    # agreement is counted where kdshell's answer is code: a function or a function public.
    code = [(a, r, g) for a, r, g in zip(answers, rvas, got)
            if a is not None and g is not None and a[2]]
    same = sum(1 for a, r, g in code if r - a[1] == g)
    both = len(code)
    return dict(open=t1 - t0, lookup=(t2 - t1) / max(1, len(rvas)), same=same, both=both)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pdbs", nargs="*", type=Path)
    ap.add_argument("--lookups", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    pdbs = args.pdbs or default_pdbs()
    print(f"{'pdb':<16} {'KB':>6} {'syms':>6} {'types':>6} {'open ms':>8} {'index ms':>8} "
          f"{'cold ms':>8} {'types ms':>8} {'lookup us':>9} | {'symbolic ms':>11} "
          f"{'lookup us':>9} {'agree':>7}")
    for path in pdbs:
        k = bench_kdshell(path, args.lookups, args.repeat, 20261122)
        s = bench_symbolic(path, k["rvas"], k["answers"])
        cold = k["first"][0] + k["first"][1]
        line = (f"{path.name:<16} {path.stat().st_size // 1024:>6} {k['symbols']:>6} "
                f"{k['types']:>6} {ms(k['open'])} {ms(k['index'])} {ms(cold)} "
                f"{ms(k['types_time'])} {k['lookup'] * 1e6:9.2f} | ")
        if s is None:
            line += "(symbolic not installed)"
        else:
            agree = f"{100 * s['same'] / s['both']:6.1f}%" if s["both"] else "     -"
            line += f"{s['open'] * 1000:11.2f} {s['lookup'] * 1e6:9.2f} {agree}"
        print(line)


if __name__ == "__main__":
    main()
