"""Kernel objects on ARM64 dumps (issue 18, part 5) and .dump from one (part 6): !process,
.process, !thread, !irql, !prcb, !pcr, !running on the synthetic ARM64 machine of
tests/arm64_objects.py, whose objects sit at ARM64 build 19569's offsets (typed there from the
public ARM64 headers, not from kdshell's table); and every command of .help on ARM64 dumps:
either an answer or one line, never a traceback.
"""
from __future__ import annotations

import pytest

import arm64_machine as A
import arm64_objects as O
import kdshell
from kdshell.dispatch import REGISTRY
from kdshell.kernel.offsets import KernelOffsets, build_entry


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    d = tmp_path_factory.mktemp("arm64obj")
    return {"small22000": O.write_small(d), "small19569": O.write_small(d, 19569, offsets=False),
            "small26100": O.write_small(d, 26100), "small22000moved": O.write_small(d, moved=0x40), "full19569": O.write_complete(d),
            "full27000": O.write_complete(d, 27000), "dir": d}


def lines(session, command):
    return session.capture(command).splitlines()


def hexq(value):
    return f"{value:016x}"


# -- the offsets ---------------------------------------------------------------------------------
def test_arm64_never_takes_x64_offsets():
    for build in (19569, 22000, 22621, 22631, 26100):
        ko = KernelOffsets(build, True, arm64=True)
        assert ko.offset("_EPROCESS", "ImageFileName") != 0x5A8, build  # x64's
    x64 = KernelOffsets(22000, True)
    assert x64.offset("_EPROCESS", "UniqueProcessId") == 0x440  # x64 unchanged


def test_table_19569_matches_the_public_arm64_headers():
    ko = KernelOffsets(19569, True, arm64=True)
    expected = {("_EPROCESS", "UniqueProcessId"): O.EP_PID, ("_EPROCESS", "ActiveProcessLinks"): O.EP_LINKS,
                ("_EPROCESS", "ImageFileName"): O.EP_IMAGE, ("_EPROCESS", "Peb"): O.EP_PEB,
                ("_EPROCESS", "ThreadListHead"): O.EP_THREAD_LIST, ("_KPROCESS", "ThreadListHead"): O.EP_KTHREAD_LIST,
                ("_KTHREAD", "ApcState.Process"): O.KT_APC_PROCESS, ("_KTHREAD", "State"): O.KT_STATE,
                ("_KTHREAD", "WaitReason"): O.KT_WAIT_REASON, ("_ETHREAD", "Cid"): O.ET_CID,
                ("_KPCR", "CurrentIrql"): O.PCR_CURRENT_IRQL, ("_KPCR", "Prcb"): O.PCR_PRCB,
                ("_KPRCB", "CurrentThread"): O.PRCB_CURRENT_THREAD, ("_KPRCB", "Number"): O.PRCB_NUMBER,
                ("_KPRCB", "DebuggerSavedIRQL"): O.PRCB_DEBUGGER_SAVED_IRQL}
    assert {k: ko.offset(*k) for k in expected} == expected
    assert ko.size("_EPROCESS") == O.EPROCESS_SIZE and ko.size("_ETHREAD") == O.ETHREAD_SIZE


@pytest.mark.parametrize("build", [22000, 22621, 22631])
def test_later_builds_say_what_is_missing(build):
    entry = build_entry(build, True, arm64=True)
    assert entry is not None and "19569" in entry.missing
    assert entry.offset("_KPCR", "CurrentIrql") == O.PCR_CURRENT_IRQL
    assert entry.offset("_EPROCESS", "UniqueProcessId") is None
    assert entry.offset("_EPROCESS", "ImageFileName") is None


def test_26100_eprocess_from_the_24h2_arm64_headers():
    entry = build_entry(26100, True, arm64=True)
    assert entry is not None and "ThreadListEntry" in entry.missing
    assert {k: entry.offset("_EPROCESS", f) for k, f in (("pid", "UniqueProcessId"), ("links", "ActiveProcessLinks"),
            ("parent", "InheritedFromUniqueProcessId"), ("peb", "Peb"), ("image", "ImageFileName"),
            ("threads", "ThreadListHead"))} == O.EP_26100
    assert entry.size("_EPROCESS") == O.EPROCESS_SIZE_26100


