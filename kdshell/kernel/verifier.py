"""Driver Verifier's state in the kernel: nt!MmVerifierData (MM_DRIVER_VERIFIER_DATA), for !verifier.

    data = read_verifier(memory, address, layout, is64)   # VerifierData, MemoryNotPresent if absent
    flag_lines(data.level)                                 # WinDbg's [X]/[ ] table

MM_DRIVER_VERIFIER_DATA begins with the verify level (the /flags value) and ULONG counters, then
SIZE_T byte counts (the Windows Research Kernel's mi.h; the kernel PDB's type is used when it is
loaded, these offsets otherwise): Level +0, RaiseIrqls +4, AcquireSpinLocks +8,
SynchronizeExecutions +0xC, AllocationsAttempted +0x10, AllocationsSucceeded +0x14,
AllocationsSucceededSpecialPool +0x18, AllocationsWithNoTag +0x1C, TrimRequests +0x20, Trims
+0x24, AllocationsFailed +0x28, AllocationsFailedDeliberately +0x2C, Loads +0x30, Unloads +0x34,
UnTrackedPool +0x38, UserTrims +0x3C, CurrentPagedPoolAllocations +0x40,
CurrentNonPagedPoolAllocations +0x44, PeakPagedPoolAllocations +0x48, PeakNonPagedPoolAllocations
+0x4C, PagedBytes +0x50, NonPagedBytes +0x50 + ptr, PeakPagedBytes, PeakNonPagedBytes.

The flags are the documented verifier.exe /flags bits (Microsoft Learn, "Driver Verifier options
and rule classes").
"""
from __future__ import annotations

from dataclasses import dataclass

from kdshell.errors import MemoryNotPresent
from kdshell.kernel.layout import FieldOffsets, Memory, Reader, StructLayout

MAX_DRIVER_BUFFER = 0x2000  # bytes of nt!MmVerifyDriverBuffer read at most

ULONG_FIELDS = ("Level", "RaiseIrqls", "AcquireSpinLocks", "SynchronizeExecutions", "AllocationsAttempted",
                "AllocationsSucceeded", "AllocationsSucceededSpecialPool", "AllocationsWithNoTag", "TrimRequests",
                "Trims", "AllocationsFailed", "AllocationsFailedDeliberately", "Loads", "Unloads", "UnTrackedPool",
                "UserTrims", "CurrentPagedPoolAllocations", "CurrentNonPagedPoolAllocations",
                "PeakPagedPoolAllocations", "PeakNonPagedPoolAllocations")
SIZE_FIELDS = ("PagedBytes", "NonPagedBytes", "PeakPagedBytes", "PeakNonPagedBytes")
FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    name: (("_MM_DRIVER_VERIFIER_DATA", name),) for name in ULONG_FIELDS + SIZE_FIELDS}

# (bit, name, standard?) -- "standard" are the flags of verifier.exe /standard
FLAGS = (
    (0x00000001, "Special pool", True),
    (0x00000002, "Force IRQL checking", True),
    (0x00000004, "Randomized low resources simulation", False),
    (0x00000008, "Pool tracking", True),
    (0x00000010, "I/O verification", True),
    (0x00000020, "Deadlock detection", True),
    (0x00000040, "Enhanced I/O verification", False),
    (0x00000080, "DMA checking", True),
    (0x00000100, "Security checks", True),
    (0x00000200, "Force pending I/O requests", False),
    (0x00000400, "IRP logging", False),
    (0x00000800, "Miscellaneous checks", True),
    (0x00002000, "Invariant MDL checking for stack", False),
    (0x00004000, "Invariant MDL checking for driver", False),
    (0x00008000, "Power framework delay fuzzing", False),
    (0x00010000, "Port/miniport interface checking", False),
    (0x00020000, "DDI compliance checking", True),
    (0x00040000, "Systematic low resources simulation", False),
    (0x00080000, "DDI compliance checking (additional)", False),
    (0x00200000, "NDIS/WIFI verification", False),
    (0x00800000, "Kernel synchronization delay fuzzing", False),
    (0x01000000, "VM switch verification", False),
    (0x02000000, "Code integrity checks", False),
)


