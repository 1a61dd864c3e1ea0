"""The plain-language part of !analyze for newcomers: what happened, and what to look at next.

    explain(analysis, have=lambda name: name in REGISTRY) -> Explanation(what=[...], next=[(command, why), ...])

Shown after the facts in teaching mode (`.explain on`, or `!analyze -teach`), and in the JSON
form as "explanation". The texts are written for someone who has never read a crash dump: no
jargon without a word on what it means. `have(name)` says whether kdshell has a command, so only
commands that exist are suggested.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from kdshell.analysis.rules import (BAD_IP, CRITICAL_PROCESS, DRIVER, HARDWARE, INCONCLUSIVE, MANUAL, MEMORY,
                                    OS, PASS, POOL, frame_kind, status_text)

if TYPE_CHECKING:
    from kdshell.analysis.analyze import Analysis, FrameSymbol

# nt's bug-check path: the entry points a caller calls and the routines they run on the way to the
# stop (KiBugCheckDispatch, KiBugCheckDebugBreak, ...).
BUGCHECK_PATH = re.compile(r"KeBugCheck(Ex|2)?|KiBugCheck\w*", re.IGNORECASE)

# What kind of mistake each family of bug checks is, in a few plain sentences.
KIND_OF_MISTAKE = {
    "irql": ("It touched memory it was not allowed to touch at that moment. The processor was running at a "
             "raised interrupt level (IRQL {irql}), where Windows cannot stop to bring a page in from disk, "
             "so the address must be valid and resident. Usually the pointer was bad (NULL, freed, never "
             "initialised) or pointed at pageable memory."),
    "page_fault": ("It read or wrote an address where no valid memory was: memory already freed, a pointer "
                   "that was never valid, or a read past the end of an allocation."),
    "exception": ("The processor raised an exception ({status}) in kernel code and nothing handled it. "
                  "For an access violation this means a bad pointer was used."),
    "security": ("Kernel code found its own data damaged (a corrupted list entry, an overwritten stack "
                 "cookie, ...) and stopped the machine on purpose before the damage could spread. The code "
                 "that noticed is often not the code that did the damage."),
    "verifier": ("Driver Verifier, a checking tool someone turned on for this driver, caught it breaking a "
                 "rule (parameter 1 says which). The driver is at fault by definition."),
    "power": ("A device did not finish a power change (sleep, wake, shutdown) in time: a driver held the "
              "request and never completed it."),
    "watchdog": ("A processor spent too long without letting the system run normally (a DPC or interrupt "
                 "routine that loops or waits too long, or a processor that stopped answering)."),
    "trap": ("The processor hit a trap the kernel could not handle (parameter 1 is the trap number; 8, a "
             "double fault, is usually a kernel stack overflow)."),
    "pool": ("A block of kernel heap ('pool') was found damaged. The code that found it is usually the "
             "victim: some other code wrote past its own block or used a block after freeing it."),
    "memory": ("The memory manager found its own bookkeeping inconsistent. That points at faulty RAM, or "
               "at a driver that wrote over memory it did not own."),
    "hardware": ("The hardware itself reported an error (a machine check from the processor, a PCIe or "
                 "platform error). No driver is to blame; look at the hardware, its firmware and cooling."),
    "manual": ("Nobody made a mistake: the crash was requested on purpose (the keyboard's Right Ctrl + "
               "Scroll Lock twice, a power button held down, or a tool) to capture this dump."),
    "critical_process": ("A process Windows cannot run without ({process}) ended, so Windows stopped. Ask "
                         "why that process exited: its own crash, or something killed it."),
    "other": "The bug check's name and parameters above say what the kernel objected to.",
}

FAMILIES = {
    0x0A: "irql", 0xD1: "irql", 0x50: "page_fault", 0xCD: "page_fault", 0xD5: "page_fault", 0xD6: "page_fault",
    0xBE: "page_fault", 0xFC: "page_fault", 0x1E: "exception", 0x7E: "exception", 0x8E: "exception",
    0x3B: "exception", 0x139: "security", 0xC4: "verifier", 0xC9: "verifier", 0x9F: "power", 0x133: "watchdog",
    0x101: "watchdog", 0x7F: "trap",
}


@dataclass
class Explanation:
    what: list[str] = field(default_factory=list)             # paragraphs
    next: list[tuple[str, str]] = field(default_factory=list)  # (command, why)


def family(a: Analysis) -> str:
    if a.verdict == POOL:
        return "pool"
    if a.verdict == MEMORY:
        return "memory"
    if a.verdict == HARDWARE:
        return "hardware"
    if a.verdict == MANUAL:
        return "manual"
    if a.verdict == CRITICAL_PROCESS:
        return "critical_process"
    return FAMILIES.get(a.base_code, "other")


def _in_bugcheck_path(symbol: FrameSymbol) -> bool:
    return symbol.module_name == "nt" and symbol.function is not None and bool(BUGCHECK_PATH.fullmatch(symbol.function))


def bugcheck_caller(a: Analysis) -> int | None:
    """The index in a.stack of the driver that called the bug check itself, or None: the faulting
    frame is in nt's bug-check path (by name, or, without nt's symbols, nt code entered with rcx =
    the bug check code, the first argument of KeBugCheckEx), and the first frame past that path
    is a driver's."""
    if not a.is64 or a.start >= len(a.stack) or len(a.symbols) != len(a.stack):
        return None
    top, frame = a.symbols[a.start], a.stack[a.start]
    entered = top.module_name == "nt" and top.function is None and a.start == 0 \
        and frame.registers.get("rcx", -1) & 0xFFFFFFFF == a.code & 0xFFFFFFFF
    if not (_in_bugcheck_path(top) or entered):
        return None
    for i in range(a.start + 1, len(a.stack)):
        s = a.symbols[i]
        if _in_bugcheck_path(s):
            continue
        if s.module is not None and frame_kind(s.module.name, s.function) is None:
            return i
        return None
    return None


