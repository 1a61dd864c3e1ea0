"""!process, !thread, .process, !running, !pcr, !prcb, !irql, !object as a user sees them.

Every command runs on a test machine (its lines built here from the builder's ground truth, in
WinDbg's layout, windbg.md §10) and on the real small dumps of the corpus (the image names and
CIDs of their EPROCESS/ETHREAD copies, checked once by hand at the offsets their KDBG and the
built-in table give -- tests/test_kernel_objects.py::test_corpus_small_dump_copies -- then
pinned). Errors are one line.
"""
from __future__ import annotations

import pytest

import kdshell
from conftest import MINI_17763, REPO, TRIAGE_19041, open_machine
from kdshell.expr import Evaluator
from kdshell.format import ptr

BIN = REPO / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"
KB_HEADER = ("Child-SP          RetAddr               : Args to Child"
             "                                                           : Call Site")
K_HEADER = "Child-SP          RetAddr               Call Site"


def lines(session, command):
    return session.capture(command).splitlines()



def p64(value: int) -> str:
    return f"{value:016x}"


def process_block(p, handles: int, is64: bool = True) -> list[str]:
    """!process's four lines for a truth process (no session on the fixture machines)."""
    fmt = p64 if is64 else (lambda v: f"{v:08x}")
    return [f"PROCESS {fmt(p['address'])}",
            f"    SessionId: none  Cid: {p['pid']:04x}    Peb: {p['peb']:08x}  ParentCid: {p['parent']:04x}",
            f"    DirBase: {p['dtb']:08x}  ObjectTable: {fmt(p['object_table'])}  HandleCount: {handles:3d}.",
            f"    Image: {p['name']}", ""]


def with_object_tables(session, truth):
    """The truth's processes with their ObjectTable (read through kdshell: the builder does not
    record it) and handle counts (the builder's own handles; System's are the drivers' thread
    handles, tests/test_kernel_objects.py::system_handles)."""
    from test_kernel_objects import system_handles

    out = []
    for p in truth["processes"]:
        if not p["active_list"]:
            continue
        q = dict(p)
        q["object_table"] = session.kernel.process(p["address"]).object_table
        q["handle_count"] = system_handles(truth) if p["pid"] == 4 else len(p["handles"])
        out.append(q)
    return out


# -- !process ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kind", [("d1", "kernel"), ("3b", "complete"), ("d1-x86", "complete")])
def test_process_0_0_lists_every_process(machines, name, kind):
    truth = machines.truth(name)
    is64 = truth["arch"] == "x64"
    with open_machine(machines, name, kind) as s:
        want = ["**** NT ACTIVE PROCESS DUMP ****"]
        for p in with_object_tables(s, truth):
            want += process_block(p, p["handle_count"], is64)
        assert lines(s, "!process 0 0") == want
        # by CID, by image name (first argument or third), by address: the same block
        smss = next(p for p in with_object_tables(s, truth) if p["name"] == "smss.exe")
        block = process_block(smss, smss["handle_count"], is64)
        assert lines(s, f"!process {smss['pid']:x} 0") == [f"Searching for Process with Cid == {smss['pid']:x}"] + block
        assert lines(s, "!process 0 0 smss.exe") == ["**** NT ACTIVE PROCESS DUMP ****"] + block
        assert lines(s, "!process smss.exe 0") == ["**** NT ACTIVE PROCESS DUMP ****"] + block
        assert lines(s, f"!process {smss['address']:x} 0") == block
        assert lines(s, "!process 0 0 nosuch.exe") == ["**** NT ACTIVE PROCESS DUMP ****"]
        assert lines(s, "!process 7777 0") == ["Searching for Process with Cid == 7777",
                                                "Unable to get the process with Cid 7777 from the dump"]


def _frames_of(truth, thread):
    return next(t for t in truth["threads"] if t["address"] == thread)["frames"]