@pytest.mark.parametrize("build, saved_irql, ethread", [(22000, O.PRCB_DEBUGGER_SAVED_IRQL, O.ETHREAD_SIZE_22000),
                                                        (22621, O.PRCB_DEBUGGER_SAVED_IRQL, 0x920),
                                                        (22631, O.PRCB_DEBUGGER_SAVED_IRQL, 0x920),
                                                        (26100, O.PRCB_DEBUGGER_SAVED_IRQL_26100, None)])
def test_22000_to_26100_from_the_sdks_ksarm64(build, saved_irql, ethread):
    ko = KernelOffsets(build, True, arm64=True)
    assert ko.offset("_ETHREAD", "Cid") == O.ET_CID_22000
    assert (ko.offset("_KTHREAD", "ApcState.Process"), ko.offset("_KTHREAD", "State"),
            ko.offset("_KTHREAD", "WaitReason"), ko.offset("_KTHREAD", "Teb")) == (
        O.KT_APC_PROCESS, O.KT_STATE, O.KT_WAIT_REASON, O.KT_TEB)
    assert ko.offset("_KPRCB", "DebuggerSavedIRQL") == saved_irql
    assert ko.offset("_KPCR", "Prcb") == O.PCR_PRCB
    assert ko.size("_ETHREAD") == ethread  # 26100's grew within the build: left out


# -- a small dump of issue 18's shape: build 22000, KDBG copy, no PDB --------------------------
def test_small_22000_process_from_the_copies_and_the_kdbg(dumps):
    """No public source gives 22000's EPROCESS UniqueProcessId/ImageFileName: the table's inferred
    places (19569's) are used because this dump confirms them (the thread's Cid matches)."""
    with kdshell.open(dumps["small22000"]) as s:
        out = lines(s, "!process -1 0")
        assert out[0] == f"PROCESS {hexq(O.PROCESS)}"
        assert f"DirBase: {O.TTBR0:08x}" in out[2]
        assert "ParentCid: 0000" in out[1] and "Cid: 0004" in out[1]
        assert out[3] == "    Image: System"
        assert "confirmed on this dump" in s.kernel.offsets.source("_EPROCESS", "ImageFileName")
        assert lines(s, "!process 0 0")[1].startswith("Unable to get the list of processes")


def test_small_22000_inferred_places_unconfirmed_are_not_read(dumps):
    """The same dump with the fields elsewhere: the inference fails its check and the command
    names the fields it cannot know rather than print what sits at 19569's places."""
    with kdshell.open(dumps["small22000moved"]) as s:
        out = lines(s, "!process -1 0")
        assert "Cid: ????" in out[1]
        assert out[4] == ("    The offsets of _EPROCESS.UniqueProcessId, _EPROCESS.ImageFileName are not known for "
                          "ARM64 build 22000 (no kernel PDB, KDBG field or built-in entry): load the kernel's symbols")
        assert s.kernel.offsets.offset("_EPROCESS", "ImageFileName") is None


def test_small_22000_thread_and_irql(dumps):
    with kdshell.open(dumps["small22000"]) as s:
        out = lines(s, "!thread")
        assert out[0].startswith(f"THREAD {hexq(O.THREAD)}  Cid 0004.{O.TID:04x}  Teb: {hexq(0)}")
        assert out[0].endswith("RUNNING on processor 0")
        assert out[1].startswith(f"Owning Process            {hexq(O.PROCESS)}")
        assert f"Stack Init {hexq(O.STACK_BASE - 0x60)} Current {hexq(O.KERNEL_STACK)}" in out
        assert f"Base {hexq(O.STACK_BASE)} Limit {hexq(O.STACK_LIMIT)}" in out
        assert lines(s, "!irql") == [f"Debugger saved IRQL for processor 0x0 -- {O.SAVED_IRQL} (LOW_LEVEL)"]
        assert lines(s, "!prcb")[:2] == [f"PRCB for Processor 0 at {hexq(O.PRCB)}:",
                                         f"Threads--  Current {hexq(O.THREAD)} Next {hexq(0)} Idle {hexq(O.IDLE)}"]
        assert lines(s, ".process") == [f"Implicit process is now {O.PROCESS >> 32:08x}`{O.PROCESS & 0xFFFFFFFF:08x}"]


