"""The kernel pool: block headers, the big-page table, the tag tracker (what !pool, !poolused,
!poolfind, !vm and !analyze's pool lines read).

    pool = KernelPool(memory, offsets, is64, symbol, kdbg_value)
    pool.walk_page(address)   -> PageWalk: the blocks of the pool page holding `address`
    pool.find(address)        -> PoolBlock | None: the block (small or big) that holds `address`
    pool.big_pages()          -> list[PoolBlock] from nt!PoolBigPageTable
    pool.tracker()            -> list[TagUse] from nt!PoolTrackTable
    pool.region(address)      -> "Nonpaged pool" or None

Windows' generations, and what is read of each:
- The classic pool (up to 1809) puts a POOL_HEADER in front of every block smaller than a page:
  x64 Ulong1 = PreviousSize:8 | PoolIndex:8 | BlockSize:8 | PoolType:8 in 16-byte units, PoolTag at
  +4, ProcessBilled at +8 (0x10 bytes); x86 PreviousSize:9 | PoolIndex:7 | BlockSize:9 | PoolType:7
  in 8-byte units, PoolTag at +4 (8 bytes). PoolType is the POOL_TYPE + 1, 0 for a free block. A
  page is a chain of such blocks from its first byte: each block's PreviousSize is the BlockSize of
  the one before. These layouts have not changed since Vista; they are declared here once
  (HEADER64, HEADER32) and tests/test_pool.py checks them against the test kernel's PDB.
- Blocks of a page or more ("big pages") have no header: nt!PoolBigPageTable (a pointer to
  nt!PoolBigPageTableSize entries of POOL_TRACKER_BIG_PAGES: Va with bit 0 set once freed, Key =
  tag, PoolType + 1 in bits 8-19 of the third ULONG, NumberOfBytes) says what they are. The
  segment heap of 19H1+ keeps this table for its large allocations, so big-page lookups work on
  both generations.
- The segment heap of 19H1+ (nt!ExPoolState names its heaps) carves segments into LFH and VS
  subsegments with encoded headers, and keeps a POOL_HEADER in front of the caller's bytes of
  each block (PreviousSize 0). kdshell.kernel.segheap decodes them with the keys of
  nt!RtlpHpHeapGlobals and the kernel's types; `walk_page` then lists the blocks of the
  subsegment that touch the page, allocated or free by the LFH bitmap or the VS chunk header.
  Without the kernel's types or keys, one line says what is missing.
- nt!PoolTrackTable points to nt!PoolTrackTableSize POOL_TRACKER_TABLE entries (Key = tag, 0 for
  an unused slot; allocations, frees and bytes for nonpaged and paged pool). Fields are read by
  name from the kernel's types when present, else Windows 10's layout (TRACKER64/TRACKER32).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Callable

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.layout import Memory, Reader
from kdshell.kernel.segheap import HeapError, SegmentHeap, Subsegment

PAGE = 0x1000
BIG_FREE_BIT = 1
MAX_TRACKER_ENTRIES = 0x10000  # a bigger tracker table is corrupt (Windows sizes it by RAM: a few K)
MAX_BIG_ENTRIES = 0x100000
MAX_SCAN_PAGES = 0x10000  # !poolfind/!irpfind walk at most 256 MiB of small-pool pages (a few seconds)


@dataclass(frozen=True)
class HeaderLayout:
    """POOL_HEADER: the bit fields of its first ULONG (Ulong1), as (position, length)."""

    size: int  # sizeof(POOL_HEADER) and the block-size unit
    previous_size: tuple[int, int]
    pool_index: tuple[int, int]
    block_size: tuple[int, int]
    pool_type: tuple[int, int]
    tag: int = 4  # +0x4 PoolTag


HEADER64 = HeaderLayout(0x10, (0, 8), (8, 8), (16, 8), (24, 8))  # +0x8 ProcessBilled
HEADER32 = HeaderLayout(0x8, (0, 9), (9, 7), (16, 9), (25, 7))

# POOL_TRACKER_TABLE (Windows 10): field -> (offset, size); and the entry size
TRACKER64 = ({"Key": (0x0, 4), "NonPagedAllocs": (0x4, 4), "NonPagedFrees": (0x8, 4), "NonPagedBytes": (0x10, 8),
              "PagedAllocs": (0x18, 4), "PagedFrees": (0x1C, 4), "PagedBytes": (0x20, 8)}, 0x28)
TRACKER32 = ({"Key": (0x0, 4), "NonPagedAllocs": (0x4, 4), "NonPagedFrees": (0x8, 4), "NonPagedBytes": (0xC, 4),
              "PagedAllocs": (0x10, 4), "PagedFrees": (0x14, 4), "PagedBytes": (0x18, 4)}, 0x1C)
# POOL_TRACKER_BIG_PAGES: Va, Key, Pattern:8 | PoolType:12 | SlushSize:12, NumberOfBytes
BIG64 = ({"Va": (0x0, 8), "Key": (0x8, 4), "Bits": (0xC, 4), "NumberOfBytes": (0x10, 8)}, 0x18)
BIG32 = ({"Va": (0x0, 4), "Key": (0x4, 4), "Bits": (0x8, 4), "NumberOfBytes": (0xC, 4)}, 0x10)


class PoolError(KdError):
    """A pool structure the dump does not have or kdshell cannot read."""


def tag_text(tag: int) -> str:
    """The four tag characters; the protected bit (0x80000000 of old kernels) is dropped."""
    raw = struct.pack("<I", tag & 0x7FFFFFFF)
    return "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in raw)


def tag_value(text: str) -> int:
    """'MyDr' -> its ULONG (shorter tags are padded with blanks, as WinDbg does)."""
    return int.from_bytes(text[:4].ljust(4).encode("latin-1", "replace"), "little")


def pool_type_is_paged(pool_type: int) -> bool:
    """A POOL_TYPE's paged bit: PagedPool = 1, PagedPoolCacheAligned = 5; NonPagedPoolNx = 0x200 is not."""
    return bool(pool_type & 1)


