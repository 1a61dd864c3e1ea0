import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KDSHELL_SHARED", REPO.parent / "shared"))
CORPUS_DUMPS = SHARED / "corpus" / "dumps"
CORPUS_SYMBOLS = SHARED / "corpus" / "symbols"

TRIAGE_19041 = CORPUS_DUMPS / "triage-x64-19041-1000007e.dmp"
MINI_17763 = CORPUS_DUMPS / "mini-x64-17763-1000007e.dmp"
FULL_TRUNCATED = CORPUS_DUMPS / "full-x64-19045-truncated-16k.dmp"


@pytest.fixture(autouse=True)
def _utc(monkeypatch, tmp_path):
    """Times print in the analyst's zone, as WinDbg does; the tests pin it to UTC. A developer's
    symbol path must not send the tests to a symbol server, nor may kdshell's default one: every
    session (and every kdshell the tests start) is offline, with an empty symbol cache of its own;
    the tests of downloads ask for them (offline=False) from a server on 127.0.0.1."""
    for name in ("_NT_SYMBOL_PATH", "_NT_ALT_SYMBOL_PATH", "_NT_EXECUTABLE_IMAGE_PATH", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KDSHELL_OFFLINE", "1")
    monkeypatch.setenv("KDSHELL_SYMBOL_CACHE", str(tmp_path / "symbol-cache"))
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()


# -- the test machines (fixtures/machine): built once per session --------------------------------
import sys as _sys

if str(REPO) not in _sys.path:
    _sys.path.insert(0, str(REPO))  # `fixtures` (the machine builder) is imported from the checkout


@pytest.fixture(scope="session")
def machines(tmp_path_factory):
    """Every test machine's dumps and ground truth (fixtures/README.md), built once per session
    into a temporary directory (or into $KDSHELL_MACHINES, reused while its inputs are the same).
    Returns a fixtures.machine.catalog.MachineSet: .path("d1", "kernel"), .truth("d1")."""
    from fixtures.machine.catalog import MachineSet, build_set

    where = os.environ.get("KDSHELL_MACHINES")
    outdir = Path(where) if where else tmp_path_factory.mktemp("machines")
    return MachineSet(build_set(outdir))
