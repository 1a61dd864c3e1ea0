"""The kdshell command: banner, -c, a pipe on standard input, exit status, bad files."""
import json
import subprocess
import sys

from conftest import MINI_17763, TRIAGE_19041


def run(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "kdshell", *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


def test_banner_and_commands():
    p = run("-z", str(TRIAGE_19041), "-c", ".bugcheck; q")
    assert p.returncode == 0, p.stderr
    assert "Mini Kernel Dump File: Only registers and stack trace are available" in p.stdout
    assert "0: kd> .bugcheck; q" in p.stdout
    assert "Bugcheck code 1000007E" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr


def test_stdin_pipe_and_failure_status():
    p = run("-z", str(MINI_17763), stdin="vertarget\nnosuch\n")
    assert p.returncode == 1
    # processor 6 bug-checked (the small dump's KPRCB copy says so): the prompt shows it
    assert "6: kd> vertarget" in p.stdout and "Syntax error" in p.stdout


def test_log_file(tmp_path):
    log = tmp_path / "kd.log"
    p = run("-z", str(MINI_17763), "-logo", str(log), "-c", ".bugcheck")
    assert p.returncode == 0
    assert "Bugcheck code 1000007E" in log.read_text()


def test_bad_files_one_line(tmp_path):
    for content in (b"", b"MDMP\x93\xa7\x00\x00" * 8, b"hello world" * 1000):
        f = tmp_path / "bad.dmp"
        f.write_bytes(content)
        p = run("-z", str(f))
        assert p.returncode == 2
        assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    p = run("-z", str(tmp_path / "missing.dmp"))
    assert p.returncode == 2 and "No such file" in p.stderr


def test_no_dump_opens_the_bundled_sample():
    p = run("-c", "vertarget; q")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[0].startswith("No dump given (-z FILE.dmp): opening kdshell's bundled sample")
    assert "Mini Kernel Dump File" in p.stdout and "0: kd> vertarget; q" in p.stdout
    assert "BugCheck D1, {fffff8a000bad000, 2, 0, fffff8000100111d}" in p.stdout
    assert "New to crash dumps? Start with !analyze -v" in p.stdout  # where to start
    assert "Traceback" not in p.stdout + p.stderr


def test_python_api_capture():
    import kdshell

    with kdshell.open(TRIAGE_19041) as s:
        assert "Bugcheck code 1000007E" in s.capture(".bugcheck")


def test_empty_line_repeats_memory_display():
    """An empty line continues the last d* where it stopped, as at WinDbg's prompt."""
    p = run("-z", str(TRIAGE_19041), stdin="dq fffff804`7c600b20 L2\n\n")
    assert p.returncode == 0, p.stdout
    lines = [line for line in p.stdout.splitlines() if line.startswith("fffff804`7c600b")]
    assert lines[0].startswith("fffff804`7c600b20  ")
    assert lines[1].startswith("fffff804`7c600b30  ")


def test_broken_pipe_is_quiet():
    p = subprocess.run(f"{sys.executable} -m kdshell -z {TRIAGE_19041} -c '.help; .help; .help; q' | head -2",
                       shell=True, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr
    assert len(p.stdout.splitlines()) == 2


def test_the_banner_says_where_symbols_come_from(tmp_path):
    """The tests run offline (KDSHELL_OFFLINE=1, conftest.py): the default path is then the
    per-user cache alone; --offline says the same; -y "" is an empty path, said so with the fix."""
    import os

    cache = os.environ["KDSHELL_SYMBOL_CACHE"]
    p = run("-z", str(TRIAGE_19041), "-c", "q")
    assert f"\nSymbol search path is: {cache} (offline: no downloads)\n" in p.stdout
    env = {k: v for k, v in os.environ.items() if k != "KDSHELL_OFFLINE"}
    p = subprocess.run([sys.executable, "-m", "kdshell", "--offline", "-z", str(TRIAGE_19041), "-c", "q"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert f"\nSymbol search path is: {cache} (offline: no downloads)\n" in p.stdout
    p = subprocess.run([sys.executable, "-m", "kdshell", "-y", "", "-z", str(TRIAGE_19041), "-c", "q"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert ("\nSymbol search path is: *** Invalid *** (empty: -y PATH or .sympath+ PATH adds symbols, "
            ".symfix Microsoft's server)\n") in p.stdout
    p = run("-y", str(tmp_path), "-z", str(TRIAGE_19041), "-c", "q")
    assert f"\nSymbol search path is: {tmp_path} (offline: no downloads)\n" in p.stdout


def test_a_missing_file_is_named_once(tmp_path):
    missing = tmp_path / "MYDUMP.dmp"
    p = run("-z", str(missing))
    assert p.returncode == 2 and p.stderr == f"kdshell: cannot open {missing}: No such file or directory\n"
    p = run("--analyze-json", "-z", str(missing))
    record = json.loads(p.stdout)  # the record names the file in "dump", its error once
    assert record["error"].count(str(missing)) == 1 and record["dump"] == {"file": str(missing)}
    assert record["schema"] == 3
    bad = tmp_path / "bad.dmp"
    bad.write_bytes(b"hello world" * 100)
    p = run("-z", str(bad))
    assert p.stderr.startswith(f"kdshell: {bad}: not a Windows kernel dump") and p.stderr.count(str(bad)) == 1


def test_the_hints_wrap_between_words():
    import os

    from kdshell.cli import SAMPLE_NOTE, WHERE_TO_START

    p = subprocess.run([sys.executable, "-m", "kdshell", "-c", "q"], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "COLUMNS": "50"})
    out = p.stdout.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("New to crash dumps?"))
    hint = out[start:out.index("0: kd> q")]
    assert all(len(line) < 50 for line in hint) and " ".join(hint) == WHERE_TO_START
    note = out[:out.index("kdshell 0.1.0 - kernel dump debugger")]
    assert all(len(line) < 50 for line in note) and " ".join(note) == SAMPLE_NOTE


def test_scripted_failures_still_set_the_exit_status():
    p = run("-z", str(TRIAGE_19041), "-c", "kk; q")
    assert p.returncode == 1 and "Did you mean 'k'?" in p.stdout


def test_ctrl_c_while_starting_is_one_line(monkeypatch, capsys):
    from kdshell import cli
    from kdshell.session import Session

    def interrupted(self, note=""):
        yield "Loading Dump File"
        raise KeyboardInterrupt

    monkeypatch.setattr(Session, "banner_lines", interrupted)
    assert cli.main(["-z", str(TRIAGE_19041), "-c", "q"]) == 130
    assert capsys.readouterr().err == "kdshell: interrupted\n"


def test_a_bug_outside_any_command_is_one_line_not_a_traceback(monkeypatch, capsys):
    """An internal error outside the dispatcher (the tutorial's texts, the banner) ends the run
    with one line and status 1; -v shows the traceback."""
    from kdshell import cli

    def broken(argv):
        raise AttributeError("module 'x' has no attribute 'y'")

    monkeypatch.setattr(cli, "_main", broken)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    assert cli.main(["-z", "x.dmp"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["kdshell: internal error: AttributeError: module 'x' has no attribute 'y'",
                                "(a kdshell bug: run again with -v to see the traceback)"]
    assert cli.main(["-v", "-z", "x.dmp"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err
