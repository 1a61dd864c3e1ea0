"""One policy for every file kdshell writes (logs and `.dump`): which paths it may write.

Never the open dump or a file the session has open (a loaded image or PDB), compared by device and
inode so symlinks and hard links are caught; never a special file (a device, FIFO, socket or
directory: replacing or truncating one destroys something that is not ours). A log goes to a new
file, an empty one or an existing text log; kdshell never truncates or appends to a binary file.
Written files get their mode from the umask, and a file replaced with /o keeps its mode and owner.
A server (kdshell.mcp) may confine every write to one output folder (`confine_writes`).
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from kdshell.errors import KdError

_LOG_SNIFF = 4096  # the bytes read to tell a text log from a binary file
_confined: str | None = None  # the one folder writes may go to (`confine_writes`), None: anywhere


class OutputPathError(KdError):
    """A path kdshell refuses to write (one line)."""


def _kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def check_stat(path: str, st: os.stat_result, protected: Iterable[str], what: str) -> None:
    """Refuse an existing target (`st`, its stat through symlinks) that is special or protected
    (the first protected file is the dump being read)."""
    kind = _kind(st.st_mode)
    if kind is not None:
        raise OutputPathError(f"{what}: {path} is {kind}; kdshell writes only regular files")
    for i, p in enumerate(protected):
        if _identity(p) == (st.st_dev, st.st_ino):
            which = "the dump being read" if i == 0 else f"{p}, a file kdshell has open"
            raise OutputPathError(f"{what}: {path} is {which}; it is never written: choose another name")


def confine_writes(folder: str | None) -> None:
    """From now on, refuse every write outside `folder` (symlinks resolved); None lifts it."""
    global _confined
    _confined = os.path.realpath(folder) if folder is not None else None


def check_confined(path: str, what: str) -> None:
    """Refuse `path` when writes are confined and it resolves (through every symlink, the last
    one too) outside the output folder."""
    if _confined is None:
        return
    real = os.path.realpath(path)
    if os.path.commonpath([_confined, real]) != _confined or real == _confined:
        raise OutputPathError(f"{what}: {path} is outside the output folder {_confined}; "
                              "this server writes only there")


def check_output(path: str, protected: Iterable[str], what: str) -> os.stat_result | None:
    """Refuse `path` if it is special, protected or outside the output folder; its stat when it
    exists, else None."""
    check_confined(path, what)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise OutputPathError(f"{what}: cannot use {path}: {getattr(exc, 'strerror', None) or exc}") from None
    check_stat(path, st, protected, what)
    return st


def _looks_like_log(fd: int) -> bool:
    """Text: the first bytes are UTF-8 without NULs (a dump, an image or a PDB has NULs at once)."""
    head = os.pread(fd, _LOG_SNIFF, 0)
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # a character cut at the end of the sample
    return True


def open_log(path: str, protected: Iterable[str], append: bool, what: str) -> int:
    """A file descriptor for writing a log at `path`, positioned at its end; truncated first unless
    `append`. A non-empty file that is not a text log is refused either way."""
    protected = list(protected)
    check_output(path, protected, what)
    # O_NONBLOCK: opening a FIFO with no reader must fail, not hang; O_APPEND|no O_TRUNC: nothing
    # is lost before the open file is checked again (the path may have changed since).
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NOCTTY", 0), 0o666)
    except OSError as exc:
        raise OutputPathError(f"{what}: Unable to open log file '{path}': {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        check_stat(path, st, protected, what)
        if st.st_size and not _readable_log(path, fd):
            raise OutputPathError(f"{what}: {path} exists and is not a text log; it is not overwritten")
        os.set_blocking(fd, True)
        if not append and st.st_size:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _readable_log(path: str, fd: int) -> bool:
    try:
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False  # write-only: cannot tell, so it is not truncated
    try:
        return os.fstat(rfd).st_ino == os.fstat(fd).st_ino and _looks_like_log(rfd)
    finally:
        os.close(rfd)


def new_file_mode() -> int:
    """The mode a new file gets from the umask (0666 & ~umask), like open(2)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def finish_mode(fd: int, previous: os.stat_result | None) -> None:
    """Give a written file (still its temporary) the mode a new file would have, or the mode and,
    as root, the owner of the file it replaces."""
    if previous is None:
        os.fchmod(fd, new_file_mode())
        return
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        os.fchown(fd, previous.st_uid, previous.st_gid)
    os.fchmod(fd, stat.S_IMODE(previous.st_mode))