def _called_bugcheck(a: Analysis, index: int) -> str:
    caller, top = a.symbols[index], a.symbols[a.start]
    assert caller.module is not None
    image = caller.module.image_name
    routine = f"nt!{top.function}" if top.function else top.symbol_name
    text = (f"{image} called the bug check itself (from {caller.symbol_name}): the processor stopped in "
            f"Windows' bug-check routine ({routine}), not on a faulting instruction.")
    if a.verdict != MANUAL:
        text += (f" A driver does that when it finds something wrong that it cannot go on with; the bug check "
                 f"code and its parameters say what {image} found, so start with {image}.")
    if a.stack[index].guess:
        text += " (Its frame was found by scanning the stack, so this is a lead rather than a certainty.)"
    return text


def _who(a: Analysis) -> str:
    c = a.culprit
    if a.verdict == BAD_IP:
        caller = f" The code that jumped there was probably {a.detector.symbol_name} ({a.detector.image})." \
            if a.detector else ""
        ip = f"{a.fault_frame.ip:#x} " if a.fault_frame is not None else ""
        return (f"The processor was executing at an address ({ip}outside every loaded module): code jumped "
                f"through a bad function pointer or a corrupted return address.{caller}")
    if c is None:
        if a.verdict == INCONCLUSIVE:
            return "kdshell could not find a frame to blame: the stack could not be read far enough."
        return ""
    where = f"in the function {c.function}" if c.function else f"at offset {c.module_offset:#x} (no symbols to name the function)"
    top = a.symbols[a.start] if a.start < len(a.symbols) else None
    if c.frame is not None and c.frame > a.start and top is not None and top.module is not None:
        text = (f"The faulting instruction is in {top.symbol_name}, a part of Windows. The first driver on the "
                f"stack below it is {c.image}, {where}: it called into Windows, most likely with a bad argument "
                "(a NULL or stale pointer, a wrong length).")
    else:
        text = f"The code that was running when it went wrong is {c.image}, {where}."
    if c.kind in (OS, PASS):
        text += (" That is a part of Windows; no third-party driver was on the faulting stack, so the cause may "
                 "still be a driver that passed it bad data earlier.")
    elif c.company and "microsoft" in c.company.lower():
        text += (f" It ships with Windows ({c.company}): bugs there are rarer than in third-party drivers; "
                 "check for updates and for the firmware/hardware it drives.")
    if c.guessed:
        text += " (Its frame was found by scanning the stack, so this is a lead rather than a certainty.)"
    return text


