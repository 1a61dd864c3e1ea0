"""Hostile dumps (issue #11): structures that loop, counts of 2^32, a KDBG that points at
itself, unwind data that chains to itself, a PDB whose types are cyclic. Each must give a
one-line error or a bounded answer, quickly -- never a traceback or a hang.

The dumps are the test machine d1 (fixtures/machine: real page tables, loader and process
lists, KDBG, images with their unwind data) with one structure damaged through the builder's
own virtual view, then written as a kernel dump by the builder's emitter; small-dump and
range-list cases are damaged at literal offsets (formats.md); the PDB is written from literal
layouts (tests/test_pdb.py's MSF writer). What is checked is what a user sees:
`kdshell.open(path).capture("lm")` and friends, each under a time guard (SIGALRM). Under
pytest the dispatcher re-raises internal errors, so a traceback fails the test by itself.
"""
from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

import kdshell
from conftest import REPO
from fuzz.engine import Hang, TimeLimit
from kdshell import dispatch

SAMPLE_STORE = REPO / "kdshell" / "data" / "sample" / "symbols"
X86_SYMBOLS = f"{REPO / 'fixtures' / 'images' / 'bin'};{REPO / 'fixtures' / 'images' / 'bin' / 'x86'}"
TIME_LIMIT = 15.0  # seconds for any one command (they take milliseconds)
PAGE = 0x1000


def registered(command: str) -> bool:
    import kdshell.commands  # noqa: F401
    from kdshell.errors import KdError

    try:
        dispatch.resolve(command)
        return True
    except KdError:
        return False


def open_session(path, store: Path | str | None = SAMPLE_STORE):
    s = kdshell.open(str(path), symbol_path=str(store) if store else "", image_path=str(store) if store else "")
    s.progress = None
    return s


def run(s, command: str, limit: float = TIME_LIMIT) -> list[str]:
    """The command's lines, under a time guard; an error must be one line of words."""
    if not registered(command.split(";")[0].strip()):
        pytest.skip(f"{command.split()[0]} is not implemented yet")
    before = s.failures
    try:
        with TimeLimit(limit):
            text = s.capture(command)
    except Hang:
        pytest.fail(f"{command!r} ran longer than {limit} s")
    lines = text.splitlines()
    assert not any("Traceback" in line or "Internal error" in line for line in lines), text
    if s.failures > before:
        errors = [line for line in lines if line.strip()]
        assert errors, f"{command!r} failed without a message"
    return lines


# ------------------------------------------------------------------------------------------------
# The test machine, damaged one structure at a time


class Machine:
    """d1, built once; `patch` writes through the builder's view and remembers what it hid."""

    def __init__(self, scenario: str = "d1"):
        from fixtures.machine.machine import build_machine

        self.state = build_machine(scenario)
        self.view = self.state.view()
        self.types = self.state.types
        self.g = self.state.globals
        self._undo: list[tuple[int, bytes]] = []

    def patch(self, va: int, data: bytes) -> None:
        self._undo.append((va, self.view.read(va, len(data))))
        self.view.write(va, data)

    def patch_ptr(self, va: int, value: int) -> None:
        self.patch(va, struct.pack("<Q", value & (2**64 - 1)))

    def patch_phys(self, pa: int, data: bytes) -> None:
        mem = self.state.memory
        self._undo.append((-1 - pa, mem.read(pa, len(data))))
        mem.write(pa, data)

    def restore(self) -> None:
        while self._undo:
            va, old = self._undo.pop()
            if va < 0:
                self.state.memory.write(-1 - va, old)
            else:
                self.view.write(va, old)

    def offset(self, struct_name: str, field: str) -> int:
        return self.types.offset(struct_name, field)

    def write(self, path: Path, kind: str = "kernel") -> Path:
        from fixtures.machine.emit import write_dump

        write_dump(self.state, kind, path)
        return path

    # facts
    @property
    def kdbg(self) -> int:
        return self.g["nt!KdDebuggerDataBlock"]

    def module(self, short: str) -> dict:
        return next(m for m in self.state.modules if m["short"] == short)

    def process(self, name: str):
        return next(p for p in self.state.processes if p.name == name)