def _stack_rows(out, start):
    """(Child-SP, call site) of the stack rows after out[start] (a k header)."""
    rows = []
    for line in out[start + 1:]:
        parts = line.split()
        if len(parts) < 3 or "`" not in parts[0]:
            break
        rows.append((int(parts[0].replace("`", ""), 16), parts[-1]))
    return rows


def test_process_flags_show_threads_waits_and_stacks(machines):
    truth = machines.truth("3b")
    tool = next(p for p in truth["processes"] if p["name"] == "stortool.exe")
    threads = {t["address"]: t for t in truth["threads"]}
    events = set(tool["handles"].values())
    with open_machine(machines, "3b", "kernel") as s:
        # 2: one THREAD line per thread with its wait objects
        out = lines(s, f"!process {tool['address']:x} 2")
        heads = [x for x in out if x.startswith("        THREAD ")]
        assert [int(x.split()[1], 16) for x in heads] == tool["threads"]
        for x in heads:
            t = threads[int(x.split()[1], 16)]
            cid = f"Cid {t['cid'][0]:04x}.{t['cid'][1]:04x}  Teb: {p64(t['teb'])} Win32Thread: {p64(0)} "
            assert x[len("        THREAD ffffc20a00055040  "):].startswith(cid)
            if t["state_name"] == "Waiting":
                assert x.endswith("WAIT: (UserRequest) UserMode Non-Alertable")
            else:
                assert x.endswith("RUNNING on processor 0")
        waits = [x for x in out if x.startswith("            ")]
        assert waits and all(int(x.split()[0], 16) in events and x.split()[1].endswith("Event") for x in waits)
        # 4 alone: the THREAD lines only
        assert [x for x in lines(s, f"!process {tool['address']:x} 4") if x.strip()][4:] == heads
        # 7: every thread in full, its stack (with arguments) as the CPU executed it
        out = lines(s, f"!process {tool['address']:x} 7")
        starts = [i for i, x in enumerate(out) if x == "        " + KB_HEADER]
        assert len(starts) == len(tool["threads"])
        for i, thread in zip(starts, tool["threads"]):
            frames = _frames_of(truth, thread)
            rows = _stack_rows([x.strip() for x in out], i)
            kernel = [f for f in frames if not f["function"].startswith("0x")]
            assert [(sp, site) for sp, site in rows[:len(kernel)]] == [(f["sp"], f["function"]) for f in kernel]
        dtb = s.dtb
        # 0xF: no arguments; 0x10: in the process's address space for the command, then back
        assert "        " + K_HEADER in lines(s, f"!process {tool['address']:x} f")
        assert "        " + K_HEADER in lines(s, f"!process {tool['address']:x}")  # 0xF is the default
        out = lines(s, f"!process {tool['address']:x} 17")
        assert "        " + KB_HEADER in out and s.dtb == dtb


def test_process_without_arguments_is_the_current_one(machines):
    truth = machines.truth("d1")
    with open_machine(machines, "d1", "complete") as s:
        system = with_object_tables(s, truth)[0]
        out = lines(s, "!process")
        assert out[:4] == process_block(system, system["handle_count"])[:4]
        # System's CreateTime is 0 on the fixture machine: no ElapsedTime line
        assert out[4:8] == ["    DeviceMap 0000000000000000", "    Token                             0000000000000000",
                            "    BasePriority                      8", ""]
        heads = [x for x in out if x.startswith("        THREAD ")]
        system_threads = next(p["threads"] for p in truth["processes"] if p["pid"] == 4)
        assert [int(x.split()[1], 16) for x in heads] == system_threads
        assert heads[0].endswith("RUNNING on processor 0")
        smss = lines(s, "!process 0 1 smss.exe")
        vads = next(v for v in truth["vads"] if v["name"] == "smss.exe")
        assert smss[5] == f"    VadRoot {vads['root']:016x} Vads {len(vads['vads'])}"
        assert smss[8].startswith("    ElapsedTime                       01:2")  # created at boot, 1:23:20 uptime
        assert lines(s, "!process -1 0") == process_block(system, system["handle_count"])


