"""WinDbg's MASM expressions: numbers, registers, pseudo-registers, poi(), symbols, operators,
and the address ranges (`L count`, `L?count`, `start end`) the memory commands take.

    ev = Evaluator(session)
    ev.evaluate("poi(@rsp+8) & 0xfff")        -> int
    ev.parse_range("rsp L4", unit=8)           -> Range(start, count)

Numbers are in the session's radix (16 unless `n` changed it); 0x, 0n, 0t/0o and 0y prefixes
override it; a backtick may split a 64-bit number (fffff804`7ba00000). A word that reads as a
number is a number (`add` is 0xadd in radix 16); otherwise a symbol (the session's
`resolve_symbol` hook), otherwise a register. `@name` is always a register.

Precedence, highest first (MASM, as the debugger documentation lists it):
    ( ) [ ]  ·  unary + - not hi low by wo dwo qwo poi  ·  * / % mod  ·  + -  ·  << >> >>>
    ·  = == != < > <= >=  ·  and &  ·  xor ^  ·  or |
Values are 64-bit; comparisons and / and % treat them as signed, like the debugger's own
`Evaluate expression: -1 = ffffffff`ffffffff`. Errors use WinDbg's words and point at the rest of
the text: "Couldn't resolve error at 'foo+1'", "Memory access error at ')'".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from kdshell.errors import KdError, MemoryNotPresent

MASK64 = 0xFFFF_FFFF_FFFF_FFFF
# Ranges larger than this need `L?` (WinDbg's guard against typing one digit too many).
MAX_RANGE = 0x1000_0000


class ExprError(KdError):
    """An expression that cannot be evaluated; the message is WinDbg's."""


def signed(value: int, bits: int = 64) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


# -- registers --------------------------------------------------------------------------------
# name -> (full register, low bit, width)
_X64_SUB: dict[str, tuple[str, int, int]] = {}
for _r in ("ax", "bx", "cx", "dx"):
    _X64_SUB["e" + _r] = ("r" + _r, 0, 32)
    _X64_SUB[_r] = ("r" + _r, 0, 16)
    _X64_SUB[_r[0] + "l"] = ("r" + _r, 0, 8)
    _X64_SUB[_r[0] + "h"] = ("r" + _r, 8, 8)
for _r in ("si", "di", "bp", "sp"):
    _X64_SUB["e" + _r] = ("r" + _r, 0, 32)
    _X64_SUB[_r] = ("r" + _r, 0, 16)
    _X64_SUB[_r + "l"] = ("r" + _r, 0, 8)
for _i in range(8, 16):
    _X64_SUB[f"r{_i}d"] = (f"r{_i}", 0, 32)
    _X64_SUB[f"r{_i}w"] = (f"r{_i}", 0, 16)
    _X64_SUB[f"r{_i}b"] = (f"r{_i}", 0, 8)
_X64_SUB["eip"] = ("rip", 0, 32)
_X64_SUB["ip"] = ("rip", 0, 16)
_X64_SUB["eflags"] = ("efl", 0, 32)

_X86_SUB: dict[str, tuple[str, int, int]] = {}
for _r in ("ax", "bx", "cx", "dx"):
    _X86_SUB[_r] = ("e" + _r, 0, 16)
    _X86_SUB[_r[0] + "l"] = ("e" + _r, 0, 8)
    _X86_SUB[_r[0] + "h"] = ("e" + _r, 8, 8)
for _r in ("si", "di", "bp", "sp"):
    _X86_SUB[_r] = ("e" + _r, 0, 16)
_X86_SUB["ip"] = ("eip", 0, 16)
_X86_SUB["eflags"] = ("efl", 0, 32)

# ARM64: the CONTEXT's x0-x28, fp, lr, sp, pc, cpsr, fpcr, fpsr and v0-v31
# (kdshell.dumpfile.context), and the names WinDbg also accepts or shows for them: x29/x30 (fp,
# lr), w0-w30 (low halves), the disassembler's xip0/xip1/xpr (x16-x18, the Windows ABI's names),
# wsp, psr (what `r` prints for cpsr), and q/d/s/h (the low 128/64/32/16 bits of v0-v31).
_ARM64_SUB: dict[str, tuple[str, int, int]] = {"x29": ("fp", 0, 64), "x30": ("lr", 0, 64), "psr": ("cpsr", 0, 32),
                                               "wsp": ("sp", 0, 32)}
