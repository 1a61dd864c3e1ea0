"""The example scripts run cleanly on a real dump and on a synthetic one."""
from pathlib import Path

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, TRIAGE_19041

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def session():
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS)) as s:
        yield s


def test_triage_script(session):
    text = session.capture(f"$$<{EXAMPLES / 'triage.txt'}")
    assert session.failures == 0, text
    assert "Bugcheck code 1000007E" in text
    assert "amdppm!WriteIoMemRawEx+0x70:" in text
    assert "fffff804`8b580000 fffff804`8b5bb000   amdppm" in text


def test_module_script(session):
    text = session.capture(f"$$>a<{EXAMPLES / 'module.txt'} amdppm")
    assert session.failures == 0, text
    assert "File version:     10.0.19041.1110" in text
    assert "amdppm!WriteIoMemRawEx" in text


def test_address_script(session):
    text = session.capture(f"$$>a<{EXAMPLES / 'address.txt'} @rip")
    assert "amdppm!WriteIoMemRawEx+0x70" in text
    assert session.failures == 0, text