@pytest.fixture(scope="module")
def machine():
    return Machine()


@pytest.fixture(scope="module")
def machine86():
    return Machine("d1-x86")


def _writer(machine, tmp_path):
    """A function: damage(...) has been applied by the test; write the dump, then undo."""
    paths = []

    def write(kind: str = "kernel") -> Path:
        path = machine.write(tmp_path / f"hostile-{len(paths)}.dmp", kind)
        paths.append(path)
        return path

    yield write
    machine.restore()


@pytest.fixture
def damaged(machine, tmp_path):
    yield from _writer(machine, tmp_path)


@pytest.fixture
def damaged86(machine86, tmp_path):
    yield from _writer(machine86, tmp_path)


def test_the_undamaged_machine_lists_everything(machine, damaged):
    s = open_session(damaged())
    lm = run(s, "lm")
    assert any("mydrv" in line for line in lm) and any(line.split()[2:3] == ["nt"] for line in lm if line.strip())
    assert any("mydrv!MyDrvReadRegister" in line for line in run(s, "k"))


# -- page tables that loop ------------------------------------------------------------------------

SELF_MAP = 0x1B5  # the machine's own self-map slot (fixtures/README.md)


def _va(pml4: int, pdpt: int = 0, pd: int = 0, pt: int = 0) -> int:
    va = (pml4 << 39) | (pdpt << 30) | (pd << 21) | (pt << 12)
    return va | (0xFFFF << 48) if pml4 >= 0x100 else va


def _entry(table_pa: int, index: int) -> int:
    return table_pa + 8 * index


def _pml4(machine) -> int:
    return machine.state.system.dtb


def _free_slot(machine, table_pa: int, lo: int = 0, hi: int = 512) -> int:
    """An empty entry of a table (the last one in [lo, hi))."""
    mem = machine.state.memory
    return next(i for i in range(hi - 1, lo - 1, -1) if mem.read(_entry(table_pa, i), 8) == bytes(8))


def test_pml4_entry_pointing_back_at_the_pml4(machine, damaged):
    """A second self-map at a slot the kernel does not use: every level of a walk through it
    lands on the PML4 again. Translation is bounded (four levels); commands answer."""
    pml4 = _pml4(machine)
    loop = _free_slot(machine, pml4, 0x100, 0x1B0)  # kernel half, below the self-map
    machine.patch_phys(_entry(pml4, loop), struct.pack("<Q", pml4 | 0x63))
    s = open_session(damaged())
    va = _va(loop, loop, loop, loop)
    out = run(s, f"db {va:x} L10")
    # the page reached is the PML4 itself: its first bytes are PML4[0], PML4[1]
    assert out and out[0].split()[1:3] != ["??", "??"]
    run(s, f"!pte {va:x}")
    run(s, f"!vtop 0 {va:x}")
    run(s, f"s -q {_va(loop):x} L?20000 0")  # 1 MiB of the looping region, searched
    assert any("mydrv" in line for line in run(s, "lm"))
    assert any("mydrv!MyDrvReadRegister" in line for line in run(s, "k"))
    run(s, "!process 0 0")


def test_pdpt_entry_pointing_at_the_pml4(machine, damaged):
    """A PDPT entry holding the PML4: the PD level reads the PML4, whose self-map entry makes
    the next levels loop too."""
    pml4 = _pml4(machine)
    nt = machine.module("nt")["base"]
    pdpt = struct.unpack("<Q", machine.state.memory.read(_entry(pml4, (nt >> 39) & 0x1FF), 8))[0] & 0xFFFFFFFFF000
    free = _free_slot(machine, pdpt)
    machine.patch_phys(_entry(pdpt, free), struct.pack("<Q", pml4 | 0x63))
    s = open_session(damaged())
    va = _va((nt >> 39) & 0x1FF, free, SELF_MAP, SELF_MAP)
    run(s, f"db {va:x} L10")
    run(s, f"!pte {va:x}")
    run(s, f"dq {_va((nt >> 39) & 0x1FF, free):x} L?4000")
    assert any("mydrv" in line for line in run(s, "lm"))
    assert any("mydrv!MyDrvReadRegister" in line for line in run(s, "k"))


