"""SMBIOS structure table decoding (DMTF DSP0134) for !sysinfo machineid / smbios and !analyze's
SYSTEM_* / BIOS_* / BASEBOARD_* facts.

    structures = parse_table(raw)                        # every structure, up to type 127
    machine_id(structures) -> [(name, value), ...]       # !sysinfo machineid's lines
    smbios_lines(structures, len(raw))                   # !sysinfo smbios (types 0, 1, 2, 4, 17)
    locate_table(symbol, read_physical)                  # where the kernel keeps it

A structure: Type (byte), Length of the formatted area (byte), Handle (word), the formatted
area, then its strings (each NUL-terminated, the set ended by a second NUL; a string field holds
the string's 1-based number, 0 for none). The kernel records the table's physical address and
length in nt!WmipSMBiosTablePhysicalAddress and nt!WmipSMBiosTableLength; finding those needs
the kernel's symbols, and reading the table needs its pages in the dump (a complete dump that
saved the firmware's reserved range).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable

from kdshell.errors import KdError, MemoryNotPresent

END_OF_TABLE = 127
MAX_TABLE = 0x100000


@dataclass
class Structure:
    type: int
    handle: int
    data: bytes  # the formatted area, header included (offsets as DSP0134 gives them)
    strings: list[str]

    @property
    def length(self) -> int:
        return len(self.data)

    def byte(self, offset: int) -> int | None:
        return self.data[offset] if offset < len(self.data) else None

    def word(self, offset: int) -> int | None:
        return struct.unpack_from("<H", self.data, offset)[0] if offset + 2 <= len(self.data) else None

    def dword(self, offset: int) -> int | None:
        return struct.unpack_from("<I", self.data, offset)[0] if offset + 4 <= len(self.data) else None

    def qword(self, offset: int) -> int | None:
        return struct.unpack_from("<Q", self.data, offset)[0] if offset + 8 <= len(self.data) else None

    def string(self, offset: int) -> str | None:
        """The string a field names; "" for string number 0, None past the formatted area."""
        number = self.byte(offset)
        if number is None:
            return None
        return self.strings[number - 1] if 0 < number <= len(self.strings) else ""


def parse_table(raw: bytes) -> list[Structure]:
    """The structures in `raw`; stops at the end-of-table structure (type 127) or a malformed
    header (length under 4 or past the end)."""
    out: list[Structure] = []
    at = 0
    while at + 4 <= len(raw):
        kind, length, handle = struct.unpack_from("<BBH", raw, at)
        if length < 4 or at + length > len(raw):
            break
        end = raw.find(b"\0\0", at + length)
        if end < 0:
            break
        area = raw[at + length : end]
        strings = [s.decode("latin-1").strip() for s in area.split(b"\0")] if area else []
        out.append(Structure(kind, handle, raw[at : at + length], strings))
        if kind == END_OF_TABLE:
            break
        at = end + 2
    return out


def first(structures: list[Structure], kind: int) -> Structure | None:
    return next((s for s in structures if s.type == kind), None)


def uuid_text(raw: bytes) -> str:
    """SMBIOS 2.6+ byte order: the first three fields little-endian."""
    a, b, c = struct.unpack_from("<IHH", raw)
    rest = raw[8:16].hex()
    return f"{a:08X}-{b:04X}-{c:04X}-{rest[:4].upper()}-{rest[4:].upper()}"


def machine_id(structures: list[Structure]) -> list[tuple[str, str]]:
    """!sysinfo machineid's names and values (types 0, 1 and 2)."""
    out: list[tuple[str, str]] = []

    def add(name: str, value: str | int | None) -> None:
        if value is not None:
            out.append((name, str(value)))

    bios, system, board = first(structures, 0), first(structures, 1), first(structures, 2)
    if bios is not None:
        add("BiosMajorRelease", bios.byte(0x14))
        add("BiosMinorRelease", bios.byte(0x15))
        add("BiosVendor", bios.string(0x04))
        add("BiosVersion", bios.string(0x05))
        add("BiosReleaseDate", bios.string(0x08))
    if system is not None:
        add("SystemManufacturer", system.string(0x04))
        add("SystemProductName", system.string(0x05))
        add("SystemFamily", system.string(0x1A))
        add("SystemVersion", system.string(0x06))
        add("SystemSKU", system.string(0x19))
    if board is not None:
        add("BaseBoardManufacturer", board.string(0x04))
        add("BaseBoardProduct", board.string(0x05))
        add("BaseBoardVersion", board.string(0x06))
    return out


TYPE_NAMES = {0: "BIOS Information", 1: "System Information", 2: "BaseBoard Information",
              4: "Processor Information", 17: "Memory Device"}
