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

import struct
from dataclasses import dataclass

from kdshell.commands.memory import needs_memory
from kdshell.dispatch import command
from kdshell.errors import CommandError, KdError
from kdshell.format import ptr
from kdshell.stack.params import kp_type_name
from kdshell.symbols import types as T
from kdshell.symbols import typeformat
from kdshell.symbols.locals import Where, frame_registers, locate, procedure_at

SYNTAX = "dv [/t] [/v] [/V] [/i] [Pattern]"
NAME_WIDTH = 15           # names are right-aligned in at least this many columns
LOCATION_WIDTH_T = 17     # /v /t: the location column is as wide as a 64-bit address
UNAVAILABLE = "<value unavailable>"
MEMORY_ERROR = "<Memory access error>"
NO_PRIVATE = ("Unable to enumerate locals, HRESULT 0x80004005",
              "Private symbols (symbols.pri) are required for locals.")
_STRINGS = ("_UNICODE_STRING", "UNICODE_STRING", "_STRING", "STRING", "_ANSI_STRING")


@dataclass
class DvOptions:
    types: bool = False      # /t
    where: bool = False      # /v
    relative: bool = False   # /V
    kinds: bool = False      # /i
    pattern: str | None = None


def _options(inv) -> DvOptions:
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
def dv(session, inv):
    o = _options(inv)
    frame = _selected_frame(session)
    module, pdb = _private_pdb(session, frame)
    rva = frame.lookup_address - module.base
    proc = procedure_at(pdb, rva)
    if proc is None:
        raise KdError(f"Unable to enumerate locals: {module.name}'s private symbols have no "
                      f"procedure record for {ptr(frame.ip, session.is64)} (assembly code?)")
    registers = frame_registers(frame, session.is64)
    pattern = T.wildcard(o.pattern) if o.pattern else None
    values = _Values(session)
    rows = []
    for var in proc.visible(rva):
        if pattern is not None and not pattern.fullmatch(var.name):
            continue
        t = pdb.type_by_index(var.type_index)
        where = locate(proc, var, registers, rva, t.strip().size or None)
        rows.append((var, t, where, values.text(t, where)))
    session.out.lines(_lines(rows, o, session.is64))


def _selected_frame(session):
    """The frame `.frame` selected (0 by default)."""
    state = session.context
    number = state.frame_number
    frames = state.walk(number + 1)
    if number >= len(frames):
        raise KdError(f"Frame {number:#x} is not on the stack (it has {len(frames):#x} frames)")
    return frames[number]


def _private_pdb(session, frame):
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
def _lines(rows, o: DvOptions, is64: bool) -> list[str]:
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


def c_type_name(t: T.Type) -> str:
    """WinDbg's C spelling of a type: `struct _DRIVER_OBJECT *`, `unsigned char [32]`,
    `unsigned int64`, `long`."""
    s = t.strip()
    if s.kind == T.ARRAY and s.target is not None:
        return f"{c_type_name(s.target)} [{s.count}]"
    return kp_type_name(t)


# -- values ---------------------------------------------------------------------------------------
class _Values:
    """One variable's value on one line, as WinDbg's `??` prints it (see the module note)."""

    def __init__(self, session):
        self.is64 = session.is64
        self.ps = 8 if self.is64 else 4
        self.read = session.memory.read
        # dt's renderer reads the strings, counted strings and list links (its memory policy)
        self.dt = typeformat._Renderer(self.ps, typeformat.DtOptions(), self.read, None)

    def text(self, t: T.Type, where: Where) -> str:
        if not where.available:
            return UNAVAILABLE
        s = t.strip()
        if s.is_aggregate or s.kind == T.ARRAY:
            name = c_type_name(s)
            detail = self._detail(s, where.address) if where.address is not None else None
            if detail and s.name in _STRINGS:  # a counted string is shown as its text alone
                return detail
            return f"{name} {detail}" if detail else name
        size = s.size or self.ps
        data = self._bytes(where, size)
        if data is None:
            return MEMORY_ERROR
        if s.kind == T.POINTER:
            return self.pointer(s, int.from_bytes(data, "little"))
        if s.kind == T.ENUM:
            return self.enum(s, data)
        if s.kind == T.BASE:
            return self.base(s, data)
        return c_type_name(s)

    def _bytes(self, where: Where, size: int) -> bytes | None:
        if where.address is None:  # in a register
            return (where.value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        try:
            data = self.read(where.address, size)
        except KdError:
            return None
        return bytes(data) if len(data) == size else None

    def _detail(self, s: T.Type, address: int) -> str | None:
        if s.kind == T.ARRAY:
            elem = s.target.strip() if s.target is not None else None
            text_array = elem is not None and elem.kind == T.BASE and (
                elem.encoding == T.WCHAR or (elem.size == 1 and elem.encoding == T.CHAR))
            if not text_array or not s.count:
                return None
            shown = self.dt.array(s, address, 0)  # dt's `[32]  "text"`
            return shown.split("  ", 1)[1] if "  " in shown else None
        return self.dt.summary(s, address, quiet=True)

    def pointer(self, s: T.Type, p: int) -> str:
        text = typeformat.format_pointer(p, s.size or self.ps)
        tgt = s.target.strip() if s.target is not None else None
        if tgt is None:
            return text
        if tgt.kind == T.BASE and (tgt.encoding == T.WCHAR or (tgt.size == 1 and tgt.encoding == T.CHAR)):
            return f'{text} ""' if p == 0 else f"{text} {self.dt.cstring(p, 1 if tgt.size == 1 else 2)}"
        if p == 0 or not tgt.is_aggregate:
            return text
        if tgt.name in _STRINGS:
            detail = self.dt.summary(tgt, p, quiet=True)
            return f"{text} {detail}" if detail else text
        if tgt.name in ("_DRIVER_OBJECT", "DRIVER_OBJECT"):
            member = tgt.member("DriverName")
            name = self.dt.summary(member[1].type.strip(), p + member[0], quiet=True) if member else None
            if name is None or name.startswith('"--- memory read error'):
                name = "{...}"  # WinDbg's text when the name cannot be read
            return f"{text} Driver {name}"
        return text

    def enum(self, s: T.Type, data: bytes) -> str:
        value = int.from_bytes(data, "little", signed=True)
        name = s.enum_name(value)
        if name is None:
            name = s.enum_name(int.from_bytes(data, "little"))
        return f"{name} (0n{value})" if name else f"0n{value}"

    def base(self, s: T.Type, data: bytes) -> str:
        enc, size = s.encoding, len(data)
        if enc in (T.VOID, T.NOTYPE) or size == 0:
            return c_type_name(s)
        if enc == T.FLOAT and size in (4, 8):
            return repr(struct.unpack("<f" if size == 4 else "<d", data)[0])
        v = int.from_bytes(data, "little", signed=s.signed)
        if enc == T.BOOL:
            return "true" if v else "false"
        if enc == T.WCHAR or (size == 1 and enc in (T.CHAR, T.INT)):
            ch = chr(v & 0xFFFF) if 0x20 <= (v & 0xFFFF) < 0x7F else ""
            return f"0n{v} '{ch}'" if s.signed else f"0x{v:02x} '{ch}'"
        if enc == T.HRESULT:
            return f"0x{v & 0xFFFFFFFF:08x}"
        if s.signed:
            return f"0n{v}"
        return typeformat.format_quad(v) if size == 8 else ("0" if v == 0 else f"0x{v:x}")
