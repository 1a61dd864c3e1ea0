"""The PDB reader against real Microsoft PDBs, the fixture PDBs and llvm-pdbutil's view of them,
and against hostile files.

The golden files (fixtures/images/golden/*.pdbutil.txt) are `llvm-pdbutil dump` output: an
independent reader. They are parsed here as text, so a layout mistake in kdshell.symbols.pdb
cannot hide in both the expectation and the reader. Hostile PDBs are written from literal
layouts (struct formats spelled out here), not from the reader's declarations.
"""
from __future__ import annotations

import random
import re
import struct
import time
from pathlib import Path

import pytest

from kdshell.errors import KdError, SymbolFileError
from kdshell.symbols import types as T
from kdshell.symbols.pdb import PdbFile, undecorate
from kdshell.symbols.typeformat import DtOptions, render

from conftest import CORPUS_SYMBOLS, REPO, TRIAGE_19041

AMDPPM = CORPUS_SYMBOLS / "amdppm.pdb" / "1C19FDDB27BB3399D9B45973EFEAFCF31" / "amdppm.pdb"
USER32 = CORPUS_SYMBOLS / "user32.pdb" / "15F778B3671D4EFDBDCDE79905308B792" / "user32.pdb"
BIN = REPO / "fixtures" / "images" / "bin"
GOLDEN = REPO / "fixtures" / "images" / "golden"
FIXTURE_PDBS = sorted(BIN.glob("*.pdb")) + sorted((BIN / "x86").glob("*.pdb"))


def golden_for(pdb: Path) -> Path:
    prefix = "x86-" if pdb.parent.name == "x86" else ""
    return GOLDEN / f"{prefix}{pdb.name}.pdbutil.txt"


# --------------------------------------------------------------------------------------------
# llvm-pdbutil text, parsed independently

RECORD = re.compile(r"^\s+0x([0-9A-F]+) \| (LF_\w+) \[size = \d+\](?: `(.*)`)?$")
SYMBOL = re.compile(r"^\s+\d+ \| (S_\w+) \[size = \d+\](?: `(.*)`)?")
ADDR = re.compile(r"addr = (\d{4}):(\d+)")


class Golden:
    def __init__(self, path: Path):
        self.sections: dict[str, list[str]] = {}
        lines = path.read_text().splitlines()
        title = None
        for i, line in enumerate(lines):
            if i + 1 < len(lines) and lines[i + 1].startswith("====") and line.strip():
                title = line.strip()
                self.sections[title] = []
            elif title and not line.startswith("===="):
                self.sections[title].append(line)
        self.summary = {}
        for line in self.sections["Summary"]:
            if ":" in line:
                k, v = line.split(":", 1)
                self.summary[k.strip()] = v.strip()
        self.types = self._records(self.sections.get("Types (TPI Stream)", []), RECORD)
        self.section_va = self._section_vas(self.sections.get("Section Headers", []))

    @staticmethod
    def _records(lines, rx):
        out, cur = {}, None
        for line in lines:
            m = rx.match(line)
            if m:
                cur = {"kind": m.group(2), "name": m.group(3), "lines": []}
                out[int(m.group(1), 16)] = cur
            elif cur is not None:
                cur["lines"].append(line.strip())
        return out

    def symbols(self, section: str):
        """[(kind, name, [detail lines])] of a symbol section."""
        out, cur = [], None
        for line in self.sections.get(section, []):
            m = SYMBOL.match(line)
            if m:
                cur = (m.group(1), m.group(2), [])
                out.append(cur)
            elif cur is not None:
                cur[2].append(line.strip())
        return out

    @staticmethod
    def _section_vas(lines):
        vas, num = {}, None
        for line in lines:
            m = re.match(r"\s*SECTION HEADER #(\d+)", line)
            if m:
                num = int(m.group(1))
            m = re.match(r"\s*([0-9A-F]+) virtual address", line)
            if m and num is not None:
                vas[num] = int(m.group(1), 16)
        return vas

    def rva(self, detail: str) -> int | None:
        m = ADDR.search(detail)
        if not m or int(m.group(1)) not in self.section_va:
            return None
        return self.section_va[int(m.group(1))] + int(m.group(2))


def expected_kind(g: Golden, ti: int) -> str:
    if ti < 0x1000:
        return T.POINTER if (ti >> 8) & 0xF else T.BASE
    rec = g.types[ti]
    return {
        "LF_POINTER": T.POINTER, "LF_ARRAY": T.ARRAY, "LF_BITFIELD": T.BITFIELD,
        "LF_MODIFIER": T.MODIFIER, "LF_STRUCTURE": T.STRUCT, "LF_CLASS": T.CLASS,
        "LF_UNION": T.UNION, "LF_ENUM": T.ENUM, "LF_PROCEDURE": T.FUNCTION,
        "LF_MFUNCTION": T.FUNCTION,
    }[rec["kind"]]


MEMBER = re.compile(r"- LF_MEMBER \[name = `(.*)`, Type = 0x([0-9A-F]+).*, offset = (\d+),")
ENUMERATE = re.compile(r"- LF_ENUMERATE \[(.*) = (-?\d+)\]")
CONTINUATION = re.compile(r"- LF_INDEX \[continuation = 0x([0-9A-F]+)\]")


