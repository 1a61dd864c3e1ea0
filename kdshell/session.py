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
from typing import Any, Iterator, Sequence

from kdshell import dispatch
from kdshell.dumpfile.dump import DumpFile, open_dump
from kdshell.errors import FlowSignal, KdError, MemoryNotPresent, Quit
from kdshell.kernel.kdbg import Kdbg
from kdshell.memory.virtual import PhysicalView, VirtualMemory
from kdshell.output import Output
from kdshell.parts import assemble
from kdshell.script import flow
from kdshell.stack.text import missing_page_lines
from kdshell.symbols.store import environment_symbol_path, offline_requested
from kdshell.target import version_lines

STOPPED = "Command stopped (Ctrl-C)."
BANNER_STOPPED = "Symbol loading stopped (Ctrl-C): no build lab or culprit line; vertarget and !analyze load them."


@dataclass
class Options:
    ignore_missing_pages: bool = False
    verbose: bool = False
    script_stop: bool = False  # `.scriptstop 1`: a script ends at its first failing command
    explain: bool = False  # `.explain on`: a note on reading each command's output


class Session:
    """One open dump and the user's state over it: the parts (kdshell.parts: address spaces,
    KDBG, symbols, kernel objects, register context), the options, and the commands' runner."""

    def __init__(
        self,
        dump: DumpFile,
        *,
        symbol_path: str | None = None,
        image_path: str | None = None,
        out: Output | None = None,
        offline: bool | None = None,
    ):
        dispatch.load_commands()
        self.dump = dump
        self.out = out or Output()
        self.options = Options()
        # No default symbol path here (the command line has one): a library downloads only when
        # its caller or _NT_SYMBOL_PATH names a server, and never with offline (or KDSHELL_OFFLINE=1).
        if symbol_path is None:
            symbol_path = environment_symbol_path()
        if image_path is None:
            image_path = os.environ.get("_NT_EXECUTABLE_IMAGE_PATH", "")
        if offline is None:
            offline = offline_requested()
        self.parts = assemble(dump, self.out, symbol_path=symbol_path, image_path=image_path, progress=sys.stderr,
                              offline=offline)
        self.spaces = self.parts.spaces
        self.symbols = self.parts.symbols
        self.kernel = self.parts.kernel
        self.context = self.parts.context
        self.pseudo_registers: dict[str, int] = {}  # $t0-$t19 and the values commands leave ($p, $exp)
        self.radix = 16  # `n`: the default number base of expressions
        self.script_depth = 0  # scripts running inside one another (kdshell.scripts)
        self.aliases: dict[str, str] = {}  # `as`/`aS` (kdshell.script.text expands them)
        self.typed_pseudo: dict[str, Any] = {}  # `r? $t0 = ...`: C++ values (kdshell.cppexpr.Value)
        self.flow = flow.FlowState()  # the control tokens running (kdshell.script.flow)
        # What an empty line repeats (`repeat_last`), and where d*/u continue when given no address.
        self.repeat: str | None = None
        self.continuation: dict[str, object] = {}
        self.failures = 0  # commands that ended in an error: the CLI's exit status
        self.last_error: str | None = None
        self.last_traceback: str | None = None

    # -- the parts, as commands ask for them ---------------------------------------------------
    def resolve_symbol(self, name: str) -> int | None:
        """"nt!KeBugCheckEx" -> its address, or None."""
        return self.symbols.resolve(name)

    def symbolize(self, address: int) -> tuple[str, int] | None:
        """An address -> ("nt!KeBugCheckEx", displacement), or None."""
        return self.symbols.symbolize(address)

    @property
    def processor(self) -> int:
        """The current processor (the prompt's N): the one that bug-checked, until `~Ns`."""
        return self.kernel.current_processor

    @processor.setter
    def processor(self, number: int) -> None:
        self.parts.selection.processor = number

    @property
    def registers(self) -> dict[str, int]:
        """The current context's registers (those of the `.frame` selected, if any)."""
        return self.context.registers

    @property
    def memory(self) -> VirtualMemory | None:
        """Virtual memory of the current address space, or None when the dump's memory cannot
        be read. Reads the dump cannot answer fall through to the modules' image files."""
        return self.symbols.memory()

    @property
    def raw_memory(self) -> VirtualMemory | None:
        """The dump's own virtual memory, without image files behind it."""
        return self.spaces.current

    @property
    def physical_memory(self) -> PhysicalView | None:
        return self.spaces.physical

    @property
    def dtb(self) -> int | None:
        return self.spaces.dtb

    def set_dtb(self, dtb: int) -> VirtualMemory:
        """Make `dtb` the current address space (for `.process`)."""
        return self.spaces.set_dtb(dtb)

    @property
    def progress(self) -> Any:
        """Where long operations report progress (downloads, searches, writes); None: quiet."""
        return self.symbols.progress

    @progress.setter
    def progress(self, stream: Any) -> None:
        self.symbols.progress = stream

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

    @property
    def kdbg(self) -> Kdbg | None:
        """The KDBG at the header's KdDebuggerDataBlock (a small dump's copy is mapped there),
        decoded when Windows left it encoded and the kernel's symbols give the keys
        (kdshell.kernel.kdbg, formats.md §10.1); None when neither gives a valid block."""
        return self.parts.decoded_kdbg()

    @property
    def kernel_base(self) -> int | None:
        kdbg = self.kdbg
        if kdbg is not None and kdbg.get("KernBase"):
            return kdbg.get("KernBase")
        tri = self.dump.triage
        if tri is not None and tri.drivers:
            return int(tri.drivers[0].base)  # the kernel is always the first loaded module
        return None

    def repeat_last(self) -> bool:
        """What the front end runs on an empty line: the last d*/u continues where it stopped."""
        if not self.repeat:
            return True
        return self.run(self.repeat)

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
        return flow.run_line(self, line)

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
        except (Quit, FlowSignal):
            raise
        except KdError as exc:
            self.failures += 1
            self.last_error = str(exc)
            self.out.error(str(exc))
            return False
        except BrokenPipeError:
            raise  # the output is gone: the front end stops
        except KeyboardInterrupt:
            if self.flow.depth or self.script_depth:
                raise  # the loop or script around this command stops too: the typed command reports it
            self.flow.interrupted = True  # and the rest of its line does not run
            self.failures += 1
            self.out.interrupted(STOPPED)
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

    def automatic_pseudo(self, name: str) -> int | None:
        """The automatic pseudo-registers kdshell.expr leaves to the session ($bug_code, $ra, ...)."""
        from kdshell.script.pseudo import automatic

        return automatic(self, name)

    def report_missing(self, errors: Sequence[MemoryNotPresent]) -> None:
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
    def banner(self, symbol_note: str = "") -> list[str]:
        return list(self.banner_lines(symbol_note))

    def banner_lines(self, symbol_note: str = "") -> Iterator[str]:
        """The banner line by line (the front end shows each as it comes: the verdict at the end
        loads symbols, and may download them). `symbol_note` follows the symbol path, e.g.
        "(offline: no downloads)"."""
        d = self.dump
        yield f"Loading Dump File [{os.path.abspath(d.path)}]"
        yield d.kind_line
        if d.header.comment:
            yield f"Comment: '{d.header.comment}'"
        yield from (f"WARNING: {w}" for w in d.warnings)
        yield ""
        path = self.symbol_path or "*** Invalid ***"
        yield f"Symbol search path is: {path} {symbol_note}".rstrip()
        yield f"Executable search path is: {self.image_path}"
        try:  # the build lab loads nt's symbols, which may mean a download
            versions, stopped = version_lines(self), False
        except KeyboardInterrupt:
            self.out.interrupted(BANNER_STOPPED)
            versions, stopped = version_lines(self, lab=False), True
        yield from versions
        h = d.header
        yield "For analysis of this file, run !analyze -v"
        code = h.bugcheck_code
        params = ", ".join(f"{p:x}" for p in h.bugcheck_parameters)
        yield f"BugCheck {code:X}, {{{params}}}"
        verdict = None if stopped else self._banner_verdict()
        if verdict:
            yield ""
            yield verdict

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
        except KeyboardInterrupt:  # Ctrl-C while it loads (or downloads) symbols: on to the prompt
            self.out.interrupted(BANNER_STOPPED)
            return None
        except Exception:  # a bug of ours must not keep the dump from opening
            if "PYTEST_CURRENT_TEST" in os.environ:
                raise
            return None

    def protected_files(self) -> list[str]:
        """Files kdshell must never write: the dump being read, the loaded images and PDBs."""
        return [self.dump.path, *self.symbols.open_files()]

    def close(self) -> None:
        self.dump.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_session(path: str | os.PathLike[str], **kwargs: Any) -> Session:
    """Open a dump and return a Session over it (DumpFormatError if the file is malformed)."""
    return Session(open_dump(path), **kwargs)
