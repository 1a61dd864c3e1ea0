"""`--html FILE`: one self-contained page (kdshell/data/triage/report.html: inline CSS, script and
SVG charts, nothing fetched) with the rows, the summary and each dump's `!analyze -v` text."""
from __future__ import annotations

import json
import os
import time
from importlib import resources
from typing import Any, Iterable, Sequence

from kdshell import __version__
from kdshell.outpath import open_log
from kdshell.triage.summary import COLUMNS, row, summarize


def page(records: Sequence[dict[str, Any]]) -> str:
    rows = []
    for r in records:
        values = row(r)
        values["name"] = os.path.basename(values["file"])
        rows.append(values)
    summary = summarize(records)
    # A column no dump fills (the computer's name, say) only widens the table.
    columns = [(k, t) for k, t in COLUMNS if k == "file" or any(r[k] for r in rows)]
    data = {"columns": columns, "rows": rows, "texts": [(r.get("triage") or {}).get("analyze_v", "") for r in records],
            "by_bucket": summary["by_bucket"], "by_module": summary["by_module"],
            "subtitle": f"{len(records)} dumps, analysed by kdshell {__version__} on "
                        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"}
    # "</script>" or "<!--" in a file name would end the script element early: "<" as \u003c.
    text = json.dumps(data).replace("<", "\\u003c")
    template = resources.files("kdshell").joinpath("data/triage/report.html").read_text(encoding="utf-8")
    return template.replace("__TITLE__", f"{len(records)} dumps").replace("__DATA__", text)


def write_html(path: str, records: Sequence[dict[str, Any]], protected: Iterable[str] = ()) -> None:
    """Write the page to `path`: never over an input dump or any file that is not a text file."""
    fd = open_log(path, list(protected), append=False, what="--html")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(page(records))
