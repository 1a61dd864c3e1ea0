"""Virtual memory: one interface over two kinds of backing.

Complete and kernel dumps translate through page tables into physical pages; a small memory dump
has only saved virtual ranges. Everything above this module reads `read(va, size)` and never
knows which.

- `read(va, size)` gives all the bytes or raises MemoryNotPresent at the first missing one.
- `chunks(va, size)` walks a range and yields `(address, data, length)` pieces in order, `data`
  being the bytes or the MemoryNotPresent that stopped them: what display and search commands
  use to print `??` for the holes and carry on.
- `translate(va)` is the physical address (TranslatedMemory only; None for saved ranges).
"""
from __future__ import annotations

import bisect
from typing import Iterator

from kdshell.errors import MemoryNotPresent
from kdshell.memory.paging import PageCache, PageNotPresent, Paging
from kdshell.memory.physical import PAGE_SHIFT, PAGE_SIZE, not_present_message
from kdshell.memory.sparse import SparseMemory

PAGE_MASK = PAGE_SIZE - 1
Chunk = tuple[int, "bytes | MemoryNotPresent", int]
# stretches(): a readable piece may be a reused buffer holding more than `size` bytes
Stretch = tuple[int, "bytes | bytearray | MemoryNotPresent", int]


class VirtualMemory:
    pointer_size = 8
    address_mask = 0xFFFF_FFFF_FFFF_FFFF

    def read(self, address: int, size: int) -> bytes:
        raise NotImplementedError

    def chunks(self, address: int, size: int) -> Iterator[Chunk]:
        raise NotImplementedError

    def translate(self, address: int) -> int | None:
        return None

    def read_pointer(self, address: int, pointer_size: int | None = None) -> int:
        n = pointer_size or self.pointer_size
        return int.from_bytes(self.read(address, n), "little")

    def read_int(self, address: int, size: int) -> int:
        return int.from_bytes(self.read(address, size), "little")

    def readable(self, address: int, size: int = 1) -> bool:
        try:
            self.read(address, size)
        except MemoryNotPresent:
            return False
        return True

    def read_partial(self, address: int, size: int) -> tuple[bytes, bytearray, list[MemoryNotPresent]]:
        """(bytes, valid flags per byte, errors met): bytes of holes are zero and flagged 0."""
        data = bytearray(size)
        valid = bytearray(size)
        errors: list[MemoryNotPresent] = []
        for at, piece, length in self.chunks(address, size):
            off = (at - address) & self.address_mask
            if isinstance(piece, MemoryNotPresent):
                errors.append(piece)
                continue
            data[off : off + length] = piece
            valid[off : off + length] = b"\x01" * length
        return bytes(data), valid, errors


class TranslatedMemory(VirtualMemory):
    """Reads through a paging walk (paging.py) into the dump's physical pages."""

    def __init__(self, pages: PageCache, paging: Paging):
        self.pages = pages
        self.paging = paging
        self.physical = pages.physical
        if not paging.mode.is64:
            self.pointer_size = 4
            self.address_mask = 0xFFFFFFFF

    @property
    def dtb(self) -> int:
        return self.paging.dtb

    def translate(self, address: int) -> int:
        return self.paging.translate(address)

    def _page(self, address: int, pa: int) -> bytes:
        try:
            return self.pages.page(pa >> PAGE_SHIFT)
        except MemoryNotPresent:
            pfn = pa >> PAGE_SHIFT
            raise PageNotPresent(address, not_present_message(pfn), pfn=pfn) from None

    def read(self, address: int, size: int) -> bytes:
        translate = self.paging.translate
        if size <= PAGE_SIZE - (address & PAGE_MASK):  # the common case: one page
            pa = translate(address)
            off = pa & PAGE_MASK
            return self._page(address, pa)[off : off + size]
        out = bytearray()
        while size > 0:
            off = address & PAGE_MASK
            chunk = min(size, PAGE_SIZE - off)
            pa = translate(address)
            out += self._page(address, pa)[off : off + chunk]
            address = (address + chunk) & self.address_mask
            size -= chunk
        return bytes(out)

    def chunks(self, address: int, size: int) -> Iterator[Chunk]:
        """Pieces of at most a page; a not-valid upper-level entry yields one error for all the
        addresses it covers (a missing PDE answers for 2 MiB), so scans skip ahead quickly."""
        while size > 0:
            off = address & PAGE_MASK
            try:
                pa = self.paging.translate(address)
                chunk = min(size, PAGE_SIZE - off)
                page = self._page(address, pa)
                yield address, page[pa & PAGE_MASK : (pa & PAGE_MASK) + chunk], chunk
            except PageNotPresent as exc:
                span = max(exc.span, PAGE_SIZE)
                chunk = min(size, span - (address & (span - 1)))
                yield address, exc, chunk
            address = (address + chunk) & self.address_mask
            size -= chunk


    def stretches(self, address: int, size: int) -> Iterator[Stretch]:
        """Like chunks(), in pieces as long as the memory is contiguous in the dump file (a large
        page at once, pages adjacent in the file together, up to 8 MiB), and one error for what
        an empty paging entry covers. A readable piece is a buffer reused for the next piece:
        only its first `size` bytes count, and only until the next piece is asked for."""
        phys = self.physical
        buf = bytearray(_STRETCH)
        for va, pa, n in self.paging.runs(address, size):
            if isinstance(pa, MemoryNotPresent):
                yield va, pa, n
                continue
            while n > 0:
                pfn, first = pa >> PAGE_SHIFT, pa & PAGE_MASK
                pages = min((first + n + PAGE_MASK) >> PAGE_SHIFT, _STRETCH >> PAGE_SHIFT)
                extent = phys.stored_extent(pfn, pages)
                if extent is None:  # not in the dump: this PFN and the ones after it that are not either
                    chunk = min(n, (phys.missing_run(pfn, pages) << PAGE_SHIFT) - first)
                    try:
                        phys.page(pfn)
                        why = not_present_message(pfn)
                    except MemoryNotPresent as exc:
                        why = exc.why
                    yield va, PageNotPresent(va, why, pfn=pfn), chunk
                else:
                    off, count = extent
                    chunk = min(n, (count << PAGE_SHIFT) - first)
                    phys.read_into(buf, off + first, chunk)
                    yield va, buf, chunk
                va += chunk
                pa += chunk
                n -= chunk


