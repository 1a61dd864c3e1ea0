"""Automatic pseudo-registers kdshell.expr leaves to the session: the bug check ($bug_code,
$bug_param1..4), the current frame's return address ($ra) and instruction ($scopeip), the
current process and thread ids ($tpid, $tid), the kernel's entry point ($exentry), and $u0..$u9
are aliases (not here). $ip, $csp, $retreg, $ptrsize, $pagesize, $proc, $thread, $prcb, $peb and
$teb are kdshell.expr's and the kernel layer's."""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.errors import KdError

if TYPE_CHECKING:
    from kdshell.session import Session

NAMES = ("$bug_code", "$bug_param1", "$bug_param2", "$bug_param3", "$bug_param4", "$ra", "$scopeip",
         "$tpid", "$tid", "$exentry", "$dumptype")


def automatic(session: Session, name: str) -> int | None:
    n = name.lower()
    if n not in NAMES:
        return None
    header = session.dump.header
    if n == "$bug_code":
        return int(header.bugcheck_code)
    if n.startswith("$bug_param"):
        params = list(header.bugcheck_parameters)
        i = int(n[-1]) - 1
        return int(params[i]) if i < len(params) else 0
    try:
        if n in ("$ra", "$scopeip"):
            frames = session.context.walk(2)
            if not frames:
                return None
            return int(frames[0].ip) if n == "$scopeip" else int(frames[0].ret or 0)
        kernel = session.kernel
        if n == "$tpid":
            proc = kernel.current_process()
            return kernel.process(proc).pid if proc else None
        if n == "$tid":
            thread = kernel.current_thread()
            return kernel.thread(thread).tid if thread else None
        if n == "$exentry":
            base = session.kernel_base
            memory = session.memory
            if base is None or memory is None:
                return None
            pe = base + int.from_bytes(memory.read(base + 0x3C, 4), "little")
            return base + int.from_bytes(memory.read(pe + 0x28, 4), "little")
    except KdError:
        return None
    return None
