"""Address translation on synthetic page tables of every mode, and against kdmp-parser.

`Machine` builds physical pages with real page tables (x64 4/5-level, PAE, non-PAE): 4 KiB,
2 MiB/4 MiB and 1 GiB pages, and any raw entry (transition, prototype, page file...) at any
level. Unit tests walk it through a fake page source; the dump tests write it with the product's
own writers (tests/dumpfactory.py) and compare with kdmp-parser's translate_virtual.
"""
from __future__ import annotations

import pytest

from dumpfactory import KDBG_VA64, page_bytes, write_kind
from kdshell.errors import MemoryNotPresent
from kdshell.memory import pte as P
from kdshell.memory.paging import PAE, X64_4, X64_5, X86, PageCache, PageNotPresent, Paging, SelfMap, guess_x64_levels
from kdshell.memory.physical import not_present_message
from kdshell.memory.virtual import TranslatedMemory

PAGE = 0x1000
V, W, U, A, D, PS, G = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80, 0x100
NX = 1 << 63
KERNEL = V | W | A | D  # 0x63, as !pte shows ---DA--KWEV


class Machine:
    """Physical memory with page tables, built the way the CPU (and Windows) reads them."""

    def __init__(self, mode=X64_4, dtb: int = 0x1AD000, first_table_pfn: int = 0x300):
        self.mode = mode
        self.dtb = dtb
        self.pages: dict[int, bytearray] = {}
        self._next = first_table_pfn
        self.page(dtb >> 12)

    # -- raw memory ------------------------------------------------------------------------
    def page(self, pfn: int) -> bytearray:
        if pfn not in self.pages:
            self.pages[pfn] = bytearray(PAGE)
        return self.pages[pfn]

    def alloc(self) -> int:
        pfn = self._next
        self._next += 1
        self.page(pfn)
        return pfn

    def write(self, pa: int, data: bytes) -> None:
        for i, b in enumerate(data):
            self.page((pa + i) >> 12)[(pa + i) & 0xFFF] = b

    def read_entry(self, pa: int) -> int:
        n = self.mode.entry_size
        return int.from_bytes(self.page(pa >> 12)[pa & 0xFFF : (pa & 0xFFF) + n], "little")

    def data(self, pfn: int, content: bytes | None = None) -> bytes:
        """Give a data page its (PFN-stamped by default) content."""
        content = page_bytes(pfn) if content is None else content.ljust(PAGE, b"\0")
        self.pages[pfn] = bytearray(content)
        return content

    # -- tables --------------------------------------------------------------------------
    def _table_flags(self, va: int, depth: int) -> int:
        if self.mode.name == "x86 PAE" and depth == 0:
            return V  # PDPTEs have no R/W, U/S, A or D bits
        user = U if va < (1 << (self.mode.va_bits - 1)) else 0
        return KERNEL | user

    def entry_address(self, va: int, depth: int) -> int:
        """Physical address of `va`'s entry at `depth` (0 = top), creating the tables above."""
        table = self.dtb & self.mode.dtb_mask
        levels = self.mode.levels
        for i, lv in enumerate(levels):
            epa = table + ((va >> lv.shift) & ((1 << lv.bits) - 1)) * self.mode.entry_size
            if i == depth:
                return epa
            e = self.read_entry(epa)
            if not e & V:
                e = (self.alloc() << 12) | self._table_flags(va, i)
                self.write(epa, e.to_bytes(self.mode.entry_size, "little"))
            table = e & self.mode.table_mask
        raise ValueError(depth)

    def set(self, va: int, value: int, depth: int | None = None) -> int:
        """Write a raw entry for `va` at `depth` (default: the PTE); returns its physical address."""
        depth = len(self.mode.levels) - 1 if depth is None else depth
        epa = self.entry_address(va, depth)
        self.write(epa, value.to_bytes(self.mode.entry_size, "little"))
        return epa

    def map(self, va: int, pfn: int, flags: int = KERNEL, nx: bool = False, content: bytes | None = None) -> int:
        self.set(va, (pfn << 12) | flags | (NX if nx else 0))
        if pfn not in self.pages or content is not None:
            self.data(pfn, content)
        return pfn

    def map_large(self, va: int, pa: int, depth: int, flags: int = KERNEL | PS) -> None:
        self.set(va, pa | flags, depth)

    def self_map(self, index: int) -> None:
        top = self.dtb & self.mode.dtb_mask
        self.write(top + index * 8, (top | KERNEL).to_bytes(8, "little"))

    def bytes_pages(self) -> dict[int, bytes]:
        return {pfn: bytes(p) for pfn, p in self.pages.items()}


