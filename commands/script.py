"""Debugger command programs (windbg: "Using Debugger Command Programs"): the control flow
tokens, .printf, .expr, aliases (as, aS, ad, al) and typed pseudo-registers (r?). The engine is
kdshell.script; this module parses nothing but the commands' own options.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable

from kdshell.dispatch import Invocation, command
from kdshell.errors import CommandError, KdError
from kdshell.expr import Evaluator, ExprError, is_settable_pseudo
from kdshell.script import flow, printf
from kdshell.script import text as T

if TYPE_CHECKING:
    from kdshell.session import Session



def _named(inv: Invocation, run: Callable[[], None]) -> None:
    """Syntax errors name the whole command, token included (`^ Syntax error in '.if (1) {'`)."""
    try:
        run()
    except CommandError as exc:
        inner = f"^ Syntax error in '{inv.text.strip()}'"
        message = str(exc)
        if message.startswith(inner):
            raise CommandError(f"^ Syntax error in '{inv.name} {inv.text.strip()}'{message[len(inner):]}") from None
        raise


@command(".if", family="session", syntax=".if (Condition) { Commands } [.elsif (Condition) { Commands }] [.else { Commands }]",
         summary="Run commands when a MASM condition is nonzero", example='.if (@$t0 > 5) { .echo big } .else { .echo small }',
         details="Braces are required, even around one command; in a script they may span lines.")
def if_(session: Session, inv: Invocation) -> None:
    _named(inv, lambda: flow.do_if(session, inv.text))


@command(".elsif", ".else", family="session", syntax=".elsif (Condition) { Commands } | .else { Commands }",
         summary="The other branches of .if (on the line after its '}' in a script)")
def else_(session: Session, inv: Invocation) -> None:
    _named(inv, lambda: flow.do_else(session, inv.name.lower(), inv.text))


@command(".for", family="session", syntax=".for (InitialCommand ; Condition ; IncrementCommands) { Commands }",
         summary="Loop as C's for does (several increment commands are separated by ';')",
         example=".for (r $t0 = 0; @$t0 < 3; r $t0 = @$t0 + 1) { .printf \"%d\\n\", @$t0 }",
         details="No iteration limit, as in WinDbg: Ctrl-C stops a loop that never ends, and a\n"
                 "failing command inside ends it (and the constructs around it; .catch ends just its block).")
def for_(session: Session, inv: Invocation) -> None:
    _named(inv, lambda: flow.do_for(session, inv.text))


@command(".while", family="session", syntax=".while (Condition) { Commands }", summary="Loop while a condition holds")
def while_(session: Session, inv: Invocation) -> None:
    _named(inv, lambda: flow.do_while(session, inv.text))


@command(".do", family="session", syntax=".do { Commands } (Condition)",
         summary="Run commands, then again while a condition holds")
def do_(session: Session, inv: Invocation) -> None:
    _named(inv, lambda: flow.do_do(session, inv.text))


@command(".break", ".continue", family="session", syntax=".break | .continue",
         summary="Leave a .for/.while/.do loop, or go on with its next round")
def break_(session: Session, inv: Invocation) -> None:
    flow.do_loop_exit(session, inv.name.lower())


@command(".leave", family="session", syntax=".leave", summary="Leave the enclosing .catch block")
def leave_(session: Session, inv: Invocation) -> None:
    flow.do_loop_exit(session, ".leave")


@command(".block", family="session", syntax=".block { Commands }",
         summary="Run a block (its aliases are expanded when it is entered)",
         example='as name nt; .block { lm m ${name} }')
def block_(session: Session, inv: Invocation) -> None:
    _named(inv, lambda: flow.do_block(session, inv.text))


@command(".catch", family="session", syntax=".catch { Commands }",
         summary="Run commands; an error ends the block, not the program")
def catch_(session: Session, inv: Invocation) -> None:
    _named(inv, lambda: flow.do_catch(session, inv.text))


@command(".foreach", family="session",
         syntax='.foreach [/pS N] [/ps N] ( Variable { InCommands } ) { OutCommands } | /s ( Variable "String" ) | /f ( Variable "File" )',
         summary="Run commands for each word of some commands' output, a string or a file",
         example=".foreach /pS 1 /ps 1 (name { lm 1m }) { .echo name }",
         details="The variable is replaced where it stands alone between blanks (or as ${Variable}).")
def foreach_(session: Session, inv: Invocation) -> None:
    def read(path: str) -> str:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read(1 << 20)
        except OSError as exc:
            raise CommandError(f"Couldn't open file '{path}': {exc.strerror}") from None

    def capture(commands: str) -> str:
        with session.out.capture() as buf:
            flow.run_block(session, commands)
        return "".join(buf)

    _named(inv, lambda: flow.do_foreach(session, inv.text, capture, read))


@command("j", family="session", syntax="j Expression [']Command1['] ; [']Command2[']",
         summary="Run Command1 when the expression is nonzero, else Command2", example="j (@$t0 = 0) '.echo zero' ; '.echo other'")
def j_(session: Session, inv: Invocation) -> None:
    _named(inv, lambda: flow.do_j(session, inv.text))


@command("z", family="session", syntax="Commands ; z( Expression )",
         summary="Run the commands before it on the line again while the expression is nonzero")
def z_(session: Session, inv: Invocation) -> None:
    raise CommandError("^ Syntax error: z( Expression ) must follow commands on the same line")


# -- .printf, .expr -------------------------------------------------------------------------------
class _Target:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.is64 = session.is64

    def read(self, address: int, size: int) -> bytes:
        memory = self.session.memory
        if memory is None:
            raise KdError("no memory")
        return memory.read(address, size)

    def symbol(self, address: int) -> str | None:
        hit = self.session.symbolize(address)
        if hit is None:
            return None
        return f"{hit[0]}+0x{hit[1]:x}" if hit[1] else hit[0]


@command(".printf", family="session", syntax='.printf [/D] [/oX] "FormatString" [, Argument, ...]',
         summary="Print formatted text as C's printf, with the debugger's %p %ma %mu %msu %y",
         example='.printf "%p %ma\\n", @$proc, @$proc+5a8',
         details="%x %d %u are 32-bit unless I64 (or ll) precedes them; %p is a target pointer;\n"
                 "%ma/%mu read a string at the address, %msa/%msu an ANSI_/UNICODE_STRING;\n"
                 "%y the symbol at an address. /D (DML) and /o options are accepted; text is plain.")
def printf_(session: Session, inv: Invocation) -> None:
    text = inv.text.strip()
    while text.startswith("/"):
        opt, _, text = text.partition(" ")
        if opt != "/D" and not (opt.startswith("/o") and len(opt) == 3):
            raise CommandError(f".printf: unknown option {opt}")
        text = text.strip()
    fmt, args = printf.parse_arguments(text, T.split_top)
    values = [flow.evaluate(session, a) for a in args]
    result = printf.render(fmt, values, _Target(session))
    session.out.write(result)


EVALUATORS = {"masm": "MASM - Microsoft Assembler expressions", "c++": "C++ - C++ source expressions"}


@command(".expr", family="session", syntax=".expr [/s masm|c++] [/q]",
         summary="Show or choose the expression evaluator of control-flow conditions and .printf",
         details="kdshell's ? stays MASM and ?? C++; .expr /s c++ makes .if/.for/.while conditions\n"
                 "and .printf arguments C++ expressions.")
def expr_(session: Session, inv: Invocation) -> None:
    args = inv.args
    if args[:1] == ["/q"]:
        session.out.line("Available expression evaluators:")
        session.out.lines(EVALUATORS.values())
        session.out.line("")
    elif args[:1] == ["/s"]:
        if len(args) < 2 or args[1].lower() not in EVALUATORS:
            raise CommandError(".expr /s: choose masm or c++")
        session.flow.cpp = _cpp_evaluator(session) if args[1].lower() == "c++" else None
    elif args:
        raise CommandError(f".expr: unknown option {args[0]} (.expr [/s masm|c++] [/q])")
    current = "c++" if session.flow.cpp is not None else "masm"
    session.out.line(f"Current expression evaluator: {EVALUATORS[current]}")


def _cpp_evaluator(session: Session) -> Callable[[str], int]:
    from kdshell.commands.cpp import Scope
    from kdshell.cppexpr import CppEvaluator

    def evaluate(text: str) -> int:
        ev = CppEvaluator(session, Scope(session))
        value = ev.evaluate(text)
        return ev.integer(value)

    return evaluate


# -- aliases --------------------------------------------------------------------------------------
@command("as", family="session",
         syntax="as Name Text | aS Name \"Text\" | as /x Name Expression | as /ma|/mu|/msa|/msu Name Address | "
                "as /e Name EnvVar | aS /f Name File | as /c Name Commands",
         summary="Define an alias: its name is replaced by its text in later commands",
         example="as /x base nt; .block { .printf \"%p\\n\", base }",
         details="as takes the rest of the line (';' included); aS ends at ';' and drops quotes.\n"
                 "Aliases are expanded when a line or a block is entered (hence .block).")
def as_(session: Session, inv: Invocation) -> None:
    text = inv.text.strip()
    option = ""
    if text.startswith("/"):
        option, _, text = text.partition(" ")
        text = text.strip()
    name, _, rest = text.partition(" ")
    if name.startswith("${/v:") and name.endswith("}"):
        name = name[5:-1]
    if not name:
        raise CommandError(f"{inv.name}: which alias? ({inv.name} Name Text)")
    if name.startswith(("al", "as", "aS", "ad")) and name in ("al", "as", "aS", "ad"):
        raise CommandError(f"{inv.name}: an alias name cannot be {name}")
    rest = rest.lstrip()
    if option == "":
        if inv.name == "aS" and len(rest) >= 2 and rest[0] == rest[-1] == '"':
            rest = rest[1:-1]
        value = rest
    elif option == "/x":
        value = f"0x{Evaluator(session).evaluate(rest):x}"
    elif option in ("/ma", "/mu", "/msa", "/msu"):
        value = printf.render(f"%{option[1:]}", [Evaluator(session).evaluate(rest)], _Target(session))
        if value == printf.MEMORY_ERROR:
            raise ExprError(f"Memory access error at '{rest}'")
    elif option == "/e":
        if rest not in os.environ:
            raise CommandError(f"Environment variable '{rest}' is not defined")
        value = os.environ[rest]
    elif option == "/f":
        path = rest[1:-1] if len(rest) >= 2 and rest[0] == rest[-1] == '"' else rest
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                value = f.read(1 << 20)
        except OSError as exc:
            raise CommandError(f"Couldn't open file '{path}': {exc.strerror}") from None
    elif option == "/c":
        with session.out.capture() as buf:
            session.run(rest)
        value = "".join(buf).rstrip("\n")
    else:
        raise CommandError(f"{inv.name}: unknown option {option}")
    session.aliases[name] = value


@command("ad", family="session", syntax="ad [/q] Name | ad *", summary="Delete an alias (* deletes them all)")
def ad_(session: Session, inv: Invocation) -> None:
    args = inv.args
    quiet = "/q" in args
    names = [a for a in args if a != "/q"]
    if not names:
        raise CommandError("ad: which alias? (ad [/q] Name | ad *)")
    for name in names:
        if name.startswith("${/v:") and name.endswith("}"):
            name = name[5:-1]
        if name == "*":
            session.aliases.clear()
        elif name in session.aliases:
            del session.aliases[name]
        elif not quiet:
            raise CommandError(f"No alias named '{name}'")


@command("al", family="session", syntax="al", summary="List the aliases")
def al_(session: Session, inv: Invocation) -> None:
    if not session.aliases:
        session.out.line("No aliases")
        return
    session.out.line("  Alias            Value  ")
    session.out.line(" -------          ------- ")
    for name in sorted(session.aliases):
        session.out.line(f" {name:<16} {session.aliases[name]} ")


# -- r?: typed pseudo-registers -------------------------------------------------------------------
@command("r?", family="memory", syntax="r? $tN = C++Expression",
         summary="Set a pseudo-register to a typed C++ value ($t0-$t19), for ?? and dx",
         example="r? $t0 = (nt!_EPROCESS*)@$proc; ?? @$t0->ImageFileName")
def r_typed(session: Session, inv: Invocation) -> None:
    from kdshell.commands.cpp import Scope, value_lines
    from kdshell.cppexpr import CppEvaluator

    name, eq, expr = inv.text.partition("=")
    name = name.strip().lstrip("@")
    if not eq:
        typed = session.typed_pseudo.get(name.lower())
        if typed is None:
            raise ExprError(f"Bad register error at '{name}'")
        ev = CppEvaluator(session, Scope(session))
        session.out.lines(value_lines(session, ev, typed))
        return
    if not is_settable_pseudo(name):
        raise ExprError(f"Bad register error at '{name}'")
    ev = CppEvaluator(session, Scope(session))
    value = ev.evaluate(expr.strip())
    session.typed_pseudo[name.lower()] = value
    session.pseudo_registers[name.lower()] = (value.address or 0) if value.type.strip().is_aggregate else ev.integer(value)