def golden_members(g: Golden, fieldlist: int):
    members, enums, seen = [], [], set()
    while fieldlist and fieldlist not in seen:
        seen.add(fieldlist)
        nxt = 0
        for line in g.types[fieldlist]["lines"]:
            if m := MEMBER.match(line):
                members.append((m.group(1), int(m.group(3)), int(m.group(2), 16)))
            elif m := ENUMERATE.match(line):
                enums.append((m.group(1), int(m.group(2))))
            elif m := CONTINUATION.match(line):
                nxt = int(m.group(1), 16)
        fieldlist = nxt
    return members, enums


# --------------------------------------------------------------------------------------------
# Real Microsoft PDBs


def test_amdppm_identity_matches_its_store_key():
    with PdbFile(AMDPPM) as pdb:
        assert str(pdb.guid).upper() == "1C19FDDB-27BB-3399-D9B4-5973EFEAFCF3"
        # Public PDBs are made by stripping a private one: the info stream's age goes up (3)
        # while the DBI age keeps the image's RSDS age (1), which is what the store key uses.
        assert pdb.info_age == 3 and pdb.dbi_age == 1 and pdb.age == 1
        assert pdb.key == "1C19FDDB27BB3399D9B45973EFEAFCF31"
        assert pdb.key == AMDPPM.parent.name
        assert pdb.machine == 0x8664 and pdb.pointer_size == 8
        assert "/names" in pdb.named_streams


def test_amdppm_crash_rip_is_write_io_mem_raw_ex_plus_0x70():
    from kdshell.dumpfile.dump import open_dump

    dump = open_dump(TRIAGE_19041)
    try:
        amdppm = next(d for d in dump.triage.drivers if d.name.lower().endswith("amdppm.sys"))
        rip = dump.header.bugcheck_parameters[1]  # 0x1000007E: the faulting address
        rva = rip - amdppm.base
    finally:
        dump.close()
    assert amdppm.base == 0xFFFFF8048B580000 and rip == 0xFFFFF8048B58334C
    assert rva == 0x334C
    with PdbFile(AMDPPM) as pdb:
        assert pdb.symbol_at(rva) == ("WriteIoMemRawEx", 0x70)
        assert pdb.address_of("WriteIoMemRawEx") == 0x32DC
        assert pdb.address_of("writeiomemrawex") == 0x32DC  # case-insensitive fallback
        sym, disp = pdb.lookup(rva)
        assert sym.kind == "public" and sym.flags & 2  # a function public
        prev, nxt = pdb.neighbors(rva)
        assert prev.name == "WriteIoMemRawEx" and nxt.rva > rva
        assert [s.name for s in pdb.symbols("WriteIoMemRaw*")] == [
            "WriteIoMemRaw", "WriteIoMemRawEx", "WriteIoMemRawHidden"]
        assert pdb.function_bounds(rva) is None  # a public-only PDB has no function lengths


def test_amdppm_public_count_and_types():
    with PdbFile(AMDPPM) as pdb:
        assert len(pdb.publics) == 952
        assert pdb.type_count == 4877
        # A stripped Microsoft PDB still has a TPI: every record decodes.
        for ti in range(pdb.tpi.begin, pdb.tpi.end):
            pdb.type_by_index(ti)
        t = pdb.find("_UNICODE_STRING")
        assert t is not None and t.size == 16
        assert [(f.name, f.offset) for f in t.fields] == [
            ("Length", 0), ("MaximumLength", 2), ("Buffer", 8)]
        assert T.type_name(t.fields[2].type) == "Ptr64 Wchar"


def test_user32_identity_publics_and_omap():
    with PdbFile(USER32) as pdb:
        assert pdb.key == "15F778B3671D4EFDBDCDE79905308B792" == USER32.parent.name
        assert pdb.info_age == 3 and pdb.age == 2
        assert len(pdb.publics) == 4059
        assert pdb.type_count == 0  # public user32.pdb carries no types
        # Windows 7 user32 was rearranged after linking (OMAP): addresses go through the map.
        # These RVAs agree with the `symbolic` crate's reading of the same PDB.
        assert pdb.address_of("MessageBoxW") == 0x711E4
        assert pdb.address_of("MessageBoxA") == 0x71188
        assert pdb.address_of("CreateWindowExW") == 0x12C30
        assert pdb.address_of("GetMessageW") == 0x1C934
        assert pdb.symbol_at(0x711E4 + 5) == ("MessageBoxW", 5)
        assert "MessageBoxW" in [s.name for s in pdb.symbols("messagebox?")]


# --------------------------------------------------------------------------------------------
# Fixture PDBs against llvm-pdbutil


@pytest.fixture(params=FIXTURE_PDBS, ids=lambda p: f"{p.parent.name}/{p.name}")
def fixture_pdb(request):
    path = request.param
    with PdbFile(path) as pdb:
        yield pdb, Golden(golden_for(path))


def test_fixture_identity(fixture_pdb):
    pdb, g = fixture_pdb
    assert str(pdb.guid).upper() == g.summary["GUID"].strip("{}")
    assert pdb.info_age == int(g.summary["Age"])
    assert pdb.signature == int(g.summary["Signature"])
    assert pdb.msf.block_size == int(g.summary["Block Size"])
    assert pdb.msf.num_streams == int(g.summary["Number of streams"])


