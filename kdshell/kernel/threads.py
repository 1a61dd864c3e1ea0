"""Threads: ETHREAD/KTHREAD fields and a process's thread list (what !thread prints).

    layout = thread_layout(offsets)
    t = read_thread(memory, address, layout, is64)        # a Thread
    walk = walk_threads(memory, process, layout, is64)    # .threads, .warnings (EPROCESS.ThreadListHead)
    wait_objects(memory, t, layout, is64)                 # [(object, "SynchronizationEvent")]

Fields whose offsets no source knows (kdshell.kernel.offsets: PDB, KDBG, built-in table) or whose
bytes the dump lacks are None; the commands leave their lines out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kdshell.errors import MemoryNotPresent
from kdshell.kernel.layout import FieldOffsets, Memory, Reader, StructLayout, walk_list

THREAD_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "cid": (("_ETHREAD", "Cid"),),
    "list_entry": (("_ETHREAD", "ThreadListEntry"),),
    "start_address": (("_ETHREAD", "StartAddress"),),
    "win32_start_address": (("_ETHREAD", "Win32StartAddress"),),
    "cross_flags_impersonating": (("_ETHREAD", "ActiveImpersonationInfo"),),
    "state": (("_ETHREAD", "Tcb.State"), ("_KTHREAD", "State")),
    "wait_reason": (("_ETHREAD", "Tcb.WaitReason"), ("_KTHREAD", "WaitReason")),
    "wait_mode": (("_ETHREAD", "Tcb.WaitMode"), ("_KTHREAD", "WaitMode")),
    "wait_irql": (("_ETHREAD", "Tcb.WaitIrql"), ("_KTHREAD", "WaitIrql")),
    "alertable": (("_ETHREAD", "Tcb.Alertable"), ("_KTHREAD", "Alertable")),
    "teb": (("_ETHREAD", "Tcb.Teb"), ("_KTHREAD", "Teb")),
    "win32_thread": (("_ETHREAD", "Tcb.Win32Thread"), ("_KTHREAD", "Win32Thread")),
    "initial_stack": (("_ETHREAD", "Tcb.InitialStack"), ("_KTHREAD", "InitialStack")),
    "stack_limit": (("_ETHREAD", "Tcb.StackLimit"), ("_KTHREAD", "StackLimit")),
    "stack_base": (("_ETHREAD", "Tcb.StackBase"), ("_KTHREAD", "StackBase")),
    "kernel_stack": (("_ETHREAD", "Tcb.KernelStack"), ("_KTHREAD", "KernelStack")),
    "callback_stack": (("_ETHREAD", "Tcb.CallbackStack"), ("_KTHREAD", "CallbackStack")),
    "apc_process": (("_ETHREAD", "Tcb.ApcState.Process"), ("_KTHREAD", "ApcState.Process")),
    "process": (("_ETHREAD", "Tcb.Process"), ("_KTHREAD", "Process")),
    "priority": (("_ETHREAD", "Tcb.Priority"), ("_KTHREAD", "Priority")),
    "base_priority": (("_ETHREAD", "Tcb.BasePriority"), ("_KTHREAD", "BasePriority")),
    "priority_decrement": (("_ETHREAD", "Tcb.PriorityDecrement"), ("_KTHREAD", "PriorityDecrement")),
    "context_switches": (("_ETHREAD", "Tcb.ContextSwitches"), ("_KTHREAD", "ContextSwitches")),
    "wait_time": (("_ETHREAD", "Tcb.WaitTime"), ("_KTHREAD", "WaitTime")),
    "kernel_time": (("_ETHREAD", "Tcb.KernelTime"), ("_KTHREAD", "KernelTime")),
    "user_time": (("_ETHREAD", "Tcb.UserTime"), ("_KTHREAD", "UserTime")),
    "ideal_processor": (("_ETHREAD", "Tcb.IdealProcessor"), ("_KTHREAD", "IdealProcessor")),
    "next_processor": (("_ETHREAD", "Tcb.NextProcessor"), ("_KTHREAD", "NextProcessor")),
    "wait_block_list": (("_ETHREAD", "Tcb.WaitBlockList"), ("_KTHREAD", "WaitBlockList")),
    "wait_block_count": (("_ETHREAD", "Tcb.WaitBlockCount"), ("_KTHREAD", "WaitBlockCount")),
    "trap_frame": (("_ETHREAD", "Tcb.TrapFrame"), ("_KTHREAD", "TrapFrame")),
    "wait_block_object": (("_KWAIT_BLOCK", "Object"),),
    "header_type": (("_ETHREAD", "Tcb.Header.Type"), ("_KTHREAD", "Header.Type"), ("_DISPATCHER_HEADER", "Type")),
    "header_signal": (("_DISPATCHER_HEADER", "SignalState"),),
    "semaphore_limit": (("_KSEMAPHORE", "Limit"),),
}

THREAD_OBJECT = 6  # DISPATCHER_HEADER.Type of a thread (KOBJECTS ThreadObject)

# KTHREAD_STATE
STATES = {0: "Initialized", 1: "Ready", 2: "Running", 3: "Standby", 4: "Terminated", 5: "Waiting",
          6: "Transition", 7: "DeferredReady", 8: "GateWaitObsolete", 9: "WaitingForProcessInSwap"}

# KWAIT_REASON
WAIT_REASONS = [
    "Executive", "FreePage", "PageIn", "PoolAllocation", "DelayExecution", "Suspended", "UserRequest",
    "WrExecutive", "WrFreePage", "WrPageIn", "WrPoolAllocation", "WrDelayExecution", "WrSuspended",
    "WrUserRequest", "WrSpare0", "WrQueue", "WrLpcReceive", "WrLpcReply", "WrVirtualMemory", "WrPageOut",
    "WrRendezvous", "WrKeyedEvent", "WrTerminated", "WrProcessInSwap", "WrCpuRateControl", "WrCalloutStack",
    "WrKernel", "WrResource", "WrPushLock", "WrMutex", "WrQuantumEnd", "WrDispatchInt", "WrPreempted",
    "WrYieldExecution", "WrFastMutex", "WrGuardedMutex", "WrRundown", "WrAlertByThreadId",
    "WrDeferredPreempt", "WrPhysicalFault", "WrIoRing", "WrMdlCache", "WrRcu",
]

# What !thread calls a wait object, by its DISPATCHER_HEADER.Type (KOBJECTS)
OBJECT_KINDS = {0: "NotificationEvent", 1: "SynchronizationEvent", 2: "Mutant", 3: "ProcessObject",
                4: "QueueObject", 5: "Semaphore", 6: "ThreadObject", 7: "GateObject",
                8: "NotificationTimer", 9: "SynchronizationTimer"}

MAX_WAIT_BLOCKS = 64  # THREAD_WAIT_OBJECTS is 3, MAXIMUM_WAIT_OBJECTS 64


def thread_layout(offsets: FieldOffsets, build: int | None = None) -> StructLayout:
    return StructLayout(offsets, THREAD_FIELDS, build)


def wait_reason_name(value: int | None) -> str:
    if value is None:
        return "?"
    return WAIT_REASONS[value] if value < len(WAIT_REASONS) else f"Unknown({value})"


@dataclass
class Thread:
    address: int
    pid: int | None = None
    tid: int | None = None
    state: int | None = None
    wait_reason: int | None = None
    wait_mode: int | None = None
    wait_irql: int | None = None
    alertable: int | None = None
    teb: int | None = None
    win32_thread: int | None = None
    initial_stack: int | None = None
    stack_limit: int | None = None
    stack_base: int | None = None
    kernel_stack: int | None = None
    callback_stack: int | None = None
    apc_process: int | None = None  # KTHREAD.ApcState.Process: the process the thread runs in
    process: int | None = None      # KTHREAD.Process: the process it belongs to
    priority: int | None = None
    base_priority: int | None = None
    priority_decrement: int | None = None
    context_switches: int | None = None
    wait_time: int | None = None
    kernel_time: int | None = None
    user_time: int | None = None
    ideal_processor: int | None = None
    next_processor: int | None = None
    start_address: int | None = None
    win32_start_address: int | None = None
    wait_block_list: int | None = None
    wait_block_count: int | None = None
    trap_frame: int | None = None
    readable: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def owning_process(self) -> int | None:
        return self.process if self.process else self.apc_process

    @property
    def attached_process(self) -> int | None:
        """The process the thread is attached to (KeStackAttachProcess), None when it runs in its own."""
        if self.apc_process and self.process and self.apc_process != self.process:
            return self.apc_process
        return None

    @property
    def state_name(self) -> str | None:
        return STATES.get(self.state) if self.state is not None else None


def _signed8(value: int | None) -> int | None:
    return value - 0x100 if value is not None and value >= 0x80 else value


def read_thread(memory: Memory, address: int, layout: StructLayout, is64: bool) -> Thread:
    r = Reader(memory, is64)
    f = layout.get
    t = Thread(address)
    cid = f("cid")
    t.pid = r.maybe_ptr(address, cid)
    t.tid = r.maybe_ptr(address, cid + r.psize) if cid is not None else None
    t.state = r.maybe_uint(address, f("state"), 1)
    t.readable = any(v is not None for v in (t.pid, t.state, r.maybe_ptr(address, 0)))
    t.wait_reason = r.maybe_uint(address, f("wait_reason"), 1)
    t.wait_mode = r.maybe_uint(address, f("wait_mode"), 1)
    t.wait_irql = r.maybe_uint(address, f("wait_irql"), 1)
    t.alertable = r.maybe_bits(address, layout.bitfield("alertable"))
    for name in ("teb", "win32_thread", "initial_stack", "stack_limit", "stack_base", "kernel_stack",
                 "callback_stack", "apc_process", "process", "start_address", "win32_start_address",
                 "wait_block_list", "trap_frame"):
        setattr(t, name, r.maybe_ptr(address, f(name)))
    t.priority = _signed8(r.maybe_uint(address, f("priority"), 1))
    t.base_priority = _signed8(r.maybe_uint(address, f("base_priority"), 1))
    t.priority_decrement = _signed8(r.maybe_uint(address, f("priority_decrement"), 1))
    t.wait_block_count = r.maybe_uint(address, f("wait_block_count"), 1)
    for name in ("context_switches", "wait_time", "kernel_time", "user_time", "ideal_processor",
                 "next_processor"):
        setattr(t, name, r.maybe_uint(address, f(name), 4))
    return t


@dataclass
class ThreadWalk:
    threads: list[Thread]
    warnings: list[str]


def walk_threads(memory: Memory, list_head: int, layout: StructLayout, is64: bool, what: str = "thread") -> ThreadWalk:
    """The threads on a process's EPROCESS.ThreadListHead (at `list_head`), linked through
    ETHREAD.ThreadListEntry; bounded and loop-safe like every list walk."""
    entry_offset = layout.need("list_entry")
    walk = walk_list(Reader(memory, is64), list_head, what)
    threads = [read_thread(memory, e - entry_offset, layout, is64) for e in walk.entries]
    return ThreadWalk(threads, [walk.warning] if walk.warning else [])


def wait_objects(memory: Memory, thread: Thread, layout: StructLayout, is64: bool, block_size: int | None = None
                 ) -> list[tuple[int, str]]:
    """The objects a waiting thread waits on: (object address, what !thread calls it), from its
    KTHREAD.WaitBlockList (WaitBlockCount blocks, the Windows 8+ layout)."""
    if thread.state != 5 or not thread.wait_block_list:
        return []
    r = Reader(memory, is64)
    obj_offset = layout.get("wait_block_object")
    if obj_offset is None:
        obj_offset = 0x20 if is64 else 0x10
    size = block_size or (0x30 if is64 else 0x18)
    count = thread.wait_block_count or 1
    out = []
    for i in range(min(count, MAX_WAIT_BLOCKS)):
        obj = r.maybe_ptr(thread.wait_block_list + i * size, obj_offset)
        if not obj:
            continue
        kind = r.maybe_uint(obj, layout.get("header_type") or 0, 1)
        name = OBJECT_KINDS.get(kind & 0x7F if kind is not None else -1, "Unknown")
        if kind is not None and kind & 0x7F == 5:
            limit = r.maybe_uint(obj, layout.get("semaphore_limit") or (0x18 if is64 else 0x10), 4)
            if limit is not None:
                name += f" Limit {limit:#x}"
        out.append((obj, name))
    return out


def looks_like_thread(memory: Memory, address: int, layout: StructLayout, is64: bool) -> bool:
    r = Reader(memory, is64)
    offset = layout.get("header_type")
    value = r.maybe_uint(address, offset if offset is not None else 0, 1)
    return value is not None and value & 0x7F == THREAD_OBJECT


def thread_on_stack(thread: Thread, sp: int) -> bool:
    """`sp` is inside the thread's kernel stack [StackLimit, InitialStack or StackBase)."""
    top = thread.stack_base or thread.initial_stack
    return bool(thread.stack_limit and top and thread.stack_limit <= sp < top)


def read_stack_bounds(memory: Memory, address: int, layout: StructLayout, is64: bool) -> tuple[int, int] | None:
    r = Reader(memory, is64)
    try:
        limit = r.ptr(address + layout.need("stack_limit"))
        base_offset = layout.get("stack_base")
        if base_offset is None:
            base_offset = layout.need("initial_stack")
        base = r.ptr(address + base_offset)
    except MemoryNotPresent:
        return None
    return limit, base
