"""!sysinfo cpuinfo / cpuspeed from the processor's registry values a small dump keeps in its
secondary data (issue 19 part 1). Expected values: the records walked here from the blob's bytes
(NameLength u32, UTF-16 name, Type u32, DataLength u32, data), and records packed here into a
synthetic dump."""
from __future__ import annotations

import struct
import uuid

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, MINI_17763, TRIAGE_19041
from dumpfactory import write_kind
from test_blackbox import raw_blobs

TAG = "6c7ac389-4313-47dc-9f34-a8800a0fb56c"


def records(blob: bytes) -> dict[str, tuple[int, bytes]]:
    out, at = {}, 0
    while at < len(blob):
        n = struct.unpack_from("<I", blob, at)[0]
        name = blob[at + 4:at + 2 + n].decode("utf-16-le")
        kind, size = struct.unpack_from("<II", blob, at + 4 + n)
        out[name] = (kind, blob[at + 12 + n:at + 12 + n + size])
        at += 12 + n + size
    return out


@pytest.mark.parametrize("path", [TRIAGE_19041, MINI_17763], ids=["19041", "17763"])
def test_cpuinfo_prints_the_registry_values(path):
    raw = path.read_bytes()
    offset, size = raw_blobs(raw)[TAG]
    values = records(raw[offset:offset + size])
    name = values["ProcessorNameString"][1].decode("utf-16-le").rstrip("\0 ")
    mhz = struct.unpack("<I", values["~MHz"][1])[0]
    with kdshell.open(path, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.progress = None
        info = s.capture("!sysinfo cpuinfo").splitlines()
        speed = s.capture("!sysinfo cpuspeed").splitlines()
    assert info[0] == "[CPU Information]"
    assert [line.split(" = ")[0] for line in info[1:1 + len(values)]] == list(values)
    assert f"ProcessorNameString = REG_SZ {name}" in info and f"~MHz = REG_DWORD {mhz}" in info
    assert values["Configuration Data"][0] == 9
    config = ",".join(f"{b:x}" for b in values["Configuration Data"][1])
    assert f"Configuration Data = REG_FULL_RESOURCE_DESCRIPTOR {config}" in info
    assert speed[0] == f'CPUID:        "{name}"'


def test_cpuinfo_from_packed_records(tmp_path):
    def record(name: str, kind: int, data: bytes) -> bytes:
        n = (name + "\0").encode("utf-16-le")
        return struct.pack("<I", len(n)) + n + struct.pack("<II", kind, len(data)) + data

    blob = (record("~MHz", 4, struct.pack("<I", 2400)) + record("Identifier", 1, "Fixture Family 1\0".encode("utf-16-le"))
            + record("Feature Set", 11, struct.pack("<Q", 0x3D1B3FFF)) + b"\xff\xff")  # trailing junk: ignored
    path = write_kind(tmp_path, "triage", blobs=[(uuid.UUID(TAG).bytes_le, blob)], name="reg.dmp")
    with kdshell.open(path, symbol_path="", image_path="") as s:
        s.progress = None
        info = s.capture("!sysinfo cpuinfo").splitlines()
    assert info[1:4] == ["~MHz = REG_DWORD 2400", "Identifier = REG_SZ Fixture Family 1",
                         "Feature Set = REG_QWORD 3d1b3fff"]
