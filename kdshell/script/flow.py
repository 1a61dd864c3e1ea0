"""Control flow tokens (windbg: "Using Debugger Command Programs"): `.if/.elsif/.else`, `.for`,
`.while`, `.do`, `.break`, `.continue`, `.block`, `.foreach`, `.catch`, `.leave`, `j`, `z`.

A line runs command by command (`run_line`); a control token's blocks run through `run_block`,
which expands the block's aliases when it is entered (WinDbg's rule: a later `as` is seen only
by inner blocks, hence `.block`). Loops have no iteration bound, as in WinDbg: Ctrl-C stops them
(the KeyboardInterrupt is not swallowed by the commands inside a construct, it unwinds to the
command typed at the prompt), and as in WinDbg a failing command inside ends the outermost
construct (`.catch` ends only its block); `.scriptstop 1` then stops the script as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

from kdshell.dispatch import split_commands
from kdshell.errors import CommandError, FlowSignal
from kdshell.expr import Evaluator
from kdshell.script import text as T

if TYPE_CHECKING:
    from kdshell.session import Session


class Break(FlowSignal):
    pass


class Continue(FlowSignal):
    pass


class Leave(FlowSignal):
    pass


class Abort(FlowSignal):
    """A command inside a construct failed: the program stops (at the outermost construct or `.catch`)."""


@dataclass
class FlowState:
    depth: int = 0  # constructs running inside one another
    loops: int = 0
    catches: int = 0
    interrupted: bool = False  # Ctrl-C stopped a command: the rest of its line is dropped
    last_if: bool | None = None  # whether the last .if/.elsif chain ran a block (None: no .if just before)
    # `.expr /s c++`: conditions and .printf arguments are C++ expressions (the command layer
    # sets the evaluator: its scope knows the PDB types)
    cpp: Callable[[str], int] | None = None


def run_line(session: Session, line: str) -> bool:
    """A line typed or read from a script: aliases expanded (outside blocks), then its commands."""
    if not session.flow.depth and not session.script_depth:
        session.flow.interrupted = False
    return run_commands(session, split_commands(T.expand(line, session.aliases)))


def run_commands(session: Session, commands: list[str]) -> bool:
    ok = True
    flow: FlowState = session.flow
    start = 0
    for i, text in enumerate(commands):
        if _is_z(text):
            ok = _z(session, text, commands[start:i]) and ok
            start = i + 1
            continue
        word = text.split(None, 1)[0].lower() if text.split() else ""
        if word not in (".if", ".elsif", ".else"):
            flow.last_if = None
        one = session.run_one(text)
        if flow.interrupted:
            return False
        if not one and flow.depth:
            raise Abort()  # as in WinDbg, an error ends the whole program (.catch ends just its block)
        ok = one and ok
    return ok


def run_block(session: Session, body: str) -> bool:
    return run_commands(session, split_commands(T.expand(body, session.aliases)))


def condition(session: Session, text: str) -> bool:
    return evaluate(session, text) != 0


def evaluate(session: Session, text: str) -> int:
    if session.flow.cpp is not None:
        return session.flow.cpp(text)
    return Evaluator(session).evaluate(text)


class _Construct:
    """Runs a construct's body: depth for Ctrl-C and aborts, a loop or catch counted."""

    def __init__(self, session: Session, loop: bool = False, catch: bool = False) -> None:
        self.session, self.loop, self.catch = session, loop, catch

    def __enter__(self) -> _Construct:
        flow = self.session.flow
        flow.depth += 1
        flow.loops += self.loop
        flow.catches += self.catch
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        flow = self.session.flow
        flow.depth -= 1
        flow.loops -= self.loop
        flow.catches -= self.catch
        # the outermost construct ends an aborted program (its failing command said why)
        return kind is Abort and flow.depth == 0


def _loop(session: Session, step: Callable[[], bool], body: str) -> None:
    """Run `body` while step() says so; .break and .continue as in C."""
    while step():
        try:
            run_block(session, body)
        except Break:
            break
        except Continue:
            continue


