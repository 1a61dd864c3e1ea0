"""CodeView type records: the TPI stream's leaf records (LF_*) decoded into `types.Type` objects.

Layout facts (record layouts, leaf values) are from public documentation of the format (LLVM's
"The PDB File Format" pages and the CodeView record definitions); the code is ours.

    _Records        a TPI or IPI stream: its header and the offsets of its records
    _numeric        numeric leaves (values of sizes, offsets and enumerators)
    _SIMPLE         built-in ("simple") type indices below 0x1000
    CodeViewTypes   PdbFile's type half: `type_by_index`, `find`, `names`, records decoded on
                    first use, with depth limits (types.MAX_DEPTH) and cycle checks

pdb.py (the MSF container, DBI, symbol records and `PdbFile`) builds on this module; this module
does not import it.
"""
from __future__ import annotations

import array
import struct

from construct import Int16ul, Int32sl, Int32ul, Struct

from kdshell.errors import SymbolFileError
from kdshell.symbols import types as T

TPI_HEADER = Struct(  # streams 2 and 4, 56 bytes
    "Version" / Int32ul,  # +0x00 20040203 = V80
    "HeaderSize" / Int32ul,  # +0x04
    "TypeIndexBegin" / Int32ul,  # +0x08 0x1000
    "TypeIndexEnd" / Int32ul,  # +0x0c one past the last
    "TypeRecordBytes" / Int32ul,  # +0x10
    "HashStreamIndex" / Int16ul,  # +0x14
    "HashAuxStreamIndex" / Int16ul,  # +0x16
    "HashKeySize" / Int32ul,  # +0x18
    "NumHashBuckets" / Int32ul,  # +0x1c
    "HashValueBufferOffset" / Int32sl,  # +0x20
    "HashValueBufferLength" / Int32ul,  # +0x24
    "IndexOffsetBufferOffset" / Int32sl,  # +0x28
    "IndexOffsetBufferLength" / Int32ul,  # +0x2c
    "HashAdjBufferOffset" / Int32sl,  # +0x30
    "HashAdjBufferLength" / Int32ul,  # +0x34
)
TPI_HEADER_SIZE = 56

# Type record kinds (CodeView LF_*)
LF_VTSHAPE, LF_MODIFIER, LF_POINTER, LF_PROCEDURE, LF_MFUNCTION = 0x000A, 0x1001, 0x1002, 0x1008, 0x1009
LF_ARGLIST, LF_FIELDLIST, LF_BITFIELD, LF_METHODLIST = 0x1201, 0x1203, 0x1205, 0x1206
LF_BCLASS, LF_VBCLASS, LF_IVBCLASS, LF_INDEX = 0x1400, 0x1401, 0x1402, 0x1404
LF_VFUNCTAB, LF_FRIENDCLS, LF_VFUNCOFF = 0x1409, 0x140B, 0x140C
LF_ENUMERATE, LF_ARRAY, LF_CLASS, LF_STRUCTURE, LF_UNION, LF_ENUM = (
    0x1502, 0x1503, 0x1504, 0x1505, 0x1506, 0x1507)
LF_FRIENDFCN, LF_MEMBER, LF_STMEMBER, LF_METHOD, LF_NESTTYPE = 0x150C, 0x150D, 0x150E, 0x150F, 0x1510
LF_ONEMETHOD, LF_NESTTYPEEX, LF_MEMBERMODIFY, LF_INTERFACE = 0x1511, 0x1512, 0x1513, 0x1519
LF_CLASS2, LF_STRUCTURE2, LF_UNION2, LF_INTERFACE2 = 0x1608, 0x1609, 0x160A, 0x160B
UDT_KINDS = frozenset((LF_CLASS, LF_STRUCTURE, LF_INTERFACE, LF_UNION, LF_ENUM, LF_CLASS2,
                       LF_STRUCTURE2, LF_UNION2, LF_INTERFACE2))
PROP_FWDREF, PROP_UNIQUE = 0x80, 0x200  # CV_prop_t bits

