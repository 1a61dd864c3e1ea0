"""!analyze, .cxr, .ecxr, .frame and .trap on ARM64 dumps (issue 18, parts 4 and 6): the platform
in text and JSON, the CONTEXT block with ARM64 registers and AArch64 code, FOLLOWUP_IP, and
STACK_TEXT from the one walker, on tests/arm64_machine.py's complete and small dumps (bug check
0x1C8 at KeBugCheckEx, and 0x7E with its EXCEPTION_RECORD and CONTEXT record in pool).

Expected lines are built here from the machine's literal values, not from kdshell's renderers.
"""
from __future__ import annotations

import json

import pytest

import arm64_machine as A
import kdshell
from kdshell.cli import main


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    d = tmp_path_factory.mktemp("arm64a")
    return {(kind, code): A.write(d, kind, code) for kind in ("full", "triage") for code in (0x1C8, 0x7E)}


def tick(v: int) -> str:
    return f"{v >> 32:08x}`{v & 0xFFFFFFFF:08x}"


def word(offset: int) -> int:
    return A.STACK_WORDS.get(offset, 0)


def kb_row(sp_off: int, ret: int, site: str) -> str:
    """A kb row: the four slots above Child-SP, as the stack page holds them."""
    slots = " ".join(tick(word(sp_off + 8 * i)) for i in range(1, 5))
    return f"{tick(A.STACK + sp_off)} {tick(ret)}     : {slots} : {site}"


def block(text: str, start: str) -> list[str]:
    """The lines of `text` from the one equal to `start` to the next empty line."""
    lines = text.splitlines()
    i = lines.index(start)
    return lines[i : lines.index("", i)]


def cxr_block() -> list[str]:
    r = A.cxr_registers()
    names = [f"x{i}" for i in range(29)] + ["fp", "lr", "sp"]
    cells = [f"{n:>3}={r[n]:016x}" for n in names]
    rows = ["  ".join(cells[i : i + 4]) for i in range(0, 32, 4)]
    return rows + [f" pc={A.CXR_PC:016x}  psr=80000005 N--- EL1"]


MOV = f"{tick(A.CXR_PC)} d2803900 mov         x0,#0x1C8"


def test_analyze_on_the_complete_dump_of_0x1c8(dumps):
    with kdshell.open(dumps["full", 0x1C8]) as s:
        out = s.capture("!analyze -v")
    assert "OSPLATFORM_TYPE:  arm64" in out.splitlines()
    assert block(out, "STACK_TEXT:  ")[1:] == [
        kb_row(0xF00, A.NT_BASE + 0x1118, "nt!KeBugCheckEx+0x24"),
        kb_row(0xF20, A.NT_BASE + 0x1154, "nt!PopPowerButtonWorkCallback+0x18"),
        kb_row(0xF70, A.NT_BASE + 0x118C, "nt!ExpWorkerThread+0x14"),
        kb_row(0xFA0, A.NT_BASE + 0x11C8, "nt!PspSystemThreadStartup+0xc"),
        kb_row(0xFB0, 0, "nt!KiStartSystemThread+0x8"),
    ]
    assert "FOLLOWUP_IP: " not in out  # a manual crash blames no code


def test_analyze_of_0x7e_shows_the_arm64_context_and_followup(dumps):
    with kdshell.open(dumps["full", 0x7E]) as s:
        out = s.capture("!analyze -v")
        assert s.capture("r pc").strip() == f"pc={A.PC:016x}"  # !analyze left the context alone
    cxr = f"{A.CXR:x}"
    assert block(out, f"CONTEXT:  {cxr} -- (.cxr {A.CXR:#x})")[1:] == cxr_block() + [
        "nt!PopPowerButtonWorkCallback+0x10:", MOV, "Resetting default scope"]
    assert [row.rsplit(" : ", 1)[1] for row in block(out, "STACK_TEXT:  ")[1:]] == [
        "nt!PopPowerButtonWorkCallback+0x10", "nt!ExpWorkerThread+0x14", "nt!PspSystemThreadStartup+0xc",
        "nt!KiStartSystemThread+0x8"]
    assert block(out, "STACK_TEXT:  ")[1].startswith(f"{tick(A.CXR_SP)} {tick(A.NT_BASE + 0x1154)} ")
    assert block(out, "FOLLOWUP_IP: ") == ["FOLLOWUP_IP: ", "nt!PopPowerButtonWorkCallback+10", MOV]
    for line in ("SYMBOL_NAME:  nt!PopPowerButtonWorkCallback+10", f"STACK_COMMAND:  .cxr {A.CXR:#x} ; kb",
                 "FAILURE_BUCKET_ID:  AV_nt!PopPowerButtonWorkCallback", "OSPLATFORM_TYPE:  arm64",
                 "READ_ADDRESS:  10"):
        assert line in out.splitlines()


