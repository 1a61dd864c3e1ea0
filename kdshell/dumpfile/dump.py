"""Open a kernel dump: the one place that opens and maps the file.

`open_dump(path)` identifies the file, decodes the header and sets up the page source of its
kind (physical pages, or saved virtual ranges for a small memory dump). The file is opened
read-only and mapped once; nothing reads it whole.
"""
from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Any, BinaryIO

import construct

from kdshell.dumpfile import bitmap as _bitmap
from kdshell.dumpfile import full as _full
from kdshell.dumpfile import triage as _triage
from kdshell.dumpfile.context import decode_context
from kdshell.dumpfile.header import (
    ATTRIBUTE_NAMES,
    DUMP_BLOB_FILE_HEADER,
    DUMP_BLOB_HEADER,
    DUMP_BLOB_SIGNATURE,
    DUMP_HEADER32,
    DUMP_HEADER64,
    DUMP_TYPE_BITMAP_FULL,
    DUMP_TYPE_BITMAP_KERNEL,
    DUMP_TYPE_FULL,
    DUMP_TYPE_HEADER,
    DUMP_TYPE_NAMES,
    DUMP_TYPE_RDMP_COMPLETE,
    DUMP_TYPE_RDMP_KERNEL,
    DUMP_TYPE_RDMP_KERNEL_USER,
    DUMP_TYPE_SUMMARY,
    DUMP_TYPE_TRIAGE,
    HEADER32_SIZE,
    HEADER64_SIZE,
    MACHINE_AMD64,
    MACHINE_ARM64,
    MACHINE_I386,
    Container,
    DumpHeader,
    decode_header,
)
from kdshell.errors import DumpFormatError
from kdshell.memory.physical import PhysicalMemory

# The line KD prints under "Loading Dump File" for each kind (windbg.md §1).
KIND_LINES = {
    DUMP_TYPE_FULL: "Kernel Complete Dump File: Full address space is available",
    DUMP_TYPE_SUMMARY: "Kernel Summary Dump File: Only kernel address space is available",
    DUMP_TYPE_TRIAGE: "Mini Kernel Dump File: Only registers and stack trace are available",
    DUMP_TYPE_BITMAP_FULL: "Kernel Bitmap Dump File: Full address space is available",
    DUMP_TYPE_BITMAP_KERNEL: (
        "Kernel Bitmap Dump File: Kernel address space is available, User address space may not be available."
    ),
    DUMP_TYPE_RDMP_KERNEL: "Kernel Range Dump File: Only kernel address space is available",
    DUMP_TYPE_RDMP_KERNEL_USER: (
        "Kernel Range Dump File: Kernel address space is available, User address space may not be available."
    ),
    DUMP_TYPE_RDMP_COMPLETE: "Kernel Range Dump File: Full address space is available",
}

# Kinds in the users' words, for messages and JSON.
KIND_NAMES = {
    DUMP_TYPE_FULL: "complete memory dump",
    DUMP_TYPE_SUMMARY: "kernel summary dump",
    DUMP_TYPE_TRIAGE: "small memory dump",
    DUMP_TYPE_BITMAP_FULL: "complete memory dump (bitmap)",
    DUMP_TYPE_BITMAP_KERNEL: "kernel memory dump (bitmap)",
    DUMP_TYPE_RDMP_KERNEL: "kernel memory dump (range list)",
    DUMP_TYPE_RDMP_KERNEL_USER: "kernel and user memory dump (range list)",
    DUMP_TYPE_RDMP_COMPLETE: "complete memory dump (range list)",
}


@dataclass(frozen=True)
class DumpBlob:
    """One secondary-data blob (bug check callback data) and where its bytes are in the file."""

    tag: bytes  # 16-byte GUID as stored
    data_offset: int
    data_size: int
    header_offset: int

    @property
    def tag_text(self) -> str:
        return guid_text(self.tag)


def guid_text(raw: bytes) -> str:
    """A GUID in registry form: Data1-Data2-Data3 little-endian, Data4 as bytes."""
    d1 = int.from_bytes(raw[0:4], "little")
    d2 = int.from_bytes(raw[4:6], "little")
    d3 = int.from_bytes(raw[6:8], "little")
    return f"{d1:08x}-{d2:04x}-{d3:04x}-{raw[8:10].hex()}-{raw[10:16].hex()}"


# Dumps often travel packed (Windows Error Reporting sends CAB files): say what to do with one.
ARCHIVES = ((b"MSCF", "CAB", "cabextract FILE"), (b"PK\x03\x04", "ZIP", "unzip FILE"),
            (b"\x1f\x8b", "gzip", "gunzip FILE"), (b"7z\xbc\xaf\x27\x1c", "7-Zip", "7z x FILE"),
            (b"\xfd7zXZ\x00", "xz", "unxz FILE"))


