"""Contexts and headers (issue 17 part 5): `~Ns` on the crashing processor shows the context it
saved in its KPRCB, `.cxr` alone returns to the dump's context, `.exr -1` shows the dump's own
exception record, `!dh` reads the PE header a small dump keeps, and `!analyze -teach` says so when
a driver called the bug check itself.

Truth: the corpus dump triage-x64-19041-1000007e.dmp (its header holds the exception's context,
P4; KeBugCheckEx's context, rip fffff8047bdf5a80 rsp ffff850429890ee8, is in the KPRCB copy:
ProcessorState.ContextFrame is zero there and KPRCB.Context, the KDBG's OffsetPrcbContext, points
at it; nt's header is read here with pefile from the dump's bytes) and the test machines'
truth JSON (bugcheck_context: what KeBugCheckEx saved in processor 0's KPRCB; context: the dump
header's).
"""
from __future__ import annotations

import dataclasses
import shutil
import struct

import pefile
import pytest

import kdshell
from kdshell.analysis.analyze import FrameSymbol, analyze
from kdshell.analysis.teach import bugcheck_caller, explain
from kdshell.stack.walk import StackWalk
from test_stack_commands import BIN, MACHINE_SYMBOLS, check_rows, expected_rows, lines, parse_k

NT_BASE = 0xFFFFF8047BA00000


def registers(out):
    """r's register lines as {name: value}."""
    regs = {}
    for line in out:
        for word in line.replace(" r8=", "r8=").split():
            name, eq, value = word.partition("=")
            if eq and name.isalnum() and all(c in "0123456789abcdef" for c in value):
                regs[name] = int(value, 16)
    return regs


# -- ~Ns and .cxr ------------------------------------------------------------------------------------
def test_processor_switch_on_the_crashing_processor_gives_its_saved_context(triage):
    default = lines(triage, "r")
    assert registers(default)["rip"] == 0xFFFFF8048B58334C  # the header's: the exception's context
    assert lines(triage, "~0s") == []
    regs = registers(lines(triage, "r"))
    assert (regs["rip"], regs["rsp"]) == (0xFFFFF8047BDF5A80, 0xFFFF850429890EE8)
    assert (regs["rcx"], regs["rdx"], regs["r8"]) == (0x7E, 0xFFFFFFFFC0000005, 0xFFFFF8048B58334C)  # KeBugCheckEx's arguments
    assert triage.prompt == "0: kd> "
    assert lines(triage, ".cxr") == ["Resetting default scope"]
    assert lines(triage, "r") == default


