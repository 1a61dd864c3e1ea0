"""The ARM64 test images (fixtures/images/bin/arm64): the fixture kernel, HAL and drivers built
with clang for aarch64-pc-windows-msvc and lld-link /machine:arm64, with real .pdata/.xdata and
PDBs; and kdshell's ARM64 unwinder stepped through their code under Unicorn's ARM64 CPU.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pefile
import pytest

from tests.test_fixture_images import sums

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BIN = FIXTURES / "images" / "bin"
ARM64 = BIN / "arm64"
IMAGES = {"ntoskrnl.exe": "ntkrnlmp.pdb", "hal.dll": "hal.pdb", "mydrv.sys": "mydrv.pdb",
          "kbdcrash.sys": "kbdcrash.pdb", "storfilt.sys": "storfilt.pdb"}


def test_arm64_images_are_listed_in_the_sums_and_match():
    recorded = sums(BIN / "SHA256SUMS")
    names = {f"arm64/{n}" for pair in IMAGES.items() for n in pair}
    assert names <= set(recorded)
    for name in names:
        assert hashlib.sha256((BIN / name).read_bytes()).hexdigest() == recorded[name], name


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_arm64_images_are_arm64_pe_with_exception_data_and_a_pdb(image):
    pe = pefile.PE(str(ARM64 / image), fast_load=False)
    assert pe.FILE_HEADER.Machine == 0xAA64
    cv = [d for d in pe.DIRECTORY_ENTRY_DEBUG if d.struct.Type == 2][0].entry
    assert cv.CvSignature == b"RSDS"
    assert cv.PdbFileName.rstrip(b"\0").decode() == IMAGES[image]
    exc = pe.OPTIONAL_HEADER.DATA_DIRECTORY[3]  # IMAGE_DIRECTORY_ENTRY_EXCEPTION: 8-byte ARM64 entries
    assert exc.VirtualAddress and exc.Size and exc.Size % 8 == 0


@pytest.mark.toolchain
def test_arm64_rebuild_gives_the_committed_bytes(tmp_path):
    tools = ("clang", "lld-link", "llvm-dlltool", "llvm-nm", "llvm-pdbutil", "llvm-readobj", "patch")
    if not all(shutil.which(t) for t in tools):
        pytest.skip("clang/lld toolchain not installed (apt-get install clang lld llvm patch)")
    if "version 14." not in subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout:
        pytest.skip("the committed images were built with clang 14")
    copy = tmp_path / "fixtures"
    shutil.copytree(FIXTURES / "images" / "src", copy / "images" / "src")
    shutil.copy(FIXTURES / "build.sh", copy / "build.sh")
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "KDFIX_SKIP_X86": "1"}
    subprocess.run(["bash", str(copy / "build.sh")], check=True, capture_output=True, timeout=600, env=env)
    built = sums(copy / "images" / "bin" / "SHA256SUMS")
    recorded = sums(BIN / "SHA256SUMS")
    arm64 = {n: d for n, d in recorded.items() if n.startswith("arm64/")}
    assert arm64 and {n: built.get(n) for n in arm64} == arm64
    for golden in sorted((FIXTURES / "images" / "golden").glob("arm64-*")):
        assert (copy / "images" / "golden" / golden.name).read_text() == golden.read_text(), golden.name


# -- the ARM64 machine run and kdshell's ARM64 unwinder against what executed -------------------------

from kdshell.errors import KdError  # noqa: E402
from kdshell.stack.unwind_arm64 import Arm64Step, Arm64Unwinder  # noqa: E402

RUN_CHAINS = {  # the functions each scenario's chain must hold, innermost first (fixtures/images/README.md)
    "d1": ["nt!KeBugCheckEx", "nt!KiBugCheckDispatch", "nt!KiSynchronousException", "mydrv!MyDrvReadRegister",
           "mydrv!MyDrvProcessQueue", "mydrv!MyDrvDispatchLevelWork", "mydrv!MyDrvStartScenario", "mydrv!DriverEntry",
           "nt!IopLoadDriverImage", "nt!IopInitializeBootDrivers", "nt!Phase1Initialization",
           "nt!PspSystemThreadStartup", "nt!KiStartSystemThread"],
    "7e": ["nt!KeBugCheckEx", "nt!PspUnhandledExceptionInSystemThread", "nt!RtlDispatchException",
           "nt!KiDispatchException", "nt!KiExceptionDispatch", "nt!KiSynchronousException",
           "mydrv!MyDrvReadRecordLength", "mydrv!MyDrvParseRecord", "mydrv!MyDrvProcessWorkItem",
           "mydrv!MyDrvWorkerThread", "nt!PspSystemThreadStartup", "nt!KiStartSystemThread"],
    "7e-plain": ["nt!KeBugCheckEx", "nt!PspUnhandledExceptionInSystemThread", "nt!RtlDispatchException",
                 "nt!KiDispatchException", "nt!KiExceptionDispatch", "nt!KiSynchronousException",
                 "mydrv!MyDrvParseRecord", "mydrv!MyDrvHandleIoctl", "mydrv!MyDrvDispatchDeviceControl",
                 "nt!IofCallDriver", "storfilt!StorFiltForwardToMyDrv", "storfilt!StorFiltDispatchDeviceControl",
                 "nt!IofCallDriver", "storfilt!StorFiltSelfTestThread", "nt!PspSystemThreadStartup",
                 "nt!KiStartSystemThread"],
    "e2": ["nt!KeBugCheckEx", "nt!KeBugCheck", "kbdcrash!KbdCrashInitiateCrash", "kbdcrash!KbdCrashHandleScanCode",
           "kbdcrash!KbdCrashProcessInput", "nt!KiExecuteAllDpcs", "nt!KiRetireDpcList", "nt!KiIdleLoop",
           "nt!KiSystemStartup"],
    # then the user-mode frames: ntdll's stub at the svc ("syscall"), stortool.exe's program ("user")
    "3b": ["nt!KeBugCheckEx", "nt!KiSystemServiceHandler", "nt!RtlDispatchException", "nt!KiDispatchException",
           "nt!KiExceptionDispatch", "nt!KiSynchronousException", "storfilt!StorFiltValidateDescriptor",
           "storfilt!StorFiltWalkDescriptors", "storfilt!StorFiltProcessRequest",
           "storfilt!StorFiltDispatchDeviceControl", "nt!IopSynchronousServiceTail", "nt!IopXxxControlFile",
           "nt!NtDeviceIoControlFile", "nt!KiSystemService"],
}
USER_KINDS = ("syscall", "user")


def kernel_part(chain):
    """The chain's kernel frames: everything before the first user-mode one."""
    return [f for f in chain if f["kind"] not in USER_KINDS]


def walked_part(chain):
    """What k shows of a chain: the kernel frames and the interrupted user pc (the syscall frame;
    kdshell, like WinDbg without user symbols, stops there), as on x64."""
    return kernel_part(chain) + [f for f in chain if f["kind"] == "syscall"]


class _Module:
    def __init__(self, img):
        self.base, self.size = img.base, img.size
        self.image = lambda rva, n: bytes(img.mapped[rva:rva + n])


class _Modules:
    """kdshell's module protocol over the run's images (module_at, function_start)."""

    def __init__(self, run):
        self.mods = [_Module(img) for img in run.images.values()]

    def module_at(self, address):
        return next((m for m in self.mods if m.base <= address < m.base + m.size), None)

    def function_start(self, address):
        return False


