"""The stack walker against genuine stacks: fixture code run under Unicorn.

The fixture kernel and drivers (fixtures/images/bin) are mapped at their link bases behind real
x64 page tables, their IATs filled from the export tables, and a crash path is *run*: a driver
routine several calls deep faults, the fault is delivered into nt!KiPageFault as the CPU would
(fixtures/images/README.md, "Delivering CPU exceptions") and the run stops when KeBugCheckEx is
reached. The emulator's code hook records the true call chain (every call and ret, and the
fault) with the registers at each call, so every frame the walker returns - RIP, Child-SP, the
restored non-volatile registers including XMM, the volatile registers recovered from the trap
frame - is compared with what really happened. The walk is also checked at *every instruction*
of the run, so prologs, epilogs, leaf functions, machine frames and SAVE_XMM128 frames are hit at
each of their offsets.

Then: the scan fallback (a driver's image hidden), trap-frame hints, loop protection, the x86
EBP walk through a KTRAP_FRAME, and the frame decoders. Unicorn is a test requirement: no skip.
"""
from __future__ import annotations

import random
import re
import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import capstone
import pefile
import pytest
import unicorn  # a test dependency: a missing unicorn must fail, not skip
from unicorn import x86_const as X

from kdshell.errors import MemoryNotPresent
from kdshell.stack.frames import (KEXCEPTION_FRAME_X64_19041, KTRAP_FRAME_X64_19041, decode_context_record,
                                  decode_kexception_frame, decode_ktrap_frame, decode_ktrap_frame_x86,
                                  plausible_ktrap_frame, trap_frame_of_machine_frame)
from kdshell.stack.scan import call_length_before, scan_for_return
from kdshell.stack.unwind_x64 import NONVOLATILE, VOLATILE, mapped_image_reader
from kdshell.stack.walk import Walker, walk_stack
from kdshell.stack.x86 import FpoData, walk_stack_x86

BIN = Path(__file__).resolve().parents[1] / "fixtures" / "images" / "bin"
GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "images" / "golden"
PAGE = 0x1000
MASK64 = 0xFFFF_FFFF_FFFF_FFFF

GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
UC_REG = {name: getattr(X, f"UC_X86_REG_{name.upper()}") for name in GPRS}
UC_REG.update({f"xmm{i}": getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)})
UC_REG.update(rip=X.UC_X86_REG_RIP, efl=X.UC_X86_REG_EFLAGS)


# ------------------------------------------------------------------------------------------
# Images, symbols and the module protocol


@dataclass
class Image:
    name: str
    path: Path
    pe: pefile.PE
    base: int
    size: int
    mapped: bytes
    publics: dict[str, int]

    def sym(self, name: str) -> int:
        return self.base + self.publics[name]


@lru_cache(maxsize=None)
def load_image(rel: str, pdb_golden: str) -> Image:
    path = BIN / rel
    pe = pefile.PE(str(path))
    base = pe.OPTIONAL_HEADER.ImageBase
    size = pe.OPTIONAL_HEADER.SizeOfImage
    mapped = pe.get_memory_mapped_image()
    mapped = mapped + b"\0" * (size - len(mapped))
    sections = [s.VirtualAddress for s in pe.sections]
    publics = {}
    text = (GOLDEN / pdb_golden).read_text()
    for m in re.finditer(r"S_PUB32 \[size = \d+\] `([^`]+)`\n\s+flags = [^,]+, addr = (\d+):(\d+)", text):
        seg, off = int(m.group(2)), int(m.group(3))
        if 1 <= seg <= len(sections):
            publics[m.group(1)] = sections[seg - 1] + off
    if hasattr(pe, "DIRECTORY_ENTRY_EXPORT"):
        for e in pe.DIRECTORY_ENTRY_EXPORT.symbols:
            if e.name:
                publics.setdefault(e.name.decode(), e.address)
    return Image(path.name, path, pe, base, size, bytes(mapped), publics)


X64_IMAGES = (("ntoskrnl.exe", "ntkrnlmp.pdb.pdbutil.txt"), ("hal.dll", "hal.pdb.pdbutil.txt"),
              ("mydrv.sys", "mydrv.pdb.pdbutil.txt"), ("storfilt.sys", "storfilt.pdb.pdbutil.txt"),
              ("kbdcrash.sys", "kbdcrash.pdb.pdbutil.txt"))


@dataclass
class Module:
    name: str
    base: int
    size: int
    image: object  # image reader or None


class Modules:
    """The walker's module protocol over the loaded images; `hide` drops an image (paged out).
    Function starts: the golden publics in executable sections (the PDBs are still there)."""

    def __init__(self, images: list[Image], hide: tuple[str, ...] = ()):
        self.list = [Module(i.name, i.base, i.size, None if i.name in hide else mapped_image_reader(i.mapped))
                     for i in images]
        self.starts = {i.base + rva for i in images for rva in i.publics.values()
                       if any(s.Characteristics & 0x20000000 and s.contains_rva(rva) for s in i.pe.sections)}

    def module_at(self, address: int):
        for m in self.list:
            if m.base <= address < m.base + m.size:
                return m
        return None

    def function_start(self, address: int) -> bool:
        return address in self.starts


# ------------------------------------------------------------------------------------------
# The machine: long mode with 4-level paging, images at their bases


