"""A process's handle table (what !handle lists and !process counts).

    entries = walk_handles(memory, table, code_offset, is64, build)   # None: a page is not in the dump
    for e in entries: e.handle, e.entry, e.header, e.access

HANDLE_TABLE.TableCode (+0x8 since Windows 8) points to the top page; its low two bits are the
number of levels above the pages of entries (0, 1 or 2). A page of pointers lists the pages below
it (0x1000 / pointer size of them), a page of entries holds 0x1000 / entry size entries, and the
first entry of each page of entries is not a handle. Handle = entry index * 4.

Windows quirk: x64 entries since Windows 8 store the object header's address in ObjectPointerBits
(bits 20-63 of the first qword: the header address's bits 4-47; the top 16 bits are all ones for a
kernel address) and GrantedAccessBits in the low 25 bits of the second qword; a free entry keeps
only its free-list link in the second qword. On x86 (and before Windows 8) the first pointer is the
header address with attribute bits 0-2 and GrantedAccess follows it. Pinned by
tests/test_handles.py (every process's handles against the machine's truth).
"""
from __future__ import annotations

from dataclasses import dataclass

from kdshell.errors import MemoryNotPresent
from kdshell.kernel.layout import Memory, Reader

MAX_HANDLE_PAGES = 4096  # 16 M handles at most: a longer walk is a corrupt table
WIN8 = 9200


@dataclass
class HandleEntry:
    handle: int
    entry: int  # the HANDLE_TABLE_ENTRY's address
    header: int  # the OBJECT_HEADER's address
    access: int  # GrantedAccess


def decode_entry(raw: bytes, is64: bool, build: int) -> tuple[int, int] | None:
    """(object header, granted access) of one entry, None when it is free."""
    if is64 and build >= WIN8:
        low = int.from_bytes(raw[0:8], "little")
        bits = low >> 20
        if not bits:
            return None
        return ((bits << 4) | 0xFFFF_0000_0000_0000) & 0xFFFF_FFFF_FFFF_FFFF, int.from_bytes(raw[8:12], "little") & 0x1FFFFFF
    psize = 8 if is64 else 4
    value = int.from_bytes(raw[0:psize], "little") & ~7
    if not value:
        return None
    return value, int.from_bytes(raw[psize:psize + 4], "little") & 0x1FFFFFF


def walk_handles(memory: Memory, table: int, code_offset: int, is64: bool, build: int) -> list[HandleEntry] | None:
    r = Reader(memory, is64)
    entry_size = 16 if is64 else 8
    per_page = 0x1000 // entry_size
    per_pointer_page = 0x1000 // r.psize
    try:
        code = r.ptr(table + code_offset)
    except MemoryNotPresent:
        return None
    levels = code & 3
    if levels > 2:
        return None
    frontier: list[tuple[int, int]] = [(0, code & ~3 & r.mask)]  # (index of the first entry below, page)
    span = per_page * per_pointer_page ** levels
    for _ in range(levels):
        span //= per_pointer_page
        below: list[tuple[int, int]] = []
        for first, page in frontier:
            try:
                raw = r.read(page, 0x1000)
            except MemoryNotPresent:
                return None
            for i in range(per_pointer_page):
                value = int.from_bytes(raw[i * r.psize:(i + 1) * r.psize], "little")
                if value:
                    below.append((first + i * span, value))
                if len(below) > MAX_HANDLE_PAGES:
                    return None
        frontier = below
    out: list[HandleEntry] = []
    for first, page in frontier:
        try:
            raw = r.read(page, 0x1000)
        except MemoryNotPresent:
            return None
        for i in range(1, per_page):
            decoded = decode_entry(raw[i * entry_size:(i + 1) * entry_size], is64, build)
            if decoded is not None:
                out.append(HandleEntry((first + i) * 4, page + i * entry_size, decoded[0], decoded[1]))
    return out
