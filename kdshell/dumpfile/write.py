"""Writers for the kernel dumps kdshell reads that hold pages, and what every writer shares.

Used by the test machines (fixtures build a Windows-like machine, then write its dumps) and by
the `.dump` command. Each writer takes the header facts (`DumpHeaderFields`), the memory (pages by
PFN, or the parts of a small memory dump) and optional secondary-data blobs:

    write_full(path, fields, pages, runs=None)            DumpType 1, run list in the header
    write_bitmap(path, fields, pages, kind=6|5)           'SDMP' (6) / 'FDMP' (5) bitmap
    write_rdmp(path, fields, pages, dump_type=8|9|10)     'RDMP' range list (current WinDbg)

The small memory dump writer (`write_triage`, DumpType 4) and `write_dump` (any DumpType) are in
write_triage.py, built on this module's header, blob and output helpers; this module does not
import it.

Headers are built the way Windows builds them: a header-size buffer filled with "PAGE"
(formats.md §1), with the fields we know written over it through header.py's construct layouts
(`DUMP_HEADER64/32.build`); padding and fields we do not know keep the fill, so readers see
them as absent. No layout is declared twice: everything on disk comes from header.py (and the
CONTEXT records from context.py).

`pages` is anything with `present_runs()` (sorted (first PFN, count) pairs) and `page(pfn)`
(4096 bytes) -- a `PhysicalMemory` of an opened dump qualifies, so `.dump /f` streams one dump
into another -- or a mapping {pfn: bytes}, or an iterable of (pfn, bytes) pairs in increasing
PFN order (spooled once to a temporary file next to the target, since headers need the PFN
list before the first page is written). Page data is streamed through a buffered file: memory
stays bounded whatever the dump size. A source whose pages lie in a file (`FileSource`: an opened
dump, as `.dump` gives it) is copied by file extents instead: the source's holes skipped unread,
4 MiB reads into one buffer, zero pages left as holes, and a bitmap source's bitmap copied as is.

Files are written to a temporary file in the target directory and moved into place only when
complete; on any error the temporary file is removed and a `DumpWriteError` (one line) raised.
An existing file is never replaced unless `overwrite=True`, and never when it is a special file.
A new file's mode comes from the umask; a replaced file's mode and owner are kept (kdshell.outpath).
"""
from __future__ import annotations

import bisect
import os
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Iterable, Iterator, Mapping, Protocol, Sequence, cast

import construct

from kdshell.dumpfile.context import CONTEXT_AMD64, CONTEXT_X86
from kdshell.dumpfile.header import (
    BITMAP_DUMP_HEADER64, BITMAP_OFFSET, BITMAP_SIGNATURE_FULL, BITMAP_SIGNATURE_KERNEL, DUMP_BLOB_FILE_HEADER,
    DUMP_BLOB_HEADER, DUMP_HEADER32, DUMP_HEADER64, DUMP_TYPE_BITMAP_FULL,
    DUMP_TYPE_BITMAP_KERNEL, DUMP_TYPE_FULL, DUMP_TYPE_RDMP_COMPLETE, DUMP_TYPE_RDMP_KERNEL,
    DUMP_TYPE_RDMP_KERNEL_USER, EXCEPTION_MAXIMUM_PARAMETERS, EXCEPTION_RECORD32, EXCEPTION_RECORD64,
    FULL_RDMP_HEADER64, KERNEL_RDMP_HEADER64, MACHINE_AMD64, MACHINE_I386, MAX_RUNS32, MAX_RUNS64, PAGE_SIZE,
    PHYSICAL_MEMORY_BLOCK_SIZE, PHYSICAL_MEMORY_DESCRIPTOR32, PHYSICAL_MEMORY_DESCRIPTOR64,
    PHYSICAL_MEMORY_RUN32, PHYSICAL_MEMORY_RUN64, RDMP_RANGE, RDMP_RANGES_OFFSET, VALID_DUMP_32, VALID_DUMP_64,
    Container, DumpHeader, Layout,
)
from kdshell.dumpfile.extents import copy_extents, file_source
from kdshell.errors import DumpWriteError, KdError, MemoryNotPresent
from kdshell.outpath import check_output, finish_mode

FILL = b"PAGE"
RDMP_MARKER = 0x40
_BITMAP_CHUNK = 1 << 20  # bitmap bytes produced per step (8 M PFNs)


# ---------------------------------------------------------------------------------------------
# Inputs


