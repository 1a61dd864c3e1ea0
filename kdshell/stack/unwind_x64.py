"""x64 unwinding: the .pdata table, UNWIND_INFO, and one RtlVirtualUnwind-like step.

Everything here reads through two callables and never sees the Session:

- an *image reader* `read_image(rva, size) -> bytes` (raises MemoryNotPresent or another KdError
  for bytes it does not have) - the module's headers, .pdata and .xdata, from dump memory
  (`lambda rva, n: memory.read(base + rva, n)`) or from a PE file laid out as mapped
  (`mapped_image_reader(buf)`);
- a *memory reader* `read(address, size) -> bytes` for the stack (and code bytes when the image
  reader has none).

`virtual_unwind(context, image_lookup, read)` takes a register context (a dict of WinDbg's
lower-case names, as `kdshell.dumpfile.context.decode_context` gives: rax..r15, rip, efl, cs, ss,
xmm0..xmm15 as 128-bit ints) and returns the caller's context and an `UnwindStep` saying how it
got there (x64-unwind.md §2.6):

    entry = lookup(RIP)                      no entry: leaf, RIP <- [RSP], RSP += 8
    RIP inside an epilog?                    emulate the rest of the epilog (§2.4)
    otherwise apply the unwind codes         prolog-offset rule (§2.2), chained info (§2.5)
    PUSH_MACHFRAME applied?                  RIP/RSP come from the machine frame (trap frame)
    else                                     RIP <- [RSP], RSP += 8

Hostile unwind data (counts past the image, unknown opcodes, chain loops, absurd allocations)
raises UnwindError, a KdError with one line; nothing here loops without a bound.
"""
from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from kdshell.errors import KdError

ImageRead = Callable[[int, int], bytes]
MemoryRead = Callable[[int, int], bytes]

# Register numbers of UNWIND_CODE.OpInfo / UNWIND_INFO.FrameRegister (x64-unwind.md §2), the
# order of CONTEXT.Rax..R15.
GPR = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
       "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
NONVOLATILE = frozenset(("rbx", "rbp", "rsi", "rdi", "r12", "r13", "r14", "r15")
                        + tuple(f"xmm{i}" for i in range(6, 16)))
VOLATILE = frozenset(("rax", "rcx", "rdx", "r8", "r9", "r10", "r11")
                     + tuple(f"xmm{i}" for i in range(6)))

# UNWIND_CODE.UnwindOp (x64-unwind.md §2.1)
UWOP_PUSH_NONVOL = 0
UWOP_ALLOC_LARGE = 1
UWOP_ALLOC_SMALL = 2
UWOP_SET_FPREG = 3
UWOP_SAVE_NONVOL = 4
UWOP_SAVE_NONVOL_FAR = 5
UWOP_EPILOG = 6            # v2; UWOP_SAVE_XMM (obsolete, 2 slots) in v1
UWOP_SPARE_CODE = 7        # v2; UWOP_SAVE_XMM_FAR (obsolete, 3 slots) in v1
UWOP_SAVE_XMM128 = 8
UWOP_SAVE_XMM128_FAR = 9
UWOP_PUSH_MACHFRAME = 10

OP_NAMES = {
    UWOP_PUSH_NONVOL: "PUSH_NONVOL", UWOP_ALLOC_LARGE: "ALLOC_LARGE", UWOP_ALLOC_SMALL: "ALLOC_SMALL",
    UWOP_SET_FPREG: "SET_FPREG", UWOP_SAVE_NONVOL: "SAVE_NONVOL", UWOP_SAVE_NONVOL_FAR: "SAVE_NONVOL_FAR",
    UWOP_EPILOG: "EPILOG", UWOP_SPARE_CODE: "SPARE", UWOP_SAVE_XMM128: "SAVE_XMM128",
    UWOP_SAVE_XMM128_FAR: "SAVE_XMM128_FAR", UWOP_PUSH_MACHFRAME: "PUSH_MACHFRAME",
}

UNW_FLAG_EHANDLER = 0x1
UNW_FLAG_UHANDLER = 0x2
UNW_FLAG_CHAININFO = 0x4

