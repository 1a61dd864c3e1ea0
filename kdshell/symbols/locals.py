"""Local variables and parameters of a function, from its records in a private PDB (for `dv`,
and for `kp` through kdshell.stack.params).

    proc = procedure_at(pdb, rva)        -> Procedure | None (no procedure record at rva)
    registers = frame_registers(frame, is64)   # what a stack frame knows
    for var in proc.visible(rva):        # the variables in scope at rva
        where = locate(proc, var, registers, rva, size)   # memory address, register, or nothing

Layout facts are from public descriptions of CodeView (LLVM's "CodeView Symbol Records" and
its record definitions, cvinfo.h as mirrored in Wine's cvconst.h); the code is ours.

A procedure (S_GPROC32/S_LPROC32 and their _ID/_DPC forms) is followed in its module's symbol
stream by its records, up to the matching S_END (S_PROC_ID_END for the _ID forms). Scopes nest:
S_BLOCK32 (a lexical block, with its address range), S_INLINESITE/S_INLINESITE2 (code of another
function inlined here: its locals are skipped, WinDbg shows them only for an inline frame),
S_THUNK32, S_SEPCODE and S_WITH32 open one; S_END, S_PROC_ID_END and S_INLINESITE_END close one.

    S_FRAMEPROC 0x1012          frame size and flags; bits 14-15 say which register locals are
                                addressed from ("frame pointer"), bits 16-17 the same for the
                                parameters: 0 none, 1 stack pointer (x86: VFRAME), 2 RBP/EBP,
                                3 R13 (x64) / EBX (x86)
    S_REGREL32 0x1111           int32 offset, uint32 type, uint16 register, name: [register+offset]
    S_BPREL32 0x110B            int32 offset, uint32 type, name: [EBP+offset] (RBP on x64)
    S_REGISTER 0x1106           uint32 type, uint16 register, name: in the register
    S_LOCAL 0x113E              uint32 type, uint16 flags (bit 0: a parameter), name; where it
                                lives follows in S_DEFRANGE_* records, each valid over an address
                                range (offset, section, length) minus gaps (offset from the range
                                start, length), all as 16-bit values:
      S_DEFRANGE_REGISTER 0x1141                uint16 register, uint16 may-have-no-name, range
      S_DEFRANGE_FRAMEPOINTER_REL 0x1142        int32 offset from the frame pointer, range
      S_DEFRANGE_SUBFIELD_REGISTER 0x1143       uint16 register, uint16, uint32 offset in the
                                                variable (low 12 bits), range: a piece only
      S_DEFRANGE_FRAMEPOINTER_REL_FULL_SCOPE 0x1144  int32 offset, valid in the whole function
      S_DEFRANGE_REGISTER_REL 0x1145            uint16 register, uint16 flags, int32 offset, range

Parameters: S_LOCAL says it itself. S_REGREL32, S_BPREL32 and S_REGISTER carry no flag (MSVC
writes them); when no S_LOCAL of the procedure is flagged a parameter, we take the first N of
them outside any block as the parameters, N being the argument count of the procedure's
LF_PROCEDURE type (its arguments come first, as MSVC writes them); without a type, none is a
parameter. Where S_LOCALs do flag parameters, unflagged records are locals (an optimised build
may describe a local whose address is taken by S_REGREL32 next to S_LOCAL parameters).
`dv` and `kp` (kdshell.stack.params) both take their parameters from here.

A hostile PDB (a record running past the stream, a procedure without its end record, scopes
nested deeper than MAX_SCOPE_DEPTH) raises a one-line SymbolFileError; the walk only moves
forward, record by record, so it always ends. Pinned by tests/test_locals.py.
"""
from __future__ import annotations

import bisect
import struct
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AbstractSet, Callable, Mapping, NamedTuple, Protocol

from kdshell.errors import KdError, SymbolFileError
from kdshell.symbols import types as T

if TYPE_CHECKING:
    from kdshell.symbols.pdb import PdbFile

RvaOf = Callable[[int, int], int | None]  # (section, offset) -> RVA; None: no address

