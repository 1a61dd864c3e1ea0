"""Write every kind of dump with kdshell.dumpfile.write, open it with open_dump, compare."""
from __future__ import annotations

import os
import struct
import tracemalloc
import uuid

import pytest

from dumpfactory import (
    KINDS,
    PAGE,
    PHYSICAL_KINDS,
    default_fields,
    default_triage_parts,
    make_pages,
    page_bytes,
    write_kind,
)
from kdshell.dumpfile import write as W
from kdshell.dumpfile import write_triage as WT
from kdshell.dumpfile.dump import open_dump
from kdshell.dumpfile.header import (
    BITMAP_DUMP_HEADER64,
    FULL_RDMP_HEADER64,
    KERNEL_RDMP_HEADER64,
    TRIAGE_DUMP32,
    TRIAGE_DUMP64,
)
from kdshell.errors import KdError, MemoryNotPresent

PFNS = [1, 2, 3, 0x10, 0x11, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x200]
ABSENT = [0, 4, 0xF, 0x12, 0x3F, 0x49, 0x1FF, 0x201, 0x12345, 1 << 36]
BLOBS = [
    (uuid.UUID("bf2297dc-34ba-11dc-868a-e19155d89593"), b"secondary data \x00\x01" * 50),
    ("12345678-1234-5678-9abc-def012345678", b""),
    (bytes(range(16)), b"odd" * 1365),  # 4095 bytes: PostPad keeps the next header aligned
    (uuid.UUID("67fc721a-2852-4f62-a3b1-2afc53953777"), b"\xff" * 4096),
]
TYPE = {"full": 1, "full32": 1, "bitmap5": 5, "bitmap6": 6, "rdmp8": 8, "rdmp9": 9, "rdmp10": 10,
        "triage": 4, "triage32": 4}


def _runs(pfns):
    runs = []
    for pfn in sorted(pfns):
        if runs and runs[-1][0] + runs[-1][1] == pfn:
            runs[-1][1] += 1
        else:
            runs.append([pfn, 1])
    return [tuple(r) for r in runs]


@pytest.mark.parametrize("kind", KINDS)
def test_header_facts(tmp_path, kind):
    path = write_kind(tmp_path, kind, make_pages(PFNS), blobs=BLOBS)
    f = default_fields(is64=not kind.endswith("32"))
    with open_dump(path) as d:
        h = d.header
        assert d.warnings == []
        assert d.dump_type == TYPE[kind] and d.is64 == f.is64
        assert h.machine == (0x8664 if f.is64 else 0x14C)
        assert h.major_version == 0xF and h.build == f.build
        assert h.bugcheck_code == f.bugcheck_code
        assert h.bugcheck_parameters == tuple(f.bugcheck_parameters)
        assert h.directory_table_base == f.directory_table_base
        assert h.pfn_database == f.pfn_database
        assert h.ps_loaded_module_list == f.ps_loaded_module_list
        assert h.ps_active_process_head == f.ps_active_process_head
        assert h.kd_debugger_data_block == f.kd_debugger_data_block
        assert h.number_processors == f.number_processors
        assert h.comment == "kdshell test dump"
        assert h.system_time == f.system_time and h.system_uptime == f.system_uptime
        assert h.system_datetime.year == 2024
        assert (h.product_type, h.suite_mask, h.attributes, h.boot_id) == (1, 0x110, 0x8, 0x7D)
        assert h.required_dump_space == os.path.getsize(path) == d.size
        # Fields the writer was not given keep the "PAGE" fill and read as absent.
        assert h.writer_status is None and h.kd_secondary_version is None
        if not f.is64:
            assert h.pae_enabled
        if kind.startswith("triage"):
            assert d.is_small and d.physical is None
        else:
            assert h.minidump_fields is None and h.secondary_data_state is None


