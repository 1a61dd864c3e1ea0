"""Address translation: a table per paging mode and one walk (x64-unwind.md §6-§7).

Modes: x64 4-level and 5-level (LA57), x86 PAE, x86 non-PAE and ARM64. A mode is data (entry
width, the index bits of each level, which levels may map large pages and which bit says so);
`Paging` walks any of them.

ARM64 as Windows sets it up (x64-unwind.md §6.7; MemProcFS' mm_arm64.c walks it the same way):
4 KiB granule, 48-bit VA, four levels indexed by VA bits 47:39, 38:30, 29:21, 20:12, one table
serving both halves (kernel addresses sign-extended, top-level entries 256-511), the dump
header's DirectoryTableBase = TTBR (ASID in bits 63:48, masked off). A descriptor is valid when
bit 0 is set; at levels 1 and 2 bit 1 clear means a block (1 GiB, 2 MiB: Windows' NotLargePage
bit), set a table; output address bits 47:12. Not-valid entries are Windows' software formats
(pte.py).

Reads go through `Paging.translate(va)`: a per-address-space translation cache (virtual page ->
physical page) in front of the walk, then a cache of last-level tables kept as entry arrays (as
a CPU's paging-structure cache: a page whose table is kept costs one index, not a whole walk).
Both are bounded and evict gradually (the oldest eighth when full), and a full translation cache
takes no more entries from the tables (they answer nearly as fast): a working set larger than
the cache has no cliff. `Paging.runs(va, size)` gives physically contiguous pieces and what an
empty entry covers at once, for scans. Table pages come from a shared `PageCache`, kept as arrays
of their entries (the walk's step per level is a dict lookup and an index), that also remembers
which PFNs the dump does not have (so a walk over a kernel-only dump fails at once instead of
searching the bitmap again). Invalid entries are decoded by pte.py: transition pages are read
from their PFN, prototype PTEs are followed once, everything else raises `PageNotPresent`
naming the level and the entry. `Paging.walk(va)` records every step for `!vtop` and `!pte`.
"""
from __future__ import annotations

import struct
import sys
from array import array
from dataclasses import dataclass, field
from itertools import compress, islice
from typing import Callable, Iterator

from kdshell.errors import MemoryNotPresent
from kdshell.memory import pte as P
from kdshell.memory.physical import PAGE_SHIFT, PAGE_SIZE, PhysicalMemory, not_present_message

try:  # the optional compiled walk (setup.py builds it when a C compiler is there)
    from kdshell.memory._walk import Translator as _CompiledTranslator
except ImportError:  # pragma: no cover - an install without a compiler
    _CompiledTranslator = None  # type: ignore[assignment,misc]

PAGE_MASK = PAGE_SIZE - 1
# Paging.translate through the compiled walk when it is built (False: the Python walk alone)
COMPILED = _CompiledTranslator is not None
_NATIVE_LE = sys.byteorder == "little"  # table arrays are native-order: swapped when not
_U64 = struct.Struct("<Q").unpack_from
_U32 = struct.Struct("<I").unpack_from


class PageNotPresent(MemoryNotPresent):
    """A virtual address the dump cannot give bytes for, and the entry that said so.

    `level` is the entry's name ("PDE"), `entry` its value (None when the table page itself is
    missing), `state` the decoded entry, `pfn` the physical page missing from the dump (a table
    or data page) and `span` how many bytes around the address share the same fate (a not-valid
    PDE stops 2 MiB at once), so scans can skip ahead.
    """

    def __init__(self, address: int, why: str, *, level: str | None = None, entry: int | None = None,
                 state: P.PteState | None = None, pfn: int | None = None, span: int = PAGE_SIZE) -> None:
        super().__init__(address, why)
        self.level = level
        self.entry = entry
        self.state = state
        self.pfn = pfn
        self.span = span


def _hole_span(va: int, va_bits: int) -> int:
    """The largest aligned power-of-two block around a non-canonical `va` that lies wholly in the
    non-canonical hole, so a scan skips the hole in a few steps, not page by page."""
    low, high = 1 << (va_bits - 1), (1 << 64) - (1 << (va_bits - 1))
    for k in range(63, PAGE_SHIFT - 1, -1):
        start = va & ~((1 << k) - 1)
        if start >= low and start + (1 << k) <= high:
            return 1 << k
    return PAGE_SIZE