def test_page_directory_entry_pointing_at_its_own_table(machine, damaged):
    """A PDE (not a large page) pointing at the page directory holding it."""
    pml4 = _pml4(machine)
    nt = machine.module("nt")["base"]
    pdpt = struct.unpack("<Q", machine.state.memory.read(_entry(pml4, (nt >> 39) & 0x1FF), 8))[0] & 0xFFFFFFFFF000
    pd = struct.unpack("<Q", machine.state.memory.read(_entry(pdpt, (nt >> 30) & 0x1FF), 8))[0] & 0xFFFFFFFFF000
    free = _free_slot(machine, pd)
    machine.patch_phys(_entry(pd, free), struct.pack("<Q", pd | 0x63))
    s = open_session(damaged())
    va = _va((nt >> 39) & 0x1FF, (nt >> 30) & 0x1FF, free, free)
    run(s, f"db {va:x} L10")
    run(s, f"!pte {va:x}")
    assert any("mydrv" in line for line in run(s, "lm"))


@pytest.mark.parametrize("flag", ["/k", "/ka", "/f"])
def test_dump_conversion_of_looping_page_tables_is_bounded(machine, damaged, tmp_path, flag):
    """`.dump /k` walks every page table: the loops above must not make it loop."""
    if not registered(".dump"):
        pytest.skip(".dump is not implemented yet")
    pml4 = _pml4(machine)
    machine.patch_phys(_entry(pml4, _free_slot(machine, pml4, 0x100, 0x1B0)), struct.pack("<Q", pml4 | 0x63))
    nt = machine.module("nt")["base"]
    pdpt = struct.unpack("<Q", machine.state.memory.read(_entry(pml4, (nt >> 39) & 0x1FF), 8))[0] & 0xFFFFFFFFF000
    machine.patch_phys(_entry(pdpt, _free_slot(machine, pdpt)), struct.pack("<Q", pml4 | 0x63))
    s = open_session(damaged())
    out = tmp_path / "converted.dmp"
    run(s, f".dump {flag} {out}", limit=60)
    if out.exists():
        assert any("mydrv" in line for line in run(open_session(out), "lm"))


def _pae_va(pdpt: int, pd: int = 0, pt: int = 0) -> int:
    return (pdpt << 30) | (pd << 21) | (pt << 12)


def _pae_kernel_pd(machine86) -> tuple[int, int]:
    """(PDPT index, physical address) of the page directory that maps the kernel."""
    nt = machine86.module("nt")["base"]
    index = nt >> 30
    pdpte = struct.unpack("<Q", machine86.state.memory.read(machine86.state.system.dtb + 8 * index, 8))[0]
    return index, pdpte & 0xFFFFFF000


@pytest.mark.parametrize("target", ["its own page directory", "the PDPT's page"])
def test_pae_directory_entry_looping_back(machine86, damaged86, target):
    """x86 PAE: a PDE (not large) pointing at the page directory holding it, or at the page of
    the PDPT: the walk reads a table as data, three levels and no more."""
    index, pd = _pae_kernel_pd(machine86)
    free = _free_slot(machine86, pd)
    table = pd if target == "its own page directory" else machine86.state.system.dtb & ~0xFFF
    machine86.patch_phys(_entry(pd, free), struct.pack("<Q", table | 0x63))
    s = open_session(damaged86(), X86_SYMBOLS)
    va = _pae_va(index, free, free if table == pd else 0)
    out = run(s, f"dq {va:x} L4")
    assert out and "????" not in out[0], out  # the page reached is a table: readable
    run(s, f"!pte {va:x}")
    run(s, f"s -d {_pae_va(index, free):x} L?80000 0")  # the 2 MiB through the loop, searched
    assert any("mydrv" in line for line in run(s, "lm"))
    assert any("mydrv!MyDrvReadRegister" in line for line in run(s, "k"))
    if registered(".dump"):
        out_path = Path(s.dump.path).with_name("converted.dmp")
        run(s, f".dump /k {out_path}", limit=60)
        assert any("mydrv" in line for line in run(open_session(out_path, X86_SYMBOLS), "lm"))


