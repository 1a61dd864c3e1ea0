"""dv: local variables and parameters of a frame, from private PDBs (kdshell.symbols.locals,
commands/locals.py).

Truth, independent of the code under test:
- the driver's C source (fixtures/images/src/drivers/mydrv/mydrv.c): MyDrvReadRegister's
  argument is the address MyDrvDispatchLevelWork read from MyDrvBadAddress, which is the address
  the page fault names in the bug check's parameter 1; DriverEntry's UNICODE_STRINGs are the
  literals `\\Device\\MyDrv` and `\\DosDevices\\MyDrv`; DriverEntry stores its DriverObject in the
  global MyDrvDriverObject (read here through the PDB's *global* symbol, not the local records);
- the test machines' ground truth (fixtures/README.md): the Child-SP of every frame, which
  bounds where a frame's stack variables can be;
- llvm-pdbutil's text of the fixture PDBs (fixtures/images/golden), parsed here, for the
  decoding of every record kind the fixtures hold; records the fixtures lack (MSVC's
  S_REGREL32, S_BPREL32, S_REGISTER, the full-scope and subfield ranges, VFRAME) are written
  from literal layouts spelled out here (and read back by llvm-pdbutil when it is installed).
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, REPO, TRIAGE_19041
from fuzz.engine import Hang, TimeLimit
from kdshell.cli import bundled_sample
from kdshell.errors import SymbolFileError
from kdshell.format import ptr
from kdshell.symbols import locals as L
from kdshell.symbols.pdb import PdbFile

BIN = REPO / "fixtures" / "images" / "bin"
GOLDEN = REPO / "fixtures" / "images" / "golden"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"
SAMPLE_STORE = REPO / "kdshell" / "data" / "sample" / "symbols"
CONTEXT_P4 = 0xFFFF850429891720  # the triage dump's bug check parameter 4: a CONTEXT record
NO_PRIVATE = ["Unable to enumerate locals, HRESULT 0x80004005",
              "Private symbols (symbols.pri) are required for locals."]
REGISTRY_PATH = r'"\REGISTRY\MACHINE\SYSTEM\ControlSet001\Services\mydrv"'


def lines(session, command):
    return session.capture(command).splitlines()


def open_machine(machines, name, kind="complete", symbol_path=MACHINE_SYMBOLS):
    s = kdshell.open(machines.path(name, kind), symbol_path=symbol_path, image_path="")
    s.progress = None
    return s


@pytest.fixture
def sample():
    dump, store = bundled_sample()
    with kdshell.open(dump, symbol_path=store, image_path=store) as s:
        s.progress = None
        yield s


def frame_of(session, function: str) -> int:
    """The number of the first frame whose call site is `function` (from kn)."""
    for line in lines(session, "kn 20")[1:]:
        if f" {function}+" in line or line.endswith(f" {function}"):
            return int(line.split()[0], 16)
    raise AssertionError(f"{function} is not on the stack")


def value(session, frame: int, name: str) -> str:
    """What `dv Name` prints after ` = ` in frame `frame`."""
    out = lines(session, f".frame {frame}; dv {name}")
    assert len(out) == 2, out
    return out[1].split(" = ", 1)[1]


# -- the bundled sample (a small dump) -------------------------------------------------------------
def test_dv_in_the_sample_frames_shows_what_the_sources_declare(sample):
    bad = sample.dump.header.bugcheck_parameters[0]  # the address the page fault read (P1)
    assert bad == 0xFFFFF8A000BAD000
    f = frame_of(sample, "mydrv!MyDrvReadRegister")
    assert lines(sample, f".frame {f:x}; dv")[1:] == [f"       Register = 0x{ptr(bad)}"]
    f = frame_of(sample, "mydrv!MyDrvProcessQueue")
    out = lines(sample, f".frame {f:x}; dv")[1:]
    assert [x.split(" = ")[0] for x in out] == ["        Address", "          Value"]
    assert out[0] == f"        Address = 0x{ptr(bad)}"
    assert re.fullmatch(r"          Value = (0|0x[0-9a-f]{1,8})", out[1])  # not assigned yet
    f = frame_of(sample, "mydrv!MyDrvDispatchLevelWork")
    # KeRaiseIrql(DISPATCH_LEVEL, &OldIrql) from DriverEntry at PASSIVE_LEVEL: OldIrql is 0
    assert lines(sample, f".frame {f:x}; dv OldIrql")[1:] == ["        OldIrql = 0x00 ''"]
    f = frame_of(sample, "mydrv!MyDrvStartScenario")
    assert lines(sample, f".frame {f:x}; dv")[1:] == ["       Scenario = 0x1"]  # scenario 1: 0xD1
    f = frame_of(sample, "mydrv!DriverEntry")
    out = lines(sample, f".frame {f:x}; dv")[1:]
    assert [x.split(" = ")[0].strip() for x in out] == [
        "DriverObject", "RegistryPath", "DeviceName", "LinkName", "Extension", "Status"]
    assert out[2] == r'     DeviceName = "\Device\MyDrv"'  # as WinDbg: a UNICODE_STRING is its text
    assert out[3] == r'       LinkName = "\DosDevices\MyDrv"'
    assert out[5] == "         Status = 0n0"  # PsCreateSystemThread succeeded (the scenario ran)
    # the small dump keeps the stack, not the DRIVER_OBJECT: WinDbg's placeholder for its name
    assert re.fullmatch(r"   DriverObject = 0xffffc20a`[0-9a-f]{8} Driver \{\.\.\.\}", out[0])


def test_frame_switching_and_options(sample):
    reg = frame_of(sample, "mydrv!MyDrvReadRegister")
    entry = frame_of(sample, "mydrv!DriverEntry")
    sample.run(f".frame {reg:x}")
    assert lines(sample, "dv") == ["       Register = 0xfffff8a0`00bad000"]
    sample.run(f".frame {entry:x}")
    assert lines(sample, "dv Register") == []  # not a variable of DriverEntry
    sample.run(f".frame {reg:x}")
    # /v: where it is (RBP+0 in MyDrvReadRegister: its Child-SP, RBP = RSP after the prologue)
    child_sp = int(lines(sample, ".frame")[0].split()[1].replace("`", ""), 16)
    assert lines(sample, "dv /v") == [f"{ptr(child_sp)}        Register = 0xfffff8a0`00bad000"]
    assert lines(sample, "dv /V") == [f"{ptr(child_sp)} @rbp+0x00        Register = 0xfffff8a0`00bad000"]
    assert lines(sample, "dv /t") == ["unsigned int * Register = 0xfffff8a0`00bad000"]
    assert lines(sample, "dv /i") == ["prv param        Register = 0xfffff8a0`00bad000"]
    assert lines(sample, "dv /t /v /i") == lines(sample, "dv /tvi") == [
        f"prv param {ptr(child_sp)} unsigned int * Register = 0xfffff8a0`00bad000"]
    sample.run(f".frame {entry:x}")
    out = lines(sample, "dv /i")
    assert [x[:10] for x in out] == ["prv param "] * 2 + ["prv local "] * 4
    # a pattern: WinDbg wildcards, any case
    assert [x.split()[0] for x in lines(sample, "dv *name")] == ["DeviceName", "LinkName"]
    assert [x.split()[0] for x in lines(sample, "dv d?????name")] == ["DeviceName"]
    assert [x.split()[0] for x in lines(sample, "dv REG*")] == ["RegistryPath"]
    assert lines(sample, "dv NoSuchName") == []
    # /V: the address again, relative to RBP (x64 clang: locals below RBP)
    for row in lines(sample, "dv /V"):
        address, relative = row.split()[:2]
        assert re.fullmatch(r"@rbp-0x[0-9a-f]{2}", relative), row
    # .cxr alone resets the scope to frame 0: nt!KeBugCheckEx, assembly without a procedure record
    sample.run(".cxr")
    out = lines(sample, "dv")
    assert len(out) == 1 and out[0].startswith("Unable to enumerate locals: nt's private symbols")


def test_bad_options_are_one_line_with_the_syntax(sample):
    syntax = "(dv [/t] [/v] [/V] [/i] [Pattern])"
    before = sample.failures
    assert lines(sample, "dv /x") == [f"dv: unknown option '/x' {syntax}"]
    assert lines(sample, "dv /t Foo Bar") == [f"dv: one pattern only, 'Bar' is a second {syntax}"]
    assert sample.failures == before + 2
    assert lines(sample, "dv /?")[0] == "dv [/t] [/v] [/V] [/i] [Pattern]"


# -- the test machines -------------------------------------------------------------------------
def _read_pointer(s, address: int) -> int:
    size = 8 if s.is64 else 4
    return int.from_bytes(s.memory.read(address, size), "little")


@pytest.mark.parametrize("name", ["d1", "d1-x86"])
def test_dv_on_the_test_machines_agrees_with_the_truth(machines, name):
    truth = machines.truth(name)
    is64 = truth["arch"] == "x64"
    bad = truth["bugcheck"]["parameters"][0]
    chain = truth["call_chain"]
    with open_machine(machines, name) as s:
        reg = frame_of(s, "mydrv!MyDrvReadRegister")
        assert value(s, reg, "Register") == "0x" + ptr(bad, is64)
        queue = frame_of(s, "mydrv!MyDrvProcessQueue")
        assert value(s, queue, "Address") == "0x" + ptr(bad, is64)
        assert value(s, frame_of(s, "mydrv!MyDrvStartScenario"), "Scenario") == "0x1"
        entry = frame_of(s, "mydrv!DriverEntry")
        driver = _read_pointer(s, s.symbols.resolve("mydrv!MyDrvDriverObject"))
        device = _read_pointer(s, s.symbols.resolve("mydrv!MyDrvDeviceObject"))
        extension_offset = s.symbols.types(s.symbols.module("mydrv")).offset_of("_DEVICE_OBJECT", "DeviceExtension")
        extension = _read_pointer(s, device + extension_offset)
        assert value(s, entry, "DriverObject") == "0x" + ptr(driver, is64) + r' Driver "\Driver\mydrv"'
        assert value(s, entry, "Extension") == "0x" + ptr(extension, is64)
        assert value(s, entry, "RegistryPath").endswith(" " + REGISTRY_PATH)
        assert value(s, entry, "DeviceName") == r'"\Device\MyDrv"'
        assert value(s, entry, "Status") == "0n0"
        # every stack variable of the driver's frames lies in its frame: at or above its
        # Child-SP, below the caller's (x86: the arguments sit above, in the caller's frame)
        for fn in ("mydrv!MyDrvReadRegister", "mydrv!MyDrvProcessQueue", "mydrv!MyDrvDispatchLevelWork",
                   "mydrv!MyDrvStartScenario", "mydrv!DriverEntry"):
            i = next(k for k, f in enumerate(chain) if f["function"].startswith(fn + "+"))
            low, high = chain[i]["sp"], chain[i + 1]["sp"] + (0 if is64 else 0x40)
            number = frame_of(s, fn)
            rows = lines(s, f".frame {number:x}; dv /v")[1:]
            assert rows
            for row in rows:
                address = int(row.split()[0].replace("`", ""), 16)
                assert low <= address < high, (fn, row)


def test_cross_frame_consistency_and_unrestored_registers(machines):
    """IopLoadDriverImage (nt, private symbols) passed DriverEntry its RegistryPath: the
    address of its local UNICODE_STRING. Its DriverObject lives in RSI (x64: non-volatile,
    restored by the unwinder: the same object) / ESI (x86: the EBP-chain walk restores only
    EBP, ESP and EIP: unavailable)."""
    with open_machine(machines, "d1") as s:
        caller = frame_of(s, "nt!IopLoadDriverImage")
        out = lines(s, f".frame {caller:x}; dv /v")[1:]
        rows = {r.split(" = ")[0].split()[-1]: r for r in out}
        local = rows["RegistryPath"].split()[0]
        assert rows["RegistryPath"].endswith(f"RegistryPath = {REGISTRY_PATH}")
        entry = frame_of(s, "mydrv!DriverEntry")
        assert value(s, entry, "RegistryPath") == f"0x{local} {REGISTRY_PATH}"
        assert rows["DriverObject"].startswith("@rsi ")
        assert rows["DriverObject"].split(" = ")[1] == value(s, entry, "DriverObject")
        assert any(r.endswith("= <value unavailable>") for r in out)  # not live at the call
    with open_machine(machines, "d1-x86") as s:
        caller = frame_of(s, "nt!IopLoadDriverImage")
        out = lines(s, f".frame {caller:x}; dv /v")[1:]
        assert "@esi        DriverObject = <value unavailable>" in out
        assert lines(s, f".frame {frame_of(s, 'mydrv!MyDrvReadRegister'):x}; dv /v /t")[1] == (
            "84008f28          unsigned int * Register = 0xe0bad000")


def test_outside_any_module_and_without_symbols(machines):
    truth = machines.truth("d1")
    user = next(t for t in truth["threads"] if t["frames"] and t["frames"][-1]["function"].startswith("0x"))
    with open_machine(machines, "d1") as s:
        s.run(f".thread {user['address']:x}")
        last = [x for x in lines(s, "kn") if x.split()[-1].startswith("0x")][0]
        out = lines(s, f".frame {last.split()[0]}; dv")
        assert out[1:] == [f"Unable to enumerate locals: {last.split()[-1][2:]} is not in any loaded module"]
    with open_machine(machines, "d1", symbol_path="") as s:  # no PDB for any module
        out = lines(s, f".frame {frame_of(s, 'mydrv'):x}; dv")
        assert out[1:] == ["Unable to enumerate locals: no PDB for mydrv (dv needs its private symbols; "
                           "see .sympath and .reload)"]


# -- the corpus: a public PDB ------------------------------------------------------------------------
def test_public_pdb_gives_the_two_line_failure():
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.progress = None
        s.run(f".cxr {CONTEXT_P4:x}")
        before = s.failures
        assert lines(s, "dv") == NO_PRIVATE  # amdppm!WriteIoMemRawEx: amdppm.pdb is stripped
        assert lines(s, ".frame 3; dv /t /v")[1:] == NO_PRIVATE
        assert s.failures == before + 2
        wdf = frame_of(s, "Wdf01000")  # an image without any PDB: one line
        assert lines(s, f".frame {wdf:x}; dv")[1:] == [
            "Unable to enumerate locals: no PDB for Wdf01000 (dv needs its private symbols; see .sympath and .reload)"]


# -- decoding against llvm-pdbutil's text ---------------------------------------------------------------
SYM_LINE = re.compile(r"^\s+(\d+) \| (S_\w+) \[size = (\d+)\](?: `(.*)`)?")
MOD_LINE = re.compile(r"^\s*Mod (\d{4}) \|")
OPENERS = {"S_BLOCK32", "S_INLINESITE", "S_INLINESITE2", "S_THUNK32", "S_SEPCODE", "S_WITH32",
           "S_GPROC32", "S_LPROC32", "S_GPROC32_ID", "S_LPROC32_ID"}
CLOSERS = {"S_END", "S_PROC_ID_END", "S_INLINESITE_END"}
RANGE = re.compile(r"range = \[(\d{4}):(\d+),\+(\d+)\)")
START = re.compile(r"range start = (\d{4}):(\d+), length = (\d+)")
GAPS = re.compile(r"gaps = \[(.*?)\]")
# how llvm-pdbutil writes each location record: (kdshell's kind, its offset, its range)
DEFRANGES = {
    "S_DEFRANGE_FRAMEPOINTER_REL": (L.FRAME_RELATIVE, r"offset = (-?\d+)", RANGE),
    "S_DEFRANGE_REGISTER": (L.REGISTER, None, START),
    "S_DEFRANGE_REGISTER_REL": (L.REGISTER_RELATIVE, r", offset = (-?\d+)", RANGE),
    "S_DEFRANGE_SUBFIELD_REGISTER": (L.SUBFIELD, r"offset in parent = (\d+)", RANGE),
}


def module_records(text: str) -> dict[int, list[tuple[int, str, str, str]]]:
    """{module index: [(offset, kind, name, detail text)]} of llvm-pdbutil's Symbols section."""
    out: dict[int, list] = {}
    module, lines_ = None, text.splitlines()
    in_symbols = False
    for i, line in enumerate(lines_):
        if i + 1 < len(lines_) and lines_[i + 1].startswith("===="):
            in_symbols = line.strip() == "Symbols"
            continue
        if not in_symbols:
            continue
        m = MOD_LINE.match(line)
        if m:
            module = int(m.group(1))
            out[module] = []
            continue
        m = SYM_LINE.match(line)
        if m and module is not None:
            out[module].append([int(m.group(1)), m.group(2), m.group(4) or "", f"size = {m.group(3)}"])
        elif module is not None and out[module]:
            out[module][-1][3] += " " + line.strip()
    return out