MAX_CHAIN = 32            # chained UNWIND_INFO depth (kdmp-parser-rs / MemProcFS use the same order)
MAX_INDIRECT = 4          # RUNTIME_FUNCTION entries pointing at entries (UnwindData & 1)
MAX_FRAME_SIZE = 0x1000_0000  # 256 MiB: no stack frame is larger; a bigger one is corrupt data
MAX_RUNTIME_FUNCTIONS = 0x40000
MAX_EPILOG_BYTES = 64     # add/lea + 16 pops + a terminator fits easily
MACHINE_FRAME_RIP_TO_TRAP_FRAME = 0x168  # KTRAP_FRAME.Rip (windbg.md §9); frames.py owns the layout

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_RF = struct.Struct("<III")


class UnwindError(KdError):
    """Unwind data that cannot be used: corrupt, hostile, or not readable."""


class NoUnwindData(UnwindError):
    """The module's image (headers/.pdata/.xdata) is not available: use another strategy."""


# ------------------------------------------------------------------------------------------
# Parsed structures


@dataclass(frozen=True)
class RuntimeFunction:
    """One .pdata entry (RVAs). `unwind_rva` is the UNWIND_INFO's RVA after following indirect
    entries; `entry_rva` is where in .pdata the (first) entry lives."""

    begin: int
    end: int
    unwind_rva: int
    entry_rva: int = 0


@dataclass(frozen=True)
class UnwindCode:
    """One decoded UNWIND_CODE (1 to 3 slots).

    `value` is the op's operand in bytes: the allocation size for ALLOC_*, the offset from the
    frame base for SAVE_*, 16 x FrameOffset for SET_FPREG, 1/0 (error code) for PUSH_MACHFRAME,
    the raw 16-bit slot for EPILOG.
    """

    offset: int      # CodeOffset: prolog offset of the end of the instruction
    op: int
    op_info: int
    value: int
    slots: int

    @property
    def name(self) -> str:
        return OP_NAMES.get(self.op, f"OP{self.op}")

    @property
    def register(self) -> str | None:
        if self.op in (UWOP_PUSH_NONVOL, UWOP_SAVE_NONVOL, UWOP_SAVE_NONVOL_FAR):
            return GPR[self.op_info]
        if self.op in (UWOP_SAVE_XMM128, UWOP_SAVE_XMM128_FAR):
            return f"xmm{self.op_info}"
        return None


@dataclass(frozen=True)
class UnwindInfo:
    rva: int
    version: int
    flags: int
    prolog_size: int
    count_of_codes: int
    frame_register: int      # 0 = none
    frame_offset: int        # bytes (16 x the 4-bit field)
    codes: tuple[UnwindCode, ...]
    epilogs: tuple[tuple[int, int], ...] = ()   # v2: (distance back from EndAddress, size)
    handler_rva: int | None = None
    chained: RuntimeFunction | None = None

    @property
    def frame_register_name(self) -> str | None:
        return GPR[self.frame_register] if self.frame_register else None


@dataclass
class UnwindStep:
    """What one virtual_unwind step did.

    kind: "unwind" (.pdata codes), "epilog" (RIP was in an epilog, emulated), "leaf" (no .pdata
    entry: RIP <- [RSP]).
    child_sp: the frame's RSP (WinDbg's Child-SP); return_address / caller_sp: the caller's RIP
    and RSP; return_slot: where the return address was read (None after a machine frame).
    establisher_frame: the frame base the SAVE codes refer to (x64-unwind.md §2.1).
    machine_frame: address of the machine frame's RIP slot when PUSH_MACHFRAME was applied;
    trap_frame: the KTRAP_FRAME around it (machine_frame - 0x168, windbg.md §9).
    restored: register -> stack address it was read from (nonvolatiles, xmm, rip, rsp...).
    """

    kind: str
    child_sp: int
    return_address: int
    caller_sp: int
    image_base: int | None = None
    function: RuntimeFunction | None = None
    info: UnwindInfo | None = None
    establisher_frame: int | None = None
    prolog_offset: int | None = None   # set when RIP was inside the prolog
    return_slot: int | None = None
    machine_frame: int | None = None
    error_code: bool = False
    trap_frame: int | None = None
    used_frame_register: bool = False   # the result depends on the frame register's value
    restored: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------
# Reading images


def mapped_image_reader(image: bytes | bytearray | memoryview) -> ImageRead:
    """An image reader over bytes laid out as mapped (offset == RVA), e.g. pefile's
    `get_memory_mapped_image()`; reads past the end raise UnwindError."""
    view = memoryview(image)
    size = len(view)

    def read(rva: int, n: int) -> bytes:
        if rva < 0 or n < 0 or rva + n > size:
            raise UnwindError(f"image read at rva {rva:#x} (+{n:#x}) is past the image end {size:#x}")
        return bytes(view[rva : rva + n])

    return read


