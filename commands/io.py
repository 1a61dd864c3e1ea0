"""I/O manager extensions: !drvobj, !devobj, !devstack, !irp (kdexts' layout).

Thin: parse WinDbg's syntax, read the objects through kdshell.kernel.io, print the layout public
transcripts show (Microsoft's debugger docs: the -drvobj, -devstack, -irp, -ioctldecode and
bug check 0x9F pages, the Windows debugging lab's sysvad session; and blog transcripts of 0x9F
analyses). Choices where transcripts disagree or say nothing:
- Numbers print as kdexts' `%08p`: at least 8 digits, so NULL is `00000000` and a kernel address
  all 16 on x64 (`DriverStartIo: 00000000`, `Current Irp 00000000`); no backtick.
- kdexts separates columns with tabs; kdshell prints spaces at the tab stops (column 15 for an
  IRP location's driver line, 24 for `Args:`), and no trailing blanks.
- !drvobj: the old layout (no blank line between the name and `Driver Extension List`), as the
  i8042prt transcript; bit 0x4 prints each device's !devobj block after the list.
- !devobj: `ExtensionFlags` and `AttachedTo (Lower)` need DEVOBJ_EXTENSION (absent from the test
  machines' kernel types: the lines are left out then); `Characteristics` only when non-zero.
- !irp: the third Args word of a (internal) device control is the IOCTL code, printed `0x%x` as
  the !ioctldecode transcript shows; Detail (any non-zero second argument) adds the IRP's fields
  before the stack locations. A location with no device has an empty driver line.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdshell.dispatch import Invocation, command, needs_memory
from kdshell.errors import CommandError, KdError
from kdshell.expr import Evaluator
from kdshell.kernel.io import CHARACTERISTICS, EXTENSION_FLAGS, IoError, IoObjects, flag_names, major_name, minor_name

if TYPE_CHECKING:
    from kdshell.session import Session

DEVSTACK_HEADER = "  !DevObj           !DrvObj            !DevExt           ObjectName"
IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL = 0x0E, 0x0F
SL_PENDING_RETURNED, SL_INVOKE_ON_CANCEL, SL_INVOKE_ON_SUCCESS, SL_INVOKE_ON_ERROR = 0x01, 0x20, 0x40, 0x80


def io_objects(session: Session) -> IoObjects:
    k = session.kernel
    return IoObjects(k.memory, k.offsets, k.is64, k.symbol)


def _h(value: int | None) -> str:
    """kdexts' %08p: at least eight hex digits."""
    return "????????" if value is None else f"{value:08x}"


def _c_hash(value: int) -> str:
    """C's %#010x (no 0x for zero), as kdexts prints ExtensionFlags and Characteristics."""
    return f"{value:#010x}" if value else "0" * 10


def _address(session: Session, inv: Invocation, what: str) -> tuple[int, list[str]]:
    if not inv.args:
        raise CommandError(f"{what}: give an address")
    try:
        return Evaluator(session).evaluate(inv.args[0]), inv.args[1:]
    except KdError as e:
        raise CommandError(f"{what}: {inv.args[0]} is not an address ({e})") from None


def _flags(session: Session, words: list[str], default: int) -> int:
    return Evaluator(session).evaluate(words[0]) if words else default


def _routine(session: Session, address: int | None) -> str:
    """`address  symbol` as !drvobj prints an entry point."""
    if not address:
        return _h(address)
    name = session.symbols.name_at(address)
    return f"{_h(address)}  {name}" if name else _h(address)


# -- !drvobj -------------------------------------------------------------------------------------
def _driver_address(session: Session, io: IoObjects, text: str) -> int:
    """An address, or a driver's name (\\Driver\\ assumed): WinDbg tries the name first."""
    try:
        found = io.find_driver(text)
    except IoError:  # no kernel types: an address still gets io.driver's own one line
        if text.startswith("\\") or session.symbols.module(text) is not None:
            raise
        try:
            return Evaluator(session).evaluate(text)
        except KdError:
            raise KdError(f"!drvobj: {text} is neither a driver's name nor an address") from None
    if found:
        return found
    # A bare module name (`mydrv`) is a driver's name here, not the module's base address.
    if text.startswith("\\") or session.symbols.module(text) is not None:
        raise KdError(f"!drvobj: no driver object named {text} (kdshell finds drivers through the kernel's "
                      "boot-driver table, not the object directory: give the DRIVER_OBJECT's address)")
    try:
        return Evaluator(session).evaluate(text)
    except KdError:
        raise KdError(f"!drvobj: {text} is neither a driver's name nor an address") from None


