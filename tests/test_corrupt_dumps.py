"""Hostile files: a one-line DumpFormatError naming the field and file offset, or a dump that opens
with a warning when the damage is partial. Never another exception, never a hang, never memory
proportional to a size the file claims.

Damage is done at LITERAL offsets from formats.md (struct.pack_into), not through header.py, so a
wrong declaration there cannot make a corrupt file look valid to both sides.
"""
from __future__ import annotations

import struct
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FULL_TRUNCATED, corpus_dumps_if_present
from dumpfactory import KINDS, default_triage_parts, make_pages, page_bytes, write_kind
from kdshell.dumpfile.dump import open_dump
from kdshell.errors import DumpFormatError, MemoryNotPresent

PFNS = [1, 2, 3, 0x10, 0x11, 0x200]
BLOB = [(b"\x07" * 16, b"blob data")]

# literal file offsets (formats.md §2, §4, §5, §5.3, §6.1, §9)
DUMP_TYPE64, DUMP_TYPE32 = 0xF98, 0xF88
RUNS64, RUNS32 = 0x88, 0x64
BMP_FIRST_PAGE, BMP_PRESENT, BMP_PAGES = 0x2020, 0x2028, 0x2030
RDMP_METADATA, RDMP_FIRST_PAGE, RDMP_RANGES = 0x2010, 0x2018, 0x2030
TRIAGE = 0x2000
TRIAGE_OFFSET_FIELDS = {  # name: offset inside TRIAGE_DUMP64
    "ValidOffset": 0x08, "ContextOffset": 0x0C, "ExceptionOffset": 0x10, "MmOffset": 0x14,
    "UnloadedDriversOffset": 0x18, "PrcbOffset": 0x1C, "ProcessOffset": 0x20, "ThreadOffset": 0x24,
    "CallStackOffset": 0x28, "DriverListOffset": 0x30, "StringPoolOffset": 0x38, "DataPageOffset": 0x68,
    "DebuggerDataOffset": 0x70, "DataBlocksOffset": 0x78,
}
DRIVER_COUNT, DATA_BLOCKS_COUNT, DRIVER_LIST = TRIAGE + 0x34, TRIAGE + 0x7C, TRIAGE + 0x30


def _write(directory, name: str, data: bytes) -> Path:
    path = Path(directory) / name
    path.write_bytes(data)
    return path


def _patched(tmp_path, kind: str, patches=(), truncate: int | None = None, **kw) -> Path:
    src = write_kind(tmp_path, kind, make_pages(PFNS), name=f"src-{kind}.dmp", blobs=BLOB,
                     options={"overwrite": True}, **kw)
    raw = bytearray(src.read_bytes())
    for fmt, offset, value in patches:
        struct.pack_into(fmt, raw, offset, value)
    if truncate is not None:
        del raw[truncate:]
    return _write(tmp_path, f"bad-{kind}.dmp", bytes(raw))


def format_error(path, field: str | None = None, offset: int | None = None) -> DumpFormatError:
    with pytest.raises(DumpFormatError) as info:
        open_dump(path).close()
    err = info.value
    text = str(err)
    assert "\n" not in text and text
    assert err.offset is not None and f"at file offset {err.offset:#x}" in text
    assert err.field
    if field is not None:
        assert err.field.startswith(field), err.field
    if offset is not None:
        assert err.offset == offset
    return err


# -- identification -------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"PAGEDU6", b"\0" * 7])
def test_too_small(tmp_path, data):
    format_error(_write(tmp_path, "small.dmp", data), "Signature", 0)


@pytest.mark.parametrize("data", [b"PAGEDU65" + b"\0" * 0x3000, b"XXXXXXXX" * 0x400, b"PAGE" * 0x800])
def test_wrong_signature(tmp_path, data):
    err = format_error(_write(tmp_path, "sig.dmp", data), "Signature", 0)
    assert "not a Windows kernel dump" in str(err)


@pytest.mark.parametrize("head", [b"MDMP\x93\xa7\x00\x00", b"USERDU64", b"USERDUMP"])
def test_user_mode_dumps(tmp_path, head):
    err = format_error(_write(tmp_path, "user.dmp", head + b"\0" * 0x3000), "Signature", 0)
    assert "user-mode" in str(err)


@pytest.mark.parametrize("head,kind,tool", [(b"MSCF\0\0\0\0", "CAB", "cabextract"), (b"PK\x03\x04", "ZIP", "unzip"),
                                            (b"\x1f\x8b\x08\x00", "gzip", "gunzip")])