class FakePhysical:
    """A page source over a Machine (what a dump container gives the paging layer)."""

    def __init__(self, machine: Machine, missing=()):
        self.machine = machine
        self.missing = set(missing)
        self.calls = 0

    def page(self, pfn: int):
        self.calls += 1
        if pfn in self.missing or pfn not in self.machine.pages:
            raise MemoryNotPresent(pfn << 12, not_present_message(pfn), physical=True)
        return memoryview(bytes(self.machine.pages[pfn]))


def paging_of(m: Machine, fmt: P.PteFormat | None = None, missing=(),
              compiled: bool | None = None) -> tuple[Paging, TranslatedMemory]:
    pages = PageCache(FakePhysical(m, missing))
    p = Paging(pages, m.dtb, m.mode, fmt or P.PteFormat(m.mode.pte_mode, 19041, 0), compiled=compiled)
    return p, TranslatedMemory(pages, p)


# -- x64 ----------------------------------------------------------------------------------------
K = 0xFFFFF8047BA00000  # a kernel address (PXE 0x1f0, PPE 0x11, PDE 0x1dd)


def test_x64_4k_page_translates_and_reads():
    m = Machine()
    m.map(K, 0x5000)
    p, mem = paging_of(m)
    assert p.translate(K + 0x123) == 0x5000123
    assert mem.read(K, 12) == page_bytes(0x5000)[:12]
    assert mem.read_pointer(K + 4) == 0x5000  # the PFN stamp of page_bytes


def test_reads_across_pages_and_the_tlb():
    m = Machine()
    m.map(K, 0x5000)
    m.map(K + PAGE, 0x7000)
    p, mem = paging_of(m)
    assert mem.read(K + PAGE - 4, 8) == page_bytes(0x5000)[-4:] + page_bytes(0x7000)[:4]
    calls = p.pages.physical.calls
    for _ in range(100):
        p.translate(K + 8)
    assert p.pages.physical.calls == calls  # cached translation, cached table pages
    m.map(K, 0x9000)  # the dump cannot change, but flush() must forget
    p.flush(tables=True)
    p.pages.clear()  # pages and kept tables
    assert p.translate(K) == 0x9000000


def test_last_level_table_cache_gives_the_walks_answers():
    """After one walk, a neighbour page is translated from the cached last-level table; what it
    gives (a page, or the walk's own error for an entry that is not valid) is the full walk's."""
    m = Machine()
    m.map(K, 0x5000)
    m.map(K + 2 * PAGE, 0x7000)
    p, _ = paging_of(m, compiled=False)  # the Python walk, watched (the compiled one: below)
    assert p.translate(K) == 0x5000000
    assert p._leaf_tables  # the PTE table of K, by its 2 MiB region
    p.flush()  # translations only: the table stays
    walks = []
    full = p._walk
    p._walk = lambda va, follow_prototype: walks.append(va) or full(va, follow_prototype)
    assert p.translate(K + 2 * PAGE + 0x10) == 0x7000010
    assert walks == []  # one entry read, no walk
    with pytest.raises(PageNotPresent) as e:
        p.translate(K + PAGE)  # a zero PTE: the full walk names the level
    assert e.value.level == "PTE" and walks == [K + PAGE]
    p.flush(tables=True)
    assert p.translate(K + 2 * PAGE) == 0x7000000 and walks[-1] == K + 2 * PAGE


