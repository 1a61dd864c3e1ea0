"""The `kdshell` command line: KD-compatible flags, a banner, commands from -c/-cf, then either
the interactive prompt (a terminal) or commands read from standard input (a pipe)."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable

from kdshell import __version__
from kdshell.errors import KdError

if TYPE_CHECKING:
    from kdshell.session import Session


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kdshell",
        description="A WinDbg/KD-style debugger for Windows kernel crash dumps.",
        epilog='Example: kdshell -z MEMORY.DMP -c "!analyze -v; q". Many dumps at once: kdshell triage FOLDER',
    )
    p.add_argument("-z", dest="dump", metavar="DUMP",
                   help="the crash dump to open (.dmp); without one, kdshell opens its bundled sample")
    p.add_argument("-y", dest="symbol_path", metavar="SYMPATH",
                   help="symbol search path (default: _NT_SYMBOL_PATH, else Microsoft's symbol server "
                        "with a per-user cache; -y \"\" for none)")
    p.add_argument("-i", dest="image_path", metavar="IMAGEPATH", help="executable image search path")
    p.add_argument("-c", dest="commands", metavar="CMDS", help='commands to run first, e.g. "vertarget; q"')
    p.add_argument("-cf", dest="command_file", metavar="SCRIPT", help="a file of commands to run first")
    p.add_argument("-logo", dest="log", metavar="LOG", help="write everything shown to this log file")
    p.add_argument("--offline", action="store_true",
                   help="download nothing: symbols come only from local paths and the cache (also KDSHELL_OFFLINE=1)")
    p.add_argument("-v", dest="verbose", action="store_true", help="verbose: show tracebacks of internal errors")
    p.add_argument("--tutorial", action="store_true",
                   help="a guided walk through the bundled sample crash (or -z DUMP), for newcomers")
    p.add_argument("--analyze-json", dest="analyze_json", action="store_true",
                   help="analyse the dump (!analyze) and print only its JSON form; exit 0 when the analysis ran")
    p.add_argument("--version", action="version", version=f"kdshell {__version__}")
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    return p


SAMPLE_NOTE = ("No dump given (-z FILE.dmp): opening kdshell's bundled sample, a small memory dump of a "
               "DRIVER_IRQL_NOT_LESS_OR_EQUAL (0xD1) crash in mydrv.sys.")


WHERE_TO_START = ("New to crash dumps? Start with !analyze -v, then k (the stack), lm (the modules) and "
                  "dq @rsp (memory); '.explain on' explains each output, 'kdshell --tutorial' walks you "
                  "through, .help lists everything.")


def bundled_sample() -> tuple[str, str] | None:
    """(dump, symbol store) of the sample shipped in kdshell/data/sample, if installed."""
    from pathlib import Path

    root = Path(__file__).resolve().parent / "data" / "sample"
    dumps = sorted(root.glob("*.dmp"))
    if not dumps or not (root / "symbols").is_dir():
        return None
    return str(dumps[0]), str(root / "symbols")


def wrapped(text: str) -> list[str]:
    """A paragraph wrapped to the terminal's width, between words."""
    import shutil
    import textwrap

    width = max(40, shutil.get_terminal_size().columns - 1)
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)