# -- the tokens ---------------------------------------------------------------------------------
def do_if(session: Session, rest: str, taken: bool = False) -> None:
    """`.if (c) { } [.elsif (c) { }]... [.else { }]`; `taken`: an earlier branch already ran."""
    flow = session.flow
    pos = 0
    kind = ".if"
    with _Construct(session):
        while True:
            if kind == ".else":
                cond = None
            else:
                cond, pos = T.take_condition(rest, pos)
            body, pos = T.take_block(rest, pos)
            if not taken and (cond is None or condition(session, cond)):
                taken = True
                flow.last_if = None
                run_block(session, body)
            tail = rest[pos:].lstrip(" \t;")
            if not tail:
                break
            word = tail.split(None, 1)[0].split("{", 1)[0].split("(", 1)[0].lower()
            if word not in (".elsif", ".else") or kind == ".else":
                raise T.syntax_error(rest)
            kind = word
            pos = len(rest) - len(tail) + len(word)
    flow.last_if = taken


def do_else(session: Session, name: str, rest: str) -> None:
    """`.elsif`/`.else` on their own (a script's `}` ended the line before them)."""
    flow = session.flow
    if flow.last_if is None:
        raise CommandError(f"^ Syntax error in '{name} {rest}'.strip(): {name} without .if")
    taken = flow.last_if
    if name == ".else":
        body, pos = T.take_block(rest)
        if rest[pos:].strip():
            raise T.syntax_error(rest)
        if not taken:
            with _Construct(session):
                run_block(session, body)
        flow.last_if = None
        return
    do_if(session, rest, taken)


def do_for(session: Session, rest: str) -> None:
    head, pos = T.take_parens(rest)
    body, end = _only_block(rest, pos)
    parts = T.split_top(head, ";")
    if len(parts) < 3:
        raise CommandError(f"^ Syntax error in '.for {rest.strip()}': .for (Init ; Condition ; Increment) {{ ... }}")
    init, cond, increments = parts[0], parts[1], ";".join(parts[2:])
    first = [True]

    def step() -> bool:
        if first[0]:
            first[0] = False
        elif increments.strip():
            run_commands(session, split_commands(increments))
        return condition(session, cond)

    with _Construct(session, loop=True):
        if init.strip():
            run_commands(session, split_commands(init))
        _loop(session, step, body)


def do_while(session: Session, rest: str) -> None:
    cond, pos = T.take_condition(rest)
    body, _ = _only_block(rest, pos)
    with _Construct(session, loop=True):
        _loop(session, lambda: condition(session, cond), body)


def do_do(session: Session, rest: str) -> None:
    body, pos = T.take_block(rest)
    cond = rest[pos:].strip().lstrip(";").strip()
    if not cond:
        raise CommandError(f"^ Syntax error in '.do {rest.strip()}': .do {{ ... }} (Condition)")
    first = [True]

    def step() -> bool:
        if first[0]:
            first[0] = False
            return True
        return condition(session, cond)

    with _Construct(session, loop=True):
        _loop(session, step, body)


def do_block(session: Session, rest: str) -> None:
    body, _ = _only_block(rest, 0)
    with _Construct(session):
        run_block(session, body)


def do_catch(session: Session, rest: str) -> None:
    """Errors inside end the block, not the program; `.leave` ends it too."""
    body, _ = _only_block(rest, 0)
    before = session.failures
    with _Construct(session, catch=True):
        try:
            run_block(session, body)
        except (Abort, Leave):
            pass
    session.failures = before  # a caught error does not fail the run


def do_loop_exit(session: Session, name: str) -> None:
    flow = session.flow
    if name == ".leave":
        if not flow.catches:
            raise CommandError(".leave is only valid inside a .catch block")
        raise Leave()
    if not flow.loops:
        raise CommandError(f"{name} is only valid inside a .for, .while or .do loop")
    raise Break() if name == ".break" else Continue()


