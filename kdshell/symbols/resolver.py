"""Addresses <-> names: the session's symbol state.

`Symbols` owns the module list, finds each module's image and PDB (lazily: a module is
"deferred" until something needs its symbols), and answers the session's hooks:

    symbols.resolve("nt!KeBugCheckEx")  -> address | None      (session.resolve_symbol)
    symbols.symbolize(0xfffff8048b58334c) -> ("amdppm!WriteIoMemRawEx", 0x70) | None
                                                               (session.symbolize)
    symbols.nearest(address)             -> what `ln` prints
    symbols.search("nt!KeBugCheck*")     -> what `x` prints

Each module gets a symbol table from, in order: its PDB (found by the image's RSDS record along
the symbol path), else its exports (an image from the dump, the image path or the symbol store),
else nothing (`amdppm+0x334c`). Images found as files are also lent to memory reads: the
session's memory is wrapped in an `ImageOverlay`, so `u`, `dps` and the unwinder see code bytes
that a small dump (or a paged-out page) does not have.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.expr import Registers
from kdshell.symbols.overlay import ImageOverlay, UnwindModules
from kdshell.symbols.modules import (
    Module,
    ModuleList,
    UnloadedModule,
    image_file_names,
    modules_from_triage,
    read_unloaded_modules,
    walk_loaded_modules,
)
from kdshell.symbols.pe import CodeView, PeFormatError, PeImage
from kdshell.symbols.store import DownloadBudget, SymbolStore
from kdshell.symbols.types import TypeSource, wildcard

if TYPE_CHECKING:
    from kdshell.symbols.pdb import PdbFile
    from kdshell.symbols.pdb import Symbol as PdbSymbol

DEFERRED, PDB, EXPORTS, NONE = "deferred", "pdb symbols", "export symbols", "no symbols"
KDBG = "kdbg symbols"  # nt without PDB or exports: the kernel variables the KDBG points to
FUNCTION, DATA = "function", "data"


@dataclass(frozen=True)
class Symbol:
    name: str
    rva: int
    kind: str = FUNCTION  # function / data / public ...
    size: int = 0


class SymbolTable:
    """A module's symbols sorted by address, with case-insensitive lookup by name."""

    def __init__(self, kind: str, path: str | None, symbols: Iterable[Symbol], types: TypeSource | None = None,
                 pdb: PdbFile | None = None) -> None:
        self.kind = kind  # PDB or EXPORTS
        self.path = path
        self.types = types  # a TypeSource (PDB types), or None
        self.pdb = pdb
        seen: set[tuple[int, str]] = set()
        entries: list[Symbol] = []
        for s in symbols:
            key = (s.rva, s.name)
            if s.name and key not in seen:
                seen.add(key)
                entries.append(s)
        # functions first among symbols at the same address: they are what `u` labels
        entries.sort(key=lambda s: (s.rva, s.kind != FUNCTION, s.name))
        self.entries = entries
        self._rvas = [s.rva for s in entries]
        self._by_name: dict[str, Symbol] = {}
        for s in entries:
            self._by_name.setdefault(s.name.lower(), s)

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, name: str) -> Symbol | None:
        return self._by_name.get(name.lower())

    def at(self, rva: int) -> Symbol | None:
        """The nearest symbol at or before `rva` (of several at that address, the first: a function)."""
        i = bisect.bisect_right(self._rvas, rva) - 1
        if i < 0:
            return None
        return self.entries[bisect.bisect_left(self._rvas, self._rvas[i])]

    def exact(self, rva: int) -> list[Symbol]:
        i = bisect.bisect_left(self._rvas, rva)
        out = []
        while i < len(self.entries) and self.entries[i].rva == rva:
            out.append(self.entries[i])
            i += 1
        return out

    def after(self, rva: int) -> Symbol | None:
        i = bisect.bisect_right(self._rvas, rva)
        return self.entries[i] if i < len(self.entries) else None

    def match(self, pattern: str) -> list[Symbol]:
        rx = wildcard(pattern)
        return [s for s in self.entries if rx.fullmatch(s.name)]


