"""!ready, !dpcs, !timer, !exqueue.

The test machine's own ready lists, DPCs and timers are checked in test_sched.py, its per-node work
queues in test_exqueue.py. What that kernel lacks (a shared ready queue, the classic
nt!ExWorkerQueue) and the engine's layouts in general are checked here on a synthetic layer: a PDB-free offsets source puts the fields at
offsets chosen by the test (past the fixture KPRCB's end), and an overlay on the
machine's memory lays the lists there, linking the machine's real threads (their Cid and Teb come
from the truth JSON) and KDPCs whose routines are nt's publics (golden PDB text). Expected values
come from what the test laid down, never from kdshell's output."""
import struct

import pytest

import kdshell.commands.queues as Q
from conftest import CORPUS_SYMBOLS, corpus_dumps_if_present, open_machine
from fixtures.machine.pdbtext import golden_publics, golden_types
from kdshell.errors import MemoryNotPresent
from kdshell.kernel.queues import Queues

COMMANDS = ("!ready", "!dpcs", "!timer", "!exqueue")
# Offsets the test chooses for the fields the fixture kernel lacks (past the real structures).
READY, DPCDATA, TIMERS = 0x9000, 0x9400, 0x9600
FAKE = {("_KPRCB", "DispatcherReadyListHead"): READY, ("_KTHREAD", "WaitListEntry"): 0x3000,
        ("_KPRCB", "DpcData"): DPCDATA, ("_KDPC_DATA", "DpcList.ListHead"): 0x0, ("_KDPC", "DpcListEntry"): 0x8,
        ("_KDPC", "DeferredRoutine"): 0x18, ("_KPRCB", "TimerTable"): TIMERS, ("_KTIMER_TABLE", "TimerEntries"): 0x10,
        ("_KTIMER_TABLE_ENTRY", "Entry"): 0x8, ("_KTIMER", "TimerListEntry"): 0x20, ("_KTIMER", "DueTime"): 0x18,
        ("_KTIMER", "Period"): 0x38, ("_KTIMER", "Dpc"): 0x30}
FAKE.update({("_EX_WORK_QUEUE", "WorkerQueue"): 0, ("_KQUEUE", "EntryListHead"): 0x18, ("_KQUEUE", "CurrentCount"): 0x28,
             ("_KQUEUE", "MaximumCount"): 0x2C, ("_KQUEUE", "ThreadListHead"): 0x30,
             ("_KTHREAD", "QueueListEntry"): 0x3100, ("_WORK_QUEUE_ITEM", "List"): 0,
             ("_WORK_QUEUE_ITEM", "WorkerRoutine"): 0x10, ("_WORK_QUEUE_ITEM", "Parameter"): 0x18})
FAKE.update({("_KPRCB", "SharedReadyQueue"): 0x9300, ("_KSHARED_READY_QUEUE", "ReadyListHead"): 0x40})
SHARED = 0xFFFFF80000F04000  # the processors' one shared ready queue
SIZES = {"_KDPC_DATA": 0x28, "_KTIMER_TABLE_ENTRY": 0x20, "_KTIMER_TABLE": 0x10 + 256 * 0x20, "_EX_WORK_QUEUE": 0x80}
WORKERS = 0xFFFFF80000F02000  # the test's nt!ExWorkerQueue


def run(session, text):
    with session.out.capture() as buf:
        ok = session.run(text)
    return ok, "".join(buf).splitlines()


class Offsets:
    def __init__(self, base, extra, sizes):
        self.base, self.extra, self.sizes = base, extra, sizes

    def offset(self, t, p):
        return self.extra.get((t, p), self.base.offset(t, p) if self.base else None)

    def source(self, t, p):
        return "test" if (t, p) in self.extra else self.base.source(t, p)

    def size(self, t):
        return self.sizes.get(t) or (self.base.size(t) if self.base else None)


