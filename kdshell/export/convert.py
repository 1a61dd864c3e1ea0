"""Complete and kernel dumps re-written out of a loaded dump: `.dump /f`, `/k` and `/ka`.

Which pages each kind keeps (formats.md §3, fixtures/README.md "Dumps"):

    /f    complete   every page the source holds                     DumpType 5 ('FDMP') by default
    /k    kernel     every paging-structure page of every process     DumpType 6 ('SDMP') by default
                     and every page a kernel address maps
    /ka   active     the kernel pages plus every page a process's     DumpType 6 by default
                     user half maps

Kernel pages are found by walking the page tables (one walk per paging mode, `paging.PagingMode`):
the kernel half of each process's top table (entries at and above MmSystemRangeStart: the PML4's
upper 256 on x64, PDPT entries 2-3 on PAE, PDEs 512-1023 without PAE) down to the pages it maps,
plus the tables of the user halves (their pages only with /ka). The DTBs are the System
process's and every other process's on PsActiveProcessHead (their kernel halves share most
tables: each table is walked once), and the crash's CR3 from the header. Only valid entries
count: pages in transition are on the standby list, which a kernel dump leaves out, as Windows
does. The self-map entry leads back into tables already walked and adds nothing.

Pages are streamed from the source's page source into write.py's writers (temporary file in the
target's directory, renamed into place when complete), through `ProgressPages`, which reports on
a stream (session.progress, stderr) and lets Ctrl-C stop the write: the writer removes its
temporary file and nothing is left behind.
"""
from __future__ import annotations

import bisect
import os
import struct
import time
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, TextIO

from kdshell.dumpfile.header import (
    DUMP_TYPE_BITMAP_FULL, DUMP_TYPE_BITMAP_KERNEL, DUMP_TYPE_FULL, DUMP_TYPE_RDMP_COMPLETE, DUMP_TYPE_RDMP_KERNEL,
    DUMP_TYPE_RDMP_KERNEL_USER,
)
from kdshell.dumpfile.write import DumpWriteError, write_bitmap, write_full, write_rdmp
from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.kdbg import system_range_start
from kdshell.kernel.offsets import KernelOffsets
from kdshell.memory.paging import PageCache, PagingMode
from kdshell.memory.physical import BitmapPhysicalMemory
from kdshell.view import SessionView

if TYPE_CHECKING:
    from kdshell.dumpfile.dump import DumpFile

PAGE_SHIFT = 12

MemoryRead = Callable[[int, int], bytes]


COMPLETE, KERNEL, ACTIVE = "complete", "kernel", "active"
# The DumpTypes each kind may be written as; the first is the default.
KIND_TYPES = {
    COMPLETE: (DUMP_TYPE_BITMAP_FULL, DUMP_TYPE_FULL, DUMP_TYPE_RDMP_COMPLETE),
    KERNEL: (DUMP_TYPE_BITMAP_KERNEL, DUMP_TYPE_RDMP_KERNEL),
    ACTIVE: (DUMP_TYPE_BITMAP_KERNEL, DUMP_TYPE_RDMP_KERNEL_USER),
}


# ---------------------------------------------------------------------------------------------
# Which pages: a page-table walk


@dataclass
class PageSelection:
    runs: list[tuple[int, int]]  # (first PFN, count), sorted, disjoint, present in the source
    tables: int  # page-table pages seen
    dtbs: int  # address spaces walked


def _top_split(mode: PagingMode, kernel_start: int) -> int:
    """Index of the first top-level entry of the kernel half."""
    top = mode.levels[0]
    return (kernel_start >> top.shift) & ((1 << top.bits) - 1)