def export_table(image: PeImage) -> SymbolTable:
    symbols = []
    for e in image.exports:
        if e.forwarder is not None:
            continue
        section = image.section_at(e.rva)
        kind = FUNCTION if section is None or section.executable else DATA
        symbols.append(Symbol(e.name or f"Ordinal{e.ordinal}", e.rva, kind))
    return SymbolTable(EXPORTS, image.path, symbols)


class PdbSymbols:
    """A module's symbols from its PDB (kdshell.symbols.pdb.PdbFile), with SymbolTable's methods."""

    kind = PDB

    def __init__(self, pdb: PdbFile, path: str) -> None:
        self.pdb = pdb
        self.path = path
        self.types = pdb  # PdbFile is a TypeSource
        self._all_rvas: list[int] | None = None

    @staticmethod
    def _symbol(s: PdbSymbol) -> Symbol:
        kind = s.kind
        if kind == "public":  # S_PUB32 flags: 1 code, 2 function
            kind = FUNCTION if s.flags & 3 else DATA
        elif kind == "label":
            kind = FUNCTION
        return Symbol(s.display, s.rva, kind, s.size or 0)

    def __len__(self) -> int:
        return len(self.pdb.all_symbols)

    @property
    def private(self) -> bool:
        """Private symbols: module functions/data with type information (a public PDB has none)."""
        if not hasattr(self, "_private"):
            self._private = any(s.module >= 0 and s.type_index for s in self.pdb.all_symbols)
        return self._private

    def lookup(self, name: str) -> Symbol | None:
        s = self.pdb.symbol(name)
        return self._symbol(s) if s is not None else None

    def at(self, rva: int) -> Symbol | None:
        hit = self.pdb.lookup(rva)
        return self._symbol(hit[0]) if hit is not None else None

    def after(self, rva: int) -> Symbol | None:
        nxt = self.pdb.neighbors(rva)[1]
        return self._symbol(nxt) if nxt is not None else None

    def exact(self, rva: int) -> list[Symbol]:
        all_ = self.pdb.all_symbols
        if self._all_rvas is None:
            self._all_rvas = [s.rva for s in all_]
        i = bisect.bisect_left(self._all_rvas, rva)
        out = []
        while i < len(all_) and all_[i].rva == rva:
            out.append(self._symbol(all_[i]))
            i += 1
        return out

    def match(self, pattern: str) -> list[Symbol]:
        return [self._symbol(s) for s in self.pdb.symbols(pattern)]


def _open_pdb(path: str) -> PdbFile:
    from kdshell.symbols.pdb import PdbFile

    return PdbFile(path)


def _same_pdb(pdb: PdbFile, cv: CodeView) -> bool:
    """The PDB is the one the image's RSDS/NB10 record names (GUID or signature, and age)."""
    if cv.guid is not None:
        if pdb.guid is None or pdb.guid.hex != cv.guid.hex:
            return False
    elif getattr(pdb, "signature", None) != cv.signature:
        return False
    return pdb.age == cv.age


# A module's symbol table: from its PDB, else its exports (or the KDBG's names for nt).
Table = SymbolTable | PdbSymbols


class KernelFacts(Protocol):
    """What the symbols layer needs to know of the kernel, from the layer above it (the
    session's assembly, kdshell.parts): where the module lists are and how their entries are
    laid out, nt's structures when its PDB is missing, and the names the KDBG gives nt."""

    def module_list_heads(self) -> list[int]: ...

    def unloaded_list(self) -> tuple[int, int] | None: ...  # MmUnloadedDrivers, MmLastUnloadedDriver

    def loader_layout(self) -> dict[str, int]: ...

    def fallback_types(self) -> Any: ...

    def kernel_names(self, base: int, end: int) -> list[tuple[str, int]]: ...