# Record kinds (CodeView S_*)
S_END, S_FRAMEPROC, S_BLOCK32, S_WITH32, S_THUNK32 = 0x0006, 0x1012, 0x1103, 0x1104, 0x1102
S_REGISTER, S_BPREL32, S_REGREL32, S_SEPCODE = 0x1106, 0x110B, 0x1111, 0x1132
S_LPROC32, S_GPROC32, S_LPROC32_ID, S_GPROC32_ID = 0x110F, 0x1110, 0x1146, 0x1147
S_LPROC32_DPC, S_LPROC32_DPC_ID = 0x1155, 0x1156
S_LOCAL, S_DEFRANGE_REGISTER, S_DEFRANGE_FRAMEPOINTER_REL = 0x113E, 0x1141, 0x1142
S_DEFRANGE_SUBFIELD_REGISTER, S_DEFRANGE_FRAMEPOINTER_REL_FULL_SCOPE = 0x1143, 0x1144
S_DEFRANGE_REGISTER_REL = 0x1145
S_INLINESITE, S_INLINESITE_END, S_PROC_ID_END, S_INLINESITE2 = 0x114D, 0x114E, 0x114F, 0x115D
PROC_KINDS = frozenset((S_LPROC32, S_GPROC32, S_LPROC32_ID, S_GPROC32_ID, S_LPROC32_DPC,
                        S_LPROC32_DPC_ID))
INLINE_KINDS = frozenset((S_INLINESITE, S_INLINESITE2))
SCOPE_OPEN = PROC_KINDS | INLINE_KINDS | {S_BLOCK32, S_THUNK32, S_SEPCODE, S_WITH32}
SCOPE_CLOSE = frozenset((S_END, S_PROC_ID_END, S_INLINESITE_END))
LOCAL_IS_PARAM = 0x0001  # S_LOCAL flags bit 0 (CV_LVARFLAGS.fIsParam)
CV_SIGNATURE_C13 = 4
MAX_SCOPE_DEPTH = 64  # real code nests blocks a few levels; a hostile stream may not recurse on

MACHINE_I386 = 0x14C
MACHINE_ARM64 = 0xAA64

# Where a variable is (Location.kind)
REGISTER, REGISTER_RELATIVE, FRAME_RELATIVE, SUBFIELD = "register", "regrel", "framerel", "subfield"


class Register(NamedTuple):
    """A CodeView register: its name (`ecx`, `r8d`, `ah`), the full register it is part of
    (`rcx`, `r8`, `rax`; the key in a frame's register dict) and where in it (bit shift, width)."""

    name: str
    full: str | None
    shift: int = 0
    bits: int = 64


def _register_table(is64: bool) -> dict[int, Register]:
    """CodeView register numbers (CV_REG_* / CV_AMD64_*): 1-8 the 8-bit, 9-16 the 16-bit,
    17-24 the 32-bit forms of the first eight registers, XMM0-7 154-161; x64 adds XMM8-15
    (252-259), SIL..SPL (324-327), RAX..RSP
    (328-335, in *that* order: rax rbx rcx rdx rsi rdi rbp rsp), R8..R15 (336-343) and their
    byte, word and dword forms (344, 352, 360 upward). VFRAME (30006) is x86's virtual frame."""
    wide = "r" if is64 else "e"
    first8 = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"]  # CodeView's order for 1-24
    bits = 64 if is64 else 32
    table: dict[int, Register] = {}
    for i, low in enumerate(("al", "cl", "dl", "bl")):
        table[1 + i] = Register(low, wide + first8[i], 0, 8)
        table[5 + i] = Register(low[0] + "h", wide + first8[i], 8, 8)
    for i, r in enumerate(first8):
        table[9 + i] = Register(r, wide + r, 0, 16)
        table[17 + i] = Register("e" + r, wide + r, 0, 32)
    table[33] = Register(wide + "ip", wide + "ip", 0, bits)
    for i in range(8):  # XMM0-7 (154-161); x64 adds XMM8-15 (252-259)
        table[154 + i] = Register(f"xmm{i}", f"xmm{i}", 0, 128)
        if is64:
            table[252 + i] = Register(f"xmm{8 + i}", f"xmm{8 + i}", 0, 128)
    if not is64:
        table[30006] = Register("vframe", "vframe", 0, 32)  # CV_ALLREG_VFRAME
        return table
    for i, r in enumerate(("si", "di", "bp", "sp")):
        table[324 + i] = Register(r + "l", "r" + r, 0, 8)
    for i, r in enumerate(("ax", "bx", "cx", "dx", "si", "di", "bp", "sp")):
        table[328 + i] = Register("r" + r, "r" + r, 0, 64)
    for i in range(8):
        r = f"r{8 + i}"
        table[336 + i] = Register(r, r, 0, 64)
        table[344 + i] = Register(r + "b", r, 0, 8)
        table[352 + i] = Register(r + "w", r, 0, 16)
        table[360 + i] = Register(r + "d", r, 0, 32)
    return table