# Numeric leaves: kind -> (struct format, size); other sizes are skipped with a None value
_NUMERIC = {0x8000: "<b", 0x8001: "<h", 0x8002: "<H", 0x8003: "<i", 0x8004: "<I",
            0x8005: "<f", 0x8006: "<d", 0x8009: "<q", 0x800A: "<Q"}
_NUMERIC_SKIP = {0x8007: 10, 0x8008: 16, 0x800B: 6, 0x800C: 8, 0x800D: 16, 0x800E: 20,
                 0x800F: 32, 0x8017: 16, 0x8018: 16, 0x8019: 16, 0x801A: 8, 0x801C: 2}

# Built-in ("simple") type indices below 0x1000: low byte = type, bits 8-11 = pointer mode.
_SIMPLE = {
    0x00: ("<no type>", T.NOTYPE, 0, False), 0x03: ("void", T.VOID, 0, False),
    0x08: ("HRESULT", T.HRESULT, 4, True), 0x10: ("char", T.CHAR, 1, True),
    0x20: ("unsigned char", T.CHAR, 1, False), 0x70: ("char", T.CHAR, 1, True),
    0x71: ("wchar_t", T.WCHAR, 2, False), 0x7A: ("char16_t", T.WCHAR, 2, False),
    0x7B: ("char32_t", T.INT, 4, False), 0x7C: ("char8_t", T.CHAR, 1, False),
    0x68: ("__int8", T.INT, 1, True), 0x69: ("unsigned __int8", T.INT, 1, False),
    0x11: ("short", T.INT, 2, True), 0x21: ("unsigned short", T.INT, 2, False),
    0x72: ("short", T.INT, 2, True), 0x73: ("unsigned short", T.INT, 2, False),
    0x12: ("long", T.INT, 4, True), 0x22: ("unsigned long", T.INT, 4, False),
    0x74: ("int", T.INT, 4, True), 0x75: ("unsigned int", T.INT, 4, False),
    0x13: ("__int64", T.INT, 8, True), 0x23: ("unsigned __int64", T.INT, 8, False),
    0x76: ("__int64", T.INT, 8, True), 0x77: ("unsigned __int64", T.INT, 8, False),
    0x14: ("__int128", T.INT, 16, True), 0x24: ("unsigned __int128", T.INT, 16, False),
    0x78: ("__int128", T.INT, 16, True), 0x79: ("unsigned __int128", T.INT, 16, False),
    0x40: ("float", T.FLOAT, 4, True), 0x41: ("double", T.FLOAT, 8, True),
    0x42: ("long double", T.FLOAT, 10, True), 0x43: ("__float128", T.FLOAT, 16, True),
    0x44: ("__float48", T.FLOAT, 6, True), 0x45: ("float", T.FLOAT, 4, True),
    0x46: ("__half", T.FLOAT, 2, True), 0x30: ("bool", T.BOOL, 1, False),
    0x31: ("bool16", T.BOOL, 2, False), 0x32: ("bool32", T.BOOL, 4, False),
    0x33: ("bool64", T.BOOL, 8, False),
}
_SIMPLE_PTR_SIZE = {1: 2, 2: 4, 3: 4, 4: 4, 5: 6, 6: 8, 7: 16}


# --------------------------------------------------------------------------------------------
# Record helpers