def test_pae_pdpt_entry_pointing_at_the_pdpt(machine86, damaged86):
    """A PDPT entry holding the PDPT's own page: its four entries become PDEs of page
    directories, which are read as page tables. Bounded; the other three quarters still work."""
    dtb = machine86.state.system.dtb
    mem = machine86.state.memory
    user = next(i for i in range(4) if not i == _pae_kernel_pd(machine86)[0]
                and struct.unpack("<Q", mem.read(dtb + 8 * i, 8))[0] & 1)
    machine86.patch_phys(_entry(dtb, user), struct.pack("<Q", (dtb & ~0xFFF) | 1))
    s = open_session(damaged86(), X86_SYMBOLS)
    run(s, f"dd {_pae_va(user):x} L8")
    run(s, f"!pte {_pae_va(user, 1, 1):x}")
    run(s, f"!vtop 0 {_pae_va(user, 2, 3):x}")
    assert any("mydrv!MyDrvReadRegister" in line for line in run(s, "k"))


# -- lists that loop -------------------------------------------------------------------------------


def _loader_entries(machine) -> list[int]:
    return [m["ldr_entry"] for m in machine.state.modules]


def test_loaded_module_entry_pointing_at_itself(machine, damaged):
    entries = _loader_entries(machine)
    machine.patch_ptr(entries[2], entries[2])  # the third entry's Flink: itself
    s = open_session(damaged())
    lm = run(s, "lm")
    assert any("module list loops" in line for line in lm), lm
    loaded = lm[lm.index(next(x for x in lm if x.startswith("start"))) + 1:lm.index("Unloaded modules:") - 1]
    assert [line.split()[2] for line in loaded] == ["nt", "hal", "mydrv"]
    run(s, "k")
    run(s, "!lmi mydrv")


def test_loaded_module_list_cycling_without_the_head(machine, damaged):
    entries = _loader_entries(machine)
    machine.patch_ptr(entries[-1], entries[1])  # the last entry leads back to the second
    s = open_session(damaged())
    lm = run(s, "lm")
    assert any("kbdcrash" in line for line in lm)
    run(s, "!analyze -v")


def test_loaded_module_list_head_pointing_at_itself_through_blink_only(machine, damaged):
    head = machine.g["nt!PsLoadedModuleList"]
    machine.patch_ptr(head + 8, head)  # Blink: an empty list, Flink still set
    s = open_session(damaged())
    assert any("mydrv" in line for line in run(s, "lm"))


def _active_links(machine, name: str) -> int:
    return machine.process(name).address + machine.offset("_EPROCESS", "ActiveProcessLinks")


def test_process_entry_pointing_at_itself(machine, damaged):
    links = _active_links(machine, "csrss.exe")
    machine.patch_ptr(links, links)
    s = open_session(damaged())
    out = run(s, "!process 0 0")
    assert any("loops" in line for line in out), out
    assert [line.split()[1] for line in out if line.startswith("    Image:")] == ["System", "smss.exe", "csrss.exe"]
    run(s, "!process 0 7")
    run(s, "!analyze -v")


def test_process_list_cycling_without_the_head(machine, damaged):
    first = _active_links(machine, "System")
    last = _active_links(machine, "stortool.exe")
    machine.patch_ptr(last, first)
    s = open_session(damaged())
    out = run(s, "!process 0 0")
    assert sum(1 for line in out if line.startswith("PROCESS")) <= len(machine.state.processes)