@pytest.mark.parametrize("kind", KINDS)
def test_registers_and_exception(tmp_path, kind):
    is64 = not kind.endswith("32")
    f = default_fields(is64=is64)
    path = write_kind(tmp_path, kind, make_pages(PFNS))
    with open_dump(path) as d:
        regs = d.registers()
        if is64:
            assert regs["rip"] == 0xFFFFF8047C1D2F30 and regs["rsp"] == 0xFFFFF80412345F00
            assert (regs["rax"], regs["rcx"], regs["rdx"], regs["rbx"]) == (0x1111, 0x2222, 0x3333, 0x4444)
            assert (regs["r8"], regs["r15"], regs["rbp"]) == (8, 15, 0xFFFFF80412345F80)
            assert regs["efl"] == 0x40246 and regs["cs"] == 0x10 and regs["ss"] == 0x18
            assert regs["mxcsr"] == 0x1F80 and regs["xmm3"] == 0x33 << 100 and regs["xmm0"] == 0
        else:
            assert regs["eip"] == 0x82A1C4D0 and regs["esp"] == 0x8B3F1F00 and regs["ebp"] == 0x8B3F1F80
            assert (regs["eax"], regs["ebx"], regs["ecx"], regs["edx"]) == (0x11, 0x22, 0x33, 0x44)
            assert regs["efl"] == 0x246 and regs["cs"] == 0x8
        assert d.exception == f.exception
        assert d.exception["ExceptionCode"] == 0x80000003
        assert d.exception["ExceptionInformation"] == [0, 0x1234]


@pytest.mark.parametrize("kind", PHYSICAL_KINDS)
def test_pages_roundtrip(tmp_path, kind):
    path = write_kind(tmp_path, kind, make_pages(PFNS))
    with open_dump(path) as d:
        for pfn in PFNS:
            assert bytes(d.physical.page(pfn)) == page_bytes(pfn), f"PFN {pfn:#x}"
        for pfn in ABSENT:
            with pytest.raises(MemoryNotPresent):
                d.physical.page(pfn)
        assert [tuple(r) for r in d.physical.present_runs()] == _runs(PFNS)
        assert d.physical.present_pages == len(PFNS)
        # a read across two stored pages, and one running into a hole
        assert d.physical.read(0x1FF0, 0x20) == page_bytes(1)[-0x10:] + page_bytes(2)[:0x10]
        with pytest.raises(MemoryNotPresent):
            d.physical.read(0x3FF0, 0x20)


@pytest.mark.parametrize("kind", KINDS)
def test_blobs_roundtrip(tmp_path, kind):
    path = write_kind(tmp_path, kind, make_pages(PFNS), blobs=BLOBS)
    with open_dump(path) as d:
        blobs = d.blobs()
        assert [b.tag for b in blobs] == [W._tag_bytes(t) for t, _ in BLOBS]
        assert [d.read_file(b.data_offset, b.data_size) for b in blobs] == [data for _, data in BLOBS]
        assert blobs[0].tag_text == "bf2297dc-34ba-11dc-868a-e19155d89593"
        assert all((b.header_offset - blobs[0].header_offset) % 8 == 0 for b in blobs)
    without = write_kind(tmp_path, kind, make_pages(PFNS), name="plain.dmp")
    with open_dump(without) as d:
        assert d.blobs() == []


