"""The processors' queues: !ready, !dpcs, !timer, !exqueue.

Thin: kdshell.kernel.queues walks the KPRCB's lists. Layouts from public transcripts:
- !ready: per processor `Processor N: Ready Threads at priority P` and under it
  `    THREAD addr  Cid pid.tid  Teb: addr Win32Thread: addr READY on processor N`, or
  `Processor N: No threads in READY state`; the shared ready queue first where the types have it.
- !dpcs [Processor]: `CPU Type      KDPC       Function`, then ` N: Normal  : 0xKDPC 0xroutine nt!Routine`
  (`Threaded` for KPRCB.DpcData[1]).
- !timer: `Dump system timers`, `Interrupt time: low high`, the column line, a
  `PROCESSOR N (nt!_KTIMER_TABLE addr)` line per processor, then one row per KTIMER: its bucket (blank
  for the next ones in the same bucket), address, `P` when periodic, DueTime low/high and its DPC's
  routine (or `thread addr` for a thread's own timer); `Total Timers: N, Maximum List: M`. WinDbg's Fire Time column (the due time as a date) is
  left out: kdshell prints the 100 ns interrupt time only.
- !exqueue: before Windows 10 `Dumping ExWorkerQueue: addr`, then per queue `**** Critical WorkQueue( current =
  N maximum = M )`, its worker threads as THREAD lines and its pending items (WorkerRoutine, Parameter).
  Windows 10 (queues per node): per node and priority class kdexts' `**** NUMA Node N Critical WorkQueue`
  heading, here with `( Threads: ThreadCount/MaxThreads, Concurrency: CurrentCount[p]/MaximumCount )`, the
  PENDING items of that priority under it, then the queue's worker threads; a priority outside the seven
  WORK_QUEUE_TYPE classes (CustomPriorityWorkQueue + p) shows as `Priority p` when it holds items.
A small memory dump keeps only the crashing processor's KPRCB copy, and the lists point outside it.
ARM64 takes the KPRCB's queue offsets from the kernel's PDB (no public table has them): without it, one line.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.dispatch import Invocation, command, needs_memory
from kdshell.errors import CommandError, KdError
from kdshell.expr import Evaluator
from kdshell.kernel.prcb import Processor
from kdshell.kernel.queues import PRIORITY_NAMES, NodeWorkQueue, NodeWorkQueues, Queues, WorkQueues

if TYPE_CHECKING:
    from kdshell.session import Session

SMALL = ("{name}: a small memory dump keeps only the crashing processor's KPRCB copy and the {what} it "
         "points to are outside it; a kernel or complete memory dump has them")


def _engine(session: Session, name: str, what: str, lists: str) -> tuple[Queues, list[Processor]]:
    k = session.kernel
    if k.small:
        raise KdError(SMALL.format(name=name, what=lists))
    q = Queues(k.memory, k.offsets, k.is64)
    line = q.missing(what)
    if line is not None:
        raise KdError(f"{name}: {line}")
    return q, k.processors()


def _p(session: Session, value: int | None) -> str:
    w = 16 if session.kernel.is64 else 8
    return "?" * w if value is None else f"{value:0{w}x}"


def _sym(session: Session, value: int | None) -> str:
    if not value:
        return ""
    return session.symbols.name_at(value) or ""


def _interrupt_time(session: Session) -> str:
    """InterruptTime, low and high halves, as the timers' due times are kept."""
    value = session.kernel.interrupt_time()
    return "???????? ????????" if value is None else f"{value & 0xFFFFFFFF:08x} {value >> 32:08x}"


def _no_args(name: str, inv: Invocation) -> None:
    if inv.args:
        raise CommandError(f"{name}: unexpected argument '{inv.args[0]}' ({name} takes none)")


def _one_number(session: Session, inv: Invocation, what: str) -> int | None:
    """The command's one optional numeric argument (`what` names it in the usage), or None."""
    usage = f"({inv.name} [{what}])"
    if len(inv.args) > 1:
        raise CommandError(f"{inv.name}: too many arguments {usage}")
    if not inv.args:
        return None
    try:
        return Evaluator(session).evaluate(inv.args[0])
    except KdError:
        raise CommandError(f"{inv.name}: '{inv.args[0]}' is not a number {usage}") from None