def test_analyze_of_0x7e_on_the_small_dump(dumps):
    # the small dump keeps no nt header (no names) and no .pdata: the frame-record chain
    with kdshell.open(dumps["triage", 0x7E]) as s:
        out = s.capture("!analyze -v")
    assert block(out, f"CONTEXT:  {A.CXR:x} -- (.cxr {A.CXR:#x})")[1:] == cxr_block() + [
        "nt+0x1110:", MOV, "Resetting default scope"]
    stack = block(out, "STACK_TEXT:  ")[1:]
    assert stack[0].startswith(f"{tick(A.CXR_SP)} {tick(A.NT_BASE + 0x1154)} ")
    assert [row.rsplit(" : ", 1)[1] for row in stack] == ["nt+0x1110", "nt+0x1154", "nt+0x118c", "nt+0x11c8"]
    assert block(out, "FOLLOWUP_IP: ") == ["FOLLOWUP_IP: ", "nt+1110", MOV]
    assert "OSPLATFORM_TYPE:  arm64" in out.splitlines()


@pytest.mark.parametrize("kind", ["full", "triage"])
def test_analyze_json_says_arm64(dumps, kind, capsys):
    assert main(["-z", str(dumps[kind, 0x7E]), "-y", "", "--offline", "--analyze-json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["os"]["platform"] == "arm64"
    assert data["context_record"] == f"{A.CXR:#x}"
    assert data["stack"][0]["child_sp"] == f"{A.CXR_SP:#x}" and data["stack"][0]["ip"] == f"{A.CXR_PC:#x}"


def test_cxr_ecxr_frame_and_r_on_arm64(dumps):
    with kdshell.open(dumps["full", 0x7E]) as s:
        shown = s.capture(f".cxr {A.CXR:#x}").splitlines()
        assert shown == cxr_block() + ["nt!PopPowerButtonWorkCallback+0x10:", MOV]
        assert s.capture("k").splitlines()[1:] == [
            f"{tick(A.CXR_SP)} {tick(A.NT_BASE + 0x1154)}     nt!PopPowerButtonWorkCallback+0x10",
            f"{tick(A.STACK + 0xF70)} {tick(A.NT_BASE + 0x118C)}     nt!ExpWorkerThread+0x14",
            f"{tick(A.STACK + 0xFA0)} {tick(A.NT_BASE + 0x11C8)}     nt!PspSystemThreadStartup+0xc",
            f"{tick(A.STACK + 0xFB0)} 00000000`00000000     nt!KiStartSystemThread+0x8"]
        assert s.capture(".frame 1").splitlines() == [
            f"01 {tick(A.STACK + 0xF70)} {tick(A.NT_BASE + 0x118C)}     nt!ExpWorkerThread+0x14"]
        r = s.capture("r").splitlines()
        # PopPowerButtonWorkCallback's prolog saved x19/x20 at 0xF40 and its frame record at 0xF50
        assert r[4].startswith("x16=") and r[4].endswith("x19=0000000000001919")
        assert r[7] == f"x28=0000000000007e1c   fp={A.STACK + 0xF70:016x}   lr={A.NT_BASE + 0x1154:016x}   " \
                        f"sp={A.STACK + 0xF70:016x}"
        assert r[-2:] == ["nt!ExpWorkerThread+0x14:", f"{tick(A.NT_BASE + 0x1154)} a8c17bfd ldp         fp,lr,[sp],#0x10"]
        assert s.capture(".cxr").splitlines() == ["Resetting default scope"]
        assert s.capture("r pc").strip() == f"pc={A.PC:016x}"
        assert s.capture(".ecxr").splitlines() == shown
        assert s.capture("r sp").strip() == f"sp={A.CXR_SP:016x}"
        assert s.capture(".cxr 0x1234").strip() == "Unable to read context at 00000000`00001234, Win32 error 0n30"


def test_trap_reads_a_ktrap_frame_not_a_context(dumps):
    # .trap takes the KTRAP_FRAME layout (tests/test_arm64_objects.py decodes a real one): given a
    # CONTEXT record's address it reads the record's x18 (CONTEXT +0x98) as the frame's Sp (+0x98)
    with kdshell.open(dumps["full", 0x7E]) as s:
        assert s.capture(f".trap {A.CXR:#x}").splitlines()[0] == "NOTE: The trap frame does not contain all registers."
        assert s.capture("r sp").strip() == f"sp={A.cxr_registers()['x18']:016x}"
        s.capture(".trap")
        assert s.capture("r pc").strip() == f"pc={A.PC:016x}"


@pytest.mark.parametrize("kind", ["full", "triage"])
def test_the_tutorial_walks_an_arm64_dump(dumps, kind):
    from test_tutorial import flat, typed, walk

    with kdshell.open(dumps[kind, 0x7E]) as s:
        text = walk(s)
    assert typed(text) == [".bugcheck", "!analyze -v", "k", f".cxr {A.CXR:#x}", "u @pc L4", "lmvm nt",
                           "dq @sp L8", ".cxr"]
    assert "Skipped" not in text and "Not quite" not in text
    assert "pc is the faulting instruction" in flat(text)
    # dq @sp after .cxr: the context record's sp, the stack page's words there
    assert f"{tick(A.CXR_SP)}  {tick(word(0xF20))} {tick(word(0xF28))}" in text.splitlines()
