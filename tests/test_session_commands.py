"""Commands of the target family and the session, on the real corpus dumps."""
from pathlib import Path

import pytest

import kdshell
from conftest import FULL_TRUNCATED, MINI_17763, TRIAGE_19041


@pytest.fixture
def triage():
    with kdshell.open(TRIAGE_19041) as s:
        yield s


def test_vertarget_triage(triage):
    text = triage.capture("vertarget")
    lines = text.splitlines()
    assert lines[0] == "Windows 10 Kernel Version 19041 MP (16 procs) Free x64"
    assert lines[1] == "Product: WinNt, suite: TerminalServer SingleUserTS"
    assert "Kernel base = 0xfffff804`7ba00000 PsLoadedModuleList = 0xfffff804`7c62a390" in lines
    assert any(line.startswith("Debug session time: ") and "(UTC + 0:00)" in line for line in lines)
    assert any(line.startswith("System Uptime: 0 days ") for line in lines)


def test_time_on_the_corpus_dumps():
    with kdshell.open(MINI_17763) as s:
        assert s.capture(".time").splitlines() == [
            "Debug session time: Thu Jan 16 01:12:59.880 2020 (UTC + 0:00)", "System Uptime: 0 days 0:00:04.126"]
    with kdshell.open(FULL_TRUNCATED) as s:  # the first 16 KiB: the header has both
        out = s.capture(".time").splitlines()
        assert out[0].startswith("Debug session time: ") and out[1].startswith("System Uptime: ")


def test_bugcheck(triage):
    assert triage.capture(".bugcheck").splitlines() == [
        "Bugcheck code 1000007E",
        "Arguments ffffffff`c0000005 fffff804`8b58334c ffff8504`29891ee8 ffff8504`29891720",
    ]


def test_dumpdebug_triage(triage):
    text = triage.capture(".dumpdebug")
    assert "----- 64 bit Mini Kernel Dump Analysis" in text
    assert "MinorVersion          00004a61" in text
    assert "TRIAGE_DUMP64:" in text
    assert "DriverCount           00000097" in text
    assert "TopOfStack            ffff8504`29890ee8" in text


def test_enumtag_lists_every_blob(triage):
    lines = triage.capture(".enumtag").splitlines()
    tags = [line for line in lines if line.startswith("{")]
    assert len(tags) == 20
    assert tags[0] == "{54C84888-01D1-4C1E-BED6-282C98241303} - 0x1000 bytes"


def test_ignore_missing_pages_toggles(triage):
    assert "suppressed" in triage.capture(".ignore_missing_pages 1")
    assert triage.options.ignore_missing_pages
    assert "displayed" in triage.capture(".ignore_missing_pages 0")
    assert not triage.options.ignore_missing_pages
    assert "takes 0 or 1" in triage.capture(".ignore_missing_pages 7")


def test_errors_are_one_line_and_counted(triage):
    text = triage.capture("nosuchcommand")
    assert text.count("\n") == 1 and "Syntax error" in text
    assert "No export frob found" in triage.capture("!frob")
    assert triage.failures == 2


def test_help_lists_families_and_explains(triage):
    text = triage.capture(".help")
    for name in ("vertarget", ".bugcheck", ".dumpdebug", ".enumtag", ".ignore_missing_pages", "q"):
        assert f"  {name} " in text
    assert triage.capture("vertarget /?").startswith("vertarget\n")
    assert ".bugcheck" in triage.capture(".help .bugcheck")


def test_multiple_commands_and_comments(triage):
    text = triage.capture(".echo one; $$ a comment; .echo \"two; three\"")
    assert text == "one\ntwo; three\n"


def test_banner_mini_and_truncated():
    with kdshell.open(MINI_17763) as s:
        b = s.banner()
        assert b[1] == "Mini Kernel Dump File: Only registers and stack trace are available"
        assert "Kernel base = 0xfffff804`4a203000 PsLoadedModuleList = 0xfffff804`4a61c710" in b
        assert b[-3] == "BugCheck 1000007E, {ffffffffc0000005, fffff8044a24d2d4, ffff998071d4ed88, ffff998071d4e5d0}"
        assert b[-1] == "Probably caused by : winhvr.sys ( winhvr+16755 )"  # the short !analyze's verdict
    with kdshell.open(FULL_TRUNCATED) as s:
        b = s.banner()
        assert b[1] == "Kernel Complete Dump File: Full address space is available"
        assert any(line.startswith("WARNING: The dump file is truncated") for line in b)
        assert "Windows 10 Kernel Version 19045 MP (4 procs) Free x64" in b


@pytest.mark.parametrize("source", [TRIAGE_19041, "full"], ids=["corpus", "synthetic"])
def test_explain_adds_a_note_after_known_commands(source, tmp_path):
    from dumpfactory import write_kind

    path = source if isinstance(source, Path) else write_kind(tmp_path, source)
    with kdshell.open(path) as s:
        assert "[explain]" not in s.capture(".bugcheck")
        assert s.capture(".explain on") == "Explanations are on.\n"
        text = s.capture(".bugcheck")
        assert text.splitlines()[0].startswith("Bugcheck code")
        assert "  [explain] The bug check code says what kind of crash" in text
        assert "[explain]" not in s.capture(".echo hi")  # no note for .echo
        s.capture(".explain off")
        assert "[explain]" not in s.capture(".bugcheck")
        assert "takes on or off" in s.capture(".explain maybe")
