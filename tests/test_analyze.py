"""!analyze against the truth.

- The test machines (fixtures/README.md): for every scenario and dump kind, the bug check, the
  culprit module and function, the faulting stack (Child-SP and call site of every frame the CPU
  executed from the fault outwards), the current process: all from the builder's ground truth.
  0xE2 blames no driver.
- The real small dumps: triage-x64-19041-1000007e.dmp with and without the corpus symbol store
  (amdppm.sys, amdppm!WriteIoMemRawEx+70, c0000005, checked against the record's raw bytes), and
  mini-x64-17763-1000007e.dmp, whose faulting module (nt) has no image or unwind data here.
- The JSON form (command and CLI), -show, the teaching section, one-line errors, and bug checks
  that blame no driver (a dump's header relabelled: pool and memory corruption, hardware, a
  critical process, a bad instruction pointer).
"""
from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, FULL_TRUNCATED, MINI_17763, TRIAGE_19041
from fixtures.machine.catalog import PLAN
from kdshell.analysis.analyze import analyze, failure_hash
from kdshell.analysis.rules import frame_kind, rule_for
from kdshell.analysis.report import title_lines
from kdshell.stack.text import call_site
from test_stack_commands import MACHINE_SYMBOLS, open_machine

# c2 (pool double free: blamed on the caller of ExFreePoolWithTag, no trap) is checked in test_pool.py,
# 13a (a segment-heap block overrun, raised by the heap) in test_segheap.py
MACHINE_DUMPS = [(name, kind) for name, kinds in PLAN.items() for kind in kinds if name not in ("c2", "13a")]
EXR_P3 = 0xFFFF850429891EE8   # the triage dump's P3: the EXCEPTION_RECORD
CXR_P4 = 0xFFFF850429891720   # and P4: the CONTEXT record
HASH = re.compile(r"^\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}$")


def lines(session, command):
    """The command's lines, without the notes on modules that lack symbols (tests/test_missing_symbols.py)."""
    return [line for line in session.capture(command).splitlines() if not line.startswith("*** Symbols for ")]


def fields(text_lines):
    """The `NAME:  value` fields of !analyze -v (the first occurrence of each)."""
    out = {}
    for line in text_lines:
        m = re.match(r"^([A-Z][A-Z0-9_]+):\s+(.*?)\s*$", line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2)
    return out


def block(text_lines, name):
    """The lines of a multi-line field (STACK_TEXT, CONTEXT, ...) up to the blank line."""
    start = next(i for i, x in enumerate(text_lines) if x.startswith(name + ":"))
    end = text_lines.index("", start)
    return text_lines[start + 1:end]


# -- the test machines ----------------------------------------------------------------------------------
def fault_index(truth) -> int:
    """The faulting frame of the executed call chain: the one a trap led to (0 without a trap)."""
    return next((i for i, f in enumerate(truth["call_chain"]) if f["kind"] == "trap"), 0)


def expected_stack(truth, kind: str, first: int):
    """(Child-SP, call site) of every executed frame from `first`, up to the user-mode call; in a
    small dump only the frames whose return slot lies in the saved stack."""
    chain = truth["call_chain"]
    out = []
    for f in chain[first:]:
        if f["kind"] in ("syscall", "user"):
            break
        out.append((f["sp"], f["function"]))
    if kind == "small":
        small = truth["dumps"]["small"]["small"]
        end = small["top_of_stack"] + small["stack_size"]
        out = [row for row, f in zip(out, chain[first:]) if f["sp"] - 8 < end] or out[:1]
    return out


def current_process(truth) -> str:
    cpu = truth["processors"][0]
    thread = next(t for t in truth["threads"] if t["address"] == cpu["current_thread"])
    return next(p["name"] for p in truth["processes"] if p["address"] == thread["process"])