# -- modes -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Level:
    name: str  # !pte's name: PXE PPE PDE PTE
    vtop_name: str  # !vtop's name: PML4E PDPE PDE PTE
    shift: int  # lowest VA bit of this level's index
    bits: int  # index width
    large_mask: int | None = None  # address bits of a large page mapped here, else None
    large_bit: int = 0x80  # the entry bit that says "large page" (x86: PS)...
    large_value: int = 0x80  # ...when it has this value (ARM64: bit 1 clear = block)

    @property
    def span(self) -> int:
        return 1 << self.shift

    def maps_large(self, entry: int) -> bool:
        """A valid entry of this level maps a large page (not a next-level table)."""
        return self.large_mask is not None and entry & self.large_bit == self.large_value


@dataclass(frozen=True)
class PagingMode:
    name: str
    entry_size: int
    levels: tuple[Level, ...]
    va_bits: int  # 48/57 (canonical, sign-extended) or 32
    dtb_mask: int  # CR3 bits that address the top table
    table_mask: int  # entry bits that address the next table
    vtop_prefix: str
    pte_mode: str  # pte.PteFormat mode

    @property
    def is64(self) -> bool:
        return self.va_bits > 32

    @property
    def hex_digits(self) -> int:
        return self.entry_size * 2

    def canonical(self, va: int) -> int | None:
        """The address as this mode sees it, or None when it is not a valid address here."""
        va &= 0xFFFF_FFFF_FFFF_FFFF
        if self.va_bits == 32:
            return va & 0xFFFFFFFF if va >> 32 in (0, 0xFFFFFFFF) else None
        top = va >> (self.va_bits - 1)
        return va if top in (0, (1 << (65 - self.va_bits)) - 1) else None


_A52 = 0x000F_FFFF_FFFF_F000
X64_4 = PagingMode(
    "x64", 8,
    (Level("PXE", "PML4E", 39, 9), Level("PPE", "PDPE", 30, 9, 0x000F_FFFF_C000_0000),
     Level("PDE", "PDE", 21, 9, 0x000F_FFFF_FFE0_0000), Level("PTE", "PTE", 12, 9)),
    48, _A52, _A52, "Amd64VtoP", "x64",
)
X64_5 = PagingMode(
    "x64 5-level", 8,
    (Level("PML5E", "PML5E", 48, 9),) + X64_4.levels,
    57, _A52, _A52, "Amd64VtoP", "x64",
)
PAE = PagingMode(
    "x86 PAE", 8,
    (Level("PDPE", "PDPE", 30, 2), Level("PDE", "PDE", 21, 9, 0x000F_FFFF_FFE0_0000), Level("PTE", "PTE", 12, 9)),
    32, 0xFFFF_FFE0, _A52, "X86VtoP", "pae",
)
X86 = PagingMode(
    "x86", 4,
    (Level("PDE", "PDE", 22, 10, 0xFFC0_0000), Level("PTE", "PTE", 12, 10)),
    32, 0xFFFF_F000, 0xFFFF_F000, "X86VtoP", "x86",
)
_A48 = 0x0000_FFFF_FFFF_F000
ARM64 = PagingMode(
    "ARM64", 8,
    (Level("PXE", "PXE", 39, 9), Level("PPE", "PPE", 30, 9, 0x0000_FFFF_C000_0000, 2, 0),
     Level("PDE", "PDE", 21, 9, 0x0000_FFFF_FFE0_0000, 2, 0), Level("PTE", "PTE", 12, 9)),
    48, _A48, _A48, "Arm64VtoP", "arm64",
)


