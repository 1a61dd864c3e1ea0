"""I/O request, PnP and power extensions: !irpfind, !devnode, !podev, !poaction.

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
from kdshell.commands.pool import SMALL, kernel_pool
from kdshell.dispatch import Invocation, command, needs_memory, not_on_arm64
from kdshell.errors import CommandError, KdError
from kdshell.expr import Evaluator
from kdshell.kernel.devnodes import DevNode, DevNodes, names, state_name
from kdshell.kernel.pool import PoolBlock, PoolError, tag_value

if TYPE_CHECKING:
    from kdshell.session import Session

IRP_TAG = tag_value("Irp ")
HEADER = "Irp    [ Thread ] irpStack: (Mj,Mn)   DevObj  [Driver]         MDL Process"


def irp_blocks(session: Session) -> tuple[list[int], list[str]]:
    """The addresses of the allocated IRPs in the pool, and the lines saying where kdshell looked."""
    pool = kernel_pool(session)
    is64 = session.kernel.is64
    notes = [f"Scanning large pool allocation table for tag {IRP_TAG:#x} (Irp )"]
    found: list[int] = []

    def want(b: PoolBlock) -> bool:
        return b.tag & 0x7FFFFFFF == IRP_TAG and b.allocated

    try:
        found += [b.address for b in pool.big_pages() if want(b)]
    except PoolError as e:
        notes.append(str(e))
    span = pool.nonpaged_range()
    if span is not None:
        w = 16 if is64 else 8
        notes.append(f"Searching nonpaged pool ({span[0]:0{w}x} : {span[1]:0{w}x}) for tag {IRP_TAG:#x} (Irp )")
        blocks, note = pool.scan_small(want)
        found += [b.address + pool.header.size for b in blocks]
        if note:
            notes.append(note)
    else:
        notes.append("The kernel keeps no nonpaged pool range (nt!MmNonPagedPoolStart/End): only the large pool "
                     "table was searched")
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


@command("!devnode", family="kernel", needs=(needs_memory, not_on_arm64("!devnode", "kdshell reads device nodes at "
                                                                        "their x64 and x86 layouts only")),
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


@command("!podev", family="kernel", needs=(needs_memory, not_on_arm64("!podev", "kdshell reads device objects at "
                                                                      "their x64 and x86 layouts only")),
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
        lines.append(f"PowerFlags: {flags:08x} =>SystemState={info.system_state} DeviceState={info.device_state}")
        lines.append(f"  ({_power_name('system_power', info.system_state)}, "
                     f"{_power_name('device_power', info.device_state)})")
    lines.append(f"Dope: {info.dope or 0:08x}:")
    if info.devnode:
        lines.append(f"DevNode: {info.devnode:0{w}x}")
    session.out.lines(lines)


@command("!poaction", family="kernel", needs=(needs_memory,), syntax="!poaction",
         summary="Show the power manager's current action (nt!PopAction), as far as the kernel's symbols describe it",
         example="!poaction")
def poaction_(session: Session, inv: Invocation) -> None:
    k = session.kernel
    if k.small:
        raise KdError(f"!poaction: {SMALL.format(what='power manager state')}")
    address = session.resolve_symbol("nt!PopAction")
    if address is None:
        raise KdError("!poaction: nt!PopAction is not in the kernel's symbols (a kernel PDB with the power "
                      "manager's variables is needed)")
    offsets = k.offsets
    fields = {name: offsets.offset("_POP_POWER_ACTION", name) for name in ("Updates", "State", "Action")}
    if any(v is None for v in fields.values()):
        raise KdError("!poaction: the kernel's types do not describe _POP_POWER_ACTION (load the kernel's PDB)")
    kinds = names()["power_action"]
    r = k.reader
    try:
        state, updates = r.uint(address + (fields["State"] or 0), 1), r.uint(address + (fields["Updates"] or 0), 1)
        action = r.uint(address + (fields["Action"] or 0), 4)
    except KdError:
        raise KdError(f"!poaction: nt!PopAction ({address:x}) is not in the dump") from None
    session.out.lines([f"PopAction: {address:x}", f"  State..........: {state:x}",
                       f"  Updates........: {updates:x}", f"  Action.........: {kinds.get(action, hex(action))}"])
