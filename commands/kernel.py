"""Processes, threads, processors: !process, !thread, .process, !running, !pcr, !prcb, !irql,
!object.

Thin: parse WinDbg's syntax, ask the session's KernelState (kdshell.kernel.state) for the
objects, print WinDbg's layout (windbg.md §10). `.thread` and `~Ns` are in commands/stack.py
(they change the register context); their thread and processor facts come from the same engine.

Lines whose fields no source knows (no kernel PDB, no KDBG field, no built-in entry) are left
out rather than guessed. A small memory dump holds only the crashing processor's KPRCB, its
current thread and that thread's process: the commands show those and say so for the rest
("Unable to get ... from the dump").
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.dispatch import Invocation, command
from kdshell.errors import CommandError, KdError, MemoryNotPresent
from kdshell.expr import Evaluator
from kdshell.format import ptr
from kdshell.kernel import objects as OB
from kdshell.kernel.devnodes import VadTree
from kdshell.kernel.prcb import PCR_TIB_NAMES, irql_name, read_pcr_fields, read_prcb_counters
from kdshell.kernel.processes import find_processes
from kdshell.kernel.threads import wait_objects, wait_reason_name
from kdshell.dispatch import needs_memory
from kdshell.stack.text import KOptions, frame_lines

if TYPE_CHECKING:
    from kdshell.kernel.processes import Process
    from kdshell.kernel.threads import Thread
    from kdshell.session import Session

STATE_WORDS: dict[int | None, str] = {
    0: "INITIALIZED", 1: "READY", 2: "RUNNING", 3: "STANDBY", 4: "TERMINATED", 5: "WAIT",
    6: "TRANSITION", 7: "DEFERREDREADY", 8: "GATEWAIT", 9: "WAITINGFORPROCESSINSWAP"}
WAIT_MODES: dict[int | None, str] = {0: "KernelMode", 1: "UserMode"}
ALERTABLE: dict[int | None, str] = {0: "Non-Alertable", 1: "Alertable"}


# -- small helpers ---------------------------------------------------------------------------------
def _p(session: Session, value: int | None) -> str:
    """An address as !process/!thread print it: all digits, no backtick."""
    value = value or 0
    return f"{value & 0xFFFF_FFFF_FFFF_FFFF:016x}" if session.is64 else f"{value & 0xFFFFFFFF:08x}"


def _bt(session: Session, value: int | None) -> str:
    """An address with WinDbg's backtick (`fffff800`00001040`), as the dot commands print it."""
    return ptr(value or 0, session.is64)


def _args(inv: Invocation) -> tuple[list[str], list[str]]:
    options = [a for a in inv.args if a.startswith(("/", "-")) and not _is_number(a)]
    words = [a for a in inv.args if a not in options]
    return options, words


def _is_number(text: str) -> bool:
    return text.startswith("-") and text[1:].isdigit()


def _value(session: Session, text: str) -> int:
    if text == "-1":
        return -1
    return Evaluator(session).evaluate(text)


def _duration(hundred_ns: int) -> str:
    ms = hundred_ns // 10_000
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


# -- processes -----------------------------------------------------------------------------------
def _vad_summary(session: Session, p: Process) -> list[str]:
    """WinDbg's `VadRoot ADDR Vads N` line (the count from a walk of the tree); none without the field."""
    k = session.kernel
    if not p.vad_root or k.small:
        return []
    try:
        walk = VadTree(k.memory, k.offsets, k.is64).walk(p.vad_root)
    except KdError:
        return [f"    VadRoot {_p(session, p.vad_root)} Vads ?"]
    return [f"    VadRoot {_p(session, p.vad_root)} Vads {len(walk.vads)}"]