def test_a_scan_meeting_an_empty_pte_reads_the_rest_of_its_table_without_walks():
    """runs() over 2 MiB whose first PTE is zero: the walk that says so keeps the table, and the
    other 511 entries come from it (one walk, not a walk and an exception per page)."""
    m = Machine()
    m.map(K + 100 * PAGE, 0x5000)
    p, _ = paging_of(m)
    walks = []
    full = p._walk
    p._walk = lambda va, follow_prototype, *rest: walks.append(va) or full(va, follow_prototype, *rest)
    pieces = [(va - K, isinstance(what, int), n) for va, what, n in p.runs(K, 0x200000)]
    assert pieces == [(0, False, 100 * PAGE), (100 * PAGE, True, PAGE), (101 * PAGE, False, 0x200000 - 101 * PAGE)]
    assert walks == [K]


@pytest.mark.parametrize("pat", [0, 1 << 12])
def test_x64_2mb_page_ignores_the_pat_bit(pat):
    m = Machine()
    va = 0xFFFFF80472400000
    m.map_large(va, 0x2000000 | pat, depth=2, flags=KERNEL | PS | G)
    p, _ = paging_of(m)
    assert p.translate(va + 0x1ABCDE) == 0x2000000 + 0x1ABCDE
    w = p.walk(va + 0x1ABCDE)
    assert w.large and [s.level.name for s in w.steps] == ["PXE", "PPE", "PDE"]


def test_x64_1gb_page():
    m = Machine()
    va = 0xFFFF800000000000
    m.map_large(va, 0x40000000, depth=1)
    p, _ = paging_of(m)
    assert p.translate(va + 0x3FFF_FFFF) == 0x7FFF_FFFF
    assert p.translate(va + 0x1234) == 0x40001234


def test_not_canonical_address():
    p, mem = paging_of(Machine())
    with pytest.raises(PageNotPresent, match="not a canonical 48-bit address"):
        mem.read(0x0000800000000000, 8)


def test_not_valid_entries_name_their_level():
    m = Machine()
    m.map(K, 0x5000)
    p, mem = paging_of(m)
    with pytest.raises(PageNotPresent) as e:
        mem.read(K + 0x200000, 8)  # same PPE, PDE not valid
    assert e.value.level == "PDE" and e.value.entry == 0 and e.value.span == 0x200000
    assert "PDE contains 0000000000000000: not valid" in e.value.why
    with pytest.raises(PageNotPresent) as e:
        mem.read(0x1000, 8)
    assert e.value.level == "PXE" and e.value.span == 1 << 39


def test_transition_pte_is_read_from_its_pfn():
    m = Machine()
    m.set(K, (0x6000 << 12) | 0x880 | (4 << 5))  # Transition=1, Protection=ReadWrite
    m.data(0x6000)
    p, mem = paging_of(m)
    assert mem.read(K + 0x10, 8) == page_bytes(0x6000)[0x10:0x18]
    w = p.walk(K)
    assert w.transition and w.physical == 0x6000000


def test_transition_pte_with_l1tf_bit():
    """1803+: Windows sets InvalidPteMask (bit 45) in not-present entries and leaves SwizzleBit
    clear; the PFN is what remains once the bit is cleared."""
    m = Machine()
    m.set(K, (1 << 45) | (0x1A2B3 << 12) | 0x880)
    m.data(0x1A2B3)
    fmt = P.PteFormat.for_kernel("x64", 19041, None)
    assert fmt.invalid_mask == 1 << 45
    p, mem = paging_of(m, fmt)
    assert mem.read(K, 4) == b"PFN:"
    assert P.decode((1 << 45) | (0x1A2B3 << 12) | 0x880, fmt).pfn == 0x1A2B3
    # SwizzleBit set: the entry was not swizzled, bit 45 is part of the PFN (and not in the dump)
    assert P.decode((1 << 45) | (0x1A2B3 << 12) | 0x890, fmt).pfn == (1 << 33) | 0x1A2B3


