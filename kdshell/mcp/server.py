"""kdshell's commands as MCP tools, resources and a prompt, on the official Python SDK (the
optional extra kdshell[mcp]; kdshell.mcp.command starts it). Safe by construction
(kdshell.mcp.policy): reads only under `--root` folders, writes only under `--out`, downloads
nothing, runs no shell; every call has a time bound and a cap on its text.
"""
from __future__ import annotations

import json
import os
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations

from kdshell import __version__
from kdshell.errors import KdError
from kdshell.mcp.policy import Policy
from kdshell.mcp.sessions import Limits, Pool, SessionError

MAX_LISTED = 500  # dumps list_dumps reports from one folder
DUMP_SUFFIXES = (".dmp", ".mdmp", ".hdmp")

SAFETY = ("Reads only under the server's roots ({roots}), writes only under {out} (.dump, .logopen), "
          "downloads nothing and runs no shell command.")


def symbols_for(path: str, symbol_path: str | None) -> str | None:
    """The symbol path asked for; for the bundled sample, by default, its own symbol store."""
    from kdshell.cli import bundled_sample

    sample = bundled_sample()
    if symbol_path is None and sample is not None and os.path.realpath(path) == os.path.realpath(sample[0]):
        return sample[1]
    return symbol_path


def _result(data: dict[str, Any], text: str | None = None) -> CallToolResult:
    body = text if text is not None else json.dumps(data, indent=2)
    return CallToolResult(content=[TextContent(type="text", text=body)], structured_content=data)


def _fail(exc: Exception) -> Exception:
    return ToolError(str(exc))


def header_facts(path: str) -> dict[str, Any]:
    """A dump's size, kind, bug check and time, from its header (the container is opened as
    kdshell opens it, no symbols are loaded and no memory is read)."""
    from kdshell.dumpfile.dump import open_dump

    size = os.path.getsize(path)
    try:
        with open_dump(path) as d:
            h = d.header
            when = h.system_datetime
            return {"path": path, "size": size, "kind": d.kind_name, "machine": h.machine_name,
                    "bugcheck": f"{h.bugcheck_code:#x}",
                    "time": when.isoformat() if when is not None else None}
    except KdError as exc:
        return {"path": path, "size": size, "error": str(exc)}


def list_dump_files(policy: Policy, folder: str) -> list[dict[str, Any]]:
    real = policy.readable(folder, "list_dumps")
    if not os.path.isdir(real):
        raise SessionError(f"list_dumps: {folder} is not a folder")
    found: list[dict[str, Any]] = []
    for base, dirs, files in os.walk(real):
        dirs[:] = sorted(d for d in dirs if policy.inside(os.path.realpath(os.path.join(base, d))))
        for name in sorted(files):
            path = os.path.join(base, name)
            if not name.lower().endswith(DUMP_SUFFIXES) or not policy.inside(os.path.realpath(path)):
                continue
            if len(found) == MAX_LISTED:
                return found
            found.append(header_facts(path))
    return found


def _triage_records(pool: Pool, paths: list[str], symbol_path: str | None, timeout_s: float) -> list[dict[str, Any]]:
    """{"path", "record"} (the `--analyze-json` record) or {"path", "error"} per dump, from
    kdshell.triage: files and folders under the roots, each dump in a worker process bounded by
    the call's time limit, no cache (the server writes only under its output folder)."""
    from kdshell import triage

    slots: list[list[dict[str, Any]]] = [[] for _ in paths]  # the records of each path given, in order
    groups: dict[str, list[tuple[int, str]]] = {}  # the paths of one symbol path, analysed together
    for i, path in enumerate(paths):
        try:
            real = pool.policy.readable(path, "triage")
            symbols = pool.policy.search_path(symbols_for(real, symbol_path) or "", "symbol_path")
            if not os.path.exists(real):
                raise KdError(f"triage: {path}: no such file or folder")
        except KdError as exc:
            slots[i].append({"path": path, "error": str(exc)})
            continue
        groups.setdefault(symbols, []).append((i, real))
    for symbols, group in groups.items():
        options = triage.Options(jobs=2, symbol_path=symbols, offline=True, time_limit=timeout_s, cache="")
        try:
            found = triage.run([real for _, real in group], options)
        except KdError as exc:
            for i, real in group:
                slots[i].append({"path": real, "error": str(exc)})
            continue
        for record in found:
            path = record["triage"]["path"]
            i = next((i for i, real in group if path == real or path.startswith(real + os.sep)), group[0][0])
            if "error" in record:
                slots[i].append({"path": path, "error": record["error"]})
            else:
                slots[i].append({"path": path, "record": {k: v for k, v in record.items() if k != "triage"}})
    return [record for slot in slots for record in slot]


