"""Short fuzz runs (hypothesis, derandomized: the same inputs every run, about a second per
parser) of the byte decoders added with !errrec/!whea, !sysinfo gbl, !sysinfo cpuinfo and !pool:
random bytes and mutations of a well-formed input built here must give a result or kdshell's
own one-line error (a KdError), never another exception, and must finish quickly.

The well-formed inputs follow the public layouts the modules' docstrings give (UEFI CPER record
header 0x80 bytes + 0x48-byte section descriptors; the ACPI 36-byte table header; the registry
value records NameLength/Name/Type/DataLength/Data; the x64 POOL_HEADER)."""
from __future__ import annotations

import os
import signal
import struct
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdshell.commands.pool import block_line, owner_line
from kdshell.commands.whea import record_lines
from kdshell.dumpfile.acpi import acpi_headers
from kdshell.dumpfile.regvalues import parse_values
from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.pool import PAGE, KernelPool
from kdshell.kernel.whea import find_copy, parse_record, read_record, section_summary

# KDSHELL_FUZZ_EXAMPLES=20000 for a longer run by hand
FAST = settings(max_examples=int(os.environ.get("KDSHELL_FUZZ_EXAMPLES", "250")), deadline=None, derandomize=os.environ.get("KDSHELL_FUZZ_RANDOM") is None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SECONDS = 2  # one input: far more than a decoder of a few KiB needs


@contextmanager
def time_limit() -> Iterator[None]:
    def stop(signum: int, frame: object) -> None:
        raise TimeoutError("a decoder ran past its time limit (a hang)")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def answer_or_kderror(run: Callable[[], object]) -> None:
    with time_limit():
        try:
            run()
        except KdError as e:
            assert "\n" not in str(e) and str(e)


def mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    """The seed with a few bytes, aligned integers or its length changed; or random bytes."""
    interesting = [0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x24, 0x48, 0x80, 0x1000]

    @st.composite
    def one(draw: st.DrawFn) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 6))):
            if not data:
                break
            at = draw(st.integers(0, len(data) - 1))
            how = draw(st.sampled_from(["byte", "u32", "u16", "cut", "grow"]))
            if how == "byte":
                data[at] = draw(st.integers(0, 255))
            elif how in ("u32", "u16") and at + 4 <= len(data):
                size = 4 if how == "u32" else 2
                at &= ~(size - 1)
                data[at:at + size] = (draw(st.sampled_from(interesting)) & (1 << 8 * size) - 1).to_bytes(size, "little")
            elif how == "cut":
                del data[at:]
            else:
                data += draw(st.binary(max_size=64))
        return bytes(data)

    return st.one_of(one(), st.binary(max_size=len(seed) + 64))