for _i in range(31):
    _full = {29: "fp", 30: "lr"}.get(_i, f"x{_i}")
    _ARM64_SUB[f"w{_i}"] = (_full, 0, 32)
for _i, _alias in ((16, "ip0"), (17, "ip1"), (18, "pr")):
    _ARM64_SUB["x" + _alias] = (f"x{_i}", 0, 64)
    _ARM64_SUB["w" + _alias] = (f"x{_i}", 0, 32)
for _i in range(32):
    for _prefix, _width in (("q", 128), ("d", 64), ("s", 32), ("h", 16)):
        _ARM64_SUB[f"{_prefix}{_i}"] = (f"v{_i}", 0, _width)
# ARM64 registers narrower than 64 bits (the v registers are 128)
_ARM64_WIDTH = {"cpsr": 32, "fpcr": 32, "fpsr": 32, "contextflags": 32, "wcr0": 32, "wcr1": 32,
                **{f"bcr{_i}": 32 for _i in range(8)}}

# EFLAGS bits WinDbg lets you name as registers (`r zf`).
FLAG_BITS = {"cf": (0, 1), "pf": (2, 1), "af": (4, 1), "zf": (6, 1), "sf": (7, 1), "tf": (8, 1), "if": (9, 1),
             "df": (10, 1), "of": (11, 1), "iopl": (12, 2), "vif": (19, 1), "vip": (20, 1)}


class Registers:
    """The current context's registers by WinDbg name, sub-registers and flags included.

    Changes (`r rax=1`) live in the session's dict only; the dump is never written.
    """

    def __init__(self, values: dict[str, int], is64: bool):
        self.values = values
        self.is64 = is64
        # the register set says the architecture: only an ARM64 CONTEXT has a pc
        self.arm64 = "pc" in values
        self.sub = _ARM64_SUB if self.arm64 else _X64_SUB if is64 else _X86_SUB

    def _where(self, name: str) -> tuple[str, int, int] | None:
        n = name.lower()
        if n in self.values:
            if self.arm64:
                return n, 0, 128 if n[0] == "v" and n[1:].isdigit() else _ARM64_WIDTH.get(n, 64)
            return n, 0, 128 if n.startswith("xmm") else 64 if self.is64 else 32
        if n in self.sub and self.sub[n][0] in self.values:
            return self.sub[n]
        if n in FLAG_BITS and "efl" in self.values:
            low, width = FLAG_BITS[n]
            return "efl", low, width
        return None

    def known(self, name: str) -> bool:
        return self._where(name) is not None

    def get(self, name: str) -> int | None:
        w = self._where(name)
        if w is None:
            return None
        full, low, width = w
        return (self.values[full] >> low) & ((1 << width) - 1)

    def set(self, name: str, value: int) -> None:
        w = self._where(name)
        if w is None:
            raise ExprError(f"Bad register error at '{name}'")
        full, low, width = w
        mask = ((1 << width) - 1) << low
        self.values[full] = (self.values[full] & ~mask) | ((value << low) & mask)

    @property
    def ip_name(self) -> str:
        return "pc" if self.arm64 else "rip" if self.is64 else "eip"

    @property
    def sp_name(self) -> str:
        return "sp" if self.arm64 else "rsp" if self.is64 else "esp"

    @property
    def ip(self) -> int:
        return self.values.get(self.ip_name, 0)

    @property
    def sp(self) -> int:
        return self.values.get(self.sp_name, 0)


# -- the evaluator ----------------------------------------------------------------------------
_BINARY = {
    "or": 1, "|": 1, "xor": 2, "^": 2, "and": 3, "&": 3,
    "=": 4, "==": 4, "!=": 4, "<": 4, ">": 4, "<=": 4, ">=": 4,
    "<<": 5, ">>": 5, ">>>": 5, "+": 6, "-": 6, "*": 7, "/": 7, "%": 7, "mod": 7,
}
_SYMBOLS = sorted((op for op in _BINARY if not op.isalpha()), key=len, reverse=True)
_UNARY_WORDS = {"not", "hi", "low", "poi", "by", "wo", "dwo", "qwo"}
_WORD = re.compile(r"[A-Za-z0-9_`!.$?@]+(?:::[A-Za-z0-9_`!.$?@~]+)*")
_PSEUDO_COUNT = 20  # $t0 .. $t19


@dataclass
class Range:
    start: int | None  # None when the text gave only a length (`L4`)
    count: int | None  # in units; None when the text gave no length
    end: int | None = None  # the second address of a `start end` range (inclusive)
    huge: bool = False  # L? was used