@pytest.mark.parametrize("name,kind", MACHINE_DUMPS, ids=[f"{n}-{k}" for n, k in MACHINE_DUMPS])
def test_analysis_matches_the_truth(machines, name, kind):
    truth = machines.truth(name)
    chain = truth["call_chain"]
    # 0x133: the clock interrupt's trap frame is not a fault; the stack is KeBugCheckEx's
    first = 0 if truth["bugcheck"]["code"] == 0x133 else fault_index(truth)
    with open_machine(machines, name, kind) as s:
        a = analyze(s)
        assert (a.code, list(a.params)) == (truth["bugcheck"]["code"], truth["bugcheck"]["parameters"])
        # the faulting stack, from the faulting frame on, is the executed one
        got = [(f.sp, call_site(s.symbols, f, s.is64)) for f in a.stack[a.start:]]
        want = expected_stack(truth, kind, first)
        assert got[:len(want)] == want, (name, kind)
        assert not a.guessed_stack  # every image is on the symbol path: nothing is guessed
        if a.stack_command == "kb":  # the crashing stack itself: from KeBugCheckEx on
            assert (a.stack[0].sp, call_site(s.symbols, a.stack[0], s.is64)) == (chain[0]["sp"], chain[0]["function"])
        # the culprit: module and function of the faulting frame (0xE2: nobody)
        if truth["bugcheck"]["code"] == 0x124:  # a machine check: the hardware, named by the record's vendor
            assert a.culprit is None and a.verdict == "hardware" and a.pseudo_module == "GenuineIntel"
            assert truth["whea"]["mca"]["vendor"] == 1 and truth["whea"]["generic"]["error_type"] == 1  # Intel, cache
            assert a.bucket == "0x124_0_GenuineIntel_PROCESSOR_CACHE"
        elif truth["bugcheck"]["code"] == 0x133:  # the watchdog: the driver code the clock interrupted
            trap = fault_index(truth)
            module, _, rest = chain[trap]["function"].partition("!")
            c = a.culprit
            assert (a.verdict, c.image, c.module, c.function) == ("driver", "kbdcrash.sys", module, rest.split("+")[0])
            assert c.frame == trap and c.ip == chain[trap]["rip"]
            assert a.bucket == f"0x133_0_{module}!{c.function}"
        elif truth["bugcheck"]["code"] == 0x9F:  # the blocked IRP's holder, named from the IRP (test_power.py)
            blocked = truth["power"]["blocked"]  # (small dumps keep the IRP and its stack: emit.power_triage_blocks)
            assert (a.verdict, a.culprit.image, a.culprit.frame) == ("driver", blocked["holder_image"], None)
            assert a.bucket == "0x9F_3_POWER_DOWN_IMAGE_storfilt.sys"  # a D3 IRP
        elif truth["culprit"] is None:
            assert a.culprit is None and a.verdict == "manual"
            assert a.bucket == "MANUALLY_INITIATED_CRASH"
            assert a.detector is not None and a.detector.image == "kbdcrash.sys"  # who asked for it
        else:
            module, _, rest = chain[first]["function"].partition("!")
            function, _, offset = rest.partition("+0x")
            c = a.culprit
            assert (a.verdict, c.image, c.module, c.function) == ("driver", truth["culprit"], module, function)
            assert c.symbol_name == f"{module}!{function}+{offset}"
            assert c.frame == a.start and c.ip == chain[first]["rip"]
            assert a.bucket == f"AV_{module}!{function}"
        assert HASH.match(a.failure_hash) and a.failure_hash == failure_hash(a.bucket)
        assert a.process_name == current_process(truth)
        assert a.errors == []