FIXED_SIZE = {"S_DEFRANGE_REGISTER": 16, "S_DEFRANGE_FRAMEPOINTER_REL": 16,
              "S_DEFRANGE_REGISTER_REL": 20, "S_DEFRANGE_SUBFIELD_REGISTER": 20}


def _gaps(kind: str, text: str) -> tuple:
    """The gaps llvm-pdbutil prints, or ("count", n) when its text disagrees with the record's
    own size: llvm-pdbutil 14 drops some gaps from its text (ntkrnlmp's KeWaitForSingleObject
    `WaitMode`, 24 bytes: two gaps in the bytes, `gaps = []` printed), so then only the number
    of gaps the size implies is compared."""
    body = GAPS.search(text).group(1)
    gaps = tuple((int(a), int(b)) for a, b in re.findall(r"\((\d+),(\d+)\)", body))
    count = (int(re.match(r"size = (\d+)", text).group(1)) - FIXED_SIZE[kind]) // 4
    return gaps if len(gaps) == count else ("count", count)


def expected_procedure(records, start: int):
    """What llvm-pdbutil says about the procedure at records[start]: frame registers and the
    variables outside inline sites, with their locations."""
    fp, variables, depth, inline, blocks = None, [], 0, 0, [None]
    for off, kind, name, text in records[start + 1:]:
        if kind in CLOSERS:
            if depth == 0:
                break
            depth -= 1
            inline -= kind == "S_INLINESITE_END"
            blocks.pop()
            continue
        if kind in OPENERS:
            depth += 1
            inline += kind.startswith("S_INLINESITE")
            m = re.search(r"code size = (\d+), addr = (\d{4}):(\d+)", text)
            blocks.append((int(m.group(2)), int(m.group(3)), int(m.group(1))) if m else blocks[-1])
            continue
        if inline:
            continue
        if kind == "S_FRAMEPROC":
            m = re.search(r"local fp reg = (\w+), param fp reg = (\w+)", text)
            fp = (m.group(1), m.group(2))
        elif kind == "S_LOCAL":
            m = re.search(r"type=0x([0-9A-F]+) .*flags = (.*)", text)
            flags = m.group(2)
            variables.append({"name": name, "type": int(m.group(1), 16), "param": "param" in flags,
                              "optimized": "optimized away" in flags, "block": blocks[-1], "at": off,
                              "locations": []})
        elif kind in DEFRANGES:
            loc_kind, offset_rx, range_rx = DEFRANGES[kind]
            reg = re.search(r"register = (\w+)", text)
            offset = int(re.search(offset_rx, text).group(1)) if offset_rx else 0
            m = range_rx.search(text)
            variables[-1]["locations"].append((
                loc_kind, reg.group(1) if reg else None, offset,
                (int(m.group(1)), int(m.group(2)), int(m.group(3))), _gaps(kind, text)))
        elif kind.startswith("S_DEFRANGE") or kind in ("S_REGREL32", "S_BPREL32", "S_REGISTER"):
            raise AssertionError(f"the golden has a {kind}: teach this parser to read it")
    return fp, variables