class Symbols:
    """The session's modules and symbols: the dump's module list, images, PDBs and the symbol
    path. `memory()` gives the dump's current virtual memory (None when it has none)."""

    def __init__(self, dump: Any, memory: Callable[[], Any], kernel: KernelFacts, out: Any, *,
                 symbol_path: str = "", image_path: str = "", progress: Any = None,
                 offline: bool = False):
        self.dump = dump
        self._memory = memory
        self.kernel = kernel
        self.out = out
        self.progress = progress
        self._register_names = Registers(dump.registers(), dump.is64)
        self._symbol_path = symbol_path or ""
        self._image_path = image_path or ""
        self.offline = offline  # no downloads, whatever the path says (--offline)
        self.noisy = False
        self._modules: ModuleList | None = None
        self._store: SymbolStore | None = None
        self._image_store: SymbolStore | None = None
        self._failed_servers: set[str] = set()
        self._download_budget = DownloadBudget()
        self._overlay: ImageOverlay | None = None
        self.missing_noted: set[str] = set()  # modules whose missing symbols were pointed out (k, !analyze)

    # -- paths -------------------------------------------------------------------------------
    @property
    def symbol_path(self) -> str:
        return self._symbol_path

    @symbol_path.setter
    def symbol_path(self, text: str) -> None:
        self._symbol_path = text or ""
        self._store = None
        self._image_store = None

    @property
    def image_path(self) -> str:
        return self._image_path

    @image_path.setter
    def image_path(self, text: str) -> None:
        self._image_path = text or ""
        self._image_store = None

    def log(self, text: str) -> None:
        """A line for `!sym noisy`."""
        if self.noisy:
            self.out.line(text)

    def _warn(self, text: str) -> None:
        self.out.warn(text)

    def _new_store(self, text: str) -> SymbolStore:
        store = SymbolStore(text, log=self.log, warn=self._warn, progress=self.progress, offline=self.offline)
        store.dead_servers = self._failed_servers  # one warning per server for the whole session
        store.budget = self._download_budget  # the session's seconds of downloading, across paths
        return store

    @property
    def store(self) -> SymbolStore:
        if self._store is None:
            self._store = self._new_store(self._symbol_path)
        return self._store

    @property
    def image_store(self) -> SymbolStore:
        """Images are looked for along the image path, then the symbol path."""
        if self._image_store is None:
            text = ";".join(p for p in (self._image_path, self._symbol_path) if p)
            self._image_store = self._new_store(text)
        return self._image_store

    # -- the module list ---------------------------------------------------------------------
    @property
    def modules(self) -> ModuleList:
        if self._modules is None:
            self._modules = self._read_modules()
            # Set first: reading the unloaded list may decode the KDBG, which looks up nt's symbols.
            self._modules.unloaded = self._read_unloaded()
        return self._modules

    def reload(self) -> ModuleList:
        """Forget every module and its symbols; the list is read again on next use."""
        self._modules = None
        return self.modules

    def generation(self) -> tuple[int, str]:
        """Changes when the module list or the symbol path does (.reload, .sympath)."""
        return id(self.modules), self._symbol_path

    def raw_memory(self) -> Any:
        """The dump's own virtual memory, without image files behind it."""
        return self._memory()

    def memory(self) -> Any:
        """The dump's virtual memory with the modules' image files behind it (ImageOverlay)."""
        raw = self._memory()
        if raw is None:
            return None
        if self._overlay is None or self._overlay.inner is not raw:
            self._overlay = ImageOverlay(raw, self)
        return self._overlay

    def _read_modules(self) -> ModuleList:
        d = self.dump
        if d.triage is not None:
            return modules_from_triage(d.triage)
        memory = self.raw_memory()
        if memory is None:
            return ModuleList([], [], "none", ["This dump has no memory kdshell can read"])
        # The KDBG's head first; the dump header's when the KDBG's is damaged (an empty or
        # unreadable list), as the header is written by the crash code, apart from the KDBG.
        heads = self.kernel.module_list_heads()
        if not heads:
            return ModuleList([], [], "none", ["The dump does not say where PsLoadedModuleList is"])
        layout = self.kernel.loader_layout()
        modules, warnings = walk_loaded_modules(memory, heads[0], layout, d.is64)
        if not modules and len(heads) > 1 and heads[1] != heads[0]:
            from_header, header_warnings = walk_loaded_modules(memory, heads[1], layout, d.is64)
            if from_header:
                modules = from_header
                warnings = [f"The KDBG's PsLoadedModuleList ({heads[0]:#x}) lists no modules; using the dump "
                            f"header's ({heads[1]:#x})"] + header_warnings
        return ModuleList(modules, [], "PsLoadedModuleList", warnings)

    def _read_unloaded(self) -> list[UnloadedModule]:
        if self.dump.triage is not None:
            return self._modules.unloaded if self._modules is not None else []
        memory = self.raw_memory()
        where = self.kernel.unloaded_list() if memory is not None else None
        if where is None:
            return []
        return read_unloaded_modules(memory, where[0], where[1], self.dump.is64)

    def add_module(self, image_name: str, base: int, size: int, timestamp: int | None = None) -> Module:
        """`.reload name=base,size[,timestamp]`: a module the dump's list lacks (or one moved)."""
        current = self.modules
        keep = [m for m in current.modules
                if m.image_name.lower() != image_name.lower() and not (m.base < base + size and base < m.end)]
        for m in keep:
            m.name = ""
        module = Module(base, size, image_name, timestamp)
        self._modules = ModuleList(keep + [module], current.unloaded, current.source, current.warnings)
        return module

    def retry_failed(self) -> None:
        """After a path change: modules whose image or symbols were not found are looked for again
        (no table, the KDBG's names only, or exports where a PDB was missing)."""
        self.missing_noted.clear()
        if self._modules is None:
            return
        for m in self._modules:
            st = m.state
            table = st.get("table", DEFERRED)
            if table is None or (table is not DEFERRED and (table.kind == KDBG or st.get("wanted_pdb"))):
                st.pop("table")
            if st.get("file_image", False) is None:
                st.pop("file_image")
            if st.get("image", False) is None:
                st.pop("image")
            if st.get("headers", False) is None:
                st.pop("headers")

    def types(self, module: Module) -> TypeSource | None:
        """The module's TypeSource: its PDB's types; for nt without a PDB, the built-in table."""
        table = self.table(module)
        if table is not None and getattr(table, "types", None) is not None:
            return table.types
        if module is self.modules.kernel:
            return self.kernel.fallback_types()
        return None

    def type_sources(self, module_name: str | None = None) -> list[tuple[str, TypeSource, str | None]]:
        """[(module name, TypeSource, origin note)] where types are looked for: the named
        module's, else nt's first and then every module whose symbols are loaded."""
        if module_name is not None:
            module = self.module(module_name)
            if module is None:
                return []
            modules = [module]
        else:
            kernel = self.modules.kernel
            modules = ([kernel] if kernel is not None else []) + [m for m, _ in self.loaded_tables()
                                                                  if m is not kernel]
        out: list[tuple[str, TypeSource, str | None]] = []
        for m in modules:
            source = self.types(m)
            if source is not None:
                out.append((m.name, source, getattr(source, "origin", None)))
        return out

    def module_at(self, address: int) -> Module | None:
        return self.modules.by_address(address)

    def kernel_pdb_types(self) -> Any:
        """nt's types from its PDB, or None (exports only, no PDB, no kernel)."""
        kernel = self.modules.kernel
        table = self.table(kernel) if kernel is not None else None
        return table.types if table is not None and table.kind == PDB else None

    def unwind_modules(self) -> UnwindModules:
        """The module lookup the stack walker takes (kdshell.stack.walk): `module_at(address)`
        gives `.base .size .name .image(rva, size)`, the image read through the session's
        memory (so image files lend what the dump lacks), and `.exception_directory`."""
        return UnwindModules(self)

    def module(self, name: str) -> Module | None:
        return self.modules.by_name(name)

    # -- images ------------------------------------------------------------------------------
    def image(self, module: Module) -> PeImage | None:
        """The module's PE image: its headers in the dump, else a file found by
        TimeDateStamp+SizeOfImage on the image path or the symbol path."""
        st = module.state
        if "image" not in st:
            st["image"] = None
            memory = self.raw_memory()
            if memory is not None:
                try:
                    img = PeImage.from_memory(memory, module.base)
                    img.exports  # noqa: B018 - exports must be readable to be of use
                    img.debug_entries  # noqa: B018
                    st["image"] = img
                    self.log(f"DBGHELP: {module.name} - image headers read from the dump")
                except (MemoryNotPresent, PeFormatError) as exc:
                    self.log(f"DBGHELP: {module.name} - image headers not usable in the dump ({exc})")
            if st["image"] is None:
                st["image"] = self.file_image(module)
            if st["image"] is not None and module.timestamp is None:
                module.timestamp = st["image"].timestamp
        return st["image"]

    def headers(self, module: Module) -> PeImage | None:
        """The module's PE headers (section table, directories): its image() when there is one,
        else the headers alone when the dump has them but not the export or debug directories
        that image() needs (a small dump keeps nt's first page, not its .edata)."""
        st = module.state
        if "headers" not in st:
            st["headers"] = self.image(module) or self._memory_headers(module)
        return st["headers"]

    def file_image(self, module: Module) -> PeImage | None:
        """The module's image file, mapped at its base (None when no path has it). Looked for by
        TimeDateStamp+SizeOfImage (the loader entry's or the small dump's driver list's, else the
        headers in the dump) under each name the file may have in a store (image_file_names)."""
        st = module.state
        if "file_image" not in st:
            st["file_image"] = None
            stamp = module.timestamp
            if stamp is None:
                stamp = self._memory_timestamp(module)
            if stamp is None or not module.size:
                self.log(f"DBGHELP: {module.name} - no TimeDateStamp, cannot look for its image")
                return None
            key = f"{stamp:08X}{module.size:x}"

            def same(path: str) -> bool:
                return _image_matches(path, stamp, module.size)

            names = image_file_names(module)
            path = None
            for name in names:
                path = self.image_store.find(name, key, verify=same)
                if path is not None:
                    break
            st["wanted_image"] = None if path else (names[0], key)  # kdshell.symbols.missing
            if path is None:
                self.log(f"DBGHELP: {' / '.join(names)} ({key}) - image not found")
                return None
            try:
                st["file_image"] = PeImage.from_file(path, module.base)
                st["image_file"] = path
                self.log(f"DBGHELP: {module.name} - mapped image {path}")
            except (OSError, PeFormatError) as exc:
                self.log(f"DBGHELP: {path} - {exc}")
        return st["file_image"]

    def _memory_headers(self, module: Module) -> PeImage | None:
        memory = self.raw_memory()
        if memory is None:
            return None
        try:
            return PeImage.from_memory(memory, module.base)
        except (MemoryNotPresent, PeFormatError):
            return None

    def _memory_timestamp(self, module: Module) -> int | None:
        headers = self._memory_headers(module)
        return headers.timestamp if headers is not None else None

    def executable(self, address: int) -> bool | None:
        """Does `address` lie in an executable section of its module (by the section table of
        the headers in the dump or of the image file)? None when no section table is known or
        the address is outside every module."""
        module = self.module_at(address)
        headers = self.headers(module) if module is not None else None
        if module is None or headers is None:
            return None
        return headers.executable(address - module.base)

    # -- symbol tables -----------------------------------------------------------------------
    def status(self, module: Module) -> str:
        table = module.state.get("table", DEFERRED)
        if table is DEFERRED:
            return DEFERRED
        return table.kind if table is not None else NONE

    def table(self, module: Module, load: bool = True) -> Table | None:
        """The module's symbols (loading them on first use unless load=False)."""
        table = module.state.get("table", DEFERRED)
        if table is DEFERRED:
            if not load:
                return None
            table = self._load_table(module)
            if module is self.modules.kernel and (table is None or isinstance(table, SymbolTable)
                                                  and table.kind == EXPORTS):
                table = self._with_kdbg_names(module, table)
            module.state["table"] = table
        return table

    def _with_kdbg_names(self, module: Module, table: SymbolTable | None) -> SymbolTable | None:
        """nt without a PDB: add the kernel variables the KDBG points to (PsLoadedModuleList...)."""
        found = self.kernel.kernel_names(module.base, module.end)
        if not found:
            return table
        extra = [Symbol(name, address - module.base, DATA) for name, address in found]
        self.log(f"DBGHELP: nt - {len(extra)} names from the KDBG")
        if table is None:
            return SymbolTable(KDBG, None, extra)
        return SymbolTable(table.kind, table.path, table.entries + [e for e in extra if table.lookup(e.name) is None])

    def _load_table(self, module: Module) -> Table | None:
        image = self.image(module)
        if image is not None:
            try:
                cv = image.codeview
            except MemoryNotPresent:
                cv = None
                # the debug directory is paged out: the image file has it
                file_image = self.file_image(module)
                if file_image is not None:
                    image = file_image
                    cv = file_image.codeview
            if cv is not None:
                table = self._pdb_table(module, cv)
                if table is not None:
                    return table
            try:
                if image.exports:
                    self.log(f"DBGHELP: {module.name} - export symbols")
                    return export_table(image)
            except MemoryNotPresent:
                file_image = self.file_image(module)
                if file_image is not None and file_image.exports:
                    return export_table(file_image)
        self.log(f"DBGHELP: {module.name} - no symbols loaded")
        return None

    def _pdb_table(self, module: Module, cv: CodeView) -> PdbSymbols | None:
        def same(path: str) -> bool:
            try:
                with _open_pdb(path) as candidate:
                    return _same_pdb(candidate, cv)
            except (KdError, OSError, ValueError) as exc:
                self.log(f"DBGHELP: {path} - {exc}")
                return False

        path = self.store.find(cv.pdb_name, cv.key, verify=same)
        module.state["wanted_pdb"] = None if path else (cv.pdb_name, cv.key)  # kdshell.symbols.missing
        if path is None:
            self.log(f"DBGHELP: {cv.pdb_name} ({cv.key}) - PDB not found")
            return None
        try:
            table = PdbSymbols(_open_pdb(path), path)
        except (KdError, OSError, ValueError) as exc:
            self._warn(f"*** ERROR: {path} cannot be read: {exc}")
            return None
        self.log(f"DBGHELP: {module.name} - private/public symbols from {path}")
        return table

    def open_files(self) -> list[str]:
        """The image files and PDBs loaded so far (never written: kdshell.outpath)."""
        files = []
        for m in self._modules or ():
            path = m.state.get("image_file")
            if isinstance(path, str):
                files.append(path)
            table = m.state.get("table")
            if isinstance(table, PdbSymbols):
                files.append(table.path)
        return files

    def loaded_tables(self) -> Iterator[tuple[Module, Table]]:
        for m in self.modules:
            t = m.state.get("table", DEFERRED)
            if t is not DEFERRED and t is not None:
                yield m, t

    # -- names -> addresses -------------------------------------------------------------------
    def resolve(self, name: str) -> int | None:
        """`nt!KeBugCheckEx`, `amdppm` (a module's base), `KeBugCheckEx` (searched in the
        modules whose symbols are loaded, then nt)."""
        if not name or name.startswith("@"):
            return None
        if "!" in name:
            mod_name, _, sym = name.partition("!")
            module = self.module(mod_name)
            if module is None or not sym:
                return None
            table = self.table(module)
            if table is None:
                return None
            s = table.lookup(sym)
            return module.base + s.rva if s is not None else None
        module = self.module(name)
        if module is not None:
            return module.base
        if self._is_register(name):
            return None
        for m, t in self.loaded_tables():
            s = t.lookup(name)
            if s is not None:
                return m.base + s.rva
        kernel = self.modules.kernel
        if kernel is not None:
            table = self.table(kernel)
            s = table.lookup(name) if table is not None else None
            if s is not None:
                return kernel.base + s.rva
        return None

    def _is_register(self, name: str) -> bool:
        return self._register_names.known(name)

    # -- addresses -> names -------------------------------------------------------------------
    def symbolize(self, address: int) -> tuple[str, int] | None:
        """`("amdppm!WriteIoMemRawEx", 0x70)`, or `("amdppm", 0x334c)` in a module without
        symbols (or without a true name for the address: see labels); None outside every
        module."""
        found = self.label(address)
        if found is None:
            return None
        module, s = found
        rva = address - module.base
        if s is not None:
            return f"{module.name}!{s.name}", rva - s.rva
        return module.name, rva

    def label(self, address: int) -> tuple[Module, Symbol | None] | None:
        """(module, the symbol that names `address`): the nearest at or before it that may
        (labels; of several at that address, the first that may), None without one; None
        outside every module. What symbolize, ln and a stack's call sites print."""
        module = self.module_at(address)
        if module is None:
            return None
        table = self.table(module)
        rva = address - module.base
        nearest = table.at(rva) if table is not None else None
        if nearest is None or self.labels(module, nearest, rva):
            return module, nearest
        assert table is not None
        return module, next((s for s in table.exact(nearest.rva) if self.labels(module, s, rva)), None)

    def labels(self, module: Module, symbol: Symbol, rva: int) -> bool:
        """May `symbol` (the nearest at or before module+rva) name that address? A code symbol
        (function, code public, export in an executable section) may. A data symbol (a data
        public, a KDBG variable) never names code: only an address in a section that is not
        executable, or, when no section table is known, the symbol's own bytes (its first
        byte when its size is unknown). `k` prints `module+0xOFFSET` for the same addresses."""
        if symbol.kind != DATA:
            return True
        code = self.executable(module.base + rva)
        if code is not None:
            return not code
        offset = rva - symbol.rva
        return offset < symbol.size if symbol.size else offset == 0

    def name_at(self, address: int) -> str | None:
        """`module!function+0x12` (or `module+0x1234`) for an address; None outside every module
        or when its symbols cannot be read."""
        try:
            found = self.symbolize(address)
        except KdError:
            return None
        if found is None:
            return None
        name, displacement = found
        return name + (f"+{displacement:#x}" if displacement else "")

    def nearest(self, address: int) -> tuple[Module, Symbol | None, Symbol | None, list[Symbol]] | None:
        """For ln: (module, previous Symbol|None, next Symbol|None, exact [Symbol]); None
        outside every module. The previous and exact symbols are the ones that may name the
        address (labels): a data name before a code address is no previous symbol."""
        found = self.label(address)
        if found is None:
            return None
        module, before = found
        table = self.table(module)
        if table is None:
            return module, None, None, []
        rva = address - module.base
        return module, before, table.after(rva), [s for s in table.exact(rva) if self.labels(module, s, rva)]

    def function_bounds(self, address: int) -> tuple[int, int] | None:
        """(start, end) addresses of the function holding `address`: from the PDB's procedure
        records, else the image's .pdata entry (x64); None when neither knows it."""
        module = self.module_at(address)
        if module is None:
            return None
        rva = address - module.base
        table = self.table(module)
        if table is not None and table.pdb is not None:
            found = table.pdb.function_bounds(rva)
            if found is not None:
                return module.base + found[0], module.base + found[1]
        image = self.image(module)
        if image is not None:
            try:
                f = image.runtime_function(rva)
            except (MemoryNotPresent, PeFormatError):
                f = None
            if f is not None:
                return module.base + f.begin, module.base + f.end
        return None

    def search(self, pattern: str) -> list[tuple[Module, Symbol]]:
        """`x` patterns: MODULE!SYMBOL, each side with * and ? wildcards."""
        mod_pat, _, sym_pat = pattern.partition("!") if "!" in pattern else ("*", "", pattern)
        out: list[tuple[Module, Symbol]] = []
        for m in self.modules.match(mod_pat or "*"):
            t = self.table(m)
            if t is None:
                continue
            out.extend((m, s) for s in t.match(sym_pat or "*"))
        return out

    # -- the overlay: image bytes where the dump has none -------------------------------------
    def fill(self, address: int, size: int) -> bytes | None:
        """Bytes of [address, address+size) from a module's image file, or None.

        In a small dump every part of the image is lent (WinDbg maps the image); in other dumps
        only the headers and read-only sections, whose bytes cannot have changed at run time."""
        module = self.module_at(address)
        if module is None or address + size > module.end:
            return None
        image = self.file_image(module)
        if image is None:
            return None
        rva = address - module.base
        if self.dump.triage is None:
            section = image.section_at(rva)
            if rva >= image.size_of_headers and (section is None or section.writable):
                return None
            if section is not None and rva + size > section.end:
                return None
        try:
            return image.read(rva, size)
        except MemoryNotPresent:
            return None


def _image_matches(path: str, stamp: int, size: int) -> bool:
    """The file's TimeDateStamp and SizeOfImage are the ones the dump recorded."""
    try:
        with open(path, "rb") as f:
            head = f.read(0x1000)
        img = PeImage(_HeadReader(head), 0)
    except (OSError, PeFormatError, MemoryNotPresent):
        return False
    return img.timestamp == stamp and img.size_of_image == size


class _HeadReader:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, rva: int, size: int) -> bytes:
        if rva + size > len(self.data):
            if rva < len(self.data):
                return self.data[rva:]
            raise MemoryNotPresent(rva, "beyond the header")
        return self.data[rva : rva + size]