def exception_directory(read_image: ImageRead) -> tuple[int, int]:
    """(rva, size) of IMAGE_DIRECTORY_ENTRY_EXCEPTION from a PE32+ image's headers."""
    try:
        mz = read_image(0, 0x40)
        if mz[:2] != b"MZ":
            raise UnwindError("image has no MZ header")
        lfanew = _U32.unpack_from(mz, 0x3C)[0]
        if lfanew > 0x10000:
            raise UnwindError(f"e_lfanew {lfanew:#x} is absurd")
        nt = read_image(lfanew, 0x18 + 0x70 + 16 * 8)
    except UnwindError:
        raise
    except KdError as exc:
        raise NoUnwindData(f"image headers not available ({exc})") from None
    if nt[:4] != b"PE\0\0":
        raise UnwindError("image has no PE signature")
    magic = struct.unpack_from("<H", nt, 0x18)[0]
    if magic != 0x20B:
        raise UnwindError(f"not a PE32+ image (optional header magic {magic:#x})")
    count = _U32.unpack_from(nt, 0x18 + 0x6C)[0]
    if count <= 3:
        return 0, 0
    rva, size = struct.unpack_from("<II", nt, 0x18 + 0x70 + 3 * 8)
    return rva, size


class FunctionTable:
    """A module's .pdata: binary search by RVA, indirect entries, cached UNWIND_INFO."""

    def __init__(self, read_image: ImageRead, pdata_rva: int | None = None, pdata_size: int | None = None):
        self.read_image = read_image
        if pdata_rva is None:
            pdata_rva, pdata_size = exception_directory(read_image)
        self.pdata_rva = pdata_rva
        count = (pdata_size or 0) // 12
        if count > MAX_RUNTIME_FUNCTIONS:
            raise UnwindError(f".pdata of {count} entries is too large")
        self.count = count
        self._begins: list[int] | None = None
        self._raw: list[tuple[int, int, int]] | None = None
        self._info: dict[int, UnwindInfo] = {}
        if count:
            try:
                blob = read_image(pdata_rva, count * 12)
            except KdError:
                blob = None  # partly paged out: search entry by entry (lazy)
            if blob is not None:
                self._raw = list(_RF.iter_unpack(blob))
                self._begins = [r[0] for r in self._raw]

    def _entry(self, index: int) -> tuple[int, int, int]:
        if self._raw is not None:
            return self._raw[index]
        try:
            return _RF.unpack(self.read_image(self.pdata_rva + 12 * index, 12))
        except KdError as exc:
            raise NoUnwindData(f".pdata entry {index} not available ({exc})") from None

    def entries(self) -> Iterator[RuntimeFunction]:
        """Every .pdata entry as stored (indirect entries are not followed)."""
        for i in range(self.count):
            b, e, u = self._entry(i)
            yield RuntimeFunction(b, e, u, self.pdata_rva + 12 * i)

    def lookup(self, rva: int) -> RuntimeFunction | None:
        """The entry covering `rva` (Begin <= rva < End), indirect entries followed; None: leaf."""
        if not self.count:
            return None
        if self._begins is not None:
            i = bisect.bisect_right(self._begins, rva) - 1
        else:
            lo, hi = 0, self.count
            while lo < hi:  # first index with begin > rva
                mid = (lo + hi) // 2
                if self._entry(mid)[0] <= rva:
                    lo = mid + 1
                else:
                    hi = mid
            i = lo - 1
        if i < 0:
            return None
        begin, end, unwind = self._entry(i)
        if not begin <= rva < end:
            return None
        entry_rva = self.pdata_rva + 12 * i
        for _ in range(MAX_INDIRECT):
            if not unwind & 1:
                return RuntimeFunction(begin, end, unwind, entry_rva)
            # Indirect: UnwindData & ~1 is the RVA of another RUNTIME_FUNCTION whose unwind data
            # describes this range (x64-unwind.md §1). Keep this entry's range.
            try:
                _, _, unwind = _RF.unpack(self.read_image(unwind & ~1, 12))
            except KdError as exc:
                raise UnwindError(f"indirect .pdata entry at rva {unwind & ~1:#x} unreadable ({exc})") from None
        raise UnwindError(f"indirect .pdata entries for rva {rva:#x} nest deeper than {MAX_INDIRECT}")

    def unwind_info(self, rva: int) -> UnwindInfo:
        info = self._info.get(rva)
        if info is None:
            info = parse_unwind_info(self.read_image, rva)
            self._info[rva] = info
        return info


