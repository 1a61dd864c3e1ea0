""".printf's format string (windbg: .printf): C's conversions, 32-bit unless `I64`/`ll`/`l`
says 64, and the debugger's own: %p (a target pointer), %N, %I, %ma/%mu (strings at an
address), %msa/%msu (ANSI_/UNICODE_STRING at an address), %y (a symbol).
"""
from __future__ import annotations

import re
import struct
from typing import Callable, Protocol

from kdshell.errors import CommandError, KdError

_SPEC = re.compile(r"%([-+ #0]*)(\*|\d+)?(?:\.(\d+))?(I64|I32|ll|l|h|I)?(ms[au]|m[au]|l?y|[diouxXcspNfeEgG%])?")
ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "r": "\r", "a": "\a", "0": "\0"}
MEMORY_ERROR = "<Memory access error>"


class PrintfTarget(Protocol):
    is64: bool

    def read(self, address: int, size: int) -> bytes: ...

    def symbol(self, address: int) -> str | None: ...


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), m.group(1)), text)


def parse_arguments(text: str, split: Callable[[str, str], list[str]]) -> tuple[str, list[str]]:
    """`"Format" , a, b` -> (the format with escapes applied, the argument texts)."""
    text = text.strip()
    if not text.startswith('"'):
        raise CommandError(f"^ Syntax error in '.printf {text}': the format string must be quoted")
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            break
        i += 1
    else:
        raise CommandError(f"^ Syntax error in '.printf {text}': missing closing quote")
    fmt, rest = text[1:i], text[i + 1:].strip()
    args: list[str] = []
    if rest:
        if not rest.startswith(","):
            raise CommandError(f"^ Syntax error in '.printf {text}': ',' expected after the format")
        args = [a.strip() for a in split(rest[1:], ",")]
        if any(not a for a in args):
            raise CommandError(f"^ Syntax error in '.printf {text}': an argument is empty")
    return unescape(fmt), args


def render(fmt: str, values: list[int], target: PrintfTarget) -> str:
    out: list[str] = []
    pos = 0
    it = iter(values)

    def take() -> int:
        try:
            return next(it)
        except StopIteration:
            raise CommandError(".printf: the format needs more arguments than were given") from None

    for m in _SPEC.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width, prec, size, conv = m.groups()
        if conv == "%":
            out.append("%")
            continue
        if conv is None:
            out.append(m.group(0))
            continue
        if width == "*":
            width = str(take())
        spec = "%" + flags + (width or "") + (f".{prec}" if prec is not None else "")
        value = take()
        wide = size in ("I64", "ll") or (size == "l" and conv in "feEgG")
        out.append(_one(conv, size, spec, value, wide, target))
    out.append(fmt[pos:])
    return "".join(out)


def _one(conv: str, size: str | None, spec: str, value: int, wide: bool, target: PrintfTarget) -> str:
    bits = 64 if wide else 16 if size == "h" else 32
    mask = (1 << bits) - 1
    if conv == "p":  # the debugger's pointer: every digit, no backtick
        digits = 16 if target.is64 else 8
        return (spec + "s") % f"{value & ((1 << digits * 4) - 1):0{digits}x}"
    if conv == "N":
        return f"{value & (1 << 64) - 1:016X}"
    if size == "I" and conv in "xXdiuo" and not wide:  # %I alone: the value, 64-bit when it needs it
        bits, mask = 64, (1 << 64) - 1
    if conv in "di":
        v = value & mask
        return (spec + "d") % (v - (1 << bits) if v >> (bits - 1) else v)
    if conv in "uxXo":
        return (spec + conv.replace("u", "d")) % (value & mask)
    if conv == "c":
        return (spec + "c") % chr(value & 0xFF)
    if conv in "feEgG":
        if wide:
            number = struct.unpack("<d", (value & (1 << 64) - 1).to_bytes(8, "little"))[0]
        else:
            number = struct.unpack("<f", (value & 0xFFFFFFFF).to_bytes(4, "little"))[0]
        return (spec + conv) % number
    if conv in ("y", "ly"):
        name = target.symbol(value)
        from kdshell.format import ptr

        where = ptr(value, target.is64)
        return (spec + "s") % (f"{name} ({where})" if name else where)
    return (spec + "s") % _string(conv, value, target)


def _string(conv: str, address: int, target: PrintfTarget) -> str:
    try:
        if conv in ("s", "ma"):
            return _c_string(target, address, 1)
        if conv == "mu":
            return _c_string(target, address, 2)
        # ANSI_STRING / UNICODE_STRING: Length, MaximumLength, (padding), Buffer
        ptr_size = 8 if target.is64 else 4
        head = target.read(address, 2)
        length = int.from_bytes(head, "little")
        buf = int.from_bytes(target.read(address + ptr_size, ptr_size), "little")
        if not length:
            return ""
        data = target.read(buf, min(length, 0x10000))
        return data.decode("utf-16-le" if conv == "msu" else "latin-1", "replace")
    except KdError:
        return MEMORY_ERROR


def _c_string(target: PrintfTarget, address: int, unit: int) -> str:
    data = bytearray()
    limit = 0x4000
    while len(data) < limit:
        chunk_size = 0x100 - (address + len(data)) % 0x100
        try:
            chunk = target.read(address + len(data), chunk_size)
        except KdError:
            if not data:
                raise
            break
        data += chunk
        for i in range(0, len(data) - unit + 1, unit):
            if data[i:i + unit] == b"\0" * unit:
                return bytes(data[:i]).decode("utf-16-le" if unit == 2 else "latin-1", "replace")
    return bytes(data).decode("utf-16-le" if unit == 2 else "latin-1", "replace")
