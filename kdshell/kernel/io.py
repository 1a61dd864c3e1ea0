"""I/O manager objects: DRIVER_OBJECT, DEVICE_OBJECT, device stacks, IRPs and their
IO_STACK_LOCATIONs (what !drvobj, !devobj, !devstack and !irp print).

    io = IoObjects(memory, offsets, is64, symbol)     # offsets: KernelOffsets; symbol("Name") -> nt!Name or None
    drv = io.driver(address)                          # a Driver (raises IoError: not a driver object, not in the dump)
    io.find_driver("\\Driver\\mydrv")                 # its address, or None
    dev = io.device(address); io.device_stack(address)
    irp = io.irp(address)                             # an Irp with its stack locations

Fields are read by name through the kernel's types (the PDB; no built-in table has these
structures), so without the kernel's PDB every reader raises IoError with one line that says so.

What is read, and from where:
- A driver's name is DRIVER_OBJECT.DriverName (what WinDbg prints, not the object header's name).
- A device's name is the object header's name: _OBJECT_HEADER sits right before the body; when
  its InfoMask has bit 0x2 the _OBJECT_HEADER_NAME_INFO sits at header - offset, the offset taken
  from nt!ObpInfoMaskToOffset[InfoMask & 3] when that table is readable, else from the sizes of
  _OBJECT_HEADER_CREATOR_INFO (bit 0x1) and _OBJECT_HEADER_NAME_INFO. The test machines' objects
  carry no name info (InfoMask 0), so their devices are unnamed, as an unnamed PnP device is.
- The lower device (AttachedTo) and the devnode come from DEVICE_OBJECT.DeviceObjectExtension
  (_DEVOBJ_EXTENSION); when the kernel's types lack that structure (the test machines' kernel),
  a device stack is the device and the devices attached above it.
- Finding a driver by name: Windows keeps drivers in the \\Driver object directory; kdshell does
  not read object directories yet. It looks through the boot-driver table of kernels that keep
  one (nt!IopBootDriverObjects / nt!IopBootDriverCount, the test machines' kernel) and otherwise
  asks for the address.

Hostile objects give bounded answers: a device list or device stack that loops or runs past
MAX_DEVICES stops with a warning; an IRP's stack locations are capped by what its Size says fits
(and by MAX_STACK_LOCATIONS), so StackCount 255 cannot run off the allocation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.layout import FieldOffsets, Memory, Reader, StructLayout

IO_TYPE_DEVICE, IO_TYPE_DRIVER, IO_TYPE_IRP = 3, 4, 6  # the Type word at offset 0 of each object
MAX_DEVICES = 1024  # a longer device list or stack is corrupt (or hostile)
MAX_STACK_LOCATIONS = 64  # real IRPs have far fewer (StackSize is a CCHAR); beyond this, corrupt
IRP_MJ_COUNT = 28
OB_INFO_CREATOR, OB_INFO_NAME = 0x1, 0x2

IO_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "drv_type": (("_DRIVER_OBJECT", "Type"),),
    "drv_device": (("_DRIVER_OBJECT", "DeviceObject"),),
    "drv_flags": (("_DRIVER_OBJECT", "Flags"),),
    "drv_start": (("_DRIVER_OBJECT", "DriverStart"),),
    "drv_size": (("_DRIVER_OBJECT", "DriverSize"),),
    "drv_extension": (("_DRIVER_OBJECT", "DriverExtension"),),
    "drv_name": (("_DRIVER_OBJECT", "DriverName"),),
    "drv_init": (("_DRIVER_OBJECT", "DriverInit"),),
    "drv_startio": (("_DRIVER_OBJECT", "DriverStartIo"),),
    "drv_unload": (("_DRIVER_OBJECT", "DriverUnload"),),
    "drv_major": (("_DRIVER_OBJECT", "MajorFunction"),),
    "ext_add_device": (("_DRIVER_EXTENSION", "AddDevice"),),
    "ext_service": (("_DRIVER_EXTENSION", "ServiceKeyName"),),
    "dev_type": (("_DEVICE_OBJECT", "Type"),),
    "dev_refcount": (("_DEVICE_OBJECT", "ReferenceCount"),),
    "dev_driver": (("_DEVICE_OBJECT", "DriverObject"),),
    "dev_next": (("_DEVICE_OBJECT", "NextDevice"),),
    "dev_attached": (("_DEVICE_OBJECT", "AttachedDevice"),),
    "dev_irp": (("_DEVICE_OBJECT", "CurrentIrp"),),
    "dev_flags": (("_DEVICE_OBJECT", "Flags"),),
    "dev_characteristics": (("_DEVICE_OBJECT", "Characteristics"),),
    "dev_vpb": (("_DEVICE_OBJECT", "Vpb"),),
    "dev_extension": (("_DEVICE_OBJECT", "DeviceExtension"),),
    "dev_device_type": (("_DEVICE_OBJECT", "DeviceType"),),
    "dev_stack_size": (("_DEVICE_OBJECT", "StackSize"),),
    "dev_queue_busy": (("_DEVICE_OBJECT", "DeviceQueue.Busy"),),
    "dev_queue_head": (("_DEVICE_OBJECT", "DeviceQueue.DeviceListHead"),),
    "dev_security": (("_DEVICE_OBJECT", "SecurityDescriptor"),),
    "dev_objext": (("_DEVICE_OBJECT", "DeviceObjectExtension"),),
    "doe_flags": (("_DEVOBJ_EXTENSION", "ExtensionFlags"),),
    "doe_devnode": (("_DEVOBJ_EXTENSION", "DeviceNode"),),
    "doe_attached_to": (("_DEVOBJ_EXTENSION", "AttachedTo"),),
    "irp_type": (("_IRP", "Type"),),
    "irp_size": (("_IRP", "Size"),),
    "irp_mdl": (("_IRP", "MdlAddress"),),
    "irp_flags": (("_IRP", "Flags"),),
    "irp_system_buffer": (("_IRP", "AssociatedIrp.SystemBuffer"),),
    "irp_status": (("_IRP", "IoStatus.Status"),),
    "irp_information": (("_IRP", "IoStatus.Information"),),
    "irp_requestor_mode": (("_IRP", "RequestorMode"),),
    "irp_pending": (("_IRP", "PendingReturned"),),
    "irp_stack_count": (("_IRP", "StackCount"),),
    "irp_current": (("_IRP", "CurrentLocation"),),
    "irp_cancel": (("_IRP", "Cancel"),),
    "irp_cancel_irql": (("_IRP", "CancelIrql"),),
    "irp_user_iosb": (("_IRP", "UserIosb"),),
    "irp_user_event": (("_IRP", "UserEvent"),),
    "irp_cancel_routine": (("_IRP", "CancelRoutine"),),
    "irp_user_buffer": (("_IRP", "UserBuffer"),),
    "irp_thread": (("_IRP", "Tail.Overlay.Thread"),),
    "irp_current_sl": (("_IRP", "Tail.Overlay.CurrentStackLocation"),),
    "irp_file": (("_IRP", "Tail.Overlay.OriginalFileObject"),),
    "sl_major": (("_IO_STACK_LOCATION", "MajorFunction"),),
    "sl_minor": (("_IO_STACK_LOCATION", "MinorFunction"),),
    "sl_flags": (("_IO_STACK_LOCATION", "Flags"),),
    "sl_control": (("_IO_STACK_LOCATION", "Control"),),
    "sl_parameters": (("_IO_STACK_LOCATION", "Parameters"),),
    "sl_device": (("_IO_STACK_LOCATION", "DeviceObject"),),
    "sl_file": (("_IO_STACK_LOCATION", "FileObject"),),
    "sl_completion": (("_IO_STACK_LOCATION", "CompletionRoutine"),),
    "sl_context": (("_IO_STACK_LOCATION", "Context"),),
    "oh_body": (("_OBJECT_HEADER", "Body"),),
    "oh_info_mask": (("_OBJECT_HEADER", "InfoMask"),),
    "name_info_name": (("_OBJECT_HEADER_NAME_INFO", "Name"),),
}

MAJOR_FUNCTIONS = (
    "IRP_MJ_CREATE", "IRP_MJ_CREATE_NAMED_PIPE", "IRP_MJ_CLOSE", "IRP_MJ_READ", "IRP_MJ_WRITE",
    "IRP_MJ_QUERY_INFORMATION", "IRP_MJ_SET_INFORMATION", "IRP_MJ_QUERY_EA", "IRP_MJ_SET_EA",
    "IRP_MJ_FLUSH_BUFFERS", "IRP_MJ_QUERY_VOLUME_INFORMATION", "IRP_MJ_SET_VOLUME_INFORMATION",
    "IRP_MJ_DIRECTORY_CONTROL", "IRP_MJ_FILE_SYSTEM_CONTROL", "IRP_MJ_DEVICE_CONTROL",
    "IRP_MJ_INTERNAL_DEVICE_CONTROL", "IRP_MJ_SHUTDOWN", "IRP_MJ_LOCK_CONTROL", "IRP_MJ_CLEANUP",
    "IRP_MJ_CREATE_MAILSLOT", "IRP_MJ_QUERY_SECURITY", "IRP_MJ_SET_SECURITY", "IRP_MJ_POWER",
    "IRP_MJ_SYSTEM_CONTROL", "IRP_MJ_DEVICE_CHANGE", "IRP_MJ_QUERY_QUOTA", "IRP_MJ_SET_QUOTA",
    "IRP_MJ_PNP",
)
IRP_MJ_POWER, IRP_MJ_SYSTEM_CONTROL, IRP_MJ_PNP = 0x16, 0x17, 0x1B
# Minor codes WinDbg names; any other minor prints as N/A (as WinDbg does for majors without minors).
MINOR_FUNCTIONS = {
    IRP_MJ_POWER: ("IRP_MN_WAIT_WAKE", "IRP_MN_POWER_SEQUENCE", "IRP_MN_SET_POWER", "IRP_MN_QUERY_POWER"),
    IRP_MJ_PNP: (
        "IRP_MN_START_DEVICE", "IRP_MN_QUERY_REMOVE_DEVICE", "IRP_MN_REMOVE_DEVICE",
        "IRP_MN_CANCEL_REMOVE_DEVICE", "IRP_MN_STOP_DEVICE", "IRP_MN_QUERY_STOP_DEVICE",
        "IRP_MN_CANCEL_STOP_DEVICE", "IRP_MN_QUERY_DEVICE_RELATIONS", "IRP_MN_QUERY_INTERFACE",
        "IRP_MN_QUERY_CAPABILITIES", "IRP_MN_QUERY_RESOURCES", "IRP_MN_QUERY_RESOURCE_REQUIREMENTS",
        "IRP_MN_QUERY_DEVICE_TEXT", "IRP_MN_FILTER_RESOURCE_REQUIREMENTS", "IRP_MN_0xE",
        "IRP_MN_READ_CONFIG", "IRP_MN_WRITE_CONFIG", "IRP_MN_EJECT", "IRP_MN_SET_LOCK", "IRP_MN_QUERY_ID",
        "IRP_MN_QUERY_PNP_DEVICE_STATE", "IRP_MN_QUERY_BUS_INFORMATION", "IRP_MN_DEVICE_USAGE_NOTIFICATION",
        "IRP_MN_SURPRISE_REMOVAL", "IRP_MN_QUERY_LEGACY_BUS_INFORMATION", "IRP_MN_DEVICE_ENUMERATED",
    ),
    IRP_MJ_SYSTEM_CONTROL: (
        "IRP_MN_QUERY_ALL_DATA", "IRP_MN_QUERY_SINGLE_INSTANCE", "IRP_MN_CHANGE_SINGLE_INSTANCE",
        "IRP_MN_CHANGE_SINGLE_ITEM", "IRP_MN_ENABLE_EVENTS", "IRP_MN_DISABLE_EVENTS",
        "IRP_MN_ENABLE_COLLECTION", "IRP_MN_DISABLE_COLLECTION", "IRP_MN_REGINFO", "IRP_MN_EXECUTE_METHOD",
    ),
}
# DEVOBJ_EXTENSION.ExtensionFlags bits (wdm.h's DOE_* values), lowest bit first
EXTENSION_FLAGS = (
    (0x1, "DOE_UNLOAD_PENDING"), (0x2, "DOE_DELETE_PENDING"), (0x4, "DOE_REMOVE_PENDING"),
    (0x8, "DOE_REMOVE_PROCESSED"), (0x10, "DOE_START_PENDING"),
    (0x20000000, "DOE_RAW_FDO"), (0x40000000, "DOE_BOTTOM_OF_FDO_STACK"), (0x80000000, "DOE_DESIGNATED_FDO"),
)
CHARACTERISTICS = (
    (0x1, "FILE_REMOVABLE_MEDIA"), (0x2, "FILE_READ_ONLY_DEVICE"), (0x4, "FILE_FLOPPY_DISKETTE"),
    (0x8, "FILE_WRITE_ONCE_MEDIA"), (0x10, "FILE_REMOTE_DEVICE"), (0x20, "FILE_DEVICE_IS_MOUNTED"),
    (0x40, "FILE_VIRTUAL_VOLUME"), (0x80, "FILE_AUTOGENERATED_DEVICE_NAME"), (0x100, "FILE_DEVICE_SECURE_OPEN"),
    (0x800, "FILE_CHARACTERISTIC_PNP_DEVICE"), (0x20000, "FILE_PORTABLE_DEVICE"),
)


def flag_names(value: int, table: Iterable[tuple[int, str]]) -> list[str]:
    return [name for bit, name in table if value & bit]


def major_name(major: int) -> str:
    return MAJOR_FUNCTIONS[major] if major < len(MAJOR_FUNCTIONS) else "N/A"


def minor_name(major: int, minor: int) -> str:
    names = MINOR_FUNCTIONS.get(major, ())
    return names[minor] if minor < len(names) else "N/A"


class IoOffsets(FieldOffsets, Protocol):
    """The offsets object IoObjects reads (kdshell.kernel.offsets.KernelOffsets): sizes too."""

    def size(self, type_name: str) -> int | None: ...


class IoError(KdError):
    """An I/O object that cannot be shown: not that kind of object, not in the dump, no types."""


@dataclass
class Driver:
    address: int
    name: str
    devices: list[int]
    flags: int = 0
    start: int = 0
    size: int = 0
    extension: int = 0
    init: int = 0
    start_io: int = 0
    unload: int = 0
    add_device: int | None = None
    service_key: str | None = None
    major: list[int | None] = field(default_factory=list)  # 28 dispatch routines (None: unreadable)
    warning: str | None = None


@dataclass
class Device:
    address: int
    name: str  # the object header's name ("" for an unnamed device)
    driver: int
    driver_name: str | None
    reference_count: int = 0
    device_type: int = 0
    flags: int = 0
    characteristics: int = 0
    current_irp: int = 0
    attached: int = 0  # AttachedDevice: the device above
    attached_to: int | None = None  # DEVOBJ_EXTENSION.AttachedTo: the device below (None: not known)
    extension: int = 0
    objext: int = 0
    security: int = 0
    vpb: int = 0
    stack_size: int = 0
    extension_flags: int | None = None
    devnode: int | None = None
    queue_busy: bool | None = None
    queued_irps: list[int] = field(default_factory=list)


@dataclass
class StackLocation:
    address: int
    major: int = 0
    minor: int = 0
    flags: int = 0
    control: int = 0
    device: int = 0
    file: int = 0
    completion: int = 0
    context: int = 0
    args: tuple[int, ...] = ()
    readable: bool = True


@dataclass
class Irp:
    address: int
    size: int
    stack_count: int  # as the IRP says
    current: int  # CurrentLocation (1-based; StackCount + 1 when no driver has it yet)
    current_address: int  # Tail.Overlay.CurrentStackLocation
    mdl: int = 0
    system_buffer: int = 0
    thread: int = 0
    fields: dict[str, int | None] = field(default_factory=dict)  # the rest, for !irp's detail
    locations: list[StackLocation] = field(default_factory=list)
    warning: str | None = None


class IoObjects:
    """Reads I/O manager objects from `memory` with the kernel's types (see the module note)."""

    def __init__(self, memory: Memory, offsets: IoOffsets, is64: bool,
                 symbol: Callable[[str], int | None] = lambda name: None) -> None:
        self.r = Reader(memory, is64)
        self.offsets = offsets
        self.layout = StructLayout(offsets, IO_FIELDS)
        self.is64 = is64
        self.symbol = symbol

    # -- plumbing ---------------------------------------------------------------------------
    def _need(self, name: str, what: str) -> int:
        value = self.layout.get(name)
        if value is None:
            type_name = self.layout.spec[name][0][0]
            raise IoError(f"The kernel's type {type_name} is not available (no kernel PDB): "
                          f"{what} needs nt's symbols (.sympath, .reload)")
        return value

    def _uint(self, base: int, name: str, size: int) -> int:
        return self.r.uint(base + self._need(name, "this"), size)

    def _ptr(self, base: int, name: str) -> int:
        return self.r.ptr(base + self._need(name, "this"))

    def _opt_ptr(self, base: int, name: str) -> int | None:
        return self.r.maybe_ptr(base, self.layout.get(name))

    def _check_type(self, address: int, name: str, expected: int, what: str) -> None:
        self._need(name, f"reading a {what}")
        try:
            value = self._uint(address, name, 2)
        except MemoryNotPresent:
            raise IoError(f"{self.r.mask & address:x} is not in the dump: cannot read the {what}") from None
        if value != expected:
            raise IoError(f"{self.r.mask & address:x} is not a {what} (its Type is {value:#x}, a {what}'s is "
                          f"{expected:#x})")

    # -- object names -------------------------------------------------------------------------
    def object_name(self, body: int) -> str | None:
        """The object header's name of the object at `body` ("" when it has none; None when
        the header cannot be read)."""
        header = body - (self.layout.get("oh_body") or (0x30 if self.is64 else 0x18))
        mask = self.r.maybe_uint(header, self.layout.get("oh_info_mask"), 1)
        if mask is None:
            return None
        if not mask & OB_INFO_NAME:
            return ""
        offset = self._name_info_offset(mask)
        name_at = self.layout.get("name_info_name")
        if name_at is None:
            name_at = 2 * self.r.psize  # Directory, then Name (after the pointer's alignment)
        return self.r.unicode_string(header - offset + name_at)

    def _name_info_offset(self, mask: int) -> int:
        table = self.symbol("ObpInfoMaskToOffset")
        if table:
            value = self.r.maybe_uint(table, mask & (OB_INFO_CREATOR | OB_INFO_NAME), 1)
            if value:
                return value
        sizes = self.offsets.size
        creator = sizes("_OBJECT_HEADER_CREATOR_INFO") or (0x20 if self.is64 else 0x10)
        name = sizes("_OBJECT_HEADER_NAME_INFO") or (0x20 if self.is64 else 0x10)
        return name + (creator if mask & OB_INFO_CREATOR else 0)

    # -- drivers ------------------------------------------------------------------------------
    def driver_name(self, address: int) -> str | None:
        at = self.layout.get("drv_name")
        return self.r.unicode_string(address + at) if at is not None and address else None

    def device_driver_name(self, device: int) -> str:
        """The name of the driver of the device at `device` ("" when it cannot be read)."""
        driver = self._opt_ptr(device, "dev_driver")
        return (self.driver_name(driver) or "") if driver else ""

    def driver(self, address: int) -> Driver:
        self._check_type(address, "drv_type", IO_TYPE_DRIVER, "driver object")
        r = self.r
        name = self.driver_name(address) or ""
        d = Driver(address, name, [])
        d.flags = r.maybe_uint(address, self.layout.get("drv_flags"), 4) or 0
        d.start = self._opt_ptr(address, "drv_start") or 0
        d.size = r.maybe_uint(address, self.layout.get("drv_size"), 4) or 0
        d.extension = self._opt_ptr(address, "drv_extension") or 0
        d.init = self._opt_ptr(address, "drv_init") or 0
        d.start_io = self._opt_ptr(address, "drv_startio") or 0
        d.unload = self._opt_ptr(address, "drv_unload") or 0
        if d.extension:
            d.add_device = self._opt_ptr(d.extension, "ext_add_device")
            at = self.layout.get("ext_service")
            d.service_key = r.unicode_string(d.extension + at) if at is not None else None
        major = self.layout.get("drv_major")
        if major is not None:
            d.major = [r.maybe_ptr(address, major + i * r.psize) for i in range(IRP_MJ_COUNT)]
        d.devices, d.warning = self._device_list(address)
        return d

    def _device_list(self, driver: int) -> tuple[list[int], str | None]:
        """DRIVER_OBJECT.DeviceObject, then each DEVICE_OBJECT.NextDevice (bounded, loop-safe)."""
        next_at = self._need("dev_next", "the device list")
        devices: list[int] = []
        try:
            device = self._ptr(driver, "drv_device")
            while device:
                if device in devices:
                    return devices, f"The device list loops at {device:x}; stopped after {len(devices)} devices"
                if len(devices) >= MAX_DEVICES:
                    return devices, f"The device list has more than {MAX_DEVICES} devices; stopped there"
                devices.append(device)
                device = self.r.ptr(device + next_at)
        except MemoryNotPresent as e:
            return devices, f"The device list is cut short: {e.address & self.r.mask:x} is not in the dump"
        return devices, None

    def boot_drivers(self) -> list[int]:
        """The drivers a kernel's boot-driver table lists (empty when it keeps none)."""
        table, count_at = self.symbol("IopBootDriverObjects"), self.symbol("IopBootDriverCount")
        if not table or not count_at:
            return []
        count = min(self.r.maybe_uint(count_at, 0, 4) or 0, MAX_DEVICES)
        found = [self.r.maybe_ptr(table, i * self.r.psize) for i in range(count)]
        return [d for d in found if d]

    def find_driver(self, name: str) -> int | None:
        """The DRIVER_OBJECT named `name` (\\Driver\\ assumed when there is no prefix)."""
        wanted = name if name.startswith("\\") else "\\Driver\\" + name
        self._need("drv_name", "finding a driver by name")
        for address in self.boot_drivers():
            if (self.driver_name(address) or "").lower() == wanted.lower():
                return address
        return None

    # -- devices ------------------------------------------------------------------------------
    def driver_name_of(self, device: int) -> str:
        """The name of the driver that owns `device` ("" for none, "?" when not readable)."""
        if not device:
            return ""
        try:
            return self.device(device).driver_name or ""
        except KdError:
            return "?"

    def device(self, address: int) -> Device:
        self._check_type(address, "dev_type", IO_TYPE_DEVICE, "device object")
        r, f = self.r, self.layout.get
        driver = self._opt_ptr(address, "dev_driver") or 0
        d = Device(address, self.object_name(address) or "", driver, self.driver_name(driver))
        d.reference_count = r.maybe_uint(address, f("dev_refcount"), 4) or 0
        d.device_type = r.maybe_uint(address, f("dev_device_type"), 4) or 0
        d.flags = r.maybe_uint(address, f("dev_flags"), 4) or 0
        d.characteristics = r.maybe_uint(address, f("dev_characteristics"), 4) or 0
        d.current_irp = self._opt_ptr(address, "dev_irp") or 0
        d.attached = self._opt_ptr(address, "dev_attached") or 0
        d.extension = self._opt_ptr(address, "dev_extension") or 0
        d.objext = self._opt_ptr(address, "dev_objext") or 0
        d.security = self._opt_ptr(address, "dev_security") or 0
        d.vpb = self._opt_ptr(address, "dev_vpb") or 0
        d.stack_size = r.maybe_uint(address, f("dev_stack_size"), 1) or 0
        if d.objext:
            d.extension_flags = r.maybe_uint(d.objext, f("doe_flags"), 4)
            d.devnode = self._opt_ptr(d.objext, "doe_devnode")
            d.attached_to = self._opt_ptr(d.objext, "doe_attached_to")
        busy = r.maybe_uint(address, f("dev_queue_busy"), 1)
        d.queue_busy = None if busy is None else bool(busy)
        queue_head = f("dev_queue_head")
        if d.queue_busy and queue_head is not None:
            d.queued_irps = self._queued_irps(address + queue_head)
        return d

    def _queued_irps(self, head: int) -> list[int]:
        """IRPs on a busy device queue: KDEVICE_QUEUE_ENTRY links in IRP.Tail.Overlay.DeviceQueueEntry."""
        entry_at = self.offsets.offset("_IRP", "Tail.Overlay.DeviceQueueEntry")
        if entry_at is None:
            return []
        irps: list[int] = []
        entry = self.r.maybe_ptr(head, 0)
        while entry and entry != head and len(irps) < MAX_DEVICES and entry - entry_at not in irps:
            irps.append(entry - entry_at)
            entry = self.r.maybe_ptr(entry, 0)
        return irps

    def device_stack(self, address: int) -> tuple[list[Device], str | None]:
        """The devices of `address`'s stack, top first: up through AttachedDevice, down through
        DEVOBJ_EXTENSION.AttachedTo (when known). Bounded and loop-safe."""
        start = self.device(address)
        seen = {address}
        above, warning_up = self._follow(start, "attached", seen)
        below, warning_down = self._follow(start, "attached_to", seen)
        warning = warning_down or warning_up
        return list(reversed(above)) + [start] + below, warning

    def _follow(self, start: Device, link: str, seen: set[int]) -> tuple[list[Device], str | None]:
        """The devices reached from `start` through `link` (attached: up; attached_to: down),
        stopping at a loop, MAX_DEVICES or an unreadable device (the warning says which)."""
        found: list[Device] = []
        nxt = getattr(start, link)
        while nxt:
            if nxt in seen or len(seen) >= MAX_DEVICES:
                return found, f"The device stack loops at {nxt:x}; stopped there"
            seen.add(nxt)
            try:
                found.append(self.device(nxt))
            except IoError as e:
                return found, str(e)
            nxt = getattr(found[-1], link)
        return found, None

    # -- IRPs ---------------------------------------------------------------------------------
    def irp(self, address: int) -> Irp:
        self._check_type(address, "irp_type", IO_TYPE_IRP, "IRP")
        r, f = self.r, self.layout.get
        size = r.maybe_uint(address, f("irp_size"), 2) or 0
        count = r.maybe_uint(address, self._need("irp_stack_count", "!irp"), 1) or 0
        current = r.maybe_uint(address, f("irp_current"), 1) or 0
        irp = Irp(address, size, count, current, self._opt_ptr(address, "irp_current_sl") or 0)
        irp.mdl = self._opt_ptr(address, "irp_mdl") or 0
        irp.system_buffer = self._opt_ptr(address, "irp_system_buffer") or 0
        irp.thread = self._opt_ptr(address, "irp_thread") or 0
        for name, width in (("irp_flags", 4), ("irp_status", 4), ("irp_information", r.psize),
                            ("irp_requestor_mode", 1), ("irp_pending", 1), ("irp_cancel", 1),
                            ("irp_cancel_irql", 1), ("irp_user_iosb", r.psize), ("irp_user_event", r.psize),
                            ("irp_cancel_routine", r.psize), ("irp_user_buffer", r.psize), ("irp_file", r.psize)):
            irp.fields[name] = r.maybe_uint(address, f(name), width)
        # the locations follow the IRP body (IoAllocateIrp's layout); Size says how many fit
        body = self.offsets.size("_IRP")
        location = self.offsets.size("_IO_STACK_LOCATION")
        if not body or not location:
            raise IoError("The kernel's types _IRP/_IO_STACK_LOCATION have no size: !irp needs nt's symbols")
        fits = max(0, (size - body) // location) if size > body else 0
        shown = min(count, fits, MAX_STACK_LOCATIONS)
        if shown < count:
            irp.warning = (f"The IRP says {count} stack locations but its Size ({size:#x}) holds {fits}; "
                           f"showing {shown}")
        irp.locations = [self.stack_location(address + body + i * location) for i in range(shown)]
        return irp

    def stack_location(self, address: int) -> StackLocation:
        r = self.r
        sl = StackLocation(address)
        try:
            sl.major = r.uint(address + self._need("sl_major", "!irp"), 1)
            sl.minor = r.uint(address + self._need("sl_minor", "!irp"), 1)
            sl.flags = r.uint(address + self._need("sl_flags", "!irp"), 1)
            sl.control = r.uint(address + self._need("sl_control", "!irp"), 1)
            sl.device = self._ptr(address, "sl_device")
            sl.file = self._ptr(address, "sl_file")
            sl.completion = self._ptr(address, "sl_completion")
            sl.context = self._ptr(address, "sl_context")
            params = self._need("sl_parameters", "!irp")
            sl.args = tuple(r.ptr(address + params + i * r.psize) for i in range(4))
        except MemoryNotPresent:
            sl.readable = False
        return sl
