"""!analyze (short, -v, -show, -json, -teach) and .exr.

Thin: kdshell.analysis.analyze finds the facts, kdshell.analysis.report turns them into WinDbg's
layout (windbg.md §2) or JSON; this module parses the options and prints.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kdshell.analysis.analyze import analyze
from kdshell.analysis.report import exr_lines, json_text, short_lines, teach_lines, title_lines, verbose_lines
from kdshell.commands.stack import note_missing_symbols
from kdshell.dispatch import Invocation, command, has_command, needs_memory
from kdshell.errors import CommandError
from kdshell.expr import Evaluator

if TYPE_CHECKING:
    from kdshell.session import Session

SYNTAX = "!analyze [-v] [-hang] [-json] [-teach] | !analyze -show BugCheckCode [P1 P2 P3 P4]"


@command(".exr", family="analysis", needs=(needs_memory,), syntax=".exr Address | .exr -1",
         summary="Show the EXCEPTION_RECORD at Address (0x7E/0x1000007E give it in P3, 0x139 in P3); "
                 "-1: the dump's own exception record",
         example=".exr ffff8504`29891ee8")
def exr(session: Session, inv: Invocation) -> None:
    if not inv.text.strip():
        raise CommandError(".exr needs the address of an exception record (.exr Address, or .exr -1 for the dump's)")
    address = Evaluator(session).evaluate(inv.text)
    session.out.lines(exr_lines(session, address))


# -- the command ------------------------------------------------------------------------------------------
@dataclass
class _Options:
    verbose: bool = False
    json: bool = False
    teach: bool = False
    show: list[int] | None = None  # -show: the code and its parameters
    hang: bool = False  # -hang: the waiting chains after the analysis (kdshell.commands.hang)


def analyze_options(session: Session, inv: Invocation) -> _Options:
    opts = _Options()
    args = list(inv.args)
    i = 0
    while i < len(args):
        word = args[i]
        low = word.lower()
        if low == "-show":
            values = [Evaluator(session).evaluate(w) for w in args[i + 1:]]
            if not values:
                raise CommandError(f"!analyze -show needs a bug check code ({SYNTAX})")
            if len(values) > 5:
                raise CommandError(f"!analyze -show takes a code and at most four parameters ({SYNTAX})")
            opts.show = values
            break
        if low.startswith("-v") and (low[2:].isdigit() or set(low[2:]) <= {"v"}):
            opts.verbose = True
        elif low == "-json":
            opts.json = True
        elif low in ("-teach", "-explain"):
            opts.teach = True
        elif low == "-f":
            pass  # "force": every dump kdshell opens has a bug check to analyse
        elif low == "-hang":
            opts.hang = True
        else:
            raise CommandError(f"!analyze: unknown option '{word}' ({SYNTAX})")
        i += 1
    return opts


@command("!analyze", family="analysis", syntax=SYNTAX,
         summary="Analyse the crash: the bug check explained, the faulting stack, the driver to blame",
         example="!analyze -v",
         details="-v: every detail (contexts, stack, symbol, bucket). -json: the same facts as JSON.\n"
                 "-teach: a plain-language 'what happened / what next' section (on by default after\n"
                 "'.explain on'). -show CODE [P1..P4]: what a bug check code and its parameters mean.")
def analyze_(session: Session, inv: Invocation) -> None:
    opts = analyze_options(session, inv)
    out = session.out
    if opts.show is not None:
        code, params = opts.show[0], opts.show[1:]
        out.lines(title_lines(code, params, session.is64))
        return
    hang: list[str] = []
    if opts.hang:
        from kdshell.commands.hang import hang_lines

        hang = hang_lines(session)  # first: a small dump says in one line what it lacks
    a = analyze(session)
    if opts.json:
        out.line(json_text(session, a, has_command))
        return
    out.lines(verbose_lines(session, a) if opts.verbose else short_lines(a))
    out.lines(hang)
    note_missing_symbols(session, [f.lookup_address for f in a.stack])
    if opts.teach or session.options.explain:
        out.lines(teach_lines(a, has_command))
