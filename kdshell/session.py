"""The Session: one loaded dump, its memory, the options and the current context.

Everything a command needs hangs off the session; nothing below this module knows about the
terminal. `kdshell.open(path)` gives a Session; `session.run("k; lm")` runs commands and
`session.capture("vertarget")` returns their text.
"""
from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from functools import cached_property

from kdshell import dispatch
from kdshell.dumpfile.dump import DumpFile, open_dump
from kdshell.dumpfile.header import MACHINE_AMD64, MACHINE_I386
from kdshell.errors import KdError, Quit
from kdshell.kernel.kdbg import Kdbg, is_encoded, keys_from_symbols, read_kdbg
from kdshell.kernel.state import KernelState, crashing_processor_number, map_triage_copies
from kdshell.memory import paging as _paging
from kdshell.memory.pte import PteFormat
from kdshell.memory.virtual import PhysicalView, SavedRangesMemory, TranslatedMemory, VirtualMemory
from kdshell.output import Output
from kdshell.stack.context import ContextState
from kdshell.stack.text import missing_page_lines
from kdshell.symbols.resolver import ImageOverlay, Symbols
from kdshell.target import version_lines


@dataclass
class Options:
    ignore_missing_pages: bool = False
    verbose: bool = False
    script_stop: bool = False  # `.scriptstop 1`: a script ends at its first failing command
    explain: bool = False  # `.explain on`: a note on reading each command's output