def test_packed_dumps_say_how_to_unpack(tmp_path, head, kind, tool):
    """Windows Error Reporting ships dumps in CAB files; a packed dump gets a hint, not a riddle."""
    err = format_error(_write(tmp_path, "packed.dmp", head + b"\0" * 0x3000), "Signature", 0)
    assert f"this is a {kind} archive" in str(err) and tool in str(err)


@pytest.mark.parametrize("kind,where", [("full", DUMP_TYPE64), ("full32", DUMP_TYPE32)])
@pytest.mark.parametrize("dump_type", [3, 0x77, 0, 7, 0xFFFFFFFF])
def test_header_only_and_unknown_types(tmp_path, kind, where, dump_type):
    err = format_error(_patched(tmp_path, kind, [("<I", where, dump_type)]), "DumpType", where)
    if dump_type == 3:
        assert "header-only" in str(err)


@pytest.mark.parametrize("kind", KINDS)
def test_header_truncated_at_every_512_byte_boundary(tmp_path, kind):
    header = 0x1000 if kind.endswith("32") else 0x2000
    src = write_kind(tmp_path, kind, make_pages(PFNS)).read_bytes()
    for size in range(0, header, 0x200):
        err = format_error(_write(tmp_path, f"t{size}.dmp", src[:size]), offset=0)
        assert err.field in ("Signature", "DUMP_HEADER")
    # exactly the header: a complete dump with no page data opens, truncated; the others need
    # their type header and say so.
    path = _write(tmp_path, "hdr.dmp", src[:header])
    if kind.startswith("full"):
        with open_dump(path) as d:
            assert any("truncated" in w for w in d.warnings)
            with pytest.raises(MemoryNotPresent):
                d.physical.page(1)
    else:
        format_error(path, offset=header)


# -- complete dumps (run list) ------------------------------------------------------------------


@pytest.mark.parametrize("count", [43, 1000, 0xFFFFFFFF])
def test_number_of_runs_too_large(tmp_path, count):
    format_error(_patched(tmp_path, "full", [("<I", RUNS64, count)]), "PhysicalMemoryBlock.NumberOfRuns", RUNS64)


@pytest.mark.parametrize("count", [87, 0xFFFFFFFF])
def test_number_of_runs_too_large_32(tmp_path, count):
    format_error(_patched(tmp_path, "full32", [("<I", RUNS32, count)]), "PhysicalMemoryBlock.NumberOfRuns", RUNS32)


def test_runs_claiming_2_40_pages(tmp_path):
    # runs: (1,3) (0x10,2) (0x200,1); the last one now claims 2^40 pages
    last_count = RUNS64 + 0x10 + 2 * 16 + 8
    path = _patched(tmp_path, "full", [("<Q", last_count, 1 << 40)])
    tracemalloc.start()
    try:
        with open_dump(path) as d:
            assert any("truncated" in w for w in d.warnings)
            assert any("NumberOfPages" in w for w in d.warnings)
            assert bytes(d.physical.page(0x10)) == page_bytes(0x10)
            with pytest.raises(MemoryNotPresent):
                d.physical.page(0x200 + (1 << 39))
            assert list(d.physical.present_runs())[-1] == (0x200, 1 << 40)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # one more page than any x64 machine can address: corrupt, refused with the field named
    format_error(_patched(tmp_path, "full", [("<Q", last_count, (1 << 40) + 1)]),
                 "PhysicalMemoryBlock.Run[2].PageCount", last_count)


def test_overlapping_runs(tmp_path):
    format_error(_patched(tmp_path, "full", [("<Q", RUNS64 + 0x10 + 16, 2)]), "PhysicalMemoryBlock.Run")


# -- bitmap dumps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bitmap5", "bitmap6"])
def test_bitmap_claims_2_40_pages(tmp_path, kind):
    path = _patched(tmp_path, kind, [("<Q", BMP_PAGES, 1 << 40)])
    tracemalloc.start()
    try:
        format_error(path, "BITMAP_DUMP_HEADER.Pages")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing the size of the claimed bitmap (128 GiB)


def test_bitmap_first_page_beyond_eof(tmp_path):
    with open_dump(_patched(tmp_path, "bitmap6", [("<Q", BMP_FIRST_PAGE, 1 << 40)])) as d:
        assert any("truncated" in w for w in d.warnings)
        for pfn in PFNS:
            with pytest.raises(MemoryNotPresent):
                d.physical.page(pfn)


