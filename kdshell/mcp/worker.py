"""The process behind one MCP session: it holds one kdshell Session and answers requests, one JSON
line each way over its standard input and output (`python -m kdshell.mcp.worker`).

Why a process: the server must bound each call's time. The REPL stops a command with Ctrl-C:
SIGINT raises KeyboardInterrupt in the main thread, and the dispatcher turns it into "Command
stopped (Ctrl-C)." with the session intact. A thread cannot be sent a signal, and an exception
injected into a thread waits for the next bytecode (never arriving inside a long C call or a
blocking read), and the thread, holding the session, cannot be killed. Here the server sends the
worker SIGINT, exactly the REPL's Ctrl-C; a command that still does not stop is ended for good
with the process (kill). A separate process also lets two sessions use two cores.

Requests: {"op": "open", "path", "symbol_path", "roots", "out_dir", "max_output"}, {"op": "run",
"command"}, {"op": "analyze"}, {"op": "tutorial"}, {"op": "close"}. Replies: {"result": ...} or
{"error": "one line"}.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, TextIO, cast

from kdshell.errors import KdError
from kdshell.mcp.policy import Policy
from kdshell.output import Output
from kdshell.outpath import confine_writes
from kdshell.session import STOPPED

STOPPED_NOTE = "stopped: the call's time bound ran out"


class CappedText:
    """The session's output stream: keeps the first `cap` characters, counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.kept = 0
        self.total = 0

    def write(self, text: str) -> int:
        self.total += len(text)
        room = self.cap - self.kept
        if room > 0:
            piece = text[:room]
            self.parts.append(piece)
            self.kept += len(piece)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def take(self) -> dict[str, Any]:
        text, total = "".join(self.parts), self.total
        self.parts, self.kept, self.total = [], 0, 0
        return {"text": text, "chars": total, "cut": total > len(text)}


class Worker:
    def __init__(self) -> None:
        self.session: Any = None
        self.policy: Policy | None = None
        self.stream = CappedText(100_000)
        self.running = False      # SIGINT stops only a request in progress, never the idle loop
        self.interrupted = False

    def on_sigint(self, signum: int, frame: Any) -> None:
        if self.running:
            self.interrupted = True
            raise KeyboardInterrupt

    # -- requests ----------------------------------------------------------------------------------
    def open(self, req: dict[str, Any]) -> dict[str, Any]:
        from kdshell.mcp.results import banner_facts
        from kdshell.session import open_session

        self.policy = Policy(tuple(req["roots"]), req["out_dir"])
        confine_writes(self.policy.out_dir)
        self.stream = CappedText(int(req.get("max_output", 100_000)))
        path = self.policy.readable(req["path"], "open_dump")
        symbols = self.policy.search_path(req.get("symbol_path") or "", "symbol_path")
        self.session = open_session(path, out=Output(cast(TextIO, self.stream)), symbol_path=symbols, image_path=symbols,
                                    offline=True)
        self.session.progress = None
        for line in self.session.banner_lines():
            self.session.out.line(line)
        banner = self.stream.take()["text"]
        return {"banner": banner, "facts": banner_facts(self.session)}

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        from kdshell.dispatch import resolve, split_commands
        from kdshell.mcp.results import structured

        session, policy = self.session, self.policy
        assert session is not None and policy is not None
        ok = True
        found: dict[str, Any] = {}
        try:
            for text in split_commands(str(req["command"])):
                if self.interrupted:
                    break
                try:
                    cmd, inv = resolve(text)
                    policy.check_command(cmd.name, inv)
                except KdError as exc:
                    session.out.error(str(exc))
                    ok = False
                    continue
                if not session.run_one(text):
                    ok = False
                    continue
                try:
                    found.update(structured(session, cmd, inv) or {})
                except KdError:
                    pass  # the text said what went wrong
        except KeyboardInterrupt:  # between commands, or while the structured result was read
            session.out.interrupted(STOPPED)
            ok = False
        reply = self.stream.take()
        reply.update(ok=ok, structured=found or None, stopped=self.interrupted)
        return reply

    def analyze(self, req: dict[str, Any]) -> dict[str, Any]:
        from kdshell.mcp.results import analysis_record

        return analysis_record(self.session)

    def tutorial(self, req: dict[str, Any]) -> dict[str, Any]:
        from kdshell.tutorial import STEPS, Skip, Walk

        walk = Walk(self.session)
        steps: list[dict[str, Any]] = []
        for make in STEPS:
            step = make(walk)
            if isinstance(step, Skip):
                steps.append({"topic": step.topic, "skipped": step.reason})
            else:
                steps.append({"intro": step.intro, "command": step.command})
        return {"steps": steps}

    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op != "open" and self.session is None:
            return {"error": "no dump is open"}
        handler = {"open": self.open, "run": self.run, "analyze": self.analyze, "tutorial": self.tutorial}.get(str(op))
        if handler is None:
            return {"error": f"unknown request {op!r}"}
        self.interrupted = False
        self.running = True
        try:
            return {"result": handler(req)}
        except KeyboardInterrupt:
            self.stream.take()
            return {"error": STOPPED_NOTE}
        except KdError as exc:
            self.stream.take()
            return {"error": str(exc)}
        except Exception as exc:  # a bug of ours: one line back to the client, the worker lives on
            self.stream.take()
            return {"error": f"internal error: {type(exc).__name__}: {exc}"}
        finally:
            self.running = False


def serve(requests: TextIO, replies: TextIO) -> None:
    worker = Worker()
    signal.signal(signal.SIGINT, worker.on_sigint)
    for line in requests:
        try:
            req = json.loads(line)
        except ValueError:
            reply: dict[str, Any] = {"error": "bad request"}
        else:
            if req.get("op") == "close":
                break
            try:
                reply = worker.handle(req)
            except KeyboardInterrupt:  # the interrupt came as the request was ending
                reply = {"error": STOPPED_NOTE}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    if worker.session is not None:
        worker.session.close()


def main() -> int:
    # The replies go on the real standard output alone: anything else printed goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    os.environ["KDSHELL_OFFLINE"] = "1"
    from kdshell import dispatch
    from kdshell.mcp import results  # loaded now, while no request waits

    dispatch.load_commands()
    del results
    serve(sys.stdin, replies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
