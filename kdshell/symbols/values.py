"""One value on one line, as WinDbg's `??` and `dv` print it (the forms are listed in
commands/locals.py's note): the C spelling of types (`struct _DRIVER_OBJECT *`), numbers
(`0n-1`, `0x4e4`), pointers with the string or driver name they lead to, counted strings as
their text. Used by dv and ??; dt has its own field lines (typeformat)."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Protocol

from kdshell.errors import KdError
from kdshell.symbols import typeformat
from kdshell.symbols import types as T
from kdshell.symbols.locals import Where

if TYPE_CHECKING:
    from kdshell.memory.virtual import VirtualMemory

UNAVAILABLE = "<value unavailable>"
MEMORY_ERROR = "<Memory access error>"
_STRINGS = ("_UNICODE_STRING", "UNICODE_STRING", "_STRING", "STRING", "_ANSI_STRING")


def c_type_name(t: T.Type | None) -> str:
    """WinDbg's C spelling of a type, in dv, ?? and kp: `struct _DRIVER_OBJECT *`,
    `unsigned char [32]`, `unsigned int64`, `long`."""
    if t is None:
        return "<unknown>"
    s = t.strip()
    if s.kind == T.ARRAY and s.target is not None:
        return f"{c_type_name(s.target)} [{s.count}]"
    text = T.c_name(t).replace("__int64", "int64")
    inner, depth = s, 0
    while inner.kind == T.POINTER and inner.target is not None and depth < 8:
        inner, depth = inner.target.strip(), depth + 1
    if inner.kind in (T.STRUCT, T.CLASS, T.UNION, T.ENUM) and not text.startswith(inner.kind + " "):
        text = f"{inner.kind} {text}"
    return text


class Target(Protocol):
    """What ValueText reads of the session (a floor above: not imported)."""

    @property
    def is64(self) -> bool: ...

    @property
    def memory(self) -> VirtualMemory | None: ...


class ValueText:
    """One variable's value on one line, as WinDbg's `??` prints it (see the module note)."""

    def __init__(self, session: Target) -> None:
        self.is64 = session.is64
        self.ps = 8 if self.is64 else 4
        memory = session.memory
        if memory is None:
            raise KdError("Memory is not available in this dump (no page tables or saved ranges "
                          "kdshell can read)")
        self.read = memory.read
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
        if where.address is None:  # in a register: text() saw it available, so it has a value
            return (where.value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")  # type: ignore[operator]
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
