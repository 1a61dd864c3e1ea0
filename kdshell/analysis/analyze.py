"""!analyze: the automated crash analysis (windbg.md §2), as data. No output code here:
commands/analyze.py renders an Analysis as WinDbg's text or as JSON.

    a = analyze(session)
    a.code, a.params, a.name                 # 0x1000007E, (...), "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M"
    a.fault                                  # the context the faulting stack starts from (.cxr/.trap/...)
    a.stack, a.start                         # the frames (kdshell.stack.walk.Frame), where the fault is
    a.culprit                                # Culprit(module="amdppm", function="WriteIoMemRawEx", ...)
    a.verdict, a.bucket, a.failure_hash      # "driver", "AV_amdppm!WriteIoMemRawEx", "{...}"

How it works (the steps of windbg.md §2):
1. The bug check's rule (kdshell/analysis/rules.py) says where its parameters point: a CONTEXT
   record, an EXCEPTION_RECORD, a KTRAP_FRAME, the faulting instruction, a thread, a processor.
2. The faulting stack is walked from that context with the session's warm walker
   (ContextState.walk), the walk `.cxr X; k` shows: STACK_TEXT is its frames; its guessed frames
   (no unwind data or code for their functions in a small dump: kdshell.stack.walk) stay marked.
   When the rule names only the faulting instruction (0xA, 0xD1, 0x50, 0x1E), the crashing stack
   is walked and the frame a trap frame led to at that instruction is the fault.
3. Blame: from the faulting frame down, the first frame whose module is a driver (kdshell/data/
   blame.txt: not a messenger, not Windows itself, not a module that passes calls through); else
   a pass-through module; else Windows. The bug check may say otherwise: a bad instruction
   pointer, pool or memory corruption, a hardware error, a manual crash and a critical process's
   death are reported as such instead of blaming a driver.
4. The failure bucket names the class (AV_, 0x19_22_, ...) and the blamed function; its hash is
   kdshell's own (an MD5 of the bucket, written as a GUID): not WinDbg's algorithm.
"""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from kdshell.analysis import bugcodes
from kdshell.analysis.facts import (cpu_vendor, current_irql, current_process_name, error_record,
                                    exception_record, irp_driver, os_facts, process_image_name)
from kdshell.analysis.rules import (BAD_IP, C2_CORRUPTION_SUBTYPES, CRITICAL_PROCESS, DRIVER, FAST_FAIL_NAMES,
                                    HARDWARE, INCONCLUSIVE, MANUAL, MEMORY, OS, PASS, POOL, Rule,
                                    access_kind, base_code, frame_kind, rule_for)
from kdshell.dumpfile.header import MACHINE_AMD64
from kdshell.errors import KdError
from kdshell.kernel.whea import ErrorRecord
from kdshell.stack.context import trap_frames_holding
from kdshell.stack.walk import Frame, StackWalk
from kdshell.symbols.resolver import DATA
from kdshell.view import SessionView

if TYPE_CHECKING:
    from kdshell.symbols.modules import Module, UnloadedModule

MAX_FRAMES = 64              # STACK_TEXT's depth
X64_KERNEL_START = 0xFFFF_8000_0000_0000
X86_KERNEL_START = 0x8000_0000


CONTEXT_RECORD, TRAP_FRAME, THREAD, PROCESSOR, DEFAULT = ("context record", "trap frame", "thread",
                                                           "processor", "default")


@dataclass
class FrameSymbol:
    """What a frame's address is: module, function and offsets (function None without symbols)."""

    module: Module | None = None  # None outside every module
    function: str | None = None
    offset: int = 0               # from the function, or from the module base without one
    module_offset: int = 0

    @property
    def module_name(self) -> str | None:
        return self.module.name if self.module is not None else None

    @property
    def symbol_name(self) -> str | None:
        """SYMBOL_NAME's spelling: `amdppm!WriteIoMemRawEx+70`, `amdppm+334c` (hex, no 0x)."""
        if self.module is None:
            return None
        if self.function:
            return f"{self.module.name}!{self.function}+{self.offset:x}"
        return f"{self.module.name}+{self.module_offset:x}"


# A blame candidate: (index into Analysis.stack, its FrameSymbol, blame.txt's kind or None).
Candidate = tuple[int, FrameSymbol, str | None]


