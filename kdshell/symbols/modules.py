"""The kernel's loaded and unloaded modules, named the way WinDbg names them.

Where the list comes from:
- complete and kernel dumps: the loader's PsLoadedModuleList (KDBG, or the dump header), a
  circular list of KLDR_DATA_TABLE_ENTRY records walked through virtual memory;
- small dumps: the triage driver list (formats.md §6.6), which has no list pointers to walk.
Unloaded modules: MmUnloadedDrivers via the KDBG (a ring of MI_UNLOADED_DRIVERS, newest first),
or the triage dump's own list.

Module names (windbg.md §4): the file name without its extension; every kernel image (ntoskrnl,
ntkrnlmp, ntkrnlpa, ntkrpamp, ntkrla57) is `nt`; the HAL (hal.dll, halmacpi.dll, ...) is `hal`.
A name taken already gets `_<base>` (`disk_fffff8046a410000`). Names are not otherwise changed:
a name that starts with a digit or reads as a number stays as it is (Microsoft's own failure
buckets say `1394ohci!IoWorkers::...`, stacks say `afd!AfdPoll`); the expression evaluator reads
`afd` as a number and `afd!AfdPoll` as a symbol, as WinDbg does.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from kdshell.errors import MemoryNotPresent
from kdshell.symbols.types import wildcard

if TYPE_CHECKING:
    from kdshell.dumpfile.triage import TriageDump

KERNEL_IMAGES = {"ntoskrnl.exe", "ntkrnlmp.exe", "ntkrnlpa.exe", "ntkrpamp.exe", "ntkrla57.exe"}
HAL_IMAGES = {"hal.dll", "halacpi.dll", "halmacpi.dll", "halaacpi.dll", "halapic.dll", "halmps.dll",
              "halsp.dll", "halx86.dll"}
MAX_MODULES = 4096  # a longer loader list is a loop or garbage
MAX_NAME_BYTES = 1024
UNLOADED_SLOTS = 50  # MI_UNLOADED_DRIVERS in MmUnloadedDrivers


class Bytes(Protocol):
    """Virtual memory as read_unicode_string reads it: `read(address, size)`."""

    def read(self, address: int, size: int, /) -> bytes: ...


class Memory(Bytes, Protocol):
    """Virtual memory as the list walks read it (kdshell.memory.virtual.VirtualMemory, or the
    resolver's overlay of image files on it)."""

    def read_pointer(self, address: int, pointer_size: int | None = None, /) -> int: ...

    def read_int(self, address: int, size: int, /) -> int: ...


@dataclass
class Module:
    base: int
    size: int
    path: str  # FullDllName (\SystemRoot\system32\ntoskrnl.exe) or the triage driver name
    timestamp: int | None = None
    checksum: int | None = None
    name: str = ""  # WinDbg's module name, set by assign_names
    entry: int | None = None  # address of the loader entry (PsLoadedModuleList walks)
    # symbol state, kept by the resolver
    state: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def image_name(self) -> str:
        """The file name: `ntoskrnl.exe`."""
        return self.path.replace("/", "\\").rsplit("\\", 1)[-1]

    def contains(self, address: int) -> bool:
        return self.base <= address < self.base + self.size


def image_file_names(module: Module) -> list[str]:
    """The names a module's image file may have in a symbol store, the listed one first. Every
    x64 kernel (ntkrnlmp.exe as linked) is installed, loaded and stored as ntoskrnl.exe, the x86
    PAE one as ntkrnlpa.exe; a module added by hand may be named just `nt` or `hal`."""
    listed = module.image_name
    low = listed.lower()
    names = [listed] if "." in listed else []
    if module.name == "nt" or low in KERNEL_IMAGES or low == "nt":
        names += ["ntkrnlpa.exe"] if low in ("ntkrpamp.exe", "ntkrnlpa.exe") else []
        names.append("ntoskrnl.exe")
    elif module.name == "hal" or low in HAL_IMAGES or low == "hal":
        names.append("hal.dll")
    unique: dict[str, str] = {}
    for name in names:
        unique.setdefault(name.lower(), name)
    return list(unique.values()) or [listed]


def image_name_as_linked(module: Module, is64: bool) -> str:
    """The image name `lm n` prints: the file name, except that the 64-bit kernel, loaded from
    ntoskrnl.exe, is named as linked (ntkrnlmp.exe), as WinDbg names it (windbg.md: IMAGE_NAME)."""
    listed = module.image_name
    if is64 and module.name == "nt" and listed.lower() == "ntoskrnl.exe":
        return "ntkrnlmp.exe"
    return listed


def in_user_space(address: int, is64: bool) -> bool:
    """Below the kernel's half of the address space (lm's `u`; `k` is the rest)."""
    return address < (0x8000_0000_0000_0000 if is64 else 0x8000_0000)


@dataclass
class UnloadedModule:
    name: str
    start: int
    end: int
    time: int | None = None  # FILETIME of the unload, when known


def _stem(image_name: str) -> str:
    return image_name.rsplit(".", 1)[0] if "." in image_name else image_name


def assign_names(modules: list[Module]) -> None:
    """Give every module its WinDbg name, in load order (so the first `nt` is the kernel)."""
    taken: set[str] = set()
    for m in modules:
        image = m.image_name.lower()
        if image in KERNEL_IMAGES:
            name = "nt"
        elif image in HAL_IMAGES:
            name = "hal"
        else:
            name = _stem(m.image_name) or "Unknown_Module"
        if name.lower() in taken:
            name = f"{name}_{m.base:x}"
        taken.add(name.lower())
        m.name = name


class ModuleList:
    """Loaded modules (load order kept) with lookup by address and by name."""

    def __init__(self, modules: list[Module], unloaded: list[UnloadedModule] | None = None,
                 source: str = "", warnings: list[str] | None = None) -> None:
        self.modules = modules
        self.unloaded = unloaded or []
        self.source = source  # "PsLoadedModuleList", "triage driver list", ...
        self.warnings = warnings or []
        assign_names(modules)
        self._sorted = sorted((m for m in modules if m.size), key=lambda m: m.base)
        self._starts = [m.base for m in self._sorted]
        self._by_name = {m.name.lower(): m for m in modules}

    def __iter__(self) -> Iterator[Module]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)

    def by_address(self, address: int) -> Module | None:
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0 and self._sorted[i].contains(address):
            return self._sorted[i]
        return None

    def next_start(self, address: int) -> int | None:
        """The base of the first module above `address` (None when none is)."""
        i = bisect.bisect_right(self._starts, address)
        return self._starts[i] if i < len(self._starts) else None

    def by_name(self, name: str) -> Module | None:
        """By module name (`nt`, `amdppm`), or by image file name (`amdppm.sys`)."""
        m = self._by_name.get(name.lower())
        if m is not None:
            return m
        for m in self.modules:
            if m.image_name.lower() == name.lower():
                return m
        return None

    def match(self, pattern: str) -> list[Module]:
        """Modules whose name matches a WinDbg wildcard pattern (`*`, `?`), case-insensitively."""
        rx = wildcard(pattern)  # the one matcher x, lm M and the type commands use
        return [m for m in self.modules if rx.fullmatch(m.name)]

    @property
    def sorted(self) -> list[Module]:
        """By base address, as `lm` prints them."""
        return sorted(self.modules, key=lambda m: m.base)

    @property
    def kernel(self) -> Module | None:
        return self._by_name.get("nt")