@dataclass
class PoolBlock:
    address: int  # the POOL_HEADER (small block) or the first page (big block)
    size: int  # bytes, header included (small), NumberOfBytes (big)
    tag: int
    pool_type: int  # the header's or table's PoolType (POOL_TYPE + 1; 0 = free)
    previous_size: int = 0
    pool_index: int = 0
    big: bool = False
    freed: bool = False  # a big entry with the free bit; a segment-heap block its heap calls free
    kind: str = "small"  # "small" (classic), "big", "lfh" or "vs" (segment heap)
    chunk: int | None = None  # a VS block's HEAP_VS_CHUNK_HEADER (in front of its POOL_HEADER)
    corrupt: bool = False  # its VS chunk header does not decode

    @property
    def allocated(self) -> bool:
        return not self.freed and self.pool_type != 0

    @property
    def paged(self) -> bool:
        return self.pool_type != 0 and pool_type_is_paged(self.pool_type - 1)

    @property
    def tag_text(self) -> str:
        return tag_text(self.tag)

    def contains(self, address: int) -> bool:
        start = self.chunk if self.chunk is not None else self.address
        return start <= address < self.address + max(self.size, 1)


@dataclass
class PageWalk:
    page: int
    blocks: list[PoolBlock] = field(default_factory=list)
    problem: str | None = None  # why the walk stopped early


@dataclass
class TagUse:
    tag: int
    nonpaged_allocs: int
    nonpaged_frees: int
    nonpaged_bytes: int
    paged_allocs: int
    paged_frees: int
    paged_bytes: int

    @property
    def tag_text(self) -> str:
        return tag_text(self.tag)

    @property
    def nonpaged_used(self) -> int:
        return self.nonpaged_allocs - self.nonpaged_frees

    @property
    def paged_used(self) -> int:
        return self.paged_allocs - self.paged_frees


def _bits(value: int, spec: tuple[int, int]) -> int:
    return (value >> spec[0]) & ((1 << spec[1]) - 1)


