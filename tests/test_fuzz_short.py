"""The fuzz harnesses (fuzz/) for a few seconds each, and every committed regression input.

A short, deterministic run of the builtin engine (fuzz/engine.py: mutations of the seeds, no
coverage feedback) per target, under 30 s in all: any exception other than a KdError, a hang
(an input over the harness's TIMEOUT) fails the test and names the input's signature. The long
campaigns are run by hand (python -m fuzz.run TARGET --minutes 10; fuzz/README.md).

tests/regressions/MANIFEST.json lists the minimized inputs of every bug the campaigns found;
each is replayed through its harness and must now be a clean answer or a one-line error.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from fuzz import engine
from fuzz.run import TARGETS, load

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
# seconds per target (the seeds run first, as they are); about 20 s in all
BUDGET = {"containers": 7.0, "pdb": 4.0, "pe_unwind": 4.0, "expressions": 3.0}


@pytest.fixture(scope="module")
def seeded(machines):
    """The seeds' machine dumps come from the session's machine set (built once)."""
    from fuzz import seeds

    seeds.MACHINE_INDEX = machines.index
    return seeds


@pytest.mark.parametrize("target", TARGETS)
def test_short_fuzz_run_finds_nothing(target, seeded):
    harness = load(target)
    stats = engine.fuzz(harness, seconds=BUDGET[target], seed=20261122)
    assert stats.inputs >= len(harness.seeds()), "every seed runs at least once"
    if stats.findings:
        details = []
        for f in stats.findings.values():
            details.append(f.line() + "\n" + f.trace)
        pytest.fail(f"{target}: {len(stats.findings)} bug(s) in {stats.inputs} inputs:\n" + "\n".join(details))


def _manifest() -> list[dict]:
    path = REGRESSIONS / "MANIFEST.json"
    return json.loads(path.read_text()) if path.exists() else []


def _data(entry: dict) -> bytes:
    raw = (REGRESSIONS / entry["file"]).read_bytes()
    return gzip.decompress(raw) if entry["file"].endswith(".gz") else raw


def test_every_regression_file_is_listed():
    listed = {e["file"] for e in _manifest()}
    on_disk = {str(p.relative_to(REGRESSIONS)) for p in REGRESSIONS.rglob("*")
               if p.is_file() and p.name not in ("MANIFEST.json", "README.md")}
    assert on_disk == listed


@pytest.mark.parametrize("entry", _manifest(), ids=lambda e: e["file"])
def test_regression_input_is_now_a_clean_answer(entry, seeded):
    harness = load(entry["target"])
    outcome, finding = engine.run_one(harness, _data(entry))
    assert finding is None, f"{entry['file']} ({entry['was']}) fails again:\n{finding.trace}"
    assert outcome.startswith(("answer", "error:"))
