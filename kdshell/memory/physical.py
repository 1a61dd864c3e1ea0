"""Physical memory of complete and kernel dumps: which PFNs are stored, and where in the file.

Two shapes cover every DumpType that stores physical pages:
- runs of consecutive PFNs stored back to back (DumpType 1, and the RDMP kinds 8/9/10);
- a bitmap with one bit per PFN, the set ones stored in PFN order (DumpType 2, 5, 6).

Neither keeps a Python object per page: runs are three parallel arrays searched with bisect,
and the bitmap gets a rank index (a running popcount per block) built lazily on first use.
Reads hand out memoryviews over the container's single mmap.
"""
from __future__ import annotations

import bisect
import functools
import os
import re
from array import array
from typing import Iterator, Protocol

from kdshell.errors import MemoryNotPresent

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
_PREADV = hasattr(os, "preadv")  # not on Windows: read_into copies from the mapping there


def not_present_message(pfn: int) -> str:
    # WinDbg's wording: "Page 24d116 not present in the dump file. Type ".hh dbgerr004" for details"
    return f"Page {pfn:x} not present in the dump file"


class HasPages(Protocol):
    """Anything with 4 KiB pages by PFN: `PhysicalMemory`, and paging's `PageCache` (which borrows
    `PhysicalMemory.read`)."""

    def page(self, pfn: int) -> bytes | memoryview: ...


class PhysicalMemory:
    """Pages by PFN. Subclasses give `file_offset(pfn)` and `present_runs()`."""

    def __init__(self, data: memoryview, file_size: int) -> None:
        self._data = data
        self._file_size = file_size
        self.truncated_pages = 0  # stored pages that lie past the end of a truncated file

    # -- to be provided ------------------------------------------------------------------
    def file_offset(self, pfn: int) -> int | None:
        """File offset of the page, or None when the dump does not store it."""
        raise NotImplementedError

    def present_runs(self) -> Iterator[tuple[int, int]]:
        """(first PFN, count) of every stored run of pages, in PFN order."""
        raise NotImplementedError

    def data_extents(self) -> Iterator[tuple[int, int]]:
        """(file offset, bytes) of every stored page in PFN order, file-adjacent runs merged:
        what a copy of all the pages reads (the file may end before them: a truncated dump)."""
        raise NotImplementedError

    present_pages: int = 0
    highest_pfn: int = 0  # one past the highest PFN the dump describes
    fd: int | None = None  # the file's descriptor when the opener gives it (read_into reads through it)

    def stored_extent(self, pfn: int, count: int) -> tuple[int, int] | None:
        """(file offset of `pfn`, how many of the `count` pages from it lie back to back in the
        file from there, at least 1), or None when `pfn` is not stored (or past the file's end)."""
        off = self.file_offset(pfn)
        if off is None or off + PAGE_SIZE > self._file_size:
            return None
        n = count
        if n > 1 and self.file_offset(pfn + n - 1) != off + ((n - 1) << PAGE_SHIFT):
            lo, hi = 1, n  # the longest stored prefix: lo pages are back to back, hi are not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self.file_offset(pfn + mid - 1) == off + ((mid - 1) << PAGE_SHIFT):
                    lo = mid
                else:
                    hi = mid
            n = lo
        return off, min(n, (self._file_size - off) >> PAGE_SHIFT)

    def missing_run(self, pfn: int, count: int) -> int:
        """How many of the `count` PFNs from `pfn` (not stored) are not stored, at least 1."""
        return 1

    def read_into(self, buf: bytearray, offset: int, size: int) -> None:
        """`size` bytes of the file at `offset` into `buf` (through the descriptor: the mapping's
        pages are not faulted in, so a long scan does not grow the resident set)."""
        if self.fd is not None and _PREADV and os.preadv(self.fd, [memoryview(buf)[:size]], offset) == size:
            return
        buf[:size] = self._data[offset : offset + size]

    # -- shared --------------------------------------------------------------------------
    def has(self, pfn: int) -> bool:
        off = self.file_offset(pfn)
        return off is not None and off + PAGE_SIZE <= self._file_size

    def page(self, pfn: int) -> memoryview:
        """The 4 KiB page, or MemoryNotPresent."""
        off = self.file_offset(pfn)
        if off is None:
            raise MemoryNotPresent(pfn << PAGE_SHIFT, not_present_message(pfn), physical=True)
        if off + PAGE_SIZE > self._file_size:
            raise MemoryNotPresent(
                pfn << PAGE_SHIFT,
                f"Page {pfn:x} is past the end of the truncated dump file",
                physical=True,
            )
        return self._data[off : off + PAGE_SIZE]

    def read(self: HasPages, address: int, size: int) -> bytes:
        """`size` bytes at a physical address; MemoryNotPresent at the first missing page."""
        out = bytearray()
        while size > 0:
            pfn, offset = address >> PAGE_SHIFT, address & (PAGE_SIZE - 1)
            chunk = min(size, PAGE_SIZE - offset)
            out += self.page(pfn)[offset : offset + chunk]
            address += chunk
            size -= chunk
        return bytes(out)

    def present_pfns(self) -> Iterator[int]:
        for first, count in self.present_runs():
            yield from range(first, first + count)