# -- !thread -------------------------------------------------------------------------------------
def thread_head(t, is64=True) -> str:
    fmt = p64 if is64 else (lambda v: f"{v:08x}")
    cid = f"{t['cid'][0]:04x}.{t['cid'][1]:04x}"
    return f"THREAD {fmt(t['address'])}  Cid {cid}  Teb: {fmt(t['teb'])} Win32Thread: {fmt(0)} "


@pytest.mark.parametrize("name", ["d1", "d1-x86"])
def test_thread_shows_a_waiting_thread_and_its_stack(machines, name):
    truth = machines.truth(name)
    is64 = truth["arch"] == "x64"
    fmt = p64 if is64 else (lambda v: f"{v:08x}")
    procs = {p["address"]: p for p in truth["processes"]}
    with open_machine(machines, name, "complete") as s:
        for t in (t for t in truth["threads"] if t["kind"] == "user"):
            out = lines(s, f"!thread {t['address']:x}")
            owner = procs[t["process"]]
            event = owner["handles"][min(owner["handles"], key=int)] if len(owner["handles"]) == 1 else None
            # x64: three user threads were readied at the crash (fixtures/machine/sched.py)
            state = "READY on processor 0" if t["state"] == 1 else "WAIT: (UserRequest) UserMode Non-Alertable"
            assert out[0] == thread_head(t, is64) + state
            if event is not None and t["state"] == 5:
                assert out[1] == f"    {fmt(event)}  SynchronizationEvent"
            assert f"{'Owning Process':<26}{fmt(owner['address'])}       Image:         {owner['name']}" in out
            assert f"{'Attached Process':<26}N/A            Image:         N/A" in out
            assert f"Win32 Start Address 0x{fmt(t['win32_start_address'])}" in out
            assert f"Stack Init {fmt(t['initial_stack'])} Current {fmt(t['kernel_stack'])}" in out
            assert f"Base {fmt(t['initial_stack'])} Limit {fmt(t['stack_limit'])}" in out
            assert lines(s, f"!thread -t {t['cid'][1]:x}") == out
            if is64:
                i = out.index(KB_HEADER)
                kernel = [f for f in t["frames"] if not f["function"].startswith("0x")]
                assert _stack_rows(out, i)[:len(kernel)] == [(f["sp"], f["function"]) for f in kernel]
        # the current thread (the bug check's): RUNNING on the crashing processor
        current = truth["processors"][0]["current_thread"]
        t = next(x for x in truth["threads"] if x["address"] == current)
        out = lines(s, "!thread")
        assert out[0] == thread_head(t, is64) + "RUNNING on processor 0"
        # its processor's IRQL: 0xD1's P2 on x64 (CR8 saved in the KPRCB); x86 has only KPCR.Irql
        irql = "2 (DISPATCH_LEVEL)" if is64 else "31 (HIGH_LEVEL)"
        assert f"{'IRQL':<26}{irql}" in out
        assert lines(s, "!thread -1") == out and lines(s, f"!thread {current:x}") == out
        no_stack = lines(s, f"!thread {current:x} 0")
        assert no_stack[0] == out[0] and no_stack[-1] == "" and len(no_stack) < len(out)


def test_thread_p_shows_the_owning_process_first(machines):
    truth = machines.truth("d1")
    t = next(x for x in truth["threads"] if x["kind"] == "user")
    with open_machine(machines, "d1", "kernel") as s:
        out = lines(s, f"!thread -p {t['address']:x} 2")
        assert out[0].startswith("PROCESS ") and int(out[0].split()[1], 16) == t["process"]
        assert out[4].startswith(f"THREAD {p64(t['address'])}")