@pytest.mark.parametrize("name", list(PLAN))
def test_verbose_stack_text_is_what_the_stack_command_shows(machines, name):
    """STACK_TEXT is `kb` run in the context STACK_COMMAND names; the user's context is left
    as it was (a `.cxr` before !analyze is still in force after it)."""
    kind = "kernel" if "kernel" in PLAN[name] else "complete"
    with open_machine(machines, name, kind) as s:
        out = lines(s, "!analyze -v")
        f = fields(out)
        stack_text = block(out, "STACK_TEXT")
        command = f["STACK_COMMAND"]
        before = lines(s, "r")
        if command != "kb":
            s.run(command.split(";")[0])
        kb = lines(s, "kb 0x40")[1:]
        s.run(".cxr")
        assert stack_text == kb
        assert lines(s, "r") == before
        assert f["FAILURE_BUCKET_ID"] == analyze(s).bucket
        truth = machines.truth(name)
        # c2: nt raises it for the caller; 133: the driver code the clock interrupted;
        # 13a: a corrupted heap header, WinDbg's Pool_Corruption
        culprit = truth["culprit"] or {"c2": "mydrv.sys", "133": "kbdcrash.sys", "13a": "Pool_Corruption"}.get(name)
        if truth["bugcheck"]["code"] == 0x9F:  # named from the blocked IRP, not from a frame
            image = truth["power"]["blocked"]["holder_image"]
            assert (f["IMAGE_NAME"], f["MODULE_NAME"]) == (image, image.rsplit(".", 1)[0]) and "SYMBOL_NAME" not in f
            assert lines(s, "!analyze")[10] == f"Probably caused by : {image}"
        elif culprit:
            assert f["IMAGE_NAME"] == culprit
            assert f["MODULE_NAME"] == culprit.rsplit(".", 1)[0]
            assert lines(s, "!analyze")[10] == f"Probably caused by : {f['IMAGE_NAME']} ( {f['SYMBOL_NAME']} )"
        elif truth["bugcheck"]["code"] == 0x124:
            assert f["IMAGE_NAME"] == f["MODULE_NAME"] == "GenuineIntel" and "BUGCHECKING_DRIVER" not in f
        else:
            assert "IMAGE_NAME" not in f and "MODULE_NAME" not in f
            assert f["BUGCHECKING_DRIVER"] == "kbdcrash.sys"
        assert f["PROCESS_NAME"] == current_process(truth)


def test_context_and_trap_blocks(machines):
    """7e: EXCEPTION_RECORD and CONTEXT are the .exr/.cxr listings; d1: TRAP_FRAME is .trap's."""
    truth = machines.truth("7e")
    p = truth["bugcheck"]["parameters"]
    with open_machine(machines, "7e", "kernel") as s:
        s.run(".thread")  # a user's choice the analysis must not disturb
        out = lines(s, "!analyze -v")
        assert f"EXCEPTION_RECORD:  {p[2]:x} -- (.exr {p[2]:#x})" in out
        assert block(out, "EXCEPTION_RECORD") == lines(s, f".exr {p[2]:#x}")
        assert block(out, "CONTEXT")[:-1] == lines(s, f".cxr {p[3]:#x}")
        assert block(out, "CONTEXT")[-1] == "Resetting default scope"
        s.run(".cxr")
        assert fields(out)["STACK_COMMAND"] == f".cxr {p[3]:#x} ; kb"
        exr = lines(s, f".exr {p[2]:#x}")
        assert exr[1] == "   ExceptionCode: c0000005 (Access violation)"
        assert exr[-1] == "Attempt to read from address 0000000000000004"  # NULL->Next's length field
    trap = next(f for f in machines.truth("d1")["call_chain"] if f["kind"] == "trap")
    tf = trap["machine_frame"] - 0x168
    with open_machine(machines, "d1", "kernel") as s:
        out = lines(s, "!analyze -v")
        assert f"TRAP_FRAME:  {tf:x} -- (.trap {tf:#x})" in out
        listing = block(out, "TRAP_FRAME")
        assert listing[:-1] == lines(s, f".trap {tf:#x}")
        s.run(".trap")
        assert fields(out)["READ_ADDRESS"] == "fffff8a000bad000"
        assert fields(out)["CURRENT_IRQL"] == "2"
        assert fields(out)["FOLLOWUP_IP"] == ""
        follow = out[out.index("FOLLOWUP_IP: ") + 1:out.index("FOLLOWUP_IP: ") + 3]
        assert follow[0] == "mydrv!MyDrvReadRegister+d"
        assert follow[1].startswith(f"{trap['rip'] >> 32:08x}`{trap['rip'] & 0xFFFFFFFF:08x} ")


