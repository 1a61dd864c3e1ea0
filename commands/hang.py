"""Hang extensions: !locks, !stacks, and the waiting chains of !analyze -hang.

Thin: kdshell.kernel.locks reads the resources and who waits for them; thread states and stacks
come from the kernel layer and the stack walker, as !thread shows them. Layouts from public
transcripts:
- !locks: `**** DUMP OF ALL RESOURCE OBJECTS ****`, `KD: Scanning for held locks..`, then per held
  resource `Resource @ name (0xaddr)    Exclusively owned` (or `Shared N owning threads`),
  `    Contention Count = N`, `    NumberOfExclusiveWaiters = N`, `     Threads: thread-count<*> `,
  `     Threads Waiting On Exclusive Access:` and the waiters, 16 columns apart; the last line
  `N total locks, M locks currently held`. -v lists every resource, held or not, and the stack of
  each owner and waiter.
- !stacks [0|1|2] [filter]: `Proc.Thread  .Thread  Ticks   ThreadState Blocker`, a `[process name]`
  line per process, then `pid.tid  thread ticks state blocker`: the blocker is the first frame above
  the scheduler's own (KiSwapContext, KiSwapThread, KiCommitThreadWait, Ke/Ex wait routines). Level
  1 adds each thread's frames as call sites, 2 the full `kb` lines; the filter keeps the threads
  whose stack names it (a module or function, case-insensitive).
A small memory dump keeps one thread and no resource list: one line says so.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.dispatch import Invocation, command, needs_memory
from kdshell.errors import CommandError, KdError
from kdshell.kernel.locks import Chain, Locks, Resource
from kdshell.kernel.threads import Thread

if TYPE_CHECKING:
    from kdshell.session import Session

SMALL = "a small memory dump keeps only the crashing thread and no {what}; a kernel or complete memory dump has them"
# Frames of the scheduler and of the wait routines themselves: the blocker is the first frame past them.
WAIT_FRAMES = ("KiSwapContext", "KiSwapThread", "KiCommitThreadWait", "KeWaitForSingleObject",
               "KeWaitForMultipleObjects", "KeDelayExecutionThread", "KeRemoveQueueEx", "KiSchedulerApc",
               "ExpWaitForResource", "ExAcquireResourceExclusiveLite", "ExAcquireResourceSharedLite",
               "ExpAcquireResourceExclusiveLite", "ExfAcquirePushLockExclusive", "KeWaitForMutexObject",
               "KiDispatchInterrupt", "KiIdleLoop")
STATE = {0: "INITIALIZED", 1: "READY", 2: "RUNNING", 3: "STANDBY", 4: "TERMINATED", 5: "Blocked", 6: "TRANSITION",
         7: "DEFERREDREADY"}


def _small(session: Session, name: str, what: str) -> None:
    if session.kernel.small:
        raise KdError(f"{name}: {SMALL.format(what=what)}")


def _p(session: Session, value: int) -> str:
    return f"{value:016x}" if session.is64 else f"{value:08x}"


def all_threads(session: Session) -> list[tuple[str, int | None, Thread]]:
    """(process name, pid, thread) for every thread of every process, Idle's included."""
    k = session.kernel
    out: list[tuple[str, int | None, Thread]] = []
    seen: set[int] = set()
    for p in k.processes().processes:
        for t in k.threads(p).threads:
            if t.address not in seen:
                seen.add(t.address)
                out.append((p.name or "?", p.pid, t))
    for proc in k.processors():
        idle = getattr(proc, "idle_thread", None)
        if idle and idle not in seen:
            seen.add(idle)
            try:
                out.insert(0, ("Idle", 0, k.thread(idle)))
            except KdError:
                pass
    return out


def locks_engine(session: Session) -> Locks:
    k = session.kernel
    threads = [t for _, _, t in all_threads(session)]
    return Locks(k.memory, k.offsets, k.is64, k.symbol, k.kdbg_value, threads, k.thread_layout)


