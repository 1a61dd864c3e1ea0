"""Machine facts: !cpuinfo and !sysinfo (cpuinfo, cpuspeed, cpumicrocode, machineid, smbios).

What a dump holds of the processor is what the kernel wrote into each KPRCB at boot: CpuType
(family), CpuStep (model, stepping), MHz, VendorString, FeatureBits and UpdateSignature (the
microcode revision, MSR 0x8B as read at boot) -- kdshell.kernel.prcb.read_cpu_info. A small dump
keeps only the crashing processor's KPRCB. WinDbg's !sysinfo reads the registry's
HARDWARE\\DESCRIPTION\\System\\CentralProcessor values and the SMBIOS table; kdshell prints the
values it can derive from the KPRCB in the same form and says in one line what is not there.

Layouts (public WinDbg transcripts):
- !cpuinfo: `CP  F/M/S Manufacturer  MHz PRCB Signature    MSR 8B Signature Features`, one row
  per processor, F/M/S in decimal, signatures as 16 hex digits. The MSR 8B column is read from
  the live processor; a dump has no such value, so the column stays blank.
- !sysinfo cpuinfo: `[CPU Information]` then `Name = REG_TYPE value` lines.
- !sysinfo cpuspeed: `CPUID:`, `MaxSpeed:`, `CurrentSpeed:` lines.
- !sysinfo cpumicrocode: `Cached Microcode Version: HIGH:LOW` and the family/model/stepping in hex.
- !sysinfo gbl: the firmware's ACPI tables, one header per line (kdshell's columns: WinDbg reads
  them from the live machine's firmware), from the ACPI table headers a Windows 10 small dump
  keeps in its secondary data (kdshell.dumpfile.acpi).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.dispatch import Invocation, command, needs_memory, not_on_arm64
from kdshell.dumpfile.acpi import ACPI_BLOB_TAG, MAX_BLOB, acpi_headers
from kdshell.dumpfile.regvalues import CPU_REGISTRY_TAG, RegValue, parse_values
from kdshell.errors import CommandError, KdError
from kdshell.kernel.smbios import locate_table, machine_id, parse_table, smbios_lines

if TYPE_CHECKING:
    from kdshell.kernel.prcb import CpuInfo, Processor
    from kdshell.session import Session

CPUINFO_HEADER = "CP  F/M/S Manufacturer  MHz PRCB Signature    MSR 8B Signature Features"
SYSINFO_TOPICS = ("cpuinfo", "cpuspeed", "cpumicrocode", "gbl", "machineid", "smbios")
GBL_HEADER = "Signature Length   Rev Checksum OEM ID OEM Table ID OEM Rev  Creator Creator Rev"
CPUID_WHY = "it shows the x86 CPUID family, model, stepping, vendor and microcode"
# The KPRCB fields each line needs, named as the kernel's types name them (for the "absent" line)
FIELD_NAMES = {"family": "CpuType", "model": "CpuStep", "mhz": "MHz", "vendor": "VendorString",
               "features": "FeatureBits", "update_signature": "UpdateSignature"}


def _cpus(session: Session, name: str) -> list[tuple[Processor, CpuInfo]]:
    k = session.kernel
    out = []
    for p in k.processors():
        info = k.cpu_info(p.prcb)
        if info.known:
            out.append((p, info))
    if not out:
        raise KdError(f"{name}: the dump holds no KPRCB CPU fields (no KPRCB in the dump, or CpuType, MHz and "
                      "VendorString are unknown for this kernel without its symbols)")
    return out


def _absent(session: Session, info: CpuInfo) -> str | None:
    missing = [name for attr, name in FIELD_NAMES.items() if getattr(info, attr) is None]
    if not missing:
        return None
    why = "its types lack them" if session.kernel.offsets.types is not None else "no symbols, KDBG or table entry"
    return f"KPRCB.{', KPRCB.'.join(missing)}: not known for this kernel ({why}) or not in the dump"


def _n(value: int | None) -> str:
    return "?" if value is None else str(value)


def cpuinfo_row(number: int, info: CpuInfo) -> str:
    fms = f"{_n(info.family)},{_n(info.model)},{_n(info.stepping)}"
    sig = "" if info.update_signature is None else f"{info.update_signature:016x}"
    feat = "" if info.features is None else f"{info.features:08x}"
    mhz = "" if info.mhz is None else f"{info.mhz:4d}"
    return f"{number:2d}  {fms} {info.vendor or '':<12} {mhz:>4} {sig:<16} {'':16}  {feat}".rstrip()


@command("!cpuinfo", family="machine", needs=(needs_memory, not_on_arm64("!cpuinfo", CPUID_WHY)),
         syntax="!cpuinfo [Processor]",
         summary="Show each processor's family/model/stepping, vendor, MHz, microcode signature and features",
         example="!cpuinfo",
         details="From the KPRCB (a small dump keeps only the crashing processor's). The MSR 8B column is "
                 "read from a live processor and stays blank on a dump.")
def cpuinfo_(session: Session, inv: Invocation) -> None:
    words = inv.text.split()
    cpus = _cpus(session, "!cpuinfo")
    if words:
        try:
            wanted = int(words[0], 16)
        except ValueError:
            raise CommandError(f"!cpuinfo: {words[0]} is not a processor number") from None
        cpus = [c for c in cpus if c[0].number == wanted]
        if not cpus:
            raise KdError(f"!cpuinfo: processor {wanted} is not in the dump")
    lines = [CPUINFO_HEADER] + [cpuinfo_row(p.number, info) for p, info in cpus]
    if (note := _absent(session, cpus[0][1])) is not None:
        lines.append(note)
    session.out.lines(lines)


def identifier(info: CpuInfo, is64: bool) -> str:
    """The registry's Identifier as Windows writes it: `Intel64 Family 6 Model 158 Stepping 10`."""
    arch = ("Intel64" if info.vendor == "GenuineIntel" else "AMD64") if is64 else "x86"
    return f"{arch} Family {_n(info.family)} Model {_n(info.model)} Stepping {_n(info.stepping)}"