def test_implicit_thread_and_processor_follow_thread_and_tilde(machines):
    truth = machines.truth("d1")
    p1 = truth["processors"][1]
    waiting = next(x for x in truth["threads"] if x["kind"] == "user" and x["state"] == 5)
    with open_machine(machines, "d1", "complete") as s:
        assert lines(s, "~1s") == [] and s.prompt == "1: kd> "
        idle = next(x for x in truth["threads"] if x["address"] == p1["current_thread"])
        assert lines(s, "!thread")[0] == thread_head(idle) + "RUNNING on processor 1"
        assert lines(s, "? $thread") == [f"Evaluate expression: {p1['current_thread'] - (1 << 64)} = "
                                         f"{ptr(p1['current_thread'])}"]
        assert lines(s, "? $prcb")[0].endswith(ptr(p1["prcb"]))
        assert lines(s, f".thread {waiting['address']:x}") == [f"Implicit thread is now {ptr(waiting['address'])}"]
        assert lines(s, "!thread")[0].startswith(thread_head(waiting) + "WAIT:")
        assert lines(s, "? $proc")[0].endswith(ptr(waiting["process"]))


# -- .process --------------------------------------------------------------------------------------
def test_dot_process_switches_the_implicit_process(machines):
    truth = machines.truth("3b")
    smss = next(p for p in truth["processes"] if p["name"] == "smss.exe")
    tool = next(p for p in truth["processes"] if p["name"] == "stortool.exe")
    with open_machine(machines, "3b", "complete") as s:
        assert lines(s, ".process") == [f"Implicit process is now {ptr(tool['address'])}"]
        assert lines(s, f".process /p /r {smss['address']:x}") == [
            f"Implicit process is now {ptr(smss['address'])}", ".cache forcedecodeuser done", "Loading User Symbols"]
        assert s.dtb == smss["dtb"]
        assert lines(s, "? $proc")[0].endswith(ptr(smss["address"]))
        assert lines(s, "? $peb")[0].endswith(ptr(smss["peb"]))
        assert lines(s, "!process -1 0")[0] == f"PROCESS {p64(smss['address'])}"
        # smss's PEB is readable now (the builder wrote the image base at PEB+0x10)
        assert not lines(s, "dq @$peb+10 L1")[0].endswith("????????`????????")
        assert lines(s, ".process 0") == [f"Implicit process is now {ptr(tool['address'])}"]
        assert s.dtb == tool["dtb"]
        assert lines(s, ".process /x 1") == [".process: unknown option '/x' (.process [/p] [/r] [Process])"]
        # .thread /p: the thread's process becomes the implicit one too
        thread = smss["threads"][0]
        assert lines(s, f".thread /p {thread:x}") == [f"Implicit thread is now {ptr(thread)}",
                                                     f"Implicit process is now {ptr(smss['address'])}"]
        assert s.dtb == smss["dtb"] and lines(s, "? $thread")[0].endswith(ptr(thread))