def _register_table_arm64() -> dict[int, Register]:
    """CodeView's ARM64 numbers (CV_ARM64_*): W0-W30 10-40 (the low halves), X0-X28 50-78,
    FP 79, LR 80, SP 81, PC 83 (clang's PDBs place -O0 locals at ARM64_FP/ARM64_SP + offset)."""
    full = [f"x{i}" for i in range(29)] + ["fp", "lr"]
    table = {10 + i: Register(f"w{i}", name, 0, 32) for i, name in enumerate(full)}
    table.update({50 + i: Register(name, name, 0, 64) for i, name in enumerate(full)})
    table.update({81: Register("sp", "sp", 0, 64), 83: Register("pc", "pc", 0, 64)})
    return table


REGISTERS_X64 = _register_table(True)
REGISTERS_X86 = _register_table(False)
REGISTERS_ARM64 = _register_table_arm64()
# S_FRAMEPROC's encoded frame-pointer registers
FRAME_BASE_X64 = {1: 335, 2: 334, 3: 341}  # RSP, RBP, R13
FRAME_BASE_X86 = {1: 30006, 2: 22, 3: 20}  # VFRAME, EBP, EBX


def register(number: int, is64: bool, arm64: bool = False) -> Register:
    """The register CodeView number `number` names; an unknown number gives a Register without
    a full register (its value is never available)."""
    found = (REGISTERS_ARM64 if arm64 else REGISTERS_X64 if is64 else REGISTERS_X86).get(number)
    return found if found is not None else Register(f"<register {number}>", None)


class AddressRange(NamedTuple):
    """Where a location holds: [start, start+length) as RVAs, minus the gaps (offset from start,
    length). `section`/`offset` are the record's own segment:offset (llvm-pdbutil prints them)."""

    start: int | None
    length: int
    gaps: tuple[tuple[int, int], ...] = ()
    section: int = 0
    offset: int = 0

    def covers(self, rva: int) -> bool:
        if self.start is None or not self.start <= rva < self.start + self.length:
            return False
        return not any(self.start + g <= rva < self.start + g + n for g, n in self.gaps)


class Location(NamedTuple):
    """One place a variable lives. FRAME_RELATIVE has no register here: it is the procedure's
    frame pointer for locals or for parameters (Procedure.frame_register). `range` None: the
    whole scope."""

    kind: str
    register: Register | None
    offset: int = 0
    range: AddressRange | None = None
    record: int = 0  # the S_* kind that said it
    parent_offset: int = 0  # SUBFIELD: where in the variable this piece is


@dataclass
class Variable:
    name: str
    type_index: int
    is_param: bool
    record: int  # S_LOCAL, S_REGREL32, S_BPREL32 or S_REGISTER
    locations: list[Location] = field(default_factory=list)
    flags: int = 0  # S_LOCAL flags
    scope: AddressRange | None = None  # the innermost S_BLOCK32 holding it; None: the function
    offset: int = 0  # of its record in the module's symbol stream