FIXTURE_PDBS = [p for p in sorted(BIN.glob("*.pdb")) + sorted((BIN / "x86").glob("*.pdb"))]


def check_against_pdbutil(pdb: PdbFile, modules: dict) -> set[int]:
    """Every procedure llvm-pdbutil lists, decoded by kdshell, compared field by field; returns
    the location record kinds compared."""
    seen_kinds, procedures = set(), 0
    is64 = pdb.machine != 0x14C
    for index, records in modules.items():
        data = pdb.msf.stream(pdb.modules[index].stream)
        for i, (off, kind, name, _) in enumerate(records):
            if kind not in ("S_GPROC32", "S_LPROC32", "S_GPROC32_ID", "S_LPROC32_ID"):
                continue
            fp, expected = expected_procedure(records, i)
            proc = L.decode_procedure(data, off, pdb.rva_of, is64)
            procedures += 1
            assert proc.name == name
            frame = [r.name.upper() if r else "NONE" for r in (proc.frame_register(False),
                                                                proc.frame_register(True))]
            assert fp is None or tuple(frame) == fp, name
            assert [v.name for v in proc.variables] == [v["name"] for v in expected], name
            for got, want in zip(proc.variables, expected):
                assert (got.type_index, got.is_param, got.offset) == (want["type"], want["param"], want["at"])
                assert bool(got.flags & 0x100) == want["optimized"]  # CV_LVARFLAGS fIsOptimizedOut
                scope = None if got.scope is None else (got.scope.section, got.scope.offset, got.scope.length)
                assert scope == want["block"], (name, got.name)
                decoded = []
                for loc in got.locations:
                    seen_kinds.add(loc.record)
                    r = loc.range
                    decoded.append((loc.kind, loc.register.name.upper() if loc.register else None,
                                    loc.parent_offset if loc.kind == L.SUBFIELD else loc.offset,
                                    (r.section, r.offset, r.length), r.gaps))
                    assert r.start == pdb.rva_of(r.section, r.offset)
                decoded = [d if w[4][:1] != ("count",) else d[:4] + (("count", len(d[4])),)
                           for d, w in zip(decoded, want["locations"])]
                assert decoded == want["locations"], (name, got.name)
    assert procedures
    return seen_kinds


