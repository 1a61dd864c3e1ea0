"""WinDbg's text for call stacks and register contexts, from data: the k family's columns, the
register block of `r`/`.cxr`/`.trap`, the instruction line under it, and the missing-page line.
`k`, `.cxr`, `.trap`, `!thread` and `!analyze -v` (its STACK_TEXT, CONTEXT and TRAP_FRAME blocks)
all print through these, so the same frames look the same everywhere.

Column layout (x64), exactly as WinDbg (windbg.md §3, §9; x64-unwind.md §4):
    ` # Child-SP          RetAddr               Call Site`              kn
    `Child-SP          RetAddr               Call Site`                 k
    ` #   Memory  Child-SP ...`                                         kf (size on the caller's row)
    `... RetAddr               : Args to Child <71> : Call Site`        kb / kv (the four home slots)
Guessed frames (kdshell.stack.walk: the leaf rule without code, the scan, and what follows them)
get WinDbg's warning line, once, before the first of them. kv ends each row with how the frame
was found, `[unwind]`, `[scan-unverified]`... (`[scan, guess]` marks a guessed frame), after
WinDbg's `(TrapFrame @ ...)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

from kdshell import arm64_text
from kdshell.disasm import Disassembler, Symbolize
from kdshell.dumpfile.header import MACHINE_ARM64
from kdshell.errors import MemoryNotPresent
from kdshell.expr import Registers
from kdshell.format import ptr
from kdshell.symbols.resolver import DATA

if TYPE_CHECKING:
    from kdshell.memory.virtual import VirtualMemory
    from kdshell.stack.walk import Frame
    from kdshell.symbols.resolver import Symbols

SCAN_WARNING = "WARNING: Stack unwind information not available. Following frames may be wrong."
TRAP_NOTE = ("NOTE: The trap frame does not contain all registers.",
             "Some register values may be zeroed or incorrect.")
RESETTING = "Resetting default scope"
DBGERR004 = 'Type ".hh dbgerr004" for details'
ARGS_WIDTH = 4 * 17 + 3   # four `00000000`00000000` home slots


# -- call sites -----------------------------------------------------------------------------------
def call_site(symbols: Symbols, frame: Frame, is64: bool, *, clean: bool = False, params: str = "") -> str:
    """`module!function+0xoff` (no offset when 0), `module+0xoff` without a symbol, the bare
    address outside every module. The symbol is looked up at frame.lookup_address (a return
    address minus one: the call may be a function's last instruction); the offset printed is
    from the real address."""
    ip = frame.ip
    found = symbols.label(frame.lookup_address)  # the one naming rule (ln, u, r, dps)
    if found is None:
        return "0x" + ptr(ip, is64)
    module, sym = found
    if sym is None or sym.kind == DATA:  # a data name (KDBG variables of nt) is no call site
        return f"{module.name}+{ip - module.base:#x}"
    if clean:
        return f"{module.name}!{sym.name}"
    off = ip - module.base - sym.rva
    return f"{module.name}!{sym.name}{params}" + (f"+{off:#x}" if off else "")


# -- k --------------------------------------------------------------------------------------------
@dataclass
class KOptions:
    mode: str = ""          # "" | "b" | "v" | "p" | "P"
    clean: bool = False     # c
    numbers: bool = False   # n
    sizes: bool = False     # f
    count: int | None = None
    start: tuple[int, ...] = ()   # `= BP [SP IP]`


def frame_lines(frames: Iterable[Frame], o: KOptions, *, symbols: Symbols, memory: VirtualMemory | None, is64: bool,
                header: bool = True) -> list[str]:
    """WinDbg's k columns for `frames` (x64 or x86)."""
    lines: list[str] = []
    if header:
        lines.append(_header(o, is64))
    warned = False
    prev: Frame | None = None
    for f in frames:
        if f.guess and not warned:
            lines.append(SCAN_WARNING)
            warned = True
        lines.append(_row(symbols, memory, f, prev, o, is64))
        prev = f
    return lines


def _header(o: KOptions, is64: bool) -> str:
    h = " # " if o.numbers else ""
    if o.sizes:
        h += "  Memory  "
    if o.clean:
        return h + "Call Site"
    if is64:
        h += "Child-SP          RetAddr               "
        if o.mode in ("b", "v"):
            h += ": " + "Args to Child".ljust(ARGS_WIDTH) + " : "
        return h + "Call Site"
    h += "ChildEBP RetAddr  "
    if o.mode in ("b", "v"):
        h += "Args to Child              "
    return h


def _slot(value: int | None, is64: bool) -> str:
    if value is None:
        return "????????`????????" if is64 else "????????"
    return ptr(value, is64)


def _row(symbols: Symbols, memory: VirtualMemory | None, f: Frame, prev: Frame | None, o: KOptions,
         is64: bool) -> str:
    s = f"{f.number:02x} " if o.numbers else ""
    if o.sizes:
        size = prev.frame_size if prev is not None else None
        s += f"{size:>9x} " if size else " " * 10
    params = ""
    if o.mode in ("p", "P") and not o.clean:
        params = parameters_text(symbols, memory, f, is64, full=o.mode == "P")
    site = call_site(symbols, f, is64, clean=o.clean, params=params)
    if o.clean:
        return s + site
    ret = f.ret if f.ret is not None else 0
    if is64:
        s += f"{ptr(f.sp)} {ptr(ret)}     "
        if o.mode in ("b", "v"):
            s += ": " + " ".join(_slot(v, True) for v in f.home) + " : "
    else:
        s += f"{(f.frame_pointer or 0) & 0xFFFFFFFF:08x} {ret & 0xFFFFFFFF:08x} "
        if o.mode in ("b", "v"):
            s += " ".join(_slot(v, False) for v in f.home[:3]) + " "
    s += site
    if o.mode == "v":
        if f.trap_frame is not None:
            s += f" (TrapFrame @ {ptr(f.trap_frame, is64)})"
        s += f" [{f.how}, guess]" if f.guess else f" [{f.how}]"
    return s


def parameters_text(symbols: Symbols, memory: VirtualMemory | None, frame: Frame, is64: bool,
                    full: bool = False) -> str:
    """kp/kP: `(type name = value, ...)` from the module's private symbols; "" when the PDB has
    no type for the function (a public PDB, exports), as WinDbg prints then."""
    from kdshell.stack.params import frame_parameters

    module = symbols.module_at(frame.lookup_address)
    table = symbols.table(module) if module is not None else None
    pdb = getattr(table, "pdb", None)
    if pdb is None or memory is None or module is None:
        return ""
    found = frame_parameters(pdb, module.base, frame, is64, memory.read)
    if found is None:
        return ""
    if not found:
        return "(void)"
    parts = [f"{p.type_name} {p.name} = {p.value_text}" for p in found]
    if full:
        return "(\n\t\t\t" + ", \n\t\t\t".join(parts) + ")"
    return "(" + ", ".join(parts) + ")"


# -- registers ------------------------------------------------------------------------------------
_X64_ROWS = (("rax", "rbx", "rcx"), ("rdx", "rsi", "rdi"), ("rip", "rsp", "rbp"), ("r8", "r9", "r10"),
             ("r11", "r12", "r13"), ("r14", "r15"))
_FLAGS = ((11, "ov", "nv"), (10, "dn", "up"), (9, "ei", "di"), (7, "ng", "pl"), (6, "zr", "nz"),
          (4, "ac", "na"), (2, "pe", "po"), (0, "cy", "nc"))


def flags_text(efl: int) -> str:
    """`iopl=0         nv up ei pl zr na po nc`"""
    return f"iopl={(efl >> 12) & 3:<10}" + " ".join(on if efl >> bit & 1 else off for bit, on, off in _FLAGS)


def register_lines(regs: dict[str, int], is64: bool) -> list[str]:
    """`r`'s block: general registers, flags, then the segment line."""
    seg = "  ".join(f"{s}={regs.get(s, 0):04x}" for s in ("cs", "ss", "ds", "es", "fs", "gs"))
    seg += f"             efl={regs.get('efl', 0):08x}"
    if is64:
        lines = [" ".join(f"{n:>3}={regs.get(n, 0):016x}" for n in row) for row in _X64_ROWS]
        return lines + [flags_text(regs.get("efl", 0)), seg]
    first = " ".join(f"{n}={regs.get(n, 0):08x}" for n in ("eax", "ebx", "ecx", "edx", "esi", "edi"))
    second = " ".join(f"{n}={regs.get(n, 0):08x}" for n in ("eip", "esp", "ebp")) + " " + flags_text(regs.get("efl", 0))
    return [first, second, seg]


def instruction_lines(memory: VirtualMemory | None, regs: dict[str, int], is64: bool,
                      symbolize: Symbolize) -> tuple[list[str], list[MemoryNotPresent]]:
    """The label and disassembly of the instruction at the IP, with its memory operand's value;
    and the pages the decoder missed (for `missing_page_lines`)."""
    if memory is None:
        return [], []
    dis = Disassembler(is64, symbolize)
    ip = Registers(regs, is64).ip
    line = dis.decode(memory, ip, 1)[0]
    out = []
    label = dis.label(ip, True)
    if label:
        out.append(label)
    text = dis.format(line)
    ea = dis.effective_address(line, regs)
    if ea is not None:
        seg, address, size = ea
        try:
            value = f"{int.from_bytes(memory.read(address, size), 'little'):0{size * 2}x}"
        except MemoryNotPresent:
            value = "?" * (size * 2)
        selector = f"{regs.get(seg, 0):04x}:" if seg == "ss" or not is64 else ""
        text += f" {seg}:{selector}{ptr(address, is64)}={value}"
    out.append(text)
    return out, list(dis.errors)


def context_lines(memory: VirtualMemory | None, regs: dict[str, int], is64: bool, symbolize: Symbolize, *,
                  trap: bool = False, machine: int | None = None) -> tuple[list[str], list[MemoryNotPresent]]:
    """What `.cxr ADDR` (trap=False) or `.trap ADDR` prints after switching to that context
    (ARM64's block, as `r` prints it, when `machine` is ARM64)."""
    if machine == MACHINE_ARM64:
        shown_a64, errors_a64 = arm64_text.context_lines(memory, regs, symbolize)
        # an ARM64 trap frame keeps x0-x18, fp, lr, sp, pc and PSTATE only
        return (list(TRAP_NOTE) if trap else []) + shown_a64, errors_a64
    lines: list[str] = []
    if trap and is64:
        # an x64 trap frame's registers and flags; WinDbg shows no segment line for it
        lines += list(TRAP_NOTE) + register_lines(regs, is64)[:-1]
    else:
        lines += register_lines(regs, is64)
    shown, errors = instruction_lines(memory, regs, is64, symbolize)
    return lines + shown, errors


def missing_page_lines(errors: Sequence[MemoryNotPresent]) -> list[str]:
    """WinDbg's message for each page the dump left out, once per page."""
    seen = set()
    out = []
    for exc in errors:
        pfn = getattr(exc, "pfn", None)
        if pfn is None and getattr(exc, "physical", False):
            pfn = exc.address >> 12
        if pfn is not None and pfn not in seen:
            seen.add(pfn)
            out.append(f"Page {pfn:x} not present in the dump file. {DBGERR004}")
    return out
