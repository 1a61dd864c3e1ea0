"""The stack and context commands as a user sees them: k and its variants, kd, .kframes, .cxr,
.ecxr, .trap, .thread, .frame, ~Ns, and r following the current context.

Two kinds of truth:
- the real small dump triage-x64-19041-1000007e.dmp with the corpus symbol store: the frames are
  checked against the stack bytes and the images' own unwind data, read here with pefile and a
  dozen-line UNWIND_INFO reader that shares nothing with kdshell's unwinder;
- the test machines (fixtures/README.md): the call chain the emulated CPU executed, for every
  scenario and dump kind, the waiting threads' frames and processor 1's context.
"""
from __future__ import annotations

import re
import struct
from functools import lru_cache

import pefile
import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, REPO, TRIAGE_19041, open_machine
from fixtures.machine.catalog import PLAN
from kdshell.format import ptr

BIN = REPO / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"
CONTEXT_P4 = 0xFFFF850429891720  # the triage dump's bug check parameter 4: the CONTEXT record
AMDPPM_BASE, WDF_BASE = 0xFFFFF8048B580000, 0xFFFFF80479950000
AMDPPM_SYS = CORPUS_SYMBOLS / "amdppm.sys" / "c9c030003b000" / "amdppm.sys"
WDF_SYS = CORPUS_SYMBOLS / "Wdf01000.sys" / "a9a9d36ed1000" / "Wdf01000.sys"
SCAN_WARNING = "WARNING: Stack unwind information not available. Following frames may be wrong."
HEADER = "Child-SP          RetAddr               Call Site"
HEADER_N = " # " + HEADER
KTRAP_RIP = 0x168  # KTRAP_FRAME.Rip (windbg.md §9): the machine frame's RIP slot


def lines(session, command):
    """The command's lines, without the notes on modules that lack symbols (tests/test_missing_symbols.py)."""
    return [line for line in session.capture(command).splitlines() if not line.startswith("*** Symbols for ")]


@pytest.fixture
def triage():
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.progress = None
        yield s


# Windows' own stack of the triage dump after `.cxr` on P4, from a debugger with every image and
# PDB (issue 17): 28 frames, their Child-SPs and return addresses (the last is 0).
WINDOWS_SP = [0xFFFF850429892000 + off for off in (
    0x120, 0x150, 0x180, 0x1B0, 0x210, 0x340, 0x380, 0x3D0, 0x410, 0x460, 0x4A0, 0x530, 0x5A0, 0x630,
    0x660, 0x6D0, 0x730, 0x770, 0x7B0, 0x820, 0x8B0, 0x940, 0x990, 0xA60, 0xAB0, 0xB70, 0xC10, 0xC60)]
WINDOWS_RET = [
    0xFFFFF8048B58313F, 0xFFFFF8048B583234, 0xFFFFF8048B5A0E8F, 0xFFFFF8048B5A83F6, 0xFFFFF8048B59F852,
    0xFFFFF804799CC027, 0xFFFFF80479966F81, 0xFFFFF804799CB227, 0xFFFFF804799C9E21, 0xFFFFF804799C99DA,
    0xFFFFF804799CB6B1, 0xFFFFF804799CB47A, 0xFFFFF804799D299E, 0xFFFFF8047995CC5F, 0xFFFFF8047995A866,
    0xFFFFF8047BC52F55, 0xFFFFF8047C1548A6, 0xFFFFF8047BCE0D1E, 0xFFFFF8047BD6AB7C, 0xFFFFF8047C123760,
    0xFFFFF8047C12362F, 0xFFFFF8047C126BDD, 0xFFFFF8047C1BDF0C, 0xFFFFF8047BD6C2EC, 0xFFFFF8047BC25975,
    0xFFFFF8047BD17E25, 0xFFFFF8047BDFD0D8, 0]