def test_bitmap_first_page_inside_the_bitmap(tmp_path):
    format_error(_patched(tmp_path, "bitmap6", [("<Q", BMP_FIRST_PAGE, 0x2000)]), "FirstPage", BMP_FIRST_PAGE)


def test_bitmap_wrong_present_count(tmp_path):
    with open_dump(_patched(tmp_path, "bitmap5", [("<Q", BMP_PRESENT, 0xFFFFFFFF)])) as d:
        assert any("pages set" in w for w in d.warnings)
        assert bytes(d.physical.page(0x200)) == page_bytes(0x200)


def test_bitmap_bad_signature(tmp_path):
    format_error(_patched(tmp_path, "bitmap6", [("<I", 0x2000, 0x12345678)]), "BITMAP_DUMP_HEADER.Signature", 0x2000)


# -- range-list dumps -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rdmp8", "rdmp10"])
def test_rdmp_damage(tmp_path, kind):
    format_error(_patched(tmp_path, kind, [("<Q", RDMP_FIRST_PAGE, 1 << 62)]), "RDMP_HEADER.FirstPageOffset")
    format_error(_patched(tmp_path, kind, [("<Q", RDMP_FIRST_PAGE, 0x2000)]), "RDMP_HEADER.FirstPageOffset")
    format_error(_patched(tmp_path, kind, [("<Q", RDMP_RANGES + 8, (1 << 40) + 1)]), "RDMP range NumberOfPages")
    format_error(_patched(tmp_path, kind, [("<Q", RDMP_RANGES + 16, 2)]), "RDMP range list")
    format_error(_patched(tmp_path, kind, [("<I", 0x2004, 0)]), "RDMP_HEADER")
    # a MetadataSize far beyond the file is bounded by the page data offset
    with open_dump(_patched(tmp_path, kind, [("<Q", RDMP_METADATA, 1 << 63)])) as d:
        assert bytes(d.physical.page(0x200)) == page_bytes(0x200)


def test_rdmp_ranges_summing_past_2_40_pages(tmp_path):
    base = bytearray(write_kind(tmp_path, "rdmp8", make_pages([1])).read_bytes()[:0x2030])
    n = 5000
    first = (0x2030 + 16 * (n + 1) + 0xFFF) & ~0xFFF
    struct.pack_into("<QQ", base, RDMP_METADATA, first - 0x2020, first)
    base += b"".join(struct.pack("<QQ", (i + 1) << 40, 1 << 40) for i in range(n))
    base += bytes(first - len(base))
    format_error(_write(tmp_path, "sum.dmp", bytes(base)), "RDMP range NumberOfPages")


# -- small memory dumps ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,offset", sorted(TRIAGE_OFFSET_FIELDS.items()))
def test_triage_offset_outside_the_file(tmp_path, name, offset):
    path = _patched(tmp_path, "triage", [("<I", TRIAGE + offset, 0xFFFFFF00)])
    with open_dump(path) as d:
        if name == "StringPoolOffset":
            # names are found through each entry's DriverNameOffset; the pool's own offset is
            # informational and nobody reads through it
            assert [x.name for x in d.triage.drivers] == [x.name for x in default_triage_parts().drivers]
        else:
            assert any(name in w for w in d.warnings), d.warnings
        regs = d.registers()
        assert regs["rip"] == 0xFFFFF8047C1D2F30  # the header's context is still there
        d.exception
        [x.name for x in d.triage.drivers]
        d.blobs()


def test_triage_driver_count_huge(tmp_path):
    with open_dump(_patched(tmp_path, "triage", [("<I", DRIVER_COUNT, 0xFFFFFFFF)])) as d:
        assert d.triage.drivers == []
        assert any("driver list" in w for w in d.warnings)
        parts = default_triage_parts()
        assert d.triage.memory.read(parts.top_of_stack, 16) == parts.stack[:16]


