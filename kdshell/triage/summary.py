"""A record's flat row (the columns of the terminal table, the CSV and the HTML page) and the
summary of a run: the rows grouped by failure bucket and by culprit module, each with its count
and the first and last crash time."""
from __future__ import annotations

import os
from typing import Any, Sequence

# (key, heading) in the order shown.
COLUMNS: list[tuple[str, str]] = [
    ("file", "File"), ("crash_time", "Crash time (UTC)"), ("computer", "Computer"), ("os_build", "OS build"),
    ("bugcheck", "Bug check"), ("code", "Code"), ("p1", "P1"), ("p2", "P2"), ("p3", "P3"), ("p4", "P4"),
    ("module", "Culprit module"), ("symbol", "Symbol"), ("version", "Version"), ("timestamp", "Timestamp"),
    ("bucket", "Failure bucket"), ("processor", "CPU"), ("stack_found", "Stack found by"), ("error", "Error"),
]
# The terminal table's subset (the rest are in --csv, --json and --html).
TABLE = ["file", "crash_time", "os_build", "bugcheck", "code", "module", "symbol", "bucket", "error"]


def row(record: dict[str, Any]) -> dict[str, str]:
    """The record's columns (COLUMNS' keys) as text; "" where the dump does not say."""
    dump = record.get("dump") or {}
    out = {key: "" for key, _ in COLUMNS}
    out["file"] = str(dump.get("file") or (record.get("triage") or {}).get("path") or "")
    if record.get("error"):
        out["error"] = str(record["error"])
        return out
    bug = record.get("bugcheck") or {}
    params = [p.get("value", "") for p in bug.get("parameters", [])] + [""] * 4
    culprit = record.get("culprit") or record.get("detector") or {}
    os_info = record.get("os") or {}
    cpu = record.get("processor") or {}
    fault = record.get("fault_context") or {}
    build = dump.get("build")
    out.update(
        crash_time=dump.get("crash_time") or "", computer=dump.get("computer") or "",
        os_build=str(os_info.get("version") or (build if build is not None else "")),
        bugcheck=bug.get("name") or "", code=bug.get("code") or "",
        p1=params[0], p2=params[1], p3=params[2], p4=params[3],
        module=record.get("image_name") or culprit.get("image") or "", symbol=record.get("symbol_name") or "",
        version=culprit.get("image_version") or "", timestamp=culprit.get("timestamp") or "",
        bucket=record.get("failure_bucket_id") or "",
        processor="" if cpu.get("number") is None else str(cpu["number"]),
        stack_found=" ".join(x for x in (str(fault.get("kind") or "").lower(), record.get("stack_command") or "") if x),
    )
    return out


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """{"total", "failed", "by_bucket": [...], "by_module": [...]}: each group
    {"name", "count", "first", "last", "files"}, the largest first (then by name)."""
    rows = [row(r) for r in records]
    return {"total": len(rows), "failed": sum(1 for r in rows if r["error"]),
            "by_bucket": _groups(rows, "bucket"), "by_module": _groups(rows, "module")}


def _groups(rows: list[dict[str, str]], key: str) -> list[dict[str, Any]]:
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["error"]:
            continue
        name = r[key] or "(none)"
        g = groups.setdefault(name, {"name": name, "count": 0, "first": "", "last": "", "files": []})
        g["count"] += 1
        g["files"].append(os.path.basename(r["file"]))
        when = r["crash_time"]
        if when:
            g["first"] = min(g["first"] or when, when)
            g["last"] = max(g["last"], when)
    return sorted(groups.values(), key=lambda g: (-g["count"], g["name"]))
