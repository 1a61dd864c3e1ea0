"""kdshell in a real terminal: tmux runs it, send-keys types, capture-pane reads the screen."""
import re
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


PROMPT_AT_END = re.compile(r"\n\d+: kd>\s*$")


class Terminal:
    def __init__(self, tmp_path, *args, env=None):
        self.name = f"kd{uuid.uuid4().hex[:8]}"
        # A running tmux server starts commands in its own environment, not the client's: the
        # variables go on the command line.
        environment = {"XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm-256color",
                       "KDSHELL_OFFLINE": "1", "KDSHELL_SYMBOL_CACHE": str(tmp_path / "symbol-cache"), **(env or {})}
        command = ["env", "-u", "NO_COLOR", "-u", "PYTEST_CURRENT_TEST"]
        command += [f"{k}={v}" for k, v in environment.items()]
        command += [sys.executable, "-m", "kdshell", *args]
        # The pane's shell writes kdshell's exit status to a file (tmux does not always reap a pane's
        # process: its own status can stay unknown). The shell's no-op trap lets Ctrl-C reach
        # kdshell alone, and the pane stays when they have exited (remain-on-exit, set before
        # anything starts) so that the last screen can be read.
        self.status_file = tmp_path / f"{self.name}.status"
        status = shlex.quote(str(self.status_file))
        shell = f"trap : INT; {shlex.join(command)}; echo $? > {status}.new && mv {status}.new {status}"
        # Each terminal has a tmux server of its own (-L): no races with other tests' servers.
        subprocess.run(self.tmux("-f", "/dev/null", "start-server", ";", "set-option", "-g", "remain-on-exit", "on",
                                 ";", "set-option", "-g", "default-shell", "/bin/sh",
                                 ";", "new-session", "-d", "-s", self.name, "-x", "160", "-y", "50", shell),
                       check=True)

    def tmux(self, *args) -> list[str]:
        return ["tmux", "-L", self.name, *args]

    def screen(self, escapes=False, history=False) -> str:
        args = self.tmux("capture-pane", "-p", "-t", self.name) + (["-e"] if escapes else [])
        return subprocess.run(args + (["-S", "-"] if history else []), capture_output=True, text=True).stdout

    def exit_status(self) -> int | None:
        """kdshell's exit status once it has exited, else None."""
        try:
            return int(self.status_file.read_text())
        except FileNotFoundError:
            return None

    def last_screen(self, escapes=False) -> str:
        """What an exited kdshell left on the screen and above it (tmux may scroll it away), once
        tmux has read all it wrote (the pane is dead)."""
        end = time.monotonic() + 2
        while time.monotonic() < end and subprocess.run(
                self.tmux("display-message", "-p", "-t", self.name, "#{pane_dead}"),
                capture_output=True, text=True).stdout.strip() != "1":
            time.sleep(0.02)
        return self.screen(escapes, history=True)

    def wait_for(self, text, timeout=20.0, escapes=False, then_prompt=False) -> str:
        """The screen once `text` is on it (and, with then_prompt, an empty prompt below it: kdshell
        reads keys again; until then the terminal is in line mode, where Ctrl-R or Ctrl-D never
        reach it). Fails as soon as kdshell has exited without showing it, and after `timeout`
        seconds of a live kdshell not showing it."""
        end = time.monotonic() + timeout
        while True:
            status = self.exit_status()
            screen = self.screen(escapes) if status is None else self.last_screen(escapes)
            if text in screen and not (then_prompt and not PROMPT_AT_END.search(screen[screen.rfind(text):])):
                return screen
            if status is not None:
                raise AssertionError(f"kdshell exited (status {status}) before {text!r} appeared; "
                                     f"its screen:\n{self.last_screen().rstrip()}")
            if time.monotonic() > end:
                raise AssertionError(f"{text!r} never appeared on the screen in {timeout} s:\n{self.screen().rstrip()}")
            time.sleep(0.05)

    def wait_exit(self, timeout=20.0) -> int:
        """kdshell's exit status, once it has exited."""
        end = time.monotonic() + timeout
        while (status := self.exit_status()) is None:
            if time.monotonic() > end:
                raise AssertionError(f"kdshell still runs after {timeout} s:\n{self.screen().rstrip()}")
            time.sleep(0.05)
        return status

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
    t.wait_for("fffff804`7c600b20  ", then_prompt=True)
    t.keys("Enter")
    t.wait_for("fffff804`7c600b30  ", then_prompt=True)
    t.keys("q", "Enter")
    assert t.wait_exit() == 0


def test_a_wait_fails_at_once_when_kdshell_has_exited(term, tmp_path):
    """No 20 s wait for a prompt that cannot come: the failure names the exit status and shows
    what kdshell printed."""
    t = term("-z", "/nonexistent/no-such.dmp")
    start = time.monotonic()
    with pytest.raises(AssertionError) as failure:
        t.wait_for("0: kd>")
    assert time.monotonic() - start < 2
    status = t.wait_exit()
    assert status > 0
    assert f"kdshell exited (status {status}) before '0: kd>' appeared" in str(failure.value)
    assert "/nonexistent/no-such.dmp: No such file or directory" in str(failure.value)  # what it printed


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
    t.wait_for("remembered-line\n", then_prompt=True)
    t.keys("C-d")
    assert t.wait_exit() == 0
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
    t.wait_for("amdppm!WriteIoMemRawEx", then_prompt=True)
    t.keys("ln amdppm!WriteIoMemRaw", "Tab")
    t.wait_for("amdppm!WriteIoMemRawHidden")  # the menu of the symbols the prefix starts (x showed only ...Ex)


def test_ctrl_c_stops_a_long_command(term, machines):
    """Listing every string of the whole 64-bit address space of a complete dump takes seconds
    (a needle search over it no longer does: empty entries are skipped at once): Ctrl-C stops it
    and the prompt comes back."""
    t = term("-z", str(machines.path("d1", "complete")))
    t.wait_for("0: kd>")
    t.keys("s -sa 0 L?ffffffffffffffff", "Enter")
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
    t.wait_for("other\n", then_prompt=True)
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
    t = term("-z", str(TRIAGE_19041))
    screen = t.wait_for("0: kd>")
    hint = screen[screen.index("New to crash dumps?"):screen.index("0: kd>")].split()
    assert " ".join(hint) == WHERE_TO_START
    t.keys("kk", "Enter")
    t.wait_for("Did you mean 'k'?")
    t.keys("q", "Enter")
    assert t.wait_exit() == 0