@dataclass
class Procedure:
    name: str
    rva: int | None
    length: int
    type_index: int
    is64: bool
    frame_flags: int | None = None  # S_FRAMEPROC flags, None without one
    variables: list[Variable] = field(default_factory=list)
    offset: int = 0  # of the procedure record in the module's symbol stream
    arm64: bool = False  # ARM64 code: CodeView's ARM64 register numbers

    def frame_register(self, params: bool) -> Register | None:
        """The register FRAME_RELATIVE locations of parameters (or of locals) count from."""
        if self.frame_flags is None:
            return None
        code = (self.frame_flags >> (16 if params else 14)) & 3
        number = (FRAME_BASE_X64 if self.is64 else FRAME_BASE_X86).get(code)
        return register(number, self.is64) if number is not None else None

    def mark_parameters(self, count: int) -> None:
        """The first `count` unflagged records (S_REGREL32/S_BPREL32/S_REGISTER) outside any
        block are the parameters (see the module note)."""
        for var in self.variables:
            if count <= 0:
                break
            if var.record != S_LOCAL and var.scope is None:
                var.is_param = True
                count -= 1

    def visible(self, rva: int) -> list[Variable]:
        """The variables in scope at `rva`: the function's own, and those of the blocks that
        hold rva; parameters first, then locals, each in record order (as WinDbg lists them)."""
        shown = [v for v in self.variables if v.scope is None or v.scope.covers(rva)]
        return [v for v in shown if v.is_param] + [v for v in shown if not v.is_param]


# --------------------------------------------------------------------------------------------
# Decoding


def _cstr(buf: bytes, pos: int, end: int) -> str:
    stop = buf.find(b"\0", pos, end)
    return bytes(buf[pos:stop if stop >= 0 else end]).decode("utf-8", "replace")


def _range(buf: bytes, p: int, end: int, rva_of: RvaOf) -> AddressRange:
    """A CV_LVAR_ADDR_RANGE (uint32 offset, uint16 section, uint16 length) and the
    CV_LVAR_ADDR_GAPs (uint16 offset, uint16 length) filling the rest of the record."""
    off, sect, length = struct.unpack_from("<IHH", buf, p)
    gaps = tuple(struct.unpack_from("<HH", buf, q) for q in range(p + 8, end - 3, 4))
    return AddressRange(rva_of(sect, off), length, gaps, sect, off)


def decode_procedure(data: bytes, pos: int, rva_of: RvaOf, is64: bool,
                     end: int | None = None, what: str = "symbol stream", arm64: bool = False) -> Procedure:
    """The procedure whose record starts at `pos` in `data` (a module symbol stream), with its
    variables, read up to its end record. `rva_of(section, offset)` gives RVAs. Each record is
    decoded from its own bytes, so a record shorter than its kind is an error, not a read
    into the next one."""
    end = len(data) if end is None else min(end, len(data))
    header = struct.Struct("<HH").unpack_from
    if pos + 4 > end:
        raise SymbolFileError(f"{what}: no procedure record at offset {pos:#x}")
    n, kind = header(data, pos)
    rec_end = pos + 2 + n
    if kind not in PROC_KINDS or n < 2 + 35 or rec_end > end:
        raise SymbolFileError(f"{what}: the record at offset {pos:#x} is not a procedure")
    # Parent, End, Next, CodeSize, DbgStart, DbgEnd, FunctionType, Offset, Segment, Flags, Name
    length, = struct.unpack_from("<I", data, pos + 16)
    ti, off, seg = struct.unpack_from("<IIH", data, pos + 28)
    proc = Procedure(_cstr(data, pos + 39, rec_end), rva_of(seg, off), length, ti, is64,
                     offset=pos, arm64=arm64)
    label = proc.name or hex(pos)
    scopes: list[tuple[int, AddressRange | None]] = [(kind, None)]  # (opening kind, block range)
    inlined = 0  # open inline sites: their records belong to another function
    current: Variable | None = None
    pos = rec_end
    while scopes:
        if pos + 4 > end:
            raise SymbolFileError(f"{what}: procedure {label} has no end record "
                                  f"(its records run to the end of the stream at {end:#x})")
        n, kind = header(data, pos)
        if n < 2 or pos + 2 + n > end:
            raise SymbolFileError(f"{what}: the record at offset {pos:#x} in procedure "
                                  f"{label} runs past the stream (length {n})")
        at, body, pos = pos, bytes(data[pos + 4:pos + 2 + n]), pos + 2 + n
        try:
            if kind in SCOPE_CLOSE:
                opened, _ = scopes.pop()
                inlined -= opened in INLINE_KINDS
                current = None
            elif kind in SCOPE_OPEN:
                if len(scopes) >= MAX_SCOPE_DEPTH:
                    raise SymbolFileError(f"{what}: procedure {label} nests scopes more than "
                                          f"{MAX_SCOPE_DEPTH} deep (offset {at:#x})")
                block = scopes[-1][1]
                if kind == S_BLOCK32:  # Parent, End, Length, Offset, Segment, Name
                    blen, boff, bseg = struct.unpack_from("<IIH", body, 8)
                    block = AddressRange(rva_of(bseg, boff), blen, (), bseg, boff)
                scopes.append((kind, block))
                inlined += kind in INLINE_KINDS
                current = None
            elif not inlined:
                current = _record(proc, kind, body, at, scopes[-1][1], current, rva_of, is64)
        except struct.error:
            raise SymbolFileError(f"{what}: the record at offset {at:#x} in procedure {label} "
                                  f"is shorter than its kind ({kind:#x}) requires") from None
    return proc