def test_banner_ends_with_the_verdict(machines):
    with open_machine(machines, "d1", "small") as s:
        b = s.banner()
        assert b[-3:] == ["BugCheck D1, {fffff8a000bad000, 2, 0, fffff8000100111d}", "",
                          "Probably caused by : mydrv.sys ( mydrv!MyDrvReadRegister+d )"]
    with open_machine(machines, "e2", "small") as s:
        assert s.banner()[-1] == ("No driver is to blame : MANUALLY_INITIATED_CRASH "
                                  "(the crash was requested on purpose)")
    with kdshell.open(FULL_TRUNCATED) as s:  # no module list, no stack: the banner still opens
        assert s.banner()[-1].startswith(("BugCheck", "Probably caused by : Unknown_Image"))


# -- the real dumps -----------------------------------------------------------------------------------
SHORT = [
    "*" * 79,
    "*" + " " * 77 + "*",
    "*                        Bugcheck Analysis                                    *",
    "*" + " " * 77 + "*",
    "*" * 79,
    "",
    "Use !analyze -v to get detailed debugging information.",
    "",
    "BugCheck 1000007E, {ffffffffc0000005, fffff8048b58334c, ffff850429891ee8, ffff850429891720}",
    "",
    "Probably caused by : amdppm.sys ( amdppm!WriteIoMemRawEx+70 )",
    "",
    "Followup:     MachineOwner",
    "---------",
    "",
]


def test_triage_dump_with_symbols(triage):
    assert lines(triage, "!analyze") == SHORT
    out = lines(triage, "!analyze -v")
    f = fields(out)
    assert out[6:12] == ["SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M (1000007e)",
                         "System thread raised an unhandled exception.",
                         "Arguments:",
                         "Arg1: ffffffffc0000005, exception code not handled",
                         "Arg2: fffff8048b58334c, address where the exception occurred",
                         "Arg3: ffff850429891ee8, address of the EXCEPTION_RECORD (use .exr)"]
    assert (f["MODULE_NAME"], f["IMAGE_NAME"], f["SYMBOL_NAME"]) == ("amdppm", "amdppm.sys", "amdppm!WriteIoMemRawEx+70")
    assert f["FAILURE_BUCKET_ID"] == "AV_amdppm!WriteIoMemRawEx"
    assert f["BUCKET_ID_FUNC_OFFSET"] == "70"
    assert f["IMAGE_VERSION"] == "10.0.19041.1110"  # amdppm.sys's version resource
    assert f["EXCEPTION_CODE_STR"] == "c0000005"
    assert f["STACK_COMMAND"] == f".cxr {CXR_P4:#x} ; kb"
    assert (f["OS_VERSION"], f["BUILDLAB_STR"], f["OSNAME"]) == ("10.0.19041.1", "vb_release", "Windows 10")
    assert f["PROCESS_NAME"] == "System"
    assert HASH.match(f["FAILURE_ID_HASH"])
    # the exception record, against its raw bytes (EXCEPTION_RECORD64: code, flags, record,
    # address, count, then the parameters at +0x20)
    raw = triage.dump.triage.memory.read(EXR_P3, 0x30)
    code, flags, _, address, count = struct.unpack_from("<IIQQI", raw)
    p0, p1 = struct.unpack_from("<QQ", raw, 0x20)
    assert block(out, "EXCEPTION_RECORD") == [
        f"ExceptionAddress: {address:016x} (amdppm!WriteIoMemRawEx+0x0000000000000070)",
        f"   ExceptionCode: {code:08x} (Access violation)",
        f"  ExceptionFlags: {flags:08x}",
        f"NumberParameters: {count}",
        f"   Parameter[0]: {p0:016x}",
        f"   Parameter[1]: {p1:016x}",
        f"Attempt to write to address {p1:016x}",
    ]
    assert f["WRITE_ADDRESS"] == f"{p1:x}"
    # STACK_TEXT: the six amdppm frames then Wdf01000's, as `.cxr P4; kb` shows them
    stack_text = block(out, "STACK_TEXT")
    triage.run(f".cxr {CXR_P4:#x}")
    assert stack_text == lines(triage, "kb 0x40")[1:]
    assert [row.rsplit(" : ", 1)[1] for row in stack_text[:7]] == [
        "amdppm!WriteIoMemRawEx+0x70", "amdppm!WriteGenAddrEx+0x6b", "amdppm!WriteGenAddrMaybeHiddenEx+0x18",
        "amdppm!InitAcpiCpc+0x317", "amdppm!ProcLibDeviceStart+0x886", "amdppm!EvtDevicePrepareHardware+0xd2",
        "Wdf01000+0x7c027"]


