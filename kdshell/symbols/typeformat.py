"""WinDbg's `dt` output for a Type: the layout (no address) or the values at an address.

    render(pdb.find("_EPROCESS"))                       # layout
    render(t, 0xffff920fcfadb380, read, pointer_size=8)  # values, read(address, size) -> bytes

Independent of the session: it takes the type, an optional address, a reader that may raise
`MemoryNotPresent`, the target's pointer size, `DtOptions` (-r, -b, -a, -i, -o) and an optional
`symbolize(address) -> "nt!Func+0x10" | None` for function pointers. It returns lines.

What the lines look like, from public WinDbg transcripts (see ../shared/docs/windbg.md §6):
    layout    `   +0x440 UniqueProcessId  : Ptr64 Void`, `Pos 0, 1 Bit`, `[16] UChar`,
              `Ptr64     long` (function pointers: the C return type)
    values    `0x00000000`00000004 Void`, `(null)`, `_LIST_ENTRY [ 0xffff920f`cfadb380 - ... ]`,
              `_UNICODE_STRING "Process"`, `_LARGE_INTEGER 0x01d5094e`e0f80f70`,
              `0x7 ''` (UChar; 0 prints `0 ''`), `8 ''` (Char, decimal), `0n-1` (signed),
              `0x13d` (unsigned; 0 prints `0`), 64-bit values past 4 GB as `0x00000201`0b3ad000`,
              `200 ( NonPagedPoolNx )` (enums: hex without 0x, then the name),
              bitfields `0y1` and `0y00000011 (0x3)` (the value in parentheses past 4 bits),
              arrays `[2] 0x10c4` (first element) and char arrays `[15]  "System"`,
              unreadable `??` (`????` for pointers) and a closing `Memory read error <address>`.
    The name column is 16 wide (longer names push the colon out); with selected fields it is
    as wide as the longest selected name. Trailing blanks WinDbg leaves after `(null)` and `:`
    are not reproduced: every line is right-stripped.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Sequence

from kdshell.errors import MemoryNotPresent
from kdshell.symbols import types as T

# Field names are padded to 16 columns in a full listing, whatever the longest name is
# (`+0x000 Length           : 0x4c` beside `+0x004 InvalidAttributes : 0xb0` in one struct;
# test_layout_lines); the vtable pointer is never padded (`__VFN_table : Ptr64`).
NAME_WIDTH = 16
MAX_ARRAY_LINES = 0x10000  # -a on a hostile [0xffffffff] array stops here
MAX_STRING = 0x400  # characters of a char* / wchar_t* string shown

Reader = Callable[[int, int], bytes]


@dataclass
class DtOptions:
    recurse: int = 0  # -r[N]: expand embedded structures N levels deep
    blocks: bool = False  # -b: expand every embedded structure and array, any depth
    arrays: int | None = None  # -a[N]: one line per array element (0 = all of them)
    no_indent: bool = False  # -i
    no_offsets: bool = False  # -o
    prefix_match: bool = False  # -y: selected field names are prefixes


def render(t: T.Type, address: int | None = None, read: Reader | None = None, *,
           pointer_size: int = 8, options: DtOptions | None = None,
           fields: Sequence[str] | None = None,
           symbolize: Callable[[int], str | None] | None = None) -> list[str]:
    """The lines `dt` prints for type `t` (layout), or for `t` at `address` (values)."""
    r = _Renderer(pointer_size, options or DtOptions(), read, symbolize)
    if address is not None and read is None:
        raise ValueError("render() needs a reader to show values")
    t = t.strip()
    out: list[str] = []
    if t.kind == T.ENUM and address is None:
        out = [f"   {e.name} = 0n{e.value}" for e in t.enumerators]
    elif t.is_aggregate:
        if address is not None:
            r.mem.prefetch(address, t.size)
            detail = r.summary(t, address)
            if detail:  # dt _LIST_ENTRY addr starts with " [ flink - blink ]"
                out.append(" " + detail)
        sel = _parse_selection(fields) if fields else None
        r.aggregate(t, address, 0, sel, out)
    elif address is None:
        out.append(T.type_name(t))
    else:
        out.append(r.value(t, address, 0))
        if t.kind == T.ARRAY and r._array_lines():
            r.array_elements(t, address, -1, out)
    if r.mem.failed is not None:
        out.append(f"Memory read error {r.mem.failed:x}")
    return [line.rstrip() for line in out]


def format_pointer(value: int, pointer_size: int = 8) -> str:
    """`0xfffff805`4d7f5b00` (64-bit, always 16 digits) or `0x80549c4c` (32-bit, 8 digits)."""
    if pointer_size == 4:
        return f"0x{value & 0xFFFFFFFF:08x}"
    return f"0x{(value >> 32) & 0xFFFFFFFF:08x}`{value & 0xFFFFFFFF:08x}"