def process_lines(session: Session, p: Process, flags: int) -> list[str]:
    """A PROCESS block (without its threads)."""
    k = session.kernel
    if p.session == 0 or (p.session is None and p.pid in (0, 4)):
        sid = "none"
    else:
        sid = str(p.session_id) if p.session_id is not None else "?"
    cid = f"{p.pid:04x}" if p.pid is not None else "????"
    parent = f"{p.parent:04x}" if p.parent is not None else "????"
    peb = f"{p.peb:08x}" if p.peb is not None else "????????"
    dtb = f"{p.dtb:08x}" if p.dtb is not None else "????????"
    table = _p(session, p.object_table) if p.object_table is not None else "?" * (16 if session.is64 else 8)
    count = k.handle_count(p)
    handles = f"{count:3d}." if count is not None else "<Data Not Accessible>"
    lines = [f"PROCESS {_p(session, p.address)}",
             f"    SessionId: {sid}  Cid: {cid}    Peb: {peb}  ParentCid: {parent}",
             f"    DirBase: {dtb}  ObjectTable: {table}  HandleCount: {handles}",
             f"    Image: {p.image}"]
    if (missing := k.process_layout.missing_line(("pid", "name"))) is not None:
        lines.append(f"    {missing}")
    if flags & 1:
        lines += _vad_summary(session, p)
        if p.device_map is not None:
            lines.append(f"    DeviceMap {_p(session, p.device_map)}")
        if p.token is not None:
            lines.append(f"    {'Token':<34}{_p(session, p.token)}")
        crash = session.dump.header.system_time
        if p.create_time and crash and crash >= p.create_time:
            lines.append(f"    {'ElapsedTime':<34}{_duration(crash - p.create_time)}")
        if p.base_priority is not None:
            lines.append(f"    {'BasePriority':<34}{p.base_priority}")
    return lines


def _process_threads(session: Session, p: Process, flags: int, indent: str = "        ") -> list[str]:
    k = session.kernel
    walk = k.threads(p)
    out = []
    for warning in walk.warnings:
        out.append(indent + warning)
    with_args = not flags & 0x8
    for t in walk.threads:
        if flags & 0x2 and flags & 0x4:
            out += [indent + x if x else x for x in thread_lines(session, t, stack=True, args=with_args)]
        else:
            out.append(indent + thread_header(session, t))
            if flags & 0x2:
                out += [indent + "    " + x for x in _wait_lines(session, t)]
        out.append("")
    return out


def show_process(session: Session, p: Process, flags: int) -> None:
    out = session.out
    out.lines(process_lines(session, p, flags))
    out.line("")
    if not flags & 0x6:
        return
    k = session.kernel
    saved = None
    if flags & 0x10 and not k.small and p.dtb:
        saved = session.dtb
        session.set_dtb(p.dtb)
    try:
        out.lines(_process_threads(session, p, flags))
    finally:
        if saved is not None:
            session.set_dtb(saved)


@command("!process", family="kernel", needs=(needs_memory,),
         syntax="!process [Process [Flags]] | !process 0 Flags ImageName",
         summary="Show a process (EPROCESS address or process ID; 0: all, -1: the current one) and, "
                 "with Flags, its threads (2: wait states, 6: with stacks, 8: no stack arguments, "
                 "0x10: in its address space)",
         example="!process 0 0",
         details="Flags default to 3 for 0, -1 or no process, else to 0xF. A small memory dump holds "
                 "only the current process and thread.")
