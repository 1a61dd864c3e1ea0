"""A run's text forms: the aligned table and summary for a terminal, CSV, JSON lines."""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Sequence

from kdshell.triage.summary import COLUMNS, TABLE, row, summarize

HEADINGS = dict(COLUMNS)
WIDEST = {"file": 40, "symbol": 40, "bucket": 48, "error": 70, "bugcheck": 40}


def table_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    """One aligned row per dump (the file's base name), then the summary."""
    rows = [row(r) for r in records]
    for r in rows:
        r["file"] = os.path.basename(r["file"])
    keys = [k for k in TABLE if k != "error" or any(r["error"] for r in rows)]
    widths = {k: min(WIDEST.get(k, 60), max([len(HEADINGS[k])] + [len(r[k]) for r in rows])) for k in keys}

    def line(values: dict[str, str]) -> str:
        return "  ".join(_cut(values[k], widths[k]).ljust(widths[k]) for k in keys).rstrip()

    out = [line(HEADINGS), "  ".join("-" * widths[k] for k in keys)]
    out += [line(r) for r in rows]
    return out + [""] + summary_lines(records)


def summary_lines(records: Sequence[dict[str, Any]]) -> list[str]:
    s = summarize(records)
    out = [f"{s['total']} dumps, {s['total'] - s['failed']} analysed, {s['failed']} failed"]
    for title, key in (("By failure bucket", "by_bucket"), ("By culprit module", "by_module")):
        groups = s[key]
        if not groups:
            continue
        width = min(60, max(len(g["name"]) for g in groups))
        out += ["", f"{title}:", f"  {'Count':>5}  {'Name'.ljust(width)}  First seen            Last seen"]
        for g in groups:
            out.append(f"  {g['count']:5d}  {_cut(g['name'], width).ljust(width)}  {g['first'] or '-':20}  "
                       f"{g['last'] or '-'}".rstrip())
    return out


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def csv_text(records: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([k for k, _ in COLUMNS])
    for r in records:
        values = row(r)
        writer.writerow([values[k] for k, _ in COLUMNS])
    return buf.getvalue()


def json_lines(records: Sequence[dict[str, Any]], *, with_text: bool = False) -> str:
    """One JSON record per line (the --analyze-json schema); the `!analyze -v` text only on asking."""
    out = []
    for r in records:
        if not with_text and "analyze_v" in r.get("triage", {}):
            r = {**r, "triage": {k: v for k, v in r["triage"].items() if k != "analyze_v"}}
        out.append(json.dumps(r, sort_keys=False))
    return "\n".join(out) + ("\n" if out else "")