def registry_values(session: Session) -> list[RegValue]:
    """CentralProcessor\\0's values from the dump's secondary data (empty when it has none)."""
    blob = next((b for b in session.dump.blobs() if b.tag_text == CPU_REGISTRY_TAG), None)
    return parse_values(session.dump.read_file(blob.data_offset, blob.data_size)) if blob is not None else []


def _registry_lines(values: list[RegValue], cpu: tuple[Processor, CpuInfo] | None) -> list[str]:
    lines = ["[CPU Information]"] + [f"{v.name} = {v.type_name} {v.text}" for v in values]
    where = "{" + CPU_REGISTRY_TAG.upper() + "}"
    note = f"(the registry's CentralProcessor\\0 values from the dump's secondary data {where}"
    if cpu is not None and cpu[1].update_signature is not None and "MSR8B" not in {v.name for v in values}:
        lines.append(f"MSR8B = REG_QWORD {cpu[1].update_signature:x}")
        note += f"; MSR8B from processor {cpu[0].number}'s KPRCB"
    return lines + [note + ")"]


def _cpu_information(session: Session, p: Processor, info: CpuInfo) -> list[str]:
    values = registry_values(session)
    if values:
        return _registry_lines(values, (p, info))
    lines = ["[CPU Information]"]
    if info.mhz is not None:
        lines.append(f"~MHz = REG_DWORD {info.mhz}")
    if None not in (info.family, info.model, info.stepping):
        lines.append(f"Identifier = REG_SZ {identifier(info, session.is64)}")
    if info.update_signature is not None:
        raw = info.update_signature.to_bytes(8, "little")
        lines.append(f"Update Signature = REG_BINARY {','.join(f'{b:x}' for b in raw)}")
    if info.vendor is not None:
        lines.append(f"VendorIdentifier = REG_SZ {info.vendor}")
    if info.update_signature is not None:
        lines.append(f"MSR8B = REG_QWORD {info.update_signature:x}")
    lines.append(f"(from processor {p.number}'s KPRCB; ProcessorNameString and the other CentralProcessor "
                 "registry values are in the registry's HARDWARE hive, which kdshell does not read)")
    return lines


def _cpu_speed(p: Processor, info: CpuInfo, name: str | None) -> list[str]:
    if name is None:
        return [f"CurrentSpeed: {_n(info.mhz)}",
                f"(KPRCB.MHz of processor {p.number}; the CPUID brand string and MaxSpeed come from the SMBIOS "
                "processor structure (type 4), which this dump does not hold)"]
    return [f'CPUID:        "{name}"', f"CurrentSpeed: {_n(info.mhz)}",
            f"(CPUID: the registry's ProcessorNameString in the dump's secondary data; CurrentSpeed: KPRCB.MHz of "
            f"processor {p.number}; MaxSpeed comes from the SMBIOS processor structure (type 4), which this dump "
            "does not hold)"]


