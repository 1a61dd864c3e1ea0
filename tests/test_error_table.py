"""kdshell/data/errors.tsv, the table !error reads: a handful of numbers pinned from the public
headers (ntstatus.h, winerror.h; written out here by hand), no number twice within a kind, names
that follow each kind's naming, and bench/check_error_names.py's header reading on lines written
here in the headers' three styles."""
from __future__ import annotations

import importlib.util
import re

import pytest

from conftest import REPO
from kdshell.analysis.codes import lookup

PINNED = [  # kind, number, name: the public headers' values
    ("ntstatus", 0xC0000005, "STATUS_ACCESS_VIOLATION"),
    ("ntstatus", 0xC000000D, "STATUS_INVALID_PARAMETER"),
    ("ntstatus", 0xC0000022, "STATUS_ACCESS_DENIED"),
    ("ntstatus", 0xC0000034, "STATUS_OBJECT_NAME_NOT_FOUND"),
    ("ntstatus", 0xC000009A, "STATUS_INSUFFICIENT_RESOURCES"),
    ("ntstatus", 0xC0000265, "STATUS_TOO_MANY_LINKS"),
    ("ntstatus", 0x80000003, "STATUS_BREAKPOINT"),
    ("win32", 2, "ERROR_FILE_NOT_FOUND"),
    ("win32", 5, "ERROR_ACCESS_DENIED"),
    ("win32", 87, "ERROR_INVALID_PARAMETER"),
    ("win32", 198, "ERROR_INVALID_SEGDPL"),
    ("win32", 277, "ERROR_EA_TABLE_FULL"),
    ("win32", 997, "ERROR_IO_PENDING"),
    ("win32", 10054, "WSAECONNRESET"),
    ("hresult", 0x80070057, "E_INVALIDARG"),
    ("hresult", 0x80004005, "E_FAIL"),
    ("hresult", 0x80070005, "E_ACCESSDENIED"),
    ("hresult", 0x8007000E, "E_OUTOFMEMORY"),
]

PREFIXES = {  # the headers' naming for each kind, as far as the table uses it
    "ntstatus": r"STATUS_[A-Z0-9_]+",
    "win32": r"(ERROR|WAIT|RPC_S)_[A-Z0-9_]+|WSAE[A-Z]+",
    "hresult": r"[SE]_[A-Z0-9_]+|[A-Z0-9]+_[SE]_[A-Z0-9_]+|[A-Z0-9]+_ERROR_[A-Z0-9_]+",
}


def rows() -> list[tuple[str, int, str, str]]:
    out = []
    for line in (REPO / "kdshell" / "data" / "errors.tsv").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            kind, code, name, words = line.split("\t")
            out.append((kind, int(code, 16), name, words))
    return out


@pytest.mark.parametrize("kind,value,name", PINNED)
def test_pinned_codes(kind, value, name):
    hit = lookup(kind, value)
    assert hit is not None and hit[0] == name
    assert [r for r in rows() if r[2] == name] == [(kind, value, name, hit[1])]


def test_no_number_twice_within_a_kind_and_names_follow_the_kind():
    seen: dict[tuple[str, int], str] = {}
    for kind, value, name, words in rows():
        assert (kind, value) not in seen, f"{kind} {value:#x}: {seen[(kind, value)]} and {name}"
        seen[(kind, value)] = name
        assert re.fullmatch(PREFIXES[kind], name), (kind, name)
        assert words.strip() and words == words.strip()
        if kind == "win32":
            assert value < 0x10000, name
        if kind == "hresult" and not name.startswith("S_"):
            assert value >> 31, name  # failure HRESULTs have the severity bit


def load_checker():
    spec = importlib.util.spec_from_file_location("check_error_names", REPO / "bench" / "check_error_names.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checker_reads_the_header_styles_and_flags_wrong_rows():
    checker = load_checker()
    nt = checker.parse_header("#define STATUS_A ((NTSTATUS)0xC0000123L)\n"
                              "#define STATUS_B  ((NTSTATUS) 0x40000001L)    // note\n"
                              "#define STATUS_C STATUS_A\n")
    we = checker.parse_header("#define ERROR_A 12L\n#define ERROR_B __MSABI_LONG(13)\n"
                              "#define E_A _HRESULT_TYPEDEF_(0x80070012L)\n#define S_B ((HRESULT)0x00000000L)\n"
                              "#define ERROR_NAME_ONLY\n")
    assert nt == {"STATUS_A": 0xC0000123, "STATUS_B": 0x40000001, "STATUS_C": 0xC0000123}
    assert we == {"ERROR_A": 12, "ERROR_B": 13, "E_A": 0x80070012, "S_B": 0}
    problems = checker.check([(1, "ntstatus", 0xC0000123, "STATUS_A"), (2, "ntstatus", 0xC0000124, "STATUS_B"),
                              (3, "win32", 12, "ERROR_A"), (4, "win32", 14, "ERROR_GONE"),
                              (5, "hresult", 0x80070012, "E_A"), (6, "hresult", 13, "ERROR_B")], nt, we)
    assert [p.split(":")[0] for p in problems] == ["2", "4", "6"]