# -- physical pages, cached -------------------------------------------------------------------
class PageCache:
    """Physical pages by PFN with a bounded cache of recent pages and a record of missing PFNs.

    Pages are copied out of the mapping (a 4 KiB copy costs less than a second bitmap lookup),
    so nothing here pins the container's mmap. Page tables are kept apart, as arrays of their
    entries by the table's physical address (`tables`): a walk reads an entry with one dict
    lookup and one index, the page's bytes never sliced or unpacked again.
    """

    TABLE_LIMIT = 1 << 12  # table pages kept per entry width (16 MiB at most)

    def __init__(self, physical: PhysicalMemory, limit: int = 4096) -> None:
        self.physical = physical
        self.limit = limit
        self.cached: dict[int, bytes] = {}  # PFN -> page, the most recent `limit` pages
        self._missing: dict[int, str] = {}
        self._tables: dict[int, dict[int, array]] = {8: {}, 4: {}}  # entry size -> table PA -> entries
        self._downs: dict[str, tuple[dict[int, array], ...]] = {}  # mode -> per upper level: table PA -> downs
        self.lookups = 0  # PFN lookups that reached the container (for the benchmark)

    def _fetch(self, pfn: int) -> bytes | memoryview:
        """The page from the container, remembering a PFN it does not have."""
        why = self._missing.get(pfn)
        if why is not None:
            raise MemoryNotPresent(pfn << PAGE_SHIFT, why, physical=True)
        self.lookups += 1
        try:
            return self.physical.page(pfn)
        except MemoryNotPresent as exc:
            if len(self._missing) > 1 << 20:
                self._missing.clear()
            self._missing[pfn] = exc.why
            raise

    def page(self, pfn: int) -> bytes:
        data = self.cached.get(pfn)
        if data is not None:
            return data
        data = bytes(self._fetch(pfn))
        if len(self.cached) >= self.limit:
            del self.cached[next(iter(self.cached))]
        self.cached[pfn] = data
        return data

    def tables(self, entry_size: int) -> dict[int, array]:
        """The kept tables of one entry width, by physical address (for a walk to read directly)."""
        return self._tables[entry_size]

    def table(self, pa: int, entry_size: int) -> array:
        """The entries of the table at `pa` to the end of its page (a PAE PDPT is 32-byte
        aligned: its 4 entries come first), kept; MemoryNotPresent when the page is missing."""
        kept = self._tables[entry_size]
        entries = kept.get(pa)
        if entries is not None:
            return entries
        pfn = pa >> PAGE_SHIFT
        page = self.cached.get(pfn)
        entries = array("Q" if entry_size == 8 else "I")
        entries.frombytes((page if page is not None else self._fetch(pfn))[pa & PAGE_MASK :])
        if not _NATIVE_LE:
            entries.byteswap()  # the dump's entries are little-endian
        _trim(kept, self.TABLE_LIMIT)
        kept[pa] = entries
        return entries

    def downs(self, mode: PagingMode) -> tuple[dict[int, array], ...]:
        """Per level above the last, the kept `Paging.downs` arrays of `mode`'s tables by physical
        address (what an entry means depends on the mode and the level: a large page or not)."""
        kept = self._downs.get(mode.name)
        if kept is None:
            kept = self._downs[mode.name] = tuple({} for _ in mode.levels[:-1])
        return kept

    def clear(self) -> None:
        """Forget every kept page and table (the record of missing PFNs stays: a dump never changes)."""
        self.cached.clear()
        for kept in self._tables.values():
            kept.clear()
        for levels in self._downs.values():
            for kept in levels:
                kept.clear()

    def has(self, pfn: int) -> bool:
        try:
            self.page(pfn)
        except MemoryNotPresent:
            return False
        return True

    # Bytes at a physical address, page by page; MemoryNotPresent at the first missing page.
    read = PhysicalMemory.read


def _trim(cache: dict, limit: int) -> None:
    """Make room in a full cache by forgetting its oldest eighth (insertion order): eviction is
    gradual, so a working set a little over the limit keeps most of its entries (clearing the
    whole cache made every lookup after it a miss: a cliff)."""
    if len(cache) >= limit:
        for key in list(islice(cache, max(1, limit >> 3))):
            del cache[key]


# -- the walk ---------------------------------------------------------------------------------
@dataclass
class WalkStep:
    level: Level
    table: int  # physical address of the table
    entry_address: int  # physical address of the entry
    entry: int | None  # None when the table page is not in the dump
    state: P.PteState | None = None


@dataclass
class Walk:
    """Every step of one translation, for !vtop and !pte."""

    va: int
    steps: list[WalkStep] = field(default_factory=list)
    physical: int | None = None
    large: bool = False
    transition: bool = False
    error: PageNotPresent | None = None