def test_triage_dump_without_symbols():
    with kdshell.open(TRIAGE_19041, symbol_path="", image_path="") as s:
        a = analyze(s)
        assert (a.culprit.image, a.culprit.module, a.culprit.function) == ("amdppm.sys", "amdppm", None)
        assert a.culprit.symbol_name == "amdppm+334c"
        assert a.bucket == "AV_amdppm!unknown_function"
        assert a.exception.code == 0xC0000005
        assert lines(s, "!analyze")[10] == "Probably caused by : amdppm.sys ( amdppm+334c )"
        assert "IMAGE_VERSION" not in fields(lines(s, "!analyze -v"))  # no image file to read it from


def test_mini_dump_fault_in_nt_blames_its_caller():
    """The fault is a NULL read (`bt dword ptr [rax],edx`, rax=0) in nt, whose image and unwind
    data are not here; its code is (`bt; setb al; ret`: a leaf), so the return address on top of
    the stack, winhvr's, is its caller for certain. kdshell names winhvr.sys; the frames above
    it are scanned, after the warning, and `!analyze` shows the stack `k` shows."""
    with kdshell.open(MINI_17763, symbol_path="", image_path="") as s:
        a = analyze(s)
        assert a.exception.code == 0xC0000005 and a.exception.parameters == [0, 0]
        assert (a.access, a.fault_address) == ("read", 0)
        assert a.symbols[0].module_name == "nt" and a.stack[0].ip == a.params[1]
        assert (a.culprit.image, a.culprit.symbol_name, a.culprit.frame) == ("winhvr.sys", "winhvr+16755", 1)
        assert a.stack[1].how == "leaf" and not a.culprit.guessed and a.guessed_stack
        assert a.stack[1].sp == a.stack[0].sp + 8  # the leaf's return address, just above RSP
        assert a.bucket == "AV_winhvr!unknown_function"
        out = lines(s, "!analyze -v")
        assert not any(x.startswith("NOTE: The blamed frame is a guess") for x in out)
        assert any(x.startswith("NOTE: Part of the stack was found by scanning") for x in out)
        assert out.count("WARNING: Stack unwind information not available. Following frames may be wrong.") == 1
        # one walk: STACK_TEXT is `.cxr P4; kb` (the dump's context is that record already)
        stack_text = block(out, "STACK_TEXT")
        assert stack_text[2] == "WARNING: Stack unwind information not available. Following frames may be wrong."
        k = lines(s, "k")
        assert len(k) - 2 >= 5 and k[2].endswith("     winhvr+0x16755")
        assert [row[:40] + row.rsplit(" : ", 1)[-1] if " : " in row else row for row in stack_text] == k[1:]
        s.run(f".cxr {a.params[3]:#x}")
        assert lines(s, "kb 0x40")[1:] == stack_text
        teach = s.capture("!analyze -teach")
        assert "a read of address 0x0 (a NULL pointer" in teach.replace("\n", " ")
        assert "The faulting instruction is in nt+4a2d4, a part of Windows" in teach.replace("\n", " ")
        assert "winhvr.sys" in teach and ".exr 0xffff998071d4ed88" in teach


