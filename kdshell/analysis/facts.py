"""Facts !analyze reports besides the stack: the exception record, the current process and IRQL
(from the kernel layer, kdshell.kernel.state), the CPU vendor, a critical process's name, the
driver an IRP is stuck in, the OS version strings, and which black boxes the secondary data holds.

Each function takes the session and raises KdError (one line, the user's words) when the dump
cannot answer; analyze.py turns that into a note and goes on.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from kdshell.bugcheck_roles import base_code
from kdshell.dumpfile.blackbox import BLACK_BOXES, BlackBox
from kdshell.dumpfile.dump import DumpBlob
from kdshell.dumpfile.header import (EXCEPTION_RECORD32, EXCEPTION_RECORD64, MACHINE_AMD64, MACHINE_ARM64,
                                     decode_exception)
from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.prcb import CpuInfo
from kdshell.kernel.smbios import locate_table, machine_id, parse_table
from kdshell.kernel.whea import ErrorRecord, RecordNotInDump, find_copy, read_record
from kdshell.target import build_lab, nt_version, os_name
from kdshell.view import SessionView

if TYPE_CHECKING:
    from kdshell.memory.virtual import VirtualMemory
    from kdshell.symbols.pe import VersionInfo

# The I/O manager's structures for 0x9F P1=3 (the IRP a device stack holds). These offsets have
# not moved since Windows Vista (x64 / x86); the kernel PDB's types are used when loaded.
#   IRP.Tail.Overlay.CurrentStackLocation, IO_STACK_LOCATION.DeviceObject,
#   DEVICE_OBJECT.DriverObject, DRIVER_OBJECT.DriverStart / DriverName
IRP_FIELDS = {
    True: {("_IRP", "Tail.Overlay.CurrentStackLocation"): 0xB8, ("_IO_STACK_LOCATION", "DeviceObject"): 0x28,
           ("_DEVICE_OBJECT", "DriverObject"): 0x8, ("_DRIVER_OBJECT", "DriverStart"): 0x18,
           ("_DRIVER_OBJECT", "DriverName"): 0x38,
           # Parameters.Power: SystemContext is POINTER_ALIGNMENT in wdm.h, so Type and State sit 8 apart
           ("_IO_STACK_LOCATION", "Parameters.Power.Type"): 0x10, ("_IO_STACK_LOCATION", "Parameters.Power.State"): 0x18},
    False: {("_IRP", "Tail.Overlay.CurrentStackLocation"): 0x60, ("_IO_STACK_LOCATION", "DeviceObject"): 0x14,
            ("_DEVICE_OBJECT", "DriverObject"): 0x8, ("_DRIVER_OBJECT", "DriverStart"): 0xC,
            ("_DRIVER_OBJECT", "DriverName"): 0x1C,
            ("_IO_STACK_LOCATION", "Parameters.Power.Type"): 0x8, ("_IO_STACK_LOCATION", "Parameters.Power.State"): 0xC},
}


def _memory(session: SessionView) -> VirtualMemory:
    memory = session.memory
    if memory is None:
        raise KdError("the dump's memory cannot be read")
    return memory


def exception_record(session: SessionView, address: int) -> dict[str, Any]:
    """The EXCEPTION_RECORD at `address` (decode_exception's dict); at -1, the dump's own record
    (the header's, or a small dump's copy), as WinDbg's `.exr -1` shows the last exception."""
    last = (1 << (64 if session.is64 else 32)) - 1
    if address & last == last:
        return dict(session.dump.exception)
    layout = EXCEPTION_RECORD64 if session.is64 else EXCEPTION_RECORD32
    try:
        raw = _memory(session).read(address, layout.sizeof())
    except MemoryNotPresent as exc:
        raise KdError(f"it is not in the dump ({exc.why})") from None
    return decode_exception(layout.parse(raw))


def current_process_name(session: SessionView) -> str | None:
    """PROCESS_NAME: the image name of the crashing thread's process."""
    kernel = session.kernel
    process = kernel.current_process()
    return kernel.process_name(process) if process else None


def current_irql(session: SessionView) -> int | None:
    """CURRENT_IRQL: the crashing processor's IRQL (KPRCB/KPCR, as the kernel layer reads it)."""
    kernel = session.kernel
    return kernel.processor(session.context.default_processor).irql


def black_boxes(session: SessionView) -> list[tuple[BlackBox, DumpBlob]]:
    """The BLACKBOX* lines: each black box whose tag is in the dump's secondary data, in WinDbg's
    order (BSD, NTFS, PnP, winlogon). An empty blob counts: the callback ran."""
    by_tag = {blob.tag_text: blob for blob in session.dump.blobs()}
    return [(box, by_tag[box.tag]) for box in BLACK_BOXES if box.tag in by_tag]


def process_image_name(session: SessionView, address: int) -> str | None:
    """EPROCESS.ImageFileName of the process at `address`."""
    return session.kernel.process_name(address)


def _cpu_info(session: SessionView, number: int) -> CpuInfo:
    kernel = session.kernel
    return kernel.cpu_info(kernel.processor(number).prcb)


def cpu_vendor(session: SessionView) -> str | None:
    """KPRCB.VendorString of the crashing processor: GenuineIntel, AuthenticAMD, ..."""
    return _cpu_info(session, session.context.default_processor).vendor


def cpu_facts(session: SessionView) -> dict[str, str]:
    """!analyze -v's CPU_* lines from the crashing processor's KPRCB, each only when the dump
    has it; numbers in hex as WinDbg prints them (CPU_MHZ: c18 for 3096 MHz). CPU_MICROCODE is
    `F,M,S,R (F,M,S,R)  SIG: HIGH'LOW (cache)`; the initial signature is a registry value a dump
    does not hold, so only the KPRCB's cached one is given."""
    if session.dump.header.machine == MACHINE_ARM64:
        return {}
    info = _cpu_info(session, session.kernel.crashing_processor)
    out = {"CPU_COUNT": f"{session.kernel.processor_count():x}"}
    if info.mhz is not None:
        out["CPU_MHZ"] = f"{info.mhz:x}"
    if info.vendor is not None:
        out["CPU_VENDOR"] = f" {info.vendor}"  # WinDbg prints two blanks after this one
    for name, value in (("CPU_FAMILY", info.family), ("CPU_MODEL", info.model), ("CPU_STEPPING", info.stepping)):
        if value is not None:
            out[name] = f"{value:x}"
    if info.update_signature is not None and None not in (info.family, info.model, info.stepping):
        sig = info.update_signature
        out["CPU_MICROCODE"] = (f"{info.family:x},{info.model:x},{info.stepping:x},0 (F,M,S,R)  "
                                f"SIG: {sig >> 32:X}'{sig & 0xFFFFFFFF:08X} (cache)")
    return out


# !analyze -v's firmware lines and the SMBIOS machine-ID names they come from (types 0, 1, 2)
FIRMWARE_FIELDS = (("SYSTEM_MANUFACTURER", "SystemManufacturer"), ("SYSTEM_PRODUCT_NAME", "SystemProductName"),
                   ("SYSTEM_SKU", "SystemSKU"), ("SYSTEM_VERSION", "SystemVersion"), ("BIOS_VENDOR", "BiosVendor"),
                   ("BIOS_VERSION", "BiosVersion"), ("BIOS_DATE", "BiosReleaseDate"),
                   ("BASEBOARD_MANUFACTURER", "BaseBoardManufacturer"), ("BASEBOARD_PRODUCT", "BaseBoardProduct"),
                   ("BASEBOARD_VERSION", "BaseBoardVersion"))


def firmware_facts(session: SessionView) -> dict[str, str]:
    """SYSTEM_* / BIOS_* / BASEBOARD_* from the SMBIOS table, each only when the table has it
    (KdError when the dump holds no table: no kernel symbols to find it, or its pages not saved)."""
    k = session.kernel
    physical = session.spaces.physical
    raw = locate_table(k.symbol, k.memory.read, physical.read if physical is not None else None)
    found = dict(machine_id(parse_table(raw)))
    return {field: found[name] for field, name in FIRMWARE_FIELDS if found.get(name)}


def error_record(session: SessionView, address: int) -> tuple[ErrorRecord, str | None]:
    """The WHEA_ERROR_RECORD at `address`, and where it was found when not in memory: for bug check
    0x124's own record (P2), a copy in the dump's secondary data (a blob holding a CPER record)."""
    memory = _memory(session)
    try:
        return read_record(memory.read, address), None
    except RecordNotInDump:
        h = session.dump.header
        if base_code(h.bugcheck_code) != 0x124 or int(h.bugcheck_parameters[1]) != address:
            raise
        for blob in session.dump.blobs():
            copy = find_copy(session.dump.read_file(blob.data_offset, blob.data_size), address)
            if copy is not None:
                return copy, f"the copy in the dump's secondary data {{{blob.tag_text.upper()}}}"
        raise


def irp_driver(session: SessionView, irp: int) -> dict[str, Any]:
    """For 0x9F P1=3: the device object holding the IRP and its driver (name, start, module)."""
    is64 = session.is64
    size = 8 if is64 else 4
    offsets = session.parts.offsets()
    memory = _memory(session)

    def off(type_name: str, path: str) -> int:
        value = offsets.offset(type_name, path) if getattr(offsets, "types", None) is not None else None
        return value if value is not None else IRP_FIELDS[is64][(type_name, path)]

    def ptr(address: int) -> int:
        return int.from_bytes(memory.read(address, size), "little")

    try:
        location = ptr(irp + off("_IRP", "Tail.Overlay.CurrentStackLocation"))
        device = ptr(location + off("_IO_STACK_LOCATION", "DeviceObject"))
        driver = ptr(device + off("_DEVICE_OBJECT", "DriverObject"))
        start = ptr(driver + off("_DRIVER_OBJECT", "DriverStart"))
    except MemoryNotPresent as exc:
        raise KdError(f"Unable to follow the IRP at {irp:#x} to its driver: {exc.why}") from None
    from kdshell.symbols.modules import read_unicode_string

    name = read_unicode_string(memory, driver + off("_DRIVER_OBJECT", "DriverName"), is64)
    module = session.symbols.module_at(start)
    return {"power_down": _sets_lower_power(memory, location, off),"irp": irp, "stack_location": location, "device_object": device, "driver_object": driver,
            "driver_name": name, "driver_start": start, "module": module.name if module else None,
            "image": module.image_name if module else None}


IRP_MJ_POWER, IRP_MN_SET_POWER = 0x16, 0x2
POWER_ON = 1  # PowerSystemWorking and PowerDeviceD0 are both 1


def _sets_lower_power(memory: VirtualMemory, location: int, off: Callable[[str, str], int]) -> bool | None:
    """Whether the stack location is a set-power IRP to a state below working (S1-S5, D1-D3):
    WinDbg's 0x9F_3 buckets say POWER_DOWN then. None when the location cannot be read."""
    try:
        major, minor = memory.read(location, 2)
        if (major, minor) != (IRP_MJ_POWER, IRP_MN_SET_POWER):
            return False
        state = int.from_bytes(memory.read(location + off("_IO_STACK_LOCATION", "Parameters.Power.State"), 4), "little")
    except MemoryNotPresent:
        return None
    return state > POWER_ON


_PLATFORM = {MACHINE_AMD64: "x64", MACHINE_ARM64: "arm64"}  # WinDbg's OSPLATFORM_TYPE


def os_facts(session: SessionView) -> dict[str, str]:
    """OS_VERSION, BUILDLAB_STR, OSPLATFORM_TYPE, OSNAME from the dump (the build lab string the
    KDBG points to; without it, nt's version resource when its image is at hand)."""
    h = session.dump.header
    build = h.build
    nt = nt_version(build)
    out = {"OSNAME": os_name(build), "OSPLATFORM_TYPE": _PLATFORM.get(session.context.machine, "x86")}
    lab = None
    try:
        lab = build_lab(session)
    except KdError:
        lab = None
    version = f"{nt}.{build}" if nt else str(build)
    if lab:
        parts = lab.split(".")
        if len(parts) >= 4 and parts[0].isdigit() and parts[1].isdigit():
            version = f"{nt}.{parts[0]}.{parts[1]}" if nt else f"{parts[0]}.{parts[1]}"
            out["BUILDLAB_STR"] = parts[3]
        out["BUILD_LAB"] = lab
    else:
        info = _kernel_version_info(session)
        if info is not None and info.file_version[2] == build:
            version = ".".join(str(x) for x in info.file_version)
    out["OS_VERSION"] = version
    return out


def _kernel_version_info(session: SessionView) -> VersionInfo | None:
    """nt's version resource, when its image file was already found (no lookup, no download)."""
    try:
        kernel = session.symbols.modules.kernel
        image = kernel.state.get("file_image") if kernel is not None else None
        return image.version_info if image is not None else None
    except KdError:
        return None


