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
def _utc(monkeypatch):
    """Times print in the analyst's zone, as WinDbg does; the tests pin it to UTC. A developer's
    symbol path must not send the tests to a symbol server."""
    for name in ("_NT_SYMBOL_PATH", "_NT_ALT_SYMBOL_PATH", "_NT_EXECUTABLE_IMAGE_PATH", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()
