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
from kdshell.memory.virtual import Chunk, Stretch

MIN_STRING = 3  # characters of the shortest string listed (WinDbg's default for -sa/-su)


class Chunked(Protocol):
    """A memory that yields its pieces in order (VirtualMemory, PhysicalView)."""

    def chunks(self, address: int, size: int) -> Iterator[Chunk]: ...


def find(memory: Chunked, start: int, length: int, pattern: bytes, align: int,
         progress: Callable[[int], None] | None = None) -> Iterator[int]:
    """Addresses of `pattern` in [start, start+length) that lie `align` apart from `start`.
    `progress` is told how many bytes have been looked at. A memory with `stretches()`
    (TranslatedMemory) is searched a file-contiguous stretch at a time; a match across the join
    of two adjacent pieces is found from the tail of the first and the head of the second."""
    end = start + length
    keep = len(pattern) - 1
    tail = b""
    tail_at = start
    pieces: Callable[[int, int], Iterator[Stretch]] = getattr(memory, "stretches", None) or memory.chunks
    for at, piece, size in pieces(start, length):
        if progress is not None:
            progress((at - start) & ((1 << 64) - 1))
        if isinstance(piece, MemoryNotPresent):
            tail = b""
            continue
        if not hasattr(piece, "find"):
            piece = bytes(piece)
        joins = tail and tail_at + len(tail) == at
        if joins:  # matches that start in the previous piece
            joined = tail + bytes(piece[: min(size, keep)])
            i = joined.find(pattern)
            while i != -1 and i < len(tail):
                hit = tail_at + i
                if hit + len(pattern) <= end and (hit - start) % align == 0:
                    yield hit
                i = joined.find(pattern, i + 1)
        # (a reused buffer stays as it is while a hit is shown: the next piece is read only
        # when this generator is resumed past this one)
        i = piece.find(pattern, 0, size)
        while i != -1:
            hit = at + i
            if hit + len(pattern) <= end and (hit - start) % align == 0:
                yield hit
            i = piece.find(pattern, i + 1, size)
        if keep:
            if size >= keep:
                tail = bytes(piece[size - keep : size])
            else:
                tail = ((tail if joins else b"") + bytes(piece[:size]))[-keep:]
            tail_at = at + size - len(tail)


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
