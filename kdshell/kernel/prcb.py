"""Processors: KPCR/KPRCB per processor (KiProcessorBlock), the current thread, the IRQL, and
the small dump's KPRCB/ETHREAD/EPROCESS copies (what !pcr, !prcb, !irql and !running print).

    layout = prcb_layout(offsets)
    p = read_processor(memory, number, prcb_address, layout, is64)          # a Processor
    ps = read_processors(memory, ki_processor_block, count, layout, is64)   # every processor
    crashing_processor(processors, header_sp, thread_bounds)                # which one bug-checked
    locate_triage_copies(copies, memory, kdbg, layout, ...)                 # a small dump's copies
    read_prcb_counters(memory, prcb, layout, is64), read_pcr_fields(memory, pcr, layout, is64)  # !prcb, !pcr
    read_cpu_info(memory, prcb, layout, is64)                               # !cpuinfo, !sysinfo

KPRCB addresses come from nt!KiProcessorBlock (an array of KPRCB pointers; the KDBG gives its
address). The KPCR holds its KPRCB: KPCR = KPRCB - KPCR.Prcb (0x180 on x64, 0x120 on x86).

IRQL. WinDbg's !irql shows the IRQL saved when the machine stopped, not the one KeBugCheckEx
raised to: KPRCB.DebuggerSavedIRQL when the kernel's types have it, else (x64) CR8 as saved in
the processor's KPRCB.ProcessorState.SpecialRegisters (CR8 is the x64 IRQL), else KPCR.Irql
(ARM64: KPCR.CurrentIrql; ARM64 has no CR8, the kernel keeps the IRQL in the KPCR).
`Processor.irql_source` says which was used.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from kdshell.errors import MemoryNotPresent
from kdshell.kernel.layout import FieldOffsets, Memory, Reader, StructLayout

PRCB_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "current_thread": (("_KPRCB", "CurrentThread"),),
    "next_thread": (("_KPRCB", "NextThread"),),
    "idle_thread": (("_KPRCB", "IdleThread"),),
    "number": (("_KPRCB", "Number"),),
    "context": (("_KPRCB", "ProcessorState.ContextFrame"),),
    "special": (("_KPRCB", "ProcessorState.SpecialRegisters"),),
    "cr8": (("_KPRCB", "ProcessorState.SpecialRegisters.Cr8"),),
    "saved_irql": (("_KPRCB", "DebuggerSavedIRQL"),),
    "mhz": (("_KPRCB", "MHz"),),
    "group": (("_KPRCB", "Group"),),
    "group_index": (("_KPRCB", "GroupIndex"),),
    "group_set_member": (("_KPRCB", "GroupSetMember"),),
    "interrupt_count": (("_KPRCB", "InterruptCount"),),
    "dpc_time": (("_KPRCB", "DpcTime"),),
    "interrupt_time": (("_KPRCB", "InterruptTime"),),
    "kernel_time": (("_KPRCB", "KernelTime"),),
    "user_time": (("_KPRCB", "UserTime"),),
    "cpu_type": (("_KPRCB", "CpuType"),),
    "cpu_id": (("_KPRCB", "CpuID"),),
    "cpu_step": (("_KPRCB", "CpuStep"),),
    "cpu_vendor": (("_KPRCB", "CpuVendor"),),
    "vendor_string": (("_KPRCB", "VendorString"),),
    "feature_bits": (("_KPRCB", "FeatureBits"),),
    "update_signature": (("_KPRCB", "UpdateSignature"),),
    "pcr_irql": (("_KPCR", "Irql"), ("_KPCR", "CurrentIrql")),
    "pcr_idt": (("_KPCR", "IdtBase"), ("_KPCR", "IDT")),
    "pcr_gdt": (("_KPCR", "GdtBase"), ("_KPCR", "GDT")),
    "pcr_tss": (("_KPCR", "TssBase"), ("_KPCR", "TSS")),
    "pcr_major": (("_KPCR", "MajorVersion"),),
    "pcr_minor": (("_KPCR", "MinorVersion"),),
    "pcr_irr": (("_KPCR", "IRR"),),
    "pcr_idr": (("_KPCR", "IDR"),),
    "pcr_interrupt_mode": (("_KPCR", "InterruptMode"),),
}

# The KPCR fields whose names differ: on x64 KPCR.Prcb is the KPRCB itself (embedded) and
# CurrentPrcb points to it; on x86 KPCR.PrcbData is embedded and KPCR.Prcb points to it.
PCR_FIELDS = {
    True: {"pcr_prcb": (("_KPCR", "Prcb"),), "pcr_self": (("_KPCR", "Self"),),
           "pcr_current_prcb": (("_KPCR", "CurrentPrcb"),)},
    False: {"pcr_prcb": (("_KPCR", "PrcbData"),), "pcr_self": (("_KPCR", "SelfPcr"),),
            "pcr_current_prcb": (("_KPCR", "Prcb"),)},
}

# Where the KPRCB sits in the KPCR when no source says (x64: KPCR.Prcb at 0x180 on every x64
# Windows; x86: KPCR.PrcbData at 0x120) -- windbg.md §10, the KDBG's OffsetPcrContainedPrcb.
PCR_PRCB_DEFAULT = {True: 0x180, False: 0x120}
# ARM64's KPCR head, the part drivers compile against (kdshell/data/offsets.json, ntdiff_arm64_hal):
# CurrentIrql at +0x38 in every ARM64 build. Where its KPRCB sits moved with the KPCR's size, so
# ARM64 has no default for that (the KDBG's OffsetPcrContainedPrcb or the PDB says).
ARM64_PCR_CURRENT_IRQL = 0x38
# KSPECIAL_REGISTERS.Cr8 on x64 (Cr0..Cr4, KernelDr0-7, Gdtr, Idtr, Tr, Ldtr, MxCsr, DebugControl,
# four LBR/exception RIPs, then Cr8): stable since the first x64 Windows.
CR8_IN_SPECIAL_REGISTERS = 0xA0
MAX_PROCESSORS = 2048
MAX_SELF_SCAN = 0x40000  # bytes of a structure copy searched for its own list heads

# IRQL names (x64 and x86 differ above DISPATCH_LEVEL); WinDbg prints the number in decimal.
IRQL_NAMES = {
    True: {0: "LOW_LEVEL", 1: "APC_LEVEL", 2: "DISPATCH_LEVEL", 12: "SYNCH_LEVEL", 13: "CLOCK_LEVEL",
           14: "IPI_LEVEL", 15: "HIGH_LEVEL"},
    False: {0: "LOW_LEVEL", 1: "APC_LEVEL", 2: "DISPATCH_LEVEL", 27: "PROFILE_LEVEL", 28: "CLOCK2_LEVEL",
            29: "IPI_LEVEL", 30: "POWER_LEVEL", 31: "HIGH_LEVEL"},
}


def prcb_layout(offsets: FieldOffsets, is64: bool = True, build: int | None = None,
                arm64: bool = False) -> StructLayout:
    return StructLayout(offsets, {**PRCB_FIELDS, **PCR_FIELDS[is64]}, build, arm64)


def irql_name(value: int, is64: bool) -> str:
    name = IRQL_NAMES[is64].get(value)
    if name is None and 3 <= value <= (11 if is64 else 26):
        name = "DEVICE_LEVEL"
    return name or "?"


@dataclass
class Processor:
    number: int
    prcb: int
    pcr: int | None = None
    current_thread: int | None = None
    next_thread: int | None = None
    idle_thread: int | None = None
    irql: int | None = None          # the IRQL before the bug check (see the module note)
    irql_source: str | None = None
    current_irql: int | None = None  # KPCR.Irql: the current one (the bug check raised it)
    context_address: int | None = None  # KPRCB.ProcessorState.ContextFrame
    readable: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def idle(self) -> bool:
        return bool(self.current_thread) and self.current_thread == self.idle_thread


def pcr_prcb_offset(layout: StructLayout, is64: bool) -> int | None:
    found = layout.get("pcr_prcb")
    if found is not None or layout.arm64:
        return found
    return PCR_PRCB_DEFAULT[is64]


def processor_block_entry(memory: Memory, ki_processor_block: int, number: int, is64: bool) -> int:
    """KiProcessorBlock[number] (0 for an empty slot); MemoryNotPresent when not in the dump."""
    return Reader(memory, is64).ptr(ki_processor_block + number * (8 if is64 else 4))


def cr8_offset(layout: StructLayout, is64: bool) -> int | None:
    if not is64 or layout.arm64:
        return None
    found = layout.get("cr8")
    if found is not None:
        return found
    special = layout.get("special")
    if special is not None:
        return special + CR8_IN_SPECIAL_REGISTERS
    context = layout.get("context")
    # KPROCESSOR_STATE on x64 = { KSPECIAL_REGISTERS (0xF0 bytes), CONTEXT }
    return context - 0xF0 + CR8_IN_SPECIAL_REGISTERS if context is not None and context >= 0xF0 else None


def read_processor(memory: Memory, number: int, prcb: int, layout: StructLayout, is64: bool,
                   read_pcr: bool = True) -> Processor:
    r = Reader(memory, is64)
    f = layout.get
    p = Processor(number, prcb)
    p.current_thread = r.maybe_ptr(prcb, f("current_thread"))
    p.next_thread = r.maybe_ptr(prcb, f("next_thread"))
    p.idle_thread = r.maybe_ptr(prcb, f("idle_thread"))
    p.readable = p.current_thread is not None or r.maybe_ptr(prcb, 0) is not None
    if (context := f("context")) is not None:
        p.context_address = prcb + context
    in_pcr = pcr_prcb_offset(layout, is64)
    p.pcr = prcb - in_pcr if read_pcr and in_pcr is not None else None
    if p.pcr is not None:
        default = ARM64_PCR_CURRENT_IRQL if layout.arm64 else 0x50 if is64 else 0x24
        irql_at = f("pcr_irql") if f("pcr_irql") is not None else default
        p.current_irql = r.maybe_uint(p.pcr, irql_at, 1)
    saved = r.maybe_uint(prcb, f("saved_irql"), 1)
    if saved is not None:
        p.irql, p.irql_source = saved, "KPRCB.DebuggerSavedIRQL"
    elif (cr8 := r.maybe_uint(prcb, cr8_offset(layout, is64), 1)) is not None:
        p.irql, p.irql_source = cr8 & 0xF, "CR8 saved in KPRCB.ProcessorState"
    elif p.current_irql is not None:
        p.irql, p.irql_source = p.current_irql, "KPCR.CurrentIrql" if layout.arm64 else "KPCR.Irql"
    return p


@dataclass
class PrcbCounters:
    """What !prcb shows besides the threads (None: the field is unknown or not in the dump)."""

    group: int | None = None
    group_index: int | None = None
    group_set_member: int | None = None
    interrupt_count: int | None = None
    dpc_time: int | None = None
    interrupt_time: int | None = None
    kernel_time: int | None = None
    user_time: int | None = None


def read_prcb_counters(memory: Memory, prcb: int, layout: StructLayout, is64: bool) -> PrcbCounters:
    r = Reader(memory, is64)
    f = layout.get
    return PrcbCounters(
        r.maybe_uint(prcb, f("group"), 1), r.maybe_uint(prcb, f("group_index"), 1),
        r.maybe_ptr(prcb, f("group_set_member")),
        *(r.maybe_uint(prcb, f(n), 4) for n in ("interrupt_count", "dpc_time", "interrupt_time",
                                                "kernel_time", "user_time")))


@dataclass
class CpuInfo:
    """A processor's identity as the kernel recorded it in its KPRCB at boot (None: the field is
    unknown for this kernel or not in the dump). CpuType is the CPUID family, CpuStep the model
    (high byte) and stepping (low byte), UpdateSignature the microcode revision (MSR 0x8B) as
    read at boot, FeatureBits the kernel's KF_* feature flags (not CPUID's)."""

    family: int | None = None
    cpuid: int | None = None  # KPRCB.CpuID: 1 when the processor has the CPUID instruction
    model: int | None = None
    stepping: int | None = None
    mhz: int | None = None
    vendor: str | None = None  # VendorString: GenuineIntel, AuthenticAMD, ...
    vendor_code: int | None = None  # KPRCB.CpuVendor (the kernel's CPU_VENDORS number)
    features: int | None = None
    update_signature: int | None = None

    @property
    def known(self) -> bool:
        return any(v is not None for v in (self.family, self.mhz, self.vendor, self.update_signature))


def read_cpu_info(memory: Memory, prcb: int, layout: StructLayout, is64: bool,
                  prcb_size: int | None = None) -> CpuInfo:
    """`prcb_size`: the KPRCB's size when known; a field offset beyond it (the built-in table's,
    for a kernel whose own types end earlier) is not this kernel's field."""
    r = Reader(memory, is64)

    def f(name: str) -> int | None:
        at = layout.get(name)
        return at if at is None or prcb_size is None or at < prcb_size else None

    step = r.maybe_uint(prcb, f("cpu_step"), 2)
    vendor = None
    if (at := f("vendor_string")) is not None:
        try:
            text = memory.read(prcb + at, 13).split(b"\0", 1)[0]
            # printable ASCII only: anything else is not a CPUID vendor string
            vendor = text.decode("ascii") if text and all(0x20 <= b < 0x7F for b in text) else None
        except MemoryNotPresent:
            vendor = None
    return CpuInfo(
        r.maybe_uint(prcb, f("cpu_type"), 1), r.maybe_uint(prcb, f("cpu_id"), 1),
        step >> 8 if step is not None else None, step & 0xFF if step is not None else None,
        r.maybe_uint(prcb, f("mhz"), 4), vendor, r.maybe_uint(prcb, f("cpu_vendor"), 1),
        r.maybe_uint(prcb, f("feature_bits"), _feature_width(f("feature_bits"), f("update_signature"), is64)),
        r.maybe_uint(prcb, f("update_signature"), 8))


