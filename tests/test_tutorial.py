"""`kdshell --tutorial` on the bundled sample, driven through standard input."""
import subprocess
import sys

from kdshell.tutorial import STEPS


def run(stdin: str):
    return subprocess.run([sys.executable, "-m", "kdshell", "--tutorial"], input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_walks_every_step_checking_the_commands():
    lines = [".bugcheck", "!analyze -v", "k", None, "u @rip L4", "lm m mydrv", "dq @rsp L8", ".cxr"]
    # Step 4's command depends on the dump (the trap frame's address): ask kv in the test too.
    import kdshell
    from kdshell.cli import bundled_sample
    from kdshell.tutorial import _trap_command

    dump, symbols = bundled_sample()
    with kdshell.open(dump, symbol_path=symbols, image_path=symbols) as s:
        lines[3] = _trap_command(s)
    assert lines[3].startswith(".trap ")
    typed = ["vertarget"] + lines  # the first line is the wrong command: a hint, then the right one
    p = run("\n".join(typed) + "\n")
    out = p.stdout
    assert "Not quite: this step wants '.bugcheck'" in out
    for n in range(1, len(STEPS) + 1):
        assert f"--- Step {n} of {len(STEPS)} ---" in out
    assert "Bugcheck code 000000D1" in out
    assert "MODULE_NAME: mydrv" in out and "IMAGE_NAME:  mydrv.sys" in out
    assert "mydrv!MyDrvReadRegister" in out
    assert "NOTE: The trap frame does not contain all registers." in out
    assert "Tutorial done." in out
    assert "Traceback" not in out + p.stderr
    assert p.returncode == 0  # every command of the walk succeeded (the wrong one was never run)


def test_skip_and_quit():
    p = run("skip\nskip\nq\n")
    assert "--- Step 3 of" in p.stdout and "--- Step 4 of" not in p.stdout
    assert "Tutorial stopped." in p.stdout
    assert p.returncode == 0
