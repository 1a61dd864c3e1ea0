"""PE images: headers, sections, exports, .pdata, the debug directory (RSDS) and the version
resource, read from the dump's virtual memory or from an image file.

An image is read through an RVA reader, `read(rva, size) -> bytes` that raises MemoryNotPresent
for bytes it does not have, so one parser serves both sources:

    img = PeImage.from_memory(memory, base)       # headers and directories as the dump has them
    img = PeImage.from_file(path, base)           # a file from -i/.exepath or the symbol store,
                                                   # laid out as mapped and relocated to `base`
    img.exports(), img.codeview(), img.runtime_functions(), img.version_info()

pefile parses the headers (DOS, NT, optional header, section table, data directories); the
directories are walked here with `struct` so that a paged-out directory is a MemoryNotPresent
for that directory only, and the big tables (.pdata of ntoskrnl: 30k entries) stay fast.

Everything in an image is untrusted: counts are capped, strings bounded, and a malformed header
is a PeFormatError (a KdError: one line for the user).
"""
from __future__ import annotations

import os
import struct
import uuid
from bisect import bisect_right
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Protocol

from kdshell.errors import KdError, MemoryNotPresent

if TYPE_CHECKING:
    import pefile  # no type information: its objects are Any

PAGE = 0x1000
MAX_IMAGE_SIZE = 0x1000_0000  # 256 MiB: no driver is larger; a bigger SizeOfImage is corrupt
MAX_EXPORTS = 0x10000
MAX_NAME = 512
MAX_DEBUG_ENTRIES = 32
MAX_RUNTIME_FUNCTIONS = 0x40000

IMAGE_DIRECTORY_ENTRY_EXPORT = 0
IMAGE_DIRECTORY_ENTRY_RESOURCE = 2
IMAGE_DIRECTORY_ENTRY_EXCEPTION = 3
IMAGE_DIRECTORY_ENTRY_BASERELOC = 5
IMAGE_DIRECTORY_ENTRY_DEBUG = 6
IMAGE_DEBUG_TYPE_CODEVIEW = 2
IMAGE_DEBUG_TYPE_REPRO = 16
IMAGE_SCN_MEM_WRITE = 0x80000000
IMAGE_SCN_MEM_EXECUTE = 0x20000000
IMAGE_SCN_CNT_CODE = 0x20
RT_VERSION = 16

MACHINE_NAMES = {0x8664: "AMD64", 0x14C: "I386", 0xAA64: "ARM64", 0x1C4: "ARMNT"}


class PeFormatError(KdError):
    """The bytes at an image base are not a PE image we can read."""


@dataclass
class Section:
    name: str
    rva: int
    virtual_size: int
    raw_offset: int
    raw_size: int
    characteristics: int

    @property
    def size(self) -> int:
        return max(self.virtual_size, 0) or self.raw_size

    @property
    def end(self) -> int:
        return self.rva + self.size

    @property
    def writable(self) -> bool:
        return bool(self.characteristics & IMAGE_SCN_MEM_WRITE)

    @property
    def executable(self) -> bool:
        return bool(self.characteristics & (IMAGE_SCN_MEM_EXECUTE | IMAGE_SCN_CNT_CODE))


@dataclass
class Export:
    name: str | None
    ordinal: int
    rva: int
    forwarder: str | None = None


@dataclass
class CodeView:
    """The debug directory's CodeView record: which PDB this image was linked with."""

    format: str  # "RSDS" or "NB10"
    pdb_path: str  # as recorded (often a full build path); untrusted
    age: int
    guid: uuid.UUID | None = None  # RSDS
    signature: int | None = None  # NB10 (a time stamp)

    @property
    def pdb_name(self) -> str:
        """The file name part of the recorded path (either slash)."""
        return self.pdb_path.replace("\\", "/").rsplit("/", 1)[-1]

    @property
    def key(self) -> str:
        return pdb_key(self.guid, self.signature, self.age)


