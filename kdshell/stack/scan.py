"""Stack scanning: the last-resort strategy when a frame cannot be unwound (x64-unwind.md §5.2).

Walk up the stack from an address looking for a value that (1) falls inside a known module and
(2) is preceded by a call instruction, i.e. looks like a return address. Frames found this way
are guesses (`Frame.how == "scan"`). Bounded by `max_bytes` per search; the walker also bounds
how many scanned frames it accepts in a row.

The call check is a tiny decoder for the forms compilers emit (the bytes before the candidate):
    E8 rel32                       call rel32                     5 bytes
    [REX] FF /2 with any ModRM     call r/m64 (reg, [reg], [reg+disp8/32], [rip+disp32], SIB)
tests/test_stack_walk.py cross-checks it against capstone on every call of the fixture images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from kdshell.errors import KdError

if TYPE_CHECKING:
    from kdshell.stack.walk import ModuleMap

MemoryRead = Callable[[int, int], bytes]

DEFAULT_SCAN_BYTES = 0x2000   # per search: two pages of stack above the frame
MAX_CALL_LENGTH = 8           # REX + FF + ModRM + SIB + disp32
# REX prefixes a call can carry: W (harmless), B/X (r8-r15 as base/index). R would extend the /2
# opcode field and means nothing, so `46 FF 15 ..` is read as a 6-byte call after some 0x46.
_CALL_REX = frozenset((0x41, 0x42, 0x43, 0x48, 0x49, 0x4A, 0x4B))


@dataclass(frozen=True)
class ScanHit:
    slot: int            # stack address holding the return address
    return_address: int
    call_address: int    # address of the call instruction
    call_length: int
    module: Any


def _ff2_length(code: bytes, p: int) -> int | None:
    """Length of an `FF /2` (near call r/m) starting at code[p] (after any REX), or None."""
    if p + 1 >= len(code) or code[p] != 0xFF:
        return None
    modrm = code[p + 1]
    mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
    if reg != 2:
        return None
    n = 2
    if mod == 3:
        return n
    if rm == 4:  # SIB
        if p + 2 >= len(code):
            return None
        n += 1
        if mod == 0 and code[p + 2] & 7 == 5:
            return n + 4
    elif mod == 0 and rm == 5:
        return n + 4  # [rip + disp32] (x64) / [disp32] (x86)
    return n + (1 if mod == 1 else 4 if mod == 2 else 0)


def call_length_before(code: bytes, x64: bool = True) -> int | None:
    """If the bytes `code` end with a complete call instruction, its length; else None.

    `code` is the up-to-8 bytes that precede a candidate return address.
    """
    n = len(code)
    if n >= 5 and code[n - 5] == 0xE8:
        return 5
    # Longest first: `41 FF D2` (call r10) also ends like `FF D2` (call rdx), and the bytes of a
    # `FF 15 disp32` may end like a short form; the longer reading is the likelier one.
    for length in range(min(n, MAX_CALL_LENGTH), 1, -1):
        p = n - length
        if x64 and code[p] in _CALL_REX and _ff2_length(code, p + 1) == length - 1:
            if code[p] == 0x48 or not (code[p + 2] & 0xC7) == 0x05:  # B/X mean nothing to [rip+d]
                return length
        if _ff2_length(code, p) == length:
            return length
    return None


def _code_before(module: Any, read: MemoryRead, address: int, n: int) -> bytes | None:
    n = min(n, address - module.base)
    if n <= 0:
        return None
    image = getattr(module, "image", None)
    if image is not None:
        try:
            return image(address - n - module.base, n)
        except KdError:
            pass
    try:
        return read(address - n, n)
    except KdError:
        return None


def scan_for_return(read: MemoryRead, modules: ModuleMap, start: int, *, end: int | None = None,
                    max_bytes: int = DEFAULT_SCAN_BYTES, pointer_size: int = 8,
                    require_call: bool = True) -> ScanHit | None:
    """The first stack slot at or above `start` (aligned to the pointer size) holding a
    plausible return address, searching at most `max_bytes` and not at or past `end`.

    Stops quietly at the first unreadable stack byte (returns None)."""
    size = pointer_size
    addr = (start + size - 1) // size * size
    limit = addr + max_bytes
    if end is not None:
        limit = min(limit, end)
    x64 = size == 8
    while addr < limit:
        chunk_end = min(limit, (addr | 0xFFF) + 1)
        try:
            data = read(addr, chunk_end - addr)
        except KdError:
            return None
        for i in range(0, len(data) - size + 1, size):
            value = int.from_bytes(data[i : i + size], "little")
            if value == 0:
                continue
            module = modules.module_at(value)
            if module is None:
                continue
            code = _code_before(module, read, value, MAX_CALL_LENGTH)
            length = call_length_before(code, x64) if code else None
            if length is None and require_call:
                continue
            return ScanHit(addr + i, value, value - (length or 0), length or 0, module)
        addr = chunk_end
    return None
