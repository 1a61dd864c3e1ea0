"""A small memory dump (DumpType 4) gathered out of a complete or kernel dump: `.dump /m`.

No open-source tool writes one; WinDbg does, on Windows. The parts are the ones Windows' own
writer puts in (formats.md §6, windbg.md §16) and the order is write_triage.py's
`write_triage`, which lays them out as Windows 10 does:

    header        the source's header: bug check, CONTEXT (for _M codes the exception context the
                  source already carries), EXCEPTION_RECORD, times, product; DumpType 4
    MM            DUMP_MM_STORAGE from the kernel variables the KDBG points to
    unloaded      the unloaded-driver list (names truncated to 12 characters, as Windows does)
    KPRCB         copy of the crashing processor's KPRCB (KDBG SizePrcb bytes)
    EPROCESS      copy of its current thread's process (ApcState.Process; SizeEProcess bytes)
    ETHREAD       copy of its current thread (SizeEThread bytes)
    stack         the kernel stack from the bug check's stack pointer up to the stack base,
                  16 KiB at most (TopOfStack = that stack pointer)
    KDBG          copy of KDDEBUGGER_DATA64 (mapped back at the header's KdDebuggerDataBlock)
    drivers       DUMP_DRIVER_ENTRY list + DUMP_STRING pool (FullDllName, base, size,
                  TimeDateStamp, CheckSum, entry point); the bug check's driver (KiBugCheckDriver)
                  as BrokenDriverOffset
    data page     the page a bug check parameter points to (in practice the faulting code page)
    data blocks   what the debugger reads besides: the code pages of the crash RIPs and nt's
                  header page, kernel variables the KDBG names (KiBugCheckData, KiProcessorBlock,
                  the list heads, NtBuildLab...), a window around every register and bug check
                  parameter that points into readable kernel memory, KUSER_SHARED_DATA's head
                  (times, tick count), the pages the faulting stack's trap frames, exception
                  records and context records live on, the paging entries (PXE..PTE, through the
                  self-map) of the RIP, RSP and fault address, the thread's TrapFrame slot, and
                  the KiBugCheckDriver name
    blobs         the source's secondary data, after SizeOfDump

The engine (`gather`) takes a session-independent `SmallDumpSource`: a memory reader, the module
lists, the kernel objects and the header (DESIGN.md "Seams"). `source_from_session` fills one in
from an opened complete/kernel dump; `write_small_dump` does both and writes the file.

Windows quirks (pinned by tests/test_dump_command.py):
- For 0x1000007E/0x1000008E-style codes the header CONTEXT is the exception context, but the
  stack copy starts at the *bug check's* stack pointer (KPRCB.ProcessorState.ContextFrame), lower
  on the same stack: the corpus minidump of build 17763 has TopOfStack 0x...4dd68 below its
  context RSP 0x...4efc8, and TopOfStack + SizeOfCallStack = the stack base.
- MiniDumpFields: Windows sets TRIAGE_DUMP_BASIC_INFO (0xFF, BROKEN_DRIVER included) even when
  BrokenDriverOffset is 0; both corpus minidumps do. So do we.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from kdshell import bugcheck_roles
from kdshell.dumpfile.context import CONTEXT_AMD64
from kdshell.dumpfile.header import (
    DUMP_MM_STORAGE32, DUMP_MM_STORAGE64, EXCEPTION_RECORD64, FILL32, MACHINE_ARM64, MAX_RUNS32, MAX_RUNS64, DumpHeader,
    PHYSICAL_MEMORY_DESCRIPTOR32, PHYSICAL_MEMORY_DESCRIPTOR64, PHYSICAL_MEMORY_RUN32, PHYSICAL_MEMORY_RUN64,
    TRIAGE_DUMP_BROKEN_DRIVER, TRIAGE_DUMP_CONTEXT, TRIAGE_DUMP_DATA_BLOCKS, TRIAGE_DUMP_DATAPAGE,
    TRIAGE_DUMP_DEBUGGER_DATA, TRIAGE_DUMP_DRIVER_LIST, TRIAGE_DUMP_EXCEPTION, TRIAGE_DUMP_MMINFO,
    TRIAGE_DUMP_PRCB, TRIAGE_DUMP_PROCESS, TRIAGE_DUMP_STACK, TRIAGE_DUMP_THREAD,
)
from kdshell.dumpfile.write import DumpHeaderFields
from kdshell.dumpfile.write_triage import TriageDriverInfo, TriageParts, write_triage
from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel import kuser
from kdshell.kernel.kdbg import SYSTEM_RANGE_START, Kdbg, system_range_start
from kdshell.kernel.layout import Memory
from kdshell.kernel.offsets import KernelOffsets
from kdshell.stack.frames import KTRAP_FRAME_X64_19041, KTRAP_FRAME_X86_19041
from kdshell.view import SessionView

if TYPE_CHECKING:
    from kdshell.dumpfile.dump import DumpFile
    from kdshell.kernel.prcb import Processor
    from kdshell.kernel.threads import Thread
    from kdshell.memory.virtual import VirtualMemory

PAGE = 0x1000
STACK_LIMIT = 0x4000  # Windows keeps at most 16 KiB of the kernel stack
POINTER_BEFORE, POINTER_AFTER = 0x100, 0x300  # window kept around a register / parameter value
NAME_LIMIT = 0x200  # bytes of a UNICODE_STRING / ASCII string kept at most

MemoryRead = Callable[[int, int], bytes]

# Bug check parameters that point at register frames and records (kdshell/data/bugcheck_params.tsv):
# the pages of what is there are kept; x64's sizes, which cover x86's.
RECORD_SIZES = {"exception_record": EXCEPTION_RECORD64.sizeof(), "context_record": CONTEXT_AMD64.sizeof(),
                "trap_frame": KTRAP_FRAME_X64_19041["size"]}
KTRAP_FRAME_SIZE = {True: KTRAP_FRAME_X64_19041["size"], False: KTRAP_FRAME_X86_19041["size"]}
# KUSER_SHARED_DATA's head is kept, through TickCount: times, version, tick count (what !thread's
# "Ticks:" and .time read).
KUSER_KEPT = (kuser.TICK_COUNT + kuser.TICK_COUNT_SIZE + 0xF) & ~0xF  # to a 16-byte boundary: 0x330

# KDDEBUGGER_DATA64 fields holding the address of a kernel variable kept as a data block:
# field -> size in pointers (negative: bytes), or "processors" / "string".
KDBG_VARIABLES: dict[str, int | str] = {
    "PsLoadedModuleList": 2, "PsActiveProcessHead": 2, "KiBugCheckData": 5, "MmPfnDatabase": 1,
    "MmHighestUserAddress": 1, "MmSystemRangeStart": 1, "MmUserProbeAddress": 1, "KeTimeIncrement": -4,
    "CmNtCSDVersion": -4, "KiProcessorBlock": "processors", "NtBuildLab": "string",
    # the pool ranges: !analyze names the pool region of a READ/WRITE_ADDRESS from them
    "MmNonPagedPoolStart": 1, "MmNonPagedPoolEnd": 1, "MmPagedPoolStart": 1, "MmPagedPoolEnd": 1,
}
# DUMP_MM_STORAGE field <- the KDBG field holding the variable's address, and the width read.
MM_FROM_KDBG = {
    "MmSpecialPoolTag": ("MmSpecialPoolTag", 4), "MiTriageActionTaken": ("MmTriageActionTaken", 4),
    "KernelVerifier": ("KernelVerifier", 4), "MmMaximumNonPagedPool": ("MmMaximumNonPagedPoolInBytes", None),
    "MmAllocatedNonPagedPool": ("MmAllocatedNonPagedPool", None),
    "PagedPoolMaximum": ("MmSizeOfPagedPoolInBytes", None), "PagedPoolAllocated": ("MmPagedPoolCommit", None),
    "CommittedPages": ("MmTotalCommittedPages", None), "CommittedPagesPeak": ("MmPeakCommitment", None),
    "CommitLimitMaximum": ("MmTotalCommitLimitMaximum", None),
}


class SmallDumpError(KdError):
    """The small memory dump cannot be made from this dump (one line, the user's words)."""


@dataclass
class KernelObjects:
    """Where the crashing processor's kernel objects are (virtual addresses and sizes)."""

    processor: int = 0
    prcb: int | None = None
    prcb_size: int = 0
    thread: int | None = None
    thread_size: int = 0
    process: int | None = None
    process_size: int = 0
    stack_base: int | None = None  # KTHREAD.StackBase (else InitialStack)
    stack_limit: int | None = None
    bugcheck_registers: dict[str, int] | None = None  # KPRCB.ProcessorState.ContextFrame
    trap_frame_slot: int | None = None  # address of KTHREAD.TrapFrame
    notes: list[str] = field(default_factory=list)


@dataclass
class SmallDumpSource:
    """Everything `gather` needs, independent of the session."""

    fields: DumpHeaderFields  # the source dump's header facts
    read: MemoryRead  # virtual memory of the crash context (MemoryNotPresent for holes)
    registers: Mapping[str, int]  # the header CONTEXT, decoded
    drivers: Sequence[TriageDriverInfo] = ()
    unloaded: Sequence[tuple[str, int, int]] = ()  # (name, start, end)
    kdbg_address: int | None = None
    kdbg: bytes | None = None  # the decoded KDDEBUGGER_DATA64 (Size bytes)
    objects: KernelObjects = field(default_factory=KernelObjects)
    broken_driver: str | None = None  # image name from KiBugCheckDriver
    broken_driver_name: tuple[int, int] | None = None  # (address, size) of that UNICODE_STRING + buffer
    frames: Sequence[tuple[int, int]] = ()  # (address, size) of trap/exception frames and records
    paging_entries: Callable[[int], Sequence[int]] | None = None  # VA -> PXE..PTE addresses
    entry_size: int = 8  # bytes of one paging entry
    kernel_start: int = SYSTEM_RANGE_START[True]
    kernel_base: int | None = None  # nt's base: its header page is kept
    blobs: Sequence[tuple[bytes, bytes]] = ()


@dataclass
class SmallDump:
    """What `gather` made: the header fields, the parts, and a description for messages/tests."""

    fields: DumpHeaderFields
    parts: TriageParts
    stack_range: tuple[int, int]
    blocks: list[tuple[int, int]]  # (address, size) of the data blocks
    notes: list[str]


# ---------------------------------------------------------------------------------------------
# Helpers


def _u(data: bytes, off: int, size: int) -> int:
    return int.from_bytes(data[off : off + size], "little")


def _kdbg_field(kdbg: bytes | None, name: str) -> int | None:
    """A field of the KDBG copy; None when the block is too short for it or it is 0."""
    if kdbg is None:
        return None
    return Kdbg.from_copy(kdbg).get(name) or None


def readable_extent(read: MemoryRead, address: int, size: int) -> int:
    """How many bytes from `address` can be read (stops at the first missing page)."""
    done = 0
    while done < size:
        at = address + done
        n = min(size - done, PAGE - (at & (PAGE - 1)))
        try:
            read(at, n)
        except MemoryNotPresent:
            break
        done += n
    return done


class _Ranges:
    """Address ranges to keep as data blocks, minus what other parts of the dump already hold."""

    def __init__(self, read: MemoryRead, mask: int) -> None:
        self.read = read
        self.mask = mask
        self.wanted: list[tuple[int, int]] = []
        self.taken: list[tuple[int, int]] = []  # (start, end) held elsewhere (stack, KDBG, data page)

    def take(self, start: int, end: int) -> None:
        if end > start:
            self.taken.append((start, end))

    def add(self, address: int, size: int) -> None:
        if size <= 0 or address is None:
            return
        address &= self.mask
        if address + size > self.mask + 1:
            size = self.mask + 1 - address
        self.wanted.append((address, address + size))

    def add_pages(self, address: int, size: int) -> None:
        """The whole pages [address, address + size) lies on."""
        address &= self.mask
        start = address & ~(PAGE - 1)
        end = -(-(address + size) // PAGE) * PAGE
        self.add(start, end - start)

    def _minus_taken(self, start: int, end: int) -> list[tuple[int, int]]:
        pieces = [(start, end)]
        for t0, t1 in self.taken:
            out = []
            for a, b in pieces:
                if t1 <= a or b <= t0:
                    out.append((a, b))
                    continue
                if a < t0:
                    out.append((a, t0))
                if t1 < b:
                    out.append((t1, b))
            pieces = out
        return pieces

    def blocks(self) -> list[tuple[int, bytes]]:
        """Merged, readable, not held elsewhere: (address, bytes) in address order."""
        merged: list[list[int]] = []
        for a, b in sorted(self.wanted):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        out: list[tuple[int, bytes]] = []
        for a, b in merged:
            for start, end in self._minus_taken(a, b):
                # page by page: keep what is readable, skip what is not
                at = start
                while at < end:
                    n = min(end - at, PAGE - (at & (PAGE - 1)))
                    try:
                        data = self.read(at, n)
                    except MemoryNotPresent:
                        at += n
                        continue
                    if out and out[-1][0] + len(out[-1][1]) == at:
                        out[-1] = (out[-1][0], out[-1][1] + data)
                    else:
                        out.append((at, data))
                    at += n
        return out


# ---------------------------------------------------------------------------------------------
# The engine


def _stack(src: SmallDumpSource, sp_name: str) -> tuple[int, int, list[str]]:
    """(top, end) of the kernel stack copy: from the lowest of the bug check's and the header
    context's stack pointers that lie on the thread's stack, up to the stack base, 16 KiB at most,
    up to the first page the source does not have."""
    notes = []
    o = src.objects
    sp_now = src.registers.get(sp_name)
    candidates: list[int] = [sp_now] if sp_now else []
    if o.bugcheck_registers and o.bugcheck_registers.get(sp_name):
        candidates.append(o.bugcheck_registers[sp_name])
    if not candidates:
        raise SmallDumpError("the dump's context has no stack pointer: no kernel stack to keep")
    base, limit = o.stack_base, o.stack_limit
    on_stack = [c for c in candidates if base and limit and limit <= c < base]
    if on_stack and base:  # (base is known when a stack pointer is on the stack)
        top = min(on_stack)
        end = min(base, top + STACK_LIMIT)
    else:
        if base:
            notes.append("the stack pointer is not on the current thread's kernel stack (a DPC or "
                         "interrupt stack?): 16 KiB from it are kept")
        near = [c for c in candidates if abs(c - candidates[0]) < STACK_LIMIT]
        top = min(near)
        end = top + STACK_LIMIT
    size = readable_extent(src.read, top, end - top)
    if size == 0:
        raise SmallDumpError(f"the crash's kernel stack ({top:#x}) is not in this dump: a small memory dump "
                             "made of it would hold no stack")
    if size < end - top:
        notes.append(f"the stack is kept up to {top + size:#x}: the page after it is not in the source dump")
    return top, top + size, notes


def _mm(src: SmallDumpSource, is64: bool) -> tuple[dict[str, int], bool]:
    """DUMP_MM_STORAGE values from the variables the KDBG points to; (values, any found)."""
    width = 8 if is64 else 4
    values: dict[str, int] = {}
    found = False
    for name, (field_name, size) in MM_FROM_KDBG.items():
        address = _kdbg_field(src.kdbg, field_name)
        if not address:
            continue
        try:
            values[name] = _u(src.read(address, size or width), 0, size or width)
            found = True
        except MemoryNotPresent:
            continue
    verifier = _kdbg_field(src.kdbg, "MmVerifierData")  # MM_DRIVER_VERIFIER_DATA, Level first
    if verifier:
        try:
            values["MmVerifyDriverLevel"] = _u(src.read(verifier, 4), 0, 4)
        except MemoryNotPresent:
            pass
    return values, found


def _data_page(src: SmallDumpSource, params: Sequence[int], stack: tuple[int, int]) -> tuple[int, bytes] | None:
    """The page of the first bug check parameter that points into readable kernel memory outside
    the stack copy (Windows' DATAPAGE: the page a parameter references)."""
    for p in params:
        if p < src.kernel_start or stack[0] <= p < stack[1]:
            continue
        page = p & ~(PAGE - 1)
        try:
            return page, src.read(page, PAGE)
        except MemoryNotPresent:
            continue
    return None


def _kdbg_variables(src: SmallDumpSource, ranges: _Ranges, ps: int, processors: int) -> None:
    for name, what in KDBG_VARIABLES.items():
        address = _kdbg_field(src.kdbg, name)
        if not address:
            continue
        if what == "processors":
            ranges.add(address, max(1, processors) * ps)
        elif what == "string":  # NtBuildLab: up to its NUL
            n = readable_extent(src.read, address, NAME_LIMIT)
            if n:
                text = src.read(address, n)
                end = text.find(b"\0")
                ranges.add(address, (end + 1) if end >= 0 else n)
        elif isinstance(what, int):
            ranges.add(address, what * ps if what > 0 else -what)


def gather(src: SmallDumpSource) -> SmallDump:
    """The header fields and parts of the small memory dump of `src`."""
    f = src.fields
    is64 = f.is64
    ps = 8 if is64 else 4
    mask = (1 << (8 * ps)) - 1
    arm64 = f.machine == MACHINE_ARM64
    sp_name, ip_name = ("sp", "pc") if arm64 else ("rsp", "rip") if is64 else ("esp", "eip")
    o = src.objects
    notes = list(o.notes)
    code, params = f.bugcheck_code, [p & mask for p in f.bugcheck_parameters]

    top, end, stack_notes = _stack(src, sp_name)
    notes += stack_notes
    stack = src.read(top, end - top)

    def copy(address: int | None, size: int, what: str) -> bytes | None:
        if not address or not size:
            notes.append(f"no {what} copy: its address or size is not known")
            return None
        n = readable_extent(src.read, address, size)
        if n < size:
            notes.append(f"the {what} at {address:#x} is not all in the source dump ({n:#x} of {size:#x} bytes)")
        return src.read(address, n) if n else None

    prcb = copy(o.prcb, o.prcb_size, "KPRCB")
    process = copy(o.process, o.process_size, "EPROCESS")
    thread = copy(o.thread, o.thread_size, "ETHREAD")

    mm_values, mm_found = _mm(src, is64)
    data_page = _data_page(src, params, (top, end))

    ranges = _Ranges(src.read, mask)
    ranges.take(top, end)
    if src.kdbg and src.kdbg_address:
        ranges.take(src.kdbg_address, src.kdbg_address + len(src.kdbg))
    if data_page is not None:
        ranges.take(data_page[0], data_page[0] + PAGE)

    contexts = [dict(src.registers)]
    if o.bugcheck_registers:
        contexts.append(dict(o.bugcheck_registers))
    # code pages of the crash RIPs, and nt's header page (the image's PE headers)
    for regs in contexts:
        if regs.get(ip_name):
            ranges.add_pages(regs[ip_name], 1)
    if src.kernel_base:
        ranges.add_pages(src.kernel_base, 1)
    # kernel variables the debugger reads first, and KUSER_SHARED_DATA's clocks (!thread's ticks)
    _kdbg_variables(src, ranges, ps, f.number_processors)
    ranges.add(kuser.ADDRESS[is64], KUSER_KEPT)
    if src.broken_driver_name:
        ranges.add(*src.broken_driver_name)
    if o.trap_frame_slot:
        ranges.add(o.trap_frame_slot, ps)
    # what registers and parameters point to
    pointers = [v for regs in contexts for k, v in regs.items()
                if k not in (ip_name, sp_name) and k.startswith(("r", "e")) and isinstance(v, int)]
    for value in pointers + params:
        value &= mask
        if value >= src.kernel_start:
            ranges.add(value - POINTER_BEFORE, POINTER_BEFORE + POINTER_AFTER)
    # the pages of the faulting stack's trap/exception frames and records
    for role, size in RECORD_SIZES.items():
        for index in bugcheck_roles.parameters(code, role):
            if params[index] >= src.kernel_start:
                ranges.add_pages(params[index], size)
    for address, size in src.frames:
        ranges.add_pages(address, size)
    # paging entries of the RIP, RSP and fault address (what !pte needs)
    if src.paging_entries is not None:
        vas = [regs[n] for regs in contexts for n in (ip_name, sp_name) if regs.get(n)]
        fault = bugcheck_roles.parameter(code, "address")
        if fault is not None:
            vas.append(params[fault])
        for va in vas:
            for entry in src.paging_entries(va):
                ranges.add(entry, src.entry_size)
    blocks = ranges.blocks()

    drivers = list(src.drivers)
    broken = None
    if src.broken_driver:
        wanted = src.broken_driver.replace("/", "\\").rsplit("\\", 1)[-1].lower()
        broken = next((i for i, d in enumerate(src.drivers)
                       if d.name.replace("/", "\\").rsplit("\\", 1)[-1].lower() == wanted), None)
    mm_layout = DUMP_MM_STORAGE64 if is64 else DUMP_MM_STORAGE32
    parts = TriageParts(
        stack=stack, top_of_stack=top, prcb=prcb, process=process, thread=thread,
        mm={k: v & ((1 << 64) - 1 if is64 else 0xFFFFFFFF) for k, v in mm_values.items()
            if k in {sc.name for sc in mm_layout.subcons}},
        unloaded=list(src.unloaded), drivers=drivers, broken_driver=broken,
        kdbg=src.kdbg if src.kdbg and src.kdbg_address else None, data_page=data_page,
        data_blocks=blocks,
    )
    flags = 0
    for present, flag in ((f.context is not None, TRIAGE_DUMP_CONTEXT),
                          (f.exception is not None, TRIAGE_DUMP_EXCEPTION),
                          (bool(prcb), TRIAGE_DUMP_PRCB), (bool(process), TRIAGE_DUMP_PROCESS),
                          (bool(thread), TRIAGE_DUMP_THREAD), (bool(stack), TRIAGE_DUMP_STACK),
                          (bool(drivers), TRIAGE_DUMP_DRIVER_LIST | TRIAGE_DUMP_BROKEN_DRIVER),
                          (mm_found, TRIAGE_DUMP_MMINFO), (data_page is not None, TRIAGE_DUMP_DATAPAGE),
                          (parts.kdbg is not None, TRIAGE_DUMP_DEBUGGER_DATA),
                          (bool(blocks), TRIAGE_DUMP_DATA_BLOCKS)):
        if present:
            flags |= flag
    fields = f.replace(minidump_fields=flags, required_dump_space=None)
    return SmallDump(fields, parts, (top, end), [(a, len(d)) for a, d in blocks], notes)


# ---------------------------------------------------------------------------------------------
# Kernel objects from memory and offsets (no session): the crashing processor's KPRCB, thread,
# process and stack bounds, read with the kernel layer's engines (kdshell.kernel.prcb/threads).


def crashing_processor(memory: Memory, offsets: KernelOffsets, kdbg: bytes | None, registers: Mapping[str, int],
                       processors: int, machine: int, is64: bool, build: int | None = None) -> KernelObjects:
    """The processor that bug-checked and its objects.

    KiProcessorBlock[n] (KDBG) gives each KPRCB (kdshell.kernel.prcb.read_processors). The
    crashing one is the processor whose current thread's kernel stack holds the header context's
    stack pointer (the header context of an _M code is the exception context, on the same
    stack), else whose saved context (KPRCB.ProcessorState.ContextFrame, written by KeBugCheckEx)
    has it (kdshell.kernel.prcb.crashing_processor), else processor 0. `memory` has `read`;
    `offsets` is a kdshell.kernel.offsets.KernelOffsets (PDB, KDBG, built-in table)."""
    from kdshell.kernel import prcb as P
    from kdshell.kernel import threads as T
    from kdshell.stack.frames import decode_context_record

    arm64 = machine == MACHINE_ARM64
    sp_name = "sp" if arm64 else "rsp" if is64 else "esp"
    sp = registers.get(sp_name, 0)
    out = KernelObjects()
    block = _kdbg_field(kdbg, "KiProcessorBlock")
    if not block:
        out.notes.append("the KDBG does not say where KiProcessorBlock is: no KPRCB, thread or process copies")
        return out
    if not is64:
        block &= 0xFFFFFFFF
    prcb_layout = P.prcb_layout(offsets, is64, build, arm64)
    thread_layout = T.thread_layout(offsets, build)
    found = P.read_processors(memory, block, max(1, processors), prcb_layout, is64)
    cpus = [p for p in found.processors if p.readable]
    if not cpus:
        out.notes.append("KiProcessorBlock holds no KPRCB the source dump has")
        return out
    threads: dict[int, Thread | None] = {}

    def thread(address: int) -> Thread | None:
        if address not in threads:
            t = T.read_thread(memory, address, thread_layout, is64)
            threads[address] = t if t.readable else None
        return threads[address]

    def bounds(address: int) -> tuple[int, int] | None:
        t = thread(address)
        base = t and (t.stack_base or t.initial_stack)
        return (t.stack_limit, base) if t and t.stack_limit and base else None

    contexts: dict[int, dict[str, int] | None] = {}

    def context(p: Processor) -> dict[str, int] | None:
        if p.number not in contexts:
            contexts[p.number] = None
            if p.context_address is not None:
                try:
                    contexts[p.number] = decode_context_record(memory.read, p.context_address, machine).registers
                except KdError:
                    pass
        return contexts[p.number]

    number = P.crashing_processor(cpus, sp, bounds, lambda p: (context(p) or {}).get(sp_name))
    chosen = next((p for p in cpus if p.number == number), None)
    if chosen is None:
        chosen = cpus[0]
        out.notes.append(f"no processor's context or stack holds the dump's stack pointer {sp:#x}: "
                         f"processor {chosen.number} is taken as the crashing one")
    out.processor = chosen.number
    out.prcb = chosen.prcb
    out.prcb_size = offsets.size("_KPRCB") or 0
    out.bugcheck_registers = context(chosen)
    t = thread(chosen.current_thread) if chosen.current_thread else None
    if t is None:
        out.notes.append("the crashing processor's current thread is not in the source dump")
        return out
    out.thread = t.address
    out.thread_size = offsets.size("_ETHREAD") or 0
    out.stack_limit = t.stack_limit
    out.stack_base = t.stack_base or t.initial_stack
    out.process = t.apc_process or t.process
    out.process_size = offsets.size("_EPROCESS") or 0
    if (slot := thread_layout.get("trap_frame")) is not None:
        out.trap_frame_slot = t.address + slot
    return out


# ---------------------------------------------------------------------------------------------
# From a session


def header_runs(header: DumpHeader) -> list[tuple[int, int]] | None:
    """The PHYSICAL_MEMORY_DESCRIPTOR of a header (the machine's RAM runs), None when absent."""
    raw = bytes(header.physical_memory_block)
    desc, run, limit = ((PHYSICAL_MEMORY_DESCRIPTOR64, PHYSICAL_MEMORY_RUN64, MAX_RUNS64) if header.is64
                        else (PHYSICAL_MEMORY_DESCRIPTOR32, PHYSICAL_MEMORY_RUN32, MAX_RUNS32))
    if len(raw) < desc.sizeof():
        return None
    d = desc.parse(raw)
    if d.NumberOfRuns in (0, FILL32) or d.NumberOfRuns > limit:
        return None
    runs: list[tuple[int, int]] = []
    size = run.sizeof()
    for i in range(d.NumberOfRuns):
        r = run.parse(raw[desc.sizeof() + i * size : desc.sizeof() + (i + 1) * size])
        runs.append((r.BasePage, r.PageCount))
    if sum(c for _, c in runs) != d.NumberOfPages:
        return None
    return runs


def source_fields(dump: DumpFile, comment: str | None = None) -> DumpHeaderFields:
    """The source dump's header facts, for a dump written from it (any kind)."""
    h = dump.header
    overrides: dict[str, Any] = dict(context=bytes(dump.context_bytes()), exception=dict(dump.exception),
                     physical_memory_runs=header_runs(h))
    if comment is not None:
        overrides["comment"] = comment
    return DumpHeaderFields.from_header(h, **overrides)


def source_blobs(dump: DumpFile) -> list[tuple[bytes, bytes]]:
    """The source's secondary-data blobs as (tag, data)."""
    return [(b.tag, dump.read_file(b.data_offset, b.data_size)) for b in dump.blobs()]


def _kernel_offsets(session: SessionView) -> KernelOffsets:
    """KernelOffsets: the kernel PDB's types when they are loaded already, else the KDBG's
    Offset*/Size* fields first (no PDB download for a small dump), else everything the symbols
    layer offers."""
    from kdshell.kernel.offsets import KernelOffsets
    from kdshell.symbols.resolver import PDB

    syms = session.symbols
    kernel = syms.modules.kernel
    h = session.dump.header
    if kernel is not None and syms.status(kernel) == PDB:
        return session.parts.offsets()
    ko = KernelOffsets(h.build, h.is64, kdbg=session.kdbg, arm64=h.machine == MACHINE_ARM64)
    needed = [("_KPRCB", "CurrentThread"), ("_KPRCB", "ProcessorState.ContextFrame"),
              ("_KTHREAD", "ApcState.Process"), ("_KTHREAD", "StackBase"), ("_KTHREAD", "TrapFrame")]
    if all(ko.offset(*n) is not None for n in needed) and all(
            ko.size(t) for t in ("_KPRCB", "_ETHREAD", "_EPROCESS")):
        return ko
    return session.parts.offsets()


def _driver_records(session: SessionView, memory: VirtualMemory) -> list[TriageDriverInfo]:
    from kdshell.symbols.pe import PeFormatError, PeImage

    is64 = session.is64
    ps = 8 if is64 else 4
    entry_off, flags_off = (0x38, 0x68) if is64 else (0x1C, 0x34)
    out: list[TriageDriverInfo] = []
    for m in session.symbols.modules.modules:
        stamp, checksum = m.timestamp, m.checksum
        if stamp is None or checksum is None:  # the loader entry's layout does not say: the PE header
            try:
                image = PeImage.from_memory(memory, m.base)
                stamp = image.timestamp if stamp is None else stamp
                checksum = image.checksum if checksum is None else checksum
            except (MemoryNotPresent, PeFormatError):
                pass
        entry = flags = 0
        if m.entry:
            try:
                entry = memory.read_pointer(m.entry + entry_off, ps)
                flags = memory.read_int(m.entry + flags_off, 4)
            except MemoryNotPresent:
                pass
        out.append(TriageDriverInfo(m.path, m.base, m.size, stamp or 0, checksum or 0, entry, flags))
    return out


def _broken_driver(session: SessionView, memory: VirtualMemory) -> tuple[str | None, tuple[int, int] | None]:
    """KiBugCheckDriver: the UNICODE_STRING naming the driver the bug check blames (nt's
    symbols give its address); (image name, (address, bytes to keep))."""
    from kdshell.symbols.modules import read_unicode_string

    try:
        where = session.resolve_symbol("nt!KiBugCheckDriver")
    except KdError:
        where = None
    if not where:
        return None, None
    ps = 8 if session.is64 else 4
    try:
        pointer = memory.read_pointer(where, ps)
    except MemoryNotPresent:
        return None, None
    if not pointer:
        return None, None
    name = read_unicode_string(memory, pointer, session.is64)
    if not name:
        return None, None
    return name, (pointer, 2 * ps)


def _frames(session: SessionView, is64: bool) -> list[tuple[int, int]]:
    """(address, size) of the register frames the faulting stack's walk found or was told about."""
    out: list[tuple[int, int]] = []
    size = KTRAP_FRAME_SIZE[is64]
    try:
        state = session.context
        for tf in state.trap_hints():
            out.append((tf, size))
        walk = state.walk(256, context=dict(state.default), known=None)
    except KdError:
        return out
    for frame in walk:
        if frame.trap_frame:
            out.append((frame.trap_frame, size))
        unwind = frame.unwind
        if unwind is not None and unwind.trap_frame:
            out.append((unwind.trap_frame, size))
    return out


def source_from_session(session: SessionView, comment: str | None = None) -> SmallDumpSource:
    """A SmallDumpSource of the session's complete or kernel dump."""
    from kdshell.memory.paging import SelfMap

    d = session.dump
    h = d.header
    if d.is_small:
        raise SmallDumpError("this is already a small memory dump: .dump /m writes one from a complete or "
                             "kernel dump")
    mode, pages = session.spaces.mode, session.spaces.pages
    if mode is None or pages is None:  # a paging mode is known only with pages
        raise SmallDumpError("kdshell cannot translate this dump's addresses (no paging mode for its machine): "
                             "no small memory dump can be made from it")
    memory = session.spaces.space(h.directory_table_base)
    read = memory.read
    kdbg = session.kdbg
    kdbg_raw = bytes(kdbg.raw) if kdbg is not None else None
    registers = d.registers()
    offsets = _kernel_offsets(session)
    objects = crashing_processor(memory, offsets, kdbg_raw, registers, h.number_processors, h.machine, h.is64,
                                 h.build)
    mods = session.symbols.modules
    drivers = _driver_records(session, memory)
    unloaded = [(u.name, u.start, u.end) for u in mods.unloaded]
    broken, broken_name = _broken_driver(session, memory)
    pte_base = _kdbg_field(kdbg_raw, "PteBase") if h.is64 and h.build >= 14393 else None
    selfmap = SelfMap.find(mode, pages, h.directory_table_base, pte_base)
    kernel_start = system_range_start(kdbg, memory, h.is64)
    kernel = mods.kernel
    return SmallDumpSource(
        fields=source_fields(d, comment), read=read, registers=registers, drivers=drivers, unloaded=unloaded,
        kdbg_address=h.kd_debugger_data_block if kdbg is not None else None, kdbg=kdbg_raw, objects=objects,
        broken_driver=broken, broken_driver_name=broken_name, frames=_frames(session, h.is64),
        paging_entries=selfmap.addresses, entry_size=mode.entry_size, kernel_start=kernel_start,
        kernel_base=kernel.base if kernel is not None else session.kernel_base, blobs=source_blobs(d),
    )


def write_small_dump(session: SessionView, path: str | os.PathLike[str], *, overwrite: bool = False,
                     comment: str | None = None) -> tuple[int, SmallDump]:
    """`.dump /m`: gather the small memory dump of the session's dump and write it atomically.
    Returns (file size, what was gathered)."""
    src = source_from_session(session, comment)
    small = gather(src)
    size = write_triage(path, small.fields, small.parts, blobs=list(src.blobs), overwrite=overwrite)
    return size, small


__all__ = [
    "KernelObjects", "SmallDump", "SmallDumpError", "SmallDumpSource", "crashing_processor",
    "gather", "header_runs", "readable_extent", "source_blobs", "source_fields", "source_from_session",
    "write_small_dump",
]