NT_BASE = 0xFFFFF8047BA00000
# The call sites: amdppm's names come from its PDB, the Wdf01000 frames from its image in the
# store (no exports: `Wdf01000+0x...`), nt's image is not available (`nt+0x...`).
TRIAGE_SITES = [
    "amdppm!WriteIoMemRawEx+0x70", "amdppm!WriteGenAddrEx+0x6b", "amdppm!WriteGenAddrMaybeHiddenEx+0x18",
    "amdppm!InitAcpiCpc+0x317", "amdppm!ProcLibDeviceStart+0x886", "amdppm!EvtDevicePrepareHardware+0xd2",
] + [f"Wdf01000+{ip - WDF_BASE:#x}" for ip in WINDOWS_RET[5:15]] + [f"nt+{ip - NT_BASE:#x}" for ip in WINDOWS_RET[15:27]]


def _row(n: int) -> str:
    return f"{ptr(WINDOWS_SP[n])} {ptr(WINDOWS_RET[n])}     {TRIAGE_SITES[n]}"


# What `k` (0n20 frames) prints: Windows' frames. Through Wdf01000's unwind data to
# nt!IofCallDriver+0x55 (frame 0x10), whose code after the return address is its epilog, then
# two frames found from their code the same way; frame 0x13 is found by scanning (a guess: after
# the warning), and happens to be Windows' too.
# test_k_agrees_with_the_stack_bytes_and_the_unwind_data checks the unwound part against the
# stack bytes and the images' own unwind data.
TRIAGE_K = [HEADER] + [_row(n) for n in range(19)] + [SCAN_WARNING, _row(19)]


def test_cxr_on_the_context_record_then_k(triage):
    out = lines(triage, f".cxr {CONTEXT_P4:x}")
    # the CONTEXT record's registers, as r prints them (Rsp/Rip checked against the raw record)
    raw = triage.dump.triage.memory.read(CONTEXT_P4, 0x100)
    rsp, rip = struct.unpack_from("<Q", raw, 0x98)[0], struct.unpack_from("<Q", raw, 0xF8)[0]
    assert out[2] == f"rip={rip:016x} rsp={rsp:016x} rbp=fffff8048b58f598"
    assert out[0] == "rax=ffffc08be4da6240 rbx=0000000000000001 rcx=0000000000000020"
    assert out[-2:] == ["amdppm!WriteIoMemRawEx+0x70:",
                        "fffff804`8b58334c 43891401        mov     dword ptr [r9+r8],edx ds:ffff9b00`0336004c=????????"]
    assert out == lines(triage, "r")  # r shows the context .cxr loaded
    assert lines(triage, "k") == TRIAGE_K
    assert triage.repeat is None  # Enter does not repeat k (WinDbg does not either)


@lru_cache(maxsize=None)
def _image(path):
    pe = pefile.PE(str(path), fast_load=True)
    pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_EXCEPTION"]])
    table = sorted((e.struct.BeginAddress, e.struct.EndAddress, e.struct.UnwindData)
                   for e in pe.DIRECTORY_ENTRY_EXCEPTION)
    return pe.get_memory_mapped_image(), table


def _fixed_frame(mapped: bytes, table, rva: int) -> tuple[int, bool, int]:
    """(bytes the prolog allocates and pushes, uses a frame register, prolog size) of the
    function containing `rva`: an independent reading of UNWIND_INFO (x64-unwind.md §2)."""
    entry = next(e for e in table if e[0] <= rva < e[1])
    unwind, total, fp, prolog = entry[2], 0, False, None
    while True:
        version_flags, size_of_prolog, count, _ = mapped[unwind:unwind + 4]
        prolog = size_of_prolog if prolog is None else prolog
        slots = struct.unpack_from(f"<{count}H", mapped, unwind + 4)
        i = 0
        while i < count:
            op, info = (slots[i] >> 8) & 0xF, slots[i] >> 12
            if op == 0:                                  # PUSH_NONVOL
                total, i = total + 8, i + 1
            elif op == 1 and info == 0:                  # ALLOC_LARGE /8
                total, i = total + slots[i + 1] * 8, i + 2
            elif op == 1:                                # ALLOC_LARGE 32-bit
                total, i = total + (slots[i + 1] | slots[i + 2] << 16), i + 3
            elif op == 2:                                # ALLOC_SMALL
                total, i = total + info * 8 + 8, i + 1
            elif op == 3:                                # SET_FPREG
                fp, i = True, i + 1
            elif op in (4, 8):                           # SAVE_NONVOL, SAVE_XMM128
                i += 2
            elif op in (5, 9):                           # ..._FAR
                i += 3
            elif op == 6:                                # v2 EPILOG (v1 SAVE_XMM: 2 slots)
                i += 1 if version_flags & 7 == 2 else 2
            else:
                raise AssertionError(f"unexpected unwind op {op} at {rva:#x}")
        if not version_flags >> 3 & 4:                   # UNW_FLAG_CHAININFO
            return total, fp, prolog
        chain = unwind + 4 + 2 * (count + (count & 1))
        unwind = struct.unpack_from("<III", mapped, chain)[2]