@dataclass
class Culprit:
    """The blamed frame (or, for a manual crash or a corruption, the frame that raised it)."""

    frame: int | None             # index into Analysis.stack (None: named by the dump, not a frame)
    ip: int | None
    module: str                   # WinDbg's module name: amdppm
    image: str                    # amdppm.sys
    function: str | None          # None without symbols
    offset: int                   # from the function, or from the module base
    module_offset: int
    kind: str | None = None       # blame.txt's kind of the module (None: a driver)
    guessed: bool = False         # the frame is a guess (a scan of the stack: kdshell.stack.walk)
    image_version: str | None = None
    timestamp: int | None = None
    company: str | None = None    # CompanyName of the image's version resource

    @property
    def symbol_name(self) -> str:
        if self.function:
            return f"{self.module}!{self.function}+{self.offset:x}"
        return f"{self.module}+{self.module_offset:x}"

    @property
    def bucket_target(self) -> str:
        return f"{self.module}!{self.function or 'unknown_function'}"


@dataclass
class FaultContext:
    kind: str                      # CONTEXT_RECORD, TRAP_FRAME, THREAD, PROCESSOR, DEFAULT
    address: int | None = None     # the record / frame / thread address (processor: its number)
    registers: dict[str, int] | None = None
    known: frozenset[str] | None = None
    command: str = ""              # how a user gets there: `.cxr 0x...`, `.trap 0x...`, `.thread 0x...`


@dataclass
class ExceptionInfo:
    address: int | None            # where the EXCEPTION_RECORD is; None when made from the parameters
    code: int
    flags: int = 0
    ip: int | None = None
    parameters: list[int] = field(default_factory=list)
    record_link: int = 0           # ExceptionRecord (a nested record)

    @property
    def access(self) -> tuple[str, int] | None:
        """("read"|"write"|"execute", address) of an access violation, from its parameters."""
        if self.code != 0xC0000005 or len(self.parameters) < 2:
            return None
        kind = {0: "read", 1: "write", 8: "execute"}.get(self.parameters[0])
        return (kind, self.parameters[1]) if kind else None


@dataclass
class Analysis:
    code: int
    params: tuple[int, ...]
    is64: bool
    bugcheck: bugcodes.BugCheck | None
    rule: Rule
    dump_path: str = ""
    dump_kind: str = ""
    fault: FaultContext = field(default_factory=lambda: FaultContext(DEFAULT))
    trap_frame: int | None = None
    context_record: int | None = None
    exception: ExceptionInfo | None = None
    fault_address: int | None = None
    access: str | None = None       # "read" / "write" / "execute"
    stack: StackWalk = field(default_factory=StackWalk)
    symbols: list[FrameSymbol] = field(default_factory=list)
    start: int = 0                  # the faulting frame's index in `stack`
    stack_command: str = "kb"
    verdict: str = INCONCLUSIVE
    culprit: Culprit | None = None
    detector: Culprit | None = None  # pool/memory corruption, manual crash: where it was raised
    pseudo_module: str | None = None  # Pool_Corruption, memory_corruption, GenuineIntel, ...
    bucket: str = ""
    failure_hash: str = ""
    process_name: str | None = None
    irql: int | None = None
    critical_process: str | None = None
    irp: dict[str, Any] | None = None  # facts.irp_driver's answer
    whea: ErrorRecord | None = None  # 0x124: the hardware error record P2 points to
    broken_driver: str | None = None
    os: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)    # caveats worth a reader's attention
    errors: list[str] = field(default_factory=list)   # what could not be read, in the user's words
    elapsed_ms: float = 0.0

    @property
    def base_code(self) -> int:
        return base_code(self.code)

    @property
    def name(self) -> str:
        return self.bugcheck.name if self.bugcheck else "UNKNOWN_BUGCHECK_CODE"

    @property
    def title(self) -> str:
        return bugcodes.describe(self.code)

    @property
    def fault_frame(self) -> Frame | None:
        return self.stack[self.start] if self.start < len(self.stack) else None

    @property
    def blamed_image(self) -> str | None:
        """What "Probably caused by" names: an image, or the pseudo-module of a verdict."""
        if self.culprit is not None:
            return self.culprit.image
        return self.pseudo_module

    @property
    def guessed_stack(self) -> bool:
        return any(f.guess for f in self.stack[self.start:])