class _TableWalk:
    """Collects table PFNs and mapped PFNs (4 KiB pages in a set, large pages as runs).

    Each table page is walked once per level: the kernel halves of the processes share their
    lower tables. Windows' self-map is an entry pointing back at a table of a higher level (x64:
    one PML4 entry at the PML4 itself; x86 PAE: four PDEs of PD 3 at the four PDs, user ones
    included): followed, it would show the tables one level down as if they were mapped pages
    (a user PDE's large page as a 4 KiB page, ...). So the top table's children are known as
    level-1 tables before the walk, and an entry leading to a table already known at the same
    or a higher level is not followed (the table is kept, it is one).
    Pinned by tests/test_dump_command.py::test_kernel_pages_are_the_machines_kernel_pages."""

    def __init__(self, pages: PageCache, mode: PagingMode) -> None:
        self.pages = pages
        self.mode = mode
        self.tables: set[int] = set()
        self.data: set[int] = set()
        self.large: list[tuple[int, int]] = []
        self.walked: set[int] = set()  # (pfn << 3 | level)
        self.level_of: dict[int, int] = {}  # table PFN -> the highest level (smallest number) it is at
        fmt = "<%dQ" if mode.entry_size == 8 else "<%dI"
        self._unpack = {bits: struct.Struct(fmt % (1 << bits)).unpack_from for bits in {lv.bits for lv in mode.levels}}

    def _entries(self, table_pa: int, level: int) -> tuple[int, ...] | None:
        lv = self.mode.levels[level]
        try:
            page = self.pages.page(table_pa >> PAGE_SHIFT)
        except MemoryNotPresent:
            return None
        offset = table_pa & 0xFFF
        if offset + (1 << lv.bits) * self.mode.entry_size > 0x1000:
            return None
        return self._unpack[lv.bits](page, offset)  # a PAE PDPT: 4 entries, 32-byte aligned

    def _known(self, pfn: int, level: int) -> None:
        if self.level_of.get(pfn, 99) > level:
            self.level_of[pfn] = level

    def space(self, dtb: int, lo: int, hi: int, data: bool) -> None:
        """Walk top-level entries [lo, hi) of the space at `dtb`; `data`: keep the mapped pages."""
        top = dtb & self.mode.dtb_mask
        top_pfn = top >> PAGE_SHIFT
        self.tables.add(top_pfn)
        self._known(top_pfn, 0)
        entries = self._entries(top, 0)
        if entries is None:
            return
        if len(self.mode.levels) > 1:
            for e in entries:
                if e & 1 and not (self.mode.levels[0].large_mask and e & 0x80):
                    pfn = (e & self.mode.table_mask) >> PAGE_SHIFT
                    if pfn != top_pfn:
                        self._known(pfn, 1)
        self._table(entries, top_pfn, 0, lo, hi, data)

    def _table(self, entries: Sequence[int], table_pfn: int, level: int, lo: int, hi: int, data: bool) -> None:
        mode = self.mode
        lv = mode.levels[level]
        last = level == len(mode.levels) - 1
        large_mask = 0 if last else (lv.large_mask or 0)
        table_mask = mode.table_mask
        for i in range(lo, min(hi, len(entries))):
            e = entries[i]
            if not e & 1:
                continue  # not valid: transition (standby list), paged out, or nothing
            if large_mask and e & 0x80:
                if data:
                    self.large.append(((e & large_mask) >> PAGE_SHIFT, lv.span >> PAGE_SHIFT))
                continue
            pfn = (e & table_mask) >> PAGE_SHIFT
            if last:
                if data:
                    self.data.add(pfn)
                continue
            self.tables.add(pfn)
            if self.level_of.get(pfn, 99) <= level:
                continue  # the self-map: a table of this level or above, not a child
            self._known(pfn, level + 1)
            key = pfn << 3 | (level + 1)
            if key in self.walked:
                continue
            self.walked.add(key)
            children = self._entries(pfn << PAGE_SHIFT, level + 1)
            if children is not None:
                self._table(children, pfn, level + 1, 0, len(children), data)

    def runs(self) -> list[tuple[int, int]]:
        pfns = array("Q", sorted(self.tables | self.data))
        single: list[tuple[int, int]] = []
        for p in pfns:
            if single and single[-1][0] + single[-1][1] == p:
                single[-1] = (single[-1][0], single[-1][1] + 1)
            else:
                single.append((p, 1))
        return _merge_runs(single + self.large)


def _merge_runs(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for first, count in sorted(runs):
        if count <= 0:
            continue
        if out and first <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], first + count - out[-1][0])
        else:
            out.append([first, count])
    return [(a, b) for a, b in out]