@pytest.mark.parametrize("path", FIXTURE_PDBS, ids=lambda p: f"{p.parent.name}-{p.name}")
def test_every_procedure_of_the_fixture_pdbs_decodes_as_llvm_pdbutil_reads_it(path):
    golden = GOLDEN / f"{'x86-' if path.parent.name == 'x86' else ''}{path.name}.pdbutil.txt"
    with PdbFile(path) as pdb:
        kinds = check_against_pdbutil(pdb, module_records(golden.read_text()))
    if path.name == "ntkrpamp.pdb":  # the only fixture with 64-bit values split over two registers
        assert L.S_DEFRANGE_SUBFIELD_REGISTER in kinds


def test_the_fixtures_hold_every_location_kind_llvm_writes():
    kinds = set()
    for path in FIXTURE_PDBS:
        with PdbFile(path) as pdb:
            for s in pdb.all_symbols:
                if s.kind == "function" and s.module >= 0:
                    proc = L.procedure_at(pdb, s.rva)
                    if proc is not None:
                        kinds |= {loc.record for v in proc.variables for loc in v.locations}
    assert kinds == {L.S_DEFRANGE_REGISTER, L.S_DEFRANGE_FRAMEPOINTER_REL, L.S_DEFRANGE_REGISTER_REL,
                     L.S_DEFRANGE_SUBFIELD_REGISTER}


