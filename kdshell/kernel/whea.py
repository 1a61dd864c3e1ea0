"""Windows hardware error records (WHEA_ERROR_RECORD): the UEFI Common Platform Error Record.

    record = read_record(memory.read, address)   # ErrorRecord, or KdError (one line) if not a record
    record.sections[2].mca                       # the x64 MCA bank of a machine check, decoded

Layouts (UEFI specification appendix N; Microsoft's x86/x64 MCA section from the public cper.h; all
packed, little-endian):
- record header, 0x80 bytes: 'CPER' +0, Revision u16 +4, SignatureEnd 0xFFFFFFFF +6, SectionCount
  u16 +0xA, Severity u32 +0xC, ValidBits u32 +0x10, Length u32 +0x14, Timestamp +0x18 (seconds,
  minutes, hours, flags, day, month, year, century), PlatformId +0x20, PartitionId +0x30,
  CreatorId +0x40, NotificationType +0x50 (GUIDs), RecordId u64 +0x60, Flags u32 +0x68.
- section descriptor, 0x48 bytes each from +0x80: SectionOffset u32, SectionLength u32, Revision
  u16, ValidBits u8, Flags u32 +0xC, SectionType GUID +0x10, FRUId GUID +0x20, SectionSeverity
  u32 +0x30, FRUText char[20] +0x34.
- processor generic, 0xC0: ValidBits u64, ProcessorType, ISA, ErrorType, Operation, Flags, Level
  (u8 each, +8..+0xD), CPUVersion u64 +0x10, BrandString[128] +0x18, ProcessorId +0x98,
  TargetAddress +0xA0, RequesterId +0xA8, ResponderId +0xB0, InstructionIP +0xB8.
- x86/x64 MCA (WHEA_XPF_MCA_SECTION), 0x108+: VersionNumber, CpuVendor (1 Intel, 2 AMD),
  Timestamp u64 +8, ProcessorNumber u32 +0x10, MCG_STATUS u64 +0x14, InstructionPointer +0x1C,
  BankNumber u32 +0x24, MCi_STATUS +0x28, MCi_ADDR +0x30, MCi_MISC +0x38, ApicId +0x44.
- memory, 0x50: ValidBits, ErrorStatus, PhysicalAddress, PhysicalAddressMask (u64), Node, Card,
  Module, Bank, Device, Row, Column, BitPosition (u16 from +0x20), RequesterId, ResponderId,
  TargetId (u64 from +0x30), ErrorType u8 +0x48.
- ARM processor, 0x28 + 0x20 per error: ValidationBits u32, ErrInfoNum u16 +4, ContextInfoNum u16
  +6, SectionLength u32 +8, ErrorAffinityLevel +0xC, MPIDR_EL1 u64 +0x10, MIDR_EL1 +0x18,
  RunningState u32 +0x20, PSCIState +0x24; each error: Version, Length, ValidationBits u16 +2,
  Type +4 (cache, TLB, bus, micro-architectural), MultipleError u16 +5, Flags +7 (first, last,
  propagated, overflow), ErrorInformation u64 +8, VirtualFaultAddress +0x10, PhysicalFaultAddress +0x18.
- PCI Express, 0xD0: ValidBits, PortType u32 +8, Version +0xC, Command u16 +0x10, Status +0x12,
  DeviceId +0x18 (VendorId, DeviceId, ClassCode[3], Function, Device, Segment, PrimaryBus,
  SecondaryBus, Slot), DeviceSerialNumber +0x28, BridgeControlStatus +0x30, capability +0x34,
  AER +0x70.

MCi_STATUS (Intel SDM vol. 3 ch. 15, AMD APM vol. 2 ch. 9): bit 63 VAL, 62 OVER, 61 UC, 60 EN,
59 MISCV, 58 ADDRV, 57 PCC; Intel 56 S, 55 AR, 52:38 corrected error count; AMD 56 ErrCoreIdVal,
55 TCC, 44 Deferred, 43 Poison; 31:16 model-specific code, 15:0 the architectural MCA error code,
whose compound forms name the failing unit (mca_error).
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Callable

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.layout import Memory, Reader, StructLayout, walk_list

HEADER_SIZE = 0x80
DESCRIPTOR_SIZE = 0x48
MAX_RECORD = 0x10000  # larger Length fields are damage, not records
SIGNATURE = b"CPER"

SEVERITIES = {0: "Recoverable", 1: "Fatal", 2: "Corrected", 3: "Informational"}
# The 0x124 bug check's P1: the kind of error source that reported (WHEA_ERROR_SOURCE_TYPE)
SOURCE_TYPES = {0: "Machine Check Exception", 1: "Corrected Machine Check", 2: "Corrected Platform Error",
                3: "Non-Maskable Interrupt", 4: "PCI Express", 5: "Generic", 6: "INIT", 7: "Boot",
                8: "SCI Generic", 9: "IPF Machine Check Abort", 10: "IPF Corrected Machine Check",
                11: "IPF Corrected Platform Error", 12: "Generic v2", 13: "SCI Generic v2", 14: "BMC",
                15: "Persistent Memory", 16: "Device Driver", 17: "ARM Synchronous External Abort",
                18: "ARM SError Interrupt"}
DESCRIPTOR_FLAGS = ("Primary", "ContainmentWarning", "Reset", "ThresholdExceeded", "ResourceNotAvailable",
                    "LatentError", "Propagated", "Overflow")
RECORD_FLAGS = ("Recovered", "PreviousError", "Simulated")
PROC_TYPES = {0: "x86/x64", 1: "IA64", 2: "ARM"}
PROC_ISAS = {0: "x86", 1: "IA64", 2: "x64", 3: "ARM A32/T32", 4: "ARM A64"}
PROC_ERROR_TYPES = {0: "Unknown", 1: "Cache Error", 2: "TLB Error", 4: "Bus Error", 8: "Micro-Architectural Error"}
PROC_OPERATIONS = {0: "Generic", 1: "Data Read", 2: "Data Write", 3: "Instruction Execution"}
PROC_FLAGS = ("Restartable", "Precise IP", "Overflow", "Corrected")
CPU_VENDORS = {0: "Other", 1: "Intel", 2: "AMD"}
# The x86/x64 processor error information entry (UEFI N.2.4.2.1, 64 bytes): ErrorType GUID,
# ValidBits u64 +0x10 (CheckInfo, TargetId, RequesterId, ResponderId, InstructionPointer),
# CheckInfo +0x18, TargetId +0x20, RequesterId +0x28, ResponderId +0x30, InstructionPointer +0x38.
# CheckInfo (cache, TLB, bus): TransactionType bits 16-17, Operation 18-21, Level 22-24,
# ContextCorrupt 25, Uncorrected 26, PreciseIP 27, RestartableIP 28, Overflow 29, each valid when
# its bit in CheckInfo's low 16 bits is set (0 transaction type, 1 operation, 2 level, 3.. the flags).
TRANSACTIONS = {0: "Instruction", 1: "Data Access", 2: "Generic"}
OPERATIONS = {0: "Generic Error", 1: "Generic Read", 2: "Generic Write", 3: "Data Read", 4: "Data Write",
              5: "Instruction Fetch", 6: "Prefetch", 7: "Eviction", 8: "Snoop"}
CHECK_FLAGS = ((3, 25, "ContextCorrupt"), (4, 26, "Uncorrected"), (5, 27, "PreciseIP"), (6, 28, "RestartableIP"),
               (7, 29, "Overflow"))
PROC_INFO_SIZE = 0x40
ARM_ERROR_TYPES = {0: "Cache Error", 1: "TLB Error", 2: "Bus Error", 3: "Micro-Architectural Error"}
ARM_ERROR_FLAGS = ("First", "Last", "Propagated", "Overflow")
ARM_INFO_SIZE = 0x20
MAX_ARM_ERRORS = 255
MEMORY_ERROR_TYPES = {0: "Unknown", 1: "No error", 2: "Single-bit ECC", 3: "Multi-bit ECC",
                      4: "Single-symbol ChipKill ECC", 5: "Multi-symbol ChipKill ECC", 6: "Master abort",
                      7: "Target abort", 8: "Parity Error", 9: "Watchdog timeout", 10: "Invalid address",
                      11: "Mirror Broken", 12: "Memory Sparing", 13: "Scrub corrected error",
                      14: "Scrub uncorrected error", 15: "Physical Memory Map-out event"}
PCIE_PORT_TYPES = {0: "PCI Express End Point", 1: "Legacy PCI End Point", 4: "Root Port",
                   5: "Upstream Switch Port", 6: "Downstream Switch Port", 7: "PCI Express to PCI/PCI-X Bridge",
                   8: "PCI/PCI-X to PCI Express Bridge", 9: "Root Complex Integrated Endpoint",
                   10: "Root Complex Event Collector"}
MCG_STATUS_BITS = ((0, "RIPV"), (1, "EIPV"), (2, "MCIP"), (3, "LMCE_S"))
MCI_COMMON_BITS = ((63, "VAL"), (62, "OVER"), (61, "UC"), (60, "EN"), (59, "MISCV"), (58, "ADDRV"), (57, "PCC"))
MCI_VENDOR_BITS = {1: ((56, "S"), (55, "AR")), 2: ((56, "CoreIdVal"), (55, "TCC"), (44, "Deferred"), (43, "Poison"))}

# The compound MCA error codes' fields (Intel SDM "Compound Error Codes"; AMD uses the same ones)
_TT = ("I", "D", "G", "?")  # instruction, data, generic
_TT_WORDS = ("instruction", "data", "generic", "reserved")
_LL = ("L0", "L1", "L2", "LG")
_RRRR = ("ERR", "RD", "WR", "DRD", "DWR", "IRD", "PREFETCH", "EVICT", "SNOOP")
_RRRR_WORDS = ("generic", "read", "write", "data read", "data write", "instruction fetch", "prefetch",
               "eviction", "snoop")
_PP = ("SRC", "RES", "OBS", "GEN")
_PP_WORDS = ("the local processor originated the request", "the local processor responded",
             "the local processor observed the error as a third party", "generic")
_II = ("M", "RSV", "IO", "OTHER")
_II_WORDS = ("memory", "reserved", "I/O", "other")
_MMM = ("GEN", "RD", "WR", "AC", "MS")
_MMM_WORDS = ("generic", "read", "write", "address/command", "memory scrubbing")
SIMPLE_CODES = {0x0000: ("NO_ERR", "no error"), 0x0001: ("UNCLASSIFIED_ERR", "unclassified"),
                0x0002: ("UCODE_ROM_PARITY_ERR", "microcode ROM parity"), 0x0003: ("EXTERNAL_ERR", "external (BINIT#/MCERR# from another agent)"),
                0x0004: ("FRC_ERR", "functional redundancy check"), 0x0005: ("INTERNAL_PARITY_ERR", "internal parity"),
                0x0006: ("SMM_HANDLER_CODE_ACCESS_VIOLATION_ERR", "SMM handler code access violation"),
                0x0400: ("INTERNAL_TIMER_ERR", "internal timer (processor watchdog)")}


@dataclass(frozen=True)
class McaError:
    """The architectural MCA error code (MCi_STATUS bits 15:0): its mnemonic, its class in plain
    words (cache hierarchy, TLB, memory controller, bus/interconnect, internal) and the details
    of its fields (unit, level, request)."""

    code: int
    mnemonic: str
    kind: str
    words: str


def _rrrr(r: int) -> tuple[str, str]:
    return (_RRRR[r], _RRRR_WORDS[r]) if r < len(_RRRR) else (f"R{r:X}", "reserved request")


def mca_error(code: int) -> McaError:
    """Decode MCi_STATUS[15:0] (bit 12, the corrected-report filter bit, is not part of the class)."""
    code &= 0xFFFF
    if code in SIMPLE_CODES:
        name, words = SIMPLE_CODES[code]
        return McaError(code, name, "internal" if code not in (0, 1) else "unclassified", words)
    c = code & ~0x1000
    if c & 0xF800 == 0x0800:  # 0000 1PPT RRRR IILL
        pp, t, r, ii, ll = (c >> 9) & 3, (c >> 8) & 1, (c >> 4) & 0xF, (c >> 2) & 3, c & 3
        rn, rw = _rrrr(r)
        name = f"BUS{_LL[ll]}_{_PP[pp]}_{rn}_{_II[ii]}_{'TIMEOUT' if t else 'NOTIMEOUT'}_ERR"
        words = (f"level {_LL[ll]}, {rw} of {_II_WORDS[ii]}, {_PP_WORDS[pp]}"
                 + (", timed out" if t else ""))
        return McaError(code, name, "bus/interconnect", words)
    if c & 0xFF00 == 0x0100:  # 0000 0001 RRRR TTLL
        r, tt, ll = (c >> 4) & 0xF, (c >> 2) & 3, c & 3
        rn, rw = _rrrr(r)
        return McaError(code, f"{_TT[tt]}CACHE{_LL[ll]}_{rn}_ERR", "cache hierarchy",
                        f"{_TT_WORDS[tt]} cache, level {_LL[ll]}, {rw}")
    if c & 0xFF80 == 0x0080:  # 0000 0000 1MMM CCCC
        m, ch = (c >> 4) & 7, c & 0xF
        mn, mw = (_MMM[m], _MMM_WORDS[m]) if m < len(_MMM) else (f"M{m}", "reserved")
        where = "channel not specified" if ch == 0xF else f"channel {ch}"
        chan = "N" if ch == 0xF else str(ch)
        return McaError(code, f"{mn}_CHANNEL{chan}_ERR", "memory controller",
                        f"{mw}, {where}")
    if c & 0xFFF0 == 0x0010:  # 0000 0000 0001 TTLL
        tt, ll = (c >> 2) & 3, c & 3
        return McaError(code, f"{_TT[tt]}TLB{_LL[ll]}_ERR", "TLB",
                        f"{_TT_WORDS[tt]} TLB, level {_LL[ll]}")
    if c & 0xFFFC == 0x000C:  # 0000 0000 0000 11LL
        ll = c & 3
        return McaError(code, f"GCACHE{_LL[ll]}_ERR", "cache hierarchy",
                        f"generic cache, level {_LL[ll]}")
    if c & 0xFC00 == 0x0400:  # 0000 01xx xxxx xxxx
        return McaError(code, "INTERNAL_UNCLASSIFIED_ERR", "internal", "unclassified")
    return McaError(code, "UNKNOWN_ERR", "unknown", "not an architectural error code")


def mci_status_bits(status: int, vendor: int) -> list[str]:
    """The set flag bits of MCi_STATUS by name (common ones, then the vendor's)."""
    bits = MCI_COMMON_BITS + MCI_VENDOR_BITS.get(vendor, ())
    return [name for bit, name in bits if status >> bit & 1]


def _flags(value: int, names: tuple[str, ...]) -> list[str]:
    return [n for i, n in enumerate(names) if value >> i & 1]


def _guid(raw: bytes, offset: int) -> str:
    return str(uuid.UUID(bytes_le=raw[offset:offset + 16]))


@lru_cache(maxsize=1)
def _guid_names() -> dict[tuple[str, str], str]:
    text = resources.files("kdshell").joinpath("data/whea_guids.tsv").read_text(encoding="utf-8")
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            kind, guid, name = line.split("\t")
            out[(kind, guid)] = name
    return out


def guid_name(kind: str, guid: str) -> str:
    """The name of a creator, notify type or section type GUID, else the GUID in braces."""
    return _guid_names().get((kind, guid.lower()), "{" + guid.upper() + "}")


@dataclass(frozen=True)
class Mca:
    """The x86/x64 MCA section: one bank's registers as the machine check handler read them."""

    vendor: int
    processor: int
    bank: int
    global_status: int
    ip: int
    status: int
    address: int
    misc: int
    apic_id: int

    @property
    def error(self) -> McaError:
        return mca_error(self.status)

    @property
    def model_code(self) -> int:
        return (self.status >> 16) & 0xFFFF


@dataclass(frozen=True)
class ProcessorGeneric:
    valid: int
    proc_type: int
    isa: int
    error_type: int
    operation: int
    flags: int
    level: int
    cpu_version: int
    brand: str
    processor_id: int
    target: int
    requester: int
    responder: int
    ip: int


@dataclass(frozen=True)
class ProcessorInfo:
    """One x86/x64 processor error information entry."""

    check_type: str  # GUID
    valid: int
    check_info: int
    target: int
    requester: int
    responder: int
    ip: int

    @property
    def type_name(self) -> str:
        return guid_name("check", self.check_type)

    def check_words(self) -> list[str]:
        """CheckInfo's valid fields by name (cache, TLB and bus checks share these)."""
        c = self.check_info
        words = []
        if c & 1:
            words.append(name_of(TRANSACTIONS, (c >> 16) & 3))
        if c & 2:
            words.append(name_of(OPERATIONS, (c >> 18) & 0xF))
        if c & 4:
            words.append(f"Level {(c >> 22) & 7}")
        words += [name for vbit, bit, name in CHECK_FLAGS if c >> vbit & 1 and c >> bit & 1]
        return words


@dataclass(frozen=True)
class XpfProcessor:
    """The x86/x64 processor section's head: ValidBits u64 (bit 0 LocalAPICId, bit 1 CpuId, bits
    2-7 the processor-info count, 8-13 the context-info count), LocalAPICId u64 +8, CpuId[48] +0x10
    (CPUID leaf 1's EAX, EBX, ECX, EDX, then reserved), processor-info entries (64 bytes each) +0x40."""

    valid: int
    apic_id: int
    cpuid: bytes
    infos: tuple[ProcessorInfo, ...] = ()

    @property
    def info_count(self) -> int:
        return (self.valid >> 2) & 0x3F

    @property
    def context_count(self) -> int:
        return (self.valid >> 8) & 0x3F


@dataclass(frozen=True)
class ArmError:
    valid: int
    type: int
    multiple: int
    flags: int
    info: int
    virtual: int
    physical: int


@dataclass(frozen=True)
class ArmProcessor:
    valid: int
    affinity_level: int
    mpidr: int
    midr: int
    running_state: int
    psci_state: int
    errors: tuple[ArmError, ...]


@dataclass(frozen=True)
class MemorySection:
    valid: int
    status: int
    address: int
    mask: int
    node: int
    card: int
    module: int
    bank: int
    device: int
    row: int
    column: int
    bit: int
    error_type: int


@dataclass(frozen=True)
class PcieError:
    valid: int
    port_type: int
    version: tuple[int, int]
    command: int
    status: int
    vendor_id: int
    device_id: int
    class_code: int
    function: int
    device: int
    segment: int
    primary_bus: int
    secondary_bus: int
    slot: int
    serial: int
    bridge: int


@dataclass
class Section:
    index: int
    descriptor: int  # addresses (record address + offset)
    address: int
    offset: int
    length: int
    revision: int
    flags: int
    type_guid: str
    severity: int
    fru_id: str | None
    fru_text: str | None
    data: bytes
    generic: ProcessorGeneric | None = None
    mca: Mca | None = None
    xpf: XpfProcessor | None = None
    arm: ArmProcessor | None = None
    memory: MemorySection | None = None
    pcie: PcieError | None = None
    problem: str | None = None  # why the section's body could not be decoded

    @property
    def name(self) -> str:
        return guid_name("section", self.type_guid)


@dataclass
class ErrorRecord:
    address: int
    revision: int
    severity: int
    valid: int
    length: int
    timestamp: tuple[int, ...] | None
    platform_id: str | None
    partition_id: str | None
    creator: str
    notify: str
    record_id: int
    flags: int
    sections: list[Section] = field(default_factory=list)

    def first(self, attr: str) -> Section | None:
        """The first section with a decoded body of this kind ('mca', 'generic', 'memory', 'pcie')."""
        return next((s for s in self.sections if getattr(s, attr) is not None), None)


def name_of(table: dict[int, str], value: int) -> str:
    return table.get(value, f"Unknown ({value})")


def section_summary(s: Section) -> str:
    """One phrase for a section (the !whea and !analyze form)."""
    if s.mca is not None:
        return f"{s.mca.error.mnemonic} ({s.mca.error.kind}), processor {s.mca.processor} bank {s.mca.bank}"
    if s.generic is not None:
        return name_of(PROC_ERROR_TYPES, s.generic.error_type)
    if s.arm is not None and s.arm.errors:
        return ", ".join(name_of(ARM_ERROR_TYPES, e.type) for e in s.arm.errors) + f", MPIDR {s.arm.mpidr:#x}"
    if s.memory is not None:
        return f"{name_of(MEMORY_ERROR_TYPES, s.memory.error_type)} at physical address {s.memory.address:#x}"
    if s.pcie is not None:
        p = s.pcie
        return f"{name_of(PCIE_PORT_TYPES, p.port_type)} {p.vendor_id:04x}:{p.device_id:04x} bus {p.primary_bus:x}"
    return ""


def _check_signature(raw: bytes, address: int) -> None:
    if len(raw) < HEADER_SIZE or raw[:4] != SIGNATURE or struct.unpack_from("<I", raw, 6)[0] != 0xFFFFFFFF:
        raise KdError(f"{address:#x} is not a WHEA_ERROR_RECORD: no CPER signature ('CPER' ... FFFFFFFF) there")


def parse_record(raw: bytes, address: int) -> ErrorRecord:
    """Decode a record's bytes (at least its Length). Raises KdError for what is not a record."""
    _check_signature(raw, address)
    revision, _, count, severity, valid, length = struct.unpack_from("<HIHIII", raw, 4)
    stamp = struct.unpack_from("<8B", raw, 0x18)
    rec = ErrorRecord(address, revision, severity, valid, length,
                      stamp if valid & 2 else None,
                      _guid(raw, 0x20) if valid & 1 else None, _guid(raw, 0x30) if valid & 4 else None,
                      _guid(raw, 0x40), _guid(raw, 0x50), *struct.unpack_from("<QI", raw, 0x60))
    if HEADER_SIZE + count * DESCRIPTOR_SIZE > min(length, len(raw)):
        raise KdError(f"the record at {address:#x} claims {count} sections in {length:#x} bytes: damaged")
    for i in range(count):
        d = HEADER_SIZE + i * DESCRIPTOR_SIZE
        offset, size, srev, svalid, sflags = struct.unpack_from("<IIHBxI", raw, d)
        sev = struct.unpack_from("<I", raw, d + 0x30)[0]
        fru_text = raw[d + 0x34:d + 0x48].split(b"\0")[0].decode("latin-1") if svalid & 2 else None
        body = raw[offset:offset + size] if offset + size <= min(length, len(raw)) else b""
        s = Section(i, address + d, address + offset, offset, size, srev, sflags, _guid(raw, d + 0x10), sev,
                    _guid(raw, d + 0x20) if svalid & 1 else None, fru_text, body)
        if not body and size:
            s.problem = f"the section's {size:#x} bytes at offset {offset:#x} lie outside the record's {length:#x}"
        else:
            _decode_body(s)
        rec.sections.append(s)
    return rec


def _decode_body(s: Section) -> None:
    name, b = s.name, s.data
    need = {"Processor Generic": 0xC0, "x86/x64 MCA": 0x48, "Memory": 0x49, "PCI Express": 0x34,
            "x86/x64 Processor Specific": 0x40, "ARM Processor Specific": 0x28}.get(name)
    if need is None:
        return
    if len(b) < need:
        s.problem = f"{len(b):#x} bytes, shorter than the {need:#x} of its layout"
        return
    if name == "Processor Generic":
        valid, ptype, isa, etype, op, flags, level, version = struct.unpack_from("<Q6BxxQ", b, 0)
        brand = b[0x18:0x98].split(b"\0")[0].decode("latin-1").strip()
        pid, target, requester, responder, ip = struct.unpack_from("<5Q", b, 0x98)
        s.generic = ProcessorGeneric(valid, ptype, isa, etype, op, flags, level, version, brand, pid, target,
                                     requester, responder, ip)
    elif name == "ARM Processor Specific":
        valid, count, _, _, level = struct.unpack_from("<IHHIB", b, 0)
        mpidr, midr, running, psci = struct.unpack_from("<QQII", b, 0x10)
        errors = []
        for i in range(min(count, MAX_ARM_ERRORS, (len(b) - 0x28) // ARM_INFO_SIZE)):
            e = 0x28 + i * ARM_INFO_SIZE
            evalid, etype, multiple, flags, info, va, pa = struct.unpack_from("<2xHBHBQQQ", b, e)
            errors.append(ArmError(evalid, etype, multiple, flags, info, va, pa))
        s.arm = ArmProcessor(valid, level, mpidr, midr, running, psci, tuple(errors))
    elif name == "x86/x64 Processor Specific":
        valid, apic = struct.unpack_from("<QQ", b, 0)
        infos = []
        for i in range(min((valid >> 2) & 0x3F, (len(b) - 0x40) // PROC_INFO_SIZE)):
            e = 0x40 + i * PROC_INFO_SIZE
            infos.append(ProcessorInfo(_guid(b, e), *struct.unpack_from("<6Q", b, e + 0x10)))
        s.xpf = XpfProcessor(valid, apic, b[0x10:0x40], tuple(infos))
    elif name == "x86/x64 MCA":
        _, vendor, _, proc, gstatus, ip, bank, status, addr, misc, _, apic = struct.unpack_from("<IIQIQQIQQQII", b, 0)
        s.mca = Mca(vendor, proc, bank, gstatus, ip, status, addr, misc, apic)
    elif name == "Memory":
        valid, status, address, mask = struct.unpack_from("<4Q", b, 0)
        node, card, module, bank, device, row, column, bit = struct.unpack_from("<8H", b, 0x20)
        s.memory = MemorySection(valid, status, address, mask, node, card, module, bank, device, row, column, bit,
                                 b[0x48])
    else:
        valid, port, vminor, vmajor, cmd, st = struct.unpack_from("<QIBBxxHH", b, 0)
        ven, dev = struct.unpack_from("<HH", b, 0x18)
        cls = int.from_bytes(b[0x1C:0x1F], "little")
        func, devno, seg, pbus, sbus, slot = struct.unpack_from("<BBHBBH", b, 0x1F)
        serial, bridge = struct.unpack_from("<QI", b, 0x28)
        s.pcie = PcieError(valid, port, (vmajor, vminor), cmd, st, ven, dev, cls, func, devno, seg, pbus, sbus,
                           slot >> 3, serial, bridge)


class RecordNotInDump(KdError):
    """The record's bytes are not in the dump's memory (a copy may be in its secondary data)."""


def find_copy(data: bytes, address: int) -> ErrorRecord | None:
    """The first whole record in `data` (a secondary-data blob), decoded as if it lay at `address`."""
    at = data.find(SIGNATURE)
    while at >= 0:
        if at + HEADER_SIZE <= len(data) and struct.unpack_from("<I", data, at + 6)[0] == 0xFFFFFFFF:
            length = struct.unpack_from("<I", data, at + 0x14)[0]
            if HEADER_SIZE <= length <= min(MAX_RECORD, len(data) - at):
                try:
                    return parse_record(data[at:at + length], address)
                except KdError:
                    pass
        at = data.find(SIGNATURE, at + 1)
    return None


def read_record(read: Callable[[int, int], bytes], address: int) -> ErrorRecord:
    """The record at `address` in the dump's memory (its header, then its Length)."""
    try:
        head = read(address, HEADER_SIZE)
    except MemoryNotPresent as exc:
        raise RecordNotInDump(f"{address:#x}: the error record's memory is not in the dump ({exc.why})") from None
    _check_signature(head, address)  # before Length is trusted
    length = struct.unpack_from("<I", head, 0x14)[0]
    if not HEADER_SIZE <= length <= MAX_RECORD:
        raise KdError(f"the record at {address:#x} has a Length of {length:#x}: damaged")
    try:
        raw = read(address, length)
    except MemoryNotPresent as exc:
        raise RecordNotInDump(f"{address:#x}: the error record's {length:#x} bytes are not all in the dump "
                              f"({exc.why})") from None
    return parse_record(raw, address)


# -- the kernel's error sources (nt!WheapErrorSourceTable) ----------------------------------------
# Private types whose layout moves between builds: read only through the kernel PDB's types.
SOURCE_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "count": (("_WHEAP_ERROR_SOURCE_TABLE", "Count"),),
    "items": (("_WHEAP_ERROR_SOURCE_TABLE", "Items"),),
    "link": (("_WHEAP_ERROR_SOURCE", "ListEntry"),),
    "source_id": (("_WHEAP_ERROR_SOURCE", "PlatformErrorSourceId"),),
    "type": (("_WHEAP_ERROR_SOURCE", "Type"),),
    "error_count": (("_WHEAP_ERROR_SOURCE", "ErrorCount"),),
    "total_errors": (("_WHEAP_ERROR_SOURCE", "TotalErrors"),),
}


@dataclass(frozen=True)
class ErrorSource:
    address: int
    source_id: int
    type: int
    error_count: int | None
    total_errors: int | None


def error_sources(memory: Memory, table: int, layout: StructLayout, is64: bool) -> tuple[int, list[ErrorSource], str | None]:
    """(Count, the sources on the Items list, a warning) of the table at nt!WheapErrorSourceTable.
    OffsetUnknown when the kernel's types do not describe it; MemoryNotPresent when not in the dump."""
    r = Reader(memory, is64)
    count = r.uint(table + layout.need("count"), 4)
    walk = walk_list(r, table + layout.need("items"), "WHEA error source")
    link, sid, kind = layout.need("link"), layout.need("source_id"), layout.need("type")
    out = []
    for entry in walk.entries:
        base = entry - link
        try:
            out.append(ErrorSource(base, r.uint(base + sid, 4), r.uint(base + kind, 4),
                                   r.maybe_uint(base, layout.get("error_count"), 4),
                                   r.maybe_uint(base, layout.get("total_errors"), 4)))
        except MemoryNotPresent:
            break
    return count, out, walk.warning