def _feature_width(features: int | None, signature: int | None, is64: bool) -> int:
    """FeatureBits is a ULONG64 on x64 Windows 10 and a ULONG before (and on x86); where
    UpdateSignature follows it 4 bytes on, it is the ULONG."""
    if features is not None and signature is not None and signature - features == 4:
        return 4
    return 8 if is64 else 4


PCR_TIB_NAMES = ("ExceptionList", "StackBase", "StackLimit", "SubSystemTib", "Version", "UserPointer", "SelfTib")


@dataclass
class PcrFields:
    """What !pcr shows of a KPCR (None: the field is unknown or not in the dump)."""

    tib: list[int]  # the NT_TIB's seven fields (PCR_TIB_NAMES): the KPCR's head, as WinDbg reads it
    major: int | None = None
    minor: int | None = None
    self_pcr: int | None = None
    irr: int | None = None
    idr: int | None = None
    interrupt_mode: int | None = None
    idt: int | None = None
    gdt: int | None = None
    tss: int | None = None


def read_pcr_fields(memory: Memory, pcr: int, layout: StructLayout, is64: bool) -> PcrFields:
    """The KPCR's fields; MemoryNotPresent when its head is not in the dump."""
    r = Reader(memory, is64)
    ps = r.psize
    tib = [r.ptr(pcr + i * ps) for i in range(len(PCR_TIB_NAMES))]
    tib[4] = r.uint(pcr + 4 * ps, 4)  # NT_TIB.Version is a ULONG
    f = layout.get
    return PcrFields(
        tib, r.maybe_uint(pcr, f("pcr_major"), 2), r.maybe_uint(pcr, f("pcr_minor"), 2),
        r.maybe_ptr(pcr, f("pcr_self")), r.maybe_uint(pcr, f("pcr_irr"), 4), r.maybe_uint(pcr, f("pcr_idr"), 4),
        r.maybe_uint(pcr, f("pcr_interrupt_mode"), 4), r.maybe_ptr(pcr, f("pcr_idt")),
        r.maybe_ptr(pcr, f("pcr_gdt")), r.maybe_ptr(pcr, f("pcr_tss")))