# -- reading the lists --------------------------------------------------------------------------
def read_unicode_string(memory: Bytes, address: int, is64: bool) -> str | None:
    """A UNICODE_STRING at `address`; None when it (or its buffer) is not in the dump."""
    try:
        head = memory.read(address, 16 if is64 else 8)
    except MemoryNotPresent:
        return None
    length = int.from_bytes(head[0:2], "little")
    buffer = int.from_bytes(head[8:16], "little") if is64 else int.from_bytes(head[4:8], "little")
    if length == 0:
        return ""
    if not buffer or length > MAX_NAME_BYTES:
        return None
    try:
        raw = memory.read(buffer, length & ~1)
    except MemoryNotPresent:
        return None
    return raw.decode("utf-16-le", "replace")


def walk_loaded_modules(memory: Memory, head: int, layout: dict[str, int],
                        is64: bool) -> tuple[list[Module], list[str]]:
    """Walk PsLoadedModuleList from its head: (modules, warnings). `layout` gives the
    _KLDR_DATA_TABLE_ENTRY offsets (DllBase, SizeOfImage, FullDllName, BaseDllName, and
    optionally CheckSum, TimeDateStamp)."""
    psize = 8 if is64 else 4
    modules: list[Module] = []
    warnings: list[str] = []
    seen = {head}
    try:
        entry = memory.read_pointer(head, psize)
    except MemoryNotPresent:
        return [], [f"PsLoadedModuleList at {head:#x} is not in the dump"]
    while entry != head:
        if entry in seen or len(modules) >= MAX_MODULES:
            warnings.append(f"The loaded module list loops at {entry:#x}; stopped after {len(modules)} modules")
            break
        seen.add(entry)
        try:
            base = memory.read_pointer(entry + layout["DllBase"], psize)
            size = memory.read_int(entry + layout["SizeOfImage"], 4)
            nxt = memory.read_pointer(entry, psize)
        except MemoryNotPresent:
            warnings.append(f"The loaded module list entry at {entry:#x} is not in the dump; the list stops there")
            break
        path = read_unicode_string(memory, entry + layout["FullDllName"], is64)
        if not path:
            path = read_unicode_string(memory, entry + layout["BaseDllName"], is64) or ""
        if not path:
            path = f"Unknown_Module_{base:x}"
        stamp = _optional_u32(memory, entry, layout.get("TimeDateStamp"))
        checksum = _optional_u32(memory, entry, layout.get("CheckSum"))
        modules.append(Module(base, size, path, stamp, checksum, entry=entry))
        entry = nxt
    return modules, warnings