def pdb_key(guid: uuid.UUID | None, signature: int | None, age: int) -> str:
    """A PDB's symbol-store key: GUID (32 upper-case hex digits, Data1-3 as numbers) and age in
    hex; a PDB 2.0 (no GUID) has its 8-digit signature instead."""
    if guid is not None:
        return guid.hex.upper() + f"{age:X}"
    return f"{signature or 0:08X}{age:X}"


@dataclass
class DebugEntry:
    type: int
    timestamp: int
    size: int
    rva: int
    file_offset: int


@dataclass
class VersionInfo:
    file_version: tuple[int, int, int, int]
    product_version: tuple[int, int, int, int]
    flags_mask: int
    flags: int
    os: int
    type: int
    subtype: int
    date: int
    translations: list[tuple[int, int]] = field(default_factory=list)
    strings: dict[str, str] = field(default_factory=dict)


@dataclass
class RuntimeFunction:
    begin: int  # RVAs
    end: int
    unwind: int


# -- readers ------------------------------------------------------------------------------------
class Reader(Protocol):
    """Bytes by address (a dump's virtual memory) or by RVA (an image): MemoryNotPresent for
    bytes it does not have."""

    def read(self, address: int, size: int, /) -> bytes: ...


class MemoryReader:
    """An image as the dump has it: RVA r is the virtual address base + r."""

    def __init__(self, memory: Reader, base: int) -> None:
        self.memory = memory
        self.base = base

    def read(self, rva: int, size: int) -> bytes:
        return self.memory.read(self.base + rva, size)


class BytesReader:
    """An image laid out as mapped (a file after mapping): RVA r is offset r."""

    def __init__(self, data: bytes, base: int = 0) -> None:
        self.data = data
        self.base = base

    def read(self, rva: int, size: int) -> bytes:
        if rva < 0 or size < 0 or rva + size > len(self.data):
            raise MemoryNotPresent(self.base + max(rva, 0), "beyond the end of the image file")
        return self.data[rva : rva + size]


