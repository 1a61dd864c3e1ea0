""".dump /f, /k and /ka copy pages by file extents (issue 23): the written dumps hold the same pages
as the source (read back by kdmp-parser, an independent reader), zero pages and the source's holes
become holes in the output (SEEK_HOLE, st_blocks) without being read, and the bitmap's runs are
listed whole bytes at a time (checked against a bit-by-bit decoding written here)."""
from __future__ import annotations

import os
import random

import pytest

import kdshell
from conftest import CORPUS_DUMPS
from dumpfactory import write_kind
from kdshell.memory.physical import BitmapPhysicalMemory

PAGE = 4096
kdmp_parser = pytest.importorskip("kdmp_parser")


def _stamp(pfn: int) -> bytes:
    return (pfn * 0x9E3779B97F4A7C15 & (1 << 64) - 1).to_bytes(8, "little") * 512


def _bit_runs(bitmap: bytes, bits: int) -> list[tuple[int, int]]:
    """(first, count) of the set bits, one bit at a time (the reference)."""
    out: list[tuple[int, int]] = []
    for pfn in range(bits):
        if bitmap[pfn >> 3] >> (pfn & 7) & 1:
            if out and out[-1][0] + out[-1][1] == pfn:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((pfn, 1))
    return out


def test_bitmap_runs_match_a_bit_by_bit_decoding():
    rng = random.Random(23)
    for _ in range(200):
        n = rng.randint(1, 48)
        bm = bytes(rng.choice((0, 0xFF, rng.randrange(256), 0x55, 0x80, 0x01)) for _ in range(n))
        bits = rng.randint(1, n * 8)
        mem = BitmapPhysicalMemory(memoryview(bm), 0, memoryview(bm), bits, 0, 0)
        assert list(mem.present_runs()) == _bit_runs(bm, bits), (bm.hex(), bits)


def _sparse_pages() -> dict[int, bytes]:
    """Single-page runs, a long run, zero pages in both: holes for the writers."""
    pages = {}
    for pfn in range(1, 4000, 2):  # fragmented: every other PFN
        pages[pfn] = _stamp(pfn) if pfn % 7 == 0 else bytes(PAGE)
    for pfn in range(0x2000, 0x2000 + 3000):  # one run, mostly zero
        pages[pfn] = _stamp(pfn) if pfn % 300 == 0 else bytes(PAGE)
    return pages