# -- records the fixtures lack, from literal layouts ------------------------------------------------------
def rec(kind: int, body: bytes) -> bytes:
    """A symbol record: uint16 length (kind + body), uint16 kind, body padded to 4 bytes."""
    body += b"\0" * ((-(len(body) + 4)) % 4)
    return struct.pack("<HH", len(body) + 2, kind) + body


def z(name: str) -> bytes:
    return name.encode() + b"\0"


def gproc32(name: str, end: int, length: int, ti: int, offset: int, kind: int = 0x1110) -> bytes:
    # Parent, End, Next, CodeSize, DbgStart, DbgEnd, FunctionType, Offset, Segment, Flags, Name
    return rec(kind, struct.pack("<IIIIIIIIHB", 0, end, 0, length, 0, 0, ti, offset, 1, 0) + z(name))


def frameproc(local_base: int, param_base: int) -> bytes:
    # cbFrame, cbPad, offPad, cbSaveRegs, offExHdlr, sectExHdlr, flags (bits 14-15, 16-17)
    return rec(0x1012, struct.pack("<IIIIIHI", 0x40, 0, 0, 0, 0, 0, local_base << 14 | param_base << 16))


def regrel32(name, offset, ti, reg):
    return rec(0x1111, struct.pack("<iIH", offset, ti, reg) + z(name))


def bprel32(name, offset, ti):
    return rec(0x110B, struct.pack("<iI", offset, ti) + z(name))


def register_(name, ti, reg):
    return rec(0x1106, struct.pack("<IH", ti, reg) + z(name))


def local(name, ti, flags):
    return rec(0x113E, struct.pack("<IH", ti, flags) + z(name))


def addr_range(offset, length, gaps=()):
    return struct.pack("<IHH", offset, 1, length) + b"".join(struct.pack("<HH", *g) for g in gaps)


def defrange_register(reg, offset, length, gaps=()):
    return rec(0x1141, struct.pack("<HH", reg, 0) + addr_range(offset, length, gaps))


def defrange_fp(off, offset, length, gaps=()):
    return rec(0x1142, struct.pack("<i", off) + addr_range(offset, length, gaps))


def defrange_subfield(reg, parent, offset, length):
    return rec(0x1143, struct.pack("<HHI", reg, 0, parent) + addr_range(offset, length))


def defrange_fp_full(off):
    return rec(0x1144, struct.pack("<i", off))


def defrange_register_rel(reg, off, offset, length):
    return rec(0x1145, struct.pack("<HHi", reg, 0, off) + addr_range(offset, length))


def block32(offset, length, end=0):
    return rec(0x1103, struct.pack("<IIIIH", 0, end, length, offset, 1) + z(""))


def inlinesite():
    return rec(0x114D, struct.pack("<III", 0, 0, 0x1000))


END, INLINE_END, PROC_ID_END = rec(0x0006, b""), rec(0x114E, b""), rec(0x114F, b"")