def test_triage_data_blocks_count_huge(tmp_path):
    path = _patched(tmp_path, "triage", [("<I", DATA_BLOCKS_COUNT, 0x7FFFFFFF)])
    tracemalloc.start()
    try:
        with open_dump(path) as d:
            assert any("data block list" in w for w in d.warnings)
            parts = default_triage_parts()
            with pytest.raises(MemoryNotPresent):
                d.triage.memory.read(parts.data_blocks[0][0], 1)
            assert d.triage.memory.read(parts.top_of_stack, 16) == parts.stack[:16]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_triage_overlapping_data_blocks(tmp_path):
    parts = default_triage_parts()
    top = parts.top_of_stack
    parts.data_blocks = [
        (top + 0x100, b"A" * 0x200),  # inside the stack copy: the stack wins
        (top - 0x10, b"B" * 0x20),  # straddles the stack's start
        (0xFFFF800000000000, b"C" * 0x100),
        (0xFFFF800000000080, b"D" * 0x100),  # overlaps the previous block: the first one wins
    ] + [(0xFFFF800000000000 + i, b"E") for i in range(0, 0x300, 7)]
    with open_dump(write_kind(tmp_path, "triage", triage=parts)) as d:
        mem = d.triage.memory
        assert mem.read(top + 0x100, 0x10) == parts.stack[0x100:0x110]
        assert mem.read(top - 0x10, 0x20) == b"B" * 0x10 + parts.stack[:0x10]
        assert mem.read(0xFFFF800000000000, 0x180) == b"C" * 0x100 + b"D" * 0x80
        assert mem.read(0xFFFF800000000188, 1) == b"E"  # 0x188 = 7 * 56
        assert mem.overlaps > 0


def test_many_overlapping_data_blocks_do_not_hang(tmp_path):
    # 20000 small disjoint blocks, then 20000 blocks each covering all of them (pointing at the
    # same file bytes): walking every saved range per block took minutes before sparse.py kept
    # coalesced coverage.
    half = 20000
    parts = default_triage_parts(data_blocks=[(0xFFFF800000000000 + i, b"\0") for i in range(2 * half)])
    raw = bytearray(write_kind(tmp_path, "triage", triage=parts).read_bytes())
    blocks = struct.unpack_from("<I", raw, TRIAGE + 0x78)[0]
    span = half * 32
    assert span < len(raw)
    for i in range(half):
        struct.pack_into("<QII", raw, blocks + 16 * i, 0xFFFF800000000000 + 32 * i, 0x100, 8)
    for i in range(half, 2 * half):
        struct.pack_into("<QII", raw, blocks + 16 * i, 0xFFFF800000000000, 0x100, span)
    path = _write(tmp_path, "overlap.dmp", bytes(raw))
    started = time.monotonic()
    with open_dump(path) as d:
        assert d.triage.memory.read(0xFFFF800000000000, 8) == bytes(raw[0x100:0x108])
        assert d.triage.memory.read(0xFFFF800000000000 + span - 1, 1) == bytes(raw[0x100 + span - 1 : 0x100 + span])
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("length", [0xFFFFFFFF, 0x7FFFFFFF, 0])
def test_dump_string_length_huge(tmp_path, length):
    src = write_kind(tmp_path, "triage")
    raw = bytearray(src.read_bytes())
    entry = struct.unpack_from("<I", raw, DRIVER_LIST)[0]
    name_offset = struct.unpack_from("<I", raw, entry)[0]
    struct.pack_into("<I", raw, name_offset, length)
    with open_dump(_write(tmp_path, "s.dmp", bytes(raw))) as d:
        name = d.triage.drivers[0].name
        expected = default_triage_parts().drivers[0].name
        assert name == ("" if length == 0 else expected)
    # a name offset outside the file
    struct.pack_into("<I", raw, entry, 0xFFFFFFF0)
    with open_dump(_write(tmp_path, "s2.dmp", bytes(raw))) as d:
        assert "outside the file" in d.triage.drivers[0].name