def _record(proc: Procedure, kind: int, d: bytes, at: int, scope: AddressRange | None,
            current: Variable | None, rva_of: RvaOf, is64: bool) -> Variable | None:
    """Decode one record (`d`: its bytes after the kind) inside the procedure; returns the
    S_LOCAL that S_DEFRANGE_* records that follow belong to (None when the next records cannot
    belong to one)."""
    add = proc.variables.append
    p, end = 0, len(d)
    if kind == S_FRAMEPROC:  # cbFrame, cbPad, offPad, cbSaveRegs, offExHdlr, sectExHdlr, flags
        proc.frame_flags, = struct.unpack_from("<I", d, p + 22)
        return current
    if kind == S_LOCAL:
        ti, flags = struct.unpack_from("<IH", d, p)
        var = Variable(_cstr(d, p + 6, end), ti, bool(flags & LOCAL_IS_PARAM), kind, [], flags,
                       scope, at)
        add(var)
        return var
    if kind == S_REGREL32:
        off, ti, reg = struct.unpack_from("<iIH", d, p)
        loc = Location(REGISTER_RELATIVE, register(reg, is64, proc.arm64), off, None, kind)
        add(Variable(_cstr(d, p + 10, end), ti, False, kind, [loc], 0, scope, at))
        return None
    if kind == S_BPREL32:
        off, ti = struct.unpack_from("<iI", d, p)
        loc = Location(REGISTER_RELATIVE, register(334 if is64 else 22, is64), off, None, kind)
        add(Variable(_cstr(d, p + 8, end), ti, False, kind, [loc], 0, scope, at))
        return None
    if kind == S_REGISTER:
        ti, reg = struct.unpack_from("<IH", d, p)
        loc = Location(REGISTER, register(reg, is64, proc.arm64), 0, None, kind)
        add(Variable(_cstr(d, p + 6, end), ti, False, kind, [loc], 0, scope, at))
        return None
    if current is None:
        return None
    defrange: Location | None = None  # where the current S_LOCAL is, over a range
    if kind == S_DEFRANGE_REGISTER:
        reg, _ = struct.unpack_from("<HH", d, p)
        defrange = Location(REGISTER, register(reg, is64, proc.arm64), 0, _range(d, p + 4, end, rva_of), kind)
    elif kind == S_DEFRANGE_FRAMEPOINTER_REL:
        off, = struct.unpack_from("<i", d, p)
        defrange = Location(FRAME_RELATIVE, None, off, _range(d, p + 4, end, rva_of), kind)
    elif kind == S_DEFRANGE_FRAMEPOINTER_REL_FULL_SCOPE:
        off, = struct.unpack_from("<i", d, p)
        defrange = Location(FRAME_RELATIVE, None, off, None, kind)
    elif kind == S_DEFRANGE_REGISTER_REL:
        reg, _, off = struct.unpack_from("<HHi", d, p)
        defrange = Location(REGISTER_RELATIVE, register(reg, is64, proc.arm64), off,
                            _range(d, p + 8, end, rva_of), kind)
    elif kind == S_DEFRANGE_SUBFIELD_REGISTER:
        reg, _, parent = struct.unpack_from("<HHI", d, p)
        defrange = Location(SUBFIELD, register(reg, is64, proc.arm64), 0, _range(d, p + 8, end, rva_of), kind,
                            parent & 0xFFF)
    if defrange is not None:
        current.locations.append(defrange)
    return current