@command("!ready", family="kernel", needs=(needs_memory,), syntax="!ready [Flags]",
         summary="Show the threads ready to run on each processor, by priority",
         example="!ready",
         details="From each KPRCB's DispatcherReadyListHead[32] (and the shared ready queue where the kernel has "
                 "one). Flags is accepted for WinDbg's syntax (a number); kdshell prints the summary lines.")
def ready_(session: Session, inv: Invocation) -> None:
    _one_number(session, inv, "Flags")
    q, processors = _engine(session, "!ready", "ready", "ready lists")
    out: list[str] = []
    seen: set[int] = set()
    for p in processors:
        shared = q.shared_ready(p.prcb)
        if shared is not None and shared.address not in seen:
            seen.add(shared.address)
            out += _ready_lines(session, f"SharedReadyQueue {_p(session, shared.address)}", shared.threads, None)
            out += shared.warnings
        ready = q.ready(p.prcb)
        out += _ready_lines(session, f"Processor {p.number}", ready.threads, p.number)
        out += ready.warnings
    session.out.lines(out)


def _ready_lines(session: Session, title: str, threads: list[tuple[int, int]], number: int | None) -> list[str]:
    if not threads:
        return [f"{title}: No threads in READY state"]
    out: list[str] = []
    last = -1
    for priority, address in sorted(threads, key=lambda pt: -pt[0]):
        if priority != last:
            out.append(f"{title}: Ready Threads at priority {priority}")
            last = priority
        where = f"READY on processor {number}" if number is not None else "READY"
        out.append("    " + _thread_line(session, address, where))
    return out


def _thread_line(session: Session, address: int, state: str) -> str:
    try:
        t = session.kernel.thread(address)
        cid = f"{t.pid or 0:04x}.{t.tid or 0:04x}"
        teb, win32 = _p(session, t.teb or 0), _p(session, t.win32_thread or 0)
    except KdError:
        cid, teb, win32 = "????.????", _p(session, None), _p(session, None)
    return f"THREAD {_p(session, address)}  Cid {cid}  Teb: {teb} Win32Thread: {win32} {state}"


@command("!dpcs", family="kernel", needs=(needs_memory,), syntax="!dpcs [Processor]",
         summary="Show the DPCs queued on each processor (or one) and their routines",
         example="!dpcs",
         details="From each KPRCB's DpcData[0] (normal) and DpcData[1] (threaded) lists.")
def dpcs_(session: Session, inv: Invocation) -> None:
    only = _one_number(session, inv, "Processor")
    if only is not None:
        try:
            session.kernel.check_processor(only)
        except KdError as e:
            raise CommandError(f"!dpcs: {e}") from None
    q, processors = _engine(session, "!dpcs", "dpcs", "DPC lists")
    out = ["CPU Type      KDPC       Function"]
    rows = 0
    for p in processors:
        if only is not None and p.number != only:
            continue
        queue = q.dpcs(p.prcb)
        for d in queue.dpcs:
            kind = "Threaded:" if d.threaded else "Normal  :"
            out.append(f"{p.number:2d}: {kind} 0x{_p(session, d.address)} 0x{_p(session, d.routine)} "
                       f"{_sym(session, d.routine)}".rstrip())
            rows += 1
        out += queue.warnings
    if not rows:
        out = ["No queued DPCs found."]
    session.out.lines(out)


@command("!timer", family="kernel", needs=(needs_memory,), syntax="!timer",
         summary="Show the timers of each processor's timer table: due time, period and DPC routine",
         example="!timer",
         details="From each KPRCB's TimerTable.TimerEntries list heads. The due time is the 100 ns interrupt "
                 "time, low and high halves; P marks a periodic timer.")
def timer_(session: Session, inv: Invocation) -> None:
    _no_args("!timer", inv)
    q, processors = _engine(session, "!timer", "timers", "timer lists")
    out = ["Dump system timers", "", f"Interrupt time: {_interrupt_time(session)}", "",
           "List Timer    Interrupt Low/High     DPC/thread"]
    total = longest = 0
    for p in processors:
        queue = q.timers(p.prcb)
        out.append(f"PROCESSOR {p.number} (nt!_KTIMER_TABLE {_p(session, queue.table)})")
        last = -1
        for t in queue.timers:
            due = "???????? ????????" if t.due is None else f"{t.due & 0xFFFFFFFF:08x} {t.due >> 32:08x}"
            what = ""
            if t.dpc:
                what = f"{_sym(session, t.routine) or '+' + _p(session, t.routine)} (DPC @ {_p(session, t.dpc)})"
            elif t.thread is not None:
                what = f"thread {_p(session, t.thread)}"
            bucket = "   " if t.bucket == last else f"{t.bucket:3d}"
            last = t.bucket
            out.append(f"{bucket} {_p(session, t.address)} {'P' if t.period else ' '} {due}  {what}".rstrip())
        out += queue.warnings
        total += len(queue.timers)
        longest = max(longest, queue.longest)
    out += ["", f"Total Timers: {total}, Maximum List: {longest}"]
    session.out.lines(out)


