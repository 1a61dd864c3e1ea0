"""Address translation: one table walk per paging mode.

Now: x64 4-level paging with 1 GiB and 2 MiB pages (x64-unwind.md §6.1). The software PTE
states (transition, prototype, pagefile), 5-level, PAE and non-PAE modes come with the virtual
memory issue; they plug in here as further modes of the same walk.
"""
from __future__ import annotations

from kdshell.errors import MemoryNotPresent
from kdshell.memory.physical import PAGE_SIZE, PhysicalMemory

ADDRESS_MASK = 0x000F_FFFF_FFFF_F000
LARGE_1G_MASK = 0x000F_FFFF_C000_0000
LARGE_2M_MASK = 0x000F_FFFF_FFE0_0000
PRESENT = 0x1
LARGE = 0x80
LEVEL_NAMES = ("PXE", "PPE", "PDE", "PTE")


class X64Paging:
    """4-level x64 translation over a physical page source, from one DTB."""

    def __init__(self, physical: PhysicalMemory, dtb: int):
        self.physical = physical
        self.dtb = dtb & ADDRESS_MASK  # CR3 may carry PCID/flag bits in its low 12 bits

    def _entry(self, table: int, index: int, va: int, level: str) -> int:
        try:
            page = self.physical.page(table >> 12)
        except MemoryNotPresent as exc:
            raise MemoryNotPresent(va, f"{level} table: {exc.why}") from None
        return int.from_bytes(page[index * 8 : index * 8 + 8], "little")

    def translate(self, va: int) -> int:
        """Physical address of `va`, or MemoryNotPresent naming the level that stopped the walk."""
        va &= 0xFFFF_FFFF_FFFF_FFFF
        top = va >> 47
        if top not in (0, 0x1FFFF):
            raise MemoryNotPresent(va, "not a canonical address")
        table = self.dtb
        shifts = (39, 30, 21, 12)
        for level, shift in enumerate(shifts):
            entry = self._entry(table, (va >> shift) & 0x1FF, va, LEVEL_NAMES[level])
            if not entry & PRESENT:
                raise MemoryNotPresent(va, f"{LEVEL_NAMES[level]} {entry:016x} is not valid")
            if level == 1 and entry & LARGE:
                return (entry & LARGE_1G_MASK) | (va & 0x3FFF_FFFF)
            if level == 2 and entry & LARGE:
                return (entry & LARGE_2M_MASK) | (va & 0x1F_FFFF)
            table = entry & ADDRESS_MASK
        return table | (va & (PAGE_SIZE - 1))
