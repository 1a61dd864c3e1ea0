"""Which files a triage run reads: files, folders (recursively), globs, and URLs that fsspec
reaches (s3://, gcs://, file://, ...) for workers on a cluster that share no file system."""
from __future__ import annotations

import glob
import hashlib
import os
from typing import Any, BinaryIO, Iterable, cast

from kdshell.errors import KdError

DUMP_SUFFIXES = (".dmp", ".mdmp", ".dump")
CHUNK = 1 << 20


class TriageError(KdError):
    """A triage run that cannot start (no such path, a bad option)."""


def is_url(path: str) -> bool:
    return "://" in path


def expand(paths: Iterable[str], *, all_files: bool = False) -> list[str]:
    """Every file the arguments name, once each, in the order given (a folder's files sorted).
    A folder gives its dump files (*.dmp, *.mdmp, *.dump; every file with all_files) at any depth;
    a named file is taken whatever its name. A name that matches nothing raises TriageError."""
    out: list[str] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = path if is_url(path) else os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            out.append(path)

    for arg in paths:
        arg = os.fspath(arg)
        if is_url(arg):
            for url in _expand_url(arg):
                add(url)
        elif os.path.isdir(arg):
            for found in _folder(arg, all_files):
                add(found)
        elif os.path.isfile(arg):
            add(arg)
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                raise TriageError(f"{arg}: no file matches")
            for match in matches:
                if os.path.isdir(match):
                    for found in _folder(match, all_files):
                        add(found)
                elif os.path.isfile(match):
                    add(match)
        else:
            raise TriageError(f"{arg}: no such file or folder")
    return out


def _folder(root: str, all_files: bool) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if all_files or name.lower().endswith(DUMP_SUFFIXES):
                found.append(os.path.join(folder, name))
    return found


def _expand_url(url: str) -> list[str]:
    fsspec = _fsspec()
    files = fsspec.open_files(url)
    if not files:
        raise TriageError(f"{url}: no file matches")
    return [f.full_name for f in files]


def _fsspec() -> Any:  # fsspec has no type hints
    try:
        import fsspec
    except ImportError:
        raise TriageError("URLs need fsspec: pip install 'kdshell[cluster]'") from None
    return fsspec


def digest(path: str) -> tuple[str, int]:
    """(sha256 hex, size) of the file's content: the cache's key."""
    h = hashlib.sha256()
    size = 0
    with open_bytes(path) as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def open_bytes(path: str) -> BinaryIO:
    """The file's bytes, local or through fsspec."""
    if is_url(path):
        return cast(BinaryIO, _fsspec().open(path, "rb").open())
    return open(path, "rb")
