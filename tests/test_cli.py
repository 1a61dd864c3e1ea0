"""The kdshell command: banner, -c, a pipe on standard input, exit status, bad files."""
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