def guid_le(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


# -- WHEA: a CPER record with a section of each decoded kind --------------------------------------
SECTIONS = [  # type GUID (UEFI spec, appendix N), body size
    ("9876ccad-47b4-4bdb-b65e-16f193c4f3db", 0xC0),   # processor generic
    ("dc3ea0b0-a144-4797-b95b-53fa242b6e1d", 0x80),   # x86/x64 processor specific, 1 info entry
    ("e19e3d16-bc11-11e4-9caa-c2051d5d46b0", 0x48),   # ARM processor specific, 1 error entry
    ("a5bc1114-6f64-4ede-b863-3e83ed7c83b1", 0x50),   # memory
    ("d995e954-bbc1-430f-ad91-b44dcb3c6f35", 0x90),   # PCI Express
    ("8a1e1d01-42f9-4557-9c33-565e5cc3f7e8", 0x48),   # Windows' x86/x64 MCA
]


def cper_record() -> bytes:
    count = len(SECTIONS)
    body_at = 0x80 + 0x48 * count
    bodies, descriptors, at = b"", b"", body_at
    for i, (guid, size) in enumerate(SECTIONS):
        body = bytearray(size)
        body[0:8] = struct.pack("<Q", 0xFFFF if i != 1 else (1 | 2 | 1 << 2))  # valid bits; x86: one info entry
        if i == 2:
            body[4:6] = struct.pack("<H", 1)  # ARM error info count
        bodies += bytes(body)
        descriptors += (struct.pack("<IIHBxI", at, size, 0x300, 3, 1) + guid_le(guid) + bytes(16)
                        + struct.pack("<I", 1) + b"FRU text".ljust(20, b"\0"))
        at += size
    length = at
    head = (b"CPER" + struct.pack("<HIHIII", 0x210, 0xFFFFFFFF, count, 1, 7, length) + bytes([5, 4, 3, 0, 2, 1, 26, 20])
            + bytes(16) * 4 + struct.pack("<QI", 0x1234, 0) + bytes(0x80 - 0x6C))
    return head + descriptors + bodies


CPER = cper_record()


def test_the_cper_seed_decodes_whole():
    rec = parse_record(CPER, 0x1000)
    assert [s.problem for s in rec.sections] == [None] * len(SECTIONS)
    assert all(getattr(s, a) is not None for s, a in zip(rec.sections, ("generic", "xpf", "arm", "memory", "pcie", "mca")))


@FAST
@given(mutated(CPER))
def test_fuzz_cper_record(data: bytes) -> None:
    def run() -> None:
        for rec in (parse_record(data, 0xFFFFF80000001000), find_copy(b"junk" + data, 0x2000)):
            if rec is not None:
                record_lines(rec)
                [section_summary(s) for s in rec.sections]

        def read(address: int, size: int) -> bytes:
            if address + size > len(data):
                raise MemoryNotPresent(address, "past the fuzz input")
            return data[address:address + size]
        record_lines(read_record(read, 0))
    answer_or_kderror(run)


# -- !sysinfo gbl: ACPI table headers one after another -------------------------------------------
def acpi_header(sig: bytes, length: int) -> bytes:
    return struct.pack("<4sIBB6s8sI4sI", sig, length, 2, 0x5A, b"OEMID ", b"TABLEID ", 1, b"CRTR", 0x20200101)


ACPI = (acpi_header(b"FACP", 0x114) + bytes(0x44 - 36) + acpi_header(b"DSDT", 0x9000)
        + acpi_header(b"MCFG", 0x3C) + bytes(0x3C - 36) + acpi_header(b"APIC", 0x90) + bytes(0x44 - 36))


def test_the_acpi_seed_decodes_whole():
    assert [h.signature for h in acpi_headers(ACPI)] == ["FACP", "DSDT", "MCFG", "APIC"]


@FAST
@given(mutated(ACPI))
def test_fuzz_acpi_headers(data: bytes) -> None:
    def run() -> None:
        for h in acpi_headers(data):
            f"{h.signature:<9} {h.length:08x} {h.oem_id:<6} {h.oem_table_id:<12} {h.creator_id:<7}"
    answer_or_kderror(run)


# -- !sysinfo cpuinfo: CentralProcessor\0's value records ------------------------------------------
def reg_record(name: str, kind: int, data: bytes) -> bytes:
    raw = (name + "\0").encode("utf-16-le")
    return struct.pack("<I", len(raw)) + raw + struct.pack("<II", kind, len(data)) + data


REGISTRY = (reg_record("~MHz", 4, struct.pack("<I", 3600)) + reg_record("Update Status", 4, b"\x02\0\0\0")
            + reg_record("Identifier", 1, "Intel64 Family 6".encode("utf-16-le") + b"\0\0")
            + reg_record("Update Revision", 3, bytes(range(8))) + reg_record("MSR8B", 11, struct.pack("<Q", 0xF0)))


def test_the_registry_seed_decodes_whole():
    assert [v.name for v in parse_values(REGISTRY)] == ["~MHz", "Update Status", "Identifier", "Update Revision",
                                                        "MSR8B"]


@FAST
@given(mutated(REGISTRY))
def test_fuzz_cpu_registry_values(data: bytes) -> None:
    def run() -> None:
        for v in parse_values(data):
            f"{v.name} = {v.type_name} {v.text}"
    answer_or_kderror(run)


# -- !pool: a pool page of x64 POOL_HEADERs, a big-page table and a tag table ---------------------
BASE = 0xFFFF_A000_0000_0000
TABLES = BASE + PAGE  # the variables, then the tables, in the page after the pool page


class FakeMemory:
    def __init__(self, data: bytes):
        self.data = data

    def read(self, address: int, size: int) -> bytes:
        if not BASE <= address or address + size > BASE + len(self.data):
            raise MemoryNotPresent(address, "outside the fuzz input")
        return self.data[address - BASE:address - BASE + size]


VARIABLES = {"PoolBigPageTable": TABLES, "PoolBigPageTableSize": TABLES + 8, "PoolTrackTable": TABLES + 0x10,
             "PoolTrackTableSize": TABLES + 0x18, "MmNonPagedPoolStart": TABLES + 0x20,
             "MmNonPagedPoolEnd": TABLES + 0x28}


def pool_memory() -> bytes:
    page = b""
    previous = 0
    for size, tag in ((0x40, b"Irp "), (0x80, b"File"), (PAGE - 0xC0, b"Free")):
        page += struct.pack("<I4sQ", previous // 16 | (size // 16) << 16 | (1 if tag != b"Free" else 0) << 24, tag, 0)
        page += bytes(size - 16)
        previous = size
    big_at, track_at = TABLES + 0x40, TABLES + 0x40 + 2 * 0x18
    variables = struct.pack("<6Q", big_at, 2, track_at, 2, BASE, BASE + PAGE)
    variables += bytes(0x40 - len(variables))
    big = struct.pack("<QI4xQ", BASE + 0x10000, 0x6C6F6F50, 0x2000) + struct.pack("<QI4xQ", BASE + 0x20001, 0x41414141, 0x3000)
    track = (struct.pack("<IIIIQIIQ", 0x20707249, 5, 2, 0, 0x300, 0, 0, 0)
             + struct.pack("<IIIIQIIQ", 0x656C6946, 0, 0, 0, 0, 7, 1, 0x600))
    return page + variables + big + track


POOL = pool_memory()


def kernel_pool(data: bytes) -> KernelPool:
    return KernelPool(FakeMemory(data), None, True, VARIABLES.get, lambda name: None)


def test_the_pool_seed_decodes_whole():
    pool = kernel_pool(POOL)
    walk = pool.walk_page(BASE + 0x50)
    assert walk.problem is None and [(b.size, b.tag_text) for b in walk.blocks] == [
        (0x40, "Irp "), (0x80, "File"), (PAGE - 0xC0, "Free")]
    assert [b.tag_text for b in pool.big_pages()] == ["Pool", "AAAA"]
    assert [t.tag_text for t in pool.tracker()] == ["Irp ", "File"]


@FAST
@given(mutated(POOL), st.integers(0, 2 * PAGE - 1))
def test_fuzz_pool_headers(data: bytes, offset: int) -> None:
    def run() -> None:
        pool = kernel_pool(data)
        for block in pool.walk_page(BASE + offset).blocks:
            block_line(block, block.contains(BASE + offset), True)
            owner_line(block.tag_text)
        found = pool.find(BASE + offset)
        if found is not None:
            block_line(found, True, True)
        for block in pool.big_pages():
            block_line(block, False, True)
        for use in pool.tracker():
            (use.tag_text, use.nonpaged_used, use.paged_used)
        pool.scan_small(lambda b: b.allocated)
    answer_or_kderror(run)


@pytest.mark.parametrize("data", [b"", b"CPER", b"CPER" + b"\xff" * 0x7C, CPER[:0x80], CPER[:-1]])
def test_short_cper_inputs(data: bytes) -> None:
    answer_or_kderror(lambda: parse_record(data, 0))


def test_a_huge_acpi_blob_is_searched_only_as_far_as_a_real_one_reaches():
    """A damaged blob of megabytes: the search stops at MAX_BLOB (a few KiB is real) instead of
    taking seconds per MiB."""
    from kdshell.dumpfile.acpi import MAX_BLOB

    data = ACPI + b"A" * (MAX_BLOB - len(ACPI)) + acpi_header(b"SSDT", 0x100) + b"A" * (4 << 20)
    with time_limit():
        assert [h.signature for h in acpi_headers(data)] == ["FACP", "DSDT", "MCFG", "APIC"]
