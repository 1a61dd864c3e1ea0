"""`kdshell --tutorial`: a guided walk through a crash dump, for newcomers.

The bundled sample by default, or the user's own dump (`--tutorial -z FILE`). Each step says what
to look at and why, waits for the user to type the command (a hint if it is something else;
`skip` moves on, `q` stops), runs it, then explains what came out. About ten minutes at a reading
pace.

Every text is computed from the dump, not written for one crash: the bug check's name and what
its parameters mean (kdshell/data/bugcodes.tsv), the plain-language reading and the blamed module
of !analyze (kdshell.analysis.analyze, .teach), and the context command its rule calls for
(Analysis.fault: `.cxr` for a CONTEXT record, `.trap` for a trap frame given or found on the
stack). A step that does not apply to this dump says why and is skipped.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any, Callable

from kdshell.analysis import bugcodes
from kdshell.analysis.analyze import CONTEXT_RECORD, DEFAULT, PROCESSOR, THREAD, TRAP_FRAME, Analysis, analyze
from kdshell.analysis.rules import MANUAL
from kdshell.analysis.teach import explain
from kdshell.bugcheck_roles import base_code
from kdshell.dispatch import resolve
from kdshell.dumpfile.header import MACHINE_ARM64
from kdshell.errors import KdError
from kdshell.symbols.resolver import DEFERRED, EXPORTS, NONE, PDB

WIDTH = 100


@dataclass
class Lesson:
    intro: str
    command: str                        # what the user types
    after: Callable[[bool], str]        # the explanation, told whether the command succeeded


@dataclass
class Skip:
    topic: str                          # what the step would have shown
    reason: str                         # why it does not apply to this dump


class Walk:
    """The facts the steps are computed from, gathered once, and what the user has done so far."""

    def __init__(self, session: Any):
        self.session = session
        self.analysis: Analysis | None = None
        self.error = ""
        try:
            self.analysis = analyze(session)
        except KdError as exc:
            self.error = str(exc)
        self.switched = False           # the context step ran: the registers are the fault's
        self.arm64 = session.context.machine == MACHINE_ARM64
        self.pc, self.sp = ("pc", "sp") if self.arm64 else ("rip", "rsp") if session.is64 else ("eip", "esp")

    @property
    def code(self) -> int:
        return self.session.dump.header.bugcheck_code

    @property
    def params(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.session.dump.header.bugcheck_parameters)

    def readable(self, address: int) -> bool:
        try:
            self.session.context.read(address, 1)
            return True
        except KdError:
            return False


# -- the steps ----------------------------------------------------------------------------------------
def _bugcheck(w: Walk) -> Lesson | Skip:
    code, params = w.code, w.params
    entry = bugcodes.lookup(code)

    def after(ok: bool) -> str:
        if w.analysis is not None:
            text = [explain(w.analysis).what[0]]
        else:
            text = [f"Bug check {code:#x} is {bugcodes.describe(code)}."]
        if base_code(code) != code:
            text.append(f"The _M in its name: {code:#x} is the same bug check as {base_code(code):#x}, "
                        "raised by another path in the kernel; its parameters mean the same.")
        meanings = [(i, m) for i, m in enumerate(entry.parameters if entry else ()) if m]
        if meanings:
            text.append("Its parameters:")
            text += [f"  {i + 1}: {params[i]:#x} = {m}" for i, m in meanings]
        elif entry is not None and entry.notes:
            text.append(f"kdshell's bug check table says: {entry.notes}.")
        else:
            text.append("kdshell's bug check table has no meaning for its parameters.")
        return "\n".join(text)

    return Lesson("Windows stops the whole machine with a blue screen when the kernel finds something it "
                  "cannot safely recover from: a *bug check*. Its code and four parameters are the first "
                  "facts of every crash. Type .bugcheck to see them.", ".bugcheck", after)


def _analyze(w: Walk) -> Lesson | Skip:
    a = w.analysis
    if a is None:
        return Skip("the automated analysis", f"!analyze cannot analyse this dump: {w.error}")

    def after(ok: bool) -> str:
        text = ["Read it top down: the bug check's name and parameters, then the stack (STACK_TEXT) and the "
                "verdict: MODULE_NAME / IMAGE_NAME is the driver blamed, SYMBOL_NAME the function and offset. "
                "FAILURE_BUCKET_ID is the label crash-reporting systems group crashes by."]
        c = a.culprit
        if c is not None:
            text.append(f"Here MODULE_NAME is {c.module} and IMAGE_NAME {c.image}; SYMBOL_NAME {c.symbol_name}.")
        elif a.blamed_image:
            text.append(f"Here no driver is blamed: 'Probably caused by' names {a.blamed_image}.")
        text += explain(a).what[1:]
        return "\n".join(text)

    return Lesson("!analyze -v does the first hour of work for you: it explains the bug check, finds the "
                  "faulting code and names the driver to blame. Type !analyze -v.", "!analyze -v", after)


def _stack(w: Walk) -> Lesson | Skip:
    state = w.session.context
    try:
        frames = state.walk(state.kframes)
    except KdError as exc:
        return Skip("the call stack", str(exc))
    symbols = w.session.symbols
    names = [symbols.name_at(f.ip) or f"{f.ip:#x}" for f in frames]
    a = w.analysis

    def after(ok: bool) -> str:
        if not frames:
            return "The stack could not be read here: the line above says why."
        top = names[0]
        text = [f"Newest call first: the top line, {top}, is "
                + ("the blue screen itself (the function that stops the machine)." if "KeBugCheck" in top
                   else "where the processor was when the machine stopped.")]
        for i, f in enumerate(frames[:-1]):
            if f.trap_frame is not None:
                text.append(f"{names[i]} received a processor trap; the line below it, {names[i + 1]}, is the "
                            f"code that was running when the trap came (kv shows the trap frame's address).")
                break
        c = None if a is None else a.culprit or (a.detector if a.verdict == MANUAL else None)
        at = next((i for i, f in enumerate(frames) if c is not None and c.ip is not None and f.ip == c.ip), None)
        if a is not None and c is not None and at is not None:
            what = "!analyze blamed" if c is a.culprit else "The crash was asked for through"
            text.append(f"{what} frame {at} (counting the top line as 0), {names[at]}, in {c.image}.")
        elif a is not None and a.fault.command:
            text.append(f"The stack at the fault itself is in the context the bug check names: the next step "
                        f"switches to it ({a.fault.command}).")
        if len(frames) > 1:
            text.append(f"The bottom line, {names[-1]}, is the oldest call on this thread's stack.")
        return "\n".join(text)

    return Lesson("The call stack shows how the code got to the crash. Type k.", "k", after)


def _context(w: Walk) -> Lesson | Skip:
    a = w.analysis
    topic = "the registers at the fault, .cxr / .trap"
    if a is None:
        return Skip(topic, f"!analyze cannot analyse this dump: {w.error}")
    rule, kind, command = a.rule, a.fault.kind, a.fault.command
    entry = a.bugcheck
    if kind == DEFAULT or not command:
        for index, what in ((rule.context_record, "CONTEXT record"), (rule.trap_frame, "trap frame")):
            if index is not None and a.params[index]:
                why = a.errors[0].split(";")[0] if a.errors else "it cannot be read"
                return Skip(topic, f"parameter {index + 1} of {a.title} points at a {what}, but this dump "
                                   f"does not hold it ({why}).")
        return Skip(topic, f"{a.title} names no context record or trap frame, and no trap frame of a fault "
                           "was found on the stack: the crash's own registers are the ones that matter, and "
                           "they are already current.")
    given = a.params.index(a.fault.address) if a.fault.address in a.params else None  # the parameter
    if kind == CONTEXT_RECORD and given is not None:
        meaning = f" (the bug check table: '{entry.parameters[given]}')" if entry and entry.parameters[given] else ""
        intro = (f"Parameter {given + 1} of this bug check is the address of a CONTEXT record{meaning}: the "
                 "processor's registers saved when the exception was raised. .cxr ADDRESS makes them the "
                 f"current registers, so r, k and u show the moment of the fault. Type {command}.")
    elif kind == TRAP_FRAME and given is not None:
        intro = (f"Parameter {given + 1} of this bug check is the address of a trap frame: the registers the "
                 f"processor saved when the trap came. .trap ADDRESS makes them the current registers. "
                 f"Type {command}.")
    elif kind == TRAP_FRAME:
        names = (f"names the faulting instruction (parameter {rule.fault_ip + 1}) but not its registers"
                 if rule.fault_ip is not None else "gives no registers")
        intro = (f"This bug check {names}. When the processor faulted, it saved the registers at the faulting "
                 "instruction in a trap frame on the stack: kv shows it as 'TrapFrame @ ...', and .trap "
                 f"ADDRESS makes them the current registers. Type {command}.")
    elif kind == THREAD:
        intro = (f"The stack that matters for this bug check is another thread's, which its parameters "
                 f"name. .thread ADDRESS switches to that thread. Type {command}.")
    else:  # PROCESSOR
        intro = (f"This bug check names processor {a.fault.address}, whose stack is the one that matters: "
                 f"~Ns switches to processor N. Type {command}.")

    def after(ok: bool) -> str:
        if not ok:
            return ("That did not work on this dump: the line above says why. The next steps use the crash's "
                    "own registers.")
        w.switched = True
        if kind in (THREAD, PROCESSOR):
            return "k, r and u now show that thread's (processor's) state; .cxr goes back to the crash's own."
        c = a.culprit
        top = a.symbols[a.start].symbol_name if a.start < len(a.symbols) else None
        if c is not None and c.frame == a.start:
            text = f"These are the registers when {c.module} faulted: {w.pc} is the faulting instruction, in {c.symbol_name}."
        elif c is not None and c.frame is not None:
            text = (f"These are the registers at the faulting instruction, in {top}. !analyze blamed {c.image} "
                    f"({c.symbol_name}), frame {c.frame - a.start} of this context's stack (k shows it).")
        else:
            text = "These are the registers at the faulting instruction" + (f", in {top}." if top else ".")
        text += (" The last line shows that instruction." if w.arm64 else
                 " The last line shows that instruction with the memory it refers to (???????? = not in the "
                 "dump, or not present).")
        if kind == TRAP_FRAME:
            text += " A trap frame keeps only some registers: the NOTE says which cannot be trusted."
        return text

    return Lesson(intro, command, after)


def _code(w: Walk) -> Lesson | Skip:
    a = w.analysis
    topic = "the code at the fault"
    if a is None:
        return Skip(topic, f"!analyze cannot analyse this dump: {w.error}")
    if a.fault.kind != DEFAULT and a.fault_frame is not None:
        ip = a.fault_frame.ip                   # the first frame of the fault's context
    elif a.rule.fault_ip is not None and a.params[a.rule.fault_ip]:
        ip = a.params[a.rule.fault_ip]          # the bug check names the instruction
    else:
        return Skip(topic, f"{a.title} names no faulting instruction: the machine was stopped by a call "
                           "to KeBugCheckEx, not by a fault.")
    if not w.readable(ip):
        module = w.session.symbols.module_at(ip)
        return Skip(topic, f"the code at {ip:#x} is not in this dump"
                           + (f" and no image file of {module.image_name} was found (-i or -y gives its folder)."
                              if module is not None else "."))
    here = w.session.registers.get(w.pc) == ip
    command = f"u @{w.pc} L4" if here else f"u {ip:#x} L4"
    intro = (f"Look at the code at the fault. Type {command} (u = unassemble"
             + (")." if here else f"; {ip:#x} is the faulting instruction: the current registers are not the fault's)."))

    def after(ok: bool) -> str:
        text = "The first instruction is the one that faulted."
        mask = (1 << 64) - 1 if w.session.is64 else 0xFFFFFFFF
        if a.fault_address is not None and a.access and a.fault_address & mask != mask:
            text += (f" It made a {a.access} of {a.fault_address:#x}: find that address, or the register "
                     "holding it, in its operands.")
        return text + f" ub {ip:#x} shows the instructions before it."

    return Lesson(intro, command, after)


STATUS_MEANING = {
    PDB: "'pdb symbols' means kdshell found its symbol file, so functions have names.",
    EXPORTS: "'export symbols' means only the names its file exports: its symbol file was not found.",
    NONE: ("'no symbols' means neither its symbol file nor its image was found, so addresses in it are "
           "module+offset (a symbol path, -y, fixes that)."),
    DEFERRED: "'deferred' means its symbols are loaded when something needs them.",
}


def _module(w: Walk) -> Lesson | Skip:
    a = w.analysis
    topic = "the blamed module, lmvm"
    if a is None:
        return Skip(topic, f"!analyze cannot analyse this dump: {w.error}")
    c = a.culprit or (a.detector if a.verdict == MANUAL else None)
    if c is None:
        blamed = f" ('Probably caused by' names {a.blamed_image})" if a.blamed_image else ""
        return Skip(topic, f"!analyze blames no module here{blamed}.")
    module = w.session.symbols.module(c.module)
    command = f"lmvm {c.module}"
    who = (f"!analyze blamed {c.image}." if c is a.culprit
           else f"No driver is to blame, but the crash request came through {c.image}.")

    def after(ok: bool) -> str:
        text = ("start and end are its address range; Image path, Timestamp and the version lines say which "
                "build of the file it was: compare them with the vendor's latest.")
        if module is not None:
            text += " " + STATUS_MEANING.get(w.session.symbols.status(module), "")
        return text.rstrip()

    return Lesson(f"Which driver is this, and where is it loaded? {who} Type {command} (lm = list modules, "
                  "v = verbose, m = matching this name).", command, after)


def _memory(w: Walk) -> Lesson | Skip:
    topic = "stack memory"
    sp = w.session.registers.get(w.sp)
    if sp is None:
        return Skip(topic, "kdshell reads the stack of x64, ARM64 and x86 dumps only.")
    if not w.readable(sp):
        return Skip(topic, f"the stack memory at {sp:#x} is not in this dump.")
    unit = "q" if w.session.is64 else "d"
    command = f"d{unit} @{w.sp} L8"
    count = "two 8-byte values" if w.session.is64 else "four 4-byte values"

    def after(ok: bool) -> str:
        return (f"Each line: an address and {count}. Values that point into a module's code are return "
                f"addresses; dps @{w.sp} shows them with symbol names.")

    return Lesson(f"Memory can be read directly. Type {command} to see the top of the stack.", command, after)


def _reset(w: Walk) -> Lesson | Skip:
    if not w.switched:
        return Skip("going back to the crash's own registers, .cxr", "they were not changed.")
    return Lesson("Go back to the crash's own context. Type .cxr to reset.", ".cxr",
                  lambda ok: "r, k and u show the crash's own registers again.")


STEPS: list[Callable[[Walk], Lesson | Skip]] = [_bugcheck, _analyze, _stack, _context, _code, _module, _memory, _reset]


def _suggestions(w: Walk) -> str:
    """What to try next, among commands that work on this dump."""
    tries = []
    nt = w.session.symbols.module("nt")
    if nt is not None and w.session.symbols.status(nt) == PDB:
        tries.append("dt nt!_EPROCESS")
    a = w.analysis
    if a is not None and a.fault_address is not None and w.session.dump.triage is None and a.fault_address >= 0x10000:
        tries.append(f"!pte {a.fault_address:#x}")
    return ", ".join(tries + [".help"])


def _same_command(typed: str, expected: str) -> bool:
    """The typed line runs the expected command with the same arguments (case, spacing and the
    spelling of numbers aside: `.trap ffffc20a`00009ba0` is `.trap 0xffffc20a00009ba0`)."""
    def words(line: str) -> list[int | str]:
        out: list[int | str] = []
        for w in line.lower().replace("`", "").split():
            try:
                out.append(int(w, 16))
            except ValueError:
                out.append(w)
        return out

    a, b = words(typed), words(expected)
    if not a or a[0] != b[0] or a[1:] != b[1:]:
        return False
    try:
        return resolve(typed)[0] is resolve(expected)[0]
    except KdError:
        return False


def _say(out: Any, text: str, indent: str = "") -> None:
    for paragraph in text.splitlines():
        lead = indent + paragraph[: len(paragraph) - len(paragraph.lstrip())]
        out.lines(textwrap.wrap(paragraph.strip(), WIDTH, initial_indent=lead, subsequent_indent=lead) or [""])


def run_tutorial(session: Any, read_line: Callable[[str], str]) -> None:
    """Walk the steps, reading the user's lines with `read_line(prompt)` (EOFError ends it)."""
    out = session.out
    out.line("kdshell tutorial: reading a crash dump, step by step. Type 'skip' to skip a step, 'q' to stop.")
    w = Walk(session)
    for number, make in enumerate(STEPS, 1):
        step = make(w)
        out.line("")
        out.line(f"--- Step {number} of {len(STEPS)} ---")
        if isinstance(step, Skip):
            _say(out, f"Skipped ({step.topic}): {step.reason}")
            continue
        _say(out, step.intro)
        out.line(f"(type: {step.command})")
        while True:
            try:
                typed = read_line(session.prompt).strip()
            except EOFError:
                return
            if typed in ("q", "quit"):
                out.line("Tutorial stopped.")
                return
            if typed == "skip":
                break
            if not typed:
                continue
            if not _same_command(typed, step.command):
                out.line(f"Not quite: this step wants '{step.command}'. (Or 'skip'.)")
                continue
            ok = session.run(typed)
            out.line("")
            _say(out, step.after(ok), indent="  ")
            break
    out.line("")
    _say(out, f"That is the walk. Try {_suggestions(w)}; '.help CMD' explains one command and '.explain on' adds "
              "a note after each command's output.")
    out.line("Tutorial done. You are at the prompt with the dump still open.")