def process_(session: Session, inv: Invocation) -> None:
    options, words = _args(inv)
    if options:
        raise CommandError(f"!process: {options[0]} is not supported by kdshell "
                           "(!process [Process [Flags]] | !process 0 Flags ImageName)")
    if len(words) > 3:
        raise CommandError(f"^ Extra character error in '!process {inv.text}'")
    name = words[2] if len(words) > 2 else None
    key = -1
    if words:
        try:
            key = _value(session, words[0])
        except KdError:
            if len(words) > 2 or not any(c.isalpha() for c in words[0]):
                raise
            key, name = 0, words[0]  # `!process smss.exe [Flags]`: an image name
    flags = _value(session, words[1]) if len(words) > 1 else (3 if key in (0, -1) or name else 0xF)
    k = session.kernel
    out = session.out
    if key == 0:
        out.line("**** NT ACTIVE PROCESS DUMP ****")
        try:
            walk = k.processes()
            for w in walk.warnings:
                out.warn(w)
            found = walk.processes
        except KdError as exc:
            if not k.small:
                raise
            out.warn(str(exc))
            current = k.current_process()
            found = [k.process(current)] if current else []
        if name is not None:
            found = find_processes(found, name)
        for p in found:
            show_process(session, p, flags)
        return
    if key == -1:
        current = k.current_process()
        if not current:
            raise KdError("Unable to get the current process from the dump")
        show_process(session, k.process(current), flags)
        return
    if key < k.system_range_start():
        out.line(f"Searching for Process with Cid == {key:x}")
        found = k.find_processes(key)
        if not found:
            raise KdError(f"Unable to get the process with Cid {key:x} from the dump"
                          + (" (a small memory dump holds only the current process)" if k.small else ""))
        for p in found:
            show_process(session, p, flags)
        return
    show_process(session, k.process(key), flags)


@command(".process", family="kernel", needs=(needs_memory,), syntax=".process [/p] [/r] [Process]",
         summary="Set the implicit process: its address space translates addresses (/p, /r: accepted; "
                 "kdshell loads no user-mode symbols yet); alone: show it",
         example=".process /p /r ffffc20a`00053040")
def dot_process(session: Session, inv: Invocation) -> None:
    options, words = _args(inv)
    k = session.kernel
    for o in options:
        if o.lower() not in ("/p", "/r", "/i"):
            raise CommandError(f".process: unknown option '{o}' (.process [/p] [/r] [Process])")
    if "/i" in [o.lower() for o in options]:
        raise KdError(".process /i: a dump cannot run the target: use .process /p instead")
    if not words:
        current = k.current_process()
        session.out.line(f"Implicit process is now {_bt(session, current)}")
        return
    address = _value(session, " ".join(words))
    k.set_process(address if address not in (0, -1) else None)
    session.out.line(f"Implicit process is now {_bt(session, k.current_process())}")
    if "/p" in [o.lower() for o in options]:
        session.out.line(".cache forcedecodeuser done")
    if "/r" in [o.lower() for o in options]:
        session.out.line("Loading User Symbols")


# -- threads -------------------------------------------------------------------------------------
def _state_text(session: Session, t: Thread) -> str:
    k = session.kernel
    word = STATE_WORDS.get(t.state, f"STATE {t.state}" if t.state is not None else "")
    if t.state == 2:
        where = k.running_on(t.address)
        if where is None:
            where = t.next_processor
        return f"RUNNING on processor {where:x}" if where is not None else "RUNNING"
    if t.state in (1, 3, 7) and t.next_processor is not None:
        return f"{word} on processor {t.next_processor:x}"
    if t.state == 5:
        mode = WAIT_MODES.get(t.wait_mode, "")
        alert = ALERTABLE.get(t.alertable, "")
        return " ".join(x for x in (f"WAIT: ({wait_reason_name(t.wait_reason)})", mode, alert) if x)
    return word


def thread_header(session: Session, t: Thread) -> str:
    pid = f"{t.pid:04x}" if t.pid is not None else "????"
    tid = f"{t.tid:04x}" if t.tid is not None else "????"
    teb = _p(session, t.teb) if t.teb is not None else "?" * (16 if session.is64 else 8)
    w32 = _p(session, t.win32_thread) if t.win32_thread is not None else "?" * (16 if session.is64 else 8)
    return f"THREAD {_p(session, t.address)}  Cid {pid}.{tid}  Teb: {teb} Win32Thread: {w32} {_state_text(session, t)}"


def _wait_lines(session: Session, t: Thread) -> list[str]:
    k = session.kernel
    size = k.offsets.size("_KWAIT_BLOCK")
    return [f"{_p(session, obj)}  {name}" for obj, name in wait_objects(k.memory, t, k.thread_layout, k.is64, size)]


