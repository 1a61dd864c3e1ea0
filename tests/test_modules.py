"""Modules: the loaded-module list (PsLoadedModuleList on a synthetic complete dump built from the
real fixture images; the driver list of the real small dump), unloaded modules, WinDbg's names,
the PE reader, and the image overlay that lends image bytes to memory reads."""
import struct
from pathlib import Path

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, MINI_17763, REPO, TRIAGE_19041
from dumpfactory import default_context, write_kind
from kdshell.symbols.modules import Module, ModuleList, assign_names
from kdshell.symbols.pdb import PdbFile
from kdshell.symbols.pe import PeFormatError, PeImage, parse_codeview
from test_paging import Machine

BIN = REPO / "fixtures" / "images" / "bin"
NT_BASE, HAL_BASE, MYDRV_BASE = 0xFFFFF80000000000, 0xFFFFF80000400000, 0xFFFFF80001000000
MYDRV2_BASE = 0xFFFFF80001800000  # a second mydrv.sys: same name, no pages in the dump
AFD_BASE = 0xFFFFF80002000000  # a module nobody has the image of
POOL = 0xFFFF9B0000010000  # loader entries and their names
UNLOADED = POOL + 0x2000  # MmUnloadedDrivers, MmLastUnloadedDriver and the array
STACK = 0xFFFF850429890000
NT_TEXT_HOLE = 0x5000  # an nt .text page left out of the dump (paged out)


def _pdb_rva(pdb: str, name: str) -> int:
    with PdbFile(BIN / pdb) as p:
        return p.address_of(name)


def _ustr(length: int, buffer: int) -> bytes:
    return struct.pack("<HHIQ", length, length, 0, buffer)


