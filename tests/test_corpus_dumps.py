"""The real dumps written by Windows: header facts, triage contents, the truncated file."""
import pytest

from conftest import FULL_TRUNCATED, MINI_17763, TRIAGE_19041
from kdshell.dumpfile.dump import open_dump
from kdshell.errors import MemoryNotPresent


def test_triage_19041_header():
    with open_dump(TRIAGE_19041) as d:
        h = d.header
        assert d.is64 and d.dump_type == 4 and d.is_small
        assert h.build == 19041 and h.major_version == 0xF
        assert h.number_processors == 16
        assert h.bugcheck_code == 0x1000007E
        assert h.bugcheck_parameters == (0xFFFFFFFFC0000005, 0xFFFFF8048B58334C, 0xFFFF850429891EE8, 0xFFFF850429891720)
        assert h.kd_debugger_data_block == 0xFFFFF8047C600B20
        assert h.ps_loaded_module_list == 0xFFFFF8047C62A390
        assert h.attributes is None  # still the "PAGE" fill: absent, not a value
        assert h.comment == ""
        regs = d.registers()
        assert regs["rip"] == 0xFFFFF8048B58334C and regs["rsp"] == 0xFFFF850429892120
        assert d.warnings == []


def test_triage_19041_drivers_and_memory():
    with open_dump(TRIAGE_19041) as d:
        t = d.triage
        assert len(t.drivers) == 0x97
        nt = t.drivers[0]
        assert nt.name == r"\SystemRoot\system32\ntoskrnl.exe"
        assert nt.base == 0xFFFFF8047BA00000 and nt.size == 0x1046000
        amdppm = [x for x in t.drivers if x.name.lower().endswith("amdppm.sys")]
        # The symbol store key of the corpus image is TimeDateStamp + SizeOfImage: c9c030003b000
        assert amdppm and f"{amdppm[0].timestamp:x}{amdppm[0].size:x}" == "c9c030003b000"
        assert [u.name for u in t.unloaded] == ["dam.sys", "WdBoot.sys", "hwpolicy.sys", "mcupdate.dll"]
        # The KDBG copy is mapped at the header's KdDebuggerDataBlock.
        assert t.memory.read(0xFFFFF8047C600B20 + 0x10, 4) == b"KDBG"
        # The stack starts at TopOfStack and holds the context's RSP.
        assert t.memory.find(0xFFFF850429892120).source == "stack"
        assert t.memory.readable(0xFFFF850429890EE8, 0x2118)
        with pytest.raises(MemoryNotPresent):
            t.memory.read(0xFFFF850429890EE8 - 8, 8)
        assert len(d.blobs()) == 20


def test_mini_17763():
    with open_dump(MINI_17763) as d:
        assert d.header.build == 17763 and d.header.number_processors == 8
        t = d.triage
        assert len(t.drivers) == 0x6C and t.drivers[0].name == "ntoskrnl.exe"
        assert t.drivers[0].base == 0xFFFFF8044A203000
        assert [u.name for u in t.unloaded] == ["dam.sys", "WdBoot.sys", "hwpolicy.sys"]
        # 40 data blocks; one overlaps the stack copy, which wins.
        assert t.memory.overlaps >= 1
        assert t.memory.read(0xFFFFF8044A6005E0 + 0x10, 4) == b"KDBG"
        tags = [b.tag_text for b in d.blobs()]
        assert "270a33fd-3da6-460d-ba89-3c1bae21e39b" in tags


def test_truncated_full_dump_opens_with_warning():
    with open_dump(FULL_TRUNCATED) as d:
        assert d.dump_type == 1 and d.header.build == 19045
        assert any("truncated" in w for w in d.warnings)
        runs = list(d.physical.present_runs())
        assert runs[0] == (2, 158)
        # Only the first two pages of the first run fit in the 16 KiB file.
        assert d.physical.has(2) and d.physical.has(3) and not d.physical.has(4)
        assert len(d.physical.page(2)) == 0x1000
        with pytest.raises(MemoryNotPresent, match="truncated"):
            d.physical.page(4)
        with pytest.raises(MemoryNotPresent, match="not present"):
            d.physical.page(0)