# -- processors ------------------------------------------------------------------------------------
def test_running_pcr_prcb_irql(machines):
    truth = machines.truth("d1")
    p0, p1 = truth["processors"]
    with open_machine(machines, "d1", "complete") as s:
        assert lines(s, "!running") == [
            "", "System Processors:  (0000000000000003)", "  Idle Processors:  (0000000000000002)", "",
            "       Prcb              Current          (pri) Next             (pri) Idle",
            f"  0    {p64(p0['prcb'])}  {p64(p0['current_thread'])} ( 8) {'':21} {p64(p0['idle_thread'])}"]
        out = lines(s, "!running -i")
        assert out[-1] == f"  1    {p64(p1['prcb'])}  {p64(p1['current_thread'])} ( 0) {'':21} {p64(p1['idle_thread'])}"
        out = lines(s, "!running -it")
        second = out.index(K_HEADER, out.index(K_HEADER) + 1)  # processor 1's stack: its idle loop
        assert out.count(K_HEADER) == 2 and out[second + 1] == (
            f"{ptr(p1['context']['rsp'])} {ptr(0)}     nt!KiIdleLoop+0x7f")
        assert lines(s, "!prcb 1") == [
            f"PRCB for Processor 1 at {p64(p1['prcb'])}:", "Current IRQL -- 0",
            f"Threads--  Current {p64(p1['current_thread'])} Next {p64(0)} Idle {p64(p1['idle_thread'])}",
            "Processor Index 1 Number (0, 0) GroupSetMember 0",
            # the KPRCB's counters (0 on processor 1: no clock ticks in d1)
            "Interrupt Count -- 00000000", "Times -- Dpc    00000000 Interrupt 00000000 ",
            "         Kernel 00000000 User      00000000 "]
        assert truth["queues"]["clock_ticks"] == 0
        assert lines(s, "!prcb")[0] == f"PRCB for Processor 0 at {p64(p0['prcb'])}:"
        pcr = lines(s, "!pcr 1")
        assert pcr[0] == f"KPCR for Processor 1 at {p64(p1['pcr'])}:" and pcr[1] == "    Major 1 Minor 1"
        assert f"{'SelfPcr':>25}: {p64(p1['pcr'])}" in pcr and f"{'Prcb':>25}: {p64(p1['prcb'])}" in pcr
        assert f"{'CurrentThread':>25}: {p64(p1['current_thread'])}" in pcr
        assert f"{'IdleThread':>25}: {p64(p1['idle_thread'])}" in pcr
        assert f"{'NtTib.SubSystemTib':>25}: {p64(p1['pcr'])}" in pcr  # KPCR.Self, as WinDbg reads it on x64
        # 0xD1's P2 is the IRQL of the faulting access: the one saved before the bug check
        assert lines(s, "!irql") == ["Debugger saved IRQL for processor 0x0 -- 2 (DISPATCH_LEVEL)"]
        assert lines(s, "!irql 1") == ["Debugger saved IRQL for processor 0x1 -- 0 (LOW_LEVEL)"]
        assert lines(s, "!irql 2") == ["Processor 2 does not exist (this machine had 2 processors: 0-1)"]
    with open_machine(machines, "e2", "kernel") as s:  # the crash came on the idle thread, in a DPC
        assert lines(s, "!running")[3] == "All processors idle."
        assert lines(s, "!irql") == ["Debugger saved IRQL for processor 0x0 -- 2 (DISPATCH_LEVEL)"]
    with open_machine(machines, "d1-x86", "complete") as s:  # no CR8 on x86: the KPCR's IRQL
        assert lines(s, "!irql") == ["Current IRQL for processor 0x0 -- 31 (HIGH_LEVEL) (KPCR.Irql: the IRQL saved "
                                     "before the bug check is not known without the kernel's types)"]
        p0 = machines.truth("d1-x86")["processors"][0]
        assert lines(s, "!pcr")[0] == f"KPCR for Processor 0 at {p0['pcr']:08x}:"


def test_object_header(machines):
    truth = machines.truth("3b")
    tool = next(p for p in truth["processes"] if p["name"] == "stortool.exe")
    with open_machine(machines, "3b", "kernel") as s:
        out = lines(s, f"!object {tool['address']:x}")
        assert out[0] == f"Object: {p64(tool['address'])}  Type: ({p64(0)}) Process"
        assert out[1] == f"    ObjectHeader: {p64(tool['address'] - 0x30)} (new version)"
        assert out[2].startswith("    HandleCount: 0  PointerCount: ")
        thread = tool["threads"][0]
        assert lines(s, f"!object {thread:x}")[0] == f"Object: {p64(thread)}  Type: ({p64(0)}) Thread"
        assert lines(s, r"!object \Device") == [
            "!object: kdshell takes an object's address; object directories by name are not supported"]


