"""Every example in README.md and examples/ runs as written on the bundled sample (and the
example scripts on a real dump too, when the corpus is there)."""
import os
import re
import shlex
import subprocess
import sys
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, REPO, TRIAGE_19041
from kdshell.cli import bundled_sample

EXAMPLES = REPO / "examples"
README = (REPO / "README.md").read_text(encoding="utf-8")
EXAMPLES_README = (EXAMPLES / "README.md").read_text(encoding="utf-8")
SAMPLE, SAMPLE_SYMBOLS = bundled_sample()
PROMPT = "0: kd> "


def kdshell_run(args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ, KDSHELL_OFFLINE="1")  # the tests never download
    return subprocess.run([sys.executable, "-m", "kdshell", *args], input=stdin, capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def code_lines(text: str) -> list[str]:
    """The lines of the indented code blocks (4 spaces), without the indentation."""
    return [line[4:] for line in text.splitlines() if line.startswith("    ")]


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else len(text)]


def on_the_sample(args: list[str]) -> list[str]:
    """An invocation for the user's own dump, pointed at the sample: the dump given with -z is
    the sample, and a symbol path that names a server is the sample's store (no downloads)."""
    out, i, has_y = [], 0, False
    while i < len(args):
        a = args[i]
        if a in ("-z", "-y", "-i") and i + 1 < len(args):
            value = args[i + 1]
            if a == "-z":
                value = SAMPLE
            elif "://" in value:
                value = SAMPLE_SYMBOLS
            has_y |= a == "-y"
            out += [a, value]
            i += 2
            continue
        out.append(a)
        i += 1
    if "-z" in out and not has_y:
        out += ["-y", SAMPLE_SYMBOLS, "-i", SAMPLE_SYMBOLS]
    return out


def invocations(text: str) -> list[str]:
    lines = [line.removeprefix("$ ") for line in code_lines(text)]
    return [line for line in lines if line.startswith("kdshell ")]


# -- README.md -----------------------------------------------------------------------------------
def test_readme_points_nowhere_outside_the_repository():
    assert "../" not in README and "/work/" not in README and "shared/" not in README
    for target in re.findall(r"\]\(([^)]+)\)", README):
        assert "://" not in target and (REPO / target).exists(), target


def test_the_tour_runs_and_shows_what_the_readme_shows():
    lines = code_lines(section(README, "A tour on the bundled sample"))
    assert lines[0] == "$ kdshell"
    commands = [line[len(PROMPT):] for line in lines if line.startswith(PROMPT)]
    assert commands[-1] == "q" and len(commands) >= 6
    p = kdshell_run([], "\n".join(commands) + "\n")
    assert p.returncode == 0, p.stdout[-3000:]  # every command succeeded
    assert "Traceback" not in p.stderr
    output = p.stdout.splitlines()
    at = 0
    for shown in lines[1:]:
        if not shown.strip() or shown == "...":
            continue
        if shown.endswith("..."):  # the start of a line, the rest left out
            prefix = shown[:-3].rstrip()
            found = next((i for i in range(at, len(output)) if output[i].startswith(prefix)), None)
        else:
            found = next((i for i in range(at, len(output)) if output[i].rstrip() == shown.rstrip()), None)
        assert found is not None, f"README shows {shown!r} but the tour does not print it (in this order)"
        at = found + 1


def test_every_kdshell_invocation_in_the_readme_runs():
    found = invocations(README)
    assert any("--tutorial" in c for c in found) and any("https://" in c for c in found)
    for line in found:
        args = on_the_sample(shlex.split(line)[1:])
        p = kdshell_run(args)
        assert p.returncode == 0, f"{line}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        assert "Traceback" not in p.stderr and "Internal error" not in p.stdout


def test_the_python_example_runs():
    snippet = [line for line in code_lines(section(README, "More")) if line.startswith("  ")]
    code = "\n".join(line[2:] for line in snippet).replace('"MEMORY.DMP"', repr(SAMPLE))
    assert "kdshell.open(" in code
    buf = StringIO()
    with redirect_stdout(buf):
        exec(code, {})
    assert "Bugcheck code 000000D1" in buf.getvalue()


# -- examples/ -------------------------------------------------------------------------------------
def test_every_example_script_is_in_the_table():
    for script in EXAMPLES.glob("*.txt"):
        assert f"`{script.name}`" in EXAMPLES_README


def test_example_invocations_run_on_the_sample():
    runs = re.findall(r"`(kdshell [^`]+)`", EXAMPLES_README)
    assert runs
    for line in runs:
        p = kdshell_run(on_the_sample(shlex.split(line)[1:]))
        assert p.returncode == 0, f"{line}\n{p.stdout[-2000:]}"
        assert "Bugcheck code 000000D1" in p.stdout and "mydrv" in p.stdout


def test_example_prompt_commands_run_on_the_sample():
    """The `$$>a<...` forms of the table and of the scripts' own first lines."""
    # (the sample is a small dump: the rows marked "(a kernel or complete dump)" run elsewhere)
    commands = re.findall(r"`(\$\$>a<examples/[^`]+)`(?! \(a kernel or complete dump\))", EXAMPLES_README)
    for script in EXAMPLES.glob("*.txt"):
        commands += re.findall(r"(\$\$>a<examples/\S+(?: \S+)*)", script.read_text().splitlines()[0])
    assert len(commands) >= 4
    shown = {}
    with kdshell.open(SAMPLE, symbol_path=SAMPLE_SYMBOLS, image_path=SAMPLE_SYMBOLS) as s:
        for command in commands:
            before = s.failures
            shown[command] = s.capture(command.replace("examples/", f"{EXAMPLES}/"))
            assert s.failures == before, f"{command}:\n{shown[command]}"
    assert "mydrv!MyDrvDispatchDeviceControl" in shown["$$>a<examples/module.txt mydrv"]
    assert "mydrv      (private pdb symbols)" in shown["$$>a<examples/module.txt mydrv"]
    assert "nt!KeBugCheckEx:" in shown["$$>a<examples/address.txt @rip"]


# -- the example scripts on a real dump ------------------------------------------------------------
@pytest.fixture
def triage():
    if not TRIAGE_19041.exists():
        pytest.skip(f"corpus dump {TRIAGE_19041.name} is not on this machine (the shared corpus)")
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS)) as s:
        yield s


def test_triage_script(triage):
    text = triage.capture(f"$$<{EXAMPLES / 'triage.txt'}")
    assert triage.failures == 0, text
    assert "Bugcheck code 1000007E" in text
    assert "amdppm!WriteIoMemRawEx+0x70:" in text
    assert "fffff804`8b580000 fffff804`8b5bb000   amdppm" in text


def test_module_script(triage):
    text = triage.capture(f"$$>a<{EXAMPLES / 'module.txt'} amdppm")
    assert triage.failures == 0, text
    assert "File version:     10.0.19041.1110" in text
    assert "amdppm!ComputeEnergyDispatch" in text


def test_address_script(triage):
    text = triage.capture(f"$$>a<{EXAMPLES / 'address.txt'} @rip")
    assert "amdppm!WriteIoMemRawEx+0x70" in text
    assert triage.failures == 0, text