def resource_name(session: Session, address: int) -> str:
    name = session.symbols.name_at(address)
    return f"{name} (0x{_p(session, address)})" if name and "+" not in name else f"0x{_p(session, address)}"


# -- !locks --------------------------------------------------------------------------------------
@command("!locks", family="kernel", needs=(needs_memory,), syntax="!locks [-v]",
         summary="Show the executive resources (ERESOURCE) that are held: owners and waiting threads",
         example="!locks",
         details="From nt!ExpSystemResourcesList. -v: every resource, held or not, with the stacks of the "
                 "owning and waiting threads.")
def locks_(session: Session, inv: Invocation) -> None:
    verbose = False
    for word in inv.args:
        if word.lower() == "-v":
            verbose = True
        else:
            raise CommandError(f"!locks: unknown option '{word}' (!locks [-v])")
    _small(session, "!locks", "resource list (nt!ExpSystemResourcesList)")
    walk = locks_engine(session).resources()
    out = ["**** DUMP OF ALL RESOURCE OBJECTS ****"]
    held = 0
    for res in walk.resources:
        if res.held:
            held += 1
        if not res.held and not verbose:
            continue
        out += ["KD: Scanning for held locks..", ""] + resource_lines(session, res, verbose)
    if walk.warning:
        out.append(walk.warning)
    out.append(f"{len(walk.resources)} total locks, {held} locks currently held")
    session.out.lines(out)


def resource_lines(session: Session, res: Resource, verbose: bool = False) -> list[str]:
    if not res.held:
        state = "    Not owned"
    elif res.exclusive:
        state = "    Exclusively owned"
    else:
        state = f"    Shared {len(res.owners)} owning threads"
    out = [f"Resource @ {resource_name(session, res.address)}{state}"]
    if res.contention:
        out.append(f"    Contention Count = {res.contention}")
    if res.shared_waiters:
        out.append(f"    NumberOfSharedWaiters = {res.shared_waiters}")
    if res.exclusive_waiters:
        out.append(f"    NumberOfExclusiveWaiters = {res.exclusive_waiters}")
    if res.owners:
        star = "<*>" if res.exclusive else ""
        out.append("     Threads: " + " ".join(f"{_p(session, o.thread)}-{o.count:02x}{star}" for o in res.owners) + " ")
        if verbose:
            for o in res.owners:
                out += _stack_block(session, o.thread)
    for title, waiting in (("Shared", res.shared_waiting), ("Exclusive", res.exclusive_waiting)):
        if waiting:
            out.append(f"     Threads Waiting On {title} Access:")
            out += [f"              {_p(session, t)}       " for t in waiting]
            if verbose:
                for t in waiting:
                    out += _stack_block(session, t)
    return out


def _stack_block(session: Session, thread: int) -> list[str]:
    from kdshell.commands.kernel import stack_lines

    return ["", f"     THREAD {_p(session, thread)}"] + ["      " + line for line in stack_lines(session, thread, False)]


# -- !stacks -------------------------------------------------------------------------------------
def _frames(session: Session, thread: int) -> list[str]:
    """The call sites of a thread's stack, innermost first (empty when it cannot be walked)."""
    from kdshell.commands.kernel import stack_lines

    out = []
    for line in stack_lines(session, thread, False)[1:]:
        parts = line.split()
        if len(parts) >= 3:
            out.append(parts[-1])
    return out


def blocker(frames: list[str]) -> str:
    for f in frames:
        function = f.split("!", 1)[-1].split("+", 1)[0]
        if function not in WAIT_FRAMES:
            return f
    return frames[-1] if frames else "????????"


@command("!stacks", family="kernel", needs=(needs_memory,), syntax="!stacks [0|1|2] [Filter]",
         summary="Summarise every thread's kernel stack by process: state, ticks waited, where it blocks",
         example="!stacks 0 mydrv",
         details="Level 0: one line per thread; 1: and its call sites; 2: and its full kb lines. Filter: only "
                 "threads whose stack names it (module or function, any case).")
