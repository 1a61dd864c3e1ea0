"""!locks, !stacks and !analyze -hang on the e2-deadlock machine: two system threads of mydrv.sys
took one executive resource each (nt!ExAcquireResourceExclusiveLite, run by the emulated CPU) and
wait for the other's. Expected values come from the scenario's design, the machine's truth (threads,
their executed frames, modules) and the golden PDB publics -- never from kdshell's own output."""
import re

import pytest

import kdshell
from conftest import REPO, corpus_dumps_if_present, open_corpus, open_machine, run_lines as lines
from fixtures.machine.pdbtext import golden_publics

BIN = REPO / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"
WAIT_FRAMES = ("KiSwapContext", "KiSwapThread", "KiCommitThreadWait", "KeWaitForSingleObject",
               "ExAcquireResourceExclusiveLite", "KeDelayExecutionThread", "KiIdleLoop")




@pytest.fixture(scope="module")
def hung(machines):
    truth = machines.truth("e2-deadlock")
    mydrv = next(m for m in truth["modules"] if m["name"] == "mydrv.sys")
    publics = golden_publics("mydrv.pdb")
    address = {name: mydrv["base"] + publics[name] for name in
               ("MyDrvResourceA", "MyDrvResourceB", "MyDrvDeadlockThreadA", "MyDrvDeadlockThreadB")}
    thread = {t["start_address"]: t for t in truth["threads"]}
    a, b = thread[address["MyDrvDeadlockThreadA"]], thread[address["MyDrvDeadlockThreadB"]]
    assert a["wait_reason"] == b["wait_reason"] == 27  # WrResource
    s = open_machine(machines, "e2-deadlock")
    yield s, truth, address, a, b
    s.close()


def test_locks_shows_both_resources_their_owner_and_waiter(hung):
    s, truth, address, a, b = hung
    out = lines(s, "!locks")
    assert out[0] == "**** DUMP OF ALL RESOURCE OBJECTS ****" and out[-1] == "2 total locks, 2 locks currently held"
    for name, owner, waiter in (("MyDrvResourceA", a, b), ("MyDrvResourceB", b, a)):
        at = out.index(f"Resource @ mydrv!{name} (0x{address[name]:016x})    Exclusively owned")
        assert out[at + 1:at + 6] == ["    Contention Count = 1", "    NumberOfExclusiveWaiters = 1",
                                      f"     Threads: {owner['address']:016x}-01<*> ",
                                      "     Threads Waiting On Exclusive Access:",
                                      f"              {waiter['address']:016x}       "]
    verbose = "\n".join(lines(s, "!locks -v"))
    assert "mydrv!MyDrvDeadlockThreadA+0x" in verbose and "nt!ExAcquireResourceExclusiveLite+0x" in verbose


def test_other_machines_have_no_resources(machines):
    with open_machine(machines, "e2") as s:
        assert lines(s, "!locks") == ["**** DUMP OF ALL RESOURCE OBJECTS ****", "0 total locks, 0 locks currently held"]
        assert "No thread waits on an executive resource." in lines(s, "!analyze -hang")


def test_analyze_hang_names_the_deadlock(hung):
    s, truth, address, a, b = hung
    out = lines(s, "!analyze -hang")
    assert "No driver is to blame : MANUALLY_INITIATED_CRASH (the crash was requested on purpose)" in out
    at = out.index("DEADLOCK between 2 threads:")
    links = out[at + 1:at + 3]
    want = {f"    thread {a['address']:016x} (mydrv!MyDrvDeadlockThreadA) waits for resource mydrv!MyDrvResourceB "
            f"(0x{address['MyDrvResourceB']:016x}) owned by thread {b['address']:016x}",
            f"    thread {b['address']:016x} (mydrv!MyDrvDeadlockThreadB) waits for resource mydrv!MyDrvResourceA "
            f"(0x{address['MyDrvResourceA']:016x}) owned by thread {a['address']:016x}"}
    assert set(links) == want
    assert any(line.startswith("BLOCKING_THREAD:  ") for line in out)


def test_stacks_lists_every_thread_with_its_blocker(hung):
    s, truth, address, a, b = hung
    out = lines(s, "!stacks")
    assert out[0] == "Proc.Thread  .Thread  Ticks   ThreadState Blocker"
    rows = {}
    for line in out:
        m = re.match(r"^ *([0-9a-f]+)\.([0-9a-f]{6})  ([0-9a-f]{16}) [0-9a-f]{8} (\w+) +(\S+)$", line)
        if m:
            rows[int(m.group(3), 16)] = m
    assert set(rows) == {t["address"] for t in truth["threads"]}
    for t in truth["threads"]:
        m = rows[t["address"]]
        assert (int(m.group(1), 16), int(m.group(2), 16)) == tuple(t["cid"])
        if t["state"] != 5:
            continue
        assert m.group(4) == "Blocked"
        executed = [f["function"] for f in t["frames"]]
        want = next(f for f in executed if f.split("!")[1].split("+")[0] not in WAIT_FRAMES)
        assert m.group(5) == want, t["address"]
    assert rows[a["address"]].group(5).startswith("mydrv!MyDrvDeadlockThreadA+0x")
    filtered = lines(s, "!stacks 1 MyDrvDeadlock")
    assert filtered[-1] == "Threads Processed: 2"
    assert any(line.strip().startswith("nt!ExAcquireResourceExclusiveLite+0x") for line in filtered)