def test_k_agrees_with_the_stack_bytes_and_the_unwind_data(triage):
    """For each frame in amdppm and Wdf01000: the caller's Child-SP is this Child-SP plus what
    the function's prolog allocated and pushed plus the return address, and RetAddr is the
    qword just below the caller's Child-SP in the dump's saved stack."""
    triage.run(f".cxr {CONTEXT_P4:x}")
    rows = [line.split() for line in lines(triage, "kn 0n20")[1:] if not line.startswith("WARNING")]
    frames = [(int(r[0], 16), int(r[1].replace("`", ""), 16), int(r[2].replace("`", ""), 16), r[3]) for r in rows]
    stack = triage.dump.triage.memory  # the bytes the small dump saved, not kdshell's walker
    checked = 0
    ip = 0xFFFFF8048B58334C  # the context's RIP
    for (n, sp, ret, site), nxt in zip(frames, frames[1:]):
        base, path = (AMDPPM_BASE, AMDPPM_SYS) if site.startswith("amdppm!") else (WDF_BASE, WDF_SYS)
        if not site.startswith(("amdppm!", "Wdf01000+")):
            break
        mapped, table = _image(path)
        rva = (ip if n == 0 else ip - 1) - base
        size, fp, prolog = _fixed_frame(mapped, table, rva)
        begin = next(e[0] for e in table if e[0] <= rva < e[1])
        assert not fp and (n or rva - begin >= prolog), site  # no frame register, past the prolog
        assert nxt[1] == sp + size + 8, site
        assert ret == struct.unpack("<Q", stack.read(nxt[1] - 8, 8))[0] == ret, site
        ip = ret
        checked += 1
    assert checked == 16  # 6 amdppm frames and 10 Wdf01000 frames
    # the frames after them are nt's: the first reached by unwinding Wdf01000, the next two from
    # their code, the last by scanning
    assert [f[3] for f in frames[16:]] == ["nt+0x252f55", "nt+0x7548a6", "nt+0x2e0d1e", "nt+0x36ab7c"]