def stacks_(session: Session, inv: Invocation) -> None:
    level, pattern = 0, None
    words = list(inv.args)
    if words and words[0] in ("0", "1", "2"):
        level = int(words.pop(0))
    if words:
        pattern = words.pop(0).lower()
    if words:
        raise CommandError("!stacks: too many arguments (!stacks [0|1|2] [Filter])")
    _small(session, "!stacks", "other threads")
    session.out.lines(stacks_lines(session, level, pattern))


def stacks_lines(session: Session, level: int = 0, pattern: str | None = None) -> list[str]:
    from kdshell.commands.kernel import stack_lines

    k = session.kernel
    now = k.tick_count()
    out = ["Proc.Thread  .Thread  Ticks   ThreadState Blocker"]
    current = None
    shown = 0
    for name, pid, t in all_threads(session):
        frames = _frames(session, t.address)
        if pattern and not any(pattern in f.lower() for f in frames):
            continue
        if name != current:
            current = name
            out.append(f"                            [{_p(session, t.owning_process or 0)} {name}]")
        ticks = (now - t.wait_time) & 0xFFFFFFFF if now is not None and t.wait_time is not None else 0
        state = STATE.get(t.state if t.state is not None else -1, "UNKNOWN")
        out.append(f"{pid or 0:4x}.{t.tid or 0:06x}  {_p(session, t.address)} {ticks:08x} {state:<10} {blocker(frames)}")
        shown += 1
        if level == 1:
            out += [f"{'':51}{f}" for f in frames[1:]]
        elif level == 2:
            out += ["    " + line for line in stack_lines(session, t.address, True)]
    if not shown and not pattern:
        out.append("No thread found: the process list (nt!PsActiveProcessHead) is not readable in this dump")
    out += ["", f"Threads Processed: {shown}"]
    return out


# -- !analyze -hang ------------------------------------------------------------------------------
def hang_lines(session: Session) -> list[str]:
    """The waiting chains: who waits on which resource, owned by whom, and any deadlock."""
    _small(session, "!analyze -hang", "resource list or waiting threads")
    engine = locks_engine(session)
    try:
        resources = engine.resources().resources
    except KdError as e:
        return ["", f"HANG_ANALYSIS: {e}"]
    chains = engine.wait_chains(resources)
    out = ["", "HANG_ANALYSIS: executive resources (nt!ExpSystemResourcesList)", ""]
    if not chains:
        return out + ["No thread waits on an executive resource.", ""]
    deadlocks = [c for c in chains if c.cycle]
    for chain in deadlocks + [c for c in chains if not c.cycle]:
        out += chain_lines(session, chain) + [""]
    if deadlocks:
        first = deadlocks[0].links[0]
        out += [f"BLOCKING_THREAD:  {_p(session, first.thread)}", "",
                f"DEADLOCK: {len(deadlocks)} cycle{'s' if len(deadlocks) > 1 else ''} of threads waiting on each "
                "other's resources", ""]
    return out


def chain_lines(session: Session, chain: Chain) -> list[str]:
    title = f"DEADLOCK between {len(chain.links)} threads:" if chain.cycle else "WAIT_CHAIN:"
    out = [title]
    for link in chain.links:
        start = _start_name(session, link.thread)
        owner = f"owned by thread {_p(session, link.owner)}" if link.owner else "with no owner"
        out.append(f"    thread {_p(session, link.thread)}{start} waits for resource "
                   f"{resource_name(session, link.resource)} {owner}")
    return out


def _start_name(session: Session, thread: int) -> str:
    try:
        t = session.kernel.thread(thread)
    except KdError:
        return ""
    start = t.start_address
    name = session.symbols.name_at(start) if start else None
    return f" ({name})" if name else ""
