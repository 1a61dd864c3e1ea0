"""One dump in, one record out: what each task of a triage run does, in this process, in a pool
worker or on a Dask worker. The record is `--analyze-json`'s (kdshell.analysis.report) with a
"triage" part: the file's path, sha256 and size, and the `!analyze -v` text. A dump that cannot
be opened or analysed gives error_json's record with the same "triage" part: never an exception."""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from kdshell.errors import KdError
from kdshell.triage.files import digest, is_url, open_bytes

# Test-only: KDSHELL_TRIAGE_TEST="hang:NAME" (or "grow:NAME") makes the task on a file whose name
# is NAME loop forever (or allocate without end), so the tests can watch the limits stop it.
TEST_HOOK = "KDSHELL_TRIAGE_TEST"


@dataclass(frozen=True)
class Settings:
    """What every task is given: the shared symbol and image paths, and the per-file limits."""
    symbol_path: str = ""
    image_path: str = ""
    offline: bool = True
    time_limit: float | None = 120.0    # seconds per file (process pool; the serial path too, on POSIX)
    memory_mb: int | None = 2048        # MiB per worker process (process pool)


def analyse(path: str, settings: Settings, sha256: str | None = None, size: int | None = None) -> dict[str, Any]:
    """The record of one file. `sha256`/`size` are the caller's when it hashed the file already."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        if sha256 is None or size is None:
            sha256, size = digest(path)
    except OSError as exc:
        return _failed(path, f"cannot read it: {exc.strerror or exc}", None, None, start)
    local, temp = path, None
    try:
        if is_url(path):
            local, temp = _fetched(path)
        _test_hook(path)
        record = _analysed(local, path, settings)
    except KdError as exc:
        record = _error(path, _naming(path, str(exc)))
    except MemoryError:
        record = _error(path, f"stopped: over the memory cap ({settings.memory_mb} MiB)")
    except TimeoutError:
        record = _error(path, f"stopped: over the time limit ({settings.time_limit:g} s)")
    except OSError as exc:
        record = _error(path, f"cannot read it: {exc.strerror or exc}")
    except Exception as exc:  # a bug of ours: the file's row says so, the batch goes on
        record = _error(path, f"internal error: {type(exc).__name__}: {exc}")
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    record["triage"] = {"path": path, "sha256": sha256, "size": size, **record.get("triage", {}),
                        "elapsed_ms": round((time.perf_counter() - start) * 1000, 1),
                        "cpu_ms": round((time.process_time() - cpu) * 1000, 1), "cached": False}
    return record


def _analysed(local: str, path: str, settings: Settings) -> dict[str, Any]:
    from kdshell.analysis.analyze import analyze
    from kdshell.analysis.report import analysis_json, verbose_lines
    from kdshell.dispatch import has_command
    from kdshell.output import Output
    from kdshell.session import open_session

    session = open_session(local, out=Output(io.StringIO()), symbol_path=settings.symbol_path,
                           image_path=settings.image_path, offline=settings.offline)
    session.progress = None
    try:
        a = analyze(session)
        a.dump_path = path
        record = analysis_json(session, a, has_command)
        record["triage"] = {"analyze_v": "\n".join(verbose_lines(session, a))}
        return record
    finally:
        session.close()


def _error(path: str, message: str) -> dict[str, Any]:
    from kdshell.analysis.report import error_json

    return error_json(path, message)


def _failed(path: str, message: str, sha256: str | None, size: int | None, start: float) -> dict[str, Any]:
    record = _error(path, _naming(path, message))
    record["triage"] = {"path": path, "sha256": sha256, "size": size,
                        "elapsed_ms": round((time.perf_counter() - start) * 1000, 1), "cached": False}
    return record


def stopped(path: str, why: str, sha256: str | None, size: int | None) -> dict[str, Any]:
    """The record of a task the engine stopped (time limit, memory cap, a worker that died)."""
    record = _error(path, f"stopped: {why}")
    record["triage"] = {"path": path, "sha256": sha256, "size": size, "elapsed_ms": None, "cached": False}
    return record


def _naming(path: str, message: str) -> str:
    return message if path in message or os.path.basename(path) in message else f"{os.path.basename(path)}: {message}"


def _fetched(url: str) -> tuple[str, str]:
    """A URL's file copied into a temporary folder (the dump reader wants a local file)."""
    folder = tempfile.mkdtemp(prefix="kdshell-triage-")
    local = os.path.join(folder, os.path.basename(url.rstrip("/")) or "dump.dmp")
    with open_bytes(url) as src, open(local, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return local, folder


def _test_hook(path: str) -> None:
    hook = os.environ.get(TEST_HOOK, "")
    what, _, name = hook.partition(":")
    if not name or os.path.basename(path) != name:
        return
    if what == "hang":
        while True:
            time.sleep(0.05)
    if what == "grow":
        hoard = []
        while True:
            hoard.append(b"\1" * (64 << 20))  # written, so resident
