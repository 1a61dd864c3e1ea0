"""Fuzz target: every dump container kind, then a session's first commands on what opened.

    python -m fuzz.run containers --minutes 10          # atheris when installed, else builtin

One input is a whole dump file. It is written to a RAM-backed temporary file and
1. opened with open_dump (a DumpFormatError is a clean answer);
2. the container is exercised the way a session starts: registers, exception record, kind
   lines, secondary data, physical pages at the edges of every run, triage parts and ranges;
3. a Session (symbols and images from the bundled sample's store, so PDB types and unwind data
   are used) runs `vertarget; r; lm; k` and three more commands picked by the input's hash
   from COMMANDS (those registered in this checkout). A command's one-line error is an answer;
   an internal error (the dispatcher's "Internal error ...") is a bug.

Seeds: the real corpus dumps, every kind tests/dumpfactory.py writes, the test machines' small
dumps and reduced kernel dumps of d1 and d1-x86 (fuzz/seeds.py).
"""
from __future__ import annotations

import hashlib

from fuzz import seeds as _seeds
from fuzz.engine import tmp_dir, u32

NAME = "containers"
TIMEOUT = 20.0
BASE_COMMANDS = ("vertarget", "r", "lm", "k")
COMMANDS = (
    "kv", "kn 100", "lmv", "!analyze -v", "!process 0 0", "!process 0 7", "!thread", "!pcr", "!prcb", "~1s; k",
    ".bugcheck", ".dumpdebug", "dq @rsp L20", "dps @rsp L10", "!pte @rip", "!vtop 0 @rip", "u @rip L8",
    "ub @rip L4", "ln @rip", "dt nt!_EPROCESS", "dt nt!_KTHREAD", "!lmi nt", "!dh nt", "x nt!Ke*", ".cxr",
    ".ecxr; k", ".trap @rsp", "!db 1000 L20", "db @rip L20", "s -b @rsp L100 0", "!sym noisy; .reload; lm",
)

_TMP = None
_USABLE: tuple[str, ...] | None = None


class InternalError(Exception):
    """The dispatcher caught an exception that is not a KdError: a kdshell bug."""

    def __init__(self, command: str, message: str, trace: str):
        super().__init__(f"{command!r}: {message}")
        self.trace = trace


def seeds() -> list[tuple[str, bytes]]:
    return _seeds.corpus_dumps() + list(_seeds.factory_dumps()) + list(_seeds.machine_dumps())


def HOT(data: bytes) -> list[tuple[int, int]]:
    """Where mutations matter most: the header, the type header, and what its offsets point at."""
    hot = [(0, 0x1000), (0x2000, 0x2100)]
    if data[:8] == b"PAGEDU64" and u32(data, 0xF98) == 4:  # triage: the parts' offsets
        for off in (0x2008, 0x200C, 0x2010, 0x2014, 0x2018, 0x2028, 0x2030, 0x2038, 0x2068, 0x2070, 0x2078):
            target = u32(data, off)
            if 0 < target < len(data):
                hot.append((target, min(len(data), target + 0x100)))
    return hot


def _usable() -> tuple[str, ...]:
    global _USABLE
    if _USABLE is None:
        from kdshell import dispatch
        from kdshell.errors import KdError

        import kdshell.commands  # noqa: F401

        ok = []
        for cmd in COMMANDS:
            try:
                for part in dispatch.split_commands(cmd):
                    dispatch.resolve(part)
                ok.append(cmd)
            except KdError:
                pass
        _USABLE = tuple(ok)
    return _USABLE


def exercise_container(d) -> None:
    """What a session does first with a dump; only MemoryNotPresent may come out."""
    from kdshell.errors import MemoryNotPresent

    def quietly(fn, *args):
        try:
            return fn(*args)
        except MemoryNotPresent:
            return None

    d.registers()
    d.exception
    d.kind_line, d.kind_name, d.attribute_names, d.header.system_datetime
    for blob in d.blobs()[:8]:
        d.read_file(blob.data_offset, min(blob.data_size, 64))
    for w in d.warnings:
        if not isinstance(w, str) or "\n" in w:
            raise AssertionError(f"a warning is not one line: {w!r}")
    if d.physical is not None:
        pfns = [0, 1, 2, 3, 0x10, 0x200, 0x7FF, 1 << 32]
        for first, count in list(d.physical.present_runs())[:20]:
            pfns += [first, first + count - 1, first + count]
        for pfn in pfns:
            quietly(d.physical.page, pfn)
            quietly(d.physical.read, pfn * 0x1000 + 0xFF8, 0x10)
    if d.triage is not None:
        t = d.triage
        [(x.name, x.base, x.size, x.timestamp) for x in t.drivers]
        [(u.name, u.start, u.end) for u in t.unloaded]
        for r in t.memory.ranges()[:50]:
            quietly(t.memory.read, r.start, min(r.size, 0x100))
            quietly(t.memory.read, r.end - 1, 2)


def run_commands(session, commands) -> str:
    """Run commands; an internal error (caught by the dispatcher outside pytest) is raised.
    Returns which of them failed with a one-line error (the input's outcome)."""
    failed = []
    for cmd in commands:
        session.last_traceback = None
        before = session.failures
        session.capture(cmd)
        if session.last_traceback:
            raise InternalError(cmd, session.last_error or "", session.last_traceback)
        if session.failures > before:
            failed.append(cmd.split()[0])
    return ",".join(failed)


def one_input(data: bytes) -> None:
    global _TMP
    from kdshell.dumpfile.dump import open_dump
    from kdshell.session import Session

    if _TMP is None:
        _TMP = tmp_dir()
    path = _TMP / "input.dmp"
    path.write_bytes(data)
    d = open_dump(path)
    try:
        exercise_container(d)
        kind = f"{d.dump_type}:{len(d.warnings)}"
    finally:
        d.close()
    d = open_dump(path)
    store = str(_seeds.SAMPLE_STORE)
    s = Session(d, symbol_path=store, image_path=store)
    s.progress = None
    try:
        h = hashlib.sha1(data).digest()
        usable = _usable()
        extra = [usable[b % len(usable)] for b in h[:3]] if usable else []
        failed = run_commands(s, BASE_COMMANDS + tuple(dict.fromkeys(extra)))
        return f"{kind}:{failed}"
    finally:
        s.close()