class Paging:
    """One address space: a DTB walked in one mode."""

    TLB_LIMIT = 1 << 16
    TABLES_LIMIT = 1 << 12  # last-level tables kept by their 2 MiB of addresses (16 MiB at most)

    # Physical address of `va`, or PageNotPresent naming the level that stopped the walk: the
    # compiled walk when it is built (it answers the common cases over the same caches and hands
    # everything else to `translate_python`), else `translate_python` itself.
    translate: Callable[[int], int]

    def __init__(self, pages: PageCache, dtb: int, mode: PagingMode = X64_4,
                 fmt: P.PteFormat | None = None, compiled: bool | None = None) -> None:
        self.pages = pages
        self.mode = mode
        self.dtb = dtb & mode.dtb_mask
        self.fmt = fmt or P.PteFormat(mode.pte_mode)
        self._tlb: dict[int, int] = {}
        # last-level tables by (va >> leaf.shift + leaf.bits): the entry arrays the walk ended
        # in (the page cache's own); a dump never changes, so nothing here goes stale, and a
        # translation next to a page already read is one index, not a walk
        self._leaf_tables: dict[int, array] = {}
        leaf = mode.levels[-1]
        self._leaf_key_shift = leaf.shift + leaf.bits
        self._leaf_index_mask = (1 << leaf.bits) - 1
        self._unpack = _U64 if mode.entry_size == 8 else _U32
        self._tables = pages.tables(mode.entry_size)  # table PA -> entries, shared by every space
        # The walk's plan: per level above the last (shift, index mask, the level's kept downs
        # arrays, level number); _uppers[i] starts at level i (a walk resumed after a transition
        # entry; empty from the last level)
        self._downs = pages.downs(mode)
        self._seen_once: dict[int, None] = {}  # tables walked through once, no downs array yet
        uppers = tuple((lv.shift, (1 << lv.bits) - 1, self._downs[i], i) for i, lv in enumerate(mode.levels[:-1]))
        self._uppers = tuple(uppers[i:] for i in range(len(mode.levels)))
        self._last = len(mode.levels) - 1
        # what a missing table at level i takes away: everything the entry above it maps
        self._spans = (1 << mode.va_bits,) + tuple(1 << lv.shift for lv in mode.levels[:-1])
        # canonical addresses pass as they are: va >> (va_bits - 1) is 0 or all ones (64-bit);
        # anything else (and every 32-bit address) goes through mode.canonical()
        self._canon_shift = mode.va_bits - 1 if mode.is64 else 32
        self._canon_tops = (0, (1 << (65 - mode.va_bits)) - 1) if mode.is64 else (0,)
        self.translate = self.translate_python
        if (COMPILED if compiled is None else compiled) and _CompiledTranslator is not None:
            self.translate = _CompiledTranslator(
                tlb=self._tlb, leaves=self._leaf_tables, tables=self._tables, slow=self.translate_python,
                top=self.dtb, table_mask=mode.table_mask, entry_size=mode.entry_size,
                levels=[(lv.shift, lv.bits, lv.large_mask or 0, lv.large_bit, lv.large_value) for lv in mode.levels],
                leaf_key_shift=self._leaf_key_shift, canon_shift=self._canon_shift, canon_top=self._canon_tops[-1],
                tlb_limit=self.TLB_LIMIT, leaves_limit=self.TABLES_LIMIT)

    def flush(self, tables: bool = False) -> None:
        """Forget cached translations (and the cached last-level tables with `tables`)."""
        self._tlb.clear()
        if tables:
            self._leaf_tables.clear()

    # -- fast path --------------------------------------------------------------------------
    def translate_python(self, va: int) -> int:
        """Physical address of `va`, or PageNotPresent naming the level that stopped the walk."""
        vpn = va >> PAGE_SHIFT
        tlb = self._tlb
        pa_page = tlb.get(vpn)
        if pa_page is not None:
            return pa_page | (va & PAGE_MASK)
        leaf = self._leaf_tables.get(va >> self._leaf_key_shift)
        if leaf is not None:  # one entry to read; anything but a valid one takes the full walk
            entry = leaf[vpn & self._leaf_index_mask]
            if entry & 1:
                pa_page = entry & self.mode.table_mask
                if len(tlb) < self.TLB_LIMIT:  # a full cache is left as it is: the table answers as fast
                    tlb[vpn] = pa_page
                return pa_page | (va & PAGE_MASK)
        if va >> self._canon_shift in self._canon_tops:
            pa = self._walk(va, True)
        else:
            cva = self.mode.canonical(va)
            if cva is None:
                bits = self.mode.va_bits
                raise PageNotPresent(va, f"{va:#x} is not a canonical {bits}-bit address",
                                     span=_hole_span(va, bits))
            pa = self._walk(cva, True)
        if len(tlb) >= self.TLB_LIMIT:
            _trim(tlb, self.TLB_LIMIT)
        tlb[vpn] = pa & ~PAGE_MASK
        return pa

    def _walk(self, va: int, follow_prototype: bool, start: int = 0, table: int = -1) -> int:
        """The walk, from the top table (or from level `start`'s table at `table`). Above the last
        level each step is a dict lookup and an index into the table's downs array (the next
        table's address, or -1 for anything else: `_downs_of`); the last level reads the entry
        itself. No bytes are sliced and no exception is made on the way down; a large page, an
        entry that is not valid or a table page still to fetch leaves for the code beside it."""
        if table < 0:
            table = self.dtb
        for shift, imask, kept, i in self._uppers[start]:
            downs = kept.get(table)
            down = downs[(va >> shift) & imask] if downs is not None else self._down(va, i, table)
            if down < 0:
                return self._stop(va, i, table, follow_prototype)
            table = down
        entries = self._tables.get(table)
        if entries is None:
            entries = self._table(va, self._last, table)
        # the last-level table, kept for the neighbours of va whatever its entry says (a scan
        # skips a run of empty entries in it at once: runs())
        leaves = self._leaf_tables
        if len(leaves) >= self.TABLES_LIMIT:
            _trim(leaves, self.TABLES_LIMIT)
        leaves[va >> self._leaf_key_shift] = entries
        entry = entries[(va >> PAGE_SHIFT) & self._leaf_index_mask]
        if entry & 1:
            return (entry & self.mode.table_mask) | (va & PAGE_MASK)
        return self._not_valid(va, self._last, entry, follow_prototype)

    def _down(self, va: int, i: int, table: int) -> int:
        """The walk's step at a table without a downs array: the first time, from the entry
        itself (a walk made once, as at open, does not pay for the array); the second, through
        the array, made then."""
        seen = self._seen_once
        if table in seen:
            del seen[table]
            level = self.mode.levels[i]
            return self._downs_of(va, i, table)[(va >> level.shift) & ((1 << level.bits) - 1)]
        _trim(seen, PageCache.TABLE_LIMIT)
        seen[table] = None
        level = self.mode.levels[i]
        e = self._table(va, i, table)[(va >> level.shift) & ((1 << level.bits) - 1)]
        bit, value = (level.large_bit, level.large_value) if level.large_mask is not None else (0, 1)
        return e & self.mode.table_mask if e & 1 and e & bit != value else -1

    def _downs_of(self, va: int, i: int, table: int) -> array:
        """Level i's table at `table` as the walk reads it: for each entry the next table's
        physical address when the entry is valid and points at one, else -1 (a large page or an
        entry that is not valid: `_stop` reads the entry itself). Kept beside the table."""
        entries = self._table(va, i, table)
        level, tmask = self.mode.levels[i], self.mode.table_mask
        bit, value = (level.large_bit, level.large_value) if level.large_mask is not None else (0, 1)
        downs = array("q", [-1]) * len(entries)
        for k in compress(range(len(entries)), entries):  # the non-zero entries only: upper tables are mostly empty
            e = entries[k]
            if e & 1 and e & bit != value:
                downs[k] = e & tmask
        kept = self._downs[i]
        _trim(kept, PageCache.TABLE_LIMIT)
        kept[table] = downs
        return downs

    def _stop(self, va: int, i: int, table: int, follow_prototype: bool) -> int:
        """Level i's entry for `va` does not point at a table: a large page, or not valid."""
        level = self.mode.levels[i]
        entry = self._table(va, i, table)[(va >> level.shift) & ((1 << level.bits) - 1)]
        if entry & 1:  # valid and not a table: a large page (_downs_of)
            return (entry & (level.large_mask or 0)) | (va & (level.span - 1))
        return self._not_valid(va, i, entry, follow_prototype)

    def _table(self, va: int, i: int, table: int) -> array:
        """Level i's table at `table`, from the page cache, or PageNotPresent for `va`."""
        try:
            return self.pages.table(table, self.mode.entry_size)
        except MemoryNotPresent:
            pfn = table >> PAGE_SHIFT
            name = self.mode.levels[i].name
            raise PageNotPresent(va, f"{name} table: {not_present_message(pfn)}", level=name,
                                 pfn=pfn, span=self._spans[i]) from None

    def _not_valid(self, va: int, i: int, entry: int, follow_prototype: bool) -> int:
        """A not-valid entry at level i: a transition entry goes on from its PFN, a prototype PTE
        is followed once, anything else stops the walk with PageNotPresent."""
        level = self.mode.levels[i]
        state = P.decode(entry, self.fmt)
        last = i == len(self.mode.levels) - 1
        if state.kind == P.TRANSITION:
            table = state.pfn << PAGE_SHIFT  # type: ignore[operator]  # transition: a PFN
            return table | (va & PAGE_MASK) if last else self._walk(va, follow_prototype, i + 1, table)
        if state.kind == P.PROTOTYPE and last and follow_prototype:
            return self._via_prototype(va, state, level)
        raise PageNotPresent(va, P.why_not_readable(state, level.name, self.mode.hex_digits),
                             level=level.name, entry=entry, state=state, span=1 << level.shift)

    def _via_prototype(self, va: int, state: P.PteState, level: Level) -> int:
        """Follow a prototype PTE once: valid or transition gives the page, anything else stops."""
        where = state.proto_address
        digits = self.mode.hex_digits
        if where is None:  # a PAE prototype PTE whose address is 0 (corrupt or hostile; fuzz:
            # tests/regressions/containers/pae-prototype-pte-without-address.bin.gz)
            raise PageNotPresent(va, f"{level.name} contains {state.raw:0{digits}X}: prototype PTE without an "
                                 "address", level=level.name, entry=state.raw, state=state)
        try:
            proto_pa = self._walk(where, follow_prototype=False)
            raw = self.pages.read(proto_pa, self.mode.entry_size)
        except MemoryNotPresent as exc:
            raise PageNotPresent(va, f"{level.name} contains {state.raw:0{digits}X}: prototype PTE at {where:x} "
                                 f"cannot be read ({exc.why})", level=level.name, entry=state.raw,
                                 state=state) from None
        proto = P.decode(int.from_bytes(raw, "little"), self.fmt)
        if proto.kind == P.VALID or proto.kind == P.TRANSITION:
            return (proto.pfn << PAGE_SHIFT) | (va & PAGE_MASK)  # type: ignore[operator]  # resident: a PFN
        why = P.why_not_readable(proto, f"prototype PTE at {where:x}", digits)
        raise PageNotPresent(va, why, level=level.name, entry=state.raw, state=state)

    # -- runs of pages, for scans (`s`) -----------------------------------------------------
    def runs(self, va: int, size: int) -> Iterator[tuple[int, int | PageNotPresent, int]]:
        """(va, physical address or the error, bytes) pieces covering [va, va + size), in order:
        a readable piece is physically contiguous (a large page at once, consecutive PFNs of a
        last-level table merged), a not-readable one spans what the empty entries cover (a zero
        PML4E 512 GiB, a zero PDE 2 MiB, a run of zero PTEs), consecutive ones merged, with one
        error (the first's) for all of it."""
        gap_va, gap_why, gap_n = 0, None, 0
        for at, what, n in self._pieces(va, size):
            if not isinstance(what, int):
                if gap_n and gap_va + gap_n == at:
                    gap_n += n
                    continue
                if gap_n:
                    yield gap_va, self._gap_error(gap_va, gap_why, gap_n), gap_n
                gap_va, gap_why, gap_n = at, what, n
                continue
            if gap_n:
                yield gap_va, self._gap_error(gap_va, gap_why, gap_n), gap_n
                gap_n = 0
            yield at, what, n
        if gap_n:
            yield gap_va, self._gap_error(gap_va, gap_why, gap_n), gap_n

    def _gap_error(self, va: int, exc: PageNotPresent | None, n: int) -> PageNotPresent:
        if exc is not None:
            return exc
        level = self.mode.levels[-1]  # zero PTEs: the error made only now, once per gap
        why = P.why_not_readable(P.decode(0, self.fmt), level.name, self.mode.hex_digits)
        return PageNotPresent(va, why, level=level.name, entry=0, span=n)

    def _pieces(self, va: int, size: int) -> Iterator[tuple[int, int | PageNotPresent | None, int]]:
        """runs() before merging; None stands for zero last-level entries (no error made)."""
        end = va + size
        leaf_bits = self._leaf_key_shift
        index_mask = self._leaf_index_mask
        table_mask = self.mode.table_mask
        run_va, run_pa, run_len = va, -1, 0
        while va < end:
            leaf = self._leaf_tables.get(va >> leaf_bits)
            if leaf is None:
                try:
                    pa = self.translate(va)
                except PageNotPresent as exc:
                    if va >> leaf_bits in self._leaf_tables:
                        continue  # the walk kept the table: its entries say the rest at once
                    span = max(exc.span, PAGE_SIZE)
                    n = min(end - va, span - (va & (span - 1)))
                    if run_len:
                        yield run_va, run_pa, run_len
                        run_len = 0
                    yield va, exc, n
                    va += n
                    continue
                leaf = self._leaf_tables.get(va >> leaf_bits)
                if leaf is None:  # a large page (or a transition table): as far as it maps
                    n = min(end, self._mapping_end(va)) - va
                    if run_len and run_pa + run_len == pa:
                        run_len += n
                    else:
                        if run_len:
                            yield run_va, run_pa, run_len
                        run_va, run_pa, run_len = va, pa, n
                    va += n
                    continue
            i = (va >> PAGE_SHIFT) & index_mask
            stop = min(index_mask + 1, i + ((end - va + PAGE_MASK) >> PAGE_SHIFT))
            while i < stop:
                entry = leaf[i]
                n = min(end - va, PAGE_SIZE - (va & PAGE_MASK))
                if entry & 1:
                    pa = (entry & table_mask) | (va & PAGE_MASK)
                elif entry:  # transition, prototype, paged out: the walk says what it is
                    try:
                        pa = self.translate(va)
                    except PageNotPresent as exc:
                        if run_len:
                            yield run_va, run_pa, run_len
                            run_len = 0
                        yield va, exc, n
                        va += n
                        i += 1
                        continue
                else:  # zero entries: one error for the whole run of them
                    j = i + 1
                    while j < stop and not leaf[j]:
                        j += 1
                    n = min(end - va, ((j - i) << PAGE_SHIFT) - (va & PAGE_MASK))
                    if run_len:
                        yield run_va, run_pa, run_len
                        run_len = 0
                    yield va, None, n
                    va += n
                    i = j
                    continue
                if run_len and run_pa + run_len == pa:
                    run_len += n
                else:
                    if run_len:
                        yield run_va, run_pa, run_len
                    run_va, run_pa, run_len = va, pa, n
                va += n
                i += 1
        if run_len:
            yield run_va, run_pa, run_len

    def _mapping_end(self, va: int) -> int:
        """Where the large page (or the page) that maps `va` ends."""
        w = self.walk(va)
        span = 1 << (w.steps[-1].level.shift if w.large and w.steps else PAGE_SHIFT)
        return (va & ~(span - 1)) + span

    # -- every step, for !vtop and !pte ------------------------------------------------------
    def walk(self, va: int) -> Walk:
        """The translation of `va` step by step; never raises for a missing or invalid entry."""
        w = Walk(va)
        cva = self.mode.canonical(va)
        if cva is None:
            w.error = PageNotPresent(va, f"{va:#x} is not a canonical {self.mode.va_bits}-bit address")
            return w
        esize = self.mode.entry_size
        table = self.dtb
        last = len(self.mode.levels) - 1
        for i, level in enumerate(self.mode.levels):
            epa = table + ((cva >> level.shift) & ((1 << level.bits) - 1)) * esize
            step = WalkStep(level, table, epa, None)
            w.steps.append(step)
            try:
                page = self.pages.page(epa >> PAGE_SHIFT)
            except MemoryNotPresent:
                pfn = epa >> PAGE_SHIFT
                w.error = PageNotPresent(va, not_present_message(pfn), level=level.name, pfn=pfn)
                return w
            entry = self._unpack(page, epa & PAGE_MASK)[0]
            step.entry = entry
            step.state = P.decode(entry, self.fmt)
            if entry & 1:
                if level.maps_large(entry):
                    w.large = True
                    w.physical = (entry & (level.large_mask or 0)) | (cva & (level.span - 1))
                    return w
                table = entry & self.mode.table_mask
                continue
            if step.state.kind == P.TRANSITION:
                table = step.state.pfn << PAGE_SHIFT  # type: ignore[operator]  # transition: a PFN
                if i == last:
                    w.transition = True
                    w.physical = table | (cva & PAGE_MASK)
                    return w
                continue
            w.error = PageNotPresent(va, P.why_not_readable(step.state, level.name, self.mode.hex_digits),
                                     level=level.name, entry=entry, state=step.state)
            return w
        w.physical = table | (cva & PAGE_MASK)
        return w


