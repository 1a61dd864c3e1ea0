"""!analyze -v for 0x9F P1=3 (a power IRP blocked too long): the IRP's stack locations, as !irp
lists them, with the location being processed (CurrentLocation) marked `>` and each location's
device and driver -- the driver at `>` holds the IRP. Read through kdshell.kernel.io; without the
kernel's types (or the IRP's pages) one line says why.
"""
from __future__ import annotations

from kdshell.errors import KdError
from kdshell.kernel.io import IoObjects, major_name, minor_name
from kdshell.view import SessionView


def irp_stack_lines(session: SessionView, irp_address: int) -> list[str]:
    k = session.kernel
    io = IoObjects(k.memory, k.offsets, k.is64, k.symbol)
    try:
        irp = io.irp(irp_address)
    except KdError as e:
        return [f"IRP_STACK:  {e}", ""]
    w = 16 if k.is64 else 8
    out = [f"IRP_STACK:  {len(irp.locations)} locations, current {irp.current} (>)"]
    for i, sl in enumerate(irp.locations, start=1):
        mark = ">" if i == irp.current else " "
        if not sl.readable:
            out.append(f"   {mark}[location {i} not in the dump]")
            continue
        driver = io.driver_name_of(sl.device)
        out.append(f"   {mark}[{major_name(sl.major)}({sl.major:x}), {minor_name(sl.major, sl.minor)}({sl.minor:x})] "
                   f"{sl.device:0{w}x} {driver}".rstrip())
    if irp.warning:
        out.append(f"    {irp.warning}")
    return out + [""]