def test_transition_pde_keeps_walking():
    m = Machine()
    m.map(K, 0x5000)
    pde = m.entry_address(K, 2)
    e = m.read_entry(pde)
    m.set(K, (e & ~0xFFF & ~V) | 0x880, depth=2)  # the page table itself is in transition
    p, mem = paging_of(m)
    assert mem.read(K, 4) == b"PFN:"


def test_prototype_pte_followed_once():
    m = Machine()
    proto_va = 0xFFFFC182CC1FF000
    m.map(proto_va, 0x8000, content=b"")
    m.write(0x8000000 + 0xDF8, ((0x6100 << 12) | KERNEL).to_bytes(8, "little"))  # a valid prototype PTE
    m.write(0x8000000 + 0xE00, ((0x6200 << 12) | 0x880).to_bytes(8, "little"))  # in transition
    m.write(0x8000000 + 0xE08, ((2 << 12) | (0x1234 << 32) | (4 << 5)).to_bytes(8, "little"))  # page file
    m.data(0x6100)
    m.data(0x6200)
    base = 0xFFFFF80480000000
    for i, slot in enumerate((0xDF8, 0xE00, 0xE08)):
        m.set(base + i * PAGE, (((proto_va + slot) & 0xFFFF_FFFF_FFFF) << 16) | 0x400 | (4 << 5))
    p, mem = paging_of(m)
    assert mem.read(base, 4) == b"PFN:" and mem.read_pointer(base + 4) == 0x6100
    assert mem.read_pointer(base + PAGE + 4) == 0x6200
    with pytest.raises(PageNotPresent, match=r"prototype PTE at ffffc182cc1ffe08 contains .*page file 2 at offset 1234"):
        mem.read(base + 2 * PAGE, 8)


def test_prototype_sample_from_windbg():
    s = P.decode(0xC182CC1FFDF80400, P.PteFormat.for_kernel("x64", 19041, None))
    assert s.kind == P.PROTOTYPE and s.proto_address == 0xFFFFC182CC1FFDF8
    assert P.decode(0xFFFFFFFF00000400 | (1 << 63), P.PteFormat("x64", 19041, 0)).kind == P.VAD


def test_pagefile_and_demand_zero_are_not_in_the_dump():
    m = Machine()
    m.set(K, (3 << 12) | (0xABCDE << 32) | (4 << 5) | 0x10)  # SwizzleBit set: as stored
    m.set(K + PAGE, 4 << 5)  # demand zero, ReadWrite
    p, mem = paging_of(m, P.PteFormat.for_kernel("x64", 19041, None))
    with pytest.raises(PageNotPresent) as e:
        mem.read(K, 1)
    assert e.value.state.kind == P.PAGEFILE and e.value.state.pagefile == 3 and e.value.state.offset == 0xABCDE
    assert "page-file contents are not in a crash dump" in str(e.value)
    with pytest.raises(PageNotPresent, match="demand-zero page"):
        mem.read(K + PAGE, 1)


def test_pagefile_pte_swizzled():
    fmt = P.PteFormat.for_kernel("x64", 19041, 45)
    s = P.decode((1 << 45) | (0x1234 << 32) | (1 << 12) | (4 << 5), fmt)  # SwizzleBit clear
    assert (s.kind, s.pagefile, s.offset) == (P.PAGEFILE, 1, 0x1234)
    old = P.decode((0x1234 << 32) | (1 << 1) | (4 << 5), P.PteFormat.for_kernel("x64", 16299))
    assert (old.pagefile, old.offset) == (1, 0x1234)  # before 1803: PageFileLow in bits 1-4


def test_missing_table_page_is_negative_cached():
    m = Machine()
    m.map(K, 0x5000)
    pt = m.read_entry(m.entry_address(K, 2)) >> 12
    p, mem = paging_of(m, missing={pt})
    for _ in range(3):
        with pytest.raises(PageNotPresent) as e:
            mem.read(K, 8)
        assert e.value.pfn == pt and e.value.why == f"PTE table: Page {pt:x} not present in the dump file"
    assert p.pages.physical.calls == 4  # PXE, PPE, PDE tables once, the missing PT once