def thread_lines(session: Session, t: Thread, stack: bool = True, args: bool = True) -> list[str]:
    """A thread as !thread shows it (header, wait objects, details, stack)."""
    k = session.kernel
    lines = [thread_header(session, t)]
    if (missing := k.thread_layout.missing_line(("cid",))) is not None:
        lines.append(f"    {missing}")
    lines += ["    " + x for x in _wait_lines(session, t)]
    owner = t.owning_process
    owner_p = None
    if owner:
        try:
            owner_p = k.process(owner)
        except KdError:
            owner_p = None
    if owner_p is not None and owner_p.device_map is not None:
        lines.append(f"{'DeviceMap':<26}{_p(session, owner_p.device_map)}")
    if owner:
        name = owner_p.image if owner_p is not None else "<Data Not Accessible>"
        lines.append(f"{'Owning Process':<26}{_p(session, owner)}       Image:         {name}")
        attached = t.attached_process
        if attached:
            lines.append(f"{'Attached Process':<26}{_p(session, attached)}       Image:         "
                         f"{k.process_name(attached) or '<Data Not Accessible>'}")
        else:
            lines.append(f"{'Attached Process':<26}N/A            Image:         N/A")
    if t.state == 2:  # a running thread: the IRQL its processor had (kdshell's line; see !irql)
        where = k.running_on(t.address)
        irql = k.processor(where).irql if where is not None else None
        if irql is not None:
            lines.append(f"{'IRQL':<26}{irql} ({irql_name(irql, session.is64)})")
    increment = k.time_increment()
    if t.wait_time is not None:
        text = f"{'Wait Start TickCount':<26}{t.wait_time:<15d}"
        now = k.tick_count()
        if now is not None and now >= t.wait_time:
            ticks = now - t.wait_time
            text += f"Ticks: {ticks}"
            if ticks:
                ms = ticks * increment // 10_000
                d, rest = divmod(ms, 86_400_000)
                text += f" ({d}:{_duration(rest * 10_000)})"
        lines.append(text.rstrip())
    if t.context_switches is not None:
        text = f"{'Context Switch Count':<26}{t.context_switches:<15d}"
        if t.ideal_processor is not None:
            text += f"IdealProcessor: {t.ideal_processor}"
        lines.append(text.rstrip())
    if t.user_time is not None:
        lines.append(f"{'UserTime':<26}{_duration(t.user_time * increment)}")
    if t.kernel_time is not None:
        lines.append(f"{'KernelTime':<26}{_duration(t.kernel_time * increment)}")
    start = t.win32_start_address if t.win32_start_address else t.start_address
    if start is not None:
        sym = session.symbols.name_at(start)
        start_text = f"{sym} (0x{_p(session, start)})" if sym else f"0x{_p(session, start)}"
        lines.append(f"Win32 Start Address {start_text}")
    if t.initial_stack is not None or t.kernel_stack is not None:
        lines.append(f"Stack Init {_p(session, t.initial_stack)} Current {_p(session, t.kernel_stack)}")
    if t.stack_base is not None or t.stack_limit is not None:
        text = f"Base {_p(session, t.stack_base)} Limit {_p(session, t.stack_limit)}"
        if t.callback_stack is not None:
            text += f" Call {_p(session, t.callback_stack)}"
        lines.append(text)
    parts = [(name, value) for name, value in (("Priority", t.priority), ("BasePriority", t.base_priority),
                                               ("PriorityDecrement", t.priority_decrement)) if value is not None]
    if parts:
        lines.append(" ".join(f"{n} {v}" for n, v in parts))
    if stack:
        lines += stack_lines(session, t.address, args)
    return lines


def stack_lines(session: Session, thread: int, args: bool = True) -> list[str]:
    """The thread's kernel stack: from its processor's context when it is running, else its
    switch frame (kdshell.stack.context), k columns (kb's with `args`)."""
    state = session.context
    previous = state.thread
    state.thread = thread  # the walk's trap-frame hints come from this thread
    try:
        frame, _how = state.thread_frame(thread)
        frames = state.walk(state.kframes, dict(frame.registers), known=frame.known)
    except KdError as exc:
        return [str(exc)]
    finally:
        state.thread = previous
    return frame_lines(frames, KOptions(mode="b" if args else ""), symbols=session.symbols,
                       memory=session.memory, is64=session.is64)