class Machine:
    PHYS_TABLES = 0x0010_0000     # page tables live here (physical)
    PHYS_DATA = 0x0100_0000       # everything else is allocated from here

    def __init__(self, images: list[Image]):
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        self.uc.mem_map(self.PHYS_TABLES, 0x40_0000)
        self.next_table = self.PHYS_TABLES + PAGE
        self.pml4 = self.PHYS_TABLES
        self.next_data = self.PHYS_DATA
        self.pages: dict[int, int] = {}   # va page -> pa page
        self.images = {i.name: i for i in images}
        for img in images:
            self.map(img.base, img.size, img.mapped)
        self._fill_iats(images)

    # paging -------------------------------------------------------------------------------
    def _table(self, pa: int, index: int) -> int:
        entry = struct.unpack("<Q", self.uc.mem_read(pa + 8 * index, 8))[0]
        if entry & 1:
            return entry & 0x000F_FFFF_FFFF_F000
        new = self.next_table
        self.next_table += PAGE
        self.uc.mem_write(pa + 8 * index, struct.pack("<Q", new | 0x3))
        return new

    def map(self, va: int, size: int, data: bytes = b"") -> None:
        size = (size + PAGE - 1) & ~(PAGE - 1)
        pa = self.next_data
        self.uc.mem_map(pa, size)
        self.next_data += size
        for off in range(0, size, PAGE):
            v = va + off
            t = self.pml4
            for shift in (39, 30, 21):
                t = self._table(t, (v >> shift) & 0x1FF)
            self.uc.mem_write(t + 8 * ((v >> 12) & 0x1FF), struct.pack("<Q", (pa + off) | 0x3))
            self.pages[v >> 12] = (pa + off) >> 12
        if data:
            self.uc.mem_write(pa, bytes(data))

    def _pa(self, va: int) -> int:
        pfn = self.pages.get((va & MASK64) >> 12)
        if pfn is None:
            raise MemoryNotPresent(va, "not mapped in the test machine")
        return (pfn << 12) | (va & 0xFFF)

    def read(self, va: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            n = min(size, PAGE - (va & 0xFFF))
            out += self.uc.mem_read(self._pa(va), n)
            va += n
            size -= n
        return bytes(out)

    def write(self, va: int, data: bytes) -> None:
        while data:
            n = min(len(data), PAGE - (va & 0xFFF))
            self.uc.mem_write(self._pa(va), data[:n])
            va += n
            data = data[n:]

    def _fill_iats(self, images: list[Image]) -> None:
        for img in images:
            if not hasattr(img.pe, "DIRECTORY_ENTRY_IMPORT"):
                continue
            for dll in img.pe.DIRECTORY_ENTRY_IMPORT:
                target = self.images[dll.dll.decode()]
                for imp in dll.imports:
                    self.write(imp.address, struct.pack("<Q", target.sym(imp.name.decode())))

    def start_cpu(self) -> None:
        uc = self.uc
        uc.reg_write(X.UC_X86_REG_CR3, self.pml4)
        uc.reg_write(X.UC_X86_REG_CR4, 0x20 | 0x200 | 0x400)           # PAE, OSFXSR, OSXMMEXCPT
        uc.reg_write(X.UC_X86_REG_CR0, 0x80000001 | 0x2 | 0x10000)      # PG, PE, MP, WP


# ------------------------------------------------------------------------------------------
# Running a crash path and recording the truth


@dataclass
class Entry:
    ret: int          # the caller's RIP (return address, or the faulting RIP)
    sp: int           # the caller's Child-SP
    regs: dict        # the caller's registers at the call / fault
    trap: bool = False


@dataclass
class Run:
    machine: Machine
    modules: Modules
    stack_base: int
    stop_regs: dict = field(default_factory=dict)
    stop_truth: list = field(default_factory=list)
    checked: int = 0
    kinds: set = field(default_factory=set)


STACK_TOP = 0xFFFFF88000010000
STACK_SIZE = 0x8000
ENTRY_RSP = STACK_TOP - 0x108
KPCR = 0xFFFFF88000100000
KEBUGCHECKEX_STOP = "KeBugCheckEx"


def regs_of(uc) -> dict:
    return {name: uc.reg_read(reg) for name, reg in UC_REG.items()}


def truth_frames(regs: dict, shadow: list[Entry]) -> list[tuple[int, int, dict, bool]]:
    """[(rip, child_sp, registers, reached_through_trap)] innermost first, up to the null
    sentinel."""
    out = [(regs["rip"], regs["rsp"], regs, False)]
    for e in reversed(shadow):
        if e.ret == 0:
            break
        out.append((e.ret, e.sp, e.regs, e.trap))
    return out


def compare(walk, truth, where: str) -> None:
    got = [(f.ip, f.sp) for f in walk]
    want = [(t[0], t[1]) for t in truth]
    pairs = lambda frames: [(hex(a), hex(b)) for a, b in frames]  # noqa: E731
    assert got == want, f"{where}: walk {pairs(got)} != truth {pairs(want)}"
    assert walk.stop == "null return address", f"{where}: {walk.stop}"
    for i, (f, t) in enumerate(zip(walk, truth)):
        if i + 1 < len(truth):
            assert f.ret == truth[i + 1][0]
        else:
            assert f.ret == 0
        # every register the walker claims to know is the true one (at the call / the fault)
        for reg in f.known & (NONVOLATILE | VOLATILE):
            assert f.registers[reg] == t[2][reg], f"{where}: frame {i} {reg} {f.registers[reg]:#x} != {t[2][reg]:#x}"
        if f.how in ("unwind", "leaf", "trap"):
            assert NONVOLATILE <= f.known, f"{where}: frame {i} lost {sorted(NONVOLATILE - f.known)}"
        if f.how in ("unwind", "leaf"):
            # volatile registers are lost across a call, unless the callee pushed one (clang's
            # `push rax` to align the stack is a PUSH_NONVOL RAX)
            assert f.known & VOLATILE <= set(walk[i - 1].unwind.restored), f"{where}: frame {i}"
        if t[3] and f.number >= 2:  # through a trap frame the handler had built (frames.py)
            for reg in VOLATILE:
                assert reg in f.known and f.registers[reg] == t[2][reg], f"{where}: frame {i} {reg}"


def run_crash(images: list[Image], entry: int, args: tuple[int, ...], *, setup=None, check_every=True,
              hide: tuple[str, ...] = (), seed: int = 1) -> Run:
    m = Machine(images)
    uc = m.uc
    m.map(STACK_TOP - STACK_SIZE, STACK_SIZE)
    m.map(KPCR, 0x2000)
    m.start_cpu()
    uc.reg_write(X.UC_X86_REG_GS_BASE, KPCR)
    if setup:
        setup(m)
    nt = m.images["ntoskrnl.exe"]
    rng = random.Random(seed)
    for name in ("rbx", "rbp", "rsi", "rdi", "r12", "r13", "r14", "r15"):
        uc.reg_write(UC_REG[name], rng.getrandbits(64))
    for i in range(16):
        uc.reg_write(UC_REG[f"xmm{i}"], rng.getrandbits(128))
    rsp = ENTRY_RSP  # as a call leaves it (the ABI: RSP = 8 mod 16 at a function's first instruction)
    m.write(rsp, struct.pack("<Q", 0))   # the caller's return address: 0 ends every walk
    for reg, value in zip(("rcx", "rdx", "r8", "r9"), args):
        uc.reg_write(UC_REG[reg], value)
    uc.reg_write(UC_REG["rsp"], rsp)
    modules = Modules(images, hide)
    walker = Walker(m.read, modules)
    run = Run(m, modules, STACK_TOP)
    shadow: list[Entry] = [Entry(0, rsp + 8, {})]
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    kinds: dict[int, str] = {}
    stop_at = nt.sym(KEBUGCHECKEX_STOP)
    page_fault = nt.sym("KiPageFault")
    gp_fault = nt.sym("KiGeneralProtectionFault")

    def kind(address: int, size: int) -> str:
        k = kinds.get(address)
        if k is None:
            insn = next(cs.disasm(m.read(address, size), address))
            k = "call" if insn.mnemonic == "call" else "ret" if insn.mnemonic.startswith("ret") else ""
            kinds[address] = k
        return k

    def on_code(uc_, address, size, _):
        regs = regs_of(uc)
        if check_every:
            truth = truth_frames(regs, shadow)
            walk = walker.walk(regs, stack_base=STACK_TOP)
            compare(walk, truth, f"at {address:#x}")
            run.checked += 1
            run.kinds.update(f.how for f in walk)
        if address == stop_at:
            run.stop_regs = regs
            run.stop_truth = truth_frames(regs, shadow)
            uc.emu_stop()
            return
        k = kind(address, size)
        if k == "call":
            shadow.append(Entry(address + size, regs["rsp"], regs))
        elif k == "ret":
            top = shadow.pop()
            assert struct.unpack("<Q", m.read(regs["rsp"], 8))[0] == top.ret

    def on_intr(uc_, intno, _):
        regs = regs_of(uc)
        assert intno in (13, 14), f"unexpected exception {intno} at {regs['rip']:#x}"
        shadow.append(Entry(regs["rip"], regs["rsp"], regs, trap=True))
        sp = regs["rsp"] & ~0xF
        frame = struct.pack("<QQQQQQ", 0, regs["rip"], 0x10, regs["efl"] | 2, regs["rsp"], 0x18)
        sp -= len(frame)
        m.write(sp, frame)   # error code 0: a read of a not-present page, supervisor
        uc.reg_write(UC_REG["rsp"], sp)
        uc.reg_write(UC_REG["rip"], page_fault if intno == 14 else gp_fault)

    uc.hook_add(unicorn.UC_HOOK_CODE, on_code)
    uc.hook_add(unicorn.UC_HOOK_INTR, on_intr)
    uc.emu_start(entry, 0, count=200_000)
    assert run.stop_regs, "the crash path did not reach KeBugCheckEx"
    return run


def x64_images() -> list[Image]:
    return [load_image(name, pdb) for name, pdb in X64_IMAGES]


@pytest.fixture(scope="module")
def mydrv_run() -> Run:
    """mydrv scenario 1 without the boot: MyDrvStartScenario(1) -> MyDrvDispatchLevelWork
    (KfRaiseIrql to DISPATCH_LEVEL) -> MyDrvProcessQueue -> MyDrvReadRegister reads an unmapped
    address -> #PF -> KiPageFault -> MmAccessFault (0xD0000006) -> KiBugCheckDispatch ->
    KeBugCheckEx. Walked and checked at every instruction."""
    images = x64_images()
    mydrv = images[2]
    return run_crash(images, mydrv.sym("MyDrvStartScenario"), (1,))


REQUEST = 0xFFFFF88000200000


def storfilt_setup(m: Machine) -> None:
    m.map(REQUEST, 0x1000)
    samples = struct.pack("<8I", 3, 1, 4, 1, 5, 9, 2, 6)
    m.write(REQUEST, struct.pack("<IIQ", 0, 2, 0x10) + samples)   # Flags, Count, Descriptors=0x10
    nt = m.images["ntoskrnl.exe"]
    m.write(nt.sym("MmHighestUserAddress"), struct.pack("<Q", 0x7FFFFFFEFFFF))
    m.write(nt.sym("MmSystemRangeStart"), struct.pack("<Q", 0xFFFF800000000000))


@pytest.fixture(scope="module")
def storfilt_run() -> Run:
    """storfilt VALIDATE without the IRP: StorFiltProcessRequest -> StorFiltComputeStatistics
    (XMM6-10 saved) and StorFiltScratchTransform (8 KB frame) return, then
    StorFiltWalkDescriptors (asm, SAVE_NONVOL) -> StorFiltValidateDescriptor (a leaf without
    .pdata) reads 0x10 -> #PF -> KiPageFault -> KiExceptionDispatch (KEXCEPTION_FRAME, XMM6-15)
    -> KiDispatchException -> KeBugCheckEx (no current thread: 0x1E)."""
    images = x64_images()
    storfilt = images[3]
    return run_crash(images, storfilt.sym("StorFiltProcessRequest"), (REQUEST, REQUEST + 0x800),
                     setup=storfilt_setup, seed=2)


def kbdcrash_setup(m: Machine) -> None:
    storfilt_setup(m)
    m.write(REQUEST + 0x100, bytes([0x1D, 0x46, 0xC6, 0x46, 0xC6, 0x9D]))  # Ctrl, Scroll Lock x2


# ------------------------------------------------------------------------------------------
# The walker at every instruction of five crash paths


@pytest.mark.parametrize("path", ["mydrv-irql", "mydrv-null", "mydrv-noncanonical", "storfilt-validate",
                                  "kbdcrash-dpc"])
def test_walk_matches_the_emulator_at_every_instruction(path, request):
    images = x64_images()
    if path == "mydrv-irql":
        run = request.getfixturevalue("mydrv_run")
        expect = {"context", "unwind", "leaf", "trap"}
    elif path == "storfilt-validate":
        run = request.getfixturevalue("storfilt_run")
        expect = {"context", "unwind", "leaf", "trap"}
    elif path == "kbdcrash-dpc":
        # KbdCrashDpcRoutine -> KbdCrashProcessInput -> KbdCrashHandleScanCode ->
        # KbdCrashInitiateCrash (DbgPrint, then nt!KeBugCheck) -> KeBugCheckEx; -Os code
        run = run_crash(images, images[4].sym("KbdCrashDpcRoutine"), (0, REQUEST, REQUEST + 0x100, 0),
                        setup=kbdcrash_setup, seed=3)
        expect = {"context", "unwind"}
    else:
        # MyDrvProcessWorkItem(2 or 4) -> memset, MyDrvParseRecord -> MyDrvReadRecordLength
        # faults (#PF on NULL+4, #GP on a non-canonical pointer) -> KiPageFault /
        # KiGeneralProtectionFault -> KiExceptionDispatch -> KiDispatchException -> KeBugCheckEx
        scenario = 2 if path == "mydrv-null" else 4
        run = run_crash(images, images[2].sym("MyDrvProcessWorkItem"), (scenario,), setup=storfilt_setup, seed=scenario)
        expect = {"context", "unwind", "trap"}
    assert run.checked > 100
    assert expect <= run.kinds
    assert len(run.stop_truth) >= 5


def test_final_stack_of_the_irql_crash(mydrv_run):
    """The walk from KeBugCheckEx, as `k`/`kv`/`kf` will print it."""
    run = mydrv_run
    nt, mydrv = run.machine.images["ntoskrnl.exe"], run.machine.images["mydrv.sys"]
    walk = walk_stack(run.stop_regs, run.machine.read, run.modules, stack_base=STACK_TOP)
    compare(walk, run.stop_truth, "stop")
    assert [f.how for f in walk] == ["context", "unwind", "unwind", "trap", "unwind", "unwind", "unwind"]
    assert walk[0].ip == nt.sym("KeBugCheckEx") and walk[0].lookup_address == walk[0].ip
    assert walk[1].lookup_address == walk[1].ip - 1  # a return address: symbolise the call
    # KiPageFault pushed the machine frame: its Child-SP is the KTRAP_FRAME (README) and the
    # next frame is the faulting instruction, symbolised as is
    kipf = walk[2]
    assert nt.sym("KiPageFault") <= kipf.ip < nt.sym("KiPageFault") + 0x200
    assert kipf.trap_frame == kipf.sp == kipf.unwind.machine_frame - 0x168
    assert walk[3].lookup_address == walk[3].ip
    assert walk[3].ip == kipf.ret and mydrv.sym("MyDrvReadRegister") <= walk[3].ip
    for f in walk:
        assert f.home == struct.unpack("<4Q", run.machine.read(f.sp + 8, 32))
        assert f.module.name == ("ntoskrnl.exe" if f.number < 3 else "mydrv.sys")
    for a, b in zip(walk, walk[1:]):
        assert a.frame_size == b.sp - a.sp and a.ret == b.ip
    assert walk[-1].ret == 0 and walk[-1].frame_size == (ENTRY_RSP + 8) - walk[-1].sp  # above: the 0 slot
    # the faulting frame's volatile registers come from the trap frame
    fault = run.stop_truth[3][2]
    assert all(walk[3].registers[r] == fault[r] for r in ("rax", "rcx", "rdx", "r8", "r9", "r10", "r11"))


def test_ktrap_frame_decoding(mydrv_run):
    run = mydrv_run
    walk = walk_stack(run.stop_regs, run.machine.read, run.modules)
    tf = walk[2].trap_frame
    trap = decode_ktrap_frame(run.machine.read, tf)
    fault = run.stop_truth[3][2]
    assert (trap.registers["rip"], trap.registers["rsp"]) == (fault["rip"], fault["rsp"])
    for reg in ("rax", "rcx", "rdx", "r8", "r9", "r10", "r11", "rbp"):
        assert trap.registers[reg] == fault[reg] and reg in trap.known, reg
    for reg in ("rbx", "rsi", "rdi", "r12", "r13", "r14", "r15", "xmm6"):
        assert reg not in trap.known
    assert trap.registers["xmm3"] == fault["xmm3"]
    assert (trap.registers["cs"], trap.registers["ss"]) == (0x10, 0x18)
    assert trap.extra["FaultAddress"] == 0xFFFFF8A000BAD000 and trap.extra["PreviousIrql"] == 2
    assert plausible_ktrap_frame(trap)
    assert trap_frame_of_machine_frame(tf + KTRAP_FRAME_X64_19041["Rip"]) == tf
    # with other offsets (a PDB's), the same bytes decode the same way
    shifted = dict(KTRAP_FRAME_X64_19041)
    assert decode_ktrap_frame(run.machine.read, tf, shifted).registers == trap.registers


def test_kexception_frame_decoding(storfilt_run):
    """KiExceptionDispatch's Child-SP is its KEXCEPTION_FRAME (SAVE_NONVOLATILE at RSP)."""
    run = storfilt_run
    walk = walk_stack(run.stop_regs, run.machine.read, run.modules)
    nt = run.machine.images["ntoskrnl.exe"]
    dispatch = walk[2]
    assert dispatch.unwind.image_base + dispatch.unwind.function.begin == nt.sym("KiExceptionDispatch")
    ex = decode_kexception_frame(run.machine.read, dispatch.sp)
    fault = run.stop_truth[4][2]
    for reg in ("rbx", "rsi", "rdi", "r12", "r13", "r14", "r15") + tuple(f"xmm{i}" for i in range(6, 16)):
        assert ex.registers[reg] == fault[reg], reg
    assert ex.registers["rbp"] == walk[3].trap_frame + 0x80   # KiPageFault's RBP = TrapFrame + 0x80
    assert KEXCEPTION_FRAME_X64_19041["size"] == 0x140


def test_context_record_decoding():
    """.cxr: header.py's CONTEXT_AMD64 through a reader (offsets from formats.md §8)."""
    raw = bytearray(0x4D0)
    struct.pack_into("<Q", raw, 0xF8, 0xFFFFF80001001234)   # Rip
    struct.pack_into("<Q", raw, 0x98, 0xFFFFF88000001000)   # Rsp
    struct.pack_into("<Q", raw, 0x90, 0xB0B)                # Rbx
    struct.pack_into("<I", raw, 0x44, 0x10246)              # EFlags
    raw[0x1A0 + 0x60:0x1A0 + 0x70] = (0x66 << 64).to_bytes(16, "little")  # Xmm6
    ctx = decode_context_record(lambda a, n: bytes(raw[a - 0x1000:a - 0x1000 + n]), 0x1000)
    assert (ctx.registers["rip"], ctx.registers["rsp"], ctx.registers["rbx"]) == (0xFFFFF80001001234,
                                                                                  0xFFFFF88000001000, 0xB0B)
    assert ctx.registers["efl"] == 0x10246 and ctx.registers["xmm6"] == 0x66 << 64
    assert "rip" in ctx.known and "contextflags" not in ctx.known


# ------------------------------------------------------------------------------------------
# Fallbacks: scan, trap frame hints


def test_code_then_scan_when_a_driver_image_is_hidden(mydrv_run):
    """mydrv's image (headers/.pdata) is not available: nt unwinds to the faulting frame, then
    the frames in mydrv are found from their code (each function's way from the return address
    to its `ret`: forward.py), with the registers the epilogs restore; with the code not read,
    by scanning (return addresses right after calls), marked as guesses - and here both give
    exactly the true frames."""
    run = mydrv_run
    truth = [(t[0], t[1]) for t in run.stop_truth]
    modules = Modules(x64_images(), hide=("mydrv.sys",))
    walk = walk_stack(run.stop_regs, run.machine.read, modules, stack_base=STACK_TOP)
    assert [(f.ip, f.sp) for f in walk] == truth
    assert [f.how for f in walk] == ["context", "unwind", "unwind", "trap", "epilog", "epilog", "epilog"]
    assert not any(f.guess for f in walk) and walk.stop == "null return address"
    for f, t in zip(walk[4:], run.stop_truth[4:]):
        assert "rbp" in f.known and f.registers["rbp"] == t[2]["rbp"]   # popped by the epilog
        assert f.known <= NONVOLATILE | {"rip", "rsp"}
    walk = walk_stack(run.stop_regs, run.machine.read, modules, stack_base=STACK_TOP, decode=False)
    assert [(f.ip, f.sp) for f in walk] == truth
    assert [f.how for f in walk] == ["context", "unwind", "unwind", "trap", "scan", "scan", "scan"]
    assert [f.guess for f in walk] == [False] * 4 + [True] * 3
    for f in walk[4:]:
        assert f.known == {"rip", "rsp"}
        code = run.machine.read(f.ip - 8, 8)
        assert call_length_before(code) in (5, 6)
    assert walk.stop == "no return address found by scanning"
    # guessing switched off: the walk stops where unwinding stopped
    walk = walk_stack(run.stop_regs, run.machine.read, modules, scan=False, decode=False)
    assert len(walk) == 4 and walk.stop == "no unwind data for 0xfffff8000100111d"


def test_trap_frame_hint_when_the_kernel_image_is_hidden(storfilt_run):
    """nt's image is hidden: KeBugCheckEx's caller is found by the leaf rule (the context's RIP
    is at its first instruction, the return address at [RSP]), the handler frames by scanning and
    from their code, and a trap frame the caller knows (KTHREAD.TrapFrame, a bug check
    parameter, .trap) continues the walk at the faulting frame - KiPageFault's Child-SP is that
    trap frame - after which storfilt unwinds exactly, no longer a guess."""
    run = storfilt_run
    truth = [(t[0], t[1]) for t in run.stop_truth]
    full = walk_stack(run.stop_regs, run.machine.read, run.modules)
    tf = full[3].trap_frame
    modules = Modules(x64_images(), hide=("ntoskrnl.exe",))
    walk = walk_stack(run.stop_regs, run.machine.read, modules, trap_frames=[tf])
    assert [(f.ip, f.sp) for f in walk] == truth
    assert [f.how for f in walk] == ["context", "leaf", "scan", "epilog", "trap", "leaf", "unwind"]
    assert [f.guess for f in walk] == [False, True, True, True, False, False, False]
    assert walk[3].trap_frame == tf == walk[3].sp
    assert walk.stop == "null return address"
    # without the hint the scan cannot see the interrupted frame, and guesses past it
    walk = walk_stack(run.stop_regs, run.machine.read, modules)
    assert (truth[4] not in [(f.ip, f.sp) for f in walk]) and walk[-1].ip == truth[-1][0]
    assert all(f.guess for f in walk[1:])


def test_call_decoder_agrees_with_capstone_on_every_call():
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.skipdata = True
    calls = 0
    for img in x64_images():
        for sec in img.pe.sections:
            if not sec.Characteristics & 0x20000000:
                continue
            start = sec.VirtualAddress
            code = img.mapped[start:start + sec.Misc_VirtualSize]
            for insn in cs.disasm(code, start):
                end = insn.address + insn.size
                before = img.mapped[end - 8:end]
                if insn.mnemonic == "call":
                    calls += 1
                    assert call_length_before(before) == insn.size, f"{img.name} {insn.address:#x} {insn.op_str}"
                elif insn.mnemonic in ("ret", "push", "pop", "nop", "int3"):
                    # one-byte instructions after which no call ends
                    assert call_length_before(before[-1:]) is None
    assert calls > 200


@pytest.mark.parametrize("code, length", [
    ("E8 00 10 00 00", 5),              # call rel32
    ("FF D0", 2),                       # call rax
    ("41 FF D2", 3),                    # call r10 (KiSystemServiceCopyEnd)
    ("FF 15 00 10 00 00", 6),           # call [rip+disp32]
    ("48 FF 15 00 10 00 00", 7),        # rex.w call [rip+disp32]
    ("FF 10", 2),                       # call [rax]
    ("FF 50 08", 3),                    # call [rax+8]
    ("FF 54 24 08", 4),                 # call [rsp+8] (SIB, disp8)
    ("FF 90 00 01 00 00", 6),           # call [rax+0x100]
    ("FF 14 C5 00 10 00 00", 7),        # call [rax*8+disp32] (SIB, no base)
    ("41 FF 94 24 00 01 00 00", 8),     # call [r12+0x100]
    ("90 90 90 90", None),
    ("FF 20", None),                    # jmp [rax] (FF /4)
    ("FF 30", None),                    # push [rax] (FF /6)
    ("C3", None),
])
def test_call_decoder_forms(code, length):
    raw = bytes.fromhex(code.replace(" ", ""))
    assert call_length_before((b"\xcc" * 8 + raw)[-8:]) == length
    if length:
        insn = next(capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64).disasm(raw, 0))
        assert (insn.mnemonic, insn.size) == ("call", length)


