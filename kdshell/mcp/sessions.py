"""The server's open dumps: one worker process each (kdshell.mcp.worker says why a process), a
time bound on every call (SIGINT when it runs out, as Ctrl-C at the prompt; kill when even that
does not stop it), and expiry of sessions left idle."""
from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from kdshell.errors import KdError
from kdshell.mcp.policy import Policy

GRACE_S = 5.0  # after the interrupt: how long a command gets to stop before its process is killed
START_S = 60.0  # opening a dump (imports, the banner's analysis)


class SessionError(KdError):
    """A session that is not there, or a call that could not finish (one line)."""


@dataclass
class Limits:
    timeout_s: float = 30.0       # a call's default time bound
    max_timeout_s: float = 300.0  # the most a caller may ask for
    max_output: int = 100_000     # characters of a command's text
    idle_s: float = 900.0         # a session unused this long is closed
    max_sessions: int = 8


class Worker:
    """One worker process and its reply queue (a reader thread: no select on pipes everywhere).
    Its working folder is the output folder: relative names (.dump x.dmp) land there."""

    def __init__(self, cwd: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
        env["KDSHELL_OFFLINE"] = "1"
        self.proc = subprocess.Popen([sys.executable, "-m", "kdshell.mcp.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=cwd,
                                     text=True, encoding="utf-8", bufsize=1)
        self.replies: queue.Queue[str | None] = queue.Queue()
        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.replies.put(line)
        self.replies.put(None)

    def call(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """Send one request; its reply's result. On timeout: interrupt, then kill (SessionError)."""
        with self.lock:
            self.last_used = time.monotonic()
            stdin = self.proc.stdin
            try:
                assert stdin is not None
                stdin.write(json.dumps(request) + "\n")
                stdin.flush()
            except (OSError, ValueError):
                raise SessionError("the session's process has ended: open the dump again") from None
            timed_out = False
            try:
                line = self.replies.get(timeout=timeout_s)
            except queue.Empty:
                timed_out = True
                self._interrupt()
                try:
                    line = self.replies.get(timeout=GRACE_S)
                except queue.Empty:
                    self.kill()
                    raise SessionError(f"the call did not stop within {timeout_s:g} s, nor {GRACE_S:g} s after being "
                                       "interrupted: its session was ended (open the dump again)") from None
            self.last_used = time.monotonic()
            if line is None:
                self.kill()
                raise SessionError("the session's process ended unexpectedly: open the dump again")
            reply = json.loads(line)
            if "error" in reply:
                note = f" (after {timeout_s:g} s)" if timed_out else ""
                raise SessionError(str(reply["error"]) + note)
            result: dict[str, Any] = reply["result"]
            if timed_out:
                result["timed_out"] = True
            return result

    def _interrupt(self) -> None:
        if os.name == "nt":  # no SIGINT for one child process on Windows: end it
            self.kill()
        else:
            os.kill(self.proc.pid, signal.SIGINT)

    @property
    def busy(self) -> bool:
        return self.lock.locked()

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.write(json.dumps({"op": "close"}) + "\n")
                self.proc.stdin.close()
            self.proc.wait(timeout=GRACE_S)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class Pool:
    """The open sessions by id, closed on request, on expiry, or with the server."""

    def __init__(self, policy: Policy, limits: Limits) -> None:
        self.policy = policy
        self.limits = limits
        self.sessions: dict[str, Worker] = {}
        self.expired: set[str] = set()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        # One worker started ahead (it loads kdshell while nobody waits): open_dump takes it.
        self._spare: Worker | None = Worker(policy.out_dir)
        self._reaper = threading.Thread(target=self._reap, daemon=True)
        self._reaper.start()

    def timeout(self, asked: float | None) -> float:
        if asked is None:
            return self.limits.timeout_s
        if asked <= 0:
            raise SessionError("timeout_s must be more than 0")
        return min(float(asked), self.limits.max_timeout_s)

    def start(self, path: str, symbol_path: str | None) -> tuple[Worker, dict[str, Any]]:
        """A new worker with the dump open (checked against the roots first): (worker, banner)."""
        real = self.policy.readable(path, "open_dump")
        symbols = self.policy.search_path(symbol_path or "", "symbol_path")
        worker = self._worker()
        try:
            result = worker.call({"op": "open", "path": real, "symbol_path": symbols, "roots": list(self.policy.roots),
                                  "out_dir": self.policy.out_dir, "max_output": self.limits.max_output}, START_S)
        except BaseException:
            worker.kill()
            raise
        return worker, result

    def _worker(self) -> Worker:
        """The spare worker (a new one if it died), and a new spare behind it."""
        with self.lock:
            worker, self._spare = self._spare, None
            if not self._stop.is_set():
                self._spare = Worker(self.policy.out_dir)
        if worker is None or worker.proc.poll() is not None:
            worker = Worker(self.policy.out_dir)
        return worker

    def open(self, path: str, symbol_path: str | None) -> tuple[str, dict[str, Any]]:
        with self.lock:
            if len(self.sessions) >= self.limits.max_sessions:
                raise SessionError(f"{len(self.sessions)} sessions are open, the most this server allows: "
                                   "close one (close_dump)")
        worker, result = self.start(path, symbol_path)
        sid = "s-" + secrets.token_hex(4)
        with self.lock:
            self.sessions[sid] = worker
        return sid, result

    def get(self, sid: str) -> Worker:
        with self.lock:
            worker = self.sessions.get(sid)
            expired = sid in self.expired
        if worker is None:
            if expired:
                raise SessionError(f"session {sid} was closed after {self.limits.idle_s:g} s idle: open the dump again")
            raise SessionError(f"no session {sid}: open_dump gives one")
        if worker.proc.poll() is not None:
            self.close(sid)
            raise SessionError(f"session {sid} has ended: open the dump again")
        return worker

    def close(self, sid: str) -> bool:
        with self.lock:
            worker = self.sessions.pop(sid, None)
        if worker is None:
            return False
        worker.close()
        return True

    def _reap(self) -> None:
        step = max(0.2, min(self.limits.idle_s / 4, 10.0))
        while not self._stop.wait(step):
            now = time.monotonic()
            with self.lock:
                idle = [sid for sid, w in self.sessions.items()
                        if not w.busy and now - w.last_used > self.limits.idle_s]
                for sid in idle:
                    self.expired.add(sid)
            for sid in idle:
                self.close(sid)

    def close_all(self) -> None:
        self._stop.set()
        with self.lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()
        for sid in list(self.sessions):
            self.close(sid)