def msvc_style_body() -> list[bytes]:
    """A function as MSVC describes one (x64): two parameters and a local by S_REGREL32, one
    by S_BPREL32, one by S_REGISTER, S_LOCALs with the ranges LLVM does not write, a block."""
    return [
        frameproc(1, 1),                               # locals and params from RSP
        regrel32("Irp", 0x18, 0x0603, 335),            # [rsp+0x18] void *        (parameter 1)
        register_("Flags", 0x0075, 360),               # r8d, unsigned int        (parameter 2)
        regrel32("status", 0x20, 0x0074, 335),         # [rsp+0x20] int           (a local)
        bprel32("frame", -8, 0x0023),                  # [rbp-8] unsigned __int64 (a local)
        local("Count", 0x0075, 0),
        defrange_fp_full(0x28),                        # [rsp+0x28] in the whole function
        local("Low", 0x0020, 0),
        defrange_register(5, 0x110, 0x10, [(4, 2)]),   # AH over [0x110, 0x120) minus [0x114, 0x116)
        local("Pair", 0x0023, 0),
        defrange_subfield(328, 4, 0x100, 0x20),        # a piece of it in RAX
        local("Pointer", 0x0603, 0),
        defrange_register_rel(341, -0x10, 0x100, 0x20),  # [r13-0x10]
        block32(0x118, 0x8),
        local("Inner", 0x0074, 0),
        defrange_fp(0x30, 0x118, 0x8),
        END,
        inlinesite(),
        local("Hidden", 0x0074, 1),                    # an inlined function's: not this one's
        INLINE_END,
    ]


def module_stream(records: list[bytes], offset: int = 0x100, length: int = 0x40, ti: int = 0,
                  close: bytes = END, kind: int = 0x1110, name: str = "Synthetic") -> bytes:
    body = b"".join(records)
    head_len = len(gproc32(name, 0, length, ti, offset, kind))
    proc = gproc32(name, 4 + head_len + len(body), length, ti, offset, kind)
    return struct.pack("<I", 4) + proc + body + close


def rva_of(section: int, offset: int):
    return 0x1000 + offset if section == 1 else None


def test_msvc_records_decode_from_their_literal_layouts():
    data = module_stream(msvc_style_body())
    proc = L.decode_procedure(data, 4, rva_of, True)
    assert proc.name == "Synthetic" and proc.rva == 0x1100 and proc.length == 0x40
    assert proc.frame_register(False).name == proc.frame_register(True).name == "rsp"
    names = [v.name for v in proc.variables]
    assert names == ["Irp", "Flags", "status", "frame", "Count", "Low", "Pair", "Pointer", "Inner"]
    byname = {v.name: v for v in proc.variables}
    assert not any(v.is_param for v in proc.variables)  # no flags: decided by the type's arguments
    proc.mark_parameters(2)
    assert [v.name for v in proc.variables if v.is_param] == ["Irp", "Flags"]
    irp, flags, frame = byname["Irp"], byname["Flags"], byname["frame"]
    assert irp.locations == [L.Location(L.REGISTER_RELATIVE, L.register(335, True), 0x18, None, 0x1111)]
    assert flags.locations[0].register == L.Register("r8d", "r8", 0, 32)
    assert frame.locations[0].register.name == "rbp" and frame.locations[0].offset == -8
    low = byname["Low"].locations[0]
    assert low.register == L.Register("ah", "rax", 8, 8)
    assert (low.range.start, low.range.length, low.range.gaps) == (0x1110, 0x10, ((4, 2),))
    assert byname["Pair"].locations[0].kind == L.SUBFIELD and byname["Pair"].locations[0].parent_offset == 4
    assert byname["Pointer"].locations[0].register.name == "r13"
    assert byname["Inner"].scope.start == 0x1118 and byname["Count"].locations[0].range is None
    # the scope at an address: block locals only inside the block; parameters first
    assert [v.name for v in proc.visible(0x1100)] == names[:-1]
    assert [v.name for v in proc.visible(0x111A)][-1] == "Inner"
    regs = {"rsp": 0x10000, "rbp": 0x20000, "rax": 0x1234, "r8": 0xFFFFFFFF00000007}
    where = {n: L.locate(proc, byname[n], regs, 0x1112) for n in byname}
    assert where["Irp"].address == 0x10018 and where["status"].address == 0x10020
    assert where["frame"].address == 0x1FFF8 and where["Count"].address == 0x10028
    assert (where["Flags"].register.name, where["Flags"].value) == ("r8d", 7)
    assert where["Low"].value == 0x12  # AH of 0x1234
    assert not where["Pair"].available  # a piece of the variable only
    assert not where["Pointer"].available  # R13 is not known
    assert not L.locate(proc, byname["Low"], regs, 0x1114).available  # in the gap
    assert not L.locate(proc, byname["Low"], regs, 0x1120).available  # past the range
    assert L.locate(proc, byname["Inner"], regs, 0x111A).address == 0x10030


