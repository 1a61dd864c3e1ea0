"""The Session: one loaded dump, its memory, the options and the current context.

Everything a command needs hangs off the session; nothing below this module knows about the
terminal. `kdshell.open(path)` gives a Session; `session.run("k; lm")` runs commands and
`session.capture("vertarget")` returns their text.
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from functools import cached_property

from kdshell import dispatch
from kdshell.dumpfile.dump import DumpFile, open_dump
from kdshell.dumpfile.header import MACHINE_AMD64
from kdshell.errors import KdError
from kdshell.kernel.kdbg import Kdbg, read_kdbg
from kdshell.memory.paging import X64Paging
from kdshell.memory.virtual import SavedRangesMemory, TranslatedMemory, VirtualMemory
from kdshell.output import Output
from kdshell.target import version_lines


class Quit(Exception):
    """Raised by `q`: the front end stops reading commands."""


@dataclass
class Options:
    ignore_missing_pages: bool = False
    verbose: bool = False


def _load_commands() -> None:
    import kdshell.commands  # noqa: F401  (registers every command)


class Session:
    def __init__(
        self,
        dump: DumpFile,
        *,
        symbol_path: str | None = None,
        image_path: str | None = None,
        out: Output | None = None,
    ):
        _load_commands()
        self.dump = dump
        self.out = out or Output()
        self.options = Options()
        self.symbol_path = symbol_path if symbol_path is not None else os.environ.get("_NT_SYMBOL_PATH", "")
        self.image_path = image_path or ""
        self.registers = dump.registers()
        self.processor = 0
        self.failures = 0  # commands that ended in an error: the CLI's exit status
        self.last_error: str | None = None
        self.last_traceback: str | None = None

    # -- memory and kernel facts ---------------------------------------------------------------
    @cached_property
    def memory(self) -> VirtualMemory | None:
        """Kernel virtual memory of the crashing context, or None when it cannot be read yet."""
        d = self.dump
        if d.triage is not None:
            return SavedRangesMemory(d.triage.memory)
        if d.physical is not None and d.header.machine == MACHINE_AMD64:
            return TranslatedMemory(d.physical, X64Paging(d.physical, d.header.directory_table_base))
        return None

    @cached_property
    def kdbg(self) -> Kdbg | None:
        if self.memory is None:
            return None
        return read_kdbg(self.memory, self.dump.header.kd_debugger_data_block)

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
            for guard in cmd.needs:
                guard(self)
            cmd.func(self, inv)
            return True
        except Quit:
            raise
        except KdError as exc:
            self.failures += 1
            self.last_error = str(exc)
            self.out.error(str(exc))
            return False
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
        return lines

    def close(self) -> None:
        self.dump.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_session(path, **kwargs) -> Session:
    """Open a dump and return a Session over it (DumpFormatError if the file is malformed)."""
    return Session(open_dump(path), **kwargs)
