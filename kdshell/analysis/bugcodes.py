"""The bug check knowledge base: names and parameter meanings of every bug check code.

The table is package data (kdshell/data/bugcodes.tsv: code, name, p1..p4, notes, source), read
once on first use. The `_M` codes (0x1000007E ...) are the same bug checks as their low 16 bits'
code, raised by a different kernel path; their parameters mean the same.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from kdshell.bugcheck_roles import base_code


@dataclass(frozen=True)
class BugCheck:
    code: int
    name: str
    parameters: tuple[str, str, str, str]  # what P1..P4 mean ("" when unknown or unused)
    notes: str
    curated: bool  # summarised by hand from the reference page (the common codes)


@lru_cache(maxsize=1)
def table() -> dict[int, BugCheck]:
    text = resources.files("kdshell").joinpath("data/bugcodes.tsv").read_text(encoding="utf-8")
    rows = csv.DictReader(text.splitlines(), delimiter="\t")
    out: dict[int, BugCheck] = {}
    for row in rows:
        code = int(row["code"], 16)
        p = [(row.get(f"p{i}") or "").strip() for i in range(1, 5)]
        out[code] = BugCheck(code, row["name"].strip(), (p[0], p[1], p[2], p[3]), (row.get("notes") or "").strip(),
                             "curated" in (row.get("source") or ""))
    return out


def lookup(code: int) -> BugCheck | None:
    """The entry for `code`; an `_M` code without its own parameter text borrows its base's."""
    t = table()
    entry = t.get(code)
    base = t.get(base_code(code)) if base_code(code) != code else None
    if entry is not None and base is not None and not any(entry.parameters):
        return BugCheck(code, entry.name, base.parameters, entry.notes or base.notes, base.curated)
    return entry or base


def describe(code: int) -> str:
    """`DRIVER_IRQL_NOT_LESS_OR_EQUAL (d1)`, as !analyze titles a bug check."""
    entry = lookup(code)
    return f"{entry.name if entry else 'UNKNOWN_BUGCHECK_CODE'} ({code:x})"