# -- the engine -------------------------------------------------------------------------------------
def analyze(session: SessionView, max_frames: int = MAX_FRAMES) -> Analysis:
    """Analyse the session's dump (windbg.md §2). Parts that cannot be read become `errors`; a
    KdError escapes only when nothing about the crash can be said."""
    t0 = time.perf_counter()
    d = session.dump
    h = d.header
    code = h.bugcheck_code
    params = tuple(int(p) for p in h.bugcheck_parameters)
    rule = rule_for(code, params)
    a = Analysis(code, params, session.is64, bugcodes.lookup(code), rule, dump_path=d.path, dump_kind=d.kind_name)
    with _crashing_scope(session):
        if session.memory is None:
            a.errors.append("The dump's memory cannot be read (no page tables or saved ranges): no stack to judge")
        else:
            _exception(session, a)
            _faulting_stack(session, a, max_frames)
            if a.guessed_stack:
                a.notes.append("Part of the stack was found by scanning it for return addresses (no unwind data "
                               "or code for those functions in this dump): the frames after the warning are guesses "
                               "(kv says how each frame was found).")
            a.symbols = [symbolize(session, f) for f in a.stack]
            a.process_name = _quietly(a, current_process_name, session)
            a.irql = _quietly(a, current_irql, session)
            if a.base_code == 0x124:
                a.whea = _quietly(a, _error_record, session, a)
        _judge(session, a)
        a.os = os_facts(session)
    a.bucket = bucket(a)
    a.failure_hash = failure_hash(a.bucket)
    a.elapsed_ms = (time.perf_counter() - t0) * 1000
    return a


@contextmanager
def _crashing_scope(session: SessionView) -> Iterator[None]:
    """Analyse the crash, not what the user has switched to: the crashing processor and its
    thread for the duration (the user's .thread/~Ns choice is put back afterwards)."""
    state, kernel = session.context, session.kernel
    saved = (session.processor, state.thread, kernel.implicit_process)
    session.processor, state.thread, kernel.implicit_process = state.default_processor, None, None
    try:
        yield
    finally:
        session.processor, state.thread, kernel.implicit_process = saved


R = TypeVar("R")


def _quietly(a: Analysis, func: Callable[..., R], *args: Any) -> R | None:
    try:
        return func(*args)
    except KdError as exc:
        a.errors.append(str(exc))
        return None


def _exception(session: SessionView, a: Analysis) -> None:
    """The EXCEPTION_RECORD a parameter points to, or one made of the parameters (0x1E, 0x3B,
    0x8E give the code and the address); the memory address and the kind of access."""
    rule, p = a.rule, a.params
    if rule.exception_record is not None and p[rule.exception_record]:
        address = p[rule.exception_record]
        try:
            rec = exception_record(session, address)
            a.exception = ExceptionInfo(address, rec["ExceptionCode"], rec["ExceptionFlags"],
                                        rec["ExceptionAddress"], list(rec["ExceptionInformation"]),
                                        rec["ExceptionRecord"])
        except KdError as exc:
            a.errors.append(f"Unable to read the exception record at {address:#x}: {exc}")
    if a.exception is None and rule.exception_code is not None:
        info = [p[i] for i in rule.exception_params] if rule.exception_params else []
        ip = p[rule.fault_ip] if rule.fault_ip is not None else None
        a.exception = ExceptionInfo(None, p[rule.exception_code] & 0xFFFFFFFF, 0, ip, info)
    if rule.address is not None:
        a.fault_address = p[rule.address]
        a.access = access_kind(rule, p)
    elif a.exception is not None and a.exception.access is not None:
        a.access, a.fault_address = a.exception.access


def _faulting_stack(session: SessionView, a: Analysis, max_frames: int) -> None:
    """Find the faulting context (step 1) and walk its stack (step 2)."""
    state = session.context
    rule, p = a.rule, a.params
    fault: FaultContext | None = None
    try:
        if rule.context_record is not None and p[rule.context_record]:
            addr = p[rule.context_record]
            frame = state.context_record(addr)
            a.context_record = addr
            fault = FaultContext(CONTEXT_RECORD, addr, frame.registers, frame.known, f".cxr 0x{addr:x}")
        elif rule.trap_frame is not None and p[rule.trap_frame]:
            addr = p[rule.trap_frame]
            frame = state.trap_frame(addr)
            a.trap_frame = addr
            fault = FaultContext(TRAP_FRAME, addr, frame.registers, frame.known, f".trap 0x{addr:x}")
        elif rule.thread is not None and p[rule.thread]:     # 0x9F P1=4: the thread holding the PnP lock
            addr = p[rule.thread]
            frame, _ = state.thread_frame(addr)
            fault = FaultContext(THREAD, addr, frame.registers, frame.known, f".thread 0x{addr:x}")
        elif rule.processor is not None and p[rule.processor] != state.default_processor:
            n = p[rule.processor]
            frame = state.processor_frame(n)
            fault = FaultContext(PROCESSOR, n, frame.registers, frame.known, f"~{n}s")
    except KdError as exc:
        a.errors.append(f"{exc}; the crashing thread's stack is used instead")
        fault = None
    if fault is not None:
        a.fault = fault
        a.stack = _walk(session, a, max_frames, fault.registers, fault.known)
        a.stack_command = f"{fault.command} ; kb"
        return
    a.stack = _walk(session, a, max_frames)
    a.stack_command = "kb"
    fault_ip = p[rule.fault_ip] if rule.fault_ip is not None else None
    if fault_ip is not None or rule.trap_on_stack:
        _find_trap_on_stack(session, a, fault_ip, max_frames)


