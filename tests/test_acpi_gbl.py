"""!sysinfo gbl (issue 19 part 1): the ACPI table headers a small dump keeps in its secondary data.
Expected values: the corpus 19041 dump's blob bytes read here at the ACPI specification's header
offsets (Signature +0, Length +4, Revision +8, Checksum +9, OEMID +0xA, OEM Table ID +0x10, OEM
Revision +0x18, Creator ID +0x1C, Creator Revision +0x20), and headers packed here into a
synthetic dump's secondary data."""
from __future__ import annotations

import struct
import uuid

import kdshell
from conftest import TRIAGE_19041
from dumpfactory import write_kind
from test_blackbox import raw_blobs

TAG = "e83b40d2-b0a0-4842-abea-71c9e3463dd1"


def header(sig: bytes, length: int, rev: int, oem: bytes, table: bytes, oem_rev: int, creator: bytes, crev: int) -> bytes:
    return struct.pack("<4sIBB6s8sI4sI", sig, length, rev, 0x5A, oem, table, oem_rev, creator, crev)


def test_gbl_on_the_corpus_small_dump():
    raw = TRIAGE_19041.read_bytes()
    offset, size = raw_blobs(raw)[TAG]
    blob = raw[offset:offset + size]
    with kdshell.open(TRIAGE_19041, symbol_path="", image_path="") as s:
        out = s.capture("!sysinfo gbl").splitlines()
    rows = out[2:]
    assert out[0].endswith(f": {len(rows)} tables") and len(rows) == 17
    # the first table is whole (MCFG, 0x3C bytes): the second header follows it
    sig, length, rev, checksum, oem, table, oem_rev, creator, crev = struct.unpack_from("<4sIBB6s8sI4sI", blob, 0)
    assert (sig, length) == (b"MCFG", 0x3C)
    assert rows[0].split() == ["MCFG", f"{length:08x}", f"{rev:02x}", f"{checksum:02x}", oem.decode().strip("\0"),
                               "A", "M", "I", f"{oem_rev:08x}", creator.decode(), f"{crev:08x}"]
    assert struct.unpack_from("<4sI", blob, 0x3C) == (b"FACP", 0x114) and rows[1].startswith("FACP      00000114")
    assert [r.split()[0] for r in rows].count("SSDT") == blob.count(b"SSDT")


def test_gbl_on_synthetic_secondary_data_and_without_it(tmp_path):
    rsdt = header(b"RSDT", 0x40, 1, b"FIXTUR", b"KDSHELL ", 0x20240312, b"KDSH", 1)
    dsdt = header(b"DSDT", 0x1234, 2, b"FIXTUR", b"KDSHELL ", 2, b"INTL", 0x20200925)
    hpet = header(b"HPET", 0x38, 1, b"FIXTUR", b"KDSHELL ", 3, b"KDSH", 1) + bytes(0x38 - 36)
    blob = rsdt + bytes(0x40 - 36) + dsdt + hpet
    path = write_kind(tmp_path, "full", blobs=[(uuid.UUID(TAG).bytes_le, blob)], name="gbl.dmp")
    with kdshell.open(path, symbol_path="", image_path="") as s:
        rows = s.capture("!sysinfo gbl").splitlines()[2:]
    assert [r.split()[:3] for r in rows] == [["RSDT", "00000040", "01"], ["DSDT", "00001234", "02"],
                                             ["HPET", "00000038", "01"]]
    assert rows[1].split()[-2:] == ["INTL", "20200925"] and rows[0].split()[4] == "FIXTUR"
    with kdshell.open(write_kind(tmp_path, "full", name="none.dmp"), symbol_path="", image_path="") as s:
        out = s.capture("!sysinfo gbl").splitlines()
    assert len(out) == 1 and "no ACPI table headers" in out[0]