def _unwinder(run):
    def read(address, size):
        try:
            return run.read(address, size)
        except KeyError as exc:
            raise KdError(str(exc)) from None
    return Arm64Unwinder(read, _Modules(run))


def _context(raw: bytes) -> dict[str, int]:
    """An ARM64 CONTEXT decoded here by its documented offsets (x0 at 8, fp/lr/sp/pc at 0xF0)."""
    regs = {f"x{i}": int.from_bytes(raw[8 + 8 * i:16 + 8 * i], "little") for i in range(29)}
    for i, name in enumerate(("fp", "lr", "sp", "pc")):
        regs[name] = int.from_bytes(raw[0xF0 + 8 * i:0xF8 + 8 * i], "little")
    return regs


@pytest.fixture(scope="module")
def runs():
    from fixtures.machine.arm64run import SCENARIOS_ARM64, Arm64Run

    out = {}
    for name, scenario in SCENARIOS_ARM64.items():
        run = Arm64Run(scenario)
        assert run.boot() == "HalHaltSystem wfi"
        out[name] = run
    return out


@pytest.mark.parametrize("name", sorted(RUN_CHAINS))
def test_arm64_run_crashes_with_the_scenario_bug_check_and_chain(runs, name):
    from fixtures.machine.arm64run import SCENARIOS_ARM64

    run = runs[name]
    code, params = run.bugcheck
    assert code == SCENARIOS_ARM64[name].expect_code
    chain = run.chain()
    assert [f["function"].split("+")[0] for f in kernel_part(chain)] == RUN_CHAINS[name]
    if name == "3b":  # SYSTEM_SERVICE_EXCEPTION(C0000005, faulting pc, &CONTEXT, 0); then the svc and its caller
        trap = next(f for f in chain if f["kind"] == "trap")
        assert params[0] == 0xC0000005 and params[1] == trap["pc"] and params[3] == 0
        assert run.exceptions[0]["far"] == 0x10
        ctx = _context(run.read(params[2], 0x390))  # the CONTEXT KiDispatchException built: the faulting frame
        assert (ctx["pc"], ctx["sp"]) == (trap["pc"], trap["sp"])
        u = run.user
        assert [(f["kind"], f["pc"], f["sp"]) for f in chain[-2:]] == [
            ("syscall", u["user_pc"], u["user_sp"]), ("user", u["exe_base"] + 0x1058, u["user_sp"])]
        assert run.read(u["user_pc"] - 4, 4) == (0xD4000001 | 7 << 5).to_bytes(4, "little")  # svc #7
    else:
        assert len(kernel_part(chain)) == len(chain)
    if name == "d1":  # DRIVER_IRQL_NOT_LESS_OR_EQUAL(address, IRQL 2, read, pc of the faulting load)
        trap = next(f for f in chain if f["kind"] == "trap")
        assert params == (0xFFFFF8A000BAD000, 2, 0, trap["pc"]) and run.exceptions[0]["far"] == params[0]
    if name in ("7e", "7e-plain"):  # C0000005 at the faulting pc
        assert params[:2] == (0xC0000005, next(f for f in chain if f["kind"] == "trap")["pc"])


@pytest.mark.parametrize("name", sorted(RUN_CHAINS))
def test_arm64_unwind_from_the_bug_check_context_recovers_every_executed_frame(runs, name):
    """kdshell's ARM64 unwinder, stepped from the CONTEXT KeBugCheckEx saved in the KPRCB, gives
    every executed frame's pc and sp, through the KTRAP_FRAME (MSFT_OP_TRAP_FRAME) of the fault."""
    run = runs[name]
    unwinder = _unwinder(run)
    ctx = _context(run.bugcheck_context())
    chain = walked_part(run.chain())  # 3b: up to the user pc (no user modules to unwind its leaf stub by)
    assert (ctx["pc"], ctx["sp"]) == (chain[0]["pc"], chain[0]["sp"])
    known, interrupted = frozenset(ctx), True
    for want in chain[1:]:
        step = unwinder.step(ctx, known, interrupted)
        assert isinstance(step, Arm64Step), (want["function"], step)
        assert (step.regs["pc"], step.regs["sp"]) == (want["pc"], want["sp"]), want["function"]
        assert (step.how == "trap") == (want["kind"] in ("trap", "syscall"))
        ctx, known, interrupted = step.regs, step.known, step.how == "trap"


def _excluded(run, pc: int) -> bool:
    """Instructions where no unwinder can know the caller: the trap handler before its KTRAP_FRAME
    is complete (the state is still in registers being stored), and SwapContext between the
    switch of KPRCB.CurrentThread and of sp (the stack belongs to neither thread's record)."""
    if not hasattr(run, "_windows"):
        def find(function: str, text: str) -> int:  # the address of an instruction of `function`
            start = run.sym[function]
            return next(i.address for i in run.cs.disasm(run.read(start, 0x200), start)
                        if f"{i.mnemonic} {i.op_str}" == text)
        trap = run.sym["nt!KiSynchronousException"]
        service = run.sym["nt!KiSystemService"]
        run._windows = ((trap, find("nt!KiSynchronousException", "stp w2, w3, [sp, #0x90]")),  # Spsr/Esr: the last
                        (service, find("nt!KiSystemService", "stp w12, w13, [x9, #0x90]")),
                        (find("nt!SwapContext", "str x1, [x10, #8]") + 4, find("nt!SwapContext", "mov sp, x9")))
    return any(lo <= pc <= hi for lo, hi in run._windows)


@pytest.mark.parametrize("name,module", [("d1", "mydrv"), ("7e", "mydrv"), ("e2", "kbdcrash"), ("d1", "nt"),
                                         ("e2", "nt"), ("7e-plain", "storfilt"), ("7e-plain", "mydrv"),
                                         ("3b", "nt"), ("3b", "storfilt")])
def test_arm64_unwind_at_every_executed_instruction(name, module):
    """At every instruction the CPU executes in `module` (prologs, bodies, epilogs, leaves), kdshell's
    unwind of the live registers gives the caller's pc and sp the shadow call stack recorded."""
    from unicorn import UC_HOOK_CODE

    from fixtures.machine.arm64run import SCENARIOS_ARM64, Arm64Run

    run = Arm64Run(SCENARIOS_ARM64[name])
    unwinder = _unwinder(run)
    img = run.images[module]
    text = next(s for s in img.sections if s.name == ".text")
    checked, wrong = [0], []

    def on_code(uc, pc, size, _data):
        frames = run._frames()
        if not frames or _excluded(run, pc):
            return
        ctx = run.registers()
        step = unwinder.step(ctx, frozenset(ctx), True)
        got = (step.regs["pc"], step.regs["sp"]) if isinstance(step, Arm64Step) else step
        checked[0] += 1
        if got != (frames[-1].pc, frames[-1].sp):
            wrong.append((run.sym.describe(pc), got, frames[-1]))

    run.uc.hook_add(UC_HOOK_CODE, on_code, begin=img.base + text.rva, end=img.base + text.rva + text.size - 1)
    run.boot()
    assert checked[0] > 100
    assert not wrong, wrong[:5]


# -- the ARM64 machine's dumps read by kdshell, checked against the run's truth -----------------------

import json  # noqa: E402
import re  # noqa: E402

import kdshell  # noqa: E402

DUMP_KINDS = ("full", "bitmap", "small")


