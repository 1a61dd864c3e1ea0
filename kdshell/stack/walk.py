"""The x64 (and ARM64) stack walker: strategies in a fixed order, each frame says how it was found.

    walk_stack(context, memory_read, modules, max_frames) -> StackWalk (a list of Frame)

For each frame the walker tries, in this order (DESIGN.md "Seams and habits"):
  1. unwind data   - the module's .pdata/UNWIND_INFO (unwind_x64.virtual_unwind): "unwind". A
                     function without a .pdata entry is a leaf (RIP <- [RSP]): "leaf"; a
                     PUSH_MACHFRAME lands on the interrupted RIP/RSP: the next frame is "trap".
  2. trap frame    - a KTRAP_FRAME the caller knows about (KTHREAD.TrapFrame chain, the .trap
                     address, a bug check parameter) that this frame's function built: a trap
                     handler's Child-SP is its trap frame: "trap".
  3. the code      - no unwind data, but the code at RIP is readable: follow it to the function's
                     `ret` (forward.py), which says where the return address and the saved
                     registers are: "epilog" ("leaf" when RSP does not move on the way).
  4. leaf rule     - no unwind data and no code, RIP inside a module and interrupted there (the
                     context's or a trap frame's RIP): the x64 convention's leaf keeps its return
                     address at [RSP]; taken when that value passes the scan's checks: "leaf", a guess.
  5. scan          - the first stack slot above Child-SP holding a value that passes
                     scan.ReturnCheck (in an executable section, after a call when the code is
                     readable, not a register value, a known function start or a frame already
                     here): "scan", or "scan-unverified" when the code before it is not in the
                     dump. The scan stops below the next known trap frame; if it finds nothing,
                     the walk continues from that trap frame ("trap", a guess: frames between
                     may have been skipped).
On ARM64 the step is unwind_arm64.Arm64Unwinder's: .pdata/.xdata ("unwind"), the leaf rule at
the context (pc <- lr: "leaf"), the frame-record chain ("frame chain"); the loop, its progress
rules and the Frame it builds are this module's.
A frame-pointer chain is not a strategy on x64: a function that uses a frame register says so in
its unwind data (UWOP_SET_FPREG, step 1), and compiled x64 code keeps no [RBP] -> caller-RBP
chain to follow without it (the x86 walker, x86.py, has one: "frame chain").

Frames found by a guess (steps 4 and 5), and every frame found from a guessed one until a known
trap frame anchors the walk again, are marked `guessed` (`k` prints WinDbg's warning before the
first of them).

Progress is enforced: every step must raise RSP, except a step through a machine/trap frame,
which may switch stacks (DPC/ISR/IST stacks, user mode) at most MAX_STACK_SWITCHES times; a
repeated (RIP, RSP) pair ends the walk. It also ends at RIP 0, at unreadable memory, at the
stack base (when given, while on that stack) and at max_frames. It never loops.

`modules` is a small protocol (ModuleMap): `module_at(address)` returns None or an object with
`.base`, `.size`, `.name` and `.image`, an image reader `image(rva, size) -> bytes` (raising a
KdError such as MemoryNotPresent for bytes it lacks) or None when the image is not available
(an optional `.exception_directory` (rva, size) skips reading the PE headers);
`function_start(address)` says whether a known function (a code symbol or export) begins there.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.stack.forward import CodeReturn, Place, follow_to_return
from kdshell.stack.frames import (KTRAP_FRAME_X64_19041, decode_ktrap_frame, plausible_ktrap_frame)
from kdshell.stack.scan import DEFAULT_SCAN_BYTES, SCAN, UNVERIFIED, ReturnCheck, scan_for_return
from kdshell.stack.unwind_arm64 import Arm64Unwinder
from kdshell.stack.unwind_x64 import (GPR, NONVOLATILE, VOLATILE, NoUnwindData, UnwindCache, UnwindError,
                                      UnwindStep, virtual_unwind)

MemoryRead = Callable[[int, int], bytes]


class ModuleMap(Protocol):
    """The modules the walker asks (see the module docstring); a module is an object with
    .base, .size, .name and .image (kdshell.symbols.overlay's view, or a test's stand-in)."""

    def module_at(self, address: int) -> Any: ...

    def function_start(self, address: int) -> bool: ...


DEFAULT_MAX_FRAMES = 256
MAX_STACK_SWITCHES = 8       # machine frames that move RSP down or off the stack
MAX_SCAN_FRAMES = 16         # scanned frames in a row before giving up
HOME_SPACE = 0x28            # a caller's frame holds its callees' 4 home slots, then 8 to align
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_U64 = struct.Struct("<Q")

HOW_CONTEXT = "context"
HOW_UNWIND = "unwind"
HOW_LEAF = "leaf"
HOW_EPILOG = "epilog"
HOW_TRAP = "trap"
HOW_FRAME_CHAIN = "frame chain"
HOW_SCAN = SCAN
HOW_UNVERIFIED = UNVERIFIED
INTERRUPTED = (HOW_CONTEXT, HOW_TRAP)   # the frame's IP is where it stopped, not a return address


@dataclass
class Frame:
    """One stack frame, as `k` and its variants need it.

    ip           the frame's instruction pointer (frame 0: the context RIP; later frames: the
                 return address, or the interrupted RIP after a trap frame)
    sp           Child-SP: RSP while this frame's function runs
    ret          RetAddr: the next frame's ip (0 when the walk ended on a null return address,
                 None when it could not be found)
    how          how this frame was found: "context", "unwind", "leaf", "epilog", "trap",
                 "frame chain" (x86), "scan", "scan-unverified" (the module docstring)
    guessed      found by a guess, or from a guessed frame (`k`'s warning comes before the first)
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
    guessed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def guess(self) -> bool:
        return self.guessed


class StackWalk(list[Frame]):
    """The frames, innermost first, plus why the walk stopped (`stop`)."""

    stop: str = ""
    _values: set[int] | None = None
    _counted: int = 0

    def register_values(self) -> set[int]:
        """The values the registers held, in every frame so far: what no guess may take (a
        pointer held in a register is data). Kept up to date as frames are added."""
        if self._values is None:
            self._values = set()
        for f in self[self._counted:]:
            self._values.update(f.registers[r] for r in GPR if r in f.known and r != "rsp" and r in f.registers)
        self._counted = len(self)
        return self._values


@dataclass
class _Step:
    """One step of the walk: the caller's context and how it was found."""

    regs: dict[str, int]
    known: frozenset[str]
    how: str
    unwind: UnwindStep | None = None
    note: str | None = None
    guess: bool = False       # a guess (leaf rule, scan)
    anchored: bool = False    # a trap frame the caller knew: what follows is no longer a guess


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
    """Holds the caches (function tables, section tables, code read to its return) so repeated
    walks are warm; `walk` is walk_stack. `decode=False` skips step 3 (the code), `scan=False`
    steps 4 and 5."""

    def __init__(self, memory_read: MemoryRead, modules: ModuleMap, *, ktrap_offsets: dict[str, int] | None = None,
                 scan: bool = True, scan_bytes: int = DEFAULT_SCAN_BYTES,
                 max_scan_frames: int = MAX_SCAN_FRAMES, decode: bool = True, arch: str = "x64") -> None:
        self.read = memory_read
        self.modules = modules
        self.cache = UnwindCache()
        self.ktrap = ktrap_offsets or KTRAP_FRAME_X64_19041
        self.scan = scan
        self.scan_bytes = scan_bytes
        self.max_scan_frames = max_scan_frames
        self.decode = decode
        # ARM64: its own unwinder (unwind_arm64.py) takes the place of steps 1-5
        self.arm64 = Arm64Unwinder(memory_read, modules) if arch == "arm64" else None
        self.ip, self.sp = ("pc", "sp") if self.arm64 is not None else ("rip", "rsp")
        self.check = ReturnCheck(memory_read, modules, function_start=self._function_start)
        self._ways: dict[int, CodeReturn] = {}
        self._no_way: set[int] = set()   # per walk: an image file found since may have the code

    def walk(self, context: dict[str, int], max_frames: int = DEFAULT_MAX_FRAMES, *,
             known: Iterable[str] | None = None, stack_base: int | None = None, stack_limit: int | None = None,
             trap_frames: Iterable[int] = ()) -> StackWalk:
        read = self.read
        self._no_way.clear()
        self.check.forget_missing()
        ctx = dict(context)
        known_set = frozenset(known) if known is not None else frozenset(ctx)
        hints = sorted(set(trap_frames))
        used_hints: set[int] = set()
        frames = StackWalk()
        seen: set[tuple[int, int]] = set()
        step = _Step(ctx, known_set, HOW_CONTEXT)
        guessed = False
        switches = 0
        scans = 0
        while True:
            ctx, known_set, how = step.regs, step.known, step.how
            rip, rsp = ctx[self.ip] & MASK64, ctx[self.sp] & MASK64
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
            guessed = step.guess or (guessed and not step.anchored)
            lookup = rip if how in INTERRUPTED else rip - 1
            frame = Frame(len(frames), rip, rsp, how, ctx, known_set, lookup, home=_home(read, rsp),
                          module=self.modules.module_at(lookup), guessed=guessed)
            frames.append(frame)

            nxt = self._next(frames, ctx, known_set, hints, used_hints, scans)
            if isinstance(nxt, str):
                frames.stop = nxt
                break
            if nxt.note:
                frame.notes.append(nxt.note)
            c_rsp = nxt.regs[self.sp] & MASK64
            switched = False
            if nxt.how == HOW_TRAP:
                if c_rsp <= rsp or (stack_base is not None and not (stack_limit or 0) <= c_rsp < stack_base):
                    switched = True
                    switches += 1
                    if switches > MAX_STACK_SWITCHES:
                        frames.stop = "too many stack switches"
                        frame.ret = nxt.regs[self.ip]
                        break
                    stack_base = stack_limit = None  # on another stack now
            elif c_rsp < rsp or (c_rsp == rsp and not (self.arm64 is not None and how in INTERRUPTED)):
                # _next guarantees this for unwind/scan; interrupted ARM64 code may not have
                # moved sp yet (a leaf, before its prolog, at an epilog's ret): its caller shares it
                frames.stop = f"RSP did not increase at {rip:#x}"
                break
            scans = scans + 1 if nxt.how in (HOW_SCAN, HOW_UNVERIFIED) else 0
            frame.ret = nxt.regs[self.ip] & MASK64
            frame.frame_size = None if switched else c_rsp - rsp
            frame.unwind = nxt.unwind
            step = nxt
        return frames

    # -- one step ---------------------------------------------------------------------------

    def _next(self, frames: StackWalk, ctx: dict[str, int], known: frozenset[str], hints: list[int],
              used_hints: set[int], scans: int) -> _Step | str:
        """The caller's context of the last frame and how it was found, or a stop reason."""
        frame = frames[-1]
        if self.arm64 is not None:
            a64 = self.arm64.step(ctx, known, frame.how in INTERRUPTED)
            if isinstance(a64, str):
                return a64
            return _Step(a64.regs, a64.known, a64.how, note=a64.note, guess=a64.guess)
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
                    return _Step(caller, c_known, HOW_TRAP, step)
                elif c_rsp > rsp:
                    c_known = (known & NONVOLATILE) | frozenset(step.restored) | {"rsp"}
                    how = HOW_LEAF if step.kind == "leaf" else HOW_UNWIND
                    return _Step(caller, c_known, how, step)
                else:
                    note = f"unwind: RSP would go from {rsp:#x} to {c_rsp:#x}"
        # 2. a known trap frame built by this frame's function: a trap handler's Child-SP is
        #    its KTRAP_FRAME (KiPageFault & co.)
        taken = self._hinted(frame, ctx, hints, used_hints, rsp)
        if taken is not None:
            taken.note = note
            return taken
        # 3. the function's code, from RIP to its return
        if self.decode and module is not None:
            found = self._by_code(frame, ctx, known)
            if found is not None:
                found.note = note
                return found
        if not self.scan:
            return note or f"no unwind data for {rip:#x}"
        excluded = frames.register_values()
        # 4. the leaf rule, where RIP was interrupted
        if frame.how in INTERRUPTED and module is not None:
            try:
                value = _U64.unpack(read(rsp, 8))[0]
            except KdError:
                value = 0
            if value and self.check.judge(value, rsp, excluded) is not None:
                caller = dict(ctx, rip=value, rsp=rsp + 8)
                return _Step(caller, (known & NONVOLATILE) | {"rip", "rsp"}, HOW_LEAF, note=note, guess=True)
        # 5. scan, not past the next known trap frame (what lies above it belongs to the
        #    interrupted code, which the trap frame continues)
        if scans >= self.max_scan_frames:
            return "too many scanned frames in a row"
        above = [tf for tf in hints if tf not in used_hints and tf >= rsp]
        end = min(above) if above else None
        # a function that called (its IP is a return address) keeps its callees' home slots
        # below its own return address
        start = rsp if frame.how in INTERRUPTED else rsp + HOME_SPACE
        hit = scan_for_return(read, self.modules, start, end=end, max_bytes=self.scan_bytes, check=self.check,
                              exclude=excluded)
        if hit is None:
            # nothing below the next trap frame: continue from it (KiSystemServiceCopyEnd's
            # Child-SP is 0x70 below its trap frame; other frames may lie in between: a guess)
            taken = self._hinted(frame, ctx, hints, used_hints, rsp + self.scan_bytes)
            if taken is not None:
                taken.note = note
                return taken
            return (note + "; " if note else "") + "no return address found by scanning"
        caller = dict(ctx, rip=hit.return_address, rsp=hit.slot + 8)
        return _Step(caller, frozenset(("rip", "rsp")), hit.how, note=note, guess=True)

    def _by_code(self, frame: Frame, ctx: dict[str, int], known: frozenset[str]) -> _Step | None:
        """Step 3: the return address and saved registers where the code from RIP says they are
        (forward.py); None when it cannot be followed or its answer does not hold up (the slot
        is not where a call leaves a return address, the value there is not code)."""
        rip, rsp = frame.ip, frame.sp
        way = self._ways.get(rip)
        if way is None:
            if rip in self._no_way:
                return None
            found = follow_to_return(self.read, rip)
            if found is None:
                self._no_way.add(rip)
                return None
            way = self._ways[rip] = found

        def at(place: Place) -> int | None:
            base, off = place
            if base is None:
                return (rsp + off) & MASK64
            return (ctx[base] + off) & MASK64 if base in known and base in ctx else None

        slot = at(way.place)
        if slot is None or slot & 0xF != 8 or slot < rsp:
            return None
        try:
            ret = _U64.unpack(self.read(slot, 8))[0]
        except KdError:
            return None
        if ret and self.check.judge(ret) is None:
            return None
        caller = dict(ctx, rip=ret, rsp=(slot + 8 + way.extra) & MASK64)
        c_known = set(known & NONVOLATILE) | {"rip", "rsp"}
        for reg, place in way.restores:
            c_known.discard(reg)
            where = at(place) if place is not None else None
            if where is not None:
                try:
                    caller[reg] = _U64.unpack(self.read(where, 8))[0]
                    c_known.add(reg)
                except KdError:
                    pass
        return _Step(caller, frozenset(c_known), HOW_EPILOG if way.moved else HOW_LEAF)

    def _function_start(self, address: int) -> bool:
        """A known function begins at `address`: a .pdata entry of its module, a code symbol."""
        module = self.modules.module_at(address)
        if module is None:
            return False
        if getattr(module, "image", None) is not None:
            try:
                entry = self.cache.table(module).lookup(address - module.base)
                if entry is not None and entry.begin == address - module.base:
                    return True
            except KdError:
                pass
        return self.modules.function_start(address)

    def _hinted(self, frame: Frame, ctx: dict[str, int], hints: list[int], used_hints: set[int],
                limit: int) -> _Step | None:
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
            # the trap frame holds is trustworthy; the frames after it are the trap frame's
            # (anchored) unless frames between here and it may have been skipped (a guess).
            return _Step(caller, trap.known, HOW_TRAP, guess=tf != frame.sp, anchored=tf == frame.sp)
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
