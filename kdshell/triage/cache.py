"""The triage cache: one SQLite file mapping (sha256 of a dump's content, kdshell's version,
the settings that change a record) to its record, so a rerun over a folder analyses only the
files that are new or changed. Records of tasks the engine stopped (time, memory) are not kept:
they say more about that run than about the file."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from typing import Any

from kdshell import __version__
from kdshell.analysis.report import JSON_SCHEMA
from kdshell.triage.worker import Settings


def default_path() -> str:
    """Beside the symbol cache (kdshell.symbols.store.default_cache): $XDG_CACHE_HOME/kdshell/triage.sqlite."""
    from kdshell.symbols.store import default_cache

    return os.path.join(os.path.dirname(default_cache()), "triage.sqlite")


def settings_key(settings: Settings) -> str:
    """The part of the key that is not the file: the tool's and schema's versions and the paths
    symbols and images come from (another symbol path can give another culprit)."""
    text = json.dumps([__version__, JSON_SCHEMA, settings.symbol_path, settings.image_path])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Cache:
    def __init__(self, path: str) -> None:
        from kdshell.triage.files import TriageError

        self.path = path
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.db = sqlite3.connect(path, timeout=30)
            self.db.execute("CREATE TABLE IF NOT EXISTS records (sha256 TEXT, settings TEXT, record TEXT, "
                            "PRIMARY KEY (sha256, settings))")
            self.db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise TriageError(f"cannot use the cache {path}: {getattr(exc, 'strerror', None) or exc} "
                              "(--cache FILE for another, --no-cache for none)") from None

    def get(self, sha256: str, settings: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT record FROM records WHERE sha256 = ? AND settings = ?",
                              (sha256, settings)).fetchone()
        if row is None:
            return None
        try:
            record: dict[str, Any] = json.loads(row[0])
        except ValueError:
            return None
        return record

    def put(self, sha256: str, settings: str, record: dict[str, Any]) -> None:
        if str(record.get("error", "")).startswith("stopped:"):
            return
        self.db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?)", (sha256, settings, json.dumps(record)))

    def commit(self) -> None:
        self.db.commit()

    def close(self) -> None:
        self.db.commit()
        self.db.close()