@dataclass
class ProcessorList:
    processors: list[Processor]
    warnings: list[str]


def read_processors(memory: Memory, ki_processor_block: int, count: int, layout: StructLayout,
                    is64: bool) -> ProcessorList:
    """Processors 0..count-1 from KiProcessorBlock; an empty slot ends the list early."""
    out: list[Processor] = []
    warnings: list[str] = []
    for n in range(min(count, MAX_PROCESSORS)):
        try:
            prcb = processor_block_entry(memory, ki_processor_block, n, is64)
        except MemoryNotPresent:
            warnings.append(f"KiProcessorBlock[{n}] at {ki_processor_block + n * (8 if is64 else 4):#x} "
                            "is not in the dump")
            break
        if not prcb:
            warnings.append(f"KiProcessorBlock[{n}] is empty: the machine had {n} processors, not {count}")
            break
        out.append(read_processor(memory, n, prcb, layout, is64))
    return ProcessorList(out, warnings)


def crashing_processor(processors: list[Processor], sp: int,
                       stack_bounds: Callable[[int], tuple[int, int] | None],
                       context_sp: Callable[[Processor], int | None] | None = None) -> int | None:
    """The processor that bug-checked: the one whose current thread's kernel stack holds the
    dump's stack pointer (the header context may be an exception context deeper on the same
    stack), else the one whose saved context has that stack pointer. `stack_bounds(thread)` gives
    (limit, base) or None; `context_sp(processor)` the saved context's RSP or None."""
    hits = []
    for p in processors:
        if not p.current_thread:
            continue
        bounds = stack_bounds(p.current_thread)
        if bounds and bounds[0] <= sp < bounds[1]:
            hits.append(p.number)
    if len(hits) == 1:
        return hits[0]
    if context_sp is not None:
        same = [p.number for p in processors if context_sp(p) == sp]
        if len(same) == 1:
            return same[0]
    return hits[0] if hits else None