def test_object_device_is_not_a_process(machines):
    """A DEVICE_OBJECT starts with Type 3 (IO_TYPE_DEVICE), which a dispatcher header reads as a
    process: the type comes from the header's TypeIndex instead. The fixture kernel's
    ObTypeIndexTable is empty, so the decoded index is shown (33, OB_TYPE_INDEX_DEVICE in
    fixtures/images/src/inc/ntkrnl.h; the driver object is 34)."""
    with open_machine(machines, "7e-plain", "kernel") as s:
        device = Evaluator(s).evaluate("poi(mydrv!MyDrvDeviceObject)")
        out = lines(s, "!object poi(mydrv!MyDrvDeviceObject)")
        assert out[0] == f"Object: {p64(device)}  Type: ({p64(0)}) <type index 33>"
        assert out[1] == f"    ObjectHeader: {p64(device - 0x30)} (new version)"
        assert lines(s, "!object poi(mydrv!MyDrvDriverObject)")[0].endswith(") <type index 34>")
        assert lines(s, "!object @$proc")[0].endswith(") Process")


# -- small dumps ---------------------------------------------------------------------------------
CORPUS_PROCESS = {
    TRIAGE_19041: ["PROCESS ffffc08bdce94180",
                   "    SessionId: none  Cid: 0004    Peb: 00000000  ParentCid: 0000",
                   "    DirBase: 001ad000  ObjectTable: ffffad0ec107b080  HandleCount: <Data Not Accessible>",
                   "    Image: System", ""],
    MINI_17763: ["PROCESS ffff89034cedb080",
                 "    SessionId: none  Cid: 0004    Peb: 00000000  ParentCid: 0000",
                 "    DirBase: 001ad002  ObjectTable: ffffe58a1a805580  HandleCount: <Data Not Accessible>",
                 "    Image: System", ""],
}
CORPUS_THREAD = {
    TRIAGE_19041: ["THREAD ffffc08bde9e1640  Cid 0004.0108  Teb: 0000000000000000 Win32Thread: ???????????????? "
                   "RUNNING on processor 0",
                   "Owning Process            ffffc08bdce94180       Image:         System",
                   "Attached Process          N/A            Image:         N/A",
                   "IRQL                      0 (LOW_LEVEL)",
                   "Stack Init ffff850429892c90 Current ffff850429891fe0",
                   "Base ffff850429893000 Limit ffff85042988d000"],
    MINI_17763: ["THREAD ffff8903517e7240  Cid 0004.0198  Teb: 0000000000000000 Win32Thread: ???????????????? "
                 "RUNNING on processor 6",
                 "Owning Process            ffff89034cedb080       Image:         System",
                 "Attached Process          N/A            Image:         N/A",
                 "IRQL                      0 (LOW_LEVEL)",
                 "Stack Init ffff998071d4fc10 Current ffff998071d4d2c0",
                 "Base ffff998071d50000 Limit ffff998071d49000"],
}