@pytest.fixture(scope="module")
def arm64_set(tmp_path_factory):
    from fixtures.machine.arm64dump import build_arm64_set

    index = build_arm64_set(tmp_path_factory.mktemp("arm64set"))
    return {name: (entry, json.loads(Path(entry["truth"]).read_text())) for name, entry in index.items()}


def _open(path):
    return kdshell.open(path, symbol_path=str(ARM64), image_path="")


def _hex(text: str) -> int:
    return int(text.replace("`", ""), 16)


@pytest.mark.parametrize("kind", DUMP_KINDS)
@pytest.mark.parametrize("name", sorted(RUN_CHAINS))
def test_arm64_dump_bugcheck_registers_stack_and_modules(arm64_set, name, kind):
    entry, truth = arm64_set[name]
    chain = walked_part(truth["call_chain"])
    with _open(entry[kind]) as s:
        out = s.capture(".bugcheck").splitlines()
        assert out[0] == f"Bugcheck code {truth['bugcheck']['code']:08X}"
        assert [_hex(w) for w in out[1].split()[1:]] == truth["bugcheck"]["parameters"]
        # r: pc/sp of KeBugCheckEx's entry; lr/fp its caller's (the first call frame's return address)
        for reg, want in (("pc", chain[0]["pc"]), ("sp", chain[0]["sp"]), ("lr", chain[1]["pc"]),
                          ("fp", truth["context"]["fp"])):
            assert _hex(s.capture(f"r {reg}").strip().split("=")[1]) == want, reg
        # k: every frame's Child-SP and the next frame's pc (RetAddr) as executed
        rows = [line for line in s.capture("k").splitlines()[1:] if line.strip()]
        assert len(rows) == len(chain)
        for i, row in enumerate(rows):
            child_sp, ret, site = row.split()[:3]
            assert _hex(child_sp) == chain[i]["sp"], row
            assert _hex(ret) == (chain[i + 1]["pc"] if i + 1 < len(chain) else 0), row
            if chain[i]["kind"] == "syscall":  # the user pc, printed bare (no user module list)
                assert site == f"0x{chain[i]['pc'] >> 32:08x}`{chain[i]['pc'] & 0xFFFFFFFF:08x}", row
            else:
                assert site.split("+")[0] == chain[i]["function"].split("+")[0], row
        # lm: the loaded modules the builder listed
        lm = s.capture("lm").splitlines()[1:]
        listed = {line.split()[2]: (_hex(line.split()[0]), _hex(line.split()[1])) for line in lm if line.strip()}
        assert listed == {m["short"]: (m["base"], m["base"] + m["size"]) for m in truth["modules"]}


@pytest.mark.parametrize("kind", DUMP_KINDS)
@pytest.mark.parametrize("name", sorted(RUN_CHAINS))
def test_arm64_dump_u_and_analyze(arm64_set, name, kind):
    entry, truth = arm64_set[name]
    pc = truth["call_chain"][0]["pc"]
    with _open(entry[kind]) as s:
        u = s.capture("u @pc L1").splitlines()
        assert u[0] == "nt!KeBugCheckEx:"
        assert _hex(u[1].split()[0]) == pc
        code = int.from_bytes(ARM64_IMAGE_BYTES("ntoskrnl.exe", pc, truth), "little")
        assert int(u[1].split()[1], 16) == code
        analysis = s.capture("!analyze -v")
        assert re.search(r"OSPLATFORM_TYPE:\s+arm64", analysis)
        culprit = truth["culprit"]
        if culprit:
            assert re.search(rf"IMAGE_NAME:\s+{re.escape(culprit)}", analysis)


def ARM64_IMAGE_BYTES(file: str, va: int, truth: dict) -> bytes:
    """4 bytes of the committed image at `va` (read from the file, not from the dump)."""
    pe = pefile.PE(str(ARM64 / file), fast_load=True)
    rva = va - pe.OPTIONAL_HEADER.ImageBase
    return pe.get_data(rva, 4)


@pytest.mark.parametrize("kind", ("full", "bitmap"))
def test_arm64_pte_of_driver_text_and_data(arm64_set, kind):
    """!pte decodes the builder's descriptors: mydrv's .text executable at EL1 only (UXN), its
    .data read/write and never executable (PXN|UXN), nt on a 2 MiB block."""
    entry, truth = arm64_set["d1"]
    pe = pefile.PE(str(ARM64 / "mydrv.sys"), fast_load=True)
    base = pe.OPTIONAL_HEADER.ImageBase
    sections = {s.Name.rstrip(b"\0").decode(): base + s.VirtualAddress for s in pe.sections}
    entries = {t["va"]: t for t in truth["translations"]}
    with _open(entry[kind]) as s:
        text = s.capture(f"!pte {sections['.text']:x}")
        data = s.capture(f"!pte {sections['.data']:x}")
        nt = s.capture(f"!pte {truth['modules'][0]['base'] + 0x1000:x}")
    for out, va in ((text, sections[".text"]), (data, sections[".data"])):
        contains = out.splitlines()[2].split()
        assert _hex(contains[-1]) == entries[va]["entry"]
    assert entries[sections[".text"]]["entry"] >> 53 & 3 == 0b10  # UXN, not PXN
    assert "execute: EL1 yes, EL0 no" in text
    assert entries[sections[".data"]]["entry"] >> 53 & 3 == 0b11  # PXN and UXN
    assert "EL1 read/write" in data and "execute: EL1 no (PXN)" in data
    assert "LARGE PAGE" in nt and entries[truth["modules"][0]["base"]]["level"] == "PDE"


def test_arm64_small_dump_is_an_arm64_triage_dump(arm64_set):
    entry, truth = arm64_set["7e"]
    with _open(entry["small"]) as s:
        assert "arm64" in s.capture("!analyze -v")
        rows = [line for line in s.capture("k").splitlines()[1:] if line.strip()]
        assert _hex(rows[-1].split()[0]) == truth["call_chain"][-1]["sp"]


@pytest.mark.parametrize("kind", ("full", "bitmap"))
def test_kdshell_translates_every_page_the_arm64_builder_mapped(arm64_set, kind):
    """kdshell's one walk (ARM64 tables from the header's DirectoryTableBase) gives the physical
    page the builder put behind every mapped VA: 4 KiB pages and the nt/hal 2 MiB blocks."""
    from kdshell.dumpfile.dump import open_dump
    from kdshell.session import Session

    entry, truth = arm64_set["d1"]
    with open_dump(entry[kind]) as d:
        space = Session(d).spaces.space(truth["dtb"])
        for x in truth["translations"]:
            assert space.translate(x["va"] + 0x18) == x["pa"] + 0x18, hex(x["va"])
    assert len(truth["translations"]) > 1000


def test_arm64_set_is_deterministic(tmp_path, arm64_set):
    """The same sources give the same dumps and truth, byte for byte."""
    from fixtures.machine.arm64dump import build_arm64_set

    again = build_arm64_set(tmp_path, ["d1"])
    first, _ = arm64_set["d1"]
    for kind, path in again["d1"].items():
        assert hashlib.sha256(Path(path).read_bytes()).digest() == hashlib.sha256(Path(first[kind]).read_bytes()).digest(), kind