def _walk(session: SessionView, a: Analysis, max_frames: int, context: dict[str, int] | None = None,
          known: frozenset[str] | None = None) -> StackWalk:
    try:
        if context is None:
            walk = session.context.walk(max_frames, dict(session.context.default), known=None)
        else:
            walk = session.context.walk(max_frames, dict(context), known=known)
    except KdError as exc:
        a.errors.append(f"Unable to walk the stack: {exc}")
        return StackWalk()
    return walk


def _find_trap_on_stack(session: SessionView, a: Analysis, fault_ip: int | None, max_frames: int) -> None:
    """The crashing stack crossed a trap frame into the faulting instruction (0xA/0xD1/0x50,
    or any trap for 0x7F/0xBE): the faulting frame is the one after it. If the walk did not
    cross it, look for the KTRAP_FRAME on the stack by its Rip and walk from there."""
    stack = a.stack
    for i, f in enumerate(stack[:-1]):
        nxt = stack[i + 1]
        if f.trap_frame is not None and (fault_ip is None or nxt.ip == fault_ip):
            a.trap_frame, a.start = f.trap_frame, i + 1
            a.fault = FaultContext(TRAP_FRAME, f.trap_frame, None, None, f".trap 0x{f.trap_frame:x}")
            return
    if fault_ip is None:
        return
    for i, f in enumerate(stack):
        if f.ip == fault_ip:          # reached without a trap frame (the handler's own unwind data)
            a.start = i
            return
    state = session.context
    if state.machine != MACHINE_AMD64:   # the search is by an x64 KTRAP_FRAME's Rip
        return
    try:
        found = trap_frames_holding(state.read, fault_ip, state.default.get("rsp", 0), ktrap=state.ktrap_offsets())
    except KdError:
        found = []
    for tf in found:
        try:
            frame = state.trap_frame(tf)
        except KdError:
            continue
        a.trap_frame = tf
        a.fault = FaultContext(TRAP_FRAME, tf, frame.registers, frame.known, f".trap 0x{tf:x}")
        a.stack = _walk(session, a, max_frames, frame.registers, frame.known)
        a.stack_command = f".trap 0x{tf:x} ; kb"
        a.start = 0
        return
    a.notes.append(f"The faulting instruction {fault_ip:#x} is not on the stack kdshell could walk: "
                   "the crashing thread's frames are judged instead.")


def symbolize(session: SessionView, frame: Frame) -> FrameSymbol:
    """The module and function of a frame, looked up at its lookup address (a return address
    minus one) with offsets from its real address, as `k` prints it."""
    found = session.symbols.label(frame.lookup_address)  # as call_site (kdshell.stack.text) names it
    if found is None:
        return FrameSymbol()
    module, sym = found
    rva = frame.ip - module.base
    if sym is None or sym.kind == DATA:
        return FrameSymbol(module, None, rva, rva)
    return FrameSymbol(module, sym.name, rva - sym.rva, rva)


