"""Kernel and complete dumps that say which PFNs they store: bitmaps (DumpType 2, 5, 6) and the
newer range lists written by current WinDbg (RDMP: DumpType 8, 9, 10)."""
from __future__ import annotations

import construct

from kdshell.dumpfile.header import (
    BITMAP_DUMP_HEADER64,
    BITMAP_OFFSET,
    BITMAP_SIGNATURE_FULL,
    BITMAP_SIGNATURE_KERNEL,
    DUMP_TYPE_RDMP_COMPLETE,
    FULL_RDMP_HEADER64,
    KERNEL_RDMP_HEADER64,
    PAGE_SIZE,
    RDMP_RANGE,
    RDMP_RANGES_OFFSET,
    SUMMARY_BITMAP_OFFSET32,
    SUMMARY_BITMAP_OFFSET64,
    SUMMARY_DUMP_HEADER,
    Container,
    DumpHeader,
    Layout,
)
from kdshell.errors import DumpFormatError
from kdshell.memory.physical import BitmapPhysicalMemory, RunsPhysicalMemory

RDMP_RANGE_SIZE = RDMP_RANGE.sizeof()


def _parse(layout: Layout, data: memoryview, offset: int, file_size: int, name: str) -> Container:
    size = layout.sizeof()
    if offset + size > file_size:
        raise DumpFormatError(f"file ends inside the {name} header", name, offset)
    try:
        return layout.parse(bytes(data[offset : offset + size]))
    except construct.ConstructError:
        raise DumpFormatError(f"the {name} header has a wrong signature", f"{name}.Signature", offset) from None


def _bitmap_memory(
    data: memoryview,
    file_size: int,
    bitmap_offset: int,
    bits: int,
    first_page: int,
    claimed_present: int,
    field: str,
    warnings: list[str],
) -> tuple[BitmapPhysicalMemory, int]:
    nbytes = (bits + 7) // 8  # ceil: kdmp-parser and rizin floor and lose up to 7 PFNs
    if bitmap_offset + nbytes > file_size:
        raise DumpFormatError(
            f"the bitmap claims {bits:#x} pages, more than the file can hold",
            field,
            bitmap_offset - 0x8,
        )
    if first_page < bitmap_offset + nbytes:
        raise DumpFormatError(
            f"page data starts at {first_page:#x}, inside the bitmap", "FirstPage", bitmap_offset - 0x18
        )
    bitmap = data[bitmap_offset : bitmap_offset + nbytes]
    present = int.from_bytes(bitmap, "little").bit_count()
    if bits % 8:
        present -= (bitmap[-1] >> (bits % 8)).bit_count()
    if present != claimed_present:
        warnings.append(
            f"The bitmap has {present:#x} pages set but the header claims {claimed_present:#x}; using the bitmap."
        )
    memory = BitmapPhysicalMemory(data, file_size, bitmap, bits, first_page, present)
    end = first_page + present * PAGE_SIZE
    if first_page % PAGE_SIZE:
        warnings.append(f"Page data starts at {first_page:#x}, which is not page aligned.")
    return memory, end


def open_bitmap(data: memoryview, file_size: int, header: DumpHeader,
                warnings: list[str]) -> tuple[BitmapPhysicalMemory, int, Container]:
    """DumpType 5 ('FDMP') and 6 ('SDMP'): header at the end of the dump header."""
    base = header.header_size
    bh = _parse(BITMAP_DUMP_HEADER64, data, base, file_size, "BITMAP_DUMP_HEADER")
    if bh.Signature not in (BITMAP_SIGNATURE_FULL, BITMAP_SIGNATURE_KERNEL):
        raise DumpFormatError(
            f"bitmap dump header has signature {bytes(bh.Signature)!r}, expected 'SDMP' or 'FDMP'",
            "BITMAP_DUMP_HEADER.Signature",
            base,
        )
    return _bitmap_memory(
        data, file_size, base + BITMAP_OFFSET, bh.Pages, bh.FirstPage, bh.TotalPresentPages,
        "BITMAP_DUMP_HEADER.Pages", warnings,
    ) + (bh,)


def open_summary(data: memoryview, file_size: int, header: DumpHeader,
                 warnings: list[str]) -> tuple[BitmapPhysicalMemory, int, Container]:
    """DumpType 2: the pre-Windows 8 kernel summary dump (32-bit fields)."""
    base = header.header_size
    sh = _parse(SUMMARY_DUMP_HEADER, data, base, file_size, "SUMMARY_DUMP")
    offset = base + (SUMMARY_BITMAP_OFFSET64 if header.is64 else SUMMARY_BITMAP_OFFSET32)
    return _bitmap_memory(
        data, file_size, offset, sh.BitmapSize, sh.HeaderSize, sh.Pages, "SUMMARY_DUMP.BitmapSize", warnings
    ) + (sh,)


def open_rdmp(data: memoryview, file_size: int, header: DumpHeader,
              warnings: list[str]) -> tuple[RunsPhysicalMemory, int, Container]:
    """DumpType 8/9 (kernel, kernel+user) and 10 (complete): a PFN range list, then the pages."""
    base = header.header_size
    complete = header.dump_type == DUMP_TYPE_RDMP_COMPLETE
    layout = FULL_RDMP_HEADER64 if complete else KERNEL_RDMP_HEADER64
    rh = _parse(layout, data, base, file_size, "RDMP_HEADER")
    hdr = rh.Hdr
    first = hdr.FirstPageOffset
    if first > file_size + (1 << 40) or first < base + RDMP_RANGES_OFFSET:
        raise DumpFormatError(f"page data offset {first:#x} is not plausible", "RDMP_HEADER.FirstPageOffset", base + 0x18)
    # The range list starts at +0x30 and never runs into the page data; MetadataSize bounds it too
    # (it counts from +0x20, so the list is MetadataSize - 0x10 bytes at most).
    list_end = min(first, base + 0x20 + hdr.MetadataSize, file_size)
    total = rh.TotalNumberOfPages if complete else None
    runs = []
    offset = first
    counted = 0
    pos = base + RDMP_RANGES_OFFSET
    while pos + RDMP_RANGE_SIZE <= list_end:
        if total is not None and counted >= total:
            break
        pfn = int.from_bytes(data[pos : pos + 8], "little")
        count = int.from_bytes(data[pos + 8 : pos + 16], "little")
        if pfn == 0 and count == 0:
            break
        # 2^40 pages (2^52 bytes) is all an x64 machine can address; more, even summed over the
        # ranges, is corruption and would overflow the 64-bit file offsets of later ranges.
        if count > (1 << 40) or counted + count > (1 << 40):
            raise DumpFormatError(f"range at PFN {pfn:#x} claims {count:#x} pages", "RDMP range NumberOfPages", pos + 8)
        runs.append((pfn, count, offset))
        offset += count * PAGE_SIZE
        counted += count
        pos += RDMP_RANGE_SIZE
    if total is not None and counted != total:
        warnings.append(f"The range list describes {counted:#x} pages but the header claims {total:#x}.")
    previous_end = -1
    for pfn, count, _ in sorted(runs):
        if pfn < previous_end:
            raise DumpFormatError(f"range at PFN {pfn:#x} overlaps another range", "RDMP range list", base + RDMP_RANGES_OFFSET)
        previous_end = pfn + count
    memory = RunsPhysicalMemory(data, file_size, runs)
    return memory, offset, rh
