"""The type model the rest of kdshell uses: dt, !process, the kernel structure layer.

A `Type` is one of a few kinds (base, pointer, array, struct/class, union, enum, bitfield,
function, modifier); aggregates carry `Field`s. Types come from a `TypeSource`: the PDB reader
(`kdshell.symbols.pdb.PdbFile`) or a small table written in Python (`StaticTypes`), so the
kernel layer can ask `source.offset_of("_EPROCESS", "ActiveProcessLinks")` without knowing
where the answer came from.

Aggregate members are loaded lazily (a PDB has tens of thousands of types and a command needs a
handful), and every walk along `target` chains is bounded by `MAX_DEPTH` so a corrupt or cyclic
chain can never recurse without end.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, NamedTuple, Protocol, runtime_checkable

from kdshell.errors import KdError

# Type kinds
BASE = "base"
POINTER = "pointer"
ARRAY = "array"
STRUCT = "struct"
CLASS = "class"
UNION = "union"
ENUM = "enum"
BITFIELD = "bitfield"
FUNCTION = "function"
MODIFIER = "modifier"
OTHER = "other"  # a record that is not a data type (argument list, vtable shape, ...)

AGGREGATES = (STRUCT, CLASS, UNION)

# How far any walk along target/member chains may go; real types are a few levels deep.
MAX_DEPTH = 64

# Base type encodings
VOID, INT, CHAR, WCHAR, FLOAT, BOOL, HRESULT, NOTYPE = (
    "void", "int", "char", "wchar", "float", "bool", "hresult", "notype")


class FieldNotFound(KdError, KeyError):
    """A field path that the type does not have (the message is the user's words)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Field(NamedTuple):
    """A data member: byte offset from the start of the aggregate; bit position/length for
    bitfields (then `type` is the BITFIELD type), else None."""

    name: str
    offset: int
    type: "Type"
    bit_position: int | None = None
    bit_length: int | None = None


class Enumerator(NamedTuple):
    name: str
    value: int


class Type:
    """One type. Attributes by kind:

    base      encoding (void/int/char/wchar/float/bool/hresult), signed, size, name (C spelling)
    pointer   target, size (4 or 8), reference (C++ &/&&), member_of (member pointers)
    array     target (element), count, size
    struct/class/union  name, size, fields, bases [(offset, Type)], forward (no definition found)
    enum      name, target (underlying type), enumerators
    bitfield  target (underlying integer), bit_position, bit_length
    function  target (return type), args, calling_convention
    modifier  target, const, volatile, unaligned
    """

    __slots__ = (
        "kind", "name", "size", "target", "count", "encoding", "signed", "const", "volatile",
        "unaligned", "reference", "member_of", "bit_position", "bit_length", "forward",
        "unique_name", "calling_convention", "_fields", "_bases", "_enumerators", "_args",
        "_loader", "index",
    )

    def __init__(self, kind: str, name: str = "", size: int = 0, target: "Type | None" = None,
                 *, count: int = 0, encoding: str = INT, signed: bool = False,
                 fields: Iterable[Field] | None = None, bases: Iterable[tuple[int, "Type"]] | None = None,
                 enumerators: Iterable[Enumerator] | None = None, args: Iterable["Type"] | None = None,
                 loader: Callable[["Type"], None] | None = None, bit_position: int = 0,
                 bit_length: int = 0, const: bool = False, volatile: bool = False,
                 unaligned: bool = False, reference: bool = False, member_of: int | None = None,
                 forward: bool = False, unique_name: str = "", calling_convention: str = "",
                 index: int = 0) -> None:
        self.kind = kind
        self.name = name
        self.size = size
        self.target = target
        self.count = count
        self.encoding = encoding
        self.signed = signed
        self.const = const
        self.volatile = volatile
        self.unaligned = unaligned
        self.reference = reference
        self.member_of = member_of
        self.bit_position = bit_position
        self.bit_length = bit_length
        self.forward = forward
        self.unique_name = unique_name
        self.calling_convention = calling_convention
        self._fields = list(fields) if fields is not None else None
        self._bases = list(bases) if bases is not None else None
        self._enumerators = list(enumerators) if enumerators is not None else None
        self._args = list(args) if args is not None else None
        self._loader = loader
        self.index = index  # the PDB type index, 0 when not from a PDB

    # ---- lazily loaded members -------------------------------------------------------
    def _load(self) -> None:
        loader, self._loader = self._loader, None  # re-entrant calls see empty members
        for attr in ("_fields", "_bases", "_enumerators", "_args"):
            if getattr(self, attr) is None:
                setattr(self, attr, [])
        if loader is not None:
            loader(self)

    @property
    def fields(self) -> list[Field]:
        if self._loader is not None:
            self._load()
        return self._fields or []

    @property
    def bases(self) -> list[tuple[int, "Type"]]:
        if self._loader is not None:
            self._load()
        return self._bases or []

    @property
    def enumerators(self) -> list[Enumerator]:
        if self._loader is not None:
            self._load()
        return self._enumerators or []

    @property
    def args(self) -> list["Type"]:
        if self._loader is not None:
            self._load()
        return self._args or []

    # ---- shape ---------------------------------------------------------------------------
    @property
    def is_aggregate(self) -> bool:
        return self.kind in AGGREGATES

    def strip(self) -> "Type":
        """The type with modifiers (const/volatile) removed."""
        t, depth = self, 0
        while t.kind == MODIFIER and t.target is not None and depth < MAX_DEPTH:
            t, depth = t.target, depth + 1
        return t

    def all_fields(self, depth: int = 0) -> list[Field]:
        """The data members with those of base classes first (at their offsets in this type),
        as dt lists a C++ class."""
        if not self.bases or depth > 16:
            return self.fields
        out: list[Field] = []
        for base_off, base in self.bases:
            for f in base.strip().all_fields(depth + 1):
                out.append(f._replace(offset=f.offset + base_off))
        return out + self.fields

    def enum_name(self, value: int) -> str | None:
        for e in self.enumerators:
            if e.value == value:
                return e.name
        return None

    def __repr__(self) -> str:
        return f"<Type {self.kind} {type_name(self)!r} size={self.size:#x}>"

    # ---- member lookup -------------------------------------------------------------------
    def member(self, name: str) -> tuple[int, Field] | None:
        """The data member `name` (exact, then case-insensitive), searching base classes too:
        (offset of the member from the start of this type, Field)."""
        agg = self.strip()
        for exact in (True, False):
            hit = _find_member(agg, name, exact, 0)
            if hit is not None:
                return hit
        return None

    def find_field(self, path: str) -> tuple[int, "Type"] | None:
        """`find_field("Pcb.DirectoryTableBase")` -> (offset, Type) following embedded members
        (and `Name[3]` array elements); None when the path does not exist. Pointers are not
        followed (that needs memory)."""
        try:
            return self.field(path)
        except FieldNotFound:
            return None

    def field(self, path: str) -> tuple[int, "Type"]:
        """Like `find_field`, but raises FieldNotFound naming the part that is missing."""
        offset, cur = 0, self
        parts = [p for p in path.split(".") if p != ""]
        if not parts:
            raise FieldNotFound(f"no field name given for {type_name(self)}")
        for part in parts[:MAX_DEPTH]:
            m = _PART.fullmatch(part.strip())
            if not m:
                raise FieldNotFound(f"bad field name '{part}'")
            name, subscripts = m.group(1), _SUBSCRIPT.findall(m.group(2) or "")
            agg = cur.strip()
            if not agg.is_aggregate:
                raise FieldNotFound(f"{type_name(agg)} has no field '{name}' (not a structure)")
            hit = agg.member(name)
            if hit is None:
                raise FieldNotFound(f"{type_name(agg)} has no field '{name}'")
            off, f = hit
            offset += off
            cur = f.type
            for sub in subscripts:
                arr = cur.strip()
                if arr.kind != ARRAY or arr.target is None:
                    raise FieldNotFound(f"'{name}' is not an array")
                i = int(sub, 0)
                if arr.count and not 0 <= i < arr.count:
                    raise FieldNotFound(f"index {i} is outside {name}[{arr.count}]")
                offset += i * arr.target.size
                cur = arr.target
        return offset, cur


_PART = re.compile(r"([A-Za-z_$<>:@?][\w$<>:@?\-]*)((?:\[[^\]]*\])*)")
_SUBSCRIPT = re.compile(r"\[\s*((?:0[xX])?[0-9a-fA-F]+)\s*\]")


def _find_member(agg: Type, name: str, exact: bool, depth: int) -> tuple[int, Field] | None:
    if depth > 16 or not agg.is_aggregate:
        return None
    low = name.lower()
    for f in agg.fields:
        if f.name == name if exact else f.name.lower() == low:
            return f.offset, f
    for base_off, base in agg.bases:
        hit = _find_member(base.strip(), name, exact, depth + 1)
        if hit is not None:
            return base_off + hit[0], hit[1]
    return None


# --------------------------------------------------------------------------------------------
# Names: WinDbg's dt spelling ("Uint4B", "Ptr64 _KPROCESS", "[16] UChar", "Pos 0, 1 Bit")
# and the C spelling WinDbg uses for function return types ("void", "long").

def base_dt_name(t: Type) -> str:
    enc, size, signed = t.encoding, t.size, t.signed
    if enc == VOID:
        return "Void"
    if enc == HRESULT:
        return "HRESULT"
    if enc == WCHAR:
        return "Wchar"
    if enc == BOOL:
        return "Bool"
    if enc == FLOAT:
        return {4: "Float", 8: "Double"}.get(size, f"Float{size * 8}")
    if enc == CHAR or size == 1:
        return "Char" if signed else "UChar"
    if enc == NOTYPE:
        return t.name or "<no type>"
    return f"{'Int' if signed else 'Uint'}{size}B"


def type_name(t: Type | None, depth: int = 0) -> str:
    """The name dt prints in a layout line: `Ptr64 Void`, `[4] _LIST_ENTRY`, `_KPROCESS`,
    `Ptr64     long` (function pointers), `Pos 3, 29 Bits`."""
    if t is None:
        return "<no type>"
    if depth > MAX_DEPTH:
        return "..."
    k = t.kind
    if k == BASE:
        return base_dt_name(t)
    if k == MODIFIER:
        return type_name(t.target, depth + 1)
    if k == POINTER:
        label = f"Ptr{t.size * 8}"
        tgt = t.target.strip() if t.target is not None else None
        if tgt is None or tgt.kind == OTHER:  # e.g. the vtable pointer: "Ptr64"
            return label
        if tgt.kind == FUNCTION:
            return f"{label}     {c_name(tgt.target, depth + 1)}"
        return f"{label} {type_name(t.target, depth + 1)}"
    if k == ARRAY:
        return f"[{t.count}] {type_name(t.target, depth + 1)}"
    if k == BITFIELD:
        return f"Pos {t.bit_position}, {t.bit_length} Bit{'s' if t.bit_length != 1 else ''}"
    if k == FUNCTION:
        return c_name(t.target, depth + 1)
    return t.name or "<unnamed-tag>"


_C_BASE = {
    (INT, 1, True): "char", (INT, 1, False): "unsigned char", (CHAR, 1, True): "char",
    (CHAR, 1, False): "unsigned char", (INT, 2, True): "short", (INT, 2, False): "unsigned short",
    (INT, 4, True): "long", (INT, 4, False): "unsigned long", (INT, 8, True): "int64",
    (INT, 8, False): "unsigned int64", (FLOAT, 4, True): "float", (FLOAT, 8, True): "double",
}


def c_name(t: Type | None, depth: int = 0) -> str:
    """A C-like spelling, as WinDbg shows function return types (`void`, `long`)."""
    if t is None:
        return "void"
    if depth > MAX_DEPTH:
        return "..."
    t = t.strip()
    if t.kind == BASE:
        if t.encoding == VOID:
            return "void"
        if t.encoding == WCHAR:
            return "wchar_t"
        if t.encoding == BOOL:
            return "bool"
        if t.encoding == HRESULT:
            return "HRESULT"
        return t.name or _C_BASE.get((t.encoding, t.size, t.signed), base_dt_name(t))
    if t.kind == POINTER:
        return c_name(t.target, depth + 1) + " *"
    return type_name(t, depth + 1)


# --------------------------------------------------------------------------------------------
# Type sources

@runtime_checkable
class TypeSource(Protocol):
    """Where types come from: `find("_EPROCESS")` (exact name, then case-insensitive) and
    `names("_KTHREAD*")` (WinDbg wildcards, case-insensitive)."""

    def find(self, name: str) -> Type | None: ...

    def names(self, pattern: str = "*") -> list[str]: ...


def offset_of(source: TypeSource, type_name_: str, path: str) -> int:
    """`offset_of(pdb, "_EPROCESS", "ActiveProcessLinks")` -> 0x448; raises FieldNotFound."""
    t = source.find(type_name_)
    if t is None:
        raise FieldNotFound(f"Symbol {type_name_} not found")
    return t.field(path)[0]


class TypeLookup:
    """Mixin giving a TypeSource the convenience lookups the kernel layer uses."""

    def find(self, name: str) -> Type | None:  # pragma: no cover - provided by the subclass
        raise NotImplementedError

    def names(self, pattern: str = "*") -> list[str]:  # pragma: no cover - provided by the subclass
        raise NotImplementedError

    def offset_of(self, type_name_: str, path: str) -> int:
        return offset_of(self, type_name_, path)

    def field(self, type_name_: str, path: str) -> tuple[int, Type]:
        t = self.find(type_name_)
        if t is None:
            raise FieldNotFound(f"Symbol {type_name_} not found")
        return t.field(path)

    def size_of(self, type_name_: str) -> int | None:
        t = self.find(type_name_)
        return None if t is None else t.size


class _Piece:
    """Text between two `*`s: literal but for `?` (any one character)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.size = len(text)
        # Fixed length and no repetition: a search costs at most len(name) * size steps.
        self.rx = re.compile("".join("." if c == "?" else re.escape(c) for c in text), re.DOTALL) \
            if "?" in text else None

    def at(self, name: str, i: int) -> bool:
        if self.rx is None:
            return name.startswith(self.text, i)
        return self.rx.match(name, i) is not None

    def find(self, name: str, start: int, end: int) -> int:
        """The first place at or after `start` where the piece fits wholly before `end`; -1 if none."""
        if self.rx is None:
            return name.find(self.text, start, end)
        m = self.rx.search(name, start, end)
        return -1 if m is None else m.start()


class Wildcard:
    """WinDbg's `*` and `?` wildcards (the rest literal), case-insensitive, whole name.

    Matched without backtracking (issue 24: `*a*a*a...*b` as a regular expression took minutes):
    the first piece must start the name and the last end it; each piece between is taken at its
    first place after the one before, which is enough since a `*` takes whatever lies between.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._pieces = [_Piece(p) for p in pattern.lower().split("*")]

    def fullmatch(self, name: str) -> bool:
        text = name.lower()
        pieces = self._pieces
        first, last = pieces[0], pieces[-1]
        if len(pieces) == 1:
            return len(text) == first.size and first.at(text, 0)
        end = len(text) - last.size
        if end < first.size or not first.at(text, 0) or not last.at(text, end):
            return False
        pos = first.size
        for piece in pieces[1:-1]:
            found = piece.find(text, pos, end)
            if found < 0:
                return False
            pos = found + piece.size
        return True


def wildcard(pattern: str) -> Wildcard:
    """A WinDbg wildcard pattern (`*`, `?`) to match whole names with `.fullmatch(name)`."""
    return Wildcard(pattern)


# Built-in base types by their dt names (and common C / Windows spellings), for StaticTypes.
def _base(name: str, size: int, encoding: str = INT, signed: bool = False) -> Type:
    return Type(BASE, name, size, encoding=encoding, signed=signed)


BASE_TYPES: dict[str, Type] = {
    "Void": _base("void", 0, VOID), "Char": _base("char", 1, CHAR, True),
    "UChar": _base("unsigned char", 1, CHAR), "Wchar": _base("wchar_t", 2, WCHAR),
    "Int2B": _base("short", 2, signed=True), "Uint2B": _base("unsigned short", 2),
    "Int4B": _base("long", 4, signed=True), "Uint4B": _base("unsigned long", 4),
    "Int8B": _base("__int64", 8, signed=True), "Uint8B": _base("unsigned __int64", 8),
    "Float": _base("float", 4, FLOAT, True), "Double": _base("double", 8, FLOAT, True),
    "Bool": _base("bool", 1, BOOL), "HRESULT": _base("HRESULT", 4, HRESULT, True),
}
_BASE_ALIASES = {
    "void": "Void", "VOID": "Void", "char": "Char", "CHAR": "Char", "UCHAR": "UChar",
    "BOOLEAN": "UChar", "wchar_t": "Wchar", "WCHAR": "Wchar", "short": "Int2B", "SHORT": "Int2B",
    "USHORT": "Uint2B", "long": "Int4B", "LONG": "Int4B", "int": "Int4B", "ULONG": "Uint4B",
    "unsigned": "Uint4B", "LONG64": "Int8B", "LONGLONG": "Int8B", "ULONG64": "Uint8B",
    "ULONGLONG": "Uint8B", "float": "Float", "double": "Double", "bool": "Bool",
}

_PTR = re.compile(r"Ptr(32|64)\s+(.*)", re.DOTALL)
_ARR = re.compile(r"\[(\d+)\]\s*(.*)", re.DOTALL)


class StaticTypes(TypeLookup):
    """A TypeSource from plain Python definitions, written as dt prints them::

        StaticTypes({
            "_LIST_ENTRY": {"size": 0x10, "fields": [
                ("Flink", 0x0, "Ptr64 _LIST_ENTRY"), ("Blink", 0x8, "Ptr64 _LIST_ENTRY")]},
            "_KTHREAD_STATE": {"enum": {"Initialized": 0, "Ready": 1}, "size": 4},
            "_LARGE_INTEGER": {"union": True, "size": 8, "fields": [("QuadPart", 0, "Int8B")]},
            "_X": {"size": 4, "fields": [("Flag", 0, "Uint4B", 0, 1)]},  # bitfield Pos 0, 1 Bit
        })

    Field types are base names (`Uint4B`, `UChar`, `Ptr64 Void`, also `ULONG`-style aliases),
    other names in the same table, `Ptr32/Ptr64 X` and `[N] X`.
    """

    def __init__(self, definitions: dict[str, dict[str, Any]]) -> None:
        self._defs = dict(definitions)
        self._types: dict[str, Type] = {}
        self._lower = {k.lower(): k for k in self._defs}

    def find(self, name: str) -> Type | None:
        key = name if name in self._defs else self._lower.get(name.lower())
        if key is None:
            return None
        t = self._types.get(key)
        if t is None:
            t = self._build(key)
        return t

    def names(self, pattern: str = "*") -> list[str]:
        rx = wildcard(pattern)
        return sorted(k for k in self._defs if rx.fullmatch(k))

    def _build(self, key: str) -> Type:
        d = self._defs[key]
        if "enum" in d:
            t = Type(ENUM, key, d.get("size", 4), target=BASE_TYPES["Int4B"],
                     enumerators=[Enumerator(n, v) for n, v in d["enum"].items()])
            self._types[key] = t
            return t
        kind = UNION if d.get("union") else CLASS if d.get("class") else STRUCT
        # the ignore: mypy cannot infer a lambda that binds a default argument
        t = Type(kind, key, d.get("size", 0), loader=lambda ty, d=d: self._load(ty, d))  # type: ignore[misc]
        self._types[key] = t
        return t

    def _load(self, t: Type, d: dict[str, Any]) -> None:
        fields = []
        for spec in d.get("fields", ()):
            name, offset, tname = spec[0], spec[1], spec[2]
            ftype = self.parse(tname)
            if len(spec) >= 5:
                pos, length = spec[3], spec[4]
                ftype = Type(BITFIELD, "", ftype.size, ftype, bit_position=pos, bit_length=length)
                fields.append(Field(name, offset, ftype, pos, length))
            else:
                fields.append(Field(name, offset, ftype))
        t._fields = fields

    def parse(self, spec: str, depth: int = 0) -> Type:
        """A type from its dt spelling (`Ptr64 _LIST_ENTRY`, `[16] UChar`, `Uint4B`)."""
        spec = spec.strip()
        if depth > MAX_DEPTH:
            raise KdError(f"type '{spec}' nests too deeply")
        m = _PTR.fullmatch(spec)
        if m:
            return Type(POINTER, "", int(m.group(1)) // 8, self.parse(m.group(2), depth + 1))
        m = _ARR.fullmatch(spec)
        if m:
            elem = self.parse(m.group(2), depth + 1)
            n = int(m.group(1))
            return Type(ARRAY, "", n * elem.size, elem, count=n)
        base = BASE_TYPES.get(spec) or BASE_TYPES.get(_BASE_ALIASES.get(spec, ""))
        if base is not None:
            return base
        t = self.find(spec)
        if t is None:
            raise KdError(f"type '{spec}' is not defined in the table")
        return t