def test_small_19569_from_the_table_shows_the_system_process(dumps):
    with kdshell.open(dumps["small19569"]) as s:
        out = lines(s, "!process -1 0")
        assert out[:4] == [f"PROCESS {hexq(O.PROCESS)}",
                           "    SessionId: ?  Cid: 0004    Peb: 00000000  ParentCid: 0000",
                           f"    DirBase: {O.TTBR0:08x}  ObjectTable: {'5a' * 8}  HandleCount: <Data Not Accessible>",
                           "    Image: System"]
        assert lines(s, "!thread")[0].startswith(f"THREAD {hexq(O.THREAD)}  Cid 0004.{O.TID:04x}")
        assert lines(s, "!irql") == [f"Debugger saved IRQL for processor 0x0 -- {O.SAVED_IRQL} (LOW_LEVEL)"]


# -- a complete dump: the objects in memory ------------------------------------------------------
def test_complete_19569_kpcr_and_processors(dumps):
    with kdshell.open(dumps["full19569"]) as s:
        assert lines(s, "!pcr") == [
            f"KPCR for Processor 0 at {hexq(O.PCR)}:", "    Major 1 Minor 1",
            f"{'SelfPcr':>25}: {hexq(O.PCR)}", f"{'Prcb':>25}: {hexq(O.PRCB)}",
            f"{'CurrentIrql':>25}: {hexq(O.CURRENT_IRQL)}", "",
            f"{'CurrentThread':>25}: {hexq(O.THREAD)}", f"{'NextThread':>25}: {hexq(0)}",
            f"{'IdleThread':>25}: {hexq(O.IDLE)}"]
        assert lines(s, "!prcb")[1] == f"Current IRQL -- {O.CURRENT_IRQL}"
        assert lines(s, "!irql") == [f"Debugger saved IRQL for processor 0x0 -- {O.SAVED_IRQL} (LOW_LEVEL)"]
        running = lines(s, "!running")
        assert running[1] == "System Processors:  (0000000000000001)"
        assert running[-1].split()[:3] == ["0", hexq(O.PRCB), hexq(O.THREAD)]
        out = lines(s, "!process 0 0")
        assert out[1] == f"PROCESS {hexq(O.PROCESS)}" and out[4] == "    Image: System"
        # .process /p switches to the process's DirectoryTableBase (here the header's TTBR)
        assert lines(s, f".process /p {O.PROCESS:x}")[0] == f"Implicit process is now {bt(O.PROCESS)}"
        assert lines(s, f"da {A.USER_VA:x}") == [f"{bt(A.USER_VA)}  \"user page\""]
        threads = lines(s, f"!process {O.PROCESS:x} 2")
        assert any(x.strip().startswith(f"THREAD {hexq(O.THREAD)}  Cid 0004.{O.TID:04x}") for x in threads)


def test_small_26100_shows_the_system_process(dumps):
    with kdshell.open(dumps["small26100"]) as s:
        assert lines(s, "!thread")[0].startswith(f"THREAD {hexq(O.THREAD)}  Cid 0004.{O.TID:04x}")
        assert lines(s, "!irql") == [f"Debugger saved IRQL for processor 0x0 -- {O.SAVED_IRQL} (LOW_LEVEL)"]
        out = lines(s, "!process -1 0")
        assert out[0] == f"PROCESS {hexq(O.PROCESS)}" and out[3] == "    Image: System"
        assert "Cid: 0004" in out[1] and "ParentCid: 0000" in out[1] and f"DirBase: {O.TTBR0:08x}" in out[2]


def test_complete_dump_of_an_unknown_build_says_what_is_missing(dumps):
    # build 27000: no table entry and no KDBG Offset fields -- each command names what it lacks
    with kdshell.open(dumps["full27000"]) as s:
        for command in ("!pcr", "!irql", "!process -1 0", "!thread"):
            out = lines(s, command)
            assert len(out) == 1 and out[0].startswith("Unable to get"), (command, out)
        assert "_KPCR.Prcb is not known for ARM64 build 27000" in lines(s, "!pcr")[0]
        assert "_KPRCB.DebuggerSavedIRQL is not known for ARM64 build 27000" in lines(s, "!irql")[0]


def bt(value):
    return f"{value >> 32:08x}`{value & 0xFFFFFFFF:08x}"


def test_waiting_thread_resumes_at_its_switch_frame(dumps):
    with kdshell.open(dumps["full19569"]) as s:
        out = [x.strip() for x in lines(s, "!process 0 2")]
        assert [x.split()[1] for x in out if x.startswith("THREAD")] == [hexq(O.THREAD), hexq(O.WAITER)]
        waiter = f"THREAD {hexq(O.WAITER)}  Cid 0004.{O.WAITER_TID:04x}"
        assert any(x.startswith(waiter) and x.endswith("WAIT: (WrQueue)") for x in out)
        assert lines(s, f".thread {O.WAITER:x}") == [f"Implicit thread is now {bt(O.WAITER)}"]
        assert lines(s, "k")[1].split() == [bt(O.WAITER_SWITCH + 0x20), bt(0), "nt!PspSystemThreadStartup+0xc"]
        assert lines(s, "r fp") == [f"fp={O.WAITER_FP:016x}"]