# --------------------------------------------------------------------------------------------
# Finding a function's records in a PDB


class _ModuleIndex(NamedTuple):
    rvas: list[int]
    offsets: list[int]


# PdbFile -> {module: its procedure index}
_INDEX: weakref.WeakKeyDictionary[PdbFile, dict[int, _ModuleIndex]] = weakref.WeakKeyDictionary()


def _module_index(pdb: PdbFile, module: int) -> tuple[bytes, _ModuleIndex]:
    """The module's symbol stream and where each procedure record in it starts, by RVA."""
    m = pdb.modules[module]
    data = pdb.msf.stream(m.stream)
    per_pdb = _INDEX.setdefault(pdb, {})
    found = per_pdb.get(module)
    if found is None:
        end = min(m.symbols_size, len(data))
        pairs = []
        pos = 4  # after the CV_SIGNATURE_C13 word
        while pos + 4 <= end:
            n, kind = struct.unpack_from("<HH", data, pos)
            if n < 2 or pos + 2 + n > end:
                break  # the address index (pdb._walk) warns about it; records before it count
            if kind in PROC_KINDS and n >= 2 + 35:
                off, seg = struct.unpack_from("<IH", data, pos + 32)
                rva = pdb.rva_of(seg, off)
                if rva is not None:
                    pairs.append((rva, pos))
            pos += 2 + n
        pairs.sort()
        found = per_pdb[module] = _ModuleIndex([r for r, _ in pairs], [o for _, o in pairs])
    return data, found


def procedure_at(pdb: PdbFile, rva: int) -> Procedure | None:
    """The procedure (with its variables) whose code holds `rva`, from the module symbol stream
    of a private PDB; None when the PDB has no procedure record there (a public PDB, assembly
    code). A corrupt record raises SymbolFileError."""
    bounds = pdb.function_bounds(rva)  # not lookup(rva): a label inside the function may be nearer
    if bounds is None:
        return None
    hit = pdb.lookup(bounds[0])
    if hit is None:
        return None
    sym, _ = hit  # at the function's start a function is preferred over other symbols
    if sym.kind != "function" or sym.rva != bounds[0] or not 0 <= sym.module < len(pdb.modules):
        return None
    m = pdb.modules[sym.module]
    if not pdb.msf.has_stream(m.stream):
        return None
    data, index = _module_index(pdb, sym.module)
    i = bisect.bisect_left(index.rvas, sym.rva)
    if i >= len(index.rvas) or index.rvas[i] != sym.rva:
        return None
    obj = m.name.replace("\\", "/").rsplit("/", 1)[-1]
    what = f"{getattr(pdb, '_label', None) or 'PDB'} module {obj}"
    proc = decode_procedure(data, index.offsets[i], pdb.rva_of, pdb.machine != MACHINE_I386,
                            min(m.symbols_size, len(data)), what, arm64=pdb.machine == MACHINE_ARM64)
    # unflagged records are parameters only where no S_LOCAL says which are (see the module note)
    if (any(v.record != S_LOCAL for v in proc.variables)
            and not any(v.is_param for v in proc.variables)):
        proc.mark_parameters(argument_count(pdb, proc.type_index))
    return proc


def argument_types(pdb: PdbFile, type_index: int) -> list[T.Type]:
    """The argument types the procedure type LF_PROCEDURE `type_index` declares (`(void)` has
    none); [] when the type is missing or not a procedure."""
    if not type_index:
        return []
    try:
        t = pdb.type_by_index(type_index)
    except KdError:
        return []
    if t.kind != T.FUNCTION:
        return []
    args = list(t.args)
    if len(args) == 1 and args[0].strip().kind == T.BASE and args[0].strip().encoding in (T.VOID, T.NOTYPE):
        return []
    return args


def argument_count(pdb: PdbFile, type_index: int) -> int:
    """How many arguments the procedure type `type_index` declares (see argument_types)."""
    return len(argument_types(pdb, type_index))


# --------------------------------------------------------------------------------------------
# Where a variable is in a frame


