"""Kernel structure offsets when there is no PDB for the kernel (DESIGN.md: PDB first, then the
KDBG's Offset*/Size* fields, then a small built-in table keyed by build number).

    ko = KernelOffsets(build=19041, is64=True, kdbg=session.kdbg, types=nt_pdb_types)
    ko.offset("_EPROCESS", "UniqueProcessId")      -> 0x440
    ko.source("_EPROCESS", "UniqueProcessId")      -> "built-in table (build 19041: ntdiff/headers ...)"
    builtin_types(19041, True)                     -> a StaticTypes for `dt` ("the fields it knows")

The table is data: kdshell/data/offsets.json, one section per architecture (x64, x86, arm64:
ARM64's KPROCESS, KTHREAD and KPCR are its own, so an ARM64 dump never takes x64's numbers;
`KernelOffsets(..., arm64=True)`). Every build entry names where its numbers come from, and
what no public source gave (`missing`); `same_as` shares an entry between builds of one kernel
line (19041..19045, 22621/22631). A build that is not in the table uses the nearest earlier
build of the same line (the entry says which) and says so; a build older than every entry gets
nothing from the table.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Protocol
from importlib import resources

from kdshell.kernel.kdbg import FIELDS as KDBG_FIELDS
from kdshell.kernel.kdbg import Kdbg

# KDDEBUGGER_DATA64 Offset*/Size* fields (formats.md §10; kdshell.kernel.kdbg.FIELDS): (type, field
# path, KDBG field)
KDBG_OFFSETS = [
    ("_KTHREAD", "NextProcessor", "OffsetKThreadNextProcessor"),
    ("_KTHREAD", "Teb", "OffsetKThreadTeb"),
    ("_KTHREAD", "KernelStack", "OffsetKThreadKernelStack"),
    ("_KTHREAD", "InitialStack", "OffsetKThreadInitialStack"),
    ("_KTHREAD", "ApcState.Process", "OffsetKThreadApcProcess"),
    ("_KTHREAD", "State", "OffsetKThreadState"),
    ("_EPROCESS", "Peb", "OffsetEprocessPeb"),
    ("_EPROCESS", "InheritedFromUniqueProcessId", "OffsetEprocessParentCID"),
    ("_EPROCESS", "Pcb.DirectoryTableBase", "OffsetEprocessDirectoryTableBase"),
    ("_KPROCESS", "DirectoryTableBase", "OffsetEprocessDirectoryTableBase"),
    ("_KPRCB", "CurrentThread", "OffsetPrcbCurrentThread"),
    ("_KPRCB", "MHz", "OffsetPrcbMhz"),
    ("_KPRCB", "CpuType", "OffsetPrcbCpuType"),
    ("_KPRCB", "VendorString", "OffsetPrcbVendorString"),
    ("_KPRCB", "ProcessorState.ContextFrame", "OffsetPrcbProcStateContext"),
    ("_KPRCB", "Number", "OffsetPrcbNumber"),
    ("_KPRCB", "ProcessorState.SpecialRegisters", "OffsetPrcbProcStateSpecialReg"),
    ("_KPCR", "Self", "OffsetPcrSelfPcr"),
    ("_KPCR", "SelfPcr", "OffsetPcrSelfPcr"),  # x86's name for it
    ("_KPCR", "CurrentPrcb", "OffsetPcrCurrentPrcb"),
    ("_KPCR", "Prcb", "OffsetPcrContainedPrcb"),
    ("_KPCR", "PrcbData", "OffsetPcrContainedPrcb"),  # x86's name for the contained KPRCB (x86 KPCR.Prcb is a pointer)
    ("_KPRCB", "Context", "OffsetPrcbContext"),
    ("_KTHREAD", "StackLimit", "OffsetKThreadStackLimit"),
    ("_KTHREAD", "StackBase", "OffsetKThreadStackBase"),
    ("_KTHREAD", "QueueListEntry", "OffsetKThreadQueueListEntry"),
    ("_ETHREAD", "IrpList", "OffsetEThreadIrpList"),
    ("_KPRCB", "IdleThread", "OffsetPrcbIdleThread"),
    ("_KTHREAD", "WaitReason", "OffsetKThreadWaitReason"),
]
KDBG_SIZES = [("_EPROCESS", "SizeEProcess"), ("_KPRCB", "SizePrcb"), ("_ETHREAD", "SizeEThread"),
              ("_KPCR", "SizePcr")]


@lru_cache(maxsize=1)
def table() -> dict:
    with resources.files("kdshell").joinpath("data/offsets.json").open("r", encoding="utf-8") as f:
        return json.load(f)


def _num(value: str | int) -> int:
    return int(value, 0) if isinstance(value, str) else int(value)


@dataclass
class BuildEntry:
    build: int  # the build the numbers are for
    wanted: int  # the build asked for
    release: str
    source: str
    types: dict  # type name -> {"size": int|None, "fields": {path: (offset, dt type)}}
    missing: str = ""  # what no public source gave for this build (the table says why)
    # Fields inferred from a neighbouring build, used only once a dump confirms them
    # (KernelOffsets.confirmed; kdshell.kernel.state.KernelState checks): same shape as `types`.
    unconfirmed: dict = field(default_factory=dict)
    unconfirmed_why: str = ""

    @property
    def exact(self) -> bool:
        return self.build == self.wanted

    @property
    def origin(self) -> str:
        how = f"build {self.build}" if self.exact else f"build {self.build} (the nearest to {self.wanted})"
        return f"kdshell's built-in offsets for {how}, {self.release}, from: {self.source}"

    def offset(self, type_name: str, path: str) -> int | None:
        t = self.types.get(type_name)
        if t is None:
            return None
        f = t["fields"].get(path)
        return f[0] if f is not None else None

    def size(self, type_name: str) -> int | None:
        t = self.types.get(type_name)
        return t.get("size") if t else None


def _entries(arch: str) -> dict:
    return table().get(arch, {})


def _resolve_entry(arch: str, key: str, depth: int = 0) -> dict:
    raw = _entries(arch)[key]
    if "same_as" in raw and depth < 8:
        base = dict(_resolve_entry(arch, raw["same_as"], depth + 1))
        base.update({k: v for k, v in raw.items() if k != "same_as"})
        return base
    return raw


def table_arch(is64: bool, arm64: bool = False) -> str:
    """The table's section: ARM64's structures are its own, never x64's."""
    return "arm64" if arm64 else "x64" if is64 else "x86"