def test_thread_list_entries_pointing_at_themselves(machine, damaged):
    proc = machine.process("svchost.exe")
    for owner, head_field, entry_field in (("_EPROCESS", "ThreadListHead", "ThreadListEntry"),
                                           ("_KPROCESS", "ThreadListHead", "ThreadListEntry")):
        struct_name = "_ETHREAD" if owner == "_EPROCESS" else "_KTHREAD"
        entry = proc.threads[0] + machine.offset(struct_name, entry_field)
        machine.patch_ptr(entry, entry)
    s = open_session(damaged())
    out = run(s, f"!process {proc.address:x} 7")
    assert any("loops" in line for line in out), out
    assert sum(1 for line in out if line.strip().startswith("THREAD")) == 1
    run(s, "!process 0 7")
    run(s, f"!thread {proc.threads[0]:x}")


# -- a KDBG that points at itself -----------------------------------------------------------------

KDBG_POINTERS = {"KernBase": 0x18, "PsLoadedModuleList": 0x48, "PsActiveProcessHead": 0x50, "PspCidTable": 0x58,
                 "MmPfnDatabase": 0xC0, "KiProcessorBlock": 0x218, "MmUnloadedDrivers": 0x220,
                 "MmLastUnloadedDriver": 0x228}  # formats.md §10


def test_kdbg_whose_pointers_point_at_itself(machine, damaged):
    kdbg = machine.kdbg
    machine.patch(kdbg, struct.pack("<QQ", kdbg, kdbg))  # its LIST_ENTRY header: a loop on itself
    for name, off in KDBG_POINTERS.items():
        machine.patch_ptr(kdbg + off, kdbg)
    path = damaged()
    s = open_session(path)
    k = run(s, "k")
    assert len(k) >= 2, k  # frame 0 needs no KDBG
    lm = run(s, "lm")  # the KDBG's list is empty: the dump header's PsLoadedModuleList serves
    assert any("lists no modules; using the dump header's" in line for line in lm), lm
    assert any(line.split()[2:3] == ["mydrv"] for line in lm if line.strip()), lm
    for cmd in ("vertarget", "!process 0 0", "!pcr", "~1s", "!analyze -v", "!thread", "!running"):
        if registered(cmd.split()[0]):
            run(s, cmd)


def test_dump_header_list_heads_pointing_at_the_kdbg(machine, tmp_path):
    """The header's PsLoadedModuleList/PsActiveProcessHead (used without symbols) at the KDBG,
    whose first qwords are its own LIST_ENTRY: an empty list or a loop, not a hang."""
    from fixtures.machine.emit import header_fields
    from kdshell.dumpfile.write import write_bitmap
    from fixtures.machine.emit import SubsetPages

    st = machine.state
    kdbg = machine.kdbg
    machine.patch(kdbg, struct.pack("<QQ", kdbg, kdbg))
    try:
        fields = header_fields(st, ps_loaded_module_list=kdbg, ps_active_process_head=kdbg)
        path = tmp_path / "header.dmp"
        write_bitmap(path, fields, SubsetPages(st.memory, st.kernel_pfns), 6, overwrite=True)
    finally:
        machine.restore()
    s = open_session(path, store=None)  # no symbols: the header's heads are what there is
    for cmd in ("lm", "k", "!process 0 0", "vertarget"):
        if registered(cmd.split()[0]):
            run(s, cmd)


# -- counts of 2^32 -----------------------------------------------------------------------------------

TRIAGE = 0x2000  # formats.md §6: TRIAGE_DUMP64 in a small dump


def _small(machine, tmp_path, patches) -> Path:
    raw = bytearray(machine.write(tmp_path / "small-src.dmp", "small").read_bytes())
    for fmt, off, value in patches(raw):
        struct.pack_into(fmt, raw, off, value)
    path = tmp_path / "small.dmp"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("what,patches", [
    ("DriverCount", lambda raw: [("<I", TRIAGE + 0x34, 0xFFFFFFFF)]),
    ("DataBlocksCount", lambda raw: [("<I", TRIAGE + 0x7C, 0xFFFFFFFF)]),
    ("UnloadedDrivers count", lambda raw: [("<I", struct.unpack_from("<I", raw, TRIAGE + 0x18)[0], 0xFFFFFFFF)]),
    ("StringPoolSize", lambda raw: [("<I", TRIAGE + 0x3C, 0xFFFFFFFF)]),
    ("every count", lambda raw: [("<I", TRIAGE + 0x34, 0xFFFFFFFF), ("<I", TRIAGE + 0x7C, 0xFFFFFFFF),
                                 ("<I", struct.unpack_from("<I", raw, TRIAGE + 0x18)[0], 0xFFFFFFFF)]),
])
def test_small_dump_counts_of_2_32(machine, tmp_path, what, patches):
    s = open_session(_small(machine, tmp_path, patches))
    for cmd in ("lm", "k", "vertarget", "dq @rsp L4", ".dumpdebug", "!analyze -v"):
        if registered(cmd.split()[0]):
            run(s, cmd)


