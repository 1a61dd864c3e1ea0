"""`kdshell --tutorial`: on the bundled sample through standard input, and in-process on the test
machines and the corpus's small dumps, where every text must be the dump's own story."""
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, MINI_17763, TRIAGE_19041
from kdshell.tutorial import STEPS, run_tutorial

BIN = Path(__file__).resolve().parents[1] / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"
# Where KTRAP_FRAME keeps the machine frame the processor pushed (its Rip/Eip field): x64 +0x168,
# x86 +0x68. The truth records the machine frame; the trap frame starts that far below it.
KTRAP_RIP = {"x64": 0x168, "x86": 0x68}


def run(stdin: str):
    return subprocess.run([sys.executable, "-m", "kdshell", "--tutorial"], input=stdin, capture_output=True,
                          text=True, timeout=120)


def walk(session, answers=None) -> str:
    """Run the tutorial in-process, typing what each step asks for (or `answers[n]` for step n's
    first try); returns everything it printed."""
    answers = dict(answers or {})
    with session.out.capture() as buf:
        asked = []

        def read_line(prompt):
            wanted = re.findall(r"^\(type: (.+)\)$", "".join(buf), re.M)
            if len(wanted) > len(asked):
                asked.append(wanted[-1])
                return answers.pop(len(asked), wanted[-1])
            if answers:
                raise AssertionError(f"steps asked for {asked}; unused answers {answers}")
            return asked[-1]  # after a hint: now the right one

        run_tutorial(session, read_line)
    return "".join(buf)


def flat(text: str) -> str:
    """The text with its lines joined: the tutorial wraps its prose."""
    return " ".join(text.split())


def typed(text: str) -> list[str]:
    return re.findall(r"^\(type: (.+)\)$", text, re.M)


# -- the bundled sample, as a user runs it ------------------------------------------------------------
def test_walks_every_step_on_the_sample():
    from kdshell.cli import bundled_sample

    dump, symbols = bundled_sample()
    with kdshell.open(dump, symbol_path=symbols, image_path=symbols) as s:
        kv = s.capture("kv")
    trap = re.search(r"TrapFrame @ ([0-9a-f`]+)", kv).group(1)   # kv's spelling, as a user copies it
    lines = [".bugcheck", "!analyze -v", "k", f".trap {trap}", "u @rip L4", "lmvm mydrv", "dq @rsp L8", ".cxr"]
    p = run("\n".join(["vertarget"] + lines) + "\n")  # the first line is a wrong command: a hint
    out = p.stdout
    assert "Not quite: this step wants '.bugcheck'" in flat(out)
    for n in range(1, len(STEPS) + 1):
        assert f"--- Step {n} of {len(STEPS)} ---" in flat(out)
    assert "Skipped" not in out  # every step applies to the sample
    assert "Bugcheck code 000000D1" in flat(out)
    assert "Windows stopped with bug check 0xd1, DRIVER_IRQL_NOT_LESS_OR_EQUAL." in flat(out)
    assert "1: 0xfffff8a000bad000 = memory referenced" in flat(out)
    assert "MODULE_NAME: mydrv" in out and "IMAGE_NAME:  mydrv.sys" in out
    assert f"(type: .trap 0x{trap.replace('`', '')})" in flat(out)
    assert "NOTE: The trap frame does not contain all registers." in flat(out)
    assert "These are the registers when mydrv faulted" in flat(out)
    assert "mydrv!MyDrvReadRegister" in flat(out)
    assert "Tutorial done." in flat(out)
    assert "Traceback" not in out + p.stderr
    assert p.returncode == 0  # every command of the walk succeeded (the wrong one was never run)


def test_skip_and_quit():
    p = run("skip\nskip\nq\n")
    assert "--- Step 3 of" in p.stdout and "--- Step 4 of" not in p.stdout
    assert "Tutorial stopped." in p.stdout
    assert p.returncode == 0


# -- the test machines: each scenario's own facts -------------------------------------------------------
NAMES = {0xD1: "DRIVER_IRQL_NOT_LESS_OR_EQUAL", 0x1000007E: "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M",
         0x7E: "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED", 0x3B: "SYSTEM_SERVICE_EXCEPTION",
         0x50: "PAGE_FAULT_IN_NONPAGED_AREA", 0xE2: "MANUALLY_INITIATED_CRASH"}
CONTEXT_PARAM = {0x7E: 3, 0x1000007E: 3, 0x3B: 2}   # the CONTEXT record's parameter (bug check reference)


@pytest.mark.parametrize("scenario,kind", [("d1", "kernel"), ("7e", "small"), ("7e-plain", "kernel"),
                                           ("3b", "complete"), ("e2", "small"), ("50", "small"),
                                           ("d1-x86", "small")])
