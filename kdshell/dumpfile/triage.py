"""Small memory dumps (DumpType 4, "minidumps"): the TRIAGE_DUMP block and what it points to.

A triage dump keeps no physical memory: a context, an exception record, copies of the crashing
processor's KPRCB and of the current EPROCESS/ETHREAD, the kernel stack, the driver list with a
string pool, unloaded drivers, MM counters, a KDBG copy, one data page and a list of data blocks.
Every *Offset field is a file offset. A part whose offset or size points outside the file is
dropped with a warning; the rest of the dump stays usable.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from kdshell.dumpfile.context import CONTEXT_AMD64, CONTEXT_X86
from kdshell.dumpfile.header import (
    DUMP_DRIVER_ENTRY32,
    DUMP_DRIVER_ENTRY64,
    DUMP_MM_STORAGE32,
    DUMP_MM_STORAGE64,
    DUMP_UNLOADED_DRIVERS32,
    DUMP_UNLOADED_DRIVERS64,
    EXCEPTION_RECORD32,
    EXCEPTION_RECORD64,
    TRIAGE_DATA_BLOCK32,
    TRIAGE_DATA_BLOCK64,
    TRIAGE_DUMP32,
    TRIAGE_DUMP64,
    TRIAGE_DUMP_VALID,
    Container,
    DumpHeader,
    Layout,
    decode_exception,
    field_offset,
)
from kdshell.errors import DumpFormatError
from kdshell.memory.sparse import SparseMemory

# A DUMP_STRING name longer than this is corrupt (MAX_PATH-ish names are far shorter).
MAX_NAME_CHARS = 1024


@dataclass
class TriageDriver:
    name: str
    base: int
    size: int
    timestamp: int
    checksum: int
    entry_offset: int  # file offset of the DUMP_DRIVER_ENTRY


@dataclass
class UnloadedDriver:
    name: str
    start: int
    end: int


@dataclass
class TriageDump:
    header: Container  # TRIAGE_DUMP32/64
    offset: int  # file offset of the TRIAGE_DUMP block
    memory: SparseMemory
    drivers: list[TriageDriver] = field(default_factory=list)
    unloaded: list[UnloadedDriver] = field(default_factory=list)
    broken_driver: TriageDriver | None = None
    mm: Container = None  # DUMP_MM_STORAGE, or None
    exception: dict[str, Any] | None = None
    context_offset: int | None = None
    # (file offset, size) of the KPRCB / EPROCESS / ETHREAD copies; their addresses are not
    # stored in the file, the kernel layer derives them.
    prcb: tuple[int, int] | None = None
    process: tuple[int, int] | None = None
    thread: tuple[int, int] | None = None
    end_offset: int = 0  # where the triage data ends (secondary data may follow)


class _Reader:
    """Bounds-checked reads of triage parts; records a warning and returns None when out of the file."""

    def __init__(self, data: memoryview, file_size: int, warnings: list[str]) -> None:
        self.data = data
        self.size = file_size
        self.warnings = warnings

    def fits(self, offset: int, size: int, what: str, field_name: str) -> bool:
        if offset <= 0 or size < 0 or offset + size > self.size:
            self.warnings.append(
                f"The small memory dump's {what} is outside the file ({field_name} = {offset:#x}, "
                f"{size:#x} bytes); it is left out."
            )
            return False
        return True

    def struct(self, layout: Layout, offset: int, what: str, field_name: str) -> Container:
        size = layout.sizeof()
        if not self.fits(offset, size, what, field_name):
            return None
        return layout.parse(bytes(self.data[offset : offset + size]))

    def u32(self, offset: int) -> int:
        return int.from_bytes(self.data[offset : offset + 4], "little")

    def dump_string(self, offset: int) -> str | None:
        """A DUMP_STRING {Length (WCHARs), Buffer[] NUL-terminated}; None if out of the file."""
        if offset <= 0 or offset + 4 > self.size:
            return None
        length = min(self.u32(offset), MAX_NAME_CHARS)
        raw = bytes(self.data[offset + 4 : min(self.size, offset + 4 + 2 * length)])
        text = raw.decode("utf-16-le", "replace")
        return text.split("\0", 1)[0]


def _copy_extent(th: Container, name_offset: int, file_size: int) -> int:
    """Size of a copied structure whose size is not stored: up to the next part of the dump."""
    starts = [
        v for k, v in th.items()
        if isinstance(v, int) and k.endswith("Offset") and k not in ("ValidOffset",) and v > name_offset
    ]
    return min(starts + [file_size]) - name_offset


def open_triage(data: memoryview, file_size: int, header: DumpHeader, warnings: list[str]) -> TriageDump:
    is64 = header.is64
    base = header.header_size
    layout = TRIAGE_DUMP64 if is64 else TRIAGE_DUMP32
    if base + layout.sizeof() > file_size:
        raise DumpFormatError("file ends inside the TRIAGE_DUMP header", "TRIAGE_DUMP", base)
    th = layout.parse(bytes(data[base : base + layout.sizeof()]))
    r = _Reader(data, file_size, warnings)

    if th.SizeOfDump > file_size:
        warnings.append(
            f"The small memory dump is truncated: SizeOfDump is {th.SizeOfDump:#x} bytes, the file {file_size:#x}."
        )
    if r.fits(th.ValidOffset, 4, "validity marker", "ValidOffset"):
        if bytes(data[th.ValidOffset : th.ValidOffset + 4]) != TRIAGE_DUMP_VALID:
            warnings.append(
                f"The small memory dump's validity marker at {th.ValidOffset:#x} is not 'TRGD': "
                "the triage data may be incomplete."
            )

    memory = SparseMemory(data)
    tri = TriageDump(header=th, offset=base, memory=memory)
    tri.end_offset = min(th.SizeOfDump, file_size)

    # Stack first: it is the most trusted copy of the memory it covers.
    if th.SizeOfCallStack and r.fits(th.CallStackOffset, th.SizeOfCallStack, "kernel stack", "CallStackOffset"):
        memory.add(th.TopOfStack, th.SizeOfCallStack, th.CallStackOffset, "stack")

    if header.kd_debugger_data_block and th.DebuggerDataSize:
        if r.fits(th.DebuggerDataOffset, th.DebuggerDataSize, "KDBG copy", "DebuggerDataOffset"):
            memory.add(header.kd_debugger_data_block, th.DebuggerDataSize, th.DebuggerDataOffset, "KDBG copy")

    if th.DataPageAddress and th.DataPageSize:
        if r.fits(th.DataPageOffset, th.DataPageSize, "data page", "DataPageOffset"):
            memory.add(th.DataPageAddress, th.DataPageSize, th.DataPageOffset, "data page")

    if th.DataBlocksCount:
        block = TRIAGE_DATA_BLOCK64 if is64 else TRIAGE_DATA_BLOCK32
        bsize = block.sizeof()
        if r.fits(th.DataBlocksOffset, th.DataBlocksCount * bsize, "data block list", "DataBlocksOffset"):
            bad = 0
            # A hot loop on big triage dumps (thousands of blocks): struct, not construct.
            fmt = struct.Struct("<QII" if is64 else "<III")
            for i in range(th.DataBlocksCount):
                address, offset, size = fmt.unpack_from(data, th.DataBlocksOffset + i * bsize)
                if offset == 0 or offset + size > file_size:
                    bad += 1
                    continue
                memory.add(address, size, offset, "data block")
            if bad:
                warnings.append(f"{bad} of {th.DataBlocksCount} data blocks point outside the file; left out.")

    ctx_size = min(len(header.context_bytes), (CONTEXT_AMD64 if is64 else CONTEXT_X86).sizeof())
    if th.ContextOffset and r.fits(th.ContextOffset, ctx_size, "context", "ContextOffset"):
        tri.context_offset = th.ContextOffset

    er = r.struct(EXCEPTION_RECORD64 if is64 else EXCEPTION_RECORD32, th.ExceptionOffset, "exception record",
                  "ExceptionOffset") if th.ExceptionOffset else None
    if er is not None:
        tri.exception = decode_exception(er)

    if th.MmOffset:
        tri.mm = r.struct(DUMP_MM_STORAGE64 if is64 else DUMP_MM_STORAGE32, th.MmOffset, "MM information", "MmOffset")

    for name in ("Prcb", "Process", "Thread"):
        off = th[f"{name}Offset"]
        if off and r.fits(off, 1, f"{name} copy", f"{name}Offset"):
            setattr(tri, name.lower(), (off, _copy_extent(th, off, file_size)))

    _read_drivers(tri, th, r, is64)
    _read_unloaded(tri, th, r, is64)
    return tri


_DRIVER_FIELDS = ("DriverNameOffset", "LdrEntry.DllBase", "LdrEntry.SizeOfImage", "LdrEntry.TimeDateStamp",
                  "LdrEntry.CheckSum")
_WIDTH = {2: "H", 4: "I", 8: "Q"}


def _read_drivers(tri: TriageDump, th: Container, r: _Reader, is64: bool) -> None:
    if not th.DriverCount:
        return
    entry = DUMP_DRIVER_ENTRY64 if is64 else DUMP_DRIVER_ENTRY32
    esize = entry.sizeof()
    if not r.fits(th.DriverListOffset, th.DriverCount * esize, "driver list", "DriverListOffset"):
        return
    # Read with struct at the layout's own offsets: a construct parse per entry costs ~50 us,
    # a third of opening a small dump with 150 drivers.
    readers = [(struct.Struct("<" + _WIDTH[size]).unpack_from, at)
               for at, size in (field_offset(entry, f) for f in _DRIVER_FIELDS)]
    data = r.data
    for i in range(th.DriverCount):
        off = th.DriverListOffset + i * esize
        name_at, base, size, stamp, checksum = (read(data, off + at)[0] for read, at in readers)
        name = r.dump_string(name_at)
        if name is None:
            name = f"<name at {name_at:#x} outside the file>"
        drv = TriageDriver(name, base, size, stamp, checksum, off)
        tri.drivers.append(drv)
        if th.BrokenDriverOffset and th.BrokenDriverOffset == off:
            tri.broken_driver = drv


def _read_unloaded(tri: TriageDump, th: Container, r: _Reader, is64: bool) -> None:
    if not th.UnloadedDriversOffset:
        return
    off = th.UnloadedDriversOffset
    count_size = 8 if is64 else 4
    if not r.fits(off, count_size, "unloaded driver list", "UnloadedDriversOffset"):
        return
    count = int.from_bytes(r.data[off : off + count_size], "little")
    entry = DUMP_UNLOADED_DRIVERS64 if is64 else DUMP_UNLOADED_DRIVERS32
    esize = entry.sizeof()
    if not r.fits(off + count_size, count * esize, "unloaded driver list", "UnloadedDriversOffset"):
        return
    for i in range(count):
        e = entry.parse(bytes(r.data[off + count_size + i * esize : off + count_size + (i + 1) * esize]))
        # DriverName is a WCHAR[12] that is truncated, not always NUL-terminated; Name.Length
        # says how much of it is meaningful.
        chars = min(e.Name.Length // 2, 12) or 12
        name = bytes(e.DriverName[: 2 * chars]).decode("utf-16-le", "replace").split("\0", 1)[0]
        tri.unloaded.append(UnloadedDriver(name, e.StartAddress, e.EndAddress))