class RunsPhysicalMemory(PhysicalMemory):
    """Consecutive PFN runs stored back to back from given file offsets."""

    def __init__(self, data: memoryview, file_size: int, runs: list[tuple[int, int, int]]) -> None:
        """`runs`: (first PFN, page count, file offset), any order, non-overlapping."""
        super().__init__(data, file_size)
        runs = sorted(r for r in runs if r[1] > 0)
        self._bases = array("Q", (r[0] for r in runs))
        self._counts = array("Q", (r[1] for r in runs))
        self._offsets = array("Q", (r[2] for r in runs))
        self.present_pages = sum(self._counts)
        self.highest_pfn = max((b + c for b, c, _ in runs), default=0)
        for _, count, off in runs:
            stored = max(0, (file_size - off) // PAGE_SIZE)
            self.truncated_pages += count - min(count, stored)

    def file_offset(self, pfn: int) -> int | None:
        i = bisect.bisect_right(self._bases, pfn) - 1
        if i < 0:
            return None
        delta = pfn - self._bases[i]
        if delta >= self._counts[i]:
            return None
        return self._offsets[i] + delta * PAGE_SIZE

    def present_runs(self) -> Iterator[tuple[int, int]]:
        return zip(self._bases, self._counts)

    def stored_extent(self, pfn: int, count: int) -> tuple[int, int] | None:
        i = bisect.bisect_right(self._bases, pfn) - 1
        if i < 0 or pfn - self._bases[i] >= self._counts[i]:
            return None
        off = self._offsets[i] + ((pfn - self._bases[i]) << PAGE_SHIFT)
        n = self._bases[i] + self._counts[i] - pfn
        i += 1
        while n < count and i < len(self._bases) and self._bases[i] == pfn + n \
                and self._offsets[i] == off + (n << PAGE_SHIFT):
            n += self._counts[i]
            i += 1
        n = min(n, count, (self._file_size - off) >> PAGE_SHIFT)
        return (off, n) if n > 0 else None

    def missing_run(self, pfn: int, count: int) -> int:
        i = bisect.bisect_right(self._bases, pfn)
        following = self._bases[i] if i < len(self._bases) else pfn + count
        return max(1, min(count, following - pfn))

    def data_extents(self) -> Iterator[tuple[int, int]]:
        start = end = -1
        for off, count in zip(self._offsets, self._counts):
            if off == end:
                end += count * PAGE_SIZE
                continue
            if end > start:
                yield start, end - start
            start, end = off, off + count * PAGE_SIZE
        if end > start:
            yield start, end - start


# A stretch of 0xff bytes, or one byte that is neither 0x00 nor 0xff: zero bytes are skipped in C.
_SET_BYTES = rb"\xff+|[^\x00\xff]"
_NONZERO = re.compile(rb"[^\x00]")


@functools.lru_cache(maxsize=1)
def _byte_runs() -> tuple[tuple[tuple[int, int], ...], ...]:
    """The runs of set bits inside each byte value: (first bit, end bit) pairs (made on first use:
    start-up does not pay for it)."""
    return tuple(
        tuple((m.start(), m.end()) for m in re.finditer("1+", format(v, "08b")[::-1])) for v in range(256)
    )

# Bits per rank block: the rank index holds one running count per block, and a lookup
# popcounts at most one block's bytes (128 bytes here) to finish the job.
_RANK_BLOCK_BITS = 1024
_RANK_BLOCK_BYTES = _RANK_BLOCK_BITS // 8


class BitmapPhysicalMemory(PhysicalMemory):
    """One bit per PFN (LSB first in each byte); set PFNs stored in order from `first_page`."""

    def __init__(
        self,
        data: memoryview,
        file_size: int,
        bitmap: memoryview,
        bit_count: int,
        first_page: int,
        present_pages: int,
    ) -> None:
        super().__init__(data, file_size)
        self._bitmap = bitmap
        self._bits = bit_count
        self._first = first_page
        self.present_pages = present_pages
        self.highest_pfn = bit_count
        self._rank: array | None = None
        stored = max(0, (file_size - first_page) // PAGE_SIZE)
        self.truncated_pages = present_pages - min(present_pages, stored)

    def _rank_index(self) -> array:
        if self._rank is None:
            bm = self._bitmap
            rank = array("Q", [0])
            total = 0
            frombytes = int.from_bytes
            for start in range(0, len(bm), _RANK_BLOCK_BYTES):
                total += frombytes(bm[start : start + _RANK_BLOCK_BYTES], "little").bit_count()
                rank.append(total)
            self._rank = rank
        return self._rank

    def file_offset(self, pfn: int) -> int | None:
        if pfn < 0 or pfn >= self._bits:
            return None
        byte, bit = pfn >> 3, pfn & 7
        bm = self._bitmap
        if not (bm[byte] >> bit) & 1:
            return None
        block = pfn // _RANK_BLOCK_BITS
        start = block * _RANK_BLOCK_BYTES
        below = self._rank_index()[block]
        below += int.from_bytes(bm[start:byte], "little").bit_count()
        below += (bm[byte] & ((1 << bit) - 1)).bit_count()
        return self._first + below * PAGE_SIZE

    def present_runs(self) -> Iterator[tuple[int, int]]:
        for first, end in self._raw_runs():
            end = min(end, self._bits)
            if end > first:
                yield first, end - first

    def data_extents(self) -> Iterator[tuple[int, int]]:
        if self.present_pages:
            yield self._first, self.present_pages * PAGE_SIZE  # set PFNs are stored back to back

    def missing_run(self, pfn: int, count: int) -> int:
        end = min(pfn + count, self._bits)
        bm = self._bitmap
        p = pfn + 1
        while p < end and p & 7:
            if bm[p >> 3] >> (p & 7) & 1:
                return p - pfn
            p += 1
        if p < end:  # whole bytes: the next non-zero one found by the regular expression engine
            m = _NONZERO.search(bm, p >> 3, (end + 7) >> 3)
            if m is None:
                return max(1, min(count, pfn + count - pfn))
            byte = m.start()
            value = bm[byte]
            p = (byte << 3) + (value & -value).bit_length() - 1
        return max(1, min(p, pfn + count) - pfn)

    def bitmap_bytes(self) -> bytes:
        """The bitmap, the bits at and past the bit count cleared."""
        nbytes = (self._bits + 7) // 8
        out = bytes(self._bitmap[:nbytes])
        if self._bits % 8:
            out = out[:-1] + bytes([out[-1] & ((1 << (self._bits % 8)) - 1)])
        return out

    def _raw_runs(self) -> Iterator[tuple[int, int]]:
        """(first, end) PFN pairs of set bits, not clipped to the bit count. Whole bytes at a
        time: zero bytes are skipped and 0xff stretches found by the regular expression engine,
        a mixed byte's runs come from a table."""
        bm = self._bitmap
        table = _byte_runs()
        start = end = -1
        for m in re.finditer(_SET_BYTES, bm):
            s, e = m.span()
            byte = bm[s]
            if byte == 0xFF:
                a, b = s << 3, e << 3
                if a == end:
                    end = b
                else:
                    if end > start:
                        yield start, end
                    start, end = a, b
                continue
            base = s << 3
            for lo, hi in table[byte]:
                a = base + lo
                if a == end:
                    end = base + hi
                else:
                    if end > start:
                        yield start, end
                    start, end = a, base + hi
        if end > start:
            yield start, end
