"""A reader for Microsoft PDB files (MSF 7.00): identity, symbols with an address index, and types.

Layout facts (stream numbers, record layouts, leaf values) are from public documentation of the
format (LLVM's "The PDB File Format" pages and the CodeView record definitions); the code is ours.

    MSF superblock -> stream directory -> streams, read lazily from one read-only mmap
    stream 1  PDB info: version, signature, age, GUID, named streams (/names, /LinkInfo, ...)
    stream 2  TPI: type records (LF_*), index 0x1000 upward; indices below are built-in types
              (decoded in codeview.py)
    stream 3  DBI: modules (each with a symbol stream), section contributions and map, and the
              optional debug header (section headers, OMAP) that turns segment:offset into RVAs
    stream 4  IPI: id records (LF_FUNC_ID, LF_STRING_ID, LF_BUILDINFO ...), counted, not used
    DBI.SymRecordStream  S_PUB32 (publics) and the globals (S_GDATA32, S_PROCREF, ...)

`PdbFile` is also a `TypeSource` (see types.py): `find("_EPROCESS")`, `names("_K*")`,
`offset_of("_EPROCESS", "ActiveProcessLinks")`; the type records are decoded by codeview.py's
`CodeViewTypes`, which PdbFile inherits.

Names: publics keep MSVC's decoration (`?Func@@YAXXZ`, `__imp_X`, x86 `_X@8`, `@X@8`). Each symbol
has `name` (raw) and `display`, which removes the x86 C decorations the way WinDbg shows them
(`_KeBugCheckEx@20` -> `KeBugCheckEx`); C++ names are left decorated: full undecoration is out of
scope.

Hostile files: every count and offset is checked against the bytes actually present, so a
truncated or corrupt PDB raises one-line `SymbolFileError`, never allocates by a claimed size, and
type chains are walked with depth limits (types.MAX_DEPTH) and cycle checks.
"""
from __future__ import annotations

import array
import bisect
import mmap
import os
import struct
import sys
import uuid
from typing import BinaryIO, Iterable, NamedTuple, NoReturn

from construct import Bytes, Int16ul, Int32sl, Int32ul, Struct

from kdshell.errors import SymbolFileError
from kdshell.symbols import types as T
from kdshell.symbols.codeview import CodeViewTypes, _cstr, _Records
from kdshell.symbols.pe import pdb_key

MSF7_MAGIC = b"Microsoft C/C++ MSF 7.00\r\n\x1aDS\x00\x00\x00"
PDB2_MAGIC = b"Microsoft C/C++ program database 2.00\r\n"
MSFZ_MAGIC = b"Microsoft MSFZ Container"

SUPERBLOCK = Struct(  # file offset 0
    "Magic" / Bytes(32),  # +0x00 MSF7_MAGIC
    "BlockSize" / Int32ul,  # +0x20 512..32768, a power of two
    "FreeBlockMapBlock" / Int32ul,  # +0x24 1 or 2
    "NumBlocks" / Int32ul,  # +0x28 file size / BlockSize
    "NumDirectoryBytes" / Int32ul,  # +0x2c size of the stream directory
    "Unknown" / Int32ul,  # +0x30
    "BlockMapAddr" / Int32ul,  # +0x34 block holding the directory's block list
)
BLOCK_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768)

# Fixed stream numbers
STREAM_PDB, STREAM_TPI, STREAM_DBI, STREAM_IPI = 1, 2, 3, 4
NIL_STREAM = 0xFFFF

PDB_INFO_HEADER = Struct(  # stream 1
    "Version" / Int32ul,  # +0x00 20000404 = VC70
    "Signature" / Int32ul,  # +0x04 time stamp
    "Age" / Int32ul,  # +0x08
)
PDB_VC70 = 20000404

