"""The kernel debugger data block (KDDEBUGGER_DATA64, "KDBG"): where the kernel's key
addresses and structure offsets live when there is no PDB (formats.md §10).

Always the 64-bit layout, also on 32-bit targets. Only fields below the block's `Size` are
valid for a build. Decoding an encoded block (KdpDataBlockEncoded) comes with the kernel
objects issue; until then an encoded block reads as "not valid".
"""
from __future__ import annotations

from dataclasses import dataclass

from kdshell.errors import MemoryNotPresent

OWNER_TAG = b"KDBG"
MIN_SIZE, MAX_SIZE = 0x290, 0x1000

# name: (offset, size) — formats.md §10
FIELDS = {
    "KernBase": (0x18, 8),
    "Flags": (0x36, 2),
    "PsLoadedModuleList": (0x48, 8),
    "PsActiveProcessHead": (0x50, 8),
    "PspCidTable": (0x58, 8),
    "MmPfnDatabase": (0xC0, 8),
    "NtBuildLab": (0x208, 8),
    "KiProcessorBlock": (0x218, 8),
    "MmUnloadedDrivers": (0x220, 8),
    "MmLastUnloadedDriver": (0x228, 8),
    "OffsetKThreadApcProcess": (0x2A0, 2),
    "SizeEProcess": (0x2A8, 2),
    "OffsetPrcbCurrentThread": (0x2B4, 2),
    "OffsetPrcbNumber": (0x2BE, 2),
    "OffsetPrcbContext": (0x338, 2),
    "PteBase": (0x360, 8),
}


@dataclass
class Kdbg:
    address: int
    size: int
    raw: bytes

    def get(self, name: str) -> int | None:
        """A field's value, or None when the block of this build is too short to have it."""
        offset, width = FIELDS[name]
        if offset + width > min(self.size, len(self.raw)):
            return None
        return int.from_bytes(self.raw[offset : offset + width], "little")


def read_kdbg(memory, address: int | None) -> Kdbg | None:
    """The KDBG at `address` if it is readable and carries its tag, else None."""
    if not address:
        return None
    try:
        head = memory.read(address, 0x18)
    except MemoryNotPresent:
        return None
    if head[0x10:0x14] != OWNER_TAG:
        return None
    size = int.from_bytes(head[0x14:0x18], "little")
    if not MIN_SIZE <= size <= MAX_SIZE:
        return None
    try:
        raw = memory.read(address, size)
    except MemoryNotPresent:
        return None
    return Kdbg(address, size, raw)
