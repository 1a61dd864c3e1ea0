"""What an MCP server may touch: it reads only under its roots (`--root DIR`, symlinks resolved
before the check, so a link inside a root that points out is refused), writes only under one
output folder (kdshell.outpath.confine_writes, the one output-path policy), downloads nothing and
runs no shell. The commands that would read elsewhere, change the search paths to elsewhere, run
a script or end the process get a one-line refusal here, before they run."""
from __future__ import annotations

import os
from dataclasses import dataclass

from kdshell.dispatch import SCRIPT_PREFIXES, Invocation
from kdshell.errors import KdError


class PolicyError(KdError):
    """A path or command the server refuses (one line)."""


# Commands refused outright, with the reason (a script could run any of the rest unchecked).
REFUSED = {
    **{p: "scripts are not run by the MCP server: send their commands one by one" for p in SCRIPT_PREFIXES},
    "q": "use the close_dump tool to end a session",
    "qq": "use the close_dump tool to end a session",
    "qd": "use the close_dump tool to end a session",
    ".symfix": "the MCP server downloads nothing: add a symbol folder under its roots (.sympath+ FOLDER)",
    ".symfix+": "the MCP server downloads nothing: add a symbol folder under its roots (.sympath+ FOLDER)",
}
# Commands whose argument is a search path: every folder in it must be under the roots.
PATH_COMMANDS = (".sympath", ".sympath+", ".exepath", ".exepath+")


@dataclass(frozen=True)
class Policy:
    roots: tuple[str, ...]   # resolved (realpath) folders
    out_dir: str              # resolved output folder

    @staticmethod
    def make(roots: list[str], out_dir: str) -> "Policy":
        resolved = []
        for r in roots:
            real = os.path.realpath(r)
            if not os.path.isdir(real):
                raise PolicyError(f"--root {r}: not a folder")
            resolved.append(real)
        os.makedirs(out_dir, exist_ok=True)
        return Policy(tuple(resolved), os.path.realpath(out_dir))

    def inside(self, real: str) -> bool:
        return any(real == r or os.path.commonpath([r, real]) == r for r in self.roots)

    def readable(self, path: str, what: str) -> str:
        """`path` resolved through every symlink, if it lies under a root; else PolicyError."""
        if not path or "\0" in path:
            raise PolicyError(f"{what}: no path given")
        real = os.path.realpath(os.path.expanduser(path))
        if not self.inside(real):
            raise PolicyError(f"{what}: {path} is outside the allowed roots ({', '.join(self.roots)}); "
                              "the server reads nothing else")
        return real

    def search_path(self, text: str, what: str) -> str:
        """A ';'-separated symbol or image path whose folders all lie under the roots (resolved);
        symbol-server and cache entries (`srv*...`, `cache*...`) are refused: no downloads."""
        out = []
        for element in text.split(";"):
            element = element.strip()
            if not element:
                continue
            if "*" in element or "://" in element:  # srv*CACHE*URL, cache*DIR, a bare URL
                raise PolicyError(f"{what}: '{element}' is a symbol server or cache; the MCP server downloads "
                                  "nothing: give symbol folders under its roots")
            out.append(self.readable(element, what))
        return ";".join(out)

    def check_command(self, name: str, inv: Invocation) -> None:
        """Refuse a command (resolved by the dispatcher) the server must not run as typed."""
        reason = REFUSED.get(name)
        if reason is not None:
            raise PolicyError(f"{inv.name}: {reason}")
        if name in PATH_COMMANDS and inv.text.strip():
            self.search_path(inv.text.strip().strip('"'), inv.name)
