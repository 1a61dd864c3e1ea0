"""Writing dumps: .dump (windbg.md §16).

Thin: parse WinDbg's options, call the engines -- kdshell.export.minidump (/m, a small memory
dump) and kdshell.export.convert (/f, /k, /ka: complete, kernel and active dumps) -- and say
what was written.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import datetime
import os

from kdshell.dispatch import Invocation, command
from kdshell.dumpfile.dump import KIND_NAMES
from kdshell.errors import CommandError
from kdshell.outpath import check_output

if TYPE_CHECKING:
    from kdshell.session import Session

# The writers (kdshell.export.convert, .minidump) are imported when .dump runs: they are not
# needed to start, and the prompt comes sooner without them.
SMALL = "small"
SYNTAX = '.dump [/m | /f | /k | /ka] [/o] [/u] [/c "Comment"] [/type N] FileName'


def parse_options(args: list[str]) -> dict:
    """WinDbg's .dump options: the kind (/m default, /f[y], /k, /ka), /o, /u, /c Comment, and
    kdshell's /type N (the DumpType to write a /f, /k or /ka dump as)."""
    from kdshell.export.convert import ACTIVE, COMPLETE, KERNEL

    o: dict[str, Any] = dict(kind=None, overwrite=False, unique=False, comment=None, dump_type=None, path=None)
    i = 0
    while i < len(args):
        word = args[i]
        i += 1
        # On Linux a path starts with '/' too: an option is '/' and letters only (/m, /ka, /type).
        if not word.startswith("/") or not word[1:].isalpha():
            if o["path"] is not None:
                raise CommandError(f".dump: one file name only ('{o['path']}' and '{word}'); "
                                   "quote a name that has spaces")
            o["path"] = word
            continue
        opt = word[1:].lower()
        if opt in ("m", "f", "fy", "k", "ka"):
            kind = {"m": SMALL, "f": COMPLETE, "fy": COMPLETE, "k": KERNEL, "ka": ACTIVE}[opt]
            if o["kind"] is not None and o["kind"] != kind:
                raise CommandError(".dump: choose one of /m, /f, /k, /ka")
            o["kind"] = kind
        elif opt == "o":
            o["overwrite"] = True
        elif opt == "u":
            o["unique"] = True
        elif opt == "c":
            if i >= len(args):
                raise CommandError('.dump: /c needs a comment: /c "text"')
            o["comment"] = args[i]
            i += 1
        elif opt == "type":
            if i >= len(args):
                raise CommandError(".dump: /type needs a DumpType number")
            try:
                o["dump_type"] = int(args[i], 0)
            except ValueError:
                raise CommandError(f".dump: /type {args[i]} is not a number") from None
            i += 1
        elif opt in ("b", "ba"):
            raise CommandError(".dump: kdshell does not write CAB packages (/b); write the dump and pack it "
                               "with any archiver")
        elif opt.startswith("m") and len(opt) > 1:
            raise CommandError(f".dump: {word} is a user-mode minidump option; a kernel dump is written with "
                               "/m (small), /f (complete), /k or /ka")
        else:
            raise CommandError(f".dump: unknown option {word} ({SYNTAX})")
    if o["path"] is None:
        raise CommandError(f".dump: no file name ({SYNTAX})")
    o["kind"] = o["kind"] or SMALL
    if o["dump_type"] is not None and o["kind"] == SMALL:
        if o["dump_type"] != 4:
            raise CommandError(".dump /m writes DumpType 4 only")
        o["dump_type"] = None
    return o


def unique_name(path: str, now: datetime.datetime | None = None, pid: int | None = None) -> str:
    """WinDbg's /u: the date, time and a process id before the extension:
    `crash.dmp` -> `crash_2026-11-22_03-15-42-123_1A2B.dmp`."""
    now = now or datetime.datetime.now()
    pid = os.getpid() if pid is None else pid
    stem, ext = os.path.splitext(path)
    stamp = now.strftime("%Y-%m-%d_%H-%M-%S-") + f"{now.microsecond // 1000:03d}_{pid & 0xFFFF:04X}"
    return f"{stem}_{stamp}{ext}"


@command(".dump", family="dump", syntax=SYNTAX, needs=(),
         summary="Write a small memory dump (/m), or a complete (/f), kernel (/k) or active (/ka) dump, "
                 "from the dump being read",
         example='.dump /m /c "shrunk for the vendor" C:\\dumps\\mini.dmp',
         details="/m: small memory dump (DumpType 4) with the crash's context, stack, driver list,\n"
                 "KPRCB/EPROCESS/ETHREAD copies and data blocks (the default); /f[y]: complete dump\n"
                 "(DumpType 5; /type 1 or 10); /k: kernel pages only (DumpType 6; /type 8);\n"
                 "/ka: kernel pages and every process's user pages (DumpType 6; /type 9).\n"
                 "/o: overwrite an existing file; /u: add the date, time and a process id to the name;\n"
                 "/c \"text\": the header's comment. Written to a temporary file next to FileName and\n"
                 "renamed when complete; Ctrl-C stops a write and leaves no file.")
def dump(session: Session, inv: Invocation) -> None:
    from kdshell.export.convert import ACTIVE, COMPLETE, KERNEL, KIND_TYPES, write_converted
    from kdshell.export.minidump import SmallDumpError, write_small_dump

    # What WinDbg prints after "Creating FILE - " for each kind.
    kind_words = {SMALL: "mini kernel dump", COMPLETE: "Full kernel dump", KERNEL: "kernel memory dump",
                  ACTIVE: "active kernel memory dump"}
    o = parse_options(inv.args)
    path = os.path.expanduser(o["path"])
    if o["unique"]:
        path = unique_name(path)
    d = session.dump
    check_output(path, session.protected_files(), ".dump")
    if not o["overwrite"] and os.path.lexists(path):
        raise CommandError(f".dump: {path} already exists: add /o to overwrite it, or /u for a new name")
    kind = o["kind"]
    out = session.out
    if kind == SMALL and d.is_small:
        raise SmallDumpError("This is already a small memory dump: .dump /m writes one from a complete or "
                             "kernel dump (use a file copy to duplicate it)")
    if kind != SMALL and d.physical is None:
        raise CommandError(f".dump: this {d.kind_name} has no physical memory: only .dump /m can be written "
                           "from a complete or kernel dump")
    if kind != SMALL and o["dump_type"] is not None and o["dump_type"] not in KIND_TYPES[kind]:
        allowed = ", ".join(str(t) for t in KIND_TYPES[kind])
        raise CommandError(f".dump: a {kind_words[kind]} is written as DumpType {allowed}, not {o['dump_type']}")
    out.line(f"Creating {path} - {kind_words[kind]}")
    if kind == SMALL:
        size, small = write_small_dump(session, path, overwrite=o["overwrite"], comment=o["comment"])
        notes = small.notes
        p = small.parts
        what = (f"{len(p.stack):#x} bytes of stack, {len(p.drivers)} drivers, "
                f"{len(p.data_blocks)} data blocks")
        dump_type = 4
    else:
        result = write_converted(session, path, kind, dump_type=o["dump_type"], overwrite=o["overwrite"],
                                 comment=o["comment"], progress=session.progress)
        notes = result.notes
        size, dump_type = result.size, result.dump_type
        what = f"{result.pages:#x} pages"
    for note in notes:
        out.warn(f"Note: {note}")
    out.line("Dump successfully written")
    out.line(f"{size:,} bytes: {KIND_NAMES.get(dump_type, 'dump')} (DumpType {dump_type}), {what}")
