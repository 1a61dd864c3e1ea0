"""Searching memory (what `s` does): byte patterns and printable strings in a range, skipping
what the dump does not have. The memory reader needs `chunks(start, length)`, which yields
(address, bytes or MemoryNotPresent, size) pieces in order (kdshell.memory.virtual).

    for hit in find(memory, start, length, b"KDBG", align=1, progress=report): ...
    for address, text in strings(memory, start, length, unit=2): ...     # s -su

A hit may straddle two readable pieces; a gap (a piece the dump lacks) breaks a match and a string.
"""
from __future__ import annotations

from typing import Callable, Iterator, Protocol

from kdshell.errors import MemoryNotPresent
from kdshell.memory.virtual import Chunk

MIN_STRING = 3  # characters of the shortest string listed (WinDbg's default for -sa/-su)


class Chunked(Protocol):
    """A memory that yields its pieces in order (VirtualMemory, PhysicalView)."""

    def chunks(self, address: int, size: int) -> Iterator[Chunk]: ...


def find(memory: Chunked, start: int, length: int, pattern: bytes, align: int,
         progress: Callable[[int], None] | None = None) -> Iterator[int]:
    """Addresses of `pattern` in [start, start+length) that lie `align` apart from `start`.
    `progress` is told how many bytes have been looked at."""
    tail = b""
    tail_at = start
    end = start + length
    for at, piece, size in memory.chunks(start, length):
        if progress is not None:
            progress((at - start) & ((1 << 64) - 1))
        if isinstance(piece, MemoryNotPresent):
            tail = b""
            continue
        if tail and tail_at + len(tail) != at:
            tail = b""
        buf = tail + bytes(piece)
        base = at - len(tail)
        i = buf.find(pattern)
        while i != -1:
            hit = base + i
            if hit + len(pattern) <= end and (hit - start) % align == 0:
                yield hit
            i = buf.find(pattern, i + 1)
        keep = len(pattern) - 1
        tail = buf[-keep:] if keep else b""
        tail_at = base + len(buf) - len(tail)


def _characters(memory: Chunked, start: int, length: int, unit: int) -> Iterator[tuple[int | None, int | None]]:
    """(address, character code) in order; None for a piece the dump lacks and at the end."""
    for at, piece, size in memory.chunks(start, length):
        if isinstance(piece, MemoryNotPresent):
            yield at, None
            continue
        for i in range(0, len(piece) - unit + 1, unit):
            yield at + i, int.from_bytes(piece[i : i + unit], "little")
    yield None, None


def strings(memory: Chunked, start: int, length: int, unit: int,
            minimum: int = MIN_STRING) -> Iterator[tuple[int, str]]:
    """(address, text) of every run of at least `minimum` printable characters (`unit` bytes
    each: 1 ASCII, 2 UTF-16) in [start, start+length)."""
    run: list[str] = []
    run_at = None
    for at, c in _characters(memory, start, length, unit):
        if c is not None and 0x20 <= c < 0x7F:
            if run_at is None:
                run_at = at
            run.append(chr(c))
            continue
        if run_at is not None and len(run) >= minimum:
            yield run_at, "".join(run)
        run, run_at = [], None
