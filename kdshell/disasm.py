"""Disassembly the way WinDbg shows it: capstone decodes, this module speaks MASM.

    fffff805`4d7f5b00 48894c2408      mov     qword ptr [rsp+8],rcx
    fffff805`4d7f5b12 e8e608e9ff      call    nt!KiBugCheckDebugBreak (fffff805`4d6863fd)
    fffff800`50fd1544 ??              ???

Capstone's Intel text is rewritten to WinDbg's: no spaces inside brackets or after commas,
`0A0h`-style hex (`8` stays decimal below 10), negative immediates as the operand-sized unsigned
value, RIP-relative operands and branch targets as `symbol (address)` (or just the address
when the symbol hook knows nothing), `movabs` as `mov`, `int3` as `int 3`, string instructions
without their implicit register (`rep stos dword ptr [rdi]`).

Symbols come from a hook, `symbolize(address) -> (name, displacement) | None`; the symbols
layer provides it (Session.symbolize).

One interface for every machine: `for_machine(machine, symbolize)` gives this module's x86/x64
`Disassembler` or ARM64's (kdshell/disasm_arm64.py); both decode, step back (`ub`), follow a
function's flow (`uf`), label and format lines the same way.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from kdshell.errors import MemoryNotPresent
    from kdshell.memory.virtual import VirtualMemory

# capstone is imported by the first Disassembler, not at start-up: it costs 20-40 ms of import
# time and only u/ub/r need it (bench/run_all.py, "start").
capstone: Any = None  # the capstone module (no type stubs)
cx86: Any = None  # capstone.x86


def _load_capstone() -> None:
    global capstone, cx86
    if capstone is None:
        import capstone as cs
        from capstone import x86

        capstone, cx86 = cs, x86

from kdshell.dumpfile.header import MACHINE_ARM64, MACHINE_I386
from kdshell.format import ptr

Symbolize = Callable[[int], "tuple[str, int] | None"]
MAX_INSN = 15
_HEX = re.compile(r"(-?)0x([0-9a-f]+)|\b(\d+)\b")
_STRING_OPS = {"stos", "lods", "movs", "scas", "cmps", "ins", "outs"}
_IMPLICIT = {"al", "ax", "eax", "rax", "dx"}


def masm_hex(value: int) -> str:
    """`8`, `28h`, `0A0h`, `0FFFFFFFFh`: WinDbg's numbers in disassembly."""
    if value < 10:
        return str(value)
    text = f"{value:X}"
    return ("0" + text if text[0] in "ABCDEF" else text) + "h"


def _nothing(_address: int) -> None:
    return None


@dataclass
class Line:
    address: int
    size: int
    data: bytes | None  # None: the byte could not be read
    mnemonic: str
    operands: str
    insn: Any = None  # the capstone instruction (CsInsn)

    @property
    def end(self) -> int:
        return self.address + self.size


_STOPS = {"int3", "ud2", "hlt"}  # flow does not continue past these


@dataclass
class Flow:
    """A function's code as flow analysis found it: instructions by address, the addresses
    that start a block, and whether every path was followed to its end."""

    lines: dict[int, Line]
    leaders: set[int]
    complete: bool


# How an instruction moves control (BaseDisassembler.branch).
STOP, JUMP, BRANCH = "stop", "jump", "branch"


class BaseDisassembler:
    """What every machine's disassembler shares: the symbol hook, labels and listings."""

    def __init__(self, is64: bool, symbolize: Symbolize | None):
        self.is64 = is64
        self.symbolize = symbolize or _nothing
        self.mask = 0xFFFF_FFFF_FFFF_FFFF if is64 else 0xFFFFFFFF
        self.errors: list[MemoryNotPresent] = []  # MemoryNotPresent met by the last decode/backward

    def decode(self, memory: VirtualMemory, address: int, count: int | None = None,
               end: int | None = None) -> list[Line]:
        raise NotImplementedError

    def backward(self, memory: VirtualMemory, address: int, count: int = 8) -> list[Line]:
        raise NotImplementedError

    def flow(self, memory: VirtualMemory, entry: int, inside: Callable[[int], bool], limit: int = 20000) -> Flow:
        """The instructions reachable from `entry` through jumps and fall-through (calls are
        stepped over), staying where `inside(address)` holds: what `uf` shows. A block ends at a
        return, an unconditional or indirect jump, a trap instruction or an unreadable byte."""
        lines: dict[int, Line] = {}
        leaders = {entry}
        todo = [entry]
        complete = True
        while todo:
            at = todo.pop()
            while at not in lines:
                if len(lines) >= limit:
                    return Flow(lines, leaders, False)
                line = self.decode(memory, at, 1)[0]
                lines[at] = line
                insn = line.insn
                if insn is None:  # unreadable or undecodable: the block stops here
                    complete = False
                    break
                kind, target = self.branch(insn)
                if kind == STOP:
                    break
                if kind in (JUMP, BRANCH):
                    if target is not None and inside(target):
                        leaders.add(target)
                        todo.append(target)
                    if kind == JUMP:
                        break
                    leaders.add(line.end)
                at = line.end
                if not inside(at):
                    break
        self.flow_done(lines)
        return Flow(lines, leaders, complete)

    def branch(self, insn: Any) -> tuple[str | None, int | None]:
        """How an instruction moves control, for `flow`: (STOP, None) for a return or trap,
        (JUMP, target) for an unconditional jump, (BRANCH, target) for a conditional one (target
        None when indirect), (None, None) for anything else (calls included)."""
        raise NotImplementedError

    def flow_done(self, lines: dict[int, Line]) -> None:
        """A machine's last pass over a flow's lines (ARM64 pairs adrp with what completes it)."""

    def format(self, line: Line) -> str:
        raise NotImplementedError

    def is_call(self, line: Line) -> bool:
        """A call instruction (what `uf /c` lists)."""
        raise NotImplementedError

    def effective_address(self, line: Line, registers: dict[str, int]) -> tuple[str, int, int] | None:
        return None

    def target_text(self, address: int) -> str:
        """`nt!KeBugCheckEx (fffff805`4d7f5b00)` or the bare address."""
        address &= self.mask
        sym = self.symbolize(address)
        if sym is None:
            return ptr(address, self.is64)
        return f"{symbol_text(*sym)} ({ptr(address, self.is64)})"

    def label(self, address: int, first: bool) -> str | None:
        """`nt!KeBugCheckEx:` where a symbol starts (and on the first line, with its offset)."""
        sym = self.symbolize(address & self.mask)
        if sym is None or (not first and sym[1] != 0):
            return None
        return symbol_text(*sym) + ":"

    def listing(self, lines: list[Line]) -> list[str]:
        """Lines with symbol labels, as `u` prints them."""
        out = []
        for i, line in enumerate(lines):
            label = self.label(line.address, i == 0)
            if label:
                out.append(label)
            out.append(self.format(line))
        return out