def build_entry(build: int, is64: bool, arm64: bool = False) -> BuildEntry | None:
    """The table's entry for `build` (exact, else the nearest earlier build of the same kernel
    line, which the entry marks with `covers_up_to`); None when the table has nothing."""
    arch = table_arch(is64, arm64)
    known = sorted(int(k) for k in _entries(arch) if k.isdigit())
    chosen = None
    for b in known:
        if b == build:
            chosen = b
            break
        if b < build:
            raw = _resolve_entry(arch, str(b))
            if build <= int(raw.get("covers_up_to", b)):
                chosen = b
    if chosen is None:
        return None
    raw = _resolve_entry(arch, str(chosen))
    unconfirmed = raw.get("unconfirmed", {})
    return BuildEntry(chosen, build, raw.get("release", ""), raw.get("source", ""), _types(raw.get("types", {})),
                      raw.get("missing", ""), _types(unconfirmed.get("types", {})), unconfirmed.get("why", ""))


def _types(raw: dict) -> dict:
    types = {}
    for tname, t in raw.items():
        fields = {path: (_num(spec[0]), spec[1] if len(spec) > 1 else "") for path, spec in t.get("fields", {}).items()}
        types[tname] = {"size": _num(t["size"]) if t.get("size") is not None else None, "fields": fields}
    return types