# -- the small dump's copies --------------------------------------------------------------------
@dataclass
class TriageCopies:
    """Where the small dump's KPRCB, ETHREAD and EPROCESS copies belong in memory."""

    number: int | None = None
    prcb: int | None = None
    thread: int | None = None
    process: int | None = None
    how: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def self_address(copy: bytes, is64: bool, alignment: tuple[int, int] | None = None) -> int | None:
    """The address a structure copy was taken from, told by its empty LIST_ENTRY heads (Flink =
    Blink = the head's own address): each votes for `head - offset`. None unless at least two
    heads agree and no other address gets as many votes. `alignment` = (mask, value) filters
    candidates (a KPRCB inside a page-aligned KPCR: (0xFFF, 0x180) on x64)."""
    size = 8 if is64 else 4
    fmt_mask = (1 << (8 * size)) - 1
    votes: Counter[int] = Counter()
    copy = copy[:MAX_SELF_SCAN]
    for off in range(0, len(copy) - 2 * size + 1, size):
        flink = int.from_bytes(copy[off : off + size], "little")
        if not flink or flink != int.from_bytes(copy[off + size : off + 2 * size], "little"):
            continue
        base = (flink - off) & fmt_mask
        if alignment is not None and base & alignment[0] != alignment[1]:
            continue
        votes[base] += 1
    if not votes:
        return None
    (best, n), *rest = votes.most_common(2)
    if n < 2 or (rest and rest[0][1] == n):
        return None
    return best