def parse_unwind_info(read_image: ImageRead, rva: int) -> UnwindInfo:
    """Decode the UNWIND_INFO at `rva`; every slot count is checked against CountOfCodes."""
    try:
        head = read_image(rva, 4)
    except UnwindError:
        raise
    except KdError as exc:
        raise NoUnwindData(f"unwind info at rva {rva:#x} not available ({exc})") from None
    version, flags = head[0] & 7, head[0] >> 3
    if version not in (1, 2):
        raise UnwindError(f"unwind info at rva {rva:#x} has version {version}")
    prolog, count, fr = head[1], head[2], head[3]
    tail = 12 if flags & UNW_FLAG_CHAININFO else (4 if flags & (UNW_FLAG_EHANDLER | UNW_FLAG_UHANDLER) else 0)
    slots_bytes = 2 * (count + (count & 1))
    try:
        body = read_image(rva + 4, slots_bytes + tail)
    except UnwindError:
        raise
    except KdError as exc:
        raise UnwindError(f"unwind info at rva {rva:#x} ({count} codes) runs past readable data ({exc})") from None
    slots = struct.unpack_from(f"<{count}H", body)
    codes: list[UnwindCode] = []
    epilogs: list[tuple[int, int]] = []
    epilog_size = None
    i = 0
    while i < count:
        s = slots[i]
        off, op, opi = s & 0xFF, (s >> 8) & 0xF, s >> 12
        need = _slots(op, opi, version)
        if need is None:
            raise UnwindError(f"unwind info at rva {rva:#x}: unknown unwind op {op} in slot {i}")
        if i + need > count:
            raise UnwindError(f"unwind info at rva {rva:#x}: {OP_NAMES.get(op, op)} in slot {i} needs "
                              f"{need} slots, only {count - i} left")
        if op == UWOP_PUSH_NONVOL or op == UWOP_PUSH_MACHFRAME:
            value = opi
            if op == UWOP_PUSH_MACHFRAME and opi > 1:
                raise UnwindError(f"unwind info at rva {rva:#x}: PUSH_MACHFRAME with OpInfo {opi}")
        elif op == UWOP_ALLOC_LARGE:
            value = slots[i + 1] * 8 if opi == 0 else slots[i + 1] | slots[i + 2] << 16
        elif op == UWOP_ALLOC_SMALL:
            value = opi * 8 + 8
        elif op == UWOP_SET_FPREG:
            value = (fr >> 4) * 16
        elif op == UWOP_SAVE_NONVOL:
            value = slots[i + 1] * 8
        elif op in (UWOP_SAVE_NONVOL_FAR, UWOP_SAVE_XMM128_FAR):
            value = slots[i + 1] | slots[i + 2] << 16
        elif op == UWOP_SAVE_XMM128:
            value = slots[i + 1] * 16
        elif op == UWOP_EPILOG and version >= 2:
            value = s
            # First EPILOG code: CodeOffset = epilog size, OpInfo bit 0 = one at the function end.
            # Later ones: distance back from the function end, (OpInfo << 8) | CodeOffset (§2.3).
            if epilog_size is None:
                epilog_size = off
                if opi & 1:
                    epilogs.append((epilog_size, epilog_size))
            else:
                distance = (opi << 8) | off
                if distance:
                    epilogs.append((distance, epilog_size))
        else:  # v1 obsolete UWOP_SAVE_XMM / _FAR: slots consumed, nothing restored
            value = slots[i + 1] if need == 2 else slots[i + 1] | slots[i + 2] << 16
        codes.append(UnwindCode(off, op, opi, value, need))
        i += need
    handler = chained = None
    pos = slots_bytes
    if flags & UNW_FLAG_CHAININFO:
        b, e, u = _RF.unpack_from(body, pos)
        chained = RuntimeFunction(b, e, u)
    elif flags & (UNW_FLAG_EHANDLER | UNW_FLAG_UHANDLER):
        handler = _U32.unpack_from(body, pos)[0]
    return UnwindInfo(rva, version, flags, prolog, count, fr & 0xF, (fr >> 4) * 16, tuple(codes),
                      tuple(epilogs), handler, chained)


