"""The small memory dump (DumpType 4, "triage" dump) writer, and `write_dump` by DumpType.

    write_triage(path, fields, parts)    a small memory dump laid out as Windows 10 lays one out
    write_dump(path, dump_type, ...)     any DumpType that write.py or this module writes

The layout is formats.md §6: the header (write.py's `build_header`, which holds the CONTEXT and
EXCEPTION_RECORD), the TRIAGE_DUMP block, then the parts a `TriageParts` gives. The header, the
temporary-file-and-rename output and the secondary data are write.py's, imported from there;
write.py does not import this module (so `write_dump`, which reaches every writer, is here).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import construct

from kdshell.dumpfile.header import (
    DUMP_DRIVER_ENTRY32, DUMP_DRIVER_ENTRY64, DUMP_MM_STORAGE32, DUMP_MM_STORAGE64, DUMP_TYPE_BITMAP_FULL,
    DUMP_TYPE_BITMAP_KERNEL, DUMP_TYPE_FULL, DUMP_TYPE_RDMP_COMPLETE, DUMP_TYPE_RDMP_KERNEL,
    DUMP_TYPE_RDMP_KERNEL_USER, DUMP_TYPE_TRIAGE, DUMP_UNLOADED_DRIVERS32, DUMP_UNLOADED_DRIVERS64,
    TRIAGE_DATA_BLOCK32, TRIAGE_DATA_BLOCK64, TRIAGE_DUMP32, TRIAGE_DUMP64, TRIAGE_DUMP_BROKEN_DRIVER,
    TRIAGE_DUMP_CONTEXT, TRIAGE_DUMP_DATA_BLOCKS, TRIAGE_DUMP_DATAPAGE, TRIAGE_DUMP_DEBUGGER_DATA,
    TRIAGE_DUMP_DRIVER_LIST, TRIAGE_DUMP_EXCEPTION, TRIAGE_DUMP_MMINFO, TRIAGE_DUMP_PRCB, TRIAGE_DUMP_PROCESS,
    TRIAGE_DUMP_STACK, TRIAGE_DUMP_THREAD, TRIAGE_DUMP_VALID, Container,
)
from kdshell.dumpfile.write import (
    BlobTag, DumpHeaderFields, Pages, _align, _header_size, _one_line, _output, _ptr, _zero, blobs_size,
    build_header, write_bitmap, write_blobs, write_full, write_rdmp,
)
from kdshell.errors import DumpWriteError

# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class TriageDriverInfo:
    """One loaded driver of a small memory dump's driver list."""

    name: str  # stored in the string pool, e.g. "\\SystemRoot\\system32\\ntoskrnl.exe"
    base: int
    size: int
    timestamp: int = 0
    checksum: int = 0
    entry_point: int = 0
    flags: int = 0


@dataclass
class TriageParts:
    """What a small memory dump holds besides the header. Empty parts are left out.

    Virtual addresses: `top_of_stack` for `stack`, the header's KdDebuggerDataBlock for `kdbg`,
    `data_page[0]` and each `data_blocks[i][0]`. The KPRCB/EPROCESS/ETHREAD copies have no
    address in the file (the reader derives them).
    """

    stack: bytes = b""
    top_of_stack: int = 0
    prcb: bytes | None = None
    process: bytes | None = None
    thread: bytes | None = None
    mm: Mapping[str, int] | None = None  # DUMP_MM_STORAGE fields; Version/Size filled in
    unloaded: Sequence[tuple[str, int, int]] | None = None  # (name, start, end)
    drivers: Sequence[TriageDriverInfo] = ()
    broken_driver: int | None = None  # index into drivers
    kdbg: bytes | None = None  # copy of KDDEBUGGER_DATA64
    data_page: tuple[int, bytes] | None = None  # (address, bytes)
    data_blocks: Sequence[tuple[int, bytes]] = ()  # (address, bytes)
    service_pack_build: int = 0
    triage_options: int = 0
    context: bytes | None = None  # None: the header fields' context
    exception: Mapping[str, Any] | bytes | None = None  # None: the header fields' exception


# ---------------------------------------------------------------------------------------------
# DumpType 4


