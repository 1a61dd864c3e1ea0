"""`kdshell triage PATH...` (also `python -m kdshell.triage`): the command line of the engine."""
from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from kdshell.errors import KdError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kdshell triage",
        description="Analyse many crash dumps at once: one row per dump (!analyze), a summary by failure "
                    "bucket and by culprit module; a table, CSV, JSON lines or an HTML page.",
        epilog="Example: kdshell triage C:/Windows/Minidump --html crashes.html")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="dump files, folders (*.dmp at any depth), globs ('**' recurses) or fsspec URLs")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="CSV rows on standard output")
    out.add_argument("--json", action="store_true",
                     help="one JSON record per dump (the --analyze-json schema, versioned)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report to FILE")
    p.add_argument("--with-text", action="store_true", help="--json: include each dump's !analyze -v text")
    p.add_argument("-j", "--jobs", type=int, metavar="N", help="worker processes (default: every core; 1: none)")
    p.add_argument("--cluster", metavar="ADDR",
                   help="run on Dask: tcp://SCHEDULER:8786, or local:N for a local cluster of N workers")
    p.add_argument("-y", dest="symbol_path", metavar="SYMPATH",
                   help="symbol search path, shared by every dump (default: as kdshell's: _NT_SYMBOL_PATH, "
                        "else Microsoft's server with the per-user cache)")
    p.add_argument("-i", dest="image_path", metavar="IMAGEPATH", help="executable image search path")
    p.add_argument("--offline", action="store_true", help="download nothing (also KDSHELL_OFFLINE=1)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="stop a dump's analysis after S seconds (default 120; 0: no limit)")
    p.add_argument("--memory-cap", type=int, default=2048, metavar="MIB",
                   help="stop a worker that grows past MIB MiB (default 2048; 0: no cap)")
    p.add_argument("--cache", metavar="FILE", help="the results cache (default: triage.sqlite beside the symbol cache)")
    p.add_argument("--no-cache", action="store_true", help="analyse every file again, keep nothing")
    p.add_argument("--all-files", action="store_true", help="in folders, take every file, not only *.dmp")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from kdshell.triage import Options, run
    from kdshell.triage.html import write_html
    from kdshell.triage.render import csv_text, json_lines, table_lines

    if args.jobs is not None and args.jobs < 1:
        print("kdshell triage: -j needs a number of processes of 1 or more", file=sys.stderr)
        return 2
    options = Options(jobs=args.jobs, cluster=args.cluster, symbol_path=args.symbol_path, image_path=args.image_path,
                      offline=args.offline, time_limit=args.timeout or None, memory_mb=args.memory_cap or None,
                      cache="" if args.no_cache else args.cache, all_files=args.all_files)
    bar = ProgressBar(sys.stderr)
    try:
        records = run(args.paths, options, progress=bar.update)
    except KdError as exc:
        bar.done()
        print(f"kdshell triage: {exc}", file=sys.stderr)
        return 2
    bar.done()
    if args.csv:
        sys.stdout.write(csv_text(records))
    elif args.json:
        sys.stdout.write(json_lines(records, with_text=args.with_text))
    else:
        print("\n".join(table_lines(records)))
    if args.html:
        try:
            write_html(args.html, records, protected=[r["triage"]["path"] for r in records])
        except (OSError, KdError) as exc:
            print(f"kdshell triage: cannot write {args.html}: {getattr(exc, 'strerror', None) or exc}",
                  file=sys.stderr)
            return 2
        print(f"HTML report: {args.html}", file=sys.stderr)
    return 0


class ProgressBar:
    """`triage [=====>    ] 120/300  85.2/s  ETA 0:02` on a terminal's stderr; nothing when piped."""
    EVERY = 0.1

    def __init__(self, stream: TextIO) -> None:
        self.stream: TextIO | None = stream if stream.isatty() else None
        self.start = time.monotonic()
        self.last = 0.0
        self.first: int | None = None
        self.shown = False

    def update(self, done: int, total: int) -> None:
        if self.stream is None:
            return
        if self.first is None:
            self.first = done  # files the cache answered: not part of the rate
        now = time.monotonic()
        if now - self.last < self.EVERY and done < total:
            return
        self.last = now
        self.shown = True
        self.stream.write("\r" + progress_text(done, total, done - self.first, now - self.start))
        self.stream.flush()

    def done(self) -> None:
        if self.shown and self.stream is not None:
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()


def progress_text(done: int, total: int, analysed: int, elapsed: float, width: int = 24) -> str:
    """The bar's text: done/total, the rate of analysis (files per second) and the time left."""
    filled = width * done // max(total, 1)
    bar = "=" * filled + (">" if filled < width else "") + " " * max(0, width - filled - 1)
    rate = analysed / elapsed if elapsed > 0 else 0.0
    left = (total - done) / rate if rate > 0 else None
    eta = "--:--" if left is None else f"{int(left // 60)}:{int(left % 60):02d}"
    return f"triage [{bar}] {done}/{total}  {rate:.1f}/s  ETA {eta}"


def entry() -> None:
    """`python -m kdshell.triage`."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("kdshell triage: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
