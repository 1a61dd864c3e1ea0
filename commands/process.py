"""Processes in detail: !teb and !peb (user-mode views in the process's address space).

Thin: kdshell.kernel.userviews reads the fields; the layout is WinDbg's (public transcripts):
`TEB at ADDR` then `    Name:` padded to column 26 and the value (pointers in full width,
`ClientId: pid . tid`), `PEB at ADDR` then `    Name:` padded to column 30 (`Yes`/`No` for the
flags). Without an address: the current thread's TEB (KTHREAD.Teb), the current process's PEB
(EPROCESS.Peb), read in that process's address space. User pages are in complete and active
dumps only: when the TEB or PEB page is absent one line says so.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.dispatch import Invocation, command, needs_memory, not_on_arm64
from kdshell.errors import CommandError, KdError
from kdshell.expr import Evaluator
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


@command("!teb", family="kernel", needs=(needs_memory, not_on_arm64("!teb")), syntax="!teb [Address]",
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


@command("!peb", family="kernel", needs=(needs_memory, not_on_arm64("!peb")), syntax="!peb [Address]",
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