class KernelMachine:
    """A complete dump's machine: the fixture kernel, HAL and driver images at their bases behind
    x64 page tables, PsLoadedModuleList filled with _KLDR_DATA_TABLE_ENTRY records (Windows 10
    x64 layout: DllBase 0x30, SizeOfImage 0x40, FullDllName 0x48, BaseDllName 0x58, CheckSum 0x78,
    TimeDateStamp 0x9c), MmUnloadedDrivers in the KDBG, and a stack of return addresses."""

    def __init__(self, drop: tuple = ((NT_BASE, NT_TEXT_HOLE),)):
        self.m = Machine()
        self.pfn = 0x8000
        self.images = {name: PeImage.from_file(str(BIN / name)) for name in ("ntoskrnl.exe", "hal.dll", "mydrv.sys")}
        self.ps_loaded = NT_BASE + _pdb_rva("ntkrnlmp.pdb", "PsLoadedModuleList")
        self.kdbg = NT_BASE + _pdb_rva("ntkrnlmp.pdb", "KdDebuggerDataBlock")
        self.drop = set(drop)
        my = self.images["mydrv.sys"]
        self.modules = [  # (full name, base, size, timestamp, checksum)
            ("\\SystemRoot\\system32\\ntoskrnl.exe", NT_BASE, self.images["ntoskrnl.exe"]),
            ("\\SystemRoot\\system32\\hal.dll", HAL_BASE, self.images["hal.dll"]),
            ("\\SystemRoot\\System32\\drivers\\mydrv.sys", MYDRV_BASE, my),
            ("\\SystemRoot\\System32\\drivers\\afd.sys", AFD_BASE, None),
            ("\\??\\C:\\drivers\\mydrv.sys", MYDRV2_BASE, my),
        ]
        self.nt_data = bytearray(self.images["ntoskrnl.exe"].reader.data)
        self._loader_list()
        self._unloaded()
        for _, base, img in self.modules[:3]:
            data = self.nt_data if base == NT_BASE else img.reader.data
            self._map_image(base, data, img.size_of_image)
        self.stack = [NT_BASE + _pdb_rva("ntkrnlmp.pdb", "KeBugCheckEx"), MYDRV_BASE + 0x1234, 0,
                      0x1122334455667788, HAL_BASE + 0x10C0, AFD_BASE + 0x10]
        self.m.map(STACK, self._next(), content=b"".join(struct.pack("<Q", v) for v in self.stack))

    def _next(self) -> int:
        self.pfn += 1
        return self.pfn

    def _poke(self, va: int, data: bytes) -> None:
        """Write into the pool pages (mapped on first use)."""
        for i, b in enumerate(data):
            page = (va + i) & ~0xFFF
            if page not in self._pool:
                self._pool[page] = self._next()
                self.m.map(page, self._pool[page], content=b"")
            self.m.page(self._pool[page])[(va + i) & 0xFFF] = b

    def _loader_list(self) -> None:
        self._pool: dict[int, int] = {}
        n = len(self.modules)
        entries = [POOL + i * 0x100 for i in range(n)]
        for i, (path, base, img) in enumerate(self.modules):
            e = entries[i]
            full, short = path.encode("utf-16-le"), path.rsplit("\\", 1)[1].encode("utf-16-le")
            names = POOL + 0x800 + i * 0x100
            size = img.size_of_image if img else 0x9000
            stamp = img.timestamp if img else 0x5C9A7E7B
            checksum = img.checksum if img else 0x9068
            flink = entries[i + 1] if i + 1 < n else self.ps_loaded
            blink = entries[i - 1] if i else self.ps_loaded
            self._poke(e, struct.pack("<QQ", flink, blink))
            self._poke(e + 0x30, struct.pack("<QQI", base, base + 0x1000, size))
            self._poke(e + 0x48, _ustr(len(full), names) + _ustr(len(short), names + 0x80))
            self._poke(e + 0x78, struct.pack("<I", checksum))
            self._poke(e + 0x9C, struct.pack("<I", stamp))
            self._poke(names, full)
            self._poke(names + 0x80, short)
        head = self.ps_loaded - NT_BASE
        self.nt_data[head : head + 16] = struct.pack("<QQ", entries[0], entries[-1])

    def _unloaded(self) -> None:
        array = UNLOADED + 0x100
        self._poke(UNLOADED, struct.pack("<Q", array))
        self._poke(UNLOADED + 8, struct.pack("<I", 2))  # MmLastUnloadedDriver: two slots used
        for i, (name, start, end) in enumerate([("dump_storport.sys", 0xFFFFF80003000000, 0xFFFFF8000300F000),
                                                ("dam.sys", 0xFFFFF80003100000, 0xFFFFF8000311C000)]):
            text = name.encode("utf-16-le")
            buf = UNLOADED + 0x900 + i * 0x80
            self._poke(array + i * 0x28, _ustr(len(text), buf) + struct.pack("<QQQ", start, end, 0x01D7000000000000))
            self._poke(buf, text)
        k = self.kdbg - NT_BASE
        self.nt_data[k + 0x220 : k + 0x230] = struct.pack("<QQ", UNLOADED, UNLOADED + 8)

    def _map_image(self, base: int, data: bytes, size: int) -> None:
        for off in range(0, size, 0x1000):
            if (base, off) in self.drop:
                continue
            self.m.map(base + off, self._next(), content=bytes(data[off : off + 0x1000]))

    def write(self, tmp_path, kind: str = "full", **fields) -> Path:
        rip = MYDRV_BASE + _pdb_rva("mydrv.pdb", "MyDrvUseAfterFree") + 0x10
        return write_kind(tmp_path, kind, self.m.bytes_pages(), directory_table_base=self.m.dtb,
                          kd_debugger_data_block=self.kdbg, ps_loaded_module_list=self.ps_loaded,
                          context=default_context(rip=rip, rsp=STACK), **fields)


@pytest.fixture(scope="module")
def complete_path(tmp_path_factory):
    return KernelMachine().write(tmp_path_factory.mktemp("complete"))


@pytest.fixture
def complete(complete_path):
    with kdshell.open(complete_path, symbol_path="", image_path="") as s:
        yield s


def lines(session, command):
    return session.capture(command).splitlines()