def format_quad(value: int) -> str:
    """A 64-bit unsigned value as dt shows it: `0`, `0x4bf645c`, `0x00000201`0b3ad000`."""
    value &= 0xFFFFFFFFFFFFFFFF
    if value == 0:
        return "0"
    if value < 1 << 32:
        return f"0x{value:x}"
    return format_pointer(value, 8)


def _hex(value: int) -> str:
    return "0" if value == 0 else f"0x{value:x}"


def _char(code: int) -> str:
    return chr(code) if 0x20 <= code < 0x7F else ""


# --------------------------------------------------------------------------------------------
# Field selection: ["UniqueProcessId", "Pcb.", "Pcb.DirectoryTableBase"] -> a tree

class _Sel(dict):
    """name (lower case) -> child selection; `expand` means "Name." (show one level below)."""

    expand = False


def _parse_selection(fields: Sequence[str]) -> _Sel:
    root = _Sel()
    for spec in fields:
        node = root
        for part in spec.split("."):
            if part == "":  # "Name." or "A.B."
                node.expand = True
                break
            node = node.setdefault(part.lower(), _Sel())
    return root


# --------------------------------------------------------------------------------------------


class _Memory:
    """Reads through the caller's reader, serving fields from a prefetched structure, and
    remembering the last address that could not be read."""

    def __init__(self, read: Reader | None):
        self.read = read
        self.blocks: list[tuple[int, bytes]] = []
        self.failed: int | None = None

    def prefetch(self, address: int, size: int) -> None:
        if self.read is None or not 0 < size <= 0x100000:
            return
        try:
            data = self.read(address, size)
        except MemoryNotPresent:
            return
        if len(data) == size:
            self.blocks.append((address, bytes(data)))
            del self.blocks[:-8]

    def get(self, address: int, size: int, quiet: bool = False) -> bytes | None:
        for base, data in self.blocks:
            if base <= address and address + size <= base + len(data):
                return data[address - base:address - base + size]
        try:
            data = self.read(address, size) if self.read is not None else b""
        except MemoryNotPresent:
            data = b""
        if len(data) < size:
            if not quiet:
                self.failed = address
            return None
        return bytes(data[:size])

    def uint(self, address: int, size: int, quiet: bool = False) -> int | None:
        data = self.get(address, size, quiet)
        return None if data is None else int.from_bytes(data, "little")


