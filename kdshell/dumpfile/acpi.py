"""The ACPI table headers Windows saves in a dump's secondary data (!sysinfo gbl).

A small dump of Windows 10 carries a DUMP_BLOB tagged {E83B40D2-B0A0-4842-ABEA-71C9E3463DD1}
holding the firmware's ACPI tables one after another, each as its 36-byte header (ACPI
specification, "System Description Table Header": Signature char[4] +0, Length u32 +4, Revision
+8, Checksum +9, OEMID char[6] +0xA, OEM Table ID char[8] +0x10, OEM Revision u32 +0x18, Creator
ID char[4] +0x1C, Creator Revision u32 +0x20) followed by the start of its body: in the corpus's
19041 small dump each entry is the table's first min(Length, 0x44) bytes (MCFG whole at 0x3C,
FACP 0x44 of 0x114), except the AML tables (DSDT, SSDT), kept as the header alone. The kept
length is not recorded, so the next header is expected there and otherwise searched for by its
shape: a signature of four capitals/digits, a Length of at least 36, printable OEM and Creator IDs.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

ACPI_BLOB_TAG = "e83b40d2-b0a0-4842-abea-71c9e3463dd1"
HEADER_SIZE = 36
MAX_TABLE = 0x100000
KEPT = 0x44  # bytes of each table the kernel saves (observed; see above)
# A blob holds tens of tables of at most KEPT bytes (a few KiB); a bigger one is damage, and the
# byte-by-byte search for the next header costs about a second per MiB: only this much is searched.
MAX_BLOB = 0x40000
AML_TABLES = ("DSDT", "SSDT")
_SIG_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
_TEXT = frozenset(range(0x20, 0x7F)) | {0}


@dataclass(frozen=True)
class AcpiHeader:
    offset: int  # in the blob
    signature: str
    length: int
    revision: int
    checksum: int
    oem_id: str
    oem_table_id: str
    oem_revision: int
    creator_id: str
    creator_revision: int


def _text(raw: bytes) -> str:
    return raw.split(b"\0")[0].decode("ascii").rstrip()


def _header_at(data: bytes, at: int) -> AcpiHeader | None:
    raw = data[at:at + HEADER_SIZE]
    if len(raw) < HEADER_SIZE or not set(raw[:4]) <= _SIG_CHARS:
        return None
    sig, length, rev, checksum, oem, table_id, oem_rev, creator, creator_rev = struct.unpack(
        "<4sIBB6s8sI4sI", raw)
    if not HEADER_SIZE <= length <= MAX_TABLE or not set(oem) <= _TEXT or not set(table_id) <= _TEXT:
        return None
    if not set(creator) <= _TEXT - {0} or not oem.strip(b"\0 "):
        return None
    return AcpiHeader(at, sig.decode(), length, rev, checksum, _text(oem), _text(table_id), oem_rev,
                      _text(creator), creator_rev)


def acpi_headers(data: bytes) -> list[AcpiHeader]:
    """Every table header in the blob's first MAX_BLOB bytes, in order."""
    data = data[:MAX_BLOB]
    out: list[AcpiHeader] = []
    at = 0
    while at + HEADER_SIZE <= len(data):
        found = _header_at(data, at)
        if found is None:
            at += 1
            continue
        out.append(found)
        kept = HEADER_SIZE if found.signature in AML_TABLES else min(found.length, KEPT)
        at = at + kept if _header_at(data, at + kept) is not None else at + HEADER_SIZE
    return out
