"""kdshell: a WinDbg/KD-style debugger for Windows kernel crash dumps.

    import kdshell
    with kdshell.open("MEMORY.DMP") as s:
        print(s.capture("vertarget"))
"""
import os as _os

from kdshell.errors import DumpFormatError, KdError, MemoryNotPresent

# In a source checkout the command modules are ../commands, installed as kdshell.commands
# (pyproject.toml's package-dir). When kdshell is imported from a checkout without an editable
# install (`pip install .`, then `python -m pytest` or `python -m kdshell` in the checkout), the
# checkout's root joins the package's path so that kdshell.commands is its commands/.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "commands")) and \
        _os.path.isfile(_os.path.join(_here, "..", "commands", "__init__.py")):
    __path__.append(_os.path.dirname(_here))
del _here

__version__ = "0.1.0"
__all__ = ["open", "Session", "DumpFormatError", "KdError", "MemoryNotPresent", "__version__"]


def open(path, **options):  # noqa: A001 - the natural name for it
    """Open a kernel dump and return a Session (symbol_path=, image_path=, out= are optional)."""
    from kdshell.session import open_session

    return open_session(path, **options)


def __getattr__(name):
    if name == "Session":
        from kdshell.session import Session

        return Session
    raise AttributeError(name)