def _cstr(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    z = buf.find(b"\0", pos, end)
    if z < 0:
        z = end
    return buf[pos:z].decode("utf-8", "replace"), z + 1


def _numeric(buf: bytes, pos: int) -> tuple[int | float | None, int]:
    """A CodeView numeric leaf at `pos`: (value, position after it)."""
    (leaf,) = struct.unpack_from("<H", buf, pos)
    pos += 2
    if leaf < 0x8000:
        return leaf, pos
    fmt = _NUMERIC.get(leaf)
    if fmt is not None:
        return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
    if leaf in (0x8017, 0x8018):  # (U)OCTWORD
        return int.from_bytes(buf[pos:pos + 16], "little", signed=leaf == 0x8017), pos + 16
    if leaf in _NUMERIC_SKIP:
        return None, pos + _NUMERIC_SKIP[leaf]
    if leaf == 0x8010:  # LF_VARSTRING
        (n,) = struct.unpack_from("<H", buf, pos)
        return None, pos + 2 + n
    raise SymbolFileError(f"unknown numeric leaf {leaf:#x}")


class _Records:
    """A TPI/IPI stream: header and the offsets of its records, found on first use."""

    def __init__(self, data: bytes, what: str, path: str | None):
        self.data, self.what, self.path = data, what, path
        self.begin = self.end = 0x1000
        self.header_size = self.record_end = 0  # an empty stream: no records
        self._offsets: array.array | None = None
        if not data:
            return
        if len(data) < TPI_HEADER_SIZE:
            raise SymbolFileError(f"{what} stream is truncated ({len(data)} bytes)", path)
        h = TPI_HEADER.parse(data[:TPI_HEADER_SIZE])
        if not TPI_HEADER_SIZE <= h.HeaderSize <= len(data):
            raise SymbolFileError(f"{what} header size {h.HeaderSize} is wrong", path)
        if h.TypeIndexEnd < h.TypeIndexBegin or h.TypeIndexBegin < 0x1000:
            raise SymbolFileError(f"{what} type index range {h.TypeIndexBegin:#x}-"
                                  f"{h.TypeIndexEnd:#x} is wrong", path)
        avail = len(data) - h.HeaderSize
        if h.TypeIndexEnd - h.TypeIndexBegin > avail // 4:  # each record is >= 4 bytes
            raise SymbolFileError(f"{what} claims {h.TypeIndexEnd - h.TypeIndexBegin} records "
                                  f"in {avail} bytes", path)
        self.header_size, self.begin, self.end = h.HeaderSize, h.TypeIndexBegin, h.TypeIndexEnd
        self.record_end = h.HeaderSize + min(h.TypeRecordBytes, avail)

    @property
    def count(self) -> int:
        return self.end - self.begin

    @property
    def offsets(self) -> array.array:
        if self._offsets is None:
            offs = array.array("I")
            data, pos, limit = self.data, self.header_size, self.record_end
            unpack = struct.Struct("<H").unpack_from
            for i in range(self.count):
                if pos + 4 > limit:
                    raise SymbolFileError(f"{self.what} is truncated at record "
                                          f"{self.begin + i:#x} of {self.end:#x}", self.path)
                offs.append(pos)
                (n,) = unpack(data, pos)
                if n < 2:
                    raise SymbolFileError(f"{self.what} record {self.begin + i:#x} has "
                                          f"length {n}", self.path)
                pos += 2 + n
            if pos > limit:
                raise SymbolFileError(f"{self.what} last record runs past the stream", self.path)
            self._offsets = offs
        return self._offsets

    def record(self, ti: int) -> tuple[int, int, int]:
        """(kind, start of the record's data, end of the record) for type index `ti`."""
        if not self.begin <= ti < self.end:
            raise SymbolFileError(f"type index {ti:#x} is outside the {self.what} "
                                  f"({self.begin:#x}-{self.end:#x})", self.path)
        off = self.offsets[ti - self.begin]
        n, kind = struct.unpack_from("<HH", self.data, off)
        return kind, off + 4, off + 2 + n


# --------------------------------------------------------------------------------------------
# Type records -> types.Type


class CodeViewTypes:
    """The type half of `PdbFile`: TPI records decoded into `types.Type` on first use.

    A mixin: the class it is mixed into provides `tpi` (a `_Records`), `pointer_size`,
    `warnings`, `_fail(message)` and the caches `_types`, `_building`, `_udt_names`,
    `_udt_unique`, `_udt_lower` and `_declared_only` (PdbFile.__init__ sets them)."""

    def type_by_index(self, ti: int) -> T.Type:
        """The Type for a TPI index (built-in types below 0x1000 included); forward references
        come back as their full definition when the PDB has one."""
        t = self._types.get(ti)
        if t is not None:
            return t
        try:
            return self._make(ti, 0)
        except (struct.error, IndexError) as exc:
            self._fail(f"type record {ti:#x} is corrupt ({exc})")

    def find(self, name: str) -> T.Type | None:
        """The structure, union, class or enum called `name` (exact, unique name, then
        case-insensitive). A type this PDB only declares (`struct _ETHREAD;` in a driver) is
        None, so a caller goes on to the module that defines it."""
        names, unique, lower = self._udt_index()
        ti = names.get(name) or unique.get(name) or lower.get(name.lower())
        if ti is None:
            return None
        t = self.type_by_index(ti)
        return None if t.forward else t

    def names(self, pattern: str = "*") -> list[str]:
        """Names of the types this PDB defines, matching WinDbg wildcards, case-insensitive."""
        rx = T.wildcard(pattern)
        names, _, _ = self._udt_index()
        return sorted(n for n in names if n not in self._declared_only and rx.fullmatch(n))

    def _make(self, ti: int, depth: int) -> T.Type:
        t = self._types.get(ti)
        if t is not None:
            return t
        if ti < self.tpi.begin and ti < 0x1000:
            t = self._simple(ti)
        else:
            if depth > T.MAX_DEPTH:
                self._fail(f"type {ti:#x} is nested more than {T.MAX_DEPTH} levels deep")
            if ti in self._building:
                self._fail(f"type {ti:#x} refers to itself (cyclic type chain)")
            self._building.add(ti)
            try:
                t = self._decode(ti, depth)
            finally:
                self._building.discard(ti)
        self._types[ti] = t
        return t

    def _simple(self, ti: int) -> T.Type:
        mode, base = (ti >> 8) & 0xF, ti & 0xFF
        name, enc, size, signed = _SIMPLE.get(base, (f"<simple type {base:#x}>", T.NOTYPE, 0, False))
        bt = self._types.get(base)
        if bt is None:
            bt = self._types[base] = T.Type(T.BASE, name, size, encoding=enc, signed=signed,
                                            index=base)
        if mode == 0:
            return bt
        return T.Type(T.POINTER, "", _SIMPLE_PTR_SIZE.get(mode, self.pointer_size), bt, index=ti)

    def _parse_udt(self, kind: int, p: int, end: int):
        """(prop, field list, size, name, unique name, underlying type) of a UDT record."""
        d, utype = self.tpi.data, 0
        if kind in (LF_CLASS, LF_STRUCTURE, LF_INTERFACE):
            _, prop, field = struct.unpack_from("<HHI", d, p)
            size, q = _numeric(d, p + 16)
        elif kind in (LF_CLASS2, LF_STRUCTURE2, LF_INTERFACE2):
            prop, field = struct.unpack_from("<II", d, p)
            _, q = _numeric(d, p + 16)
            size, q = _numeric(d, q)
        elif kind == LF_UNION:
            _, prop, field = struct.unpack_from("<HHI", d, p)
            size, q = _numeric(d, p + 8)
        elif kind == LF_UNION2:
            prop, field = struct.unpack_from("<II", d, p)
            _, q = _numeric(d, p + 8)
            size, q = _numeric(d, q)
        else:  # LF_ENUM
            _, prop, utype, field = struct.unpack_from("<HHII", d, p)
            size, q = 0, p + 12
        name, q = _cstr(d, q, end)
        unique = _cstr(d, q, end)[0] if prop & PROP_UNIQUE and q < end else ""
        return prop, field, int(size or 0), name, unique, utype

    def _udt_index(self):
        if self._udt_names is None:
            names, unique, declared = {}, {}, {}
            d, begin = self.tpi.data, self.tpi.begin
            header = struct.Struct("<HH").unpack_from
            for i, off in enumerate(self.tpi.offsets):
                n, kind = header(d, off)
                if kind not in UDT_KINDS:
                    continue
                try:
                    prop, _, _, name, uname, _ = self._parse_udt(kind, off + 4, off + 2 + n)
                except (struct.error, SymbolFileError):
                    continue
                if prop & PROP_FWDREF:
                    declared.setdefault(name, begin + i)
                    continue
                names.setdefault(name, begin + i)
                if uname:
                    unique.setdefault(uname, begin + i)
            self._declared_only = {n for n in declared if n not in names}
            for name, ti in declared.items():
                names.setdefault(name, ti)
            lower: dict[str, int] = {}
            for name, ti in names.items():
                lower.setdefault(name.lower(), ti)
            self._udt_names, self._udt_unique, self._udt_lower = names, unique, lower
        return self._udt_names, self._udt_unique, self._udt_lower

    def _decode(self, ti: int, depth: int) -> T.Type:
        kind, p, end = self.tpi.record(ti)
        d = self.tpi.data

        def sub(x: int) -> T.Type:
            return self._make(x, depth + 1)

        if kind == LF_MODIFIER:
            tgt, attr = struct.unpack_from("<IH", d, p)
            target = sub(tgt)
            return T.Type(T.MODIFIER, "", target.size, target, const=bool(attr & 1),
                          volatile=bool(attr & 2), unaligned=bool(attr & 4), index=ti)
        if kind == LF_POINTER:
            tgt, attr = struct.unpack_from("<II", d, p)
            ptype, mode, size = attr & 0x1F, (attr >> 5) & 7, (attr >> 13) & 0x3F
            if not size:
                size = 8 if ptype == 0x0C else 4 if ptype == 0x0A else self.pointer_size
            member_of = struct.unpack_from("<I", d, p + 8)[0] if mode in (2, 3) else None
            return T.Type(T.POINTER, "", size, sub(tgt), reference=mode in (1, 4),
                          member_of=member_of, const=bool(attr & 0x400),
                          volatile=bool(attr & 0x200), index=ti)
        if kind == LF_ARRAY:
            elem, _ = struct.unpack_from("<II", d, p)
            size, q = _numeric(d, p + 8)
            e = sub(elem)
            size = int(size or 0)
            return T.Type(T.ARRAY, _cstr(d, q, end)[0], size, e,
                          count=size // e.size if e.size else 0, index=ti)
        if kind == LF_BITFIELD:
            base, length, pos = struct.unpack_from("<IBB", d, p)
            b = sub(base)
            return T.Type(T.BITFIELD, "", b.size, b, bit_position=pos, bit_length=length, index=ti)
        if kind in (LF_PROCEDURE, LF_MFUNCTION):
            if kind == LF_PROCEDURE:
                rv, cc, _, _, arglist = struct.unpack_from("<IBBHI", d, p)
            else:
                rv, _, _, cc, _, _, arglist = struct.unpack_from("<IIIBBHI", d, p)
            return T.Type(T.FUNCTION, "", 0, sub(rv), calling_convention=_CALLCONV.get(cc, ""),
                          loader=lambda t, a=arglist: self._load_args(t, a), index=ti)
        if kind in UDT_KINDS:
            prop, field, size, name, unique, utype = self._parse_udt(kind, p, end)
            if prop & PROP_FWDREF:
                names, uniq, _ = self._udt_index()
                real = uniq.get(unique) if unique else None
                real = real or names.get(name)
                if real is not None and real != ti:
                    t = self._make(real, depth + 1)
                    if not t.forward:
                        return t
                return T.Type(_UDT_KIND[kind], name, 0, forward=True, fields=(), index=ti,
                              unique_name=unique)
            target = sub(utype) if kind == LF_ENUM else None
            if target is not None:
                size = target.size
            loader = (lambda t, f=field: self._load_members(t, f)) if field else None
            return T.Type(_UDT_KIND[kind], name, size, target, loader=loader,
                          fields=None if field else (), unique_name=unique, index=ti)
        return T.Type(T.OTHER, _OTHER_NAMES.get(kind, f"leaf {kind:#x}"), 0, index=ti)

    def _load_args(self, t: T.Type, arglist: int) -> None:
        if not arglist:
            return
        kind, p, end = self.tpi.record(arglist)
        if kind != LF_ARGLIST:
            return
        (count,) = struct.unpack_from("<I", self.tpi.data, p)
        count = min(count, (end - p - 4) // 4)
        t._args = [self.type_by_index(x)
                   for x in struct.unpack_from(f"<{count}I", self.tpi.data, p + 4)]

    def _load_members(self, t: T.Type, fl: int) -> None:
        d = self.tpi.data
        fields, bases, enums, seen = [], [], [], set()
        try:
            while fl and fl not in seen and len(seen) < 4096:
                seen.add(fl)
                kind, p, end = self.tpi.record(fl)
                if kind != LF_FIELDLIST:
                    self._fail(f"type {t.index:#x}: its field list {fl:#x} is not an LF_FIELDLIST")
                fl = 0
                while p < end:
                    b = d[p]
                    if b >= 0xF0:  # LF_PAD: the low nibble says how far to skip (LLD pads
                        # members to 4 bytes with F3 F2 F1, which broke pdbparse;
                        # test_fixture_types_match_pdbutil)
                        p += (b & 0x0F) or 1
                        continue
                    (leaf,) = struct.unpack_from("<H", d, p)
                    p += 2
                    if leaf == LF_MEMBER:
                        _, mti = struct.unpack_from("<HI", d, p)
                        off, p = _numeric(d, p + 6)
                        name, p = _cstr(d, p, end)
                        mt = self.type_by_index(mti)
                        if mt.kind == T.BITFIELD:
                            fields.append(T.Field(name, int(off or 0), mt, mt.bit_position,
                                                  mt.bit_length))
                        else:
                            fields.append(T.Field(name, int(off or 0), mt))
                    elif leaf == LF_ENUMERATE:
                        value, p = _numeric(d, p + 2)
                        name, p = _cstr(d, p, end)
                        enums.append(T.Enumerator(name, int(value or 0)))
                    elif leaf == LF_BCLASS:
                        _, bti = struct.unpack_from("<HI", d, p)
                        off, p = _numeric(d, p + 6)
                        bases.append((int(off or 0), self.type_by_index(bti)))
                    elif leaf in (LF_VBCLASS, LF_IVBCLASS):
                        _, p = _numeric(d, p + 10)
                        _, p = _numeric(d, p)
                    elif leaf == LF_INDEX:  # continuation in another LF_FIELDLIST record
                        fl = struct.unpack_from("<I", d, p + 2)[0]
                        p += 6
                    elif leaf in (LF_NESTTYPE, LF_NESTTYPEEX, LF_STMEMBER, LF_METHOD,
                                  LF_FRIENDFCN, LF_MEMBERMODIFY):
                        _, p = _cstr(d, p + 6, end)
                    elif leaf == LF_ONEMETHOD:
                        (attr,) = struct.unpack_from("<H", d, p)
                        intro = ((attr >> 2) & 7) in (4, 6)  # introducing virtual: + vbaseoff
                        _, p = _cstr(d, p + (10 if intro else 6), end)
                    elif leaf == LF_VFUNCTAB:  # the vtable pointer, as dt names it
                        (vti,) = struct.unpack_from("<I", d, p + 2)
                        fields.append(T.Field("__VFN_table", 0, self.type_by_index(vti)))
                        p += 6
                    elif leaf in (LF_FRIENDCLS,):
                        p += 6
                    elif leaf == LF_VFUNCOFF:
                        p += 10
                    else:
                        self.warnings.append(f"type {t.index:#x}: unknown member leaf {leaf:#x}")
                        break
        except (struct.error, IndexError) as exc:
            self._fail(f"type {t.index:#x}: corrupt field list ({exc})")
        finally:
            t._fields, t._bases, t._enumerators = fields, bases, enums


_UDT_KIND = {LF_CLASS: T.CLASS, LF_CLASS2: T.CLASS, LF_STRUCTURE: T.STRUCT,
             LF_STRUCTURE2: T.STRUCT, LF_INTERFACE: T.CLASS, LF_INTERFACE2: T.CLASS,
             LF_UNION: T.UNION, LF_UNION2: T.UNION, LF_ENUM: T.ENUM}
_CALLCONV = {0x00: "cdecl", 0x04: "fastcall", 0x07: "stdcall", 0x0B: "thiscall",
             0x11: "generic", 0x16: "clrcall", 0x18: "vectorcall"}
_OTHER_NAMES = {LF_ARGLIST: "<argument list>", LF_FIELDLIST: "<field list>",
                LF_METHODLIST: "<method list>", LF_VTSHAPE: "<vtable shape>"}
