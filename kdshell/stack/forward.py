"""A function's way out, read from its code: for frames whose unwind data is not available.

A small dump rarely holds a module's .pdata, but it often holds the code right after the return
addresses on the stack (Windows saves memory around them). From RIP the function will run to a
`ret`; the instructions on the way that move RSP (add/sub/lea/mov rsp, push, pop, leave) and
reload registers from the stack are its epilog, and say exactly where its return address is and
where its caller's registers were saved. This is what RtlVirtualUnwind does when RIP is inside an
epilog (x64-unwind.md §2.4), begun a few instructions earlier: straight-line code, calls (which
return with RSP where it was), unconditional jumps followed, both ways of a conditional jump
tried in turn (every way out of a fixed-size frame frees the same bytes), a REX.W indirect jump
taken as a tail call (the ABI's mark of an epilog's jump). Anything else that moves RSP, and
int3/ud2/hlt, ends that way out. Bounded: MAX_INSTRUCTIONS decoded per RIP in all.

    follow_to_return(read, rip) -> CodeReturn | None

The caller checks the answer (the slot's alignment, the value being code) before trusting it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from kdshell.errors import KdError
from kdshell.stack.unwind_x64 import GPR, NONVOLATILE

MemoryRead = Callable[[int, int], bytes]

MAX_INSTRUCTIONS = 256     # decoded per RIP, over every way tried
MAX_WAYS = 16              # conditional jumps whose other way is kept for later
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
NONVOLATILE_GPR = tuple(r for r in GPR if r in NONVOLATILE)   # rbx rbp rsi rdi r12-r15
_STOP = frozenset(("int3", "int", "int1", "into", "ud0", "ud1", "ud2", "hlt", "iretq", "iretd", "iret",
                   "syscall", "sysret", "sysretq", "sysenter", "sysexit", "invalid"))

_cs: Any = None   # capstone, imported on first use (as kdshell.disasm does)
_x86: Any = None
_md: Any = None
_GPR: dict[str, str] = {}


def _decoder() -> Any:
    global _cs, _x86, _md
    if _md is None:
        import capstone
        from capstone import x86

        _cs, _x86 = capstone, x86
        _md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        _md.detail = True
        for full, names in (("rax", "eax ax al ah"), ("rcx", "ecx cx cl ch"), ("rdx", "edx dx dl dh"),
                            ("rbx", "ebx bx bl bh"), ("rsp", "esp sp spl"), ("rbp", "ebp bp bpl"),
                            ("rsi", "esi si sil"), ("rdi", "edi di dil")):
            for name in (full, *names.split()):
                _GPR[name] = full
        for i in range(8, 16):
            for suffix in ("", "d", "w", "b"):
                _GPR[f"r{i}{suffix}"] = f"r{i}"
    return _md


# Where a value is: (register the address is relative to or None for RSP at RIP, offset).
Place = tuple[str | None, int]


@dataclass(frozen=True)
class CodeReturn:
    """Where the function at RIP returns: its return address is at `place` (relative to RSP at
    RIP, or to a register's value at RIP), `ret imm16` frees `extra` more bytes. `restores`:
    each non-volatile register the way out writes, with the stack place it is reloaded from, or
    None when it gets a computed value. `moved`: RSP changed on the way (False: a leaf's ret)."""

    place: Place
    extra: int
    restores: tuple[tuple[str, Place | None], ...]
    moved: bool


@dataclass
class _Way:
    pc: int
    base: str | None = None            # RSP = base register's value at RIP (None: RSP at RIP) + off
    off: int = 0
    aliases: dict[str, Place] = field(default_factory=dict)   # registers holding an RSP-relative address
    writes: dict[str, Place | None] = field(default_factory=dict)
    moved: bool = False
    stored: set[Place] = field(default_factory=set)   # stack places written on the way

    def fork(self, pc: int) -> _Way:
        return _Way(pc, self.base, self.off, dict(self.aliases), dict(self.writes), self.moved, set(self.stored))

    def saved(self, place: Place | None) -> Place | None:
        """`place` if what the dump holds there is what the way would load from it: not written
        on the way, not below RSP at RIP (pushes and calls on the way write there)."""
        if place is None or place in self.stored or (place[0] is None and place[1] < 0):
            return None
        return place


def _fetch(read: MemoryRead, pc: int) -> bytes | None:
    for n in (16, 8, 4):
        try:
            return read(pc, n)
        except KdError:
            continue
    return None


def follow_to_return(read: MemoryRead, rip: int, budget: int = MAX_INSTRUCTIONS) -> CodeReturn | None:
    """Follow the code from `rip` to the function's return (see the module docstring); None when
    no way out is found within the budget."""
    md = _decoder()
    ways = [_Way(rip)]
    seen: set[tuple[int, str | None, int]] = set()
    while ways and budget > 0:
        way = ways.pop()
        while budget > 0:
            key = (way.pc, way.base, way.off)
            if key in seen:
                break
            seen.add(key)
            code = _fetch(read, way.pc)
            insn = next(md.disasm(code, way.pc, 1), None) if code else None
            if insn is None:
                break
            budget -= 1
            done = _step(way, insn, ways)
            if done is None:
                break
            if isinstance(done, CodeReturn):
                return done
    return None


def _reg(insn: Any, reg_id: int) -> str | None:
    return _GPR.get(insn.reg_name(reg_id)) if reg_id else None


def _place(way: _Way, insn: Any, mem: Any) -> Place | None:
    """The RSP-relative (or register-relative) address of a [base + disp] operand, or None."""
    if mem.index or mem.segment:
        return None
    base = _reg(insn, mem.base)
    if base == "rsp":
        return way.base, way.off + mem.disp
    if base in way.aliases:
        b, o = way.aliases[base]
        return b, o + mem.disp
    if base in NONVOLATILE_GPR and base not in way.writes:
        return base, mem.disp   # a frame register, as it was at RIP
    return None


def _set_rsp(way: _Way, place: Place | None) -> bool:
    if place is None:
        return False
    way.base, way.off = place
    way.moved = True
    return True


def _step(way: _Way, insn: Any, ways: list[_Way]) -> CodeReturn | bool | None:
    """Apply one instruction to `way`: a CodeReturn at the way out, True to go on, None when
    this way cannot be followed."""
    x = _x86
    name = insn.mnemonic.split()[-1]   # without rep/notrack/bnd
    ops = insn.operands
    next_pc = insn.address + insn.size
    if name in ("ret", "retq"):
        extra = ops[0].imm if ops and ops[0].type == x.X86_OP_IMM else 0
        return _out(way, extra)
    if name in _STOP:
        return None
    if x.X86_GRP_CALL in insn.groups:
        way.pc = next_pc
        return True
    if x.X86_GRP_JUMP in insn.groups:
        target = ops[0].imm & MASK64 if ops and ops[0].type == x.X86_OP_IMM else None
        if name == "jmp":
            if target is not None:
                way.pc = target
                return True
            return _out(way, 0) if insn.rex & 8 else None   # REX.W jmp: a tail call
        if target is None or len(ways) >= MAX_WAYS:
            return None
        ways.append(way.fork(target))
        way.pc = next_pc
        return True
    way.pc = next_pc
    if name in ("push", "pushfq", "pushf"):
        way.off -= 8
        way.stored.add((way.base, way.off))
        way.moved = True
        return True
    if name in ("pop", "popfq", "popf"):
        reg = _reg(insn, ops[0].reg) if ops and ops[0].type == x.X86_OP_REG else None
        if reg == "rsp" or (ops and ops[0].type != x.X86_OP_REG):
            return None
        if reg is not None:
            way.writes[reg] = way.saved((way.base, way.off))
            way.aliases.pop(reg, None)
        way.off += 8
        way.moved = True
        return True
    if name == "leave":   # mov rsp, rbp; pop rbp
        if not _set_rsp(way, way.aliases.get("rbp") or (("rbp", 0) if "rbp" not in way.writes else None)):
            return None
        way.writes["rbp"] = way.saved((way.base, way.off))
        way.aliases.pop("rbp", None)
        way.off += 8
        return True
    dst = _reg(insn, ops[0].reg) if ops and ops[0].type == x.X86_OP_REG else None
    src = ops[1] if len(ops) > 1 else None
    if dst == "rsp":
        if name in ("add", "sub") and src is not None and src.type == x.X86_OP_IMM:
            way.off += src.imm if name == "add" else -src.imm
            way.moved = True
            return True
        if name == "lea" and src is not None and src.type == x.X86_OP_MEM:
            return _set_rsp(way, _place(way, insn, src.mem)) or None
        if name == "mov" and src is not None and src.type == x.X86_OP_REG:
            s = _reg(insn, src.reg)
            if s in way.aliases:
                return _set_rsp(way, way.aliases[s]) or None
            if s in NONVOLATILE_GPR and s not in way.writes:
                return _set_rsp(way, (s, 0)) or None
        return None
    written = {_reg(insn, r) for r in insn.regs_access()[1]} - {None}
    if "rsp" in written:
        return None   # something else moves RSP: not a way this reader follows
    for reg in written:
        assert reg is not None
        way.aliases.pop(reg, None)
        way.writes[reg] = None
    if ops and ops[0].type == x.X86_OP_MEM and ops[0].access & _cs.CS_AC_WRITE:
        place = _place(way, insn, ops[0].mem)
        if place is not None:
            way.stored.add(place)
    if dst is not None and src is not None:
        if name == "lea" and src.type == x.X86_OP_MEM and ops[0].size == 8:
            place = _place(way, insn, src.mem)
            if place is not None:
                way.aliases[dst] = place
        elif name == "mov" and ops[0].size == 8:
            s = _reg(insn, src.reg) if src.type == x.X86_OP_REG else None
            if src.type == x.X86_OP_MEM:
                way.writes[dst] = way.saved(_place(way, insn, src.mem))
            elif s == "rsp":
                way.aliases[dst] = (way.base, way.off)
            elif s is not None and s in way.aliases:
                way.aliases[dst] = way.aliases[s]
    return True


def _out(way: _Way, extra: int) -> CodeReturn:
    restores = tuple((reg, way.writes[reg]) for reg in NONVOLATILE_GPR if reg in way.writes)
    return CodeReturn((way.base, way.off), extra, restores, way.moved)