class Overlay:
    """The machine's memory with bytes the test lays over it."""

    def __init__(self, base=None):
        self.base, self.bytes = base, {}

    def put(self, address, data):
        for i, b in enumerate(data):
            self.bytes[address + i] = b

    def ptr(self, address, value):
        self.put(address, struct.pack("<Q", value))

    def read(self, address, size):
        if all(address + i in self.bytes for i in range(size)):
            return bytes(self.bytes[address + i] for i in range(size))
        if self.base is None:
            raise MemoryNotPresent(address, "not laid down by the test")
        data = bytearray(self.base.read(address, size))
        for i in range(size):
            if address + i in self.bytes:
                data[i] = self.bytes[address + i]
        return bytes(data)


def empty_lists(mem, prcb):
    for p in range(32):
        head = prcb + READY + p * 16
        mem.ptr(head, head), mem.ptr(head + 8, head)
    for i in range(2):
        mem.ptr(prcb + DPCDATA + i * 0x28, 0)
    for b in range(256):
        head = prcb + TIMERS + 0x10 + b * 0x20 + 8
        mem.ptr(head, head), mem.ptr(head + 8, head)


def link(mem, head, entries):
    """A doubly linked LIST_ENTRY list at head through entries."""
    chain = [head] + entries + [head]
    for a, b in zip(chain, chain[1:]):
        mem.ptr(a, b), mem.ptr(b + 8, a)


@pytest.fixture(scope="module", params=["kernel", "complete"])
def machine_laid(request, machines):
    truth = machines.truth("e2")
    s = open_machine(machines, "e2", request.param)
    k = s.kernel
    mem = Overlay(k.memory)
    prcbs = {p["number"]: p["prcb"] for p in truth["processors"]}
    for prcb in prcbs.values():
        empty_lists(mem, prcb)
    threads = [t for t in truth["threads"] if t["state"] != 2][:4]
    assert len(threads) == 4
    nt = next(m for m in truth["modules"] if m["name"] == "ntoskrnl.exe")
    publics = golden_publics("ntkrnlmp.pdb")
    routines = [nt["base"] + publics[n] for n in ("KeBugCheckEx", "IofCompleteRequest")]
    # ready: threads 0 and 1 at priority 8 and thread 2 at 12 on processor 0
    p0 = prcbs[0]
    link(mem, p0 + READY + 8 * 16, [threads[0]["address"] + 0x3000, threads[1]["address"] + 0x3000])
    link(mem, p0 + READY + 12 * 16, [threads[2]["address"] + 0x3000])
    # the shared ready queue: thread 3 at priority 4
    for prcb in prcbs.values():
        mem.ptr(prcb + 0x9300, SHARED)
    for p in range(32):
        link(mem, SHARED + 0x40 + p * 16, [threads[3]["address"] + 0x3000] if p == 4 else [])
    # dpcs: two normal on the last processor, one threaded on processor 0 (SINGLE_LIST_ENTRY chains)
    area = 0xFFFFF80000F00000
    last = max(prcbs)
    dpcs = [(last, False, area, routines[0]), (last, False, area + 0x40, routines[1]), (0, True, area + 0x80, routines[1])]
    chains: dict = {}
    for cpu, threaded, dpc, routine in dpcs:
        mem.put(dpc, b"\x13" + b"\0" * 0x3F)
        mem.ptr(dpc + 0x18, routine)
        chains.setdefault((cpu, threaded), []).append(dpc)
    for (cpu, threaded), items in chains.items():
        heads = [prcbs[cpu] + DPCDATA + (0x28 if threaded else 0)] + [d + 8 for d in items]
        for a, b in zip(heads, heads[1:] + [0]):
            mem.ptr(a, b)
    # timers: a periodic one with a DPC in bucket 5; in bucket 200 thread 2's own KTHREAD.Timer (no DPC)
    t1, t2 = area + 0x1000, threads[2]["address"] + golden_types("ntkrnlmp.pdb").offset("_KTHREAD", "Timer")
    mem.put(t1, bytes(0x40)), mem.put(t2 + 0x18, bytes(0x28))
    mem.ptr(t1 + 0x18, 0x12_3456_789A), mem.put(t1 + 0x38, struct.pack("<I", 1000)), mem.ptr(t1 + 0x30, area)
    mem.ptr(t2 + 0x18, 0x9_0000_0001)
    link(mem, p0 + TIMERS + 0x10 + 5 * 0x20 + 8, [t1 + 0x20])
    link(mem, p0 + TIMERS + 0x10 + 200 * 0x20 + 8, [t2 + 0x20])
    # worker queues: Critical holds threads 0 and 1 and one pending item; Delayed and HyperCritical are empty
    for i in range(3):
        kq = WORKERS + i * 0x80
        link(mem, kq + 0x18, []), link(mem, kq + 0x30, [])
        mem.put(kq + 0x28, struct.pack("<II", 0, i + 1))
    link(mem, WORKERS + 0x30, [threads[0]["address"] + 0x3100, threads[1]["address"] + 0x3100])
    item = area + 0x3000
    link(mem, WORKERS + 0x18, [item])
    mem.ptr(item + 0x10, routines[1]), mem.ptr(item + 0x18, 0xABCD)
    yield s, truth, threads, dpcs, routines, (t1, t2), prcbs, mem, Offsets(k.offsets, FAKE, SIZES)
    s.close()


