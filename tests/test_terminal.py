"""kdshell in a real terminal: tmux runs it, send-keys types, capture-pane reads the screen."""
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from conftest import CORPUS_SYMBOLS, TRIAGE_19041
from kdshell.cli import WHERE_TO_START

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


class Terminal:
    def __init__(self, tmp_path, *args, env=None, status=None):
        self.name = f"kd{uuid.uuid4().hex[:8]}"
        # A running tmux server starts commands in its own environment, not the client's: the
        # variables go on the command line.
        environment = {"XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm-256color",
                       "KDSHELL_OFFLINE": "1", "KDSHELL_SYMBOL_CACHE": str(tmp_path / "symbol-cache"), **(env or {})}
        command = ["env", "-u", "NO_COLOR", "-u", "PYTEST_CURRENT_TEST"]
        command += [f"{k}={shlex.quote(v)}" for k, v in environment.items()]
        command += [sys.executable, "-m", "kdshell", *map(shlex.quote, args)]
        if status is not None:  # kdshell's exit status, written when it ends
            command += ["; echo $? >", shlex.quote(str(status))]
        # Each terminal has a tmux server of its own (-L): no races with other tests' servers.
        subprocess.run(self.tmux("new-session", "-d", "-s", self.name, "-x", "160", "-y", "50", " ".join(command)),
                       check=True)

    def tmux(self, *args) -> list[str]:
        return ["tmux", "-L", self.name, *args]

    def screen(self, escapes=False) -> str:
        args = self.tmux("capture-pane", "-p", "-t", self.name) + (["-e"] if escapes else [])
        return subprocess.run(args, capture_output=True, text=True).stdout

    def wait_for(self, text, timeout=20.0, escapes=False) -> str:
        end = time.time() + timeout
        while time.time() < end:
            screen = self.screen(escapes)
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared on the screen:\n{self.screen()}")

    def keys(self, *keys):
        subprocess.run(self.tmux("send-keys", "-t", self.name, *keys), check=True)

    def close(self):
        subprocess.run(self.tmux("kill-server"), capture_output=True)


@pytest.fixture
def term(tmp_path):
    terms = []

    def start(*args, **kw):
        t = Terminal(tmp_path, *args, **kw)
        terms.append(t)
        return t

    yield start
    for t in terms:
        t.close()


def test_prompt_repeat_on_enter_and_quit(term):
    t = term("-z", str(TRIAGE_19041))
    t.wait_for("0: kd>")
    t.keys("dq fffff804`7c600b20 L2", "Enter")
    t.wait_for("fffff804`7c600b20  ")
    t.keys("Enter")
    t.wait_for("fffff804`7c600b30  ")
    t.keys("q", "Enter")
    time.sleep(0.5)
    assert "kd>" not in t.screen()  # the session is gone once kdshell exits


def test_tab_completes_commands(term):
    t = term("-z", str(TRIAGE_19041))
    t.wait_for("0: kd>")
    t.keys(".bugch", "Tab")
    t.wait_for("0: kd> .bugcheck")
    t.keys("Enter")
    t.wait_for("Bugcheck code 1000007E")


def test_history_survives_a_restart(term):
    t = term("-z", str(TRIAGE_19041))
    t.wait_for("0: kd>")
    t.keys(".echo remembered-line", "Enter")
    t.wait_for("remembered-line\n")
    t.keys("C-d")
    time.sleep(1.0)
    t2 = term("-z", str(TRIAGE_19041))
    t2.wait_for("0: kd>")
    t2.keys("Up")
    t2.wait_for("0: kd> .echo remembered-line")


def test_colour_on_a_terminal_and_off_with_no_color(term):
    t = term("-z", str(TRIAGE_19041))
    t.wait_for("0: kd>")
    t.keys("nosuchcommand", "Enter")
    screen = t.wait_for("Syntax error", escapes=True)
    assert "\x1b[31m" in screen  # the error line is red
    t2 = term("-z", str(TRIAGE_19041), env={"NO_COLOR": "1"})
    t2.wait_for("0: kd>")
    t2.keys("nosuchcommand", "Enter")
    screen = t2.wait_for("Syntax error", escapes=True)
    assert "\x1b[31m" not in screen


def test_ctrl_c_at_the_prompt_keeps_the_session(term):
    t = term("-z", str(TRIAGE_19041))
    t.wait_for("0: kd>")
    t.keys("half a command", "C-c")
    t.keys(".echo still-alive", "Enter")
    t.wait_for("still-alive\n")