class DumpFile:
    """An opened kernel dump: header, context, and the page source of its kind."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.warnings: list[str] = []
        self.physical: PhysicalMemory | None = None  # for complete/kernel kinds
        self.triage: _triage.TriageDump | None = None
        self.type_header: Container = None  # the bitmap/RDMP/summary/triage header, for .dumpdebug
        self._data_end = 0  # where the primary dump data ends (secondary data may follow)
        self._blobs: list[DumpBlob] | None = None
        self._registers: dict[str, int] | None = None
        self._file: BinaryIO | None = open(self.path, "rb")  # read-only, always
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self._identify()
            self._mm: mmap.mmap | None = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            if hasattr(self._mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
                self._mm.madvise(mmap.MADV_RANDOM)
            self.data = memoryview(self._mm)
            self._open()
            if self.physical is not None:
                self.physical.fd = self._file.fileno()
        except BaseException:
            self.close()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _identify(self) -> None:
        f = self._file
        assert f is not None  # open until close()
        head = f.read(8)
        f.seek(0)
        if len(head) < 8:
            raise DumpFormatError(f"file is too small to be a dump ({self.size} bytes)", "Signature", 0)
        if head[:4] == b"MDMP":
            raise DumpFormatError("this is a user-mode minidump, not a kernel dump", "Signature", 0)
        if head[:4] == b"USER":
            raise DumpFormatError("this is a user-mode dump, not a kernel dump", "Signature", 0)
        for magic, kind, tool in ARCHIVES:
            if head.startswith(magic):
                raise DumpFormatError(f"this is a {kind} archive, not a dump: extract the .dmp inside it first "
                                      f"({tool})", "Signature", 0)
        if head == b"PAGEDU64":
            self.is64 = True
        elif head == b"PAGEDUMP":
            self.is64 = False
        else:
            raise DumpFormatError(
                f"not a Windows kernel dump (signature {head!r}, expected PAGEDU64 or PAGEDUMP)", "Signature", 0
            )
        need = HEADER64_SIZE if self.is64 else HEADER32_SIZE
        if self.size < need:
            raise DumpFormatError(
                f"file is truncated inside the dump header ({self.size:#x} of {need:#x} bytes)", "DUMP_HEADER", 0
            )

    def _open(self) -> None:
        layout = DUMP_HEADER64 if self.is64 else DUMP_HEADER32
        try:
            raw = layout.parse(bytes(self.data[: layout.sizeof()]))
        except construct.ConstructError as exc:  # cannot happen after _identify, but stay one-line
            raise DumpFormatError(f"unreadable dump header: {exc}", "DUMP_HEADER", 0) from None
        self.header: DumpHeader = decode_header(raw, self.is64)
        h = self.header
        expected = (MACHINE_AMD64, MACHINE_ARM64) if self.is64 else (MACHINE_I386,)
        if h.machine not in expected:
            self.warnings.append(f"Unexpected machine type {h.machine:#x} for a {'64' if self.is64 else '32'}-bit dump.")
        if h.attributes and h.attributes & 0x100:
            self.warnings.append("The dump's data is encrypted (EncryptedDumpData): memory cannot be read.")

        t = h.dump_type
        w = self.warnings
        if t == DUMP_TYPE_FULL:
            self.physical, self._data_end = _full.open_full(self.data, self.size, h, w)
        elif t in (DUMP_TYPE_BITMAP_FULL, DUMP_TYPE_BITMAP_KERNEL):
            self.physical, self._data_end, self.type_header = _bitmap.open_bitmap(self.data, self.size, h, w)
        elif t == DUMP_TYPE_SUMMARY:
            self.physical, self._data_end, self.type_header = _bitmap.open_summary(self.data, self.size, h, w)
        elif t in (DUMP_TYPE_RDMP_KERNEL, DUMP_TYPE_RDMP_KERNEL_USER, DUMP_TYPE_RDMP_COMPLETE):
            if not self.is64:
                raise DumpFormatError(f"DumpType {t} is only known for 64-bit dumps", "DumpType", self._type_offset)
            self.physical, self._data_end, self.type_header = _bitmap.open_rdmp(self.data, self.size, h, w)
        elif t == DUMP_TYPE_TRIAGE:
            self.triage = _triage.open_triage(self.data, self.size, h, w)
            self.type_header = self.triage.header
            self._data_end = self.triage.end_offset
        elif t == DUMP_TYPE_HEADER:
            raise DumpFormatError(
                "this is a header-only dump (DumpType 3): it holds no memory to debug", "DumpType", self._type_offset
            )
        else:
            raise DumpFormatError(f"unknown dump type {t:#x}", "DumpType", self._type_offset)

        if self.physical is not None and self.physical.truncated_pages:
            w.append(
                f"The dump file is truncated: {self.physical.truncated_pages:#x} of "
                f"{self.physical.present_pages:#x} pages are past its end ({self.size:#x} bytes, "
                f"{self._data_end:#x} expected). Those pages read as not present."
            )

    @property
    def _type_offset(self) -> int:
        return 0xF98 if self.is64 else 0xF88

    # -- facts -------------------------------------------------------------------------------
    @property
    def dump_type(self) -> int:
        return self.header.dump_type

    @property
    def type_name(self) -> str:
        return DUMP_TYPE_NAMES.get(self.dump_type, f"{self.dump_type:#x}")

    @property
    def kind_line(self) -> str:
        return KIND_LINES[self.dump_type]

    @property
    def kind_name(self) -> str:
        return KIND_NAMES[self.dump_type]

    @property
    def is_small(self) -> bool:
        return self.triage is not None

    @property
    def attribute_names(self) -> list[str]:
        a = self.header.attributes or 0
        return [name for bit, name in ATTRIBUTE_NAMES.items() if a & bit]

    def context_bytes(self) -> bytes:
        """The crashing processor's CONTEXT record (the triage copy when the file has one)."""
        if self.triage is not None and self.triage.context_offset:
            off = self.triage.context_offset
            return bytes(self.data[off : off + len(self.header.context_bytes)])
        return self.header.context_bytes

    def registers(self) -> dict[str, int]:
        """The crashing context's registers (a fresh dict: callers may change theirs)."""
        if self._registers is None:
            self._registers = decode_context(self.header.machine, self.context_bytes())
        return dict(self._registers)

    @property
    def exception(self) -> dict[str, Any]:
        if self.triage is not None and self.triage.exception is not None:
            return self.triage.exception
        return self.header.exception

    def read_file(self, offset: int, size: int) -> bytes:
        """Raw bytes of the file (bounded): for copies the kernel layer decodes."""
        if offset < 0 or size < 0 or offset + size > self.size:
            raise DumpFormatError(f"{size:#x} bytes at {offset:#x} are outside the file", None, offset)
        return bytes(self.data[offset : offset + size])

    # -- secondary data ----------------------------------------------------------------------
    def blobs(self) -> list[DumpBlob]:
        """The DUMP_BLOB stream after the primary data (empty when there is none)."""
        if self._blobs is None:
            self._blobs = self._read_blobs()
        return self._blobs

    def _read_blobs(self) -> list[DumpBlob]:
        start = self._data_end
        fh = DUMP_BLOB_FILE_HEADER.sizeof()
        if start <= 0 or start + fh > self.size or bytes(self.data[start : start + 8]) != DUMP_BLOB_SIGNATURE:
            return []
        file_header = DUMP_BLOB_FILE_HEADER.parse(bytes(self.data[start : start + fh]))
        pos = start + max(file_header.HeaderSize, fh)
        blobs = []
        bh = DUMP_BLOB_HEADER.sizeof()
        while pos + bh <= self.size:
            h = DUMP_BLOB_HEADER.parse(bytes(self.data[pos : pos + bh]))
            data_off = pos + h.HeaderSize + h.PrePad
            end = data_off + h.DataSize + h.PostPad
            if h.HeaderSize < bh or h.HeaderSize > 0x1000 or data_off + h.DataSize > self.size:
                self.warnings.append(f"Secondary data ends with a malformed blob header at file offset {pos:#x}.")
                break
            blobs.append(DumpBlob(bytes(h.Tag), data_off, h.DataSize, pos))
            pos = end
        return blobs

    def fileno(self) -> int:
        """The opened file's descriptor (read with os.pread: no shared file position)."""
        if self._file is None:
            raise ValueError("the dump is closed")
        return self._file.fileno()

    # -- lifetime ----------------------------------------------------------------------------
    def close(self) -> None:
        data = getattr(self, "data", None)
        if data is not None:
            try:
                data.release()
            except BufferError:  # slices of it are still alive; they keep the mapping until freed
                pass
            self.data = None  # type: ignore[assignment]  # a closed dump is not read again
        mm = getattr(self, "_mm", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # a memoryview slice is still alive somewhere; the GC will unmap
                pass
            self._mm = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "DumpFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_dump(path: str | os.PathLike[str]) -> DumpFile:
    """Open a kernel dump read-only. Raises DumpFormatError (one line) for anything malformed."""
    try:
        return DumpFile(path)
    except OSError as exc:
        raise DumpFormatError(f"cannot open {path}: {exc.strerror or exc}") from None
