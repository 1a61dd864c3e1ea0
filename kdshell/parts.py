"""The session's parts, and the one place that builds them in order.

Each part is given what it reads with, never the session:

    spaces    the dump's address spaces (kdshell.memory.spaces)       <- the dump
    kdbg      the KDBG block, plain or decoded (kdshell.kernel.kdbg)  <- the first address space
    copies    a small dump's KPRCB/ETHREAD/EPROCESS copies, placed in its saved ranges
    symbols   modules, images, PDBs (kdshell.symbols.resolver)        <- memory, KernelFacts below
    offsets   the kernel's structure offsets (kdshell.kernel.offsets) <- nt's PDB types, the KDBG
    kernel    processors, processes, threads (kdshell.kernel.state)  <- memory, offsets, KDBG, Selection
    context   the register context and stack walker (kdshell.stack.context) <- kernel, modules, Selection

Circularity, and how it is cut: an encoded KDBG (Windows 8+ may store it so) is decoded with
keys from nt's PDB, which is found through the module list, which the KDBG locates. The module
list is read with the *plain* KDBG (or, when there is none, the dump header's PsLoadedModuleList,
which the crash code writes apart from the KDBG); only the unloaded-module list and the kernel
layer ask for the decoded one (tests/test_kernel_objects.py::test_encoded_kdbg_*).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kdshell.errors import KdError
from kdshell.kernel.kdbg import Kdbg, KdbgSource
from kdshell.kernel.offsets import KernelOffsets, builtin_definitions, kdbg_symbols, loader_entry_layout
from kdshell.kernel.prcb import TriageCopies
from kdshell.kernel.state import KernelState, Selection, is_arm64, map_triage_copies
from kdshell.memory.spaces import AddressSpaces
from kdshell.stack.context import ContextState
from kdshell.symbols.resolver import Symbols
from kdshell.symbols.types import StaticTypes

L1TF_FIRST_BUILD = 18362  # KDBG.L1tfHighPhysicalBitIndex exists from 19H1 on


def builtin_types(build: int, is64: bool, arm64: bool = False) -> StaticTypes | None:
    """The built-in offsets table's structures as a TypeSource for `dt` (the fields it knows),
    for nt without a PDB."""
    found = builtin_definitions(build, is64, arm64)
    if found is None:
        return None
    defs, entry = found
    types = StaticTypes(defs)
    types.origin = entry.origin  # type: ignore[attr-defined]
    types.entry = entry  # type: ignore[attr-defined]
    return types


class KernelFactsForSymbols:
    """kdshell.symbols.resolver.KernelFacts from the dump header, the KDBG and the offsets table."""

    def __init__(self, dump: Any, kdbg: KdbgSource, decoded: Callable[[], Kdbg | None]):
        self.dump = dump
        self.kdbg = kdbg
        self.decoded = decoded

    def module_list_heads(self) -> list[int]:
        plain = self.kdbg.plain
        heads = ((plain.get("PsLoadedModuleList") if plain is not None else None),
                 self.dump.header.ps_loaded_module_list)
        return [h for h in heads if h]

    def unloaded_list(self) -> tuple[int, int] | None:
        block = self.decoded()
        if block is None or not block.get("MmUnloadedDrivers"):
            return None
        return block.get("MmUnloadedDrivers") or 0, block.get("MmLastUnloadedDriver") or 0

    def loader_layout(self) -> dict[str, int]:
        return loader_entry_layout(self.dump.header.build, self.dump.is64)

    def fallback_types(self) -> StaticTypes | None:
        return builtin_types(self.dump.header.build, self.dump.is64, is_arm64(self.dump))

    def kernel_names(self, base: int, end: int) -> list[tuple[str, int]]:
        return kdbg_symbols(self.kdbg.plain, self.dump.header.kd_debugger_data_block, base, end)


class OffsetsSource:
    """KernelOffsets from nt's PDB types, the KDBG and the built-in table; built again when the
    module list or the symbol path changes (.reload, .sympath)."""

    def __init__(self, dump: Any, symbols: Symbols, kdbg: Callable[[], Kdbg | None]):
        self.dump = dump
        self.symbols = symbols
        self.kdbg = kdbg
        self._key: tuple[int, str] | None = None
        self._offsets: KernelOffsets | None = None

    def __call__(self) -> KernelOffsets:
        key = self.symbols.generation()
        if self._offsets is None or key != self._key:
            types = self.symbols.kernel_pdb_types()
            self._offsets = KernelOffsets(self.dump.header.build, self.dump.is64, kdbg=self.kdbg(), types=types,
                                          arm64=is_arm64(self.dump))
            self._key = key
            if types is not None:
                self.symbols.log("DBGHELP: kernel structure offsets from the PDB")
            else:
                entry = self._offsets.entry
                table_text = entry.origin if entry is not None else "no built-in table for this build"
                if entry is not None and entry.missing:
                    table_text += f" ({entry.missing})"
                self.symbols.log(f"DBGHELP: kernel structure offsets from the KDBG, then {table_text}")
        return self._offsets


@dataclass
class Parts:
    spaces: AddressSpaces
    kdbg: KdbgSource
    triage_copies: TriageCopies | None
    symbols: Symbols
    offsets: OffsetsSource
    selection: Selection
    kernel: KernelState
    context: ContextState

    def decoded_kdbg(self) -> Kdbg | None:
        return self.kdbg.block(self.symbols.resolve)


def assemble(dump: Any, out: Any, *, symbol_path: str, image_path: str, progress: Any,
             offline: bool = False) -> Parts:
    """Build the session's parts in order (see the module note)."""
    h = dump.header
    spaces = AddressSpaces(dump)
    kdbg = KdbgSource(spaces.current, h.kd_debugger_data_block, dump.is64)
    if kdbg.plain is not None and h.build >= L1TF_FIRST_BUILD:
        spaces.settle_pte_format(kdbg.plain.get("L1tfHighPhysicalBitIndex"))
    copies = None
    if spaces.saved is not None:
        try:
            copies = map_triage_copies(dump, spaces.saved, kdbg.plain)
        except KdError:
            copies = None

    def decoded() -> Kdbg | None:
        return kdbg.block(symbols.resolve)

    symbols = Symbols(dump, lambda: spaces.current, KernelFactsForSymbols(dump, kdbg, decoded), out,
                      symbol_path=symbol_path, image_path=image_path, progress=progress, offline=offline)
    offsets = OffsetsSource(dump, symbols, decoded)
    selection = Selection()
    kernel = KernelState(dump, symbols.memory, offsets, decoded, symbols.resolve, selection,
                         spaces.set_dtb, copies)
    context = ContextState(dump, symbols.memory, offsets, kernel, symbols.unwind_modules(), selection,
                           lambda: spaces.dtb)
    return Parts(spaces, kdbg, copies, symbols, offsets, selection, kernel, context)
