"""dv: the parameters and local variables of the selected frame (`.frame N`), from the private
PDB of the frame's module (kdshell.symbols.locals finds and places them; this module prints).

What the lines look like, from public WinDbg transcripts:
    `           argc = 0n1`             names right-aligned, at least 15 wide (or the longest)
    `0022fd48 @ebp+0x08            argc = 0n1`         /V: address, relative to a register
    `ffffeb8e`977aa908           Request = 0x00000000`00000000`           /v
    `ae1ffab8          struct _DRIVER_OBJECT * DriverObject = 0xa0291430 Driver "\\Driver\\booster"`
                                       /v /t: the type before the name, no right alignment; the
                                       location column is 17 wide then (an x86 address + 9 blanks)
Values as WinDbg's `??` prints one on a line: `0n-1` (signed; int 0 is `0n0`), `0x4e4` and `0`
(unsigned), `0x003a1480` / `0x00000000`00000000` (pointers, every digit, NULL too),
`0x0127573c "AAAA"` (char and wchar_t pointers; NULL ones `""`), `0x02 ''` (unsigned char),
`U_ZERO_ERROR (0n0)` (enums), `char [157] "Aa"` (character arrays), `struct _WDF_DRIVER_CONFIG`
(structures: the name only, a LIST_ENTRY's links after it), `"\\Device\\Booster"` (a
UNICODE_STRING: its text alone), a pointer to a UNICODE_STRING its text, a pointer to a
DRIVER_OBJECT `Driver "\\Driver\\x"` (WinDbg's NatVis description; `Driver {...}` when the name
cannot be read). A variable not live at the
frame's instruction, or in a register the unwinder did not restore for this frame:
`<value unavailable>`; a stack slot the dump does not hold: `<Memory access error>`.

Without private symbols WinDbg fails with two lines (HRESULT 0x80004005 and "Private symbols
(symbols.pri) are required for locals."); so does kdshell (tests/test_locals.py pins both).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dataclasses import dataclass

from kdshell.dispatch import Invocation, command, needs_memory
from kdshell.errors import CommandError, KdError
from kdshell.format import ptr
from kdshell.symbols import types as T
from kdshell.symbols.locals import Where, frame_registers, locate, procedure_at
from kdshell.symbols.values import ValueText, c_type_name

if TYPE_CHECKING:
    from kdshell.session import Session

SYNTAX = "dv [/t] [/v] [/V] [/i] [Pattern]"
NAME_WIDTH = 15           # names are right-aligned in at least this many columns
LOCATION_WIDTH_T = 17     # /v /t: the location column is as wide as a 64-bit address
NO_PRIVATE = ("Unable to enumerate locals, HRESULT 0x80004005",
              "Private symbols (symbols.pri) are required for locals.")


@dataclass
class DvOptions:
    types: bool = False      # /t
    where: bool = False      # /v
    relative: bool = False   # /V
    kinds: bool = False      # /i
    pattern: str | None = None


def _options(inv: Invocation) -> DvOptions:
    o = DvOptions()
    for word in inv.args:
        if word.startswith("/") and len(word) > 1:
            for c in word[1:]:
                if c == "t":
                    o.types = True
                elif c == "v":
                    o.where = True
                elif c == "V":
                    o.where = o.relative = True
                elif c == "i":
                    o.kinds = True
                else:
                    raise CommandError(f"dv: unknown option '/{c}' ({SYNTAX})")
        elif o.pattern is None:
            o.pattern = word
        else:
            raise CommandError(f"dv: one pattern only, '{word}' is a second ({SYNTAX})")
    return o


@command("dv", family="stack", needs=(needs_memory,), syntax=SYNTAX,
         summary="Show the parameters and local variables of the current frame (.frame selects "
                 "it) from the module's private symbols",
         example="dv /t /v",
         details="/t: types, /v: address (or @register) of each, /V: also relative to its base\n"
                 "register, /i: parameter or local. Pattern: WinDbg wildcards on the names.\n"
                 "Variables not live at the frame's instruction, or in registers the unwinder did\n"
                 "not restore for frames above 0, show <value unavailable>.")
def dv(session: Session, inv: Invocation) -> None:
    o = _options(inv)
    frame = session.context.selected_frame()
    module, pdb = _private_pdb(session, frame)
    rva = frame.lookup_address - module.base
    proc = procedure_at(pdb, rva)
    if proc is None:
        raise KdError(f"Unable to enumerate locals: {module.name}'s private symbols have no "
                      f"procedure record for {ptr(frame.ip, session.is64)} (assembly code?)")
    registers = frame_registers(frame, session.is64)
    pattern = T.wildcard(o.pattern) if o.pattern else None
    values = ValueText(session)
    rows = []
    for var in proc.visible(rva):
        if pattern is not None and not pattern.fullmatch(var.name):
            continue
        t = pdb.type_by_index(var.type_index)
        where = locate(proc, var, registers, rva, t.strip().size or None)
        rows.append((var, t, where, values.text(t, where)))
    session.out.lines(_lines(rows, o, session.is64))


def _private_pdb(session: Session, frame: Any) -> Any:
    symbols = session.symbols
    module = symbols.module_at(frame.lookup_address)
    if module is None:
        raise KdError(f"Unable to enumerate locals: {ptr(frame.ip, session.is64)} is not in any "
                      "loaded module")
    table = symbols.table(module)
    pdb = getattr(table, "pdb", None)
    if pdb is None:
        raise KdError(f"Unable to enumerate locals: no PDB for {module.name} "
                      "(dv needs its private symbols; see .sympath and .reload)")
    if not getattr(table, "private", False):
        session.out.error(NO_PRIVATE[0])
        raise KdError(NO_PRIVATE[1])
    return module, pdb


# -- the lines ------------------------------------------------------------------------------------
def _lines(rows: Any, o: DvOptions, is64: bool) -> list[str]:
    width = max([NAME_WIDTH] + [len(var.name) for var, *_ in rows])
    address_width = 17 if is64 else 8
    out = []
    for var, t, where, value in rows:
        line = ""
        if o.kinds:
            line += "prv param " if var.is_param else "prv local "
        if o.where:
            column = _location(where, is64).ljust(address_width)
            line += (column.ljust(LOCATION_WIDTH_T) if o.types else column) + " "
            if o.relative:
                line += _relative(where).ljust(9) + " "
        if o.types:
            line += f"{c_type_name(t)} {var.name}"
        else:
            line += var.name.rjust(width)
        out.append(f"{line} = {value}")
    return out


def _location(where: Where, is64: bool) -> str:
    if where.address is not None:
        return ptr(where.address, is64)
    if where.register is not None:
        return "@" + where.register.name
    return ""


def _relative(where: Where) -> str:
    """`@ebp+0x08`, `@rbp-0x40`: the address as its base register and offset (/V)."""
    if where.address is None or where.base is None:
        return ""
    sign = "-" if where.offset < 0 else "+"
    return f"@{where.base.name}{sign}0x{abs(where.offset):02x}"