def test_kn_kb_kv_kc_kf_and_counts(triage):
    triage.run(f".cxr {CONTEXT_P4:x}")
    kn = lines(triage, "kn")
    assert kn[0] == HEADER_N
    assert kn[1:] == _numbered(TRIAGE_K[1:])
    # kb/kv: the four home slots Child-SP+8..+0x20, read here from the saved stack
    stack = triage.dump.triage.memory
    kb = lines(triage, "kb")
    assert kb[0] == ("Child-SP          RetAddr               : Args to Child"
                     + " " * 59 + ": Call Site")
    for line, plain in zip([x for x in kb[1:] if x != SCAN_WARNING], [x for x in TRIAGE_K[1:] if x != SCAN_WARNING]):
        sp = int(plain.split()[0].replace("`", ""), 16)
        home = " ".join(ptr(v) for v in struct.unpack("<4Q", stack.read(sp + 8, 32)))
        assert line == f"{plain[:40]}: {home} : {plain[40:]}"
    # kv: how each frame was found, after the row (no frame here pushed a machine frame)
    hows = iter(["context"] + ["unwind"] * 16 + ["epilog"] * 2 + ["scan-unverified, guess"])
    assert lines(triage, "kv") == [kb[0]] + [row if row == SCAN_WARNING else f"{row} [{next(hows)}]"
                                             for row in kb[1:]]
    assert lines(triage, "kbn 2")[1].startswith("00 ffff8504`29892120 fffff804`8b58313f     : fffff804`8b5a2e2c ")
    # kc: module!function only
    assert lines(triage, "kc 7") == ["Call Site", "amdppm!WriteIoMemRawEx", "amdppm!WriteGenAddrEx",
                                     "amdppm!WriteGenAddrMaybeHiddenEx", "amdppm!InitAcpiCpc",
                                     "amdppm!ProcLibDeviceStart", "amdppm!EvtDevicePrepareHardware",
                                     "Wdf01000+0x7c027"]
    assert lines(triage, "kcn 1") == [" # Call Site", "00 amdppm!WriteIoMemRawEx"]
    # kf: the Memory column is the distance to the previous frame's Child-SP
    kf = lines(triage, "kf 4")
    assert kf == ["  Memory  " + HEADER,
                  "          " + TRIAGE_K[1],
                  "       30 " + TRIAGE_K[2],
                  "       30 " + TRIAGE_K[3],
                  "       30 " + TRIAGE_K[4]]
    assert lines(triage, "kfn 6")[0] == " #   Memory  " + HEADER
    assert lines(triage, "kfn 6")[6] == "05       130 " + TRIAGE_K[6]
    # counts are hex, as WinDbg reads them; kL (no source lines) is k here
    assert lines(triage, "k 3") == TRIAGE_K[:4]
    assert lines(triage, "kL 0n3") == TRIAGE_K[:4]
    assert lines(triage, "k 11") == TRIAGE_K[:18]     # 0x11 frames
    assert lines(triage, "k 13") == TRIAGE_K[:20]     # 0x13 frames: the warning is not reached
    assert lines(triage, "k 14") == TRIAGE_K[:22]     # the warning comes before the 0x14th frame
    # kp/kP: amdppm's PDB is public (no types): the frames print as k prints them
    assert lines(triage, "kp 3") == TRIAGE_K[:4]


def _numbered(rows):
    out, n = [], 0
    for line in rows:
        if line == SCAN_WARNING:
            out.append(line)
        else:
            out.append(f"{n:02x} {line}")
            n += 1
    return out


def test_kn_numbers_and_the_warning_line(triage):
    triage.run(f".cxr {CONTEXT_P4:x}")
    kn = lines(triage, "kn")
    assert kn[17:] == [
        "10 ffff8504`29892730 fffff804`7c1548a6     nt+0x252f55",
        "11 ffff8504`29892770 fffff804`7bce0d1e     nt+0x7548a6",
        "12 ffff8504`298927b0 fffff804`7bd6ab7c     nt+0x2e0d1e",
        SCAN_WARNING,
        "13 ffff8504`29892820 fffff804`7c123760     nt+0x36ab7c",
    ]
    assert kn.count(SCAN_WARNING) == 1


def test_frame_selects_registers_for_r(triage):
    triage.run(f".cxr {CONTEXT_P4:x}")
    assert lines(triage, ".frame 1") == ["01 ffff8504`29892150 fffff804`8b583234     amdppm!WriteGenAddrEx+0x6b"]
    r = lines(triage, "r")
    assert r[2] == "rip=fffff8048b58313f rsp=ffff850429892150 rbp=fffff8048b58f598"
    assert r[-2] == "amdppm!WriteGenAddrEx+0x6b:"
    assert lines(triage, "? @rsp")[0].startswith("Evaluate expression: ") and "ffff8504`29892150" in lines(triage, "? @rsp")[0]
    # k still shows the whole stack; .frame alone shows the selected frame
    assert lines(triage, "k 2") == TRIAGE_K[:3]
    assert lines(triage, ".frame") == ["01 ffff8504`29892150 fffff804`8b583234     amdppm!WriteGenAddrEx+0x6b"]
    # .frame /r: the frame line and its registers (rbx restored from the stack by the unwinder)
    out = lines(triage, ".frame /r 2")
    assert out[0] == "02 ffff8504`29892180 fffff804`8b5a0e8f     amdppm!WriteGenAddrMaybeHiddenEx+0x18"
    assert out[3] == "rip=fffff8048b583234 rsp=ffff850429892180 rbp=fffff8048b58f598"
    assert lines(triage, ".frame 0")[0].startswith("00 ffff8504`29892120")
    assert lines(triage, "r")[2] == "rip=fffff8048b58334c rsp=ffff850429892120 rbp=fffff8048b58f598"
    assert lines(triage, ".frame 0n100")[0].startswith("Frame 0x64 is not on the stack (it has 0x")