def test_missing_data_page_reports_its_pfn():
    m = Machine()
    m.map(K, 0x24D116)
    p, mem = paging_of(m, missing={0x24D116})
    with pytest.raises(PageNotPresent) as e:
        mem.read(K, 8)
    assert e.value.pfn == 0x24D116 and e.value.why == "Page 24d116 not present in the dump file"
    data, valid, errors = mem.read_partial(K - 8, 16)
    assert valid == bytearray(16) and len(errors) == 2


def test_chunks_skip_whole_invalid_regions():
    m = Machine()
    m.map(K, 0x5000)
    _, mem = paging_of(m)
    pieces = list(mem.chunks(0xFFFF800000000000, 0x100000000000))  # 16 TiB of kernel space
    assert len(pieces) < 40
    assert sum(n for _, _, n in pieces) == 0x100000000000


def test_five_level_paging():
    m = Machine(X64_5)
    va = 0xFF5F_F804_7BA0_0000  # 57-bit canonical, not 48-bit canonical
    m.map(va, 0x5000)
    p, mem = paging_of(m)
    assert p.translate(va + 5) == 0x5000005
    assert [s.level.name for s in p.walk(va).steps] == ["PML5E", "PXE", "PPE", "PDE", "PTE"]
    with pytest.raises(PageNotPresent, match="57-bit"):
        p.translate(0x0100_0000_0000_0000)
    m.map(KDBG_VA64 & ~0xFFF, 0x5100, content=b"\0" * 0xB30 + b"KDBG")
    assert guess_x64_levels(PageCache(FakePhysical(m)), m.dtb, KDBG_VA64) == 5
    m4 = Machine()
    m4.map(KDBG_VA64 & ~0xFFF, 0x5100, content=b"\0" * 0xB30 + b"KDBG")
    assert guess_x64_levels(PageCache(FakePhysical(m4)), m4.dtb, KDBG_VA64) == 4


# -- 32-bit ---------------------------------------------------------------------------------------
def test_pae_4k_2mb_and_software_entries():
    m = Machine(PAE, dtb=0x185000)
    m.map(0x8275E000, 0x2000)
    m.map_large(0x82800000, 0x3200000, depth=1)
    m.set(0x8A000000, (0x1234 << 12) | 0x880)
    m.data(0x1234)
    p, mem = paging_of(m, P.PteFormat("pae", 7601, 0))
    assert p.translate(0x8275E010) == 0x2000010
    assert p.translate(0xFFFFFFFF8275E010) == 0x2000010  # sign-extended 32-bit address
    assert p.translate(0x82812345) == 0x3212345
    assert mem.read(0x8A000000, 4) == b"PFN:"
    assert [s.level.vtop_name for s in p.walk(0x8275E000).steps] == ["PDPE", "PDE", "PTE"]
    assert mem.pointer_size == 4


def test_x86_non_pae_4k_4mb_and_software_entries():
    m = Machine(X86, dtb=0x39000)
    m.map(0x801544F4 & ~0xFFF, 0x154)
    m.map_large(0x80400000, 0x400000, depth=0)
    m.set(0x90000000, (0x777 << 12) | 0x880)
    m.data(0x777)
    m.set(0x90001000, (0x5678 << 12) | (2 << 1) | (4 << 5))  # page file 2, offset 5678
    p, mem = paging_of(m, P.PteFormat("x86", 2600, 0))
    assert p.translate(0x801544F4) == 0x1544F4
    assert p.translate(0x80512345) == 0x512345
    assert mem.read(0x90000000, 4) == b"PFN:"
    with pytest.raises(PageNotPresent) as e:
        mem.read(0x90001000, 4)
    assert (e.value.state.pagefile, e.value.state.offset) == (2, 0x5678)
    raw = 0x400 | (0x12345 << 11) | (0x3F << 3)  # x64-unwind.md §6.6: (pte & 0x407) == 0x400
    proto = P.decode(raw, P.PteFormat("x86", 2600))
    assert proto.kind == P.PROTOTYPE
    assert proto.proto_address == 0x80000000 | ((raw >> 1) & 0x7FFFFC00) | ((raw << 1) & 0x3FF)