@command("!thread", family="kernel", needs=(needs_memory,), syntax="!thread [-p] [-t] [Address [Flags]]",
         summary="Show a thread (ETHREAD address; -t: a thread ID; -1 or none: the current thread): "
                 "state, owning process, wait, stack limits, then its stack",
         example="!thread ffffc20a`00002040",
         details="-p also shows the owning process. Flags: 2 wait objects, 4 the stack (default 6).")
def thread_(session: Session, inv: Invocation) -> None:
    options, words = _args(inv)
    for o in options:
        if o not in ("-p", "-t"):
            raise CommandError(f"!thread: unknown option '{o}' (!thread [-p] [-t] [Address [Flags]])")
    k = session.kernel
    by_id = "-t" in options
    flags = _value(session, words[1]) if len(words) > 1 else 6
    if not words or words[0] == "-1":
        current = k.current_thread()
        if not current:
            raise KdError("Unable to get the current thread from the dump")
        threads = [k.thread(current)]
    else:
        value = _value(session, words[0])
        if by_id:
            threads = k.find_thread_by_id(value)
            if not threads:
                raise KdError(f"Unable to get the thread with Cid {value:x} from the dump"
                              + (" (a small memory dump holds only the current thread)" if k.small else ""))
        else:
            threads = [k.thread(value)]
    for t in threads:
        if "-p" in options and t.owning_process:
            try:
                session.out.lines(process_lines(session, k.process(t.owning_process), 0))
            except KdError as exc:
                session.out.warn(str(exc))
        session.out.lines(thread_lines(session, t, stack=bool(flags & 4)))
        session.out.line("")


# -- processors ----------------------------------------------------------------------------------
def _processor_arg(session: Session, inv: Invocation, name: str) -> int:
    _, words = _args(inv)
    if len(words) > 1:
        raise CommandError(f"^ Extra character error in '{name} {inv.text}'")
    return _value(session, words[0]) if words else session.processor


@command("!irql", family="kernel", needs=(needs_memory,), syntax="!irql [Processor]",
         summary="Show the IRQL a processor had when the machine stopped (before the bug check raised it)",
         example="!irql 1",
         details="From KPRCB.DebuggerSavedIRQL with the kernel's types, else (x64) CR8 as saved in "
                 "KPRCB.ProcessorState; else KPCR.Irql (ARM64: KPCR.CurrentIrql), the current IRQL.")
def irql_(session: Session, inv: Invocation) -> None:
    number = _processor_arg(session, inv, "!irql")
    k = session.kernel
    p = k.processor(number)
    if p.irql is None:
        why = ""
        if (missing := k.prcb_layout.missing_line(("saved_irql",))) is not None:
            why = f" ({missing}; a small memory dump keeps no KPCR)" if k.small else f" ({missing})"
        raise KdError(f"Unable to get the IRQL of processor {number} from the dump{why}")
    text = f"{p.irql} ({irql_name(p.irql, session.is64)})"
    if p.irql_source in ("KPCR.Irql", "KPCR.CurrentIrql"):
        session.out.line(f"Current IRQL for processor {number:#x} -- {text} ({p.irql_source}: the IRQL saved "
                         "before the bug check is not known without the kernel's types)")
    else:
        session.out.line(f"Debugger saved IRQL for processor {number:#x} -- {text}")


@command("!prcb", family="kernel", needs=(needs_memory,), syntax="!prcb [Processor]",
         summary="Show a processor's control block (KPRCB): current, next and idle threads", example="!prcb 1")