def test_rdmp_range_counts_of_2_32(machine, tmp_path):
    """A range-list dump whose first range claims 2^32 pages, and one whose type-10 count of
    ranges is 2^32: the CLI prints one line and exits, or the dump opens with a warning."""
    from kdshell.cli import main

    src = machine.write(tmp_path / "rdmp-src.dmp", "rdmp8").read_bytes()
    cases = []
    raw = bytearray(src)
    struct.pack_into("<Q", raw, 0x2030 + 8, 0xFFFFFFFF)  # first range's NumberOfPages
    cases.append(bytes(raw))
    raw = bytearray(src)
    struct.pack_into("<I", raw, 0xF98, 10)  # as a type 10 with NumberOfRanges 2^32-1 ...
    struct.pack_into("<IHHQ", raw, 0x2020, 0xFFFFFFFF, 0, 0, 0xFFFFFFFFFFFF)  # ... and total pages 2^48-1
    cases.append(bytes(raw))
    for i, data in enumerate(cases):
        path = tmp_path / f"rdmp{i}.dmp"
        path.write_bytes(data)
        with TimeLimit(TIME_LIMIT):
            code = main(["-z", str(path), "-c", "lm; k; q"])
        assert code in (0, 1, 2)


def test_kdbg_counts_of_2_32(machine, damaged):
    """MmLastUnloadedDriver (a ULONG the KDBG points at) of 2^32-1, and a processor count of
    2^32-1 in the dump header."""
    last = machine.g["MmLastUnloadedDriver"]
    machine.patch(last, struct.pack("<I", 0xFFFFFFFF))
    path = damaged()
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 0x34, 0xFFFFFFFF)  # DUMP_HEADER64.NumberProcessors
    path.write_bytes(bytes(raw))
    s = open_session(path)
    for cmd in ("lm", "vertarget", "~5s", "~4294967294s", "!pcr 7", "!prcb 0xfffffffe", "!running", "k"):
        if registered(cmd.split()[0] if not cmd.startswith("~") else "~"):
            run(s, cmd)


# -- unwind data that loops ------------------------------------------------------------------------

UNW_FLAG_CHAININFO = 4


