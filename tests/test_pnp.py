"""!irpfind on the test machines: the IRPs are the pool ledger's blocks tagged 'Irp ' (every
allocation the CPU made), the issuing thread and process come from the truth (3b: the stortool.exe
thread whose NtDeviceIoControlFile crashed); real small dumps answer in one line."""
import re

import pytest

import kdshell
from conftest import REPO, corpus_dumps_if_present, open_corpus, open_machine

BIN = REPO / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"
ROW = re.compile(r"^([0-9a-f]{16}) \[([0-9a-f]{16})\] irpStack: \(([ 0-9a-f?]{2}),([ 0-9a-f?]{2})\)  "
                 r"([0-9a-f]{16}) \[ ([^\]]*)\](?: 0x([0-9a-f]{16}))?$")



def rows(session):
    out = session.capture("!irpfind").splitlines()
    assert "Irp    [ Thread ] irpStack: (Mj,Mn)   DevObj  [Driver]         MDL Process" in out
    return [ROW.match(line) for line in out[out.index(
        "Irp    [ Thread ] irpStack: (Mj,Mn)   DevObj  [Driver]         MDL Process") + 1:]]


def test_irpfind_finds_the_ioctl_of_the_crashing_thread(machines):
    truth = machines.truth("3b")
    irps = [b["va"] for b in truth["pool"]["blocks"] if b["tag"] == "Irp " and not b["freed"]]
    crashing = truth["processors"][0]["current_thread"]
    thread = next(t for t in truth["threads"] if t["address"] == crashing)
    stortool = next(p for p in truth["processes"] if p["name"] == "stortool.exe")
    assert thread["process"] == stortool["address"]
    with open_machine(machines, "3b") as s:
        found = rows(s)
    assert all(found) and [int(m.group(1), 16) for m in found] == irps
    m = found[0]
    assert (int(m.group(2), 16), m.group(3), m.group(4), m.group(6), int(m.group(7), 16)) == \
        (crashing, " e", " 0", "\\Driver\\storfilt", stortool["address"])


def test_irpfind_follows_a_forwarded_request(machines):
    truth = machines.truth("7e-plain")
    irps = [b["va"] for b in truth["pool"]["blocks"] if b["tag"] == "Irp " and not b["freed"]]
    with open_machine(machines, "7e-plain") as s:
        found = rows(s)
    assert all(found) and [int(m.group(1), 16) for m in found] == irps
    # storfilt sent the first to itself and forwarded the descriptor to \Device\MyDrv in the second
    assert [m.group(6) for m in found] == ["\\Driver\\storfilt", "\\Driver\\mydrv"]


@pytest.mark.parametrize("path", corpus_dumps_if_present(), ids=lambda p: p.name)
def test_corpus_dumps(path):
    with open_corpus(path) as s:
        text = s.capture("!irpfind")
        assert "Traceback" not in text and "Internal error" not in text
        if s.kernel.small:
            assert len(text.splitlines()) == 1 and "small memory dump keeps no pool pages" in text


def test_analyze_9f_follows_the_blocked_irp(machines, tmp_path):
    """7e-plain relabelled as 0x9F P1=3 whose P4 is the IRP storfilt forwarded to \\Device\\MyDrv (the
    ledger's second 'Irp ' block): !analyze names mydrv as the driver holding it and lists the IRP's
    stack locations with the current one marked."""
    import shutil
    import struct

    truth = machines.truth("7e-plain")
    irp = [b["va"] for b in truth["pool"]["blocks"] if b["tag"] == "Irp " and not b["freed"]][1]
    path = tmp_path / "9f.dmp"
    shutil.copy(machines.path("7e-plain", "kernel"), path)
    with open(path, "r+b") as f:
        f.seek(0x38)
        f.write(struct.pack("<I", 0x9F))
        f.seek(0x40)
        f.write(struct.pack("<4Q", 3, 0, 0, irp))
    with kdshell.open(path, symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        out = s.capture("!analyze -v").splitlines()
    assert f"IRP_ADDRESS:  {irp >> 32:08x}`{irp & 0xFFFFFFFF:08x}" in out
    assert "IMAGE_NAME_OF_DRIVER:  mydrv.sys" in out
    at = out.index("IRP_STACK:  1 locations, current 1 (>)")
    assert out[at + 1].startswith("   >[IRP_MJ_DEVICE_CONTROL(e), ") and out[at + 1].endswith(" \\Driver\\mydrv")
