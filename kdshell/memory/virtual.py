"""Virtual memory: one interface over two kinds of backing.

Complete and kernel dumps translate through page tables into physical pages; a small memory dump
has only saved virtual ranges. Everything above this module reads `read(va, size)` and never
knows which.
"""
from __future__ import annotations

from kdshell.errors import MemoryNotPresent
from kdshell.memory.physical import PAGE_SIZE, PhysicalMemory
from kdshell.memory.sparse import SparseMemory


class VirtualMemory:
    def read(self, address: int, size: int) -> bytes:
        raise NotImplementedError

    def read_pointer(self, address: int, pointer_size: int = 8) -> int:
        return int.from_bytes(self.read(address, pointer_size), "little")

    def readable(self, address: int, size: int = 1) -> bool:
        try:
            self.read(address, size)
        except MemoryNotPresent:
            return False
        return True


class TranslatedMemory(VirtualMemory):
    """Reads through a paging walk (see paging.py) into a physical page source."""

    def __init__(self, physical: PhysicalMemory, paging):
        self.physical = physical
        self.paging = paging

    def read(self, address: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            chunk = min(size, PAGE_SIZE - (address & (PAGE_SIZE - 1)))
            pa = self.paging.translate(address)
            try:
                out += self.physical.read(pa, chunk)
            except MemoryNotPresent as exc:
                raise MemoryNotPresent(address, exc.why) from None
            address += chunk
            size -= chunk
        return bytes(out)


class SavedRangesMemory(VirtualMemory):
    """A small memory dump's saved ranges."""

    def __init__(self, sparse: SparseMemory):
        self.sparse = sparse

    def read(self, address: int, size: int) -> bytes:
        return self.sparse.read(address, size)
