"""Call stacks and register contexts: k (kb kv kp kP kc kn kf kL, counts, `= BP SP IP`), kd,
.kframes, .cxr, .ecxr, .trap, .thread, .frame, ~Ns.

Thin: parse WinDbg's syntax, ask the session's ContextState (kdshell.stack.context) for the
context and its walk (kdshell.stack.walk / x86), print WinDbg's columns (windbg.md §3, §9;
x64-unwind.md §4). `r` itself lives in commands/memory.py and reads `session.registers`, which is
the current context (or the `.frame` selected), so `.cxr X; r` shows X's registers.

The columns and register blocks are kdshell.stack.text's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

from kdshell.dispatch import Invocation, command, needs_memory, resolve
from kdshell.dumpfile.header import MACHINE_ARM64
from kdshell.errors import CommandError, KdError
from kdshell.expr import Evaluator
from kdshell.format import ptr
from kdshell.stack.text import RESETTING, SCAN_WARNING, KOptions, context_lines, frame_lines
from kdshell.symbols.missing import missing_symbols_line

if TYPE_CHECKING:
    from kdshell.session import Session
    from kdshell.stack.walk import Frame, StackWalk

MAX_FRAMES = 0xFFFF
MISSING_SHOWN = 3  # modules without symbols named after a stack; the rest are counted



# -- k ------------------------------------------------------------------------------------------
def k_options(session: Session, inv: Invocation) -> KOptions:
    o = KOptions()
    suffix, rest = inv.suffix, inv.text.strip()
    if "=" in suffix:  # `k=rbp rsp rip`: the dispatcher glued the '=' to the name
        suffix, eq, glued = suffix.partition("=")
        rest = f"={glued} {rest}".strip()
    for c in suffix:
        if c in "bvpP":
            if o.mode and o.mode != c:
                raise CommandError(f"k: '{o.mode}' and '{c}' cannot be combined")
            o.mode = c
        elif c == "c":
            o.clean = True
        elif c == "n":
            o.numbers = True
        elif c == "f":
            o.sizes = True
        elif c in "LM":
            pass  # L: no source lines (kdshell prints none); M: DML links (none here)
        else:
            fixed = f"{inv.name}{inv.suffix.replace(c, '')} {inv.text}".strip()
            raise CommandError(f"^ Syntax error in 'k{inv.suffix}': unknown option '{c}' "
                               "(k[b|v|p|P][c][n][f][L] [= BasePtr StackPtr InstructionPtr] [FrameCount]). "
                               f"Did you mean '{fixed}'?")
    ev = Evaluator(session)
    values = []
    text = rest
    if text.startswith("="):
        text = text[1:]
        words = _words(text)
        values = [ev.evaluate(w) for w in words]
        if not values:
            raise CommandError("k: '=' needs an address (k = BasePtr [StackPtr InstructionPtr] [FrameCount])")
        if len(values) >= 3:
            o.start, values = tuple(values[:3]), values[3:]
        else:
            o.start, values = (values[0],), values[1:]
    else:
        values = [ev.evaluate(w) for w in _words(text)]
    if len(values) > 1:
        raise CommandError(f"^ Extra character error in 'k{inv.suffix} {inv.text}'")
    if values:
        if not 0 < values[0] <= MAX_FRAMES:
            raise CommandError(f"k: frame count {values[0]:#x} is out of range (1-{MAX_FRAMES:#x})")
        o.count = values[0]
    return o


def _words(text: str) -> list[str]:
    from kdshell.dispatch import tokenize

    return tokenize(text)


def start_context(session: Session, start: tuple[int, ...]) -> dict[str, int]:
    """`k = BP SP IP`: the current context with those three registers replaced. With one value
    (`k = BP`), x64 frames do not chain through RBP, so it is taken as the stack pointer too
    (the instruction pointer stays)."""
    ctx = dict(session.context.context)
    if session.is64:
        names = ("rbp", "rsp", "rip")
    else:
        names = ("ebp", "esp", "eip")
    if len(start) == 3:
        for name, value in zip(names, start):
            ctx[name] = value
    else:
        ctx[names[0]] = start[0]
        if session.is64:
            ctx["rsp"] = start[0]
    return ctx


@command("k", family="stack", option_suffix=True, needs=(needs_memory,),
         syntax="k[b|v|p|P][c][n][f][L] [= BasePtr [StackPtr InstructionPtr]] [FrameCount]",
         summary="Show the call stack of the current context (b/v: home slots, v: trap frames and how "
                 "each frame was found, p/P: parameters, c: names only, n: frame numbers, f: frame sizes)",
         example="kn 30",
         details="The default frame count is 0x14 (.kframes changes it). Each frame is found by the "
                 "image's unwind data, a trap frame, the function's own code (its epilog, or a leaf's "
                 "ret), the leaf rule ([RSP]) or a scan of the stack; guessed frames (the leaf rule, "
                 "the scan, and what follows them) come after WinDbg's warning line and may be wrong. "
                 "kv ends each row with how: [unwind], [trap], [leaf], [epilog], [scan], "
                 "[scan-unverified] (no code in the dump to check the call), ', guess' on a guess.")
def k_(session: Session, inv: Invocation) -> None:
    o = k_options(session, inv)
    frames = k_frames(session, o)
    session.out.lines(_colour_split(session, _frames(session, frames, o)))
    note_missing_symbols(session, [f.lookup_address for f in frames])


def k_frames(session: Session, o: KOptions) -> StackWalk:
    """The frames `k` with options `o` (k_options) shows: from the current context, or from the
    = BasePtr StackPtr InstructionPtr it names."""
    state = session.context
    count = o.count or state.kframes
    if o.start:
        return state.walk(count, start_context(session, o.start), known=None)
    return state.walk(count)


def note_missing_symbols(session: Session, addresses: Iterable[int]) -> None:
    """After a stack (k, !analyze): one line for each module whose frames stay unnamed for want
    of symbols, saying what is missing and how to add it; once per module until the path changes."""
    symbols = session.symbols
    lines = []
    for address in addresses:
        module = symbols.module_at(address)
        if module is None or module.name in symbols.missing_noted:
            continue
        line = missing_symbols_line(symbols, module)
        if line is not None:
            symbols.missing_noted.add(module.name)
            lines.append(line)
    for line in lines[:MISSING_SHOWN]:
        session.out.warn(line)
    if len(lines) > MISSING_SHOWN:
        session.out.warn(f"*** {len(lines) - MISSING_SHOWN} more modules on this stack have no symbols "
                         "(lm shows each module's symbol status)")


def _colour_split(session: Session, lines: Iterable[str]) -> Iterator[str]:
    """The warning line goes out as a warning (the text is the same)."""
    for line in lines:
        if line == SCAN_WARNING:
            session.out.warn(line)
            continue
        yield line


@command("kd", family="stack", needs=(needs_memory,), syntax="kd [WordCount]",
         summary="Show the raw stack from the stack pointer, with symbols (like dps @rsp)",
         example="kd 20")
def kd_(session: Session, inv: Invocation) -> None:
    count = Evaluator(session).evaluate(inv.text) if inv.text.strip() else 0x10
    arm64 = session.context.machine == MACHINE_ARM64
    sp = session.registers.get("sp" if arm64 else "rsp" if session.is64 else "esp", 0)
    dps, dps_inv = resolve(f"dps {sp:#x} L{count:#x}")  # the memory family's dps, through the registry
    dps.func(session, dps_inv)
    session.repeat = None


@command(".kframes", family="stack", syntax=".kframes [FrameCountDefault]",
         summary="Show or set how many frames k shows by default", example=".kframes 0n50")
def kframes(session: Session, inv: Invocation) -> None:
    if inv.text.strip():
        value = Evaluator(session).evaluate(inv.text)
        if not 0 < value <= MAX_FRAMES:
            raise CommandError(f".kframes: {value:#x} is out of range (1-{MAX_FRAMES:#x})")
        session.context.kframes = value
    session.out.line(f"Default stack trace depth is 0n{session.context.kframes} frames")


# -- contexts -------------------------------------------------------------------------------------
def _show_registers(session: Session, *, trap: bool = False) -> None:
    lines, errors = context_lines(session.memory, session.registers, session.is64, session.symbolize, trap=trap,
                                  machine=session.context.machine)
    session.report_missing(errors)
    session.out.lines(lines)


def _frames(session: Session, frames: Iterable[Frame], o: KOptions, *, header: bool = True) -> list[str]:
    return frame_lines(frames, o, symbols=session.symbols, memory=session.memory, is64=session.is64,
                       header=header)


def _address(session: Session, inv: Invocation, name: str) -> int | None:
    words = [w for w in inv.args if not w.startswith(("/", "-"))]
    if not words:
        return None
    return Evaluator(session).evaluate(" ".join(words))


@command(".cxr", family="stack", needs=(needs_memory,), syntax=".cxr [Address]",
         summary="Use the CONTEXT record at Address as the register context (alone: back to the default)",
         example=".cxr ffff8504`29891720",
         details="0x7E/0x1000007E give the context record in P4, 0x3B in P3 (.ecxr uses it).")
def cxr(session: Session, inv: Invocation) -> None:
    address = _address(session, inv, ".cxr")
    state = session.context
    if address is None:
        state.reset()
        session.out.line(RESETTING)
        return
    frame = state.context_record(address)
    state.set(frame, f".cxr {ptr(address, session.is64)}")
    _show_registers(session)


@command(".ecxr", family="stack", needs=(needs_memory,), syntax=".ecxr",
         summary="Use the exception's context record (from the bug check parameters) as the register context",
         example=".ecxr")
def ecxr(session: Session, inv: Invocation) -> None:
    from kdshell.bugcheck_roles import parameter

    h = session.dump.header
    code = h.bugcheck_code
    index = parameter(code, "context_record")
    if index is None or not h.bugcheck_parameters[index]:
        raise KdError(f"Unable to get exception context: bug check {code:X} has no context record "
                      "(use .trap or k)")
    address = h.bugcheck_parameters[index]
    session.context.set(session.context.context_record(address), f".cxr {ptr(address, session.is64)}")
    _show_registers(session)


@command(".trap", family="stack", needs=(needs_memory,), syntax=".trap [Address]",
         summary="Use the KTRAP_FRAME at Address as the register context (alone: back to the default)",
         example=".trap ffffc60b`87e8ed40")
def trap(session: Session, inv: Invocation) -> None:
    address = _address(session, inv, ".trap")
    state = session.context
    if address is None:
        state.reset()
        session.out.line(RESETTING)
        return
    frame = state.trap_frame(address)
    state.set(frame, f".trap {ptr(address, session.is64)}")
    _show_registers(session, trap=True)


@command(".thread", family="stack", needs=(needs_memory,), syntax=".thread [/p] [/r] [Thread]",
         summary="Use a thread's register context: its processor's when it is running, else its "
                 "saved switch frame (alone: the current processor's thread)",
         example=".thread ffffc20a`00065040")
def thread(session: Session, inv: Invocation) -> None:
    address = _address(session, inv, ".thread")
    state = session.context
    if address is None:
        state.thread = None
        state.reset()
        current = state.current_thread()
        if current:
            session.out.line(f"Implicit thread is now {ptr(current, session.is64)}")
        return
    frame, how = state.thread_frame(address)
    state.set(frame, f".thread {ptr(address, session.is64)} ({how})")
    state.thread = address
    session.out.line(f"Implicit thread is now {ptr(address, session.is64)}")
    if "/p" in inv.args:  # the thread's process becomes the implicit one (its address space)
        owner = session.kernel.thread(address).owning_process
        if owner:
            session.kernel.set_process(owner)
            session.out.line(f"Implicit process is now {ptr(owner, session.is64)}")
    if "/r" in inv.args:
        _show_registers(session)


@command(".frame", family="stack", needs=(needs_memory,), syntax=".frame [/r] [FrameNumber]",
         summary="Select a frame of the current stack: r, u and @rip then see that frame's registers",
         example=".frame /r 2")
def frame_(session: Session, inv: Invocation) -> None:
    show = "/r" in inv.args
    words = [w for w in inv.args if w != "/r"]
    state = session.context
    number = Evaluator(session).evaluate(" ".join(words)) if words else state.frame_number
    f = state.select_frame(number)
    session.out.lines(_frames(session, [f], KOptions(numbers=True), header=False))
    if show:
        _show_registers(session)


@command("~", family="stack", option_suffix=True, needs=(needs_memory,), syntax="~Ns",
         summary="Switch to processor N: the context it saved in its KPRCB (ProcessorState.ContextFrame, "
                 "or the CONTEXT KPRCB.Context points to) and its prompt",
         example="~1s",
         details="On the crashing processor that is the context at KeBugCheckEx, which differs from the dump's\n"
                 "default context when the header holds an exception's (0x1000007E); .cxr alone goes back to it.")
def processor(session: Session, inv: Invocation) -> None:
    text = (inv.suffix + inv.text).strip()
    if not text.lower().endswith("s") or not text[:-1].strip():
        raise CommandError("~: kdshell knows ~Ns (switch to processor N)")
    number = Evaluator(session).evaluate(text[:-1].strip())
    state = session.context
    try:
        frame = state.saved_processor_frame(number)
    except KdError as exc:
        if number != state.default_processor:
            raise
        frame = state.processor_frame(number)  # no saved context: the dump's context stands for it
        session.out.warn(f"{exc}; using the dump's context")
    session.processor = number
    state.thread = None
    state.set(frame, f"processor {number}")
