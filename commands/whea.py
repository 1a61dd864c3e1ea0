"""Hardware errors: !errrec ADDR (a WHEA_ERROR_RECORD, the UEFI Common Platform Error Record) and
!whea (what the dump holds of WHEA: for bug check 0x124, its error source and record).

Layout of !errrec (public WinDbg transcripts of 0x124 analyses): a `=` rule, `Common Platform
Error Record @ ADDR`, a `-` rule, `Name          : value` lines (the name padded to 14 columns),
then one block per section with its descriptor's fields, a blank line and the section's body.
An MCA bank prints `Error         : MNEMONIC (Proc P Bank B)` and its Status/Address/Misc.
kdshell adds, under the MCA bank, the MCi_STATUS flag bits by name and the error code's class in
plain words (the Intel SDM's / AMD APM's compound error codes), since that is what an analyst
looks up next. The decoding is kdshell.kernel.whea's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.analysis.facts import error_record
from kdshell.dispatch import Invocation, command, needs_memory
from kdshell.errors import CommandError, KdError, MemoryNotPresent
from kdshell.expr import Evaluator
from kdshell.kernel.layout import OffsetUnknown, StructLayout
from kdshell.kernel.whea import (ARM_ERROR_FLAGS, ARM_ERROR_TYPES, CPU_VENDORS, DESCRIPTOR_FLAGS, MCG_STATUS_BITS, MEMORY_ERROR_TYPES, PCIE_PORT_TYPES,
                                 PROC_ERROR_TYPES, PROC_FLAGS, PROC_ISAS, PROC_OPERATIONS, PROC_TYPES, RECORD_FLAGS,
                                 SEVERITIES, SOURCE_FIELDS, SOURCE_TYPES, ErrorRecord, Section, guid_name, mci_status_bits,
                                 error_sources, name_of, section_summary)

if TYPE_CHECKING:
    from kdshell.session import Session

RULE = "=" * 79
THIN = "-" * 79


def _line(name: str, value: str) -> str:
    return f"{name:<14}: {value}"


def _flag_text(value: int, names: tuple[str, ...], width: int = 8) -> str:
    set_names = [n for i, n in enumerate(names) if value >> i & 1]
    return f"0x{value:0{width}x}" + (" " + " ".join(set_names) if set_names else "")


def record_lines(rec: ErrorRecord) -> list[str]:
    out = [RULE, f"Common Platform Error Record @ {rec.address:016x}", THIN,
           _line("Record Id", f"{rec.record_id:016x}"),
           _line("Severity", f"{name_of(SEVERITIES, rec.severity)} ({rec.severity})"),
           _line("Length", str(rec.length)),
           _line("Creator", guid_name("creator", rec.creator)),
           _line("Notify Type", guid_name("notify", rec.notify))]
    if rec.timestamp is not None:
        sec, minute, hour, _, day, month, year, century = rec.timestamp
        out.append(_line("Timestamp", f"{month}/{day}/{century * 100 + year} {hour}:{minute:02d}:{sec:02d} (UTC)"))
    if rec.platform_id is not None:
        out.append(_line("Platform Id", "{" + rec.platform_id.upper() + "}"))
    out.append(_line("Flags", _flag_text(rec.flags, RECORD_FLAGS)))
    out.append("")
    for s in rec.sections:
        out += section_lines(s)
    return out


def section_lines(s: Section) -> list[str]:
    out = [RULE, _line(f"Section {s.index}", s.name), THIN,
           f"{'Descriptor':<14}@ {s.descriptor:016x}", f"{'Section':<14}@ {s.address:016x}",
           _line("Offset", str(s.offset)), _line("Length", str(s.length)),
           _line("Flags", _flag_text(s.flags, DESCRIPTOR_FLAGS)),
           _line("Severity", name_of(SEVERITIES, s.severity))]
    if s.fru_text:
        out.append(_line("FRU Text", s.fru_text))
    out.append("")
    if s.problem is not None:
        out += [f"(not decoded: {s.problem})", ""]
    elif s.generic is not None:
        g = s.generic
        out += [_line("Proc. Type", name_of(PROC_TYPES, g.proc_type)), _line("Instr. Set", name_of(PROC_ISAS, g.isa)),
                _line("Error Type", name_of(PROC_ERROR_TYPES, g.error_type)),
                _line("Operation", name_of(PROC_OPERATIONS, g.operation)),
                _line("Flags", _flag_text(g.flags, PROC_FLAGS, 2)), _line("Level", str(g.level)),
                _line("CPU Version", f"0x{g.cpu_version:016x}")]
        if g.brand:
            out.append(_line("Brand String", g.brand))
        out += [_line("Processor ID", f"0x{g.processor_id:016x}")]
        if g.valid >> 9 & 1:
            out.append(_line("Target Addr.", f"0x{g.target:016x}"))
        if g.valid >> 12 & 1:
            out.append(_line("Instr. Ptr.", f"0x{g.ip:016x}"))
        out.append("")
    elif s.arm is not None:
        a = s.arm
        if a.valid & 1:
            out.append(_line("MPIDR", f"0x{a.mpidr:016x}"))
        out.append(_line("MIDR", f"0x{a.midr:016x}"))
        if a.valid & 2:
            out.append(_line("Affinity Lvl", str(a.affinity_level)))
        if a.valid & 4:
            out.append(_line("Running State", f"0x{a.running_state:x}" + (f" (PSCI 0x{a.psci_state:x})"
                                                                           if not a.running_state & 1 else "")))
        for i, err in enumerate(a.errors):
            out.append(_line(f"Error Info {i}", name_of(ARM_ERROR_TYPES, err.type)
                             + (f" ({' '.join(n for b, n in enumerate(ARM_ERROR_FLAGS) if err.flags >> b & 1)})"
                                if err.valid & 2 and err.flags else "")))
            for bit, label, v in ((0, "Multiple", err.multiple), (2, "Error Info", err.info),
                                  (3, "Virt. Addr", err.virtual), (4, "Phys. Addr", err.physical)):
                if err.valid >> bit & 1:
                    out.append(f"  {label:<12}: " + (str(v) if bit == 0 else f"0x{v:016x}"))
        out.append("")
    elif s.xpf is not None:
        x = s.xpf
        if x.valid & 1:
            out.append(_line("Local APIC Id", f"0x{x.apic_id:016x}"))
        if x.valid & 2:
            rows = [x.cpuid[i:i + 16] for i in range(0, 48, 16)]
            for i, row in enumerate(rows):
                text = " ".join(f"{b:02x}" for b in row[:8]) + " - " + " ".join(f"{b:02x}" for b in row[8:])
                out.append(_line("CPU Id", text) if i == 0 else " " * 16 + text)
        out.append("")
        for i, info in enumerate(x.infos):
            out.append(f"{f'Proc. Info {i}':<14}@ {s.address + 0x40 + 64 * i:016x}")
            out.append(f"  Check Type  : {info.type_name}")
            if info.valid & 1:
                words = info.check_words()
                out.append(f"  Check Info  : 0x{info.check_info:016x}" + (f" ({', '.join(words)})" if words else ""))
            if info.valid >> 4 & 1:
                out.append(f"  Instr. Ptr. : 0x{info.ip:016x}")
            out.append("")
    elif s.mca is not None:
        m = s.mca
        e = m.error
        gbits = [n for bit, n in MCG_STATUS_BITS if m.global_status >> bit & 1]
        out += [_line("Error", f"{e.mnemonic} (Proc {m.processor} Bank {m.bank})"),
                f"  Status      : 0x{m.status:016x}",
                f"  Address     : 0x{m.address:016x}",
                f"  Misc.       : 0x{m.misc:016x}",
                f"  Status bits : {' '.join(mci_status_bits(m.status, m.vendor)) or '(none)'}",
                f"  MCA code    : 0x{e.code:04x} {e.kind}: {e.words}",
                f"  Model code  : 0x{m.model_code:04x} (model-specific)",
                f"  CPU vendor  : {name_of(CPU_VENDORS, m.vendor)}",
                f"  MCG_STATUS  : 0x{m.global_status:016x}" + (f" {' '.join(gbits)}" if gbits else ""), ""]
    elif s.memory is not None:
        mem = s.memory
        out += [_line("Error Status", f"0x{mem.status:016x}"), _line("Physical Addr", f"0x{mem.address:016x}"),
                _line("Phys Addr Mask", f"0x{mem.mask:016x}")]
        for bit, (name, value) in enumerate((("Node", mem.node), ("Card", mem.card), ("Module", mem.module),
                                             ("Bank", mem.bank), ("Device", mem.device), ("Row", mem.row),
                                             ("Column", mem.column), ("Bit Position", mem.bit)), start=3):
            if mem.valid >> bit & 1:
                out.append(_line(name, str(value)))
        out += [_line("Error Type", name_of(MEMORY_ERROR_TYPES, mem.error_type)), ""]
    elif s.pcie is not None:
        p = s.pcie
        out += [_line("Port Type", name_of(PCIE_PORT_TYPES, p.port_type)),
                _line("Version", f"{p.version[0]}.{p.version[1]}"),
                _line("Command/Status", f"0x{p.command:04x}/0x{p.status:04x}"), _line("Device Id", ""),
                f"  VenId:DevId : {p.vendor_id:04x}:{p.device_id:04x}", f"  Class code  : {p.class_code:06x}",
                f"  Function No : 0x{p.function:02x}", f"  Device No   : 0x{p.device:02x}",
                f"  Segment     : 0x{p.segment:04x}", f"  Primary Bus : 0x{p.primary_bus:02x}",
                f"  Second. Bus : 0x{p.secondary_bus:02x}", f"  Slot        : 0x{p.slot:04x}",
                _line("Dev. Serial #", f"{p.serial:016x}"), ""]
    return out


def _address(session: Session, inv: Invocation) -> int:
    if not inv.args:
        raise CommandError("!errrec: give the address of a WHEA_ERROR_RECORD (bug check 0x124's second parameter)")
    try:
        return Evaluator(session).evaluate(inv.args[0])
    except KdError as e:
        raise CommandError(f"!errrec: {inv.args[0]} is not an address ({e})") from None


def load_record(session: Session, address: int, what: str) -> ErrorRecord:
    try:
        record, where = error_record(session, address)
    except KdError as exc:
        raise KdError(f"{what}: {exc}") from None
    if where is not None:
        session.out.line(f"(the record's memory is not in the dump: decoded from {where})")
    return record


@command("!errrec", family="machine", needs=(needs_memory,), syntax="!errrec Address",
         summary="Decode a WHEA hardware error record (the UEFI Common Platform Error Record)",
         example="!errrec ffffc20a00001010",
         details="The record header, each section descriptor, and the processor generic, x86/x64 MCA "
                 "(MCi_STATUS/ADDR/MISC and the MCA error code's class), memory and PCI Express sections. "
                 "For bug check 0x124 the record's address is the second parameter.")
def errrec_(session: Session, inv: Invocation) -> None:
    session.out.lines(record_lines(load_record(session, _address(session, inv), "!errrec")))


@command("!whea", family="machine", needs=(needs_memory,), syntax="!whea",
         summary="Show the WHEA error source and error record a 0x124 bug check reported",
         example="!whea",
         details="From bug check 0x124's parameters: the error source type (P1) and the WHEA_ERROR_RECORD "
                 "(P2), summarised section by section (!errrec shows it whole).")
def whea_(session: Session, inv: Invocation) -> None:
    h = session.dump.header
    code = h.bugcheck_code & ~0x10000000
    sources, why = source_lines(session)
    if code != 0x124:
        if not sources:
            raise KdError(f"!whea: this dump's bug check is {h.bugcheck_code:#x}, not 0x124 (WHEA_UNCORRECTABLE_ERROR): "
                          f"no WHEA error record to show, and {why}")
        session.out.lines(sources)
        return
    params = [int(p) for p in h.bugcheck_parameters]
    rec = load_record(session, params[1], "!whea")
    lines = [f"Error Source Type : {name_of(SOURCE_TYPES, params[0])} ({params[0]})",
             f"Error Record      : {params[1]:016x} (!errrec {params[1]:x})",
             f"Severity          : {name_of(SEVERITIES, rec.severity)}",
             f"Notify Type       : {guid_name('notify', rec.notify)}",
             f"Sections          : {len(rec.sections)}"]
    for s in rec.sections:
        lines.append(f"  {s.index}: {s.name}" + (f" - {section_summary(s)}" if section_summary(s) else ""))
    session.out.lines(lines + ([""] + sources if sources else []))


def source_lines(session: Session) -> tuple[list[str], str]:
    """The kernel's error sources (nt!WheapErrorSourceTable, through the kernel PDB's types), or no
    lines and why not."""
    k = session.kernel
    table = k.symbol("WheapErrorSourceTable")
    if table is None:
        return [], "nt!WheapErrorSourceTable (the kernel's error sources) is not known (it needs the kernel's symbols)"
    try:
        count, sources, warning = error_sources(k.memory, table, StructLayout(k.offsets, SOURCE_FIELDS, k.build),
                                                k.is64)
    except OffsetUnknown:
        return [], "the kernel's types do not describe its error source table (_WHEAP_ERROR_SOURCE_TABLE)"
    except MemoryNotPresent:
        return [], f"nt!WheapErrorSourceTable ({table:#x}) is not in the dump"
    lines = [f"Error Source Table @ {table:016x}", f"{count} Error Sources", "",
             "Id  Type                                    Errors   Total"]
    for src in sources:
        lines.append(f"{src.source_id:<3} {name_of(SOURCE_TYPES, src.type) + f' ({src.type})':<39} "
                     f"{'?' if src.error_count is None else src.error_count:<8} "
                     f"{'?' if src.total_errors is None else src.total_errors}")
    if warning:
        lines.append(warning)
    return lines, ""

