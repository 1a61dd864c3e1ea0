"""Which bug check parameter means what: the one table (kdshell/data/bugcheck_params.tsv) that
!analyze, the register context and `.dump /m` all read.

    parameter(0xD0, "address")                 -> 0     (P1: the memory referenced)
    parameter(0x1000007E, "context_record")    -> 3     (an _M code reads as its base code)
    parameter(0x9F, "irp", (3, 0, 0, 0))       -> 3     (a role that holds only for P1 = 3)
    parameters(0x1E, "exception_info")         -> (2, 3)
    detail(0xD1, "access")                     -> "bits"

Indexes are 0-based (P1 is 0). Only the standard library here: every floor may ask.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Sequence

M_BIT = 0x10000000  # 0x1000007E ...: the same bug check as 0x7E, raised by another kernel path

ROLES = frozenset((
    "address", "access", "fault_ip", "exception_code", "exception_info", "exception_record",
    "context_record", "trap_frame", "irql", "thread", "process", "irp", "processor", "subtype",
))


@dataclass(frozen=True)
class Role:
    name: str
    detail: str | None = None  # access: the scheme; address: the fixed kind of access
    when: int | None = None    # the role holds only when P1 is this value


def base_code(code: int) -> int:
    """0x1000007E -> 0x7E (the `_M` codes behave as their base code)."""
    return code & ~M_BIT if code & 0xF0000000 == M_BIT else code


def _parse_cell(cell: str, where: str) -> tuple[Role, ...]:
    roles = []
    for word in cell.split(","):
        word = word.strip()
        if word in ("", "-"):
            continue
        word, _, when = word.partition("@")
        name, _, detail = word.partition(":")
        if name not in ROLES:
            raise ValueError(f"kdshell/data/bugcheck_params.tsv {where}: unknown role '{name}'")
        roles.append(Role(name, detail or None, int(when, 0) if when else None))
    return tuple(roles)


@lru_cache(maxsize=1)
def table() -> dict[int, tuple[tuple[Role, ...], ...]]:
    """code -> the roles of P1..P4."""
    text = resources.files("kdshell").joinpath("data/bugcheck_params.tsv").read_text(encoding="utf-8")
    out: dict[int, tuple[tuple[Role, ...], ...]] = {}
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for number, line in enumerate(lines[1:], 2):  # the first is the column names
        cells = line.split("\t")
        if len(cells) != 6:
            raise ValueError(f"kdshell/data/bugcheck_params.tsv row {number}: expected 6 columns")
        out[int(cells[0], 16)] = tuple(_parse_cell(c, f"row {number}") for c in cells[2:])
    return out


def roles(code: int) -> tuple[tuple[Role, ...], ...]:
    """The roles of P1..P4 (four empty tuples for a code the table does not list)."""
    return table().get(base_code(code), ((), (), (), ()))


def _matches(role: Role, name: str, params: Sequence[int] | None) -> bool:
    if role.name != name:
        return False
    return role.when is None or (params is not None and len(params) > 0 and params[0] == role.when)


def parameters(code: int, name: str, params: Sequence[int] | None = None) -> tuple[int, ...]:
    """The indexes of the parameters with role `name`, in order. A role that holds only for
    one P1 value counts only when `params` (the bug check's parameters) has that P1."""
    return tuple(i for i, cell in enumerate(roles(code)) if any(_matches(r, name, params) for r in cell))


def parameter(code: int, name: str, params: Sequence[int] | None = None) -> int | None:
    """The index of the first parameter with role `name`, or None."""
    found = parameters(code, name, params)
    return found[0] if found else None


def detail(code: int, name: str) -> str | None:
    """The detail of the first parameter with role `name` (an access scheme, a fixed access kind)."""
    for cell in roles(code):
        for r in cell:
            if r.name == name and r.detail:
                return r.detail
    return None