def test_fixture_publics_match_pdbutil(fixture_pdb):
    pdb, g = fixture_pdb
    expected = sorted((name, g.rva(d[0]), "function" in d[0])
                      for kind, name, d in g.symbols("Public Symbols") if kind == "S_PUB32")
    got = sorted((s.name, s.rva, bool(s.flags & 2)) for s in pdb.publics)
    assert got == expected
    assert len(got) > 10


def test_fixture_module_and_global_symbols_match_pdbutil(fixture_pdb):
    pdb, g = fixture_pdb
    checked = 0
    for section in ("Symbols", "Global Symbols"):
        for kind, name, detail in g.symbols(section):
            text = " ".join(detail)
            if kind in ("S_GPROC32", "S_LPROC32", "S_THUNK32"):
                rva = g.rva(text)
                size = int(re.search(r"(?:code size|size) = (\d+)", text).group(1))
                hits = [s for s in pdb.all_symbols if s.name == name and s.rva == rva]
                assert hits and hits[0].kind == "function" and hits[0].size == size, name
                if size:
                    assert pdb.function_bounds(rva + size - 1) == (rva, rva + size)
                    assert pdb.symbol_at(rva + size - 1)[1] == size - 1
                checked += 1
            elif kind in ("S_GDATA32", "S_LDATA32"):
                rva = g.rva(text)
                ti = int(re.search(r"type = 0x([0-9A-F]+)", text).group(1), 16)
                hits = [s for s in pdb.all_symbols if s.name == name and s.rva == rva]
                assert hits and hits[0].kind == "data" and hits[0].type_index == ti, name
                checked += 1
    assert checked > 5


def test_fixture_types_match_pdbutil(fixture_pdb):
    pdb, g = fixture_pdb
    udts = 0
    for ti, rec in g.types.items():
        kind, lines = rec["kind"], " ".join(rec["lines"])
        if kind in ("LF_FIELDLIST", "LF_ARGLIST", "LF_METHODLIST", "LF_VTSHAPE"):
            continue
        t = pdb.type_by_index(ti)
        if kind == "LF_POINTER":
            assert t.kind == T.POINTER
            assert t.size == (8 if "kind = ptr64" in lines else 4)
            assert t.target is pdb.type_by_index(int(re.search(r"referent = 0x([0-9A-F]+)",
                                                              lines).group(1), 16))
        elif kind == "LF_MODIFIER":
            assert t.kind == T.MODIFIER
            assert t.const == ("const" in lines) and t.volatile == ("volatile" in lines)
        elif kind == "LF_ARRAY":
            assert t.kind == T.ARRAY and t.size == int(re.search(r"size: (\d+)", lines).group(1))
            elem = int(re.search(r"element type: 0x([0-9A-F]+)", lines).group(1), 16)
            assert t.target.kind == expected_kind(g, elem) or t.target.kind in T.AGGREGATES
            if t.target.size:
                assert t.count == t.size // t.target.size
        elif kind == "LF_BITFIELD":
            m = re.search(r"bit offset = (\d+), # bits = (\d+)", lines)
            assert (t.kind, t.bit_position, t.bit_length) == (
                T.BITFIELD, int(m.group(1)), int(m.group(2)))
        elif kind in ("LF_PROCEDURE", "LF_MFUNCTION"):
            assert t.kind == T.FUNCTION
            n = int(re.search(r"# args = (\d+)", lines).group(1))
            assert len(t.args) == n
        elif kind in ("LF_STRUCTURE", "LF_CLASS", "LF_UNION", "LF_ENUM"):
            assert t.name == rec["name"]
            if "forward ref" in lines:
                # resolved to the definition the golden file names, when there is one
                m = re.search(r"forward ref \(-> 0x([0-9A-F]+)\)", lines)
                if m:
                    assert t is pdb.type_by_index(int(m.group(1), 16))
                continue
            udts += 1
            expect = {"LF_STRUCTURE": T.STRUCT, "LF_CLASS": T.CLASS, "LF_UNION": T.UNION,
                      "LF_ENUM": T.ENUM}[kind]
            assert t.kind == expect and not t.forward
            m = re.search(r"field list: 0x([0-9A-F]+)", lines)
            members, enums = golden_members(g, int(m.group(1), 16)) if m else ([], [])
            if kind == "LF_ENUM":
                assert [(e.name, e.value) for e in t.enumerators] == enums
                continue
            assert t.size == int(re.search(r"sizeof (\d+)", lines).group(1))
            assert [(f.name, f.offset) for f in t.fields] == [(n, o) for n, o, _ in members]
            for f, (name, _, mti) in zip(t.fields, members):
                assert f.type.kind == expected_kind(g, mti), (rec["name"], name)
                if f.type.kind == T.BITFIELD:
                    bl = " ".join(g.types[mti]["lines"])
                    m = re.search(r"bit offset = (\d+), # bits = (\d+)", bl)
                    assert (f.bit_position, f.bit_length) == (int(m.group(1)), int(m.group(2)))
    assert udts > 5 or "hal" in golden_kernel_name(pdb)


def golden_kernel_name(pdb: PdbFile) -> str:
    return pdb.path or ""