# -- the module list ----------------------------------------------------------------------------
def test_psloadedmodulelist_of_a_complete_dump(complete):
    mods = complete.symbols.modules
    assert mods.source == "PsLoadedModuleList"
    assert [(m.name, m.base, m.size, m.image_name) for m in mods] == [
        ("nt", NT_BASE, 0x1b000, "ntoskrnl.exe"),
        ("hal", HAL_BASE, 0x5000, "hal.dll"),
        ("mydrv", MYDRV_BASE, 0x5000, "mydrv.sys"),
        ("afd", AFD_BASE, 0x9000, "afd.sys"),
        ("mydrv_fffff80001800000", MYDRV2_BASE, 0x5000, "mydrv.sys"),
    ]
    nt = mods.kernel
    assert (nt.timestamp, nt.checksum) == (0x59FD87EE, 0x21ABC)
    assert mods.by_address(MYDRV_BASE + 0x4FFF).name == "mydrv"
    assert mods.by_address(MYDRV_BASE + 0x5000) is None
    assert mods.by_name("MYDRV.SYS").base == MYDRV_BASE  # image names work too, any case
    assert [u.name for u in mods.unloaded] == ["dam.sys", "dump_storport.sys"]  # newest first


def test_lm_on_the_complete_dump(complete):
    assert lines(complete, "lm") == [
        "start             end                 module name",
        "fffff800`00000000 fffff800`0001b000   nt         (deferred)",
        "fffff800`00400000 fffff800`00405000   hal        (deferred)",
        "fffff800`01000000 fffff800`01005000   mydrv      (deferred)",
        "fffff800`01800000 fffff800`01805000   mydrv_fffff80001800000 (deferred)",
        "fffff800`02000000 fffff800`02009000   afd        (deferred)",
        "",
        "Unloaded modules:",
        "fffff800`03100000 fffff800`0311c000   dam.sys",
        "fffff800`03000000 fffff800`0300f000   dump_storport.sys",
    ]


def test_lm_without_a_symbol_path_uses_exports_from_the_dump(complete):
    complete.run(".reload /f")
    assert lines(complete, "lmo") == [
        "start             end                 module name",
        "fffff800`00000000 fffff800`0001b000   nt         (export symbols)       ntoskrnl.exe",
        "fffff800`00400000 fffff800`00405000   hal        (export symbols)       hal.dll",
        "fffff800`01000000 fffff800`01005000   mydrv      (no symbols)",
        "fffff800`01800000 fffff800`01805000   mydrv_fffff80001800000 (no symbols)",
        "fffff800`02000000 fffff800`02009000   afd        (no symbols)",
    ]


def test_a_list_that_loops_stops(tmp_path):
    km = KernelMachine()
    km._poke(POOL + 2 * 0x100, struct.pack("<Q", POOL + 0x100))  # mydrv's Flink back to hal
    with kdshell.open(km.write(tmp_path)) as s:
        assert [m.name for m in s.symbols.modules] == ["nt", "hal", "mydrv"]
        assert s.symbols.modules.warnings == [
            "The loaded module list loops at 0xffff9b0000010100; stopped after 3 modules"]
        assert lines(s, "lm 1m") == ["WARNING: The loaded module list loops at 0xffff9b0000010100; "
                                     "stopped after 3 modules", "nt", "hal", "mydrv"]


def test_triage_driver_list_names(triage):
    mods = triage.symbols.modules
    assert len(mods) == 151 and mods.source == "triage driver list"
    names = [m.name for m in mods]
    assert names[:6] == ["nt", "hal", "kd", "CLFS", "tm", "PSHED"]
    assert {"dump_dumpstorport", "dump_stornvme", "stornvme", "afd", "BasicDisplay", "nvlddmkm", "UEFI"} <= set(names)
    assert len(set(n.lower() for n in names)) == 151
    assert [(u.name, u.start) for u in mods.unloaded] == [
        ("dam.sys", 0xFFFFF80487DE0000), ("WdBoot.sys", 0xFFFFF80479D30000),
        ("hwpolicy.sys", 0xFFFFF804802C0000), ("mcupdate.dll", 0xFFFFF804793E0000)]


