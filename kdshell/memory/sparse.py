"""Virtual memory backed by saved ranges: how a small memory dump (triage) holds memory.

A triage dump has no page tables: it saves a few virtual ranges (the stack, data blocks, the
KDBG copy, a data page) at file offsets. Ranges may overlap (the stack copy and a data block
of the same stack page are both saved, for instance); the first one added wins, so callers add
them in order of trust. The result is a sorted list of disjoint ranges searched with bisect.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterator

from kdshell.errors import MemoryNotPresent


@dataclass(frozen=True)
class SavedRange:
    start: int  # virtual address
    size: int
    file_offset: int
    source: str  # what saved it: "stack", "data block", "KDBG copy", ...

    @property
    def end(self) -> int:
        return self.start + self.size


class SparseMemory:
    """Disjoint saved virtual ranges over the container's mapped bytes."""

    def __init__(self, data: memoryview):
        self._data = data
        self._starts: list[int] = []
        self._ranges: list[SavedRange] = []
        self._cov_starts: list[int] = []  # coalesced covered intervals [start, end)
        self._cov_ends: list[int] = []
        self.overlaps = 0  # how many added ranges were partly or wholly covered already

    def add(self, start: int, size: int, file_offset: int, source: str) -> None:
        """Add a range; the parts already covered by earlier ranges are dropped."""
        if size <= 0:
            return
        end = start + size
        # The uncovered gaps of [start, end) come from the coalesced coverage intervals, not from
        # the saved ranges: a region covered by many small ranges is one interval there, so a
        # hostile file adding one big block many times over thousands of small ones stays fast
        # (walking the saved ranges made that quadratic -- tests/test_corrupt_dumps.py).
        cs, ce = self._cov_starts, self._cov_ends
        lo = bisect.bisect_right(cs, start) - 1
        if lo < 0 or ce[lo] < start:
            lo += 1
        hi = lo
        pieces = []
        cursor = start
        while hi < len(cs) and cs[hi] <= end:
            if cs[hi] > cursor:
                pieces.append((cursor, cs[hi]))
            cursor = max(cursor, ce[hi])
            hi += 1
        if cursor < end:
            pieces.append((cursor, end))
        merged = (min(start, cs[lo]), max(end, ce[hi - 1])) if hi > lo else (start, end)
        cs[lo:hi] = [merged[0]]
        ce[lo:hi] = [merged[1]]
        if pieces != [(start, end)]:
            self.overlaps += 1
        for s, e in pieces:
            piece = SavedRange(s, e - s, file_offset + (s - start), source)
            j = bisect.bisect_left(self._starts, s)
            self._starts.insert(j, s)
            self._ranges.insert(j, piece)

    def ranges(self) -> list[SavedRange]:
        return list(self._ranges)

    def find(self, address: int) -> SavedRange | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0 and address < self._ranges[i].end:
            return self._ranges[i]
        return None

    def readable(self, address: int, size: int = 1) -> bool:
        try:
            self.read(address, size)
        except MemoryNotPresent:
            return False
        return True

    def read(self, address: int, size: int) -> bytes:
        """Bytes at a virtual address; MemoryNotPresent at the first byte not saved."""
        out = bytearray()
        while size > 0:
            r = self.find(address)
            if r is None:
                raise MemoryNotPresent(address, "not saved in the small memory dump")
            chunk = min(size, r.end - address)
            off = r.file_offset + (address - r.start)
            out += self._data[off : off + chunk]
            address += chunk
            size -= chunk
        return bytes(out)

    def __iter__(self) -> Iterator[SavedRange]:
        return iter(self._ranges)
