"""The x64 stack walker: strategies in a fixed order, each frame says how it was found.

    walk_stack(context, memory_read, modules, max_frames) -> StackWalk (a list of Frame)

For each frame the walker tries, in this order (DESIGN.md "Seams and habits"):
  1. unwind data   - the module's .pdata/UNWIND_INFO (unwind_x64.virtual_unwind). A function
                     without a .pdata entry is a leaf (RIP <- [RSP]); a PUSH_MACHFRAME lands on
                     the interrupted RIP/RSP and the next frame is marked "trap frame".
  2. trap frame    - a KTRAP_FRAME the caller knows about (KTHREAD.TrapFrame chain, the .trap
                     address, a bug check parameter) that this frame's function built: its
                     address lies within TRAP_FRAME_WINDOW bytes above the frame's Child-SP.
  3. scan          - the first stack slot above Child-SP holding an address inside a module
                     right after a call instruction (scan.py); frames marked as a guess. The
                     scan stops below the next known trap frame; if it finds nothing, the walk
                     continues from that trap frame.

Progress is enforced: every step must raise RSP, except a step through a machine/trap frame,
which may switch stacks (DPC/ISR/IST stacks, user mode) at most MAX_STACK_SWITCHES times; a
repeated (RIP, RSP) pair ends the walk. It also ends at RIP 0, at unreadable memory, at the
stack base (when given, while on that stack) and at max_frames. It never loops.

`modules` is a small protocol: `modules.module_at(address)` returns None or an object with
`.base`, `.size`, `.name` and `.image`, an image reader `image(rva, size) -> bytes` (raising a
KdError such as MemoryNotPresent for bytes it lacks) or None when the image is not available.
An optional `.exception_directory` (rva, size) skips reading the PE headers.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.stack.frames import (KTRAP_FRAME_X64_19041, decode_ktrap_frame, plausible_ktrap_frame)
from kdshell.stack.scan import DEFAULT_SCAN_BYTES, scan_for_return
from kdshell.stack.unwind_x64 import (NONVOLATILE, VOLATILE, NoUnwindData, UnwindCache, UnwindError,
                                      UnwindStep, virtual_unwind)

MemoryRead = Callable[[int, int], bytes]
# One step of the walk: (caller context, its known registers, how, UnwindStep | None, note),
# or why the walk stops.
Caller = tuple[dict[str, int], frozenset[str], str, UnwindStep | None, str | None]
Hinted = tuple[dict[str, int], frozenset[str], str, None]


class ModuleMap(Protocol):
    """The modules the walker asks (see the module docstring); a module is an object with
    .base, .size, .name and .image (kdshell.symbols.modules.Module, or a test's stand-in)."""

    def module_at(self, address: int) -> Any: ...


DEFAULT_MAX_FRAMES = 256
MAX_STACK_SWITCHES = 8       # machine frames that move RSP down or off the stack
MAX_SCAN_FRAMES = 16         # scanned frames in a row before giving up
TRAP_FRAME_WINDOW = 0x100    # a trap frame hint this far above Child-SP belongs to the frame
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_U64 = struct.Struct("<Q")

HOW_CONTEXT = "context"
HOW_UNWIND = "unwind"
HOW_LEAF = "leaf"
HOW_TRAP = "trap frame"
HOW_SCAN = "scan"


@dataclass
class Frame:
    """One stack frame, as `k` and its variants need it.

    ip           the frame's instruction pointer (frame 0: the context RIP; later frames: the
                 return address, or the interrupted RIP after a trap frame)
    sp           Child-SP: RSP while this frame's function runs
    ret          RetAddr: the next frame's ip (0 when the walk ended on a null return address,
                 None when it could not be found)
    how          how this frame was found: "context", "unwind", "leaf" (caller of a function
                 without .pdata), "trap frame" (through a machine/trap frame), "scan" (a guess)
    lookup_address  the address to symbolise for "Call Site": ip - 1 for return addresses
                 (the call may be the last instruction of a function), ip otherwise
    registers    the full register context of this frame (`.frame N; r`), `known` names the
                 trustworthy ones (volatile registers are lost after an unwind step)
    home         the four home slots Child-SP+8 .. +0x20 (kb "Args to Child"), None if unreadable
    frame_size   the caller's Child-SP minus this Child-SP (kf's Memory column shows it on the
                 caller's row), None when the walk stopped here or a trap frame switched stacks
    trap_frame   the KTRAP_FRAME address when this frame's function pushed a machine frame
                 (kv's "TrapFrame @"), or the trap frame used to leave this frame
    unwind       the UnwindStep that produced the caller (restored registers and where from,
                 establisher frame, machine frame), None for other strategies
    """

    number: int
    ip: int
    sp: int
    how: str
    registers: dict[str, int]
    known: frozenset[str]
    lookup_address: int
    ret: int | None = None
    home: tuple[int | None, ...] = (None, None, None, None)
    frame_size: int | None = None
    trap_frame: int | None = None
    module: Any = None
    unwind: UnwindStep | None = None
    frame_pointer: int | None = None   # x86: ChildEBP
    notes: list[str] = field(default_factory=list)

    @property
    def guess(self) -> bool:
        return self.how == HOW_SCAN


class StackWalk(list[Frame]):
    """The frames, innermost first, plus why the walk stopped (`stop`)."""

    stop: str = ""


def _home(read: MemoryRead, sp: int, size: int = 8, count: int = 4) -> tuple[int | None, ...]:
    try:
        data = read(sp + size, size * count)
        return tuple(int.from_bytes(data[i : i + size], "little") for i in range(0, size * count, size))
    except KdError:
        out: list[int | None] = []
        for i in range(count):
            try:
                out.append(int.from_bytes(read(sp + size * (i + 1), size), "little"))
            except KdError:
                out.append(None)
        return tuple(out)


class Walker:
    """Holds the caches (function tables) so repeated walks are warm; `walk` is walk_stack."""

    def __init__(self, memory_read: MemoryRead, modules: ModuleMap, *, ktrap_offsets: dict[str, int] | None = None,
                 scan: bool = True, scan_bytes: int = DEFAULT_SCAN_BYTES,
                 max_scan_frames: int = MAX_SCAN_FRAMES) -> None:
        self.read = memory_read
        self.modules = modules
        self.cache = UnwindCache()
        self.ktrap = ktrap_offsets or KTRAP_FRAME_X64_19041
        self.scan = scan
        self.scan_bytes = scan_bytes
        self.max_scan_frames = max_scan_frames

    def walk(self, context: dict[str, int], max_frames: int = DEFAULT_MAX_FRAMES, *,
             known: Iterable[str] | None = None, stack_base: int | None = None, stack_limit: int | None = None,
             trap_frames: Iterable[int] = ()) -> StackWalk:
        read = self.read
        ctx = dict(context)
        known_set = frozenset(known) if known is not None else frozenset(ctx)
        hints = sorted(set(trap_frames))
        used_hints: set[int] = set()
        frames = StackWalk()
        seen: set[tuple[int, int]] = set()
        how = HOW_CONTEXT
        switches = 0
        scans = 0
        while True:
            rip, rsp = ctx["rip"] & MASK64, ctx["rsp"] & MASK64
            if rip == 0:
                frames.stop = "null return address" if frames else "RIP is 0"
                break
            if len(frames) >= max_frames:
                frames.stop = "max frames"
                break
            if stack_base is not None and not (stack_limit or 0) <= rsp < stack_base:
                frames.stop = f"RSP {rsp:#x} outside the stack"
                break
            if (rip, rsp) in seen:
                frames.stop = f"loop: {rip:#x} at {rsp:#x} seen before"
                break
            seen.add((rip, rsp))
            interrupted = how in (HOW_CONTEXT, HOW_TRAP)
            lookup = rip if interrupted else rip - 1
            frame = Frame(len(frames), rip, rsp, how, ctx, known_set, lookup, home=_home(read, rsp),
                          module=self.modules.module_at(lookup))
            frames.append(frame)

            nxt = self._next(frame, ctx, known_set, hints, used_hints, scans)
            if isinstance(nxt, str):
                frames.stop = nxt
                break
            caller, caller_known, how, step, note = nxt
            if note:
                frame.notes.append(note)
            c_rsp = caller["rsp"] & MASK64
            switched = False
            if how == HOW_TRAP:
                if c_rsp <= rsp or (stack_base is not None and not (stack_limit or 0) <= c_rsp < stack_base):
                    switched = True
                    switches += 1
                    if switches > MAX_STACK_SWITCHES:
                        frames.stop = "too many stack switches"
                        frame.ret = caller["rip"]
                        break
                    stack_base = stack_limit = None  # on another stack now
            elif c_rsp <= rsp:  # _next guarantees this for unwind/scan; belt and braces
                frames.stop = f"RSP did not increase at {rip:#x}"
                break
            scans = scans + 1 if how == HOW_SCAN else 0
            frame.ret = caller["rip"] & MASK64
            frame.frame_size = None if switched else c_rsp - rsp
            frame.unwind = step
            ctx, known_set = caller, caller_known
        return frames

    # -- one step ---------------------------------------------------------------------------

    def _next(self, frame: Frame, ctx: dict[str, int], known: frozenset[str], hints: list[int],
              used_hints: set[int], scans: int) -> Caller | str:
        """(caller context, its known registers, how, UnwindStep | None, note) or a stop reason."""
        read, rip, rsp = self.read, frame.ip, frame.sp
        note = None
        # 1. unwind data
        module = self.modules.module_at(rip)
        if module is not None and getattr(module, "image", None) is not None:
            try:
                caller, step = virtual_unwind(ctx, self.modules.module_at, read, self.cache, known)
            except NoUnwindData as exc:
                note = f"unwind: {exc}"
            except MemoryNotPresent as exc:
                return f"memory not present at {exc.address:#x} while unwinding {rip:#x}"
            except UnwindError as exc:
                note = f"unwind: {exc}"
            else:
                c_rsp = caller["rsp"] & MASK64
                fp = step.info.frame_register_name if step.info is not None else None
                if step.used_frame_register and fp not in known:
                    # an epilog's lea rsp, [rbp+x] after a scanned frame: RBP is stale
                    # (fp is not None: a step that used the frame register has one)
                    note = f"unwind: the frame register {fp.upper()} is not known"  # type: ignore[union-attr]
                elif step.machine_frame is not None:
                    tf = step.machine_frame - self.ktrap["Rip"]
                    step.trap_frame = tf
                    frame.trap_frame = tf
                    used_hints.add(tf)
                    c_known = (known & NONVOLATILE) | frozenset(step.restored)
                    if frame.how != HOW_CONTEXT:
                        # The handler has called something, so it has filled its trap frame;
                        # interrupted in its own prolog it may not have yet.
                        caller, c_known = self._trap_registers(tf, caller, c_known)
                    return caller, c_known, HOW_TRAP, step, None
                elif c_rsp > rsp:
                    c_known = (known & NONVOLATILE) | frozenset(step.restored) | {"rsp"}
                    how = HOW_LEAF if step.kind == "leaf" else HOW_UNWIND
                    return caller, c_known, how, step, None
                else:
                    note = f"unwind: RSP would go from {rsp:#x} to {c_rsp:#x}"
        # 2. a known trap frame built by this frame's function (its Child-SP is at or just
        #    below the KTRAP_FRAME: KiPageFault's equals it, KiSystemServiceCopyEnd's is 0x70 lower)
        taken = self._hinted(frame, ctx, hints, used_hints, rsp + TRAP_FRAME_WINDOW)
        if taken is not None:
            return taken + (note,)
        # 3. scan, not past the next known trap frame (what lies above it belongs to the
        #    interrupted code, which the trap frame continues)
        if not self.scan:
            return note or f"no unwind data for {rip:#x}"
        if scans >= self.max_scan_frames:
            return "too many scanned frames in a row"
        above = [tf for tf in hints if tf not in used_hints and tf >= rsp]
        end = min(above) if above else None
        hit = scan_for_return(read, self.modules, rsp, end=end, max_bytes=self.scan_bytes)
        if hit is None:
            # nothing below the next trap frame: continue from it
            taken = self._hinted(frame, ctx, hints, used_hints, rsp + self.scan_bytes)
            if taken is not None:
                return taken + (note,)
            return (note + "; " if note else "") + "no return address found by scanning"
        caller = dict(ctx)
        caller["rip"] = hit.return_address
        caller["rsp"] = hit.slot + 8
        return caller, frozenset(("rip", "rsp")), HOW_SCAN, None, note

    def _hinted(self, frame: Frame, ctx: dict[str, int], hints: list[int], used_hints: set[int],
                limit: int) -> Hinted | None:
        """Continue from the lowest unused, plausible trap frame hint in [Child-SP, limit]."""
        for tf in hints:
            if tf in used_hints or not frame.sp <= tf <= limit:
                continue
            try:
                trap = decode_ktrap_frame(self.read, tf, self.ktrap)
            except KdError:
                continue
            if not plausible_ktrap_frame(trap):
                continue
            used_hints.add(tf)
            frame.trap_frame = tf
            caller = dict(ctx)
            caller.update(trap.registers)
            for reg in ("rbx", "rsi", "rdi"):
                caller[reg] = ctx.get(reg, 0)  # not saved by the handler (frames.py)
            # The handler frames between here and the trap frame were skipped, so only what
            # the trap frame holds is trustworthy.
            return caller, trap.known, HOW_TRAP, None
        return None

    def _trap_registers(self, tf: int, caller: dict[str, int],
                        known: frozenset[str]) -> tuple[dict[str, int], frozenset[str]]:
        """After a machine frame: the volatile registers of the interrupted code from the
        KTRAP_FRAME around it, when the frame agrees with the machine frame (so a layout
        mismatch cannot inject wrong values)."""
        try:
            trap = decode_ktrap_frame(self.read, tf, self.ktrap)
        except KdError:
            return caller, known
        r = trap.registers
        if r["rip"] != caller["rip"] or r["rsp"] != caller["rsp"]:
            return caller, known
        caller = dict(caller)
        for reg in VOLATILE | {"mxcsr"}:
            if reg in trap.known:
                caller[reg] = r[reg]
        return caller, known | (trap.known & (VOLATILE | {"mxcsr", "ds", "es", "fs", "gs"}))


def walk_stack(context: dict[str, int], memory_read: MemoryRead, modules: ModuleMap,
               max_frames: int = DEFAULT_MAX_FRAMES, *, known: Iterable[str] | None = None,
               stack_base: int | None = None, stack_limit: int | None = None, trap_frames: Iterable[int] = (),
               walker: Walker | None = None, **options: Any) -> StackWalk:
    """Walk the x64 stack from `context` (see the module docstring). Pass a `walker` (or keep
    one) for warm repeated walks; `options` go to Walker (ktrap_offsets, scan, scan_bytes,
    max_scan_frames)."""
    walker = walker or Walker(memory_read, modules, **options)
    return walker.walk(context, max_frames, known=known, stack_base=stack_base, stack_limit=stack_limit,
                       trap_frames=trap_frames)
