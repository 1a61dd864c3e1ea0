"""!analyze -v's SYSTEM_* / BIOS_* / BASEBOARD_* lines (issue 19 part 1) and --analyze-json's
"machine" object (schema 2: firmware, CPU, black boxes). Expected values: the SMBIOS table packed
in tests/test_smbios.py from DSP0134's layouts; the corpus dump's KPRCB copy and DumpBlob stream
decoded here (tests/test_sysinfo.py, tests/test_blackbox.py)."""
from __future__ import annotations

import json

import kdshell
from conftest import CORPUS_SYMBOLS, REPO, TRIAGE_19041
from kdshell.analysis import facts
from kdshell.cli import main
from test_blackbox import NTFS, raw_blobs
from test_smbios import table
from test_sysinfo import expected

BIN = REPO / "fixtures" / "images" / "bin"
FIRMWARE = {"SYSTEM_MANUFACTURER": "ASUS", "SYSTEM_PRODUCT_NAME": "System Product Name", "SYSTEM_SKU": "SKU",
            "SYSTEM_VERSION": "System Version", "BIOS_VENDOR": "American Megatrends Inc.", "BIOS_VERSION": "2803",
            "BIOS_DATE": "04/27/2022", "BASEBOARD_MANUFACTURER": "ASUSTeK COMPUTER INC.",
            "BASEBOARD_PRODUCT": "ROG STRIX B550-F", "BASEBOARD_VERSION": "Rev X.0x"}


def test_firmware_lines_from_the_smbios_table(machines, monkeypatch):
    raw = table()
    monkeypatch.setattr(facts, "locate_table", lambda symbol, virtual, physical: raw)
    with kdshell.open(machines.path("d1", "complete"), symbol_path=str(BIN), image_path="") as s:
        s.progress = None
        out = s.capture("!analyze -v").splitlines()
    for name, value in FIRMWARE.items():
        assert f"{name}:  {value}" in out, name
    order = [out.index(f"{name}:  {value}") for name, value in FIRMWARE.items()]
    assert order == sorted(order) and order[-1] < next(i for i, line in enumerate(out) if line.startswith("CPU_COUNT"))


def test_firmware_json_from_the_smbios_table(machines, monkeypatch, capsys):
    raw = table()
    monkeypatch.setattr(facts, "locate_table", lambda symbol, virtual, physical: raw)
    assert main(["-z", str(machines.path("d1", "kernel")), "-y", str(BIN), "--offline", "--analyze-json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["schema"] == 3
    assert data["machine"]["firmware"] == {k.lower(): v for k, v in FIRMWARE.items()}
    assert data["machine"]["cpu"]["mhz"] == 3000 and data["machine"]["cpu"]["family"] == 6  # fixture init.c


def test_corpus_json_machine_facts(capsys):
    e = expected(TRIAGE_19041)
    assert main(["-z", str(TRIAGE_19041), "-y", str(CORPUS_SYMBOLS), "--offline", "--analyze-json"]) == 0
    machine = json.loads(capsys.readouterr().out)["machine"]
    assert machine["firmware"] == {}  # no SMBIOS table in a small dump
    cpu = machine["cpu"]
    assert (cpu["vendor"], cpu["mhz"], cpu["family"], cpu["model"], cpu["stepping"]) == (
        e["vendor"], e["mhz"], e["family"], e["model"], e["stepping"])
    _, size = raw_blobs(TRIAGE_19041.read_bytes())[NTFS]
    assert machine["black_boxes"] == [{"field": "BLACKBOXNTFS", "command": "!blackboxntfs", "size": size}]
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.progress = None
        verbose = s.capture("!analyze -v")
    assert "SYSTEM_MANUFACTURER" not in verbose and "BIOS_VENDOR" not in verbose
