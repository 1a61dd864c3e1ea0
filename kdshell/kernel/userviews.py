"""The user-mode views of a process: its TEB and PEB (what !teb and !peb print).

    views = UserViews(memory, offsets, is64)     # memory: the process's address space
    views.teb(address) -> dict of field -> value (None: not in the dump)
    views.peb(address) -> dict

The fields are read by name from the kernel's types (_TEB, _PEB) when it has them, else at the
offsets every Windows 10 build uses (TEB64/TEB32, PEB64/PEB32 below; public since Windows 7 and
unchanged). User pages are in complete and active dumps, not in kernel dumps and small dumps: a
field whose page is absent reads None.
"""
from __future__ import annotations

from typing import Any

from kdshell.errors import MemoryNotPresent
from kdshell.kernel.layout import Memory, Reader

# field -> (offset, size in bytes; 0 = pointer size)
TEB64 = {"NtTib.ExceptionList": (0x0, 0), "NtTib.StackBase": (0x8, 0), "NtTib.StackLimit": (0x10, 0),
         "NtTib.SubSystemTib": (0x18, 0), "NtTib.FiberData": (0x20, 0), "NtTib.ArbitraryUserPointer": (0x28, 0),
         "NtTib.Self": (0x30, 0), "EnvironmentPointer": (0x38, 0), "ClientId.UniqueProcess": (0x40, 0),
         "ClientId.UniqueThread": (0x48, 0), "ActiveRpcHandle": (0x50, 0), "ThreadLocalStoragePointer": (0x58, 0),
         "ProcessEnvironmentBlock": (0x60, 0), "LastErrorValue": (0x68, 4), "CountOfOwnedCriticalSections": (0x6C, 4),
         "LastStatusValue": (0x1250, 4), "HardErrorMode": (0x16B0, 4)}
TEB32 = {"NtTib.ExceptionList": (0x0, 0), "NtTib.StackBase": (0x4, 0), "NtTib.StackLimit": (0x8, 0),
         "NtTib.SubSystemTib": (0xC, 0), "NtTib.FiberData": (0x10, 0), "NtTib.ArbitraryUserPointer": (0x14, 0),
         "NtTib.Self": (0x18, 0), "EnvironmentPointer": (0x1C, 0), "ClientId.UniqueProcess": (0x20, 0),
         "ClientId.UniqueThread": (0x24, 0), "ActiveRpcHandle": (0x28, 0), "ThreadLocalStoragePointer": (0x2C, 0),
         "ProcessEnvironmentBlock": (0x30, 0), "LastErrorValue": (0x34, 4), "CountOfOwnedCriticalSections": (0x38, 4),
         "LastStatusValue": (0xBF4, 4), "HardErrorMode": (0xF28, 4)}
PEB64 = {"InheritedAddressSpace": (0x0, 1), "ReadImageFileExecOptions": (0x1, 1), "BeingDebugged": (0x2, 1),
         "ImageBaseAddress": (0x10, 0), "Ldr": (0x18, 0), "ProcessParameters": (0x20, 0), "SubSystemData": (0x28, 0),
         "ProcessHeap": (0x30, 0), "NtGlobalFlag": (0xBC, 4), "NumberOfProcessors": (0xB8, 4),
         "OSMajorVersion": (0x118, 4), "OSMinorVersion": (0x11C, 4), "OSBuildNumber": (0x120, 2),
         "SessionId": (0x2C0, 4)}
PEB32 = {"InheritedAddressSpace": (0x0, 1), "ReadImageFileExecOptions": (0x1, 1), "BeingDebugged": (0x2, 1),
         "ImageBaseAddress": (0x8, 0), "Ldr": (0xC, 0), "ProcessParameters": (0x10, 0), "SubSystemData": (0x14, 0),
         "ProcessHeap": (0x18, 0), "NtGlobalFlag": (0x68, 4), "NumberOfProcessors": (0x64, 4),
         "OSMajorVersion": (0xA4, 4), "OSMinorVersion": (0xA8, 4), "OSBuildNumber": (0xAC, 2),
         "SessionId": (0x1D4, 4)}


class UserViews:
    def __init__(self, memory: Memory, offsets: Any, is64: bool) -> None:
        self.reader = Reader(memory, is64)
        self.offsets = offsets
        self.is64 = is64

    def _read(self, type_name: str, table: dict[str, tuple[int, int]], address: int) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name, (offset, size) in table.items():
            known = self.offsets.offset(type_name, name) if getattr(self.offsets, "types", None) is not None else None
            at = address + (known if known is not None else offset)
            try:
                out[name] = self.reader.uint(at, size or self.reader.psize)
            except MemoryNotPresent:
                out[name] = None
        return out

    def teb(self, address: int) -> dict[str, int | None]:
        return self._read("_TEB", TEB64 if self.is64 else TEB32, address)

    def peb(self, address: int) -> dict[str, int | None]:
        return self._read("_PEB", PEB64 if self.is64 else PEB32, address)