def prcb_(session: Session, inv: Invocation) -> None:
    number = _processor_arg(session, inv, "!prcb")
    k = session.kernel
    p = k.processor(number)
    c = read_prcb_counters(k.memory, p.prcb, k.prcb_layout, k.is64)
    lines = [f"PRCB for Processor {number} at {_p(session, p.prcb)}:"]
    if p.current_irql is not None:
        lines.append(f"Current IRQL -- {p.current_irql}")
    lines.append(f"Threads--  Current {_p(session, p.current_thread)} Next {_p(session, p.next_thread)} "
                 f"Idle {_p(session, p.idle_thread)}")
    text = f"Processor Index {number}"
    if c.group is not None and c.group_index is not None:
        text += f" Number ({c.group}, {c.group_index})"
    if c.group_set_member is not None:
        text += f" GroupSetMember {c.group_set_member:x}"
    lines.append(text)
    if c.interrupt_count is not None:
        lines.append(f"Interrupt Count -- {c.interrupt_count:08x}")
    times = (c.dpc_time, c.interrupt_time, c.kernel_time, c.user_time)
    if None not in times:
        lines.append(f"Times -- Dpc    {times[0]:08x} Interrupt {times[1]:08x} ")
        lines.append(f"         Kernel {times[2]:08x} User      {times[3]:08x} ")
    session.out.lines(lines)


@command("!pcr", family="kernel", needs=(needs_memory,), syntax="!pcr [Processor]",
         summary="Show a processor's control region (KPCR)", example="!pcr 0",
         details="On x64 the NtTib lines are WinDbg's reading of the KPCR's first fields (GdtBase, "
                 "TssBase, UserRsp, Self, CurrentPrcb, LockArray, Used_Self), as WinDbg prints them.")
def pcr_(session: Session, inv: Invocation) -> None:
    number = _processor_arg(session, inv, "!pcr")
    k = session.kernel
    p = k.processor(number)
    if p.pcr is None:
        why = ("a small memory dump keeps only the KPRCB copy" if k.small else
               k.prcb_layout.missing_line(("pcr_prcb",)) or "the KPCR is not known")
        raise KdError(f"Unable to get the KPCR of processor {number} from the dump: {why}")
    try:
        pcr = read_pcr_fields(k.memory, p.pcr, k.prcb_layout, k.is64)
    except MemoryNotPresent as exc:
        raise KdError(f"Unable to get the KPCR of processor {number} at {_p(session, p.pcr)} from the dump "
                      f"({exc.why})") from None

    def v(value: int | None) -> str:
        return _p(session, value or 0)

    row = "{:>25}: {}".format
    lines = [f"KPCR for Processor {number} at {_p(session, p.pcr)}:"]
    if pcr.major is not None and pcr.minor is not None:
        lines.append(f"    Major {pcr.major} Minor {pcr.minor}")
    if k.arm64:  # no NT_TIB, IDT, GDT, TSS or interrupt controller fields in ARM64's KPCR
        lines += [row("SelfPcr", v(pcr.self_pcr)), row("Prcb", _p(session, p.prcb)),
                  row("CurrentIrql", _p(session, p.current_irql or 0)), "",
                  row("CurrentThread", _p(session, p.current_thread)),
                  row("NextThread", _p(session, p.next_thread)), row("IdleThread", _p(session, p.idle_thread))]
        session.out.lines(lines)
        return
    lines += [row(f"NtTib.{n}", _p(session, value)) for n, value in zip(PCR_TIB_NAMES, pcr.tib)]
    lines.append("")
    lines.append(row("SelfPcr", v(pcr.self_pcr)))
    lines.append(row("Prcb", _p(session, p.prcb)))
    lines.append(row("Irql", _p(session, p.current_irql or 0)))
    lines.append(row("IRR", v(pcr.irr)))
    lines.append(row("IDR", v(pcr.idr)))
    lines.append(row("InterruptMode", v(pcr.interrupt_mode)))
    lines.append(row("IDT", v(pcr.idt)))
    lines.append(row("GDT", v(pcr.gdt)))
    lines.append(row("TSS", v(pcr.tss)))
    lines.append("")
    lines.append(row("CurrentThread", _p(session, p.current_thread)))
    lines.append(row("NextThread", _p(session, p.next_thread)))
    lines.append(row("IdleThread", _p(session, p.idle_thread)))
    session.out.lines(lines)