# -- blame ------------------------------------------------------------------------------------------
def _judge(session: SessionView, a: Analysis) -> None:
    """Step 3: the verdict, the culprit, the pseudo-module of a verdict that blames no driver."""
    verdict = a.rule.verdict
    if a.base_code == 0xC2:
        verdict = POOL if a.params[0] in C2_CORRUPTION_SUBTYPES else DRIVER
    kernel_start = X64_KERNEL_START if a.is64 else X86_KERNEL_START
    candidates: list[Candidate] = []
    for i in range(a.start, len(a.stack)):
        f, s = a.stack[i], a.symbols[i]
        if f.ip < kernel_start:
            break                      # user mode: below the kernel's part of the stack
        if s.module is None:
            continue
        candidates.append((i, s, frame_kind(s.module.name, s.function)))
    best = _best(candidates)
    a.broken_driver = _broken_driver(session)
    # 0x9F P1=3: the blocked IRP and the driver holding it, whatever the verdict
    if a.rule.irp is not None and a.params[a.rule.irp]:
        a.irp = _quietly(a, irp_driver, session, a.params[a.rule.irp])
        if a.irp and a.irp.get("module") and a.base_code == 0x9F:
            # WinDbg blames the driver whose stack location is current in the blocked IRP, not
            # the watchdog on the stack (tests/test_power.py pins it on the 0x9F machine)
            a.culprit = Culprit(None, None, a.irp["module"], a.irp["image"] or a.irp["module"], None, 0, 0)
            a.verdict = DRIVER
            return
    top = a.fault_frame
    if a.stack and not len(session.symbols.modules):
        a.errors.append("The loaded-module list is not in the dump: no frame can be attributed to a module")
        a.verdict = INCONCLUSIVE
        a.pseudo_module = "Unknown_Image"
        return
    if verdict == DRIVER and top is not None and a.symbols[a.start].module is None:
        unloaded = _unloaded_at(session, top.ip)
        if unloaded is not None:
            a.culprit = Culprit(a.start, top.ip, f"Unloaded_{unloaded.name}", unloaded.name, None,
                                top.ip - unloaded.start, top.ip - unloaded.start, guessed=top.guess)
            a.verdict = DRIVER
            a.notes.append(f"The faulting address is where {unloaded.name} was loaded before it was unloaded: "
                           "something called into a driver that was gone.")
            return
        a.verdict = BAD_IP
        a.pseudo_module = "Unknown_Image"
        caller = best[0] if best else None
        a.detector = _culprit(session, a, *caller) if caller else None
        return
    if verdict == DRIVER:
        if best:
            a.culprit = _culprit(session, a, *best[0])
            a.verdict = DRIVER
            if a.culprit.guessed:
                a.notes.append("The blamed frame is a guess (found by scanning the stack, not by unwind data or "
                               "code): treat it as a lead, not a verdict.")
        elif a.broken_driver:
            a.culprit = Culprit(None, None, _stem(a.broken_driver), a.broken_driver, None, 0, 0)
            a.verdict = DRIVER
            a.notes.append(f"No frame of the stack could be blamed; the kernel itself named {a.broken_driver} "
                           "as the failing driver (the dump's broken-driver entry).")
        else:
            a.verdict = INCONCLUSIVE
            a.pseudo_module = "Unknown_Image"
        return
    a.verdict = verdict
    detector = best[0] if best else None
    if verdict == MANUAL:
        # who asked: the first frame of a module that is not Windows (kbdcrash, a keyboard driver)
        asked = next((c for c in candidates if c[2] is None), None)
        a.detector = _culprit(session, a, *asked) if asked else None
        return
    a.detector = _culprit(session, a, *detector) if detector else None
    if verdict == POOL:
        a.pseudo_module = "Pool_Corruption"
    elif verdict == MEMORY:
        a.pseudo_module = "memory_corruption"
    elif verdict == HARDWARE:
        a.pseudo_module = _quietly(a, cpu_vendor, session) or _record_vendor(a) or "hardware"
    elif verdict == CRITICAL_PROCESS:
        process = a.params[a.rule.process] if a.rule.process is not None else 0
        name = _quietly(a, process_image_name, session, process) if process else None
        if a.base_code == 0xF4 and name is None and a.params[2]:
            name = _quietly(a, _ascii_at, session, a.params[2])
        a.critical_process = name
        a.pseudo_module = name or "critical_process"


def _error_record(session: SessionView, a: Analysis) -> ErrorRecord:
    try:
        record, where = error_record(session, a.params[1])
    except KdError as exc:
        raise KdError(f"The WHEA error record (P2): {exc}") from None
    if where is not None:
        a.notes.append(f"The WHEA error record's memory is not in the dump; it was read from {where}.")
    return record


# WHEA_XPF_MCA_SECTION.CpuVendor -> the CPUID vendor string WinDbg names the pseudo-module by
RECORD_VENDORS = {1: "GenuineIntel", 2: "AuthenticAMD"}
# The processor generic section's ErrorType -> the bucket's PROCESSOR_ suffix (WinDbg's names)
PROCESSOR_BUCKETS = {1: "CACHE", 2: "TLB", 4: "BUS_PRV", 8: "MAE"}


def _record_vendor(a: Analysis) -> str | None:
    section = a.whea.first("mca") if a.whea is not None else None
    return RECORD_VENDORS.get(section.mca.vendor) if section is not None and section.mca is not None else None