@pytest.mark.parametrize("name", ("d1", "7e"))
def test_arm64_machine_objects_are_real_enough_for_process_and_thread(arm64_set, name):
    """The kernel made them: the System process (pid 4) on PsActiveProcessHead with its threads,
    the crashing thread (KPRCB.CurrentThread) among them, Running; the others Ready or Waiting. These are
    the facts !process/!thread on ARM64 must show."""
    _, truth = arm64_set[name]
    system = [p for p in truth["processes"] if p["name"] == "System"]
    assert len(system) == 1 and system[0]["pid"] == 4
    threads = {t["ethread"]: t for t in system[0]["threads"]}
    assert truth["current_thread"] in threads and threads[truth["current_thread"]]["state"] == 2  # Running
    assert all(t["state"] in (1, 5) for e, t in threads.items() if e != truth["current_thread"])  # Ready, Waiting


@pytest.mark.parametrize("kind", DUMP_KINDS)
@pytest.mark.parametrize("name", ("d1", "7e", "7e-plain"))
def test_arm64_process_and_thread_commands_match_the_machine(arm64_set, name, kind):
    """!process 0 0 lists the System process the kernel made, !thread shows the crashing thread
    (KPRCB.CurrentThread) with its Cid, running on processor 0 - read through the ARM64 PDB types
    the images carry (complete, kernel and small dumps alike)."""
    entry, truth = arm64_set[name]
    system = next(p for p in truth["processes"] if p["name"] == "System")
    current = next(t for t in system["threads"] if t["ethread"] == truth["current_thread"])
    with _open(entry[kind]) as s:
        processes = s.capture("!process 0 0")
        thread = s.capture("!thread").splitlines()[0]
    assert f"PROCESS {system['eprocess']:x}" in processes and "Image: System" in processes
    assert re.search(rf"Cid: {system['pid']:04x}\b", processes)
    assert thread.startswith(f"THREAD {truth['current_thread']:x}  Cid {system['pid']:04x}.{current['tid']:04x}")
    assert thread.endswith("RUNNING on processor 0")


@pytest.mark.parametrize("kind", DUMP_KINDS)
@pytest.mark.parametrize("name", sorted(RUN_CHAINS))
def test_arm64_irql_is_the_one_the_bug_check_interrupted(arm64_set, name, kind):
    """KeBugCheckEx saves the IRQL it interrupted in KPRCB.DebuggerSavedIRQL (ARM64 has no CR8):
    DISPATCH_LEVEL for d1 (the bug check's own P2) and e2 (a DPC), PASSIVE_LEVEL in the threads."""
    entry, truth = arm64_set[name]
    want = {"d1": truth["bugcheck"]["parameters"][1], "e2": 2}.get(name, 0)
    assert truth["irql"] == want
    with _open(entry[kind]) as s:
        assert s.capture("!irql").strip().startswith(f"Debugger saved IRQL for processor 0x0 -- {want} (")


# -- 0x3B: the system service from user mode (fixtures/machine/arm64user.py) -----------------------

def _regs(s) -> dict[str, int]:
    """`r`'s register dump as a dict (WinDbg's ARM64 layout: name=value pairs)."""
    return {m.group(1): int(m.group(2), 16) for m in re.finditer(r"\b(x\d+|fp|lr|sp|pc)=([0-9a-f]{16})", s.capture("r"))}


@pytest.mark.parametrize("kind", DUMP_KINDS)
def test_arm64_3b_cxr_gives_the_faulting_frame_and_its_stack(arm64_set, kind):
    """`.cxr P3` (the CONTEXT KiDispatchException built from the KTRAP_FRAME and KEXCEPTION_FRAME)
    gives the faulting load in storfilt with the pc/sp the CPU faulted at, and k from it the
    executed frames down to the system-service entry and the user pc the svc left."""
    entry, truth = arm64_set["3b"]
    chain = walked_part(truth["call_chain"])
    trap = next(i for i, f in enumerate(chain) if f["kind"] == "trap")
    p3 = truth["bugcheck"]["parameters"][2]
    with _open(entry[kind]) as s:
        out = s.capture(f".cxr {p3:x}")
        assert "storfilt!StorFiltValidateDescriptor+0x" in out
        regs = _regs(s)
        assert (regs["pc"], regs["sp"]) == (chain[trap]["pc"], chain[trap]["sp"])
        assert regs["x0"] == 0x10  # the descriptor pointer it loaded from (the fault address)
        rows = [line.split() for line in s.capture("k").splitlines()[1:] if line.strip()]
        assert [(_hex(r[0]), r[2].split("+")[0]) for r in rows] == \
            [(f["sp"], f["function"].split("+")[0] if f["kind"] != "syscall" else r[2])
             for f, r in zip(chain[trap:], rows)]
        assert len(rows) == len(chain) - trap
        s.capture(".cxr")


@pytest.mark.parametrize("kind", ("full", "bitmap"))
def test_arm64_3b_trap_frame_into_user_mode(arm64_set, kind):
    """KTHREAD.TrapFrame is the KTRAP_FRAME nt!KiSystemService built from the svc: `.trap` on it
    shows the user state at EL0 (pc after the svc in ntdll's stub, sp_el0, lr in stortool.exe,
    x18 = the TEB, x0-x7 the NtDeviceIoControlFile arguments). The complete dump has the user page
    (the svc is there); the kernel dump has no user pages."""
    entry, truth = arm64_set["3b"]
    u = truth["user"]
    with _open(entry[kind]) as s:
        got = re.search(r"TrapFrame\s+: 0x([0-9a-f`]+)", s.capture(f"dt nt!_KTHREAD {u['thread']:x} TrapFrame"))
        assert got and _hex(got.group(1)) == u["trap_frame"]
        out = s.capture(f".trap {u['trap_frame']:x}")
        assert "EL0" in out
        regs = _regs(s)
        assert (regs["pc"], regs["sp"], regs["lr"], regs["x18"]) == (u["user_pc"], u["user_sp"], u["user_lr"], u["teb"])
        assert [regs[f"x{i}"] for i in range(8)] == [u["handle"], 0, 0, 0, u["buffer"] + 0x200, u["ioctl"],
                                                     u["buffer"] + 0x100, 0x30]
        rows = [line.split() for line in s.capture("k").splitlines()[1:] if line.strip()]
        assert _hex(rows[0][0]) == u["user_sp"] and rows[0][2] == f"0x{u['user_pc'] >> 32:08x}`{u['user_pc'] & 0xFFFFFFFF:08x}"
        svc = s.capture(f"u {u['user_pc'] - 4:x} L1").splitlines()[-1]
        if kind == "full":
            assert svc.split()[1:] == ["d40000e1", "svc", "#7"]
        else:
            assert "????????" in svc
        s.capture(".cxr")


@pytest.mark.parametrize("kind", DUMP_KINDS)
def test_arm64_3b_analyze_process_and_thread(arm64_set, kind):
    """!analyze blames storfilt (its faulting load, AV bucket) in stortool.exe's process;
    !process/!thread show the user process and thread the builder made: Cid, Peb, Teb,
    DirBase (the process's own root table), Image."""
    entry, truth = arm64_set["3b"]
    u = truth["user"]
    with _open(entry[kind]) as s:
        analysis = s.capture("!analyze -v")
        thread = s.capture("!thread").splitlines()
        process = s.capture(f"!process {u['eprocess']:x} 0").splitlines()
    assert re.search(r"FAILURE_BUCKET_ID:\s+AV_storfilt!StorFiltValidateDescriptor", analysis)
    assert re.search(r"MODULE_NAME:\s+storfilt", analysis) and re.search(r"PROCESS_NAME:\s+stortool\.exe", analysis)
    assert re.search(r"OSPLATFORM_TYPE:\s+arm64", analysis)
    assert thread[0] == (f"THREAD {u['thread']:x}  Cid {u['cid'][0]:04x}.{u['cid'][1]:04x}  Teb: {u['teb']:016x} "
                         f"Win32Thread: {0:016x} RUNNING on processor 0")
    assert any(line.split()[:3] == ["Owning", "Process", f"{u['eprocess']:x}"] and line.endswith("stortool.exe")
               for line in thread)
    assert process[0] == f"PROCESS {u['eprocess']:x}"
    assert process[1].split()[3:] == [f"{u['pid']:04x}", "Peb:", f"{u['peb']:x}", "ParentCid:", f"{u['parent']:04x}"] \
        if "parent" in u else process[1].split()[3] == f"{u['pid']:04x}"
    if kind != "small":
        assert process[2].split()[1] == f"{u['dtb']:08x}"
    assert [line.strip() for line in process if line.strip()][-1] == "Image: stortool.exe"


