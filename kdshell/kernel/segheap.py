"""The kernel pool as a segment heap (Windows 10 19H1 and later): segments, page ranges, LFH and VS
subsegments, and the POOL_HEADER each block still carries.

    heap = SegmentHeap.open(reader, types, symbol)   # None on a classic pool; PoolError names what is missing
    heap.locate(address)   -> Subsegment | None: the page range (its kind, bounds, heap) holding `address`
    heap.blocks(sub)       -> (blocks, problem): every block of an LFH or VS subsegment, in address order
    heap.subsegments()     -> every LFH and VS subsegment of every segment of every pool heap

What is read, every field by name from the kernel's types (the PDB), with the keys from
nt!RtlpHpHeapGlobals (HeapKey, LfhKey):
- nt!ExPoolState.PoolNode[n].Heaps[] point at the pool's _SEGMENT_HEAPs (none: the classic pool).
- Each heap's SegContexts[] give a SegmentMask and UnitShift: an address's segment is address &
  SegmentMask, and it is one when its _HEAP_PAGE_SEGMENT.Signature equals segment ^ &SegContext ^
  HeapKey ^ 0xA2E64EADA2E64EAD. DescArray[(address - segment) >> UnitShift] describes the unit; a
  range's first descriptor has RangeFlags FIRST and UnitSize, the others UnitOffset back to it.
- An LFH subsegment (RangeFlags 0x01): BlockOffsets.EncodedData ^ (ULONG)LfhKey ^ (subsegment >> 12)
  gives BlockSize and FirstBlockOffset; BlockBitmap keeps two bits a block, the low one set while
  the block is allocated.
- A VS subsegment (_HEAP_VS_SUBSEGMENT.Signature == Size ^ 0x2BED) is a chain of chunks from its
  header's end (16-byte aligned): each _HEAP_VS_CHUNK_HEADER's Sizes.HeaderBits are stored xor
  HeapKey xor the chunk's address; UnsafeSize and UnsafePrevSize count 16-byte units, Allocated
  says whether it is in use. A chunk whose header does not decode ends the walk: the problem says
  where, and its POOL_HEADER is still shown (marked corrupt) when it looks like one.
- The POOL_HEADER follows the chunk header (VS) or starts the block (LFH): tag, PoolType, BlockSize.
Large allocations (a page or more) are big pages, found through nt!PoolBigPageTable (pool.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.layout import Reader

SEGMENT_SIGNATURE_XOR = 0xA2E64EADA2E64EAD
VS_SIGNATURE_XOR = 0x2BED
RANGE_LFH, RANGE_COMMITTED, RANGE_ALLOCATED, RANGE_FIRST = 0x01, 0x02, 0x04, 0x08
MAX_SEGMENTS = 4096  # a longer segment list is corrupt (1 MB each: 4 GiB of pool)
MAX_BLOCKS = 0x10000  # blocks of one subsegment


class HeapError(KdError):
    """The segment heap cannot be read: the types or symbols it needs are missing."""


@dataclass(frozen=True)
class Subsegment:
    kind: str  # "lfh", "vs", "range" (an allocated range that is neither), "free" (a free range), "header"
    start: int  # its first page
    end: int
    heap: int  # the _SEGMENT_HEAP
    segment: int


@dataclass
class HeapBlock:
    header: int  # the POOL_HEADER
    size: int  # bytes, POOL_HEADER included
    tag: int
    pool_type: int  # the POOL_HEADER's PoolType (POOL_TYPE + 1)
    previous_size: int
    allocated: bool  # the heap's own state: the LFH bitmap or the VS chunk header
    chunk: int | None = None  # the VS chunk header
    corrupt: bool = False  # its VS chunk header did not decode


class _Types:
    """Fields by name from the kernel's types; HeapError names the first one missing."""

    def __init__(self, types: Any) -> None:
        self.types = types

    def _type(self, name: str) -> Any:
        t = self.types.find(name) if self.types is not None else None
        if t is None:
            raise HeapError(f"the kernel's symbols have no type {name}")
        return t

    def field(self, type_name: str, path: str) -> tuple[int, Any]:
        try:
            found = self._type(type_name).find_field(path)
        except HeapError:
            raise
        except KdError:
            found = None
        if found is None:
            raise HeapError(f"the kernel's type {type_name} has no field {path}")
        return int(found[0]), found[1]

    def offset(self, type_name: str, path: str) -> int:
        return self.field(type_name, path)[0]

    def size(self, type_name: str) -> int:
        return int(self._type(type_name).size)

    def count(self, type_name: str, path: str) -> int:
        t = self.field(type_name, path)[1].strip()
        return int(t.count) if t.kind == "array" else 1

    def reader(self, type_name: str, path: str) -> Callable[[Reader, int], int]:
        """A function reading the field (a bit field too) of the structure at an address."""
        offset, t = self.field(type_name, path)
        t = t.strip()
        if t.kind == "bitfield":
            width, pos, length = int(t.target.size), int(t.bit_position), int(t.bit_length)
            return lambda r, base: (r.uint(base + offset, width) >> pos) & ((1 << length) - 1)
        size = int(t.size)
        return lambda r, base: r.uint(base + offset, size)

    def bits(self, type_name: str, path: str) -> tuple[int, int]:
        """(shift, length) of a bit field within the integer at its offset (whole fields: 0, size * 8)."""
        t = self.field(type_name, path)[1].strip()
        if t.kind == "bitfield":
            return int(t.bit_position), int(t.bit_length)
        return 0, int(t.size) * 8


