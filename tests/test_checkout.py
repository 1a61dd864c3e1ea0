"""The tests run on the checkout's code however kdshell is installed: with `pip install .` (not
-e) the checkout's kdshell is imported first (`python -m pytest` puts it on sys.path), and its
kdshell.commands is the checkout's commands/ (installed there only under -e)."""
import os
import subprocess
import sys

from conftest import REPO


def test_the_checkout_without_an_editable_install(tmp_path):
    """`python -S` skips the .pth files, so the editable install's import hook is not there: what
    is left is a non-editable install's view from the checkout (the packages it needs, and
    kdshell from the checkout)."""
    site = [p for p in sys.path if p.endswith("site-packages")]
    code = (
        "import sys\n"
        "assert not any(type(f).__module__.startswith('__editable__') for f in sys.meta_path), sys.meta_path\n"
        "import kdshell, kdshell.commands, kdshell.cli\n"
        "print(kdshell.__file__)\n"
        "print(kdshell.commands.__file__)\n"
        "dump, symbols = kdshell.cli.bundled_sample()\n"
        "with kdshell.open(dump, symbol_path=symbols) as s:\n"
        "    print(s.capture('.bugcheck').splitlines()[0])\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *site])}
    p = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [str(REPO / "kdshell" / "__init__.py"), str(REPO / "commands" / "__init__.py"),
                                     "Bugcheck code 000000D1"]
