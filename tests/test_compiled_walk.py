"""The compiled walk (kdshell/memory/_walk.c) against the Python walk it stands in for.

Paging.translate is the compiled Translator when setup.py could build it: it answers
translation-cache hits, kept last-level tables and walks through kept tables, and hands anything
else to Paging.translate_python. Here both answer the same addresses, in every paging mode, on
tables with 4 KiB and large pages, entries that are not valid (zero, transition, page file,
prototype), missing table pages and addresses that are not canonical: the same physical address
or the same PageNotPresent (message, level, span).
"""
from __future__ import annotations

import os
import random
import shutil
import sysconfig

import pytest

from kdshell.memory import paging as paging_module
from kdshell.memory.paging import ARM64, PAE, X64_4, X64_5, X86, PageNotPresent, Paging
from test_paging import KERNEL, PAGE, PS, V, Machine, paging_of

needs_compiled = pytest.mark.skipif(not paging_module.COMPILED,
                                    reason="the compiled walk is not built (no C compiler at install)")

A = 0x20  # accessed; with V and without bit 1: an ARM64 block descriptor


def _large_flags(mode) -> int:
    return V | A if mode is ARM64 else KERNEL | PS


def _machine(mode, seed: int) -> tuple[Machine, list[int], set[int]]:
    """A machine in `mode` with random 4 KiB pages, large pages and not-valid entries; the
    addresses to ask about (mapped, neighbours, holes, the not canonical); PFNs to leave missing."""
    rng = random.Random(seed)
    m = Machine(mode, dtb=0x185000 if mode is PAE else 0x1AD000)
    bits = mode.va_bits
    if bits == 32:
        regions = [0x80000000, 0x00400000, 0xC0000000]
    else:
        top = (1 << 64) - (1 << (bits - 1))
        regions = [top + 0x7804_0000_0000 % (1 << (bits - 1)), 0x7FF6_0000_0000 % (1 << (bits - 1)), top]
    asks: list[int] = []
    pfn = 0x10000
    for base in regions:
        for _ in range(60):
            va = base + rng.randrange(0, 1 << 28) // PAGE * PAGE
            kind = rng.random()
            if kind < 0.7:
                m.map(va, pfn)
                pfn += 1
            elif kind < 0.8:
                m.set(va, (0x6000 << 12) | 0x880)  # transition
                m.data(0x6000)
            elif kind < 0.9:
                m.set(va, (3 << 12) | (0x123 << 32 if mode.entry_size == 8 else 0) | (4 << 5))  # page file
            else:
                m.set(va, 0)
            asks += [va + rng.randrange(0, PAGE), va + PAGE, va - PAGE]
        # a large page at each level that can map one (not where 4 KiB pages are)
        for depth, level in enumerate(mode.levels):
            if level.large_mask is None:
                continue
            va = base + (1 << 29) + (depth << level.shift) + (1 << level.shift) * 4
            va &= ~((1 << level.shift) - 1)
            m.map_large(va, 0x40000000 & level.large_mask, depth, flags=_large_flags(mode))
            asks += [va + rng.randrange(0, 1 << level.shift), va]
    asks += [rng.randrange(0, 1 << 64) for _ in range(40)]  # mostly not canonical or unmapped
    asks += [-1, 1 << 64, (1 << 64) - 1, 0]
    tables = sorted(p for p in m.pages if 0x300 <= p < 0x1000)  # Machine's tables, in the order made
    missing = set(rng.sample(tables[2:], 3))  # mostly last-level tables, now and then an upper one
    return m, asks, missing


def _answer(p: Paging, translate, va: int):
    try:
        return translate(va)
    except PageNotPresent as e:
        return ("not present", e.why, e.level, e.entry, e.span, e.pfn)


@needs_compiled
@pytest.mark.parametrize("mode", [X64_4, X64_5, PAE, X86, ARM64], ids=lambda m: m.name)
def test_compiled_and_python_walks_agree(mode):
    for seed in range(3):
        m, asks, missing = _machine(mode, seed)
        compiled, _ = paging_of(m, missing=missing, compiled=True)
        python, _ = paging_of(m, missing=missing, compiled=False)
        assert type(compiled.translate).__name__ == "Translator"
        rng = random.Random(seed)
        for round_ in range(3):  # cold, then with tables and translations kept, then shuffled flushes
            order = asks[:]
            rng.shuffle(order)
            for va in order:
                if round_ == 2 and rng.random() < 0.2:
                    compiled.flush(tables=rng.random() < 0.5)
                want = _answer(python, python.translate, va)
                assert _answer(compiled, compiled.translate, va) == want, (mode.name, seed, hex(va & (1 << 64) - 1))


@needs_compiled
def test_compiled_walk_answers_kept_tables_itself(monkeypatch):
    """Once the tables are fetched, a flushed walk, a neighbour in a kept table and a cached
    translation never reach the Python walk (if they did, the compiled walk would buy nothing)."""
    calls = []
    python = Paging.translate_python
    monkeypatch.setattr(Paging, "translate_python", lambda self, va: calls.append(va) or python(self, va))
    m = Machine(X64_4)
    base = 0xFFFFF80400000000
    for i in range(64):
        m.map(base + i * 0x201000, 0x5000 + i)  # a page in each of 64 page tables
    m.map_large(0xFFFFF80600000000, 0x4000000, depth=2, flags=KERNEL | PS)
    p, _ = paging_of(m)
    want = {va: p.translate(va) for va in [base + i * 0x201000 + 8 for i in range(64)] + [0xFFFFF80600012345]}
    assert len(calls) == 65  # the first walk of each fetches its tables in Python
    calls.clear()
    for _ in range(2):
        p.flush(tables=True)
        assert {va: p.translate(va) for va in want} == want  # full walks through kept tables
        assert {va: p.translate(va) for va in want} == want  # cached translations
    assert calls == []
    with pytest.raises(PageNotPresent):
        p.translate(base + PAGE)  # a zero PTE in a kept table: Python names the entry
    assert calls == [base + PAGE]


@needs_compiled
def test_compiled_walk_is_freed_with_its_paging():
    """The Translator holds Paging.translate_python (a cycle): the collector frees both."""
    import gc
    import weakref

    m = Machine(X64_4)
    m.map(0xFFFFF80400000000, 0x5000)
    p, mem = paging_of(m)
    p.translate(0xFFFFF80400000000)
    gone = weakref.ref(p)
    del p, mem
    gc.collect()
    assert gone() is None


@needs_compiled
def test_compiled_walk_rejects_bad_arguments_in_one_line():
    m = Machine(X64_4)
    p, _ = paging_of(m)
    with pytest.raises(TypeError, match="exactly one positional argument"):
        p.translate()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        p.translate("ffff")  # type: ignore[arg-type]  # the Python walk's own TypeError
    t = type(p.translate)
    with pytest.raises(ValueError, match="levels"):
        t(tlb={}, leaves={}, tables={}, slow=print, top=0, levels=[], table_mask=0, entry_size=8,
          leaf_key_shift=21, canon_shift=47, canon_top=0, tlb_limit=1, leaves_limit=1)
    with pytest.raises(RuntimeError, match="not initialised"):
        t.__new__(t)(0)


def test_the_compiled_walk_is_built_where_a_compiler_is():
    """setup.py builds it whenever the install had a C compiler and Python's headers (it is
    optional: without them the install goes on and Paging uses the Python walk)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    headers = os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    if not (cc and headers):
        pytest.skip("no C compiler or no Python headers here: the Python walk alone is expected")
    assert paging_module.COMPILED, "a compiler is here but kdshell/memory/_walk.c was not built: pip install -e ."