# -- JSON --------------------------------------------------------------------------------------------
def test_json_form_has_the_same_facts(triage):
    doc = json.loads(triage.capture("!analyze -json"))
    f = fields(lines(triage, "!analyze -v"))
    assert doc["bugcheck"]["code"] == "0x1000007e"
    assert doc["bugcheck"]["name"] == "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M"
    assert doc["bugcheck"]["parameters"][3] == {"value": f"{CXR_P4:#x}",
                                                "meaning": "address of the CONTEXT record (use .cxr)"}
    assert (doc["module_name"], doc["image_name"], doc["symbol_name"]) == (
        f["MODULE_NAME"], f["IMAGE_NAME"], f["SYMBOL_NAME"])
    assert (doc["failure_bucket_id"], doc["failure_id_hash"]) == (f["FAILURE_BUCKET_ID"], f["FAILURE_ID_HASH"])
    assert doc["culprit"]["function"] == "WriteIoMemRawEx" and doc["culprit"]["offset"] == "0x70"
    assert doc["exception"]["code"] == "0xc0000005" and doc["exception"]["record"] == f"{EXR_P3:#x}"
    assert doc["fault_context"] == {"kind": "context record", "address": f"{CXR_P4:#x}",
                                    "command": f".cxr {CXR_P4:#x}"}
    assert doc["stack"][0]["call_site"] == "amdppm!WriteIoMemRawEx+0x70"
    assert doc["stack"][0]["child_sp"] == "0xffff850429892120"
    assert doc["verdict"] == "driver" and doc["probably_caused_by"] == SHORT[10]
    assert doc["os"]["version"] == "10.0.19041.1" and doc["process_name"] == "System"
    assert doc["explanation"]["what_happened"] and doc["explanation"]["next_steps"]
    assert "[explain]" not in triage.capture("!analyze -json")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "kdshell", *args], capture_output=True, text=True, timeout=60)