def test_scan_for_return_is_bounded(mydrv_run):
    run = mydrv_run
    hit = scan_for_return(run.machine.read, run.modules, run.stop_regs["rsp"], max_bytes=8)
    assert hit is None or hit.slot < run.stop_regs["rsp"] + 8
    hit = scan_for_return(run.machine.read, run.modules, run.stop_regs["rsp"])
    assert (hit.return_address, hit.slot + 8) == run.stop_truth[1][:2]
    # unreadable stack ends the search quietly
    assert scan_for_return(run.machine.read, run.modules, STACK_TOP) is None


# ------------------------------------------------------------------------------------------
# Progress, loops and limits


def test_max_frames_and_stack_base(mydrv_run):
    run = mydrv_run
    walk = walk_stack(run.stop_regs, run.machine.read, run.modules, max_frames=3)
    assert len(walk) == 3 and walk.stop == "max frames" and walk[2].ret == run.stop_truth[3][0]
    walk = walk_stack(run.stop_regs, run.machine.read, run.modules, stack_base=run.stop_truth[5][1])
    assert len(walk) == 5 and "outside the stack" in walk.stop


def test_corrupt_saved_frame_pointer_cannot_send_the_walk_backwards(mydrv_run):
    """MyDrvReadRegister's saved RBP (MyDrvProcessQueue's frame pointer) is overwritten with a
    lower address: unwinding MyDrvProcessQueue would move RSP down. The walker refuses, notes
    it, and recovers the true frames above: from MyDrvProcessQueue's code (its epilog frees a
    fixed frame), or, with the code not read, by scanning forward."""
    run = mydrv_run
    good = walk_stack(run.stop_regs, run.machine.read, run.modules)
    slot = good[3].unwind.restored["rbp"]
    saved = run.machine.read(slot, 8)
    try:
        run.machine.write(slot, struct.pack("<Q", good[2].sp))
        walk = walk_stack(run.stop_regs, run.machine.read, run.modules)
        scanned = walk_stack(run.stop_regs, run.machine.read, run.modules, decode=False)
    finally:
        run.machine.write(slot, saved)
    truth = [(t[0], t[1]) for t in run.stop_truth]
    assert [(f.ip, f.sp) for f in walk] == truth
    assert any("move RSP down" in n for n in walk[4].notes)
    assert walk[5].how == "epilog" and not walk[5].guess
    assert [(f.ip, f.sp) for f in scanned[:5]] == truth[:5]
    assert any("not known" in n for n in scanned[5].notes)  # RBP is stale after a scanned frame
    assert scanned[5].how == "scan" and scanned[5].guess
    assert set((f.ip, f.sp) for f in scanned) <= set(truth)
    assert all(a.sp < b.sp for a, b in zip(scanned, scanned[1:]) if b.how != "trap")