def _slots(op: int, op_info: int, version: int) -> int | None:
    if op in (UWOP_PUSH_NONVOL, UWOP_ALLOC_SMALL, UWOP_SET_FPREG, UWOP_PUSH_MACHFRAME):
        return 1
    if op == UWOP_ALLOC_LARGE:
        return 2 if op_info == 0 else 3 if op_info == 1 else None
    if op in (UWOP_SAVE_NONVOL, UWOP_SAVE_XMM128):
        return 2
    if op in (UWOP_SAVE_NONVOL_FAR, UWOP_SAVE_XMM128_FAR):
        return 3
    if op == UWOP_EPILOG:
        return 1 if version >= 2 else 2
    if op == UWOP_SPARE_CODE:
        return None if version >= 2 else 3
    return None


# ------------------------------------------------------------------------------------------
# Modules and caches


class UnwindCache:
    """FunctionTables per module (keyed by base, size and the reader), so warm walks skip the
    .pdata read and UNWIND_INFO parsing."""

    def __init__(self) -> None:
        self._tables: dict[tuple[int, int, int], FunctionTable] = {}

    def table(self, module: Any) -> FunctionTable:
        reader = getattr(module, "image", None)
        if reader is None:
            raise NoUnwindData(f"image of {getattr(module, 'name', 'module')} not available")
        key = (module.base, module.size, id(reader))
        table = self._tables.get(key)
        if table is None:
            pdata = getattr(module, "exception_directory", None)
            if pdata is not None:
                table = FunctionTable(reader, pdata[0], pdata[1])
            else:
                table = FunctionTable(reader)
            self._tables[key] = table
        return table

    def clear(self) -> None:
        self._tables.clear()


# ------------------------------------------------------------------------------------------
# The unwind step


def _qword(read: MemoryRead, address: int) -> int:
    return _U64.unpack(read(address & 0xFFFF_FFFF_FFFF_FFFF, 8))[0]


def virtual_unwind(context: dict[str, int], image_lookup: Callable[[int], Any], read: MemoryRead,
                   cache: UnwindCache | None = None, known: frozenset[str] | set[str] | None = None
                   ) -> tuple[dict[str, int], UnwindStep]:
    """One frame step from `context` (x64-unwind.md §2.6).

    `image_lookup(address)` gives the module containing an address (an object with .base,
    .size and .image, an image reader or None) or None. `known`, when given, names the
    registers whose values are trustworthy: a step that needs an unknown frame register is an
    UnwindError rather than a guess. Raises NoUnwindData when there is no module or its image
    is not available (the caller falls back to other strategies), UnwindError for unusable
    unwind data, MemoryNotPresent for unreadable stack.
    """
    rip = context["rip"]
    module = image_lookup(rip)
    if module is None:
        raise NoUnwindData(f"no module contains {rip:#x}")
    table = (cache or UnwindCache()).table(module)
    base = module.base
    rva = (rip - base) & 0xFFFF_FFFF_FFFF_FFFF
    func = table.lookup(rva)
    ctx = dict(context)
    rsp = ctx["rsp"]
    if func is None:  # leaf: no prolog, RIP <- [RSP]
        ret = _qword(read, rsp)
        ctx["rip"], ctx["rsp"] = ret, rsp + 8
        return ctx, UnwindStep("leaf", rsp, ret, rsp + 8, image_base=base, establisher_frame=rsp,
                               return_slot=rsp, restored={"rip": rsp})
    info = table.unwind_info(func.unwind_rva)
    step = UnwindStep("unwind", rsp, 0, 0, base, func, info)

    if _emulate_epilog(ctx, step, table, module, func, info, rip, read):
        return ctx, step

    off = rva - func.begin
    prolog_off = off if off < info.prolog_size else None
    step.prolog_offset = prolog_off
    # Establisher frame (coreclr/Wine rule): with a frame register in effect (outside the
    # prolog, or past its SET_FPREG), FrameReg - 16 x FrameOffset; otherwise the current RSP.
    establisher = rsp
    if info.frame_register:
        fp_set = prolog_off is None or bool(info.flags & UNW_FLAG_CHAININFO) or any(
            c.op == UWOP_SET_FPREG and c.offset <= prolog_off for c in info.codes)
        if fp_set:
            fp = GPR[info.frame_register]
            if fp not in ctx or (known is not None and fp not in known):
                raise UnwindError(f"the frame register {fp.upper()} of the function at {rip:#x} is not known")
            establisher = (ctx[fp] - info.frame_offset) & 0xFFFF_FFFF_FFFF_FFFF
            step.used_frame_register = True
    step.establisher_frame = establisher

    current, current_off = info, prolog_off
    seen = {func.unwind_rva}
    for depth in range(MAX_CHAIN + 1):
        if _apply_codes(ctx, current, current_off, establisher, read, step):
            break  # a machine frame: RIP/RSP already set
        if not current.flags & UNW_FLAG_CHAININFO or current.chained is None:
            break
        if depth == MAX_CHAIN:
            raise UnwindError(f"chained unwind info deeper than {MAX_CHAIN} at {rip:#x}")
        parent = current.chained
        unwind_rva = parent.unwind_rva
        for _ in range(MAX_INDIRECT):
            if not unwind_rva & 1:
                break
            try:
                unwind_rva = _RF.unpack(table.read_image(unwind_rva & ~1, 12))[2]
            except KdError as exc:
                raise UnwindError(f"chained .pdata entry unreadable ({exc})") from None
        if unwind_rva in seen:
            raise UnwindError(f"chained unwind info loops back to rva {unwind_rva:#x}")
        seen.add(unwind_rva)
        current, current_off = table.unwind_info(unwind_rva), None

    if step.machine_frame is None:
        slot = ctx["rsp"]
        ret = _qword(read, slot)
        step.return_slot = slot
        step.restored["rip"] = slot
        ctx["rip"], ctx["rsp"] = ret, slot + 8
    if ctx["rsp"] - rsp > MAX_FRAME_SIZE and step.machine_frame is None:
        raise UnwindError(f"frame at {rip:#x} would be {ctx['rsp'] - rsp:#x} bytes")
    step.return_address, step.caller_sp = ctx["rip"], ctx["rsp"]
    return ctx, step


