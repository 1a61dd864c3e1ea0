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
        assert "not supported" in s.capture("dx -h @$curprocess")
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


def test_dx_data_model_against_truth(machines):
    truth = machines.truth("d1")
    active = [p for p in truth["processes"] if p["active_list"]]
    with kdshell.open(machines.path("d1", "complete"), symbol_path=str(BIN), image_path="", offline=True) as s:
        s.progress = None
        out = s.capture("dx @$cursession.Processes").splitlines()
        assert [line.split() for line in out[1:]] == [[f"[0x{p['pid']:x}]", ":", p["name"]] for p in active]
        assert s.capture("dx Debugger.Sessions.First().Processes.Count()").split()[-1] == f"0x{len(active):x}"
        smss = next(p for p in active if p["name"] == "smss.exe")
        out = s.capture('dx @$cursession.Processes.Where(p => p.Name == "smss.exe").Select(p => p.Id)').splitlines()
        assert out[1].split() == ["[0]", ":", f"0x{smss['pid']:x}"]
        newest = max(active, key=lambda p: p["pid"])
        assert s.capture("dx @$cursession.Processes.OrderByDescending(p => p.Id).First().Name").split()[-1] == newest["name"]
        threads = sum(len(p["threads"]) for p in active)
        assert s.capture("dx @$cursession.Processes.Select(p => p.Threads).Flatten().Count()").split()[-1] == f"0x{threads:x}"
        cur = s.capture("dx @$curprocess").splitlines()
        system = next(p for p in active if p["pid"] == 4)
        assert cur[0] == "@$curprocess : System" and f"KernelObject     : 0x{system['address']:x}" in cur[3]
        assert s.capture("dx @$curprocess.Modules.Take(2).Count()").split()[-1] == "0x2"
        assert s.capture("dx @$curprocess.Modules.All(m => m.Size > 0)").split()[-1] == "true"
        frames = s.capture("dx @$curstack.Frames.Take(2)").splitlines()
        assert frames[1].split()[-1] == "nt!KeBugCheckEx"
        grid = s.capture("dx -g @$cursession.Processes").splitlines()
        assert grid[0].startswith("====") and "Name" in grid[1] and len(grid) == len(active) + 4
        assert grid[3].split()[1:4] == ["[0x4]", "-", "System"]


def test_dx_data_model_errors(machines):
    with kdshell.open(machines.path("d1", "complete"), symbol_path=str(BIN), image_path="", offline=True) as s:
        assert "Couldn't resolve error at ')'" in s.capture("dx @$cursession.Processes.Where(p => )")
        assert "Couldn't resolve error at 'Nope'" in s.capture("dx @$curprocess.Nope")
        assert "is not supported" in s.capture("dx @$cursession.Processes.Sum()")
        assert "no element [0x99999]" in s.capture("dx @$cursession.Processes[0x99999]")
        assert "a grid shows a collection" in s.capture("dx -g (nt!_EPROCESS*)@$proc")