WAKEUP = {0: "Reserved", 1: "Other", 2: "Unknown", 3: "APM Timer", 4: "Modem Ring", 5: "LAN Remote",
          6: "Power Switch", 7: "PCI PME#", 8: "AC Power Restored"}
BOARD_TYPES = {1: "Unknown", 2: "Other", 3: "Server Blade", 4: "Connectivity Switch", 5: "System Management Module",
               6: "Processor Module", 7: "I/O Module", 8: "Memory Module", 9: "Daughter board", 10: "Motherboard",
               11: "Processor/Memory Module", 12: "Processor/IO Module", 13: "Interconnect board"}
PROCESSOR_TYPES = {1: "Other", 2: "Unknown", 3: "Central Processor", 4: "Math Processor", 5: "DSP Processor",
                   6: "Video Processor"}
FORM_FACTORS = {1: "Other", 2: "Unknown", 3: "SIMM", 4: "SIP", 5: "Chip", 6: "DIP", 7: "ZIP", 8: "Proprietary Card",
                9: "DIMM", 10: "TSOP", 11: "Row of chips", 12: "RIMM", 13: "SODIMM", 14: "SRIMM", 15: "FB-DIMM"}
MEMORY_TYPES = {1: "Other", 2: "Unknown", 3: "DRAM", 0x0F: "SDRAM", 0x12: "DDR", 0x13: "DDR2", 0x18: "DDR3",
                0x1A: "DDR4", 0x1B: "LPDDR", 0x1C: "LPDDR2", 0x1D: "LPDDR3", 0x1E: "LPDDR4", 0x22: "DDR5",
                0x23: "LPDDR5"}


def _handle(value: int | None) -> str | None:
    if value is None:
        return None
    return "[Not Provided]" if value in (0xFFFE, 0xFFFF) else f"{value:04x}h"


def _named(value: int | None, names: dict[int, str]) -> str | None:
    return None if value is None else f"{value:02x}h - {names.get(value, 'Specification Reserved')}"


def memory_size(s: Structure) -> str | None:
    """Type 17 Size: 0 = no module; 0xFFFF unknown; bit 15 set = KB units; 0x7FFF = see
    Extended Size (MB, 2.7+)."""
    size = s.word(0x0C)
    if size is None:
        return None
    if size == 0:
        return "[Empty]"
    if size == 0xFFFF:
        return "[Unknown]"
    if size == 0x7FFF and (extended := s.dword(0x1C)) is not None:
        return f"{extended & 0x7FFFFFFF}MB"
    return f"{size & 0x7FFF}KB" if size & 0x8000 else f"{size}MB"


