"""The search engine behind `s` (kdshell.memory.search) on a stand-in memory: matches across
piece boundaries, gaps that break them, alignment, strings, and the progress callback."""
from kdshell.errors import MemoryNotPresent
from kdshell.memory.search import find, strings


class Pieces:
    """chunks() over (address, bytes or None for a gap) pieces laid end to end."""

    def __init__(self, pieces):
        self.pieces = pieces

    def chunks(self, start, length):
        for at, data in self.pieces:
            if data is None:
                yield at, MemoryNotPresent(at, "a gap"), 0x10
            else:
                yield at, data, len(data)


def test_find_spans_pieces_but_not_gaps_and_keeps_the_alignment():
    memory = Pieces([(0x1000, b"xxKD"), (0x1004, b"BGyyKD"), (0x100A, None), (0x101A, b"BG..KDBG")])
    seen = []
    assert list(find(memory, 0x1000, 0x22, b"KDBG", 1, seen.append)) == [0x1002, 0x101E]
    assert seen == [0, 4, 0xA, 0x1A]
    assert list(find(memory, 0x1000, 0x22, b"KDBG", 4)) == []          # neither is 4-aligned from the start
    assert list(find(memory, 0x1000, 0x21, b"KDBG", 1)) == [0x1002]    # the range ends inside the second


def test_strings_end_at_unprintable_characters_gaps_and_the_end():
    memory = Pieces([(0x2000, b"ab\0Hello"), (0x2008, b" you"), (0x200C, None), (0x201C, b"tail")])
    assert list(strings(memory, 0x2000, 0x20, 1)) == [(0x2003, "Hello you"), (0x201C, "tail")]
    wide = Pieces([(0x3000, "Wide".encode("utf-16-le") + b"\0\0" + "no".encode("utf-16-le"))])
    assert list(strings(wide, 0x3000, 0x10, 2)) == [(0x3000, "Wide")]