def test_dump_string_without_nul(tmp_path):
    # the pool's last name, its NUL and padding overwritten: reading stops at the end of the file
    src = write_kind(tmp_path, "triage", triage=default_triage_parts(data_page=None, data_blocks=[]))
    raw = bytearray(src.read_bytes())
    pool = struct.unpack_from("<I", raw, TRIAGE + 0x38)[0]
    size = struct.unpack_from("<I", raw, TRIAGE + 0x3C)[0]
    raw[pool + 4 : pool + size] = b"X\0" * ((size - 4) // 2)
    struct.pack_into("<I", raw, pool, 0xFFFFFFFF)
    with open_dump(_write(tmp_path, "nul.dmp", bytes(raw))) as d:
        assert d.triage.drivers[0].name.startswith("XXXX")


def test_triage_header_past_eof(tmp_path):
    format_error(_patched(tmp_path, "triage", truncate=0x2040), "TRIAGE_DUMP", 0x2000)


def test_triage_truncated_inside_the_parts(tmp_path):
    src = write_kind(tmp_path, "triage")
    raw = src.read_bytes()
    size_of_dump = struct.unpack_from("<I", raw, TRIAGE + 0x04)[0]
    for cut in range(0x2080, size_of_dump, 0x400):
        with open_dump(_write(tmp_path, "cut.dmp", raw[:cut])) as d:
            assert any("truncated" in w for w in d.warnings)
            d.registers()
            [x.name for x in d.triage.drivers]


# -- secondary data -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["full", "triage"])
def test_blob_stream_damage(tmp_path, kind):
    blobs = [(b"\x01" * 16, b"first"), (b"\x02" * 16, b"second")]
    path = write_kind(tmp_path, kind, make_pages(PFNS), blobs=blobs)
    with open_dump(path) as d:
        second = d.blobs()[1].header_offset
    raw = bytearray(path.read_bytes())
    for fmt, rel, value in (("<I", 0, 0), ("<I", 0, 0xFFFFFFFF), ("<I", 0x14, 0xFFFFFFFF), ("<I", 0x18, 0xFFFFFFF0)):
        bad = bytearray(raw)
        struct.pack_into(fmt, bad, second + rel, value)
        with open_dump(_write(tmp_path, "blob.dmp", bytes(bad))) as d:
            got = d.blobs()
            assert [b.tag for b in got][:1] == [b"\x01" * 16]
            assert any("blob" in w for w in d.warnings) or len(got) == 2


# -- the real truncated dump ------------------------------------------------------------------------


def test_real_truncated_full_dump():
    with open_dump(FULL_TRUNCATED) as d:
        assert d.dump_type == 1 and d.size == 0x4000
        assert any("truncated" in w for w in d.warnings)
        assert d.physical.truncated_pages == d.physical.present_pages - 2
        first, count = next(iter(d.physical.present_runs()))
        assert (first, count) == (2, 158)
        for pfn in (2, 3):  # the two pages the 16 KiB file still holds
            assert len(bytes(d.physical.page(pfn))) == 0x1000
            assert bytes(d.physical.page(pfn)) == d.read_file(0x2000 + (pfn - 2) * 0x1000, 0x1000)
        for pfn in (4, 0x9F, 0x100, 0x3D8, 64511):
            with pytest.raises(MemoryNotPresent):
                d.physical.page(pfn)
        with pytest.raises(MemoryNotPresent):
            d.physical.read(3 * 0x1000 + 0xFF0, 0x20)


# -- property: random damage to valid dumps -----------------------------------------------------------

_BASES: dict[str, bytes] = {}


def _bases() -> dict[str, bytes]:
    if not _BASES:
        with tempfile.TemporaryDirectory() as tmp:
            for kind in KINDS:
                path = write_kind(tmp, kind, make_pages(PFNS), blobs=BLOB + [(b"\x08" * 16, b"x" * 13)])
                _BASES[kind] = path.read_bytes()
        for real in corpus_dumps_if_present():  # more bases when the corpus is there
            _BASES[real.name] = real.read_bytes()
    return _BASES


def _exercise(d) -> None:
    """Everything a session does first with a dump; only MemoryNotPresent may come out (the
    same checks the fuzz harness makes: one place for them)."""
    from fuzz.containers import exercise_container

    exercise_container(d)


@st.composite
def damaged(draw):
    bases = _bases()
    name = draw(st.sampled_from(sorted(bases)))
    raw = bytearray(bases[name])
    header = 0x2000 if raw[4:8] == b"DU64" else 0x1000
    regions = [(0, header), (header, min(len(raw), header + 0x400)), (0, len(raw))]
    for _ in range(draw(st.integers(1, 8))):
        lo, hi = draw(st.sampled_from(regions))
        if hi <= lo:
            continue
        offset = draw(st.integers(lo, hi - 1))
        value = draw(st.one_of(
            st.binary(min_size=1, max_size=8),
            st.sampled_from([b"\0" * 4, b"\xff" * 4, b"\xff" * 8, b"PAGE", struct.pack("<Q", 1 << 40),
                             struct.pack("<I", len(raw)), struct.pack("<I", len(raw) - 4)]),
        ))
        raw[offset : offset + len(value)] = value
    if draw(st.booleans()):
        where = 0xF98 if header == 0x2000 else 0xF88
        struct.pack_into("<I", raw, where, draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0x77])))
    if draw(st.integers(0, 4)) == 0:
        del raw[draw(st.integers(0, len(raw))):]
    return name, bytes(raw)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(damaged())
def test_random_damage_never_escapes(case):
    _, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(tmp, "fuzz.dmp", data)
        try:
            d = open_dump(path)
        except DumpFormatError as err:
            assert "\n" not in str(err) and err.offset is not None and err.field
            return
        try:
            _exercise(d)
        finally:
            d.close()