def test_fixture_every_type_renders(fixture_pdb):
    """dt of every structure (layout and, over zeroed memory, values) produces lines."""
    pdb, _ = fixture_pdb
    zero = lambda address, size: bytes(size)  # noqa: E731
    for name in pdb.names():
        t = pdb.find(name)
        assert render(t, options=DtOptions(recurse=2))
        assert render(t, 0x1000, zero, pointer_size=pdb.pointer_size,
                      options=DtOptions(recurse=1))


def test_declared_only_types_are_not_found():
    """kbdcrash.pdb declares `struct _ETHREAD;` but never defines it: dt must look elsewhere."""
    with PdbFile(BIN / "kbdcrash.pdb") as pdb:
        assert pdb.find("_ETHREAD") is None and "_ETHREAD" not in pdb.names()
        declared = [t for t in (pdb.type_by_index(i) for i in range(pdb.tpi.begin, pdb.tpi.end))
                    if t.name == "_ETHREAD"]
        assert declared and all(t.forward for t in declared)
    with PdbFile(BIN / "ntkrnlmp.pdb") as pdb:
        assert pdb.find("_ETHREAD").size > 0


def test_x86_fixture_display_names():
    with PdbFile(BIN / "x86" / "ntkrpamp.pdb") as pdb:
        assert pdb.machine == 0x14C and pdb.pointer_size == 4
        sym = pdb.symbol("KeBugCheckEx")
        assert sym is not None and sym.name == "_KeBugCheckEx@20"
        assert pdb.address_of("_KeBugCheckEx@20") == sym.rva
        fast = pdb.symbol("@ObfDereferenceObject@4")
        assert fast.display == "ObfDereferenceObject"
        assert pdb.symbol_at(sym.rva)[0] == "KeBugCheckEx"
        assert T.type_name(pdb.find("_LIST_ENTRY").fields[0].type) == "Ptr32 _LIST_ENTRY"


def test_undecorate_rules():
    x86, x64 = 0x14C, 0x8664
    assert undecorate("_KeBugCheckEx@20", x86) == "KeBugCheckEx"
    assert undecorate("@KfRaiseIrql@4", x86) == "KfRaiseIrql"
    assert undecorate("_memcmp", x86) == "memcmp"
    assert undecorate("__imp__HalReturnToFirmware@4", x86) == "__imp_HalReturnToFirmware"
    assert undecorate("SwapContext", x86) == "SwapContext"
    assert undecorate("?Func@@YAXXZ", x86) == "?Func@@YAXXZ"  # C++: left decorated
    assert undecorate("_KeBugCheckEx", x64) == "_KeBugCheckEx"


# --------------------------------------------------------------------------------------------
# Hostile files. A small MSF writer from literal layouts.

MAGIC = b"Microsoft C/C++ MSF 7.00\r\n\x1aDS\x00\x00\x00"


def write_msf(streams: list[bytes], block_size: int = 512) -> bytes:
    """An MSF 7.00 file: superblock (block 0), free block maps (1, 2), block map (3),
    directory, then the streams."""
    blocks: list[bytes] = [b"", b"\xff" * block_size, b"\xff" * block_size, b""]

    def place(data: bytes) -> list[int]:
        idx = []
        for i in range(0, len(data), block_size):
            idx.append(len(blocks))
            blocks.append(data[i:i + block_size].ljust(block_size, b"\0"))
        return idx

    stream_blocks = [place(s) for s in streams]
    directory = struct.pack("<I", len(streams))
    directory += b"".join(struct.pack("<I", len(s)) for s in streams)
    directory += b"".join(struct.pack(f"<{len(b)}I", *b) for b in stream_blocks)
    dir_blocks = place(directory)
    blocks[3] = struct.pack(f"<{len(dir_blocks)}I", *dir_blocks).ljust(block_size, b"\0")
    blocks[0] = (MAGIC + struct.pack("<IIIIII", block_size, 1, len(blocks), len(directory), 0, 3)
                 ).ljust(block_size, b"\0")
    return b"".join(b.ljust(block_size, b"\0") for b in blocks)


def info_stream() -> bytes:
    guid = bytes(range(16))
    # version VC70, signature, age, GUID; empty named stream map: strings 0, size 0,
    # capacity 1, present words 0, deleted words 0
    return struct.pack("<III", 20000404, 0x12345678, 1) + guid + struct.pack("<IIIII", 0, 0, 1, 0, 0)


def pad(n: int) -> bytes:
    """LF_PAD bytes: 0xF0 + the number of bytes left to the next 4-byte boundary."""
    return bytes(0xF0 + k for k in range(n, 0, -1))


def tpi_stream(records: list[bytes]) -> bytes:
    body = b""
    for r in records:
        r = r + pad((-(len(r) + 2)) % 4)
        body += struct.pack("<H", len(r)) + r
    header = struct.pack("<IIIIIHHIIiIiIiI", 20040203, 56, 0x1000, 0x1000 + len(records),
                         len(body), 0xFFFF, 0xFFFF, 4, 0x3FFFF, 0, 0, 0, 0, 0, 0)
    return header + body


def lf_pointer(target: int) -> bytes:
    return struct.pack("<HII", 0x1002, target, 0x0C | (8 << 13))


def lf_modifier(target: int) -> bytes:
    return struct.pack("<HIH", 0x1001, target, 1)


