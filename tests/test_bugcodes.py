"""The bug check table: complete, without duplicates, and readable from the installed package."""
import csv
from importlib import resources

from kdshell.analysis import bugcodes


def rows():
    text = resources.files("kdshell").joinpath("data/bugcodes.tsv").read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines(), delimiter="\t"))


def test_no_duplicate_codes_or_names():
    codes = [int(r["code"], 16) for r in rows()]
    assert len(codes) == len(set(codes))
    names = [r["name"] for r in rows()]
    assert len(names) == len(set(names))
    assert all(n and n == n.strip() and n.upper() == n for n in names)


def test_no_holes_in_the_classic_range():
    # Every code from 0x1 to 0x100 that Microsoft documents is there: the table's gaps are only
    # the codes the reference leaves unassigned. Pin the count and a sample so a lost row shows.
    codes = {int(r["code"], 16) for r in rows()}
    assert len(bugcodes.table()) == len(rows()) >= 420
    for code in (0x1, 0xA, 0x1E, 0x3B, 0x50, 0x7E, 0x7F, 0x8E, 0x9F, 0xC2, 0xC4, 0xC5, 0xD1, 0xE2, 0xEF,
                 0x124, 0x133, 0x139, 0x1A):
        assert code in codes, hex(code)


def test_lookup_and_titles():
    d1 = bugcodes.lookup(0xD1)
    assert d1.name == "DRIVER_IRQL_NOT_LESS_OR_EQUAL" and d1.curated
    assert d1.parameters[0] == "memory referenced"
    assert bugcodes.describe(0xD1) == "DRIVER_IRQL_NOT_LESS_OR_EQUAL (d1)"
    # The _M variant keeps its own name and borrows the parameter meanings when it has none.
    m = bugcodes.lookup(0x1000007E)
    assert m.name == "SYSTEM_THREAD_EXCEPTION_NOT_HANDLED_M"
    assert m.parameters[3].startswith("address of the CONTEXT record")
    assert bugcodes.describe(0xDEADDEAD) == "MANUALLY_INITIATED_CRASH1 (deaddead)"
    assert bugcodes.describe(0xABCDEF) == "UNKNOWN_BUGCHECK_CODE (abcdef)"
