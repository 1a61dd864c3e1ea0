"""What !analyze knows about each bug check, and whom it may blame: tables, no logic beyond lookups.

    rule_for(0x1000007E)          -> Rule(exception_code=0, fault_ip=1, exception_record=2, context_record=3, ...)
    rule_for(0x9F, params)        -> Rule(subtype=True, thread=2, ...) when P1 is 4
    frame_kind("nt", "KiPageFault") -> "skip"       (kdshell/data/blame.txt)
    status_text(0xC0000005)       -> "Access violation"

A Rule says where a bug check's parameters point (windbg.md §2 step 1): a CONTEXT record (.cxr),
an EXCEPTION_RECORD (.exr), a KTRAP_FRAME (.trap), the faulting instruction (whose trap frame is
then found on the stack), a thread, a process, an IRP, a processor -- read from the one roles
table, kdshell/data/bugcheck_params.tsv (kdshell.bugcheck_roles); how the failure bucket is
named; and the verdict when the bug check itself says who is at fault (a manual crash, a hardware
error, pool or memory corruption) instead of the first driver on the stack.

The `_M` codes (0x1000007E ...) use their base code's rule (bugcheck_roles.M_BIT).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from functools import lru_cache
from importlib import resources
from typing import Sequence

from kdshell import bugcheck_roles as roles
from kdshell.bugcheck_roles import base_code

# Verdicts: who the analysis says is at fault.
DRIVER = "driver"                      # the first frame of a driver (or of Windows) on the faulting stack
BAD_IP = "bad_ip"                      # the instruction pointer is outside every module
POOL = "pool_corruption"               # a pool block or header was overwritten: the detector is a victim
MEMORY = "memory_corruption"           # memory-manager structures are inconsistent
HARDWARE = "hardware"                  # the CPU or the platform reported an error
MANUAL = "manual"                      # a person or a tool asked for the crash
CRITICAL_PROCESS = "critical_process"  # a process Windows cannot run without ended
INCONCLUSIVE = "inconclusive"          # no stack to judge from

SKIP, OS, PASS = "skip", "os", "pass"


@dataclass(frozen=True)
class Rule:
    """Where the parameters point (indexes 0-3 into P1..P4) and how the bug check is judged."""

    av: bool = False                      # an access violation: the bucket starts with AV_
    subtype: bool = False                 # P1 selects a subtype: the bucket says 0x19_22_
    exception_code: int | None = None     # the parameter holding an NTSTATUS exception code
    exception_params: tuple[int, int] | None = None  # ExceptionInformation[0..1] given as parameters
    fault_ip: int | None = None           # the faulting instruction (its trap frame is on the stack)
    trap_frame: int | None = None         # a KTRAP_FRAME
    context_record: int | None = None     # a CONTEXT record
    exception_record: int | None = None   # an EXCEPTION_RECORD
    address: int | None = None            # the memory address referenced
    access: tuple[int, str] | None = None  # (parameter, scheme) saying read / write / execute
    thread: int | None = None             # a thread whose stack is the one to read
    irp: int | None = None                # an IRP (the driver holding it is named)
    process: int | None = None            # an EPROCESS (critical process died)
    processor: int | None = None          # the index of the processor whose stack matters
    verdict: str = DRIVER
    trap_on_stack: bool = False           # use the first trap frame found on the crashing stack


# How each bug check is judged; where its parameters point comes from the roles table
# (kdshell/data/bugcheck_params.tsv) in rule_for.
RULES: dict[int, Rule] = {
    0x0A: Rule(av=True),
    0xD1: Rule(av=True),
    0x50: Rule(av=True),
    0xC5: Rule(verdict=POOL),
    0xD0: Rule(verdict=POOL),
    0xBE: Rule(trap_on_stack=True),
    0xFC: Rule(trap_on_stack=True),
    0x7F: Rule(trap_on_stack=True),
    0xEF: Rule(verdict=CRITICAL_PROCESS),
    0xF4: Rule(verdict=CRITICAL_PROCESS),
    0x19: Rule(verdict=POOL),
    0x13A: Rule(verdict=POOL),
    0x1A: Rule(verdict=MEMORY),
    0x4E: Rule(verdict=MEMORY),
    0x124: Rule(verdict=HARDWARE),
    0x9C: Rule(verdict=HARDWARE),
    0x12B: Rule(verdict=HARDWARE),
    0x80: Rule(verdict=HARDWARE),
    0xE2: Rule(verdict=MANUAL),
    0xDEADDEAD: Rule(verdict=MANUAL),
    0x1C8: Rule(verdict=MANUAL),
    0x161: Rule(verdict=MANUAL),
}

# 0xC2 BAD_POOL_CALLER: these subtypes mean a pool header was found damaged (corruption, not a
# bad request by the caller on the stack).
C2_CORRUPTION_SUBTYPES = {0x1, 0x2, 0x4}

# 0x139 KERNEL_SECURITY_CHECK_FAILURE subtypes (the FAST_FAIL_* codes), for the bucket.
FAST_FAIL_NAMES = {
    0x0: "LEGACY_GS_VIOLATION", 0x1: "VTGUARD_CHECK_FAILURE", 0x2: "STACK_COOKIE_CHECK_FAILURE",
    0x3: "CORRUPT_LIST_ENTRY", 0x4: "INCORRECT_STACK", 0x5: "INVALID_ARG", 0x6: "GS_COOKIE_INIT",
    0x7: "FATAL_APP_EXIT", 0x8: "RANGE_CHECK_FAILURE", 0x9: "UNSAFE_REGISTRY_ACCESS",
    0xA: "GUARD_ICALL_CHECK_FAILURE", 0xB: "GUARD_WRITE_CHECK_FAILURE", 0xD: "INVALID_FIBER_SWITCH",
    0xE: "INVALID_SET_OF_CONTEXT", 0xF: "INVALID_REFERENCE_COUNT", 0x12: "INVALID_JUMP_BUFFER",
    0x13: "MRDATA_MODIFIED", 0x1D: "INVALID_BALANCED_TREE",
}

# NTSTATUS exception codes, as WinDbg's .exr names them.
STATUS_TEXT = {
    0x80000002: "Datatype misalignment",
    0x80000003: "Break instruction exception",
    0x80000004: "Single step exception",
    0xC0000005: "Access violation",
    0xC0000006: "In-page I/O error",
    0xC0000008: "Invalid handle",
    0xC000001D: "Illegal instruction",
    0xC0000025: "Cannot continue from exception",
    0xC000008C: "Array bounds exceeded",
    0xC000008E: "Floating-point division by zero",
    0xC0000094: "Integer divide-by-zero",
    0xC0000095: "Integer overflow",
    0xC0000096: "Privileged instruction",
    0xC00000FD: "Stack overflow",
    0xC0000409: "Security check failure or stack buffer overrun",
    0xC0000420: "Assertion failure",
}


def rule_for(code: int, params: Sequence[int] | None = None) -> Rule:
    """The code's Rule, its parameter indexes from the roles table (a role that depends on P1,
    such as 0x9F's thread and IRP, only with `params`)."""
    def one(role: str) -> int | None:
        return roles.parameter(code, role, params)

    info = roles.parameters(code, "exception_info")
    access = one("access")
    if access is not None:
        # every access role names its scheme; "rw" (nonzero: a write) is what a bare one would mean
        access_rule: tuple[int, str] | None = (access, roles.detail(code, "access") or "rw")
    else:
        fixed = roles.detail(code, "address")
        access_rule = (-1, fixed) if fixed else None
    return replace(
        RULES.get(base_code(code), Rule()), subtype=one("subtype") == 0,
        exception_code=one("exception_code"), exception_params=(info[0], info[1]) if len(info) == 2 else None,
        fault_ip=one("fault_ip"), trap_frame=one("trap_frame"), context_record=one("context_record"),
        exception_record=one("exception_record"), address=one("address"), access=access_rule,
        thread=one("thread"), process=one("process"), processor=one("processor"), irp=one("irp"))