@dataclass
class VerifierData:
    address: int
    values: dict[str, int]

    @property
    def level(self) -> int:
        return self.values["Level"]


def verifier_layout(offsets: FieldOffsets, build: int | None = None) -> StructLayout:
    return StructLayout(offsets, FIELDS, build)


def default_offset(name: str, is64: bool) -> int:
    if name in ULONG_FIELDS:
        return 4 * ULONG_FIELDS.index(name)
    return 0x50 + (8 if is64 else 4) * SIZE_FIELDS.index(name)


def read_verifier(memory: Memory, address: int, layout: StructLayout, is64: bool) -> VerifierData:
    r = Reader(memory, is64)
    values = {}
    for name in ULONG_FIELDS + SIZE_FIELDS:
        offset = layout.get(name)
        offset = default_offset(name, is64) if offset is None else offset
        values[name] = r.uint(address + offset, 4 if name in ULONG_FIELDS else r.psize)
    return VerifierData(address, values)


def read_verified_drivers(memory: Memory, buffer_at: int, length_at: int, is64: bool) -> list[str] | None:
    """The driver names in nt!MmVerifyDriverBuffer (a UTF-16 text of names separated by spaces,
    its length in nt!MmVerifyDriverBufferLength); None when it is not in the dump."""
    r = Reader(memory, is64)
    try:
        buffer = r.ptr(buffer_at)
        length = r.uint(length_at, 4)
        if not buffer or not length:
            return []
        raw = r.read(buffer, min(length, MAX_DRIVER_BUFFER) & ~1)
    except MemoryNotPresent:
        return None
    return raw.decode("utf-16-le", "replace").split("\0")[0].split()


def flag_lines(level: int) -> list[str]:
    """WinDbg's table: the standard flags, then the additional ones, each `[X] (0x...) Name`."""
    out = [f"Verify Flags Level 0x{level:08x}", "", "  STANDARD FLAGS:"]
    out.append(f"    [{'X' if level else ' '}] (0x00000000) Automatic Checks")
    for standard in (True, False):
        if not standard:
            out += ["", "  ADDITIONAL FLAGS:"]
        for bit, name, kind in FLAGS:
            if kind == standard:
                out.append(f"    [{'X' if level & bit else ' '}] (0x{bit:08x}) {name}")
    out += ["", "    [X] Indicates flag is enabled"]
    return out


def statistics_lines(data: VerifierData) -> list[str]:
    v = data.values
    out = ["", "Summary of All Verifier Statistics", ""]
    for label, name in (("RaiseIrqls", "RaiseIrqls"), ("AcquireSpinLocks", "AcquireSpinLocks"),
                        ("Synch Executions", "SynchronizeExecutions"), ("Trims", "Trims")):
        out.append(f"  {label:<20} 0x{v[name]:x}")
    out.append("")
    for label, name in (("Pool Allocations Attempted", "AllocationsAttempted"),
                        ("Pool Allocations Succeeded", "AllocationsSucceeded"),
                        ("Pool Allocations Succeeded SpecialPool", "AllocationsSucceededSpecialPool"),
                        ("Pool Allocations With NO TAG", "AllocationsWithNoTag"),
                        ("Pool Allocations Failed", "AllocationsFailed"),
                        ("", ""),
                        ("Current paged pool allocations", "CurrentPagedPoolAllocations"),
                        ("Peak paged pool allocations", "PeakPagedPoolAllocations"),
                        ("Current nonpaged pool allocations", "CurrentNonPagedPoolAllocations"),
                        ("Peak nonpaged pool allocations", "PeakNonPagedPoolAllocations"),
                        ("Paged pool bytes", "PagedBytes"), ("Peak paged pool bytes", "PeakPagedBytes"),
                        ("Nonpaged pool bytes", "NonPagedBytes"), ("Peak nonpaged pool bytes", "PeakNonPagedBytes")):
        out.append(f"  {label:<38} 0x{v[name]:x}" if name else "")
    return out