def _apply_codes(ctx: dict[str, int], info: UnwindInfo, prolog_off: int | None, establisher: int,
                 read: MemoryRead, step: UnwindStep) -> bool:
    """Undo the codes of one UNWIND_INFO in array order; True if a machine frame was popped."""
    mask = 0xFFFF_FFFF_FFFF_FFFF
    start = ctx["rsp"]
    for code in info.codes:
        op = code.op
        if op == UWOP_EPILOG or op == UWOP_SPARE_CODE:
            continue  # v2 epilog descriptors / v1 obsolete XMM saves: nothing to undo
        if prolog_off is not None and code.offset > prolog_off:
            continue  # not executed yet (x64-unwind.md §2.2)
        if op == UWOP_PUSH_NONVOL:
            reg = GPR[code.op_info]
            if reg == "rsp":
                raise UnwindError(f"unwind info at rva {info.rva:#x} pops RSP")
            at = ctx["rsp"]
            ctx[reg] = _qword(read, at)
            step.restored[reg] = at
            ctx["rsp"] = (at + 8) & mask
        elif op in (UWOP_ALLOC_LARGE, UWOP_ALLOC_SMALL):
            ctx["rsp"] = (ctx["rsp"] + code.value) & mask
        elif op == UWOP_SET_FPREG:
            if not info.frame_register:
                raise UnwindError(f"unwind info at rva {info.rva:#x}: SET_FPREG without a frame register")
            if GPR[info.frame_register] not in ctx:
                raise UnwindError(f"the frame register {GPR[info.frame_register].upper()} is not known")
            ctx["rsp"] = (ctx[GPR[info.frame_register]] - info.frame_offset) & mask
        elif op in (UWOP_SAVE_NONVOL, UWOP_SAVE_NONVOL_FAR):
            reg = GPR[code.op_info]
            if reg == "rsp":
                raise UnwindError(f"unwind info at rva {info.rva:#x} restores RSP from the stack")
            at = (establisher + code.value) & mask
            ctx[reg] = _qword(read, at)
            step.restored[reg] = at
        elif op in (UWOP_SAVE_XMM128, UWOP_SAVE_XMM128_FAR):
            at = (establisher + code.value) & mask
            ctx[f"xmm{code.op_info}"] = int.from_bytes(read(at, 16), "little")
            step.restored[f"xmm{code.op_info}"] = at
        elif op == UWOP_PUSH_MACHFRAME:
            at = ctx["rsp"] + (8 if code.op_info else 0)
            ctx["rip"] = _qword(read, at)
            ctx["cs"] = _qword(read, at + 8) & 0xFFFF
            ctx["efl"] = _qword(read, at + 0x10) & 0xFFFF_FFFF
            ctx["rsp"] = _qword(read, at + 0x18)
            ctx["ss"] = _qword(read, at + 0x20) & 0xFFFF
            for reg, d in (("rip", 0), ("cs", 8), ("efl", 0x10), ("rsp", 0x18), ("ss", 0x20)):
                step.restored[reg] = at + d
            step.machine_frame = at
            step.error_code = bool(code.op_info)
            step.trap_frame = at - MACHINE_FRAME_RIP_TO_TRAP_FRAME
            return True  # nothing after a machine frame belongs to this frame
        if ctx["rsp"] < start:
            raise UnwindError(f"{code.name} at rva {info.rva:#x} would move RSP down "
                              f"from {start:#x} to {ctx['rsp']:#x}")
        if ctx["rsp"] - start > MAX_FRAME_SIZE:
            raise UnwindError(f"unwind info at rva {info.rva:#x} allocates {ctx['rsp'] - start:#x} bytes")
    return False