def _fake():
    from test_unwind_x64 import MACH, PUSH, RBP, SETFP, FakeImage, Memory, slot, unwind_info
    return FakeImage, Memory, slot, unwind_info, PUSH, SETFP, MACH, RBP


def test_return_address_cycle_terminates():
    """Every saved RBP points back at the same frame and every return address is the same
    call site: unwinding alone would repeat (rip, rsp) forever."""
    FakeImage, Memory, slot, unwind_info, PUSH, SETFP, _, RBP = _fake()
    img, mem = FakeImage(), Memory()
    # f: push rbp (1); mov rbp, rsp (4)   body: call f (E8 rel32 at 0x1010) -> return at 0x1015
    img.add(0x1000, 0x1100, unwind_info([slot(4, SETFP, 0), slot(1, PUSH, RBP)], prolog=4, frame_reg=RBP),
            code=bytes.fromhex("554889E5") + b"\x90" * 12 + bytes.fromhex("E8EBFFFFFF"))
    s = 0xFFFFF88000A00000
    ret = img.va(0x1015)
    for i in range(0x40):
        mem.q(s + 16 * i, s, ret)       # saved rbp -> always the bottom frame; return -> f
    walk = walk_stack({"rip": ret, "rsp": s - 0x20, "rbp": s}, mem.read, img)
    sps = [f.sp for f in walk]
    assert sps == sorted(set(sps)) and len(walk) == len({(f.ip, f.sp) for f in walk})
    assert 2 <= len(walk) <= 0x41
    assert walk[1].how == "unwind" and any(f.how == "scan" for f in walk)
    assert "memory not present" in walk.stop or "no return address" in walk.stop or "scanned" in walk.stop
    walk = walk_stack({"rip": ret, "rsp": s - 0x20, "rbp": s}, mem.read, img, max_frames=7)
    assert len(walk) == 7 and walk.stop == "max frames"