@pytest.fixture(scope="module")
def triage():
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.progress = None
        yield s


def test_names_like_windbg():
    mods = [Module(0x1000 * i, 0x1000, p) for i, p in enumerate([
        "\\SystemRoot\\system32\\ntkrnlmp.exe", "\\SystemRoot\\system32\\halmacpi.dll", "disk.sys",
        "\\x\\DISK.SYS", "1394ohci.sys", "afd.sys", "noext", "\\SystemRoot\\system32\\ntkrpamp.exe"], 1)]
    assign_names(mods)
    assert [m.name for m in mods] == ["nt", "hal", "disk", "DISK_4000", "1394ohci", "afd", "noext", "nt_8000"]
    ml = ModuleList(mods)
    assert [m.name for m in ml.match("d*")] == ["disk", "DISK_4000"]
    assert ml.by_name("1394OHCI").base == 0x5000


def test_mini_dump_17763_modules():
    with kdshell.open(MINI_17763, symbol_path="", image_path="") as s:
        mods = s.symbols.modules
        assert mods.source == "triage driver list"
        assert mods.modules[0].name == "nt" and mods.modules[1].name == "hal"
        out = lines(s, "lm m nt")
        assert out[0] == "start             end                 module name"
        assert out[1].endswith("   nt         (deferred)")


# -- the image overlay --------------------------------------------------------------------------
def test_a_paged_out_code_page_comes_from_the_image_file(complete_path):
    hole = NT_BASE + NT_TEXT_HOLE
    nt = PeImage.from_file(str(BIN / "ntoskrnl.exe"))
    with kdshell.open(complete_path, symbol_path="", image_path="") as s:
        assert lines(s, f"db {hole:x} L4") == ["fffff800`00005000  ?? ?? ?? ??                                      ????"]
    with kdshell.open(complete_path, symbol_path="", image_path=str(BIN)) as s:
        want = " ".join(f"{b:02x}" for b in nt.read(NT_TEXT_HOLE, 4))
        assert lines(s, f"db {hole:x} L4")[0].startswith(f"fffff800`00005000  {want}")
        assert s.memory.read(hole, 0x1000) == nt.read(NT_TEXT_HOLE, 0x1000)
        # page tables still work through the overlay
        assert lines(s, f"!vtop 0 {NT_BASE:x}")[-1].startswith("Virtual address fffff80000000000 translates to")


def test_writable_sections_are_not_lent_in_a_complete_dump(tmp_path):
    km = KernelMachine(drop=((MYDRV_BASE, 0x3000),))  # mydrv .data
    with kdshell.open(km.write(tmp_path), symbol_path="", image_path=str(BIN)) as s:
        assert lines(s, f"dd {MYDRV_BASE + 0x3000:x} L1") == ["fffff800`01003000  ????????"]
        assert s.memory.readable(MYDRV_BASE + 0x2000, 8)


def test_a_module_with_no_pages_is_read_from_its_relocated_image(complete_path):
    with kdshell.open(complete_path, symbol_path="", image_path=str(BIN)) as s:
        at = MYDRV2_BASE + 0x2000  # .rdata: holds the import address table (relocated? no: RVAs)
        mine = PeImage.from_file(str(BIN / "mydrv.sys"), MYDRV2_BASE)
        assert s.memory.read(at, 0x100) == mine.read(0x2000, 0x100)
        assert s.memory.read(MYDRV2_BASE + 0x1000, 16) == mine.read(0x1000, 16)
        assert not s.memory.readable(MYDRV2_BASE + 0x3000)  # .data stays a hole in a complete dump