class TypeSource(Protocol):
    """What the kernel layer asks of a module's types (kdshell.symbols.types implements it):
    `find(name)` gives a type with `size` and `find_field(path)` -> (offset, type) or None."""

    def find(self, name: str) -> Any: ...


def builtin_definitions(build: int, is64: bool, arm64: bool = False) -> tuple[dict[str, dict], BuildEntry] | None:
    """The table's structures as plain definitions in dt's spelling (the form
    kdshell.symbols.types.StaticTypes takes; only the fields the table knows), and the entry."""
    entry = build_entry(build, is64, arm64)
    if entry is None:
        return None
    defs: dict[str, dict] = {}
    ptr = "Ptr64" if is64 else "Ptr32"
    for tname, t in entry.types.items():
        fields: list[tuple[str, int, str] | tuple[str, int, str, int, int]] = []
        for path, (offset, dtype) in sorted(t["fields"].items(), key=lambda kv: kv[1][0]):
            if "." in path:
                continue  # nested paths are reached through their own types
            dtype = dtype.replace("Ptr ", ptr + " ")
            if dtype.startswith("Pos "):  # "Pos 0, 3 Bits Uint1B" -> bitfield
                pos, length, base = _bitfield(dtype)
                fields.append((path, offset, base, pos, length))
            else:
                fields.append((path, offset, dtype or "Void"))
        defs[tname] = {"size": t["size"] or 0, "fields": fields}
    # Types the table names but does not describe (`Ptr64 _PEB`) become empty stubs, so a
    # pointer still prints as `Ptr64 _PEB`.
    for t in list(defs.values()):
        for spec in t["fields"]:
            name = spec[2].split()[-1]
            if name.startswith("_") and name not in defs:
                defs[name] = {"size": 0, "fields": []}
    return defs, entry


def _bitfield(spec: str) -> tuple[int, int, str]:
    # "Pos 0, 3 Bits UChar"
    head, _, base = spec.partition(" Bit")
    base = base.split(" ", 1)[1] if " " in base else "Uint4B"
    pos, length = head[4:].split(",")
    return int(pos), int(length), base.strip() or "Uint4B"


class KernelOffsets:
    """Structure offsets from the best source the dump offers: the kernel PDB's types, the
    KDBG's Offset*/Size* fields, the built-in table."""

    def __init__(self, build: int, is64: bool, kdbg: Kdbg | None = None, types: TypeSource | None = None,
                 arm64: bool = False):
        self.build = build
        self.is64 = is64
        self.arm64 = arm64
        self.kdbg = kdbg
        self.types = types  # a TypeSource with find()
        self.entry = build_entry(build, is64, arm64)
        # The entry's inferred fields count once a dump has confirmed them (KernelState does).
        self.confirmed = False

    def unconfirmed(self, type_name: str, path: str) -> int | None:
        """An inferred offset the table holds for this build, confirmed or not."""
        if self.entry is None or type_name not in self.entry.unconfirmed:
            return None
        found = self.entry.unconfirmed[type_name]["fields"].get(path)
        return found[0] if found else None

    def _kdbg_value(self, name: str) -> int | None:
        return (self.kdbg.get(name) or None) if self.kdbg is not None else None

    def lookup(self, type_name: str, path: str) -> tuple[int, str] | None:
        """(offset, where it came from) or None."""
        if self.types is not None:
            t = self.types.find(type_name)
            if t is not None:
                try:
                    found = t.find_field(path)
                except Exception:  # noqa: BLE001 - a type source's own error means "not there"
                    found = None
                if found is not None:
                    return found[0], "PDB"
        for tname, fpath, field_name in KDBG_OFFSETS:
            if tname == type_name and fpath == path:
                value = self._kdbg_value(field_name)
                if value is not None:
                    return value, f"KDBG (field at +{KDBG_FIELDS[field_name][0]:#x})"
        if self.entry is not None:
            value = self.entry.offset(type_name, path)
            if value is not None:
                return value, self.entry.origin
            value = self.unconfirmed(type_name, path) if self.confirmed else None
            if value is not None:
                return value, f"{self.entry.origin}; confirmed on this dump: {self.entry.unconfirmed_why}"
        return None

    def offset(self, type_name: str, path: str) -> int | None:
        found = self.lookup(type_name, path)
        return found[0] if found else None

    def source(self, type_name: str, path: str) -> str | None:
        found = self.lookup(type_name, path)
        return found[1] if found else None

    def size(self, type_name: str) -> int | None:
        if self.types is not None:
            t = self.types.find(type_name)
            if t is not None and t.size:
                return t.size
        for tname, field_name in KDBG_SIZES:
            if tname == type_name:
                value = self._kdbg_value(field_name)
                if value:
                    return value
        return self.entry.size(type_name) if self.entry is not None else None


