"""SMBIOS decoding (DMTF DSP0134) on a table built here from the specification's layouts: types
0, 1, 2, 4 and 17, string numbering, Size/Extended Size, the UUID byte order, the end-of-table
structure; locating the table through nt!WmipSMBiosTable* with the dump's pages present and not;
and the one line a dump without the table gets."""
from __future__ import annotations

import struct

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, TRIAGE_19041
from kdshell.commands.sysinfo import firmware_lines
from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.smbios import locate_table, machine_id, memory_size, parse_table, uuid_text

UUID = bytes(range(16))


def structure(kind: int, handle: int, formatted: bytes, *strings: str) -> bytes:
    head = struct.pack("<BBH", kind, 4 + len(formatted), handle) + formatted
    tail = b"".join(s.encode() + b"\0" for s in strings) + b"\0" if strings else b"\0\0"
    return head + tail


def table() -> bytes:
    # Type 0 (2.4+, 0x18 bytes): Vendor 1, Version 2, segment f000, Date 3, ROM size 0xff, characteristics,
    # 2 extension bytes, BIOS release 5.17, EC release ff.ff
    bios = structure(0, 0, struct.pack("<BBHBBQ2sBBBB", 1, 2, 0xF000, 3, 0xFF, 0x0B, b"\0\0", 5, 17, 0xFF, 0xFF),
                     "American Megatrends Inc.", "2803", "04/27/2022")
    # Type 1 (2.4+, 0x1B bytes): strings 1..4, UUID, wake-up 6 (Power Switch), SKU 5, Family 6
    system = structure(1, 1, struct.pack("<BBBB16sBBB", 1, 2, 3, 4, UUID, 6, 5, 6),
                       "ASUS", "System Product Name", "System Version", "SN123", "SKU", "Desktop")
    # Type 2 (0x0F bytes): strings 1..5, features 09h, location 6, chassis 0003h, board type 0ah
    board = structure(2, 2, struct.pack("<BBBBBBBHBB", 1, 2, 3, 4, 5, 0x09, 6, 3, 0x0A, 0),
                      "ASUSTeK COMPUTER INC.", "ROG STRIX B550-F", "Rev X.0x", "BSN", "Default string", "Default")
    # Type 4 (0x2A bytes): socket 1, central processor, family 6bh, manufacturer 2, ID, version 3,
    # voltage, 100/4400/3600 MHz, status, upgrade, caches, serial 0, asset 0, part 0, 8/8/16
    cpu = structure(4, 4, struct.pack("<BBBBQBBHHHBBHHHBBBBBBHH", 1, 3, 0x6B, 2, 0x178BFBFF00870F10, 3, 0x8B,
                                      100, 4400, 3600, 0x41, 1, 5, 6, 7, 0, 0, 0, 8, 8, 16, 0xFC, 0x6B),
                    "AM4", "Advanced Micro Devices, Inc.", "AMD Ryzen 7 3700X 8-Core Processor")
    # Type 17 (2.8, 0x28 bytes): array 0010h, no error info, 64/64 bits, size 0x7FFF -> extended 32768 MB,
    # DIMM, locators 1/2, DDR4, detail, 3200 MHz, manufacturer 3, serial 4, asset 5, part 6
    dimm = structure(17, 0x11, struct.pack("<HHHHHBBBBBHHBBBBBIHHHH", 0x10, 0xFFFE, 64, 64, 0x7FFF, 0x09, 0, 1, 2,
                                           0x1A, 0x80, 3200, 3, 4, 5, 6, 0, 32768, 3200, 1200, 1200, 1200),
                     "DIMM_A1", "BANK 0", "Kingston", "1234ABCD", "9876543210", "KF3200C16D4/32GX")
    empty = structure(17, 0x12, struct.pack("<HHHHHBBBBBHH", 0x10, 0xFFFE, 0xFFFF, 0xFFFF, 0, 0x09, 0, 1, 2, 2, 0, 0),
                      "DIMM_A2", "BANK 1")
    other = structure(3, 3, b"\x01\x03")  # a chassis structure: skipped by smbios, counted by the parser
    return bios + system + board + other + cpu + dimm + empty + structure(127, 0xFEFF, b"") + b"junk after the end"