def _runtime_function(machine, module: str, rva: int) -> tuple[int, int, int, int]:
    """(begin, end, unwind rva, address of the entry) of the .pdata entry covering `rva`."""
    base = machine.module(module)["base"]
    head = machine.view.read(base, 0x400)
    lfanew = struct.unpack_from("<I", head, 0x3C)[0]
    pdata, size = struct.unpack_from("<II", head, lfanew + 0x18 + 0x70 + 3 * 8)
    for i in range(size // 12):
        begin, end, unwind = struct.unpack("<III", machine.view.read(base + pdata + 12 * i, 12))
        if begin <= rva < end:
            return begin, end, unwind, base + pdata + 12 * i
    raise AssertionError(f"no .pdata entry for {module}+{rva:#x}")


def _frame_rva(machine, function: str) -> tuple[str, int]:
    frame = next(f for f in machine.state.call_chain if f["function"].startswith(function))
    module = function.split("!")[0]
    return module, frame["rip"] - machine.module(module)["base"]


def test_unwind_info_chained_to_itself(machine, damaged):
    module, rva = _frame_rva(machine, "mydrv!MyDrvProcessQueue")
    begin, end, unwind, _ = _runtime_function(machine, module, rva)
    base = machine.module(module)["base"]
    head = machine.view.read(base + unwind, 4)
    count = head[2]
    chained = base + unwind + 4 + 2 * (count + (count & 1))
    machine.patch(base + unwind, bytes([(head[0] & 7) | (UNW_FLAG_CHAININFO << 3)]))
    machine.patch(chained, struct.pack("<III", begin, end, unwind))  # ... to its own UNWIND_INFO
    s = open_session(damaged())
    out = run(s, "k")
    assert len(out) < 200
    assert any("MyDrvProcessQueue" in line for line in out)
    run(s, "kv")
    run(s, "!analyze -v")


def test_indirect_pdata_entry_pointing_at_itself(machine, damaged):
    module, rva = _frame_rva(machine, "mydrv!MyDrvDispatchLevelWork")
    _, _, _, entry = _runtime_function(machine, module, rva)
    base = machine.module(module)["base"]
    machine.patch(entry + 8, struct.pack("<I", (entry - base) | 1))  # UnwindData: indirect, to itself
    s = open_session(damaged())
    out = run(s, "k")
    assert len(out) < 200
    assert any("MyDrvDispatchLevelWork" in line or "MyDrvProcessQueue" in line for line in out)


# -- a PDB with cyclic types ------------------------------------------------------------------------


def hostile_mydrv_pdb(guid: bytes, age: int) -> bytes:
    """tests/test_pdb.py's hostile PDB (a pointer/modifier cycle, a field list continuing into
    itself, an array of itself, a structure containing itself, a 200-deep modifier chain, a
    2^32-element array) with mydrv.pdb's GUID and age, so the session loads it for mydrv."""
    import test_pdb as P
    from kdshell.symbols.pdb import PdbFile

    with PdbFile(data=P.hostile_pdb()) as pdb:
        tpi = pdb.msf.stream(2)
    info = struct.pack("<III", 20000404, 0x12345678, age) + guid + struct.pack("<IIIII", 0, 0, 1, 0, 0)
    return P.write_msf([b"", info, tpi, b"", b""])


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    from kdshell.symbols.pdb import PdbFile

    store = tmp_path_factory.mktemp("store")
    shutil.copytree(SAMPLE_STORE, store, dirs_exist_ok=True)
    real = next((store / "mydrv.pdb").iterdir()) / "mydrv.pdb"
    with PdbFile(real) as pdb:
        info = pdb.msf.stream(1)
    guid, age = info[12:28], struct.unpack_from("<I", info, 8)[0]  # PDB info stream: GUID at 12, age at 8
    real.write_bytes(hostile_mydrv_pdb(guid, age))
    with PdbFile(real) as pdb, PdbFile(data=next((SAMPLE_STORE / "mydrv.pdb").iterdir()).joinpath(
            "mydrv.pdb").read_bytes()) as original:
        assert pdb.key == original.key  # the session takes it for mydrv's PDB
    return store


def test_pdb_with_cyclic_types(hostile_store):
    from kdshell.cli import bundled_sample

    s = open_session(bundled_sample()[0], store=hostile_store)
    assert any("mydrv" in line for line in run(s, "lm"))
    run(s, ".reload /f mydrv.sys")
    for cmd in ("dt mydrv!Loop", "dt mydrv!Self", "dt -r5 mydrv!Self", "dt mydrv!Self @rsp", "dt -b mydrv!Self",
                "dt mydrv!Declared", "dt mydrv!*", "x mydrv!*", "k", "ln @rip", "!analyze -v"):
        if registered(cmd.split()[0]):
            out = run(s, cmd)
            assert len(out) < 5000
    assert [line.split() for line in run(s, "dt mydrv!Loop")] == [["+0x000", "a", ":", "Int4B"]]
    assert [line.split()[1] for line in run(s, "dt mydrv!Self")] == ["me", "next"]
    assert 5 <= len(run(s, "dt -r5 mydrv!Self")) <= 64
    assert any("mydrv+0x" in line for line in run(s, "k"))  # the PDB has no symbols: offsets
