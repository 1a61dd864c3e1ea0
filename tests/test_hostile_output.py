"""Issue 24 item 4: names read from a dump reach the terminal, logs and JSON printable. A small
dump of the test machine d1 whose driver name (UTF-16, in the driver list and the loader entry)
is replaced by terminal escapes: OSC 52 (clipboard), BEL, NUL. kdshell runs in a subprocess and
its stdout bytes are checked: no control byte but tab and newline."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from kdshell.output import Output, printable

EVIL = "\x1b]52;\x07\x00.s"  # as long as "mydrv.sys", so the dump's layout is unchanged


@pytest.fixture
def evil_dump(machines, tmp_path):
    raw = machines.path("d1", "small").read_bytes()
    name = "mydrv.sys".encode("utf-16-le")
    assert raw.count(name) >= 2  # the driver list's string and the loader entry's BaseDllName
    path = tmp_path / "evil.dmp"
    path.write_bytes(raw.replace(name, EVIL.encode("utf-16-le")))
    return path


def _controls(data: bytes) -> list[int]:
    return [b for b in data if (b < 0x20 and b not in (9, 10)) or b == 0x7F]


def test_printable_escapes_controls_and_keeps_layout():
    assert printable("a\x1b[2Jb\x07\x00\x7f\x9b\tc\n") == "a\\x1b[2Jb\\x07\\x00\\x7f\\x9b\tc\n"
    assert printable("fffff800`01000000\tmydrv") == "fffff800`01000000\tmydrv"  # untouched, same object
    assert printable(json.dumps({"n": "\x1b]52;c;QQ==\x07"})) == json.dumps({"n": "\x1b]52;c;QQ==\x07"})


def test_the_sink_escapes_before_colour_captures_and_the_log(tmp_path):
    stream = io.StringIO()
    out = Output(stream)
    seen: list[str] = []
    out.emit = lambda text, kind: (seen.append(text), stream.write(f"\x1b[31m{text}\x1b[39m"))
    out.open_log(str(tmp_path / "log.txt"))
    out.line("caused by \x1b]0;title\x07x")
    out.error("bad \x00 name")
    with out.capture() as buf:
        out.line("\x1b[2J")
    out.close_log()
    assert seen == ["caused by \\x1b]0;title\\x07x\n", "bad \\x00 name\n"]
    assert stream.getvalue().count("\x1b[31m") == 2  # the renderer's own colour still gets through
    assert buf == ["\\x1b[2J\n"]
    log = (tmp_path / "log.txt").read_text()
    assert "\x1b" not in log and "\x00" not in log and "\\x1b]0;title\\x07x" in log


def test_a_dump_with_escapes_in_its_names_prints_them_escaped(evil_dump):
    p = subprocess.run([sys.executable, "-m", "kdshell", "-z", str(evil_dump), "-c", "lm; k; !analyze -v; q"],
                       capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode in (0, 1), p.stderr
    assert _controls(p.stdout) == [] and _controls(p.stderr) == []
    text = p.stdout.decode()
    shown = "\\x1b]52;\\x07"
    assert f"Probably caused by : {shown}" in text  # the banner
    assert any(line.split()[2:3] == [shown] for line in text.splitlines() if "`" in line)  # lm
    assert f"{shown}+0x111d" in text  # k
    assert f"MODULE_NAME: {shown}" in text and f"*** Symbols for {shown} not found" in text


def test_the_json_keeps_the_raw_name(evil_dump):
    for args in (["--analyze-json", "-z", str(evil_dump)], ["-z", str(evil_dump), "-c", "!analyze -json; q"]):
        p = subprocess.run([sys.executable, "-m", "kdshell", *args], capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        assert _controls(p.stdout) == []
        text = p.stdout.decode()
        start = text.index("{", text.index("!analyze -json") if "-c" in args else 0)
        data = json.loads(text[start:text.rindex("}") + 1])
        assert data["probably_caused_by"].startswith("Probably caused by : \x1b]52;\x07 (")


def test_the_download_progress_line_shows_names_printable():
    """The progress line goes to stderr, not through the sink; C1 controls (CSI, U+009B) pass the
    store's file-name check (which refuses C0), so the line escapes them itself."""
    from kdshell.symbols.store import SymbolStore, safe_file_name

    name = "a\x9b2Jb\x7f.pdb"
    assert safe_file_name(name) == name
    progress = io.StringIO()
    SymbolStore("", progress=progress)._show(name, 10, 20, final=True)
    assert progress.getvalue() == "\rDownloading a\\x9b2Jb\\x7f.pdb: 10 of 20 bytes\n"