class SegmentHeap:
    def __init__(self, reader: Reader, types: _Types, heaps: list[int], heap_key: int, lfh_key: int) -> None:
        self.r = reader
        self.t = types
        self.heaps = heaps
        self.heap_key = heap_key
        self.lfh_key = lfh_key
        t = types
        self.ctx_count = t.count("_SEGMENT_HEAP", "SegContexts")
        self.ctx_size = t.size("_HEAP_SEG_CONTEXT")
        self.ctx_at = t.offset("_SEGMENT_HEAP", "SegContexts")
        self.mask_of = t.reader("_HEAP_SEG_CONTEXT", "SegmentMask")
        self.shift_of = t.reader("_HEAP_SEG_CONTEXT", "UnitShift")
        self.first_index_of = t.reader("_HEAP_SEG_CONTEXT", "FirstDescriptorIndex")
        self.list_head = t.offset("_HEAP_SEG_CONTEXT", "SegmentListHead")
        self.signature = t.offset("_HEAP_PAGE_SEGMENT", "Signature")
        self.seg_link = t.offset("_HEAP_PAGE_SEGMENT", "ListEntry")
        self.desc_at = t.offset("_HEAP_PAGE_SEGMENT", "DescArray")
        self.desc_count = t.count("_HEAP_PAGE_SEGMENT", "DescArray")
        self.desc_size = t.size("_HEAP_PAGE_RANGE_DESCRIPTOR")
        self.flags_of = t.reader("_HEAP_PAGE_RANGE_DESCRIPTOR", "RangeFlags")
        self.unit_offset_of = t.reader("_HEAP_PAGE_RANGE_DESCRIPTOR", "UnitOffset")
        self.unit_size_of = t.reader("_HEAP_PAGE_RANGE_DESCRIPTOR", "UnitSize")
        self.vs_size_of = t.reader("_HEAP_VS_SUBSEGMENT", "Size")
        self.vs_signature_of = t.reader("_HEAP_VS_SUBSEGMENT", "Signature")
        self.vs_first = (t.size("_HEAP_VS_SUBSEGMENT") + 0xF) & ~0xF
        self.chunk_size = t.size("_HEAP_VS_CHUNK_HEADER")
        self.sizes_at = t.offset("_HEAP_VS_CHUNK_HEADER", "Sizes.HeaderBits")
        self.size_bits = t.bits("_HEAP_VS_CHUNK_HEADER", "Sizes.UnsafeSize")
        self.prev_bits = t.bits("_HEAP_VS_CHUNK_HEADER", "Sizes.UnsafePrevSize")
        self.alloc_bits = t.bits("_HEAP_VS_CHUNK_HEADER", "Sizes.Allocated")
        # UnsafeSize and friends are bit fields of the ULONGs at +0 and +4 of HeaderBits
        self.size_word = t.offset("_HEAP_VS_CHUNK_HEADER", "Sizes.UnsafeSize") - self.sizes_at
        self.prev_word = t.offset("_HEAP_VS_CHUNK_HEADER", "Sizes.UnsafePrevSize") - self.sizes_at
        self.alloc_word = t.offset("_HEAP_VS_CHUNK_HEADER", "Sizes.Allocated") - self.sizes_at
        self.lfh_offsets = t.offset("_HEAP_LFH_SUBSEGMENT", "BlockOffsets.EncodedData")
        self.lfh_block_size = t.bits("_HEAP_LFH_SUBSEGMENT_ENCODED_OFFSETS", "BlockSize")
        self.lfh_first_block = t.bits("_HEAP_LFH_SUBSEGMENT_ENCODED_OFFSETS", "FirstBlockOffset")
        self.lfh_size_at = t.offset("_HEAP_LFH_SUBSEGMENT_ENCODED_OFFSETS", "BlockSize")
        self.lfh_first_at = t.offset("_HEAP_LFH_SUBSEGMENT_ENCODED_OFFSETS", "FirstBlockOffset")
        self.lfh_count_of = t.reader("_HEAP_LFH_SUBSEGMENT", "BlockCount")
        self.lfh_bitmap = t.offset("_HEAP_LFH_SUBSEGMENT", "BlockBitmap")

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, reader: Reader, types: Any, symbol: Callable[[str], int | None]) -> SegmentHeap | None:
        """The pool's segment heap; None when the kernel keeps a classic pool (no nt!ExPoolState, or
        no heap in it). HeapError (one line) when the kernel has one but its types or keys are missing."""
        state = symbol("ExPoolState")
        if not state or not reader.is64:
            return None
        t = _Types(types)
        try:
            heaps = cls._heaps(reader, t, state)
        except MemoryNotPresent:
            raise HeapError(f"nt!ExPoolState ({state:x}) is not in the dump") from None
        if not heaps:
            return None
        globals_at = symbol("RtlpHpHeapGlobals")
        if not globals_at:
            raise HeapError("nt!RtlpHpHeapGlobals (the heap's keys) is not known: the kernel's symbols lack it")
        try:
            heap_key = t.reader("_RTLP_HP_HEAP_GLOBALS", "HeapKey")(reader, globals_at)
            lfh_key = t.reader("_RTLP_HP_HEAP_GLOBALS", "LfhKey")(reader, globals_at)
        except MemoryNotPresent:
            raise HeapError(f"nt!RtlpHpHeapGlobals ({globals_at:x}) is not in the dump") from None
        return cls(reader, t, heaps, heap_key, lfh_key)

    @staticmethod
    def _heaps(reader: Reader, t: _Types, state: int) -> list[int]:
        nodes = t.count("_EX_POOL_HEAP_MANAGER_STATE", "PoolNode")
        try:
            used = t.reader("_EX_POOL_HEAP_MANAGER_STATE", "NumberOfPools")(reader, state)
            nodes = max(1, min(nodes, used))
        except HeapError:
            pass
        node_at = t.offset("_EX_POOL_HEAP_MANAGER_STATE", "PoolNode")
        node_size = t.size("_EX_HEAP_POOL_NODE")
        heaps_at = t.offset("_EX_HEAP_POOL_NODE", "Heaps")
        per_node = t.count("_EX_HEAP_POOL_NODE", "Heaps")
        out = []
        for n in range(nodes):
            for h in range(per_node):
                heap = reader.ptr(state + node_at + n * node_size + heaps_at + 8 * h)
                if heap and heap not in out:
                    out.append(heap)
        return out

    # -- segments and ranges -----------------------------------------------------------------
    def _contexts(self) -> Iterator[tuple[int, int]]:
        for heap in self.heaps:
            for i in range(self.ctx_count):
                yield heap, heap + self.ctx_at + i * self.ctx_size

    def _is_segment(self, segment: int, ctx: int) -> bool:
        try:
            signature = self.r.uint(segment + self.signature, 8)
        except MemoryNotPresent:
            return False
        return signature ^ segment ^ ctx ^ self.heap_key == SEGMENT_SIGNATURE_XOR

    def locate(self, address: int) -> Subsegment | None:
        """The page range of a heap segment that holds `address`, None when no segment does."""
        for heap, ctx in self._contexts():
            try:
                mask = self.mask_of(self.r, ctx) & self.r.mask
                shift = self.shift_of(self.r, ctx)
                first = self.first_index_of(self.r, ctx)
            except MemoryNotPresent:
                continue
            segment = address & mask
            if not mask or not self._is_segment(segment, ctx):
                continue
            index = (address - segment) >> shift
            return self._range(heap, segment, shift, first, index)
        return None

    def _desc(self, segment: int, index: int) -> int:
        return segment + self.desc_at + index * self.desc_size

    def _range(self, heap: int, segment: int, shift: int, first: int, index: int) -> Subsegment:
        if index < first:
            return Subsegment("header", segment, segment + (first << shift), heap, segment)
        flags = self.flags_of(self.r, self._desc(segment, index))
        if not flags & RANGE_FIRST:
            index -= self.unit_offset_of(self.r, self._desc(segment, index))
            flags = self.flags_of(self.r, self._desc(segment, index))
        units = max(self.unit_size_of(self.r, self._desc(segment, index)), 1)
        start = segment + (index << shift)
        end = start + (units << shift)
        if not flags & RANGE_ALLOCATED:
            kind = "free"
        elif flags & RANGE_LFH:
            kind = "lfh"
        elif self.vs_signature_of(self.r, start) == self.vs_size_of(self.r, start) ^ VS_SIGNATURE_XOR:
            kind = "vs"
        else:
            kind = "range"
        return Subsegment(kind, start, end, heap, segment)

    def segments(self) -> Iterator[tuple[int, int, int, int]]:
        """(heap, segment, unit shift, first descriptor) of every segment on the heaps' lists."""
        for heap, ctx in self._contexts():
            try:
                shift = self.shift_of(self.r, ctx)
                first = self.first_index_of(self.r, ctx)
                head = ctx + self.list_head
                link = self.r.ptr(head)
            except MemoryNotPresent:
                continue
            seen = 0
            while link and link != head and seen < MAX_SEGMENTS:
                segment = link - self.seg_link
                if not self._is_segment(segment, ctx):
                    break
                yield heap, segment, shift, first
                seen += 1
                try:
                    link = self.r.ptr(link)
                except MemoryNotPresent:
                    break

    def subsegments(self) -> Iterator[Subsegment]:
        for heap, segment, shift, first in self.segments():
            index = first
            while index < self.desc_count:
                try:
                    sub = self._range(heap, segment, shift, first, index)
                except MemoryNotPresent:
                    break
                if sub.kind in ("lfh", "vs"):
                    yield sub
                index = max(index + 1, (sub.end - segment) >> shift)

    # -- blocks ------------------------------------------------------------------------------
    def _pool_header(self, at: int) -> tuple[int, int, int, int]:
        """(BlockSize in bytes, tag, PoolType, PreviousSize in bytes) of the x64 POOL_HEADER at `at`."""
        ulong1 = self.r.uint(at, 4)
        return ((ulong1 >> 16) & 0xFF) << 4, self.r.uint(at + 4, 4), (ulong1 >> 24) & 0xFF, (ulong1 & 0xFF) << 4

    def blocks(self, sub: Subsegment) -> tuple[list[HeapBlock], str | None]:
        if sub.kind == "lfh":
            return self._lfh_blocks(sub)
        if sub.kind == "vs":
            return self._vs_blocks(sub)
        return [], None

    def _lfh_blocks(self, sub: Subsegment) -> tuple[list[HeapBlock], str | None]:
        encoded = self.r.uint(sub.start + self.lfh_offsets, 4)
        decoded = encoded ^ (self.lfh_key & 0xFFFFFFFF) ^ ((sub.start >> 12) & 0xFFFFFFFF)
        size = (decoded >> (8 * self.lfh_size_at + self.lfh_block_size[0])) & ((1 << self.lfh_block_size[1]) - 1)
        first = (decoded >> (8 * self.lfh_first_at + self.lfh_first_block[0])) & ((1 << self.lfh_first_block[1]) - 1)
        count = self.lfh_count_of(self.r, sub.start)
        span = sub.end - sub.start
        if size == 0 or first == 0 or first + size * count > span or count > MAX_BLOCKS:
            return [], (f"The LFH subsegment at {sub.start:x} does not decode with nt!RtlpHpHeapGlobals.LfhKey "
                        f"(block size {size:#x}, first block {first:#x}, {count} blocks): it is corrupt")
        out = []
        bitmap = sub.start + self.lfh_bitmap
        agree = 0
        for i in range(count):
            at = sub.start + first + i * size
            busy = bool((self.r.uint(bitmap + 8 * (i // 32), 8) >> (2 * (i % 32))) & 1)
            header_size, tag, pool_type, previous = self._pool_header(at)
            agree += busy and header_size == size
            out.append(HeapBlock(at, size, tag, pool_type, previous, busy))
        if any(b.allocated for b in out) and not agree:
            # a wrong key can still give a plausible size: no allocated block's POOL_HEADER says it
            return [], (f"The LFH subsegment at {sub.start:x} does not decode with nt!RtlpHpHeapGlobals.LfhKey "
                        f"(block size {size:#x}: no allocated block's POOL_HEADER has that size): it is corrupt")
        return out, None

    def _decode_chunk(self, at: int) -> tuple[int, int, int]:
        bits = self.r.uint(at + self.sizes_at, 8) ^ at ^ self.heap_key

        def get(word: int, spec: tuple[int, int]) -> int:
            return (bits >> (8 * word + spec[0])) & ((1 << spec[1]) - 1)

        return get(self.size_word, self.size_bits) << 4, get(self.prev_word, self.prev_bits) << 4, \
            get(self.alloc_word, self.alloc_bits)

    def _vs_blocks(self, sub: Subsegment) -> tuple[list[HeapBlock], str | None]:
        out: list[HeapBlock] = []
        problems: list[str] = []
        at, previous = sub.start + self.vs_first, 0
        while at < sub.end and len(out) < MAX_BLOCKS:
            size, prev, allocated = self._decode_chunk(at)
            header = at + self.chunk_size
            block_size, tag, pool_type, previous_size = self._pool_header(header)
            if size == 0 or at + size > sub.end or prev != previous or allocated > 1:
                what = ("a zero size" if size == 0 else "a size past the subsegment's end" if at + size > sub.end
                        else "a previous size that is not its neighbour's" if prev != previous
                        else "an allocated flag that is neither 0 nor 1")
                problems.append(f"The VS chunk header at {at:x} does not decode with nt!RtlpHpHeapGlobals.HeapKey "
                                f"({what}): it is corrupt")
                if not (block_size and pool_type and header + block_size <= sub.end):
                    break
                # the POOL_HEADER behind it still says how long the block is: the walk goes on past it
                out.append(HeapBlock(header, block_size, tag, pool_type, previous_size, True, at, True))
                previous, at = block_size + self.chunk_size, header + block_size
                continue
            if not allocated or not block_size or block_size > size - self.chunk_size:
                block_size = size - self.chunk_size  # a free chunk: its own size
            out.append(HeapBlock(header, block_size, tag, pool_type, previous_size, bool(allocated), at))
            previous = size
            at += size
        return out, "; ".join(problems) or None
