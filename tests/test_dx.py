"""dx: C++ expressions in the data model's tree layout, against the test machine's truth and on
a corpus dump."""
import re

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, REPO, TRIAGE_19041

BIN = REPO / "fixtures" / "images" / "bin"


def test_dx_process_fields_match_truth(machines):
    truth = machines.truth("d1")
    with kdshell.open(machines.path("d1", "complete"), symbol_path=str(BIN), image_path="", offline=True) as s:
        s.progress = None
        for p in [p for p in truth["processes"] if p["active_list"]][:3]:
            out = s.capture(f"dx (nt!_EPROCESS*)0x{p['address']:x}").splitlines()
            assert out[0] == f"(nt!_EPROCESS*)0x{p['address']:x} : 0x{p['address']:x} [Type: _EPROCESS *]"
            pid = [line for line in out if re.match(r"\s+\[\+0x[0-9a-f]+\] UniqueProcessId\s+:", line)]
            assert pid and pid[0].split(":")[1].split()[0] == f"0x{p['pid']:x}"
            name = [line for line in out if "] ImageFileName" in line]
            assert name and f'"{p["name"]}"' in name[0] and "[Type: unsigned char [15]]" in name[0]
            assert any(re.match(r"    \[\+0x000\] Pcb\s+\[Type: _KPROCESS\]$", line) for line in out)
        deeper = s.capture("dx -r2 (nt!_EPROCESS*)@$proc").splitlines()
        assert any(line.startswith("        [+0x000] Header") for line in deeper)
        assert s.capture("dx -r0 ((nt!_EPROCESS*)@$proc)->UniqueProcessId").strip().endswith("[Type: void *]")
        flags = [line for line in deeper if "( 0: 0)]" in line]
        assert flags  # bitfields say their bits


def test_dx_errors(machines):
    with kdshell.open(machines.path("d1", "complete"), symbol_path=str(BIN), image_path="", offline=True) as s:
        assert "which expression" in s.capture("dx")
        assert "not supported" in s.capture("dx -g @$curprocess")
        assert "not supported" in s.capture("dx Debugger.Sessions")
        assert "Couldn't resolve" in s.capture("dx nosuchsymbol") or "error" in s.capture("dx nosuchsymbol").lower()


def test_dx_on_a_corpus_dump():
    if not TRIAGE_19041.exists():
        pytest.skip("corpus not available")
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="", offline=True) as s:
        s.progress = None
        out = s.capture("dx (nt!_KPRCB*)@$prcb").splitlines()
        assert out and out[0].endswith("[Type: _KPRCB *]") and "Traceback" not in "\n".join(out)
        current = [line for line in out if "] CurrentThread " in line]
        thread = int(s.capture("? @$thread").split()[-1].replace("`", ""), 16)
        assert current and current[0].split(":")[1].split()[0] == f"0x{thread:x}"