@dataclass
class DumpHeaderFields:
    """What the header says. `None` leaves the field holding the "PAGE" fill (= absent)."""

    is64: bool = True
    machine: int | None = None  # None: AMD64 for 64-bit, i386 for 32-bit
    major_version: int = 0xF  # 0xF free build, 0xC checked
    build: int = 19041  # MinorVersion
    directory_table_base: int | None = None
    pfn_database: int | None = None
    ps_loaded_module_list: int | None = None
    ps_active_process_head: int | None = None
    number_processors: int = 1
    bugcheck_code: int = 0
    bugcheck_parameters: Sequence[int] = (0, 0, 0, 0)
    kd_debugger_data_block: int | None = None
    context: bytes | None = None  # CONTEXT record bytes (see make_context_amd64/x86)
    exception: Mapping[str, Any] | bytes | None = None  # decode_exception()-style dict, or raw record
    system_time: int | None = None  # FILETIME
    system_uptime: int | None = None  # 100 ns units
    comment: str | bytes | None = None
    product_type: int | None = None
    suite_mask: int | None = None
    attributes: int | None = None
    boot_id: int | None = None
    minidump_fields: int | None = None  # triage: None = computed from the parts written
    secondary_data_state: int | None = None
    writer_status: int | None = None
    kd_secondary_version: int | None = None
    version_user: bytes | None = None
    required_dump_space: int | None = None  # None: the size of the file written
    pae_enabled: bool = False  # 32-bit only
    # A PHYSICAL_MEMORY_DESCRIPTOR for kinds other than DumpType 1 (which writes its own):
    # Windows records the machine's memory runs there; None leaves the fill ("no run list").
    physical_memory_runs: Sequence[tuple[int, int]] | None = None

    @classmethod
    def from_header(cls, h: DumpHeader, **overrides: Any) -> "DumpHeaderFields":
        """The fields of an opened dump's header, e.g. to re-write it as another kind."""
        values: dict[str, Any] = dict(
            is64=h.is64, machine=h.machine, major_version=h.major_version, build=h.build,
            directory_table_base=h.directory_table_base, pfn_database=h.pfn_database,
            ps_loaded_module_list=h.ps_loaded_module_list, ps_active_process_head=h.ps_active_process_head,
            number_processors=h.number_processors, bugcheck_code=h.bugcheck_code,
            bugcheck_parameters=tuple(h.bugcheck_parameters), kd_debugger_data_block=h.kd_debugger_data_block,
            context=bytes(h.context_bytes), exception=dict(h.exception), system_time=h.system_time,
            system_uptime=h.system_uptime, comment=h.comment or None, product_type=h.product_type,
            suite_mask=h.suite_mask, attributes=h.attributes, boot_id=h.boot_id,
            secondary_data_state=h.secondary_data_state, writer_status=h.writer_status,
            kd_secondary_version=h.kd_secondary_version, pae_enabled=h.pae_enabled,
        )
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> "DumpHeaderFields":
        return replace(self, **changes)


class PageSource(Protocol):
    """Pages by PFN, as the writers want them (a kdshell PhysicalMemory is one)."""

    def present_runs(self) -> Iterable[tuple[int, int]]:
        """(first PFN, count) of the stored runs, in increasing PFN order, disjoint."""

    def page(self, pfn: int) -> bytes | memoryview:
        """The 4096 bytes of a PFN listed in present_runs()."""


# What the writers take as `pages` (see the module's docstring).
Pages = PageSource | Mapping[int, bytes] | Iterable[tuple[int, bytes]]
# A blob's tag: a uuid.UUID, a GUID string or its 16 raw bytes.
BlobTag = uuid.UUID | str | bytes


# ---------------------------------------------------------------------------------------------
# CONTEXT / EXCEPTION_RECORD helpers

_X86_ALIASES = {
    "efl": "EFlags", "eflags": "EFlags", "cs": "SegCs", "ds": "SegDs", "es": "SegEs", "fs": "SegFs",
    "gs": "SegGs", "ss": "SegSs", "contextflags": "ContextFlags",
}
_AMD64_ALIASES = {**_X86_ALIASES, "mxcsr": "MxCsr"}


def _zero(layout: Layout) -> Container:
    return layout.parse(bytes(layout.sizeof()))


def _field_names(layout: Layout) -> dict[str, str]:
    return {sc.name.lower(): sc.name for sc in layout.subcons if sc.name}