@pytest.fixture
def laid(machine_laid, monkeypatch):
    """The commands read through the overlay and the test's offsets while a test runs."""
    *shown, mem, offsets = machine_laid
    real = Q.Queues
    monkeypatch.setattr(Q, "Queues", lambda memory, _offsets, is64: real(mem, offsets, is64))
    work = Q.WorkQueues
    monkeypatch.setattr(Q, "WorkQueues", lambda memory, _offsets, is64: work(mem, offsets, is64))
    symbol = shown[0].kernel.symbol
    monkeypatch.setattr(shown[0].kernel, "symbol", lambda name: WORKERS if name == "ExWorkerQueue" else symbol(name))
    return shown


def test_ready_lists_each_processors_ready_threads_by_priority(laid):
    s, truth, threads, *_ , prcbs = laid
    ok, out = run(s, "!ready")
    assert ok

    def row(t, where=" on processor 0"):
        return (f"    THREAD {t['address']:016x}  Cid {t['cid'][0]:04x}.{t['cid'][1]:04x}  Teb: {t['teb'] or 0:016x} "
                f"Win32Thread: {0:016x} READY{where}")
    assert out[:7] == [f"SharedReadyQueue {SHARED:016x}: Ready Threads at priority 4", row(threads[3], ""),
                       "Processor 0: Ready Threads at priority 12", row(threads[2]),
                       "Processor 0: Ready Threads at priority 8", row(threads[0]), row(threads[1])]
    assert out[7:] == [f"Processor {n}: No threads in READY state" for n in sorted(prcbs) if n]
    assert run(s, "!ready 6")[1] == out


def test_dpcs_lists_the_queued_kdpcs_with_their_routines(laid):
    s, truth, threads, dpcs, routines, timers, prcbs = laid
    ok, out = run(s, "!dpcs")
    assert ok and out[0] == "CPU Type      KDPC       Function"
    names = {routines[0]: "nt!KeBugCheckEx", routines[1]: "nt!IofCompleteRequest"}
    last = max(prcbs)
    want = [f" 0: Threaded: 0x{dpcs[2][2]:016x} 0x{routines[1]:016x} nt!IofCompleteRequest"]
    want += [f"{last:2d}: Normal  : 0x{d:016x} 0x{r:016x} {names[r]}" for _, _, d, r in dpcs[:2]]
    assert out[1:] == want
    assert run(s, "!dpcs 0")[1] == out[:2]
    assert run(s, f"!dpcs {last}")[1] == [out[0]] + out[2:]