def for_machine(machine: int, symbolize: Symbolize | None = None) -> BaseDisassembler:
    """The disassembler of a dump's machine (its header's MachineImageType)."""
    if machine == MACHINE_ARM64:
        from kdshell.disasm_arm64 import Arm64Disassembler  # it imports this module

        return Arm64Disassembler(symbolize)
    return Disassembler(machine != MACHINE_I386, symbolize)


class Disassembler(BaseDisassembler):
    """x86 and x64, in WinDbg's MASM syntax."""

    def __init__(self, is64: bool = True, symbolize: Symbolize | None = None):
        super().__init__(is64, symbolize)
        _load_capstone()
        self.cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if is64 else capstone.CS_MODE_32)
        self.cs.detail = True

    # -- decoding ---------------------------------------------------------------------------
    def decode(self, memory: VirtualMemory, address: int, count: int | None = None,
               end: int | None = None) -> list[Line]:
        """`count` instructions from `address` (or until `end`), reading through `memory`.

        Unreadable bytes give `??  ???` lines one byte apart, as WinDbg prints them.
        """
        lines: list[Line] = []
        if end is None:
            count = 8 if count is None else count
            want = count * MAX_INSN
        else:
            want = (end - address) + MAX_INSN
        data, valid, self.errors = memory.read_partial(address, max(want, MAX_INSN))
        pos = 0
        while (count is None or len(lines) < count) and (end is None or address + pos < end):
            if pos >= len(data):
                more, more_valid, errors = memory.read_partial(address + pos, 0x100)
                self.errors += errors
                data, valid = data[pos:] + more, valid[pos:] + more_valid
                address, pos = address + pos, 0
            at = (address + pos) & self.mask
            if not valid[pos]:
                lines.append(Line(at, 1, None, "???", ""))
                pos += 1
                continue
            stop = pos
            while stop < len(data) and stop - pos < MAX_INSN and valid[stop]:
                stop += 1
            line = self._one(data[pos:stop], at)
            lines.append(line)
            pos += line.size
        return lines

    def _one(self, code: bytes, address: int) -> Line:
        for insn in self.cs.disasm(code, address, 1):
            mnemonic, operands = self._masm(insn)
            return Line(address, insn.size, bytes(insn.bytes), mnemonic, operands, insn)
        return Line(address, 1, code[:1], "???", "")

    def backward(self, memory: VirtualMemory, address: int, count: int = 8) -> list[Line]:
        """The `count` instructions that end at `address` (ub). x86 cannot be decoded backwards,
        so like WinDbg this tries start points before it and keeps the one whose instruction
        stream lands exactly on `address`, preferring the earliest (most resynchronised)."""
        span = count * MAX_INSN
        start = max(0, address - span)
        data, valid, self.errors = memory.read_partial(start, address - start)
        best: list[Line] | None = None
        memo: dict[int, Line | None] = {}  # each start offset is decoded once, whatever the path
        for back in range(address - start, 0, -1):
            lines = self._stream(data, valid, start, address - back, address, memo)
            if lines is not None and len(lines) >= count:
                best = lines
                break
            if lines is not None and (best is None or len(lines) > len(best)):
                best = lines
        if best is None:
            return [Line(address - count + i, 1, None, "???", "") for i in range(count)]
        return best[-count:]

    def _stream(self, data: bytes, valid: bytearray, base: int, begin: int, end: int,
                memo: dict[int, Line | None]) -> list[Line] | None:
        lines = []
        at = begin
        while at < end:
            if at not in memo:
                memo[at] = self._decode_at(data, valid, base, at)
            line = memo[at]
            if line is None:
                return None
            lines.append(line)
            at += line.size
        return lines if at == end else None

    def _decode_at(self, data: bytes, valid: bytearray, base: int, at: int) -> Line | None:
        off = at - base
        if not valid[off]:
            return None
        stop = off
        while stop < len(data) and stop - off < MAX_INSN and valid[stop]:
            stop += 1
        line = self._one(data[off:stop], at)
        return None if line.mnemonic == "???" else line

    def branch(self, insn: Any) -> tuple[str | None, int | None]:
        groups = insn.groups
        if capstone.CS_GRP_RET in groups or capstone.CS_GRP_IRET in groups or insn.mnemonic in _STOPS:
            return STOP, None
        if capstone.CS_GRP_JUMP not in groups:
            return None, None
        op = insn.operands[0] if insn.operands else None
        target = op.imm & self.mask if op is not None and op.type == cx86.X86_OP_IMM else None
        return (JUMP if insn.mnemonic == "jmp" else BRANCH), target

    # -- MASM text -------------------------------------------------------------------------
    def _masm(self, insn: Any) -> tuple[str, str]:
        mnemonic = insn.mnemonic
        if mnemonic == "movabs":
            mnemonic = "mov"
        if mnemonic == "int3":
            return "int", "3"
        parts = insn.op_str.split(", ") if insn.op_str else []
        ops = insn.operands
        if len(parts) != len(ops):  # unusual operand text: only the number style is changed
            return mnemonic, ",".join(_numbers(p) for p in parts)
        is_branch = any(g in (capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL) for g in insn.groups)
        out = []
        for text, op in zip(parts, ops):
            if op.type == cx86.X86_OP_IMM:
                if is_branch:
                    out.append(self.target_text(op.imm))
                else:
                    out.append(masm_hex(op.imm & ((1 << (op.size * 8)) - 1)))
            elif op.type == cx86.X86_OP_MEM and op.mem.base == cx86.X86_REG_RIP:
                target = (insn.address + insn.size + op.mem.disp) & self.mask
                head = text[: text.index("[")]
                out.append(f"{head}[{self.target_text(target)}]")
            elif op.type == cx86.X86_OP_MEM:
                out.append(_numbers(text))
            else:
                out.append(text)
        words = mnemonic.split()
        base = words[-1]
        if base[:-1] in _STRING_OPS and base[-1] in "bwdq":  # rep stosd dword ptr [rdi], eax
            words[-1] = base[:-1]
            mnemonic = " ".join(words)
            out = [o for o in out if o not in _IMPLICIT]
        return mnemonic, ",".join(out)

    def format(self, line: Line) -> str:
        """One WinDbg disassembly line."""
        hexbytes = line.data.hex() if line.data is not None else "??"
        head = f"{ptr(line.address, self.is64)} {hexbytes:<15} "
        if line.operands:
            return f"{head}{line.mnemonic:<7} {line.operands}"
        return head + line.mnemonic

    def is_call(self, line: Line) -> bool:
        return line.insn is not None and line.mnemonic == "call"

    # -- the current instruction's memory operand (r) -----------------------------------------
    def effective_address(self, line: Line, registers: dict[str, int]) -> tuple[str, int, int] | None:
        """(segment, address, size) of the memory operand `line` reads or writes, from the
        registers; None for instructions without one (or `lea`, which reads no memory)."""
        insn = line.insn
        if insn is None or insn.mnemonic in ("lea", "nop") or insn.mnemonic.startswith("prefetch"):
            return None
        for op in insn.operands:
            if op.type != cx86.X86_OP_MEM:
                continue
            m = op.mem
            address = m.disp
            base = insn.reg_name(m.base) if m.base else None
            if base == "rip":
                address += insn.address + insn.size
            elif base:
                address += _reg(registers, base)
            if m.index:
                address += _reg(registers, insn.reg_name(m.index)) * m.scale
            seg = insn.reg_name(m.segment) if m.segment else ("ss" if base in ("rsp", "rbp", "esp", "ebp") else "ds")
            return seg, address & self.mask, op.size
        return None


def _reg(registers: dict[str, int], name: str) -> int:
    if name in registers:
        return registers[name]
    from kdshell.expr import Registers  # sub-registers (eax of rax)

    value = Registers(registers, "rax" in registers).get(name)
    return value or 0


def _numbers(text: str) -> str:
    """Capstone's numbers and spacing in a memory operand to WinDbg's: `[rax + 0xa0]` -> `[rax+0A0h]`."""
    text = text.replace(" + ", "+").replace(" - ", "-").replace(" * ", "*")

    def one(m: re.Match[str]) -> str:
        if m.group(3) is not None:
            return m.group(3)
        return m.group(1) + masm_hex(int(m.group(2), 16))

    return _HEX.sub(one, text)


def symbol_text(name: str, displacement: int) -> str:
    return f"{name}+0x{displacement:x}" if displacement else name
