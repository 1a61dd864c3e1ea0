"""The KPRCB's queues: ready threads (!ready), queued DPCs (!dpcs), timers (!timer), and the
executive worker queues (!exqueue).

    q = Queues(memory, offsets, is64)
    q.ready(prcb)    -> ReadyQueue: (priority, thread) pairs of KPRCB.DispatcherReadyListHead[32]
    q.shared_ready(prcb) -> ReadyQueue of KPRCB.SharedReadyQueue (None where the types lack it)
    q.dpcs(prcb)     -> DpcQueue: the KDPCs of KPRCB.DpcData[0] (normal) and [1] (threaded)
    q.timers(prcb)   -> TimerQueue: the KTIMERs of KPRCB.TimerTable.TimerEntries[*]
    WorkQueues(memory, offsets, is64).queues(nt!ExWorkerQueue) -> the classic worker queues
    NodeWorkQueues(memory, offsets, is64).nodes([(n, prcb)], nt!PspSystemPartition) -> Windows 10's, per
                     node (KPRCB.ParentNode), through the partition (1607 on) or _ENODE (1507/1511)
    q.missing(what)  -> one line naming the fields no source knows, or None

Every offset comes from the offsets object (the kernel PDB, the KDBG, the built-in table); none
is guessed. Threads in a ready list are linked through KTHREAD.WaitListEntry; DPCs through
KDPC.DpcListEntry (a SINGLE_LIST_ENTRY under KDPC_DATA.DpcList.ListHead from 8.1 on, a LIST_ENTRY
under KDPC_DATA.DpcListHead before); timers through KTIMER.TimerListEntry under
KTIMER_TABLE_ENTRY.Entry. Walks are bounded and loop-safe (layout.walk_list).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kdshell.errors import MemoryNotPresent
from kdshell.kernel.layout import Memory, Reader, StructLayout, walk_list

# The most entries a single DPC list walk follows (a real one holds a few dozen at most).
MAX_DPCS = 4096
READY_PRIORITIES = 32

SPEC: dict[str, tuple[tuple[str, str], ...]] = {
    "ready_heads": (("_KPRCB", "DispatcherReadyListHead"),),
    "shared_ready": (("_KPRCB", "SharedReadyQueue"),),
    "shared_heads": (("_KSHARED_READY_QUEUE", "ReadyListHead"),),
    "wait_list_entry": (("_KTHREAD", "WaitListEntry"),),
    "dpc_data": (("_KPRCB", "DpcData"),),
    "dpc_single_head": (("_KDPC_DATA", "DpcList.ListHead"),),
    "dpc_list_head": (("_KDPC_DATA", "DpcListHead"),),
    "dpc_entry": (("_KDPC", "DpcListEntry"),),
    "dpc_routine": (("_KDPC", "DeferredRoutine"),),
    "timer_table": (("_KPRCB", "TimerTable"),),
    "timer_entries": (("_KTIMER_TABLE", "TimerEntries"),),
    "timer_entry_list": (("_KTIMER_TABLE_ENTRY", "Entry"),),
    "timer_list_entry": (("_KTIMER", "TimerListEntry"),),
    "timer_due": (("_KTIMER", "DueTime"),),
    "timer_period": (("_KTIMER", "Period"),),
    "timer_dpc": (("_KTIMER", "Dpc"),),
    "thread_timer": (("_KTHREAD", "Timer"),),  # a timer with no DPC is a thread's own (its waits' timeout)
}

NEEDS = {
    "ready": ("ready_heads", "wait_list_entry"),
    "dpcs": ("dpc_data", "dpc_entry", "dpc_routine"),
    "timers": ("timer_table", "timer_entries", "timer_entry_list", "timer_list_entry", "timer_due",
               "timer_period", "timer_dpc", "dpc_routine"),
}
SIZES = {"dpcs": ("_KDPC_DATA",), "timers": ("_KTIMER_TABLE_ENTRY",)}


def _missing_line(layout: StructLayout, names: tuple[str, ...]) -> str | None:
    """The layout's line, or, when the kernel's PDB is loaded and still lacks them, one that says so."""
    gone = layout.missing(names)
    if gone and getattr(layout.offsets, "types", None) is not None:
        return f"the kernel's types (its PDB) declare no {', '.join(gone)}"
    return layout.missing_line(names)


class SizedOffsets(Protocol):
    def offset(self, type_name: str, path: str) -> int | None: ...

    def source(self, type_name: str, path: str) -> str | None: ...

    def size(self, type_name: str) -> int | None: ...


@dataclass
class ReadyQueue:
    address: int  # the KPRCB's, or the KSHARED_READY_QUEUE's
    threads: list[tuple[int, int]] = field(default_factory=list)  # (priority, KTHREAD)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Dpc:
    address: int
    threaded: bool
    routine: int | None


@dataclass
class DpcQueue:
    dpcs: list[Dpc] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Timer:
    address: int
    bucket: int
    due: int | None
    period: int | None
    dpc: int | None
    routine: int | None
    thread: int | None = None  # the KTHREAD whose built-in timer this is (no DPC)


@dataclass
class TimerQueue:
    table: int
    timers: list[Timer] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    longest: int = 0


class Queues:
    def __init__(self, memory: Memory, offsets: SizedOffsets, is64: bool) -> None:
        self.offsets = offsets
        self.layout = StructLayout(offsets, SPEC)
        self.r = Reader(memory, is64)
        self.ptr_size = 8 if is64 else 4

    def missing(self, what: str) -> str | None:
        names = NEEDS[what]
        if what == "dpcs" and not ({"dpc_single_head", "dpc_list_head"} & set(self.layout.found)):
            names = names + ("dpc_list_head",)
        line = _missing_line(self.layout, names)
        if line is not None:
            return line
        for type_name in SIZES.get(what, ()):
            if not self.offsets.size(type_name):
                return f"The size of {type_name} is not known (no kernel PDB): load the kernel's symbols"
        return None

    def _list(self, head: int, what: str, link: int) -> tuple[list[int], str | None]:
        walk = walk_list(self.r, head, what)
        return [e - link for e in walk.entries], walk.warning

    def _ready_heads(self, address: int, heads: int, what: str) -> ReadyQueue:
        q = ReadyQueue(address)
        link = self.layout.need("wait_list_entry")
        for priority in range(READY_PRIORITIES):
            threads, warning = self._list(heads + priority * 2 * self.ptr_size, f"{what} priority {priority}", link)
            q.threads += [(priority, t) for t in threads]
            if warning:
                q.warnings.append(warning)
        return q

    def ready(self, prcb: int) -> ReadyQueue:
        return self._ready_heads(prcb, prcb + self.layout.need("ready_heads"), "ready")

    def shared_ready(self, prcb: int) -> ReadyQueue | None:
        at, heads = self.layout.get("shared_ready"), self.layout.get("shared_heads")
        if at is None or heads is None:
            return None
        try:
            queue = self.r.ptr(prcb + at)
        except MemoryNotPresent:
            return None
        return self._ready_heads(queue, queue + heads, "shared ready") if queue else None

    def dpcs(self, prcb: int) -> DpcQueue:
        q = DpcQueue()
        data = prcb + self.layout.need("dpc_data")
        size = self.offsets.size("_KDPC_DATA") or 0
        link = self.layout.need("dpc_entry")
        routine = self.layout.need("dpc_routine")
        single = self.layout.get("dpc_single_head")
        for index in (0, 1):
            base = data + index * size
            if single is not None:
                entries, warning = self._single(base + single)
            else:
                entries, warning = self._list(base + self.layout.need("dpc_list_head"), "DPC", 0)
            if warning:
                q.warnings.append(warning)
            for entry in entries:
                dpc = entry - link
                q.dpcs.append(Dpc(dpc, index == 1, self.r.maybe_ptr(dpc, routine)))
        return q

    def _single(self, head: int) -> tuple[list[int], str | None]:
        out: list[int] = []
        try:
            entry = self.r.ptr(head)
        except MemoryNotPresent:
            return [], f"The DPC list head at {head:#x} is not in the dump"
        while entry:
            if entry in out or len(out) >= MAX_DPCS:
                return out, f"The DPC list loops at {entry:#x}; stopped after {len(out)} entries"
            out.append(entry)
            try:
                entry = self.r.ptr(entry)
            except MemoryNotPresent:
                return out, f"The DPC list entry at {entry:#x} is not in the dump"
        return out, None

    def timers(self, prcb: int) -> TimerQueue:
        L = self.layout
        table = prcb + L.need("timer_table")
        q = TimerQueue(table)
        entries = table + L.need("timer_entries")
        size = self.offsets.size("_KTIMER_TABLE_ENTRY") or 0
        total = self.offsets.size("_KTIMER_TABLE")
        count = 256
        if total and size:  # TimerEntries[256] (before 10) or [2][256] (10 on): as many as fit
            count = max(256, min(512, (total - L.need("timer_entries")) // size))
        for bucket in range(count):
            timers, warning = self._list(entries + bucket * size + L.need("timer_entry_list"), "timer",
                                         L.need("timer_list_entry"))
            if warning:
                q.warnings.append(warning)
            q.longest = max(q.longest, len(timers))
            for t in timers:
                dpc = self.r.maybe_ptr(t, L.need("timer_dpc"))
                own = L.get("thread_timer")
                q.timers.append(Timer(t, bucket % 256, self.r.maybe_uint(t, L.need("timer_due"), 8),
                                      self.r.maybe_uint(t, L.need("timer_period"), 4), dpc or None,
                                      self.r.maybe_ptr(dpc, L.need("dpc_routine")) if dpc else None,
                                      t - own if not dpc and own is not None else None))
        return q


def running_dpc_routine(memory: Memory, offsets: SizedOffsets, is64: bool, prcb: int) -> int | None:
    """KPRCB.CurrentDpcRoutine: the DPC routine the processor is running (set by KiExecuteAllDpcs
    around the call, read by the DPC watchdog), None when the types lack it, it is 0 or not in the
    dump. The stack may not show the routine itself: a tail call leaves only its callee."""
    at = offsets.offset("_KPRCB", "CurrentDpcRoutine")
    if at is None:
        return None
    try:
        return Reader(memory, is64).ptr(prcb + at) or None
    except MemoryNotPresent:
        return None


# The classic executive worker queues (nt!ExWorkerQueue, an array of EX_WORK_QUEUE indexed by
# WORK_QUEUE_TYPE, before Windows 10): each one's KQUEUE holds the queued WORK_QUEUE_ITEMs
# (EntryListHead, linked through WORK_QUEUE_ITEM.List) and its worker threads (ThreadListHead,
# linked through KTHREAD.QueueListEntry).
WORK_QUEUE_NAMES = ("Critical", "Delayed", "HyperCritical")
WORK_SPEC: dict[str, tuple[tuple[str, str], ...]] = {
    "worker_queue": (("_EX_WORK_QUEUE", "WorkerQueue"),),
    "entries": (("_KQUEUE", "EntryListHead"),),
    "current": (("_KQUEUE", "CurrentCount"),),
    "maximum": (("_KQUEUE", "MaximumCount"),),
    "threads": (("_KQUEUE", "ThreadListHead"),),
    "queue_link": (("_KTHREAD", "QueueListEntry"),),
    "item_list": (("_WORK_QUEUE_ITEM", "List"),),
    "item_routine": (("_WORK_QUEUE_ITEM", "WorkerRoutine"),),
    "item_parameter": (("_WORK_QUEUE_ITEM", "Parameter"),),
}


@dataclass
class WorkQueue:
    name: str
    address: int
    current: int | None
    maximum: int | None
    threads: list[int] = field(default_factory=list)
    items: list[tuple[int, int | None, int | None]] = field(default_factory=list)  # (item, routine, parameter)
    warnings: list[str] = field(default_factory=list)


class WorkQueues:
    def __init__(self, memory: Memory, offsets: SizedOffsets, is64: bool) -> None:
        self.offsets = offsets
        self.layout = StructLayout(offsets, WORK_SPEC)
        self.r = Reader(memory, is64)

    def missing(self) -> str | None:
        line = _missing_line(self.layout, tuple(WORK_SPEC))
        if line is None and not self.offsets.size("_EX_WORK_QUEUE"):
            return "The size of _EX_WORK_QUEUE is not known (no kernel PDB): load the kernel's symbols"
        return line

    def queues(self, array: int) -> list[WorkQueue]:
        L, size = self.layout, self.offsets.size("_EX_WORK_QUEUE") or 0
        out = []
        for index, name in enumerate(WORK_QUEUE_NAMES):
            kq = array + index * size + L.need("worker_queue")
            q = WorkQueue(name, array + index * size, self.r.maybe_uint(kq, L.need("current"), 4),
                          self.r.maybe_uint(kq, L.need("maximum"), 4))
            threads = walk_list(self.r, kq + L.need("threads"), f"{name} worker thread")
            q.threads = [e - L.need("queue_link") for e in threads.entries]
            items = walk_list(self.r, kq + L.need("entries"), f"{name} work item")
            bases = [e - L.need("item_list") for e in items.entries]
            q.items = [(b, self.r.maybe_ptr(b, L.need("item_routine")), self.r.maybe_ptr(b, L.need("item_parameter")))
                       for b in bases]
            q.warnings = [w for w in (threads.warning, items.warning) if w]
            out.append(q)
        return out


# Windows 10 keeps the worker queues per NUMA node (KPRCB.ParentNode is the node). 1507/1511 (x64)
# point at them from the node: _ENODE.ExWorkQueues[8] (by EXQUEUEINDEX). 1607 on keep them in the
# executive's share of the partition: nt!PspSystemPartition (the system _EPARTITION) -> ExPartition
# (_EX_PARTITION) -> WorkQueues[node number] -> that node's 8 EX_WORK_QUEUE pointers (by EXQUEUEINDEX);
# their PDBs declare no _ENODE.ExWorkQueues. Each queue's KPRIQUEUE (WorkPriQueue) holds the queued
# WORK_QUEUE_ITEMs in EntryListHead[priority] and its worker threads in ThreadListHead; the old queue
# types survive as priorities (WORK_QUEUE_TYPE's documentation).
NODE_QUEUE_SLOTS = 8
PRIORITIES = 32
PRIORITY_NAMES = {18: "RealTime", 15: "HyperCritical", 14: "SuperCritical", 13: "Critical", 12: "Delayed",
                  8: "Normal", 7: "Background"}
NODE_SPEC: dict[str, tuple[tuple[str, str], ...]] = {
    "parent_node": (("_KPRCB", "ParentNode"),),
    "node_queues": (("_ENODE", "ExWorkQueues"),),
    "partition_ex": (("_EPARTITION", "ExPartition"),),
    "partition_queues": (("_EX_PARTITION", "WorkQueues"),),
    "pri_queue": (("_EX_WORK_QUEUE", "WorkPriQueue"),),
    "pri_entries": (("_KPRIQUEUE", "EntryListHead"),),
    "pri_current": (("_KPRIQUEUE", "CurrentCount"),),
    "pri_maximum": (("_KPRIQUEUE", "MaximumCount"),),
    "pri_threads": (("_KPRIQUEUE", "ThreadListHead"),),
    "queue_link": (("_KTHREAD", "QueueListEntry"),),
    "item_list": (("_WORK_QUEUE_ITEM", "List"),),
    "item_routine": (("_WORK_QUEUE_ITEM", "WorkerRoutine"),),
    "item_parameter": (("_WORK_QUEUE_ITEM", "Parameter"),),
    "node_number": (("_ENODE", "Ncb.NodeNumber"), ("_KNODE", "NodeNumber")),
    # reported when the types have them
    "thread_count": (("_EX_WORK_QUEUE", "ThreadCount"),),
    "max_threads": (("_EX_WORK_QUEUE", "MaxThreads"),),
}
NODE_COMMON = ("parent_node", "pri_queue", "pri_entries", "pri_current", "pri_maximum", "pri_threads",
               "queue_link", "item_list", "item_routine", "item_parameter")
NODE_NEEDS = NODE_COMMON + ("node_queues",)
PARTITION_NEEDS = NODE_COMMON + ("partition_ex", "partition_queues", "node_number")


@dataclass
class WorkItem:
    address: int
    priority: int
    routine: int | None
    parameter: int | None


@dataclass
class NodeWorkQueue:
    index: int  # the EXQUEUEINDEX: in _ENODE.ExWorkQueues, or in the partition's array for the node
    address: int
    maximum: int | None  # KPRIQUEUE.MaximumCount: the concurrency
    current: list[int | None]  # KPRIQUEUE.CurrentCount[priority]
    thread_count: int | None
    max_threads: int | None
    threads: list[int] = field(default_factory=list)
    items: list[WorkItem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class Node:
    number: int
    address: int
    processors: list[int]
    queues: list[NodeWorkQueue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class NodeWorkQueues:
    """The per-node queues: through the partition where the types have _EX_PARTITION.WorkQueues
    (1607 on), else through _ENODE.ExWorkQueues (1507/1511)."""

    def __init__(self, memory: Memory, offsets: SizedOffsets, is64: bool) -> None:
        self.layout = StructLayout(offsets, NODE_SPEC)
        self.r = Reader(memory, is64)
        self.ptr_size = 8 if is64 else 4
        self.partitioned = self.layout.get("partition_queues") is not None

    def missing(self) -> str | None:
        if self.partitioned:
            return _missing_line(self.layout, PARTITION_NEEDS)
        if self.layout.get("node_queues") is not None:
            return _missing_line(self.layout, NODE_NEEDS)
        return _missing_line(self.layout, NODE_NEEDS + ("partition_ex", "partition_queues"))

    def nodes(self, prcbs: list[tuple[int, int]], system_partition: int | None = None) -> list[Node]:
        """The nodes the processors' KPRCB.ParentNode point at, each once, from (number, KPRCB) pairs.
        system_partition is nt!PspSystemPartition's address (a pointer to the _EPARTITION), which the
        partition layout needs."""
        L = self.layout
        table: int | None = None
        table_warning: str | None = None
        if self.partitioned:
            table, table_warning = self._partition_table(system_partition)
        out: list[Node] = []
        for number, prcb in prcbs:
            try:
                address = self.r.ptr(prcb + L.need("parent_node"))
            except MemoryNotPresent:
                continue
            if not address:
                continue
            known = next((n for n in out if n.address == address), None)
            if known is not None:
                known.processors.append(number)
                continue
            node_number = self.r.maybe_uint(address, L.get("node_number"), 2)
            node = Node(len(out) if node_number is None else node_number, address, [number])
            if not self.partitioned:
                self._queues(node, address + L.need("node_queues"), "_ENODE.ExWorkQueues")
            elif table is None:
                node.warnings.append(table_warning or "the partition's work queue table is not in the dump")
            elif node_number is None:
                node.warnings.append(f"the node number of the node at {address:#x} is not in the dump")
            else:
                slot = table + node_number * self.ptr_size
                try:
                    array = self.r.ptr(slot)
                except MemoryNotPresent:
                    array = 0
                if array:
                    self._queues(node, array, f"_EX_PARTITION.WorkQueues[{node_number}]")
                else:
                    node.warnings.append(f"_EX_PARTITION.WorkQueues[{node_number}] at {slot:#x} is empty or "
                                         f"not in the dump")
            out.append(node)
        return out

    def _partition_table(self, system_partition: int | None) -> tuple[int | None, str | None]:
        """_EX_PARTITION.WorkQueues of the system partition (nt!PspSystemPartition -> _EPARTITION
        .ExPartition -> _EX_PARTITION), or None and why."""
        L = self.layout
        if not system_partition:
            return None, "no nt!PspSystemPartition: the system partition's work queues cannot be found"
        try:
            partition = self.r.ptr(system_partition)
            ex = self.r.ptr(partition + L.need("partition_ex")) if partition else 0
            table = self.r.ptr(ex + L.need("partition_queues")) if ex else 0
        except MemoryNotPresent as e:
            return None, f"the system partition's work queues are not in the dump ({e})"
        if not table:
            return None, "the system partition has no work queues (nt!PspSystemPartition or its ExPartition is 0)"
        return table, None

    def _queues(self, node: Node, array: int, what: str) -> None:
        seen: set[int] = set()
        for index in range(NODE_QUEUE_SLOTS):
            slot = array + index * self.ptr_size
            try:
                address = self.r.ptr(slot)
            except MemoryNotPresent:
                node.warnings.append(f"{what}[{index}] at {slot:#x} is not in the dump")
                continue
            if not address or address in seen:
                continue
            seen.add(address)
            node.queues.append(self._queue(index, address))

    def _queue(self, index: int, address: int) -> NodeWorkQueue:
        L = self.layout
        pq = address + L.need("pri_queue")
        current = [self.r.maybe_uint(pq + L.need("pri_current") + 4 * p, 0, 4) for p in range(PRIORITIES)]
        q = NodeWorkQueue(index, address, self.r.maybe_uint(pq, L.need("pri_maximum"), 4), current,
                          self.r.maybe_uint(address, L.get("thread_count"), 4),
                          self.r.maybe_uint(address, L.get("max_threads"), 4))
        threads = walk_list(self.r, pq + L.need("pri_threads"), "work queue thread")
        q.threads = [e - L.need("queue_link") for e in threads.entries]
        if threads.warning:
            q.warnings.append(threads.warning)
        for priority in range(PRIORITIES):
            items = walk_list(self.r, pq + L.need("pri_entries") + priority * 2 * self.ptr_size,
                              f"priority {priority} work item")
            for e in items.entries:
                b = e - L.need("item_list")
                q.items.append(WorkItem(b, priority, self.r.maybe_ptr(b, L.need("item_routine")),
                                        self.r.maybe_ptr(b, L.need("item_parameter"))))
            if items.warning:
                q.warnings.append(items.warning)
        return q