def test_x86_registers_and_vframe():
    body = [frameproc(1, 2), local("Local", 0x0074, 0), defrange_fp_full(-4),
            local("Arg", 0x0074, 1), defrange_fp_full(8), register_("Counter", 0x0074, 23),
            regrel32("Spilled", 4, 0x0074, 30006), register_("Odd", 0x0074, 999)]
    proc = L.decode_procedure(module_stream(body), 4, rva_of, False)
    assert proc.frame_register(False).name == "vframe" and proc.frame_register(True).name == "ebp"
    v = {x.name: x for x in proc.variables}
    regs = {"ebp": 0x8000, "vframe": 0x9000, "esi": 5}
    assert L.locate(proc, v["Local"], regs, 0x1100).address == 0x8FFC
    assert L.locate(proc, v["Arg"], regs, 0x1100).address == 0x8008
    assert L.locate(proc, v["Counter"], regs, 0x1100).value == 5
    assert L.locate(proc, v["Spilled"], regs, 0x1100).address == 0x9004
    assert v["Odd"].locations[0].register.full is None  # an unknown register number
    assert not L.locate(proc, v["Odd"], regs, 0x1100).available
    # a 64-bit value in EBX (bytes 0-3) and ESI (bytes 4-7), as the x86 kernel's PDB has them
    pieces = [local("Quad", 0x0023, 0), defrange_subfield(20, 0, 0x100, 0x10),
              defrange_subfield(23, 4, 0x100, 0x10)]
    quad = L.decode_procedure(module_stream(pieces), 4, rva_of, False).variables[0]
    both = {"ebx": 0x89ABCDEF, "esi": 0x01234567}
    assert L.locate(proc, quad, both, 0x1104, 8).value == 0x0123456789ABCDEF
    assert L.locate(proc, quad, both, 0x1104, 8).register.name == "ebx"
    assert not L.locate(proc, quad, {"ebx": 1}, 0x1104, 8).available  # ESI not known
    assert not L.locate(proc, quad, both, 0x1104, 12).available  # bytes 8-11 in no register
    assert not L.locate(proc, quad, both, 0x1110, 8).available  # past the ranges
    # CodeView's x86 numbers: 17-24 eax ecx edx ebx esp ebp esi edi; 1-8 al cl dl bl ah ch dh bh
    assert [L.register(n, False).name for n in range(17, 25)] == ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"]
    assert [L.register(n, False).name for n in range(1, 9)] == ["al", "cl", "dl", "bl", "ah", "ch", "dh", "bh"]
    # x64: 328-335 in another order, then r8-r15 and their byte, word and dword forms
    assert [L.register(n, True).name for n in range(328, 336)] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"]
    assert [L.register(n, True).name for n in (336, 343, 344, 352, 367, 324, 327, 18)] == [
        "r8", "r15", "r8b", "r8w", "r15d", "sil", "spl", "ecx"]
    assert L.register(18, True).full == "rcx" and L.register(344, True).full == "r8"


def test_id_procedures_end_with_proc_id_end():
    data = module_stream([local("x", 0x74, 0), defrange_fp_full(8)], close=PROC_ID_END, kind=0x1147)
    proc = L.decode_procedure(data, 4, rva_of, True)  # S_GPROC32_ID
    assert [v.name for v in proc.variables] == ["x"]


@pytest.mark.parametrize("records, close, message", [
    ([struct.pack("<HH", 0x200, 0x113E) + b"\0" * 8], END, "runs past the stream"),
    ([local("x", 0x74, 0)], b"", "has no end record"),
    ([block32(0x100, 4)] * 100, END, "nests scopes more than 64 deep"),
    ([rec(0x1111, b"\0\0"), local("next", 0x74, 0)], END, r"shorter than its kind \(0x1111\) requires"),
], ids=["truncated", "no-end", "deep", "short"])
def test_hostile_local_records_are_one_line_errors(records, close, message):
    data = module_stream(records, close=close)
    with pytest.raises(SymbolFileError, match=message) as err:
        L.decode_procedure(data, 4, rva_of, True)
    assert "\n" not in str(err.value)


# -- the same records in a real PDB, end to end ------------------------------------------------------------
def pdb_with_module_stream(original: Path, stream: bytes) -> bytes:
    """mydrv.pdb with module 0's symbol stream replaced (no line information kept), written
    with tests/test_pdb.py's MSF writer. DBI ModInfo: +0x22 stream, +0x24 symbol bytes, +0x28
    C11 bytes, +0x2c C13 bytes (the module list starts after the 64-byte DBI header)."""
    import test_pdb as P

    with PdbFile(original) as pdb:
        streams = [pdb.msf.stream(i) for i in range(pdb.msf.num_streams)]
        number = pdb.modules[0].stream
    dbi = bytearray(streams[3])
    struct.pack_into("<III", dbi, 64 + 0x24, len(stream), 0, 0)
    streams[3] = bytes(dbi)
    streams[number] = stream + struct.pack("<I", 0)  # + global refs size
    return P.write_msf(streams)


@pytest.fixture
def patched_store(tmp_path):
    """The sample's store, whose mydrv.pdb `write(stream)` replaces (same GUID and age, so the
    session takes it for mydrv.sys)."""
    store = tmp_path / "store"
    shutil.copytree(SAMPLE_STORE, store)
    pdb = next((store / "mydrv.pdb").iterdir()) / "mydrv.pdb"
    original = tmp_path / "original.pdb"
    shutil.copy(pdb, original)

    def write(stream: bytes) -> Path:
        pdb.write_bytes(pdb_with_module_stream(original, stream))
        return store
    return write


def sample_with(store: Path):
    s = kdshell.open(bundled_sample()[0], symbol_path=str(store), image_path=str(store))
    s.progress = None
    return s


def read_register_stream(records: list[bytes], close: bytes = END) -> bytes:
    """MyDrvReadRegister (0001:0272, 21 bytes, type 0x10B7 `unsigned (volatile unsigned*)`)
    described by `records` instead of clang's."""
    return module_stream(records, offset=272, length=21, ti=0x10B7, close=close, name="MyDrvReadRegister")


