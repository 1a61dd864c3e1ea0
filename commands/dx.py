"""dx: a C++ expression over the PDB types shown in the data model's tree layout
(`Expr : value [Type: T]`, then `[+0xOFF] Field : value [Type: T]` children), with -r N levels;
or the data model's basic objects (kdshell.script.model): Debugger.Sessions, @$cursession,
@$curprocess, @$curthread, @$curstack, with LINQ methods, -g showing a collection as a grid.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdshell.cppexpr import CppEvaluator, Value, as_rvalue
from kdshell.dispatch import Invocation, command
from kdshell.errors import CommandError, KdError
from kdshell.symbols import types as T

if TYPE_CHECKING:
    from kdshell.session import Session

SYNTAX = "dx [-r[N]] [-g] Expression"
MAX_CHILDREN = 2000


@command("dx", family="memory", syntax=SYNTAX, summary="Show a C++ expression as the data model's tree (dx -r2 for two levels)",
         example="dx -r1 (nt!_EPROCESS*)@$proc",
         details="Types from the PDBs as ?? uses them; fields show as '[+0xOFF] Name : value [Type: T]'.\n"
                 "Structures nested deeper than -r N show their type only. The data model: Debugger.Sessions,\n"
                 "@$cursession, @$curprocess, @$curthread, @$curstack.Frames, .Processes, .Threads, .Modules,\n"
                 "and Where, Select, OrderBy(Descending), First, Count, Flatten, Take, Any, All with x => ...")
def dx(session: Session, inv: Invocation) -> None:
    from kdshell.commands.cpp import Scope

    text = inv.text.strip()
    depth = 1
    grid = False
    while text.startswith("-"):
        opt, _, text = text.partition(" ")
        if opt.startswith("-r") and (opt[2:].isdigit() or not opt[2:]):
            depth = int(opt[2:]) if opt[2:] else 1
        elif opt == "-g":
            grid = True
        else:
            raise CommandError(f"dx: option {opt} is not supported ({SYNTAX})")
        text = text.strip()
    if not text:
        raise CommandError(f"dx: which expression? ({SYNTAX})")
    if "@$cur" in text or text.startswith("Debugger"):
        _model(session, text, depth, grid)
        return
    if grid:
        raise CommandError("dx -g: a grid shows a collection (Debugger.Sessions, @$cursession.Processes ...)")
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


# -- the data model ---------------------------------------------------------------------------------
def _model(session: Session, text: str, depth: int, grid: bool) -> None:
    from kdshell.script import model

    value = model.Evaluator(_roots(session)).evaluate(text)
    if grid:
        session.out.lines(_grid(text, value))
        return
    session.out.lines(model.tree(text, value, depth))


def _roots(session: Session) -> dict[str, Any]:
    from kdshell.script.model import Obj

    kernel = session.kernel

    def modules() -> list[Obj]:
        return [Obj(m.path, {"Name": m.path, "BaseAddress": m.base, "Size": m.size,
                             "TimeDateStamp": m.timestamp or 0}) for m in session.symbols.modules.modules]

    def thread(t: Any) -> Obj:
        return Obj("", {"Id": t.tid or 0, "KernelObject": t.address}, t.tid)

    def process(p: Any) -> Obj:
        return Obj(p.image, {"Name": p.image, "Id": p.pid or 0, "KernelObject": p.address,
                             "Threads": lambda: [thread(t) for t in kernel.threads(p).threads],
                             "Modules": modules}, p.pid)

    def processes() -> list[Obj]:
        return [process(p) for p in kernel.processes().processes]

    def current_process() -> Obj:
        address = kernel.current_process()
        if not address:
            raise KdError("dx: the dump does not say which process is current")
        return process(kernel.process(address))

    def current_thread() -> Obj:
        address = kernel.current_thread()
        if not address:
            raise KdError("dx: the dump does not say which thread is current")
        return thread(kernel.thread(address))

    def stack() -> Obj:
        def frames() -> list[Obj]:
            out = []
            for f in session.context.walk(session.context.kframes):
                hit = session.symbolize(f.ip)
                name = (f"{hit[0]}+0x{hit[1]:x}" if hit[1] else hit[0]) if hit else f"0x{f.ip:x}"
                out.append(Obj(name, {"InstructionOffset": f.ip, "StackOffset": f.sp, "ReturnOffset": f.ret or 0}))
            return out
        return Obj("", {"Frames": frames})

    def current_session() -> Obj:
        return Obj(str(session.dump.path), {"Processes": processes, "Modules": modules})

    return {"Debugger": lambda: Obj("", {"Sessions": lambda: [current_session()]}),
            "@$cursession": current_session, "@$curprocess": current_process,
            "@$curthread": current_thread, "@$curstack": stack}


def _grid(label: str, value: Any) -> list[str]:
    """dx -g: a collection as a table, one row per element, a column per scalar field."""
    from kdshell.script.model import Obj, _display

    if not isinstance(value, list):
        raise CommandError("dx -g: a grid shows a collection")
    columns: list[str] = []
    for v in value:
        if isinstance(v, Obj):
            columns += [k for k, f in v.items() if not callable(f) and k not in columns]
    rows = []
    for i, v in enumerate(value):
        key = f"[0x{v.key:x}]" if isinstance(v, Obj) and v.key is not None else f"[{i}]"
        cells = [_display(v.get(c, "")) if isinstance(v, Obj) else _display(v) for c in columns] \
            if columns else [_display(v)]
        rows.append([key] + cells)
    heads = [""] + (columns or ["Value"])
    widths = [max(len(r[j]) for r in rows + [heads]) for j in range(len(heads))]
    rule = "=" * (sum(widths) + 3 * len(widths) + 1)
    lines = [rule, "= " + " = ".join(h.ljust(w) for h, w in zip(heads, widths)) + " =", rule]
    for r in rows:
        lines.append("= " + r[0].ljust(widths[0]) + " - " + " - ".join(c.ljust(w) for c, w in zip(r[1:], widths[1:]))
                     + " =")
    lines.append(rule)
    return lines
