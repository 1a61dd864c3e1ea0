"""I/O request and PnP extensions: !irpfind.

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
from kdshell.commands.pool import ARM64_WHY, SMALL, kernel_pool
from kdshell.dispatch import Invocation, command, needs_memory, not_on_arm64
from kdshell.errors import KdError
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


@command("!irpfind", family="kernel", needs=(needs_memory, not_on_arm64("!irpfind", ARM64_WHY)), syntax="!irpfind [PoolType]",
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
            driver = ""
            if sl.device:
                try:
                    driver = io.device(sl.device).driver_name or ""
                except KdError:
                    driver = "?"
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