def _cpu_microcode(p: Processor, info: CpuInfo) -> list[str]:
    lines = []
    if info.update_signature is None:
        lines.append(f"KPRCB.UpdateSignature of processor {p.number}: not known for this kernel or not in the dump")
    else:
        sig = info.update_signature
        lines.append(f"Cached Microcode Version: {sig >> 32:08x}:{sig & 0xFFFFFFFF:08x}")
    for name, value in (("Family", info.family), ("Model", info.model), ("Stepping", info.stepping)):
        lines.append(f"Processor {name}: {'??' if value is None else f'{value:02x}'}")
    lines.append("(the initial microcode version is a registry value; a dump has the one cached in the KPRCB)")
    return lines


def smbios_table(session: Session, topic: str) -> bytes:
    k = session.kernel
    physical = session.spaces.physical
    try:
        return locate_table(k.symbol, k.memory.read, physical.read if physical is not None else None)
    except KdError as exc:
        raise KdError(f"!sysinfo {topic}: {exc}") from None


def firmware_lines(topic: str, raw: bytes) -> list[str]:
    """machineid's `Name = value` lines or smbios' structures, from the table's bytes."""
    structures = parse_table(raw)
    if not structures:
        raise KdError(f"!sysinfo {topic}: the {len(raw):#x} bytes at the SMBIOS table's address hold no structure")
    if topic == "machineid":
        head = f"Machine ID Information [From Smbios, Size={len(raw)}]"
        return [head] + [f"{n} = {v}" for n, v in machine_id(structures)]
    return smbios_lines(structures, len(raw))


def acpi_lines(session: Session) -> list[str]:
    blob = next((b for b in session.dump.blobs() if b.tag_text == ACPI_BLOB_TAG), None)
    where = "{" + ACPI_BLOB_TAG.upper() + "}"
    if blob is None:
        raise KdError(f"!sysinfo gbl: the dump holds no ACPI table headers (no secondary data tagged {where}; "
                      "Windows 10 small dumps carry them)")
    headers = acpi_headers(session.dump.read_file(blob.data_offset, min(blob.data_size, MAX_BLOB)))
    if not headers:
        raise KdError(f"!sysinfo gbl: the {blob.data_size:#x} bytes tagged {where} hold no ACPI table header")
    lines = [f"[ACPI Tables] from the dump's secondary data {where}: {len(headers)} tables", GBL_HEADER]
    for h in headers:
        lines.append(f"{h.signature:<9} {h.length:08x} {h.revision:02x}  {h.checksum:02x}       {h.oem_id:<6} "
                     f"{h.oem_table_id:<12} {h.oem_revision:08x} {h.creator_id:<7} {h.creator_revision:08x}")
    return lines


@command("!sysinfo", family="machine", needs=(needs_memory,),
         syntax="!sysinfo {cpuinfo | cpuspeed | cpumicrocode | gbl | machineid | smbios}",
         summary="Show the machine's processor, firmware and board facts the dump holds",
         example="!sysinfo cpuinfo",
         details="cpuinfo, cpuspeed and cpumicrocode read the crashing processor's KPRCB; gbl lists the ACPI "
                 "tables whose headers a small dump keeps in its secondary data; machineid and "
                 "smbios decode the SMBIOS table (types 0, 1, 2, 4, 17) where nt!WmipSMBiosTablePhysicalAddress "
                 "points, when the kernel's symbols and the table's pages are in the dump.")
def sysinfo_(session: Session, inv: Invocation) -> None:
    words = inv.text.split()
    topic = words[0].lower() if words else ""
    if topic not in SYSINFO_TOPICS:
        raise CommandError(f"!sysinfo: give one of {', '.join(SYSINFO_TOPICS)}")
    if topic in ("machineid", "smbios"):
        session.out.lines(firmware_lines(topic, smbios_table(session, topic)))
        return
    if topic == "gbl":
        session.out.lines(acpi_lines(session))
        return
    if session.kernel.arm64:
        raise KdError(f"!sysinfo {topic} does not apply to ARM64 dumps ({CPUID_WHY}); gbl, machineid and "
                      "smbios do")
    try:
        cpus = _cpus(session, f"!sysinfo {topic}")
    except KdError:
        if topic != "cpuinfo" or not registry_values(session):
            raise
        session.out.lines(_registry_lines(registry_values(session), None))  # no KPRCB: the registry alone
        return
    number = session.kernel.crashing_processor
    p, info = next((c for c in cpus if c[0].number == number), cpus[0])
    if topic == "cpuinfo":
        session.out.lines(_cpu_information(session, p, info))
    elif topic == "cpuspeed":
        name = next((v.text for v in registry_values(session) if v.name == "ProcessorNameString"), None)
        session.out.lines(_cpu_speed(p, info, name))
    else:
        session.out.lines(_cpu_microcode(p, info))
