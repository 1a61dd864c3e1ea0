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


# -- `s` on a dump: stretches, large pages, joins and empty entries (issue 23) -------------------
def _machine_dump(tmp_path):
    """An x64 machine: a 2 MiB page, two 4 KiB pages mapped side by side onto PFNs far apart,
    one page between them unmapped, and 4 GiB of mostly empty address space with a few pages."""
    import kdshell
    from dumpfactory import write_kind
    from test_paging import KERNEL, PS, Machine

    m = Machine()
    big_va, big_pa = 0xFFFFF80600000000, 0x40000000
    m.map_large(big_va, big_pa, depth=2, flags=KERNEL | PS)
    for pfn in range(big_pa >> 12, (big_pa >> 12) + 512):
        m.data(pfn, bytes(PAGE))
    m.write(big_pa + 0x1FFFE, b"KDBG")  # straddles two 4 KiB pages inside the large page
    m.write(big_pa + 0x1FF000, b"LAST")
    a = 0xFFFFF80400010000
    m.map(a, 0x8000, content=bytes(PAGE - 2) + b"JO")
    m.map(a + PAGE, 0x6000, content=b"IN" + bytes(PAGE - 4) + b"NO")  # the join of two stretches
    m.map(a + 3 * PAGE, 0x7000, content=b"PE" + bytes(PAGE - 4) + b"AB")  # a + 2 pages: not mapped
    m.map(a + 4 * PAGE, 0x7001, content=b"CD" + bytes(PAGE - 2))  # adjacent in VA and PFN
    scattered = [0xFFFFF80500000000 + i * 0x3FE00000 + 0x5000 for i in range(4)]
    for i, va in enumerate(scattered):
        m.map(va, 0x9000 + i, content=bytes(0x100) + b"NEEDLE" + bytes(PAGE - 0x106))
    path = write_kind(tmp_path, "bitmap5", m.bytes_pages(), directory_table_base=m.dtb)
    return kdshell.open(path, image_path="", symbol_path=""), m, big_va, a, scattered


PAGE = 0x1000


def test_stretches_find_matches_in_large_pages_and_across_joins(tmp_path):
    s, m, big_va, a, _ = _machine_dump(tmp_path)
    with s:
        memory = s.spaces.space(m.dtb)
        assert list(find(memory, big_va, 1 << 21, b"KDBG", 1)) == [big_va + 0x1FFFE]
        assert list(find(memory, big_va, 1 << 21, b"LAST", 4)) == [big_va + 0x1FF000]
        assert list(find(memory, a, 5 * PAGE, b"JOIN", 1)) == [a + PAGE - 2]  # PFNs 8 and 6: a join
        assert list(find(memory, a, 5 * PAGE, b"NOPE", 1)) == []  # an unmapped page between
        assert list(find(memory, a, 5 * PAGE, b"ABCD", 1)) == [a + 4 * PAGE - 2]
        assert [size for _, _, size in memory.stretches(a + 3 * PAGE, 2 * PAGE)] == [2 * PAGE]  # one stretch
        pieces = [(at, size) for at, piece, size in memory.stretches(big_va, 1 << 21)]
        assert pieces == [(big_va, 1 << 21)]  # the large page in one piece
        text = s.capture(f"s -a {a:x} L{5 * PAGE:x} \"JOIN\"")
        assert f"{(a + PAGE - 2) >> 32:08x}`{(a + PAGE - 2) & 0xFFFFFFFF:08x}" in text


def test_stretches_skip_empty_entries_at_their_granularity(tmp_path):
    s, m, _, _, scattered = _machine_dump(tmp_path)
    with s:
        memory = s.spaces.space(m.dtb)
        start = 0xFFFFF80500000000
        walks = []
        paging = memory.paging
        full = paging._walk
        paging._walk = lambda va, follow_prototype: walks.append(va) or full(va, follow_prototype)
        pieces = list(memory.stretches(start, 1 << 32))
        missing = [(at, size) for at, piece, size in pieces if isinstance(piece, MemoryNotPresent)]
        assert sum(size for _, _, size in pieces) == 1 << 32
        # one piece (and at most one walk) per empty PDE's 2 MiB, not per page; a run of zero
        # PTEs in a present table is one piece
        assert len(pieces) <= (1 << 32 >> 21) + 16 and len(walks) <= (1 << 32 >> 21) + 16
        assert [(at, size) for at, size in missing if size < 0x5000] == []
        assert sum(size for _, size in missing) == (1 << 32) - 4 * PAGE  # all but the four pages
        assert list(find(memory, start, 1 << 32, b"NEEDLE", 1)) == [va + 0x100 for va in scattered]
        # the same answers page by page (the chunks of the paging walk)
        from kdshell.memory.virtual import TranslatedMemory

        class Paged:
            def __init__(self, inner: TranslatedMemory):
                self.chunks = inner.chunks

        assert list(find(Paged(memory), start, 1 << 32, b"NEEDLE", 1)) == [va + 0x100 for va in scattered]


def test_stretches_skip_pages_missing_from_the_dump_in_one_piece(tmp_path):
    """A 2 MiB page whose frames the dump mostly lacks (a kernel dump leaves pages out): one
    piece for the missing frames, the match in the last frame still found."""
    import kdshell
    from dumpfactory import write_kind
    from test_paging import KERNEL, PS, Machine

    m = Machine()
    va, pa = 0xFFFFF80700000000, 0x80000000
    m.map_large(va, pa, depth=2, flags=KERNEL | PS)
    m.data(pa >> 12, b"HEAD" + bytes(PAGE - 4))
    m.data((pa >> 12) + 511, bytes(PAGE - 6) + b"NEEDLE")
    path = write_kind(tmp_path, "bitmap5", m.bytes_pages(), directory_table_base=m.dtb)
    with kdshell.open(path, image_path="", symbol_path="") as s:
        memory = s.spaces.space(m.dtb)
        pieces = [(at - va, size, isinstance(piece, MemoryNotPresent))
                  for at, piece, size in memory.stretches(va, 1 << 21)]
        assert pieces == [(0, PAGE, False), (PAGE, (1 << 21) - 2 * PAGE, True), ((1 << 21) - PAGE, PAGE, False)]
        assert list(find(memory, va, 1 << 21, b"NEEDLE", 1)) == [va + (1 << 21) - 6]
