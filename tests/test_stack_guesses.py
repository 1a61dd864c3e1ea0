"""Issue 17, parts 1 and 2: one walker for `k`, `!thread` and `!analyze`, and a scan that earns its
frames. Every frame says how it was found; guessed frames come after WinDbg's warning.

Truths:
- Windows' own stack of the triage dump after `.cxr` on P4 (test_stack_commands.WINDOWS_SP and
  WINDOWS_RET, from a debugger with every image and PDB);
- the mini dump's faulting nt function is a leaf: its code in the dump is `bt; setb al; ret`;
- the test machines' executed call chains (fixtures/README.md), every scenario and dump kind, with
  every image on the symbol path, with the drivers' only, and with none;
- hand-made stacks and code for the scan's rules and the code reader (kdshell.stack.forward),
  the instructions cross-checked with capstone.
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import capstone
import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, MINI_17763, TRIAGE_19041
from fixtures.machine.catalog import PLAN
from kdshell.stack.forward import follow_to_return
from kdshell.stack.scan import SCAN, UNVERIFIED, ReturnCheck, call_length_before, scan_for_return
from kdshell.format import ptr
from kdshell.stack.walk import Walker
from test_stack_commands import BIN, MACHINE_SYMBOLS, SCAN_WARNING, WINDOWS_RET, WINDOWS_SP, lines
from test_stack_walk import load_image
from test_unwind_x64 import Memory

CONTEXT_P4 = 0xFFFF850429891720
HOWS = {"context", "unwind", "leaf", "epilog", "trap", "frame chain", "scan", "scan-unverified"}
CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


def rows(text_lines):
    """(Child-SP, RetAddr, call site, guessed) of `kv` rows, and the index of the warning line."""
    out, warning = [], None
    for line in text_lines[1:]:
        if line == SCAN_WARNING:
            warning = len(out)
            continue
        sp, ret, rest = line.split(maxsplit=2)
        site = rest.split(" : ")[-1].split(" [")[0].split(" (TrapFrame")[0]
        how = rest.rsplit(" [", 1)[1].rstrip("]")
        assert how.split(", ")[0] in HOWS, line
        out.append((int(sp.replace("`", ""), 16), int(ret.replace("`", ""), 16), site, how.endswith(", guess")))
    return out, warning


def in_order(wanted, got):
    """How many of `wanted` appear in `got` in the same order (a subsequence)."""
    it = iter(got)
    return sum(1 for w in wanted if any(g == w for g in it))


# -- the real dumps ----------------------------------------------------------------------------------
def test_triage_k_40_is_windows_stack_then_marked_guesses():
    """Issue 17's check: after `.cxr P4`, `k 40` shows Windows' first 17 frames exactly (the
    amdppm and Wdf01000 frames, nt!IofCallDriver+0x55's return and Child-SP), then at least 9 of
    the remaining 11 return addresses in order, every guessed frame after the warning. nt's
    unwind data is not in the dump; its section table is."""
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.run(f".cxr {CONTEXT_P4:x}")
        k = lines(s, "k 40")
        got, warning = rows(lines(s, "kv 40"))
    # k and kv show the same frames (kv adds the home slots and how each was found)
    assert [tuple(x.split()) for x in k[1:] if x != SCAN_WARNING] == [
        (ptr(sp), ptr(ret), site) for sp, ret, site, _ in got]
    assert [(sp, ret) for sp, ret, _, _ in got[:17]] == list(zip(WINDOWS_SP[:17], WINDOWS_RET[:17]))
    assert got[16][2] == "nt+0x252f55"                      # nt!IofCallDriver+0x55, without nt's symbols
    assert not any(g for *_, g in got[:warning]) and all(g for *_, g in got[warning:])
    assert k.index(SCAN_WARNING) == warning + 1
    rets = [ret for _, ret, _, _ in got[16:]]
    assert in_order(WINDOWS_RET[16:27], rets) >= 9
    # a frame found at one of Windows' return addresses sits at Windows' Child-SP
    windows = dict(zip(WINDOWS_RET[:-1], WINDOWS_SP[1:]))
    for (_, ret, _, _), nxt in zip(got, got[1:]):
        if ret in windows:
            assert nxt[0] == windows[ret]
    # nt's data addresses on the stack (its .data, its KDBG variables) never became frames
    nt_data = {0xFFFFF8047C644B00, 0xFFFFF8047C644BA0, 0xFFFFF8047C725440, 0xFFFFF8047C6434E0}
    assert not nt_data & set(rets)
    assert 0xFFFFF8047BD6B110 not in rets                    # a value held in R15: a pointer, not a frame


def test_mini_dump_leaf_then_scan_and_one_answer():
    """Issue 17's check on the 17763 mini dump (no images, no symbols): `k` shows at least 5
    frames, the second winhvr+0x16755 (the faulting nt function is a leaf: its return address is
    at [RSP]), and `!analyze -v`'s STACK_TEXT is the same list."""
    with kdshell.open(MINI_17763, symbol_path="", image_path="") as s:
        k = lines(s, "k")
        kv, warning = rows(lines(s, "kv"))
        text = s.capture("!analyze -v").splitlines()
    frames = [x for x in k[1:] if x != SCAN_WARNING]
    assert len(frames) >= 5 and frames[1].endswith("     winhvr+0x16755")
    assert kv[1][2] == "winhvr+0x16755" and not kv[1][3] and warning == 2
    start = text.index("STACK_TEXT:  ") + 1
    stack_text = text[start:text.index("", start)]
    assert [row[:40] + row.split(" : ")[-1] if " : " in row else row for row in stack_text] == k[1:]
    # the register-held pointers of the context (r13 is vmswitch code, r15 nt data) are no frames
    rets = [ret for _, ret, _, _ in kv]
    assert 0xFFFFF80461FEAD30 not in rets and 0xFFFFF8044A61C710 not in rets


def test_analyze_json_says_how_each_frame_was_found(tmp_path):
    p = subprocess.run([sys.executable, "-m", "kdshell", "-z", str(TRIAGE_19041), "-y", str(CORPUS_SYMBOLS),
                        "--analyze-json"], capture_output=True, text=True, timeout=120)
    stack = json.loads(p.stdout)["stack"]
    assert [f["how"] for f in stack[:19]] == ["context"] + ["unwind"] * 16 + ["epilog"] * 2
    assert not any(f["guessed"] for f in stack[:19]) and all(f["guessed"] for f in stack[19:])
    assert {f["how"] for f in stack} <= HOWS and {f["how"] for f in stack[19:]} & {"scan", "scan-unverified"}
    assert [int(f["child_sp"], 16) for f in stack[:19]] == WINDOWS_SP[:19]


# -- the test machines: the truth, or marked guesses --------------------------------------------------
CASES = [(name, kind, images) for name, kinds in PLAN.items() for kind in kinds for images in ("all", "drivers", "none")]


@pytest.fixture(scope="module")
def driver_store(tmp_path_factory):
    """The drivers' images and PDBs without the kernel's and the HAL's."""
    where = tmp_path_factory.mktemp("drivers")
    for sub in ("", "x86"):
        for f in (BIN / sub).iterdir() if sub else BIN.iterdir():
            if f.is_file() and not f.name.startswith(("ntoskrnl", "ntkrnl", "hal")):
                (where / sub).mkdir(exist_ok=True)
                shutil.copy(f, where / sub / f.name)
    return f"{where};{where / 'x86'}"


@pytest.mark.parametrize("name,kind,images", CASES, ids=[f"{n}-{k}-{i}" for n, k, i in CASES])
def test_a_stack_is_the_truth_or_says_it_guesses(machines, driver_store, name, kind, images):
    """Every scenario and dump kind, with every image on the symbol path, with the drivers' only
    (a small dump then has no code or unwind data for nt), and with none: each frame not marked
    as a guess is the frame the CPU executed at that depth (its IP and Child-SP), and a walk with
    the images it needs guesses nothing."""
    truth = machines.truth(name)
    is64 = truth["arch"] == "x64"
    ctx = truth["context"]
    ip_name, sp_name = ("rip", "rsp") if is64 else ("eip", "esp")
    chain = truth["call_chain"]
    first = next(i for i, f in enumerate(chain) if f["rip"] == ctx[ip_name] and f["sp"] == ctx[sp_name])
    want = [f for f in chain[first:] if f["kind"] not in ("syscall", "user")]
    path = {"all": MACHINE_SYMBOLS, "drivers": driver_store, "none": ""}[images]
    with kdshell.open(machines.path(name, kind), symbol_path=path, image_path="") as s:
        walk = s.context.walk(100)
        k = lines(s, "k 0n100")
    assert len(walk) >= 2 and len(k) == len(walk) + 1 + any(f.guess for f in walk)
    for f, t in zip(walk, want):
        if not f.guess:
            assert (f.ip, f.sp) == (t["rip"], t["sp"]), (f.number, t["function"])
    guessed = [f.number for f in walk if f.guess]
    if guessed:
        # the warning, once, before the first guess (frames after a trap frame the walk knew
        # from the dump are the trap frame's again: kv says which are guesses)
        assert k.index(SCAN_WARNING) == guessed[0] + 1 and k.count(SCAN_WARNING) == 1
    if images == "all" or kind != "small":
        assert not guessed   # nt's code and unwind data are here: nothing is guessed


# -- the scan's rules ----------------------------------------------------------------------------------
class Module:
    """A module whose image reader is not there (its bytes are the memory's, if any)."""

    def __init__(self, img):
        self.base, self.size, self.name, self.image = img.base, img.size, img.name, None


class Modules:
    def __init__(self, img, starts=()):
        self.module, self.starts = Module(img), set(starts)

    def module_at(self, address):
        m = self.module
        return m if m.base <= address < m.base + m.size else None

    def function_start(self, address):
        return address in self.starts


@pytest.fixture(scope="module")
def mydrv():
    """mydrv.sys laid out as mapped, its calls (return address -> call length, by capstone), the
    addresses after its one-byte instructions (no call ends there), and an address in .data."""
    img = load_image("mydrv.sys", "mydrv.pdb.pdbutil.txt")
    text = next(s for s in img.pe.sections if s.Characteristics & 0x20000000)
    code = img.mapped[text.VirtualAddress:text.VirtualAddress + text.Misc_VirtualSize]
    calls, others = {}, []
    for insn in CS.disasm(code, img.base + text.VirtualAddress):
        after = insn.address + insn.size
        if insn.mnemonic == "call":
            calls[after] = insn.size
        elif insn.mnemonic in ("ret", "push", "pop", "nop", "int3") and insn.size == 1:
            others.append(after)
    data = next(s for s in img.pe.sections if s.Name.startswith(b".data"))
    assert not data.Characteristics & 0x20000000
    return img, calls, [a for a in others if a not in calls], img.base + data.VirtualAddress + 0x10


def _memory(img, code_readable=True):
    m = Memory()
    m.write(img.base, img.mapped[:0x1000])                      # the headers (the section table)
    for s in img.pe.sections:
        if code_readable or not s.Characteristics & 0x20000000:
            m.write(img.base + s.VirtualAddress, img.mapped[s.VirtualAddress:s.VirtualAddress + s.Misc_VirtualSize])
    return m


def test_return_check_rules(mydrv):
    img, calls, others, data = mydrv
    modules = Modules(img)
    memory = _memory(img)
    check = ReturnCheck(memory.read, modules)
    ret = next(a for a in calls if a & 0xF)
    assert check.judge(ret, 0x1008) == (SCAN, calls[ret], modules.module)
    assert check.judge(ret, 0x1000) is None                   # a call leaves its return address at 8 mod 16
    assert check.judge(ret, 0x1008, exclude={ret}) is None     # a register's value
    assert check.judge(others[3], 0x1008) is None              # no call before it
    assert check.judge(data, 0x1008) is None                   # .data: not code
    assert check.judge(img.base + 0x10, 0x1008) is None        # the headers
    assert check.judge(0x1234, 0x1008) is None                 # in no module
    # code not in the dump: inside .text it is a guess nobody can check, elsewhere still nothing
    blind = ReturnCheck(_memory(img, code_readable=False).read, modules)
    assert blind.judge(others[3], 0x1008) == (UNVERIFIED, 0, modules.module)
    assert blind.judge(data, 0x1008) is None
    # a known function start is a function pointer, whatever precedes it
    start = img.sym("MyDrvReadRegister")
    known = Modules(img, {start})
    with_symbols = ReturnCheck(_memory(img, code_readable=False).read, known, function_start=known.function_start)
    assert with_symbols.judge(start, 0x1008) is None and blind.judge(start, 0x1008) is not None


def test_scan_prefers_what_it_can_check(mydrv):
    img, calls, others, data = mydrv
    modules = Modules(img)
    stack = 0xFFFFF88000100000
    ret = next(a for a in calls if a & 0xF)
    aligned = next(a for a in others if not a & 0xF)
    unaligned = next(a for a in others if a & 0xF)
    # .data, a return address in a slot a call does not use (0 mod 16), a 16-aligned value, an
    # address after a one-byte instruction, a return address; the code readable or not
    for readable, expect in ((True, (stack + 0x38, ret, SCAN)), (False, (stack + 0x28, unaligned, UNVERIFIED))):
        m = _memory(img, code_readable=readable)
        m.q(stack, 0, data, ret, aligned, 0, unaligned, 0, ret)
        hit = scan_for_return(m.read, modules, stack, max_bytes=0x40)
        assert (hit.slot, hit.return_address, hit.how) == expect
    # alone, the 16-aligned value is taken: nothing better exists (the stack's next page is not
    # in the dump: the scan ends there quietly)
    m = _memory(img, code_readable=False)
    m.q(stack, 0, aligned, 0, 0)
    hit = scan_for_return(m.read, modules, stack, max_bytes=0x2000)
    assert (hit.slot, hit.return_address, hit.how) == (stack + 8, aligned, UNVERIFIED)
    assert scan_for_return(m.read, modules, stack + 0x10, max_bytes=0x2000) is None


@pytest.mark.parametrize("code", [
    "3E FF D0",                  # notrack call rax (CET)
    "3E 41 FF D3",               # notrack call r11
    "2E FF 15 00 10 00 00",      # call [rip+disp32] with a branch hint
    "3E 48 FF 15 00 10 00 00",   # notrack rex.w call [rip+disp32]: guard dispatch through the IAT
    "41 FF D0", "41 FF D7",      # call r8 / r15
    "48 FF 15 00 10 00 00",      # the import call the kernel rewrites (a 5-byte nop follows it)
    "E8 00 10 00 00",            # call rel32: retpoline and guard dispatch thunks
])
def test_call_forms_with_prefixes(code):
    raw = bytes.fromhex(code.replace(" ", ""))
    insn = next(CS.disasm(raw, 0))
    assert insn.mnemonic.split()[-1] == "call" and insn.size == len(raw)   # "notrack call"
    assert call_length_before((b"\xcc" * 9 + raw)[-9:]) == len(raw)


# -- the code reader ----------------------------------------------------------------------------------
BASE = 0xFFFFF80000401000


def follow(code: str):
    m = Memory()
    m.write(BASE, bytes.fromhex(code.replace(" ", "")))
    return follow_to_return(m.read, BASE)


@pytest.mark.parametrize("code, place, extra, restores, moved", [
    # nt!IofCallDriver+0x55 on the 19041 dump: add rsp, 38h; ret
    ("4883C438 C3", (None, 0x38), 0, (), True),
    # its caller: mov ebx,eax; mov edx,imm; mov rcx,rsi; call; reloads; add rsp,20h; pop x3; ret
    ("8BD8 BA506E7069 488BCE E8FBC8B0FF 488B6C2448 8BC3 488B5C2440 488B742450 4883C420 415F 415E 5F C3",
     (None, 0x38), 0, (("rbx", (None, 0x40)), ("rbp", (None, 0x48)), ("rsi", (None, 0x50)), ("rdi", (None, 0x30)),
                       ("r14", (None, 0x28)), ("r15", (None, 0x20))), True),
    # lea r11, [rsp+80h]; mov rbx, [r11+10h]; mov rbp, [r11+18h]; mov rsp, r11; pop rdi; ret
    ("4C8D9C2480000000 498B5B10 498B6B18 498BE3 5F C3",
     (None, 0x88), 0, (("rbx", (None, 0x90)), ("rbp", (None, 0x98)), ("rdi", (None, 0x80))), True),
    ("C9 C3", ("rbp", 8), 0, (("rbp", ("rbp", 0)),), True),              # leave; ret
    ("0FA310 0F92C0 C3", (None, 0), 0, (), False),                      # bt; setb al; ret: a leaf
    ("C20800", (None, 0), 8, (), False),                                # ret 8
    ("85C0 7402 CCCC 4883C428 C3", (None, 0x28), 0, (), True),          # je over int3s: the taken way
    ("4883C428 48FFE0", (None, 0x28), 0, (), True),                     # add rsp; rex.w jmp rax: a tail call
    ("4883C428 EB02 CCCC C3", (None, 0x28), 0, (), True),               # jmp over int3s
])
def test_code_reader_finds_the_way_out(code, place, extra, restores, moved):
    way = follow(code)
    assert (way.place, way.extra, way.restores, way.moved) == (place, extra, restores, moved)


@pytest.mark.parametrize("code", [
    "FFE0",               # jmp rax without REX.W: a switch, not an epilog
    "EBFE",               # a loop
    "4883E4F0 C3",        # and rsp, -16: RSP moved by something it does not follow
    "CC",                 # int3
    "488B2424 C3",        # mov rsp, [rsp]
    "4883C428",           # runs into memory the dump does not have
])
def test_code_reader_gives_up(code):
    assert follow(code) is None


def test_leaf_rule_needs_a_return_address_at_rsp(mydrv):
    """No unwind data and no code for the function at RIP: [RSP] is its caller when it passes the
    scan's checks (a guess, "leaf"); otherwise the walk scans."""
    img, calls, others, data = mydrv
    modules = Modules(img)
    ret = next(a for a in calls if a & 0xF)
    later = [a for a in calls if a & 0xF and a != ret][0]
    m = _memory(img)
    stack = 0xFFFFF88000100008
    inside = img.base + 0x1000
    m.q(stack, ret, 0, 0, 0)
    walk = Walker(m.read, modules, decode=False).walk({"rip": inside, "rsp": stack}, 2)
    assert [(f.how, f.guess) for f in walk] == [("context", False), ("leaf", True)] and walk[1].ip == ret
    m.q(stack, data, 0, later, 0)
    walk = Walker(m.read, modules, decode=False).walk({"rip": inside, "rsp": stack}, 2)
    assert (walk[1].how, walk[1].ip, walk[1].sp) == ("scan", later, stack + 0x18)
    # RIP in no module: no leaf rule, the scan takes [RSP]
    m.q(stack, ret, 0)
    walk = Walker(m.read, modules, decode=False).walk({"rip": 0xFFFFF80000500000, "rsp": stack}, 2)
    assert (walk[1].how, walk[1].ip) == ("scan", ret)


def test_a_path_added_later_is_used_by_the_next_walk(machines):
    """What the walker could not read is tried again on the next walk: after `.sympath` names
    the images, their code and unwind data come from the image files (the module views are
    rebuilt when a module's image appears), so nothing is guessed any more; `.reload` keeps it."""
    with kdshell.open(machines.path("d1", "small"), symbol_path="", image_path="") as s:
        before = s.context.walk(20)
        s.run(f".sympath {BIN}")
        after = s.context.walk(20)
        s.run(".reload")
        reloaded = s.context.walk(20)
    truth = machines.truth("d1")["call_chain"]
    assert sum(f.guess for f in before) > 0 and sum(f.guess for f in after) == sum(f.guess for f in reloaded) == 0
    assert [(f.ip, f.sp) for f in after] == [(f.ip, f.sp) for f in reloaded] == [(t["rip"], t["sp"]) for t in truth]


def test_code_reader_restores_only_what_the_dump_holds():
    """A register reloaded from a stack slot the way itself wrote (a spill, a push) does not get
    the dump's stale value: it is unknown; one reloaded from the caller's frame is restored."""
    way = follow("48895C2420 E800000000 488B5C2420 488B742430 4883C428 C3")   # spill rbx, call, reload
    assert way.restores == (("rbx", None), ("rsi", (None, 0x30)))
    way = follow("53 E800000000 5B 4883C428 C3")                             # push rbx ... pop rbx
    assert way.restores == (("rbx", None),) and way.place == (None, 0x28)