@pytest.mark.parametrize("kind", ("full", "bitmap"))
def test_arm64_3b_user_pages_under_the_process_root(arm64_set, kind):
    """The user half is the process's own (DirBase): every user page the builder mapped
    translates through it, and !pte decodes EL0 access, nG and PXN from the builder's entry."""
    from kdshell.dumpfile.dump import open_dump
    from kdshell.session import Session

    entry, truth = arm64_set["3b"]
    u = truth["user"]
    with open_dump(entry[kind]) as d:
        space = Session(d).spaces.space(u["dtb"])
        for x in u["translations"]:
            assert space.translate(x["va"] + 0x28) == x["pa"] + 0x28, hex(x["va"])
        system = Session(d).spaces.space(truth["dtb"])
        with pytest.raises(KdError):
            system.translate(u["teb"])  # not in the System process's half
    stub = next(x for x in u["translations"] if x["va"] == u["ntdll"])
    data = next(x for x in u["translations"] if x["va"] == u["buffer"])
    with _open(entry[kind]) as s:
        code = s.capture(f"!pte {u['ntdll']:x}")
        buf = s.capture(f"!pte {u['buffer']:x}")
    assert _hex(code.splitlines()[2].split()[-1]) == stub["entry"] and _hex(buf.splitlines()[2].split()[-1]) == data["entry"]
    assert "EL0 read-only; execute: EL1 no (PXN), EL0 yes" in code
    assert "EL0 read/write; execute: EL1 no (PXN), EL0 no (UXN)" in buf
    assert stub["entry"] >> 11 & 1 and data["entry"] >> 6 & 1  # nG, AP[1] (EL0 access)


# -- !drvobj / !devobj / !devstack / !irp: the I/O objects the kernel made --------------------------

def _devext(value: int) -> str:
    return f"{value:016x}" if value else "00000000"


@pytest.mark.parametrize("kind", ("full", "bitmap"))
@pytest.mark.parametrize("name", ("3b", "d1"))  # d1: mydrv's DriverEntry crashed, the others never loaded
def test_arm64_drvobj_and_devobj_match_the_kernels_objects(arm64_set, name, kind):
    """Every boot driver object (nt!IopBootDriverObjects) by name: its address, name, device list,
    DriverEntry/DriverUnload and the 28 dispatch routines as the kernel filled them; !devobj and
    !devstack of each device (driver, RefCount, DeviceType, Flags, DeviceExtension) - with the
    ARM64 kernel's PDB types."""
    entry, truth = arm64_set[name]
    io = truth["io"]
    devices = {d["address"]: d for d in io["devices"]}
    loaded = ["\\Driver\\mydrv", "\\Driver\\storfilt", "\\Driver\\kbdcrash"]
    assert [d["name"] for d in io["drivers"]] == (loaded if name == "3b" else loaded[:1])
    with _open(entry[kind]) as s:
        for drv in io["drivers"]:
            short = drv["name"].split("\\")[-1]
            out = s.capture(f"!drvobj {short} 3").splitlines()
            assert out[:3] == [f"Driver object ({drv['address']:016x}) is for:", f" {drv['name']}",
                               "Driver Extension List: (id , addr)"]
            listed = out[out.index("Device Object list:") + 1:out.index("Device Object list:") + 1 + len(drv["devices"])]
            assert [_hex(x) for x in listed] == drv["devices"]
            assert f"DriverEntry:   {drv['init']:016x}  {short}!DriverEntry" in out
            assert any(line.startswith("DriverUnload:  ") and line.split()[1] == (f"{drv['unload']:016x}" if drv["unload"]
                                                                                 else "00000000") for line in out)
            routines = out[out.index("Dispatch routines:") + 1:]
            assert [_hex(r.split()[2]) for r in routines] == drv["dispatch"]
            assert routines[0x0E].split()[1] == "IRP_MJ_DEVICE_CONTROL"
            assert s.capture(f"!drvobj {drv['address']:x} 3").splitlines() == out
            for dev in drv["devices"]:
                d = devices[dev]
                assert s.capture(f"!devobj {dev:x}").splitlines() == [
                    f"Device object ({dev:016x}) is for:",
                    f"  {drv['name']} DriverObject {drv['address']:016x}",
                    f"Current Irp {d['current_irp']:08x} RefCount {d['reference_count']} Type {d['device_type']:08x} "
                    f"Flags {d['flags']:08x}",
                    f"DevExt {_devext(d['extension'])} DevObjExt 00000000",
                    "Device queue is not busy."]
                stack = s.capture(f"!devstack {dev:x}").splitlines()
                assert stack[1].split()[:3] == [">", f"{dev:016x}", drv["name"]]


@pytest.mark.parametrize("kind", ("full", "bitmap"))
def test_arm64_irp_in_flight_from_the_system_call(arm64_set, kind):
    """0x3B: the IRP NtDeviceIoControlFile built (on the thread's IrpList) when storfilt faulted:
    one stack location, current, IRP_MJ_DEVICE_CONTROL to storfilt's device through the handle's
    FILE_OBJECT, the IOCTL code and the buffered System buffer."""
    entry, truth = arm64_set["3b"]
    irp = truth["io"]["irps"][0]
    u = truth["user"]
    assert irp["thread"] == u["thread"] and irp["device"] == u["device"] and irp["file_object"] == u["file_object"]
    with _open(entry[kind]) as s:
        out = s.capture(f"!irp {irp['address']:x}").splitlines()
        detail = s.capture(f"!irp {irp['address']:x} 1").splitlines()
    assert out[0] == f"Irp is active with {irp['stack_count']} stacks {irp['current_location']} is current " \
                     f"(= 0x{irp['location']:016x})"
    assert out[1] == f" No Mdl: System buffer={irp['system_buffer']:016x}: Thread {irp['thread']:016x}:  Irp stack trace."
    assert out[3] == f">[IRP_MJ_DEVICE_CONTROL({irp['major']:x}), N/A(0)]"
    assert out[4].split()[2:4] == [f"{irp['device']:016x}", f"{irp['file_object']:016x}"]
    assert out[5].strip() == "\\Driver\\storfilt"
    assert out[6].split()[1:4] == ["00000000", "00000030", f"{irp['ioctl']:#x}"]  # output 0, input 0x30 bytes
    assert "RequestorMode = 00000001" in detail and f"UserIosb = {u['buffer'] + 0x200:x}" in detail


@pytest.mark.parametrize("text", ("!drvobj storfilt", "!drvobj {drv:x}", "!devobj {dev:x}", "!devstack {dev:x}",
                                  "!irp {irp:x}"))