def test_cxr_reset_and_errors(triage):
    default = lines(triage, "r")
    triage.run(f".cxr {CONTEXT_P4:x}; .frame 2")
    assert lines(triage, ".cxr") == ["Resetting default scope"]
    assert lines(triage, "r") == default
    failures = triage.failures
    assert lines(triage, ".cxr 0") == ["Unable to read context at 00000000`00000000, Win32 error 0n30"]
    assert lines(triage, ".trap ffffffff`00000000") == [
        "Unable to read trap frame at ffffffff`00000000, Win32 error 0n30"]
    assert triage.failures == failures + 2
    assert lines(triage, "r") == default  # a failed .cxr leaves the context alone
    assert len(lines(triage, "kq")) == 1 and "unknown option 'q'" in lines(triage, "kq")[0]
    assert lines(triage, "~1s") == [
        "A small memory dump keeps only the crashing processor's context (processor 0); processor 1 is not in it"]
    assert triage.prompt == "0: kd> "
    assert lines(triage, ".ecxr")[-2] == "amdppm!WriteIoMemRawEx+0x70:"  # 0x1000007E: P4


def test_k_equals_form_kframes_and_kd(triage):
    triage.run(f".cxr {CONTEXT_P4:x}")
    # k = BasePtr StackPtr InstructionPtr: frame 1's registers give the stack from frame 1 on
    out = lines(triage, "kn = fffff8048b58f598 ffff850429892150 fffff8048b58313f 3")
    assert out == [HEADER_N, "00 " + TRIAGE_K[2], "01 " + TRIAGE_K[3], "02 " + TRIAGE_K[4]]
    assert lines(triage, "k=fffff8048b58f598 ffff850429892150 fffff8048b58313f 1") == [HEADER, TRIAGE_K[2]]
    assert lines(triage, ".kframes") == ["Default stack trace depth is 0n20 frames"]
    assert lines(triage, ".kframes 4") == ["Default stack trace depth is 0n4 frames"]
    assert lines(triage, "k") == TRIAGE_K[:5]
    # kd: the raw stack with symbols, as dps @rsp shows it
    kd = lines(triage, "kd 3")
    assert triage.repeat is None
    assert kd == lines(triage, "dps @rsp L3")
    assert kd[0].startswith("ffff8504`29892120  ")


# -- the test machines ---------------------------------------------------------------------------

def _site(function: str, is64: bool) -> str:
    """The truth's function text as k prints it (a user address is printed bare)."""
    if function.startswith("0x"):
        return "0x" + ptr(int(function, 16), is64)
    return function


def expected_rows(frames, is64: bool, first: int = 0):
    """(Child-SP or ChildEBP, RetAddr or None, call site) per executed frame, from `first`, up to
    the first user-mode frame (kdshell has no user module list to go further)."""
    out = []
    for f in frames[first:]:
        ret = f["return_address"] if f["kind"] != "syscall" else None
        if is64:
            out.append((f["sp"], ret if ret is not None else 0, _site(f["function"], True), f["kind"]))
        else:
            out.append((f.get("ebp"), ret if ret is not None else 0, _site(f["function"], False), f["kind"]))
        if f["kind"] == "syscall":
            break
    return out


def parse_k(text_lines):
    rows = []
    for line in text_lines[1:]:
        if line == SCAN_WARNING:
            continue
        n, sp, ret, site = line.split(maxsplit=3)
        rows.append((int(n, 16), int(sp.replace("`", ""), 16), int(ret.replace("`", ""), 16), site))
    return rows


def check_rows(got, want, is64, where):
    assert len(got) >= len(want), (where, len(got), len(want))
    for i, ((n, sp, ret, site), (w_sp, w_ret, w_site, kind)) in enumerate(zip(got, want)):
        assert n == i, where
        assert site == w_site, (where, i)
        if w_sp is not None:
            assert sp == w_sp, (where, i, site)
        if kind != "syscall":  # the walk stops at the user-mode frame: its RetAddr is unknown
            assert ret == w_ret, (where, i, site)


