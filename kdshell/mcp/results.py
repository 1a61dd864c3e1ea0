"""Structured results next to a command's text, from the same engine values its renderer prints:
`!analyze`'s record (the `--analyze-json` form, kdshell.analysis.report), `k`'s frames (the walk
`k` prints, with its options), `lm`'s modules (the modules `lm` selects), and the banner's facts.
Addresses are hex strings, as in the `--analyze-json` record (JSON numbers lose precision past 2**53)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdshell.analysis import bugcodes
from kdshell.analysis.analyze import analyze
from kdshell.analysis.report import analysis_json, probably_caused_by, teach_lines
from kdshell.commands.analyze import analyze_options
from kdshell.commands.stack import k_frames, k_options
from kdshell.commands.symbols import lm_modules, lm_options, status_text
from kdshell.dispatch import Command, Invocation, has_command
from kdshell.errors import KdError
from kdshell.stack.text import call_site

if TYPE_CHECKING:
    from kdshell.session import Session


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def analysis_record(session: Session) -> dict[str, Any]:
    """The `--analyze-json` record and the `-teach` text (kdshell.analysis.report)."""
    a = analyze(session)
    return {"record": analysis_json(session, a, has_command), "teach": "\n".join(teach_lines(a, has_command))}


def frames(session: Session, inv: Invocation) -> list[dict[str, Any]]:
    """The frames `k` (with these options) prints."""
    o = k_options(session, inv)
    walked = k_frames(session, o)
    return [{"frame": f.number, "child_sp": _hex(f.sp), "return_address": _hex(f.ret), "ip": _hex(f.ip),
             "call_site": call_site(session.symbols, f, session.is64, clean=o.clean),
             "how": f.how, "guessed": f.guess, "trap_frame": _hex(f.trap_frame)} for f in walked]


def modules(session: Session, inv: Invocation) -> list[dict[str, Any]]:
    """The loaded modules `lm` (with these options) lists."""
    out = []
    for m in lm_modules(session, lm_options(inv)):
        status, path = status_text(session, m)
        out.append({"start": _hex(m.base), "end": _hex(m.end), "name": m.name, "image_name": m.image_name,
                    "path": m.path, "symbols": status.strip("()"), "symbol_file": path or None,
                    "timestamp": _hex(m.timestamp)})
    return out


def structured(session: Session, cmd: Command, inv: Invocation) -> dict[str, Any] | None:
    """The structured result of one command that ran, where it has one."""
    if cmd.name == "k":
        return {"frames": frames(session, inv)}
    if cmd.name == "lm":
        return {"modules": modules(session, inv)}
    if cmd.name == "!analyze" and analyze_options(session, inv).show is None:
        return {"analysis": analysis_record(session)["record"]}
    return None


def banner_facts(session: Session) -> dict[str, Any]:
    """What the banner says, as data: the dump, the machine, the bug check and the verdict."""
    d = session.dump
    h = d.header
    entry = bugcodes.lookup(h.bugcheck_code)
    try:
        verdict: str | None = probably_caused_by(analyze(session)) if session.raw_memory is not None else None
    except KdError:
        verdict = None
    when = h.system_datetime
    return {
        "path": d.path,
        "kind": d.kind_name,
        "kind_line": d.kind_line,
        "machine": h.machine_name,
        "is64": d.is64,
        "processors": h.number_processors,
        "system_time": when.isoformat() if when is not None else None,
        "bugcheck": {"code": f"{h.bugcheck_code:#x}", "name": entry.name if entry else None,
                     "parameters": [f"{p:#x}" for p in h.bugcheck_parameters]},
        "probably_caused_by": verdict,
    }
