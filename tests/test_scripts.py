"""Scripts ($<, $$<, $><, $$><, $$>a<), .scriptstop, logs and comments, on real and synthetic dumps."""
import subprocess
import sys
from pathlib import Path

import pytest

import kdshell
from conftest import TRIAGE_19041
from dumpfactory import write_kind


@pytest.fixture(params=[TRIAGE_19041, "bitmap6"], ids=["corpus", "synthetic"])
def session(request, tmp_path):
    path = request.param if isinstance(request.param, Path) else write_kind(tmp_path, request.param)
    with kdshell.open(path) as s:
        yield s


def test_line_script_echoes_each_command(session, tmp_path):
    script = tmp_path / "s.txt"
    script.write_text(".echo first\n\n.bugcheck\n")
    text = session.capture(f"$$<{script}")
    lines = text.splitlines()
    assert lines[0] == "0: kd> .echo first" and lines[1] == "first"
    assert lines[2] == "0: kd> .bugcheck" and lines[3].startswith("Bugcheck code ")


def test_block_script_runs_without_echo(session, tmp_path):
    script = tmp_path / "s.txt"
    script.write_text(".echo a\n.echo b\n")
    assert session.capture(f"$$><{script}") == "a\nb\n"
    # `$><` takes the rest of the line, ';' included, as the file name.
    odd = tmp_path / "odd;name.txt"
    odd.write_text(".echo odd\n")
    assert session.capture(f"$><{odd}") == "odd\n"


def test_script_arguments(session, tmp_path):
    script = tmp_path / "args.txt"
    script.write_text('.echo "${$arg1} and $arg2"\n.echo $arg0\n')
    assert session.capture(f"$$>a<{script} one two").splitlines() == ["one and two", str(script)]


def test_script_goes_on_after_errors_unless_scriptstop(session, tmp_path):
    script = tmp_path / "s.txt"
    script.write_text("nosuchcmd\n.echo AFTER-LINE\n")
    text = session.capture(f"$$<{script}")
    assert "Syntax error" in text and "AFTER-LINE" in text
    assert session.failures == 1
    session.capture(".scriptstop 1")
    text = session.capture(f"$$<{script}")
    assert "AFTER-LINE" not in text and "stopped at its first failing command" in text


def test_script_errors_are_one_line(session, tmp_path):
    assert "Couldn't open script file" in session.capture(f"$$<{tmp_path / 'missing.txt'}")
    loop = tmp_path / "loop.txt"
    loop.write_text(f"$$><{loop}\n")
    text = session.capture(f"$$><{loop}")
    assert "nested more than 16 deep" in text
    assert "Traceback" not in text


def test_comments(session):
    assert session.capture(".echo a; $$ ignored; .echo b") == "a\nb\n"
    assert session.capture("* everything; .echo here is a comment") == ""


def test_logopen_logclose(session, tmp_path):
    log = tmp_path / "kd.log"
    assert f"Opened log file '{log}'" in session.capture(f".logopen {log}")
    session.run(".echo into the log")
    session.run(".logclose")
    text = log.read_text()
    assert "into the log" in text and f"Closing open log file {log}" in text
    session.run(".echo not logged")
    assert "not logged" not in log.read_text()
    session.run(f".logappend {log}")
    session.run(".echo appended")
    session.run(".logclose")
    assert "into the log" in log.read_text() and "appended" in log.read_text()
    assert "No log file open" in session.capture(".logfile")
    assert "Unable to open log file" in session.capture(f".logopen {tmp_path}/no/such/dir/x.log")


def test_cf_script_and_exit_status(tmp_path):
    script = tmp_path / "triage.txt"
    script.write_text(".bugcheck\nvertarget\n")
    p = subprocess.run([sys.executable, "-m", "kdshell", "-z", str(TRIAGE_19041), "-cf", str(script), "-c", "q"],
                       capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0
    assert "0: kd> .bugcheck" in p.stdout and "Bugcheck code 1000007E" in p.stdout
    assert "Windows 10 Kernel Version 19041" in p.stdout