@command("!drvobj", family="kernel", needs=(needs_memory,), syntax="!drvobj DriverObject|Name [Flags]",
         summary="Show a DRIVER_OBJECT: its name, device objects (1), entry points and dispatch routines (2), "
                 "device details (4)",
         example="!drvobj \\Driver\\mydrv 2",
         details="DriverObject is an address or a driver's name (\\Driver\\ is assumed without a prefix). "
                 "Flags default to 1. Needs the kernel's symbols (nt's PDB).")
def drvobj_(session: Session, inv: Invocation) -> None:
    if not inv.args:
        raise CommandError("!drvobj: give a driver object's address or a driver's name")
    io = io_objects(session)
    address = _driver_address(session, io, inv.args[0])
    flags = _flags(session, inv.args[1:], 1)
    d = io.driver(address)
    lines = [f"Driver object ({_h(d.address)}) is for:", f" {d.name}",
             "Driver Extension List: (id , addr)", ""]
    if flags & 1:
        lines.append("Device Object list:")
        lines.append("  ".join(_h(dev) for dev in d.devices))
        if d.warning:
            lines.append(d.warning)
    if flags & 2:
        lines += ["", f"DriverEntry:   {_routine(session, d.init)}",
                  f"DriverStartIo: {_routine(session, d.start_io)}",
                  f"DriverUnload:  {_routine(session, d.unload)}",
                  f"AddDevice:     {_routine(session, d.add_device)}", "", "Dispatch routines:"]
        for index, routine in enumerate(d.major):
            lines.append(f"[{index:02x}] {major_name(index):<35}{_routine(session, routine)}")
    session.out.lines(lines)
    if flags & 4 and flags & 1:
        for dev in d.devices:
            session.out.line("")
            session.out.lines(devobj_lines(session, io, dev))


# -- !devobj -------------------------------------------------------------------------------------
def _driver_text(d: Any) -> str:
    return d.driver_name if d.driver_name is not None else "<driver name not readable>"


def devobj_lines(session: Session, io: IoObjects, address: int) -> list[str]:
    d = io.device(address)
    lines = [f"Device object ({_h(d.address)}) is for:",
             f" {d.name} {_driver_text(d)} DriverObject {_h(d.driver)}",
             f"Current Irp {_h(d.current_irp)} RefCount {d.reference_count} Type {_h(d.device_type)} "
             f"Flags {_h(d.flags)}"]
    ext = f"DevExt {_h(d.extension)} DevObjExt {_h(d.objext)}"
    if d.vpb:
        ext = f"Vpb {_h(d.vpb)} " + ext
    if d.security:
        ext = f"SecurityDescriptor {_h(d.security)} " + ext
    if d.devnode:
        ext += f" DevNode {_h(d.devnode)}"
    lines.append(ext)
    if d.extension_flags is not None:
        names = ", ".join(flag_names(d.extension_flags, EXTENSION_FLAGS))
        lines.append(f"ExtensionFlags ({_c_hash(d.extension_flags)})  {names}".rstrip())
    if d.characteristics:
        names = ", ".join(flag_names(d.characteristics, CHARACTERISTICS))
        lines.append(f"Characteristics ({_c_hash(d.characteristics)})  {names}".rstrip())
    if d.attached:
        lines.append(f"AttachedDevice (Upper) {_h(d.attached)} {io.device_driver_name(d.attached)}")
    if d.attached_to:
        lines.append(f"AttachedTo (Lower) {_h(d.attached_to)} {io.device_driver_name(d.attached_to)}")
    if d.queue_busy is None:
        lines.append("Device queue state is not readable.")
    elif not d.queue_busy:
        lines.append("Device queue is not busy.")
    elif not d.queued_irps:
        lines.append("Device queue is busy -- Queue empty.")
    else:
        lines.append("Device queue is busy")
        lines += [f"Irp Queue: {_h(irp)}" for irp in d.queued_irps]
    return lines


@command("!devobj", family="kernel", needs=(needs_memory,), syntax="!devobj DeviceObject",
         summary="Show a DEVICE_OBJECT: its driver, current IRP, flags, extension and attached devices",
         example="!devobj poi(mydrv!MyDrvDeviceObject)",
         details="Needs the kernel's symbols (nt's PDB).")
def devobj_(session: Session, inv: Invocation) -> None:
    address, _ = _address(session, inv, "!devobj")
    session.out.lines(devobj_lines(session, io_objects(session), address))


# -- !devstack -----------------------------------------------------------------------------------
@command("!devstack", family="kernel", needs=(needs_memory,), syntax="!devstack DeviceObject",
         summary="Show the device stack of a DEVICE_OBJECT, top first; > marks the device given",
         example="!devstack poi(mydrv!MyDrvDeviceObject)",
         details="Upper devices come from AttachedDevice, lower ones from the device object extension's "
                 "AttachedTo when the kernel's types have it. Needs nt's PDB.")