class OffsetsHolder(Protocol):
    """What gives the kernel's offsets, built again when symbols change (the session's parts,
    kdshell.parts.Parts): for the layers above that take the session but may not import it."""

    @property
    def offsets(self) -> Callable[[], KernelOffsets]: ...


# _KLDR_DATA_TABLE_ENTRY fields every x64 / x86 kernel since Windows 7 shares (the ones lm needs);
# TimeDateStamp moved (Win7: an LDR_DATA_TABLE_ENTRY-sized entry) and comes from the table.
LOADER_ENTRY_64 = {"DllBase": 0x30, "SizeOfImage": 0x40, "FullDllName": 0x48, "BaseDllName": 0x58, "CheckSum": 0x78}
LOADER_ENTRY_32 = {"DllBase": 0x18, "SizeOfImage": 0x20, "FullDllName": 0x24, "BaseDllName": 0x2C}


def loader_entry_layout(build: int, is64: bool) -> dict[str, int]:
    """_KLDR_DATA_TABLE_ENTRY offsets for walking PsLoadedModuleList on this build."""
    layout = dict(LOADER_ENTRY_64 if is64 else LOADER_ENTRY_32)
    entry = build_entry(build, is64)
    if entry is not None:
        for name in ("DllBase", "SizeOfImage", "FullDllName", "BaseDllName", "CheckSum", "TimeDateStamp"):
            value = entry.offset("_KLDR_DATA_TABLE_ENTRY", name)
            if value is not None:
                layout[name] = value
    return layout


# KDDEBUGGER_DATA64 fields that hold the address of a kernel variable (or routine) of the same
# name (formats.md §10): without a kernel PDB they still let `dq nt!PsLoadedModuleList` work.
# Every 8-byte field but those holding a value rather than a variable's address; one field's
# name differs from its symbol's.
_KDBG_VALUES = frozenset(("KernBase", "SavedContext", "PteBase", "RetpolineStubFunctionTable"))
_KDBG_SYMBOL_NAMES = {"BreakpointWithStatus": "RtlpBreakWithStatusInstruction"}
KDBG_SYMBOLS = {offset: _KDBG_SYMBOL_NAMES.get(name, name) for name, (offset, width) in KDBG_FIELDS.items()
                if width == 8 and name not in _KDBG_VALUES}


def kdbg_symbols(kdbg: Kdbg | None, kdbg_address: int | None, base: int, end: int) -> list[tuple[str, int]]:
    """(name, address) of the kernel variables the KDBG points to that lie inside nt
    [base, end), plus KdDebuggerDataBlock itself."""
    out: list[tuple[str, int]] = []
    if kdbg_address and base <= kdbg_address < end:
        out.append(("KdDebuggerDataBlock", kdbg_address))
    if kdbg is None:
        return out
    limit = min(kdbg.size, len(kdbg.raw))
    for offset, name in KDBG_SYMBOLS.items():
        if offset + 8 <= limit:
            value = int.from_bytes(kdbg.raw[offset : offset + 8], "little")
            if base <= value < end:
                out.append((name, value))
    return out
