"""I/O request, PnP and power extensions: !irpfind, !devnode, !podev, !poaction, !pocaps.

Thin: the IRPs are found in the pool (kdshell.kernel.pool: blocks tagged `Irp `, small blocks in the
kernel's nonpaged range and big-page entries) and read through kdshell.kernel.io, as !irp reads them.
Layout (public transcripts): the two `Scanning`/`Searching` lines of !poolfind, then
`Irp    [ Thread ] irpStack: (Mj,Mn)   DevObj  [Driver]         MDL Process` and one line per IRP:
`irp [thread] irpStack: ( e, 0)  device [ \\Driver\\name] 0xprocess` -- the current stack location's
major and minor function and device, the issuing thread and its process. An IRP that no driver
holds yet (CurrentLocation past StackCount) prints `irpStack: ( ?, ?)`. Freed IRP blocks are left
out, as WinDbg does. A small memory dump keeps no pool: one line says so.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.commands.io import io_objects
from kdshell.commands.pool import NO_SMALL_SCOPE, SMALL, kernel_pool
from kdshell.dispatch import Invocation, command, needs_memory
from kdshell.errors import CommandError, KdError
from kdshell.expr import Evaluator
from kdshell.kernel.devnodes import DevNode, DevNodes, names, state_name
from kdshell.kernel.layout import Reader, walk_list
from kdshell.kernel.pool import PoolBlock, PoolError, tag_value
from kdshell.kernel.power import PowerState

if TYPE_CHECKING:
    from kdshell.session import Session

IRP_TAG = tag_value("Irp ")
HEADER = "Irp    [ Thread ] irpStack: (Mj,Mn)   DevObj  [Driver]         MDL Process"


def irp_blocks(session: Session) -> tuple[list[int], list[str]]:
    """The addresses of the allocated IRPs in the pool, and the lines saying where kdshell looked."""
    pool = kernel_pool(session)
    notes = [f"Scanning large pool allocation table for tag {IRP_TAG:#x} (Irp )"]
    found: list[int] = []

    def want(b: PoolBlock) -> bool:
        return b.tag & 0x7FFFFFFF == IRP_TAG and b.allocated

    try:
        found += [b.address for b in pool.big_pages() if want(b)]
    except PoolError as e:
        notes.append(str(e))
    scope = pool.small_scope()
    if scope is not None:
        notes.append(f"Searching {scope} for tag {IRP_TAG:#x} (Irp )")
        blocks, note = pool.scan_small(want)
        found += [b.address + pool.header.size for b in blocks]
        if note:
            notes.append(note)
    else:
        notes.append(NO_SMALL_SCOPE)
    return found, notes


@command("!irpfind", family="kernel", needs=(needs_memory,), syntax="!irpfind [PoolType]",
         summary="Find the IRPs in the pool: each one's thread, current stack location, device and driver",
         example="!irpfind",
         details="Searches the blocks tagged 'Irp ' (the big-page table and the kernel's nonpaged pool range); "
                 "freed IRPs are left out.")
def irpfind_(session: Session, inv: Invocation) -> None:
    if session.kernel.small:
        raise KdError(f"!irpfind: {SMALL.format(what='pool pages')}")
    session.out.lines(irpfind_lines(session))


def irpfind_lines(session: Session) -> list[str]:
    k = session.kernel
    is64 = k.is64
    io = io_objects(session)
    addresses, notes = irp_blocks(session)
    out = notes[:1] + [""] + notes[1:] + ["", HEADER]
    w = 16 if is64 else 8
    for address in addresses:
        try:
            irp = io.irp(address)
        except KdError as e:
            out.append(f"{address:0{w}x} {e}")
            continue
        stack = "( ?, ?)"
        device_text = f"{0:0{w}x} [ ]"
        if 1 <= irp.current <= len(irp.locations):
            sl = irp.locations[irp.current - 1]
            stack = f"({sl.major:2x},{sl.minor:2x})"
            driver = io.driver_name_of(sl.device)
            device_text = f"{sl.device:0{w}x} [ {driver}]"
        process = ""
        if irp.thread:
            try:
                owner = k.thread(irp.thread).owning_process
                process = f"0x{owner:0{w}x}" if owner else ""
            except KdError:
                process = ""
        mdl = f"0x{irp.mdl:0{w}x} " if irp.mdl else ""
        out.append(f"{address:0{w}x} [{irp.thread:0{w}x}] irpStack: {stack}  {device_text} {mdl}{process}".rstrip())
    return out


# -- PnP and power: !devnode, !podev, !poaction -----------------------------------------------------
# Layout (WinDbg's, public transcripts): `Dumping IopRootDeviceNode (= 0x...)`, then per node
# `DevNode 0x... for PDO 0x...` with its lines two spaces in, each level of children two more.
ROOT_SYMBOL = "nt!IopRootDeviceNode"


def _devnodes(session: Session, what: str) -> DevNodes:
    k = session.kernel
    if k.small:
        raise KdError(f"{what}: {SMALL.format(what='device nodes or device objects')}")
    return DevNodes(k.memory, k.offsets, k.is64)


def devnode_lines(node: DevNode, indent: str) -> list[str]:
    out = [f"{indent}DevNode {node.address:#x} for PDO {node.pdo:#x}"]
    if node.instance_path:
        out.append(f'{indent}  InstancePath is "{node.instance_path}"')
    if node.service_name:
        out.append(f'{indent}  ServiceName is "{node.service_name}"')
    if node.state is not None:
        out.append(f"{indent}  State = {state_name(node.state)} ({node.state:#x})")
    if node.previous_state is not None:
        out.append(f"{indent}  Previous State = {state_name(node.previous_state)} ({node.previous_state:#x})")
    if node.problem:
        out.append(f"{indent}  Problem = {node.problem:#x}")
    return out


@command("!devnode", family="kernel", needs=(needs_memory,),
         syntax="!devnode [Address [Flags [Service]]]",
         summary="Show a PnP device node; 0 is nt!IopRootDeviceNode, Flags 1 adds every child (the device tree), "
                 "Service keeps the nodes of that service",
         example="!devnode 0 1",
         details="Each node: its PDO, InstancePath, ServiceName, State and Previous State (DEVICE_NODE).")
def devnode_(session: Session, inv: Invocation) -> None:
    nodes = _devnodes(session, "!devnode")
    words = inv.args
    service = words[2].lower() if len(words) > 2 else None
    try:
        values = [Evaluator(session).evaluate(w) for w in words[:2]]
    except KdError as e:
        raise CommandError(f"!devnode: {e} (!devnode [Address [Flags]])") from None
    address = values[0] if values else 0
    flags = values[1] if len(values) > 1 else 0
    out = session.out
    if address in (0, 1):  # 1: WinDbg's pending-removal list; kdshell shows the tree
        root_var = session.resolve_symbol(ROOT_SYMBOL)
        if root_var is None:
            raise KdError("!devnode: nt!IopRootDeviceNode is not in the kernel's symbols: give a device node address")
        try:
            address = session.kernel.reader.ptr(root_var)
        except KdError:
            raise KdError(f"!devnode: nt!IopRootDeviceNode ({root_var:x}) is not in the dump") from None
        if not address:
            raise KdError("!devnode: nt!IopRootDeviceNode is NULL: the PnP manager has not made the tree")
        out.line(f"Dumping IopRootDeviceNode (= {address:#x})")
    if not flags & 1 and service is None:
        out.lines(devnode_lines(nodes.node(address), ""))
        return
    tree = nodes.tree(address)
    for depth, node in tree.nodes:
        if service is None or (node.service_name or "").lower() == service:
            out.lines(devnode_lines(node, "  " * depth))
    for w in tree.warnings:
        out.warn(w)


def _power_name(kind: str, value: int | None) -> str:
    if value is None:
        return "?"
    return names()[kind].get(value, str(value))


@command("!podev", family="kernel", needs=(needs_memory,),
         syntax="!podev DeviceObject",
         summary="Show a device object's power state (DEVOBJ_EXTENSION.PowerFlags: system and device state)",
         example="!podev ffffc20c`000001f0")
def podev_(session: Session, inv: Invocation) -> None:
    nodes = _devnodes(session, "!podev")
    if not inv.args:
        raise CommandError("!podev: give a device object address (!podev DeviceObject)")
    try:
        device = Evaluator(session).evaluate(inv.args[0])
    except KdError as e:
        raise CommandError(f"!podev: {e}") from None
    info = nodes.power(device)
    w = 16 if session.kernel.is64 else 8
    driver = "?"
    try:
        d = io_objects(session).device(device)
        driver = d.driver_name or ""
        head = [f" {driver:<24} DriverObject {d.driver:0{w}x}",
                f"Current Irp {d.current_irp:08x} RefCount {d.reference_count} Type {d.device_type:08x} "
                f"DevFlags {d.flags:08x}"]
    except KdError as e:
        head = [f" {e}"]
    flags = info.power_flags
    lines = ["Device object is for:"] + head + [f"Device Object Extension: {info.extension:0{w}x}:"]
    if flags is None:
        lines.append("PowerFlags: ???????? (not in the dump)")
    else:
        active = " dvact" if flags & 0x400 else ""  # POPF_DEVICE_ACTIVE: a device power IRP is active
        lines.append(f"PowerFlags: {flags:08x} =>SystemState={info.system_state} DeviceState={info.device_state}"
                     f"{active}")
        lines.append(f"  ({_power_name('system_power', info.system_state)}, "
                     f"{_power_name('device_power', info.device_state)})")
    lines.append(f"Dope: {info.dope or 0:08x}:")
    if info.devnode:
        lines.append(f"DevNode: {info.devnode:0{w}x}")
    session.out.lines(lines)


# -- !poaction, !pocaps (layouts: WinDbg's, public transcripts of !poaction and !powertriage) ---------
ACTION_STATES = {0: "Idle", 1: "NewRequest", 2: "Callout", 3: "SetSystemState", 4: "Done"}
ACTION_FLAGS = ((0x1, "QueryApps"), (0x2, "UIAllowed"), (0x4, "OverrideApps"), (0x20000000, "LockConsole"),
                (0x40000000, "DisableWakes"), (0x80000000, "Critical"))
IRP_MINORS = {0: "wait/wake", 1: "sequence", 2: "set", 3: "query"}
SYSTEM_SHORT = {0: "Unspecified", 1: "Working", 2: "Sleeping1", 3: "Sleeping2", 4: "Sleeping3", 5: "Hibernate",
                6: "Shutdown"}
SLEEP_STATES = {0: "Sx", 1: "S0", 2: "S1", 3: "S2", 4: "S3", 5: "S4", 6: "S5"}  # !pocaps' wake states


def _power(session: Session, what: str, symbol: str) -> tuple[PowerState, int]:
    k = session.kernel
    if k.small:
        raise KdError(f"{what}: {SMALL.format(what='power manager state')}")
    address = session.resolve_symbol(symbol)
    if address is None:
        raise KdError(f"{what}: {symbol} is not in the kernel's symbols (the kernel's PDB is needed)")
    return PowerState(k.memory, k.offsets, k.is64), address


def _flag_names(flags: int) -> str:
    return "|".join(name for bit, name in ACTION_FLAGS if flags & bit)


@command("!poaction", family="kernel", needs=(needs_memory,), syntax="!poaction",
         summary="Show the power manager's current action (nt!PopAction), the outstanding power IRPs "
                 "(nt!PopIrpList) and the power IRP worker threads",
         example="!poaction")
def poaction_(session: Session, inv: Invocation) -> None:
    power, address = _power(session, "!poaction", "nt!PopAction")
    a = power.action(address).values
    kinds, w = names()["power_action"], 16 if session.kernel.is64 else 8

    def state(value: int | None) -> str:
        return "?" if value is None else SYSTEM_SHORT.get(value, f"{value:#x}")

    minor = a["IrpMinor"]
    flags = a["Flags"] or 0
    out = [f"PopAction: {address:x}",
           f"  State..........: {a['State']:x} - {ACTION_STATES.get(a['State'] or 0, '?')}",
           f"  Updates........: {a['Updates']:x} ",
           f"  Action.........: {kinds.get(a['Action'] or 0, hex(a['Action'] or 0))}",
           f"  Lightest State.: {state(a['LightestState'])}",
           f"  Flags..........: {flags:x} {_flag_names(flags)}".rstrip(),
           f"  Irp minor......: {({2: 'SetPower', 3: 'QueryPower'}).get(minor or 0, '??')}",
           f"  System State...: {state(a['SystemState'])}",
           f"  Hiber Context..: {a['HiberContext'] or 0:0{w}x}", ""]
    irp_list = session.resolve_symbol("nt!PopIrpList")
    if irp_list is not None:
        out.append(f"Allocated power irps (PopIrpList - {irp_list:x})")
        found = power.irps(irp_list)
        for p in found.irps:
            prefix = "D" if p.state_type == 1 else "S"
            kind = IRP_MINORS.get(p.minor, f"{p.minor:x}")
            what = kind if p.minor == 0 else f"{kind}/{prefix}{p.state - 1 if prefix == 'D' else p.state},"
            current = f", CURRENT: {p.current:x}" if p.current else ""
            out.append(f"  IRP: {p.irp:x} ({what}), PDO: {p.pdo:x}{current}")
        if found.warning:
            out.append(f"  {found.warning}")
        out.append("")
    threads = session.resolve_symbol("nt!PopIrpThreadList")
    if threads is not None:
        out.append(f"Irp worker threads (PopIrpThreadList - {threads:x})")
        walk = walk_list(Reader(session.kernel.memory, session.kernel.is64), threads, "nt!PopIrpThreadList")
        out += [f"  THREAD: {t:x} (static)" for t in walk.entries]
        if walk.warning:
            out.append(f"  {walk.warning}")
    session.out.lines(out)


@command("!pocaps", family="kernel", needs=(needs_memory,), syntax="!pocaps",
         summary="Show the machine's power capabilities (nt!PopCapabilities: buttons, sleep states, "
                 "hibernation, throttling, batteries, wake states)",
         example="!pocaps")
def pocaps_(session: Session, inv: Invocation) -> None:
    power, address = _power(session, "!pocaps", "nt!PopCapabilities")
    c = power.capabilities(address)
    v = c.values
    misc = [name for key, name in (("PowerButtonPresent", "PwrButton"), ("SleepButtonPresent", "SlpButton"),
                                   ("LidPresent", "Lid"), ("SystemS1", "S1"), ("SystemS2", "S2"), ("SystemS3", "S3"),
                                   ("SystemS4", "S4"), ("SystemS5", "S5"), ("HiberFilePresent", "HiberFile"),
                                   ("FullWake", "FullWake"), ("VideoDimPresent", "VideoDim"), ("ApmPresent", "APM"),
                                   ("UpsPresent", "UPS")) if v.get(key)]
    processor = []
    if v.get("ThermalControl"):
        processor.append("Thermal")
    if v.get("ProcessorThrottle"):
        processor.append(f"Throttle (MinThrottle = {v.get('ProcessorMinThrottle', 0):02d}%, "
                         f"MaxThrottle = {v.get('ProcessorMaxThrottle', 0):02d}%)")
    battery = [name for key, name in (("SystemBatteriesPresent", "BatteriesPresent"),
                                      ("BatteriesAreShortTerm", "ShortTerm")) if v.get(key)]
    out = [f"PopCapabilities @ {address:#x}",
           f"  Misc Supported Features:  {' '.join(misc)}".rstrip() if misc else "  Misc Supported Features: ",
           f"  Processor Features:       {' '.join(processor)}" if processor else "  Processor Features:      ",
           "  Disk Features:            SpinDown" if v.get("DiskSpinDown") else "  Disk Features:           ",
           f"  Battery Features:         {' '.join(battery)}" if battery else "  Battery Features:        "]
    if v.get("SystemBatteriesPresent"):
        out += [f"    Battery {i} - Capacity: {cap:8x}  Granularity: {gran:8x}"
                for i, (gran, cap) in enumerate(c.batteries)]
    out.append("  Wake Caps")
    for key, label in (("AcOnLineWake", "Ac OnLine Wake:"), ("SoftLidWake", "Soft Lid Wake:"), ("RtcWake", "RTC Wake:"),
                       ("MinDeviceWakeState", "Min Device Wake:"), ("DefaultLowLatencyWake", "Default Wake:")):
        out.append(f"    {label:<24}{SLEEP_STATES.get(v[key], f'{v[key]:#x}')}")
    session.out.lines(out)
