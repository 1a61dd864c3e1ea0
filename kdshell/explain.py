"""`.explain on`: after a command's output, a few lines on how to read it. For newcomers; the
texts are here in one place so they read as one voice."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kdshell.dispatch import Invocation

NOTES = {
    "vertarget": """\
Line 1: the Windows build (19041 = Windows 10 2004/20H2; 22000+ is Windows 11, still printed as
"Windows 10"), MP = several processors, Free = a retail build, then the CPU architecture.
"Kernel base" is where ntoskrnl.exe is loaded; "Debug session time" is when it crashed.""",
    ".bugcheck": """\
The bug check code says what kind of crash this was (look it up with !analyze -v or
'.help !analyze'); the four arguments are its parameters, whose meaning depends on the code:
an address, an IRQL, a pointer to a trap frame or context record, ...""",
    ".dumpdebug": """\
These are the dump file's own header fields. DumpType says which kind of dump it is
(1 complete, 4 small memory dump, 5/6 bitmap complete/kernel); the second block describes how
the pages are stored in the file.""",
    ".enumtag": """\
Drivers may add their own data to a dump while the machine crashes; each blob has a GUID tag
that says whose it is. The hex shows the first bytes of each blob.""",
    "r": """\
The registers of the current context: rip is the instruction that was running, rsp the stack.
The flags line (nv up ei pl zr ...) spells out EFLAGS. The last line disassembles the
instruction at rip, and after '=' shows the memory it reads (???????? = not in the dump).""",
    "db": """\
Each line: the address, 16 bytes in hex (a '-' after the eighth), then the same bytes as text
('.' for unprintable ones). '??' means the dump does not hold that memory.""",
    "dq": """\
Each line: the address, then quadwords (8 bytes each) in hex, with a ` between the high and
low halves. Kernel addresses start with ffff; small numbers are often counts or flags.""",
    "dps": """\
Each line: the address, the pointer stored there, and the symbol it points into, if any.
On a stack, values that point into code (module!function+0x..) are likely return addresses.""",
    "u": """\
Each line: the address, the instruction's bytes, then the instruction. A 'module!function+0x..:'
line marks where a function's code begins. Branch targets are shown by name when known.""",
    "uf": """\
The whole function, block by block: each 'function+0x..:' line starts a block that a jump
leads to. Read it top to bottom, following the jumps by their labels; calls are shown but not
entered (uf /c lists just the calls). The faulting instruction is often in a small block.""",
    ".time": """\
"Debug session time" is when the machine crashed (the clock of the crashed machine, shown in
UTC); "System Uptime" how long Windows had been running: a crash seconds after boot points at
a boot driver, one after days at something slower (a leak, a rare path).""",
    "dv": """\
The parameters and local variables of the selected frame (.frame N chooses it), read from the
driver's private PDB. <value unavailable> means the value lived in a register this frame does
not keep, or the variable is not live at this point of the function: not that it was zero.""",
    "!irp": """\
One block per driver the request passes through, top of the stack last; '>' marks the driver
handling it now. [IRP_MJ_...] is what was asked (read, write, device control...), Args its
parameters (for device control, the third is the IOCTL code).""",
    "lm": """\
One line per loaded module: its start and end address, its name, and the state of its symbols
(deferred = not loaded yet; pdb symbols = full names; export symbols = only exported names).
With t, n or f the status gives way to the image's timestamp, file name or full path: `lm t n`
lists driver dates (a date far in the future or past is a reproducible build's hash, not a
date). Unloaded modules were loaded once and are gone: code running there is a stale pointer.""",
    "ln": """\
The symbol just before the address (with the distance from it) and the next one after it.
'module!function+0x70' means 0x70 bytes into that function.""",
    "k": """\
One line per call frame, newest first. Child-SP is the stack pointer in that frame, RetAddr
where it returns to, Call Site the function (and offset) that was running. Read it bottom-up
to see how the code got to the crash.""",
    "dt": """\
One line per field: its offset in the structure, its name, and its type or value. Pointers
print as addresses; _LIST_ENTRY shows [ Flink - Blink ]; strings are quoted.""",
    "!analyze": """\
The bug check's name and what its four arguments mean come first. "Probably caused by" names the
first driver on the faulting stack (frames of Windows itself are passed over). With -v:
STACK_TEXT is that stack, newest call first; SYMBOL_NAME is the blamed function and offset;
FAILURE_BUCKET_ID groups crashes with the same cause; STACK_COMMAND is what to type to see the
stack yourself. Unknown_Image, Pool_Corruption or a CPU vendor name mean no driver is blamed.""",
    ".exr": """\
An exception record: ExceptionAddress is the instruction that failed, ExceptionCode what went
wrong (c0000005 = access violation). For an access violation Parameter[0] says read (0), write
(1) or execute (8) and Parameter[1] the address; ffffffffffffffff means it was not reported.""",
    "!pte": """\
The four paging levels (PXE, PPE, PDE, PTE) that map the address. 'pfn' is the physical page;
the flags are --DA--KWEV: Dirty, Accessed, Kernel/User, Writable, Executable, Valid.""",
    "!process": """\
One block per process: PROCESS is its EPROCESS address, Cid its process ID and ParentCid its
parent's (both hex), DirBase the page table root its addresses translate through, Image the
program's name. With flags 2/6/7 each THREAD follows: its ID (process.thread), its state (WAIT
says why it waits and on which objects) and, with stacks, what it was doing.""",
    "!thread": """\
THREAD is the ETHREAD address, Cid process.thread IDs, then its state: RUNNING on a processor,
or WAIT (reason, mode). Owning Process is the process it belongs to; Stack Init/Base/Limit bound
its kernel stack. The stack at the end is what the thread was doing, newest call first.""",
    "!running": """\
One line per processor that was not idle: its KPRCB, the thread running on it (with its
priority), the next thread chosen for it and its idle thread. -i shows idle processors too,
-t the stack of each running thread.""",
    "!irql": """\
The interrupt request level the processor was at before the bug check: 0 (LOW/PASSIVE) for
normal code, 2 (DISPATCH) in DPCs and spin locks, where touching paged memory is a bug.""",
}

# Commands that share a note with another spelling.
ALIASES = {"kb": "k", "kv": "k", "kn": "k", "kp": "k", "kc": "k", "kf": "k", "dd": "dq", "dw": "dq",
           "dp": "dq", "dc": "db", "dqs": "dps", "dds": "dps", "ub": "u"}


def note_for(name: str, inv: Invocation | None = None) -> str | None:
    if name == "!analyze" and inv is not None and any(a.lower() in ("-json", "-show") for a in inv.args):
        return None  # JSON must stay JSON; -show explains itself
    return NOTES.get(ALIASES.get(name, name))