def _cstring(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("latin-1")


# -- the image ----------------------------------------------------------------------------------
class PeImage:
    """One PE image at a base address."""

    def __init__(self, reader: Reader, base: int, *, path: str | None = None,
                 file_size: int | None = None) -> None:
        self.reader = reader
        self.base = base
        self.path = path  # the file it came from; None for an image read from the dump
        self.file_size = file_size
        try:
            head = reader.read(0, PAGE)
        except MemoryNotPresent:
            head = reader.read(0, 0x400)  # some images are mapped with a short first page
        if head[:2] != b"MZ":
            raise PeFormatError(f"No PE image at {base:#x} (no 'MZ' signature)")
        import pefile  # here, not at start-up (bench/run_all.py "start")

        try:
            pe = pefile.PE(data=bytes(head), fast_load=True)
        except pefile.PEFormatError as exc:
            raise PeFormatError(f"Bad PE header at {base:#x}: {exc}") from None
        except MemoryError:
            raise
        except Exception as exc:  # pefile itself fails on some hostile headers (see _pefile_failed)
            raise _pefile_failed(f"Bad PE header at {base:#x}", exc) from None
        fh, oh = pe.FILE_HEADER, pe.OPTIONAL_HEADER
        self.machine: int = fh.Machine
        self.timestamp: int = fh.TimeDateStamp
        self.characteristics: int = fh.Characteristics
        self.is64: bool = oh.Magic == 0x20B
        self.image_base: int = oh.ImageBase
        self.size_of_image: int = oh.SizeOfImage
        self.size_of_headers: int = oh.SizeOfHeaders
        self.checksum: int = oh.CheckSum
        self.entry_point: int = oh.AddressOfEntryPoint
        self.subsystem: int = oh.Subsystem
        self.dll_characteristics: int = oh.DllCharacteristics
        self.linker_version: tuple[int, int] = (oh.MajorLinkerVersion, oh.MinorLinkerVersion)
        self.os_version: tuple[int, int] = (oh.MajorOperatingSystemVersion, oh.MinorOperatingSystemVersion)
        self.image_version: tuple[int, int] = (oh.MajorImageVersion, oh.MinorImageVersion)
        self.subsystem_version: tuple[int, int] = (oh.MajorSubsystemVersion, oh.MinorSubsystemVersion)
        self.section_alignment: int = oh.SectionAlignment
        self.file_alignment: int = oh.FileAlignment
        self.stack_reserve: int = oh.SizeOfStackReserve
        self.stack_commit: int = oh.SizeOfStackCommit
        self.heap_reserve: int = oh.SizeOfHeapReserve
        self.heap_commit: int = oh.SizeOfHeapCommit
        self.directories: list[tuple[int, int]] = [(d.VirtualAddress, d.Size) for d in oh.DATA_DIRECTORY]
        self.sections = [
            Section(s.Name.rstrip(b"\0").decode("latin-1"), s.VirtualAddress, s.Misc_VirtualSize,
                    s.PointerToRawData, s.SizeOfRawData, s.Characteristics)
            for s in pe.sections
        ]
        if not 0 < self.size_of_image <= MAX_IMAGE_SIZE:
            raise PeFormatError(f"Bad PE header at {base:#x}: SizeOfImage {self.size_of_image:#x}")

    @classmethod
    def from_memory(cls, memory: Reader, base: int) -> "PeImage":
        return cls(MemoryReader(memory, base), base)

    @classmethod
    def from_file(cls, path: str, base: int | None = None, *, max_size: int = MAX_IMAGE_SIZE) -> "PeImage":
        """An image file, laid out as the loader maps it and relocated to `base`."""
        size = os.path.getsize(path)
        if size > max_size:
            raise PeFormatError(f"{os.path.basename(path)} is too large for an image ({size} bytes)")
        with open(path, "rb") as f:
            data = f.read()
        import pefile

        try:
            pe = pefile.PE(data=data, fast_load=True)
            mapped = bytearray(pe.get_memory_mapped_image())
        except pefile.PEFormatError as exc:
            raise PeFormatError(f"{os.path.basename(path)} is not a PE image: {exc}") from None
        except MemoryError:
            raise
        except Exception as exc:
            raise _pefile_failed(f"{os.path.basename(path)} is not a readable PE image", exc) from None
        if len(mapped) < pe.OPTIONAL_HEADER.SizeOfImage <= MAX_IMAGE_SIZE:
            mapped += bytes(pe.OPTIONAL_HEADER.SizeOfImage - len(mapped))
        image_base = pe.OPTIONAL_HEADER.ImageBase
        base = image_base if base is None else base
        if base != image_base:
            _relocate(mapped, pe, base - image_base)
        return cls(BytesReader(bytes(mapped), base), base, path=path, file_size=size)

    # -- facts --------------------------------------------------------------------------------
    @property
    def end(self) -> int:
        return self.base + self.size_of_image

    @property
    def machine_name(self) -> str:
        return MACHINE_NAMES.get(self.machine, f"{self.machine:X}")

    def read(self, rva: int, size: int) -> bytes:
        return self.reader.read(rva, size)

    def section_at(self, rva: int) -> Section | None:
        for s in self.sections:
            if s.rva <= rva < s.end:
                return s
        return None

    def executable(self, rva: int) -> bool:
        """Does `rva` lie in an executable section (code), not in the headers or data?"""
        section = self.section_at(rva)
        return section is not None and rva >= self.size_of_headers and section.executable

    def directory(self, index: int) -> tuple[int, int]:
        if index < len(self.directories):
            return self.directories[index]
        return 0, 0

    # -- exports ------------------------------------------------------------------------------
    @cached_property
    def export_name(self) -> str | None:
        self.exports  # noqa: B018
        return self._export_name

    @cached_property
    def exports(self) -> list[Export]:
        """Exported functions and data (forwarders included); [] without an export directory.
        A paged-out directory raises MemoryNotPresent."""
        self._export_name = None
        rva, size = self.directory(IMAGE_DIRECTORY_ENTRY_EXPORT)
        if not rva or size < 40:
            return []
        (_, _, _, _, name_rva, ordinal_base, n_functions, n_names, functions, names,
         ordinals) = struct.unpack("<IIHHIIIIIII", self.read(rva, 40))
        n_functions = min(n_functions, MAX_EXPORTS)
        n_names = min(n_names, MAX_EXPORTS)
        if name_rva:
            self._export_name = self._string(name_rva)
        addresses = struct.unpack(f"<{n_functions}I", self.read(functions, 4 * n_functions)) if n_functions else ()
        name_rvas = struct.unpack(f"<{n_names}I", self.read(names, 4 * n_names)) if n_names else ()
        name_ordinals = struct.unpack(f"<{n_names}H", self.read(ordinals, 2 * n_names)) if n_names else ()
        named: dict[int, str] = {}
        for nrva, index in zip(name_rvas, name_ordinals):
            if index < n_functions and index not in named:
                named[index] = self._string(nrva)
        out = []
        for index, target in enumerate(addresses):
            if not target:
                continue
            forwarder = None
            if rva <= target < rva + size:
                forwarder = self._string(target)
            out.append(Export(named.get(index), ordinal_base + index, target, forwarder))
        return out

    def _string(self, rva: int, limit: int = MAX_NAME) -> str:
        """A NUL-terminated ASCII string; stops at the end of readable memory."""
        out = b""
        while len(out) < limit:
            chunk_len = min(limit - len(out), PAGE - ((self.base + rva + len(out)) & (PAGE - 1)))
            try:
                chunk = self.read(rva + len(out), chunk_len)
            except MemoryNotPresent:
                break
            if b"\0" in chunk:
                return (out + chunk.split(b"\0", 1)[0]).decode("latin-1")
            out += chunk
        return out.decode("latin-1")

    # -- debug directory ----------------------------------------------------------------------
    @cached_property
    def debug_entries(self) -> list[DebugEntry]:
        rva, size = self.directory(IMAGE_DIRECTORY_ENTRY_DEBUG)
        if not rva or size < 28:
            return []
        count = min(size // 28, MAX_DEBUG_ENTRIES)
        data = self.read(rva, count * 28)
        out = []
        for i in range(count):
            _, stamp, _, _, kind, dsize, drva, doff = struct.unpack_from("<IIHHIIII", data, i * 28)
            out.append(DebugEntry(kind, stamp, dsize, drva, doff))
        return out

    @property
    def reproducible(self) -> bool:
        """Linked with /Brepro: the TimeDateStamp is a hash, not a time."""
        try:
            return any(e.type == IMAGE_DEBUG_TYPE_REPRO for e in self.debug_entries)
        except MemoryNotPresent:
            return False

    @cached_property
    def codeview(self) -> CodeView | None:
        """The RSDS (or NB10) record naming the image's PDB; None when the image has none."""
        for e in self.debug_entries:
            if e.type != IMAGE_DEBUG_TYPE_CODEVIEW or not e.rva or e.size < 16:
                continue
            data = self.read(e.rva, min(e.size, 24 + MAX_NAME))
            return parse_codeview(data)
        return None

    # -- .pdata -------------------------------------------------------------------------------
    @cached_property
    def runtime_functions(self) -> list[RuntimeFunction]:
        """x64 RUNTIME_FUNCTION entries sorted by address ([] for x86 images)."""
        rva, size = self.directory(IMAGE_DIRECTORY_ENTRY_EXCEPTION)
        if not rva or not size or self.machine != 0x8664:
            return []
        count = min(size // 12, MAX_RUNTIME_FUNCTIONS)
        data = self.read(rva, count * 12)
        out = [RuntimeFunction(b, e, u) for b, e, u in struct.iter_unpack("<III", data[: count * 12]) if e > b]
        out.sort(key=lambda f: f.begin)
        return out

    @cached_property
    def _function_starts(self) -> list[int]:
        return [f.begin for f in self.runtime_functions]

    def runtime_function(self, rva: int) -> RuntimeFunction | None:
        """The RUNTIME_FUNCTION whose range holds `rva`."""
        i = bisect_right(self._function_starts, rva) - 1
        if i >= 0 and self.runtime_functions[i].begin <= rva < self.runtime_functions[i].end:
            return self.runtime_functions[i]
        return None

    # -- version resource ---------------------------------------------------------------------
    @cached_property
    def version_info(self) -> VersionInfo | None:
        """The VS_VERSIONINFO resource, or None (no resource, or its pages are not present)."""
        rva, size = self.directory(IMAGE_DIRECTORY_ENTRY_RESOURCE)
        if not rva or not size:
            return None
        try:
            entry = self._resource_leaf(rva, [RT_VERSION, None, None])
            if entry is None:
                return None
            data_rva, data_size = entry
            return parse_version_info(self.read(data_rva, min(data_size, 0x10000)))
        except (MemoryNotPresent, struct.error, ValueError):
            return None

    def _resource_leaf(self, root: int, path: list[int | None]) -> tuple[int, int] | None:
        """Follow IMAGE_RESOURCE_DIRECTORY levels (an id, or None for the first entry)."""
        offset = 0
        for want in path:
            head = self.read(root + offset, 16)
            named, ids = struct.unpack_from("<HH", head, 12)
            count = min(named + ids, 256)
            entries = self.read(root + offset + 16, 8 * count)
            found = None
            for i in range(count):
                name, target = struct.unpack_from("<II", entries, 8 * i)
                if want is None or (not name & 0x80000000 and name == want):
                    found = target
                    break
            if found is None:
                return None
            if not found & 0x80000000:
                data_rva, data_size = struct.unpack("<II", self.read(root + found, 8))
                return data_rva, data_size
            offset = found & 0x7FFFFFFF
        return None


def _pefile_failed(what: str, exc: Exception) -> PeFormatError:
    """pefile raises more than PEFormatError on hostile files (an AttributeError from a section
    table it half built: fuzz, tests/regressions/pe_unwind/pefile-attribute-error.bin.gz): one
    line for the user either way."""
    return PeFormatError(f"{what}: pefile failed ({type(exc).__name__}: {exc})")


def parse_codeview(data: bytes) -> CodeView | None:
    if data[:4] == b"RSDS" and len(data) >= 24:
        guid = uuid.UUID(bytes_le=bytes(data[4:20]))
        age = int.from_bytes(data[20:24], "little")
        return CodeView("RSDS", _cstring(data[24 : 24 + MAX_NAME]), age, guid=guid)
    if data[:4] == b"NB10" and len(data) >= 16:
        signature, age = struct.unpack_from("<II", data, 8)
        return CodeView("NB10", _cstring(data[16 : 16 + MAX_NAME]), age, signature=signature)
    return None


def _relocate(mapped: bytearray, pe: pefile.PE, delta: int) -> None:
    """Apply base relocations (DIR64 and HIGHLOW) for a load at ImageBase + delta."""
    dirs = pe.OPTIONAL_HEADER.DATA_DIRECTORY
    if len(dirs) <= IMAGE_DIRECTORY_ENTRY_BASERELOC:  # NumberOfRvaAndSizes < 6: no relocations
        return  # (fuzz: tests/regressions/pe_unwind/short-data-directory.bin.gz)
    rva, size = dirs[IMAGE_DIRECTORY_ENTRY_BASERELOC].VirtualAddress, dirs[IMAGE_DIRECTORY_ENTRY_BASERELOC].Size
    if not rva or not size or rva + size > len(mapped):
        return
    end = rva + size
    pos = rva
    while pos + 8 <= end:
        page, block = struct.unpack_from("<II", mapped, pos)
        if block < 8 or pos + block > end:
            break
        entries = mapped[pos + 8 : pos + 8 + (block - 8) // 2 * 2]  # an odd SizeOfBlock: the last byte is no entry
        for (entry,) in struct.iter_unpack("<H", entries):
            kind, off = entry >> 12, page + (entry & 0xFFF)
            if kind == 10 and off + 8 <= len(mapped):  # IMAGE_REL_BASED_DIR64
                value = (int.from_bytes(mapped[off : off + 8], "little") + delta) & 0xFFFF_FFFF_FFFF_FFFF
                mapped[off : off + 8] = value.to_bytes(8, "little")
            elif kind == 3 and off + 4 <= len(mapped):  # IMAGE_REL_BASED_HIGHLOW
                value = (int.from_bytes(mapped[off : off + 4], "little") + delta) & 0xFFFFFFFF
                mapped[off : off + 4] = value.to_bytes(4, "little")
        pos += block


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _version_node(data: bytes, pos: int) -> tuple[int, int, int, str, int]:
    """(length, value length, type, key, value offset) of a VS_VERSIONINFO-style node."""
    length, value_len, kind = struct.unpack_from("<HHH", data, pos)
    key_start = pos + 6
    key_end = key_start
    while key_end + 1 < len(data) and data[key_end : key_end + 2] != b"\0\0":
        key_end += 2
    key = data[key_start:key_end].decode("utf-16-le", "replace")
    return length, value_len, kind, key, _align4(key_end + 2)


def parse_version_info(data: bytes) -> VersionInfo | None:
    length, value_len, _, key, value = _version_node(data, 0)
    if key != "VS_VERSION_INFO" or value_len < 52 or value + 52 > len(data):
        return None
    fixed = struct.unpack_from("<13I", data, value)
    if fixed[0] != 0xFEEF04BD:
        return None

    def quad(ms: int, ls: int) -> tuple[int, int, int, int]:
        return (ms >> 16, ms & 0xFFFF, ls >> 16, ls & 0xFFFF)

    info = VersionInfo(quad(fixed[2], fixed[3]), quad(fixed[4], fixed[5]), fixed[6], fixed[7], fixed[8],
                       fixed[9], fixed[10], (fixed[11] << 32) | fixed[12])
    end = min(length, len(data))
    pos = _align4(value + value_len)
    guard = 0
    while pos + 6 <= end and guard < 64:
        guard += 1
        clen, _, _, ckey, cval = _version_node(data, pos)
        if clen < 6:
            break
        cend = min(pos + clen, end)
        if ckey == "StringFileInfo":
            tpos = cval
            while tpos + 6 <= cend:
                tlen, _, _, _, tval = _version_node(data, tpos)
                if tlen < 6:
                    break
                tend = min(tpos + tlen, cend)
                spos = tval
                while spos + 6 <= tend:
                    slen, svlen, _, skey, sval = _version_node(data, spos)
                    if slen < 6:
                        break
                    text = data[sval : min(sval + 2 * svlen, spos + slen)].decode("utf-16-le", "replace")
                    info.strings.setdefault(skey, text.split("\0", 1)[0])
                    spos = _align4(spos + slen)
                tpos = _align4(tpos + tlen)
        elif ckey == "VarFileInfo":
            vpos = cval
            while vpos + 6 <= cend:
                vlen, vvlen, _, vkey, vval = _version_node(data, vpos)
                if vlen < 6:
                    break
                if vkey == "Translation":
                    for i in range(0, min(vvlen, vlen) - 3, 4):
                        lang, cp = struct.unpack_from("<HH", data, vval + i)
                        info.translations.append((lang, cp))
                vpos = _align4(vpos + vlen)
        pos = _align4(pos + clen)
    return info