@pytest.mark.parametrize("path", [TRIAGE_19041, MINI_17763], ids=["19041", "17763"])
def test_corpus_small_dumps(path):
    """The crashing thread and process of the real small dumps (System's thread 0x108 / 0x198),
    from their copies; everything else says it is not in the dump."""
    with kdshell.open(path, symbol_path="", image_path="") as s:
        s.progress = None
        number = s.processor
        block = CORPUS_PROCESS[path]
        assert lines(s, "!process -1 0") == block
        assert lines(s, "!process 4 0") == ["Searching for Process with Cid == 4"] + block
        assert lines(s, f"!process {block[0].split()[1]} 0") == block
        assert lines(s, "!process 0 0") == ["**** NT ACTIVE PROCESS DUMP ****",
                                            "Unable to get the list of processes from the dump: a small memory dump keeps "
                                            f"only the current process ({ptr(int(block[0].split()[1], 16))})"] + block
        out = lines(s, "!thread")
        assert out[:6] == CORPUS_THREAD[path] and out[6] == KB_HEADER
        assert lines(s, "!thread -1 2") == CORPUS_THREAD[path] + [""]
        thread = CORPUS_THREAD[path][0].split()[1]
        assert lines(s, f"!thread {thread}")[:6] == CORPUS_THREAD[path]
        assert lines(s, "!process -1 2")[5:7] == ["        Only the current thread is in a small memory dump",
                                                  "        " + CORPUS_THREAD[path][0]]
        assert lines(s, "!irql") == [f"Debugger saved IRQL for processor {number:#x} -- 0 (LOW_LEVEL)"]
        assert lines(s, "!prcb")[0] == f"PRCB for Processor {number} at {p64(s.kernel.triage_copies.prcb)}:"
        assert lines(s, "!running")[:2] == [f"Only processor {number} is in a small memory dump", ""]
        other = (number + 1) % 8
        for command, error in [
            (f"!prcb {other}", f"Unable to get the PRCB of processor {other} from the dump: a small memory dump "
                               f"keeps only the crashing processor's (processor {number})"),
            ("!pcr", f"Unable to get the KPCR of processor {number} from the dump: a small memory dump keeps "
                     "only the KPRCB copy"),
            ("!process 1a4 0", "Unable to get the process with Cid 1a4 from the dump (a small memory dump holds "
                               "only the current process)"),
            ("!thread -t 1234", "Unable to get the thread with Cid 1234 from the dump (a small memory dump holds "
                                "only the current thread)"),
            ("!process ffffc08b`00000000 0", "Unable to get the process at ffffc08b`00000000 from the dump (its "
                                             "EPROCESS is not in it)"),
            (".process ffffc08b`00000000", "Unable to get the process at ffffc08b`00000000 from the dump (its "
                                           "EPROCESS is not in it)"),
        ]:
            assert lines(s, command)[-1:] == [error], command
            assert len(lines(s, command)) == 1 + command.startswith("!process 1a4"), command
        # the current process is accepted by .process (there is no other address space)
        current = int(block[0].split()[1], 16)
        assert lines(s, f".process {current:x}") == [f"Implicit process is now {ptr(current)}"]


def test_machine_small_dump(machines):
    truth = machines.truth("3b")
    small = truth["dumps"]["small"]["small"]
    t = next(x for x in truth["threads"] if x["address"] == small["thread"])
    tool = next(p for p in truth["processes"] if p["address"] == small["process"])
    with open_machine(machines, "3b", "small") as s:
        out = lines(s, "!thread")
        assert out[0] == thread_head(t) + "RUNNING on processor 0"
        assert f"{'Owning Process':<26}{p64(tool['address'])}       Image:         stortool.exe" in out
        i = out.index(KB_HEADER)
        chain = truth["call_chain"]
        assert _stack_rows(out, i)[0] == (chain[0]["sp"], "nt!KeBugCheckEx")
        out = lines(s, "!process -1 0")
        assert out[:2] == [f"PROCESS {p64(tool['address'])}",
                           f"    SessionId: none  Cid: 1a5c    Peb: {tool['peb']:08x}  ParentCid: 03b0"]
        assert lines(s, "dt nt!_EPROCESS @$proc ImageFileName")[-1] == '   +0x5a8 ImageFileName : [15]  "stortool.exe"'


def test_kernel_commands_help_and_errors_are_one_line(machines):
    with open_machine(machines, "d1", "kernel") as s:
        for command in ("!process 1 2 3 4", "!irql 1 2", "!object", "!thread ffff8000`00000000",
                        "!process ffff8000`00000000"):
            assert len(lines(s, command)) == 1, command
        assert lines(s, "!process /?")[0] == "!process [Process [Flags]] | !process 0 Flags ImageName"
        # an address that holds no thread / process: WinDbg's words
        truth = machines.truth("d1")
        thread = truth["threads"][2]["address"]
        assert lines(s, f"!process {thread:x} 0") == [f"TYPE mismatch for process object at {ptr(thread)}"]
        process = truth["processes"][1]["address"]
        assert lines(s, f"!thread {process:x}") == [f"TYPE mismatch for thread object at {ptr(process)}"]