@command("!exqueue", family="kernel", needs=(needs_memory,),
         syntax="!exqueue [Flags]",
         summary="Show the executive worker queues and their threads",
         example="!exqueue",
         details="The classic queues at nt!ExWorkerQueue (Critical, Delayed, HyperCritical: their worker threads "
                 "and pending work items); on Windows 10 those of each NUMA node (KPRCB.ParentNode), found "
                 "through the system partition (nt!PspSystemPartition -> _EX_PARTITION.WorkQueues, 1607 on) "
                 "or _ENODE.ExWorkQueues (1507/1511), by priority class, from the kernel's PDB types. Flags is accepted for "
                 "WinDbg's syntax.")
def exqueue_(session: Session, inv: Invocation) -> None:
    _one_number(session, inv, "Flags")
    k = session.kernel
    if k.small:
        raise KdError(SMALL.format(name="!exqueue", what="worker queues"))
    array = k.symbol("ExWorkerQueue")
    if not array:
        session.out.lines(_node_queues(session))
        return
    engine = WorkQueues(k.memory, k.offsets, k.is64)
    line = engine.missing()
    if line is not None:
        raise KdError(f"!exqueue: {line}")
    out = [f"Dumping ExWorkerQueue: {_p(session, array)}", ""]
    for q in engine.queues(array):
        current = "?" if q.current is None else q.current
        maximum = "?" if q.maximum is None else q.maximum
        out.append(f"**** {q.name} WorkQueue( current = {current} maximum = {maximum} )")
        for t in q.threads:
            out.append(_thread_line(session, t, "WAIT"))
        for item, routine, parameter in q.items:
            out.append(_pending(session, item, routine, parameter))
        out += q.warnings
        out.append("")
    session.out.lines(out[:-1])


def _pending(session: Session, item: int, routine: int | None, parameter: int | None) -> str:
    return (f"PENDING: WorkerRoutine {_sym(session, routine) or _p(session, routine)} "
            f"({_p(session, routine)}) Parameter {_p(session, parameter)} (item {_p(session, item)})")


def _node_queues(session: Session) -> list[str]:
    """Windows 10's queues: each node's (KPRCB.ParentNode) EX_WORK_QUEUEs by priority class."""
    k = session.kernel
    engine = NodeWorkQueues(k.memory, k.offsets, k.is64)
    line = engine.missing()
    if line is not None:
        raise KdError(f"!exqueue: no nt!ExWorkerQueue (Windows 10 keeps the worker queues per node) and "
                      f"{line[0].lower()}{line[1:]}")
    nodes = engine.nodes([(p.number, p.prcb) for p in k.processors()],
                         k.symbol("PspSystemPartition") if engine.partitioned else None)
    if not nodes:
        raise KdError("!exqueue: no processor's KPRCB.ParentNode points to a node: the worker queues are "
                      "not set up in this dump")
    out: list[str] = []
    for node in nodes:
        out += node.warnings
        for q in node.queues:
            out += _priority_lines(session, node.number, q)
    return out[:-1] if out and not out[-1] else out


def _priority_lines(session: Session, node: int, q: NodeWorkQueue) -> list[str]:
    def count(value: int | None) -> str:
        return "?" if value is None else str(value)

    out: list[str] = []
    busy = {i.priority for i in q.items}
    for priority in sorted(set(PRIORITY_NAMES) | busy, reverse=True):
        name = PRIORITY_NAMES.get(priority, f"Priority {priority}")
        out.append(f"**** NUMA Node {node} {name} WorkQueue ( Threads: {count(q.thread_count)}/"
                   f"{count(q.max_threads)}, Concurrency: {count(q.current[priority])}/{count(q.maximum)} )")
        out += [_pending(session, i.address, i.routine, i.parameter) for i in q.items if i.priority == priority]
    out += [_thread_line(session, t, "WAIT") for t in q.threads]
    out += q.warnings
    out.append("")
    return out
