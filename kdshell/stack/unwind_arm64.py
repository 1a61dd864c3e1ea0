"""ARM64 unwinding: .pdata/.xdata (Microsoft's "ARM64 exception handling"), the frame-record
chain and the leaf rule. The walker (walk.py) asks `Arm64Unwinder.step` for each frame's caller.

.pdata holds 8-byte RUNTIME_FUNCTIONs {BeginAddress, UnwindData}. UnwindData's low 2 bits (Flag):
  0  the RVA of an .xdata record: a header word (FunctionLength/4 in bits 0-17, Vers 18-19, X 20,
     E 21, EpilogCount 22-26, CodeWords 27-31; both counts 0: a second word with EpilogCount in
     bits 0-15 and CodeWords in 16-23), EpilogCount epilog scopes when E is 0 (start offset/4 in
     bits 0-17, the index of its first unwind code in bits 22-31), then the unwind code bytes.
  1  packed unwind data for a canonical prolog: FunctionLength/4 bits 2-12, RegF 13-15, RegI
     16-19, H 20, CR 21-22, FrameSize/16 23-31.
  2  packed unwind data for a fragment without a prolog (the same fields).
Unwind codes are listed from the last prolog instruction to the first, one per instruction, so
undoing them in order unwinds the prolog; `pc` inside the prolog skips the ones not yet run,
`pc` inside an epilog starts at the epilog's first code plus the instructions already run.

Without unwind data (no image in the dump) ARM64 code keeps a frame-record chain: x29 (fp)
points at the pair {caller's fp, return address} the prolog stored with `stp x29, x30`, just
below the caller's sp in a chained frame: caller pc = [fp+8], fp = [fp], sp = fp+16.

Custom stacks: MSFT_OP_TRAP_FRAME (0xE8) restores x0-x17, sp, lr, fp, pc and cpsr from the
KTRAP_FRAME at sp, MSFT_OP_CONTEXT (0xEA) every integer register from a CONTEXT at sp; pc is then
the interrupted one, not a return address, so the caller's frame is "trap" (interrupted).

The leaf rule: a function that has not stored a frame record yet (a leaf, or pc before its
`mov x29, sp`) still has its return address in lr, and fp is its caller's.
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass
from typing import Any, Callable

from kdshell.dumpfile.context import CONTEXT_ARM64, decode_context
from kdshell.dumpfile.header import MACHINE_ARM64
from kdshell.errors import KdError
from kdshell.stack.unwind_x64 import NoUnwindData, UnwindError, exception_directory

MemoryRead = Callable[[int, int], bytes]
ImageRead = Callable[[int, int], bytes]
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
MAX_RUNTIME_FUNCTIONS = 0x40000
MAX_CODE_BYTES = 0x400     # 8-bit CodeWords extended: at most 255 words
MAX_BACK = 256             # instructions read back from pc for the leaf rule
_U64 = struct.Struct("<Q")

# instruction words the leaf rule knows
_RET = 0xD65F03C0
_MOV_FP_SP = 0x910003FD       # add x29, sp, #0 (mov x29, sp); `& _ADD_FP_MASK` for any #imm
_ADD_FP_MASK = 0xFFC003FF
_STP_FPLR_PRE = 0xA9807BFD    # stp x29, x30, [sp, #-N]!; `& _STP_PRE_MASK`
_STP_PRE_MASK = 0xFFC07FFF


# Windows' ARM64 KTRAP_FRAME (0x150 bytes): what MSFT_OP_TRAP_FRAME restores, by offset
KTRAP_FRAME_ARM64 = {"spsr": 0x90, "sp": 0x98, "x0": 0xA0, "lr": 0x138, "fp": 0x140, "pc": 0x148}
KTRAP_FRAME_ARM64_SIZE = 0x150
CONTEXT_ARM64_SIZE = CONTEXT_ARM64.sizeof()


@dataclass(frozen=True)
class Code:
    """One decoded unwind code: `op` its name, `size` its bytes; `reg` the first register
    ("x19", "d8", "fp"...), `offset` the stack offset (bytes) or allocation size."""

    op: str
    size: int
    reg: str | None = None
    offset: int = 0
    pair: bool = False

    @property
    def instruction(self) -> bool:
        """It stands for one prolog/epilog instruction (end and end_c do not)."""
        return self.op not in ("end", "end_c")


def strip_pac(value: int) -> int:
    """A return address without its pointer authentication code: bits 48-63 become copies of bit
    55, which says the half of the address space (48-bit VAs, Windows' layout)."""
    return value | 0xFFFF_0000_0000_0000 if value >> 55 & 1 else value & 0x0000_FFFF_FFFF_FFFF


def _x(n: int) -> str:
    return "fp" if n == 29 else "lr" if n == 30 else f"x{n}"


def decode_codes(data: bytes) -> list[Code]:
    """The unwind code bytes, decoded until the first end (or the data's end). Raises
    UnwindError for reserved encodings."""
    out: list[Code] = []
    i = 0
    while i < len(data):
        b = data[i]

        def more(n: int) -> int:
            if i + n > len(data):
                raise UnwindError(f"unwind code {b:#04x} at byte {i} is cut short")
            return int.from_bytes(data[i : i + n], "big")

        if b < 0x20:
            c = Code("alloc_s", 1, offset=(b & 0x1F) * 16)
        elif b < 0x40:
            c = Code("save_r19r20_x", 1, "x19", (b & 0x1F) * 8, True)
        elif b < 0x80:
            c = Code("save_fplr", 1, "fp", (b & 0x3F) * 8, True)
        elif b < 0xC0:
            c = Code("save_fplr_x", 1, "fp", ((b & 0x3F) + 1) * 8, True)
        elif b < 0xC8:
            c = Code("alloc_m", 2, offset=(more(2) & 0x7FF) * 16)
        elif b < 0xD8:
            w = more(2)
            kind = (w >> 10) & 0x3F   # 110010, 110011, 110100, 110101(0/1), 110101 1
            z = w & 0x3F
            if kind == 0b110010:
                c = Code("save_regp", 2, _x(19 + ((w >> 6) & 0xF)), z * 8, True)
            elif kind == 0b110011:
                c = Code("save_regp_x", 2, _x(19 + ((w >> 6) & 0xF)), (z + 1) * 8, True)
            elif kind == 0b110100:
                c = Code("save_reg", 2, _x(19 + ((w >> 6) & 0xF)), z * 8)
            elif not w & 0x200:   # 1101010x'xxxzzzzz
                c = Code("save_reg_x", 2, _x(19 + ((w >> 5) & 0xF)), ((w & 0x1F) + 1) * 8)
            else:                 # 1101011x'xxzzzzzz
                c = Code("save_lrpair", 2, _x(19 + 2 * ((w >> 6) & 0x7)), z * 8, True)
        elif b < 0xDE:
            w = more(2)
            kind, z, reg = (w >> 9) & 0x7F, w & 0x3F, f"d{8 + ((w >> 6) & 0x7)}"
            if kind == 0b1101100:
                c = Code("save_fregp", 2, reg, z * 8, True)
            elif kind == 0b1101101:
                c = Code("save_fregp_x", 2, reg, (z + 1) * 8, True)
            else:
                c = Code("save_freg", 2, reg, z * 8)
        elif b == 0xDE:
            w = more(2)
            c = Code("save_freg_x", 2, f"d{8 + ((w >> 5) & 0x7)}", ((w & 0x1F) + 1) * 8)
        elif b == 0xE0:
            c = Code("alloc_l", 4, offset=(more(4) & 0xFFFFFF) * 16)
        elif b == 0xE1:
            c = Code("set_fp", 1)
        elif b == 0xE2:
            c = Code("add_fp", 2, offset=(more(2) & 0xFF) * 8)
        elif b == 0xE3:
            c = Code("nop", 1)
        elif b == 0xE4:
            out.append(Code("end", 1))
            break
        elif b == 0xE5:
            c = Code("end_c", 1)
        elif b == 0xE6:
            c = Code("save_next", 1)
        elif 0xE8 <= b <= 0xEC:
            c = Code({0xE8: "trap_frame", 0xE9: "machine_frame", 0xEA: "context", 0xEB: "ec_context",
                      0xEC: "clear_unwound_to_call"}[b], 1)
        elif b == 0xFC:
            c = Code("pac_sign_lr", 1)
        else:
            raise UnwindError(f"unwind code {b:#04x} is reserved or not supported (alloc_z, save_any_reg)")
        out.append(c)
        i += c.size
    return _resolve_save_next(out)


def _resolve_save_next(codes: list[Code]) -> list[Code]:
    """save_next stores the pair after the one the previous prolog instruction stored (the next
    code in the list), 16 bytes higher: give each its registers and offset."""
    out = list(codes)
    prev: Code | None = None
    for i in range(len(out) - 1, -1, -1):
        c = out[i]
        if c.op == "save_next":
            if prev is None or prev.reg is None:
                raise UnwindError("save_next follows no register pair")
            base = 0 if prev.op.endswith("_x") else prev.offset
            nreg = int(prev.reg[1:]) + 2 if prev.reg[0] in "xd" else 31
            kind = "save_fregp" if prev.reg[0] == "d" else "save_regp"
            c = out[i] = Code(kind, 1, f"{prev.reg[0]}{nreg}", base + 16, True)
        if c.reg is not None:
            prev = c
    return out


@dataclass(frozen=True)
class Function:
    """A .pdata entry and its unwind description: `data` the .xdata unwind code bytes,
    `epilogs` (start rva, index of its first code byte), `packed` the UnwindData of a Flag 1/2
    entry."""

    begin: int
    length: int
    flag: int
    data: bytes = b""
    epilogs: tuple[tuple[int, int], ...] = ()
    packed: int | None = None

    def codes(self, index: int = 0) -> list[Code]:
        """The codes from byte `index` of the unwind code bytes to the next end."""
        if index > len(self.data):
            raise UnwindError(f"unwind code index {index} is past the unwind codes")
        return decode_codes(self.data[index:])


def parse_xdata(read_image: ImageRead, begin: int, rva: int) -> Function:
    """The .xdata record at `rva` of the function at `begin` (see the module docstring)."""
    try:
        word = struct.unpack("<I", read_image(rva, 4))[0]
        length = (word & 0x3FFFF) * 4
        e, epilog_count, code_words = (word >> 21) & 1, (word >> 22) & 0x1F, (word >> 27) & 0x1F
        at = rva + 4
        if epilog_count == 0 and code_words == 0:
            ext = struct.unpack("<I", read_image(at, 4))[0]
            epilog_count, code_words = ext & 0xFFFF, (ext >> 16) & 0xFF
            at += 4
        scopes: list[tuple[int, int]] = []
        if not e:
            blob = read_image(at, 4 * epilog_count)
            scopes = [(begin + (s & 0x3FFFF) * 4, s >> 22) for (s,) in struct.iter_unpack("<I", blob)]
            at += 4 * epilog_count
        data = read_image(at, min(4 * code_words, MAX_CODE_BYTES))
    except UnwindError:
        raise
    except KdError as exc:
        raise NoUnwindData(f".xdata at rva {rva:#x} not available ({exc})") from None
    func = Function(begin, length, 0, data)
    if e:
        # one epilog, at the end of the function (its last instruction, ret, is the end code);
        # EpilogCount is the index of its first code
        size = 4 * len(func.codes(epilog_count))
        scopes = [(begin + length - size, epilog_count)]
    return Function(begin, length, 0, data, tuple(scopes))


class FunctionTable:
    """An ARM64 module's .pdata, searched by RVA; parsed .xdata cached."""

    def __init__(self, read_image: ImageRead, pdata_rva: int | None = None, pdata_size: int | None = None):
        self.read_image = read_image
        if pdata_rva is None:
            pdata_rva, pdata_size = exception_directory(read_image)
        count = (pdata_size or 0) // 8
        if count > MAX_RUNTIME_FUNCTIONS:
            raise UnwindError(f".pdata of {count} entries is too large")
        try:
            blob = read_image(pdata_rva, count * 8) if count else b""
        except KdError as exc:
            raise NoUnwindData(f".pdata not available ({exc})") from None
        self.entries = list(struct.iter_unpack("<II", blob))
        self._begins = [b for b, _ in self.entries]
        self._parsed: dict[int, Function] = {}

    def lookup(self, rva: int) -> Function | None:
        i = bisect.bisect_right(self._begins, rva) - 1
        if i < 0:
            return None
        begin, unwind = self.entries[i]
        func = self._parsed.get(begin)
        if func is None:
            flag = unwind & 3
            if flag == 0:
                func = parse_xdata(self.read_image, begin, unwind)
            elif flag in (1, 2):
                func = Function(begin, ((unwind >> 2) & 0x7FF) * 4, flag, packed=unwind)
            else:
                raise UnwindError(f".pdata entry at {begin:#x} has the reserved Flag 3")
            self._parsed[begin] = func
        return func if begin <= rva < begin + func.length else None


def packed_codes(unwind: int) -> list[Code]:
    """The unwind codes a packed entry (Flag 1) stands for, in unwind order (the spec's canonical
    prolog, steps 1-6, reversed)."""
    reg_f, reg_i, h, cr, frame = (unwind >> 13) & 7, (unwind >> 16) & 0xF, (unwind >> 20) & 1, \
        (unwind >> 21) & 3, ((unwind >> 23) & 0x1FF) * 16
    int_sz = reg_i * 8 + (8 if cr == 1 else 0)
    fp_sz = (reg_f + 1) * 8 if reg_f else 0
    sav_sz = (int_sz + fp_sz + 64 * h + 0xF) & ~0xF
    loc_sz = frame - sav_sz
    prolog: list[Code] = []   # in prolog order
    if cr == 2:
        prolog.append(Code("pac_sign_lr", 1))
    regs = [_x(19 + k) for k in range(reg_i)] + (["lr"] if cr == 1 else [])
    for k in range(0, len(regs), 2):
        x = "_x" if k == 0 else ""
        off = sav_sz if k == 0 else 8 * k
        if k + 1 < len(regs):
            op = "save_lrpair" if regs[k + 1] == "lr" else "save_regp"
            prolog.append(Code(op + x, 1, regs[k], off, True))
        else:
            prolog.append(Code("save_reg" + x, 1, regs[k], off))
    fregs = [f"d{8 + k}" for k in range(reg_f + 1)] if reg_f else []
    for k in range(0, len(fregs), 2):
        first = not regs and k == 0
        off = sav_sz if first else int_sz + 8 * k
        pair = k + 1 < len(fregs)
        prolog.append(Code(("save_fregp" if pair else "save_freg") + ("_x" if first else ""), 1, fregs[k], off, pair))
    if h:
        prolog += [Code("nop", 1)] * 4   # stp x0,x1 .. x6,x7: homed arguments, nothing to restore
    if cr == 3 or cr == 2:
        if loc_sz <= 512:
            prolog.append(Code("save_fplr_x", 1, "fp", loc_sz, True))
        else:
            prolog += _allocs(loc_sz) + [Code("save_fplr", 1, "fp", 0, True)]
        prolog.append(Code("set_fp", 1))
    elif loc_sz:
        prolog += _allocs(loc_sz)
    return list(reversed(prolog))


def _allocs(size: int) -> list[Code]:
    if size > 4080:
        return [Code("alloc_m", 1, offset=4080), Code("alloc_m", 1, offset=size - 4080)]
    return [Code("alloc_m", 1, offset=size)]


@dataclass
class Arm64Step:
    """The caller of one frame: its registers, which are known, how it was found."""

    regs: dict[str, int]
    known: frozenset[str]
    how: str
    note: str | None = None
    guess: bool = False


NONVOLATILE = frozenset([f"x{i}" for i in range(19, 29)] + ["fp", "sp", "pc"] + [f"d{i}" for i in range(8, 16)])


class Arm64Unwinder:
    """One step of an ARM64 walk: .pdata/.xdata, else the leaf rule at the context, else the
    frame-record chain."""

    def __init__(self, read: MemoryRead, modules: Any) -> None:
        self.read = read
        self.modules = modules
        self._tables: dict[tuple[int, int, int], FunctionTable | None] = {}

    def table(self, module: Any) -> FunctionTable | None:
        reader = getattr(module, "image", None)
        if reader is None:
            return None
        key = (module.base, module.size, id(reader))
        if key not in self._tables:
            pdata = getattr(module, "exception_directory", None)
            try:
                self._tables[key] = FunctionTable(reader, *(pdata or (None, None)))
            except NoUnwindData:
                return None   # not cached: the image may turn up later
            except UnwindError:
                self._tables[key] = None
        return self._tables[key]

    def _q(self, address: int) -> int:
        return int(_U64.unpack(self.read(address & MASK64, 8))[0])

    def step(self, ctx: dict[str, int], known: frozenset[str], at_context: bool) -> Arm64Step | str:
        pc, sp = ctx["pc"] & MASK64, ctx["sp"] & MASK64
        note = None
        module = self.modules.module_at(pc)
        table = self.table(module) if module is not None else None
        if table is not None:
            try:
                # a return address's function is the one holding the call before it
                func = table.lookup(pc - module.base - (0 if at_context else 4))
                if func is None and not at_context:
                    note = f"no .pdata entry for {pc:#x}"
                elif func is None:
                    return Arm64Step(dict(ctx, pc=strip_pac(ctx["lr"])), (known & NONVOLATILE) | {"pc"}, "leaf")
                else:
                    return self.unwind(func, module.base, ctx, known, at_context)
            except UnwindError as exc:
                note = f"unwind: {exc}"
            except KdError as exc:
                return f"memory not present while unwinding {pc:#x} ({exc})"
        state, pushed = self._prolog_state(pc) if at_context else ("frame", 0)
        if state == "leaf":
            lr = strip_pac(ctx.get("lr", 0))
            if lr and self.modules.module_at(lr) is not None:
                return Arm64Step(dict(ctx, pc=lr), (known & NONVOLATILE) | {"pc"}, "leaf", note)
        elif state == "pushed":   # the record is at sp, fp not set yet
            try:
                saved_fp, ret = self._q(sp), self._q(sp + 8)
            except KdError:
                return f"frame record at {sp:#x} is not in the dump"
            caller = dict(ctx, pc=strip_pac(ret), fp=saved_fp, sp=sp + pushed)
            return Arm64Step(caller, frozenset(("pc", "sp", "fp")), "frame chain", note, guess=True)
        fp = ctx.get("fp", 0) & MASK64
        why = "fp is 0: the frame-record chain ends" if not fp else \
            "fp is not known" if "fp" not in known else "fp is below sp" if fp < sp else "fp is not aligned" \
            if fp & 7 else None
        if why is not None:
            return (note + "; " if note else "") + why
        try:
            saved_fp, ret = self._q(fp), self._q(fp + 8)
        except KdError:
            return f"frame record at {fp:#x} is not in the dump"
        caller = dict(ctx, pc=strip_pac(ret), fp=saved_fp, sp=fp + 16)
        return Arm64Step(caller, frozenset(("pc", "sp", "fp")), "frame chain", note)

    def _prolog_state(self, pc: int) -> tuple[str, int]:
        """Where the interrupted function stands, read back from pc without unwind data:
        ("frame", 0) after its `mov x29, sp`/`add x29, sp, #n` (or when the code is not in the
        dump: the common case), ("pushed", n) after its `stp x29, x30, [sp, #-n]!` but before
        the mov, ("leaf", 0) when its start (a known function, the previous function's ret)
        comes first."""
        for k in range(1, MAX_BACK + 1):
            at = pc - 4 * k
            try:
                word = struct.unpack("<I", self.read(at, 4))[0]
            except KdError:
                return "frame", 0
            if word & _ADD_FP_MASK == _MOV_FP_SP:
                return "frame", 0
            if word & _STP_PRE_MASK == _STP_FPLR_PRE:
                imm7 = (word >> 15) & 0x7F
                return "pushed", (0x80 - imm7) * 8   # a negative offset: -(n/8) in 7 bits
            if word == _RET or self.modules.function_start(at):
                return "leaf", 0
        return "frame", 0

    def unwind(self, func: Function, base: int, ctx: dict[str, int], known: frozenset[str],
               at_context: bool) -> Arm64Step:
        pc = ctx["pc"] & MASK64
        if not at_context:
            pc -= 4   # the call: a return address may be the first instruction of an epilog
        off = pc - base - func.begin
        if func.packed is not None:
            codes = packed_codes(func.packed)
            if func.flag == 1:   # Flag 2: a fragment, no prolog or epilog of its own
                # the canonical epilog ends the function: the prolog undone (no mov sp, fp), ret
                mirror = [c for c in codes if c.op not in ("set_fp", "add_fp")]
                start = func.length - 4 * (len(mirror) + 1)
                if start <= off < func.length:
                    codes = mirror[(off - start) // 4:]
                elif at_context:
                    codes = _skip_prolog(codes, off)
        else:
            scope = self._epilog(func, base, pc)
            if scope is not None:
                codes = scope
            else:
                codes = func.codes()
                if at_context:
                    codes = _skip_prolog(codes, off)
        regs, restored = dict(ctx), dict[str, int]()
        sp = ctx["sp"] & MASK64
        custom = False
        c_known = set(known & NONVOLATILE)
        for c in codes:
            if c.op in ("end", "end_c"):
                break
            if c.op in ("alloc_s", "alloc_m", "alloc_l"):
                sp += c.offset
            elif c.op == "set_fp":
                sp = regs["fp"] & MASK64
            elif c.op == "add_fp":
                sp = (regs["fp"] - c.offset) & MASK64
            elif c.reg is not None:
                x = c.op.endswith("_x")
                at = sp if x else sp + c.offset
                names = [c.reg, _next_reg(c.reg, c.op)] if c.pair else [c.reg]
                for k, name in enumerate(names):
                    regs[name] = self._q(at + 8 * k)
                    restored[name] = at + 8 * k
                    c_known.add(name)
                if x:
                    sp += c.offset
            elif c.op in ("trap_frame", "context"):
                # the interrupted state is saved at sp: its pc is where it stopped, not a return
                # address, so the rest of the walk treats the caller as interrupted ("trap")
                regs.update(self._custom(c.op, sp))
                sp = regs["sp"]
                c_known |= set(regs) - {"cpsr"}
                custom = True
            elif c.op in ("machine_frame", "ec_context"):
                raise UnwindError(f"custom stack ({c.op}) is not supported yet")
        if custom:
            return Arm64Step(regs, frozenset(c_known), "trap")
        if "lr" not in restored and not at_context:
            raise UnwindError("lr was not saved and this is not the interrupted frame")
        regs["pc"], regs["sp"] = strip_pac(regs["lr"]), sp
        c_known |= {"pc", "sp"}
        return Arm64Step(regs, frozenset(c_known), "unwind")

    def _custom(self, op: str, at: int) -> dict[str, int]:
        """The registers a trap frame (MSFT_OP_TRAP_FRAME: x0-x17, sp, lr, fp, pc and the
        status register of the KTRAP_FRAME at `at`) or a CONTEXT (MSFT_OP_CONTEXT: every
        integer register) restores."""
        if op == "context":
            raw = self.read(at, CONTEXT_ARM64_SIZE)
            ctx = decode_context(MACHINE_ARM64, raw)
            return {k: v for k, v in ctx.items() if k[0] == "x" or k in ("fp", "lr", "sp", "pc", "cpsr")}
        raw = self.read(at, KTRAP_FRAME_ARM64_SIZE)
        regs = {f"x{i}": _U64.unpack_from(raw, KTRAP_FRAME_ARM64["x0"] + 8 * i)[0] for i in range(18)}
        for name in ("sp", "lr", "fp", "pc"):
            regs[name] = _U64.unpack_from(raw, KTRAP_FRAME_ARM64[name])[0]
        regs["cpsr"] = struct.unpack_from("<I", raw, KTRAP_FRAME_ARM64["spsr"])[0]
        return regs

    def _epilog(self, func: Function, base: int, pc: int) -> list[Code] | None:
        """pc inside an epilog scope: the codes still to undo (the epilog's codes, less those of
        the instructions already run), else None."""
        for start, index in func.epilogs:
            start += base
            codes = func.codes(index)
            count = sum(1 for c in codes if c.instruction)
            if start <= pc <= start + 4 * count:
                return codes[(pc - start) // 4:]
        return None


def _skip_prolog(codes: list[Code], offset: int) -> list[Code]:
    """pc `offset` bytes into the function: when inside the prolog, only the instructions
    already run are undone (the last codes of the list)."""
    count = sum(1 for c in codes if c.instruction and c.op != "end")
    run = offset // 4
    if run >= count:
        return codes
    return codes[count - run:]


def _next_reg(reg: str, op: str) -> str:
    if op.startswith(("save_fplr", "save_lrpair")):
        return "lr"
    n = int(reg[1:]) + 1
    return f"{reg[0]}{n}" if reg[0] == "d" else _x(n)
