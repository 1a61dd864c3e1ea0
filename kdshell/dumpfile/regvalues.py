"""The processor's registry values a Windows 10 small dump keeps in its secondary data.

The DUMP_BLOB tagged {6C7AC389-4313-47DC-9F34-A8800A0FB56C} holds the values of the registry key
HARDWARE\\DESCRIPTION\\System\\CentralProcessor\\0 -- what WinDbg's !sysinfo cpuinfo prints: one
record per value, packed: NameLength u32 (bytes, its NUL included), the name (UTF-16LE), Type u32
(REG_SZ 1, REG_BINARY 3, REG_DWORD 4, REG_FULL_RESOURCE_DESCRIPTOR 9, REG_QWORD 11), DataLength
u32, the data. Both corpus small dumps (17763, 19041) carry it: ~MHz, Component Information,
Configuration Data, Identifier, ProcessorNameString, Update Status, VendorIdentifier.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

CPU_REGISTRY_TAG = "6c7ac389-4313-47dc-9f34-a8800a0fb56c"
REG_TYPES = {0: "REG_NONE", 1: "REG_SZ", 2: "REG_EXPAND_SZ", 3: "REG_BINARY", 4: "REG_DWORD", 5: "REG_DWORD_BIG_ENDIAN",
             7: "REG_MULTI_SZ", 8: "REG_RESOURCE_LIST", 9: "REG_FULL_RESOURCE_DESCRIPTOR",
             10: "REG_RESOURCE_REQUIREMENTS_LIST", 11: "REG_QWORD"}
MAX_NAME = 0x200


@dataclass(frozen=True)
class RegValue:
    name: str
    type: int
    data: bytes

    @property
    def type_name(self) -> str:
        return REG_TYPES.get(self.type, f"REG_TYPE_{self.type}")

    @property
    def text(self) -> str:
        """The value as !sysinfo prints it: decimal DWORD, hex QWORD, the string, else the bytes
        in hex separated by commas."""
        if self.type == 4 and len(self.data) == 4:
            return str(struct.unpack("<I", self.data)[0])
        if self.type == 11 and len(self.data) == 8:
            return f"{struct.unpack('<Q', self.data)[0]:x}"
        if self.type in (1, 2):
            return self.data.decode("utf-16-le", "replace").split("\0")[0].rstrip()
        return ",".join(f"{b:x}" for b in self.data)


def parse_values(data: bytes) -> list[RegValue]:
    """The records in order; stops at the first one that does not fit."""
    out: list[RegValue] = []
    at = 0
    while at + 4 <= len(data):
        n = struct.unpack_from("<I", data, at)[0]
        if not 2 <= n <= MAX_NAME or at + 4 + n + 8 > len(data):
            break
        name = data[at + 4:at + 4 + n].decode("utf-16-le", "replace").split("\0")[0]
        kind, size = struct.unpack_from("<II", data, at + 4 + n)
        start = at + 4 + n + 8
        if start + size > len(data):
            break
        out.append(RegValue(name, kind, data[start:start + size]))
        at = start + size
    return out