def devstack_(session: Session, inv: Invocation) -> None:
    address, _ = _address(session, inv, "!devstack")
    io = io_objects(session)
    stack, warning = io.device_stack(address)
    lines = [DEVSTACK_HEADER]
    for d in stack:
        mark = ">" if d.address == address else " "
        lines.append(f"{mark} {_h(d.address)}  {_driver_text(d):<19}{_h(d.extension)}  {d.name}".rstrip())
    if warning:
        lines.append(warning)
    bottom = stack[-1]
    if bottom.devnode:
        lines.append(f"!DevNode {_h(bottom.devnode)} :")
    session.out.lines(lines)


# -- !irp ----------------------------------------------------------------------------------------
def _control_words(control: int) -> str:
    # kdexts prints " %s %s %s %s" with empty words for clear bits (hence the runs of blanks)
    words = ("Success" if control & SL_INVOKE_ON_SUCCESS else "", "Error" if control & SL_INVOKE_ON_ERROR else "",
             "Cancel" if control & SL_INVOKE_ON_CANCEL else "", "pending" if control & SL_PENDING_RETURNED else "")
    return " " + " ".join(words)


def location_lines(session: Session, io: IoObjects, sl: Any, current: bool) -> list[str]:
    mark = ">" if current else " "
    if not sl.readable:
        return [f"{mark}[????] stack location {_h(sl.address)} is not in the dump"]
    lines = [f"{mark}[{major_name(sl.major)}({sl.major:x}), {minor_name(sl.major, sl.minor)}({sl.minor:x})]",
             (f"{' ' * 12}{sl.flags:x} {sl.control:2x} {_h(sl.device)} {_h(sl.file)} "
              f"{_h(sl.completion)}-{_h(sl.context)}" + _control_words(sl.control)).rstrip()]
    driver = io.device_driver_name(sl.device) if sl.device else ""
    if sl.completion:
        routine = session.symbols.name_at(sl.completion)
        driver += f"  {routine}" if routine else ""
    lines.append(f"{' ' * 15}{driver}".rstrip())
    args = [_h(a) for a in sl.args]
    if sl.major in (IRP_MJ_DEVICE_CONTROL, IRP_MJ_INTERNAL_DEVICE_CONTROL):
        args[2] = f"{sl.args[2] & 0xFFFFFFFF:#x}"  # the IOCTL code (a ULONG in a pointer-sized slot)
    lines.append(f"{' ' * 24}Args: {' '.join(args)}")
    return lines


IRP_DETAIL = (("Flags", "irp_flags"), ("IoStatus.Status", "irp_status"),
              ("IoStatus.Information", "irp_information"), ("RequestorMode", "irp_requestor_mode"),
              ("PendingReturned", "irp_pending"), ("Cancel", "irp_cancel"), ("CancelIrql", "irp_cancel_irql"),
              ("UserIosb", "irp_user_iosb"), ("UserEvent", "irp_user_event"),
              ("CancelRoutine", "irp_cancel_routine"), ("UserBuffer", "irp_user_buffer"),
              ("Tail.Overlay.OriginalFileObject", "irp_file"))


@command("!irp", family="kernel", needs=(needs_memory,), syntax="!irp Address [Detail]",
         summary="Show an IRP and its stack locations (> marks the current one)",
         example="!irp ffffc20a`00076010",
         details="Each location: major/minor function, flags, control, device, file, completion routine and "
                 "context, the device's driver and the four parameter words. Detail adds the IRP's fields. "
                 "Needs nt's PDB.")
def irp_(session: Session, inv: Invocation) -> None:
    address, rest = _address(session, inv, "!irp")
    detail = _flags(session, rest, 0)
    io = io_objects(session)
    irp = io.irp(address)
    mdl = f"Mdl={_h(irp.mdl)}" if irp.mdl else "No Mdl"
    buffer = f"System buffer={_h(irp.system_buffer)}" if irp.system_buffer else "No System Buffer"
    lines = [f"Irp is active with {irp.stack_count} stacks {irp.current} is current "
             f"(= {irp.current_address:#x})",
             f" {mdl}: {buffer}: Thread {_h(irp.thread)}:  Irp stack trace."]
    if irp.warning:
        lines.append(irp.warning)
    if detail:
        lines += [f"{label} = {_h(irp.fields.get(name))}" for label, name in IRP_DETAIL]
    lines.append("     cmd  flg cl Device   File     Completion-Context")
    for index, sl in enumerate(irp.locations):
        lines += location_lines(session, io, sl, index + 1 == irp.current)
    session.out.lines(lines)