def help_index() -> str:
    from kdshell import dispatch

    dispatch.load_commands()
    lines = []
    for family, cmds in dispatch.commands_by_family().items():
        lines.append(f"{family}: {dispatch.FAMILIES[family]}")
        lines += [f"  {c.name:<14} {c.summary}" for c in cmds]
    return "\n".join(lines)


def help_text(command: str) -> str:
    from urllib.parse import unquote

    from kdshell import dispatch

    dispatch.load_commands()
    try:
        cmd, _ = dispatch.resolve(unquote(command))
    except KdError as exc:
        return str(exc)
    return "\n".join(dispatch.help_lines(cmd))


def walk_text(steps: list[dict[str, Any]], sid: str) -> str:
    """The tutorial's walk as instructions for an assistant."""
    lines = [f"Walk the crash dump open in session {sid} step by step, the way `kdshell --tutorial` does. "
             "For each step run the command with run_command, then explain to the user what it shows "
             "and what it means for this crash, in plain words.", ""]
    for n, step in enumerate(steps, 1):
        if "skipped" in step:
            lines.append(f"Step {n} ({step['topic']}): skip it: {step['skipped']}")
        else:
            lines.append(f"Step {n}: {step['intro']}")
            lines.append(f"  run_command(session=\"{sid}\", command=\"{step['command']}\")")
        lines.append("")
    lines.append("Finish with a short summary: what crashed, which driver is to blame and how sure that is, "
                 "and what to look at next.")
    return "\n".join(lines)


