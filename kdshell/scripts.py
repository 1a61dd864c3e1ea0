"""Command scripts: `$<`, `$$<`, `$><`, `$$><`, `$$>a<` (windbg.md §17).

`$<`/`$$<` run a file line by line, each echoed after the prompt as if typed; `$><`/`$$><` join
its lines with ';' and run them as one block without echo; `$$>a<File args` also replaces
`${$arg1}`/`$arg1` ... (`$arg0` is the file name). A script goes on after a failing command and
the failure counts for the exit status; with `.scriptstop 1` it stops there instead.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol

from kdshell.errors import CommandError

if TYPE_CHECKING:
    from kdshell.output import Output

MAX_SCRIPT_BYTES = 1 << 20
MAX_DEPTH = 16  # scripts that run scripts (a script that runs itself stops here)


def read_script(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SCRIPT_BYTES + 1)
    except OSError as exc:
        raise CommandError(f"Couldn't open script file '{path}': {exc.strerror}") from None
    if len(data) > MAX_SCRIPT_BYTES:
        raise CommandError(f"Script file '{path}' is larger than {MAX_SCRIPT_BYTES // 1024} KB")
    return data.decode("utf-8", "replace").splitlines()


def group_lines(lines: list[str]) -> list[str]:
    """Script lines with a block that spans lines (`.if (x) {` ... `}`) joined by ';' into one."""
    from kdshell.script.text import brace_balance

    out: list[str] = []
    pending: list[str] = []
    depth = 0
    for line in lines:
        if not line.strip() and not pending:
            continue
        if line.strip().startswith("{") and (pending or out):  # `.for (...)` then `{` on the next line
            if not pending:
                pending = [out.pop()]
            pending[-1] += " " + line.strip()
        else:
            pending.append(line.strip() if pending else line)
        depth += brace_balance(line)
        if depth <= 0:
            out.append(";".join(p for p in pending if p))
            pending, depth = [], 0
    if pending:
        out.append(";".join(p for p in pending if p))  # unbalanced: the command says so
    return out


def substitute(line: str, args: list[str]) -> str:
    """Replace ${$argN} and $argN by the script's arguments (missing ones stay as written)."""
    def one(match: re.Match[str]) -> str:
        n = int(match.group(1) or match.group(2))
        return args[n] if n < len(args) else match.group(0)

    return re.sub(r"\$\{\$arg(\d+)\}|\$arg(\d+)", one, line)


class ScriptOptions(Protocol):
    script_stop: bool  # `.scriptstop 1`


class ScriptHost(Protocol):
    """What a script reads of the session: its runner, output, prompt, failure count and options."""

    failures: int
    script_depth: int  # scripts running inside one another ($$< in a script)

    @property
    def out(self) -> Output: ...

    @property
    def prompt(self) -> str: ...

    @property
    def options(self) -> ScriptOptions: ...

    def run(self, line: str) -> bool: ...


def run_script(session: ScriptHost, path: str, *, block: bool, args: list[str] | None = None) -> None:
    depth = session.script_depth
    if depth >= MAX_DEPTH:
        raise CommandError(f"Scripts nested more than {MAX_DEPTH} deep: stopped at '{path}'")
    lines = read_script(path)
    if args is not None:
        lines = [substitute(line, [path] + args) for line in lines]
    session.script_depth = depth + 1
    try:
        if block:
            session.run(";".join(group_lines(lines)))
            return
        for line in group_lines(lines):
            session.out.line(f"{session.prompt}{line}")
            before = session.failures
            session.run(line)
            if session.options.script_stop and session.failures > before:
                session.out.error(f"Script '{path}' stopped at its first failing command (.scriptstop 1).")
                break
    finally:
        session.script_depth = depth