def test_machine_frame_loops_terminate():
    """A trap handler whose machine frame points back at itself (same RIP and RSP), then one
    whose machine frames lead ever further down the stack."""
    FakeImage, Memory, slot, unwind_info, _, _, MACH, _ = _fake()
    img, mem = FakeImage(), Memory()
    img.add(0x1000, 0x1100, unwind_info([slot(0, MACH, 0)], prolog=0))
    h = img.va(0x1010)
    s = 0xFFFFF88000A00000
    mem.q(s, h, 0x10, 0x202, s, 0x18)
    walk = walk_stack({"rip": h, "rsp": s}, mem.read, img)
    assert len(walk) == 1 and walk.stop.startswith("loop")
    for i in range(20):
        mem.q(s - 0x100 * i, h, 0x10, 0x202, s - 0x100 * (i + 1), 0x18)
    walk = walk_stack({"rip": h, "rsp": s}, mem.read, img)
    assert walk.stop == "too many stack switches" and len(walk) <= 10


def test_unreadable_stack_and_rip_zero():
    FakeImage, Memory, slot, unwind_info, PUSH, _, _, _ = _fake()
    img, mem = FakeImage(), Memory()
    img.add(0x1000, 0x1100, unwind_info([slot(1, PUSH, 3)], prolog=1))
    walk = walk_stack({"rip": img.va(0x1050), "rsp": 0xFFFFF88000A00000}, mem.read, img)
    assert len(walk) == 1 and walk.stop.startswith("memory not present") and walk[0].ret is None
    assert walk[0].home == (None, None, None, None)
    walk = walk_stack({"rip": 0, "rsp": 0xFFFFF88000A00000}, mem.read, img)
    assert len(walk) == 0 and walk.stop == "RIP is 0"