class ExprMemory(Protocol):
    """The memory poi()/by()/$vvalid read (kdshell.memory.virtual.VirtualMemory)."""

    @property
    def pointer_size(self) -> int: ...

    def read(self, address: int, size: int) -> bytes: ...

    def readable(self, address: int, size: int = 1) -> bool: ...


class PseudoSource(Protocol):
    """The kernel layer's answers to $proc, $thread, $prcb, $peb and $teb (KernelState.pseudo)."""

    def pseudo(self, name: str) -> int | None: ...


class ExprSession(Protocol):
    """What an expression reads of the session."""

    pseudo_registers: dict[str, int]
    radix: int

    @property
    def kernel(self) -> PseudoSource | None: ...  # None: a stand-in without kernel objects

    @property
    def is64(self) -> bool: ...

    @property
    def registers(self) -> dict[str, int]: ...

    @property
    def memory(self) -> ExprMemory | None: ...

    def resolve_symbol(self, name: str) -> int | None: ...


class Evaluator:
    """Evaluates MASM expressions against a session (registers, memory, symbols, radix)."""

    def __init__(self, session: ExprSession) -> None:
        self.session = session
        self.is64 = session.is64
        self.registers = Registers(session.registers, self.is64)
        self.radix = session.radix
        self.text = ""
        self.pos = 0

    # -- entry points -------------------------------------------------------------------------
    def evaluate(self, text: str) -> int:
        """The value of a whole expression (all of `text` must be used)."""
        value, pos = self.parse(text, 0)
        self._skip_ws()
        if self.pos < len(self.text):
            raise ExprError(f"Syntax error at '{self.text[self.pos:]}'")
        return value

    def parse(self, text: str, pos: int = 0) -> tuple[int, int]:
        """One expression from `pos`; stops before a word that cannot continue it (`L4`, a second
        address). Returns (value, position after it)."""
        self.text, self.pos = text, pos
        self._skip_ws()
        if self.pos >= len(text):
            raise ExprError(f"Syntax error at '{text[pos:]}'")
        try:
            value = self._binary(1)
        except RecursionError:  # ((((... nested beyond reason
            raise ExprError(f"Syntax error at '{text[pos:][:40]}'") from None
        return value & MASK64, self.pos

    def parse_range(self, text: str, unit: int = 1, pos: int = 0, *, allow_end: bool = True) -> tuple[Range | None, int]:
        """`addr`, `addr L count`, `addr L?count`, `addr end`, or just `L count` (no address).

        Returns (Range or None when the text is empty, position after it). Counts above 256 MB
        need `L?` ("Range error", as WinDbg says).
        """
        self.text, self.pos = text, pos
        self._skip_ws()
        if self.pos >= len(text):
            return None, self.pos
        start = None
        if not self._at_length(leading=True):
            start, _ = self.parse(text, self.pos)
        self._skip_ws()
        rng = Range(start if start is not None else -1, None)
        if self._at_length():
            begin = self.pos
            self.pos += 1
            if self.pos < len(text) and text[self.pos] == "?":
                rng.huge = True
                self.pos += 1
            count, _ = self.parse(text, self.pos)
            if not rng.huge and count * unit > MAX_RANGE:
                raise ExprError(f"Range error in '{text[begin:self.pos].strip()}'")
            rng.count = count
        elif allow_end and start is not None and self.pos < len(text) and self._starts_operand():
            end, _ = self.parse(text, self.pos)
            if end < start:
                raise ExprError(f"Range error in '{text[pos:self.pos].strip()}'")
            if (end - start) > MAX_RANGE:
                raise ExprError(f"Range error in '{text[pos:self.pos].strip()}'")
            rng.end = end
            rng.count = (end - start) // unit + 1
        if start is None:
            rng.start = None
        return rng, self.pos

    # -- scanning -----------------------------------------------------------------------------
    def _skip_ws(self) -> None:
        t = self.text
        while self.pos < len(t) and t[self.pos] in " \t":
            self.pos += 1

    def _rest(self, at: int | None = None) -> str:
        return self.text[self.pos if at is None else at:]

    def _at_length(self, leading: bool = False) -> bool:
        """At `L count`? After an address any word starting with L is the length (as in WinDbg);
        with no address before it, only `L` followed by a digit, `?` or a space is."""
        t, p = self.text, self.pos
        if p < len(t) and t[p] in "lL" and p + 1 < len(t):
            nxt = t[p + 1]
            if leading:
                return nxt.isdigit() or nxt in "? \t"
            return nxt.isalnum() or nxt in "?@$( \t`-"
        return False

    def _starts_operand(self) -> bool:
        ch = self.text[self.pos]
        return ch.isalnum() or ch in "_@$([-+.?!`"

    def _peek_binary(self) -> str | None:
        t, p = self.text, self.pos
        if p >= len(t):
            return None
        m = _WORD.match(t, p)
        if m and t[p].isalpha():
            word = m.group(0).lower()
            return word if word in ("and", "or", "xor", "mod") else None
        for op in _SYMBOLS:
            if t.startswith(op, p):
                return op
        return None

    # -- grammar ------------------------------------------------------------------------------
    def _binary(self, level: int) -> int:
        if level > 7:
            return self._unary()
        left = self._binary(level + 1)
        while True:
            self._skip_ws()
            op = self._peek_binary()
            if op is None or _BINARY[op] != level:
                return left
            at = self.pos
            self.pos += len(op)
            self._skip_ws()
            if self.pos >= len(self.text):
                raise ExprError(f"Syntax error at '{self._rest(at)}'")
            right = self._binary(level + 1)
            left = self._apply(op, left, right, at)

    def _apply(self, op: str, a: int, b: int, at: int) -> int:
        sa, sb = signed(a), signed(b)
        if op in ("+",):
            return (a + b) & MASK64
        if op == "-":
            return (a - b) & MASK64
        if op == "*":
            return (a * b) & MASK64
        if op in ("/", "%", "mod"):
            if b == 0:
                raise ExprError(f"Divide by zero error at '{self._rest(at)}'")
            q = abs(sa) // abs(sb)
            if (sa < 0) != (sb < 0):
                q = -q
            return (q if op == "/" else sa - q * sb) & MASK64
        if op == "<<":
            return (a << (b & 63)) & MASK64 if b < 64 else 0
        if op == ">>":
            return a >> b if b < 64 else 0
        if op == ">>>":
            return (sa >> min(b, 63)) & MASK64
        if op in ("=", "=="):
            return int(a == b)
        if op == "!=":
            return int(a != b)
        if op == "<":
            return int(sa < sb)
        if op == ">":
            return int(sa > sb)
        if op == "<=":
            return int(sa <= sb)
        if op == ">=":
            return int(sa >= sb)
        if op in ("and", "&"):
            return a & b
        if op in ("xor", "^"):
            return a ^ b
        return a | b

    def _unary(self) -> int:
        self._skip_ws()
        t = self.text
        if self.pos >= len(t):
            raise ExprError(f"Syntax error at '{self._rest()}'")
        ch = t[self.pos]
        if ch == "-":
            self.pos += 1
            return (-self._unary()) & MASK64
        if ch == "+":
            self.pos += 1
            return self._unary()
        if ch in "([":
            close = ")" if ch == "(" else "]"
            self.pos += 1
            value = self._binary(1)
            self._skip_ws()
            if self.pos >= len(t) or t[self.pos] != close:
                raise ExprError(f"Syntax error at '{self._rest()}'")
            self.pos += 1
            return value
        if ch == "@":
            return self._register()
        m = _WORD.match(t, self.pos)
        if not m:
            raise ExprError(f"Syntax error at '{self._rest()}'")
        word = m.group(0)
        low = word.lower()
        if low in _UNARY_WORDS:  # none of them reads as a number in any radix
            return self._unary_word(low, m.end())
        if word.startswith("$"):
            if low == "$vvalid":
                return self._vvalid(m.end())
            return self._pseudo(word, m.end())
        start = self.pos
        self.pos = m.end()
        number = self._number(word)
        if number is not None:
            return number
        address = self.session.resolve_symbol(word)
        if address is not None:
            return address & MASK64
        reg = self.registers.get(word)
        if reg is not None:
            return reg
        raise ExprError(f"Couldn't resolve error at '{self._rest(start)}'")

    def _unary_word(self, op: str, end: int) -> int:
        self.pos = end
        value = self._unary()
        if op == "not":
            return int(value == 0)
        if op == "hi":
            return (value >> 16) & 0xFFFF
        if op == "low":
            return value & 0xFFFF
        size = {"by": 1, "wo": 2, "dwo": 4, "qwo": 8, "poi": self.session.memory.pointer_size
                if self.session.memory is not None else (8 if self.is64 else 4)}[op]
        at = self.pos - 1 if self.pos and self.text[self.pos - 1] in ")]" else self.pos
        memory = self.session.memory
        if memory is None:
            raise ExprError(f"Memory access error at '{self._rest(at)}'")
        try:
            return int.from_bytes(memory.read(value & getattr(memory, "address_mask", MASK64), size), "little")
        except MemoryNotPresent:
            raise ExprError(f"Memory access error at '{self._rest(at)}'") from None

    def _vvalid(self, end: int) -> int:
        """$vvalid(Address, Length): 1 when every byte of the range is readable."""
        self.pos = end
        self._skip_ws()
        if self.pos >= len(self.text) or self.text[self.pos] != "(":
            raise ExprError(f"Syntax error at '{self._rest()}'")
        self.pos += 1
        address = self._binary(1)
        self._skip_ws()
        if self.pos >= len(self.text) or self.text[self.pos] != ",":
            raise ExprError(f"Syntax error at '{self._rest()}'")
        self.pos += 1
        length = self._binary(1)
        self._skip_ws()
        if self.pos >= len(self.text) or self.text[self.pos] != ")":
            raise ExprError(f"Syntax error at '{self._rest()}'")
        self.pos += 1
        memory = self.session.memory
        return int(memory is not None and length > 0 and memory.readable(address, min(length, MAX_RANGE)))

    def _register(self) -> int:
        start = self.pos
        m = _WORD.match(self.text, self.pos + 1)
        if not m:
            raise ExprError(f"Bad register error at '{self._rest()}'")
        name = m.group(0)
        if name.startswith("$"):
            return self._pseudo(name, m.end(), start)
        self.pos = m.end()
        value = self.registers.get(name)
        if value is None:
            raise ExprError(f"Bad register error at '{self._rest(start)}'")
        return value

    def _pseudo(self, name: str, end: int, start: int | None = None) -> int:
        start = self.pos if start is None else start
        self.pos = end
        value = pseudo_register(self.session, self.registers, name)
        if value is None:
            raise ExprError(f"Bad register error at '{self._rest(start)}'")
        return value & MASK64

    def _number(self, word: str) -> int | None:
        """The word as a number in the current radix (prefixes override), or None."""
        text = word.replace("`", "")
        if not text or word.startswith("`") or not text.isalnum() or not text.isascii():
            return None
        radix = self.radix
        low = text.lower()
        if len(low) > 2 and low[0] == "0" and low[1] in "xntoy":
            radix = {"x": 16, "n": 10, "t": 8, "o": 8, "y": 2}[low[1]]
            low = low[2:]
        try:
            value = int(low, radix)
        except ValueError:
            return None
        if value > MASK64:
            raise ExprError(f"Overflow error at '{self._rest(self.pos - len(word))}'")
        return value


