"""!analyze -v for 0x133 DPC_WATCHDOG_VIOLATION: what the parameters say (a single DPC over its
allotment, P1=0, with its run time and limit in ticks; or too long at DISPATCH_LEVEL, P1=1) and
where: the processor that bug-checked and the DPC routine -- the crashing processor's
KPRCB.CurrentDpcRoutine where the kernel's types have it (what the watchdog measured), else the
function nt!KiExecuteAllDpcs called on the crashing stack (a tail call can hide it there).
"""
from __future__ import annotations

from typing import Any

from kdshell.errors import KdError
from kdshell.kernel.queues import running_dpc_routine
from kdshell.view import SessionView

DPC_DISPATCHERS = ("KiExecuteAllDpcs", "KiExecuteDpc")  # nt's routines that call a DPC routine
TIMEOUT_TYPE = {0: "SINGLE_DPC_TIMEOUT_EXCEEDED", 1: "DPC_QUEUE_EXECUTION_TIMEOUT_EXCEEDED"}


def dpc_fields(session: SessionView, code: int, params: Any, stack: Any) -> list[tuple[str, str]]:
    if code != 0x133 or len(params) < 4:
        return []
    p1, p2, p3 = params[0], params[1], params[2]
    out = [("DPC_TIMEOUT_TYPE", TIMEOUT_TYPE.get(p1, f"{p1:x}"))]
    if p1 == 0:
        out += [("DPC_RUNTIME", f"{p2:x}"), ("DPC_TIME_LIMIT", f"{p3:x}")]
    elif p1 == 1:
        out.append(("DPC_WATCHDOG_PERIOD", f"{p2:x}"))
    routine = None
    try:
        k = session.kernel
        number = k.crashing_processor
        out.append(("DPC_PROCESSOR", str(number)))
        routine = running_dpc_routine(k.memory, k.offsets, k.is64, k.processor(number).prcb)
    except KdError:
        pass
    if routine:
        out.append(("DPC_ROUTINE", session.symbols.name_at(routine) or f"{routine:x}"))
        return out
    names = [session.symbols.name_at(f.ip) or "" for f in stack]
    for i, name in enumerate(names):
        function = name.split("+", 1)[0]
        if i and function.split("!", 1)[-1] in DPC_DISPATCHERS and names[i - 1]:
            out.append(("DPC_ROUTINE", names[i - 1].split("+", 1)[0]))
            break
    return out