# ------------------------------------------------------------------------------------------
# x86: the EBP chain through a KTRAP_FRAME (DbgEbp/DbgEip, DbgArgMark 0xBADB0D00)


X86_IMAGES = (("x86/ntoskrnl.exe", "x86-ntkrpamp.pdb.pdbutil.txt"), ("x86/hal.dll", "x86-hal.pdb.pdbutil.txt"),
              ("x86/mydrv.sys", "x86-mydrv.pdb.pdbutil.txt"))
X86_STACK_TOP = 0x8F010000
X86_KPCR = 0x8FF00000
X86_BAD = 0xE0BAD000     # mydrv!MyDrvBadAddress on x86: must not be mapped


def _x86_exports(img: Image) -> dict[str, int]:
    return {e.name.decode(): img.base + e.address for e in img.pe.DIRECTORY_ENTRY_EXPORT.symbols if e.name}


@pytest.fixture(scope="module")
def x86_run():
    """x86 mydrv scenario 1: MyDrvStartScenario(1) ... MyDrvReadRegister reads 0xE0BAD000 ->
    #PF -> _KiTrap0E (KTRAP_FRAME, EBP = trap frame) -> MmAccessFault -> KeBugCheckEx. Stops
    after KeBugCheckEx's `push ebp; mov ebp, esp`, and at its first byte."""
    images = [load_image(rel, golden) for rel, golden in X86_IMAGES]
    nt, hal, mydrv = images
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
    for img in images:
        uc.mem_map(img.base, img.size)
        uc.mem_write(img.base, img.mapped)
    exports = {"ntoskrnl.exe": _x86_exports(nt), "hal.dll": _x86_exports(hal)}
    for img in images:
        for dll in getattr(img.pe, "DIRECTORY_ENTRY_IMPORT", []):
            for imp in dll.imports:
                uc.mem_write(imp.address, struct.pack("<I", exports[dll.dll.decode()][imp.name.decode()]))
    uc.mem_map(X86_STACK_TOP - 0x8000, 0x8000)
    uc.mem_map(X86_KPCR, 0x3000)   # KPCR, GDT, page directory

    def descriptor(base, limit, access, flags):
        return struct.pack("<II", (limit & 0xFFFF) | (base & 0xFFFF) << 16,
                           (base >> 16 & 0xFF) | access << 8 | (limit >> 16 & 0xF) << 16 | flags << 20
                           | (base & 0xFF000000))
    gdt = bytearray(0x38)
    gdt[0x08:0x10] = descriptor(0, 0xFFFFF, 0x9A, 0xC)      # KGDT_R0_CODE
    gdt[0x10:0x18] = descriptor(0, 0xFFFFF, 0x92, 0xC)      # KGDT_R0_DATA
    gdt[0x30:0x38] = descriptor(X86_KPCR, 0xFFF, 0x92, 0x4)  # KGDT_R0_PCR
    uc.mem_write(X86_KPCR + 0x1000, bytes(gdt))
    uc.mem_write(X86_KPCR + 0x1C, struct.pack("<I", X86_KPCR))   # KPCR.SelfPcr
    uc.reg_write(X.UC_X86_REG_GDTR, (0, X86_KPCR + 0x1000, len(gdt) - 1, 0))
    for reg, sel in ((X.UC_X86_REG_CS, 8), (X.UC_X86_REG_SS, 0x10), (X.UC_X86_REG_DS, 0x10),
                     (X.UC_X86_REG_ES, 0x10), (X.UC_X86_REG_FS, 0x30)):
        uc.reg_write(reg, sel)
    # identity-mapped 4 MB pages, except the 4 MB around the bad address (so reading it is a #PF)
    pd = b"".join(struct.pack("<I", 0 if i == X86_BAD >> 22 else i << 22 | 0x83) for i in range(1024))
    uc.mem_write(X86_KPCR + 0x2000, pd)
    uc.reg_write(X.UC_X86_REG_CR3, X86_KPCR + 0x2000)
    uc.reg_write(X.UC_X86_REG_CR4, 0x10 | 0x200 | 0x400)
    uc.reg_write(X.UC_X86_REG_CR0, 0x80000001 | 2)
    esp = X86_STACK_TOP - 0x100
    uc.mem_write(esp, struct.pack("<II", 0, 1))   # return address 0, Scenario = 1 (cdecl)
    uc.reg_write(X.UC_X86_REG_ESP, esp)
    uc.reg_write(X.UC_X86_REG_EBP, 0)
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    names = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip")
    kebugcheckex = nt.sym("_KeBugCheckEx@20")
    shadow = [Entry(0, esp + 4, {})]
    stops = {}

    def regs():
        return {n: uc.reg_read(getattr(X, f"UC_X86_REG_{n.upper()}")) for n in names}

    def on_code(_, address, size, __):
        r = regs()
        if address in (kebugcheckex, kebugcheckex + 3):
            stops[address - kebugcheckex] = (r, truth_frames({"rip": r["eip"], "rsp": r["esp"]}, shadow))
            if address == kebugcheckex + 3:
                uc.emu_stop()
                return
        insn = next(cs.disasm(bytes(uc.mem_read(address, size)), address))
        if insn.mnemonic == "call":
            shadow.append(Entry(address + size, r["esp"], r))
        elif insn.mnemonic.startswith("ret"):
            shadow.pop()

    def on_intr(_, intno, __):
        r = regs()
        assert intno == 14
        shadow.append(Entry(r["eip"], r["esp"], r, trap=True))
        sp = r["esp"] - 16
        uc.mem_write(sp, struct.pack("<IIII", 0, r["eip"], 8, uc.reg_read(X.UC_X86_REG_EFLAGS) | 2))
        uc.reg_write(X.UC_X86_REG_ESP, sp)
        uc.reg_write(X.UC_X86_REG_EIP, nt.sym("_KiTrap0E"))

    uc.hook_add(unicorn.UC_HOOK_CODE, on_code)
    uc.hook_add(unicorn.UC_HOOK_INTR, on_intr)
    uc.emu_start(mydrv.sym("_MyDrvStartScenario"), 0, count=100_000)
    assert set(stops) == {0, 3}

    def read(address, size):
        try:
            return bytes(uc.mem_read(address, size))
        except unicorn.UcError:
            raise MemoryNotPresent(address, "not mapped in the test machine") from None

    return images, read, stops