class Session:
    def __init__(
        self,
        dump: DumpFile,
        *,
        symbol_path: str | None = None,
        image_path: str | None = None,
        out: Output | None = None,
    ):
        dispatch.load_commands()
        self.dump = dump
        self.out = out or Output()
        self.options = Options()
        if symbol_path is None:  # as the debuggers do: _NT_ALT_SYMBOL_PATH first, then _NT_SYMBOL_PATH
            symbol_path = ";".join(os.environ.get(v, "") for v in ("_NT_ALT_SYMBOL_PATH", "_NT_SYMBOL_PATH")
                                   if os.environ.get(v))
        if image_path is None:
            image_path = os.environ.get("_NT_EXECUTABLE_IMAGE_PATH", "")
        # Modules, images, PDBs and the symbol path (kdshell.symbols.resolver).
        self.symbols = Symbols(self, symbol_path, image_path)
        self.progress = sys.stderr  # download progress; None to keep quiet
        self.pseudo_registers: dict[str, int] = {}  # $t0-$t19 and the values commands leave ($p, $exp)
        self.radix = 16  # `n`: the default number base of expressions
        # What an empty line repeats (`repeat_last`), and where d*/u continue when given no address.
        self.repeat: str | None = None
        self.continuation: dict[str, object] = {}
        # Symbol hooks, filled in by the symbols layer: `resolve_symbol("nt!KeBugCheckEx")` -> address
        # or None; `symbolize(address)` -> ("nt!KeBugCheckEx", displacement) or None.
        self.resolve_symbol = self.symbols.resolve
        self.symbolize = self.symbols.symbolize
        self._memory: VirtualMemory | None = None
        self._memory_made = False
        self._overlays: dict[int, ImageOverlay] = {}
        self._spaces: dict[int, VirtualMemory] = {}
        self._triage_copies = None  # set when a small dump's memory is built
        self._processor: int | None = None  # the current processor, found when first asked
        # Processors, processes, threads and the implicit process (.process).
        self.kernel = KernelState(self)
        # The current register context (.cxr/.trap/.thread/.frame/~Ns) and the warm stack walker.
        self.context = ContextState(self)
        self.failures = 0  # commands that ended in an error: the CLI's exit status
        self.last_error: str | None = None
        self.last_traceback: str | None = None

    @property
    def triage_copies(self):
        """A small dump's KPRCB/ETHREAD/EPROCESS copies: where they were placed in its memory
        (kdshell.kernel.state.map_triage_copies); None for other dumps."""
        self.raw_memory  # noqa: B018 - building the memory places the copies
        return self._triage_copies

    @cached_property
    def crash_processor(self) -> int:
        """The processor that bug-checked; found on first use, so that opening a dump reads
        nothing the first command does not need."""
        return crashing_processor_number(self)

    @property
    def processor(self) -> int:
        """The current processor (the prompt's N): the one that bug-checked, until `~Ns`."""
        return self.crash_processor if self._processor is None else self._processor

    @processor.setter
    def processor(self, number: int) -> None:
        self._processor = number

    @property
    def registers(self) -> dict[str, int]:
        """The current context's registers (those of the `.frame` selected, if any)."""
        return self.context.registers

    # -- memory and kernel facts ---------------------------------------------------------------
    @property
    def memory(self) -> VirtualMemory | None:
        """Virtual memory of the current address space (the crashing context's DTB until
        `set_dtb` switches), or None when the dump's memory cannot be read. Reads the dump
        cannot answer fall through to the modules' image files (an ImageOverlay)."""
        raw = self.raw_memory
        if raw is None:
            return None
        overlay = self._overlays.get(id(raw))
        if overlay is None or overlay.inner is not raw:
            overlay = ImageOverlay(raw, self.symbols)
            self._overlays = {id(raw): overlay}
        return overlay

    @property
    def raw_memory(self) -> VirtualMemory | None:
        """The dump's own virtual memory, without image files behind it."""
        if not self._memory_made:
            self._memory_made = True
            self._memory = self._make_memory()
        return self._memory

    @property
    def symbol_path(self) -> str:
        return self.symbols.symbol_path

    @symbol_path.setter
    def symbol_path(self, text: str) -> None:
        self.symbols.symbol_path = text

    @property
    def image_path(self) -> str:
        return self.symbols.image_path

    @image_path.setter
    def image_path(self, text: str) -> None:
        self.symbols.image_path = text

    def _make_memory(self) -> VirtualMemory | None:
        d = self.dump
        if d.triage is not None:
            memory = SavedRangesMemory(d.triage.memory, 8 if d.is64 else 4)
            # The KPRCB/ETHREAD/EPROCESS copies go to the addresses they were copied from.
            try:
                kdbg = read_kdbg(memory, d.header.kd_debugger_data_block, is64=d.is64)
                self._triage_copies = map_triage_copies(d, memory, kdbg)
            except KdError:
                self._triage_copies = None
            return memory
        if self.paging_mode is None:
            return None
        space = self.address_space(d.header.directory_table_base)
        # The KDBG says which bit L1TF mitigation sets in invalid PTEs (19H1+); read it with the
        # provisional format (the KDBG is in valid, non-paged memory) and settle the format.
        kdbg = read_kdbg(space, d.header.kd_debugger_data_block, is64=d.is64)
        bit = kdbg.get("L1tfHighPhysicalBitIndex") if kdbg is not None and d.header.build >= 18362 else None
        fmt = PteFormat.for_kernel(self.paging_mode.pte_mode, d.header.build, bit)
        if fmt != self.pte_format:
            self.pte_format = fmt
            for s in self._spaces.values():
                s.paging.fmt = fmt
                s.paging.flush()
        return space

    @cached_property
    def pages(self) -> _paging.PageCache | None:
        """The dump's physical pages, cached and shared by every address space."""
        return _paging.PageCache(self.dump.physical) if self.dump.physical is not None else None

    @cached_property
    def paging_mode(self) -> _paging.PagingMode | None:
        """x64 4- or 5-level, x86 PAE or non-PAE; None for dumps without physical memory."""
        d, h = self.dump, self.dump.header
        if self.pages is None:
            return None
        if h.machine == MACHINE_AMD64:
            levels = _paging.guess_x64_levels(self.pages, h.directory_table_base, h.kd_debugger_data_block)
            return _paging.X64_5 if levels == 5 else _paging.X64_4
        if h.machine == MACHINE_I386 and not d.is64:
            return _paging.PAE if h.pae_enabled else _paging.X86
        return None

    @cached_property
    def pte_format(self) -> PteFormat:
        mode = self.paging_mode.pte_mode if self.paging_mode else "x64"
        return PteFormat.for_kernel(mode, self.dump.header.build)

    @property
    def physical_memory(self) -> PhysicalView | None:
        return PhysicalView(self.pages) if self.pages is not None else None

    def address_space(self, dtb: int) -> TranslatedMemory:
        """The virtual memory seen through another DirectoryTableBase (a process's DirBase)."""
        if self.paging_mode is None:
            raise KdError("This dump has no page tables (a small memory dump keeps only saved ranges)")
        key = dtb & self.paging_mode.dtb_mask
        space = self._spaces.get(key)
        if space is None:
            if len(self._spaces) >= 64:
                self._spaces.clear()
            space = TranslatedMemory(self.pages, _paging.Paging(self.pages, key, self.paging_mode, self.pte_format))
            self._spaces[key] = space
        return space

    def set_dtb(self, dtb: int) -> VirtualMemory:
        """Make `dtb` the current address space (for `.process`); its translation cache starts empty."""
        space = self.address_space(dtb)
        if self._memory is not space:
            space.paging.flush()
        self.raw_memory  # noqa: B018 - settle the PTE format first
        self._memory = space
        self._memory_made = True
        return space

    def set_paging_mode(self, mode: _paging.PagingMode) -> None:
        """Use another paging mode (e.g. 5-level once CR4.LA57 is read from the KPRCB): every
        address space and its translation cache is rebuilt on next use."""
        self.paging_mode = mode
        self.__dict__.pop("pte_format", None)
        self._spaces.clear()
        self._memory, self._memory_made = None, False

    @property
    def dtb(self) -> int | None:
        m = self.raw_memory
        return m.dtb if isinstance(m, TranslatedMemory) else None

    def repeat_last(self) -> bool:
        """What the front end runs on an empty line: the last d*/u continues where it stopped."""
        if not self.repeat:
            return True
        return self.run(self.repeat)

    @cached_property
    def kdbg(self) -> Kdbg | None:
        """The KDBG at the header's KdDebuggerDataBlock (a small dump's copy is mapped there),
        decoded when Windows left it encoded and the kernel's symbols give the keys
        (kdshell.kernel.kdbg, formats.md §10.1); None when neither gives a valid block."""
        memory = self.raw_memory
        if memory is None:
            return None
        address = self.dump.header.kd_debugger_data_block
        is64 = self.dump.is64
        found = read_kdbg(memory, address, is64=is64)
        if found is None and is_encoded(memory, address):
            # Finding the keys loads nt's symbols, which list the modules, which ask for the
            # KDBG: they see None (the header's PsLoadedModuleList serves them) meanwhile.
            self.__dict__["kdbg"] = None
            keys = keys_from_symbols(self.symbols.resolve, memory)
            found = read_kdbg(memory, address, keys, is64=is64) if keys is not None else None
            del self.__dict__["kdbg"]
        return found

    @cached_property
    def kernel_base(self) -> int | None:
        if self.kdbg is not None and self.kdbg.get("KernBase"):
            return self.kdbg.get("KernBase")
        tri = self.dump.triage
        if tri is not None and tri.drivers:
            return tri.drivers[0].base  # the kernel is always the first loaded module
        return None

    @property
    def is64(self) -> bool:
        return self.dump.is64

    @property
    def prompt(self) -> str:
        return f"{self.processor}: kd> "

    # -- running commands ----------------------------------------------------------------------
    def run(self, line: str) -> bool:
        """Run one line (commands separated by ';'). True when every command succeeded.

        Raises Quit for `q`. Errors print one line; under pytest unexpected ones re-raise so no
        test passes on a hidden error.
        """
        ok = True
        for text in dispatch.split_commands(line):
            ok = self.run_one(text) and ok
        return ok

    def run_one(self, text: str) -> bool:
        try:
            cmd, inv = dispatch.resolve(text)
            if inv.args == ["/?"]:
                self.out.lines(dispatch.help_lines(cmd))
                return True
            self.repeat = None  # only commands that continue (d*, u) leave something to repeat
            for guard in cmd.needs:
                guard(self)
            cmd.func(self, inv)
            if self.options.explain:
                from kdshell.explain import note_for

                note = note_for(cmd.name, inv)
                if note:
                    self.out.line("")
                    self.out.lines("  [explain] " + line for line in note.splitlines())
            return True
        except Quit:
            raise
        except KdError as exc:
            self.failures += 1
            self.last_error = str(exc)
            self.out.error(str(exc))
            return False
        except BrokenPipeError:
            raise  # the output is gone: the front end stops
        except KeyboardInterrupt:
            self.failures += 1
            self.out.error("^C: command stopped")
            return False
        except Exception as exc:  # a bug of ours: one line at the prompt, the traceback on request
            if "PYTEST_CURRENT_TEST" in os.environ:
                raise
            self.failures += 1
            self.last_traceback = traceback.format_exc()
            self.last_error = f"{type(exc).__name__}: {exc}"
            self.out.error(f"Internal error in '{text}': {type(exc).__name__}: {exc}")
            if self.options.verbose:
                self.out.error(self.last_traceback.rstrip())
            else:
                self.out.error("(kdshell bug: '.verbose 1' then run it again to see the traceback)")
            return False

    def report_missing(self, errors) -> None:
        """WinDbg's line for each page the dump left out that a command met (unless
        `.ignore_missing_pages 1`)."""
        if not self.options.ignore_missing_pages:
            self.out.lines(missing_page_lines(errors))

    def capture(self, line: str) -> str:
        """Run commands and return what they printed."""
        with self.out.capture() as buf:
            try:
                self.run(line)
            except Quit:
                pass
        return "".join(buf)

    # -- the banner ----------------------------------------------------------------------------
    def banner(self) -> list[str]:
        d = self.dump
        lines = [f"Loading Dump File [{os.path.abspath(d.path)}]", d.kind_line]
        if d.header.comment:
            lines.append(f"Comment: '{d.header.comment}'")
        lines += [f"WARNING: {w}" for w in d.warnings]
        lines.append("")
        lines.append(f"Symbol search path is: {self.symbol_path or '*** Invalid ***'}")
        lines.append(f"Executable search path is: {self.image_path}")
        lines += version_lines(self)
        h = d.header
        lines.append("For analysis of this file, run !analyze -v")
        code = h.bugcheck_code
        params = ", ".join(f"{p:x}" for p in h.bugcheck_parameters)
        lines.append(f"BugCheck {code:X}, {{{params}}}")
        verdict = self._banner_verdict()
        if verdict:
            lines += ["", verdict]
        return lines

    def _banner_verdict(self) -> str | None:
        """WinDbg ends a dump's banner with the short !analyze's "Probably caused by" line;
        skipped (quietly) when the analysis cannot run on this dump."""
        if self.raw_memory is None:
            return None
        try:
            from kdshell.analysis.analyze import analyze
            from kdshell.analysis.report import probably_caused_by

            return probably_caused_by(analyze(self))
        except KdError:
            return None
        except Exception:  # a bug of ours must not keep the dump from opening
            if "PYTEST_CURRENT_TEST" in os.environ:
                raise
            return None

    def close(self) -> None:
        self.dump.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_session(path, **kwargs) -> Session:
    """Open a dump and return a Session over it (DumpFormatError if the file is malformed)."""
    return Session(open_dump(path), **kwargs)