def test_arm64_io_commands_without_the_kernel_pdb_say_one_line(arm64_set, text):
    """No nt PDB (symbols from nowhere): the ARM64 I/O structures have no KDBG Offset* fields and
    no per-build table, so each command says in one line that it needs the kernel's types."""
    entry, truth = arm64_set["3b"]
    io = truth["io"]
    line = text.format(drv=io["drivers"][1]["address"], dev=io["devices"][1]["address"], irp=io["irps"][0]["address"])
    with kdshell.open(entry["full"], symbol_path="", image_path="") as s:
        out = s.capture(line).splitlines()
    assert len(out) == 1 and "not available (no kernel PDB)" in out[0] and "nt's symbols" in out[0]


@pytest.mark.parametrize("kind", DUMP_KINDS)
def test_arm64_kd_dumps_the_stack_from_sp(arm64_set, kind):
    """kd: the raw stack from the context's sp (ARM64 has no rsp), with the symbols of the return
    addresses the executed frames left there."""
    entry, truth = arm64_set["3b"]
    chain = truth["call_chain"]
    with _open(entry[kind]) as s:
        rows = [line.split() for line in s.capture("kd 8").splitlines()]
    assert [_hex(r[0]) for r in rows] == [chain[0]["sp"] + 8 * i for i in range(8)]
    returns = {f["pc"]: f["function"] for f in chain[1:] if f["kind"] == "call"}
    named = [(r[2], returns[_hex(r[1])]) for r in rows if _hex(r[1]) in returns]
    assert named and all(a == b for a, b in named)


# -- pool: ARM64 uses x64's 16-byte-unit POOL_HEADER (the fixture kernel's pool.c, shared) -------------

@pytest.mark.parametrize("kind", ("full", "bitmap"))
def test_arm64_pool_commands_find_the_kernels_objects(arm64_set, kind):
    """!pool on the IRP in flight names its block (tag 'Irp ', allocated, holding it); !poolfind
    Proc lists a block holding each EPROCESS the kernel made; !poolused counts one allocation per
    process, thread, driver object, device object and IRP the machine has."""
    entry, truth = arm64_set["3b"]
    io = truth["io"]
    irp = io["irps"][0]["address"]
    with _open(entry[kind]) as s:
        pool = s.capture(f"!pool {irp:x}").splitlines()
        found = s.capture("!poolfind Proc").splitlines()
        used = s.capture("!poolused").splitlines()
    mine = next(line for line in pool if line.startswith("*"))
    start, size = _hex(mine.split()[0][1:]), int(mine.split()[2], 16)
    assert start < irp < start + size and mine.split()[-1] == "*Irp" and "(Allocated)" in mine
    blocks = [(_hex(line.split()[0]), int(line.split()[5].rstrip(","), 16)) for line in found if ": tag Proc" in line]
    assert len(blocks) == len(truth["processes"])
    for p in truth["processes"]:
        assert any(b <= p["eprocess"] < b + n for b, n in blocks), hex(p["eprocess"])
    counts = {line.split()[0]: int(line.split()[1]) for line in used if line[:1] == " " and len(line.split()) > 4
              and line.split()[1].isdigit()}
    threads = sum(len(p["threads"]) for p in truth["processes"])
    assert (counts["Proc"], counts["Thre"], counts["Driv"], counts["Devi"], counts["Irp"]) == (
        len(truth["processes"]), threads, len(io["drivers"]), len(io["devices"]), len(io["irps"]))


def test_arm64_pool_commands_on_a_small_dump_say_one_line(arm64_set):
    entry, _ = arm64_set["3b"]
    with _open(entry["small"]) as s:
        for command in ("!poolused", "!poolfind Proc"):
            assert len(s.capture(command).splitlines()) == 1, command


