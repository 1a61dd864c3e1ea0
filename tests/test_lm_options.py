"""lm option by option (Microsoft Learn, lm): the columns t n f i p that replace the symbol status,
the filters o l e k u, sm, m/M, combined forms (lmtsmn, lmvm), on the corpus 19041 small dump,
the bundled sample and a test machine's complete dump. Expected values come from the dump's own
bytes, the corpus README's store keys (TimeDateStamp + SizeOfImage), the images' PE headers and
the machines' truth, never from kdshell's earlier output."""
from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, REPO, TRIAGE_19041
from kdshell.format import ptr

HEADER = "start             end                 module name"
SAMPLE = REPO / "kdshell" / "data" / "sample"
BIN = REPO / "fixtures" / "images" / "bin"


def lines(session, command):
    return session.capture(command).splitlines()


def date(stamp: int) -> str:
    """WinDbg's timestamp text, computed here with the C library's ctime layout (TZ is UTC)."""
    return f"{time.asctime(time.gmtime(stamp))} ({stamp:08X})"


def row(base: int, end: int, name: str, *cells: str) -> str:
    return " ".join([f"{ptr(base, True)} {ptr(end, True)}   {name.ljust(8)}", *cells]).rstrip()


@pytest.fixture
def triage():
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.progress = None
        yield s


# -- the corpus small dump (151 drivers) ---------------------------------------------------------
AMDPPM = (0xFFFFF8048B580000, 0xFFFFF8048B5BB000)
AMDPPM_STAMP = 0xC9C03000  # the README's store key amdppm.sys/c9c030003b000 = TimeDateStamp, SizeOfImage


def test_lm_t_n_prints_name_image_and_date_on_one_line(triage):
    out = lines(triage, "lm t n")
    assert out[0] == HEADER
    mods = out[1:152]
    assert len(mods) == 151
    assert not any("(deferred)" in m or m.startswith("    ") for m in mods)  # no status, no second line
    assert row(*AMDPPM, "amdppm", "amdppm.sys  ", date(AMDPPM_STAMP)) in mods
    # the kernel is named as linked; its date is the driver list's (a reproducible-build hash)
    nt = next(m for m in mods if m.split()[2] == "nt")
    assert nt.split()[3] == "ntkrnlmp.exe" and nt.endswith(f"({triage.symbols.module('nt').timestamp:08X})")
    assert out[152:154] == ["", "Unloaded modules:"]  # kept, as plain lm lists them
    assert lines(triage, "lmtn") == out == lines(triage, "lm n t")


def test_lmtsmn_sorts_by_name(triage):
    out = lines(triage, "lmtsmn")
    names = [m.split()[2] for m in out[1:152]]
    assert names == sorted(names, key=str.lower) and len(names) == 151
    assert row(*AMDPPM, "amdppm", "amdppm.sys  ", date(AMDPPM_STAMP)) in out
    long_name = next(m for m in out if m.split()[2] == "AMDPCIDev")  # past 8 columns: one space
    assert long_name.split("   ", 1)[1].startswith("AMDPCIDev AMDPCIDev.sys ")


def test_lm_f_prints_the_full_path_the_dump_holds(triage):
    out = lines(triage, "lm f m amdppm")
    path = "\\SystemRoot\\System32\\drivers\\amdppm.sys"
    assert path.encode("utf-16-le") in Path(TRIAGE_19041).read_bytes()  # the driver list's own text
    assert out == [HEADER, row(*AMDPPM, "amdppm", path)]
    assert lines(triage, "lmi m amdppm") == [HEADER, row(*AMDPPM, "amdppm", "amdppm.sys")]
    assert lines(triage, "lm t m amdppm") == [HEADER, row(*AMDPPM, "amdppm", date(AMDPPM_STAMP))]


def test_lm_filters(triage):
    everything = lines(triage, "lm")
    assert lines(triage, "lm o") == everything[:152]  # loaded only: no unloaded section
    assert lines(triage, "lm k") == everything  # a kernel dump's modules are all kernel-mode
    assert lines(triage, "lm u") == [HEADER]
    assert lines(triage, "lml") == [HEADER] and lines(triage, "lme") == [HEADER]  # all deferred
    triage.run(".reload /f amdppm.sys")
    loaded = lines(triage, "lml")
    assert len(loaded) == 2 and loaded[1].startswith(row(*AMDPPM, "amdppm ").rstrip() + "     (pdb symbols)")


def test_lmvm_and_patterns(triage):
    out = lines(triage, "lmvm amdppm")
    assert out[1].startswith(row(*AMDPPM, "amdppm"))
    # lmv says what lm t does not: this stamp is a reproducible build's hash (lm t prints it as a date)
    assert f"    Timestamp:        {AMDPPM_STAMP:08X} (This is a reproducible build file hash, not a timestamp)" in out
    assert lines(triage, "lm t n M *amdppm.sys") == [HEADER, row(*AMDPPM, "amdppm", "amdppm.sys  ",
                                                                  date(AMDPPM_STAMP))]


# -- the bundled sample --------------------------------------------------------------------------
def pe_stamp(path: Path) -> int:
    data = path.read_bytes()
    (lfanew,) = struct.unpack_from("<I", data, 0x3C)
    return struct.unpack_from("<I", data, lfanew + 8)[0]


def test_the_sample_lm_t_n_matches_the_images():
    with kdshell.open(SAMPLE / "mydrv-irql.dmp", symbol_path=str(SAMPLE / "symbols"), image_path="") as s:
        s.progress = None
        out = lines(s, "lm t n")
        mydrv = s.symbols.module("mydrv")
        assert row(mydrv.base, mydrv.end, "mydrv", "mydrv.sys   ", date(pe_stamp(BIN / "mydrv.sys"))) in out
        assert out[1].split()[2:4] == ["nt", "ntkrnlmp.exe"]
        assert lines(s, "lm 1m sm") == sorted((m.name for m in s.symbols.modules), key=str.lower)


# -- a test machine's complete dump --------------------------------------------------------------
def test_complete_dump_rows_match_the_truth(machines):
    truth = machines.truth("d1")
    with kdshell.open(machines.path("d1", "complete"), symbol_path=str(BIN), image_path="") as s:
        s.progress = None
        tn = lines(s, "lm t n")
        f = lines(s, "lmf")
        for m in truth["modules"]:
            name = s.symbols.modules.by_address(m["base"]).name
            image = "ntkrnlmp.exe" if name == "nt" else m["name"]
            assert row(m["base"], m["base"] + m["size"], name, image.ljust(12), date(m["timestamp"])) in tn
            assert row(m["base"], m["base"] + m["size"], name, m["full_name"]) in f
        assert len([x for x in tn[1:] if x.startswith("fffff")]) >= len(truth["modules"])


def test_lm_bad_options_say_so(triage):
    assert lines(triage, "lm q") == ["lm: unknown option 'q' (lm [v][o][l][k][u][e][sm][1m][t][n][f][i][p] "
                                     "[m Pattern | M Pattern | a Address]). Did you mean 'lm'?"]
    assert lines(triage, "lmtn m") == ["lm: 'm' needs a pattern, e.g. 'lmtn m nt'"]