class KernelPool:
    def __init__(self, memory: Memory, offsets: Any, is64: bool, symbol: Callable[[str], int | None],
                 kdbg_value: Callable[[str], int | None]) -> None:
        self.reader = Reader(memory, is64)
        self.offsets = offsets
        self.is64 = is64
        self.symbol = symbol
        self.kdbg_value = kdbg_value
        self.header = HEADER64 if is64 else HEADER32
        self._heap: SegmentHeap | None = None
        self._heap_error: str | None = None
        self._heap_opened = False

    # -- layouts: the kernel's types first, Windows 10's otherwise ---------------------------
    def _layout(self, type_name: str, default: tuple[dict[str, tuple[int, int]], int]) -> tuple[dict[str, tuple[int, int]], int]:
        types = getattr(self.offsets, "types", None)
        t = types.find(type_name) if types is not None else None
        if t is None:
            return default
        fields, size = dict(default[0]), int(t.size or default[1])
        for name in fields:
            try:
                found = t.find_field(name)
            except KdError:
                found = None
            if found is not None and getattr(found[1], "kind", "") != "bitfield":
                fields[name] = (found[0], int(found[1].size))
        return fields, size

    # -- small blocks ------------------------------------------------------------------------
    def header_at(self, address: int) -> PoolBlock:
        """The POOL_HEADER at `address` (MemoryNotPresent when it is not in the dump)."""
        h = self.header
        ulong1 = self.reader.uint(address, 4)
        tag = self.reader.uint(address + h.tag, 4)
        return PoolBlock(address=address, size=_bits(ulong1, h.block_size) * h.size, tag=tag,
                         pool_type=_bits(ulong1, h.pool_type), previous_size=_bits(ulong1, h.previous_size) * h.size,
                         pool_index=_bits(ulong1, h.pool_index))

    # -- the segment heap (19H1+) -----------------------------------------------------------
    def segment_heap(self) -> SegmentHeap | None:
        """The pool's segment heap, None on a classic pool or when it cannot be read
        (`heap_error` then says why)."""
        if not self._heap_opened:
            self._heap_opened = True
            try:
                self._heap = SegmentHeap.open(self.reader, getattr(self.offsets, "types", None), self.symbol)
            except (HeapError, MemoryNotPresent) as e:
                self._heap_error = f"the pool is a segment heap kdshell cannot read: {e}"
        return self._heap

    @property
    def heap_error(self) -> str | None:
        self.segment_heap()
        return self._heap_error

    def _heap_blocks(self, heap: SegmentHeap, sub: Subsegment) -> tuple[list[PoolBlock], str | None]:
        blocks, problem = heap.blocks(sub)
        return [PoolBlock(address=b.header, size=b.size, tag=b.tag, pool_type=b.pool_type,
                          previous_size=b.previous_size, freed=not b.allocated, kind=sub.kind, chunk=b.chunk,
                          corrupt=b.corrupt) for b in blocks], problem

    def _heap_walk(self, heap: SegmentHeap, sub: Subsegment, address: int) -> PageWalk:
        page = address & ~(PAGE - 1) & self.reader.mask
        walk = PageWalk(page)
        if sub.kind not in ("lfh", "vs"):
            what = {"header": "the segment's own header", "free": "a free page range",
                    "range": "an allocated page range that is neither an LFH nor a VS subsegment"}[sub.kind]
            walk.problem = f"{address:x} is in {what} of the segment heap's segment {sub.segment:x}: it holds no pool blocks"
            return walk
        try:
            blocks, walk.problem = self._heap_blocks(heap, sub)
        except MemoryNotPresent:
            walk.problem = f"Pool page {page:x} is not in the dump"
            return walk
        walk.blocks = [b for b in blocks if (b.chunk if b.chunk is not None else b.address) < page + PAGE
                       and b.address + b.size > page]
        return walk

    def walk_page(self, address: int) -> PageWalk:
        """Every block of the page holding `address`, as !pool walks it: a segment-heap subsegment's
        blocks that touch the page, else the classic page's chain of headers from its first byte."""
        heap = self.segment_heap()
        if heap is not None:
            try:
                sub = heap.locate(address & self.reader.mask)
            except MemoryNotPresent:
                sub = None
            if sub is not None:
                return self._heap_walk(heap, sub, address & self.reader.mask)
        walk = self._classic_walk(address)
        if walk.problem and self.heap_error and not walk.problem.endswith("is not in the dump"):
            walk.problem += f"; {self.heap_error}"
        return walk

    def _classic_walk(self, address: int) -> PageWalk:
        page = address & ~(PAGE - 1) & self.reader.mask
        walk = PageWalk(page)
        at, previous = page, 0
        while at < page + PAGE:
            try:
                block = self.header_at(at)
            except MemoryNotPresent:
                walk.problem = f"Pool page {at:x} is not in the dump"
                return walk
            if block.previous_size != previous or block.size == 0 or at + block.size > page + PAGE:
                what = ("its previous size" if block.previous_size != previous else
                        "a zero block size" if block.size == 0 else "a block size past the page end")
                walk.problem = (f"The pool header at {at:x} does not chain ({what}): the block is corrupt, or the "
                                "page is not a small-pool page (a big allocation, a stack, or a segment-heap page)")
                return walk
            walk.blocks.append(block)
            previous = block.size
            at += block.size
        return walk

    # -- big blocks --------------------------------------------------------------------------
    def _where(self, name: str) -> int | None:
        """The address of kernel variable nt!name: the KDBG's field when it has one, else the symbol."""
        try:
            found = self.kdbg_value(name)
        except KeyError:  # not a KDBG field
            found = None
        return found or self.symbol(name)

    def _table(self, pointer: str, count: str) -> tuple[int, int | None]:
        where = self._where(pointer)
        if not where:
            raise PoolError(f"nt!{pointer} is not known (no kernel symbols or KDBG field): load the kernel's symbols")
        try:
            table = self.reader.ptr(where)
        except MemoryNotPresent:
            raise PoolError(f"nt!{pointer} ({where:x}) is not in the dump") from None
        size_at = self.symbol(count)
        entries = None
        if size_at:
            try:
                entries = self.reader.ptr(size_at)
            except MemoryNotPresent:
                entries = None
        return table, entries

    def big_pages(self) -> list[PoolBlock]:
        table, entries = self._table("PoolBigPageTable", "PoolBigPageTableSize")
        fields, size = self._layout("_POOL_TRACKER_BIG_PAGES", BIG64 if self.is64 else BIG32)
        out = []
        for i in range(min(entries if entries is not None else MAX_BIG_ENTRIES, MAX_BIG_ENTRIES)):
            at = table + i * size
            try:
                va = self.reader.uint(at + fields["Va"][0], fields["Va"][1])
                key = self.reader.uint(at + fields["Key"][0], 4)
                bits = self.reader.uint(at + fields["Bits"][0], 4) if "Bits" in fields else 0
                nbytes = self.reader.uint(at + fields["NumberOfBytes"][0], fields["NumberOfBytes"][1])
            except MemoryNotPresent:
                break
            if va == 0 or va == BIG_FREE_BIT:
                continue
            out.append(PoolBlock(address=va & ~BIG_FREE_BIT, size=nbytes, tag=key, pool_type=(bits >> 8) & 0xFFF,
                                 big=True, freed=bool(va & BIG_FREE_BIT)))
        return out

    def find_big(self, address: int) -> PoolBlock | None:
        """The big-page entry whose pages hold `address` (the allocated one when a freed entry
        describes the same pages)."""
        hits = [b for b in self.big_pages() if b.address <= address < b.address + max(b.size, PAGE)]
        hits.sort(key=lambda b: b.freed)
        return hits[0] if hits else None

    def find(self, address: int) -> PoolBlock | None:
        """The block holding `address`: a big-page entry, else the small block of its page."""
        try:
            big = self.find_big(address)
        except PoolError:
            big = None
        if big is not None:
            return big
        walk = self.walk_page(address)
        return next((b for b in walk.blocks if b.contains(address)), None)

    # -- the tag tracker ---------------------------------------------------------------------
    def tracker(self) -> list[TagUse]:
        table, entries = self._table("PoolTrackTable", "PoolTrackTableSize")
        fields, size = self._layout("_POOL_TRACKER_TABLE", TRACKER64 if self.is64 else TRACKER32)
        out: list[TagUse] = []
        for i in range(min(entries if entries is not None else MAX_TRACKER_ENTRIES, MAX_TRACKER_ENTRIES)):
            at = table + i * size
            try:
                raw = self.reader.read(at, size)
            except MemoryNotPresent:
                if entries is not None and not out:
                    raise PoolError(f"The pool tag table (nt!PoolTrackTable = {table:x}) is not in the dump") from None
                break

            def get(name: str) -> int:
                off, width = fields[name]
                return int.from_bytes(raw[off:off + width], "little")

            key = get("Key")
            if key == 0:
                continue
            out.append(TagUse(key, get("NonPagedAllocs"), get("NonPagedFrees"), get("NonPagedBytes"),
                              get("PagedAllocs"), get("PagedFrees"), get("PagedBytes")))
        return out

    # -- regions -----------------------------------------------------------------------------
    def variable(self, name: str) -> int | None:
        where = self._where(name)
        if not where:
            return None
        try:
            return self.reader.ptr(where) or None
        except MemoryNotPresent:
            return None

    def region(self, address: int) -> str | None:
        """The pool region of `address` from the kernel's range variables; else, in a segment heap,
        from the pool type of the block that holds it (Windows 10 keeps no ranges: it places pool
        dynamically); None when neither says."""
        for start, end, name in (("MmNonPagedPoolStart", "MmNonPagedPoolEnd", "Nonpaged pool"),
                                 ("MmPagedPoolStart", "MmPagedPoolEnd", "Paged pool")):
            lo, hi = self.variable(start), self.variable(end)
            if lo and hi and lo <= address < hi:
                return name
        heap = self.segment_heap()
        try:
            sub = heap.locate(address & self.reader.mask) if heap is not None else None
        except MemoryNotPresent:
            sub = None
        if heap is None or sub is None:
            return None
        block = next((b for b in self._heap_walk(heap, sub, address).blocks if b.contains(address)), None)
        return block_region(block) if block is not None else None

    def nonpaged_range(self) -> tuple[int, int] | None:
        lo, hi = self.variable("MmNonPagedPoolStart"), self.variable("MmNonPagedPoolEnd")
        return (lo, hi) if lo and hi and lo < hi else None

    def scan_small(self, match: Callable[[PoolBlock], bool]) -> tuple[list[PoolBlock], str | None]:
        """The small blocks that `match`: every LFH and VS subsegment of a segment heap, else the
        nonpaged range page by page (pages that do not chain are skipped); and a note when the
        search stopped early."""
        heap = self.segment_heap()
        if heap is not None:
            out: list[PoolBlock] = []
            notes = []
            for sub in heap.subsegments():
                try:
                    blocks, problem = self._heap_blocks(heap, sub)
                except MemoryNotPresent:
                    continue
                out += [b for b in blocks if match(b)]
                if problem:
                    notes.append(problem)
            return out, "; ".join(notes) or None
        found = self.nonpaged_range()
        if found is None:
            return [], None
        lo, hi = found
        start = lo & ~(PAGE - 1)
        end = min(hi, start + MAX_SCAN_PAGES * PAGE)
        out = [b for page in range(start, end, PAGE) for b in self.walk_page(page).blocks if match(b)]
        note = None
        if end < hi:
            note = (f"Searched the first {MAX_SCAN_PAGES * PAGE >> 20} MiB of the nonpaged range only "
                    f"({start:x} : {end:x})")
        return out, note

    def small_scope(self) -> str | None:
        """Where scan_small looks, as !poolfind names it; None when nowhere (no heap, no range)."""
        heap = self.segment_heap()
        if heap is not None:
            segments = sum(1 for _ in heap.segments())
            return (f"the segment heap's LFH and VS subsegments ({len(heap.heaps)} heap"
                    f"{'s' if len(heap.heaps) != 1 else ''}, {segments} segment{'s' if segments != 1 else ''})")
        found = self.nonpaged_range()
        if found is None:
            return None
        w = 16 if self.is64 else 8
        return f"nonpaged pool ({found[0]:0{w}x} : {found[1]:0{w}x})"

    def allocated_pages(self) -> int | None:
        """nt!MmAllocatedNonPagedPool (pages), None when unknown."""
        at = self.symbol("MmAllocatedNonPagedPool")
        if not at:
            return None
        try:
            return self.reader.ptr(at)
        except MemoryNotPresent:
            return None


def block_region(block: PoolBlock) -> str:
    """A block's region by its POOL_HEADER's pool type (a segment heap has no ranges to say it)."""
    return "Paged pool" if block.paged else "Nonpaged pool"


# -- tag descriptions (kdshell/data/pooltags.txt) ----------------------------------------------------
@lru_cache(maxsize=1)
def _tag_table() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    with resources.files("kdshell").joinpath("data/pooltags.txt").open("r", encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            tag, owner, what = _split(line.rstrip("\n"))
            out[tag] = (owner, what)
    return out


def _split(line: str) -> tuple[str, str, str]:
    tag = line[:4]
    owner, _, what = line[4:].strip().lstrip("-").strip().partition(" - ")
    return tag, owner.strip(), what.strip()


def tag_owner(tag: str) -> tuple[str, str] | None:
    """(owner, description) of a four-character tag, None when the file does not list it."""
    return _tag_table().get(tag.ljust(4)[:4])