def test_trap_frame_on_arm64(dumps):
    with kdshell.open(dumps["full19569"]) as s:
        out = lines(s, f".trap {O.TRAP:x}")
        assert out[:2] == ["NOTE: The trap frame does not contain all registers.",
                           "Some register values may be zeroed or incorrect."]
        assert out[2].split() == [f"x0={O.TRAP_X[0]:016x}", f"x1={O.TRAP_X[1]:016x}", f"x2={O.TRAP_X[2]:016x}",
                                  f"x3={O.TRAP_X[3]:016x}"]
        assert f"x18={O.TRAP_X[18]:016x}" in " ".join(out)
        assert f"sp={A.CXR_SP:016x}" in " ".join(out) and f"lr={A.NT_BASE + 0x1154:016x}" in " ".join(out)
        assert f"pc={A.CXR_PC:016x}" in " ".join(out) and f"psr={O.TRAP_SPSR:08x}" in " ".join(out)
        frames = [x.split()[-1] for x in lines(s, "k")[1:]]
        assert frames[:2] == ["nt!PopPowerButtonWorkCallback+0x10", "nt!ExpWorkerThread+0x14"]
        assert lines(s, ".trap") == ["Resetting default scope"]
        assert lines(s, "r pc") == [f"pc={A.PC:016x}"]


# -- .dump from an ARM64 dump ----------------------------------------------------------------------
def _answers(session):
    k = [x.split()[1:] for x in lines(session, "k")[1:] if x.startswith("ffff")]  # RetAddr, Call Site
    return (lines(session, ".bugcheck"), lines(session, "r pc") + lines(session, "r lr") + lines(session, "r x5"),
            k, lines(session, "lm")[:2])


@pytest.mark.parametrize("option", ["/m", "/f", "/k"])
def test_dump_from_arm64_reopens_with_the_same_answers(dumps, option):
    out = dumps["dir"] / f"again-{option[1:]}.dmp"
    with kdshell.open(dumps["full19569"]) as s:
        before = _answers(s)
        written = lines(s, f".dump {option} {out}")
        assert written[-2] == "Dump successfully written", written
    assert before[0][0] == "Bugcheck code 000001C8"
    assert before[1] == [f"pc={A.PC:016x}", f"lr={A.NT_BASE + 0x1118:016x}", f"x5={5 * 0x0101010101010101:016x}"]
    assert [f[-1] for f in before[2]] == ["nt!KeBugCheckEx+0x24", "nt!PopPowerButtonWorkCallback+0x18",
                                          "nt!ExpWorkerThread+0x14", "nt!PspSystemThreadStartup+0xc",
                                          "nt!KiStartSystemThread+0x8"]
    with kdshell.open(out) as again:
        assert again.dump.header.machine == A.MACHINE_ARM64
        assert _answers(again) == before
        if option == "/m":
            assert lines(again, "!process -1 0")[3] == "    Image: System"


# -- every command on ARM64 ------------------------------------------------------------------------
def _sample(name):
    return {".dump": f"{name} /m nowhere/x.dmp", "!process": "!process 0 0", "!sysinfo": "!sysinfo cpuinfo",
            ".cxr": ".cxr", ".trap": ".trap", "!pte": f"!pte {A.NT_BASE:x}", "!vtop": f"!vtop 0 {A.NT_BASE:x}",
            "dt": "dt nt!_KPCR", "u": f"u {A.PC:x} L2", "d": f"dq {A.NT_BASE:x} L2"}.get(name, name)


@pytest.mark.parametrize("kind", ["small22000", "full19569"])
def test_every_command_answers_or_says_why_on_arm64(dumps, kind):
    with kdshell.open(dumps[kind]) as s:
        names = sorted({c.name for c in REGISTRY.values()} - {"q", ".restart", ".tutorial", ".shell", ".logopen"})
        assert len(names) > 80
        for name in names:
            text = s.capture(_sample(name))
            assert "Traceback" not in text, name
            for x64 in ("rip=", "rsp=", "cr8", "CR8", "efl="):
                assert x64 not in text, (name, x64, text[:300])
