"""The session's output sink: every command prints through it, never with print().

Scripts, logs (.logopen) and tests see the same text. Kinds of line (normal, warning, error)
are kept so a terminal front end can colour them; the text itself is the same everywhere.
"""
from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, TextIO

NORMAL, WARNING, ERROR = "normal", "warning", "error"

# What a terminal could act on: C0 controls but tab and newline (kdshell's own layout), DEL and
# C1 (U+0080-U+009F, CSI and OSC among them). Names from a dump, an image or a PDB reach the sink
# as they were read; here they become \xNN, so a crafted name cannot clear the screen, set the
# title or write the clipboard (OSC 52). JSON text never holds these raw, so it passes unchanged.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with every control character but tab and newline shown as \\xNN."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class Output:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.log: TextIO | None = None
        self.log_path: str | None = None
        self._captures: list[list[str]] = []
        # A front end may replace this to colour text by kind; it must write `text` unchanged.
        self.emit: Callable[[str, str], None] = self._emit_plain

    def _emit_plain(self, text: str, kind: str) -> None:
        self.stream.write(text)

    def write(self, text: str, kind: str = NORMAL) -> None:
        text = printable(text)  # before colour (self.emit) and the log: colour's escapes are ours
        if self._captures:
            self._captures[-1].append(text)
        else:
            self.emit(text, kind)
            self.stream.flush()
        if self.log is not None:
            self.log.write(text)
            self.log.flush()

    def line(self, text: str = "") -> None:
        self.write(text + "\n")

    def lines(self, texts: Iterable[str]) -> None:
        for t in texts:
            self.line(t)

    def warn(self, text: str) -> None:
        self.write(text + "\n", WARNING)

    def error(self, text: str) -> None:
        self.write(text + "\n", ERROR)

    def interrupted(self, text: str) -> None:
        """An error line after Ctrl-C: on a terminal it starts at the left edge, over the "^C"
        the terminal echoed."""
        if not self._captures and getattr(self.stream, "isatty", lambda: False)():
            self.stream.write("\r")
        self.error(text)

    def clear_screen(self) -> None:
        """`.cls`: clear a terminal; nothing for pipes, logs and captures."""
        if not self._captures and getattr(self.stream, "isatty", lambda: False)():
            self.stream.write("\x1b[H\x1b[2J")
            self.stream.flush()

    def open_log(self, path: str, append: bool = False, protected: Iterable[str] = (), what: str = ".logopen") -> None:
        """Copy everything shown from now on to `path` (.logopen / .logappend / -logo). Never the dump
        or another file in `protected`, nor a special or binary file (kdshell.outpath)."""
        import os

        from kdshell.outpath import open_log

        fd = open_log(path, protected, append, what)
        self.close_log()
        self.log = os.fdopen(fd, "a", encoding="utf-8")
        self.log_path = path

    def close_log(self) -> str | None:
        """Stop logging; the path of the log that was open, if any."""
        path = self.log_path
        if self.log is not None:
            self.log.close()
        self.log, self.log_path = None, None
        return path

    @contextmanager
    def capture(self) -> Iterator[list[str]]:
        """Collect what is written inside the block instead of showing it."""
        buf: list[str] = []
        self._captures.append(buf)
        try:
            yield buf
        finally:
            self._captures.pop()
