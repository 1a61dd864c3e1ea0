"""The current register context: what `r`, `k`, `u` and `@rip` see, and what changes it.

WinDbg keeps one register context per session (windbg.md §9): the dump's crashing context until
`.cxr ADDR` (a CONTEXT record), `.trap ADDR` (a KTRAP_FRAME), `.thread ADDR` (a thread: its
saved switch frame, or its processor's context when it is running) or `~Ns` (processor N's
KPRCB.ProcessorState.ContextFrame, or the CONTEXT KPRCB.Context points to when that is empty, as
on Windows 10; for the crashing processor too: its context at KeBugCheckEx) replaces it;
`.cxr`/`.trap` alone go back ("Resetting default scope"). On top of that, `.frame N` selects a
frame of that context's stack, and `r` then shows the frame's registers (the ones the unwinder
restored; volatile ones keep the values of the frame below, as dbgeng's unwound contexts do).

    state = session.context                 # a ContextState; session.registers is state.registers
    state.walk(20)                          # StackWalk of the current context (kdshell.stack.walk)
    state.set(frame, ".cxr ffff8504`29891720")
    state.select_frame(1)                   # r now shows frame 1
    state.reset()

ContextState holds this state for the session; it is given the dump, the memory (with image
files behind it), the kernel's offsets, the kernel objects, the modules for unwinding and the
user's Selection, never the session (the assembly is kdshell/parts.py). The reading itself is
done by the small functions below, which take a memory reader and offsets only (DESIGN.md
"Seams"): `switch_frame_context`, `processor_context`, `trap_frames_holding`.

One `Walker` per session keeps the function tables warm between `k` commands.

Windows quirks handled here:
- A non-running x64 thread's KTHREAD.KernelStack points at its KSWITCH_FRAME: RIP =
  [KernelStack+0x38], RSP = KernelStack+0x40, RBP = [KernelStack+0x30] (x64-unwind.md §3; the
  fixture kernel's layout, fixtures/images/README.md). x86: EIP = [KernelStack+8], ESP =
  KernelStack+0xC, EBP = KernelStack+0x18 (the fixture kernel's SwapContext; an x86 Windows
  kernel pushes the same four words). Pinned by tests/test_stack_commands.py::test_thread_*.
- 0xA/0xD1/0x50 bug checks name the faulting RIP but not the trap frame: the KTRAP_FRAME that
  KiPageFault built is found on the stack by its Rip field (= that RIP) and a plausible machine
  frame, and handed to the walker as a hint, so the walk crosses the fault even when nt's
  unwind data is not in the dump (a small dump without nt's image). 0x8E gives the trap frame
  in P3, 0x139 in P2 (kdshell/data/bugcheck_params.tsv says which parameter is which).
"""
from __future__ import annotations

from typing import Any, Callable

from kdshell import bugcheck_roles
from kdshell.dumpfile.header import MACHINE_AMD64, MACHINE_ARM64, MACHINE_I386
from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.state import KernelState, Selection
from kdshell.stack.frames import (KTRAP_FRAME_X64_19041, RegisterFrame, decode_context_record,
                                  decode_ktrap_frame, decode_ktrap_frame_arm64, decode_ktrap_frame_x86,
                                  plausible_ktrap_frame)
from kdshell.stack.walk import Frame, StackWalk, Walker
from kdshell.stack.x86 import walk_stack_x86

MemoryRead = Callable[[int, int], bytes]

DEFAULT_KFRAMES = 20          # WinDbg's classic default stack depth (windbg.md §3)
MAX_TRAP_CHAIN = 8            # KTHREAD.TrapFrame -> KTRAP_FRAME.TrapFrame -> ...
FAULT_SEARCH_BYTES = 0x6000   # how far above RSP to look for the fault's trap frame



def _ptr(read: MemoryRead, address: int, size: int) -> int:
    return int.from_bytes(read(address, size), "little")


# ARM64's KSWITCH_FRAME (ksarm64.h: SwApcBypass +0, SwFp +0x10, SwReturn +0x18, 0x20 bytes)
ARM64_SWITCH_FP, ARM64_SWITCH_RETURN, ARM64_SWITCH_LENGTH = 0x10, 0x18, 0x20