# ------------------------------------------------------------------------------------------
# Epilogs (x64-unwind.md §2.3-2.4)


def _read_code(table: FunctionTable, module: Any, read: MemoryRead, address: int, n: int) -> bytes | None:
    try:
        return table.read_image(address - module.base, n)
    except KdError:
        pass
    try:
        return read(address, n)
    except KdError:
        return None


def _emulate_epilog(ctx: dict[str, int], step: UnwindStep, table: FunctionTable, module: Any,
                    func: RuntimeFunction, info: UnwindInfo, rip: int, read: MemoryRead) -> bool:
    """If RIP is in an epilog, run the rest of it on `ctx` and return True."""
    base = module.base
    end = base + func.end
    n = min(MAX_EPILOG_BYTES, end - rip)
    if n <= 0:
        return False
    if rip - base < func.begin + info.prolog_size:
        return False  # in the prolog (epilogs never overlap it)
    if info.version >= 2 and info.epilogs:
        # v2 describes its epilogs: only those ranges are epilogs (start = End - distance).
        if not any(end - d <= rip < end - d + size for d, size in info.epilogs):
            return False
    code = _read_code(table, module, read, rip, n)
    if code is None:
        return False
    actions = decode_epilog(code, rip, base + func.begin, end, info.frame_register)
    if actions is None:
        return False
    mask = 0xFFFF_FFFF_FFFF_FFFF
    start = ctx["rsp"]
    step.kind = "epilog"
    step.establisher_frame = start
    for act, arg in actions:
        if act == "add":
            ctx["rsp"] = (ctx["rsp"] + arg) & mask
        elif act == "lea":
            reg, disp = arg
            if GPR[reg] not in ctx:
                raise UnwindError(f"the frame register {GPR[reg].upper()} is not known")
            ctx["rsp"] = (ctx[GPR[reg]] + disp) & mask
            step.used_frame_register = True
        elif act == "pop":
            reg = GPR[arg]
            at = ctx["rsp"]
            if reg in NONVOLATILE:
                ctx[reg] = _qword(read, at)
                step.restored[reg] = at
            # clang's `pop rcx` in an epilog only frees 8 bytes: the slot need not hold the
            # caller's RCX at its call, so a volatile register is left as it was (unknown)
            ctx["rsp"] = (at + 8) & mask
        elif act == "ret":
            at = ctx["rsp"]
            ret = _qword(read, at)
            step.return_slot = at
            step.restored["rip"] = at
            ctx["rip"] = ret
            ctx["rsp"] = (at + 8 + arg) & mask
        if (ctx["rsp"] - start) & mask > MAX_FRAME_SIZE:
            raise UnwindError(f"epilog at {rip:#x} moves RSP by {(ctx['rsp'] - start) & mask:#x}")
    step.return_address, step.caller_sp = ctx["rip"], ctx["rsp"]
    return True