@pytest.mark.parametrize("kind", ("full", "bitmap"))
def test_arm64_vm_reads_the_kernels_pool_counters(arm64_set, kind):
    """!vm: pool in use from the kernel's PoolTrackTable (pages, rounded up) and the nonpaged pool
    pages from nt!MmAllocatedNonPagedPool, as the fixture kernel counted them."""
    entry, truth = arm64_set["3b"]
    pool = truth["pool"]
    with _open(entry[kind]) as s:
        out = s.capture("!vm").splitlines()
    rows = {line.split(":")[0]: int(line.split(":")[1].split()[0]) for line in out if "Usage:" in line or "Pages:" in line}
    assert rows["NonPagedPool Usage"] == -(-pool["nonpaged_bytes"] // 0x1000)
    assert rows["PagedPool Usage"] == -(-pool["paged_bytes"] // 0x1000)
    assert rows["NonPagedPool Pages"] == pool["allocated_nonpaged_pool"]  # counted in pages, as on Windows


@pytest.mark.parametrize("kind", ("full", "bitmap"))
def test_arm64_irpfind_finds_the_irp_in_flight(arm64_set, kind):
    """!irpfind scans the pool for 'Irp ' blocks: the one IRP the machine has, with its thread,
    current stack location (IRP_MJ_DEVICE_CONTROL), device, driver and the thread's process."""
    entry, truth = arm64_set["3b"]
    irp, u = truth["io"]["irps"][0], truth["user"]
    with _open(entry[kind]) as s:
        rows = [line for line in s.capture("!irpfind").splitlines() if line[:1] in "0123456789abcdef" and line.strip()]
    assert len(rows) == len(truth["io"]["irps"]) == 1
    words = rows[0].replace("[", " ").replace("]", " ").split()
    assert (_hex(words[0]), _hex(words[1])) == (irp["address"], irp["thread"])
    assert rows[0].split("irpStack: (")[1].startswith(f"{irp['major']:2x}, 0)")
    assert _hex(words[6]) == irp["device"] and words[7] == "\\Driver\\storfilt" and _hex(words[8]) == u["eprocess"]


@pytest.mark.parametrize("kind", ("full", "bitmap"))
@pytest.mark.parametrize("name", ("3b", "7e"))
def test_arm64_waiting_threads_stacks_are_the_executed_ones(arm64_set, name, kind):
    """A waiting thread's stack starts at its KSWITCH_FRAME (Windows' ARM64 layout: Fp +0x10,
    Return +0x18, 0x20 bytes, pushed by SwapContext below KiSwapContext's frame): `.thread` + k
    give every frame the shadow call stack recorded for it (Child-SP, RetAddr, function)."""
    entry, truth = arm64_set[name]
    readied = {r["thread"] for r in truth["queues"]["injected"]["readied"]}  # readied at the crash, never ran
    waiting = [t for p in truth["processes"] for t in p["threads"] if t["state"] == 5 or t["ethread"] in readied]
    assert waiting
    with _open(entry[kind]) as s:
        for t in waiting:
            frames = t["frames"]
            assert frames[0]["function"].startswith("nt!KiSwapContext+") and frames[0]["sp"] == t["kernel_stack"] + 0x20
            s.capture(f".thread {t['ethread']:x}")
            rows = [line.split() for line in s.capture("k").splitlines()[1:] if line.strip()]
            assert [(_hex(r[0]), _hex(r[1]), r[2].split("+")[0]) for r in rows] == [
                (f["sp"], frames[i + 1]["pc"] if i + 1 < len(frames) else 0, f["function"].split("+")[0])
                for i, f in enumerate(frames)], hex(t["ethread"])
        s.capture(".thread")


# -- user-mode structures and the thread summaries (64-bit layouts, as on x64) ------------------------

@pytest.mark.parametrize("kind", ("full", "bitmap"))
def test_arm64_teb_peb_and_handle_of_the_user_process(arm64_set, kind):
    """!teb/!peb of stortool.exe's thread (complete dump: its user pages; kernel dump: one line
    each), !handle: the one handle the builder opened (ObpCreateHandle) to the FILE_OBJECT."""
    entry, truth = arm64_set["3b"]
    u = truth["user"]
    with _open(entry[kind]) as s:
        teb, peb = s.capture("!teb").splitlines(), s.capture("!peb").splitlines()
        handles = s.capture("!handle").splitlines()
    if kind == "full":
        fields = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in teb[1:]}
        assert teb[0] == f"TEB at {u['teb']:016x}"
        assert (_hex(fields["StackBase"]), _hex(fields["StackLimit"]), _hex(fields["Self"])) == (
            u["stack_base"], u["stack_limit"], u["teb"])
        assert fields["ClientId"] == f"{u['cid'][0]:016x} . {u['cid'][1]:016x}"
        assert _hex(fields["PEB Address"]) == u["peb"]
        assert peb[0] == f"PEB at {u['peb']:016x}"
        assert any(line.split() == ["ImageBaseAddress:", f"{u['exe_base']:016x}"] for line in peb)
    else:
        assert len(teb) == len(peb) == 1 and "not in the dump" in teb[0] and "not in the dump" in peb[0]
    row = next(line for line in handles if line.startswith(f"{u['handle']:04x}: "))
    assert row.split()[1:4] == ["Object:", f"{u['file_object']:x}", "GrantedAccess:"] and "001f01ff" in row
    assert any("with 1 entries in use" in line for line in handles)


@pytest.mark.parametrize("kind", ("full", "bitmap"))
def test_arm64_stacks_and_locks(arm64_set, kind):
    """!stacks: every thread of every process the kernel made, Blocked (waiting), READY or RUNNING, its
    blocker one of the frames it executed; !locks: the machine holds no ERESOURCE."""
    entry, truth = arm64_set["3b"]
    with _open(entry[kind]) as s:
        rows = [line.split() for line in s.capture("!stacks").splitlines() if re.match(r"\s*[0-9a-f]+\.[0-9a-f]+\s", line)]
        locks = s.capture("!locks").splitlines()
    by_thread = {_hex(r[1]): r for r in rows}
    for p in truth["processes"]:
        for t in p["threads"]:
            r = by_thread[t["ethread"]]
            assert r[0] == f"{p['pid']:x}.{t['tid']:06x}"
            assert r[3] == ("RUNNING" if t["ethread"] == truth["current_thread"] else "READY" if t["state"] == 1
                            else "Blocked")
            if t["frames"] and t["ethread"] != truth["current_thread"]:
                assert r[4] in [f["function"] for f in t["frames"]]
    assert locks[-1] == "0 total locks, 0 locks currently held"


def test_arm64_handle_without_the_kernel_pdb_says_one_line(arm64_set):
    entry, _ = arm64_set["3b"]
    with kdshell.open(entry["full"], symbol_path="", image_path="") as s:
        out = s.capture("!handle").splitlines()
    assert out == ["!handle: The offset of _EPROCESS.ObjectTable is not known for ARM64 build 19041 (no kernel PDB, "
                   "KDBG field or built-in entry): load the kernel's symbols"]


def test_arm64_3b_dump_m_reopens_with_the_same_answers(arm64_set, tmp_path):
    """.dump /m of the 3b kernel dump: a small dump that gives the same bug check, the same k (down
    to the user pc of the system call) and the same current thread, process and Teb."""
    entry, truth = arm64_set["3b"]
    out = tmp_path / "3b-m.dmp"
    commands = (".bugcheck", "k", "!thread")
    with _open(entry["bitmap"]) as s:
        before = [s.capture(c).splitlines() for c in commands]
        s.capture(f".dump /m {out}")
    with _open(out) as s:
        after = [s.capture(c).splitlines() for c in commands]
        header = s.capture(".dumpdebug").splitlines()
        assert "DumpType              00000004 (TRIAGE)" in header and "MachineImageType      0000aa64" in header
    assert after[0] == before[0] and after[1] == before[1]
    assert after[2][0] == before[2][0] and after[2][0].startswith(f"THREAD {truth['user']['thread']:x}  Cid 1a5c.")
    assert len(after[1]) - 1 == len(walked_part(truth["call_chain"]))


@pytest.mark.parametrize("kind", DUMP_KINDS)
def test_arm64_dv_reads_locals_at_codeview_arm64_registers(arm64_set, kind):
    """dv on ARM64 frames: clang's PDB places mydrv's -O0 locals at ARM64_FP/ARM64_SP (CodeView 79,
    81) + offset. MyDrvProcessWorkItem's Scenario is the scenario the builder set (2), its Local
    lies at its frame's sp + 0x18, and MyDrvParseRecord's Record parameter points at that Local."""
    entry, truth = arm64_set["7e"]
    chain = truth["call_chain"]
    work = next(i for i, f in enumerate(chain) if f["function"].startswith("mydrv!MyDrvProcessWorkItem"))
    parse = next(i for i, f in enumerate(chain) if f["function"].startswith("mydrv!MyDrvParseRecord"))
    with _open(entry[kind]) as s:
        s.capture(f".frame {work:x}")
        work_vars = {line.split()[2]: line.split() for line in s.capture("dv /V").splitlines() if "=" in line}
        s.capture(f".frame {parse:x}")
        parse_vars = {line.split()[2]: line.split() for line in s.capture("dv /V").splitlines() if "=" in line}
    assert work_vars["Scenario"][1].startswith("@fp-") and work_vars["Scenario"][4] == "0x2"
    local = chain[work]["sp"] + 0x18
    assert work_vars["Local"][:2] == [f"{local >> 32:08x}`{local & 0xFFFFFFFF:08x}", "@sp+0x18"]
    assert _hex(parse_vars["Record"][4]) == local


# -- the KPRCB's queues on ARM64: !ready, !dpcs, !timer vs the run's lists (fixtures/machine/arm64sched.py) ---------

def _ready_row(truth, address):
    t, pid = next((t, p["pid"]) for p in truth["processes"] for t in p["threads"] if t["ethread"] == address)
    return f"    THREAD {address:016x}  Cid {pid:04x}.{t['tid']:04x}  Teb: {0:016x} Win32Thread: {0:016x} READY on processor 0"


def test_arm64_kernel_queued_what_the_builder_asked_for(arm64_set):
    """At KeBugCheckEx the ARM64 kernel's own KeSetEvent, KeInsertQueueDpc and KeSetTimerEx put the
    builder's work in the KPRCB: readied threads at their boosted priorities, the DPC, both timers
    in the buckets of their due times (interrupt time at boot + the relative due time)."""
    from fixtures.machine.arm64run import SYSTEM_UPTIME
    from fixtures.machine.sched import QUEUED_DPC, TIMERS

    for name in ("7e", "e2", "3b"):
        q = arm64_set[name][1]["queues"]
        p0, injected = q["processors"][0], q["injected"]
        assert injected["readied"] and all([r["priority"], r["thread"]] in p0["ready"] for r in injected["readied"])
        assert len(injected["readied"]) == (1 if name == "7e" else 2)  # the waiters on events with one waiter
        assert p0["ready_summary"] == sum(1 << pr for pr in {pr for pr, _ in p0["ready"]})
        assert [d["name"] for d in p0["dpcs"]] == [QUEUED_DPC] and p0["dpcs"][0]["address"] == injected["dpcs"][0]["address"]
        for (routine, due, period), t in zip(TIMERS, injected["timers"]):
            got = next(x for x in p0["timers"] if x["address"] == t["address"])
            assert got["due"] == SYSTEM_UPTIME + due and got["hand"] == (got["due"] // 156250) % 256
            assert (got["name"], got["period"]) == (routine, period)


@pytest.mark.parametrize("kind", ("full", "bitmap"))
@pytest.mark.parametrize("name", ("7e", "e2", "3b"))
def test_arm64_ready_dpcs_and_timer_match_the_run(arm64_set, name, kind):
    from fixtures.machine.arm64run import SYSTEM_UPTIME

    entry, truth = arm64_set[name]
    p0 = truth["queues"]["processors"][0]
    with _open(entry[kind]) as s:
        ready, dpcs, dpcs0, timer = (s.capture(c).splitlines() for c in ("!ready", "!dpcs", "!dpcs 0", "!timer"))
    want = []
    for priority in sorted({pr for pr, _ in p0["ready"]}, reverse=True):
        want.append(f"Processor 0: Ready Threads at priority {priority}")
        want += [_ready_row(truth, t) for pr, t in p0["ready"] if pr == priority]
    assert ready == want and len(want) >= 2
    want = ["CPU Type      KDPC       Function"] + [
        f" 0: {'Threaded:' if d['threaded'] else 'Normal  :'} 0x{d['address']:016x} 0x{d['routine']:016x} {d['name']}"
        for d in p0["dpcs"]]
    assert dpcs == dpcs0 == want and len(want) == 2
    assert timer[2] == f"Interrupt time: {SYSTEM_UPTIME & 0xFFFFFFFF:08x} {SYSTEM_UPTIME >> 32:08x}"
    want, last, counts = [f"PROCESSOR 0 (nt!_KTIMER_TABLE {p0['timer_table']:016x})"], None, {}
    for t in p0["timers"]:
        what = f"{t['name']} (DPC @ {t['dpc']:016x})" if t["dpc"] else f"thread {t['thread']:016x}"
        key = (t["table"], t["hand"])
        want.append(f"{'   ' if key == last else format(t['hand'], '3d')} {t['address']:016x} "
                    f"{'P' if t['period'] else ' '} {t['due'] & 0xFFFFFFFF:08x} {t['due'] >> 32:08x}  {what}")
        last, counts[key] = key, counts.get(key, 0) + 1
    start = timer.index(want[0])
    assert timer[start:start + len(want)] == want
    assert timer[-1] == f"Total Timers: {len(p0['timers'])}, Maximum List: {max(counts.values())}"
    if name in ("e2", "3b"):  # storfilt's thread waits in KeDelayExecutionThread: its own timer, no DPC
        assert any(t["thread"] and not t["dpc"] for t in p0["timers"])


def test_arm64_queues_say_one_line_without_the_pdb_or_in_a_small_dump(arm64_set):
    entry, _ = arm64_set["e2"]
    with kdshell.open(entry["full"], symbol_path="", image_path="") as s:
        for command in ("!ready", "!dpcs", "!timer"):
            out = s.capture(command).splitlines()
            assert len(out) == 1 and out[0].startswith(command + ": The offset") and "ARM64 build" in out[0], out
    with _open(entry["small"]) as s:
        for command in ("!ready", "!dpcs", "!timer", "!exqueue"):
            out = s.capture(command).splitlines()
            assert len(out) == 1 and "small memory dump" in out[0], out


# -- the device tree and the user process's VADs on ARM64 (fixtures/machine/arm64pnp.py over pnpvad.py) -------------

@pytest.mark.parametrize("kind", ("full", "bitmap"))
def test_arm64_devnode_tree_and_podev_are_the_builders(arm64_set, kind):
    from tests.test_devnode_vad import STATES, _blocks

    entry, truth = arm64_set["3b"]
    pnp = truth["pnp"]
    nodes = {n["address"]: n for n in pnp["nodes"]}

    def order(address, depth):
        yield depth, address
        for c in nodes[address]["children"]:
            yield from order(c, depth + 1)

    with _open(entry[kind]) as s:
        out = s.capture("!devnode 0 1").splitlines()
        podev = {n["address"]: s.capture(f"!podev {n['pdo']:x}").splitlines() for n in pnp["nodes"]}
        storfilt = _blocks(s.capture("!devnode 0 1 storfilt").splitlines()[1:])
    assert out[0] == f"Dumping IopRootDeviceNode (= {pnp['root']:#x})"
    blocks = _blocks(out[1:])
    assert [(d, a) for d, a, _, _ in blocks] == list(order(pnp["root"], 0)) and len(blocks) == 5
    for depth, address, pdo, fields in blocks:
        n = nodes[address]
        assert (depth, pdo, fields["InstancePath"], fields.get("ServiceName")) == (
            n["level"], n["pdo"], n["instance_path"], n["service"])
        assert fields["State"] == f"{STATES[n['state']]} ({n['state']:#x})"
        assert fields["Previous State"] == f"{STATES[n['previous_state']]} ({n['previous_state']:#x})"
    assert [(b[0], b[1]) for b in storfilt] == [(n["level"], n["address"]) for n in pnp["nodes"]
                                                 if n["service"] == "storfilt"]
    for address, lines in podev.items():
        n, flags = nodes[address], nodes[address]["power_flags"]
        assert f"Device Object Extension: {n['extension']:016x}:" in lines
        assert f"PowerFlags: {flags:08x} =>SystemState={flags & 0xF} DeviceState={(flags >> 4) & 0xF}" in lines
        assert f"DevNode: {address:016x}" in lines


@pytest.mark.parametrize("kind", ("full", "bitmap"))
def test_arm64_vad_is_the_user_processs_tree(arm64_set, kind):
    """!vad of stortool.exe: one VAD per run of user pages the builder mapped (image views Exe, no
    file name: ARM64's PDB has no MMVAD), in address order with their levels; !process shows VadRoot."""
    from tests.test_devnode_vad import PROTECTIONS, _vad_rows

    entry, truth = arm64_set["3b"]
    (proc,) = truth["vads"]
    vads = sorted(proc["vads"], key=lambda v: v["start_vpn"])
    with _open(entry[kind]) as s:
        s.capture(f".process {proc['process']:x}")
        text = s.capture("!vad")
        process = s.capture(f"!process {proc['process']:x} 1").splitlines()
    warning, text = text.split("\n", 1)  # the views' files: one line naming the types the PDB lacks
    assert warning.startswith("The offsets of _MMVAD.Subsection") and "without their file names" in warning
    rows = _vad_rows(text)
    assert [int(r.group(1), 16) for r in rows] == [v["address"] for v in vads] and len(vads) >= 5
    for r, v in zip(rows, vads):
        assert (int(r.group(2)), int(r.group(3), 16), int(r.group(4), 16), int(r.group(5))) == \
            (v["level"], v["start_vpn"], v["end_vpn"], v["commit"])
        assert r.group(6) == ("Private" if v["private"] else "Mapped ") and (r.group(7) == "Exe ") == (v["vad_type"] == 2)
        assert r.group(8).strip() == PROTECTIONS[v["protection"]] and r.group(9) is None
    levels = [v["level"] for v in vads]
    assert f"Total VADs: {len(vads)}, average level: {sum(levels) // len(levels)}, maximum depth: {max(levels)}" in text
    assert f"    VadRoot {proc['root']:016x} Vads {len(vads)}" in process