def status_text(status: int) -> str:
    return STATUS_TEXT.get(status & 0xFFFFFFFF, "")


def access_kind(rule: Rule, params: tuple[int, ...]) -> str | None:
    """"read", "write" or "execute" for the memory access a bug check describes, or None."""
    if rule.access is None:
        return None
    index, scheme = rule.access
    if index < 0:
        return scheme
    value = params[index]
    if scheme == "bits":      # 0xA/0xD1: bit 0 write, bit 3 execute (0xD1 also says 2 for execute)
        return "execute" if value & 8 or value == 2 else "write" if value & 1 else "read"
    if scheme == "pf50":      # 0x50 on Windows 10+: 0 read, 2 write, 0x10 execute (older: 1 write)
        return "execute" if value & 0x10 else "write" if value & 3 else "read"
    return "write" if value else "read"


# -- who may be blamed (kdshell/data/blame.txt) ----------------------------------------------------
@dataclass(frozen=True)
class _BlameRule:
    module: str
    function: str | None
    kind: str


@lru_cache(maxsize=1)
def blame_rules() -> tuple[_BlameRule, ...]:
    text = resources.files("kdshell").joinpath("data/blame.txt").read_text(encoding="utf-8")
    rules = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) != 2 or words[1] not in (SKIP, OS, PASS):
            raise ValueError(f"kdshell/data/blame.txt line {number}: expected 'PATTERN skip|os|pass'")
        module, _, function = words[0].partition("!")
        rules.append(_BlameRule(module.lower(), function.lower() or None, words[1]))
    # most specific first: function rules, then the longer patterns
    rules.sort(key=lambda r: (r.function is None, -len(r.module) - len(r.function or "")))
    return tuple(rules)


def frame_kind(module: str, function: str | None) -> str | None:
    """"skip", "os", "pass", or None (a driver) for a frame in `module` (at `function`, if known)."""
    m = module.lower()
    f = function.lower() if function else None
    for r in blame_rules():
        if not fnmatch.fnmatchcase(m, r.module):
            continue
        if r.function is None:
            return r.kind
        if f is not None and fnmatch.fnmatchcase(f, r.function):
            return r.kind
    return None
