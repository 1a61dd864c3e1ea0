"""The session's output sink: every command prints through it, never with print().

Scripts, logs (.logopen) and tests see the same text. Kinds of line (normal, warning, error)
are kept so a terminal front end can colour them; the text itself is the same everywhere.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO

NORMAL, WARNING, ERROR = "normal", "warning", "error"


class Output:
    def __init__(self, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.log: TextIO | None = None
        self._captures: list[list[str]] = []
        # A front end may replace this to colour text by kind; it must write `text` unchanged.
        self.emit: Callable[[str, str], None] = self._emit_plain

    def _emit_plain(self, text: str, kind: str) -> None:
        self.stream.write(text)

    def write(self, text: str, kind: str = NORMAL) -> None:
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

    def lines(self, texts) -> None:
        for t in texts:
            self.line(t)

    def warn(self, text: str) -> None:
        self.write(text + "\n", WARNING)

    def error(self, text: str) -> None:
        self.write(text + "\n", ERROR)

    @contextmanager
    def capture(self) -> Iterator[list[str]]:
        """Collect what is written inside the block instead of showing it."""
        buf: list[str] = []
        self._captures.append(buf)
        try:
            yield buf
        finally:
            self._captures.pop()