def test_header_keeps_the_page_fill(tmp_path):
    path = write_kind(tmp_path, "full", make_pages(PFNS), pfn_database=None, version_user=None)
    raw = path.read_bytes()[:0x2000]
    assert raw[0x3C:0x40] == b"PAGE"  # padding after BugCheckCode
    assert raw[0x344:0x348] == b"PAGE"  # padding after PhysicalMemoryBlock
    assert raw[0xF9C:0xFA0] == b"PAGE"  # padding after DumpType
    assert raw[0x18:0x20] == b"PAGEPAGE"  # PfnDataBase not given
    assert raw[0x60:0x80] == b"PAGE" * 8  # VersionUser not given
    assert raw[0x1058:0x2000] == b"PAGE" * (4008 // 4)  # reserved
    assert raw[0x348 + 0x4D0 : 0x348 + 3000] == (b"PAGE" * 800)[(0x348 + 0x4D0) % 4 : (0x348 + 0x4D0) % 4 + 3000 - 0x4D0]
    with open_dump(path) as d:
        assert d.header.pfn_database is None
    # kinds other than 1 leave the run list as fill: readers take NumberOfRuns == "PAGE" as "none"
    raw6 = write_kind(tmp_path, "bitmap6", make_pages(PFNS)).read_bytes()
    assert raw6[0x88:0x8C] == b"PAGE"


def test_physical_memory_runs_recorded_for_other_kinds(tmp_path):
    path = write_kind(tmp_path, "bitmap5", make_pages(PFNS), physical_memory_runs=[(1, 0x9F), (0x100, 0x7000)])
    raw = path.read_bytes()
    assert struct.unpack_from("<IIQQQQQ", raw, 0x88) == (2, 0, 0x709F, 1, 0x9F, 0x100, 0x7000)  # padding 0, as in the real 17763 dump


# -- full dumps ---------------------------------------------------------------------------------


def test_full_unsorted_run_list(tmp_path):
    order = [(0x40, 9), (1, 3), (0x200, 1), (0x10, 2)]
    path = write_kind(tmp_path, "full", make_pages(PFNS), options={"runs": order})
    raw = path.read_bytes()
    count, pages = struct.unpack_from("<I4xQ", raw, 0x88)
    assert count == 4 and pages == len(PFNS)
    assert [struct.unpack_from("<QQ", raw, 0x98 + 16 * i) for i in range(4)] == order
    assert raw[0x2000:0x3000] == page_bytes(0x40)  # pages in run-list order, not PFN order
    assert raw[0x2000 + 9 * PAGE : 0x2000 + 10 * PAGE] == page_bytes(1)
    with open_dump(path) as d:
        assert [tuple(r) for r in d.physical.present_runs()] == _runs(PFNS)
        for pfn in PFNS:
            assert bytes(d.physical.page(pfn)) == page_bytes(pfn)


def test_full_run_list_must_match_pages(tmp_path):
    with pytest.raises(W.DumpWriteError, match="run list"):
        write_kind(tmp_path, "full", make_pages(PFNS), options={"runs": [(1, 3)]})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind,limit", [("full", 42), ("full32", 86)])
def test_full_run_limit(tmp_path, kind, limit):
    ok = make_pages(range(0, 2 * limit, 2))  # `limit` runs of one page
    write_kind(tmp_path, kind, ok)
    with open_dump(tmp_path / f"{kind}.dmp") as d:
        assert len(list(d.physical.present_runs())) == limit
    with pytest.raises(W.DumpWriteError, match=f"at most {limit}"):
        write_kind(tmp_path, kind, make_pages(range(0, 2 * limit + 2, 2)), name="toomany.dmp")
    assert not (tmp_path / "toomany.dmp").exists()


@pytest.mark.parametrize("kind", ["full", "rdmp8", "rdmp10"])
def test_pfn_above_4g(tmp_path, kind):
    pfns = [5, (1 << 32) + 7, (1 << 32) + 8, (1 << 40) + 1]
    path = write_kind(tmp_path, kind, make_pages(pfns))
    with open_dump(path) as d:
        for pfn in pfns:
            assert bytes(d.physical.page(pfn)) == page_bytes(pfn)
        assert d.physical.read(((1 << 32) + 7) * PAGE + 0xFFC, 8) == page_bytes((1 << 32) + 7)[-4:] + b"PFN:"
        with pytest.raises(MemoryNotPresent):
            d.physical.page((1 << 32) + 9)
        assert [tuple(r) for r in d.physical.present_runs()] == [(5, 1), ((1 << 32) + 7, 2), ((1 << 40) + 1, 1)]


def test_full32_refuses_pfn_above_4g(tmp_path):
    with pytest.raises(W.DumpWriteError, match="32-bit dump"):
        write_kind(tmp_path, "full32", make_pages([1, 1 << 32]))


def test_full32_sign_extended_pointers(tmp_path):
    path = write_kind(tmp_path, "full32", make_pages(PFNS), ps_loaded_module_list=0xFFFFFFFF8275B850)
    with open_dump(path) as d:
        assert d.header.ps_loaded_module_list == 0x8275B850
    with pytest.raises(W.DumpWriteError, match="32-bit"):
        write_kind(tmp_path, "full32", make_pages(PFNS), name="bad.dmp", ps_loaded_module_list=0x123456789)


# -- bitmap dumps -------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0x201, 0x203, 0x207, 0x209, 0x23F, 0x240, 0x241, 0x1001])
@pytest.mark.parametrize("kind", ["bitmap5", "bitmap6"])
def test_bitmap_bit_counts(tmp_path, kind, bits):
    path = write_kind(tmp_path, kind, make_pages(PFNS), options={"bit_count": bits})
    raw = path.read_bytes()
    bh = BITMAP_DUMP_HEADER64.parse(raw[0x2000:0x2038])
    assert bh.Signature == (b"FDMP" if kind == "bitmap5" else b"SDMP")
    assert bh.Pages == bits and bh.TotalPresentPages == len(PFNS)
    assert bh.FirstPage % PAGE == 0 and bh.FirstPage >= 0x2038 + (bits + 7) // 8
    bitmap = raw[0x2038 : 0x2038 + (bits + 7) // 8]
    assert [n for n in range(bits) if bitmap[n // 8] >> (n % 8) & 1] == PFNS
    with open_dump(path) as d:
        assert d.physical.highest_pfn == bits
        assert [tuple(r) for r in d.physical.present_runs()] == _runs(PFNS)
        for pfn in PFNS:
            assert bytes(d.physical.page(pfn)) == page_bytes(pfn)
        for pfn in (0x201, bits - 1, bits, bits + 1):
            if pfn not in PFNS:
                with pytest.raises(MemoryNotPresent):
                    d.physical.page(pfn)


def test_bitmap_default_bit_count_is_word_aligned(tmp_path):
    raw = write_kind(tmp_path, "bitmap6", make_pages(PFNS)).read_bytes()
    assert BITMAP_DUMP_HEADER64.parse(raw[0x2000:0x2038]).Pages == 0x240
    with pytest.raises(W.DumpWriteError, match="leaves out"):
        write_kind(tmp_path, "bitmap6", make_pages(PFNS), name="short.dmp", options={"bit_count": 0x200})


def test_bitmap_long_runs_across_chunks(tmp_path, monkeypatch):
    # Small chunks make the streamed bitmap cross chunk boundaries inside runs and between them.
    monkeypatch.setattr(W, "_BITMAP_CHUNK", 3)
    pfns = list(range(5, 75)) + [79, 80] + list(range(95, 130)) + [200]
    path = write_kind(tmp_path, "bitmap6", make_pages(pfns), options={"bit_count": 203})
    with open_dump(path) as d:
        assert [tuple(r) for r in d.physical.present_runs()] == _runs(pfns)
        for pfn in pfns:
            assert bytes(d.physical.page(pfn)) == page_bytes(pfn)


# -- RDMP dumps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rdmp8", "rdmp9", "rdmp10"])
def test_rdmp_layout(tmp_path, kind):
    path = write_kind(tmp_path, kind, make_pages(PFNS))
    raw = path.read_bytes()
    layout = FULL_RDMP_HEADER64 if kind == "rdmp10" else KERNEL_RDMP_HEADER64
    rh = layout.parse(raw[0x2000:0x2030])
    first = rh.Hdr.FirstPageOffset
    assert rh.Hdr.Marker == 0x40 and first % PAGE == 0
    assert rh.Hdr.MetadataSize - 0x20 == first - 0x2040  # kdmp-parser's sanity check
    runs = _runs(PFNS)
    listed = [struct.unpack_from("<QQ", raw, 0x2030 + 16 * i) for i in range(len(runs) + 1)]
    assert listed == runs + [(0, 0)]
    assert raw[first : first + PAGE] == page_bytes(PFNS[0])
    if kind == "rdmp10":
        assert rh.NumberOfRanges == len(runs) and rh.TotalNumberOfPages == len(PFNS)


@pytest.mark.parametrize("kind", ["rdmp8", "rdmp10"])
def test_rdmp_terminator_when_the_list_fills_a_page(tmp_path, kind):
    # 253 ranges end exactly at 0x3000: the all-zero terminator needs the next page
    pfns = list(range(2, 2 + 2 * 253, 2))
    path = write_kind(tmp_path, kind, make_pages(pfns))
    raw = path.read_bytes()
    assert struct.unpack_from("<Q", raw, 0x2018)[0] == 0x4000
    assert struct.unpack_from("<QQ", raw, 0x2030 + 16 * 252) == (pfns[-1], 1)
    assert raw[0x3000:0x3010] == bytes(16)
    with open_dump(path) as d:
        assert len(list(d.physical.present_runs())) == 253
        assert bytes(d.physical.page(pfns[-1])) == page_bytes(pfns[-1])


@pytest.mark.parametrize("kind", ["rdmp8", "rdmp9", "rdmp10"])
def test_rdmp_refuses_pfn0(tmp_path, kind):
    with pytest.raises(W.DumpWriteError, match="PFN 0"):
        write_kind(tmp_path, kind, make_pages([0, 1, 2]))
    assert list(tmp_path.iterdir()) == []


def test_rdmp_is_64bit_only(tmp_path):
    with pytest.raises(W.DumpWriteError, match="64-bit"):
        W.write_rdmp(tmp_path / "x.dmp", default_fields(is64=False), make_pages([1]), 8)


# -- small memory dumps ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["triage", "triage32"])
def test_triage_parts(tmp_path, kind):
    is64 = kind == "triage"
    parts = default_triage_parts(is64)
    path = write_kind(tmp_path, kind, blobs=BLOBS)
    raw = path.read_bytes()
    layout = TRIAGE_DUMP64 if is64 else TRIAGE_DUMP32
    base = 0x2000 if is64 else 0x1000
    th = layout.parse(raw[base : base + layout.sizeof()])
    assert th.ContextOffset == (0x348 if is64 else 0x320)
    assert th.ExceptionOffset == (0xF00 if is64 else 0x7D0)
    assert th.MmOffset == base + layout.sizeof()  # MM information right after the block
    assert th.ValidOffset == th.SizeOfDump - 4 and raw[th.ValidOffset : th.SizeOfDump] == b"TRGD"
    assert raw[th.SizeOfDump : th.SizeOfDump + 8] == b"DumpBlob"
    # parts in the order Windows 10 writes them (both corpus minidumps), each after the previous
    order = [th.MmOffset, th.UnloadedDriversOffset, th.PrcbOffset, th.ProcessOffset, th.ThreadOffset,
             th.CallStackOffset, th.DebuggerDataOffset, th.DriverListOffset, th.StringPoolOffset,
             th.DataPageOffset, th.DataBlocksOffset, th.ValidOffset]
    assert order == sorted(order) and len(set(order)) == len(order)
    assert th.StringPoolOffset == th.DriverListOffset + th.DriverCount * (0x90 if is64 else 0x54) + (
        -(th.DriverListOffset + th.DriverCount * (0x90 if is64 else 0x54)) % 8)
    # DUMP_STRING: u32 length in WCHARs, UTF-16LE, NUL; entries 8-byte aligned, back to back
    expect = th.StringPoolOffset
    for i, drv in enumerate(parts.drivers):
        name_offset = struct.unpack_from("<I", raw, th.DriverListOffset + i * (0x90 if is64 else 0x54))[0]
        assert name_offset == expect and name_offset % 8 == 0
        n = struct.unpack_from("<I", raw, name_offset)[0]
        assert n == len(drv.name)
        assert raw[name_offset + 4 : name_offset + 4 + 2 * n + 2] == drv.name.encode("utf-16-le") + b"\0\0"
        expect = name_offset + 4 + 2 * n + 2
        expect += -expect % 8
    assert th.StringPoolSize == expect - th.StringPoolOffset
    # the data blocks' bytes follow their list back to back
    blocks_at = th.DataBlocksOffset + len(parts.data_blocks) * (16 if is64 else 12)
    assert raw[blocks_at : blocks_at + sum(len(b) for _, b in parts.data_blocks)] == b"".join(
        b for _, b in parts.data_blocks)
    with open_dump(path) as d:
        tri = d.triage
        assert d.warnings == []
        assert d.header.minidump_fields == 0xFFF  # every part present
        assert [(x.name, x.base, x.size, x.timestamp, x.checksum) for x in tri.drivers] == [
            (x.name, x.base, x.size, x.timestamp, x.checksum) for x in parts.drivers
        ]
        assert tri.broken_driver is not None and tri.broken_driver.name == "crashdrv.sys"
        assert [(u.name, u.start, u.end) for u in tri.unloaded] == [
            ("dam.sys", parts.unloaded[0][1], parts.unloaded[0][2]),
            ("a_very_long_", parts.unloaded[1][1], parts.unloaded[1][2]),  # WCHAR[12], truncated
        ]
        mem = tri.memory
        assert mem.read(parts.top_of_stack, len(parts.stack)) == parts.stack
        assert mem.read(d.header.kd_debugger_data_block, len(parts.kdbg)) == parts.kdbg
        assert mem.read(parts.data_page[0], PAGE) == parts.data_page[1]
        for address, data in parts.data_blocks:
            assert mem.read(address, len(data)) == data
        for address in (parts.top_of_stack - 1, parts.top_of_stack + len(parts.stack),
                        parts.data_blocks[1][0] + 3, 0x1000):
            with pytest.raises(MemoryNotPresent):
                mem.read(address, 1)
        assert tri.mm.Version == 1 and tri.mm.CommittedPages == 125829 and tri.mm.CommitLimitMaximum == 2073913
        for (offset, size), data in ((tri.prcb, parts.prcb), (tri.process, parts.process), (tri.thread, parts.thread)):
            assert d.read_file(offset, len(data)) == data and size >= len(data)


def test_triage_minimal_parts(tmp_path):
    parts = WT.TriageParts(stack=b"\x11" * 0x100, top_of_stack=0xFFFF800000001000)
    path = write_kind(tmp_path, "triage", triage=parts)
    with open_dump(path) as d:
        assert d.warnings == []
        assert d.header.minidump_fields == 0x1 | 0x2 | 0x20
        assert d.triage.drivers == [] and d.triage.unloaded == [] and d.triage.mm is None
        assert d.triage.memory.read(0xFFFF800000001000, 0x100) == b"\x11" * 0x100
        assert d.registers()["rip"] == 0xFFFFF8047C1D2F30


def test_triage_explicit_minidump_fields_and_long_names(tmp_path):
    name = "\\SystemRoot\\System32\\drivers\\" + "é" * 200 + ".sys"
    parts = default_triage_parts(drivers=[WT.TriageDriverInfo(name, 0xFFFFF80100000000, 0x1000, 7)], broken_driver=None)
    path = write_kind(tmp_path, "triage", triage=parts, minidump_fields=0x1234)
    with open_dump(path) as d:
        assert d.header.minidump_fields == 0x1234
        assert d.triage.drivers[0].name == name and d.triage.broken_driver is None


# -- the writer itself --------------------------------------------------------------------------


def test_refuses_to_overwrite(tmp_path):
    target = tmp_path / "x.dmp"
    target.write_bytes(b"precious")
    with pytest.raises(W.DumpWriteError, match="already exists"):
        W.write_full(target, default_fields(), make_pages(PFNS))
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.dmp"]
    W.write_full(target, default_fields(), make_pages(PFNS), overwrite=True)
    with open_dump(target) as d:
        assert d.dump_type == 1


class _FailingSource:
    def __init__(self, exc):
        self.exc = exc

    def present_runs(self):
        return [(1, 100)]

    def page(self, pfn):
        if pfn == 50:
            raise self.exc
        return page_bytes(pfn)


@pytest.mark.parametrize("kind", ["full", "bitmap6", "rdmp8"])
def test_errors_leave_nothing_behind(tmp_path, kind):
    with pytest.raises(W.DumpWriteError) as info:
        write_kind(tmp_path, kind, _FailingSource(OSError(28, "No space left on device")))
    assert "No space left on device" in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, KdError)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(W.DumpWriteError, match="not available"):
        write_kind(tmp_path, kind, _FailingSource(KeyError(50)))
    with pytest.raises(W.DumpWriteError, match="4096"):
        write_kind(tmp_path, kind, {1: b"short"})
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_is_a_one_line_error(tmp_path):
    with pytest.raises(W.DumpWriteError, match="cannot write dump"):
        W.write_full(tmp_path / "nope" / "x.dmp", default_fields(), make_pages(PFNS))


@pytest.mark.parametrize("kind", ["full", "bitmap5", "rdmp9"])
def test_iterable_of_pairs_equals_mapping(tmp_path, kind):
    a = write_kind(tmp_path, kind, make_pages(PFNS), name="a.dmp")
    b = write_kind(tmp_path, kind, ((pfn, page_bytes(pfn)) for pfn in PFNS), name="b.dmp")
    assert a.read_bytes() == b.read_bytes()
    with pytest.raises(W.DumpWriteError, match="increasing PFN order"):
        write_kind(tmp_path, kind, ((pfn, page_bytes(pfn)) for pfn in [3, 2]), name="c.dmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dmp", "b.dmp"]


@pytest.mark.parametrize("target", ["full", "bitmap5", "bitmap6", "rdmp8", "rdmp10"])
def test_rewrite_an_opened_dump_as_another_kind(tmp_path, target):
    """What `.dump` does: an opened dump's PhysicalMemory and header are the writer's input."""
    src = write_kind(tmp_path, "bitmap6", make_pages(PFNS), name="src.dmp")
    with open_dump(src) as d:
        fields = W.DumpHeaderFields.from_header(d.header, comment="rewritten")
        out = tmp_path / "out.dmp"
        WT.write_dump(out, TYPE[target], fields, d.physical)
        with open_dump(out) as e:
            assert e.dump_type == TYPE[target] and e.header.comment == "rewritten"
            assert e.registers() == d.registers() and e.exception == d.exception
            assert e.header.bugcheck_parameters == d.header.bugcheck_parameters
            for pfn in PFNS:
                assert bytes(e.physical.page(pfn)) == bytes(d.physical.page(pfn))


def test_streams_with_bounded_memory(tmp_path):
    class Lazy:
        def present_runs(self):
            return [(0x100, 3000), (0x10000, 1000)]

        def page(self, pfn):
            return pfn.to_bytes(8, "little") * 512

    tracemalloc.start()
    try:
        W.write_bitmap(tmp_path / "big.dmp", default_fields(), Lazy(), 6)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert os.path.getsize(tmp_path / "big.dmp") > 4000 * PAGE
    assert peak < 4 << 20, f"peak {peak} bytes for a 16 MB dump"
    with open_dump(tmp_path / "big.dmp") as d:
        assert bytes(d.physical.page(0x10000 + 999)[:8]) == (0x10000 + 999).to_bytes(8, "little")


def test_context_helpers():
    ctx = W.make_context_amd64(Rip=0x1234, rsp=0x5678, MxCsr=0x1FA0, xmm15=1)
    assert len(ctx) == 0x4D0
    assert struct.unpack_from("<I", ctx, 0x34) == struct.unpack_from("<I", ctx, 0x118) == (0x1FA0,)
    assert struct.unpack_from("<QQ", ctx, 0xF8)[0] == 0x1234 and struct.unpack_from("<Q", ctx, 0x98)[0] == 0x5678
    assert ctx[0x290:0x2A0] == (1).to_bytes(16, "little")
    assert len(W.make_context_x86(eip=1)) == 0x2CC
    with pytest.raises(ValueError):
        W.make_context_amd64(eip=1)


def test_zero_pages_become_holes_and_read_back(tmp_path):
    """All-zero pages are written as holes (sparse files for big machines) and read back as zeros,
    including a trailing run of zero pages that must still count in the file's length."""
    from kdshell.dumpfile.dump import open_dump

    pages = {pfn: bytes(0x1000) for pfn in range(0x100, 0x400)}
    pages[0x180] = b"\x5a" * 0x1000
    for kind in ("full", "bitmap6", "rdmp8"):
        path = write_kind(tmp_path, kind, pages, name=f"zeros-{kind}.dmp")
        st = os.stat(path)
        assert st.st_blocks * 512 < st.st_size // 2  # mostly holes
        with open_dump(path) as d:
            assert d.physical.page(0x180).tobytes() == b"\x5a" * 0x1000
            assert d.physical.page(0x3FF).tobytes() == bytes(0x1000)
            assert d.physical.truncated_pages == 0 and not d.warnings
