"""Processes in detail: !teb and !peb (user-mode views in the process's address space), !vad.

Thin: kdshell.kernel.userviews reads the fields; the layout is WinDbg's (public transcripts):
`TEB at ADDR` then `    Name:` padded to column 26 and the value (pointers in full width,
`ClientId: pid . tid`), `PEB at ADDR` then `    Name:` padded to column 30 (`Yes`/`No` for the
flags). Without an address: the current thread's TEB (KTHREAD.Teb), the current process's PEB
(EPROCESS.Peb), read in that process's address space. User pages are in complete and active
dumps only: when the TEB or PEB page is absent one line says so.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.dispatch import Invocation, command, needs_memory
from kdshell.errors import CommandError, KdError
from kdshell.expr import Evaluator
from kdshell.kernel.devnodes import VadTree, VadWalk, protection_name
from kdshell.kernel.userviews import UserViews

if TYPE_CHECKING:
    from kdshell.session import Session

ABSENT = ("{what} at {address}: its page is not in the dump (user-mode pages are in complete and active memory "
          "dumps, not in kernel or small memory dumps)")
TEB_ROWS = (("ExceptionList", "NtTib.ExceptionList"), ("StackBase", "NtTib.StackBase"),
            ("StackLimit", "NtTib.StackLimit"), ("SubSystemTib", "NtTib.SubSystemTib"),
            ("FiberData", "NtTib.FiberData"), ("ArbitraryUserPointer", "NtTib.ArbitraryUserPointer"),
            ("Self", "NtTib.Self"), ("EnvironmentPointer", "EnvironmentPointer"))
PEB_FLAGS = ("InheritedAddressSpace", "ReadImageFileExecOptions", "BeingDebugged")


def _p(session: Session, value: int | None) -> str:
    if value is None:
        return "????????"
    return f"{value:016x}" if session.is64 else f"{value:08x}"


def _views(session: Session) -> UserViews:
    k = session.kernel
    return UserViews(k.memory, k.offsets, k.is64)


def _address(session: Session, inv: Invocation) -> int | None:
    if not inv.args:
        return None
    try:
        return Evaluator(session).evaluate(inv.args[0])
    except KdError as e:
        raise CommandError(f"{inv.name}: {inv.args[0]} is not an address ({e})") from None


@command("!teb", family="kernel", needs=(needs_memory,), syntax="!teb [Address]",
         summary="Show a thread environment block (default: the current thread's)",
         example="!teb",
         details="Read in the current process's address space; user pages are in complete and active dumps.")
def teb_(session: Session, inv: Invocation) -> None:
    k = session.kernel
    address = _address(session, inv)
    if address is None:
        current = k.current_thread()
        teb = k.thread(current).teb if current else None
        if not teb:
            raise KdError("!teb: the current thread has no TEB (a system thread runs only in kernel mode)")
        address = teb
    t = _views(session).teb(address)
    if all(v is None for v in t.values()):
        raise KdError(ABSENT.format(what="TEB", address=_p(session, address)))
    out = [f"TEB at {_p(session, address)}"]
    out += [f"    {label + ':':<22}{_p(session, t[name])}" for label, name in TEB_ROWS]
    out.append(f"    {'ClientId:':<22}{_p(session, t['ClientId.UniqueProcess'])} . {_p(session, t['ClientId.UniqueThread'])}")
    out.append(f"    {'RpcHandle:':<22}{_p(session, t['ActiveRpcHandle'])}")
    out.append(f"    {'Tls Storage:':<22}{_p(session, t['ThreadLocalStoragePointer'])}")
    out.append(f"    {'PEB Address:':<22}{_p(session, t['ProcessEnvironmentBlock'])}")
    for label, name in (("LastErrorValue", "LastErrorValue"), ("LastStatusValue", "LastStatusValue"),
                        ("Count Owned Locks", "CountOfOwnedCriticalSections"), ("HardErrorMode", "HardErrorMode")):
        value = t[name]
        out.append(f"    {label + ':':<22}{'????????' if value is None else (f'{value:x}' if name == 'LastStatusValue' else value)}")
    session.out.lines(out)


@command("!peb", family="kernel", needs=(needs_memory,), syntax="!peb [Address]",
         summary="Show a process environment block (default: the current process's)",
         example="!peb",
         details="Read in the current process's address space; user pages are in complete and active dumps.")
def peb_(session: Session, inv: Invocation) -> None:
    k = session.kernel
    address = _address(session, inv)
    if address is None:
        current = k.current_process()
        peb = k.process(current).peb if current else None
        if not peb:
            raise KdError("!peb: the current process has no PEB (System and Idle have none)")
        address = peb
    p = _views(session).peb(address)
    if all(v is None for v in p.values()):
        raise KdError(ABSENT.format(what="PEB", address=_p(session, address)))
    out = [f"PEB at {_p(session, address)}"]
    for name in PEB_FLAGS:
        value = p[name]
        out.append(f"    {name + ':':<26}{'????????' if value is None else ('Yes' if value else 'No')}")
    out.append(f"    {'ImageBaseAddress:':<26}{_p(session, p['ImageBaseAddress'])}")
    flags = p["NtGlobalFlag"]
    out.append(f"    {'NtGlobalFlag:':<26}{'????????' if flags is None else f'{flags:x}'}")
    for label, name in (("Ldr", "Ldr"), ("SubSystemData", "SubSystemData"), ("ProcessHeap", "ProcessHeap"),
                        ("ProcessParameters", "ProcessParameters")):
        out.append(f"    {label + ':':<26}{_p(session, p[name])}")
    for label, name in (("NumberOfProcessors", "NumberOfProcessors"), ("OSMajorVersion", "OSMajorVersion"),
                        ("OSMinorVersion", "OSMinorVersion"), ("OSBuildNumber", "OSBuildNumber"),
                        ("SessionId", "SessionId")):
        value = p[name]
        out.append(f"    {label + ':':<26}{'????????' if value is None else value}")
    session.out.lines(out)


# -- !handle -------------------------------------------------------------------------------------
@command("!handle", family="kernel", needs=(needs_memory,),
         syntax="!handle [Handle [Flags [Process]]]",
         summary="List a process's handles (default: the current process's, every handle)",
         example="!handle 0 3",
         details="Handle 0: every handle. Flags: 2 adds each object's type and counts (default 3). Process: an "
                 "EPROCESS address (default: the current process).")
def handle_(session: Session, inv: Invocation) -> None:
    from kdshell.kernel import objects as OB
    from kdshell.kernel.handles import walk_handles

    k = session.kernel
    ev = Evaluator(session)
    try:
        values = [ev.evaluate(w) for w in inv.args[:3]]
    except KdError as exc:
        raise CommandError(f"!handle: {exc}") from None
    wanted = values[0] if values else 0
    flags = values[1] if len(values) > 1 else 3
    process_address = values[2] if len(values) > 2 else k.current_process()
    if not process_address:
        raise KdError("!handle: no current process")
    process = k.process(process_address)
    table = process.object_table
    unknown = k.process_layout.missing_line(("object_table",)) if table is None else None
    if unknown is not None:  # not "no handle table": where it is is not known (no kernel PDB)
        raise KdError(f"!handle: {unknown}")
    if not table:
        raise KdError(f"!handle: process {_p(session, process_address)} has no handle table")
    code = k.process_layout.get("handle_table_code")
    entries = walk_handles(k.memory, table, code if code is not None else 8, k.is64, k.build)
    if entries is None:
        kind = "a small memory dump keeps none" if k.small else "its pages are not in the dump"
        raise KdError(f"!handle: the handle table at {_p(session, table)} cannot be read ({kind}; a kernel or "
                      "complete memory dump has it)")
    shown = [e for e in entries if not wanted or e.handle == wanted]
    out = [f"PROCESS {_p(session, process_address)}",
           f"    Image: {process.name or '?'}", "",
           f"Handle table at {_p(session, table)} with {len(entries)} entries in use", ""]
    layout = OB.object_layout(k.offsets, k.is64, k.build)
    body_offset = OB.header_address(0, layout, k.is64)  # negative: the header sits before the body
    examples = {name: body for name, body in (("Process", k.current_process()), ("Thread", k.current_thread()))
                if body}
    for e in shown:
        body = (e.header - body_offset) & (0xFFFFFFFFFFFFFFFF if k.is64 else 0xFFFFFFFF)
        out.append(f"{e.handle:04x}: Object: {_p(session, body)}  GrantedAccess: {e.access:08x} Entry: {_p(session, e.entry)}")
        if flags & 2:
            try:
                header = OB.read_object_header(k.memory, body, layout, k.is64)
                otype = OB.object_type(k.memory, header, layout, k.is64, k.build, k.symbol("ObHeaderCookie"),
                                       k.symbol("ObTypeIndexTable"), examples)
                type_name = otype.name or (f"<type index {otype.index}>" if otype.index is not None else "<type unknown>")
                out += [f"Object: {_p(session, body)}  Type: ({_p(session, otype.address)}) {type_name}",
                        f"    ObjectHeader: {_p(session, header.address)} (new version)",
                        f"        HandleCount: {header.handle_count}  PointerCount: {header.pointer_count}"]
            except KdError:
                out.append(f"Object: {_p(session, body)}  (its header is not in the dump)")
        out.append("")
    if wanted and not shown:
        out.append(f"Handle {wanted:x} is not in the table")
    session.out.lines(out)


# -- !vad: the VAD tree ------------------------------------------------------------------------------
# Layout (WinDbg's, public transcripts): a `VAD  Level  Start  End  Commit` header, one line per VAD in
# address order (the VPNs, the commit in pages, Private or Mapped, `Exe` for an image, the protection),
# then the totals.
VAD_HEADER = "VAD             Level         Start             End              Commit"


def vad_walk(session: Session, root: int) -> VadWalk:
    k = session.kernel
    return VadTree(k.memory, k.offsets, k.is64).walk(root)


def vad_root(session: Session, process: int) -> int:
    p = session.kernel.process(process)
    if p.vad_root is None:
        line = session.kernel.process_layout.missing_line(("vad_root",))
        raise KdError(f"!vad: {line or 'EPROCESS.VadRoot of ' + format(process, 'x') + ' is not in the dump'}")
    return p.vad_root


def vad_lines(session: Session, walk: VadWalk) -> list[str]:
    w = 16 if session.is64 else 8
    out = [VAD_HEADER]
    for v in walk.vads:
        kind = "Private" if v.private else "Mapped"
        exe = "Exe" if v.vad_type == 2 else ""
        commit = f"{v.commit:16d}" if v.commit is not None else f"{'?':>16}"
        name = f"  {v.file_name}" if v.file_name else ""
        out.append(f"{v.address:0{w}x} {v.level:2d} {v.start_vpn:>15x} {v.end_vpn:>15x}{commit} "
                   f"{kind:<7} {exe:<4} {protection_name(v.protection)}{name}".rstrip())
    out.append("")
    if walk.vads:
        levels = [v.level for v in walk.vads]
        out.append(f"Total VADs: {len(walk.vads)}, average level: {sum(levels) // len(levels)}, "
                   f"maximum depth: {max(levels)}")
        private = sum(v.commit or 0 for v in walk.vads if v.private)
        shared = sum(v.commit or 0 for v in walk.vads if not v.private)
        out.append(f"Total private commit: {private:#x} pages ({private * 4} KB)")
        out.append(f"Total shared commit:  {shared:#x} pages ({shared * 4} KB)")
    else:
        out.append("Total VADs: 0")
    return out


@command("!vad", family="kernel", needs=(needs_memory,),
         syntax="!vad [VadNode]",
         summary="Show the VAD tree: every virtual address descriptor of the current (or implicit) process, or "
                 "of the subtree at VadNode",
         example="!vad",
         details="MMVAD_SHORT: StartingVpn/EndingVpn (with their high bytes), commit, Private/Mapped, Exe for "
                 "an image, the protection, and a mapped view's file (MMVAD.Subsection -> ControlArea -> "
                 "FilePointer -> FILE_OBJECT.FileName). `.process ADDR` first for another process.")
def vad_(session: Session, inv: Invocation) -> None:
    k = session.kernel
    if k.small:
        raise KdError("!vad: a small memory dump keeps no VADs; a kernel, active or complete memory dump has them")
    address = _address(session, inv)
    if address is None:
        current = k.current_process()
        if not current:
            raise KdError("!vad: the dump gives no current process: give a VAD address")
        address = vad_root(session, current)
        if not address:
            raise KdError(f"!vad: process {current:x} has no VADs (EPROCESS.VadRoot is empty)")
    walk = vad_walk(session, address)
    for warning in walk.warnings:
        session.out.warn(warning)
    session.out.lines(vad_lines(session, walk))