def do_foreach(session: Session, rest: str, capture: Callable[[str], str], read_file: Callable[[str], str]) -> None:
    """`.foreach [/pS n] [/ps n] [/s|/f] ( Var {InCommands} | "String" | "File" ) { OutCommands }`."""
    words = rest.lstrip()
    initial = every = 0
    source = "commands"
    while words.startswith("/"):
        opt, _, words = words.partition(" ")
        if opt in ("/pS", "/ps"):
            number, _, words = words.lstrip().partition(" ")
            try:
                value = Evaluator(session).evaluate(number)
            except Exception:
                raise CommandError(f"^ Syntax error in '.foreach {rest.strip()}': {opt} needs a number") from None
            if opt == "/pS":
                initial = value
            else:
                every = value
        elif opt in ("/s", "/f"):
            source = "string" if opt == "/s" else "file"
        else:
            raise CommandError(f"^ Syntax error in '.foreach {rest.strip()}': unknown option {opt}")
        words = words.lstrip()
    head, pos = T.take_parens(words)
    body, _ = _only_block(words, pos)
    var, _, what = head.strip().partition(" ")
    what = what.strip()
    if not var:
        raise T.syntax_error(".foreach " + rest)
    if source == "commands":
        inner, _ = T.take_block(what)
        text = capture(inner)
    else:
        if not (len(what) >= 2 and what[0] == what[-1] == '"'):
            raise CommandError(f"^ Syntax error in '.foreach {rest.strip()}': the {source} must be quoted")
        text = what[1:-1] if source == "string" else read_file(what[1:-1])
    with _Construct(session, loop=True):
        for token in _tokens(text.split(), initial, every):
            try:
                run_block(session, T.substitute_variable(body, var, token))
            except Break:
                break
            except Continue:
                continue


def _tokens(tokens: list[str], initial: int, every: int) -> Iterator[str]:
    i = initial
    while i < len(tokens):
        yield tokens[i]
        i += 1 + every


def do_j(session: Session, rest: str) -> None:
    """`j Condition Command1 ; Command2`: the quotes ('...') group several commands."""
    ev = Evaluator(session)
    try:
        value, pos = ev.parse(rest)
    except Exception:
        raise CommandError(f"^ Syntax error in 'j {rest.strip()}'") from None
    branches = _j_branches(rest[pos:])
    chosen = branches[0] if value else (branches[1] if len(branches) > 1 else "")
    with _Construct(session):
        run_block(session, chosen)


def _j_branches(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in text:
        if ch == "'":
            quoted = not quoted
            continue
        if ch == ";" and not quoted and len(parts) == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if quoted:
        raise CommandError(f"^ Syntax error in 'j {text.strip()}': missing closing quote (')")
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def _is_z(text: str) -> bool:
    return text[:1] in "zZ" and text[1:].lstrip().startswith("(")


def _z(session: Session, text: str, before: list[str]) -> bool:
    """`Commands ; z(Condition)`: run the commands again while the condition holds."""
    cond, end = T.take_parens(text, 1)
    if text[end:].strip():
        raise T.syntax_error(text)
    with _Construct(session, loop=True):
        while condition(session, cond):
            try:
                run_commands(session, before)
            except Break:
                break
            except Continue:
                continue
    return True


def _only_block(text: str, pos: int) -> tuple[str, int]:
    body, end = T.take_block(text, pos)
    if text[end:].strip(" \t;"):
        raise CommandError(f"^ Syntax error in '{text.strip()}': unexpected '{text[end:].strip()}' after the block")
    return body, end


def for_each(session: Session, blocks: list[str], before: Callable[[int], None] | None = None) -> None:
    """The iteration extensions (!for_each_process, !list ...): each block a round of a loop
    (`before(i)` runs first: !list sets @$extret)."""
    with _Construct(session, loop=True):
        for i, block in enumerate(blocks):
            if before is not None:
                before(i)
            try:
                run_block(session, block)
            except Break:
                break
            except Continue:
                continue
