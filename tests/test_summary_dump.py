"""DumpType 2, the pre-Windows 8 kernel summary dump, written here from literal offsets
(formats.md §5.2: 32-bit fields, then an RTL_BITMAP whose bits follow at +0x28 on 64-bit)."""
import struct

import kdshell
from dumpfactory import default_fields, page_bytes
from kdshell.dumpfile.dump import open_dump
from kdshell.dumpfile.write import build_header
from kdshell.errors import MemoryNotPresent

import pytest


def write_summary(path, pfns, bits=0x400):
    header = bytearray(build_header(default_fields(), 2))
    first_page = 0x3000
    bitmap = bytearray((bits + 7) // 8)
    for p in pfns:
        bitmap[p >> 3] |= 1 << (p & 7)
    summary = bytearray(0x28)
    summary[0:8] = b"SDMPDUMP"
    struct.pack_into("<IIIII", summary, 0x8, 0, first_page, bits, len(pfns), bits)  # options, header size, bits, pages, SizeOfBitMap
    body = bytes(summary) + bytes(bitmap)
    data = bytes(header) + body + bytes(first_page - 0x2000 - len(body))
    data += b"".join(page_bytes(p) for p in sorted(pfns))
    path.write_bytes(data)
    return path


def test_summary_dump_pages_and_banner(tmp_path):
    pfns = [1, 2, 0x30, 0x3FF]
    path = write_summary(tmp_path / "summary.dmp", pfns)
    with open_dump(path) as d:
        assert d.dump_type == 2 and not d.warnings
        assert list(d.physical.present_runs()) == [(1, 2), (0x30, 1), (0x3FF, 1)]
        for p in pfns:
            assert d.physical.page(p).tobytes() == page_bytes(p)
        with pytest.raises(MemoryNotPresent):
            d.physical.page(3)
    with kdshell.open(path) as s:
        assert s.banner()[1] == "Kernel Summary Dump File: Only kernel address space is available"
        assert "SUMMARY_DUMP:" in s.capture(".dumpdebug")


def test_summary_dump_bitmap_past_end_is_an_error(tmp_path):
    path = write_summary(tmp_path / "summary.dmp", [1], bits=0x400)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 0x2010, 0xFFFFFFF0)  # BitmapSize far beyond the file
    path.write_bytes(data)
    with pytest.raises(kdshell.DumpFormatError, match="SUMMARY_DUMP.BitmapSize"):
        open_dump(path)