# -- the PTE self-map (where !pte says the entries are) ---------------------------------------
class SelfMap:
    """Virtual addresses of a VA's paging entries through Windows' recursive self-map.

    x64 and ARM64: one top-level entry points back at its own table; with index i, PTE_BASE =
    sign-extend(i << (12 + 9 * (levels - 1))) and the PTE of VA is PTE_BASE + ((VA >> 9) & mask).
    Applying the same function to a PTE address gives the PDE address, and so on up (§6.3).
    32-bit: fixed at 0xC0000000 (PAE entries 8 bytes, non-PAE 4 bytes).
    """

    def __init__(self, mode: PagingMode, pte_base: int) -> None:
        self.mode = mode
        self.pte_base = pte_base & 0xFFFF_FFFF_FFFF_FFFF
        n = len(mode.levels)
        if mode.is64:
            self._mask = (1 << (9 * n + 3)) - 8
            self._shift = 9
            self.size = 1 << (9 * n + 3)
        elif mode.entry_size == 8:  # PAE: 2^20 PTEs of 8 bytes
            self._mask, self._shift, self.size = 0x7FFFF8, 9, 0x800000
        else:  # non-PAE: 2^20 PTEs of 4 bytes
            self._mask, self._shift, self.size = 0x3FFFFC, 10, 0x400000

    @classmethod
    def for_index(cls, mode: PagingMode, index: int) -> "SelfMap":
        base = index << (12 + 9 * (len(mode.levels) - 1))
        if base >> (mode.va_bits - 1):
            base |= ~((1 << mode.va_bits) - 1) & 0xFFFF_FFFF_FFFF_FFFF
        return cls(mode, base)

    @classmethod
    def find(cls, mode: PagingMode, pages: PageCache, dtb: int, pte_base: int | None = None) -> "SelfMap":
        """From KDBG.PteBase when known; else the top-table entry pointing at itself; else the
        pre-1607 fixed index 0x1ED."""
        if not mode.is64:
            return cls(mode, 0xC0000000)
        if pte_base:
            return cls(mode, pte_base)
        top = dtb & mode.dtb_mask
        try:
            table = pages.page(top >> PAGE_SHIFT)
        except MemoryNotPresent:
            table = None
        if table is not None:
            for index in range(256, 512):  # the self-map lives in the kernel half
                entry = _U64(table, index * 8)[0]
                if entry & 1 and entry & mode.table_mask == top:
                    return cls.for_index(mode, index)
        return cls.for_index(mode, 0x1ED)

    def entry_address(self, va: int) -> int:
        """The address of the entry one level up from `va` (the PTE of a page, the PDE of a PTE...)."""
        return (self.pte_base + ((va >> self._shift) & self._mask)) & 0xFFFF_FFFF_FFFF_FFFF

    def addresses(self, va: int) -> list[int]:
        """Entry addresses of every level for `va`, top level first (PXE, PPE, PDE, PTE)."""
        out = []
        a = va
        for _ in self.mode.levels:
            a = self.entry_address(a)
            out.append(a)
        return out[::-1]

    def contains(self, address: int) -> bool:
        return 0 <= (address - self.pte_base) & 0xFFFF_FFFF_FFFF_FFFF < self.size

    def mapped_va(self, entry_address: int) -> int:
        """The VA whose PTE is at `entry_address` (inverse of entry_address for the PTE level)."""
        off = (entry_address - self.pte_base) & (self.size - 1)
        va = (off // self.mode.entry_size) << PAGE_SHIFT
        if self.mode.is64 and va >> (self.mode.va_bits - 1):
            va |= ~((1 << self.mode.va_bits) - 1) & 0xFFFF_FFFF_FFFF_FFFF
        return va


def guess_x64_levels(pages: PageCache, dtb: int, probe_va: int | None, probe: bytes = b"KDBG",
                     probe_offset: int = 0x10) -> int:
    """4 or 5: which walk reads `probe` at `probe_va` (the KDBG's OwnerTag) from this DTB.

    CR4.LA57 is not in the dump header; a kernel that uses 5-level paging has a PML5 at the DTB
    and its addresses need not be 48-bit canonical, so the 4-level walk of the KDBG fails or
    reads something else. When neither walk reads the probe, 4 (the common case).
    """
    if probe_va is None:
        return 4
    for levels, mode in ((4, X64_4), (5, X64_5)):
        try:
            pa = Paging(pages, dtb, mode)._walk(probe_va + probe_offset, follow_prototype=False)
            if pages.read(pa, len(probe)) == probe:
                return levels
        except MemoryNotPresent:
            continue
    return 4