class _Body:
    """The triage data being laid out: parts appended at 8-byte aligned file offsets."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.buf = bytearray()

    @property
    def offset(self) -> int:
        return self.start + len(self.buf)

    def add(self, data: bytes, align: int = 8) -> int:
        self.buf += bytes(-self.offset % align)
        at = self.offset
        self.buf += data
        return at


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-le", "surrogatepass")


def _unicode_string(text: str) -> dict[str, int]:
    n = len(_utf16(text))
    return dict(Length=min(n, 0xFFFF), MaximumLength=min(n + 2, 0xFFFF), Buffer=0)


def write_triage(path: str | os.PathLike[str], fields: DumpHeaderFields, parts: TriageParts, *,
                 blobs: Sequence[tuple[BlobTag, bytes]] = (), overwrite: bool = False) -> int:
    """A small memory dump (DumpType 4) laid out as Windows 10 lays it out.

    The CONTEXT and EXCEPTION_RECORD are the header's (ContextOffset 0x348 / ExceptionOffset 0xF00
    on x64, 0x320 / 0x7D0 on x86). After the TRIAGE_DUMP block, 8-byte aligned: MM information,
    unloaded drivers (count, then entries), KPRCB, EPROCESS and ETHREAD copies, the stack, the KDBG
    copy, the driver list and its string pool, the data page, the data block list followed by the
    blocks' bytes (back to back), and the 'TRGD' marker in the last 4 bytes of SizeOfDump.
    Secondary data blobs follow SizeOfDump. MiniDumpFields says which parts are present unless
    `fields.minidump_fields` is set. Returns the file size."""
    blobs = list(blobs)
    is64 = fields.is64
    tri_layout = TRIAGE_DUMP64 if is64 else TRIAGE_DUMP32
    base = _header_size(fields)
    context_offset, exception_offset = (0x348, 0xF00) if is64 else (0x320, 0x7D0)
    context = parts.context if parts.context is not None else fields.context
    exception = parts.exception if parts.exception is not None else fields.exception
    th = _zero(tri_layout)
    th.ServicePackBuild = parts.service_pack_build
    th.TriageOptions = parts.triage_options
    flags = 0
    if context is not None:
        th.ContextOffset = context_offset
        flags |= TRIAGE_DUMP_CONTEXT
    if exception is not None:
        th.ExceptionOffset = exception_offset
        flags |= TRIAGE_DUMP_EXCEPTION
    body = _Body(base + tri_layout.sizeof())
    try:
        if parts.mm is not None:
            mm_layout = DUMP_MM_STORAGE64 if is64 else DUMP_MM_STORAGE32
            mm = _zero(mm_layout)
            mm.update(dict(Version=1, Size=mm_layout.sizeof()))
            mm.update(dict(parts.mm))
            th.MmOffset = body.add(mm_layout.build(mm))
            flags |= TRIAGE_DUMP_MMINFO
        if parts.unloaded is not None:
            entry = DUMP_UNLOADED_DRIVERS64 if is64 else DUMP_UNLOADED_DRIVERS32
            raw = len(parts.unloaded).to_bytes(8 if is64 else 4, "little")
            for name, start, end in parts.unloaded:
                raw += entry.build(dict(
                    Name=_unicode_string(name), DriverName=(_utf16(name) + bytes(24))[:24],
                    StartAddress=_ptr(start, is64, "unloaded driver start"),
                    EndAddress=_ptr(end, is64, "unloaded driver end")))
            th.UnloadedDriversOffset = body.add(raw)
        for part, name, flag in ((parts.prcb, "PrcbOffset", TRIAGE_DUMP_PRCB),
                                 (parts.process, "ProcessOffset", TRIAGE_DUMP_PROCESS),
                                 (parts.thread, "ThreadOffset", TRIAGE_DUMP_THREAD)):
            if part:
                th[name] = body.add(bytes(part))
                flags |= flag
        if parts.stack:
            th.CallStackOffset = body.add(bytes(parts.stack))
            th.SizeOfCallStack = len(parts.stack)
            th.TopOfStack = _ptr(parts.top_of_stack, is64, "TopOfStack")
            flags |= TRIAGE_DUMP_STACK
        if parts.kdbg:
            if fields.kd_debugger_data_block is None:
                raise DumpWriteError("a KDBG copy needs the header's KdDebuggerDataBlock (its address)")
            th.DebuggerDataOffset = body.add(bytes(parts.kdbg))
            th.DebuggerDataSize = len(parts.kdbg)
            flags |= TRIAGE_DUMP_DEBUGGER_DATA
        if parts.drivers:
            _add_drivers(body, th, parts, is64)
            flags |= TRIAGE_DUMP_DRIVER_LIST
            if parts.broken_driver is not None:
                flags |= TRIAGE_DUMP_BROKEN_DRIVER
        if parts.data_page is not None:
            address, data = parts.data_page
            th.DataPageAddress = _ptr(address, is64, "DataPageAddress")
            th.DataPageOffset = body.add(bytes(data))
            th.DataPageSize = len(data)
            flags |= TRIAGE_DUMP_DATAPAGE
        if parts.data_blocks:
            block = TRIAGE_DATA_BLOCK64 if is64 else TRIAGE_DATA_BLOCK32
            list_offset = body.add(bytes(block.sizeof() * len(parts.data_blocks)))
            at = body.offset
            table = bytearray()
            for address, data in parts.data_blocks:
                table += block.build(dict(Address=_ptr(address, is64, "data block address"), Offset=at, Size=len(data)))
                at += len(data)
            body.buf[list_offset - body.start : list_offset - body.start + len(table)] = table
            for _, data in parts.data_blocks:
                body.add(bytes(data), align=1)
            th.DataBlocksOffset = list_offset
            th.DataBlocksCount = len(parts.data_blocks)
            flags |= TRIAGE_DUMP_DATA_BLOCKS
        # right after the last block, unpadded (the blocks' sizes need not be multiples of 8)
        th.ValidOffset = body.add(TRIAGE_DUMP_VALID, align=1)
        th.SizeOfDump = body.offset
        if th.SizeOfDump >= 1 << 32:
            raise DumpWriteError("a small memory dump cannot exceed 4 GiB (its offsets are 32-bit)")
        triage_block = tri_layout.build(th)
    except (construct.ConstructError, TypeError, ValueError, OverflowError) as exc:
        raise DumpWriteError(f"cannot encode the small memory dump: {_one_line(exc)}") from None

    size = th.SizeOfDump + blobs_size(blobs)
    header_fields = fields if fields.minidump_fields is not None else fields.replace(minidump_fields=flags)
    header_fields = header_fields.replace(context=context, exception=exception)
    header = build_header(header_fields, DUMP_TYPE_TRIAGE, required_dump_space=size)
    with _output(path, overwrite) as (f, _):
        f.write(header)
        f.write(triage_block)
        f.write(body.buf)
        write_blobs(f, blobs, fields.build)
    return size


def _add_drivers(body: _Body, th: Container, parts: TriageParts, is64: bool) -> None:
    """The DUMP_DRIVER_ENTRY list, then the DUMP_STRING pool its DriverNameOffsets point into."""
    entry = DUMP_DRIVER_ENTRY64 if is64 else DUMP_DRIVER_ENTRY32
    list_offset = body.add(bytes(entry.sizeof() * len(parts.drivers)))
    # The pool: {u32 length in WCHARs, UTF-16LE, NUL}, each entry 8-byte aligned.
    pool_offset = _align(body.offset, 8)
    names = []
    pool = bytearray()
    for drv in parts.drivers:
        pool += bytes(-len(pool) % 8)
        names.append(pool_offset + len(pool))
        text = _utf16(drv.name)
        pool += (len(text) // 2).to_bytes(4, "little") + text + b"\0\0"
    pool += bytes(-len(pool) % 8)
    table = bytearray()
    for drv, name_offset in zip(parts.drivers, names):
        e = _zero(entry)
        e.DriverNameOffset = name_offset
        ldr = e.LdrEntry
        ldr.DllBase = _ptr(drv.base, is64, "driver base")
        ldr.EntryPoint = _ptr(drv.entry_point, is64, "driver entry point")
        ldr.SizeOfImage = drv.size
        ldr.TimeDateStamp = drv.timestamp
        ldr.CheckSum = drv.checksum
        ldr.Flags = drv.flags
        ldr.LoadCount = 1
        base_name = drv.name.replace("/", "\\").rsplit("\\", 1)[-1]
        ldr.FullDllName = _unicode_string(drv.name)
        ldr.BaseDllName = _unicode_string(base_name)
        table += entry.build(e)
    start = list_offset - body.start
    body.buf[start : start + len(table)] = table
    th.DriverListOffset = list_offset
    th.DriverCount = len(parts.drivers)
    th.StringPoolOffset = body.add(bytes(pool))
    th.StringPoolSize = len(pool)
    if parts.broken_driver is not None:
        if not 0 <= parts.broken_driver < len(parts.drivers):
            raise DumpWriteError(f"broken_driver {parts.broken_driver} is not an index into the driver list")
        th.BrokenDriverOffset = list_offset + parts.broken_driver * entry.sizeof()


# ---------------------------------------------------------------------------------------------
# One entry point by DumpType, for the `.dump` command

_PAGE_KINDS = (DUMP_TYPE_FULL, DUMP_TYPE_BITMAP_FULL, DUMP_TYPE_BITMAP_KERNEL, DUMP_TYPE_RDMP_KERNEL,
               DUMP_TYPE_RDMP_KERNEL_USER, DUMP_TYPE_RDMP_COMPLETE)


def write_dump(path: str | os.PathLike[str], dump_type: int, fields: DumpHeaderFields,
               pages: Pages | None = None, *, triage: TriageParts | None = None, **options: Any) -> int:
    """Write a dump of the given DumpType (1, 4, 5, 6, 8, 9, 10); options go to the writer."""
    if dump_type == DUMP_TYPE_TRIAGE:
        return write_triage(path, fields, triage or TriageParts(), **options)
    if dump_type not in _PAGE_KINDS:
        raise DumpWriteError(f"kdshell cannot write DumpType {dump_type}")
    if pages is None:
        raise DumpWriteError(f"a DumpType {dump_type} dump needs its pages")
    if dump_type == DUMP_TYPE_FULL:
        return write_full(path, fields, pages, **options)
    if dump_type in (DUMP_TYPE_BITMAP_FULL, DUMP_TYPE_BITMAP_KERNEL):
        return write_bitmap(path, fields, pages, dump_type, **options)
    return write_rdmp(path, fields, pages, dump_type, **options)


__all__ = ["TriageDriverInfo", "TriageParts", "write_dump", "write_triage"]