def pseudo_register(session: ExprSession, registers: Registers, name: str) -> int | None:
    """$ip, $csp, $ra (ARM64: lr), $retreg, $retreg64, $t0-$t19, $ptrsize, $pagesize and those
    commands set ($p, $exp); None for one this session does not know."""
    n = name.lower()
    is64 = registers.is64
    if n == "$ip":
        return registers.ip
    if n == "$csp":
        return registers.sp
    if registers.arm64 and n in ("$ra", "$retreg", "$retreg64"):
        return registers.values.get("lr" if n == "$ra" else "x0", 0)
    if n == "$retreg":
        return registers.values.get("rax" if is64 else "eax", 0)
    if n == "$retreg64":
        if is64:
            return registers.values.get("rax", 0)
        return (registers.values.get("edx", 0) << 32) | registers.values.get("eax", 0)
    if n == "$ptrsize":
        return 8 if is64 else 4
    if n == "$pagesize":
        return 0x1000
    if n.startswith("$t") and n[2:].isdigit() and int(n[2:]) < _PSEUDO_COUNT:
        return session.pseudo_registers.get(n, 0)
    if n in KERNEL_PSEUDO:
        kernel = session.kernel
        if kernel is not None:
            return kernel.pseudo(n)  # kdshell.kernel.state: the current process, thread, ...
    automatic = getattr(session, "automatic_pseudo", None)  # the session's: $bug_code, $ra, ...
    if automatic is not None and n not in session.pseudo_registers:
        value = automatic(n)
        if value is not None:
            return int(value)
    return session.pseudo_registers.get(n)


KERNEL_PSEUDO = ("$proc", "$thread", "$prcb", "$peb", "$teb")


def is_settable_pseudo(name: str) -> bool:
    n = name.lower()
    return n.startswith("$t") and n[2:].isdigit() and int(n[2:]) < _PSEUDO_COUNT