def test_msvc_records_in_a_pdb_give_the_same_values_end_to_end(patched_store):
    # At MyDrvReadRegister+0xd the argument is at [RBP+0] (clang's record says so) and in RAX
    # (`mov rax, [rbp]` just before: the trap frame saved it); one S_REGREL32 record per place.
    store = patched_store(read_register_stream([
        frameproc(2, 2), regrel32("Register", 0, 0x10B5, 334), bprel32("Copy", 0, 0x0023),
        register_("Low", 0x0075, 17), regrel32("Local", 0, 0x0603, 335),
        regrel32("Far", 0x10000000, 0x0075, 335), regrel32("FarString", 0x10000000, 0x107B, 335)]))
    with sample_with(store) as s:
        out = lines(s, f".frame {frame_of(s, 'mydrv!MyDrvReadRegister'):x}; dv /i /v")[1:]
        sp = ptr(int(lines(s, ".frame")[0].split()[1].replace("`", ""), 16))
        assert out == [
            f"prv param {sp}        Register = 0xfffff8a0`00bad000",  # the type has one argument
            f"prv local {sp}            Copy = 0xfffff8a0`00bad000",
            f"prv local {'@eax':<17} {'Low':>15} = 0xbad000",
            f"prv local {sp}           Local = 0xfffff8a0`00bad000",  # [RSP+0]: RSP = RBP here
            # 256 MB above the stack: not in the dump (a structure shows its name only)
            f"prv local {ptr(int(sp.replace('`', ''), 16) + 0x10000000)}             Far = <Memory access error>",
            f"prv local {ptr(int(sp.replace('`', ''), 16) + 0x10000000)}       FarString = struct _UNICODE_STRING",
        ]


@pytest.mark.parametrize("records, close", [
    ([frameproc(2, 2), struct.pack("<HH", 0x7000, 0x113E) + b"Register\0\0\0\0"], END),
    ([frameproc(2, 2)] + [block32(272, 4)] * 80, END),
    ([frameproc(2, 2), local("Register", 0x10B5, 1)], b""),
], ids=["truncated", "deep", "no-end"])
def test_hostile_pdb_gives_a_one_line_error_at_the_prompt(patched_store, records, close):
    store = patched_store(read_register_stream(records, close))
    with sample_with(store) as s:
        f = frame_of(s, "mydrv!MyDrvReadRegister")
        try:
            with TimeLimit(15):
                out = lines(s, f".frame {f:x}; dv")
        except Hang:
            pytest.fail("dv on a hostile PDB did not finish")
        assert len(out) == 2 and out[1].startswith("mydrv.pdb module mydrv_mydrv.obj: "), out
        assert "Traceback" not in out[1] and "Internal error" not in out[1]


@pytest.mark.toolchain
def test_literal_layouts_are_what_llvm_pdbutil_reads(patched_store, tmp_path):
    """The literal layouts above, read back by an independent reader (llvm-pdbutil)."""
    tool = shutil.which("llvm-pdbutil")
    if tool is None:
        pytest.skip("llvm-pdbutil not installed (apt-get install llvm)")
    store = patched_store(module_stream(msvc_style_body(), offset=272, length=21, ti=0x10B7))
    pdb = next((store / "mydrv.pdb").iterdir()) / "mydrv.pdb"
    text = subprocess.run([tool, "dump", "-modi=0", "-symbols", str(pdb)], capture_output=True,
                          text=True, check=True).stdout
    for want in (r"S_REGREL32 \[size = \d+\] `Irp`\s+type = 0x0603 \(void\*\), register = RSP, offset = 24",
                 r"S_REGISTER \[size = \d+\] `Flags`\s+register = R8D, type = 0x0075 \(unsigned\)",
                 r"S_BPREL32 \[size = \d+\] `frame`\s+type = 0x0023 \(unsigned __int64\), offset = -8",
                 r"S_DEFRANGE_FRAMEPOINTER_REL_FULL_SCOPE \[size = \d+\]\s+offset = 40",
                 r"register = AH, may have no name = false, range start = 0001:0272, length = 16\s+"
                 r"gaps = \[\(4,2\)\]",
                 r"S_DEFRANGE_SUBFIELD_REGISTER \[size = \d+\]\s+register = RAX, may have no name = \w+, "
                 r"offset in parent = 4",
                 r"register = R13, offset = -16",
                 r"local fp reg = RSP, param fp reg = RSP"):
        assert re.search(want, text), want


# -- kp reads parameters through the same decoding ------------------------------------------------
def kp_line(s):
    return next(line for line in lines(s, "kp 10") if "MyDrvReadRegister" in line)


def test_kp_prints_a_frame_with_a_hostile_record_as_k_does(patched_store):
    store = patched_store(read_register_stream([frameproc(2, 2), local("Register", 0x10B5, 1)], b""))
    with sample_with(store) as s:
        line = kp_line(s)
        assert line.endswith("mydrv!MyDrvReadRegister+0xd"), line


def test_kp_and_dv_agree_which_records_are_parameters(patched_store):
    # S_LOCAL flags the parameter: the S_REGREL32 local is not a parameter (kp and dv)
    store = patched_store(read_register_stream([
        frameproc(2, 2), regrel32("Local", 0, 0x0603, 335), local("Register", 0x10B5, 1), defrange_fp_full(0)]))
    with sample_with(store) as s:
        line = kp_line(s)
        assert "(unsigned int * Register = 0xfffff8a0`00bad000)" in line, line
        out = lines(s, f".frame {frame_of(s, 'mydrv!MyDrvReadRegister'):x}; dv /i")[1:]
        assert [line.split()[1] for line in out] == ["param", "local"], out


def test_kp_reads_msvc_style_regrel_parameters(patched_store):
    store = patched_store(read_register_stream([
        frameproc(2, 2), regrel32("Register", 0, 0x10B5, 334), regrel32("Local", 0, 0x0603, 335)]))
    with sample_with(store) as s:
        line = kp_line(s)
        assert "(unsigned int * Register = 0xfffff8a0`00bad000)" in line, line