class Where(NamedTuple):
    """A variable's place in a frame: in memory at `address` (with `base`/`offset` saying
    from which register), or in `register` holding `value`; neither when it is unavailable
    (not live at this instruction, or the register was not restored for this frame)."""

    address: int | None = None
    register: Register | None = None
    value: int | None = None
    base: Register | None = None
    offset: int = 0

    @property
    def available(self) -> bool:
        return self.address is not None or self.value is not None


class FrameFacts(Protocol):
    """What frame_registers reads of a stack frame (kdshell.stack.walk.Frame, a floor above)."""

    @property
    def registers(self) -> Mapping[str, int]: ...

    @property
    def known(self) -> AbstractSet[str]: ...

    @property
    def sp(self) -> int: ...

    @property
    def ip(self) -> int: ...

    @property
    def frame_size(self) -> int | None: ...

    @property
    def trap_frame(self) -> int | None: ...


def frame_registers(frame: FrameFacts, is64: bool) -> dict[str, int]:
    """The registers `locate` may use in a stack frame (kdshell.stack.walk.Frame): those the
    walk knows for it (frames above 0 keep only what the unwinder restored; a thread's or a trap
    frame's context only what it saved), its stack and instruction pointers, and on x86 VFRAME:
    where EBP would point in a standard frame, just below the return address (the caller's
    ESP - 8, when the walk stepped to the caller by its return address and not through a trap
    frame; else EBP, when known). `dv` and `kp` both place variables with these."""
    regs = {k: v for k, v in frame.registers.items() if k in frame.known}
    # an ARM64 frame's registers are ARM64's (the walk names them pc, sp, fp, x0...)
    sp, ip = ("sp", "pc") if "pc" in frame.registers else ("rsp", "rip") if is64 else ("esp", "eip")
    regs[sp], regs[ip] = frame.sp, frame.ip
    if not is64:
        if frame.frame_size is not None and frame.trap_frame is None:
            regs["vframe"] = (frame.sp + frame.frame_size - 8) & 0xFFFFFFFF
        elif "ebp" in regs:
            regs["vframe"] = regs["ebp"]
    return regs


def _register_value(reg: Register | None, registers: Mapping[str, int]) -> int | None:
    if reg is None or not reg.full:
        return None
    value = registers.get(reg.full)
    return None if value is None else (value >> reg.shift) & ((1 << reg.bits) - 1)


def locate(proc: Procedure, var: Variable, registers: Mapping[str, int], rva: int,
           size: int | None = None) -> Where:
    """Where `var` (of `size` bytes) is at `rva` in a frame whose *known* registers are
    `registers` (full names: `rcx`, `r8`, `esp`; `vframe` on x86). The first location whose
    range covers rva wins. A variable kept in pieces (SUBFIELD: x86 puts a 64-bit value in two
    registers) is put together when every byte of it is in a known register there."""
    loc = next((x for x in var.locations if x.range is None or x.range.covers(rva)), None)
    if loc is None:
        return Where()
    mask = 0xFFFF_FFFF_FFFF_FFFF if proc.is64 else 0xFFFF_FFFF
    if loc.kind == SUBFIELD:
        pieces = [x for x in var.locations if x.kind == SUBFIELD and x.range is not None
                  and x.range.covers(rva)]
        value = 0
        covered: set[int] = set()
        for piece in pieces:
            reg = piece.register
            part = _register_value(reg, registers)
            if part is None or reg is None:
                return Where(register=loc.register)
            value |= part << (8 * piece.parent_offset)
            covered.update(range(piece.parent_offset, piece.parent_offset + reg.bits // 8))
        if size is None or not covered.issuperset(range(size)):
            return Where(register=loc.register)
        return Where(register=loc.register, value=value)
    if loc.kind == REGISTER:
        return Where(register=loc.register, value=_register_value(loc.register, registers))
    base = loc.register if loc.kind == REGISTER_RELATIVE else proc.frame_register(var.is_param)
    at = registers.get(base.full) if base is not None and base.full else None
    if at is None:
        return Where(base=base, offset=loc.offset)
    return Where(address=(at + loc.offset) & mask, base=base, offset=loc.offset)