def decode_epilog(code: bytes, rip: int, func_begin: int, func_end: int,
                  frame_register: int) -> list[tuple[str, Any]] | None:
    """Decode `code` (bytes at `rip`) as the rest of an x64 epilog; None if it is not one.

    Shape (x64-unwind.md §2.4): [add rsp, imm | lea rsp, [FrameReg + disp]] pop* terminator,
    terminator = ret | rep ret | ret imm16 | jmp rel outside the function | REX.W jmp [..]/reg.
    Returns the actions [("add", n) | ("lea", (reg, disp)) | ("pop", reg) ..., ("ret", extra)];
    a tail jump ends like a ret (the caller's return address is at RSP).
    """
    actions: list[tuple[str, Any]] = []
    i, n = 0, len(code)

    def byte(k: int) -> int | None:
        return code[k] if k < n else None

    # 1. stack adjustment (only as the first instruction)
    b0, b1 = byte(0), byte(1)
    if b0 == 0x48 and b1 == 0x83 and byte(2) == 0xC4 and n >= 4:
        actions.append(("add", code[3] - 256 if code[3] & 0x80 else code[3]))
        i = 4
    elif b0 == 0x48 and b1 == 0x81 and byte(2) == 0xC4 and n >= 7:
        actions.append(("add", struct.unpack_from("<i", code, 3)[0]))
        i = 7
    elif b0 in (0x48, 0x49) and b1 == 0x8D and n >= 3:
        lea = _decode_lea_rsp(code, frame_register)
        if lea is None:
            return None
        reg, disp, length = lea
        actions.append(("lea", (reg, disp)))
        i = length
    # 2. pops
    for _ in range(16):
        b = byte(i)
        if b is not None and 0x58 <= b <= 0x5F and b != 0x5C:
            actions.append(("pop", b - 0x58))
            i += 1
        elif b == 0x41 and byte(i + 1) is not None and 0x58 <= code[i + 1] <= 0x5F:
            actions.append(("pop", code[i + 1] - 0x58 + 8))
            i += 2
        else:
            break
    # 3. terminator
    b = byte(i)
    if b == 0xC3:
        actions.append(("ret", 0))
        return actions
    if b == 0xF3 and byte(i + 1) == 0xC3:
        actions.append(("ret", 0))
        return actions
    if b == 0xC2 and i + 3 <= n:
        actions.append(("ret", struct.unpack_from("<H", code, i + 1)[0]))
        return actions
    if b == 0xE9 and i + 5 <= n:
        target = rip + i + 5 + struct.unpack_from("<i", code, i + 1)[0]
        if not func_begin <= target < func_end:
            actions.append(("ret", 0))
            return actions
        return None
    if b == 0xEB and i + 2 <= n:
        rel = code[i + 1] - 256 if code[i + 1] & 0x80 else code[i + 1]
        target = rip + i + 2 + rel
        if not func_begin <= target < func_end:
            actions.append(("ret", 0))
            return actions
        return None
    if b in (0x48, 0x49) and byte(i + 1) == 0xFF and byte(i + 2) is not None and (code[i + 2] >> 3) & 7 == 4:
        actions.append(("ret", 0))  # REX.W jmp r/m64: a tail call through memory or a register
        return actions
    return None


def _decode_lea_rsp(code: bytes, frame_register: int) -> tuple[int, int, int] | None:
    """`lea rsp, [base + disp]` with base = the frame register: (base reg, disp, length)."""
    if not frame_register or len(code) < 3:
        return None
    rex, modrm = code[0], code[2]
    mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
    if reg != 4 or rex & 0x4 or mod == 3:  # destination must be RSP (REX.R clear)
        return None
    i = 3
    if rm == 4:  # SIB
        if len(code) < 4:
            return None
        sib = code[3]
        if (sib >> 3) & 7 != 4 or (rex & 0x2):  # an index register: not an epilog
            return None
        base = (sib & 7) | ((rex & 1) << 3)
        i = 4
        if mod == 0 and sib & 7 == 5:
            return None
    elif mod == 0 and rm == 5:
        return None  # rip-relative
    else:
        base = rm | ((rex & 1) << 3)
    if mod == 1:
        if len(code) < i + 1:
            return None
        disp = code[i] - 256 if code[i] & 0x80 else code[i]
        i += 1
    elif mod == 2:
        if len(code) < i + 4:
            return None
        disp = struct.unpack_from("<i", code, i)[0]
        i += 4
    else:
        disp = 0
    if base != frame_register:
        return None
    return base, disp, i
