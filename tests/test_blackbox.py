"""!blackboxbsd/ntfs/pnp/winlogon and !analyze -v's BLACKBOX* lines (issue 19 part 3).

Expected values come from the raw bytes (the corpus dump's DumpBlob stream walked here with
struct) or from records packed here from RTL_BSD_DATA's literal offsets (ReactOS rtltypes.h).
"""
import struct
import uuid

import kdshell
from conftest import TRIAGE_19041
from dumpfactory import write_kind

BSD = "f57308df-cc45-4e01-ad76-29a4ebb010ec"
NTFS = "00afe9c4-940d-4213-8016-cd3719b5bc20"
PNP = "b7631941-532a-4cd6-b1b1-edb5917d4557"
WINLOGON = "80cc79cf-a719-4af1-bf97-fe29ff76ebc1"


def raw_blobs(data: bytes) -> dict[str, tuple[int, int]]:
    """tag -> (data offset, size), walking DUMP_BLOB headers independently of kdshell."""
    pos = data.index(b"DumpBlob")
    pos += struct.unpack_from("<I", data, pos + 8)[0]
    found = {}
    while pos + 0x20 <= len(data):
        hsize, tag, size, pre, post = struct.unpack_from("<I16sIII", data, pos)
        if hsize < 0x20 or pos + hsize + pre + size > len(data):
            break
        found[str(uuid.UUID(bytes_le=tag))] = (pos + hsize + pre, size)
        pos += hsize + pre + size + post
    return found


def test_corpus_19041_ntfs_black_box_and_missing_ones():
    raw = TRIAGE_19041.read_bytes()
    blobs = raw_blobs(raw)
    offset, size = blobs[NTFS]
    assert size == 0x1000 and BSD not in blobs and PNP not in blobs and WINLOGON not in blobs
    with kdshell.open(TRIAGE_19041, symbol_path="", image_path="") as s:
        s.progress = None
        ntfs = s.capture("!blackboxntfs").splitlines()
        assert ntfs[0] == ("NTFS black box: {00AFE9C4-940D-4213-8016-CD3719B5BC20} (nt!PopBlackBoxNtfsGuid) - "
                           "0x1000 bytes; no public layout, not decoded:")
        assert len(ntfs) == 1 + 0x100
        first = raw[offset:offset + 16]
        assert ntfs[1].startswith("00000000  " + " ".join(f"{b:02x}" for b in first[:8]) + "-")
        last = raw[offset + 0xFF0:offset + 0x1000]
        assert ntfs[-1].startswith("00000ff0  " + " ".join(f"{b:02x}" for b in last[:8]))
        for command, tag in (("!blackboxbsd", BSD), ("!blackboxpnp", PNP), ("!BlackBoxWinlogon", WINLOGON)):
            text = s.capture(command).splitlines()
            assert len(text) == 1 and "{" + tag.upper() + "}" in text[0] and text[0].startswith("No ")
        verbose = s.capture("!analyze -v").splitlines()
        i = verbose.index("BLACKBOXNTFS: 1 (!blackboxntfs)")
        assert verbose[i + 1:i + 3] == ["", ""]
        assert not [line for line in verbose if line.startswith(("BLACKBOXBSD", "BLACKBOXPNP", "BLACKBOXWINLOGON"))]
        assert verbose[i + 3] == "PROCESS_NAME:  System"  # WinDbg's place: just before PROCESS_NAME


def test_dump_without_secondary_data(tmp_path):
    with kdshell.open(write_kind(tmp_path, "full"), symbol_path="", image_path="") as s:
        for command in ("!blackboxbsd", "!blackboxntfs"):
            text = s.capture(command).splitlines()
            assert len(text) == 1 and "has no secondary data" in text[0]
            assert "complete, kernel and small memory dumps" in text[0]
        assert s.capture("!blackboxbsd x").strip() == "!blackboxbsd takes no arguments"