def test_x86_trap_frame_walk(x86_run):
    images, read, stops = x86_run
    nt = images[0]
    r, truth = stops[3]
    walk = walk_stack_x86(r, read, stack_base=X86_STACK_TOP)
    assert [(f.ip, f.sp) for f in walk] == [(t[0], t[1]) for t in truth]
    assert walk.stop == "null return address" and walk[-1].ret == 0
    assert [f.how for f in walk] == ["context", "frame chain", "trap", "frame chain", "frame chain",
                                     "frame chain"]
    tf = walk[1].frame_pointer
    assert walk[1].trap_frame == tf and nt.sym("_KiTrap0E") < walk[1].ip < nt.sym("_KiTrap0E") + 0x100
    trap = decode_ktrap_frame_x86(read, tf)
    assert trap.extra["DbgArgMark"] == 0xBADB0D00
    fault = truth[2][2]
    assert (trap.extra["DbgEip"], trap.extra["DbgEbp"]) == (fault["eip"], fault["ebp"])
    assert trap.registers["esp"] == fault["esp"] == walk[2].sp       # kernel trap: &HardwareEsp
    for reg in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp"):
        assert walk[2].registers[reg] == fault[reg], reg
    assert walk[0].home == struct.unpack("<3I", read(walk[0].frame_pointer + 8, 12))   # kb: the arguments
    assert walk[0].home[0] == 0xD1                                                  # KeBugCheckEx(0xD1, ...)


