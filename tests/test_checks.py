"""!error and !verifier (issue 19 part 5). !error's expected names and numbers are the public
headers' (ntstatus.h, winerror.h) written out here; !verifier's come from the corpus dump's own
bytes (the KDBG copy's MmVerifierData pointer, KDDEBUGGER_DATA64 +0x248, and the triage data
block that holds it, formats.md §6) and from a MM_DRIVER_VERIFIER_DATA packed here."""
from __future__ import annotations

import struct

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, MINI_17763, REPO, TRIAGE_19041
from kdshell.analysis.codes import describe, error_line
from kdshell.kernel.layout import StructLayout
from kdshell.kernel.verifier import FIELDS, flag_lines, read_verifier, statistics_lines
from kdshell.errors import MemoryNotPresent

BIN = REPO / "fixtures" / "images" / "bin"

HEADER_FACTS = [  # value, flags, kind, name, the wrapped code
    (0xC0000005, 0, "NTSTATUS", "STATUS_ACCESS_VIOLATION", ""),
    (0xC000009A, 0, "NTSTATUS", "STATUS_INSUFFICIENT_RESOURCES", ""),
    (0x80000003, 0, "NTSTATUS", "STATUS_BREAKPOINT", ""),
    (0x00000103, 1, "NTSTATUS", "STATUS_PENDING", ""),
    (0x00000005, 0, "Win32", "ERROR_ACCESS_DENIED", ""),
    (0x00000002, 0, "Win32", "ERROR_FILE_NOT_FOUND", ""),
    (0x000003E5, 0, "Win32", "ERROR_IO_PENDING", ""),
    (0x80004005, 0, "HRESULT", "E_FAIL", ""),
    (0x80070057, 0, "HRESULT", "E_INVALIDARG", ""),
    (0x80070002, 0, "HRESULT", "ERROR_FILE_NOT_FOUND", "Win32 2"),
    (0xD0000022, 0, "HRESULT", "STATUS_ACCESS_DENIED", "NTSTATUS 0xc0000022"),
]


@pytest.mark.parametrize("value,flags,kind,name,via", HEADER_FACTS)
def test_error_codes_by_kind(value, flags, kind, name, via):
    code = describe(value, flags)
    assert (code.kind, code.name, code.via) == (kind, name, via)


def test_error_table_is_consistent():
    text = (REPO / "kdshell" / "data" / "errors.tsv").read_text()
    seen: dict[str, set] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        kind, code, name, words = line.split("\t")
        assert kind in ("ntstatus", "win32", "hresult") and int(code, 16) <= 0xFFFFFFFF and words.strip()
        assert name not in seen.setdefault(kind, set()), name
        seen[kind].add(name)
        if kind == "ntstatus":
            assert name.startswith("STATUS_"), name
    assert len(seen["ntstatus"]) > 150 and len(seen["win32"]) > 150


@pytest.mark.parametrize("path", [TRIAGE_19041, "machine"])
def test_error_command_layout(path, machines):
    dump = machines.path("d1", "kernel") if path == "machine" else path
    with kdshell.open(dump, symbol_path="", image_path="") as s:
        assert s.capture("!error c0000005").splitlines() == [
            "Error code: (NTSTATUS) 0xc0000005 (3221225477) - STATUS_ACCESS_VIOLATION: an invalid memory address "
            "was read, written or executed"]
        assert s.capture("!error 80070002").startswith(
            "Error code: (HRESULT) 0x80070002 (2147942402) - ERROR_FILE_NOT_FOUND (Win32 2 as an HRESULT): ")
        assert s.capture("!error 0n4660").splitlines() == [
            "Error code: (Win32) 0x1234 (4660) - <Unable to get error code text>"]
        for bad in ("!error", "!error nosuchsymbol!x"):
            out = s.capture(bad).splitlines()
            assert len(out) == 1 and out[0].startswith("!error: ")


def verifier_bytes_in(path) -> tuple[int, bytes | None]:
    raw = path.read_bytes()
    blocks_at, count = struct.unpack_from("<II", raw, 0x2000 + 0x78)
    kdbg_at = struct.unpack_from("<I", raw, 0x2000 + 0x70)[0]
    va = struct.unpack_from("<Q", raw, kdbg_at + 0x248)[0]
    for i in range(count):
        address, offset, size = struct.unpack_from("<QII", raw, blocks_at + 16 * i)
        if address <= va and va + 0x70 <= address + size:
            return va, raw[offset + va - address:offset + va - address + 0x70]
    return va, None


