"""dx: a C++ expression over the PDB types shown in the data model's tree layout
(`Expr : value [Type: T]`, then `[+0xOFF] Field : value [Type: T]` children), with -r N levels.
The data model's objects (Debugger.Sessions, @$curprocess, LINQ methods) are not here yet.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.cppexpr import CppEvaluator, Value, as_rvalue
from kdshell.dispatch import Invocation, command
from kdshell.errors import CommandError, KdError
from kdshell.symbols import types as T

if TYPE_CHECKING:
    from kdshell.session import Session

SYNTAX = "dx [-r[N]] Expression"
MAX_CHILDREN = 2000


@command("dx", family="memory", syntax=SYNTAX, summary="Show a C++ expression as the data model's tree (dx -r2 for two levels)",
         example="dx -r1 (nt!_EPROCESS*)@$proc",
         details="Types from the PDBs as ?? uses them; fields show as '[+0xOFF] Name : value [Type: T]'.\n"
                 "Structures nested deeper than -r N show their type only. The data model's objects\n"
                 "(Debugger.Sessions, @$curprocess, LINQ) are not supported.")
def dx(session: Session, inv: Invocation) -> None:
    from kdshell.commands.cpp import Scope

    text = inv.text.strip()
    depth = 1
    while text.startswith("-"):
        opt, _, text = text.partition(" ")
        if opt.startswith("-r") and (opt[2:].isdigit() or not opt[2:]):
            depth = int(opt[2:]) if opt[2:] else 1
        else:
            raise CommandError(f"dx: option {opt} is not supported ({SYNTAX})")
        text = text.strip()
    if not text:
        raise CommandError(f"dx: which expression? ({SYNTAX})")
    if "@$cur" in text or "Debugger." in text or "=>" in text:
        raise CommandError("dx: the data model's objects (Debugger.*, @$cursession, LINQ) are not supported; "
                           "use a C++ expression such as (nt!_EPROCESS*)@$proc")
    ev = CppEvaluator(session, Scope(session))
    value = as_rvalue(ev, ev.evaluate(text))
    lines: list[str] = []
    _node(session, ev, text, value, depth, "", lines, None)
    session.out.lines(lines)


def _type_text(t: T.Type) -> str:
    from kdshell.symbols.values import c_type_name

    return c_type_name(t).replace("struct ", "").replace("union ", "").replace("class ", "")


def _scalar(session: Session, ev: CppEvaluator, value: Value) -> str:
    t = value.type.strip()
    if t.kind == T.ARRAY:
        target = t.target.strip() if t.target is not None else None
        if target is not None and target.kind == T.BASE and target.size == 1 and value.address is not None:
            memory = session.memory
            try:
                data = memory.read(value.address, t.size) if memory is not None else b""
            except KdError:
                return ""
            return '"' + data.split(b"\0", 1)[0].decode("latin-1") + '"'
        return ""
    number = ev.load(value)
    if t.kind == T.POINTER:
        return f"0x{number:x}"
    if t.kind == T.BASE and getattr(t, "signed", False):
        bits = 8 * (t.size or 8)
        number &= (1 << bits) - 1
        return str(number - (1 << bits) if number >> (bits - 1) else number)
    return f"0x{number:x}"


def _bits(f: T.Field) -> str:
    if f.bit_position is None or f.bit_length is None:
        return ""
    return f" ({f.bit_position + f.bit_length - 1:2d}:{f.bit_position:2d})"


def _node(session: Session, ev: CppEvaluator, label: str, value: Value, depth: int, indent: str,
          lines: list[str], width: int | None) -> None:
    t = value.type.strip()
    shown = label.ljust(width) if width else label
    try:
        text = "" if t.is_aggregate else _scalar(session, ev, value)
    except KdError:
        text = "<Unable to read memory>"
    lines.append(f"{indent}{shown}{' : ' + text if text else ''} [Type: {_type_text(value.type)}]".rstrip())
    target = t
    address = value.address
    if t.kind == T.POINTER and t.target is not None and t.target.strip().is_aggregate:
        target, address = t.target.strip(), ev.load(value)
    if depth <= 0 or not target.is_aggregate or address is None or not address:
        return
    fields = target.fields[:MAX_CHILDREN]
    names = [f"[+0x{f.offset:03x}{_bits(f)}] {f.name}" for f in fields]
    column = max((len(n) for n in names), default=0)
    for f, name in zip(fields, names):
        child = as_rvalue(ev, Value(f.type, address=address + f.offset))
        _node(session, ev, name, child, depth - 1, indent + "    ", lines, column)
