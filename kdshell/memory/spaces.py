"""The dump's address spaces: one part of the session, built from the dump alone.

A complete or kernel dump's virtual memory is its physical pages seen through page tables: the
paging mode (x64 4/5-level, x86 PAE or not, ARM64), the software-PTE format of the kernel, and one
translated space per DirectoryTableBase (the crashing context's first; `.process` switches).
A small dump has one space: its saved ranges.

    spaces = AddressSpaces(dump)
    spaces.settle_pte_format(l1tf_bit)   # once the KDBG says which bit L1TF sets (19H1+)
    spaces.current.read(va, n)           # the current space (None: the dump has no memory)
    spaces.set_dtb(process_dirbase)      # .process
"""
from __future__ import annotations

from typing import Any

from kdshell.dumpfile.header import MACHINE_AMD64, MACHINE_ARM64, MACHINE_I386
from kdshell.errors import KdError
from kdshell.memory import paging as _paging
from kdshell.memory.pte import PteFormat
from kdshell.memory.virtual import PhysicalView, SavedRangesMemory, TranslatedMemory, VirtualMemory

MAX_SPACES = 64  # address spaces kept (each has its own translation cache)


class AddressSpaces:
    def __init__(self, dump: Any):
        self.dump = dump
        h = dump.header
        self.pages: _paging.PageCache | None = _paging.PageCache(dump.physical) if dump.physical is not None else None
        self.mode: _paging.PagingMode | None = self._guess_mode()
        self.l1tf_bit: int | None = None
        self.pte_format = PteFormat.for_kernel(self.mode.pte_mode if self.mode else "x64", h.build)
        self._spaces: dict[int, TranslatedMemory] = {}
        self.saved: SavedRangesMemory | None = None
        self.current: VirtualMemory | None = None
        if dump.triage is not None:
            self.saved = SavedRangesMemory(dump.triage.memory, 8 if dump.is64 else 4)
            self.current = self.saved
        elif self.mode is not None:
            self.current = self.space(h.directory_table_base)

    def _guess_mode(self) -> _paging.PagingMode | None:
        d, h = self.dump, self.dump.header
        if self.pages is None:
            return None
        if h.machine == MACHINE_AMD64:
            levels = _paging.guess_x64_levels(self.pages, h.directory_table_base, h.kd_debugger_data_block)
            return _paging.X64_5 if levels == 5 else _paging.X64_4
        if h.machine == MACHINE_I386 and not d.is64:
            return _paging.PAE if h.pae_enabled else _paging.X86
        if h.machine == MACHINE_ARM64 and d.is64:
            return _paging.ARM64  # DirectoryTableBase is the TTBR
        return None

    def settle_pte_format(self, l1tf_bit: int | None) -> None:
        """The kernel's software-PTE format, once the KDBG's L1tfHighPhysicalBitIndex is known
        (None: not known, the build's default); every space's translation cache starts over."""
        self.l1tf_bit = l1tf_bit
        fmt = PteFormat.for_kernel(self.mode.pte_mode if self.mode else "x64", self.dump.header.build, l1tf_bit)
        if fmt != self.pte_format:
            self.pte_format = fmt
            for s in self._spaces.values():
                s.paging.fmt = fmt
                s.paging.flush()

    def space(self, dtb: int) -> TranslatedMemory:
        """The virtual memory seen through a DirectoryTableBase (a process's DirBase)."""
        if self.mode is None or self.pages is None:
            raise KdError("This dump has no page tables (a small memory dump keeps only saved ranges)")
        key = dtb & self.mode.dtb_mask
        space = self._spaces.get(key)
        if space is None:
            if len(self._spaces) >= MAX_SPACES:
                self._spaces = {k: v for k, v in self._spaces.items() if v is self.current}
            space = TranslatedMemory(self.pages, _paging.Paging(self.pages, key, self.mode, self.pte_format))
            self._spaces[key] = space
        return space

    def set_dtb(self, dtb: int) -> VirtualMemory:
        """Make `dtb` the current address space (for `.process`); its translation cache starts empty."""
        space = self.space(dtb)
        if self.current is not space:
            space.paging.flush()
        self.current = space
        return space

    def set_mode(self, mode: _paging.PagingMode) -> None:
        """Use another paging mode (e.g. 5-level once CR4.LA57 is read from the KPRCB): every
        address space is rebuilt, the crashing context's is current again."""
        self.mode = mode
        self.pte_format = PteFormat.for_kernel(mode.pte_mode, self.dump.header.build, self.l1tf_bit)
        self._spaces.clear()
        self.current = self.space(self.dump.header.directory_table_base)

    @property
    def dtb(self) -> int | None:
        return self.current.dtb if isinstance(self.current, TranslatedMemory) else None

    @property
    def physical(self) -> PhysicalView | None:
        return PhysicalView(self.pages) if self.pages is not None else None