def test_cli_analyze_json(tmp_path):
    p = run_cli("-z", str(TRIAGE_19041), "-y", str(CORPUS_SYMBOLS), "--analyze-json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)  # nothing but the JSON on standard output
    assert doc["image_name"] == "amdppm.sys" and doc["symbol_name"] == "amdppm!WriteIoMemRawEx+70"
    p = run_cli("-z", str(TRIAGE_19041), "--analyze-json")
    assert p.returncode == 0 and json.loads(p.stdout)["image_name"] == "amdppm.sys"
    bad = tmp_path / "bad.dmp"
    bad.write_bytes(b"not a dump" * 100)
    p = run_cli("-z", str(bad), "--analyze-json")
    assert p.returncode == 1 and p.stdout.count("\n") == 1
    assert "error" in json.loads(p.stdout) and "Traceback" not in p.stdout + p.stderr


# -- -show, errors, teaching -----------------------------------------------------------------------------
def test_show_needs_no_dump_facts(triage):
    out = lines(triage, "!analyze -show d1 fffff8a000bad000 2 0 fffff8000100111d")
    assert out == ["DRIVER_IRQL_NOT_LESS_OR_EQUAL (d1)",
                   "Driver accessed pageable/invalid memory at raised IRQL.",
                   "Arguments:",
                   "Arg1: fffff8a000bad000, memory referenced",
                   "Arg2: 0000000000000002, IRQL at time of reference",
                   "Arg3: 0000000000000000, access: 0 read, 1 write, 2 or 8 execute",
                   "Arg4: fffff8000100111d, address of the instruction that referenced memory (use ln)"]
    assert lines(triage, "!analyze -show 0x1000007e")[0] == "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M (1000007e)"
    assert lines(triage, "!analyze -show e2")[3:] == [f"Arg{i}: 0000000000000000, (not documented)" for i in range(1, 5)]
    assert lines(triage, "!analyze -show 0x12345")[0] == "UNKNOWN_BUGCHECK_CODE (12345)"
    assert title_lines(0xD1, (0x10, 2, 0, 0x8A6C1234), is64=False)[3] == "Arg1: 00000010, memory referenced"


@pytest.mark.parametrize("command,message", [
    ("!analyze -bogus", "!analyze: unknown option '-bogus'"),
    ("!analyze -show", "!analyze -show needs a bug check code"),
    ("!analyze -show 1 2 3 4 5 6", "!analyze -show takes a code and at most four parameters"),
    ("!analyze -hang", "!analyze -hang: a small memory dump keeps only the crashing thread"),
    (".exr", ".exr needs the address of an exception record"),
])
def test_errors_are_one_line(triage, command, message):
    before = triage.failures
    out = triage.capture(command)
    assert out.count("\n") == 1 and out.startswith(message)
    assert triage.failures == before + 1


def test_exr_of_an_unreadable_address_is_one_line(triage):
    assert lines(triage, ".exr 1000") == [
        "Unable to read the exception record at 00000000`00001000: it is not in the dump "
        "(not saved in the small memory dump)"]


def test_teaching_mode(triage):
    assert "What happened (for newcomers):" not in triage.capture("!analyze")
    teach = triage.capture("!analyze -teach")
    assert "What happened (for newcomers):" in teach and "What to look at next:" in teach
    assert f".cxr {CXR_P4:#x}; kb" in teach and "lmvm amdppm" in teach
    assert "general protection fault" in teach  # the record's address is all ones
    triage.run(".explain on")
    on = triage.capture("!analyze")
    assert "What happened (for newcomers):" in on
    assert "[explain]" in on and "Probably caused by" in on.split("[explain]")[1]
    assert json.loads(triage.capture("!analyze -json"))["verdict"] == "driver"  # no note after JSON
    triage.run(".explain off")


# -- verdicts that blame no driver: the d1 machine with its header relabelled ----------------------------
def relabel(machines, tmp_path, kind, code, params):
    """A copy of d1's dump whose DUMP_HEADER64 says another bug check (BugCheckCode at +0x38,
    the four parameters at +0x40): the same machine and stack, another verdict."""
    path = tmp_path / f"d1-{kind}-{code:x}.dmp"
    shutil.copy(machines.path("d1", kind), path)
    with open(path, "r+b") as f:
        f.seek(0x38)
        f.write(struct.pack("<I", code))
        f.seek(0x40)
        f.write(struct.pack("<4Q", *params))
    return kdshell.open(path, symbol_path=MACHINE_SYMBOLS, image_path="")


@pytest.mark.parametrize("kind", ["kernel", "small"])
def test_verdicts_that_blame_no_driver(machines, tmp_path, kind):
    with relabel(machines, tmp_path, kind, 0x19, (0x20, 0xFFFFC20A00001000, 0xFFFFC20A00001100, 0x4020001)) as s:
        a = analyze(s)
        assert (a.verdict, a.culprit, a.pseudo_module) == ("pool_corruption", None, "Pool_Corruption")
        assert a.bucket.startswith("0x19_20_POOL_CORRUPTION_")
        assert lines(s, "!analyze")[10].startswith("Probably caused by : Pool_Corruption ( ")
    with relabel(machines, tmp_path, kind, 0x1A, (0x41790, 0, 0, 0)) as s:
        a = analyze(s)
        assert (a.verdict, a.pseudo_module) == ("memory_corruption", "memory_corruption")
        assert a.bucket.startswith("0x1A_41790_MEMORY_CORRUPTION")
    with relabel(machines, tmp_path, kind, 0x124, (0, 0xFFFFC20A00001000, 0xBE000000, 0x800400)) as s:
        a = analyze(s)
        assert a.verdict == "hardware" and a.culprit is None
        assert a.bucket == f"0x124_0_{a.pseudo_module}"
        assert "Probably caused by : " + a.pseudo_module in lines(s, "!analyze")
    system = next(p for p in machines.truth("d1")["processes"] if p["name"] == "System")
    with relabel(machines, tmp_path, kind, 0xEF, (system["address"], 0, 0, 0)) as s:
        a = analyze(s)
        assert (a.verdict, a.critical_process, a.bucket) == ("critical_process", "System", "0xEF_System")
        assert fields(lines(s, "!analyze -v"))["CRITICAL_PROCESS"] == "System"
    with relabel(machines, tmp_path, kind, 0xDEADDEAD, (0, 0, 0, 0)) as s:
        assert analyze(s).verdict == "manual"


def test_bad_instruction_pointer(machines, tmp_path):
    """0x1E whose faulting address is outside every module (a call through a bad pointer): the
    verdict says so; the context (KeBugCheckEx's) still gives the stack."""
    bad = 0xFFFFF80012345678
    with relabel(machines, tmp_path, "kernel", 0x1E, (0xC0000005, bad, 8, bad)) as s:
        a = analyze(s)
        assert a.verdict == "driver" and a.culprit.image == "mydrv.sys"  # the stack has no bad frame
        assert any("not on the stack" in n for n in a.notes)
    # the dump's own context at a bad RIP: frame 0 is outside every module
    path = tmp_path / "bad-ip.dmp"
    shutil.copy(machines.path("d1", "kernel"), path)
    with open(path, "r+b") as f:
        f.seek(0x348 + 0xF8)  # DUMP_HEADER64.ContextRecord + CONTEXT.Rip
        f.write(struct.pack("<Q", bad))
        f.seek(0x38)
        f.write(struct.pack("<I", 0xD1))
        f.seek(0x40)
        f.write(struct.pack("<4Q", 0, 2, 0, bad))
    with kdshell.open(path, symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        a = analyze(s)
        assert a.stack[0].ip == bad
        assert (a.verdict, a.culprit, a.pseudo_module) == ("bad_ip", None, "Unknown_Image")
        assert a.bucket.startswith("AV_BAD_IP_")
        assert lines(s, "!analyze")[10] == "Probably caused by : Unknown_Image ( bad instruction pointer fffff800`12345678 )"


# -- the tables ---------------------------------------------------------------------------------------
def test_blame_rules():
    assert frame_kind("nt", "KiPageFault") == "skip"
    assert frame_kind("NT", "kebugcheckex") == "skip"
    assert frame_kind("nt", "IopLoadDriverImage") == "os"
    assert frame_kind("nt", None) == "os"
    assert frame_kind("hal", "HalHaltSystem") == "os"
    assert frame_kind("Wdf01000", None) == "pass" and frame_kind("wdf01000", "FxDevice") == "pass"
    assert frame_kind("mydrv", "MyDrvReadRegister") is None and frame_kind("amdppm", None) is None
    assert rule_for(0x1000007E) == rule_for(0x7E) and rule_for(0x7E).context_record == 3
    assert rule_for(0x3B).context_record == 2 and rule_for(0x139).trap_frame == 1
    assert rule_for(0x12345).verdict == "driver"


def test_thread_and_processor_parameters(machines, tmp_path):
    """0x9F P1=4 names the thread holding the PnP lock (P3): its stack is walked from its
    switch frame; 0x101 names the hung processor (P4): its saved context is walked."""
    truth = machines.truth("d1")
    waiting = next(t for t in truth["threads"] if t["state_name"] == "Waiting" and t["frames"])
    with relabel(machines, tmp_path, "kernel", 0x9F, (4, 0x12C, waiting["address"], 0)) as s:
        a = analyze(s)
        assert a.fault.kind == "thread" and a.stack_command == f".thread {waiting['address']:#x} ; kb"
        got = [(f.sp, call_site(s.symbols, f, s.is64)) for f in a.stack]
        want = [(f["sp"], f["function"]) for f in waiting["frames"] if not f["function"].startswith("0x")]
        assert got[:len(want)] == want
        assert a.bucket.startswith("0x9F_4_nt!")  # only Windows on that stack: nt is named
    idle = next(t for t in truth["threads"] if t["kind"] == "idle" and t["processor"] == 1)
    with relabel(machines, tmp_path, "kernel", 0x101, (0x18, 0, 0, 1)) as s:
        a = analyze(s)
        assert a.fault.kind == "processor" and a.stack_command == "~1s ; kb"
        assert call_site(s.symbols, a.stack[0], s.is64) == idle["frames"][0]["function"]
        assert s.processor == 0  # the user's processor is untouched
    with relabel(machines, tmp_path, "small", 0x101, (0x18, 0, 0, 1)) as s:  # processor 1 is not in it
        a = analyze(s)
        assert a.fault.kind == "default" and any("processor 1" in e.lower() for e in a.errors)