def test_the_walk_tells_each_machines_own_story(machines, scenario, kind):
    truth = machines.truth(scenario)
    code, params = truth["bugcheck"]["code"], truth["bugcheck"]["parameters"]
    with kdshell.open(machines.path(scenario, kind), symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        text = walk(s)
        assert s.failures == 0, text
    assert f"Windows stopped with bug check {code:#x}, {NAMES[code]}." in flat(text)
    assert "DRIVER_IRQL" not in text or code == 0xD1  # no other crash's story
    commands = typed(text)
    assert commands[:3] == [".bugcheck", "!analyze -v", "k"]
    culprit = truth["culprit"]
    module = culprit.removesuffix(".sys") if culprit else "kbdcrash"  # e2: the driver the request came through
    assert f"lmvm {module}" in commands
    if code in CONTEXT_PARAM:
        assert commands[3] == f".cxr {params[CONTEXT_PARAM[code]]:#x}"
        assert "CONTEXT record" in flat(text)
    elif truth["exceptions"]:
        trap = truth["exceptions"][0]["machine_frame"] - KTRAP_RIP[truth["arch"]]
        assert commands[3] == f".trap {trap:#x}"
        assert "TrapFrame @" in flat(text)  # the step says where the address comes from
        assert f"It made a read of {truth['exceptions'][0]['cr2']:#x}" in flat(text)
    else:  # a manual crash: no fault, no faulting code
        assert not any(c.startswith((".cxr", ".trap", "u ")) for c in commands)
        assert "Skipped (the registers at the fault, .cxr / .trap): MANUALLY_INITIATED_CRASH (e2) names no" in flat(text)
        assert "Skipped (the code at the fault)" in flat(text)
        assert "the crash request came through kbdcrash.sys" in flat(text)
        return
    if culprit:
        assert f"These are the registers when {module} faulted" in flat(text)
    pc = "rip" if truth["arch"] == "x64" else "eip"
    assert f"u @{pc} L4" in commands and commands[-1] == ".cxr"
    assert "Tutorial done." in flat(text)


def test_a_context_record_the_dump_does_not_hold_is_skipped(machines, tmp_path):
    """A 0x7E whose CONTEXT record (P4) is not in the dump: the step says so instead of asking."""
    path = tmp_path / "7e-lost-context.dmp"
    shutil.copy(machines.path("7e", "kernel"), path)
    with open(path, "r+b") as f:
        f.seek(0x40 + 3 * 8)                      # DUMP_HEADER64.BugCheckParameter4
        f.write(struct.pack("<Q", 0xFFFFF8A0DEAD0000))
    with kdshell.open(path, symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        text = walk(s)
    assert "Skipped (the registers at the fault, .cxr / .trap): parameter 4 of" in flat(text)
    assert "points at a CONTEXT record, but this dump does not hold it" in flat(text)
    assert not any(c.startswith(".cxr 0x") for c in typed(text))


def test_a_wrong_command_gets_a_hint_then_the_step_goes_on(machines):
    with kdshell.open(machines.path("7e", "kernel"), symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        text = walk(s, {4: ".cxr"})
    assert "Not quite: this step wants '.cxr 0x" in flat(text)  # a bare .cxr resets; it is not the fault's context
    assert text.count("Not quite") == 1 and "These are the registers when mydrv faulted" in flat(text)


# -- the corpus's small dumps -----------------------------------------------------------------------
def _corpus(path: Path):
    if not path.exists():
        pytest.skip(f"corpus dump {path.name} is not on this machine (the shared corpus)")


def test_the_walk_on_a_real_triage_dump_with_symbols():
    _corpus(TRIAGE_19041)
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        p4 = s.dump.header.bugcheck_parameters[3]
        text = walk(s)
        assert s.failures == 0, text
    assert "Bugcheck code 1000007E" in flat(text)
    assert "Windows stopped with bug check 0x1000007e, SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M." in flat(text)
    assert "The _M in its name: 0x1000007e is the same bug check as 0x7e" in flat(text)
    assert typed(text)[3:6] == [f".cxr {p4:#x}", "u @rip L4", "lmvm amdppm"]
    assert "These are the registers when amdppm faulted" in flat(text)
    assert "'pdb symbols' means kdshell found its symbol file" in flat(text)
    assert "mydrv" not in text and "0xd1" not in text.lower()


def test_the_walk_on_a_real_small_dump_without_symbols():
    _corpus(MINI_17763)
    with kdshell.open(MINI_17763, symbol_path="", image_path="") as s:
        p4 = s.dump.header.bugcheck_parameters[3]
        text = walk(s)
        assert s.failures == 0, text
    assert "Windows stopped with bug check 0x1000007e" in flat(text)
    assert f"(type: .cxr {p4:#x})" in flat(text)
    # the fault is in nt; the driver below it is the one blamed
    assert "These are the registers at the faulting instruction, in nt+4a2d4. !analyze blamed winhvr.sys" in flat(text)
    assert "(type: lmvm winhvr)" in flat(text)
    assert "'no symbols' means" in flat(text)
    assert "mydrv" not in text