def test_small_dumps_say_what_they_lack(machines):
    with open_machine(machines, "e2-deadlock", "small") as s:
        for command in ("!locks", "!stacks", "!analyze -hang"):
            out = s.capture(command).splitlines()
            assert len(out) == 1 and "small memory dump keeps only the crashing thread" in out[0], out


@pytest.mark.parametrize("path", corpus_dumps_if_present(), ids=lambda p: p.name)
def test_corpus_dumps(path):
    with open_corpus(path) as s:
        for command in ("!locks", "!locks -v", "!stacks 2", "!analyze -hang"):
            text = s.capture(command)
            assert "Traceback" not in text and "Internal error" not in text, (command, text)
            if s.kernel.small:
                assert len(text.splitlines()) == 1 and "small memory dump" in text


# -- the engine on hand-made memory: shared owners, a looping list ------------------------------------------
class FakeMemory:
    def __init__(self):
        self.bytes = {}

    def write(self, address, data):
        for i, b in enumerate(data):
            self.bytes[address + i] = b

    def read(self, address, size):
        from kdshell.errors import MemoryNotPresent

        try:
            return bytes(self.bytes[address + i] for i in range(size))
        except KeyError:
            raise MemoryNotPresent(address, "not in the fake") from None


class NoTypes:
    types = None

    def offset(self, type_name, path):
        return None

    def source(self, type_name, path):
        return None

    def size(self, type_name):
        return None


def test_shared_owners_from_the_owner_table():
    """An ERESOURCE laid out at Windows 10's x64 offsets (SystemResourcesList +0, OwnerTable +0x10,
    ActiveCount +0x18, Flag +0x1A, OwnerEntry +0x30, ActiveEntries +0x40, ContentionCount +0x44):
    one owner in OwnerEntry, two more in the OwnerTable (entry 0 holds TableSize), shared."""
    import struct

    from kdshell.kernel.layout import StructLayout
    from kdshell.kernel.locks import Locks

    m = FakeMemory()
    head, res, table = 0x1000, 0x2000, 0x3000
    m.write(head, struct.pack("<QQ", res, res))
    m.write(res, struct.pack("<QQ", head, head))
    m.write(res + 0x10, struct.pack("<QhH", table, 3, 0))  # OwnerTable, ActiveCount 3, Flag 0 (shared)
    m.write(res + 0x1C, bytes(4))
    m.write(res + 0x20, struct.pack("<QQ", 0, 0))
    m.write(res + 0x30, struct.pack("<QI", 0xAAA0, 1 << 3) + bytes(4))  # OwnerEntry: thread, OwnerCount 1
    m.write(res + 0x40, struct.pack("<IIII", 3, 7, 0, 0))
    m.write(table, struct.pack("<QI", 0, 3) + bytes(4))  # TableSize 3
    m.write(table + 0x10, struct.pack("<QI", 0xBBB0, 2 << 3) + bytes(4))
    m.write(table + 0x20, struct.pack("<QI", 0xCCC0, 1 << 3) + bytes(4))
    locks = Locks(m, NoTypes(), True, lambda name: head if name == "ExpSystemResourcesList" else None,
                  lambda name: None, [], StructLayout(NoTypes(), {}))
    (r,) = locks.resources().resources
    assert (r.held, r.exclusive, r.contention) == (True, False, 7)
    assert [(o.thread, o.count) for o in r.owners] == [(0xAAA0, 1), (0xBBB0, 2), (0xCCC0, 1)]
    # a list that loops back on itself stops with a warning
    m.write(res, struct.pack("<QQ", res, head))
    walk = locks.resources()
    assert len(walk.resources) == 1 and "loops" in walk.warning


def test_analyze_133_names_the_dpc_routine_and_processor(machines, tmp_path):
    """e2 crashed inside kbdcrash's DPC on processor 0's idle thread; relabelled as 0x133 P1=0 (a
    single DPC over its allotment) !analyze reads the run time and limit from the parameters and
    names the routine KiExecuteAllDpcs was running, KPRCB.CurrentDpcRoutine (the stack shows only
    the function it tail-called). The real 0x133 machine is checked in test_sched.py."""
    import shutil
    import struct

    truth = machines.truth("e2")
    chain = [f["function"].split("+")[0] for f in truth["call_chain"]]
    routine = truth["queues"]["processors"][0]["current_dpc_name"]
    assert routine == "kbdcrash!KbdCrashDpcRoutine" and chain[chain.index("nt!KiExecuteAllDpcs") - 1] != routine
    path = tmp_path / "133.dmp"
    shutil.copy(machines.path("e2", "kernel"), path)
    with open(path, "r+b") as f:
        f.seek(0x38)
        f.write(struct.pack("<I", 0x133))
        f.seek(0x40)
        f.write(struct.pack("<4Q", 0, 0x501, 0x500, 0))
    with kdshell.open(path, symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        out = s.capture("!analyze -v").splitlines()
    at = out.index("DPC_TIMEOUT_TYPE:  SINGLE_DPC_TIMEOUT_EXCEEDED")
    assert [line for line in out[at:at + 10] if line] == [
        "DPC_TIMEOUT_TYPE:  SINGLE_DPC_TIMEOUT_EXCEEDED", "DPC_RUNTIME:  501", "DPC_TIME_LIMIT:  500",
        f"DPC_PROCESSOR:  {truth['processors'][0]['number']}",  # the bug check ran on processor 0
        f"DPC_ROUTINE:  {routine}"]