def locate_triage_copies(prcb_copy: bytes, thread_copy: bytes | None, memory: Memory, ki_processor_block: int | None,
                         layout: StructLayout, thread_layout: StructLayout, is64: bool) -> TriageCopies:
    """Derive the addresses of a small dump's copies (formats.md §6.2 step 5): the processor
    number from the KPRCB copy, the KPRCB from KiProcessorBlock[number] when the dump saved it
    (else from the copy's own empty list heads), the thread from the copy's CurrentThread, the
    process from the thread copy's ApcState.Process."""
    out = TriageCopies()
    size = 8 if is64 else 4

    def field_of(copy: bytes | None, offset: int | None, width: int) -> int | None:
        if copy is None or offset is None or offset + width > len(copy):
            return None
        return int.from_bytes(copy[offset : offset + width], "little")

    number_width = 4 if is64 else 1
    out.number = field_of(prcb_copy, layout.get("number"), number_width)
    if out.number is not None and ki_processor_block:
        try:
            prcb = processor_block_entry(memory, ki_processor_block, out.number, is64)
            if prcb:
                out.prcb, out.how["prcb"] = prcb, f"KiProcessorBlock[{out.number}]"
        except MemoryNotPresent:
            pass
    if out.prcb is None:
        in_pcr = pcr_prcb_offset(layout, is64)
        found = self_address(prcb_copy, is64, (0xFFF, in_pcr & 0xFFF) if in_pcr is not None else None)
        if found is not None:
            out.prcb, out.how["prcb"] = found, "the KPRCB copy's own list heads"
        else:
            out.notes.append("The small dump does not say where its KPRCB copy belongs "
                             "(KiProcessorBlock is not saved and the copy has no empty list heads)")
    out.thread = field_of(prcb_copy, layout.get("current_thread"), size) or None
    if out.thread is not None:
        out.how["thread"] = "KPRCB.CurrentThread"
        check = self_address(thread_copy, is64) if thread_copy else None
        if check is not None and check != out.thread:
            out.notes.append(f"The ETHREAD copy's list heads point at {check:#x}, not at "
                             f"KPRCB.CurrentThread {out.thread:#x}")
    out.process = field_of(thread_copy, thread_layout.get("apc_process"), size) or None
    if out.process is not None:
        out.how["process"] = "ETHREAD.Tcb.ApcState.Process"
    return out
