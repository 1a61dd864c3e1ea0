"""Error codes by number: NTSTATUS, Win32 and HRESULT (kdshell/data/errors.tsv), for !error.

    describe(0xC0000005)        -> ErrorCode("NTSTATUS", 0xC0000005, "STATUS_ACCESS_VIOLATION", "an invalid ...")
    describe(0x80070005)        -> ErrorCode("HRESULT", ..., "E_ACCESSDENIED", "access was denied")
    describe(2)                 -> ErrorCode("Win32", 2, "ERROR_FILE_NOT_FOUND", "the file was not found")

How a bare number is read (WinDbg's !error): below 0x10000 it is a Win32 code; with flags 1 an
NTSTATUS; else a known HRESULT, an HRESULT wrapping a Win32 code (severity 1, FACILITY_WIN32 = 7:
0x8007xxxx) or an NTSTATUS (the N bit, 0x10000000: HRESULT_FROM_NT), else an NTSTATUS. The names
are the public headers'; the descriptions are kdshell's own short words.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

FACILITY_WIN32 = 7
HRESULT_NT_BIT = 0x10000000


@dataclass(frozen=True)
class ErrorCode:
    kind: str            # "NTSTATUS", "Win32" or "HRESULT"
    value: int
    name: str | None     # None: not in the table
    text: str
    via: str = ""        # an HRESULT that wraps another code: "Win32 2", "NTSTATUS 0xc0000005"


@lru_cache(maxsize=1)
def _table() -> dict[tuple[str, int], tuple[str, str]]:
    text = resources.files("kdshell").joinpath("data/errors.tsv").read_text(encoding="utf-8")
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            kind, code, name, words = line.split("\t")
            out[(kind, int(code, 16))] = (name, words)
    return out


def lookup(kind: str, value: int) -> tuple[str, str] | None:
    """(name, words) of a code of one kind: "ntstatus", "win32" or "hresult"."""
    return _table().get((kind, value & 0xFFFFFFFF))


def _known(kind: str, label: str, value: int) -> ErrorCode | None:
    hit = lookup(kind, value)
    return ErrorCode(label, value, *hit) if hit else None


def describe(value: int, flags: int = 0) -> ErrorCode:
    value &= 0xFFFFFFFF
    if flags & 1:
        return _known("ntstatus", "NTSTATUS", value) or ErrorCode("NTSTATUS", value, None, "")
    if value < 0x10000:
        return _known("win32", "Win32", value) or ErrorCode("Win32", value, None, "")
    found = _known("hresult", "HRESULT", value)
    if found:
        return found
    if value >> 31 and (value >> 16) & 0x1FFF == FACILITY_WIN32 and not value & HRESULT_NT_BIT:
        inner = lookup("win32", value & 0xFFFF)
        return ErrorCode("HRESULT", value, inner[0] if inner else None, inner[1] if inner else "",
                         via=f"Win32 {value & 0xFFFF}")
    if value >> 31 and value & HRESULT_NT_BIT:
        status = value & ~HRESULT_NT_BIT
        inner = lookup("ntstatus", status)
        return ErrorCode("HRESULT", value, inner[0] if inner else None, inner[1] if inner else "",
                         via=f"NTSTATUS {status:#x}")
    return _known("ntstatus", "NTSTATUS", value) or ErrorCode("NTSTATUS", value, None, "")


def error_line(code: ErrorCode) -> str:
    """WinDbg's layout: `Error code: (NTSTATUS) 0xc0000005 (3221225477) - text`."""
    head = f"Error code: ({code.kind}) {code.value:#x} ({code.value})"
    if code.name is None:
        return f"{head} - <Unable to get error code text>" + (f" ({code.via})" if code.via else "")
    via = f" ({code.via} as an HRESULT)" if code.via else ""
    return f"{head} - {code.name}{via}: {code.text}"