@command("!running", family="kernel", needs=(needs_memory,), syntax="!running [-i] [-t]",
         summary="Show the threads running on the processors (-i: idle processors too, -t: their stacks)",
         example="!running -it")
def running_(session: Session, inv: Invocation) -> None:
    options = {o.lower() for o in inv.args}
    show_idle = any("i" in o for o in options)
    stacks = any("t" in o for o in options)
    k = session.kernel
    processors = k.processors()
    if k.small:
        session.out.warn(f"Only processor {k.crashing_processor} is in a small memory dump")
    system = sum(1 << p.number for p in processors)
    idle = sum(1 << p.number for p in processors if p.idle)
    width = 16 if session.is64 else 8
    lines = ["", f"System Processors:  ({system:0{width}x})", f"  Idle Processors:  ({idle:0{width}x})"]
    if idle == system:
        lines.append("All processors idle.")
    lines += ["", f"{'':7}{'Prcb':<{width + 2}}{'Current':<{width + 1}}(pri) {'Next':<{width + 1}}(pri) Idle"]
    session.out.lines(lines)
    for p in processors:
        if p.idle and not show_idle:
            continue
        cur = _priority_text(session, p.current_thread)
        if p.next_thread:
            nxt = f"{_p(session, p.next_thread)} {_priority_text(session, p.next_thread)}"
        else:
            nxt = " " * (width + 5)
        session.out.line(f"{p.number:3d}    {_p(session, p.prcb)}  {_p(session, p.current_thread)} {cur} "
                         f"{nxt} {_p(session, p.idle_thread)}")
        if stacks and p.current_thread:
            session.out.line("")
            session.out.lines(stack_lines(session, p.current_thread, args=False))
            session.out.line("")


def _priority_text(session: Session, thread: int | None) -> str:
    if not thread:
        return "    "
    try:
        pri = session.kernel.thread(thread).priority
    except KdError:
        pri = None
    return f"({pri:2d})" if pri is not None else "(??)"


# -- objects -------------------------------------------------------------------------------------
@command("!object", family="kernel", needs=(needs_memory,), syntax="!object Address",
         summary="Show the object header of the object at Address (type, handle and pointer counts)",
         example="!object ffffc20a`00053040")
def object_(session: Session, inv: Invocation) -> None:
    _, words = _args(inv)
    if not words:
        raise CommandError("!object: give an object's address (kdshell does not list object directories)")
    if words[0].startswith("\\"):
        raise KdError("!object: kdshell takes an object's address; object directories by name are not supported")
    address = _value(session, words[0])
    k = session.kernel
    layout = OB.object_layout(k.offsets, k.is64, k.build)
    try:
        header = OB.read_object_header(k.memory, address, layout, k.is64)
    except MemoryNotPresent:
        raise KdError(f"Unable to read the object header at {_p(session, OB.header_address(address, layout, k.is64))}: "
                      "it is not in the dump") from None
    # objects whose type the kernel itself says: the current thread and its process
    examples = {name: body for name, body in (("Process", k.current_process()), ("Thread", k.current_thread()))
                if body}
    kind = OB.object_type(k.memory, header, layout, k.is64, k.build, k.symbol("ObHeaderCookie"),
                          k.symbol("ObTypeIndexTable"), examples)
    if kind.name is not None:
        type_name = kind.name
    elif kind.index is not None:
        type_name = f"<type index {kind.index}>"
    else:
        type_name = "<type index unknown: nt!ObHeaderCookie is not available>"
    type_text = _p(session, kind.address) if kind.address is not None else "?" * (16 if k.is64 else 8)
    session.out.lines([
        f"Object: {_p(session, address)}  Type: ({type_text}) {type_name}",
        f"    ObjectHeader: {_p(session, header.address)} (new version)",
        f"    HandleCount: {header.handle_count}  PointerCount: {header.pointer_count}",
    ])