def bsd_record(version: int = 0x88) -> bytes:
    """An RTL_BSD_DATA with Microsoft Learn's example values, packed at ReactOS's offsets."""
    r = bytearray(0x88)
    struct.pack_into("<II", r, 0, version, 1)
    r[8:13] = bytes([0, 30, 1, 0, 0])  # AabEnabled, AabTimeout, LastBootSucceeded, LastBootShutdown, Sleep
    struct.pack_into("<QBBBBH", r, 0x10, 0, 0x61, 5, 12, 31, 8)  # running + sleep 6, ids, reasons, count
    struct.pack_into("<QII", r, 0x20, 0x1D3645F716B79E3, 0xB6AE84B7, 6)
    r[0x30:0x33] = bytes([1, 1, 0x7F])
    struct.pack_into("<III", r, 0x34, 6, 2, 5)
    struct.pack_into("<IIIII", r, 0x40, 0, 0, 0, 0, 0)
    struct.pack_into("<QIHBB", r, 0x58, 0x1D365B105EB9E3B, 6, 6, 0x20, 0)
    struct.pack_into("<QIHHB", r, 0x68, 0x1D36112993B1191, 5, 6, 0, 1)
    struct.pack_into("<III", r, 0x7C, 9, 0, 77)
    return bytes(r)


def test_synthetic_bsd_and_pnp_black_boxes(tmp_path):
    pnp = bytes(range(0x30))
    path = write_kind(tmp_path, "triage", blobs=[(BSD, bsd_record()), (PNP, pnp), (WINLOGON, b"")])
    with kdshell.open(path, symbol_path="", image_path="") as s:
        s.progress = None
        text = s.capture("!blackboxbsd").splitlines()
        for line in ("Version: 136", "Product type: 1", "Advanced boot menu timeout: 30",
                     "Last boot succeeded: TRUE", "System running: TRUE", "Sleep in progress: 6",
                     "Connected standby scenario instance id: 5", "Connected standby entry reason: 12",
                     "Connected standby exit reason: 31", "System sleep transitions to on: 8",
                     "Last reference time: 0x1d3645f716b79e3", "Last reference time checksum: 0xb6ae84b7",
                     "Last update boot id: 6", "Checksum: 0x7f", "Last successful shutdown boot id: 2",
                     "Last reported abnormal shutdown boot id: 5",
                     "Power button last press time: 0x1d365b105eb9e3b",
                     "Power button last power watchdog stage: 0x20", "Power button watchdog armed: FALSE",
                     "Power button last release time: 0x1d36112993b1191",
                     "Power button cumulative release count: 5", "Power button current connected standby phase: 1",
                     "Power button transition latest checkpoint id: 9",
                     "Power button transition latest checkpoint sequence number: 77"):
            assert line in text, line
        assert text[-1] == "Power button transition latest checkpoint sequence number: 77"
        pnp_text = s.capture("!blackboxpnp").splitlines()
        assert pnp_text[0].startswith("Plug and Play black box: {B7631941-532A-4CD6-B1B1-EDB5917D4557}")
        assert "- 0x30 bytes" in pnp_text[0] and len(pnp_text) == 4
        assert pnp_text[1] == "00000000  00 01 02 03 04 05 06 07-08 09 0a 0b 0c 0d 0e 0f  ................"
        verbose = s.capture("!analyze -v").splitlines()
        i = verbose.index("BLACKBOXBSD: 1 (!blackboxbsd)")
        assert verbose[i:i + 7] == ["BLACKBOXBSD: 1 (!blackboxbsd)", "", "", "BLACKBOXPNP: 1 (!blackboxpnp)", "", "",
                                    "BLACKBOXWINLOGON: 1"]
        assert "BLACKBOXNTFS: 1 (!blackboxntfs)" not in verbose


def test_short_bsd_record_stops_at_its_version(tmp_path):
    # Version 0x54 covers the error info but not the power button section.
    path = write_kind(tmp_path, "triage", blobs=[(BSD, bsd_record(0x54)[:0x54])])
    with kdshell.open(path, symbol_path="", image_path="") as s:
        text = s.capture("!blackboxbsd").splitlines()
        assert text[0] == "Version: 84" and text[-1] == "Error info other error count: 0"
        assert not [line for line in text if line.startswith("Power button last")]
    path = write_kind(tmp_path, "triage", name="tiny.dmp", blobs=[(BSD, struct.pack("<I", 0x20) + bytes(0x1C))])
    with kdshell.open(path, symbol_path="", image_path="") as s:
        assert s.capture("!blackboxbsd").strip() == "Boot status data too short to decode: version 0x20, 0x20 bytes."