def _optional_u32(memory: Memory, entry: int, offset: int | None) -> int | None:
    if offset is None:
        return None
    try:
        return memory.read_int(entry + offset, 4)
    except MemoryNotPresent:
        return None


def read_unloaded_modules(memory: Memory, pointer_va: int, last_va: int | None,
                          is64: bool) -> list[UnloadedModule]:
    """MmUnloadedDrivers: `pointer_va` is the address of the pointer to the array of 50
    MI_UNLOADED_DRIVERS {UNICODE_STRING Name; PVOID Start, End; LARGE_INTEGER CurrentTime};
    MmLastUnloadedDriver (a ULONG at `last_va`) is the next slot to fill. Newest first."""
    psize = 8 if is64 else 4
    esize = 0x28 if is64 else 0x18
    try:
        array = memory.read_pointer(pointer_va, psize)
    except MemoryNotPresent:
        return []
    if not array:
        return []
    last = UNLOADED_SLOTS
    if last_va:
        try:
            last = memory.read_int(last_va, 4)
        except MemoryNotPresent:
            pass
    order = [(last - 1 - i) % UNLOADED_SLOTS for i in range(UNLOADED_SLOTS)] if last <= UNLOADED_SLOTS \
        else list(range(UNLOADED_SLOTS))
    out = []
    for index in order:
        at = array + index * esize
        try:
            raw = memory.read(at, esize)
        except MemoryNotPresent:
            continue
        ustr = 16 if is64 else 8
        start = int.from_bytes(raw[ustr : ustr + psize], "little")
        end = int.from_bytes(raw[ustr + psize : ustr + 2 * psize], "little")
        when = int.from_bytes(raw[ustr + 2 * psize : ustr + 2 * psize + 8], "little")
        if not start and not end:
            continue
        name = read_unicode_string(memory, at, is64)
        if not name or end <= start:  # unreadable, or not a driver's record (tests/test_hostile.py:
            continue  # a KDBG whose MmUnloadedDrivers points at the KDBG itself)
        out.append(UnloadedModule(name, start, end, when))
    return out


def modules_from_triage(triage: TriageDump) -> ModuleList:
    modules = [Module(d.base, d.size, d.name, d.timestamp, d.checksum) for d in triage.drivers]
    unloaded = [UnloadedModule(u.name, u.start, u.end) for u in triage.unloaded]
    return ModuleList(modules, unloaded, "triage driver list")