MACHINE_DUMPS = [(name, kind) for name, kinds in PLAN.items() for kind in kinds]


@pytest.mark.parametrize("name,kind", MACHINE_DUMPS, ids=[f"{n}-{k}" for n, k in MACHINE_DUMPS])
def test_k_follows_the_executed_call_chain(machines, name, kind):
    """Every frame the CPU executed, from the dump's context outwards: Child-SP (x86: ChildEBP),
    RetAddr and the call site (the truth's names come from the golden llvm-pdbutil publics)."""
    truth = machines.truth(name)
    is64 = truth["arch"] == "x64"
    ctx = truth["context"]
    sp_name, ip_name = ("rsp", "rip") if is64 else ("esp", "eip")
    chain = truth["call_chain"]
    # the dump's context may be the exception context (0x1000007E): start at its frame
    first = next(i for i, f in enumerate(chain) if f["rip"] == ctx[ip_name] and f["sp"] == ctx[sp_name])
    want = expected_rows(chain, is64, first)
    if kind == "small":  # only the top of the stack is kept: the frames whose return slot is in it
        small = truth["dumps"]["small"]["small"]
        end = small["top_of_stack"] + small["stack_size"]
        want = [w for w, f in zip(want, chain[first:]) if f["sp"] - 8 < end] or want[:1]
    with open_machine(machines, name, kind) as s:
        out = lines(s, "kn 100")
        assert out[0] == (HEADER_N if is64 else " # ChildEBP RetAddr  ")
        assert SCAN_WARNING not in out  # every image is on the symbol path: nothing is guessed
        check_rows(parse_k(out), want, is64, f"{name}-{kind}")
        # the exact WinDbg row of the first executed frame
        w_sp, w_ret, w_site, _ = want[0]
        if is64:
            assert out[1] == f"00 {ptr(w_sp)} {ptr(w_ret)}     {w_site}"
        else:
            assert out[1] == f"00 {w_sp:08x} {w_ret:08x} {w_site}"


def test_kv_marks_the_trap_frame_and_trap_loads_it(machines):
    truth = machines.truth("d1")
    trap = next(f for f in truth["call_chain"] if f["kind"] == "trap")
    handler = truth["call_chain"][truth["call_chain"].index(trap) - 1]   # nt!KiPageFault
    tf = trap["machine_frame"] - KTRAP_RIP
    with open_machine(machines, "d1", "kernel") as s:
        kv = lines(s, "kv")
        row = next(x for x in kv if "nt!KiPageFault" in x)
        assert row.endswith(f"nt!KiPageFault+0x14f (TrapFrame @ {ptr(tf)}) [unwind]")
        assert row.startswith(f"{ptr(handler['sp'])} {ptr(trap['rip'])}     : ")
        assert sum("TrapFrame @" in x for x in kv) == 1
        out = lines(s, f".trap {tf:x}")
        assert out[:2] == ["NOTE: The trap frame does not contain all registers.",
                           "Some register values may be zeroed or incorrect."]
        assert out[4] == f"rip={trap['rip']:016x} rsp={trap['sp']:016x} rbp=" + out[4].split("rbp=")[1]
        assert not any(x.startswith("cs=") for x in out)  # WinDbg's .trap shows no segment line
        assert out[-2] == "mydrv!MyDrvReadRegister+0xd:"
        # k from the trap frame: the driver's frames, as executed
        chain = truth["call_chain"]
        check_rows(parse_k(lines(s, "kn")), expected_rows(chain, True, chain.index(trap)), True, ".trap")
        assert lines(s, ".trap") == ["Resetting default scope"]
        assert parse_k(lines(s, "kn 1"))[0][3] == "nt!KeBugCheckEx"


