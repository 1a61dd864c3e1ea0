"""!handle against the machines' truth: every process's handles (made by the kernel's
ObpCreateHandle) with the object each names; a small dump says in one line what it lacks."""
import re

import pytest

import kdshell
from conftest import REPO, corpus_dumps_if_present, open_corpus, open_machine
from kdshell.kernel.handles import decode_entry

BIN = REPO / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"



@pytest.mark.parametrize("name,kind", [("3b", "kernel"), ("d1-x86", "complete")])
def test_every_process_handle_is_listed(machines, name, kind):
    truth = machines.truth(name)
    with open_machine(machines, name, kind) as s:
        for p in truth["processes"]:
            if not p["handles"]:
                continue
            out = s.capture(f"!handle 0 1 {p['address']:x}").splitlines()
            w = 16 if truth["arch"] == "x64" else 8
            assert out[0] == f"PROCESS {p['address']:0{w}x}"
            got = {}
            for line in out:
                m = re.match(r"^([0-9a-f]{4,}): Object: ([0-9a-f]+)  GrantedAccess: [0-9a-f]{8} Entry: [0-9a-f]+$", line)
                if m:
                    got[int(m.group(1), 16)] = int(m.group(2), 16)
            assert got == {int(h): o for h, o in p["handles"].items()}, p["name"]
            assert f"with {len(p['handles'])} entries in use" in out[3]
            one = next(iter(p["handles"]))
            only = s.capture(f"!handle {int(one):x} 3 {p['address']:x}").splitlines()
            assert only[5].startswith(f"{int(one):04x}: Object: {p['handles'][one]:0{w}x}")
            assert only[6].startswith(f"Object: {p['handles'][one]:0{w}x}  Type: ")


def test_entry_encoding():
    # x64 (Windows 8+): header bits 4-47 in bits 20-63, access in the second qword's low 25 bits
    header = 0xFFFFC20A00053B10
    low = (((header >> 4) << 20) | 1) & (2**64 - 1)
    assert decode_entry(low.to_bytes(8, "little") + (0x1F0003).to_bytes(8, "little"), True, 19041) == (header, 0x1F0003)
    assert decode_entry(bytes(16), True, 19041) is None
    assert decode_entry((0x8A001238 | 1).to_bytes(4, "little") + (0x1F0001).to_bytes(4, "little"), False, 19041) == \
        (0x8A001238, 0x1F0001)


def test_small_dump(machines):
    with open_machine(machines, "3b", "small") as s:
        out = s.capture("!handle").splitlines()
        assert len(out) == 1 and "small memory dump keeps none" in out[0]


@pytest.mark.parametrize("path", corpus_dumps_if_present(), ids=lambda p: p.name)
def test_corpus_dumps(path):
    with open_corpus(path) as s:
        text = s.capture("!handle")
        assert "Traceback" not in text and "Internal error" not in text
        if s.kernel.small:
            assert len(text.splitlines()) == 1
