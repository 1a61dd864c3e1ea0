"""!exqueue on Windows 10's per-node work queues, on the test machines' own queues.

The x64 fixture kernel keeps them as Windows 10 2004 (build 19041, what it claims) does
(src/inc/ntexq.h: nt!PspSystemPartition -> _EPARTITION.ExPartition -> _EX_PARTITION.WorkQueues[node
number][8] -> EX_WORK_QUEUE, whose KPRIQUEUE holds the items by priority; the node is
KPRCB.ParentNode) and fills them
with its own nt!ExQueueWorkItem (src/nt/amd64/exqueue.c); ExpWorkerInitialization, called where phase 1
would (before the drivers load), starts two worker threads that join the queue and wait. At
KeBugCheckEx's entry the builder queues the drivers' work items (fixtures/machine/sched.py WORK_ITEMS). Expected values come from the truth
JSON: the builder's record of what it queued and the queues walked after the run with the PDB text
layouts (not kdshell)."""
import pytest

import kdshell.commands.queues as Q
from conftest import open_machine
from fixtures.machine.sched import WORK_ITEMS
from test_sched import SCENARIOS, machine  # noqa: F401 (the same machines' kernel and complete dumps)

CLASSES = {18: "RealTime", 15: "HyperCritical", 14: "SuperCritical", 13: "Critical", 12: "Delayed", 8: "Normal",
           7: "Background"}  # WORK_QUEUE_TYPE's priorities (wdm.h's documentation)


def run(session, text):
    with session.out.capture() as buf:
        ok = session.run(text)
    return ok, "".join(buf).splitlines()


def worker_row(truth, address):
    t = next(t for t in truth["threads"] if t["address"] == address)
    return (f"THREAD {address:016x}  Cid {t['cid'][0]:04x}.{t['cid'][1]:04x}  Teb: {t['teb'] or 0:016x} "
            f"Win32Thread: {0:016x} WAIT")


def test_the_kernel_queued_each_item_at_its_types_priority(machines):
    """The machine itself: ExQueueWorkItem put each item in its node's queue, at the tail of
    EntryListHead[priority of its WORK_QUEUE_TYPE], and every processor points at that node."""
    for scenario in SCENARIOS:
        q = machines.truth(scenario)["queues"]
        (node,) = q["nodes"]
        assert sorted(node["processors"]) == [p["number"] for p in q["processors"]]
        (queue,) = node["queues"]
        assert queue["index"] == 0 and queue["node"] == node["address"] and node["number"] == 0
        # found through the system partition: its EX_PARTITION's table for node 0, the queue's own Partition
        assert node["partition"] and node["array"] and queue["partition"] == node["partition"]
        assert queue["maximum"] == len(q["processors"])
        # the workers ExpWorkerInitialization started joined the queue and wait for work (WrQueue)
        truth = machines.truth(scenario)
        workers = [t for t in truth["threads"] if t["address"] in queue["threads"]]
        assert len(workers) == len(queue["threads"]) == queue["thread_count"] == 2
        assert all(t["wait_reason"] == 15 and t["cid"][0] == 4 for t in workers)
        assert all(any(f["function"].startswith("nt!ExpWorkerThread+") for f in t["frames"]) for t in workers)
        want = {0: 13, 1: 12, 42: 10}
        queued = [(i["item"], want[i["queue_type"]]) for i in q["injected"]["work"]]
        assert [(i["item"], i["priority"]) for i in queue["items"]] == sorted(queued, key=lambda x: x[1])
        assert [i["name"] for i in q["injected"]["work"]] == [r for r, _ in WORK_ITEMS]


def test_exqueue_lists_each_priority_class_and_its_pending_items(machine):
    s, truth = machine
    ok, out = run(s, "!exqueue")
    want = []
    for node in truth["queues"]["nodes"]:
        for queue in node["queues"]:
            busy = {i["priority"] for i in queue["items"]}
            for priority in sorted(set(CLASSES) | busy, reverse=True):
                want.append(f"**** NUMA Node 0 {CLASSES.get(priority, f'Priority {priority}')} WorkQueue ( Threads: "
                            f"{queue['thread_count']}/{queue['max_threads']}, Concurrency: "
                            f"{queue['current'][priority]}/{queue['maximum']} )")
                want += [f"PENDING: WorkerRoutine {i['name']} ({i['routine']:016x}) Parameter {i['parameter']:016x} "
                         f"(item {i['item']:016x})" for i in queue["items"] if i["priority"] == priority]
            want += [worker_row(truth, t) for t in queue["threads"]]
            want.append("")
    assert ok and out == want[:-1]
    assert "Priority 10 WorkQueue" in "\n".join(out)  # CustomPriorityWorkQueue + 10
    assert run(s, "!exqueue 0x1f") == (ok, out)  # Flags: WinDbg's syntax