def test_trap_frame_hint_crosses_the_fault_without_nt_image(machines, tmp_path):
    """A small dump whose nt image is nowhere on the symbol path: nt's frames are guessed (the
    leaf rule at KeBugCheckEx, then a scan), and the trap frame KiPageFault built (found on the
    stack by bug check 0xD1's P4, the faulting RIP; KiPageFault's Child-SP is that trap frame)
    leads the walk to the faulting driver frame at its exact Child-SP, no longer a guess."""
    for f in ("mydrv.sys", "mydrv.pdb"):
        (tmp_path / f).write_bytes((BIN / f).read_bytes())
    truth = machines.truth("d1")
    chain = truth["call_chain"]
    trap = next(f for f in chain if f["kind"] == "trap")
    with open_machine(machines, "d1", "small", symbol_path=str(tmp_path)) as s:
        kv = lines(s, "kv")
        assert kv[2] == SCAN_WARNING
        assert kv[3].endswith("[leaf, guess]")
        handler = next(x for x in kv if "TrapFrame @" in x)
        # "scan" when the small dump kept the code page before the return address, else "scan-unverified"
        # (which pages it keeps depends on where nt's code lies)
        assert re.search(rf"\(TrapFrame @ {ptr(trap['machine_frame'] - KTRAP_RIP)}\) \[scan(-unverified)?, guess\]$",
                         handler), handler
        after = kv[kv.index(handler) + 1:]
        assert after[0].endswith("mydrv!MyDrvReadRegister+0xd [trap]")
        assert all(x.endswith("[unwind]") for x in after[1:5])
        rows = parse_k(lines(s, "kn"))
        driver = [r for r in rows if r[3].startswith("mydrv!")]
        want = [f for f in chain if f["function"].startswith("mydrv!")]
        assert [(r[1], r[3]) for r in driver] == [(f["sp"], f["function"]) for f in want]


def test_kp_shows_parameters_from_private_symbols(machines):
    d1 = machines.truth("d1")
    bad_address = d1["bugcheck"]["parameters"][0]
    with open_machine(machines, "d1", "complete") as s:
        kp = lines(s, "kp")
        assert kp[4] == ("ffffc20a`00009d38 fffff800`01001164     mydrv!MyDrvReadRegister("
                         f"unsigned int * Register = 0x{ptr(bad_address)})+0xd")
        assert kp[5].endswith(f"mydrv!MyDrvProcessQueue(unsigned int64 Address = 0x{ptr(bad_address)})+0x34")
        assert kp[6].endswith("mydrv!MyDrvDispatchLevelWork(void)+0x24")
        assert kp[7].endswith("mydrv!MyDrvStartScenario(unsigned int Scenario = 0x1)+0x1c")  # scenario 1: 0xD1
        assert "mydrv!DriverEntry(struct _DRIVER_OBJECT * DriverObject = 0x" in kp[8]
        assert kp[1].endswith("nt!KeBugCheckEx")  # an assembly routine: no procedure record
        kP = lines(s, "kP 4")
        assert kP[-2:] == ["ffffc20a`00009d38 fffff800`01001164     mydrv!MyDrvReadRegister(",
                           f"\t\t\tunsigned int * Register = 0x{ptr(bad_address)})+0xd"]
    with open_machine(machines, "7e", "kernel") as s:
        kp = lines(s, "kpn 3")
        assert kp[1].endswith("mydrv!MyDrvReadRecordLength(struct _MYDRV_RECORD * Record = 0x00000000`00000000)+0xd")
        assert kp[3].endswith("mydrv!MyDrvProcessWorkItem(unsigned int Scenario = 0x2)+0x8d")  # scenario 2: 0x7E
    with open_machine(machines, "d1-x86", "complete") as s:
        kp = lines(s, "kp 4")
        assert kp[3] == "84008f20 80c01136 mydrv!MyDrvReadRegister(unsigned int * Register = 0xe0bad000)+0x9"


def test_cxr_and_ecxr_load_the_exception_context(machines):
    """7e-plain: the dump's context is KeBugCheckEx's; P4 is the exception's CONTEXT record."""
    truth = machines.truth("7e-plain")
    code, params = truth["bugcheck"]["code"], truth["bugcheck"]["parameters"]
    assert code == 0x7E
    chain = truth["call_chain"]
    trap = next(i for i, f in enumerate(chain) if f["kind"] == "trap")
    with open_machine(machines, "7e-plain", "kernel") as s:
        assert parse_k(lines(s, "kn 1"))[0][3] == "nt!KeBugCheckEx"
        out = lines(s, f".cxr {params[3]:x}")
        assert out[2].startswith(f"rip={params[1]:016x} rsp={chain[trap]['sp']:016x}")
        assert out == lines(s, "r")
        check_rows(parse_k(lines(s, "kn")), expected_rows(chain, True, trap)[:20], True, ".cxr")
        s.run(".cxr")
        assert lines(s, ".ecxr") == out
    with open_machine(machines, "d1", "small") as s:
        assert lines(s, ".ecxr") == ["Unable to get exception context: bug check D1 has no context record (use .trap or k)"]