class _Renderer:
    def __init__(self, pointer_size: int, options: DtOptions, read: Reader | None,
                 symbolize: Callable[[int], str | None] | None) -> None:
        self.ps = pointer_size
        self.opt = options
        self.mem = _Memory(read)
        self.symbolize = symbolize

    # ---- structure walk ------------------------------------------------------------------
    def aggregate(self, t: T.Type, address: int | None, level: int, sel: _Sel | None,
                  out: list[str]) -> None:
        if level > T.MAX_DEPTH:
            return
        members = t.all_fields()
        if sel is not None and len(sel) > 0:
            chosen = []
            for f in members:
                low = f.name.lower()
                key = low if low in sel else next(
                    (k for k in sel if self.opt.prefix_match and low.startswith(k)), None)
                if key is not None:
                    chosen.append((f, sel[key]))
            width = max((len(f.name) for f, _ in chosen), default=0)
        else:
            chosen = [(f, None) for f in members]
            width = NAME_WIDTH
        indent = "   " if self.opt.no_indent else "   " * (level + 1)
        for f, child in chosen:
            where = None if address is None else address + f.offset
            off = "" if self.opt.no_offsets else f"+0x{f.offset:03x} "
            # WinDbg does not pad the vtable pointer's name: "+0x000 __VFN_table : Ptr64"
            # (test_cpp_records_and_numeric_leaves)
            pad = 0 if f.name == "__VFN_table" else width
            head = f"{indent}{off}{f.name:<{pad}} : "
            ftype = f.type.strip()
            explicit = child is not None and (len(child) > 0 or child.expand)
            if explicit:
                out.append(head)
                if ftype.is_aggregate:
                    if where is not None:
                        self.mem.prefetch(where, ftype.size)
                    self.aggregate(ftype, where, level + 1, child if len(child) else None, out)
                continue
            out.append(head + (T.type_name(f.type) if where is None
                               else self.value(f.type, where, level)))
            if ftype.is_aggregate and self._expand(level):
                if where is not None:
                    self.mem.prefetch(where, ftype.size)
                self.aggregate(ftype, where, level + 1, None, out)
            elif ftype.kind == T.ARRAY and where is not None and self._array_lines():
                self.array_elements(ftype, where, level, out)

    def _expand(self, level: int) -> bool:
        return self.opt.blocks or level < self.opt.recurse

    def _array_lines(self) -> bool:
        return self.opt.arrays is not None or self.opt.blocks

    def array_elements(self, arr: T.Type, address: int, level: int, out: list[str]) -> None:
        elem = arr.target
        if elem is None or elem.size <= 0:
            return
        n = arr.count if not self.opt.arrays else min(arr.count, self.opt.arrays)
        indent = " " * (4 if self.opt.no_indent else 3 * (level + 1) + 1)
        if " : " in out[-1]:  # the field line keeps only "Name : "
            out[-1] = out[-1][:out[-1].rindex(" : ") + 3]
        for i in range(min(n, MAX_ARRAY_LINES)):
            where = address + i * elem.size
            out.append(f"{indent}[{i:02d}] {self.value(elem, where, level + 1)}")
            es = elem.strip()
            if es.is_aggregate and self._expand(level + 1):
                self.aggregate(es, where, level + 1, None, out)

    # ---- one value -----------------------------------------------------------------------
    def value(self, t: T.Type, address: int, level: int) -> str:
        t = t.strip()
        k = t.kind
        if k == T.BASE:
            return self.base(t, address)
        if k == T.POINTER:
            return self.pointer(t, address)
        if k == T.BITFIELD:
            return self.bitfield(t, address)
        if k == T.ENUM:
            return self.enum(t, address)
        if k == T.ARRAY:
            return self.array(t, address, level)
        if t.is_aggregate:
            detail = self.summary(t, address)
            return f"{T.type_name(t)} {detail}" if detail else T.type_name(t)
        if k == T.FUNCTION:
            return T.type_name(t)
        return T.type_name(t)

    def base(self, t: T.Type, address: int) -> str:
        size = t.size
        if t.encoding == T.VOID or size == 0:
            return T.type_name(t)
        data = self.mem.get(address, size)
        if data is None:
            return "??"
        enc = t.encoding
        if enc == T.FLOAT and size in (4, 8):
            return repr(struct.unpack("<f" if size == 4 else "<d", data)[0])
        v = int.from_bytes(data, "little", signed=t.signed)
        if size == 1 and enc in (T.CHAR, T.INT):
            ch = _char(v & 0xFF)
            return f"{v} '{ch}'" if t.signed else f"{_hex(v)} '{ch}'"
        if enc == T.WCHAR:
            return f"{_hex(v)} '{_char(v)}'"
        if enc == T.BOOL:
            return "true" if v else "false"
        if enc == T.HRESULT:
            return f"0x{v & 0xFFFFFFFF:x}"
        if t.signed:
            return f"0n{v}"
        return format_quad(v) if size == 8 else _hex(v)

    def pointer(self, t: T.Type, address: int) -> str:
        size = t.size or self.ps
        p = self.mem.uint(address, size)
        if p is None:
            return "????"
        if p == 0:
            return "(null)"
        text = format_pointer(p, size)
        tgt = t.target.strip() if t.target is not None else None
        if tgt is None:
            return text
        if tgt.kind == T.FUNCTION:
            sym = self.symbolize(p) if self.symbolize else None
            return f"{text}     {T.c_name(tgt.target)}  {sym or f'+{p:x}'}"
        if tgt.kind == T.BASE:
            if tgt.encoding == T.VOID:
                return f"{text} Void"
            if tgt.size == 1 and tgt.encoding == T.CHAR:
                return f"{text}  {self.cstring(p, 1)}"
            if tgt.encoding == T.WCHAR:
                return f"{text}  {self.cstring(p, 2)}"
            return text
        if tgt.is_aggregate or tgt.kind == T.ENUM:
            detail = self.summary(tgt, p, quiet=True) if tgt.is_aggregate else None
            return f"{text} {T.type_name(tgt)}" + (f" {detail}" if detail else "")
        return text

    def bitfield(self, t: T.Type, address: int) -> str:
        size = t.target.size if t.target is not None and t.target.size else t.size or 4
        raw = self.mem.uint(address, size)
        if raw is None:
            return "??"
        n = max(t.bit_length, 1)
        v = (raw >> t.bit_position) & ((1 << n) - 1)
        bits = f"0y{v:0{n}b}"
        return bits if n <= 4 else f"{bits} ({_hex(v)})"

    def enum(self, t: T.Type, address: int) -> str:
        size = t.size or 4
        raw = self.mem.uint(address, size)
        if raw is None:
            return "??"
        signed = raw - (1 << (8 * size)) if raw >> (8 * size - 1) else raw
        name = t.enum_name(raw)
        if name is None and signed != raw:
            name = t.enum_name(signed)
        return f"{raw:x} ( {name or '???'} )"

    def array(self, t: T.Type, address: int, level: int) -> str:
        elem = t.target.strip() if t.target is not None else None
        head = f"[{t.count}]"
        if elem is None or t.count == 0:
            return f"{head} {T.type_name(t.target)}"
        if elem.kind == T.BASE and elem.size == 1 and elem.encoding == T.CHAR:
            data = self.mem.get(address, min(t.count, MAX_STRING))
            return f"{head}  " + ("??" if data is None else _quote(data.split(b"\0")[0]))
        if elem.kind == T.BASE and elem.encoding == T.WCHAR:
            data = self.mem.get(address, 2 * min(t.count, MAX_STRING))
            if data is None:
                return f"{head}  ??"
            return f"{head}  " + _quote_wide(data)
        return f"{head} {self.value(elem, address, level)}"

    # ---- structure summaries (what dt prints after the type name) ------------------------
    def summary(self, t: T.Type, address: int, quiet: bool = False) -> str | None:
        """What dt shows after the name of some structures: `[ flink - blink ]`, `"text"`,
        `0x01d5094e`e0f80f70`; None for the rest (or when memory is missing)."""
        name = t.name
        if name in ("_LIST_ENTRY", "LIST_ENTRY", "_LIST_ENTRY64", "_LIST_ENTRY32"):
            ps = self.ps if name in ("_LIST_ENTRY", "LIST_ENTRY") else (8 if "64" in name else 4)
            flink = self.mem.uint(address, ps, quiet)
            blink = self.mem.uint(address + ps, ps, quiet)
            if flink is None or blink is None:
                return None
            fmt = (lambda v: format_pointer(v, 8)) if ps == 8 else (lambda v: f"0x{v:x}")
            return f"[ {fmt(flink)} - {fmt(blink)} ]"
        if name in ("_UNICODE_STRING", "_STRING", "_ANSI_STRING", "UNICODE_STRING", "STRING"):
            return self._counted_string(t, address, quiet)
        if name in ("_LARGE_INTEGER", "_ULARGE_INTEGER"):
            v = self.mem.uint(address, 8, quiet)
            if v is None:
                return None
            return "0x0" if v == 0 else format_pointer(v, 8)
        return None

    def _counted_string(self, t: T.Type, address: int, quiet: bool) -> str | None:
        length = t.member("Length")
        buffer = t.member("Buffer")
        if length is None or buffer is None:
            return None
        n = self.mem.uint(address + length[0], 2, quiet)
        bptr = buffer[1].type.strip()
        p = self.mem.uint(address + buffer[0], bptr.size or self.ps, quiet)
        if n is None or p is None:
            return None
        wide = t.name.upper().endswith("UNICODE_STRING")
        if n == 0:
            return '""'
        data = self.mem.get(p, n, quiet=True)
        if data is None:
            return f'"--- memory read error at address {format_pointer(p, self.ps)} ---"'
        return _quote_wide(data) if wide else _quote(data)

    def cstring(self, address: int, width: int) -> str:
        """The NUL-terminated string at `address`, quoted, or WinDbg's read-error text."""
        want, data, at = MAX_STRING * width, b"", address
        while len(data) < want:  # in small pieces: the string may end before a missing page
            chunk = self.mem.get(at, min(64, want - len(data)), quiet=True)
            if chunk is None:
                break
            data += chunk
            at += len(chunk)
            if _terminated(data, width):
                break
        if not data:
            return f'"--- memory read error at address {format_pointer(address, self.ps)} ---"'
        if width == 1:
            return _quote(data.split(b"\0")[0])
        return _quote_wide(data)


def _terminated(data: bytes, width: int) -> bool:
    if width == 1:
        return b"\0" in data
    return any(data[i] == 0 and data[i + 1] == 0 for i in range(0, len(data) - 1, 2))


def _quote(data: bytes) -> str:
    return '"' + "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in data) + '"'


def _quote_wide(data: bytes) -> str:
    chars = []
    for i in range(0, len(data) - 1, 2):
        c = data[i] | (data[i + 1] << 8)
        if c == 0:
            break
        chars.append(chr(c) if c >= 0x20 and not 0xD800 <= c < 0xE000 and c != 0x7F else ".")
    return '"' + "".join(chars) + '"'