def test_the_triage_dump_borrows_every_section(triage):
    amdppm = triage.symbols.module("amdppm")
    image = PeImage.from_file(str(CORPUS_SYMBOLS / "amdppm.sys" / "c9c030003b000" / "amdppm.sys"), amdppm.base)
    assert not triage.raw_memory.readable(amdppm.base + 0x13000, 0x30)
    assert triage.memory.read(amdppm.base + 0x13000, 0x30) == image.read(0x13000, 0x30)  # .data too
    assert triage.memory.read(0xFFFFF8048B58334C, 4) == bytes.fromhex("43891401")


# -- the PE reader ------------------------------------------------------------------------------
def test_pe_image_facts():
    nt = PeImage.from_file(str(BIN / "ntoskrnl.exe"))
    assert (nt.base, nt.size_of_image, nt.timestamp, nt.machine_name) == (NT_BASE, 0x1b000, 0x59FD87EE, "AMD64")
    assert nt.export_name == "ntoskrnl.exe" and len(nt.exports) == 72  # KeCancelTimer, KeInitializeTimer(Ex), KeSetTimer(Ex)
    e = {x.name: x for x in nt.exports}["KeBugCheckEx"]
    assert e.rva == _pdb_rva("ntkrnlmp.pdb", "KeBugCheckEx")
    cv = nt.codeview
    assert (cv.pdb_name, cv.age, cv.key) == ("ntkrnlmp.pdb", 1, "B2D8DED8FE762BD54C4C44205044422E1")
    assert nt.reproducible and len(nt.runtime_functions) == 94
    f = nt.runtime_function(e.rva)
    assert f.begin == e.rva
    amdppm = PeImage.from_file(str(CORPUS_SYMBOLS / "amdppm.sys" / "c9c030003b000" / "amdppm.sys"))
    v = amdppm.version_info
    assert v.file_version == (10, 0, 19041, 1110) and v.translations == [(0x409, 0x4B0)]
    assert v.strings["FileDescription"] == "Processor Device Driver"
    assert amdppm.codeview.key == "1C19FDDB27BB3399D9B45973EFEAFCF31"


def test_pe_reader_refuses_garbage(tmp_path):
    junk = tmp_path / "junk.sys"
    junk.write_bytes(b"MZ" + b"\xff" * 0x200)
    with pytest.raises(PeFormatError):
        PeImage.from_file(str(junk))
    assert parse_codeview(b"RSDS" + bytes(20) + b"C:\\x\\..\\..\\evil.pdb\0").pdb_name == "evil.pdb"
    assert parse_codeview(b"XXXX" + bytes(30)) is None


@pytest.mark.parametrize("name", ["d1", "7e", "3b", "e2", "50", "d1-x86"])
def test_module_list_of_every_machine_without_symbols(machines, name):
    """Without any symbol file the list comes from the KDBG (or the header) and the loader
    entries' fixed offsets: every machine's dumps list exactly the loader's modules. (The
    32-bit KDBG's sign-extended head once made the x86 walk run past the head.)"""
    truth = machines.truth(name)
    for kind in machines.kinds(name):
        # the loader entry's FullDllName names the image; a small dump's driver list keeps the
        # BaseDllName (they differ on the x86 machine: ntkrnlpa.exe loaded from ntoskrnl.exe)
        want = [(m["base"], m["size"], m["name"] if kind == "small" else m["full_name"].rsplit("\\", 1)[-1])
                for m in truth["modules"]]
        with kdshell.open(str(machines.path(name, kind)), symbol_path="", image_path="") as s:
            mods = s.symbols.modules
            assert mods.warnings == [], (kind, mods.warnings)
            assert [(m.base, m.size, m.image_name) for m in mods] == want, kind


def test_module_patterns_are_windbg_wildcards_matched_without_backtracking():
    import time

    ml = ModuleList([Module(0x1000, 0x100, "a" * 200 + ".sys"), Module(0x3000, 0x100, "x[1].sys")])
    start = time.monotonic()
    assert ml.match("*a" * 30 + "*b") == []  # x mod!sym takes the module part from the user
    assert time.monotonic() - start < 0.5
    assert [m.name for m in ml.match("X[1]")] == ["x[1]"]  # '[' is a character, not a class
