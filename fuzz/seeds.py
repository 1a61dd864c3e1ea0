"""Seed inputs for the harnesses: the real corpus, the test machines, the fixture images.

    corpus_dumps(), factory_dumps(), machine_dumps(), pdbs(), images()  -> [(name, bytes)]

Machine dumps are made once per fixture version (fixtures.machine.catalog.inputs_digest) into
the cache directory ($KDSHELL_FUZZ_CACHE, default /tmp/kdshell-fuzz-cache): the small dump of
every scenario, and *reduced* kernel dumps of d1 (x64) and d1-x86: the test machine's dump cut
down to the pages kdshell touches while it runs a set of commands on it (page tables, KDBG,
loader and process lists, stacks, images), written again -- from the literal layouts of
formats.md §4, §5 and §5.3, not with kdshell's writers -- as DumpType 6 (bitmap), 8 (range
list) and 1 (run list; runs merged to fit the header). A few hundred KB each instead of 11-35
MB, so a mutation lands on something that matters.
"""
from __future__ import annotations

import functools
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE_BIN = REPO / "fixtures" / "images" / "bin"
SAMPLE_STORE = REPO / "kdshell" / "data" / "sample" / "symbols"
PAGE = 0x1000

for p in (str(REPO), str(REPO / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from tests.fetch_corpus import corpus_dir  # noqa: E402

CORPUS_DUMPS = corpus_dir() / "dumps"  # $KDSHELL_CORPUS, default ../shared/corpus; seeds when there
CORPUS_SYMBOLS = corpus_dir() / "symbols"

# What the recording session runs to learn which pages matter (unknown commands are skipped).
RECORD_COMMANDS = (
    "vertarget", "r", "lm", "lmv", "k", "kv", "!analyze -v", "!process 0 0", "!process 0 7", "!thread",
    "!pcr", "!prcb", "~1s", "k", "~0s", ".bugcheck", "dt nt!_EPROCESS", "dq @rsp L20", "!pte @rip",
    "u @rip L8", "ln @rip", "!lmi nt", "!dh nt", "x nt!Ke*",
)


def cache_dir() -> Path:
    d = Path(os.environ.get("KDSHELL_FUZZ_CACHE", Path(tempfile.gettempdir()) / "kdshell-fuzz-cache"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _read(paths) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in paths if p.is_file()]


def corpus_dumps() -> list[tuple[str, bytes]]:
    return _read(sorted(CORPUS_DUMPS.glob("*.dmp")))


@functools.lru_cache(maxsize=None)
def factory_dumps() -> tuple[tuple[str, bytes], ...]:
    """Every kind dumpfactory writes (tests/dumpfactory.py), with secondary data."""
    from dumpfactory import KINDS, make_pages, write_kind

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            path = write_kind(tmp, kind, make_pages([1, 2, 3, 0x10, 0x11, 0x200]),
                              blobs=[(b"\x07" * 16, b"blob data")])
            out.append((f"factory-{kind}.dmp", path.read_bytes()))
    return tuple(out)


# -- the test machines ------------------------------------------------------------------------
# A machine set already built (tests/conftest.py's `machines` fixture sets it), else one is
# built into the cache directory (or $KDSHELL_MACHINES).
MACHINE_INDEX: dict | None = None


@functools.lru_cache(maxsize=None)
def machine_dumps() -> tuple[tuple[str, bytes], ...]:
    """Small dumps of every scenario and reduced kernel dumps of d1 and d1-x86 (cached)."""
    from fixtures.machine.catalog import build_set, inputs_digest

    digest = inputs_digest()[:16]
    outdir = cache_dir() / f"seeds-{digest}"
    index_file = outdir / "seeds.json"
    if not index_file.exists():
        index = MACHINE_INDEX or build_set(os.environ.get("KDSHELL_MACHINES") or cache_dir() / "machines")
        outdir.mkdir(parents=True, exist_ok=True)
        names = []
        for scenario, entry in sorted(index["machines"].items()):
            dumps = entry["dumps"]
            if "small" in dumps:
                name = f"machine-{scenario}-small.dmp"
                (outdir / name).write_bytes(Path(dumps["small"]).read_bytes())
                names.append(name)
        for scenario, kind in (("d1", "kernel"), ("d1-x86", "complete")):
            src = index["machines"][scenario]["dumps"][kind]
            for name, data in reduced_dumps(src, scenario).items():
                (outdir / name).write_bytes(data)
                names.append(name)
        index_file.write_text(json.dumps(names))
    return tuple((n, (outdir / n).read_bytes()) for n in json.loads(index_file.read_text()))


def touched_pages(path: str) -> tuple[dict[int, bytes], bytes, bool]:
    """Run RECORD_COMMANDS on a dump and return the pages they read, its first header bytes
    and whether it is 64-bit."""
    from kdshell import dispatch
    from kdshell.dumpfile.dump import open_dump
    from kdshell.errors import KdError
    from kdshell.session import Session

    dump = open_dump(path)
    phys = dump.physical
    seen: dict[int, bytes] = {}
    inner = phys.page

    def page(pfn):  # recorded from the start: the session reads memory when it is made
        data = inner(pfn)
        seen.setdefault(pfn, bytes(data))
        return data

    phys.page = page
    s = Session(dump, symbol_path=str(SAMPLE_STORE), image_path=str(SAMPLE_STORE))
    s.progress = None
    for cmd in RECORD_COMMANDS:
        try:
            dispatch.resolve(cmd)
        except KdError:
            continue
        s.capture(cmd)
    header = bytes(s.dump.data[: 0x2000 if s.dump.is64 else 0x1000])
    is64 = s.dump.is64
    s.close()
    return seen, header, is64


def _merge(pfns, max_runs: int) -> list[tuple[int, int]]:
    runs: list[list[int]] = []
    for p in sorted(pfns):
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1][1] += 1
        else:
            runs.append([p, 1])
    while len(runs) > max_runs:  # close the smallest gap
        i = min(range(len(runs) - 1), key=lambda k: runs[k + 1][0] - (runs[k][0] + runs[k][1]))
        a, b = runs[i], runs.pop(i + 1)
        a[1] = b[0] + b[1] - a[0]
    return [(a, n) for a, n in runs]


def _set_type(header: bytearray, is64: bool, dump_type: int) -> None:
    struct.pack_into("<I", header, 0xF98 if is64 else 0xF88, dump_type)


def bitmap_dump(header: bytes, pages: dict[int, bytes], kind: int = 6) -> bytes:
    """DumpType 5/6 (formats.md §5): header, 'SDMP'/'FDMP' at 0x2000, bitmap, pages."""
    h = bytearray(header)
    _set_type(h, True, kind)
    bits = (max(pages) + 64) // 64 * 64
    bitmap = bytearray(bits // 8)
    for pfn in pages:
        bitmap[pfn >> 3] |= 1 << (pfn & 7)
    first = (0x2038 + len(bitmap) + PAGE - 1) // PAGE * PAGE
    bh = bytearray(0x38)
    bh[0:8] = (b"SDMP" if kind == 6 else b"FDMP") + b"DUMP"
    struct.pack_into("<QQQ", bh, 0x20, first, len(pages), bits)
    out = h + bh + bitmap
    out += bytes(first - len(out))
    return bytes(out + b"".join(pages[p] for p in sorted(pages)))


def rdmp_dump(header: bytes, pages: dict[int, bytes]) -> bytes:
    """DumpType 8 (formats.md §5.3): RDMP header, ranges ended by a zero entry, pages."""
    h = bytearray(header)
    _set_type(h, True, 8)
    runs = _merge([p for p in pages if p], 1 << 30)
    ranges = b"".join(struct.pack("<QQ", a, n) for a, n in runs) + bytes(16)
    first = (0x2030 + len(ranges) + PAGE - 1) // PAGE * PAGE
    rh = bytearray(0x30)
    struct.pack_into("<I4s4sIQQ", rh, 0, 0x40, b"RDMP", b"DUMP", 0, first - 0x2020, first)
    out = h + rh + ranges
    out += bytes(first - len(out))
    return bytes(out + b"".join(pages[p] for a, n in runs for p in range(a, a + n)))


def full_dump(header: bytes, pages: dict[int, bytes], is64: bool) -> bytes:
    """DumpType 1 (formats.md §4): the run list in the header (runs merged to fit), pages."""
    h = bytearray(header)
    _set_type(h, is64, 1)
    runs = _merge(pages, 40 if is64 else 80)
    total = sum(n for _, n in runs)
    if is64:
        struct.pack_into("<IIQ", h, 0x88, len(runs), 0, total)
        for i, (a, n) in enumerate(runs):
            struct.pack_into("<QQ", h, 0x98 + 16 * i, a, n)
    else:
        struct.pack_into("<II", h, 0x64, len(runs), total)
        for i, (a, n) in enumerate(runs):
            struct.pack_into("<II", h, 0x6C + 8 * i, a, n)
    zero = bytes(PAGE)
    return bytes(h + b"".join(pages.get(p, zero) for a, n in runs for p in range(a, a + n)))


def reduced_dumps(path: str, scenario: str) -> dict[str, bytes]:
    pages, header, is64 = touched_pages(path)
    out = {}
    if is64:
        out[f"machine-{scenario}-reduced-bitmap6.dmp"] = bitmap_dump(header, pages, 6)
        out[f"machine-{scenario}-reduced-rdmp8.dmp"] = rdmp_dump(header, pages)
    out[f"machine-{scenario}-reduced-full.dmp"] = full_dump(header, pages, is64)
    return out


# -- symbols and images ------------------------------------------------------------------------
def pdbs() -> list[tuple[str, bytes]]:
    return _read(sorted(CORPUS_SYMBOLS.glob("*.pdb/*/*.pdb"))) + _read(sorted(FIXTURE_BIN.glob("*.pdb")))


def images() -> list[tuple[str, bytes]]:
    corpus = sorted(p for p in CORPUS_SYMBOLS.glob("*/*/*") if p.suffix.lower() in (".sys", ".exe", ".dll"))
    fixtures = sorted(p for p in FIXTURE_BIN.iterdir() if p.suffix.lower() in (".sys", ".exe", ".dll"))
    return _read(corpus) + _read(fixtures)


if __name__ == "__main__":
    for group in (corpus_dumps, factory_dumps, machine_dumps, pdbs, images):
        for name, data in group():
            print(f"{group.__name__:15} {name:48} {len(data):>9}")