def build_server(policy: Policy, limits: Limits) -> tuple[MCPServer, Pool]:
    pool = Pool(policy, limits)
    safety = SAFETY.format(roots=", ".join(policy.roots), out=policy.out_dir)
    bound = (f"Each call is bounded: {limits.timeout_s:g} s by default (timeout_s, at most {limits.max_timeout_s:g} s) "
             f"and {limits.max_output} characters of text (a note says when it was cut).")
    server: MCPServer = MCPServer(
        "kdshell", version=__version__,
        instructions=("kdshell reads Windows kernel crash dumps (WinDbg/KD commands) on any OS. Open a dump with "
                      "open_dump, run WinDbg commands with run_command (start with '!analyze -v', then 'k' and "
                      "'lm'), read .help text from the kdshell://help resources. " + safety + " " + bound))
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(annotations=read_only, description=(
        "List the crash dumps (.dmp) under a folder inside the server's roots (default: every root), with "
        "size, kind, bug check and time, read from each dump's header only. " + safety))
    def list_dumps(folder: str | None = None) -> CallToolResult:
        try:
            dumps = [d for f in ([folder] if folder else policy.roots) for d in list_dump_files(policy, f)]
        except KdError as exc:
            raise _fail(exc) from None
        return _result({"folder": folder, "roots": list(policy.roots), "dumps": dumps[:MAX_LISTED]})

    @server.tool(description=(
        "Open a crash dump (a path under the server's roots) and get a session id, the banner text and its "
        "facts (kind, machine, bug check, the probable cause). symbol_path: ';'-separated symbol folders under "
        "the roots (the bundled sample finds its own). Sessions close after "
        f"{limits.idle_s:g} s idle. " + safety))
    def open_dump(path: str, symbol_path: str | None = None) -> CallToolResult:
        try:
            sid, opened = pool.open(path, symbols_for(path, symbol_path))
        except KdError as exc:
            raise _fail(exc) from None
        data = {"session": sid, **opened["facts"], "banner": opened["banner"]}
        return _result(data, f"session: {sid}\n{opened['banner']}")

    @server.tool(description=(
        "Run WinDbg/KD commands (';' separates them) in an open session: '!analyze -v', 'k', 'lm', 'dq @rsp', "
        "'!thread', 'dt nt!_EPROCESS', ... Returns the text WinDbg would print and, for !analyze, k and lm, the "
        "same values as structured data (analysis, frames, modules). Scripts ($<), .symfix and q are refused; "
        ".dump and .logopen write only under the output folder. " + bound + " " + safety))
    def run_command(session: str, command: str, timeout_s: float | None = None) -> CallToolResult:
        try:
            worker = pool.get(session)
            limit = pool.timeout(timeout_s)
            ran = worker.call({"op": "run", "command": command}, limit)
        except KdError as exc:
            raise _fail(exc) from None
        text = ran["text"]
        notes = []
        if ran["cut"]:
            notes.append(f"[output cut: {len(text)} of {ran['chars']} characters shown; narrow the command "
                         "(a count, an L range, a module pattern)]")
        if ran.get("timed_out") or ran["stopped"]:
            notes.append(f"[stopped after the call's time bound of {limit:g} s; ask for more with timeout_s "
                         f"(at most {limits.max_timeout_s:g} s)]")
        data = {"session": session, "command": command, "ok": ran["ok"], "text": text, "cut": ran["cut"],
                "chars": ran["chars"], "timed_out": bool(ran.get("timed_out") or ran["stopped"]),
                **(ran["structured"] or {})}
        return _result(data, "\n".join([text.rstrip("\n")] + notes))

    @server.tool(annotations=read_only, description=(
        "Analyse the crash in an open session: the `kdshell --analyze-json` record (bug check, stack, culprit, "
        "bucket) and the plain-language explanation of `!analyze -teach`. " + bound))
    def analyze(session: str, timeout_s: float | None = None) -> CallToolResult:
        try:
            done = pool.get(session).call({"op": "analyze"}, pool.timeout(timeout_s))
        except KdError as exc:
            raise _fail(exc) from None
        return _result({"session": session, "analysis": done["record"], "teach": done["teach"]},
                       json.dumps(done["record"], indent=2) + "\n\n" + done["teach"])

    @server.tool(annotations=read_only, description=(
        "Triage several dumps at once (paths under the server's roots): each dump's analysis record, or its "
        "error. symbol_path: as for open_dump, for every dump. Each dump is bounded like one call. " + safety))
    def triage(paths: list[str], symbol_path: str | None = None, timeout_s: float | None = None) -> CallToolResult:
        try:
            limit = pool.timeout(timeout_s)
        except KdError as exc:
            raise _fail(exc) from None
        return _result({"records": _triage_records(pool, paths, symbol_path, limit)})

    @server.tool(description="Close a session opened by open_dump (its process ends).")
    def close_dump(session: str) -> CallToolResult:
        return _result({"session": session, "closed": pool.close(session)})

    @server.resource("kdshell://help", name="commands", mime_type="text/plain",
                     description="Every command kdshell answers, by family, with a one-line summary")
    def help_all() -> str:
        return help_index()

    @server.resource("kdshell://help/{command}", name="command-help", mime_type="text/plain",
                     description="The .help text of one command: syntax, what it does, an example "
                                 "(e.g. kdshell://help/k, kdshell://help/!analyze; percent-encode $<)")
    def help_one(command: str) -> str:
        return help_text(command)

    @server.prompt(name="walk_dump", description=(
        "Walk an open dump step by step the way `kdshell --tutorial` does: the bug check, !analyze, the stack, "
        "the fault's context, the code, the module, memory"))
    def walk_dump(session: str) -> str:
        try:
            steps = pool.get(session).call({"op": "tutorial"}, limits.timeout_s)["steps"]
        except KdError as exc:
            return f"Session {session} is not open ({exc}). Open the dump with open_dump first."
        return walk_text(steps, session)

    return server, pool
