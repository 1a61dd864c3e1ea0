"""`kdshell --tutorial`: a guided walk through the bundled sample crash, for newcomers.

Each step says what to look at and why, waits for the user to type the command (a hint if it is
something else; `skip` moves on, `q` stops), runs it, then explains what came out. About ten
minutes at a reading pace. The steps work on any dump, but the texts speak of the sample: a
DRIVER_IRQL_NOT_LESS_OR_EQUAL (0xD1) crash in mydrv.sys.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from kdshell.dispatch import resolve
from kdshell.errors import KdError


@dataclass
class Step:
    intro: str
    command: Callable[[object], str] | str  # what to type (computed from the session when needed)
    after: str


def _trap_command(session) -> str:
    """`.trap ADDR` of the first trap frame on the crashing stack (as `kv` shows it)."""
    text = session.capture("kv")
    m = re.search(r"TrapFrame @ ([0-9a-f`]+)", text)
    return f".trap {m.group(1)}" if m else ".cxr"


STEPS = [
    Step(
        "Windows stops the whole machine with a blue screen when the kernel finds something it\n"
        "cannot safely recover from: a *bug check*. Its code and four parameters are the first\n"
        "facts of every crash. Type .bugcheck to see them.",
        ".bugcheck",
        "0xD1 is DRIVER_IRQL_NOT_LESS_OR_EQUAL: a driver touched memory it may not touch at the\n"
        "interrupt level (IRQL) it was running at. The first parameter is the address it touched,\n"
        "the second the IRQL (2 = DISPATCH_LEVEL), the last the instruction that did it.",
    ),
    Step(
        "!analyze -v does the first hour of work for you: it explains the bug check, finds the\n"
        "faulting code and names the driver to blame. Type !analyze -v.",
        "!analyze -v",
        "Read it top down: the bug check's name and parameters, then the stack (STACK_TEXT) and\n"
        "the verdict: MODULE_NAME / IMAGE_NAME is the driver blamed, SYMBOL_NAME the function and\n"
        "offset. FAILURE_BUCKET_ID is the label crash-reporting systems group crashes by.",
    ),
    Step(
        "The call stack shows how the code got to the crash. Type k.",
        "k",
        "Newest call first: nt!KeBugCheckEx is the blue screen itself, KiPageFault is the CPU's\n"
        "page fault arriving, and below it the driver code that faulted (mydrv!...), called from\n"
        "mydrv's DriverEntry, called by the kernel loading the driver.",
    ),
    Step(
        "When a trap happened, the registers at the faulting instruction are saved in a trap\n"
        "frame. kv shows it as 'TrapFrame @ ...'; .trap switches to it. Type the command shown.",
        _trap_command,
        "These are the registers when mydrv faulted: rip is the instruction, and the last line\n"
        "shows it with the memory it tried to read (???????? = not in the dump, or not present).",
    ),
    Step(
        "Look at the code around the fault. Type u @rip L4 (u = unassemble).",
        "u @rip L4",
        "The first instruction is the one that faulted: compare its memory operand with the\n"
        "bug check's first parameter. ub @rip shows the instructions before it.",
    ),
    Step(
        "Which driver is this, and where is it loaded? Type lm m mydrv.",
        "lm m mydrv",
        "start and end are the driver's address range; 'pdb symbols' means kdshell found its\n"
        "symbol file, so functions have names. lmvm mydrv shows version and timestamp details.",
    ),
    Step(
        "Memory can be read directly. Type dq @rsp L8 to see the top of the stack.",
        "dq @rsp L8",
        "Each line: an address and two 8-byte values. Values starting fffff800`... that point\n"
        "into code are return addresses; dps @rsp shows them with symbol names.",
    ),
    Step(
        "Go back to the crash's own context. Type .cxr to reset, then you are free: try\n"
        "dt nt!_EPROCESS, !pte @rip or .help.",
        ".cxr",
        "That is the walk. .help lists every command, '.help CMD' explains one, and '.explain on'\n"
        "adds a note after each command's output. Type q to leave.",
    ),
]


def _same_command(typed: str, expected: str) -> bool:
    """The typed line runs the expected command (spacing and case aside)."""
    norm = lambda s: " ".join(s.lower().replace("`", "").split())  # noqa: E731
    if norm(typed) == norm(expected):
        return True
    try:
        return resolve(typed)[0] is resolve(expected)[0] and norm(typed).split()[0] == norm(expected).split()[0]
    except KdError:
        return False


def run_tutorial(session, read_line: Callable[[str], str]) -> None:
    """Walk the steps, reading the user's lines with `read_line(prompt)` (EOFError ends it)."""
    out = session.out
    out.line("kdshell tutorial: reading a crash dump, step by step. Type 'skip' to skip a step, 'q' to stop.")
    for number, step in enumerate(STEPS, 1):
        expected = step.command(session) if callable(step.command) else step.command
        out.line("")
        out.line(f"--- Step {number} of {len(STEPS)} ---")
        out.lines(step.intro.splitlines())
        out.line(f"(type: {expected})")
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
            if not _same_command(typed, expected):
                out.line(f"Not quite: this step wants '{expected}'. (Or 'skip'.)")
                continue
            session.run(typed)
            out.line("")
            out.lines("  " + line for line in step.after.splitlines())
            break
    out.line("")
    out.line("Tutorial done. You are at the prompt with the sample still open.")