# -- the self-map -----------------------------------------------------------------------------------
def test_self_map_addresses_match_windbg_sample():
    """windbg.md §11: !pte fffff804`72400000 with PTE_BASE FFFFDA8000000000 (index 0x1B5)."""
    smap = SelfMap.for_index(X64_4, 0x1B5)
    assert smap.pte_base == 0xFFFFDA8000000000
    assert smap.addresses(0xFFFFF80472400000) == [0xFFFFDAED76BB5F80, 0xFFFFDAED76BF0088,
                                                  0xFFFFDAED7E011C90, 0xFFFFDAFC02392000]
    assert smap.mapped_va(0xFFFFDAFC02392000) == 0xFFFFF80472400000
    x86 = SelfMap(X86, 0xC0000000)
    assert x86.addresses(0x801544F4) == [0xC0300800, 0xC0200550]  # MS docs sample
    assert SelfMap(PAE, 0xC0000000).addresses(0x80000000)[-2:] == [0xC0602000, 0xC0400000]


def test_self_map_found_in_the_top_table():
    m = Machine()
    m.self_map(0x1B5)
    smap = SelfMap.find(X64_4, PageCache(FakePhysical(m)), m.dtb)
    assert smap.pte_base == 0xFFFFDA8000000000
    assert SelfMap.find(X64_4, PageCache(FakePhysical(Machine())), 0x1AD000).pte_base == 0xFFFFF68000000000


def test_flags_text_matches_windbg():
    assert P.flags_text(0x0000000003F09063) == "---DA--KWEV"
    assert P.flags_text(0x8A000000020001A1) == "-GL-A--KR-V"
    assert P.flags_text(0x8A00000000000B63) == "CG-DA--KW-V"
    assert P.protection_text(4) == "4 - ReadWrite"
    assert P.protection_text(0x18) == "18 - NoAccess Guard NoCache"


# -- written dumps, read by kdshell and kdmp-parser ----------------------------------------------
def kernel_machine() -> Machine:
    """A machine whose tables have every kind of entry kdmp-parser can judge."""
    m = Machine()
    m.map(KDBG_VA64 & ~0xFFF, 0x5100)
    for i in range(4):
        m.map(K + i * PAGE, 0x5000 + i)
    m.map(0x00007FF6_12340000, 0x5800, flags=KERNEL | U)  # a user page
    m.map_large(0xFFFFF80472400000, 0x2000000, depth=2, flags=KERNEL | PS)
    for i in range(0, 0x200, 0x80):  # a few pages of the 2 MiB page, to be in the dump
        m.data(0x2000 + i)
    m.map_large(0xFFFF800000000000, 0x40000000, depth=1)
    m.data(0x40000)
    m.data(0x40001)
    m.set(K + 0x10 * PAGE, (0x6000 << 12) | 0x880)  # transition
    m.data(0x6000)
    m.set(K + 0x11 * PAGE, (2 << 12) | (0x99 << 32) | 0x90)  # page file
    m.self_map(0x1ED)
    return m


VAS = [K, K + 0x3FF8, 0x00007FF6_12340010, 0xFFFFF80472400000, 0xFFFFF80472480123, 0xFFFF800000000008,
       0xFFFF800000001FF0, K + 0x10 * PAGE, K + 0x11 * PAGE, K + 0x200000, 0x1000, KDBG_VA64]


@pytest.mark.parametrize("kind", ["full", "bitmap5", "bitmap6", "rdmp10"])
def test_translation_agrees_with_kdmp_parser(tmp_path, kind):
    kdmp_parser = pytest.importorskip("kdmp_parser")
    import kdshell

    m = kernel_machine()
    path = write_kind(tmp_path, kind, m.bytes_pages(), directory_table_base=m.dtb)
    with kdshell.open(path) as s:
        mem = s.memory
        theirs = kdmp_parser.KernelDumpParser(path)
        for va in VAS:
            expected = theirs.translate_virtual(va)
            try:
                ours = mem.translate(va)
            except MemoryNotPresent:
                ours = None
            if va == K + 0x10 * PAGE:
                # kdmp-parser only follows valid entries; a transition page is still in RAM
                assert expected is None and ours == 0x6000000
                continue
            assert ours == expected, hex(va)
            if ours is not None and s.spaces.pages.has(ours >> 12):
                page = theirs.read_virtual_page(va)
                assert page is not None
                assert mem.read(va & ~0xFFF, PAGE) == bytes(page)