def lf_struct(name: str, fieldlist: int, size: int, fwd: bool = False) -> bytes:
    return struct.pack("<HHHIIIH", 0x1505, 1, 0x80 if fwd else 0, fieldlist, 0, 0, size) + \
        name.encode() + b"\0"


def lf_member(name: str, ti: int, offset: int) -> bytes:
    return struct.pack("<HHIH", 0x150D, 3, ti, offset) + name.encode() + b"\0"


def lf_fieldlist(*members: bytes) -> bytes:
    out = struct.pack("<H", 0x1203)
    for m in members:
        out += m + pad((-len(m)) % 4)
    return out


def lf_index(ti: int) -> bytes:
    return struct.pack("<HHI", 0x1404, 0, ti)


def hostile_pdb() -> bytes:
    recs = [
        lf_pointer(0x1001),  # 0x1000 pointer -> modifier -> pointer: a cycle
        lf_modifier(0x1000),  # 0x1001
        lf_fieldlist(lf_member("a", 0x74, 0), lf_index(0x1002)),  # 0x1002 continues in itself
        lf_struct("Loop", 0x1002, 4),  # 0x1003
        struct.pack("<HIIH", 0x1503, 0x1004, 0x23, 16) + b"\0",  # 0x1004 array of itself
        lf_fieldlist(lf_member("me", 0x1006, 0), lf_member("next", 0x1007, 8)),  # 0x1005
        lf_struct("Self", 0x1005, 16),  # 0x1006 a structure that contains itself
        lf_pointer(0x1006),  # 0x1007
        lf_struct("Declared", 0, 0, fwd=True),  # 0x1008 forward reference, no definition
        struct.pack("<HIIH", 0x1503, 0x74, 0x23, 0x8004) + struct.pack("<I", 0xFFFFFFFF)
        + b"\0",  # 0x1009 [0x3fffffff] Int4B: a huge claimed count
    ]
    first_chain = 0x1000 + len(recs)
    for i in range(200):  # 0x100a...: modifiers 200 deep
        recs.append(lf_modifier(first_chain + i + 1 if i < 199 else 0x74))
    return write_msf([b"", info_stream(), tpi_stream(recs), b"", b""])


def test_hostile_writer_makes_a_readable_pdb():
    with PdbFile(data=hostile_pdb()) as pdb:
        assert pdb.key == "03020100050407060809" + "0A0B0C0D0E0F" + "1"
        assert pdb.type_count == 210
        assert pdb.all_symbols == []  # no DBI: no symbols, but no error either
        assert any("DBI" in w for w in pdb.warnings)


def test_cyclic_type_chain_is_an_error_not_a_hang():
    with PdbFile(data=hostile_pdb()) as pdb:
        with pytest.raises(SymbolFileError, match="cyclic"):
            pdb.type_by_index(0x1000)
        with pytest.raises(SymbolFileError, match="cyclic"):
            pdb.type_by_index(0x1004)


def test_field_list_continuing_into_itself_is_bounded():
    with PdbFile(data=hostile_pdb()) as pdb:
        t = pdb.find("Loop")
        assert [(f.name, f.offset) for f in t.fields] == [("a", 0)]


def test_structure_containing_itself_renders_bounded():
    with PdbFile(data=hostile_pdb()) as pdb:
        t = pdb.find("Self")
        lines = render(t, options=DtOptions(blocks=True))
        assert 10 < len(lines) < 1000
        lines = render(t, 0x1000, lambda a, n: bytes(n), options=DtOptions(blocks=True))
        assert len(lines) < 1000
        with pytest.raises(T.FieldNotFound):
            t.field("me.me.nope")
        assert t.field("me.me.next")[0] == 8


def test_deep_type_chain_and_huge_array_are_bounded():
    with PdbFile(data=hostile_pdb()) as pdb:
        with pytest.raises(SymbolFileError, match="levels deep"):
            pdb.type_by_index(0x100A)
        assert pdb.type_by_index(0x100A + 150).kind == T.MODIFIER  # the shallow end is fine
        huge = pdb.type_by_index(0x1009)
        assert huge.count == 0xFFFFFFFF // 4
        lines = render(huge, 0, lambda a, n: bytes(n), options=DtOptions(arrays=0))
        assert len(lines) <= 0x10000 + 2
        fwd = pdb.type_by_index(0x1008)
        assert fwd.forward and fwd.fields == [] and render(fwd) == []
        assert pdb.find("Declared") is None and "Declared" not in pdb.names()


def test_old_pdb_20_and_garbage_give_one_line_errors():
    old = b"Microsoft C/C++ program database 2.00\r\n\x1aJG\0\0" + bytes(200)
    with pytest.raises(SymbolFileError, match="PDB 2.00"):
        PdbFile(data=old)
    with pytest.raises(SymbolFileError, match="not a PDB"):
        PdbFile(data=b"MZ" + bytes(100))
    with pytest.raises(SymbolFileError, match="too small"):
        PdbFile(data=b"")
    with pytest.raises(SymbolFileError, match="MSF-Z"):
        PdbFile(data=b"Microsoft MSFZ Container\r\n\x1aALD\0" + bytes(100))


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.pdb"
    empty.write_bytes(b"")
    with pytest.raises(SymbolFileError, match="empty"):
        PdbFile(empty)
    with pytest.raises(SymbolFileError, match="cannot open"):
        PdbFile(tmp_path / "missing.pdb")