def test_exqueue_without_the_types_names_what_is_missing(machines):
    with open_machine(machines, "e2", symbol_path="") as s:
        ok, out = run(s, "!exqueue")
        assert not ok and len(out) == 1 and out[0].startswith("!exqueue: no nt!ExWorkerQueue")
        assert "_ENODE.ExWorkQueues" in out[0] and "_KPRCB.ParentNode" in out[0]
        assert "_EX_PARTITION.WorkQueues" in out[0]


class Offsets:
    """The machine's PDB types with some fields moved or taken away by the test."""

    def __init__(self, base, extra):
        self.base, self.extra = base, extra

    def offset(self, t, p):
        return self.extra[(t, p)] if (t, p) in self.extra else self.base.offset(t, p)

    def source(self, t, p):
        return "test" if (t, p) in self.extra else self.base.source(t, p)

    def size(self, t):
        return self.base.size(t)


def _expected(truth):
    node, = truth["queues"]["nodes"]
    queue, = node["queues"]
    return node, queue


def test_exqueue_on_the_1511_layout_reads_enode_exworkqueues(machines, monkeypatch):
    """1507/1511 types (no _EX_PARTITION.WorkQueues; _ENODE.ExWorkQueues[8]): the test declares the
    node's queue array at the offset where the machine's real array lies from the node (both the
    builder's record), so the engine reads the same queues through the node."""
    truth = machines.truth("e2")
    node, queue = _expected(truth)
    with open_machine(machines, "e2") as s:
        with s.out.capture() as buf:
            assert s.run("!exqueue")
        want = "".join(buf).splitlines()
        offsets = Offsets(s.kernel.offsets, {("_EX_PARTITION", "WorkQueues"): None,
                                             ("_EPARTITION", "ExPartition"): None,
                                             ("_ENODE", "ExWorkQueues"): node["array"] - node["address"]})
        real = Q.NodeWorkQueues
        made = []

        def engine(memory, _offsets, is64):
            made.append(real(memory, offsets, is64))
            return made[-1]
        monkeypatch.setattr(Q, "NodeWorkQueues", engine)
        monkeypatch.setattr(s.kernel, "symbol", lambda name, _real=s.kernel.symbol:
                            None if name == "PspSystemPartition" else _real(name))
        ok, out = run(s, "!exqueue")
        assert ok and out == want and not made[0].partitioned
        assert f"{queue['items'][0]['item']:016x}" in "\n".join(out)
        # the same types without _ENODE.ExWorkQueues either: one line naming both
        offsets.extra[("_ENODE", "ExWorkQueues")] = None
        ok, out = run(s, "!exqueue")
        assert not ok and len(out) == 1 and "_ENODE.ExWorkQueues" in out[0] and "_EX_PARTITION.WorkQueues" in out[0]


def test_exqueue_without_the_system_partition_symbol_is_one_line_per_node(machines, monkeypatch):
    with open_machine(machines, "e2") as s:
        monkeypatch.setattr(s.kernel, "symbol", lambda name, _real=s.kernel.symbol:
                            None if name == "PspSystemPartition" else _real(name))
        ok, out = run(s, "!exqueue")
        assert out == ["no nt!PspSystemPartition: the system partition's work queues cannot be found"]


def test_exqueue_on_small_dumps_and_bad_input_is_one_line(machines):
    with open_machine(machines, "e2", "small") as s:
        ok, out = run(s, "!exqueue")
        assert not ok and len(out) == 1 and "small memory dump" in out[0]
    with open_machine(machines, "e2") as s:
        for command in ("!exqueue 1 2", "!exqueue qq"):
            ok, out = run(s, command)
            assert not ok and len(out) == 1 and out[0].startswith("!exqueue: ")
