"""`r` on ARM64 the way WinDbg prints it (x64 and x86's are in kdshell/stack/text.py):

     x0=0000000000000078   x1=000002037b0069e0   x2=0000000000000010   x3=000000293a8ff9f0
     ...
     x8=0000000000000072   x9=0000000000000000  x10=0000000000000000  x11=ffffffffff817aa9
    ...
    x28=0000000000000000   fp=000000293a8ffc10   lr=00007ffea80f7388   sp=000000293a8ff9e0
     pc=00007ffea80e30f4  psr=60000000 -ZC- EL0
    ntdll!DbgBreakPoint:
    00007ffe`a80e30f4 d43e0000 brk         #0xF000

(public WinDbg output of a user-mode ARM64 target). Four registers a row, each name right-aligned
in three columns, two spaces between; the last row is pc and psr: the CPSR's 8 hex digits, its
N Z C V flags as letters (`-` when clear) and the exception level of CPSR.M[3:2]. Then the
symbol and the instruction at pc, as `u` shows it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.disasm import Symbolize
from kdshell.disasm_arm64 import Arm64Disassembler

if TYPE_CHECKING:
    from kdshell.errors import MemoryNotPresent
    from kdshell.memory.virtual import VirtualMemory

_GPRS = tuple(f"x{i}" for i in range(29)) + ("fp", "lr", "sp")
_FLAGS = ((31, "N"), (30, "Z"), (29, "C"), (28, "V"))


def psr_text(cpsr: int) -> str:
    """`psr=60000000 -ZC- EL0`"""
    flags = "".join(letter if cpsr >> bit & 1 else "-" for bit, letter in _FLAGS)
    return f"psr={cpsr & 0xFFFFFFFF:08x} {flags} EL{(cpsr >> 2) & 3}"


def register_lines(regs: dict[str, int]) -> list[str]:
    """The general registers, four a row, then pc and psr."""
    cells = [f"{name:>3}={regs.get(name, 0):016x}" for name in _GPRS]
    lines = ["  ".join(cells[i : i + 4]) for i in range(0, len(cells), 4)]
    return lines + [f" pc={regs.get('pc', 0):016x}  {psr_text(regs.get('cpsr', 0))}"]


def context_lines(memory: VirtualMemory | None, regs: dict[str, int],
                  symbolize: Symbolize) -> tuple[list[str], list[MemoryNotPresent]]:
    """`r`'s whole output: the registers, the label and the instruction at pc; and the pages
    the decoder missed."""
    lines = register_lines(regs)
    if memory is None:
        return lines, []
    dis = Arm64Disassembler(symbolize)
    pc = regs.get("pc", 0)
    line = dis.decode(memory, pc, 1)[0]
    label = dis.label(pc, True)
    return lines + ([label] if label else []) + [dis.format(line)], list(dis.errors)
