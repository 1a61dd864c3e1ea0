"""!locks, !stacks and !analyze -hang on the e2-deadlock machine: two system threads of mydrv.sys
took one executive resource each (nt!ExAcquireResourceExclusiveLite, run by the emulated CPU) and
wait for the other's. Expected values come from the scenario's design, the machine's truth (threads,
their executed frames, modules) and the golden PDB publics -- never from kdshell's own output."""
import re

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, REPO, corpus_dumps_if_present
from fixtures.machine.pdbtext import golden_publics

BIN = REPO / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"
WAIT_FRAMES = ("KiSwapContext", "KiSwapThread", "KiCommitThreadWait", "KeWaitForSingleObject",
               "ExAcquireResourceExclusiveLite", "KeDelayExecutionThread", "KiIdleLoop")


def open_machine(machines, name, kind="kernel"):
    s = kdshell.open(machines.path(name, kind), symbol_path=MACHINE_SYMBOLS, image_path="")
    s.progress = None
    return s


def lines(session, text):
    with session.out.capture() as buf:
        assert session.run(text), text
    return "".join(buf).splitlines()


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
    try:
        s = kdshell.open(path, symbol_path=str(CORPUS_SYMBOLS), image_path="")
    except kdshell.errors.KdError:
        pytest.skip("kdshell does not open this file")
    with s:
        s.progress = None
        for command in ("!locks", "!locks -v", "!stacks 2", "!analyze -hang"):
            text = s.capture(command)
            assert "Traceback" not in text and "Internal error" not in text, (command, text)
            if s.kernel.small:
                assert len(text.splitlines()) == 1 and "small memory dump" in text