def _holes(path) -> int:
    """Bytes of holes in the file, by SEEK_DATA/SEEK_HOLE."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        holes, pos = 0, 0
        while pos < size:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                return holes + size - pos
            holes += data - pos
            pos = os.lseek(fd, data, os.SEEK_HOLE)
        return holes
    finally:
        os.close(fd)


@pytest.mark.parametrize("source_kind", ["bitmap5", "rdmp10", "full"])
@pytest.mark.parametrize("option,dump_type", [("/f", 5), ("/f /type 10", 10), ("/f /type 1", 1)])
def test_complete_dump_of_a_sparse_fragmented_dump(tmp_path, source_kind, option, dump_type):
    pages = _sparse_pages()
    if source_kind == "full" or dump_type == 1:  # a run list holds at most 42 runs
        pages = {p: d for p, d in pages.items() if p >= 0x2000 or p < 40}
    src = write_kind(tmp_path, source_kind, pages, name="src.dmp")
    out = tmp_path / "out.dmp"
    with kdshell.open(src, image_path="", symbol_path="") as s:
        s.progress = None
        assert s.run(f".dump {option} {out}"), s.capture("")
    kp = kdmp_parser.KernelDumpParser(str(out))
    assert int(kp.type) == dump_type
    assert sorted(kp.pages.keys()) == sorted(p << 12 for p in pages)
    for pfn, data in pages.items():
        assert bytes(kp.read_physical_page(pfn << 12)) == data, hex(pfn)
    zero = sum(1 for d in pages.values() if not any(d))
    assert _holes(out) >= zero * PAGE  # every zero page is a hole
    assert os.stat(out).st_blocks * 512 <= os.path.getsize(out) - zero * PAGE + (1 << 16)


class _RawPages:
    """Pages straight from a raw file (page i = the i-th PFN of `runs`): a FileSource."""

    def __init__(self, fd: int, runs: list[tuple[int, int]]) -> None:
        self.fd, self.runs = fd, runs

    def present_runs(self):
        return self.runs

    def page(self, pfn):
        raise AssertionError("pages are copied by extents")

    def page_count(self):
        return sum(n for _, n in self.runs)

    def present_bitmap(self):
        return None

    def fileno(self):
        return self.fd

    def file_extents(self, runs):
        return [(0, self.page_count() * PAGE)]


def test_source_holes_are_not_read(tmp_path, monkeypatch):
    """A 1 GiB run of pages that is one hole between two stamps: only the stamps are read."""
    from dumpfactory import default_fields
    from kdshell.dumpfile import write as W

    first, count = 0x100, 1 << 18
    raw = tmp_path / "raw"
    with open(raw, "wb") as f:
        f.truncate(count * PAGE)
        f.write(_stamp(first))
        f.seek((count - 1) * PAGE)
        f.write(_stamp(first + count - 1))
    src = tmp_path / "src.dmp"
    fd = os.open(raw, os.O_RDONLY)
    try:
        W.write_bitmap(src, default_fields(), _RawPages(fd, [(first, count)]), 5)
    finally:
        os.close(fd)
    assert os.stat(src).st_blocks * 512 < 1 << 20
    read = []
    real = os.preadv

    def preadv(fd, buffers, offset):
        n = real(fd, buffers, offset)
        read.append(n)
        return n

    monkeypatch.setattr(W.os, "preadv", preadv)
    out = tmp_path / "out.dmp"
    with kdshell.open(src, image_path="", symbol_path="") as s:
        s.progress = None
        assert s.run(f".dump /f {out}")
    assert 0 < sum(read) <= 2 * PAGE  # the two stamps; the 1 GiB between them is never read
    kp = kdmp_parser.KernelDumpParser(str(out))
    assert len(kp.pages) == count
    assert bytes(kp.read_physical_page(first << 12)) == _stamp(first)
    assert bytes(kp.read_physical_page((first + count - 1) << 12)) == _stamp(first + count - 1)
    assert not any(kp.read_physical_page((first + 12345) << 12))
    assert os.stat(out).st_blocks * 512 < 1 << 20  # 1 GiB of pages, a few of them on disk


def test_truncated_corpus_dump_is_refused_in_one_line(tmp_path):
    path = CORPUS_DUMPS / "full-x64-19045-truncated-16k.dmp"
    if not path.exists():
        pytest.skip("corpus not present")
    out = tmp_path / "out.dmp"
    with kdshell.open(path, image_path="", symbol_path="") as s:
        s.progress = None
        text = s.capture(f".dump /f {out}")
    assert "not all available" in text and "Traceback" not in text
    assert not out.exists()


def test_page_by_page_where_positioned_io_is_missing(tmp_path, monkeypatch):
    """Without os.preadv/pwrite (Windows) the writers take the pages one by one: same dump."""
    from kdshell.dumpfile import extents as X

    pages = _sparse_pages()
    src = write_kind(tmp_path, "bitmap5", pages, name="src.dmp")
    outs = []
    for extent_copy in (True, False):
        monkeypatch.setattr(X, "_EXTENT_COPY", extent_copy)
        out = tmp_path / f"out-{extent_copy}.dmp"
        with kdshell.open(src, image_path="", symbol_path="") as s:
            s.progress = None
            assert s.run(f".dump /f {out}"), s.capture("")
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    kp = kdmp_parser.KernelDumpParser(str(tmp_path / "out-False.dmp"))
    assert all(bytes(kp.read_physical_page(p << 12)) == d for p, d in pages.items())
