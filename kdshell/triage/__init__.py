"""Many dumps at once: `kdshell triage` as a library.

    from kdshell import triage
    records = triage.run(["/crashes/Minidump"], triage.Options(jobs=4))
    for r in records:
        print(r["dump"]["file"], r.get("error") or r["failure_bucket_id"])
    print(triage.summarize(records)["by_bucket"])

`run(paths, options=None, progress=None) -> list[dict]`
    paths: files, folders (their *.dmp/*.mdmp/*.dump files at any depth), globs (`**` recurses)
    and fsspec URLs (s3://..., file://...). Raises kdshell.errors.KdError (TriageError) when a
    path names nothing; a file that is not a dump, is truncated, cannot be analysed, hangs or
    grows past the memory cap gives its record with "error" and never stops the run.
    Returns one record per file, in the order of `paths`. A record is `--analyze-json`'s
    (kdshell.analysis.report, its version in "schema": JSON_SCHEMA) plus "triage":
    {"path", "sha256", "size", "analyze_v" (the `!analyze -v` text), "elapsed_ms", "cpu_ms" (the
    worker's wall and CPU time for it), "cached"};
    a failed one is {"schema", "kdshell", "dump": {"file"}, "error", "triage"}.
    progress(done, total) is called as files finish.

`Options` (all optional):
    jobs: worker processes (None: every core; 1, or a single file to analyse: in this process,
    the time limit by SIGALRM in the main thread, no memory cap); cluster: a Dask scheduler
    ("tcp://host:8786") or "local:N" (a LocalCluster); symbol_path: as the REPL's default
    (_NT_SYMBOL_PATH, else Microsoft's server with the per-user cache, shared by every dump);
    image_path; offline; time_limit (s) and memory_mb per file; cache: the SQLite file (None: the
    default beside the symbol cache; "" for none); all_files: take every file in folders.

`summarize(records)` groups them by failure bucket and by culprit module (count, first and last
crash time); `row(record)` is a record's flat row (the table's, CSV's and HTML page's columns).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from kdshell.triage.files import TriageError, digest, expand
from kdshell.triage.summary import COLUMNS, row, summarize
from kdshell.triage.worker import Settings

__all__ = ["Options", "run", "summarize", "row", "expand", "COLUMNS", "TriageError", "Settings"]


@dataclass
class Options:
    jobs: int | None = None
    cluster: str | None = None
    symbol_path: str | None = None
    image_path: str | None = None
    offline: bool | None = None
    time_limit: float | None = 120.0
    memory_mb: int | None = 2048
    cache: str | None = None
    all_files: bool = False


def settings_for(options: Options) -> Settings:
    """The symbol path as the REPL chooses it (kdshell.cli.choose_symbol_path): the one given,
    else _NT_SYMBOL_PATH, else Microsoft's server with the per-user cache (the cache alone offline)."""
    from kdshell.symbols.store import default_symbol_path, environment_symbol_path, offline_requested

    offline = bool(options.offline) or offline_requested()
    path = options.symbol_path
    if path is None:
        path = environment_symbol_path() or default_symbol_path(offline)
    image = options.image_path if options.image_path is not None else os.environ.get("_NT_EXECUTABLE_IMAGE_PATH", "")
    return Settings(symbol_path=path, image_path=image, offline=offline, time_limit=options.time_limit,
                    memory_mb=options.memory_mb)


def run(paths: Iterable[str], options: Options | None = None,
        progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """Analyse every dump the paths name; one record per file, in order (the module's docstring)."""
    from kdshell.triage import pool
    from kdshell.triage.cache import Cache, default_path, settings_key
    from kdshell.triage.worker import analyse

    options = options or Options()
    files = expand(paths, all_files=options.all_files)
    settings = settings_for(options)
    cache = None if options.cache == "" else Cache(options.cache or default_path())
    key = settings_key(settings)
    records: list[dict[str, Any] | None] = [None] * len(files)
    jobs: list[pool.Job] = []
    done = 0
    try:
        for index, path in enumerate(files):
            try:
                sha, size = digest(path)
            except OSError:  # its record says why
                records[index] = analyse(path, settings)
                done += 1
                continue
            hit = cache.get(sha, key) if cache is not None else None
            if hit is not None:
                hit["dump"]["file"] = path
                hit["triage"].update(path=path, cached=True)
                records[index] = hit
                done += 1
            else:
                jobs.append((index, path, sha, size))
        if progress is not None:
            progress(done, len(files))
        workers = options.jobs or os.cpu_count() or 1
        if options.cluster:
            results = pool.cluster(jobs, settings, options.cluster)
        elif workers <= 1 or len(jobs) <= 1:
            results = pool.serial(jobs, settings)
        else:
            results = pool.processes(jobs, settings, workers)
        for index, record in results:
            records[index] = record
            sha = record["triage"].get("sha256")
            if cache is not None and sha:
                cache.put(sha, key, record)
            done += 1
            if progress is not None:
                progress(done, len(files))
    finally:
        if cache is not None:
            cache.close()
    return [r for r in records if r is not None]