def test_parse_table_reads_every_structure_and_stops_at_the_end():
    found = parse_table(table())
    assert [(s.type, s.handle) for s in found] == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (17, 0x11), (17, 0x12),
                                                   (127, 0xFEFF)]
    assert found[1].strings[1] == "System Product Name" and found[1].string(0x04) == "ASUS"
    assert found[3].string(0x04) == ""  # string number 0: none


def test_machine_id_lines():
    assert machine_id(parse_table(table())) == [
        ("BiosMajorRelease", "5"), ("BiosMinorRelease", "17"), ("BiosVendor", "American Megatrends Inc."),
        ("BiosVersion", "2803"), ("BiosReleaseDate", "04/27/2022"), ("SystemManufacturer", "ASUS"),
        ("SystemProductName", "System Product Name"), ("SystemFamily", "Desktop"), ("SystemVersion", "System Version"),
        ("SystemSKU", "SKU"), ("BaseBoardManufacturer", "ASUSTeK COMPUTER INC."),
        ("BaseBoardProduct", "ROG STRIX B550-F"), ("BaseBoardVersion", "Rev X.0x")]


def test_smbios_lines_decode_each_type():
    raw = table()
    out = firmware_lines("smbios", raw)
    assert out[1] == f"[Table Length 0x{len(raw):04X} ({len(raw)}) bytes]"
    assert "[BIOS Information (Type 0) - Length 24 - Handle 0000h]" in out
    assert "  BIOS ROM Size                 1000000" in out  # (0xff + 1) * 64 KB
    assert "  UUID                          03020100-0504-0706-0809-0A0B0C0D0E0F" in out
    assert "  Wakeup Type                   Power Switch" in out
    assert "  Board Type                    0ah - Motherboard" in out
    assert "  Processor Version             AMD Ryzen 7 3700X 8-Core Processor" in out
    assert "  Max Speed                     4400MHz" in out and "  Thread Count                  16" in out
    assert "  Size                          32768MB" in out and "  Memory Type                   1ah - DDR4" in out
    assert "  Memory Error Info Handle      [Not Provided]" in out
    assert "  Size                          [Empty]" in out
    assert not any("Type 3)" in x or "Type 127" in x for x in out)
    assert firmware_lines("machineid", raw)[0] == f"Machine ID Information [From Smbios, Size={len(raw)}]"


def test_memory_size_units():
    def dimm(size: int, extended: int = 0):
        return parse_table(structure(17, 1, struct.pack("<HHHHH", 0, 0, 64, 64, size) + bytes(14) +
                                     struct.pack("<I", extended)))[0]
    assert memory_size(dimm(8192)) == "8192MB"
    assert memory_size(dimm(0x8000 | 512)) == "512KB"
    assert memory_size(dimm(0xFFFF)) == "[Unknown]"
    assert memory_size(dimm(0x7FFF, 65536)) == "65536MB"
    assert uuid_text(UUID) == "03020100-0504-0706-0809-0A0B0C0D0E0F"


def test_locate_table_through_the_kernel_variables():
    raw = table()
    symbols = {"WmipSMBiosTablePhysicalAddress": 0x1000, "WmipSMBiosTableLength": 0x1008}
    virtual = {0x1000: (0xE0000).to_bytes(8, "little"), 0x1008: len(raw).to_bytes(4, "little")}

    def read_virtual(address: int, size: int) -> bytes:
        return virtual[address][:size]

    def read_physical(address: int, size: int) -> bytes:
        if address != 0xE0000:
            raise MemoryNotPresent(address, "not saved")
        return raw[:size]

    assert locate_table(symbols.get, read_virtual, read_physical) == raw
    with pytest.raises(KdError, match="not in this dump: firmware memory"):
        locate_table(symbols.get, read_virtual, lambda a, n: read_physical(a + 1, n))
    with pytest.raises(KdError, match="are not known"):
        locate_table({}.get, read_virtual, read_physical)


def test_a_dump_without_the_table_says_so_in_one_line():
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.progress = None
        for topic in ("machineid", "smbios"):
            out = s.capture(f"!sysinfo {topic}").splitlines()
            assert len(out) == 1 and "WmipSMBiosTablePhysicalAddress" in out[0]
