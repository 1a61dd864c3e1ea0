"""ARM64 disassembly the way WinDbg shows it: capstone's AArch64 mode decodes, this module
writes the Microsoft disassembler's syntax (the one WinDbg, dumpbin and MSVC listings share).

    kernelbase!GetMachineTypeAttributes:
    00000001`80243810 d503237f pacibsp
    00000001`80243814 a9bc7bfd stp         fp,lr,[sp,#-0x40]!
    00000001`80243828 97fbe65e bl          kernelbase!#__security_push_cookie
    00007ff8`bad44ef8 14000002 b           amsi!AmsiScanBuffer+0xd0
    00007ff8`bad44efc 180000e0 ldr         w0,amsi!AmsiScanBuffer+0xe8

(public WinDbg output: Microsoft's Arm64EC ABI page and an amsi!AmsiScanBuffer listing). A line
is the address, the instruction word as 8 hex digits, the mnemonic padded to 12 and the
operands without spaces after commas. Registers by the Windows ABI's names: x29/x30 are fp/lr,
x16-x18 xip0/xip1/xpr (w16-w18 wip0/wip1/wpr; MSVC's listings). Immediates keep `#` with
upper-case hex (`#0x4D0`); a conditional branch is one word (`beq`, not `b.eq`); an extend
inside brackets follows its register without a comma (`[x12,w10 uxtw #2]`). Branch targets and
pc-relative literals are the symbol alone (`bl nt!KeBugCheck2`), or the address when nothing is
known there. An `adrp` and the `add`/load/store that completes its address (`adrp x8,page` then
`add x0,x8,#0x1A0`) both show the symbol of the address they form, as MSVC's listings do:
`adrp x8,nt!KiBugCheckData` / `add x0,x8,nt!KiBugCheckData`.

Instructions are 4 bytes, so `ub` steps back exactly 4 bytes each.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from kdshell.disasm import BRANCH, JUMP, STOP, BaseDisassembler, Line, Symbolize, symbol_text
from kdshell.format import ptr

if TYPE_CHECKING:
    from kdshell.memory.virtual import VirtualMemory

capstone: Any = None  # imported by the first disassembler (start-up time, as in disasm.py)

_RENAMES = {"x29": "fp", "x30": "lr", "x16": "xip0", "x17": "xip1", "x18": "xpr",
            "w16": "wip0", "w17": "wip1", "w18": "wpr"}
_REGISTER = re.compile(r"\b(" + "|".join(_RENAMES) + r")\b")
_HEX = re.compile(r"0x([0-9a-f]+)")
_EXTEND_IN_MEMORY = re.compile(r",(lsl|lsr|asr|uxtw|sxtw|sxtx|uxtx) ")
_MEMORY = re.compile(r"\[[^\]]*\]")
_ADD_IMM = re.compile(r"^(\w+), (\w+), #(0x[0-9a-f]+|\d+)$")
_MEM_BASE = re.compile(r"\[(\w+)(?:, #(-?0x[0-9a-f]+|-?\d+))?\]$")  # plain [base{,#imm}]: no writeback
_LITERAL_OPS = {"adr", "adrp", "ldr", "ldrsw", "prfm"}  # forms whose last operand may be an address
_STOPS = {"brk", "udf", "hlt"}  # flow does not continue past these
_UNCONDITIONAL = {"b", "br", "braa", "brab", "braaz", "brabz"}
_CALLS = {"bl", "blr", "blraa", "blrab", "blraaz", "blrabz"}
PAIR_REACH = 4  # instructions after an adrp searched for the one that completes its address
WORD = 4


def _load_capstone() -> None:
    global capstone
    if capstone is None:
        import capstone as cs

        capstone = cs


class Arm64Disassembler(BaseDisassembler):
    def __init__(self, symbolize: Symbolize | None = None):
        super().__init__(True, symbolize)
        _load_capstone()
        # capstone 5 calls the architecture ARM64, capstone 6 AARCH64
        arch = getattr(capstone, "CS_ARCH_AARCH64", None)
        self.cs = capstone.Cs(capstone.CS_ARCH_ARM64 if arch is None else arch, capstone.CS_MODE_ARM)
        self.cs.detail = True

    # -- decoding ---------------------------------------------------------------------------
    def decode(self, memory: VirtualMemory, address: int, count: int | None = None,
               end: int | None = None) -> list[Line]:
        """`count` instructions from `address` (or up to `end`); a word the dump lacks is a
        `???????? ???` line. The few words after the last are read too (their missing pages are
        not reported) so that an adrp at the end still finds its partner."""
        if end is None:
            count = 8 if count is None else count
        else:
            count = max(1, (end - address + WORD - 1) // WORD)
        data, valid, self.errors = memory.read_partial(address, count * WORD)
        more, more_valid, _ = memory.read_partial(address + count * WORD, PAIR_REACH * WORD)
        lines = self._words(data + more, valid + more_valid, address)
        self._pair(lines)
        return lines[:count]

    def _words(self, data: bytes, valid: bytearray, address: int) -> list[Line]:
        lines = []
        for off in range(0, len(data) - WORD + 1, WORD):
            at = (address + off) & self.mask
            if not all(valid[off : off + WORD]):
                lines.append(Line(at, WORD, None, "???", ""))
                continue
            code = data[off : off + WORD]
            insn = next(self.cs.disasm(code, at, 1), None)
            if insn is None:
                lines.append(Line(at, WORD, code, "???", ""))
            else:
                lines.append(Line(at, WORD, code, *self._text(insn), insn))
        return lines

    def backward(self, memory: VirtualMemory, address: int, count: int = 8) -> list[Line]:
        """The `count` instructions before `address`: fixed-size words, so exactly count * 4
        bytes back."""
        return self.decode(memory, address - count * WORD, count)

    # -- flow (uf): BaseDisassembler.flow over these answers ------------------------------------
    def branch(self, insn: Any) -> tuple[str | None, int | None]:
        """b, b.cond, cbz/cbnz, tbz/tbnz; bl is a call (capstone puts it in both groups); a block
        also ends at ret, br and brk/udf/hlt."""
        groups = insn.groups
        if capstone.CS_GRP_RET in groups or insn.mnemonic in _STOPS:
            return STOP, None
        if capstone.CS_GRP_JUMP not in groups or capstone.CS_GRP_CALL in groups:
            return None, None
        return (JUMP if insn.mnemonic in _UNCONDITIONAL else BRANCH), self._target(insn)

    def flow_done(self, lines: dict[int, Line]) -> None:
        self._pair([lines[a] for a in sorted(lines)])

    def is_call(self, line: Line) -> bool:
        return line.insn is not None and line.insn.mnemonic in _CALLS

    # -- text -------------------------------------------------------------------------------
    def format(self, line: Line) -> str:
        word = f"{int.from_bytes(line.data, 'little'):08x}" if line.data is not None else "????????"
        head = f"{ptr(line.address, True)} {word} "
        if line.operands:
            return f"{head}{line.mnemonic:<11} {line.operands}"
        return head + line.mnemonic

    def _target(self, insn: Any) -> int | None:
        """The address a pc-relative branch, adr/adrp or literal load names (capstone writes it
        absolute, as the last operand)."""
        if not (capstone.CS_GRP_BRANCH_RELATIVE in insn.groups
                or (insn.mnemonic in _LITERAL_OPS and "[" not in insn.op_str)):
            return None
        last = insn.op_str.rsplit(", ", 1)[-1]
        if not last.startswith("#"):
            return None
        return int(last[1:], 0) & self.mask

    def _place(self, address: int) -> str:
        """A branch target or literal as WinDbg prints it on ARM64: the symbol alone, else the
        address."""
        sym = self.symbolize(address & self.mask)
        return symbol_text(*sym) if sym is not None else ptr(address & self.mask, True)

    def _text(self, insn: Any) -> tuple[str, str]:
        mnemonic = insn.mnemonic
        if mnemonic.startswith("b.") and len(mnemonic) > 2:
            mnemonic = "b" + mnemonic[2:]  # b.eq -> beq
        ops = insn.op_str
        target = self._target(insn)
        if target is not None:
            head, _, _ = ops.rpartition(", ")
            return mnemonic, _operands(head) + ("," if head else "") + self._place(target)
        return mnemonic, _operands(ops)

    def _pair(self, lines: list[Line]) -> None:
        """Show the address an adrp and its completing add/load/store form (module note)."""
        for i, line in enumerate(lines):
            insn = line.insn
            if insn is None or insn.mnemonic != "adrp":
                continue
            reg, _, page = insn.op_str.partition(", #")
            for k, partner in enumerate(lines[i + 1 : i + 1 + PAIR_REACH], 1):
                if partner.address != line.address + k * WORD:  # uf's blocks need not be adjacent
                    break
                found = _completes(partner, reg, int(page, 0) & self.mask)
                if found is None:
                    if partner.insn is None or reg in _written(partner.insn):
                        break  # the register no longer holds the page
                    continue
                address, text = found
                sym = self.symbolize(address & self.mask)
                if sym is not None:
                    name = symbol_text(*sym)
                    line.operands = f"{_operands(reg)},{name}"
                    partner.operands = _operands(text).replace("\0", name)
                break


def _completes(line: Line, reg: str, page: int) -> tuple[int, str] | None:
    """(address formed, the partner's capstone operands with \\0 where the symbol goes) when
    `line` adds to or addresses memory through the adrp's register."""
    insn = line.insn
    if insn is None:
        return None
    ops = insn.op_str
    if insn.mnemonic == "add":
        m = _ADD_IMM.match(ops)
        if m and m.group(2) == reg:
            return page + int(m.group(3), 0), f"{m.group(1)}, {reg}, \0"
        return None
    m = _MEM_BASE.search(ops)
    if m and m.group(1) == reg and insn.mnemonic.startswith(("ldr", "str", "ldur", "stur", "prfm")):
        disp = int(m.group(2), 0) if m.group(2) else 0
        return page + disp, ops[: m.start()] + f"[{reg}, \0]"
    return None


def _written(insn: Any) -> set[str]:
    try:
        return {insn.reg_name(r) for r in insn.regs_access()[1]}
    except capstone.CsError:  # an instruction capstone cannot say this of
        return set()


def _operands(text: str) -> str:
    """Capstone's AArch64 operand text to the Microsoft syntax (module note)."""
    text = _REGISTER.sub(lambda m: _RENAMES[m.group(1)], text)
    text = _HEX.sub(lambda m: "0x" + m.group(1).upper(), text).replace(", ", ",")
    return _MEMORY.sub(lambda m: _EXTEND_IN_MEMORY.sub(r" \1 ", m.group(0)), text)