DBI_HEADER = Struct(  # stream 3, 64 bytes
    "VersionSignature" / Int32sl,  # +0x00 -1
    "VersionHeader" / Int32ul,  # +0x04 19990903 = V70
    "Age" / Int32ul,  # +0x08 matches the image's RSDS age
    "GlobalStreamIndex" / Int16ul,  # +0x0c
    "BuildNumber" / Int16ul,  # +0x0e
    "PublicStreamIndex" / Int16ul,  # +0x10
    "PdbDllVersion" / Int16ul,  # +0x12
    "SymRecordStream" / Int16ul,  # +0x14
    "PdbDllRbld" / Int16ul,  # +0x16
    "ModInfoSize" / Int32sl,  # +0x18
    "SectionContributionSize" / Int32sl,  # +0x1c
    "SectionMapSize" / Int32sl,  # +0x20
    "SourceInfoSize" / Int32sl,  # +0x24
    "TypeServerMapSize" / Int32sl,  # +0x28
    "MFCTypeServerIndex" / Int32ul,  # +0x2c
    "OptionalDbgHeaderSize" / Int32sl,  # +0x30
    "ECSubstreamSize" / Int32sl,  # +0x34
    "Flags" / Int16ul,  # +0x38
    "Machine" / Int16ul,  # +0x3a IMAGE_FILE_MACHINE_*
    "Padding" / Int32ul,  # +0x3c
)
DBI_HEADER_SIZE = 64
MOD_INFO_FIXED = 64  # ModInfo: +0x22 ModuleSymStream u16, +0x24 SymByteSize u32, +0x40 names
SC_V60, SC_V2 = 0xEFFE0000 + 19970605, 0xEFFE0000 + 20140516  # section contribution versions
# Optional debug header: u16 stream numbers by position
DBG_OMAP_TO_SRC, DBG_OMAP_FROM_SRC, DBG_SECTION_HDR, DBG_SECTION_HDR_ORIG = 3, 4, 5, 10

SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")  # IMAGE_SECTION_HEADER, 40 bytes
MACHINE_I386, MACHINE_AMD64, MACHINE_ARM64 = 0x14C, 0x8664, 0xAA64

# Symbol record kinds (CodeView S_*)
S_END, S_THUNK32, S_LABEL32, S_LDATA32, S_GDATA32, S_PUB32 = 0x6, 0x1102, 0x1105, 0x110C, 0x110D, 0x110E
S_LPROC32, S_GPROC32, S_LTHREAD32, S_GTHREAD32 = 0x110F, 0x1110, 0x1112, 0x1113
S_LPROC32_ID, S_GPROC32_ID, S_LPROC32_DPC, S_LPROC32_DPC_ID = 0x1146, 0x1147, 0x1155, 0x1156
PROC_KINDS = frozenset((S_LPROC32, S_GPROC32, S_LPROC32_ID, S_GPROC32_ID, S_LPROC32_DPC,
                        S_LPROC32_DPC_ID))
DATA_KINDS = frozenset((S_LDATA32, S_GDATA32, S_LTHREAD32, S_GTHREAD32))
CV_SIGNATURE_C13 = 4

# Symbol kinds and their preference when several share an address (functions first).
FUNCTION, DATA, LABEL, PUBLIC = "function", "data", "label", "public"
_PRIORITY = {FUNCTION: 0, DATA: 1, LABEL: 2, PUBLIC: 3}


class Symbol(NamedTuple):
    name: str  # as the PDB spells it (may be decorated)
    rva: int
    kind: str  # function / data / label / public
    size: int | None  # code length of functions and thunks; None when unknown
    display: str  # WinDbg's spelling (x86 C decorations removed)
    type_index: int = 0  # data: the TPI type; functions: their procedure type
    module: int = -1  # index in PdbFile.modules; -1 for publics and globals
    flags: int = 0  # S_PUB32 flags: 1 code, 2 function, 4 managed, 8 MSIL


class Module(NamedTuple):
    name: str
    object_name: str
    stream: int  # symbol stream, 0xFFFF when none
    symbols_size: int
    c11_size: int
    c13_size: int
    section: int  # first section contribution
    offset: int
    size: int


class SectionHeader(NamedTuple):
    name: str
    virtual_size: int
    virtual_address: int
    raw_size: int
    characteristics: int


class SectionContribution(NamedTuple):
    section: int
    offset: int
    size: int
    characteristics: int
    module: int