@pytest.mark.parametrize("kind", ["complete", "kernel", "small"])
def test_processor_switch_on_a_test_machine(machines, kind):
    """7e: the header holds the exception's context (P4), processor 0's KPRCB KeBugCheckEx's."""
    truth = machines.truth("7e")
    saved, header = truth["bugcheck_context"], truth["context"]
    assert saved["rip"] != header["rip"]
    with kdshell.open(machines.path("7e", kind), symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        assert lines(s, "~0s") == []
        regs = registers(lines(s, "r"))
        assert all(regs[n] == saved[n] for n in ("rip", "rsp", "rbp", "rax", "rbx", "rcx", "rdx", "r8", "r15"))
        assert lines(s, "r")[-2] == "nt!KeBugCheckEx:"
        chain = truth["call_chain"]
        want = expected_rows(chain, True)
        if kind == "small":
            small = truth["dumps"]["small"]["small"]
            want = [w for w in want if w[0] - 8 < small["top_of_stack"] + small["stack_size"]]
        check_rows(parse_k(lines(s, "kn 100")), want, True, f"7e-{kind} ~0s")
        assert lines(s, ".cxr") == ["Resetting default scope"]
        regs = registers(lines(s, "r"))
        assert (regs["rip"], regs["rsp"]) == (header["rip"], header["rsp"])


# -- .exr -1 -----------------------------------------------------------------------------------------
def test_exr_minus_one_is_the_dumps_exception_record(triage, machines):
    assert lines(triage, ".exr -1") == [
        "ExceptionAddress: fffff8047bdf5a80 (nt+0x00000000003f5a80)",
        "   ExceptionCode: 80000003 (Break instruction exception)",
        "  ExceptionFlags: 00000001",
        "NumberParameters: 0"]
    keb = machines.truth("d1")["globals"]["nt!KeBugCheckEx"]
    with kdshell.open(machines.path("d1", "kernel"), symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        out = lines(s, ".exr -1")
        assert out[0].startswith(f"ExceptionAddress: {keb:016x} (nt!KeBugCheckEx")
        assert out[1:] == ["   ExceptionCode: 80000003 (Break instruction exception)", "  ExceptionFlags: 00000001",
                           "NumberParameters: 0"]


# -- !dh ---------------------------------------------------------------------------------------------
def test_dh_reads_the_header_a_small_dump_keeps(triage):
    """nt's export and debug directories are not in the dump, its header page is: !dh shows it."""
    head = triage.memory.read(NT_BASE, 0x1000)
    assert head[:2] == b"MZ" and head[0x110:0x114] == b"PE\0\0"
    pe = pefile.PE(data=head, fast_load=True)
    out = lines(triage, "!dh nt")
    assert f"{pe.FILE_HEADER.NumberOfSections:8X} number of sections" in out
    assert f"{pe.FILE_HEADER.TimeDateStamp:8X} time date stamp" in out
    assert f"{pe.OPTIONAL_HEADER.SizeOfImage:8X} size of image" in out
    names = [x.strip().removesuffix(" name") for x in out if x.endswith(" name")]
    assert names == [s.Name.rstrip(b"\0").decode() for s in pe.sections]
    text = out.index("   .text name")
    assert out[text + 2] == f"{pe.sections[names.index('.text')].VirtualAddress:8X} virtual address"
    assert out[-1] == "Debug Directories: not in the dump"
    lmi = lines(triage, "!lmi nt")
    assert "   Machine Type: 34404 (AMD64)" in lmi
    assert "     Image Type: MEMORY   - Image read successfully from loaded memory." in lmi


def test_dh_without_a_header_in_the_dump_says_so(machines):
    """A test machine's small dump keeps no page of nt's headers: !dh needs the image file."""
    with kdshell.open(machines.path("d1", "small"), symbol_path="", image_path="") as s:
        assert lines(s, "!dh nt") == ["No PE header for nt: the dump does not have it and no image file was found"]
    with kdshell.open(machines.path("d1", "small"), symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        pe = pefile.PE(str(BIN / "ntoskrnl.exe"), fast_load=True)
        assert f"{pe.FILE_HEADER.TimeDateStamp:8X} time date stamp" in lines(s, "!dh -f nt")


# -- !analyze -teach: a driver that called the bug check --------------------------------------------------
CALLED = "kbdcrash.sys called the bug check itself (from {site}): the processor stopped in Windows' bug-check " \
         "routine (nt!KeBugCheckEx), not on a faulting instruction."


def teach_text(session):
    return " ".join(session.capture("!analyze -teach").split())


@pytest.mark.parametrize("kind,symbol_path,site", [
    ("small", MACHINE_SYMBOLS, "kbdcrash!KbdCrashInitiateCrash+1f"),
    ("complete", MACHINE_SYMBOLS, "kbdcrash!KbdCrashInitiateCrash+1f"),
    ("kernel", "", "kbdcrash+101f"),    # nt's names from the exports in the dump (KeBugCheck, KeBugCheckEx)
])
def test_teach_names_the_driver_that_called_the_bug_check(machines, kind, symbol_path, site):
    """e2: KeBugCheckEx <- KeBugCheck <- kbdcrash!KbdCrashInitiateCrash (truth's call chain)."""
    chain = machines.truth("e2")["call_chain"]
    assert [f["function"].split("+")[0] for f in chain[:3]] == ["nt!KeBugCheckEx", "nt!KeBugCheck",
                                                                "kbdcrash!KbdCrashInitiateCrash"]
    with kdshell.open(machines.path("e2", kind), symbol_path=symbol_path, image_path="") as s:
        text = teach_text(s)
    assert CALLED.format(site=site) in text
    assert "The request came through" not in text  # said once


def test_teach_for_a_driver_that_stopped_the_machine_with_its_own_code(machines, tmp_path):
    """e2's dump relabelled as bug check 0x65: the same stack, a driver verdict; teach says the
    driver called the bug check (not "a bad argument") and where to look."""
    path = tmp_path / "e2-65.dmp"
    shutil.copy(machines.path("e2", "kernel"), path)
    with open(path, "r+b") as f:
        f.seek(0x38)
        f.write(struct.pack("<I", 0x65))
        f.seek(0x40)
        f.write(struct.pack("<4Q", 1, 2, 3, 4))
    with kdshell.open(path, symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        a = analyze(s)
        assert a.culprit.image == "kbdcrash.sys" and bugcheck_caller(a) == 2
        text = teach_text(s)
    assert CALLED.format(site="kbdcrash!KbdCrashInitiateCrash+1f") in text
    assert "start with kbdcrash.sys" in text and "bad argument" not in text
    assert "the instructions leading up to its call of the bug check" in text


def test_teach_without_nt_names_uses_the_bug_check_code_in_rcx(machines):
    """nt code without names, entered with rcx = the bug check code and returning to a driver: the
    e2 analysis with KeBugCheck's frame taken out and nt's names removed, as a driver that calls
    KeBugCheckEx directly looks on a dump without nt's symbols."""
    with kdshell.open(machines.path("e2", "kernel"), symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        a = analyze(s)
    assert a.stack[0].registers["rcx"] == 0xE2 == a.code
    top = a.symbols[0]
    unnamed = FrameSymbol(top.module, None, top.module_offset, top.module_offset)
    direct = dataclasses.replace(a, stack=StackWalk([a.stack[0], *a.stack[2:]]), symbols=[unnamed, *a.symbols[2:]])
    assert bugcheck_caller(direct) == 1
    assert any("kbdcrash.sys called the bug check itself" in p for p in explain(direct).what)
    # rcx is not the code: nt code without names is no evidence of the bug-check path
    a.stack[0].registers["rcx"] = 0x1234
    assert bugcheck_caller(dataclasses.replace(direct, stack=StackWalk([a.stack[0], *a.stack[2:]]))) is None


@pytest.mark.parametrize("name", ["d1", "7e-plain", "3b"])
def test_teach_leaves_faults_alone(machines, name):
    with kdshell.open(machines.path(name, "kernel"), symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        a = analyze(s)
        assert bugcheck_caller(a) is None
        assert "called the bug check itself" not in teach_text(s)
