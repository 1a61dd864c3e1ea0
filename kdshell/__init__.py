"""kdshell: a WinDbg/KD-style debugger for Windows kernel crash dumps.

    import kdshell
    with kdshell.open("MEMORY.DMP") as s:
        print(s.capture("vertarget"))
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from kdshell.errors import DumpFormatError, KdError, MemoryNotPresent

if TYPE_CHECKING:
    from kdshell.session import Session

# In a source checkout the command modules are ../commands, installed as kdshell.commands
# (pyproject.toml's package-dir). When kdshell is imported from a checkout without an editable
# install (`pip install .`, then `python -m pytest` or `python -m kdshell` in the checkout), the
# checkout's root joins the package's path so that kdshell.commands is its commands/.
_here = os.path.dirname(os.path.abspath(__file__))
if not os.path.isdir(os.path.join(_here, "commands")) and \
        os.path.isfile(os.path.join(_here, "..", "commands", "__init__.py")):
    __path__.append(os.path.dirname(_here))
del _here

__version__ = "0.1.0"
__all__ = ["open", "Session", "DumpFormatError", "KdError", "MemoryNotPresent", "__version__"]


def open(path: str | os.PathLike[str], **options: Any) -> Session:  # noqa: A001 - the natural name for it
    """Open a kernel dump and return a Session (symbol_path=, image_path=, out=, offline= are
    optional). No symbol path means _NT_SYMBOL_PATH or none: unlike the kdshell command, the API
    downloads only from a server it is given (offline=True, or KDSHELL_OFFLINE=1, never does)."""
    from kdshell.session import open_session

    return open_session(path, **options)


def __getattr__(name: str) -> Any:
    if name == "Session":
        from kdshell.session import Session

        return Session
    raise AttributeError(name)