def test_x86_fpo_hook_at_a_function_entry(x86_run):
    """Stopped on KeBugCheckEx's first byte (no EBP frame yet): the plain EBP chain would lose
    the caller; FPO data for the prolog puts the return address at ESP."""
    images, read, stops = x86_run
    nt = images[0]
    r, truth = stops[0]
    start = nt.sym("_KeBugCheckEx@20")
    plain = walk_stack_x86(r, read)
    assert [(f.ip, f.sp) for f in plain] != [(t[0], t[1]) for t in truth]
    fpo = {start: FpoData(start, 0x40, locals=0, params=5, prolog=3, regs=0, uses_bp=True)}
    walk = walk_stack_x86(r, read, lambda a: next((d for s, d in fpo.items() if s <= a < s + d.size), None))
    assert [(f.ip, f.sp) for f in walk] == [(t[0], t[1]) for t in truth]
    assert walk[1].how == "unwind"


def test_x86_fpo_frame_without_ebp():
    """An FPO function (fUseBP = 0) with 2 dwords of locals and 1 saved register: the return
    address is at ESP + 4 * (locals + regs); EBP is left alone."""
    stack = {0x1000 + 4 * i: v for i, v in enumerate([0x11, 0x22, 0x33, 0x80401234, 0xAA, 0x2000, 0x80405678])}
    stack[0x2000] = 0
    stack[0x2004] = 0

    def read(address, size):
        if any(a not in stack for a in range(address, address + size, 4)):
            raise MemoryNotPresent(address, "not in the test stack")
        return b"".join(struct.pack("<I", stack[a]) for a in range(address, address + size, 4))

    fpo = FpoData(0x80500000, 0x100, locals=2, params=1, prolog=4, regs=1, uses_bp=False)
    walk = walk_stack_x86({"eip": 0x80500010, "esp": 0x1000, "ebp": 0x1014}, read,
                          lambda a: fpo if 0x80500000 <= a < 0x80500100 else None)
    assert [(f.ip, f.sp, f.how) for f in walk] == [(0x80500010, 0x1000, "context"), (0x80401234, 0x1010, "unwind"),
                                                   (0x80405678, 0x101C, "frame chain")]
    assert walk.stop == "null return address"