def choose_symbol_path(args: argparse.Namespace) -> tuple[str, str, bool]:
    """(symbol path, note for the banner, offline): -y, else _NT_SYMBOL_PATH, else the default
    (Microsoft's server with a per-user cache; the cache alone when offline)."""
    from kdshell.symbols.store import default_symbol_path, environment_symbol_path, offline_requested

    offline = args.offline or offline_requested()
    path = args.symbol_path if args.symbol_path is not None else environment_symbol_path()
    if args.symbol_path == "":
        note = "(empty: -y PATH or .sympath+ PATH adds symbols, .symfix Microsoft's server)"
    elif path:
        note = ""
    else:
        path = default_symbol_path(offline)
        note = "(the default; -y PATH or --offline to change)"
    if offline:
        note = "(offline: no downloads)"
    return path, note, offline


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words[:1] == ["mcp"]:  # `kdshell mcp ...`: the MCP server (kdshell.mcp), its own options
        from kdshell.mcp.command import main as mcp_main

        return mcp_main(words[1:])
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(("\r" if sys.stderr.isatty() else "") + "kdshell: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`kdshell ... | head`): stop quietly, as other command-line tools do.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug of ours outside any command: one line, the traceback on -v
        import os
        import traceback

        if "PYTEST_CURRENT_TEST" in os.environ:
            raise
        print(f"kdshell: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if argv is not None and "-v" in argv or argv is None and "-v" in sys.argv[1:]:
            traceback.print_exc()
        else:
            print("(a kdshell bug: run again with -v to see the traceback)", file=sys.stderr)
        return 1


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["triage"]:
        from kdshell.triage.cli import main as triage_main

        return triage_main(argv[1:])
    args = build_parser().parse_args(argv)
    dumps = ([args.dump] if args.dump else []) + list(args.rest)
    if len(dumps) > 1:
        print(f"kdshell: one dump at a time ({' '.join(dumps[1:])} not opened): for many dumps use "
              f"kdshell triage {' '.join(dumps)}", file=sys.stderr)
        return 2
    dump_path = dumps[0] if dumps else None
    note = None
    if dump_path is None:
        sample = bundled_sample()
        if sample is None:
            build_parser().print_usage(sys.stderr)
            print("kdshell: no dump given: use -z FILE.dmp", file=sys.stderr)
            return 2
        dump_path, store = sample
        note = SAMPLE_NOTE
        if args.symbol_path is None:
            args.symbol_path = store
        if args.image_path is None:
            args.image_path = store

    symbol_path, symbol_note, offline = choose_symbol_path(args)
    opening = dict(symbol_path=symbol_path, image_path=args.image_path, offline=offline)
    if args.analyze_json:
        return _analyze_json(dump_path, args, opening)

    from kdshell.output import Output
    from kdshell.errors import Quit
    from kdshell.session import open_session

    out = Output(sys.stdout)
    if args.log:
        try:  # before the dump is opened, and never onto it: checked before anything is truncated
            out.open_log(args.log, protected=[dump_path], what="-logo")
        except KdError as exc:
            print(f"kdshell: {exc}", file=sys.stderr)
            return 2
    try:
        session = open_session(dump_path, out=out, **opening)
    except KdError as exc:
        print(f"kdshell: {_naming(dump_path, exc)}", file=sys.stderr)
        return 2
    session.options.verbose = args.verbose
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    failures = None  # commands typed at the prompt do not count: only scripted runs report them
    try:
        if note:
            out.lines(wrapped(note))
        out.line(f"kdshell {__version__} - kernel dump debugger")
        out.line("")
        for line in session.banner_lines(symbol_note):
            out.line(line)
        if (note or terminal) and not args.tutorial:
            out.line("")
            out.lines(wrapped(WHERE_TO_START))
        _run_startup(session, args)
        if terminal:
            failures = session.failures
        if args.tutorial:
            from kdshell.tutorial import run_tutorial

            run_tutorial(session, _line_reader(session))
        if terminal:
            from kdshell.repl import interact

            interact(session)
        else:
            _run_stream(session, sys.stdin)
    except Quit:
        pass
    finally:
        session.close()
        out.close_log()
    if failures is None:
        failures = session.failures
    return 0 if failures == 0 else 1


def _naming(path: str, exc: Exception) -> str:
    """An error about a file, naming the file once."""
    return str(exc) if str(path) in str(exc) else f"{path}: {exc}"


def _analyze_json(dump_path: str, args: argparse.Namespace, opening: dict[str, Any]) -> int:
    """`--analyze-json`: !analyze's JSON form alone on standard output (for scripts and triage
    pipelines); a dump that cannot be opened or analysed gives {"error": ...} and exit status 1."""
    import json
    import os

    from kdshell.output import Output
    from kdshell.session import open_session

    from kdshell.analysis.report import error_json

    quiet = Output(open(os.devnull, "w", encoding="utf-8"))
    try:
        session = open_session(dump_path, out=quiet, **opening)
    except KdError as exc:
        print(json.dumps(error_json(dump_path, _naming(dump_path, exc))))
        return 1
    session.progress = None
    try:
        from kdshell.analysis.analyze import analyze
        from kdshell.analysis.report import json_text
        from kdshell.dispatch import has_command

        print(json_text(session, analyze(session), has_command))
        return 0
    except KdError as exc:
        print(json.dumps(error_json(dump_path, str(exc))))
        return 1
    except Exception as exc:  # a bug of ours: still one JSON line, never a traceback
        if args.verbose:
            raise
        print(json.dumps(error_json(dump_path, f"internal error: {type(exc).__name__}: {exc}")))
        return 1
    finally:
        session.close()
        quiet.stream.close()


def _line_reader(session: Session) -> Callable[[str], str]:
    """Reads the user's lines: the terminal prompt, or standard input echoed like KD does."""
    if sys.stdin.isatty() and sys.stdout.isatty():
        from prompt_toolkit import prompt

        return lambda text: prompt(text)

    def read(text: str) -> str:
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        session.out.line(text + line.rstrip("\n"))
        return line

    return read


def _run_startup(session: Session, args: argparse.Namespace) -> None:
    if args.command_file:
        try:
            with open(args.command_file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            session.failures += 1
            session.out.error(f"Cannot read the command file {args.command_file}: {exc.strerror}")
            return
        from kdshell.scripts import group_lines

        for line in group_lines(lines):
            _echo_and_run(session, line)
    if args.commands:
        _echo_and_run(session, args.commands)


def _echo_and_run(session: Session, line: str) -> None:
    session.out.line(f"{session.prompt}{line}")
    if line.strip():
        session.run(line)
    else:
        session.repeat_last()


def _run_stream(session: Session, stream: Iterable[str]) -> None:
    """Commands from a pipe, echoed after the prompt like KD does."""
    for raw in stream:
        _echo_and_run(session, raw.rstrip("\n"))