def _fields(s: Structure) -> list[tuple[str, str | None]]:
    if s.type == 0:
        rom = s.byte(0x09)
        return [("Vendor", s.string(0x04)), ("BIOS Version", s.string(0x05)),
                ("BIOS Starting Address Segment", None if s.word(0x06) is None else f"{s.word(0x06):x}"),
                ("BIOS Release Date", s.string(0x08)),
                ("BIOS ROM Size", None if rom is None else f"{(rom + 1) * 0x10000:x}"),
                ("BIOS Major Release", _n(s.byte(0x14))), ("BIOS Minor Release", _n(s.byte(0x15))),
                ("EC Firmware Major Release", _n(s.byte(0x16))), ("EC Firmware Minor Release", _n(s.byte(0x17)))]
    if s.type == 1:
        uuid = s.data[0x08:0x18]
        wake = s.byte(0x18)
        return [("Manufacturer", s.string(0x04)), ("Product Name", s.string(0x05)), ("Version", s.string(0x06)),
                ("Serial Number", s.string(0x07)), ("UUID", uuid_text(uuid) if len(uuid) == 16 else None),
                ("Wakeup Type", None if wake is None else WAKEUP.get(wake, "Specification Reserved")),
                ("SKUNumber", s.string(0x19)), ("Family", s.string(0x1A))]
    if s.type == 2:
        return [("Manufacturer", s.string(0x04)), ("Product", s.string(0x05)), ("Version", s.string(0x06)),
                ("Serial Number", s.string(0x07)), ("Asset Tag", s.string(0x08)),
                ("Features", None if s.byte(0x09) is None else f"{s.byte(0x09):02x}h"),
                ("Location", s.string(0x0A)), ("Chassis Handle", _handle(s.word(0x0B))),
                ("Board Type", _named(s.byte(0x0D), BOARD_TYPES))]
    if s.type == 4:
        mhz = [(name, s.word(at)) for name, at in (("External Clock", 0x12), ("Max Speed", 0x14),
                                                   ("Current Speed", 0x16))]
        pid = s.qword(0x08)
        kind = s.byte(0x05)
        return [("Socket Designation", s.string(0x04)),
                ("Processor Type", None if kind is None else PROCESSOR_TYPES.get(kind, "Specification Reserved")),
                ("Processor Family", None if s.byte(0x06) is None else f"{s.byte(0x06):02x}h"),
                ("Processor Manufacturer", s.string(0x07)),
                ("Processor ID", None if pid is None else s.data[0x08:0x10].hex()),
                ("Processor Version", s.string(0x10)),
                *[(name, None if v is None else f"{v}MHz") for name, v in mhz],
                ("L1 Cache Handle", _handle(s.word(0x1A))), ("L2 Cache Handle", _handle(s.word(0x1C))),
                ("L3 Cache Handle", _handle(s.word(0x1E))), ("Serial Number", s.string(0x20)),
                ("Asset Tag", s.string(0x21)), ("Part Number", s.string(0x22)),
                ("Core Count", _n(s.byte(0x23))), ("Core Enabled", _n(s.byte(0x24))),
                ("Thread Count", _n(s.byte(0x25)))]
    if s.type == 17:
        widths = [(name, s.word(at)) for name, at in (("Total Width", 0x08), ("Data Width", 0x0A))]
        speed = s.word(0x15)
        return [("Physical Memory Array Handle", _handle(s.word(0x04))),
                ("Memory Error Info Handle", _handle(s.word(0x06))),
                *[(name, None if v is None else ("[Unknown]" if v == 0xFFFF else f"{v} bits")) for name, v in widths],
                ("Size", memory_size(s)), ("Form Factor", _named(s.byte(0x0E), FORM_FACTORS)),
                ("Device Locator", s.string(0x10)), ("Bank Locator", s.string(0x11)),
                ("Memory Type", _named(s.byte(0x12), MEMORY_TYPES)),
                ("Speed", None if speed is None else ("[Unknown]" if speed == 0 else f"{speed}MHz")),
                ("Manufacturer", s.string(0x17)), ("Serial Number", s.string(0x18)),
                ("Asset Tag Number", s.string(0x19)), ("Part Number", s.string(0x1A))]
    return []


def _n(value: int | None) -> str | None:
    return None if value is None else str(value)


def smbios_lines(structures: list[Structure], size: int) -> list[str]:
    """!sysinfo smbios: the table's header, then types 0, 1, 2, 4 and 17 field by field (a field
    the structure's version does not have is left out). The SMBIOS version is in the entry point
    structure, which the kernel's variables do not point to: the header leaves it out."""
    lines = ["[SMBIOS Data Tables]",
             f"[Table Length 0x{size:04X} ({size}) bytes]", ""]
    for s in structures:
        if s.type not in TYPE_NAMES:
            continue
        lines.append(f"[{TYPE_NAMES[s.type]} (Type {s.type}) - Length {s.length} - Handle {s.handle:04x}h]")
        lines += [f"  {name:<30}{value}".rstrip() for name, value in _fields(s) if value is not None]
    return lines


def locate_table(symbol: Callable[[str], int | None], read_virtual: Callable[[int, int], bytes],
                 read_physical: Callable[[int, int], bytes] | None) -> bytes:
    """The SMBIOS table through nt!WmipSMBiosTablePhysicalAddress/Length; KdError (one line,
    what is missing) when the kernel's symbols or the table's pages are not in the dump."""
    where, length_at = symbol("WmipSMBiosTablePhysicalAddress"), symbol("WmipSMBiosTableLength")
    if where is None or length_at is None:
        raise KdError("the SMBIOS table is not found: nt!WmipSMBiosTablePhysicalAddress and "
                      "nt!WmipSMBiosTableLength are not known (the kernel's symbols give them; the table itself "
                      "needs a kernel or complete dump)")
    try:
        address = int.from_bytes(read_virtual(where, 8), "little")
        length = int.from_bytes(read_virtual(length_at, 4), "little")
    except MemoryNotPresent as exc:
        raise KdError(f"the SMBIOS table is not found: nt!WmipSMBiosTable* are not in the dump ({exc.why})") from None
    if not address or not 0 < length <= MAX_TABLE:
        raise KdError(f"the kernel recorded no SMBIOS table (address {address:#x}, length {length:#x})")
    if read_physical is None:
        raise KdError(f"the SMBIOS table at physical {address:#x} is not in this dump: it holds no physical memory")
    try:
        return read_physical(address, length)
    except MemoryNotPresent:
        raise KdError(f"the SMBIOS table at physical {address:#x} ({length:#x} bytes) is not in this dump: "
                      "firmware memory is saved only by some complete dumps") from None
