"""`kdshell mcp` / `python -m kdshell.mcp`: the server's command line. Over stdio by default,
streamable HTTP with `--http [HOST:]PORT` (loopback unless a host is named). The MCP SDK (the
optional extra kdshell[mcp]) is imported only once the command line is read, so its absence is
one line."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from kdshell.errors import KdError
from kdshell.mcp.policy import Policy
from kdshell.mcp.sessions import Limits, SessionError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdshell mcp", description=(
        "kdshell as a Model Context Protocol server (stdio by default). It reads only under --root folders "
        "(the bundled sample's when none is given), writes only under --out, downloads nothing."))
    p.add_argument("--root", action="append", default=[], metavar="DIR",
                   help="a folder whose dumps and symbols the server may read (repeat for more)")
    p.add_argument("--out", metavar="DIR", help="the one folder .dump and .logopen write to (default: a new "
                                                "temporary folder)")
    p.add_argument("--http", metavar="[HOST:]PORT", help="serve streamable HTTP at http://HOST:PORT/mcp "
                                                         "(HOST defaults to 127.0.0.1) instead of stdio")
    p.add_argument("--timeout", type=float, default=Limits.timeout_s, metavar="S", help="a call's default time bound")
    p.add_argument("--max-timeout", type=float, default=Limits.max_timeout_s, metavar="S",
                   help="the most timeout_s a client may ask for")
    p.add_argument("--max-output", type=int, default=Limits.max_output, metavar="CHARS",
                   help="characters of a command's text returned (the rest is cut, with a note)")
    p.add_argument("--idle", type=float, default=Limits.idle_s, metavar="S", help="close sessions idle this long")
    p.add_argument("--max-sessions", type=int, default=Limits.max_sessions, metavar="N")
    return p


def http_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SessionError(f"--http {text}: expected [HOST:]PORT")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError:
        print("kdshell mcp: the MCP SDK is not installed: pip install 'kdshell[mcp]'", file=sys.stderr)
        return 2
    roots = args.root
    if not roots:
        from kdshell.cli import bundled_sample

        sample = bundled_sample()
        if sample is None:
            print("kdshell mcp: give at least one --root DIR", file=sys.stderr)
            return 2
        roots = [os.path.dirname(sample[0])]
    try:
        policy = Policy.make(roots, args.out or tempfile.mkdtemp(prefix="kdshell-mcp-"))
        limits = Limits(timeout_s=args.timeout, max_timeout_s=max(args.timeout, args.max_timeout),
                        max_output=args.max_output, idle_s=args.idle, max_sessions=args.max_sessions)
        address = http_address(args.http) if args.http else None
    except KdError as exc:
        print(f"kdshell mcp: {exc}", file=sys.stderr)
        return 2
    from kdshell.mcp.server import build_server

    server, pool = build_server(policy, limits)
    print(f"kdshell mcp: roots {', '.join(policy.roots)}; output folder {policy.out_dir}", file=sys.stderr)
    try:
        if address is None:
            server.run("stdio")
        else:
            host, port = address
            print(f"kdshell mcp: serving http://{host}:{port}/mcp", file=sys.stderr)
            if host not in ("127.0.0.1", "::1", "localhost"):
                print(f"kdshell mcp: warning: {host} is not a loopback address: whoever reaches it can read "
                      "the dumps under the roots", file=sys.stderr)
            server.run("streamable-http", host=host, port=port)
    except KeyboardInterrupt:
        pass
    finally:
        pool.close_all()
    return 0