_STRETCH = 8 << 20  # bytes read at once by TranslatedMemory.stretches (one buffer)


class SavedRangesMemory(VirtualMemory):
    """A small memory dump's saved ranges."""

    def __init__(self, sparse: SparseMemory, pointer_size: int = 8):
        self.sparse = sparse
        self.pointer_size = pointer_size
        if pointer_size == 4:
            self.address_mask = 0xFFFFFFFF
        self._ranges = sparse.ranges()  # sorted, disjoint
        self._starts = [r.start for r in self._ranges]

    def read(self, address: int, size: int) -> bytes:
        # 32-bit targets keep sign-extended pointers (KDBG fields): fold them to 32 bits.
        return self.sparse.read(address & self.address_mask, size)

    def add_range(self, start: int, size: int, file_offset: int, source: str) -> None:
        """Save one more range: a small dump's KPRCB/ETHREAD/EPROCESS copy, placed at the address
        the kernel layer derived for it (kdshell.kernel.state.map_triage_copies). Ranges already
        saved win where they overlap."""
        self.sparse.add(start & self.address_mask, size, file_offset, source)
        self._ranges = self.sparse.ranges()
        self._starts = [r.start for r in self._ranges]

    def chunks(self, address: int, size: int) -> Iterator[Chunk]:
        address &= self.address_mask
        end = address + size
        cursor = address
        first = max(0, bisect.bisect_right(self._starts, address) - 1)
        for r in self._ranges[first:]:
            if r.end <= cursor:
                continue
            if r.start >= end:
                break
            if r.start > cursor:
                yield cursor, MemoryNotPresent(cursor, "not saved in the small memory dump"), r.start - cursor
                cursor = r.start
            stop = min(r.end, end)
            yield cursor, self.sparse.read(cursor, stop - cursor), stop - cursor
            cursor = stop
        if cursor < end:
            yield cursor, MemoryNotPresent(cursor, "not saved in the small memory dump"), end - cursor


class PhysicalView:
    """The dump's physical memory as `chunks`/`read`, for !db and `d* /p`."""

    address_mask = 0xFFFF_FFFF_FFFF_FFFF

    def __init__(self, pages: PageCache):
        self.pages = pages

    def read(self, address: int, size: int) -> bytes:
        return self.pages.read(address, size)

    def chunks(self, address: int, size: int) -> Iterator[Chunk]:
        while size > 0:
            off = address & PAGE_MASK
            chunk = min(size, PAGE_SIZE - off)
            try:
                yield address, self.pages.page(address >> PAGE_SHIFT)[off : off + chunk], chunk
            except MemoryNotPresent as exc:
                yield address, exc, chunk
            address += chunk
            size -= chunk

    read_partial = VirtualMemory.read_partial