def test_timer_lists_each_processors_timers(laid):
    s, truth, threads, dpcs, routines, (t1, t2), prcbs = laid
    ok, out = run(s, "!timer")
    kuser = s.kernel.memory.read(0xFFFFF78000000008, 8)
    assert ok and out[:5] == ["Dump system timers", "", f"Interrupt time: {kuser[:4][::-1].hex()} {kuser[4:][::-1].hex()}",
                              "", "List Timer    Interrupt Low/High     DPC/thread"]
    at = out.index(f"PROCESSOR 0 (nt!_KTIMER_TABLE {prcbs[0] + TIMERS:016x})")
    assert out[at + 1:at + 3] == [
        f"  5 {t1:016x} P 3456789a 00000012  nt!KeBugCheckEx (DPC @ {dpcs[0][2]:016x})",
        f"200 {t2:016x}   00000001 00000009  thread {threads[2]['address']:016x}"]
    assert out[-1] == "Total Timers: 2, Maximum List: 1"


def test_exqueue_lists_each_queue_its_workers_and_pending_items(laid):
    s, truth, threads, dpcs, routines, *_ = laid
    ok, out = run(s, "!exqueue")

    def row(t):
        return (f"THREAD {t['address']:016x}  Cid {t['cid'][0]:04x}.{t['cid'][1]:04x}  Teb: {t['teb'] or 0:016x} "
                f"Win32Thread: {0:016x} WAIT")
    assert ok and out == [
        f"Dumping ExWorkerQueue: {WORKERS:016x}", "",
        "**** Critical WorkQueue( current = 0 maximum = 1 )", row(threads[0]), row(threads[1]),
        f"PENDING: WorkerRoutine nt!IofCompleteRequest ({routines[1]:016x}) Parameter {0xABCD:016x} "
        f"(item {0xFFFFF80000F03000:016x})", "",
        "**** Delayed WorkQueue( current = 0 maximum = 2 )", "",
        "**** HyperCritical WorkQueue( current = 0 maximum = 3 )"]
    assert run(s, "!exqueue 6")[1] == out


def test_small_dump_says_what_it_lacks(machines):
    with open_machine(machines, "e2", "small") as s:
        for command in COMMANDS:
            ok, out = run(s, command)
            assert not ok and len(out) == 1 and "small memory dump keeps only the crashing processor's KPRCB" in out[0]


def test_bad_input_is_one_line(machines):
    with open_machine(machines, "e2") as s:
        for command in ("!ready zz", "!ready 1 2", "!dpcs x", "!dpcs 99", "!timer 5", "!exqueue 1 2", "!exqueue qq"):
            ok, out = run(s, command)
            assert not ok and len(out) == 1 and out[0].startswith(command.split()[0] + ": "), command


def test_engine_follows_pre_81_dpc_lists_and_stops_on_a_loop():
    mem = Overlay()
    prcb, dpc = 0xFFFFF80001000000, 0xFFFFF80002000000
    offsets = Offsets(None, {("_KPRCB", "DpcData"): 0x100, ("_KDPC_DATA", "DpcListHead"): 0x0,
                             ("_KDPC", "DpcListEntry"): 0x8, ("_KDPC", "DeferredRoutine"): 0x20}, {"_KDPC_DATA": 0x20})
    q = Queues(mem, offsets, True)
    assert q.missing("dpcs") is None and "_KPRCB.DispatcherReadyListHead" in q.missing("ready")
    link(mem, prcb + 0x100, [dpc + 8, dpc + 0x48])
    mem.ptr(dpc + 0x20, 0x1111), mem.ptr(dpc + 0x60, 0x2222)
    mem.ptr(prcb + 0x120, prcb + 0x120)
    got = q.dpcs(prcb)
    assert [(d.address, d.threaded, d.routine) for d in got.dpcs] == [(dpc, False, 0x1111), (dpc + 0x40, False, 0x2222)]
    assert not got.warnings
    mem.ptr(dpc + 0x48, dpc + 8)  # the second entry points back to the first
    got = q.dpcs(prcb)
    assert len(got.dpcs) == 2 and got.warnings and "loops" in got.warnings[0]


@pytest.mark.parametrize("dump", corpus_dumps_if_present(), ids=lambda p: p.name)
def test_corpus_dumps_answer_in_one_line_each(dump):
    import kdshell

    with kdshell.open(dump, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.progress = None
        for command in COMMANDS:
            ok, out = run(s, command)
            assert len(out) == 1 and out[0].startswith(command + ": "), (command, out)