def switch_frame_context(read: MemoryRead, kernel_stack: int, is64: bool,
                         segments: dict[str, int] | None = None, machine: int | None = None) -> RegisterFrame:
    """The context a waiting thread resumes in, from its switch frame at KTHREAD.KernelStack
    (see the module note). Only RIP/RSP/RBP (EIP/ESP/EBP; ARM64: pc, sp, fp) are known; the rest
    read 0."""
    if machine == MACHINE_ARM64:
        regs = {f"x{i}": 0 for i in range(29)}
        pc = _ptr(read, kernel_stack + ARM64_SWITCH_RETURN, 8)
        regs.update(fp=_ptr(read, kernel_stack + ARM64_SWITCH_FP, 8), lr=pc, pc=pc,
                    sp=kernel_stack + ARM64_SWITCH_LENGTH, cpsr=0)
        return RegisterFrame("switch frame", kernel_stack, regs, frozenset(("pc", "sp", "fp")))
    if is64:
        regs = {name: 0 for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11",
                                     "r12", "r13", "r14", "r15")}
        regs.update(rip=_ptr(read, kernel_stack + 0x38, 8), rsp=kernel_stack + 0x40,
                    rbp=_ptr(read, kernel_stack + 0x30, 8), efl=0, cs=0x10, ss=0x18)
        known = frozenset(("rip", "rsp", "rbp"))
    else:
        regs = {name: 0 for name in ("eax", "ebx", "ecx", "edx", "esi", "edi")}
        regs.update(eip=_ptr(read, kernel_stack + 8, 4), esp=(kernel_stack + 0xC) & 0xFFFFFFFF,
                    ebp=(kernel_stack + 0x18) & 0xFFFFFFFF, efl=0, cs=0x8, ss=0x10)
        known = frozenset(("eip", "esp", "ebp"))
    for seg, value in (segments or {}).items():
        regs.setdefault(seg, value)
    return RegisterFrame("switch frame", kernel_stack, regs, known)


def processor_context(read: MemoryRead, prcb: int, context_offset: int, machine: int) -> RegisterFrame:
    """Processor context saved at KPRCB + ProcessorState.ContextFrame (a CONTEXT record)."""
    return decode_context_record(read, prcb + context_offset, machine)


def trap_frames_holding(read: MemoryRead, rip: int, start: int, size: int = FAULT_SEARCH_BYTES,
                        ktrap: dict[str, int] | None = None) -> list[int]:
    """KTRAP_FRAMEs in [start, start+size) whose Rip field is `rip` and whose machine frame is
    plausible (the frame a trap handler built for the fault at `rip`). Stops at the first
    unreadable page."""
    o = ktrap or KTRAP_FRAME_X64_19041
    found = []
    addr = start & ~7
    end = start + size
    needle = rip.to_bytes(8, "little")
    while addr < end:
        chunk_end = min(end, (addr | 0xFFF) + 1)
        try:
            data = read(addr, chunk_end - addr)
        except KdError:
            break
        i = data.find(needle)
        while i >= 0:
            if i % 8 == 0:
                tf = addr + i - o["Rip"]
                try:
                    if plausible_ktrap_frame(decode_ktrap_frame(read, tf, o)):
                        found.append(tf)
                except KdError:
                    pass
            i = data.find(needle, i + 1)
        addr = chunk_end
    return found


def _empty(frame: RegisterFrame) -> bool:
    """A CONTEXT record nobody wrote: no instruction or stack pointer."""
    regs = frame.registers
    return not (regs.get("rip") or regs.get("eip") or regs.get("pc")) and \
        not (regs.get("rsp") or regs.get("esp") or regs.get("sp"))


