"""Error codes and driver checks: !error (NTSTATUS, Win32, HRESULT by number) and !verifier
(Driver Verifier's flags, counters and verified drivers, from the kernel's variables).

!error prints WinDbg's line, `Error code: (NTSTATUS) 0xc0000005 (3221225477) - ...`, with the
header's symbolic name and kdshell's own short description (kdshell.analysis.codes).

!verifier reads nt!MmVerifierData (the level -- verifier.exe's /flags -- and the pool counters)
and nt!MmVerifyDriverBuffer (the verified drivers' names as the registry's VerifyDrivers value
gave them). Both need the kernel's symbols and the pages in the dump: a small dump has neither,
and then one line says so.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.analysis.codes import describe, error_line
from kdshell.dispatch import Invocation, command, needs_memory
from kdshell.errors import CommandError, KdError, MemoryNotPresent
from kdshell.expr import Evaluator
from kdshell.kernel.verifier import (flag_lines, read_verified_drivers, read_verifier, statistics_lines,
                                     verifier_layout)

if TYPE_CHECKING:
    from kdshell.session import Session



@command("!error", family="analysis", syntax="!error Value [Flags]",
         summary="Name an NTSTATUS, Win32 or HRESULT error code",
         example="!error c0000005",
         details="A value below 0x10000 is a Win32 code; Flags 1 reads it as an NTSTATUS. An HRESULT that "
                 "wraps a Win32 code (0x8007xxxx) or an NTSTATUS (0xDxxxxxxx) names the wrapped code.")
def error_(session: Session, inv: Invocation) -> None:
    if not inv.args:
        raise CommandError("!error: give an error code (for example !error c0000005)")
    try:
        value = Evaluator(session).evaluate(inv.args[0])
        flags = Evaluator(session).evaluate(inv.args[1]) if len(inv.args) > 1 else 0
    except KdError as e:
        raise CommandError(f"!error: {' '.join(inv.args)} is not a number ({e})") from None
    session.out.line(error_line(describe(value, flags)))


def _need(session: Session, name: str) -> int:
    at = session.kernel.symbol(name)
    if at is None:
        raise KdError(f"!verifier: nt!{name} is not known (neither the kernel's symbols nor its KDBG name it): "
                      "Driver Verifier's state cannot be read from this dump")
    return at


@command("!verifier", family="analysis", needs=(needs_memory,), syntax="!verifier",
         summary="Show Driver Verifier's flags, pool counters and verified drivers",
         example="!verifier",
         details="From nt!MmVerifierData and nt!MmVerifyDriverBuffer: needs the kernel's symbols and a "
                 "kernel or complete dump.")
def verifier_(session: Session, inv: Invocation) -> None:
    k = session.kernel
    at = _need(session, "MmVerifierData")
    try:
        data = read_verifier(k.memory, at, verifier_layout(k.offsets, k.build), k.is64)
    except MemoryNotPresent:
        raise KdError(f"!verifier: nt!MmVerifierData ({at:#x}) is not in the dump (a small dump keeps it only "
                      "sometimes; a kernel or complete dump does)") from None
    lines = flag_lines(data.level) + statistics_lines(data) + ["", "  Driver Verification List", "  " + "-" * 24]
    buffer_at, length_at = k.symbol("MmVerifyDriverBuffer"), k.symbol("MmVerifyDriverBufferLength")
    drivers = (None if buffer_at is None or length_at is None
               else read_verified_drivers(k.memory, buffer_at, length_at, k.is64))
    if drivers is None:
        lines.append("  (nt!MmVerifyDriverBuffer is not in the dump)")
    elif not drivers:
        lines.append("  (no driver named: " + ("none verified" if not data.level else "all drivers or a random "
                                                "set, as the level says") + ")")
    else:
        lines += [f"  MODULE: {name}" for name in drivers]
    if not data.level:
        lines.insert(0, "Driver Verifier is not enabled (level 0).")
    session.out.lines(lines)