def _best(candidates: list[Candidate]) -> list[Candidate]:
    """Drivers first, then pass-through modules, then Windows; messengers never."""
    ranked = []
    for rank, kinds in enumerate(((None,), (PASS,), (OS,))):
        ranked += [c for c in candidates if c[2] in kinds]
    return ranked


def _culprit(session: SessionView, a: Analysis, index: int, sym: FrameSymbol, kind: str | None) -> Culprit:
    frame = a.stack[index]
    module = sym.module
    assert module is not None  # a candidate's frame is in a module
    version = company = None
    try:
        image = session.symbols.image(module)
        info = image.version_info if image is not None else None
        if info is None:
            file_image = session.symbols.file_image(module)
            info = file_image.version_info if file_image is not None else None
        if info is not None:
            version = ".".join(str(x) for x in info.file_version)
            company = info.strings.get("CompanyName")
    except KdError:
        pass
    return Culprit(index, frame.ip, module.name, module.image_name, sym.function, sym.offset, sym.module_offset,
                   kind, frame.guess, version, module.timestamp, company)


def _unloaded_at(session: SessionView, address: int) -> UnloadedModule | None:
    for u in session.symbols.modules.unloaded:
        if u.start <= address < u.end:
            return u
    return None


def _broken_driver(session: SessionView) -> str | None:
    tri = session.dump.triage
    if tri is not None and tri.broken_driver is not None:
        return tri.broken_driver.name.replace("/", "\\").rsplit("\\", 1)[-1]
    return None


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


def _ascii_at(session: SessionView, address: int) -> str | None:
    if session.memory is None:  # the errors already say the dump's memory cannot be read
        return None
    raw = session.memory.read(address, 64)
    text = raw.split(b"\0", 1)[0]
    return text.decode("ascii") if text and all(0x20 <= b < 0x7F for b in text) else None


# -- the bucket -------------------------------------------------------------------------------------
def bucket(a: Analysis) -> str:
    """FAILURE_BUCKET_ID: `<class>_<module>!<function>` (windbg.md §2 conventions)."""
    base, p = a.base_code, a.params
    if a.verdict == MANUAL:
        return a.name
    exc = a.exception
    if a.rule.av or (exc is not None and a.rule.exception_code is not None and exc.code == 0xC0000005):
        prefix = "AV_"
    elif a.rule.exception_code is not None and exc is not None:
        prefix = f"0x{base:X}_{exc.code:x}_"
    elif a.rule.subtype:
        prefix = f"0x{base:X}_{p[0]:x}_"
        if base == 0x139 and p[0] in FAST_FAIL_NAMES:
            prefix += FAST_FAIL_NAMES[p[0]] + "_"
    else:
        prefix = f"0x{base:X}_"
    if a.verdict == DRIVER and a.culprit is not None and a.culprit.frame is None and a.irp is not None:
        if a.irp.get("power_down"):  # a set-power IRP to a lower state, as WinDbg 10 names it
            return prefix + f"POWER_DOWN_IMAGE_{a.culprit.image}"
        return prefix + f"{a.culprit.module}_IMAGE_{a.culprit.image}"  # 0x9F_3: the IRP's holder
    if a.verdict == DRIVER and a.culprit is not None:
        return prefix + a.culprit.bucket_target
    if a.verdict == BAD_IP:
        return prefix + "BAD_IP_" + (a.detector.bucket_target if a.detector else "Unknown_Image")
    if a.verdict in (POOL, MEMORY):
        where = ("_" + a.detector.bucket_target) if a.detector else ""
        return prefix + ("POOL_CORRUPTION" if a.verdict == POOL else "MEMORY_CORRUPTION") + where
    if a.verdict == HARDWARE and a.whea is not None:
        generic = a.whea.first("generic")
        if generic is not None and generic.generic is not None:
            kind = PROCESSOR_BUCKETS.get(generic.generic.error_type)
            return prefix + f"{a.pseudo_module}_PROCESSOR" + (f"_{kind}" if kind else "")
    if a.verdict in (HARDWARE, CRITICAL_PROCESS):
        return prefix + (a.pseudo_module or a.verdict)
    return prefix + "ANALYSIS_INCONCLUSIVE"


def failure_hash(text: str) -> str:
    """kdshell's own stable hash of the bucket, as a GUID (WinDbg's algorithm is not public)."""
    h = hashlib.md5(text.lower().encode("utf-8")).hexdigest()
    return f"{{{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}}}"
