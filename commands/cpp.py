"""??: evaluate a C++ expression and show its type and value (windbg.md §13), on
kdshell.cppexpr; types come from the modules' PDBs as dt finds them (commands/dt.py), locals
from the selected frame as dv finds them (commands/locals.py).

What the lines look like, from public WinDbg transcripts:
    `int 0n65`, `unsigned int 0xc000100c`, `unsigned int64 0xffffffff`ffffffff`, `bool true`,
    `unsigned char 0x20 ' '`, `ULONG 0` (Windows type names kept as typed in a cast),
    `struct _OBJECT_TYPE * 0xfffffa80`02755b60` then dt's field lines of the structure,
    `struct _UNICODE_STRING` then dt's ` "text"` line and its field lines,
    `char * 0x... "text"`, `unsigned char [15] "System"` (character arrays).
Scalars print as dv prints a value (the same WinDbg rules); structures as dt prints them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.cppexpr import CppEvaluator, Value, as_rvalue
from kdshell.dispatch import Invocation, command
from kdshell.errors import CommandError, KdError
from kdshell.expr import ExprError
from kdshell.symbols import typeformat
from kdshell.symbols import types as T
from kdshell.symbols.locals import Where, frame_registers, locate, procedure_at
from kdshell.symbols.values import MEMORY_ERROR, UNAVAILABLE, ValueText, c_type_name

if TYPE_CHECKING:
    from kdshell.session import Session


@command("??", family="memory", syntax="?? Expression",
         summary="Evaluate a C++ expression: its type and value (structures as dt shows them)",
         example="?? ((nt!_EPROCESS*)@$proc)->ImageFileName",
         details="Types from the modules' PDBs: casts (nt!_EPROCESS*), ->, ., [i], * and &,\n"
                 "sizeof(Type), #FIELD_OFFSET(Type, Field), locals of the frame .frame selects,\n"
                 "@$proc/@$thread typed as nt's structures, @@masm(...) for a MASM part.\n"
                 "Numbers are C++: decimal unless 0x (0n, 0t, 0y are MASM's).")
def cpp(session: Session, inv: Invocation) -> None:
    if not inv.text:
        raise CommandError("Syntax: ?? Expression (a C++ expression; ? takes MASM)")
    scope = Scope(session)
    ev = CppEvaluator(session, scope)
    value = ev.evaluate(inv.text)
    session.out.lines(value_lines(session, ev, value))


class Scope:
    """Type names and the selected frame's variables, for kdshell.cppexpr."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._locals: dict[str, tuple] | None = None

    def find_type(self, module: str | None, name: str, quiet: bool = False) -> T.Type | None:
        alias = T._BASE_ALIASES.get(name)  # ULONG, UCHAR, BOOLEAN: kept as spelled (`ULONG 0`)
        if module is None and (alias or name in T.BASE_TYPES):
            base = T.BASE_TYPES[alias or name]
            return T.Type(T.BASE, name, base.size, encoding=base.encoding, signed=base.signed)
        sources = self.session.symbols.type_sources(module)
        for _, source, _ in sources:
            t = source.find(name)
            if t is not None:
                return t
        if module is not None and not sources and not quiet:
            if self.session.symbols.module(module) is not None:
                raise ExprError(f"Type information missing error at '{module}!{name}'")
        return None

    def variable(self, name: str) -> Value | None:
        found = self._frame_variables().get(name)
        if found is None:
            return None
        var_name, t, where = found
        if where.address is not None:
            return Value(t, address=where.address)
        if where.value is not None:
            return Value(t, value=where.value)
        raise KdError(f"{var_name} is {UNAVAILABLE} at this frame's instruction")

    def _frame_variables(self) -> dict[str, tuple]:
        """name -> (name, Type, Where) for the frame `.frame` selected, as dv finds them; empty
        without private symbols (then a name is looked up as a global)."""
        if self._locals is not None:
            return self._locals
        self._locals = {}
        session = self.session
        try:
            frame = session.context.selected_frame()
        except KdError:
            return self._locals
        module = session.symbols.module_at(frame.lookup_address)
        table = session.symbols.table(module) if module is not None else None
        pdb = getattr(table, "pdb", None)
        if module is None or pdb is None or not getattr(table, "private", False):
            return self._locals
        rva = frame.lookup_address - module.base
        proc = procedure_at(pdb, rva)
        if proc is None:
            return self._locals
        registers = frame_registers(frame, session.is64)
        for var in proc.visible(rva):
            t = pdb.type_by_index(var.type_index)
            self._locals.setdefault(var.name, (var.name, t, locate(proc, var, registers, rva,
                                                                   t.strip().size or None)))
        return self._locals


def value_lines(session: Session, ev: CppEvaluator, value: Value) -> list[str]:
    """What ?? prints for a value: one line, or a structure's type line and dt's lines."""
    value = as_rvalue(ev, value)
    t = value.type.strip()
    name = c_type_name(value.type)
    ps = ev.ps
    read = session.memory.read if session.memory is not None else None

    def symbolize(address: int) -> str | None:
        hit = session.symbolize(address)
        return None if hit is None else (f"{hit[0]}+0x{hit[1]:x}" if hit[1] else hit[0])

    if t.is_aggregate:
        if value.address is None or read is None:
            return [name]
        if not _readable(session, value.address):
            raise ExprError(f"Memory access error at '{ev.text[value.at:]}'")
        return [name] + typeformat.render(t, value.address, read, pointer_size=ps, symbolize=symbolize)
    if t.kind == T.FUNCTION:
        return [f"{name} {typeformat.format_pointer(value.value or 0, ps)}"]
    if t.kind == T.POINTER:
        p = ev.load(value) & ((1 << 8 * ps) - 1)
        target = t.target.strip() if t.target is not None else None
        if target is not None and target.is_aggregate and target.fields and p and read is not None:
            head = f"{name} {typeformat.format_pointer(p, t.size or ps)}"
            if not _readable(session, p):  # the pointer is the value: show it, not an error
                return [head]
            return [head] + typeformat.render(target, p, read, pointer_size=ps, symbolize=symbolize)
        value = Value(value.type, value=p, at=value.at)
    if value.address is not None:
        where = Where(address=value.address)
    else:
        where = Where(value=(value.value or 0) & ((1 << 8 * max(t.size, ps)) - 1))
    if read is None:
        raise ExprError(f"Memory access error at '{ev.text[value.at:]}'")
    text = ValueText(session).text(value.type, where)
    if text == MEMORY_ERROR:
        raise ExprError(f"Memory access error at '{ev.text[value.at:]}'")
    if t.kind == T.ARRAY:  # dv's text of an array already starts with its type
        return [text]
    return [f"{name} {text}"]


def _readable(session: Session, address: int) -> bool:
    memory = session.memory
    try:
        return memory is not None and len(memory.read(address, 1)) == 1
    except KdError:
        return False