def corrupt_superblock(data: bytes, offset: int, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into("<I", b, offset, value)
    return bytes(b)


@pytest.mark.parametrize("offset,value,message", [
    (0x20, 1000, "block size"),  # BlockSize
    (0x20, 0, "block size"),
    (0x28, 0xFFFFFFFF, "truncated"),  # NumBlocks
    (0x28, 0, "truncated"),
    (0x2C, 0xFFFFFFF0, "directory size"),  # NumDirectoryBytes
    (0x2C, 0, "directory size"),
    (0x34, 0xFFFFFF, "outside the file"),  # BlockMapAddr
])
def test_corrupt_superblock_fields(offset, value, message):
    data = (BIN / "hal.pdb").read_bytes()
    with pytest.raises(SymbolFileError, match=message):
        PdbFile(data=corrupt_superblock(data, offset, value))


def test_truncated_at_many_points():
    data = (BIN / "hal.pdb").read_bytes()
    for cut in list(range(0, 4096, 97)) + list(range(4096, len(data), 1531)):
        with pytest.raises(SymbolFileError):
            PdbFile(data=data[:cut])


def _exercise(pdb: PdbFile) -> None:
    pdb.all_symbols
    pdb.symbol_at(0x1000)
    pdb.symbols("*a*")
    for name in pdb.names():
        t = pdb.find(name)
        render(t, options=DtOptions(recurse=3))
        render(t, 0, lambda a, n: bytes(n), options=DtOptions(blocks=True))
    for ti in range(pdb.tpi.begin, pdb.tpi.end):
        pdb.type_by_index(ti)


def test_random_corruption_is_an_error_or_an_answer():
    """Byte flips anywhere in a real fixture PDB: a SymbolFileError or an answer, nothing else,
    and quickly (a hang would blow the time bound)."""
    data = (BIN / "kbdcrash.pdb").read_bytes()
    with PdbFile(data=data) as pdb:  # where the interesting bytes are: directory and streams
        bs = pdb.msf.block_size
        blocks = sorted({b for i in range(1, pdb.msf.num_streams)
                         for b in pdb.msf.stream_blocks[i]})
        struct_blocks = [b for i in (1, 2, 3, pdb.sym_record_stream)
                         for b in pdb.msf.stream_blocks[i]]
    rng = random.Random(1234)
    t0 = time.perf_counter()
    outcomes = {"ok": 0, "error": 0}
    for _ in range(200):
        b = bytearray(data)
        for _ in range(rng.choice((1, 4, 32))):
            where = rng.random()
            if where < 0.2:
                pos = rng.randrange(len(b))
            elif where < 0.4:
                pos = rng.choice(blocks) * bs + rng.randrange(bs)
            else:  # info, TPI, DBI, symbol records: mostly their first bytes (headers)
                pos = rng.choice(struct_blocks) * bs + int(rng.expovariate(1 / 256)) % bs
            b[pos] = rng.randrange(256)
        try:
            with PdbFile(data=bytes(b)) as pdb:
                _exercise(pdb)
            outcomes["ok"] += 1
        except SymbolFileError as exc:
            assert "\n" not in str(exc)
            outcomes["error"] += 1
        except KdError:  # e.g. a field path error: still a one-line user error
            outcomes["error"] += 1
    assert time.perf_counter() - t0 < 60
    assert outcomes["ok"] > 0


def _rewrite_stream_size(data: bytes, stream: int, new_size: int) -> bytes:
    """Shrink one stream's size in the directory (same blocks): a truncated stream."""
    bs, _, nblocks, dir_bytes, _, map_addr = struct.unpack_from("<IIIIII", data, 0x20)
    ndir = -(-dir_bytes // bs)
    dir_blocks = struct.unpack_from(f"<{ndir}I", data, map_addr * bs)
    b = bytearray(data)
    first = dir_blocks[0] * bs
    (count,) = struct.unpack_from("<I", b, first)
    assert 4 + 4 * (stream + 1) <= bs  # the sizes we touch are in the first directory block
    old = struct.unpack_from("<I", b, first + 4 + 4 * stream)[0]
    assert new_size <= old and -(-new_size // bs) == -(-old // bs)
    struct.pack_into("<I", b, first + 4 + 4 * stream, new_size)
    return bytes(b)


@pytest.mark.parametrize("stream", [1, 2, 3])
def test_truncated_streams(stream):
    data = (BIN / "ntkrnlmp.pdb").read_bytes()
    with PdbFile(data=data) as pdb:
        size = pdb.msf.stream_sizes[stream]
        bs = pdb.msf.block_size
    lowest = (size - 1) // bs * bs + 1  # stay within the same number of blocks
    for new in sorted({lowest, (lowest + size) // 2, size - 1}):
        try:
            with PdbFile(data=_rewrite_stream_size(data, stream, new)) as pdb:
                _exercise(pdb)
        except SymbolFileError:
            pass


# --------------------------------------------------------------------------------------------
# C++ records and numeric leaves (the fixtures are C), written from literal layouts


def _name(s: str) -> bytes:
    return s.encode() + b"\0"


def cpp_pdb() -> bytes:
    recs = {
        0x1000: struct.pack("<HH", 0x000A, 1) + b"\x0a\x00",  # LF_VTSHAPE, 1 entry
        0x1001: lf_pointer(0x1000),  # vtable pointer
        # LF_CLASS "Base" (forward, unique name) resolved by unique name to 0x1004
        0x1002: struct.pack("<HHHIIIH", 0x1504, 0, 0x80 | 0x200, 0, 0, 0, 0)
        + _name("Base") + _name(".?AVBase@@"),
        0x1003: lf_fieldlist(
            struct.pack("<HHI", 0x1409, 0, 0x1001),  # LF_VFUNCTAB
            lf_member("b", 0x74, 8),
            struct.pack("<HHI", 0x150E, 3, 0x74) + _name("count"),  # LF_STMEMBER
            struct.pack("<HHII", 0x1511, 3 | (4 << 2), 0x1008, 0) + _name("f"),  # intro virtual
        ),
        0x1004: struct.pack("<HHHIIIH", 0x1504, 3, 0x200, 0x1003, 0, 0x1000, 16)
        + _name("Base") + _name(".?AVBase@@"),
        0x1005: struct.pack("<HHIIII", 0x1206, 3, 0x1008, 0, 0, 0),  # LF_METHODLIST (skipped)
        0x1006: struct.pack("<HHHII", 0x1507, 3, 0x200, 0x20, 0x1007)
        + _name("Derived::Color") + _name(".?AW4Color@Derived@@"),  # LF_ENUM : UChar
        0x1007: lf_fieldlist(
            struct.pack("<HHH", 0x1502, 3, 1) + _name("Red"),
            struct.pack("<HHHb", 0x1502, 3, 0x8000, -2) + _name("Minus"),  # LF_CHAR
            struct.pack("<HHHq", 0x1502, 3, 0x8009, -(1 << 40)) + _name("Quad"),  # LF_QUADWORD
            struct.pack("<HHHQ", 0x1502, 3, 0x800A, 1 << 63) + _name("UQuad"),  # LF_UQUADWORD
        ),
        # LF_MFUNCTION int (Base::*)(): rv, class, this, calltype, attrs, nparams, args, adjust
        0x1008: struct.pack("<HIIIBBHIi", 0x1009, 0x74, 0x1004, 0x1009, 0, 0, 0, 0x100A, 0),
        0x1009: lf_pointer(0x1004),
        0x100A: struct.pack("<HI", 0x1201, 0),  # LF_ARGLIST ()
        # LF_POINTER to data member (mode 2) of Base, 4 bytes, then containing class + format
        0x100B: struct.pack("<HIIIH", 0x1002, 0x74, 0x0C | (2 << 5) | (4 << 13), 0x1004, 1),
        0x100C: lf_fieldlist(
            struct.pack("<HHIH", 0x1400, 3, 0x1002, 0),  # LF_BCLASS Base at 0
            struct.pack("<HHIIHH", 0x1401, 3, 0x1010, 0x1001, 8, 1),  # LF_VBCLASS
            struct.pack("<HHI", 0x1510, 0, 0x1006) + _name("Color"),  # LF_NESTTYPE
            struct.pack("<HHI", 0x150F, 2, 0x1005) + _name("g"),  # LF_METHOD (overloads)
            struct.pack("<HHIHI", 0x150D, 3, 0x1006, 0x8004, 0x18) + _name("color"),
            lf_member("pm", 0x100B, 0x1C),
            lf_index(0x100D),  # continued in the next field list
        ),
        0x100D: lf_fieldlist(lf_member("tail", 0x23, 0x20)),
        0x100E: struct.pack("<HHHIIIH", 0x1505, 5, 0x200, 0x100C, 0, 0, 0x28)
        + _name("Derived") + _name(".?AUDerived@@"),
        0x100F: struct.pack("<HIIH", 0x1503, 0x100E, 0x23, 0x50) + b"\0",  # [2] Derived
        0x1010: lf_struct("VBase", 0, 8),
        0x1011: struct.pack("<HI", 0x1605, 0) + _name("an IPI record in the TPI"),
    }
    return write_msf([b"", info_stream(), tpi_stream([recs[k] for k in sorted(recs)]), b"", b""])


def test_cpp_records_and_numeric_leaves():
    with PdbFile(data=cpp_pdb()) as pdb:
        base = pdb.type_by_index(0x1002)
        assert base is pdb.type_by_index(0x1004) and base.kind == T.CLASS and not base.forward
        assert base.unique_name == ".?AVBase@@" and base.size == 16
        assert [(f.name, f.offset) for f in base.fields] == [("__VFN_table", 0), ("b", 8)]
        assert T.type_name(base.fields[0].type) == "Ptr64"
        derived = pdb.find("Derived")
        assert [(o, b.name) for o, b in derived.bases] == [(0, "Base")]
        assert [(f.name, f.offset) for f in derived.fields] == [
            ("color", 0x18), ("pm", 0x1C), ("tail", 0x20)]
        assert derived.field("b") == (8, pdb.type_by_index(0x74))  # found in the base class
        color = pdb.find("Derived::Color")
        assert color.size == 1 and [(e.name, e.value) for e in color.enumerators] == [
            ("Red", 1), ("Minus", -2), ("Quad", -(1 << 40)), ("UQuad", 1 << 63)]
        pm = pdb.type_by_index(0x100B)
        assert pm.kind == T.POINTER and pm.size == 4 and pm.member_of == 0x1004
        method = pdb.type_by_index(0x1008)
        assert method.kind == T.FUNCTION and method.args == [] and T.c_name(method.target) == "int"
        arr = pdb.type_by_index(0x100F)
        assert arr.count == 2 and T.type_name(arr) == "[2] Derived"
        assert pdb.type_by_index(0x1000).kind == T.OTHER
        assert pdb.type_by_index(0x1011).kind == T.OTHER
        assert render(derived) == [
            "   +0x000 __VFN_table : Ptr64",
            "   +0x008 b                : Int4B",
            "   +0x018 color            : Derived::Color",
            "   +0x01c pm               : Ptr32 Int4B",
            "   +0x020 tail             : Uint8B",
        ]
        mem = bytearray(0x28)
        mem[0x18] = 0xFE
        assert render(derived, 0x1000, lambda a, n: bytes(mem[a - 0x1000:a - 0x1000 + n]),
                      fields=["color"]) == ["   +0x018 color : fe ( Minus )"]


# --------------------------------------------------------------------------------------------
# A damaged PDB in a symbol store (issue 15): the fixture hal.pdb with its TPI stream emptied.

DAMAGED_HAL = Path(__file__).resolve().parent / "regressions" / "pdb" / "hal-empty-tpi.pdb.gz"


def with_stream_size(pdb: bytes, index: int, size: int) -> bytes:
    """A copy of an MSF 7.00 file whose stream `index` is cut to `size` bytes: the stream
    directory (its block list at BlockMapAddr, +0x34 of the superblock; NumDirectoryBytes at
    +0x2c) is rewritten in its own blocks with the shorter size and block list."""
    bs, ndirbytes, mapaddr = struct.unpack_from("<I", pdb, 0x20)[0], *struct.unpack_from("<I4xI", pdb, 0x2C)
    ndir = -(-ndirbytes // bs)
    dir_blocks = struct.unpack_from(f"<{ndir}I", pdb, mapaddr * bs)
    directory = b"".join(pdb[b * bs:(b + 1) * bs] for b in dir_blocks)[:ndirbytes]
    (count,) = struct.unpack_from("<I", directory, 0)
    sizes = list(struct.unpack_from(f"<{count}I", directory, 4))
    pos, lists = 4 + 4 * count, []
    for s in sizes:
        n = 0 if s == 0xFFFFFFFF else -(-s // bs)
        lists.append(struct.unpack_from(f"<{n}I", directory, pos))
        pos += 4 * n
    assert size <= sizes[index]
    sizes[index], lists[index] = size, lists[index][:-(-size // bs)]
    new = struct.pack(f"<I{count}I", count, *sizes) + b"".join(struct.pack(f"<{len(b)}I", *b) for b in lists)
    out = bytearray(pdb)
    padded = new.ljust(ndir * bs, b"\0")
    for i, b in enumerate(dir_blocks):
        out[b * bs:(b + 1) * bs] = padded[i * bs:(i + 1) * bs]
    struct.pack_into("<I", out, 0x2C, len(new))
    return bytes(out)


def test_the_committed_damaged_pdb_is_hal_pdb_with_an_empty_tpi():
    import gzip

    hal = (REPO / "fixtures" / "images" / "bin" / "hal.pdb").read_bytes()
    assert gzip.decompress(DAMAGED_HAL.read_bytes()) == with_stream_size(hal, 2, 0)


def _store_with(tmp_path: Path, pdb: bytes) -> str:
    """A symbol store (name/KEY/name) holding `pdb` as hal.pdb, ahead of the fixture binaries."""
    with PdbFile(data=pdb) as p:
        key = p.key
    folder = tmp_path / "store" / "hal.pdb" / key
    folder.mkdir(parents=True)
    (folder / "hal.pdb").write_bytes(pdb)
    bin_dir = REPO / "fixtures" / "images" / "bin"
    return f"srv*{tmp_path / 'store'};{bin_dir}"


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_dt_on_a_damaged_pdb_is_one_line(machines, tmp_path, damage):
    import gzip

    import kdshell

    pdb = gzip.decompress(DAMAGED_HAL.read_bytes())
    if damage == "truncated":  # a TPI stream shorter than its own header
        pdb = with_stream_size((REPO / "fixtures" / "images" / "bin" / "hal.pdb").read_bytes(), 2, 20)
    with kdshell.open(machines.path("d1", "kernel"), symbol_path=_store_with(tmp_path, pdb), image_path="") as s:
        text = s.capture("dt hal!_KPCR")
        assert s.failures == 1
        assert "hal.pdb" in s.capture("lm m hal")  # the damaged file is the one in use
        nt = s.capture("dt nt!_KPRCB")          # the other modules' types still work
    lines = text.splitlines()
    assert len(lines) == 1 and "Internal error" not in text
    if damage == "empty":
        assert lines[0] == "Symbol hal!_KPCR not found (hal's symbol file holds no type information)."
    else:
        assert "TPI stream is truncated (20 bytes)" in lines[0]
    assert "+0x000" in nt
