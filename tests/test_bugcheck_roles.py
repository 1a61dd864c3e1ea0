"""The bug check parameter roles (kdshell/data/bugcheck_params.tsv) against the parameter texts of
the bug check reference (kdshell/data/bugcodes.tsv), and what !analyze, .ecxr and .dump /m read
from them."""
import csv
import re
from importlib import resources

import pytest

from kdshell import bugcheck_roles as R
from kdshell.analysis.rules import rule_for

# What a parameter's reference text says when it has the role (case-insensitive).
ROLE_TEXT = {
    "address": r"^(the )?(memory|memory address|virtual address|address) (referenced|that could not be accessed|"
               r"of the attempted write|for the attempted write|whose execution was attempted|being accessed)",
    "access": r"read.*write|write.*read|access type|operation bits",
    "fault_ip": r"instruction|exception occurred|address (that|in code which) referenced memory|"
                r"execution was attempted",
    "exception_code": r"exception code",
    "exception_info": r"exception record parameter",
    "exception_record": r"exception[ _]record",
    "context_record": r"context record",
    "trap_frame": r"trap frame",
    "irql": r"\bIRQL\b",
    "thread": r"thread",
    "process": r"process|terminating object",
    "irp": r"\bIRP\b",
    "processor": r"processor",
    "subtype": r"type|trap number|^0 = ",
}


def _reference() -> dict[int, dict]:
    text = resources.files("kdshell").joinpath("data/bugcodes.tsv").read_text(encoding="utf-8")
    return {int(r["code"], 16): r for r in csv.DictReader(text.splitlines(), delimiter="\t")}


def _names() -> dict[int, str]:
    text = resources.files("kdshell").joinpath("data/bugcheck_params.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip() and not line.startswith("#")][1:]
    return {int(cells[0], 16): cells[1] for cells in rows}


def test_every_role_agrees_with_the_parameter_text():
    reference = _reference()
    names = _names()
    assert set(ROLE_TEXT) == R.ROLES
    for code, cells in R.table().items():
        assert code in reference, f"{code:#x} is not a bug check code"
        assert names[code] == reference[code]["name"], f"{code:#x}"
        for index, cell in enumerate(cells):
            # a parameter the reference leaves blank may be explained in its notes
            text = reference[code][f"p{index + 1}"] or reference[code]["notes"]
            for role in cell:
                assert re.search(ROLE_TEXT[role.name], text, re.I), (
                    f"{code:#x} P{index + 1} is said to be {role.name}, but the reference says: {text!r}")


def test_every_parameter_naming_the_referenced_address_has_the_address_role():
    """The converse, over every code of the reference: the drift that left 0xC5, 0xD0, 0xCD and
    0xD3 out of .dump /m's table cannot come back."""
    missing = [f"{code:#x} P{i}" for code, row in _reference().items() for i in range(1, 5)
               if re.search(ROLE_TEXT["address"], row[f"p{i}"], re.I) and R.parameter(code, "address") != i - 1]
    assert not missing


def test_lookups():
    assert R.parameter(0x1000007E, "context_record") == R.parameter(0x7E, "context_record") == 3
    assert R.parameters(0x1E, "exception_info") == (2, 3)
    assert R.detail(0xD1, "access") == "bits" and R.detail(0xBE, "address") == "write"
    assert R.parameter(0xFC, "fault_ip") == R.parameter(0xFC, "address") == 0
    assert R.parameter(0x12345, "address") is None
    # a role that holds for one P1 value only
    assert R.parameter(0x9F, "irp") is None and R.parameter(0x9F, "irp", (3, 0, 0, 0)) == 3
    assert R.parameter(0x9F, "thread", (3, 0, 0, 0)) is None and R.parameter(0x9F, "thread", (4, 0, 0, 0)) == 2


@pytest.mark.parametrize("code", [0xC5, 0xD0, 0xCD, 0xD3, 0x100000D1])
def test_analyze_and_the_small_dump_read_the_same_fault_address(code):
    """!analyze's READ/WRITE_ADDRESS and .dump /m's kept paging entries come from one role."""
    rule = rule_for(code)
    assert rule.address == R.parameter(code, "address") == 0
    assert rule.access is not None and rule.access[0] == R.parameter(code, "access")