def _waiting(truth):
    return [t for t in truth["threads"] if t["state_name"] == "Waiting" and t["frames"]]


@pytest.mark.parametrize("name", ["d1", "d1-x86"])
def test_thread_on_a_waiting_thread_uses_its_switch_frame(machines, name):
    truth = machines.truth(name)
    is64 = truth["arch"] == "x64"
    threads = _waiting(truth)
    assert threads
    with open_machine(machines, name, "complete") as s:
        for t in threads:
            assert lines(s, f".thread {t['address']:x}") == [f"Implicit thread is now {ptr(t['address'], is64)}"]
            check_rows(parse_k(lines(s, "kn")), expected_rows(t["frames"], is64), is64, f"thread {t['address']:#x}")
            top = t["frames"][0]
            r = lines(s, "r")
            if is64:
                assert r[2].startswith(f"rip={top['rip']:016x} rsp={top['sp']:016x} ")
                assert top["sp"] == t["kernel_stack"] + 0x40  # the switch frame's size
            else:
                assert r[1].startswith(f"eip={top['rip']:08x} esp={top['sp']:08x} ebp={top['ebp']:08x}")
        # .thread alone: back to the current processor's thread and context
        current = truth["processors"][0]["current_thread"]
        assert lines(s, ".thread") == [f"Implicit thread is now {ptr(current, is64)}"]
        assert parse_k(lines(s, "kn 1"))[0][3].startswith("nt!KeBugCheckEx")


def test_thread_on_a_running_thread_uses_its_processor(machines):
    truth = machines.truth("d1")
    p1 = truth["processors"][1]
    with open_machine(machines, "d1", "kernel") as s:
        s.run(f".thread {p1['current_thread']:x}")
        assert lines(s, "r")[2].startswith(f"rip={p1['context']['rip']:016x} rsp={p1['context']['rsp']:016x}")
        s.run(f".thread {truth['processors'][0]['current_thread']:x}")  # the bug-checking thread
        assert parse_k(lines(s, "kn 1"))[0][3] == "nt!KeBugCheckEx"
    with open_machine(machines, "d1", "small") as s:  # the waiting threads are not in a small dump
        t = _waiting(truth)[0]
        assert lines(s, f".thread {t['address']:x}") == [
            f"Unable to read thread {ptr(t['address'])}: it is not in the dump"]


@pytest.mark.parametrize("kind", ["complete", "kernel"])
def test_processor_switch(machines, kind):
    truth = machines.truth("d1")
    p1 = truth["processors"][1]
    idle = next(t for t in truth["threads"] if t["address"] == p1["current_thread"])
    with open_machine(machines, "d1", kind) as s:
        assert s.prompt == "0: kd> "
        assert lines(s, "~1s") == []
        assert s.prompt == "1: kd> "
        r = lines(s, "r")
        assert r[2].startswith(f"rip={p1['context']['rip']:016x} rsp={p1['context']['rsp']:016x}")
        assert r[-1].endswith("hlt")
        check_rows(parse_k(lines(s, "kn")), expected_rows(idle["frames"], True), True, "processor 1")
        assert lines(s, ".cxr") == ["Resetting default scope"]  # processor 1's context again
        assert lines(s, "r")[2] == r[2]
        assert lines(s, "~0s") == []
        assert s.prompt == "0: kd> "
        chain = truth["call_chain"]
        check_rows(parse_k(lines(s, "kn")), expected_rows(chain, True), True, "processor 0")
        assert lines(s, "~2s") == ["Processor 2 does not exist (this machine had 2 processors: 0-1)"]
        assert s.prompt == "0: kd> "