def test_verifier_on_the_corpus_small_dumps():
    va, data = verifier_bytes_in(TRIAGE_19041)
    assert data is not None  # Windows saved MmVerifierData in this minidump
    level = struct.unpack_from("<I", data)[0]
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        out = s.capture("!verifier").splitlines()
        assert level == 0 and out[0] == "Driver Verifier is not enabled (level 0)."
        assert out[1] == "Verify Flags Level 0x00000000"
        assert not [line for line in out if line.startswith("    [X] (")]
        attempted = struct.unpack_from("<I", data, 0x10)[0]
        assert f"  {'Pool Allocations Attempted':<38} 0x{attempted:x}" in out
    va, data = verifier_bytes_in(MINI_17763)
    assert data is None
    with kdshell.open(MINI_17763, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        out = s.capture("!verifier").splitlines()
        assert out == [f"!verifier: nt!MmVerifierData ({va:#x}) is not in the dump (a small dump keeps it only "
                       "sometimes; a kernel or complete dump does)"]


def test_verifier_on_a_machine_without_the_variable(machines):
    with kdshell.open(machines.path("d1", "kernel"), symbol_path=str(BIN), image_path="") as s:
        out = s.capture("!verifier").splitlines()
        assert len(out) == 1 and "nt!MmVerifierData is not known" in out[0]


class FakeMemory:
    def __init__(self, base: int, data: bytes):
        self.base, self.data = base, data

    def read(self, address: int, size: int) -> bytes:
        if not (self.base <= address and address + size <= self.base + len(self.data)):
            raise MemoryNotPresent(address, "outside the fake")
        return self.data[address - self.base:address - self.base + size]


class NoOffsets:
    def offset(self, type_name, path):
        return None

    def source(self, type_name, path):
        return None


def test_verifier_decodes_mm_driver_verifier_data():
    # /standard = 0x209BB: special pool, IRQL, pool tracking, I/O, deadlock, DMA, security, misc, DDI
    ulongs = [0x209BB, 3, 7, 0, 0x1B5AE, 0x1B5A0, 0x1B000, 0, 0, 0, 0xE, 0, 0x1C, 1, 0, 0, 0x40, 0x50, 0x60, 0x70]
    sizes = [0x1000, 0x2000, 0x3000, 0x4000]
    raw = struct.pack("<20I4Q", *ulongs, *sizes)
    base = 0xFFFFF800_12340000
    data = read_verifier(FakeMemory(base, raw), base, StructLayout(NoOffsets(), FIELDS), True)
    assert data.level == 0x209BB and data.values["AllocationsAttempted"] == 0x1B5AE
    assert data.values["PeakNonPagedBytes"] == 0x4000
    lines = flag_lines(data.level)
    on = {line[9:19] for line in lines if line.startswith("    [X] (0x")}
    assert on == {f"{b:#010x}" for b in (0, 1, 2, 8, 0x10, 0x20, 0x80, 0x100, 0x800, 0x20000)}
    assert "  Pool Allocations Failed                0xe" in statistics_lines(data)
    assert "  RaiseIrqls           0x3" in statistics_lines(data)


def test_analyze_for_0xc4_points_at_verifier(tmp_path):
    from dumpfactory import write_kind

    path = write_kind(tmp_path, "triage", bugcheck_code=0xC4, bugcheck_parameters=(0x62, 0, 0, 0))
    with kdshell.open(path, symbol_path="", image_path="") as s:
        s.progress = None
        out = s.capture("!analyze -v").splitlines()
        level = next(line for line in out if line.startswith("VERIFIER_LEVEL:"))
        assert "nt!MmVerifierData" in level  # this synthetic dump does not have it: the line says why
        teach = s.capture("!analyze -teach")
        assert "!verifier" in teach


def test_verified_drivers_from_the_driver_buffer():
    """nt!MmVerifyDriverBuffer -> the VerifyDrivers names (UTF-16, blank-separated), its length in bytes."""
    from kdshell.kernel.verifier import read_verified_drivers

    names = "mydrv.sys storfilt.sys\0".encode("utf-16-le")
    base = 0xFFFFF800_00010000
    layout = {0x100: struct.pack("<Q", base + 0x1000), 0x108: struct.pack("<I", len(names)), 0x1000: names}

    class Memory:
        def read(self, address: int, size: int) -> bytes:
            chunk = layout.get(address - base)
            if chunk is None or size > len(chunk):
                raise MemoryNotPresent(address, "not in the fake")
            return chunk[:size]

    assert read_verified_drivers(Memory(), base + 0x100, base + 0x108, True) == ["mydrv.sys", "storfilt.sys"]
    assert read_verified_drivers(Memory(), base + 0x200, base + 0x108, True) is None  # the buffer variable absent
