"""`kdshell mcp` through the MCP SDK's own client, over stdio and streamable HTTP.

Expected values: the test machine's ground truth (the bundled sample is the d1 machine's small
dump, tests/test_machines.py), the corpus README's facts, and, for "the same values the REPL
prints", the REPL's own text and `--analyze-json` record for the same dump.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

pytest.importorskip("mcp")

import anyio  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

from conftest import CORPUS_DUMPS, CORPUS_SYMBOLS, MINI_17763, TRIAGE_19041, corpus_dumps_if_present  # noqa: E402
from kdshell.cli import bundled_sample  # noqa: E402
from kdshell.mcp.sessions import GRACE_S  # noqa: E402

SAMPLE = bundled_sample()
assert SAMPLE is not None
SAMPLE_DUMP, SAMPLE_SYMBOLS = SAMPLE
SAMPLE_DIR = str(Path(SAMPLE_DUMP).parent)
LIMIT_S = 30  # a hung server fails the test in this long


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


@asynccontextmanager
async def stdio_server(*args: str) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "kdshell.mcp", *args], env=_env())
    async with Client(params) as client:
        yield client


def run(test: Any) -> None:
    async def bounded() -> None:
        with anyio.fail_after(LIMIT_S):
            await test()

    anyio.run(bounded)


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, arguments)
    assert not r.is_error, r.content[0].text
    assert r.structured_content is not None
    return r.structured_content


async def refused(client: Client, tool: str, **arguments: Any) -> str:
    r = await client.call_tool(tool, arguments)
    assert r.is_error
    text = r.content[0].text
    assert "\n" not in text and "Traceback" not in text
    return text


def windbg_ptr(value: str) -> str:
    v = int(value, 16)
    return f"{v >> 32:08x}`{v & 0xFFFFFFFF:08x}"


def repl(dump: str, symbols: str, command: str) -> str:
    from kdshell.session import open_session

    with open_session(dump, symbol_path=symbols, image_path=symbols, offline=True) as s:
        s.progress = None
        list(s.banner_lines())  # as `kdshell -z DUMP` does before its prompt (it loads nt's symbols)
        return s.capture(command)


def analyze_json(dump: str, symbols: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    from kdshell.cli import main

    capsys.readouterr()
    assert main(["-z", dump, "-y", symbols, "-i", symbols, "--offline", "--analyze-json"]) == 0
    record: dict[str, Any] = json.loads(capsys.readouterr().out)
    return record


def same_record(a: dict[str, Any], b: dict[str, Any]) -> None:
    a, b = dict(a), dict(b)
    a.pop("analysis_ms"), b.pop("analysis_ms")
    assert a == b


# -- the sample over stdio: tools, banner facts, !analyze -v, k, lm, help, the prompt -------------
def test_sample_session_over_stdio(machines: Any, capsys: pytest.CaptureFixture[str]) -> None:
    truth = machines.truth("d1")
    expected = analyze_json(SAMPLE_DUMP, SAMPLE_SYMBOLS, capsys)
    k_text = repl(SAMPLE_DUMP, SAMPLE_SYMBOLS, "k").splitlines()
    lm_text = repl(SAMPLE_DUMP, SAMPLE_SYMBOLS, "lm").splitlines()

    async def test() -> None:
        async with stdio_server() as client:  # no --root: the bundled sample's folder
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == {"list_dumps", "open_dump", "run_command", "analyze", "triage", "close_dump"}
            for name in ("open_dump", "run_command", "list_dumps"):  # each says what it may touch
                assert "Reads only under the server's roots" in (tools[name].description or ""), name
            assert "Each call is bounded" in (tools["run_command"].description or "")

            listed = await call(client, "list_dumps")  # every root: here, the sample's folder
            assert [(Path(d["path"]).name, d["bugcheck"], d["kind"]) for d in listed["dumps"]] == [
                (Path(SAMPLE_DUMP).name, f"{truth['bugcheck']['code']:#x}", "small memory dump")]

            opened = await call(client, "open_dump", path=SAMPLE_DUMP)
            sid = opened["session"]
            assert opened["bugcheck"]["code"] == f"{truth['bugcheck']['code']:#x}"
            assert opened["bugcheck"]["parameters"] == [f"{p:#x}" for p in truth["bugcheck"]["parameters"]]
            assert opened["bugcheck"]["name"] == "DRIVER_IRQL_NOT_LESS_OR_EQUAL"
            assert opened["probably_caused_by"].startswith(f"Probably caused by : {truth['culprit']} ")
            assert f"BugCheck D1, {{{', '.join(f'{p:x}' for p in truth['bugcheck']['parameters'])}}}" in opened["banner"]

            analysis = await call(client, "run_command", session=sid, command="!analyze -v")
            assert "Bugcheck Analysis" in analysis["text"] and analysis["ok"]
            same_record(analysis["analysis"], expected)
            assert analysis["analysis"]["culprit"]["image"] == truth["culprit"]

            done = await call(client, "analyze", session=sid)
            same_record(done["analysis"], expected)
            assert done["teach"].startswith("What happened (for newcomers):")

            k = await call(client, "run_command", session=sid, command="k")
            frames = k["frames"]
            assert [f["call_site"] for f in frames] == [t["function"] for t in truth["call_chain"]]
            assert [int(f["child_sp"], 16) for f in frames[1:]] == [t["sp"] for t in truth["call_chain"][1:]]
            assert k["text"].splitlines() == k_text
            for f, line in zip(frames, k_text[1:]):  # the REPL's row for the same frame
                ret = windbg_ptr(f["return_address"]) if f["return_address"] else ""
                assert line.split() == [windbg_ptr(f["child_sp"]), ret, f["call_site"]]

            lm = await call(client, "run_command", session=sid, command="lm")
            mods = lm["modules"]
            assert [(m["image_name"], int(m["start"], 16)) for m in mods] == [
                (m["name"], m["base"]) for m in sorted(truth["modules"], key=lambda m: m["base"])]
            for m, line in zip(mods, lm_text[1:]):
                assert line.split()[:3] == [windbg_ptr(m["start"]), windbg_ptr(m["end"]), m["name"]]
                assert f"({m['symbols']})" in line

            bad = await call(client, "run_command", session=sid, command="kk")
            assert not bad["ok"] and bad["text"].startswith("^ Syntax error in 'kk'") and "Did you mean 'k'?" in bad["text"]
            assert "frames" not in bad

            page = await client.read_resource("kdshell://help/!analyze")
            assert page.contents[0].text.startswith("!analyze [-v]")
            index = (await client.read_resource("kdshell://help")).contents[0].text
            assert "lm " in index and "!analyze" in index

            prompt = await client.get_prompt("walk_dump", {"session": sid})
            text = prompt.messages[0].content.text
            assert f'run_command(session="{sid}", command=".bugcheck")' in text
            assert "!analyze -v" in text

            assert (await call(client, "close_dump", session=sid))["closed"]
            assert "no session" in await refused(client, "run_command", session=sid, command="k")

            # triage: each dump's --analyze-json record, from kdshell.triage
            records = (await call(client, "triage", paths=[SAMPLE_DUMP]))["records"]
            assert [r["path"] for r in records] == [SAMPLE_DUMP]
            same_record(records[0]["record"], expected)

    run(test)


# -- safety: roots (and symlinks out of them), the one output folder, refused commands -------------
def test_roots_outputs_refusals_time_bound_and_cap(tmp_path: Path, machines: Any) -> None:
    truth = machines.truth("d1")
    root, out, outside = tmp_path / "root", tmp_path / "out", tmp_path / "outside"
    for d in (root, out, outside):
        d.mkdir()
    shutil.copy(SAMPLE_DUMP, root / "crash.dmp")
    shutil.copy(machines.path("d1", "kernel"), root / "kernel.dmp")  # .dump /m writes from a kernel dump
    shutil.copy(SAMPLE_DUMP, outside / "secret.dmp")
    (root / "link.dmp").symlink_to(outside / "secret.dmp")
    (root / "linkdir").symlink_to(outside)
    (out / "escape").symlink_to(outside)

    async def test() -> None:
        async with stdio_server("--root", str(root), "--root", SAMPLE_DIR, "--out", str(out),
                                "--timeout", "1", "--max-output", "2000") as client:
            listed = await call(client, "list_dumps", folder=str(root))
            assert [(Path(d["path"]).name, d["kind"]) for d in listed["dumps"]] == [  # no link out
                ("crash.dmp", "small memory dump"), ("kernel.dmp", "kernel memory dump (bitmap)")]
            for path in (outside / "secret.dmp", root / "link.dmp", root / "linkdir" / "secret.dmp",
                         root / ".." / "outside" / "secret.dmp"):
                assert "outside the allowed roots" in await refused(client, "open_dump", path=str(path))
            assert "outside the allowed roots" in await refused(client, "list_dumps", folder=str(outside))
            assert "outside the allowed roots" in await refused(client, "open_dump", path=str(root / "crash.dmp"),
                                                                symbol_path=str(outside))
            assert "downloads nothing" in await refused(client, "open_dump", path=str(root / "crash.dmp"),
                                                        symbol_path="srv*c:\\sym*https://example.invalid")

            sid = (await call(client, "open_dump", path=str(root / "kernel.dmp"), symbol_path=SAMPLE_SYMBOLS))["session"]
            wrote = await call(client, "run_command", session=sid, command=".logopen k.log; k 3; .logclose; .dump /m m.dmp",
                               timeout_s=LIMIT_S)
            assert wrote["ok"], wrote["text"]
            assert "nt!KeBugCheckEx" in (out / "k.log").read_text()
            written = (out / "m.dmp").read_bytes()
            assert written[:8] == b"PAGEDU64" and int.from_bytes(written[0xF98:0xF9C], "little") == 4  # DumpType: small
            for command, what in ((f".logopen {outside / 'x.log'}", ".logopen"), (".logopen escape/x.log", ".logopen"),
                                  (f".dump /m {outside / 'x.dmp'}", ".dump"), (".dump /m escape/x.dmp", ".dump")):
                r = await call(client, "run_command", session=sid, command=command)
                assert not r["ok"] and r["text"].startswith(f"{what}: ") and "outside the output folder" in r["text"]
            assert sorted(p.name for p in outside.iterdir()) == ["secret.dmp"]
            for command, why in ((f".sympath+ {outside}", "outside the allowed roots"),
                                 (".sympath+ srv*https://example.invalid", "downloads nothing"),
                                 (".symfix", "downloads nothing"), ("$<script.txt", "scripts are not run"),
                                 ("q", "close_dump")):
                r = await call(client, "run_command", session=sid, command=command)
                assert not r["ok"] and why in r["text"] and len(r["text"].splitlines()) == 1, command

            # The time bound (--timeout 1) and the cap (--max-output 2000) on a runaway command.
            small = (await call(client, "open_dump", path=SAMPLE_DUMP))["session"]
            started = time.monotonic()
            runaway = await client.call_tool("run_command", {"session": small,
                                                             "command": "dq fffff800`00000000 L?1000000"})
            took = time.monotonic() - started
            data = runaway.structured_content
            assert data is not None and data["timed_out"] and data["cut"] and len(data["text"]) == 2000
            assert took < 1 + GRACE_S + 2, took  # the bound, the interrupt, a loaded machine
            assert "[stopped after the call's time bound of 1 s" in runaway.content[0].text
            assert "[output cut: 2000 of" in runaway.content[0].text
            # Stopped as Ctrl-C stops it at the prompt: the session lives on.
            after = await call(client, "run_command", session=small, command="r rip")
            assert after["text"].strip() == f"rip={truth['context']['rip']:016x}"
            longer = await call(client, "run_command", session=small, command="dq fffff800`00000000 L2", timeout_s=5)
            assert not longer["timed_out"] and longer["text"].startswith("fffff800`00000000  ")

    run(test)


# -- idle expiry ---------------------------------------------------------------------------------------
def test_idle_sessions_expire(tmp_path: Path) -> None:
    from kdshell.errors import KdError
    from kdshell.mcp.policy import Policy
    from kdshell.mcp.sessions import Limits, Pool

    pool = Pool(Policy.make([SAMPLE_DIR], str(tmp_path)), Limits(idle_s=0.3))
    try:
        sid, _ = pool.open(SAMPLE_DUMP, SAMPLE_SYMBOLS)
        worker = pool.get(sid)
        deadline = time.monotonic() + 10
        while sid in pool.sessions:
            assert time.monotonic() < deadline, "the idle session was not closed"
            time.sleep(0.1)
        with pytest.raises(KdError, match="closed after 0.3 s idle"):
            pool.get(sid)
        assert worker.proc.wait(timeout=5) == 0  # its process ended
    finally:
        pool.close_all()


# -- streamable HTTP on a free loopback port, two sessions at once -----------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _second_dump() -> tuple[str, str, list[str]]:
    """A corpus dump when the corpus is there (this test runs without it too): (dump, symbols, roots)."""
    for dump in corpus_dumps_if_present():
        if dump.name.startswith("triage-"):
            return str(dump), str(dump.parent.parent / "symbols"), ["--root", str(dump.parent.parent)]
    return SAMPLE_DUMP, SAMPLE_SYMBOLS, []


def test_two_sessions_over_http() -> None:
    port = _free_port()
    dump, symbols, more = _second_dump()
    second = (dump, symbols)
    roots = ["--root", SAMPLE_DIR, *more]
    proc = subprocess.Popen([sys.executable, "-m", "kdshell.mcp", "--http", f"127.0.0.1:{port}", *roots],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the HTTP server did not start"
                time.sleep(0.1)
        expected = {d: repl(d, s, "k") for d, s in ((SAMPLE_DUMP, SAMPLE_SYMBOLS), second)}

        async def test() -> None:
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                a = (await call(client, "open_dump", path=SAMPLE_DUMP))["session"]
                b = (await call(client, "open_dump", path=second[0], symbol_path=second[1]))["session"]
                assert a != b
                got: dict[str, dict[str, Any]] = {}

                async def k(sid: str) -> None:
                    got[sid] = await call(client, "run_command", session=sid, command="k")

                async with anyio.create_task_group() as tg:
                    tg.start_soon(k, a)
                    tg.start_soon(k, b)
                assert got[a]["text"] == expected[SAMPLE_DUMP] and got[b]["text"] == expected[second[0]]

                # At once, not one after the other: two calls that each last their whole 2 s bound
                # end together (in turn they would need 4 s or more).
                c = (await call(client, "open_dump", path=SAMPLE_DUMP))["session"]

                async def runaway(sid: str) -> None:
                    got[sid] = await call(client, "run_command", session=sid, timeout_s=2,
                                          command="dq fffff800`00000000 L?1000000")

                started = time.monotonic()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(runaway, a)
                    tg.start_soon(runaway, c)
                took = time.monotonic() - started
                assert got[a]["timed_out"] and got[c]["timed_out"]
                assert took < 4, took
                for sid in (a, b, c):
                    assert (await call(client, "close_dump", session=sid))["closed"]

        run(test)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- a corpus dump, and triage's records --------------------------------------------------------------
def test_corpus_dump_and_triage(capsys: pytest.CaptureFixture[str]) -> None:
    expected = analyze_json(str(TRIAGE_19041), str(CORPUS_SYMBOLS), capsys)

    async def test() -> None:
        async with stdio_server("--root", str(CORPUS_DUMPS.parent)) as client:
            opened = await call(client, "open_dump", path=str(TRIAGE_19041), symbol_path=str(CORPUS_SYMBOLS))
            assert opened["bugcheck"]["code"] == "0x1000007e" and opened["kind"] == "small memory dump"
            analysis = await call(client, "run_command", session=opened["session"], command="!analyze -v")
            same_record(analysis["analysis"], expected)
            assert analysis["analysis"]["culprit"]["image"] == "amdppm.sys"  # the corpus README
            assert analysis["analysis"]["exception"]["code"] == "0xc0000005"
            records = (await call(client, "triage", paths=[str(TRIAGE_19041), str(MINI_17763),
                                                           str(CORPUS_DUMPS / "nothing.dmp")],
                                  symbol_path=str(CORPUS_SYMBOLS)))["records"]
            assert [r["path"] for r in records] == [str(TRIAGE_19041), str(MINI_17763), str(CORPUS_DUMPS / "nothing.dmp")]
            same_record(records[0]["record"], expected)
            assert [r["record"]["bugcheck"]["code"] for r in records[:2]] == ["0x1000007e", "0x1000007e"]
            assert records[1]["record"]["os"]["version"] is None or "17763" in json.dumps(records[1]["record"]["os"])
            assert "error" in records[2] and "\n" not in records[2]["error"]

    run(test)


# -- the pieces without a server ------------------------------------------------------------------------
def test_policy_resolves_symlinks(tmp_path: Path) -> None:
    from kdshell.errors import KdError
    from kdshell.mcp.policy import Policy

    (tmp_path / "root").mkdir()
    (tmp_path / "else").mkdir()
    (tmp_path / "root" / "in").symlink_to(tmp_path / "else")
    policy = Policy.make([str(tmp_path / "root")], str(tmp_path / "out"))
    assert policy.readable(str(tmp_path / "root" / "a.dmp"), "x") == str((tmp_path / "root" / "a.dmp").resolve())
    with pytest.raises(KdError, match="outside the allowed roots"):
        policy.readable(str(tmp_path / "root" / "in" / "a.dmp"), "x")
    with pytest.raises(KdError, match="outside the allowed roots"):
        policy.readable(str(tmp_path / "rootx"), "x")  # a sibling whose name starts with the root's
    srv = tmp_path / "root" / "srvsyms"
    assert policy.search_path(f"{srv}; {tmp_path / 'root'}", "x") == f"{srv};{tmp_path / 'root'}"
    for server in ("https://msdl.example/symbols", f"cache*{tmp_path / 'root'}", f"srv*{srv}*https://x"):
        with pytest.raises(KdError, match="downloads nothing"):
            policy.search_path(server, "x")


def test_outpath_confinement(tmp_path: Path) -> None:
    from kdshell import outpath

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "up").symlink_to(tmp_path)
    outpath.confine_writes(str(tmp_path / "out"))
    try:
        outpath.check_output(str(tmp_path / "out" / "a.log"), (), ".logopen")
        for bad in (tmp_path / "a.log", tmp_path / "out" / "up" / "a.log", tmp_path / "out"):
            with pytest.raises(outpath.OutputPathError, match="outside the output folder"):
                outpath.check_output(str(bad), (), ".logopen")
    finally:
        outpath.confine_writes(None)
    outpath.check_output(str(tmp_path / "a.log"), (), ".logopen")


def test_cli_hook(capsys: pytest.CaptureFixture[str]) -> None:
    from kdshell.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["mcp", "--help"])
    assert exit_.value.code == 0
    assert "--root DIR" in capsys.readouterr().out
    assert main(["mcp", "--http", "nope:x"]) == 2
    assert "expected [HOST:]PORT" in capsys.readouterr().err