def intersect_runs(a: Sequence[tuple[int, int]], b: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Runs present in both sorted, disjoint run lists."""
    starts = [r[0] for r in a]
    out: list[tuple[int, int]] = []
    for first, count in b:
        end = first + count
        i = max(0, bisect.bisect_right(starts, first) - 1)
        while i < len(a) and a[i][0] < end:
            lo, hi = max(first, a[i][0]), min(end, a[i][0] + a[i][1])
            if lo < hi:
                out.append((lo, hi - lo))
            i += 1
    return _merge_runs(out)


def select_pages(pages: PageCache, mode: PagingMode, dtbs: Sequence[int], present: Iterable[tuple[int, int]],
                 *, kernel_start: int, user: bool) -> PageSelection:
    """The kernel pages (and with `user` the pages of the user halves) of the spaces at `dtbs`,
    restricted to the pages the source has."""
    walk = _TableWalk(pages, mode)
    split = _top_split(mode, kernel_start)
    top_count = 1 << mode.levels[0].bits
    seen: set[int] = set()
    for dtb in dtbs:
        key = dtb & mode.dtb_mask
        if key in seen:
            continue
        seen.add(key)
        walk.space(dtb, split, top_count, True)
    # The user halves: their tables always (Windows keeps every process's paging structures in a
    # kernel dump), their pages with `user`.
    for key in seen:
        walk.space(key, 0, split, user)
    wanted = walk.runs()
    return PageSelection(intersect_runs(wanted, present), len(walk.tables), len(seen))


# ---------------------------------------------------------------------------------------------
# Process DTBs


def process_dtbs(read: MemoryRead, head: int, links_offset: int, dtb_offset: int, is64: bool,
                 limit: int = 1 << 16) -> list[int]:
    """DirectoryTableBase of every EPROCESS on PsActiveProcessHead (System first)."""
    ps = 8 if is64 else 4
    out: list[int] = []
    try:
        entry = int.from_bytes(read(head, ps), "little")
    except MemoryNotPresent:
        return out
    seen = {head}
    while entry and entry != head and entry not in seen and len(out) < limit:
        seen.add(entry)
        eprocess = entry - links_offset
        try:
            dtb = int.from_bytes(read(eprocess + dtb_offset, ps), "little")
            entry = int.from_bytes(read(entry, ps), "little")
        except MemoryNotPresent:
            break
        if dtb:
            out.append(dtb)
    return out


# ---------------------------------------------------------------------------------------------
# Page sources


_PROGRESS_STEP = 16 << 20  # bytes copied between two progress reports (and Ctrl-C checks)


class SubsetPages:
    """A source's pages restricted to some runs (a PageSource for the writers); each run lies
    inside one stored run of the source (intersect_runs makes them so)."""

    def __init__(self, source: StoredPages, runs: Sequence[tuple[int, int]]) -> None:
        self.source = source
        self.runs = list(runs)

    def present_runs(self) -> list[tuple[int, int]]:
        return self.runs

    def page(self, pfn: int) -> bytes | memoryview:
        return self.source.page(pfn)

    def page_count(self) -> int:
        return sum(c for _, c in self.runs)

    def present_bitmap(self) -> bytes | None:
        return None

    def fileno(self) -> int:
        return self.source.fileno()

    def file_extents(self, runs: Sequence[tuple[int, int]] | None) -> Iterator[tuple[int, int]]:
        return self.source.file_extents(self.runs if runs is None else runs)


class StoredPages:
    """An opened dump's pages, for copying them in PFN order.

    The writers take them as file extents (write.py's `FileSource`): where the pages of some runs
    lie in the dump file, file-adjacent runs merged, so a complete dump of a bitmap dump is one
    extent whatever its number of runs, and the bitmap itself is handed over as bytes (no run
    list is made). Pages past the end of a truncated file are not available, as
    PhysicalMemory.page says."""

    def __init__(self, dump: DumpFile) -> None:
        if dump.physical is None:
            raise DumpWriteError("this dump has no physical memory (a small memory dump keeps only saved ranges)")
        self.physical = dump.physical
        self.dump = dump
        self.size = dump.size
        self._runs: list[tuple[int, int]] | None = None

    def present_runs(self) -> list[tuple[int, int]]:
        if self._runs is None:
            self._runs = [(int(a), int(b)) for a, b in self.physical.present_runs()]
        return self._runs

    def page(self, pfn: int) -> bytes | memoryview:
        return self.physical.page(pfn)

    def page_count(self) -> int:
        return self.physical.present_pages

    def present_bitmap(self) -> bytes | None:
        return self.physical.bitmap_bytes() if isinstance(self.physical, BitmapPhysicalMemory) else None

    def fileno(self) -> int:
        return self.dump.fileno()

    def file_extents(self, runs: Sequence[tuple[int, int]] | None) -> Iterator[tuple[int, int]]:
        """(file offset, bytes) of the pages of `runs` (None: every stored page) in order."""
        if runs is None:
            extents: Iterable[tuple[int, int]] = self.physical.data_extents()
        else:
            extents = self._run_extents(runs)
        for off, size in extents:
            if off + size > self.size:
                first = max(0, self.size - off) >> PAGE_SHIFT
                raise DumpWriteError(f"{(size >> PAGE_SHIFT) - first:#x} listed pages lie past the end of the "
                                     f"truncated file ({self.size:#x} bytes): their bytes are not all available")
            yield off, size

    def _run_extents(self, runs: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int]]:
        offset_of = self.physical.file_offset
        start = end = -1
        for first, count in runs:
            off = offset_of(first)
            last = offset_of(first + count - 1) if count > 1 else off
            if off is None or last != off + ((count - 1) << PAGE_SHIFT):
                self.physical.page(first if off is None else first + count - 1)  # its error
                raise DumpWriteError(f"pages {first:#x}-{first + count - 1:#x} are not one stored run")
            if off == end:
                end += count << PAGE_SHIFT
                continue
            if end > start:
                yield start, end - start
            start, end = off, off + (count << PAGE_SHIFT)
        if end > start:
            yield start, end - start


class ProgressPages:
    """Pages counted as the writer takes them; a progress line on `stream` (None: quiet).

    The line is rewritten in place (`\\r`) at most every 0.2 s: `Writing FILE: 37% (123 of 330 MiB)`.
    `finish()` ends it with a newline, `abort()` too (after Ctrl-C or an error)."""

    def __init__(self, source: StoredPages | SubsetPages, label: str, stream: TextIO | None = None,
                 interval: float = 0.2) -> None:
        self.source = source
        self.label = label
        self.stream = stream
        self.interval = interval
        self.total = source.page_count()
        self.done = 0
        self._shown = False
        self._last = 0.0

    def present_runs(self) -> list[tuple[int, int]]:
        return self.source.present_runs()

    def page(self, pfn: int) -> bytes | memoryview:
        return self.source.page(pfn)

    def page_count(self) -> int:
        return self.total

    def present_bitmap(self) -> bytes | None:
        return self.source.present_bitmap()

    def fileno(self) -> int:
        return self.source.fileno()

    def file_extents(self, runs: Sequence[tuple[int, int]] | None) -> Iterator[tuple[int, int]]:
        """The source's extents in pieces of at most 16 MiB, each counted before it is copied."""
        for off, size in self.source.file_extents(runs):
            for start in range(off, off + size, _PROGRESS_STEP):
                n = min(_PROGRESS_STEP, off + size - start)
                self.advance(n >> PAGE_SHIFT)
                yield start, n

    def advance(self, pages: int) -> None:
        self.done += pages
        self._report(False)

    def _report(self, final: bool) -> None:
        if self.stream is None:
            return
        now = time.monotonic()
        if not final and now - self._last < self.interval:
            return
        self._last = now
        pct = 100 * self.done // self.total if self.total else 100
        mib = lambda pages: pages * 4096 / (1 << 20)  # noqa: E731
        self.stream.write(f"\r{self.label}: {pct:3d}% ({mib(self.done):.0f} of {mib(self.total):.0f} MiB)")
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self.stream is not None and self.total:
            self.done = self.total
            self._report(True)
            self.stream.write("\n")
            self.stream.flush()

    def abort(self) -> None:
        if self.stream is not None and self._shown:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# From a session


@dataclass
class ConvertResult:
    size: int
    dump_type: int
    pages: int
    selection: PageSelection | None
    notes: list[str]


def kernel_selection(session: SessionView, user: bool) -> tuple[PageSelection, list[str]]:
    """The kernel (and with `user`, active user) pages of the session's dump."""
    d = session.dump
    h = d.header
    notes: list[str] = []
    mode, pages = session.spaces.mode, session.spaces.pages
    if mode is None or pages is None or d.physical is None:  # a paging mode is known only with pages
        raise DumpWriteError("kdshell cannot walk this dump's page tables (no paging mode for its machine): "
                             "write a complete dump (/f) instead")
    memory = session.spaces.space(h.directory_table_base)
    read = memory.read
    kernel_start = system_range_start(session.kdbg, memory, mode.is64)
    dtbs = list(_dtbs(session, read, notes))
    dtbs.append(h.directory_table_base)
    present = d.physical.present_runs()
    return select_pages(pages, mode, dtbs, present, kernel_start=kernel_start, user=user), notes


def _dtbs(session: SessionView, read: MemoryRead, notes: list[str]) -> list[int]:
    """Every process's DTB: the processes engine when there is one, else PsActiveProcessHead with
    the EPROCESS offsets the kernel offsets know."""
    d = session.dump
    kdbg = session.kdbg
    head = (kdbg.get("PsActiveProcessHead") if kdbg is not None else None) or d.header.ps_active_process_head
    if not head:
        notes.append("the dump does not say where PsActiveProcessHead is: only the crash's address space is walked")
        return []
    offsets: KernelOffsets | None
    try:
        offsets = session.parts.offsets()
    except KdError:
        offsets = None
    links = offsets.offset("_EPROCESS", "ActiveProcessLinks") if offsets is not None else None
    dtb = offsets.offset("_KPROCESS", "DirectoryTableBase") if offsets is not None else None
    if dtb is None and offsets is not None:
        dtb = offsets.offset("_EPROCESS", "Pcb.DirectoryTableBase")
    if links is None or dtb is None:
        notes.append("EPROCESS.ActiveProcessLinks is not known for this build (no kernel PDB or built-in "
                     "entry): only the crash's address space is walked")
        return []
    found = process_dtbs(read, head, links, dtb, d.is64)
    if not found:
        notes.append("no process could be read from PsActiveProcessHead: only the crash's address space is walked")
    return found


def write_converted(session: SessionView, path: str | os.PathLike[str], kind: str, *, dump_type: int | None = None,
                    overwrite: bool = False, comment: str | None = None,
                    progress: TextIO | None = None) -> ConvertResult:
    """Write the session's dump again as a complete, kernel or active dump (see the module note)."""
    from kdshell.export.minidump import header_runs, source_blobs, source_fields

    d = session.dump
    if d.physical is None:
        raise DumpWriteError("this dump has no physical memory (a small memory dump keeps only saved "
                             "ranges): only .dump /m can be written from it")
    allowed = KIND_TYPES[kind]
    dump_type = allowed[0] if dump_type is None else dump_type
    if dump_type not in allowed:
        names = ", ".join(str(t) for t in allowed)
        raise DumpWriteError(f"a {kind} dump is written as DumpType {names}, not {dump_type}")
    notes: list[str] = []
    selection = None
    stored = StoredPages(d)
    source: StoredPages | SubsetPages
    if kind == COMPLETE:
        source = stored
        if d.dump_type not in (DUMP_TYPE_FULL, DUMP_TYPE_BITMAP_FULL, DUMP_TYPE_RDMP_COMPLETE):
            notes.append(f"the source is a {d.kind_name}: the complete dump holds only the pages it has")
    else:
        selection, more = kernel_selection(session, user=(kind == ACTIVE))
        notes += more
        source = SubsetPages(stored, selection.runs)
    fields = source_fields(d, comment)
    if dump_type != DUMP_TYPE_FULL:
        fields = fields.replace(physical_memory_runs=header_runs(d.header))
    label = f"Writing {path}"
    counted = ProgressPages(source, label, progress)
    blobs = source_blobs(d)
    try:
        if dump_type == DUMP_TYPE_FULL:
            size = write_full(path, fields, counted, blobs=blobs, overwrite=overwrite)
        elif dump_type in (DUMP_TYPE_BITMAP_FULL, DUMP_TYPE_BITMAP_KERNEL):
            bits = d.physical.highest_pfn  # the source's runs (and so the selection's) lie below it
            size = write_bitmap(path, fields, counted, dump_type, bit_count=-(-bits // 64) * 64, blobs=blobs,
                                overwrite=overwrite)
        else:
            size = write_rdmp(path, fields, counted, dump_type, blobs=blobs, overwrite=overwrite)
    except BaseException:
        counted.abort()
        raise
    counted.finish()
    return ConvertResult(size, dump_type, counted.total, selection, notes)


__all__ = [
    "ACTIVE", "COMPLETE", "KERNEL", "KIND_TYPES", "ConvertResult", "PageSelection", "ProgressPages", "StoredPages",
    "SubsetPages",
    "intersect_runs", "kernel_selection", "process_dtbs", "select_pages", "write_converted",
]
