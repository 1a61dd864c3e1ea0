"""Copying a dump's pages file to file by extents, for the writers (write.py) when the pages lie in
a file (`FileSource`: an opened dump, as `.dump /f`, `/k`, `/ka` give it).

The source's holes are found with SEEK_DATA/SEEK_HOLE and never read (a 32 GiB machine of zero
pages is a few MB of data), data is read 4 MiB at a time into one buffer with preadv and written
with pwrite, its zero pages left as holes, and what was read is dropped from the page cache
(posix_fadvise): time follows the data, memory stays at one buffer. Where the OS lacks positioned
I/O (Windows) `file_source` says no and the writers take the pages one by one.
"""
from __future__ import annotations

import errno
import os
from typing import BinaryIO, Iterable, Iterator, Protocol, Sequence, cast

from kdshell.errors import DumpWriteError

PAGE_SIZE = 0x1000
_ZERO_PAGE = bytes(PAGE_SIZE)
_COPY_CHUNK = 4 << 20  # bytes read from the source file at once (one buffer, reused)


class FileSource(Protocol):
    """A page source whose pages lie in a file (an opened dump, convert.py's StoredPages): the
    writers copy them by extents, file to file, instead of page by page."""

    def present_runs(self) -> Iterable[tuple[int, int]]: ...

    def page_count(self) -> int:
        """How many pages present_runs() lists (without listing them)."""

    def present_bitmap(self) -> bytes | None:
        """The present PFNs as a bitmap (bit n = byte n//8, bit n%8) when the source has one."""

    def fileno(self) -> int: ...

    def file_extents(self, runs: Sequence[tuple[int, int]] | None) -> Iterator[tuple[int, int]]:
        """(file offset, bytes) of the pages of `runs` (None: every present page), in order."""


# Copying by extents needs positioned reads and writes (not on Windows: page by page there).
_EXTENT_COPY = hasattr(os, "preadv") and hasattr(os, "pwrite")


def file_source(source: object) -> FileSource | None:
    if _EXTENT_COPY and callable(getattr(source, "file_extents", None)):
        return cast(FileSource, source)
    return None


def _next_data(fd: int, off: int, end: int) -> tuple[int, int] | None:
    """The first [start, stop) of [off, end) the file system holds data for (holes are skipped
    without reading them); None when only holes are left. All of it where SEEK_DATA is not
    supported."""
    if not hasattr(os, "SEEK_DATA"):
        return off, end
    try:
        data = os.lseek(fd, off, os.SEEK_DATA)
        hole = os.lseek(fd, data, os.SEEK_HOLE)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data from `off` to the end of the file
            return None
        return off, end
    return (data, min(hole, end)) if data < end else None


_SMALL_HOLE = 64 << 10  # a hole this short between two data stretches is read with them


def _stretches(fd: int, off: int, end: int) -> Iterator[tuple[int, int]]:
    """The stretches of [off, end) to read: the file's data, holes skipped without reading them,
    except holes of at most 64 KiB between data, read with it (reading a short hole costs less
    than the system calls of another stretch)."""
    seg = _next_data(fd, off, end)
    while seg is not None:
        start, stop = seg
        seg = None
        while stop < end:
            nxt = _next_data(fd, stop, end)
            if nxt is None:
                break
            if nxt[0] - stop > _SMALL_HOLE or stop - start >= _COPY_CHUNK:
                seg = nxt
                break
            stop = nxt[1]
        yield start, stop


def copy_extents(f: BinaryIO, fd: int, extents: Iterable[tuple[int, int]]) -> None:
    """Copy file extents of `fd` to `f` at its position: the source's holes are skipped with
    SEEK_DATA/SEEK_HOLE, its data read in 4 MiB pieces into one buffer and written with its
    zero pages left as holes, and what was read is dropped from the page cache (a dump may be
    far larger than memory)."""
    f.flush()
    out = f.fileno()
    pos = f.tell()
    buf = bytearray(_COPY_CHUNK)
    view = memoryview(buf)
    tail = pos  # the end of the last bytes written
    drop = getattr(os, "posix_fadvise", None)
    for off, size in extents:
        for start, stop in _stretches(fd, off, off + size):
            while start < stop:
                n = min(_COPY_CHUNK, stop - start)
                got = os.preadv(fd, [view[:n]], start)
                if got != n:
                    raise DumpWriteError(f"the source file ends at {start + got:#x}, inside its page data")
                tail = max(tail, _write_nonzero(out, buf, n, pos + (start - off)))
                if drop is not None:
                    drop(fd, start, n, os.POSIX_FADV_DONTNEED)
                start += n
        pos += size
    if tail < pos:  # a trailing hole still counts in the file's length
        os.ftruncate(out, pos)
    f.seek(pos)


def _write_nonzero(out: int, buf: bytearray, n: int, at: int) -> int:
    """Write the first `n` bytes of `buf` at `at`, leaving whole zero pages unwritten; the end
    of the last bytes written (0: nothing written)."""
    zero = buf.startswith  # compares in place (memcmp), no copy
    view = memoryview(buf)
    last = 0
    i = 0
    while i < n:
        is_zero = zero(_ZERO_PAGE, i)
        j = i + PAGE_SIZE
        while j < n and zero(_ZERO_PAGE, j) == is_zero:
            j += PAGE_SIZE
        j = min(j, n)
        if not is_zero:
            os.pwrite(out, view[i:j], at + i)
            last = at + j
        i = j
    return last
