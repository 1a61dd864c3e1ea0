"""Frames that stay `module+0x...` for want of symbols: one line per module says what was not
found and how to add it, after k and !analyze, once per module until the symbol path changes."""
import io

import kdshell
from conftest import CORPUS_SYMBOLS, TRIAGE_19041
from kdshell.output import Output

AMDPPM_PDB_KEY = "1C19FDDB27BB3399D9B45973EFEAFCF31"
FIX = "add a store with .sympath+ DIR (or -y), or .symfix for Microsoft's server"


def notes(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("*** ")]


def test_a_small_dump_without_images_names_the_images():
    with kdshell.open(TRIAGE_19041, symbol_path="", image_path="", offline=False) as s:
        assert notes(s.capture("k")) == [
            f"*** Symbols for amdppm.sys not found (its image amdppm.sys C9C030003b000, which names the PDB, "
            f"is on no path): {FIX}",
            f"*** Symbols for Wdf01000.sys not found (its image Wdf01000.sys A9A9D36Ed1000, which names the PDB, "
            f"is on no path): {FIX}",
            f"*** Symbols for ntoskrnl.exe not found (its image ntoskrnl.exe 0D8333E61046000, which names the PDB, "
            f"is on no path): {FIX}",
        ]
        assert notes(s.capture("kn")) == [] and notes(s.capture("!analyze -v")) == []  # once per module
        s.run(".sympath+ /nowhere")  # a new path: what is still missing is said again
        assert len(notes(s.capture("k"))) == 3


def test_the_pdb_a_module_lacks_is_named_with_its_key(tmp_path):
    with kdshell.open(TRIAGE_19041, symbol_path=str(tmp_path), image_path=str(CORPUS_SYMBOLS), offline=False) as s:
        text = s.capture("!analyze")
        assert notes(text)[0] == (f"*** Symbols for amdppm.sys not found (amdppm.pdb {AMDPPM_PDB_KEY} is not on the "
                                  f"symbol path): {FIX}")
        assert notes(text)[0] in text.splitlines()[-3:]  # after the analysis, not in it


def test_modules_with_symbols_are_not_mentioned():
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="", offline=False) as s:
        text = s.capture("k")
        assert "amdppm!WriteIoMemRawEx+0x70" in text
        assert [n.split(" not found")[0] for n in notes(text)] == ["*** Symbols for Wdf01000.sys",
                                                                   "*** Symbols for ntoskrnl.exe"]


def test_the_fix_fits_the_path(tmp_path):
    # offline with a server on the path: the server is not the way
    with kdshell.open(TRIAGE_19041, symbol_path=f"srv*{tmp_path}*http://127.0.0.1:9", image_path="",
                      offline=True) as s:
        assert notes(s.capture("k"))[0].endswith(
            "): downloads are off (--offline), so add a local store with .sympath+ DIR")


def test_a_server_that_failed_is_named_as_the_cause(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on: the connection is refused at once
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with kdshell.open(TRIAGE_19041, symbol_path=f"srv*{tmp_path}*{url}", image_path="", offline=False) as s:
        s.progress = None
        text = s.capture("k")
        assert f"*** WARNING: symbol server {url} failed" in text
        assert notes(text)[-1].endswith("): the symbol server failed (see its warning), so add a local store "
                                        "with .sympath+ DIR")


def test_ctrl_c_text_starts_over_the_terminals_echo():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Output(Tty())
    out.interrupted("Command stopped (Ctrl-C).")
    assert out.stream.getvalue() == "\rCommand stopped (Ctrl-C).\n"  # over the "^C" the terminal echoed
    out = Output(io.StringIO())
    out.interrupted("Command stopped (Ctrl-C).")
    assert out.stream.getvalue() == "Command stopped (Ctrl-C).\n"  # a pipe or a log gets the text alone