def test_completion_words_for_modules_symbols_and_types(tmp_path):
    """The names Tab offers after a command (the terminal test above shows Tab itself works)."""
    import kdshell
    from conftest import CORPUS_SYMBOLS
    from kdshell.completion import words
    from kdshell.cli import bundled_sample

    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS)) as s:
        assert "amdppm" in words(s, "lm", "amdp")
        assert "amdppm!" in words(s, "x", "amdp")
        s.run("x amdppm!WriteIo*")  # loads amdppm's symbols
        assert "amdppm!WriteIoMemRawEx" in words(s, "u", "amdppm!WriteIoMem")
    dump, symbols = bundled_sample()
    with kdshell.open(dump, symbol_path=symbols) as s:
        s.run(".reload /f nt")
        assert "nt!_EPROCESS" in words(s, "dt", "nt!_EPR")


def test_tab_completes_a_symbol_in_the_terminal(term):
    t = term("-z", str(TRIAGE_19041), "-y", str(CORPUS_SYMBOLS))
    t.wait_for("0: kd>")
    t.keys("x amdppm!WriteIoMemRawE*", "Enter")
    t.wait_for("amdppm!WriteIoMemRawEx")
    t.keys("ln amdppm!WriteIoMemRaw", "Tab")
    t.wait_for("amdppm!WriteIoMemRawEx")


def test_ctrl_c_stops_a_long_command(term, machines):
    """A search over the whole 64-bit address space of a complete dump takes seconds: Ctrl-C
    stops it and the prompt comes back."""
    t = term("-z", str(machines.path("d1", "complete")))
    t.wait_for("0: kd>")
    t.keys('s -a 0 L?ffffffffffffffff "no-such-needle"', "Enter")
    time.sleep(0.4)
    t.keys("C-c")
    screen = t.wait_for("Command stopped (Ctrl-C).")
    line = next(line for line in screen.splitlines() if "Command stopped" in line)
    assert line == "Command stopped (Ctrl-C)."  # over the terminal's own "^C", not after it
    t.keys(".echo after-ctrl-c", "Enter")
    t.wait_for("after-ctrl-c\n")


def test_ctrl_r_searches_the_history(term):
    t = term("-z", str(TRIAGE_19041))
    t.wait_for("0: kd>")
    t.keys(".echo needle-in-history", "Enter")
    t.wait_for("needle-in-history\n")
    t.keys(".echo other", "Enter")
    t.wait_for("other\n")
    t.keys("C-r", "needle")
    t.wait_for("(reverse-i-search)`needle': .echo needle-in-history")
    t.keys("Enter")  # takes the match into the line
    t.wait_for("0: kd> .echo needle-in-history\n")
    t.keys("Enter")  # runs it
    end = time.time() + 20
    while t.screen().count("needle-in-history") < 4 and time.time() < end:  # the command ran again
        time.sleep(0.1)
    assert t.screen().count("needle-in-history") >= 4


def test_tab_completes_file_paths(term, tmp_path):
    (tmp_path / "triage-script.txt").write_text(".echo from-the-script\n")
    t = term("-z", str(TRIAGE_19041))
    t.wait_for("0: kd>")
    t.keys(f"$$<{tmp_path}/triage-scr", "Tab")
    t.wait_for("triage-script.txt")
    t.keys("Enter")
    t.wait_for("from-the-script\n")


def test_a_session_at_the_terminal_ends_with_status_0_after_a_typo(term, tmp_path):
    """Mistakes typed at the prompt are not failures of the run: q ends with status 0 (a -c or
    piped run still reports them, tests/test_cli.py). The start shows where to begin, for any
    dump, wrapped between words to the terminal's width."""
    status = tmp_path / "status"
    t = term("-z", str(TRIAGE_19041), status=status)
    screen = t.wait_for("0: kd>")
    hint = screen[screen.index("New to crash dumps?"):screen.index("0: kd>")].split()
    assert " ".join(hint) == WHERE_TO_START
    t.keys("kk", "Enter")
    t.wait_for("Did you mean 'k'?")
    t.keys("q", "Enter")
    end = time.time() + 5
    while not status.exists() and time.time() < end:
        time.sleep(0.1)
    assert status.read_text().strip() == "0"