def explain(a: Analysis, have: Callable[[str], bool] = lambda name: True) -> Explanation:
    """What happened and what to run next, from an Analysis."""
    e = Explanation()
    fam = family(a)
    status = ""
    if a.exception is not None:
        status = f"{a.exception.code:#x}" + (f", {status_text(a.exception.code).lower()}"
                                             if status_text(a.exception.code) else "")
    mistake = KIND_OF_MISTAKE[fam].format(irql=a.params[1] if fam == "irql" else "", status=status,
                                          process=a.critical_process or "a critical process")
    e.what.append(f"Windows stopped with bug check {a.code:#x}, {a.name}. {mistake}")
    if a.fault_address is not None and a.access:
        mask = (1 << 64) - 1 if a.is64 else 0xFFFFFFFF
        if a.fault_address & mask == mask:
            e.what.append(f"The faulting access was a {a.access}; the address {a.fault_address:#x} means the processor "
                          "did not report one: a general protection fault (a non-canonical address, or memory the "
                          "instruction may not touch). The registers in the context show the address it used.")
        else:
            e.what.append(f"The faulting access was a {a.access} of address {a.fault_address:#x}"
                          + (" (a NULL pointer, or a small offset from one)." if a.fault_address < 0x10000 else "."))
    if a.base_code == 0x3B and a.process_name:
        e.what.append(f"It happened while the kernel was serving a system call made by {a.process_name}: "
                      "the program only asked; the kernel code that served it is what failed.")
    caller = bugcheck_caller(a)
    who = _called_bugcheck(a, caller) if caller is not None else _who(a)
    if who:
        e.what.append(who)
    if a.verdict == MANUAL and a.detector is not None and caller is None:
        e.what.append(f"The request came through {a.detector.image} ({a.detector.symbol_name}).")
    if a.verdict in (POOL, MEMORY) and a.detector is not None:
        e.what.append(f"It was detected in {a.detector.symbol_name}; that code is the messenger, not the culprit.")
    mca = a.whea.first("mca") if a.whea is not None else None
    if mca is not None and mca.mca is not None:
        m = mca.mca
        e.what.append(f"The error record says which part failed: a {m.error.kind} error ({m.error.mnemonic}: "
                      f"{m.error.words}) reported by bank {m.bank} of processor {m.processor}. The same part failing "
                      "again points at that processor (or its cooling and power); different parts each time point "
                      "at the platform (firmware, power supply, overclocking).")

    # what to run next
    if a.stack_command and a.stack_command != "kb":
        e.next.append((a.stack_command.replace(" ; ", "; "),
                       "switch to the faulting context and show its stack (read it bottom-up)"))
    elif a.stack:
        e.next.append(("kb", "show the crashing stack with each frame's first arguments"))
        if a.trap_frame is not None:
            e.next.append((f".trap {a.trap_frame:#x}", "the registers at the moment of the fault: which one "
                                                       "held the bad address"))
    if a.exception is not None and a.exception.address is not None and have(".exr"):
        e.next.append((f".exr {a.exception.address:#x}", "the exception: its code, address and parameters"))
    c = a.culprit or (a.detector if a.verdict == BAD_IP else None)
    if c is not None and c.frame is not None:
        if have("lmvm"):
            e.next.append((f"lmvm {c.module}", "the driver's file version, date and path: is it current?"))
        if have("ub") and c.ip is not None:
            called = caller is not None and c.frame == caller
            e.next.append((f"ub {c.ip:#x}", "the instructions leading up to its call of the bug check: where the "
                                            "code and parameters come from" if called
                           else "the instructions leading up to the fault"))
        if not c.function:
            e.next.append((".sympath srv*c:\\symbols*https://msdl.microsoft.com/download/symbols; .reload",
                           "get symbols so functions have names (or start kdshell with -y PATH)"))
    if a.fault_address is not None and a.fault_address >= 0x10000 and have("!pte") and a.dump_kind != "small memory dump":
        e.next.append((f"!pte {a.fault_address:#x}", "whether the address was mapped, and how"))
    if fam == "verifier" and have("!verifier"):
        e.next.append(("!verifier", "Driver Verifier's flags (which checks were on) and the drivers it verified"))
    if fam == "hardware" and have("!errrec"):
        e.next.append((f"!errrec {a.params[1]:#x}", "the hardware error record"))
        if a.base_code == 0x124 and have("!whea"):
            e.next.append(("!whea", "the error source and a one-line summary of each section of the record"))
    if fam == "pool":
        e.next.append(("verifier /standard /driver NAME.sys (on the machine)",
                       "turn on special pool for a suspect driver, so the next crash catches the writer"))
    if a.verdict == DRIVER and c is not None and c.kind is None:
        if c.company and "microsoft" in c.company.lower():
            e.next.append(("(on the machine)", f"install Windows updates ({c.image} ships with Windows), and "
                                               "firmware updates for the hardware it drives"))
        else:
            e.next.append(("(on the machine)", f"update or remove {c.image}: look for a newer version from "
                                               "its vendor"))
    return e
