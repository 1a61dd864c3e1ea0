import os
import sys as _sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in _sys.path:
    _sys.path.insert(0, str(REPO))  # `fixtures` (the machine builder) and `tests.fetch_corpus`

from tests.fetch_corpus import SETTING, corpus_dir, missing  # noqa: E402

# -- the real-file corpus ($KDSHELL_CORPUS, default ../shared/corpus) ------------------------------
CORPUS = corpus_dir()
CORPUS_DUMPS = CORPUS / "dumps"
CORPUS_SYMBOLS = CORPUS / "symbols"

TRIAGE_19041 = CORPUS_DUMPS / "triage-x64-19041-1000007e.dmp"
MINI_17763 = CORPUS_DUMPS / "mini-x64-17763-1000007e.dmp"
FULL_TRUNCATED = CORPUS_DUMPS / "full-x64-19045-truncated-16k.dmp"

_MISSING = missing(CORPUS)
_HOW = f"set {SETTING}, or fetch it: python -m tests.fetch_corpus DIR"
CORPUS_ABSENT = (None if not _MISSING else
                 f"real-file corpus not found at {CORPUS} ({_HOW})" if not CORPUS.is_dir() else
                 f"real-file corpus incomplete at {CORPUS}: no {_MISSING[0]} ({_HOW})")


def corpus_dumps_if_present() -> list[Path]:
    """The corpus dumps, or none: for tests that add them to their inputs when they are there and
    run without them too (a test that names the corpus directly is a real-file test)."""
    return [] if CORPUS_ABSENT else sorted(CORPUS_DUMPS.glob("*.dmp"))


# The names a test uses to reach the corpus (from conftest import ...).
_CORPUS_NAMES = {"CORPUS", "CORPUS_DUMPS", "CORPUS_SYMBOLS", "TRIAGE_19041", "MINI_17763", "FULL_TRUNCATED"}


def _is_corpus_value(value, depth=0) -> bool:
    """A path into the corpus, or a list/tuple/dict (two levels deep) holding one."""
    if isinstance(value, (str, Path)):
        return str(value).startswith(str(CORPUS))
    if depth < 2 and isinstance(value, (list, tuple, set, frozenset)):
        return any(_is_corpus_value(v, depth + 1) for v in value)
    if depth < 2 and isinstance(value, dict):
        return any(_is_corpus_value(v, depth + 1) for v in (*value, *value.values()))
    return False


def _code_names(code) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _refers_to_corpus(func, seen) -> bool:
    """Does `func`, or a function of its module that it calls, name the corpus or a module-level
    value that holds a corpus path?"""
    func = getattr(func, "__func__", func)
    if not isinstance(func, types.FunctionType) or func in seen:
        return False
    seen.add(func)
    for name in _code_names(func.__code__):
        if name in _CORPUS_NAMES:
            return True
        value = func.__globals__.get(name)
        if isinstance(value, types.FunctionType):
            if value.__module__ == func.__module__ and _refers_to_corpus(value, seen):
                return True
        elif not isinstance(value, types.ModuleType) and _is_corpus_value(value):
            return True
    return False


def uses_corpus(item) -> bool:
    """A real-file test: marked needs_corpus, parametrized with a corpus path, or its function
    (or a fixture it uses, or a helper either calls) refers to the corpus."""
    if item.get_closest_marker("needs_corpus"):
        return True
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(_is_corpus_value(v) for v in callspec.params.values()):
        return True
    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    if info is not None:
        funcs += [d.func for defs in info.name2fixturedefs.values() for d in defs]
    seen: set = set()
    return any(_refers_to_corpus(f, seen) for f in funcs)


def pytest_configure(config):
    config.addinivalue_line("markers", f"needs_corpus: a real-file test (the corpus at ${SETTING}); "
                                       "found without the marker when a test refers to the corpus")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if uses_corpus(item):
            item.add_marker("needs_corpus")
            if CORPUS_ABSENT:
                item.add_marker(pytest.mark.skip(reason=CORPUS_ABSENT))


def pytest_terminal_summary(terminalreporter):
    """One line on the real-file tests: how many ran on the corpus, or how many were skipped and why."""
    reports = [r for kind in ("passed", "failed", "skipped", "error") for r in terminalreporter.stats.get(kind, ())
               if getattr(r, "when", None) in ("setup", "call") and "needs_corpus" in getattr(r, "keywords", {})]
    skipped = {r.nodeid for r in reports if r.skipped and CORPUS_ABSENT and CORPUS_ABSENT in str(r.longrepr)}
    ran = {r.nodeid for r in reports if r.when == "call"}
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} real-file tests skipped: {CORPUS_ABSENT}", yellow=True)
    elif ran:
        terminalreporter.write_line(f"{len(ran)} real-file tests ran on the corpus at {CORPUS} (${SETTING})")


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


@pytest.fixture
def triage():
    """A session on the corpus's x64 triage dump (TRIAGE_19041) with its symbols, no image files."""
    import kdshell

    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.progress = None
        yield s


# -- the test machines (fixtures/machine): built once per session --------------------------------
MACHINE_BIN = REPO / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{MACHINE_BIN};{MACHINE_BIN / 'x86'}"  # the test machines' PDBs and images


def open_machine(machines, name, kind="kernel", symbol_path=MACHINE_SYMBOLS):
    """A test machine's dump with the machines' own symbols, no image path, no progress bar."""
    import kdshell

    s = kdshell.open(machines.path(name, kind), symbol_path=symbol_path, image_path="")
    s.progress = None
    return s


def open_corpus(path):
    """A corpus dump with the corpus symbols, no image path, no progress bar; the test is skipped
    for a file kdshell does not open (the corpus tests of the open itself are elsewhere)."""
    import kdshell

    try:
        s = kdshell.open(path, symbol_path=str(CORPUS_SYMBOLS), image_path="")
    except kdshell.errors.KdError:
        pytest.skip("kdshell does not open this file")
    s.progress = None
    return s


def assert_poolused_is_the_ledgers(out, tracker):
    """!poolused's rows (tag: nonpaged allocs, bytes, paged allocs, bytes) against a pool ledger's
    per-tag tracker (fixtures/machine/poolledger.py); returns the rows in their printed order."""
    import re

    rows = {}
    for line in out:
        m = re.match(r"^ (.{4}) +(-?\d+) +(-?\d+) +(-?\d+) +(-?\d+)\t", line)
        if m:
            rows[m.group(1)] = tuple(int(x) for x in m.groups()[1:])
    assert set(rows) == set(tracker)
    for tag, t in tracker.items():
        assert rows[tag] == (t["nonpaged_allocs"] - t["nonpaged_frees"], t["nonpaged_bytes"],
                             t["paged_allocs"] - t["paged_frees"], t["paged_bytes"]), tag
    return rows


def run_lines(session, text):
    """A command's output lines; the command must succeed."""
    with session.out.capture() as buf:
        assert session.run(text), text
    return "".join(buf).splitlines()


@pytest.fixture(scope="session")
def machines(tmp_path_factory):
    """Every test machine's dumps and ground truth (fixtures/README.md), built once per session
    into a temporary directory (or into $KDSHELL_MACHINES, reused while its inputs are the same).
    Returns a fixtures.machine.catalog.MachineSet: .path("d1", "kernel"), .truth("d1")."""
    from fixtures.machine.catalog import MachineSet, build_set

    where = os.environ.get("KDSHELL_MACHINES")
    outdir = Path(where) if where else tmp_path_factory.mktemp("machines")
    return MachineSet(build_set(outdir))