def make_context_amd64(**regs: int) -> bytes:
    """A CONTEXT_AMD64 (0x4d0 bytes). Names: Windows' (Rip, SegCs, EFlags) or WinDbg's (rip, cs,
    efl, xmm0..xmm15). MxCsr is stored twice (+0x34 and FltSave +0x118) as Windows does;
    kdmp-parser refuses a context where the two differ."""
    c = _zero(CONTEXT_AMD64)
    c.update(dict(ContextFlags=0x10001F, SegCs=0x10, SegDs=0x2B, SegEs=0x2B, SegFs=0x53, SegGs=0x2B, SegSs=0x18,
                  EFlags=0x202, MxCsr=0x1F80))
    c.FltSave.ControlWord = 0x27F
    c.FltSave.MxCsr_Mask = 0xFFFF
    names = _field_names(CONTEXT_AMD64)
    for key, value in regs.items():
        low = key.lower()
        if low.startswith("xmm") and low[3:].isdigit() and int(low[3:]) < 16:
            c.FltSave.XmmRegisters[int(low[3:])] = value.to_bytes(16, "little")
            continue
        name = _AMD64_ALIASES.get(low) or names.get(low)
        if name is None:
            raise ValueError(f"no register {key!r} in CONTEXT_AMD64")
        c[name] = value
    c.FltSave.MxCsr = c.MxCsr
    return CONTEXT_AMD64.build(c)


def make_context_x86(**regs: int) -> bytes:
    """A CONTEXT for i386 (0x2cc bytes); names as for make_context_amd64 (eip, esp, efl, cs ...)."""
    c = _zero(CONTEXT_X86)
    c.update(dict(ContextFlags=0x1001F, SegCs=0x8, SegDs=0x23, SegEs=0x23, SegFs=0x30, SegGs=0, SegSs=0x10,
                  EFlags=0x202))
    names = _field_names(CONTEXT_X86)
    for key, value in regs.items():
        name = _X86_ALIASES.get(key.lower()) or names.get(key.lower())
        if name is None:
            raise ValueError(f"no register {key!r} in the x86 CONTEXT")
        c[name] = value
    return CONTEXT_X86.build(c)


def make_exception(code: int = 0x80000003, address: int = 0, flags: int = 0, record: int = 0,
                   parameters: Sequence[int] = ()) -> dict[str, Any]:
    """An exception record in the form header.decode_exception() returns."""
    return {
        "ExceptionCode": code, "ExceptionFlags": flags, "ExceptionRecord": record,
        "ExceptionAddress": address, "NumberParameters": len(parameters),
        "ExceptionInformation": list(parameters),
    }


# ---------------------------------------------------------------------------------------------
# Header


