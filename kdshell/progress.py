"""A progress line for long work (searches, dump writes): on a terminal only, after a moment.

Goes to the session's progress stream (stderr), never to the command output, so scripts, logs
and captures see the same text as before.
"""
from __future__ import annotations

import time
from typing import TextIO


class Progress:
    DELAY = 0.5  # seconds of work before the line appears
    EVERY = 0.2  # seconds between updates

    def __init__(self, stream: TextIO | None, label: str, total: int) -> None:
        self.stream = stream if stream is not None and getattr(stream, "isatty", lambda: False)() else None
        self.label = label
        self.total = max(total, 1)
        self.start = time.monotonic()
        self.last = 0.0
        self.shown = False

    def update(self, done: int) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if now - self.start < self.DELAY or now - self.last < self.EVERY:
            return
        self.last = now
        self.shown = True
        self.stream.write(f"\r{self.label}: {min(100, 100 * done // self.total):3d}%")
        self.stream.flush()

    def done(self) -> None:
        if self.shown and self.stream is not None:  # shown implies a stream
            self.stream.write("\r" + " " * (len(self.label) + 6) + "\r")
            self.stream.flush()
