"""Complete memory dumps with a run list (DumpType 1): pages back to back after the header."""
from __future__ import annotations

import struct

from kdshell.dumpfile.header import (
    MAX_RUNS32,
    MAX_RUNS64,
    PAGE_SIZE,
    FILL32,
    DumpHeader,
)
from kdshell.errors import DumpFormatError
from kdshell.memory.physical import RunsPhysicalMemory

# File offset of PhysicalMemoryBlock in DUMP_HEADER64 / DUMP_HEADER32.
RUNS_FIELD_OFFSET64 = 0x88
RUNS_FIELD_OFFSET32 = 0x64


def parse_runs(block: bytes, is64: bool) -> tuple[int, int, list[tuple[int, int]]]:
    """(NumberOfRuns, NumberOfPages, [(BasePage, PageCount)]) from a PHYSICAL_MEMORY_DESCRIPTOR."""
    field_offset = RUNS_FIELD_OFFSET64 if is64 else RUNS_FIELD_OFFSET32
    if is64:
        count, pages = struct.unpack_from("<I4xQ", block, 0)
        first, entry, max_runs, fmt = 0x10, 0x10, MAX_RUNS64, "<QQ"
    else:
        count, pages = struct.unpack_from("<II", block, 0)
        first, entry, max_runs, fmt = 0x8, 0x8, MAX_RUNS32, "<II"
    if count == FILL32:
        raise DumpFormatError(
            "complete dump without a physical memory run list", "PhysicalMemoryBlock.NumberOfRuns", field_offset
        )
    if count > max_runs:
        raise DumpFormatError(
            f"physical memory descriptor claims {count} runs, at most {max_runs} fit in the header",
            "PhysicalMemoryBlock.NumberOfRuns",
            field_offset,
        )
    runs = [struct.unpack_from(fmt, block, first + i * entry) for i in range(count)]
    for i, (_, page_count) in enumerate(runs):
        # 2^40 pages = 2^52 bytes, the most any x64 machine can address; more is corruption (and
        # would overflow the 64-bit file offsets of the runs that follow).
        if page_count > (1 << 40):
            raise DumpFormatError(
                f"physical memory run {i} claims {page_count:#x} pages",
                f"PhysicalMemoryBlock.Run[{i}].PageCount",
                field_offset + first + i * entry + entry // 2,
            )
    return count, pages, runs


def open_full(data: memoryview, file_size: int, header: DumpHeader,
              warnings: list[str]) -> tuple[RunsPhysicalMemory, int]:
    """The physical memory of a DumpType 1 file, and the file offset where its page data ends."""
    is64 = header.is64
    field_offset = RUNS_FIELD_OFFSET64 if is64 else RUNS_FIELD_OFFSET32
    _, claimed_pages, runs = parse_runs(header.physical_memory_block, is64)
    placed = []
    offset = header.header_size  # pages are stored in the order of the run list
    for base, count in runs:
        placed.append((base, count, offset))
        offset += count * PAGE_SIZE
    previous_end = -1
    for base, count, _ in sorted(placed):
        if base < previous_end:
            raise DumpFormatError(
                f"physical memory run at PFN {base:#x} overlaps another run",
                "PhysicalMemoryBlock.Run",
                field_offset,
            )
        previous_end = base + count
    total = sum(c for _, c in runs)
    if total != claimed_pages:
        warnings.append(
            f"The run list describes {total:#x} pages but the header claims {claimed_pages:#x} (NumberOfPages)."
        )
    memory = RunsPhysicalMemory(data, file_size, placed)
    return memory, offset