def _fill(size: int) -> bytes:
    return (FILL * (size // 4 + 1))[:size]


def _padding_ranges(layout: Layout) -> Iterator[tuple[int, int]]:
    """(offset, size) of the unnamed Padding members of a flat Struct (they build as zeros)."""
    offset = 0
    for sc in layout.subcons:
        size = sc.sizeof()
        if sc.name is None:
            yield offset, size
        offset += size


def _ptr(value: int, is64: bool, what: str) -> int:
    """A pointer for the header: 32-bit headers accept sign-extended kernel addresses."""
    if is64 or value < (1 << 32):
        return value
    if value >> 32 == 0xFFFFFFFF:
        return value & 0xFFFFFFFF
    raise DumpWriteError(f"{what} {value:#x} does not fit a 32-bit dump")


def _exception_container(exc: Mapping[str, Any] | bytes | bytearray | memoryview, is64: bool) -> Container:
    layout = EXCEPTION_RECORD64 if is64 else EXCEPTION_RECORD32
    if isinstance(exc, (bytes, bytearray, memoryview)):
        raw = bytes(exc)
        if len(raw) != layout.sizeof():
            raise DumpWriteError(f"exception record is {len(raw):#x} bytes, expected {layout.sizeof():#x}")
        return layout.parse(raw)
    info = [int(x) for x in exc.get("ExceptionInformation", ())][:EXCEPTION_MAXIMUM_PARAMETERS]
    c = _zero(layout)
    c.ExceptionCode = exc.get("ExceptionCode", 0)
    c.ExceptionFlags = exc.get("ExceptionFlags", 0)
    c.ExceptionRecord = _ptr(exc.get("ExceptionRecord", 0), is64, "ExceptionRecord")
    c.ExceptionAddress = _ptr(exc.get("ExceptionAddress", 0), is64, "ExceptionAddress")
    c.NumberParameters = exc.get("NumberParameters", len(info))
    c.ExceptionInformation = [_ptr(x, is64, "ExceptionInformation") for x in info] + [0] * (
        EXCEPTION_MAXIMUM_PARAMETERS - len(info)
    )
    return c


def _descriptor(runs: Sequence[tuple[int, int]], is64: bool) -> bytes:
    """A PHYSICAL_MEMORY_DESCRIPTOR (run list) for the 700-byte PhysicalMemoryBlock."""
    desc, run, limit = (
        (PHYSICAL_MEMORY_DESCRIPTOR64, PHYSICAL_MEMORY_RUN64, MAX_RUNS64)
        if is64 else (PHYSICAL_MEMORY_DESCRIPTOR32, PHYSICAL_MEMORY_RUN32, MAX_RUNS32)
    )
    if len(runs) > limit:
        raise DumpWriteError(
            f"{len(runs)} physical memory runs do not fit the dump header (at most {limit} on "
            f"{'64' if is64 else '32'}-bit): write a bitmap or range-list dump instead"
        )
    if not is64 and any(b + c > 1 << 32 for b, c in runs):
        raise DumpWriteError("a 32-bit dump's run list holds PFNs below 2^32 only")
    out = desc.build(dict(NumberOfRuns=len(runs), NumberOfPages=sum(c for _, c in runs)))
    out += b"".join(run.build(dict(BasePage=b, PageCount=c)) for b, c in runs)
    return out


def build_header(fields: DumpHeaderFields, dump_type: int, *, runs: Sequence[tuple[int, int]] | None = None,
                 required_dump_space: int | None = None) -> bytes:
    """DUMP_HEADER64 (0x2000 bytes) or DUMP_HEADER32 (0x1000) over the "PAGE" fill."""
    f = fields
    layout = DUMP_HEADER64 if f.is64 else DUMP_HEADER32
    size = layout.sizeof()
    fill = _fill(size)
    seed = bytearray(fill)
    seed[4:8] = VALID_DUMP_64 if f.is64 else VALID_DUMP_32
    c = layout.parse(bytes(seed))
    p = lambda v, what: _ptr(v, f.is64, what)  # noqa: E731

    c.MajorVersion = f.major_version
    c.MinorVersion = f.build
    c.MachineImageType = f.machine if f.machine is not None else (MACHINE_AMD64 if f.is64 else MACHINE_I386)
    c.NumberProcessors = f.number_processors
    c.BugCheckCode = f.bugcheck_code
    params = list(f.bugcheck_parameters) + [0] * 4
    c.BugCheckParameters = [p(v, "BugCheckParameter") for v in params[:4]]
    c.DumpType = dump_type
    for name, value in (
        ("DirectoryTableBase", f.directory_table_base),
        ("PfnDataBase", f.pfn_database),
        ("PsLoadedModuleList", f.ps_loaded_module_list),
        ("PsActiveProcessHead", f.ps_active_process_head),
        ("KdDebuggerDataBlock", f.kd_debugger_data_block),
    ):
        if value is not None:
            c[name] = p(value, name)
    for name, value in (
        ("SystemTime", f.system_time),
        ("SystemUpTime", f.system_uptime),
        ("MiniDumpFields", f.minidump_fields),
        ("SecondaryDataState", f.secondary_data_state),
        ("ProductType", f.product_type),
        ("SuiteMask", f.suite_mask),
        ("WriterStatus", f.writer_status),
        ("KdSecondaryVersion", f.kd_secondary_version),
        ("Attributes", f.attributes),
        ("BootId", f.boot_id),
    ):
        if value is not None:
            c[name] = value
    space = f.required_dump_space if f.required_dump_space is not None else required_dump_space
    if space is not None:
        c.RequiredDumpSpace = space
    if not f.is64:
        c.PaeEnabled = 1 if f.pae_enabled else 0
    if f.version_user is not None:
        c.VersionUser = (bytes(f.version_user) + bytes(32))[:32]
    if f.comment is not None:
        text = f.comment.encode("ascii", "replace") if isinstance(f.comment, str) else bytes(f.comment)
        text = text[:127] + b"\0"
        c.Comment = text + bytes(c.Comment)[len(text):]
    if f.context is not None:
        ctx = bytes(f.context)
        if len(ctx) > len(c.ContextRecord):
            raise DumpWriteError(f"context record is {len(ctx):#x} bytes, the header holds {len(c.ContextRecord):#x}")
        c.ContextRecord = ctx + bytes(c.ContextRecord)[len(ctx):]
    if f.exception is not None:
        c.Exception = _exception_container(f.exception, f.is64)
    if runs is None and f.physical_memory_runs is not None:
        runs = list(f.physical_memory_runs)
    if runs is not None:
        block = _descriptor(runs, f.is64)
        c.PhysicalMemoryBlock = block + bytes(c.PhysicalMemoryBlock)[len(block):PHYSICAL_MEMORY_BLOCK_SIZE]
    try:
        out = bytearray(layout.build(c))
    except construct.ConstructError as exc:
        raise DumpWriteError(f"cannot encode the dump header: {_one_line(exc)}") from None
    for offset, length in _padding_ranges(layout):  # Windows leaves padding with the fill
        out[offset : offset + length] = fill[offset : offset + length]
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Pages


def _check_runs(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    end = -1
    for first, count in runs:
        first, count = int(first), int(count)
        if first < 0 or count < 0:
            raise DumpWriteError(f"negative PFN run ({first:#x}, {count:#x})")
        if count == 0:
            continue
        if first < end:
            raise DumpWriteError(f"page runs are not in increasing PFN order at PFN {first:#x}")
        if out and first == end:  # merge adjacent runs
            out[-1] = (out[-1][0], out[-1][1] + count)
        else:
            out.append((first, count))
        end = first + count
    return out


class MappingPages:
    """A {pfn: bytes} mapping as a PageSource."""

    def __init__(self, mapping: Mapping[int, bytes]) -> None:
        self._mapping = mapping
        self._runs = _check_runs((pfn, 1) for pfn in sorted(mapping))

    def present_runs(self) -> list[tuple[int, int]]:
        return self._runs

    def page(self, pfn: int) -> bytes:
        return self._mapping[pfn]


class _SpooledPages:
    """(pfn, bytes) pairs copied once to an anonymous temporary file, then read back by PFN."""

    def __init__(self, pairs: Iterable[tuple[int, bytes]], directory: str) -> None:
        self._file = tempfile.TemporaryFile(dir=directory)
        try:
            self._spool(pairs)
        except BaseException:
            self._file.close()
            raise

    def _spool(self, pairs: Iterable[tuple[int, bytes]]) -> None:
        runs: list[list[int]] = []  # [first, count, spool offset]
        offset = 0
        last = -1
        for pfn, data in pairs:
            pfn = int(pfn)
            if pfn <= last:
                raise DumpWriteError(f"pages must come in increasing PFN order (PFN {pfn:#x} after {last:#x})")
            self._file.write(_check_page(pfn, data))
            if runs and runs[-1][0] + runs[-1][1] == pfn:
                runs[-1][1] += 1
            else:
                runs.append([pfn, 1, offset])
            offset += PAGE_SIZE
            last = pfn
        self._runs = [(r[0], r[1]) for r in runs]
        self._firsts = [r[0] for r in runs]
        self._offsets = [r[2] for r in runs]

    def present_runs(self) -> list[tuple[int, int]]:
        return self._runs

    def page(self, pfn: int) -> bytes:
        i = bisect.bisect_right(self._firsts, pfn) - 1
        self._file.seek(self._offsets[i] + (pfn - self._firsts[i]) * PAGE_SIZE)
        return self._file.read(PAGE_SIZE)

    def close(self) -> None:
        self._file.close()


def _check_page(pfn: int, data: bytes | memoryview) -> bytes | memoryview:
    if len(data) != PAGE_SIZE:
        raise DumpWriteError(f"page {pfn:#x} is {len(data)} bytes, a page is {PAGE_SIZE}")
    return data


@contextmanager
def _page_source(pages: Pages, directory: str) -> Iterator[PageSource]:
    """`pages` as a PageSource (a spool file for plain iterables, removed afterwards)."""
    if hasattr(pages, "present_runs") and hasattr(pages, "page"):
        yield cast(PageSource, pages)  # mypy does not narrow a union by hasattr
    elif isinstance(pages, Mapping):
        yield MappingPages(pages)
    else:
        spool = _SpooledPages(pages, directory)
        try:
            yield spool
        finally:
            spool.close()


_ZERO_PAGE = bytes(PAGE_SIZE)
def _write_pages(f: BinaryIO, source: PageSource, runs: Sequence[tuple[int, int]] | None) -> None:
    """Write the pages of `runs` (None: every page of a FileSource) in order. All-zero pages
    become holes: a machine with many GiB of zeroed memory gives a sparse file (the bytes read
    back the same)."""
    fast = file_source(source)
    if fast is not None:
        copy_extents(f, fast.fileno(), fast.file_extents(runs))
        return
    assert runs is not None  # only a FileSource lists its pages itself
    page = source.page
    hole = False
    for first, count in runs:
        for pfn in range(first, first + count):
            try:
                data = page(pfn)
            except (KeyError, MemoryNotPresent):
                raise DumpWriteError(f"page {pfn:#x} is listed but its bytes are not available") from None
            # bytes(): a memoryview (a page of an opened dump) compares with == element by
            # element (4.5 us for a zero page); as bytes it is one memcmp.
            if bytes(_check_page(pfn, data)) == _ZERO_PAGE:
                f.seek(PAGE_SIZE, os.SEEK_CUR)
                hole = True
            else:
                f.write(data)
                hole = False
    if hole:
        f.truncate(f.tell())  # a trailing hole still counts in the file's length


# ---------------------------------------------------------------------------------------------
# Secondary data (DUMP_BLOB stream, formats.md §7)


def _tag_bytes(tag: BlobTag) -> bytes:
    if isinstance(tag, uuid.UUID):
        return tag.bytes_le
    if isinstance(tag, str):
        return uuid.UUID(tag).bytes_le
    tag = bytes(tag)
    if len(tag) != 16:
        raise DumpWriteError(f"a blob tag is a 16-byte GUID, got {len(tag)} bytes")
    return tag


def _post_pad(size: int) -> int:
    return -size % 8


def blobs_size(blobs: Sequence[tuple[BlobTag, bytes]]) -> int:
    """Bytes write_blobs() will write for these blobs (0 when there are none)."""
    if not blobs:
        return 0
    head, each = DUMP_BLOB_FILE_HEADER.sizeof(), DUMP_BLOB_HEADER.sizeof()
    return head + sum(each + len(data) + _post_pad(len(data)) for _, data in blobs)


def write_blobs(f: BinaryIO, blobs: Sequence[tuple[BlobTag, bytes]], build: int) -> int:
    """Append a DUMP_BLOB_FILE_HEADER and one DUMP_BLOB_HEADER + data per (tag, bytes).

    Tags are uuid.UUID, GUID strings or 16 raw bytes. Data is padded to 8 bytes (PostPad), so
    every blob header stays 8-byte aligned relative to the stream start. Returns bytes written."""
    if not blobs:
        return 0
    f.write(DUMP_BLOB_FILE_HEADER.build(dict(HeaderSize=DUMP_BLOB_FILE_HEADER.sizeof(),
                                             BuildNumber=0xF0000000 | (build & 0xFFFF))))
    for tag, data in blobs:
        data = bytes(data)
        pad = _post_pad(len(data))
        f.write(DUMP_BLOB_HEADER.build(dict(HeaderSize=DUMP_BLOB_HEADER.sizeof(), Tag=_tag_bytes(tag),
                                            DataSize=len(data), PrePad=0, PostPad=pad)))
        f.write(data)
        f.write(bytes(pad))
    return blobs_size(blobs)


# ---------------------------------------------------------------------------------------------
# Atomic output


def _one_line(exc: BaseException) -> str:
    text = (getattr(exc, "strerror", None) if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
    return " ".join(text.split())


@contextmanager
def _output(path: str | os.PathLike[str], overwrite: bool) -> Iterator[tuple[BinaryIO, str]]:
    """A buffered file in the target directory; moved to `path` only if the block completes."""
    path = os.fspath(path)
    if not overwrite and os.path.lexists(path):
        raise DumpWriteError(f"{path} already exists (not overwritten)")
    # A device, FIFO or directory is never replaced by a regular file (kdshell.outpath).
    previous = check_output(path, (), "cannot write dump")
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=directory)
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            yield f, directory
            f.flush()
            finish_mode(f.fileno(), previous)
            os.fsync(f.fileno())
        if overwrite:
            check_output(path, (), "cannot write dump")  # it may have changed while the pages were written
        _commit(tmp, path, overwrite)
        tmp = None
    except KdError:
        raise
    except Exception as exc:
        raise DumpWriteError(f"cannot write dump {path}: {_one_line(exc)}") from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _commit(tmp: str, path: str, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:  # link() refuses to replace an existing file: no window for clobbering a new file
        os.link(tmp, path)
    except FileExistsError:
        raise DumpWriteError(f"{path} already exists (not overwritten)") from None
    except OSError:  # file system without hard links
        if os.path.lexists(path):
            raise DumpWriteError(f"{path} already exists (not overwritten)") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _header_size(fields: DumpHeaderFields) -> int:
    return DUMP_HEADER64.sizeof() if fields.is64 else DUMP_HEADER32.sizeof()


def _align(value: int, to: int) -> int:
    return -(-value // to) * to


# ---------------------------------------------------------------------------------------------
# DumpType 1


def write_full(path: str | os.PathLike[str], fields: DumpHeaderFields, pages: Pages, *,
               runs: Sequence[tuple[int, int]] | None = None, blobs: Sequence[tuple[BlobTag, bytes]] = (),
               overwrite: bool = False) -> int:
    """A complete memory dump with a run list (DumpType 1); pages follow the header in run order.

    `runs` gives the run list in file order (any order, e.g. unsorted); it must describe exactly
    the pages given. At most 42 runs fit a 64-bit header, 86 a 32-bit one. Returns the file size.
    """
    blobs = list(blobs)
    with _output(path, overwrite) as (f, directory), _page_source(pages, directory) as source:
        present = _check_runs(source.present_runs())
        order = present if runs is None else [(int(b), int(c)) for b, c in runs if c]
        if runs is not None and _check_runs(sorted(order)) != present:
            raise DumpWriteError("the run list does not describe exactly the pages given")
        total = sum(c for _, c in order)
        size = _header_size(fields) + total * PAGE_SIZE + blobs_size(blobs)
        f.write(build_header(fields, DUMP_TYPE_FULL, runs=order, required_dump_space=size))
        _write_pages(f, source, None if runs is None and file_source(source) else order)
        write_blobs(f, blobs, fields.build)
    return size


# ---------------------------------------------------------------------------------------------
# DumpType 5 / 6


_ONES = memoryview(b"\xff" * _BITMAP_CHUNK)


def _set_bits(buf: bytearray, lo: int, hi: int) -> None:
    """Set bits [lo, hi) of buf (bit n = byte n//8, bit n%8, LSB first): the edge bytes with
    masks, the bytes between in one slice."""
    a, b = lo >> 3, hi >> 3
    if a == b:
        buf[a] |= ((1 << (hi - lo)) - 1) << (lo & 7)
        return
    if lo & 7:
        buf[a] |= (0xFF << (lo & 7)) & 0xFF
        a += 1
    if b > a:
        buf[a:b] = _ONES[: b - a]
    if hi & 7:
        buf[b] |= (1 << (hi & 7)) - 1


def _bitmap_chunks(runs: list[tuple[int, int]], nbytes: int) -> Iterator[bytes]:
    """The bitmap for `runs`, produced _BITMAP_CHUNK bytes at a time."""
    i = 0
    for start in range(0, nbytes, _BITMAP_CHUNK):
        buf = bytearray(min(_BITMAP_CHUNK, nbytes - start))
        lo, hi = start * 8, (start + len(buf)) * 8
        while i < len(runs):
            first, count = runs[i]
            end = first + count
            if first >= hi:
                break
            a, b = max(first, lo), min(end, hi)
            if a < b:
                _set_bits(buf, a - lo, b - lo)
            if end > hi:
                break
            i += 1
        yield bytes(buf)


def write_bitmap(path: str | os.PathLike[str], fields: DumpHeaderFields, pages: Pages,
                 kind: int = DUMP_TYPE_BITMAP_KERNEL, *, bit_count: int | None = None, dump_options: int = 0,
                 blobs: Sequence[tuple[BlobTag, bytes]] = (), overwrite: bool = False) -> int:
    """A bitmap dump: kind 6 ('SDMP', kernel) or 5 ('FDMP', complete).

    `bit_count` (the header's Pages: PFNs described) defaults to the highest PFN + 1 rounded up
    to a multiple of 64: kdmp-parser and rizin read only Pages // 8 bitmap bytes and would lose
    PFNs in a last partial byte, LeechCore reads the bitmap as 64-bit words. An explicit
    bit_count may be anything that covers the highest PFN (the readers' rounding is theirs).
    FirstPage is page aligned after the bitmap. Returns the file size."""
    blobs = list(blobs)
    if kind not in (DUMP_TYPE_BITMAP_FULL, DUMP_TYPE_BITMAP_KERNEL):
        raise DumpWriteError(f"a bitmap dump is DumpType 5 or 6, not {kind}")
    with _output(path, overwrite) as (f, directory), _page_source(pages, directory) as source:
        fast = file_source(source)
        bitmap = fast.present_bitmap() if fast is not None else None
        runs: list[tuple[int, int]] | None = None
        if bitmap is not None:  # a bitmap source: its bitmap as it is, no run list
            value = int.from_bytes(bitmap, "little")
            highest, present = value.bit_length(), value.bit_count()
            del value
        else:
            runs = _check_runs(source.present_runs())
            highest = runs[-1][0] + runs[-1][1] if runs else 0
            present = sum(c for _, c in runs)
        bits = _align(highest, 64) if bit_count is None else bit_count
        if bits < highest:
            raise DumpWriteError(f"bit_count {bits:#x} leaves out PFN {highest - 1:#x}")
        nbytes = (bits + 7) // 8
        base = _header_size(fields)
        first_page = _align(base + BITMAP_OFFSET + nbytes, PAGE_SIZE)
        size = first_page + present * PAGE_SIZE + blobs_size(blobs)
        f.write(build_header(fields, kind, required_dump_space=size))
        f.write(BITMAP_DUMP_HEADER64.build(dict(
            Signature=BITMAP_SIGNATURE_FULL if kind == DUMP_TYPE_BITMAP_FULL else BITMAP_SIGNATURE_KERNEL,
            DumpOptions=dump_options, Reserved=bytes(20), FirstPage=first_page, TotalPresentPages=present,
            Pages=bits)))
        if bitmap is not None:
            f.write(bitmap[:nbytes])  # nothing is set past `highest` <= bits
            f.write(bytes(max(0, nbytes - len(bitmap))))
        else:
            assert runs is not None
            for chunk in _bitmap_chunks(runs, nbytes):
                f.write(chunk)
        f.write(bytes(first_page - (base + BITMAP_OFFSET + nbytes)))
        _write_pages(f, source, None if fast is not None else runs)
        write_blobs(f, blobs, fields.build)
    return size


# ---------------------------------------------------------------------------------------------
# DumpType 8 / 9 / 10


def write_rdmp(path: str | os.PathLike[str], fields: DumpHeaderFields, pages: Pages,
               dump_type: int = DUMP_TYPE_RDMP_KERNEL, *, blobs: Sequence[tuple[BlobTag, bytes]] = (),
               overwrite: bool = False) -> int:
    """A range-list dump as current WinDbg writes them: 8 (kernel), 9 (kernel + user), 10 (complete).

    Layout: RDMP header at 0x2000, ranges {PFN, count} from 0x2030 ended by an all-zero entry,
    page data from FirstPageOffset (page aligned), MetadataSize = FirstPageOffset - 0x2020 (the
    relation kdmp-parser checks). Type 10 also records NumberOfRanges and TotalNumberOfPages.

    PFN 0 cannot be stored: readers end the range list at a range whose PFN is 0 (formats.md
    §5.3; kdmp-parser 0.7.4 does it for type 10 too -- a type 10 file whose first range starts at
    PFN 0 reads as empty there), so the writer refuses it. Real machines do not give PFN 0 to
    Windows' memory runs, so dumps of them never need it. Returns the file size."""
    blobs = list(blobs)
    if dump_type not in (DUMP_TYPE_RDMP_KERNEL, DUMP_TYPE_RDMP_KERNEL_USER, DUMP_TYPE_RDMP_COMPLETE):
        raise DumpWriteError(f"a range-list (RDMP) dump is DumpType 8, 9 or 10, not {dump_type}")
    if not fields.is64:
        raise DumpWriteError("range-list (RDMP) dumps exist only for 64-bit targets")
    with _output(path, overwrite) as (f, directory), _page_source(pages, directory) as source:
        runs = _check_runs(source.present_runs())
        if runs and runs[0][0] == 0:
            raise DumpWriteError(
                "a range-list (RDMP) dump cannot store PFN 0 (readers take a range at PFN 0 as the end of "
                "the list): leave PFN 0 out or write a bitmap dump"
            )
        base = _header_size(fields)
        list_start = base + RDMP_RANGES_OFFSET
        first_page = _align(list_start + RDMP_RANGE.sizeof() * (len(runs) + 1), PAGE_SIZE)
        present = sum(c for _, c in runs)
        size = first_page + present * PAGE_SIZE + blobs_size(blobs)
        hdr = dict(Marker=RDMP_MARKER, Unused=0, MetadataSize=first_page - (base + 0x20), FirstPageOffset=first_page)
        if dump_type == DUMP_TYPE_RDMP_COMPLETE:
            head = FULL_RDMP_HEADER64.build(dict(Hdr=hdr, NumberOfRanges=len(runs), Reserved1=0, Reserved2=0,
                                                 TotalNumberOfPages=present))
        else:
            head = KERNEL_RDMP_HEADER64.build(dict(Hdr=hdr, Unknown1=0, Unknown2=0))
        f.write(build_header(fields, dump_type, required_dump_space=size))
        f.write(head)
        for first, count in runs:
            f.write(RDMP_RANGE.build(dict(PageFrameNumber=first, NumberOfPages=count)))
        f.write(bytes(first_page - (list_start + RDMP_RANGE.sizeof() * len(runs))))  # terminator + padding
        _write_pages(f, source, None if file_source(source) else runs)
        write_blobs(f, blobs, fields.build)
    return size


__all__ = [
    "DumpHeaderFields", "DumpWriteError", "MappingPages", "PageSource", "blobs_size", "build_header",
    "make_context_amd64", "make_context_x86", "make_exception", "write_bitmap", "write_blobs", "write_full",
    "write_rdmp",
]