class ContextState:
    """The session's register context, its origin, the selected frame and the warm walker."""

    def __init__(self, dump: Any, memory: Callable[[], Any], offsets: Callable[[], Any], kernel: KernelState,
                 unwind_modules: Any, selection: Selection, dtb: Callable[[], int | None]):
        self.dump = dump
        self._memory = memory
        self._offsets_source = offsets
        self.kernel = kernel
        self.unwind_modules = unwind_modules
        self.selection = selection
        self._dtb = dtb
        self.default = dump.registers()
        self.kframes = DEFAULT_KFRAMES
        self._walker: Walker | None = None
        self._hints: dict[Any, tuple[int, ...]] = {}
        self._set_default()

    @property
    def is64(self) -> bool:
        return bool(self.dump.is64)

    @property
    def default_processor(self) -> int:
        """The processor whose context the dump header holds: the one that bug-checked."""
        return self.kernel.crashing_processor

    @property
    def thread(self) -> int | None:
        """The implicit thread (.thread), None when the processor's current thread is meant."""
        return self.selection.thread

    @thread.setter
    def thread(self, address: int | None) -> None:
        self.selection.thread = address

    # -- the context ---------------------------------------------------------------------------
    def _set_default(self) -> None:
        self.context: dict[str, int] = dict(self.default)
        self.known: frozenset[str] | None = None   # None: every register is trustworthy
        self.origin = "default"
        self.address: int | None = None            # the .cxr/.trap/.thread address
        self.thread = None                         # the implicit thread, when .thread chose one
        self._scope_reset()

    def _scope_reset(self) -> None:
        self.frame_number = 0
        self._frame_registers: dict[str, int] | None = None

    @property
    def registers(self) -> dict[str, int]:
        """What `r` shows: the selected frame's registers, else the context."""
        return self._frame_registers if self._frame_registers is not None else self.context

    def set(self, frame: RegisterFrame, origin: str) -> None:
        """Make `frame` the current context (.cxr, .trap, .thread, ~Ns); the implicit thread
        stays (`.thread` and `~Ns` set `self.thread` themselves)."""
        self.context = dict(frame.registers)
        self.known = frame.known
        self.origin = origin
        self.address = frame.address
        self._scope_reset()

    def reset(self) -> None:
        """`.cxr` / `.trap` alone: back to the current processor's default context."""
        processor = self.kernel.current_processor
        thread = self.thread
        if processor == self.default_processor:
            self._set_default()
        else:
            self.set(self.processor_frame(processor), f"processor {processor}")
        self.thread = thread

    # -- reading frames ------------------------------------------------------------------------
    @property
    def read(self) -> MemoryRead:
        memory = self._memory()
        if memory is None:
            raise KdError("Memory is not available in this dump (no page tables or saved ranges kdshell can read)")
        return memory.read

    @property
    def machine(self) -> int:
        return int(self.dump.header.machine)

    def offsets(self) -> Any:
        return self._offsets_source()

    def _offset(self, type_name: str, field: str) -> int:
        value = self.offsets().offset(type_name, field)
        if value is None:
            raise KdError(f"The offset of {type_name}.{field} is not known for this build "
                          "(no kernel PDB, KDBG field or built-in entry)")
        return value

    def context_record(self, address: int) -> RegisterFrame:
        try:
            return decode_context_record(self.read, address, self.machine)
        except MemoryNotPresent:
            raise KdError(f"Unable to read context at {self._p(address)}, Win32 error 0n30") from None

    def trap_frame(self, address: int) -> RegisterFrame:
        try:
            if self.machine == MACHINE_ARM64:
                return decode_ktrap_frame_arm64(self.read, address)
            if self.is64:
                return decode_ktrap_frame(self.read, address, self.ktrap_offsets())
            return decode_ktrap_frame_x86(self.read, address)
        except MemoryNotPresent:
            raise KdError(f"Unable to read trap frame at {self._p(address)}, Win32 error 0n30") from None

    def ktrap_offsets(self) -> dict[str, int]:
        """x64 KTRAP_FRAME offsets: the kernel PDB's when it has the type, else the 19041 layout."""
        types = getattr(self.offsets(), "types", None)
        if types is not None and types.find("_KTRAP_FRAME") is not None:
            o = dict(KTRAP_FRAME_X64_19041)
            for name in KTRAP_FRAME_X64_19041:
                if name == "size":
                    continue
                value = self.offsets().offset("_KTRAP_FRAME", name)
                if value is not None:
                    o[name] = value
            size = self.offsets().size("_KTRAP_FRAME")
            if size:
                o["size"] = size
            return o
        return KTRAP_FRAME_X64_19041

    def _p(self, value: int) -> str:
        from kdshell.format import ptr

        return ptr(value, self.is64)

    # -- processors and threads ------------------------------------------------------------------
    @property
    def small_dump(self) -> bool:
        return self.dump.triage is not None

    def processor_count(self) -> int:
        return int(self.dump.header.number_processors or 1)

    def prcb(self, number: int) -> int:
        """KPRCB address of processor `number` (the kernel layer's: KiProcessorBlock, or where a
        small dump's KPRCB copy was placed -- kdshell.kernel.state)."""
        return self.kernel.processor(number).prcb

    def check_processor(self, number: int) -> None:
        count = self.processor_count()
        if not 0 <= number < count:
            raise KdError(f"Processor {number} does not exist (this machine had {count} "
                          f"processor{'s' if count != 1 else ''}: 0-{count - 1})")
        if self.small_dump and number != self.default_processor:
            raise KdError(f"A small memory dump keeps only the crashing processor's context "
                          f"(processor {self.default_processor}); processor {number} is not in it")

    def processor_frame(self, number: int) -> RegisterFrame:
        """Processor `number`'s context: the dump's context for the crashing processor, else its
        saved context (saved_processor_frame)."""
        self.check_processor(number)
        if number == self.default_processor:
            return RegisterFrame("context", 0, dict(self.default), frozenset(self.default))
        return self.saved_processor_frame(number)

    def saved_processor_frame(self, number: int) -> RegisterFrame:
        """What `~Ns` shows: the context processor `number` saved in its KPRCB,
        ProcessorState.ContextFrame; when that is empty, the CONTEXT that KPRCB.Context points
        to (Windows 10 saves the bug check's context there: on the 0x1000007E corpus dump the
        header holds the exception's context, KPRCB.Context KeBugCheckEx's)."""
        self.check_processor(number)
        prcb = self.prcb(number)
        offset = self._offset("_KPRCB", "ProcessorState.ContextFrame")
        try:
            frame = processor_context(self.read, prcb, offset, self.machine)
            pointer = self.offsets().offset("_KPRCB", "Context")
            if _empty(frame) and pointer:
                size = 8 if self.is64 else 4
                saved = _ptr(self.read, prcb + pointer, size)
                if saved:
                    frame = decode_context_record(self.read, saved, self.machine)
        except MemoryNotPresent as exc:
            raise KdError(f"Processor {number}'s context (KPRCB {self._p(prcb)}) is not in the dump "
                          f"({exc.why})") from None
        if _empty(frame):
            raise KdError(f"Processor {number} saved no context in its KPRCB ({self._p(prcb)})")
        return frame

    def current_thread(self, number: int | None = None) -> int | None:
        """KPRCB.CurrentThread of processor `number` (default: the current one), or None."""
        number = self.kernel.current_processor if number is None else number
        try:
            return self.kernel.processor(number).current_thread or None
        except KdError:
            return None

    def running_on(self, thread: int) -> int | None:
        """The processor `thread` is running on (its KPRCB.CurrentThread), or None."""
        return self.kernel.running_on(thread)

    def thread_frame(self, thread: int) -> tuple[RegisterFrame, str]:
        """(context, how) of a thread: its processor's context when it is running, else the
        switch frame at KTHREAD.KernelStack."""
        processor = self.running_on(thread)
        if processor is not None:
            return self.processor_frame(processor), f"running on processor {processor}"
        offset = self._offset("_KTHREAD", "KernelStack")
        size = 8 if self.is64 else 4
        try:
            kernel_stack = _ptr(self.read, thread + offset, size)
        except MemoryNotPresent:
            raise KdError(f"Unable to read thread {self._p(thread)}: it is not in the dump") from None
        if not kernel_stack:
            raise KdError(f"Thread {self._p(thread)} has no saved kernel stack (KernelStack is 0)")
        segments = {k: self.default[k] for k in ("ds", "es", "fs", "gs") if k in self.default}
        try:
            frame = switch_frame_context(self.read, kernel_stack, self.is64, segments, self.machine)
        except MemoryNotPresent:
            raise KdError(f"The switch frame of thread {self._p(thread)} at {self._p(kernel_stack)} "
                          "is not in the dump") from None
        return frame, "switch frame"

    # -- walking -----------------------------------------------------------------------------
    @property
    def walker(self) -> Walker:
        if self._walker is None:
            arm64 = self.machine == MACHINE_ARM64
            self._walker = Walker(lambda a, n: self.read(a, n), self.unwind_modules,
                                  ktrap_offsets=None if arm64 else self.ktrap_offsets(),
                                  arch="arm64" if arm64 else "x64")
        return self._walker

    def trap_hints(self) -> tuple[int, ...]:
        """Trap frames the walker may continue from: bug check parameters, the fault's trap
        frame found on the crashing stack, the implicit thread's KTHREAD.TrapFrame chain."""
        key = (self.thread, self.kernel.current_processor, self._dtb())
        if key in self._hints:
            return self._hints[key]
        hints: list[int] = []
        h = self.dump.header
        code, params = h.bugcheck_code, list(h.bugcheck_parameters)
        read = self.read
        trap, fault_ip = bugcheck_roles.parameter(code, "trap_frame"), bugcheck_roles.parameter(code, "fault_ip")
        if trap is not None and params[trap]:
            hints.append(params[trap])
        if fault_ip is not None and params[fault_ip]:
            hints += trap_frames_holding(read, params[fault_ip], self.default.get("rsp", 0),
                                         ktrap=self.ktrap_offsets())
        thread = self.thread if self.thread is not None else self.current_thread()
        if thread:
            try:
                offset = self.offsets().offset("_KTHREAD", "TrapFrame")
                link = self.ktrap_offsets()["TrapFrame"]
                tf = _ptr(read, thread + offset, 8) if offset is not None else 0
                for _ in range(MAX_TRAP_CHAIN):
                    if not tf or tf in hints:
                        break
                    hints.append(tf)
                    tf = _ptr(read, tf + link, 8)
            except KdError:
                pass
        self._hints[key] = tuple(hints)
        return self._hints[key]

    def selected_frame(self) -> Frame:
        """The frame `.frame` selected (0 by default), for dv and ??."""
        number = self.frame_number
        frames = self.walk(number + 1)
        if number >= len(frames):
            raise KdError(f"Frame {number:#x} is not on the stack (it has {len(frames):#x} frames)")
        return frames[number]

    def walk(self, max_frames: int, context: dict[str, int] | None = None,
             known: frozenset[str] | None = None) -> StackWalk:
        """The stack of the current context (or of `context`), at most `max_frames` frames."""
        ctx = self.context if context is None else context
        if context is None:
            known = self.known
        if self.machine == MACHINE_ARM64:   # no ARM64 trap frame hints yet
            return self.walker.walk(ctx, max_frames, known=known)
        if self.machine not in (MACHINE_AMD64, MACHINE_I386):
            raise KdError("kdshell walks x64, ARM64 and x86 stacks only (this dump is for another processor)")
        if not self.is64:
            return walk_stack_x86(ctx, self.read, None, max_frames,
                                  modules=self.unwind_modules)
        return self.walker.walk(ctx, max_frames, known=known, trap_frames=self.trap_hints())

    def select_frame(self, number: int) -> Any:
        """`.frame N`: frame N of the current context's stack becomes the register scope."""
        frames = self.walk(max(number + 1, self.kframes))
        if not 0 <= number < len(frames):
            raise KdError(f"Frame {number:#x} is not on the stack (it has {len(frames):#x} frames)")
        frame = frames[number]
        if number == 0:
            self._scope_reset()
        else:
            regs = dict(frame.registers)
            if self.machine == MACHINE_ARM64:
                regs["pc"], regs["sp"] = frame.ip, frame.sp
            elif self.is64:
                regs["rip"], regs["rsp"] = frame.ip, frame.sp
            else:
                regs["eip"], regs["esp"] = frame.ip, frame.sp
            self.frame_number = number
            self._frame_registers = regs
        return frame
