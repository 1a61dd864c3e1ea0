"""WinDbg's C++ expressions (`?? Expression`, windbg.md §13), on kdshell's type model.

    ev = CppEvaluator(session, scope)
    value = ev.evaluate("((nt!_KTHREAD*)@$thread)->StackBase")   -> Value(type, address | value)

A `Value` is a symbols.types.Type plus either an address (an lvalue in memory, read only when
needed) or a value (an rvalue, kept normalised to its type: signed types as negative ints).
The `scope` gives what lives above the engine: type names (`find_type(module, name)`) and the
selected frame's locals (`variable(name)`); globals come from the session's PDBs.

C++ rules kept: literals are decimal by default (0x hex, leading 0 octal; MASM's 0n/0t/0y are
errors), typed int / unsigned int / int64 / unsigned int64 by value and suffix; integer
promotion to int and the usual arithmetic conversions; results wrap to their type
(`(unsigned int64)0 - 1` is 0xffffffff`ffffffff, INT_MIN / -1 wraps); `/` truncates toward
zero; pointer arithmetic scales by the element size. WinDbg's leniency kept too: `.` and `->`
both work on pointers and structures. Errors are WinDbg's one-liners, pointing at the rest of
the text: "Couldn't resolve error at 'foo'", "Memory access error at '->x'".
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Protocol

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.expr import Evaluator as MasmEvaluator
from kdshell.expr import ExprError, ExprSession, Registers, pseudo_register
from kdshell.symbols import types as T

if TYPE_CHECKING:
    from kdshell.symbols.resolver import Symbols

MAX_NESTING = 100  # parentheses / unary operators deep; ((((... past this is an error
MAX_TEXT = 4096
MAX_SHIFT = 128  # shift counts beyond the widest type give the same result as this


class Value:
    __slots__ = ("type", "address", "value", "at")

    def __init__(self, type_: T.Type, *, address: int | None = None, value: int | None = None,
                 at: int = 0):
        self.type = type_
        self.address = address
        self.value = value
        self.at = at  # where its text starts (for error messages)

    def __repr__(self) -> str:
        return f"<Value {T.c_name(self.type)} address={self.address} value={self.value}>"


def _base(name: str, size: int, signed: bool, encoding: str = T.INT) -> T.Type:
    return T.Type(T.BASE, name, size, encoding=encoding, signed=signed)


INT, UINT = _base("int", 4, True), _base("unsigned int", 4, False)
LONG, ULONG_T = _base("long", 4, True), _base("unsigned long", 4, False)
INT64, UINT64 = _base("int64", 8, True), _base("unsigned int64", 8, False)
BOOL = _base("bool", 1, False, T.BOOL)

# Base type keywords in a cast or sizeof: the words (sorted) -> type.
_KEYWORD_TYPES = {
    ("char",): _base("char", 1, True, T.CHAR), ("char", "signed"): _base("char", 1, True, T.CHAR),
    ("char", "unsigned"): _base("unsigned char", 1, False, T.CHAR),
    ("short",): _base("short", 2, True), ("int", "short"): _base("short", 2, True),
    ("short", "unsigned"): _base("unsigned short", 2, False),
    ("int", "short", "unsigned"): _base("unsigned short", 2, False),
    ("int",): INT, ("signed",): INT, ("int", "signed"): INT, ("unsigned",): UINT,
    ("int", "unsigned"): UINT, ("long",): LONG, ("int", "long"): LONG,
    ("long", "unsigned"): ULONG_T, ("int", "long", "unsigned"): ULONG_T,
    ("long", "long"): INT64, ("__int64",): INT64, ("int64",): INT64,
    ("long", "long", "unsigned"): UINT64, ("__int64", "unsigned"): UINT64,
    ("int64", "unsigned"): UINT64, ("bool",): BOOL, ("void",): _base("void", 0, False, T.VOID),
    ("wchar_t",): _base("wchar_t", 2, False, T.WCHAR),
    ("float",): _base("float", 4, True, T.FLOAT), ("double",): _base("double", 8, True, T.FLOAT),
}
_KEYWORDS = {w for key in _KEYWORD_TYPES for w in key}
_QUALIFIERS = {"const", "volatile"}
_TAGS = {"struct", "class", "union", "enum"}

_TOKEN = re.compile(r"""
    (?P<switch>@@(?:masm|c\+\+)?\s*\()
  | (?P<reg>@\$?[A-Za-z_][\w]*)
  | (?P<hash>\#[A-Za-z_]\w*)
  | (?P<num>\d[\w`]*)
  | (?P<ident>[A-Za-z_$][\w$]*(?:![A-Za-z_$?@][\w$?@]*)?(?:::~?[A-Za-z_$][\w$]*)*)
  | (?P<op>->|<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%&|^~!<>()\[\].,])
""", re.VERBOSE)

_BINARY = {"||": 1, "&&": 2, "|": 3, "^": 4, "&": 5, "==": 6, "!=": 6, "<": 7, ">": 7,
           "<=": 7, ">=": 7, "<<": 8, ">>": 8, "+": 9, "-": 9, "*": 10, "/": 10, "%": 10}
_LITERAL = re.compile(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)"
                      r"([uU](?:i64|ll|LL|[lL])?|(?:ll|LL|[lL]|i64)[uU]?)?")
# Pseudo-registers WinDbg types as pointers to kernel structures.
_TYPED_PSEUDO = {"$proc": "_EPROCESS", "$thread": "_ETHREAD", "$prcb": "_KPRCB", "$peb": "_PEB",
                 "$teb": "_TEB"}


class Token:
    __slots__ = ("kind", "text", "pos", "inner")

    def __init__(self, kind: str, text: str, pos: int, inner: str = ""):
        self.kind, self.text, self.pos, self.inner = kind, text, pos, inner


def tokenize(text: str) -> list[Token]:
    out, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            out.append(Token("end", "", pos))
            return out
        m = _TOKEN.match(text, pos)
        if not m:
            raise ExprError(f"Syntax error at '{text[pos:]}'")
        kind = m.lastgroup
        assert kind is not None  # every alternative of _TOKEN is a named group
        if kind == "switch":  # @@masm( ... ): the text up to the matching parenthesis
            depth, end = 1, m.end()
            while end < len(text) and depth:
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            if depth:
                raise ExprError(f"Syntax error at '{text[pos:]}'")
            mode = "c++" if "c++" in m.group(0) else "masm"
            out.append(Token("switch", mode, pos, text[m.end():end - 1]))
            pos = end
            continue
        out.append(Token(kind, m.group(0), pos))
        pos = m.end()


# -- integer rules ----------------------------------------------------------------------------
def is_signed(t: T.Type) -> bool:
    t = t.strip()
    if t.kind == T.ENUM:
        return True
    if t.kind == T.BITFIELD and t.target is not None:
        return is_signed(t.target)
    return t.kind == T.BASE and t.signed and t.encoding in (T.INT, T.CHAR, T.HRESULT)


def normalize(value: int, t: T.Type) -> int:
    """`value` wrapped to t's width (and sign): what the C++ type can hold."""
    t = t.strip()
    if t.kind == T.BASE and t.encoding == T.BOOL:
        return int(value != 0)
    bits = 8 * (t.size or 8)
    value &= (1 << bits) - 1
    if is_signed(t) and value >> (bits - 1):
        value -= 1 << bits
    return value


def _rank(t: T.Type) -> int:
    # int < long < int64 (long is 32-bit on Windows, but ranks above int)
    return t.size * 2 + (1 if t.size == 4 and "long" in (t.name or "") else 0)


def promote(t: T.Type) -> T.Type:
    """Integer promotion: bool, char, short, wchar_t, enums and bitfields become int."""
    t = t.strip()
    if t.kind == T.BITFIELD and t.target is not None:
        return promote(t.target)
    if t.kind == T.ENUM or t.size < 4:
        return INT
    return t


def common_type(a: T.Type, b: T.Type) -> T.Type:
    """The usual arithmetic conversions of two promoted integer types."""
    if is_signed(a) == is_signed(b):
        return a if _rank(a) >= _rank(b) else b
    u, s = (a, b) if not is_signed(a) else (b, a)
    if _rank(u) >= _rank(s):
        return u
    if s.size > u.size:
        return s
    return _base("unsigned " + (s.name or "int"), s.size, False)


def literal(text: str, at: int, rest: str) -> Value:
    raw = text.replace("`", "")
    m = _LITERAL.fullmatch(raw)
    if not m:
        raise ExprError(f"Syntax error at '{rest}'")
    digits, suffix = m.group(1), (m.group(2) or "").lower()
    value = int(digits, 16 if digits[:2].lower() == "0x" else 8 if digits[0] == "0" else 10)
    decimal = digits[0] != "0" or digits == "0"
    unsigned = "u" in suffix
    if "ll" in suffix or "i64" in suffix:
        candidates = [UINT64] if unsigned else [INT64, UINT64] if not decimal else [INT64, UINT64]
    elif "l" in suffix:
        candidates = [ULONG_T, UINT64] if unsigned else [LONG, INT64, UINT64] if decimal else [LONG, ULONG_T, INT64, UINT64]
    else:
        candidates = [UINT, UINT64] if unsigned else [INT, INT64, UINT64] if decimal else [INT, UINT, INT64, UINT64]
    for t in candidates:
        bits = 8 * t.size - (1 if is_signed(t) else 0)
        if value < 1 << bits:
            return Value(t, value=value, at=at)
    raise ExprError(f"Overflow error at '{rest}'")


# -- the evaluator ----------------------------------------------------------------------------
class CppSession(ExprSession, Protocol):
    """What a C++ expression reads of the session: a MASM expression's needs and the symbols."""

    @property
    def symbols(self) -> Symbols: ...


class CppScope(Protocol):
    """What lives above the engine (commands/cpp.py's Scope): type names and the frame's locals."""

    def find_type(self, module: str | None, name: str, quiet: bool = False) -> T.Type | None: ...

    def variable(self, name: str) -> Value | None: ...


class CppEvaluator:
    """Parses and evaluates one C++ expression (precedence climbing, evaluating as it goes)."""

    def __init__(self, session: CppSession, scope: CppScope, nesting: int = 0) -> None:
        self.session = session
        self.scope = scope
        self.ps = 8 if session.is64 else 4
        self.size_t = UINT64 if self.ps == 8 else UINT
        self.ptrdiff_t = INT64 if self.ps == 8 else INT
        self.nesting = nesting
        self.text = ""
        self.tokens: list[Token] = []
        self.i = 0

    # -- entry ------------------------------------------------------------------------------
    def evaluate(self, text: str) -> Value:
        if len(text) > MAX_TEXT:
            raise ExprError(f"Syntax error at '{text[:40]}...': expression too long")
        self.text, self.tokens, self.i = text, tokenize(text), 0
        if self.tok.kind == "end":
            raise ExprError("Syntax error at ''")
        try:
            value = self.expression(1)
        except RecursionError:  # a backstop: MAX_NESTING should stop it first
            raise ExprError(f"Syntax error at '{text[:40]}': nested too deeply") from None
        if self.tok.kind != "end":
            raise ExprError(f"Syntax error at '{self.rest()}'")
        return value

    # -- scanning ---------------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def peek(self, n: int = 1) -> Token:
        return self.tokens[min(self.i + n, len(self.tokens) - 1)]

    def rest(self, at: int | None = None) -> str:
        return self.text[self.tok.pos if at is None else at:]

    def fail(self, what: str, at: int | None = None) -> ExprError:
        return ExprError(f"{what} error at '{self.rest(at)}'")

    def expect(self, text: str) -> None:
        if self.tok.text != text or self.tok.kind not in ("op",):
            raise self.fail("Syntax")
        self.i += 1

    def is_op(self, text: str) -> bool:
        return self.tok.kind == "op" and self.tok.text == text

    # -- grammar ----------------------------------------------------------------------------
    def expression(self, min_prec: int) -> Value:
        left = self.unary()
        while self.tok.kind == "op" and _BINARY.get(self.tok.text, 0) >= min_prec:
            op = self.tok
            self.i += 1
            right = self.expression(_BINARY[op.text] + 1)
            left = self.binary(op.text, left, right, op.pos)
        return left

    def unary(self) -> Value:
        self.nesting += 1
        try:
            if self.nesting > MAX_NESTING:
                raise ExprError(f"Syntax error at '{self.rest()[:40]}': nested too deeply")
            return self._unary()
        finally:
            self.nesting -= 1

    def _unary(self) -> Value:
        tok = self.tok
        at = tok.pos
        if tok.kind == "op" and tok.text in ("-", "+", "!", "~", "*", "&"):
            self.i += 1
            operand = self.unary()
            return self.prefix(tok.text, operand, at)
        if tok.kind == "op" and tok.text == "(":
            self.i += 1
            t = self.type_name()
            if t is not None:
                self.expect(")")
                return self.cast(t, self.unary(), at)
            value = self.expression(1)
            self.expect(")")
            return self.postfix(value)
        if tok.kind == "ident" and tok.text == "sizeof":
            return self.sizeof(at)
        if tok.kind == "hash":
            return self.postfix(self.hash_macro(tok))
        return self.postfix(self.primary())

    def postfix(self, value: Value) -> Value:
        while True:
            tok = self.tok
            if self.is_op("["):
                self.i += 1
                index = self.expression(1)
                self.expect("]")
                value = self.subscript(value, index, tok.pos)
            elif self.is_op(".") or self.is_op("->"):
                self.i += 1
                name = self.tok
                if name.kind != "ident":
                    raise self.fail("Syntax")
                self.i += 1
                value = self.member(value, name.text, tok.pos, name.pos)
            else:
                return value

    def primary(self) -> Value:
        tok = self.tok
        self.i += 1
        if tok.kind == "num":
            return literal(tok.text, tok.pos, self.rest(tok.pos))
        if tok.kind == "reg":
            return self.register(tok)
        if tok.kind == "switch":
            if tok.text == "c++":
                if self.nesting > MAX_NESTING:
                    raise self.fail("Syntax", tok.pos)
                inner = CppEvaluator(self.session, self.scope, self.nesting + 1)
                return inner.evaluate(tok.inner)
            number = MasmEvaluator(self.session).evaluate(tok.inner)
            return Value(self.size_t, value=normalize(number, self.size_t), at=tok.pos)
        if tok.kind == "ident":
            if tok.text in ("true", "false"):
                return Value(BOOL, value=int(tok.text == "true"), at=tok.pos)
            if tok.text.startswith("$"):
                return self.pseudo(tok.text, tok.pos)
            value = self.variable(tok.text, tok.pos)
            if value is None:
                raise self.fail("Couldn't resolve", tok.pos)
            return value
        raise self.fail("Syntax", tok.pos)

    # -- names ------------------------------------------------------------------------------
    def variable(self, name: str, at: int) -> Value | None:
        """A local of the selected frame, else a global with its PDB type."""
        if "!" not in name:
            local = self.scope.variable(name)
            if local is not None:
                local.at = at
                return local
        return self.global_(name, at)

    def global_(self, name: str, at: int) -> Value | None:
        symbols = self.session.symbols
        if "!" in name:
            mod_name, _, sym_name = name.partition("!")
            module = symbols.module(mod_name)
            candidates = [module] if module is not None else []
        else:
            sym_name = name
            kernel = symbols.modules.kernel
            candidates = [m for m, _ in symbols.loaded_tables()] + ([kernel] if kernel else [])
        for module in candidates:
            table = symbols.table(module)
            pdb = getattr(table, "pdb", None)
            found = table.lookup(sym_name) if table is not None else None
            if found is None:
                continue
            raw = pdb.symbol(sym_name) if pdb is not None else None
            address = module.base + found.rva
            t = None
            if pdb is not None and raw is not None and raw.type_index:
                try:
                    t = pdb.symbol_type(raw)
                except KdError:
                    t = None
            if t is None:
                raise self.fail("Type information missing", at)
            if t.strip().kind == T.FUNCTION:
                return Value(t, value=address, at=at)
            return Value(t, address=address, at=at)
        return None

    def register(self, tok: Token) -> Value:
        name = tok.text[1:]
        if name.startswith("$"):
            return self.pseudo(name, tok.pos)
        value = Registers(self.session.registers, self.session.is64).get(name)
        if value is None:
            raise self.fail("Bad register", tok.pos)
        return Value(self.size_t, value=normalize(value, self.size_t), at=tok.pos)

    def pseudo(self, name: str, at: int) -> Value:
        typed = getattr(self.session, "typed_pseudo", {}).get(name.lower())  # `r? $t0 = ...`
        if typed is not None:
            return Value(typed.type, address=typed.address, value=typed.value, at=at)
        registers = Registers(self.session.registers, self.session.is64)
        value = pseudo_register(self.session, registers, name)
        if value is None:
            raise self.fail("Bad register", at)
        type_name = _TYPED_PSEUDO.get(name.lower())
        target = self.scope.find_type("nt", type_name, quiet=True) if type_name else None
        t = self.pointer_to(target) if target is not None else self.size_t
        return Value(t, value=normalize(value, t), at=at)

    def type_name(self, required: bool = False) -> T.Type | None:
        """A type at the current token (`nt!_EPROCESS *`, `unsigned int64`, `struct _X`), or
        None (nothing consumed) when the tokens are not a type."""
        start = self.i
        while self.tok.kind == "ident" and self.tok.text in _QUALIFIERS:
            self.i += 1
        tagged = self.tok.kind == "ident" and self.tok.text in _TAGS
        if tagged:
            self.i += 1
        tok = self.tok
        t = None
        if tok.kind == "ident" and tok.text in _KEYWORDS:
            words = []
            while self.tok.kind == "ident" and self.tok.text in _KEYWORDS | _QUALIFIERS:
                if self.tok.text not in _QUALIFIERS:
                    words.append(self.tok.text)
                self.i += 1
            t = _KEYWORD_TYPES.get(tuple(sorted(words)))
            if t is None:
                raise self.fail("Syntax", tok.pos)
        elif tok.kind == "ident" and not tok.text.startswith("$") and tok.text not in ("sizeof", "true", "false"):
            # a variable of that name wins over a type (as in C++ scope rules)
            if tagged or required or (self.peek().text in ("*", ")") and not self.is_variable(tok)):
                module, _, name = tok.text.rpartition("!")
                t = self.scope.find_type(module or None, name)
                if t is None:
                    raise self.fail("Couldn't resolve", tok.pos)
                self.i += 1
        if t is None:
            if tagged:
                raise self.fail("Couldn't resolve", tok.pos)
            self.i = start
            return None
        while self.is_op("*") or (self.tok.kind == "ident" and self.tok.text in _QUALIFIERS):
            if self.is_op("*"):
                t = self.pointer_to(t)
            self.i += 1
        return t

    def is_variable(self, tok: Token) -> bool:
        if "!" not in tok.text and self.scope.variable(tok.text) is not None:
            return True
        try:
            return self.global_(tok.text, tok.pos) is not None
        except ExprError:  # a symbol without a type: the expression path says so
            return True

    def pointer_to(self, t: T.Type) -> T.Type:
        return T.Type(T.POINTER, "", self.ps, t)

    # -- sizeof and the # macros ------------------------------------------------------------
    def sizeof(self, at: int) -> Value:
        self.i += 1
        if self.is_op("("):
            save = self.i
            self.i += 1
            t = self.type_name()
            if t is not None:
                self.expect(")")
                return Value(self.size_t, value=t.strip().size, at=at)
            self.i = save
        operand = self.unary()  # its type only: memory is not read
        return Value(self.size_t, value=operand.type.strip().size, at=at)

    def hash_macro(self, tok: Token) -> Value:
        name = tok.text.upper()
        self.i += 1
        self.expect("(")
        if name == "#FIELD_OFFSET":
            t = self._macro_type()
            self.expect(",")
            offset, _ = self._field_path(t)
            self.expect(")")
            return Value(LONG, value=offset, at=tok.pos)
        if name == "#CONTAINING_RECORD":
            address = self.expression(1)
            self.expect(",")
            t = self._macro_type()
            self.expect(",")
            offset, _ = self._field_path(t)
            self.expect(")")
            value = (self.integer(address) - offset) & ((1 << 8 * self.ps) - 1)
            return Value(self.pointer_to(t), value=value, at=tok.pos)
        raise self.fail("Syntax", tok.pos)

    def _macro_type(self) -> T.Type:
        at = self.tok.pos
        t = self.type_name(required=True)
        if t is None:
            raise self.fail("Couldn't resolve", at)
        return t

    def _field_path(self, t: T.Type) -> tuple[int, T.Type]:
        start = self.tok.pos
        while not (self.tok.kind == "end" or self.is_op(")") or self.is_op(",")):
            self.i += 1
        path = self.text[start:self.tok.pos].replace(" ", "")
        try:
            return t.field(path)
        except (T.FieldNotFound, ValueError):
            raise self.fail("Couldn't resolve", start) from None

    # -- values -----------------------------------------------------------------------------
    def read(self, address: int, size: int, at: int) -> bytes:
        memory = self.session.memory
        if memory is None:
            raise self.fail("Memory access", at)
        try:
            data = memory.read(address & ((1 << 8 * self.ps) - 1), size)
        except MemoryNotPresent:
            raise self.fail("Memory access", at) from None
        if len(data) < size:
            raise self.fail("Memory access", at)
        return bytes(data[:size])

    def load(self, v: Value) -> int:
        """The value of `v` as an integer (arrays and functions decay to their address)."""
        if v.value is not None:
            return v.value
        assert v.address is not None  # a Value holds either a value or an address
        t = v.type.strip()
        if t.kind in (T.ARRAY, T.FUNCTION):
            return v.address
        if t.is_aggregate or (t.kind == T.BASE and t.encoding == T.VOID):
            raise self.fail("Type conflict", v.at)
        if t.kind == T.BITFIELD:
            under = t.target.strip() if t.target is not None else UINT
            raw = int.from_bytes(self.read(v.address, under.size or 4, v.at), "little")
            n = max(t.bit_length, 1)
            bits = (raw >> t.bit_position) & ((1 << n) - 1)
            return bits - (1 << n) if is_signed(under) and bits >> (n - 1) else bits
        size = t.size or self.ps
        return normalize(int.from_bytes(self.read(v.address, size, v.at), "little"), t)

    def integer(self, v: Value) -> int:
        t = v.type.strip()
        if t.kind == T.BASE and t.encoding == T.FLOAT:
            raise ExprError(f"Floating-point values are not supported by kdshell's ?? at '{self.rest(v.at)}'")
        return self.load(v)

    def pointee(self, v: Value) -> T.Type | None:
        """The element type when `v` is a pointer or an array (which decays to one), else None."""
        t = v.type.strip()
        if t.kind in (T.POINTER, T.ARRAY):
            return t.target if t.target is not None else _KEYWORD_TYPES[("void",)]
        return None

    def arithmetic_type(self, v: Value) -> T.Type:
        t = v.type.strip()
        if t.kind == T.BASE and t.encoding not in (T.VOID, T.FLOAT, T.NOTYPE) or t.kind in (T.ENUM, T.BITFIELD):
            return promote(t)
        raise self.fail("Type conflict", v.at)

    # -- operators --------------------------------------------------------------------------
    def prefix(self, op: str, v: Value, at: int) -> Value:
        if op == "*":
            target = self.pointee(v)
            if target is None:
                raise self.fail("Type conflict", at)
            return Value(target, address=self.load(v), at=at)
        if op == "&":
            if v.address is None or v.type.strip().kind == T.BITFIELD:
                raise ExprError(f"Cannot take the address of '{self.text[v.at:self.tok.pos].strip()}'")
            return Value(self.pointer_to(v.type), value=v.address, at=at)
        if op == "!":
            return Value(BOOL, value=int(self.integer(v) == 0), at=at)
        t = self.arithmetic_type(v)
        x = self.integer(v)
        result = {"-": -x, "+": x, "~": ~x}[op]
        return Value(t, value=normalize(result, t), at=at)

    def cast(self, t: T.Type, v: Value, at: int) -> Value:
        target = t.strip()
        if target.is_aggregate or target.kind == T.ARRAY:
            raise self.fail("Type conflict", at)
        if target.kind == T.BASE and target.encoding == T.FLOAT:
            raise ExprError(f"Floating-point values are not supported by kdshell's ?? at '{self.rest(at)}'")
        if target.kind == T.BASE and target.encoding == T.VOID:
            return Value(t, value=0, at=at)
        return Value(t, value=normalize(self.integer(v), target), at=at)

    def binary(self, op: str, a: Value, b: Value, at: int) -> Value:
        if op in ("&&", "||"):
            left, right = self.integer(a) != 0, self.integer(b) != 0
            return Value(BOOL, value=int(left and right if op == "&&" else left or right), at=a.at)
        pa, pb = self.pointee(a), self.pointee(b)
        mask = (1 << 8 * self.ps) - 1
        if (pa or pb) and op in ("+", "-"):
            if pa is not None and pb is not None:
                if op == "+":
                    raise self.fail("Type conflict", at)
                step = pa.strip().size or 1
                diff = normalize(self.load(a) - self.load(b), self.ptrdiff_t)
                return Value(self.ptrdiff_t, value=int(diff / step), at=a.at)
            ptr, other, elem = (a, b, pa) if pa is not None else (b, a, pb)
            assert elem is not None  # one of them is a pointer
            if op == "-" and ptr is b:
                raise self.fail("Type conflict", at)
            step = (elem.strip().size or 1) * self.integer(other)
            value = self.load(ptr) + (step if op == "+" else -step)
            return Value(self.pointer_to(elem), value=value & mask, at=a.at)
        if op in ("==", "!=", "<", ">", "<=", ">="):
            if pa is not None or pb is not None:
                x, y = self.load(a) & mask, self.load(b) & mask
            else:
                t = common_type(self.arithmetic_type(a), self.arithmetic_type(b))
                x, y = normalize(self.integer(a), t), normalize(self.integer(b), t)
            truth = {"==": x == y, "!=": x != y, "<": x < y, ">": x > y, "<=": x <= y, ">=": x >= y}[op]
            return Value(BOOL, value=int(truth), at=a.at)
        ta, tb = self.arithmetic_type(a), self.arithmetic_type(b)
        if op in ("<<", ">>"):
            x, n = normalize(self.integer(a), ta), self.integer(b)
            n = MAX_SHIFT if n < 0 or n > MAX_SHIFT else n  # a negative count is a huge unsigned one
            return Value(ta, value=normalize(x << n if op == "<<" else x >> n, ta), at=a.at)
        t = common_type(ta, tb)
        x, y = normalize(self.integer(a), t), normalize(self.integer(b), t)
        if op in ("/", "%"):
            if y == 0:
                raise self.fail("Divide by zero", at)
            q = abs(x) // abs(y) * (-1 if (x < 0) != (y < 0) else 1)  # C truncates toward zero
            return Value(t, value=normalize(q if op == "/" else x - q * y, t), at=a.at)
        result = {"+": x + y, "-": x - y, "*": x * y, "&": x & y, "|": x | y, "^": x ^ y}[op]
        return Value(t, value=normalize(result, t), at=a.at)

    def subscript(self, base: Value, index: Value, at: int) -> Value:
        elem = self.pointee(base)
        if elem is None:
            base, index = index, base
            elem = self.pointee(base)
        if elem is None:
            raise self.fail("Type conflict", at)
        step = elem.strip().size
        if step <= 0:
            raise self.fail("Type conflict", at)
        address = (self.load(base) + self.integer(index) * step) & ((1 << 8 * self.ps) - 1)
        return Value(elem, address=address, at=base.at)

    def member(self, v: Value, name: str, at: int, name_at: int) -> Value:
        t = v.type.strip()
        if t.kind == T.POINTER and t.target is not None:  # WinDbg takes `.` for `->` too
            v = Value(t.target, address=self.load(v), at=v.at)
            t = t.target.strip()
        if not t.is_aggregate:
            raise self.fail("Type conflict", at)
        hit = t.member(name)
        if hit is None:
            raise self.fail("Couldn't resolve", name_at)
        if v.address is None:
            raise self.fail("Type conflict", at)
        offset, field = hit
        return Value(field.type, address=v.address + offset, at=v.at)


def as_rvalue(ev: CppEvaluator, v: Value) -> Value:
    """A bitfield read into its underlying integer type (what ?? prints for it)."""
    t = v.type.strip()
    if t.kind == T.BITFIELD:
        return Value(t.target or UINT, value=ev.load(v), at=v.at)
    return v