def undecorate(name: str, machine: int) -> str:
    """WinDbg's display of a C symbol: x86 `_Name`, `_Name@8`, `@Name@8` -> `Name` (and
    `__imp__Name@8` -> `__imp_Name`). x64/ARM64 C names are not decorated; C++ (`?...`) names
    are returned unchanged."""
    if machine != MACHINE_I386 or not name or name[0] == "?":
        return name
    prefix = ""
    if name.startswith("__imp_"):
        prefix, name = "__imp_", name[6:]
    if name[:1] in ("_", "@"):
        core = name[1:]
        at = core.rfind("@")
        if at > 0 and core[at + 1:].isdigit():
            core = core[:at]
        elif name[0] == "@":
            return prefix + name
        return prefix + core
    return prefix + name


# --------------------------------------------------------------------------------------------
# MSF container


class Msf:
    """The MSF 7.00 container: superblock, stream directory, streams assembled from blocks."""

    def __init__(self, data: bytes | mmap.mmap, path: str | None = None) -> None:
        self.data = data
        self.path = path
        size = len(data)
        if size < SUPERBLOCK.sizeof():
            self._fail(f"file is {size} bytes, too small for a PDB")
        head = bytes(data[:64])
        if head.startswith(PDB2_MAGIC):
            self._fail("old PDB 2.00 format (Visual C++ 6 and earlier) is not supported")
        if head.startswith(MSFZ_MAGIC):
            self._fail("compressed MSF-Z PDB is not supported (fetch the plain .pdb)")
        if not head.startswith(MSF7_MAGIC):
            self._fail("not a PDB file (no 'Microsoft C/C++ MSF 7.00' signature)")
        sb = SUPERBLOCK.parse(head)
        bs = sb.BlockSize
        if bs not in BLOCK_SIZES:
            self._fail(f"bad block size {bs} in the MSF superblock")
        if sb.NumBlocks == 0 or sb.NumBlocks * bs > size:
            self._fail(f"file is truncated: the superblock claims {sb.NumBlocks} blocks of {bs} "
                       f"bytes ({sb.NumBlocks * bs} bytes) but the file has {size}")
        if not 8 <= sb.NumDirectoryBytes <= size:
            self._fail(f"bad stream directory size {sb.NumDirectoryBytes}")
        self.block_size, self.num_blocks = bs, sb.NumBlocks
        ndir = -(-sb.NumDirectoryBytes // bs)
        map_off = sb.BlockMapAddr * bs
        if sb.BlockMapAddr >= sb.NumBlocks or map_off + 4 * ndir > size:
            self._fail(f"stream directory block map at block {sb.BlockMapAddr} is outside the file")
        dir_blocks = struct.unpack_from(f"<{ndir}I", data, map_off)
        directory = self._assemble(dir_blocks, sb.NumDirectoryBytes, "stream directory")
        (count,) = struct.unpack_from("<I", directory, 0)
        if count > (len(directory) - 4) // 4:
            self._fail(f"stream directory claims {count} streams, more than it can hold")
        sizes = struct.unpack_from(f"<{count}I", directory, 4)
        pos = 4 + 4 * count
        self.stream_sizes: list[int] = []
        self.stream_blocks: list[tuple[int, ...]] = []
        for i, ssize in enumerate(sizes):
            if ssize == 0xFFFFFFFF:  # deleted ("nil") stream
                ssize = 0
            n = -(-ssize // bs)
            if n > sb.NumBlocks or pos + 4 * n > len(directory):
                self._fail(f"stream {i} claims {ssize} bytes, more than the file holds")
            blocks = struct.unpack_from(f"<{n}I", directory, pos)
            pos += 4 * n
            self.stream_sizes.append(ssize)
            self.stream_blocks.append(blocks)
        self._cache: dict[int, bytes] = {}

    def _fail(self, message: str) -> NoReturn:
        raise SymbolFileError(message, self.path)

    def _assemble(self, blocks: Iterable[int], size: int, what: str) -> bytes:
        bs, data = self.block_size, self.data
        parts: list[bytes] = []
        run_start: int | None = None
        run_len = 0
        for b in blocks:
            if b >= self.num_blocks or b == 0:
                self._fail(f"{what} uses block {b}, outside the file's {self.num_blocks} blocks")
            if run_start is not None and b == run_start + run_len:
                run_len += 1
                continue
            if run_start is not None:
                parts.append(data[run_start * bs:(run_start + run_len) * bs])
            run_start, run_len = b, 1
        if run_start is not None:
            parts.append(data[run_start * bs:(run_start + run_len) * bs])
        out = b"".join(bytes(p) for p in parts) if len(parts) != 1 else bytes(parts[0])
        return out[:size]

    @property
    def num_streams(self) -> int:
        return len(self.stream_sizes)

    def has_stream(self, index: int) -> bool:
        return 0 <= index < len(self.stream_sizes) and index != NIL_STREAM

    def stream(self, index: int, cache: bool = True) -> bytes:
        """The bytes of stream `index` (b"" for a missing or nil stream)."""
        if not self.has_stream(index):
            return b""
        got = self._cache.get(index)
        if got is None:
            got = self._assemble(self.stream_blocks[index], self.stream_sizes[index],
                                 f"stream {index}")
            if cache:
                self._cache[index] = got
        return got


# --------------------------------------------------------------------------------------------
# The PDB


class PdbFile(CodeViewTypes, T.TypeLookup):
    """One PDB: `PdbFile(path)` or `PdbFile(data=bytes)`. Close it (or use `with`) to unmap."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 data: bytes | mmap.mmap | None = None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self._file: BinaryIO | None = None
        self._mm: mmap.mmap | None = None
        self.warnings: list[str] = []
        label = os.path.basename(self.path) if self.path else None
        if data is None:
            if self.path is None:
                raise ValueError("PdbFile needs a path or data")
            try:
                self._file = open(self.path, "rb")
                self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:  # mmap of an empty file
                self.close()
                raise SymbolFileError("file is empty", label) from None
            except OSError as exc:
                self.close()
                raise SymbolFileError(f"cannot open: {exc.strerror or exc}", label) from None
            if hasattr(self._mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
                self._mm.madvise(mmap.MADV_RANDOM)
            data = self._mm
        self._label = label
        try:
            self.msf = Msf(data, label)
            self._read_info()
            self._read_dbi()
        except SymbolFileError:
            self.close()
            raise
        except (struct.error, IndexError, ValueError) as exc:
            self.close()
            raise SymbolFileError(f"corrupt PDB ({exc})", label) from None
        self._index: _AddressIndex | None = None
        self._tpi: _Records | None = None
        self._ipi: _Records | None = None
        self._types: dict[int, T.Type] = {}
        self._building: set[int] = set()
        self._udt_names: dict[str, int] | None = None
        self._udt_unique: dict[str, int] = {}
        self._udt_lower: dict[str, int] = {}
        self._declared_only: set[str] = set()

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a view is still alive; the mapping goes with it
                pass
            self._mm = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> PdbFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, message: str) -> NoReturn:
        raise SymbolFileError(message, self._label)

    # ---- identity ----------------------------------------------------------------------
    def _read_info(self) -> None:
        s = self.msf.stream(STREAM_PDB)
        if len(s) < 12:
            self._fail("PDB info stream (1) is missing or truncated")
        h = PDB_INFO_HEADER.parse(s[:12])
        self.version, self.signature, self.info_age = h.Version, h.Signature, h.Age
        pos = 12
        self.guid: uuid.UUID | None = None
        if self.version >= PDB_VC70:
            if len(s) < 28:
                self._fail("PDB info stream (1) is truncated before the GUID")
            self.guid = uuid.UUID(bytes_le=bytes(s[12:28]))
            pos = 28
        self.named_streams: dict[str, int] = {}
        try:
            self._read_named_streams(s, pos)
        except (struct.error, SymbolFileError) as exc:
            self.warnings.append(f"named stream map unreadable: {exc}")

    def _read_named_streams(self, s: bytes, pos: int) -> None:
        (strlen,) = struct.unpack_from("<I", s, pos)
        strings_at = pos + 4
        if strings_at + strlen > len(s):
            raise SymbolFileError("named stream strings run past the stream")
        pos = strings_at + strlen
        size, capacity = struct.unpack_from("<II", s, pos)
        pos += 8
        (nwords,) = struct.unpack_from("<I", s, pos)
        if nwords > (len(s) - pos) // 4 or size > capacity or capacity > 32 * nwords + 32:
            raise SymbolFileError("named stream hash table is corrupt")
        words = struct.unpack_from(f"<{nwords}I", s, pos + 4)
        pos += 4 + 4 * nwords
        (ndel,) = struct.unpack_from("<I", s, pos)
        if ndel > (len(s) - pos) // 4:
            raise SymbolFileError("named stream deleted-bucket list is corrupt")
        pos += 4 + 4 * ndel
        present = sum(bin(w).count("1") for w in words)
        for _ in range(min(present, size)):
            key, value = struct.unpack_from("<II", s, pos)
            pos += 8
            if key < strlen:
                name, _ = _cstr(s, strings_at + key, strings_at + strlen)
                self.named_streams[name] = value

    @property
    def age(self) -> int:
        """The age that matches the image's RSDS record and the symbol store key: the DBI
        stream's. Microsoft's public PDBs are made by stripping a private one, which bumps the
        info stream's age but not the DBI's: amdppm.pdb has info age 3, DBI age 1, store key
        ...F31 (test_amdppm_identity_matches_its_store_key)."""
        return self.dbi_age if self.dbi_age else self.info_age

    @property
    def key(self) -> str:
        return pdb_key(self.guid, self.signature, self.age)

    @property
    def pointer_size(self) -> int:
        return 4 if self.machine == MACHINE_I386 else 8

    # ---- DBI -----------------------------------------------------------------------------
    def _read_dbi(self) -> None:
        s = self.msf.stream(STREAM_DBI)
        self.modules: list[Module] = []
        self.sections: list[SectionHeader] = []
        self.dbi_age, self.machine = 0, MACHINE_AMD64
        self.sym_record_stream = self.publics_stream = self.globals_stream = NIL_STREAM
        self._omap_from: tuple[array.array, array.array] | None = None
        self._orig_sections: list[SectionHeader] = []  # with _omap_from
        self._sc_bytes = self._sm_bytes = b""
        self._contributions: list[SectionContribution] | None = None
        self.section_map: list[tuple[int, int, int, int]] = []
        self.debug_streams: list[int] = []
        if not s:
            self.warnings.append("no DBI stream: no symbols")
            return
        if len(s) < DBI_HEADER_SIZE:
            self._fail(f"DBI stream (3) is truncated ({len(s)} bytes)")
        h = DBI_HEADER.parse(s[:DBI_HEADER_SIZE])
        if h.VersionSignature != -1:
            self._fail("old DBI stream format (before Visual C++ 4.1) is not supported")
        parts = (h.ModInfoSize, h.SectionContributionSize, h.SectionMapSize, h.SourceInfoSize,
                 h.TypeServerMapSize, h.ECSubstreamSize, h.OptionalDbgHeaderSize)
        if min(parts) < 0 or DBI_HEADER_SIZE + sum(parts) > len(s):
            self._fail(f"DBI substream sizes {parts} run past the {len(s)}-byte stream")
        self.dbi_age, self.machine = h.Age, h.Machine or MACHINE_AMD64
        self.dbi_build = h.BuildNumber
        self.sym_record_stream = h.SymRecordStream
        self.publics_stream, self.globals_stream = h.PublicStreamIndex, h.GlobalStreamIndex
        pos = DBI_HEADER_SIZE
        self._read_modules(s, pos, pos + h.ModInfoSize)
        pos += h.ModInfoSize
        self._sc_bytes = s[pos:pos + h.SectionContributionSize]
        pos += h.SectionContributionSize
        self._sm_bytes = s[pos:pos + h.SectionMapSize]
        pos += h.SectionMapSize + h.SourceInfoSize + h.TypeServerMapSize + h.ECSubstreamSize
        n = h.OptionalDbgHeaderSize // 2
        self.debug_streams = list(struct.unpack_from(f"<{n}H", s, pos))
        self._read_section_map()
        self._read_sections()

    def _read_modules(self, s: bytes, pos: int, end: int) -> None:
        unpack = struct.Struct("<HiiIH").unpack_from
        while pos + MOD_INFO_FIXED <= end:
            sect, off, size, chars, _ = unpack(s, pos + 4)
            stream, symsize, c11, c13 = struct.unpack_from("<HIII", s, pos + 34)
            name, p = _cstr(s, pos + MOD_INFO_FIXED, end)
            obj, p = _cstr(s, p, end)
            self.modules.append(Module(name, obj, stream, symsize, c11, c13, sect, off, size))
            pos = (p + 3) & ~3

    def _read_section_map(self) -> None:
        s = self._sm_bytes
        if len(s) < 4:
            return
        count, _ = struct.unpack_from("<HH", s, 0)
        count = min(count, (len(s) - 4) // 20)
        for i in range(count):
            flags, ovl, group, frame, name, cls, off, length = struct.unpack_from(
                "<HHHHHHII", s, 4 + 20 * i)
            self.section_map.append((frame, flags, off, length))

    def _debug_stream(self, which: int) -> int:
        if which < len(self.debug_streams):
            return self.debug_streams[which]
        return NIL_STREAM

    def _parse_sections(self, stream: int) -> list[SectionHeader]:
        s = self.msf.stream(stream, cache=False)
        out = []
        for i in range(len(s) // SECTION_HEADER.size):
            name, vsize, va, rawsize, *_, chars = SECTION_HEADER.unpack_from(
                s, i * SECTION_HEADER.size)
            out.append(SectionHeader(name.rstrip(b"\0").decode("latin-1"), vsize, va, rawsize,
                                     chars))
        return out

    def _read_sections(self) -> None:
        hdr = self._debug_stream(DBG_SECTION_HDR)
        if self.msf.has_stream(hdr):
            self.sections = self._parse_sections(hdr)
        else:
            self.warnings.append("no section headers in the PDB: symbols have no addresses")
        omap = self._debug_stream(DBG_OMAP_FROM_SRC)
        orig = self._debug_stream(DBG_SECTION_HDR_ORIG)
        if self.msf.has_stream(omap) and self.msf.has_stream(orig):
            # The image was rearranged after linking (BBT/OMAP, e.g. Windows 7 user32.dll):
            # symbols are in the original layout; map original RVAs through OMAP-from-source.
            # MessageBoxW: original section + offset -> 0x711e4 in the shipped image
            # (test_user32_identity_publics_and_omap, which `symbolic` agrees with).
            self._orig_sections = self._parse_sections(orig)
            raw = self.msf.stream(omap, cache=False)
            words = array.array("I")
            words.frombytes(raw[:len(raw) // 8 * 8])
            if sys.byteorder != "little":
                words.byteswap()
            self._omap_from = (words[0::2], words[1::2])

    @property
    def section_contributions(self) -> list[SectionContribution]:
        if self._contributions is None:
            out: list[SectionContribution] = []
            s = self._sc_bytes
            if len(s) >= 4:
                (ver,) = struct.unpack_from("<I", s, 0)
                step = 32 if ver == SC_V2 else 28
                for pos in range(4, len(s) - step + 1, step):
                    sect, off, size, chars, mod = struct.unpack_from("<HxxiiIH", s, pos)
                    out.append(SectionContribution(sect, off, size, chars, mod))
            self._contributions = out
        return self._contributions

    def rva_of(self, segment: int, offset: int) -> int | None:
        """segment:offset (1-based section) -> RVA in the image; None if it has no address."""
        if self._omap_from is not None:
            if not 0 < segment <= len(self._orig_sections):
                return None
            rva = self._orig_sections[segment - 1].virtual_address + offset
            froms, tos = self._omap_from
            i = bisect.bisect_right(froms, rva) - 1
            if i < 0 or tos[i] == 0:
                return None
            return tos[i] + (rva - froms[i])
        if not 0 < segment <= len(self.sections):
            return None
        return self.sections[segment - 1].virtual_address + offset

    def module_of(self, rva: int) -> Module | None:
        """The module (object file) whose section contribution holds `rva`."""
        for c in self.section_contributions:
            start = self.rva_of(c.section, c.offset)
            if start is not None and start <= rva < start + c.size and 0 <= c.module < len(self.modules):
                return self.modules[c.module]
        return None

    # ---- symbols -------------------------------------------------------------------------
    def _idx(self) -> "_AddressIndex":
        if self._index is None:
            found: list[Symbol] = []
            try:
                s = self.msf.stream(self.sym_record_stream, cache=False)
                self._walk(s, 0, len(s), -1, found, "symbol record stream")
                for mi, m in enumerate(self.modules):
                    if not self.msf.has_stream(m.stream):
                        continue
                    ms = self.msf.stream(m.stream, cache=False)
                    end = min(m.symbols_size, len(ms))
                    if end < 4:
                        continue
                    if struct.unpack_from("<I", ms, 0)[0] != CV_SIGNATURE_C13:
                        self.warnings.append(f"module {m.name}: symbols are not CodeView C13")
                        continue
                    self._walk(ms, 4, end, mi, found, f"module {m.name}")
            except (struct.error, IndexError) as exc:
                self._fail(f"corrupt symbol records ({exc})")
            self._index = _AddressIndex(found)
        return self._index

    def _walk(self, s: bytes, pos: int, end: int, module: int, out: list[Symbol], what: str) -> None:
        header = struct.Struct("<HH").unpack_from
        pub = struct.Struct("<IIH").unpack_from
        proc = struct.Struct("<IIH").unpack_from  # CodeSize .. Segment at +12 of the proc body
        thunk = struct.Struct("<IHH").unpack_from
        rva_of, machine, add = self.rva_of, self.machine, out.append
        while pos + 4 <= end:
            n, kind = header(s, pos)
            rec_end = pos + 2 + n
            if n < 2 or rec_end > end:
                self.warnings.append(f"{what}: record at {pos:#x} runs past the stream; "
                                     f"the rest is skipped")
                return
            p = pos + 4
            pos = rec_end
            if kind == S_PUB32:
                flags, off, seg = pub(s, p)
                name, _ = _cstr(s, p + 10, rec_end)
                kind_, size, ti = PUBLIC, None, 0
            elif kind in DATA_KINDS:
                ti, off, seg = pub(s, p)
                name, _ = _cstr(s, p + 10, rec_end)
                kind_, size, flags = DATA, None, 0
            elif kind in PROC_KINDS:
                # Parent, End, Next, CodeSize, DbgStart, DbgEnd, FunctionType, Offset, Segment
                (size,) = struct.unpack_from("<I", s, p + 12)
                ti, off, seg = proc(s, p + 24)
                name, _ = _cstr(s, p + 35, rec_end)
                kind_, flags = FUNCTION, 0
            elif kind == S_THUNK32:
                # Parent, End, Next, Offset, Segment, Length, Ordinal
                off, seg, size = thunk(s, p + 12)
                name, _ = _cstr(s, p + 21, rec_end)
                kind_, flags, ti = FUNCTION, 0, 0
            elif kind == S_LABEL32:
                off, seg = struct.unpack_from("<IH", s, p)
                name, _ = _cstr(s, p + 7, rec_end)
                kind_, size, flags, ti = LABEL, None, 0, 0
            else:
                continue
            rva = rva_of(seg, off)
            if rva is not None and name:
                add(Symbol(name, rva, kind_, size, undecorate(name, machine), ti, module, flags))

    @property
    def all_symbols(self) -> list[Symbol]:
        """Every addressed symbol (publics, globals, module functions/data/labels), one per
        address and name, sorted by RVA."""
        return self._idx().all

    @property
    def publics(self) -> list[Symbol]:
        """The S_PUB32 records, as read, in stream order. LLD's x86 PDBs hold some twice (the
        export and the function, same name and address): both are kept here, as llvm-pdbutil
        shows them (test_fixture_publics_match_pdbutil); the address index keeps one."""
        s = self.msf.stream(self.sym_record_stream, cache=False)
        out: list[Symbol] = []
        try:
            self._walk(s, 0, len(s), -1, out, "symbol record stream")
        except (struct.error, IndexError) as exc:
            self._fail(f"corrupt symbol records ({exc})")
        return [x for x in out if x.kind == PUBLIC]

    def lookup(self, rva: int) -> tuple[Symbol, int] | None:
        """The symbol at or before `rva` (functions preferred over data over publics at one
        address) and the displacement from it."""
        idx = self._idx()
        i = bisect.bisect_right(idx.rvas, rva) - 1
        if i < 0:
            return None
        sym = idx.syms[i]
        return sym, rva - sym.rva

    def symbol_at(self, rva: int) -> tuple[str, int] | None:
        """`symbol_at(0x334c)` -> ("WriteIoMemRawEx", 0x70): name and displacement, O(log n)."""
        hit = self.lookup(rva)
        return None if hit is None else (hit[0].display, hit[1])

    def neighbors(self, rva: int) -> tuple[Symbol | None, Symbol | None]:
        """(symbol at or before `rva`, next symbol after it), for `ln`."""
        idx = self._idx()
        i = bisect.bisect_right(idx.rvas, rva)
        return (idx.syms[i - 1] if i > 0 else None, idx.syms[i] if i < len(idx.syms) else None)

    def address_of(self, name: str) -> int | None:
        """RVA of `name` (display or raw name; case-sensitive exact, then case-insensitive)."""
        sym = self.symbol(name)
        return None if sym is None else sym.rva

    def symbol(self, name: str) -> Symbol | None:
        idx = self._idx()
        return idx.by_name.get(name) or idx.by_lower.get(name.lower())

    def symbols(self, pattern: str = "*") -> list[Symbol]:
        """Symbols whose display or raw name matches WinDbg wildcards (`*`, `?`; case-insensitive),
        for `x`; sorted by RVA."""
        rx = T.wildcard(pattern)
        return [s for s in self._idx().all if rx.fullmatch(s.display) or
                (s.name != s.display and rx.fullmatch(s.name))]

    def function_bounds(self, rva: int) -> tuple[int, int] | None:
        """(start, end) RVAs of the function (with a known length) containing `rva`."""
        idx = self._idx()
        i = bisect.bisect_right(idx.fstarts, rva) - 1
        if i >= 0 and rva < idx.fends[i]:
            return idx.fstarts[i], idx.fends[i]
        return None

    def symbol_type(self, sym: Symbol) -> T.Type | None:
        """The type of a data symbol (or the procedure type of a function), when the PDB has it."""
        if not sym.type_index:
            return None
        return self.type_by_index(sym.type_index)

    # ---- types (decoded by CodeViewTypes) ------------------------------------------------
    @property
    def tpi(self) -> _Records:
        """The TPI stream (read on first use)."""
        if self._tpi is None:
            self._tpi = _Records(self.msf.stream(STREAM_TPI), "TPI", self._label)
            if not self._tpi.data:
                self.warnings.append("no TPI stream: no types")
        return self._tpi

    @property
    def ipi(self) -> _Records:
        """The IPI stream: id records (LF_FUNC_ID, LF_STRING_ID, LF_BUILDINFO...), not decoded."""
        if self._ipi is None:
            self._ipi = _Records(self.msf.stream(STREAM_IPI, cache=False), "IPI", self._label)
        return self._ipi

    @property
    def type_count(self) -> int:
        return self.tpi.count


class _AddressIndex:
    """Sorted RVAs with the preferred symbol at each, name lookups, and function extents."""

    def __init__(self, found: list[Symbol]) -> None:
        best: dict[tuple[int, str], Symbol] = {}
        for s in found:
            k = (s.rva, s.display)
            cur = best.get(k)
            if cur is None or _PRIORITY[s.kind] < _PRIORITY[cur.kind] or (
                    s.kind == cur.kind and cur.size is None and s.size):
                best[k] = s
        self.all = sorted(best.values(), key=lambda s: (s.rva, _PRIORITY[s.kind], s.display))
        self.rvas: list[int] = []
        self.syms: list[Symbol] = []
        for s in self.all:
            if not self.rvas or self.rvas[-1] != s.rva:
                self.rvas.append(s.rva)
                self.syms.append(s)
        extents = sorted({(s.rva, s.rva + s.size) for s in self.all
                          if s.kind == FUNCTION and s.size})
        self.fstarts = [a for a, _ in extents]
        self.fends = [b for _, b in extents]
        # Every name read (also the raw names of duplicates dropped above, `_Foo@8` beside
        # `Foo`) finds the kept symbol; functions win over data over publics for a name.
        self.by_name: dict[str, Symbol] = {}
        self.by_lower: dict[str, Symbol] = {}
        for s in sorted(found, key=lambda s: _PRIORITY[s.kind]):
            kept = best[(s.rva, s.display)]
            self.by_name.setdefault(s.display, kept)
            self.by_lower.setdefault(s.display.lower(), kept)
            if s.name != s.display:
                self.by_name.setdefault(s.name, kept)
                self.by_lower.setdefault(s.name.lower(), kept)


def open_pdb(path: str | os.PathLike[str]) -> PdbFile:
    return PdbFile(path)
