"""Stack scanning: the last-resort strategy when a frame cannot be unwound (x64-unwind.md §5.2).

Walk up the stack from an address looking for a value that looks like a return address. A value
earns a frame only if (ReturnCheck.judge):
  - it lies in a loaded module, in an executable section of its image (the section table from
    the image's headers, in the dump or in the image file); with no section table anywhere, at
    least past the headers' page;
  - x64: its slot is 8 bytes past a 16-byte boundary (RSP is 16-aligned at every call, so the
    call stores its return address at an address = 8 mod 16);
  - it is not a value the caller excludes (the registers of the walked context: a pointer held
    in a register is data; the frames already on the stack: no frame repeats), nor a known
    function start (.pdata begin, a code symbol or export): that is a function pointer;
  - when the code bytes before it are readable, they end with a call instruction ("scan"); when
    they are not (a small dump keeps few code pages), it is accepted as "scan-unverified".
The scan takes the first slot that passes, except that an unverified value on a 16-byte boundary
is taken only when nothing else passes: compilers start functions there, so it is more likely a
function pointer of a module whose symbols are not here than one of the 1 in 16 return addresses
that fall there. Frames found this way are guesses. Bounded by `max_bytes` per search (it stops
quietly at the first unreadable stack byte); the walker also bounds how many scanned frames it
accepts in a row.

The call check is a tiny decoder for the forms compilers emit (the bytes before the candidate):
    E8 rel32                        call rel32 (also retpoline and guard-dispatch thunks, and the
                                    import calls the kernel rewrites: `mov r10,[imp]; call thunk`)
    [2E|3E] [REX] FF /2, any ModRM  call r/m64 (reg, [reg], [reg+disp8/32], [rip+disp32], SIB;
                                    `41 FF D0..D7` call r8-r15; CFG's `call [__guard_dispatch_icall_fptr]`;
                                    3E is CET's notrack, 2E a branch hint)
tests/test_stack_walk.py cross-checks it against capstone on every call of the fixture images.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Container

from kdshell.errors import KdError
from kdshell.symbols.pe import PeImage

if TYPE_CHECKING:
    from kdshell.stack.walk import ModuleMap

MemoryRead = Callable[[int, int], bytes]

DEFAULT_SCAN_BYTES = 0x2000   # per search: two pages of stack above the frame
MAX_CALL_LENGTH = 9           # [prefix] REX + FF + ModRM + SIB + disp32
HEADERS_PAGE = 0x1000         # no section table: the first page of an image is its headers
FUNCTION_ALIGNMENT = 0xF      # compilers start functions on 16-byte boundaries
SCAN = "scan"
UNVERIFIED = "scan-unverified"
# REX prefixes a call can carry: W (harmless), B/X (r8-r15 as base/index). R would extend the /2
# opcode field and means nothing, so `46 FF 15 ..` is read as a 6-byte call after some 0x46.
_CALL_REX = frozenset((0x41, 0x42, 0x43, 0x48, 0x49, 0x4A, 0x4B))
_BRANCH_HINTS = frozenset((0x2E, 0x3E))


@dataclass(frozen=True)
class ScanHit:
    slot: int            # stack address holding the return address
    return_address: int
    call_address: int    # address of the call instruction (the return address when unverified)
    call_length: int     # 0 when unverified
    module: Any
    how: str = SCAN      # SCAN: a call ends at the return address; UNVERIFIED: its code is not readable


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


def _call_at(code: bytes, p: int, x64: bool) -> int | None:
    """Length of the call starting at code[p] when it ends exactly at the end of `code`."""
    length = len(code) - p
    if x64 and code[p] in _CALL_REX and _ff2_length(code, p + 1) == length - 1:
        if code[p] == 0x48 or not (code[p + 2] & 0xC7) == 0x05:  # B/X mean nothing to [rip+d]
            return length
    if _ff2_length(code, p) == length:
        return length
    return None


def call_length_before(code: bytes, x64: bool = True) -> int | None:
    """If the bytes `code` end with a complete call instruction, its length; else None.

    `code` is the bytes (up to MAX_CALL_LENGTH) that precede a candidate return address.
    """
    n = len(code)
    if n >= 5 and code[n - 5] == 0xE8:
        return 5
    # Longest first: `41 FF D2` (call r10) also ends like `FF D2` (call rdx), and the bytes of a
    # `FF 15 disp32` may end like a short form; the longer reading is the likelier one.
    for length in range(min(n, MAX_CALL_LENGTH), 1, -1):
        p = n - length
        if code[p] in _BRANCH_HINTS and length > 2 and _call_at(code, p + 1, x64):
            return length
        if _call_at(code, p, x64):
            return length
    return None


class _ImageReader:
    """An image's bytes by RVA: the module's image reader, else the memory at its base."""

    def __init__(self, module: Any, read: MemoryRead) -> None:
        self.module, self.memory = module, read

    def read(self, rva: int, size: int) -> bytes:
        image = getattr(self.module, "image", None)
        if image is not None:
            try:
                return bytes(image(rva, size))
            except KdError:
                pass
        return self.memory(self.module.base + rva, size)


class ReturnCheck:
    """The rules a scanned value must pass (see the module docstring), with the section tables
    of the modules it has looked at. `function_start(address)` says whether a known function
    begins there (the walker's: .pdata and symbols)."""

    def __init__(self, read: MemoryRead, modules: ModuleMap, *, x64: bool = True,
                 function_start: Callable[[int], bool] | None = None) -> None:
        self.read = read
        self.modules = modules
        self.x64 = x64
        self.function_start = function_start
        self._code: dict[int, tuple[tuple[int, int], ...] | None] = {}

    def forget_missing(self) -> None:
        """Forget the modules whose headers were nowhere (an image file may have been found since)."""
        self._code = {base: ranges for base, ranges in self._code.items() if ranges is not None}

    def code_ranges(self, module: Any) -> tuple[tuple[int, int], ...] | None:
        """The module's executable sections as (rva, end), None when its headers are nowhere."""
        if module.base not in self._code:
            try:
                image = PeImage(_ImageReader(module, self.read), module.base)
                ranges: tuple[tuple[int, int], ...] | None = tuple(
                    (s.rva, s.end) for s in image.sections if s.executable)
            except KdError:
                ranges = None
            self._code[module.base] = ranges
        return self._code[module.base]

    def in_code(self, module: Any, address: int) -> bool:
        rva = address - module.base
        ranges = self.code_ranges(module)
        if ranges is None:
            return rva >= HEADERS_PAGE
        return any(lo <= rva < hi for lo, hi in ranges)

    def code_before(self, module: Any, address: int, n: int = MAX_CALL_LENGTH) -> bytes | None:
        """The up-to-`n` code bytes before `address` (fewer near the module start), or None."""
        n = min(n, address - module.base)
        if n <= 0:
            return None
        try:
            return _ImageReader(module, self.read).read(address - n - module.base, n)
        except KdError:
            return None

    def judge(self, value: int, slot: int | None = None, exclude: Container[int] = ()) -> tuple[str, int, Any] | None:
        """(SCAN or UNVERIFIED, call length, module) when `value` (stored at `slot`) may be a
        return address; None when it may not."""
        if value == 0 or value in exclude:
            return None
        if self.x64 and slot is not None and slot & 0xF != 8:
            return None
        module = self.modules.module_at(value)
        if module is None or not self.in_code(module, value):
            return None
        code = self.code_before(module, value)
        length = call_length_before(code, self.x64) if code is not None else None
        if code is not None and not length:
            return None
        if self.function_start is not None and self.function_start(value):
            return None
        return (SCAN, length, module) if length else (UNVERIFIED, 0, module)


def scan_for_return(read: MemoryRead, modules: ModuleMap, start: int, *, end: int | None = None,
                    max_bytes: int = DEFAULT_SCAN_BYTES, pointer_size: int = 8,
                    check: ReturnCheck | None = None, exclude: Container[int] = ()) -> ScanHit | None:
    """The first stack slot at or above `start` (aligned to the pointer size) holding a value
    that `check` accepts as a return address, searching at most `max_bytes` and not at or past
    `end` (see the module docstring for the order)."""
    size = pointer_size
    check = check or ReturnCheck(read, modules, x64=size == 8)
    fallback: ScanHit | None = None
    addr = (start + size - 1) // size * size
    limit = addr + max_bytes
    if end is not None:
        limit = min(limit, end)
    while addr < limit:
        chunk_end = min(limit, (addr | 0xFFF) + 1)
        try:
            data = read(addr, chunk_end - addr)
        except KdError:
            break
        n = len(data) // size
        values = struct.unpack_from(f"<{n}{'Q' if size == 8 else 'I'}", data)
        # x64: only the slots a call writes (8 mod 16)
        first, stride = ((1 if addr & 0xF == 0 else 0), 2) if check.x64 else (0, 1)
        for i in range(first, n, stride):
            value = values[i]
            if not value:
                continue
            found = check.judge(value, addr + i * size, exclude)
            if found is not None:
                how, length, module = found
                hit = ScanHit(addr + i * size, value, value - length, length, module, how)
                if how == SCAN or value & FUNCTION_ALIGNMENT:
                    return hit
                fallback = fallback or hit
        addr = chunk_end
    return fallback
