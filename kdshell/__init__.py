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