def test_random_tables_agree_with_kdmp_parser(tmp_path_factory):
    """Random 4 KiB / 2 MiB / 1 GiB mappings (no PAT bit: kdmp-parser multiplies the PFN of a
    large entry, see x64-unwind.md §6.1) and random probes, mapped or not."""
    kdmp_parser = pytest.importorskip("kdmp_parser")
    from hypothesis import given, settings
    from hypothesis import strategies as st

    import kdshell

    mapping = st.tuples(st.sampled_from(["4k", "2m", "1g"]), st.integers(0, (1 << 30) - 1),
                        st.booleans(), st.booleans())

    @settings(max_examples=12, deadline=None)
    @given(st.dictionaries(st.integers(0x100, 0x1FF), mapping, min_size=1, max_size=6),
           st.lists(st.integers(0, (1 << 48) - 1), max_size=8))
    def check(maps, probes):
        m = Machine()
        vas = []
        for n, (pxe, (kind, low, nx, user)) in enumerate(sorted(maps.items())):
            va = 0xFFFF000000000000 | (pxe << 39) | (low << 9) & ((1 << 39) - 1)
            flags = KERNEL | (U if user else 0)
            if kind == "4k":
                m.set(va, ((0x10000 + n) << 12) | flags | (NX if nx else 0))
            elif kind == "2m":
                m.map_large(va, (0x200 + n) << 21, depth=2, flags=flags | PS)
            else:
                m.map_large(va, (1 + n) << 30, depth=1, flags=flags | PS)
            vas += [va, va + 0xFFF, va ^ 0x1000]
        path = write_kind(tmp_path_factory.mktemp("r"), "full", m.bytes_pages(), directory_table_base=m.dtb)
        theirs = kdmp_parser.KernelDumpParser(path)
        with kdshell.open(path) as s:
            for va in vas + [0xFFFF000000000000 | p if p >> 47 else p for p in probes]:
                try:
                    ours = s.memory.translate(va)
                except MemoryNotPresent:
                    ours = None
                assert ours == theirs.translate_virtual(va), hex(va)

    check()


def test_caches_stay_bounded_and_right_under_eviction(monkeypatch):
    """A working set far larger than both caches: every translation is the uncached walk's
    (Paging.walk reads the tables afresh), and neither cache grows past its limit; eviction is
    gradual (a full cache keeps most of its entries)."""
    import random

    m = Machine()
    rng = random.Random(23)
    vas = sorted({K + rng.randrange(0, 1 << 30) // PAGE * PAGE for _ in range(3000)})
    for i, va in enumerate(vas):
        m.map(va, 0x10000 + i)
    monkeypatch.setattr(Paging, "TLB_LIMIT", 256)  # before the Paging is made: the compiled walk copies them
    monkeypatch.setattr(Paging, "TABLES_LIMIT", 16)
    p, _ = paging_of(m)
    sizes = []
    for _ in range(4):
        for va in rng.sample(vas, len(vas)):
            off = rng.randrange(0, PAGE)
            assert p.translate(va + off) == p.walk(va + off).physical, hex(va)
            sizes.append((len(p._tlb), len(p._leaf_tables)))
    assert max(t for t, _ in sizes) <= 256 and max(n for _, n in sizes) <= 16
    assert min(n for _, n in sizes[100:]) >= 16 - 16 // 8  # trimmed by an eighth, never cleared
    p.flush()
    unmapped = K + (1 << 30) + 5 * PAGE  # a zero PTE next to a kept table, and a missing table
    with pytest.raises(PageNotPresent):
        p.translate(unmapped)
