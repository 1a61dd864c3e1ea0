"""The 32-bit x86 stack walker: the EBP chain, an FPO hook, and x86 trap frames.

    walk_stack_x86(context, memory_read, fpo=None, max_frames=...) -> StackWalk (of walk.Frame)

Frame by frame, in this order:
  1. trap frame   - EBP (when it is this frame's: not in an FPO function or before `mov ebp, esp`)
                    points at a KTRAP_FRAME built by the trap handlers: DbgArgMark (+8) is
                    0xBADB0D00 and DbgEbp/DbgEip (+0/+4) are the interrupted EBP/EIP, so the
                    chain goes straight through it. The caller's registers come from the frame
                    (frames.decode_ktrap_frame_x86; a kernel-mode trap pushed no ESP, so ESP is
                    the address of HardwareEsp). Also used when the FPO data says FRAME_TRAP.
  2. FPO data     - `fpo(eip)` returns an FpoData (from the PDB's FPO stream, or None). For a
                    function that does not use EBP the return address sits above its locals and
                    saved registers; inside a BP function's prolog (before `mov ebp, esp`) it is
                    at ESP (or ESP+4 after `push ebp`).
  3. EBP chain    - RetAddr = [EBP+4], caller EBP = [EBP], caller ESP = EBP+8.
Frames are marked "trap", "unwind" (FPO data: x86's unwind data) or "frame chain" (EBP). Progress is enforced as on x64 (ESP
strictly increasing; a repeated (EIP, ESP) stops the walk), and the walk ends at EIP 0, EBP 0,
unreadable memory, the stack base and max_frames.

Windows quirk: a trap frame's DbgArgMark is 0xBADB0D00 when the handler filled DbgEbp/DbgEip
(Windows' ENTER_TRAP does, and so does the fixture kernel, fixtures/images/README.md). Example:
KiTrap0E -> CommonDispatchException -> KiDispatchException: the EBP of CommonDispatchException's
frame is the trap frame, and its RetAddr is the faulting EIP. Pinned by
tests/test_stack_walk.py::test_x86_trap_frame_walk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.stack.frames import KTRAP_FRAME_X86_19041, X86_DBG_ARG_MARK, decode_ktrap_frame_x86
from kdshell.stack.walk import (DEFAULT_MAX_FRAMES, HOW_CONTEXT, HOW_FRAME_CHAIN, HOW_TRAP, HOW_UNWIND, Frame,
                                ModuleMap, StackWalk)

MemoryRead = Callable[[int, int], bytes]
MASK32 = 0xFFFFFFFF
FRAME_FPO, FRAME_TRAP, FRAME_TSS, FRAME_NONFPO = 0, 1, 2, 3   # FPO_DATA.cbFrame
# One step: (caller context, its known registers, how) or why the walk stops.
Step = tuple[dict[str, int], frozenset[str], str]


@dataclass(frozen=True)
class FpoData:
    """FPO_DATA (the PDB's FPO stream / debug directory entry type 3) for one function."""

    start: int          # function start address (absolute)
    size: int           # cbProcSize
    locals: int         # cdwLocals (dwords)
    params: int         # cdwParams (dwords)
    prolog: int         # cbProlog (bytes)
    regs: int           # cbRegs (number of saved registers)
    uses_bp: bool       # fUseBP
    frame: int = FRAME_FPO


def _dword(read: MemoryRead, address: int) -> int:
    return int.from_bytes(read(address & MASK32, 4), "little")


def _args(read: MemoryRead, ebp: int) -> tuple[int | None, ...]:
    out: list[int | None] = []
    for i in range(3):
        try:
            out.append(_dword(read, ebp + 8 + 4 * i))
        except KdError:
            out.append(None)
    return tuple(out)


def is_trap_frame(read: MemoryRead, address: int, offsets: dict[str, int] | None = None) -> bool:
    o = offsets or KTRAP_FRAME_X86_19041
    try:
        return _dword(read, address + o["DbgArgMark"]) == X86_DBG_ARG_MARK
    except KdError:
        return False


def walk_stack_x86(context: dict[str, int], memory_read: MemoryRead,
                   fpo: Callable[[int], FpoData | None] | None = None, max_frames: int = DEFAULT_MAX_FRAMES, *,
                   stack_base: int | None = None, modules: ModuleMap | None = None,
                   ktrap_offsets: dict[str, int] | None = None) -> StackWalk:
    read = memory_read
    o = ktrap_offsets or KTRAP_FRAME_X86_19041
    ctx = {k: v for k, v in context.items()}
    known = frozenset(ctx)
    frames = StackWalk()
    seen: set[tuple[int, int]] = set()
    how = HOW_CONTEXT
    while True:
        eip, esp, ebp = ctx["eip"] & MASK32, ctx["esp"] & MASK32, ctx.get("ebp", 0) & MASK32
        if eip == 0:
            frames.stop = "null return address" if frames else "EIP is 0"
            break
        if len(frames) >= max_frames:
            frames.stop = "max frames"
            break
        if stack_base is not None and esp >= stack_base:
            frames.stop = f"ESP {esp:#x} at or above the stack base"
            break
        if (eip, esp) in seen:
            frames.stop = f"loop: {eip:#x} at {esp:#x} seen before"
            break
        seen.add((eip, esp))
        lookup = eip if how in (HOW_CONTEXT, HOW_TRAP) else eip - 1
        frame = Frame(len(frames), eip, esp, how, ctx, known, lookup, home=_args(read, ebp),
                      module=modules.module_at(lookup) if modules is not None else None, frame_pointer=ebp)
        frames.append(frame)
        try:
            nxt = _step(read, ctx, frame, fpo, o)
        except MemoryNotPresent as exc:
            frames.stop = f"memory not present at {exc.address:#x}"
            break
        except KdError as exc:
            frames.stop = str(exc)
            break
        if isinstance(nxt, str):
            frames.stop = nxt
            break
        caller, known, how = nxt
        c_esp = caller["esp"] & MASK32
        if c_esp <= esp:
            frames.stop = f"ESP did not increase at {eip:#x}"
            frame.ret = caller["eip"]
            break
        frame.ret = caller["eip"] & MASK32
        frame.frame_size = c_esp - esp
        ctx = caller
    return frames


def _step(read: MemoryRead, ctx: dict[str, int], frame: Frame, fpo: Callable[[int], FpoData | None] | None,
          o: dict[str, int]) -> Step | str:
    eip, esp, ebp = frame.ip, frame.sp, ctx.get("ebp", 0) & MASK32
    data = fpo(eip) if fpo is not None else None
    off = eip - data.start if data is not None else 0
    ours = data is None or (data.uses_bp and off >= data.prolog)   # does EBP belong to this frame?
    # 1. a trap frame at EBP (the handler's frame, or the frame of a routine it called that did
    #    not set up EBP, such as CommonDispatchException)
    if ebp and ((data is not None and data.frame == FRAME_TRAP)
                or (ours and is_trap_frame(read, ebp, o))):
        trap = decode_ktrap_frame_x86(read, ebp, o)
        frame.trap_frame = ebp
        caller = dict(ctx)
        caller.update(trap.registers)
        return caller, trap.known, HOW_TRAP
    # 2. FPO data: EBP is not (yet) this frame's (so there is FPO data: the ignores below)
    if not ours:
        caller = dict(ctx)
        if not data.uses_bp:  # type: ignore[union-attr]
            slot = esp if off == 0 else esp + 4 * (data.locals + data.regs)  # type: ignore[union-attr]
        elif off == 0:
            slot = esp
        else:
            code = b""
            try:
                code = read(data.start, 1)  # type: ignore[union-attr]
            except KdError:
                pass
            if off != 1 or code != b"\x55":
                return f"EIP {eip:#x} inside a prolog kdshell cannot undo"
            caller["ebp"] = _dword(read, esp)   # after push ebp
            slot = esp + 4
        caller["eip"] = _dword(read, slot)
        caller["esp"] = slot + 4
        return caller, frozenset(("eip", "esp", "ebp")) & (frame.known | {"eip", "esp"}), HOW_UNWIND
    # 3. the EBP chain
    if ebp == 0:
        return "EBP is 0"
    if ebp < esp:
        return f"EBP {ebp:#x} below ESP {esp:#x}"
    caller = dict(ctx)
    caller["ebp"] = _dword(read, ebp)
    caller["eip"] = _dword(read, ebp + 4)
    caller["esp"] = ebp + 8
    return caller, frozenset(("eip", "esp", "ebp")), HOW_FRAME_CHAIN
