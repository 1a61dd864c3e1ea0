"""Our writers' output read by an independent reader, kdmp-parser (0vercl0k, C++ with Python bindings).

A layout bug in header.py would otherwise hide in both our writer and our reader; kdmp-parser has
its own declarations. It reads 64-bit full (1), bitmap (5, 6) and range-list (8, 9, 10) dumps.

Keep the KernelDumpParser object alive while using `.header`/`.context`: the 0.7.4 bindings hand
out views into the parser, and `KernelDumpParser(p).header.BmpHeader` on a temporary crashes
the interpreter (its BmpHeader/RdmpHeader accessors are not used here for that reason).
"""
from __future__ import annotations

import pytest

kdmp_parser = pytest.importorskip("kdmp_parser")

from dumpfactory import default_fields, make_pages, page_bytes, write_kind  # noqa: E402
from kdshell.dumpfile.dump import open_dump  # noqa: E402

KINDS = ["full", "bitmap5", "bitmap6", "rdmp8", "rdmp9", "rdmp10"]
DUMP_TYPES = {"full": 1, "bitmap5": 5, "bitmap6": 6, "rdmp8": 8, "rdmp9": 9, "rdmp10": 10}
PFNS = [1, 2, 3, 0x10, 0x11, 0x40, 0x41, 0x42, 0x200, 0x7FF]
PAGE = 0x1000


def _u128(value) -> int:
    return value.High << 64 | value.Low


@pytest.mark.parametrize("kind", KINDS)
def test_kdmp_reads_what_we_write(tmp_path, kind):
    path = write_kind(tmp_path, kind, make_pages(PFNS))
    f = default_fields()
    kp = kdmp_parser.KernelDumpParser(path)
    assert int(kp.type) == DUMP_TYPES[kind]

    # registers
    c = kp.context
    with open_dump(path) as d:
        ours = d.registers()
    for name in ("Rax", "Rbx", "Rcx", "Rdx", "Rsi", "Rdi", "Rbp", "Rsp", "Rip",
                 "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15"):
        assert getattr(c, name) == ours[name.lower()], name
    assert c.Rip == 0xFFFFF8047C1D2F30 and c.Rsp == 0xFFFFF80412345F00 and c.Rax == 0x1111
    assert c.EFlags == ours["efl"] and c.SegCs == ours["cs"] and c.SegSs == ours["ss"]
    assert c.MxCsr == c.MxCsr2 == ours["mxcsr"]
    assert _u128(c.Xmm3) == ours["xmm3"] == 0x33 << 100

    # header facts
    h = kp.header
    assert h.BugCheckCode == f.bugcheck_code
    assert list(h.BugCheckCodeParameter) == list(f.bugcheck_parameters)
    assert h.MinorVersion == f.build and h.MajorVersion == 0xF and h.MachineImageType == 0x8664
    assert h.DirectoryTableBase == f.directory_table_base
    assert kp.directory_table_base == f.directory_table_base
    assert h.PsLoadedModuleList == f.ps_loaded_module_list
    assert h.PsActiveProcessHead == f.ps_active_process_head
    assert h.KdDebuggerDataBlock == f.kd_debugger_data_block
    assert h.PfnDatabase == f.pfn_database
    assert h.NumberProcessors == f.number_processors
    assert h.SystemTime == f.system_time and h.SystemUpTime == f.system_uptime
    assert bytes(h.Comment).split(b"\0")[0] == b"kdshell test dump"
    assert h.RequiredDumpSpace == path.stat().st_size
    e = h.Exception
    assert e.ExceptionCode == 0x80000003 and e.ExceptionAddress == f.exception["ExceptionAddress"]
    assert e.NumberParameters == 2 and list(e.ExceptionInformation)[:2] == [0, 0x1234]

    # pages
    assert sorted(kp.pages.keys()) == [pfn * PAGE for pfn in PFNS]
    for pfn in PFNS:
        assert bytes(kp.read_physical_page(pfn * PAGE)) == page_bytes(pfn), f"PFN {pfn:#x}"
    for pfn in (0, 4, 0x12, 0x201, 0x800):
        assert kp.read_physical_page(pfn * PAGE) is None


# -- a real x64 4-level page table ------------------------------------------------------------

PRESENT_RW = 0x3
LARGE = 0x80


class PageTables:
    """Builds PML4 -> PDPT -> PD -> PT pages at chosen PFNs; tables are created on demand."""

    def __init__(self, pml4_pfn: int, first_free_pfn: int):
        self.pages: dict[int, bytearray] = {pml4_pfn: bytearray(PAGE)}
        self.pml4 = pml4_pfn
        self.next_pfn = first_free_pfn

    def _table(self, table_pfn: int, index: int) -> int:
        """The PFN of the next-level table behind entry `index`, created if absent."""
        table = self.pages[table_pfn]
        entry = int.from_bytes(table[index * 8 : index * 8 + 8], "little")
        if entry & 1:
            return entry >> 12 & 0xFFFFFFFFFF
        pfn = self.next_pfn
        self.next_pfn += 1
        self.pages[pfn] = bytearray(PAGE)
        table[index * 8 : index * 8 + 8] = (pfn << 12 | PRESENT_RW).to_bytes(8, "little")
        return pfn

    @staticmethod
    def _set(table: bytearray, index: int, value: int) -> None:
        table[index * 8 : index * 8 + 8] = value.to_bytes(8, "little")

    def map(self, va: int, pa: int, size: int = PAGE) -> None:
        i4, i3, i2, i1 = (va >> 39) & 0x1FF, (va >> 30) & 0x1FF, (va >> 21) & 0x1FF, (va >> 12) & 0x1FF
        pdpt = self._table(self.pml4, i4)
        if size == 1 << 30:
            self._set(self.pages[pdpt], i3, pa | PRESENT_RW | LARGE)
            return
        pd = self._table(pdpt, i3)
        if size == 1 << 21:
            self._set(self.pages[pd], i2, pa | PRESENT_RW | LARGE)
            return
        pt = self._table(pd, i2)
        self._set(self.pages[pt], i1, pa | PRESENT_RW)

    def unmap_marker(self, va: int) -> None:
        """A not-present PTE (a software PTE value with bit 0 clear) for `va`."""
        i4, i3, i2, i1 = (va >> 39) & 0x1FF, (va >> 30) & 0x1FF, (va >> 21) & 0x1FF, (va >> 12) & 0x1FF
        pt = self._table(self._table(self._table(self.pml4, i4), i3), i2)
        self._set(self.pages[pt], i1, 0x12345 << 12 | 0x800)  # transition-looking, not present


@pytest.mark.parametrize("kind", KINDS)
def test_kdmp_translates_our_page_tables(tmp_path, kind):
    pt = PageTables(pml4_pfn=0x100, first_free_pfn=0x101)
    mappings = {
        0xFFFFF80000001000: 0x300 * PAGE,  # 4 KiB kernel pages
        0xFFFFF80000002000: 0x301 * PAGE,
        0x00007FF612340000: 0x302 * PAGE,  # a user page
        0xFFFFF78000000000: 0x303 * PAGE,  # KUSER_SHARED_DATA
    }
    for va, pa in mappings.items():
        pt.map(va, pa)
    pt.map(0xFFFFF80000200000, 0x400000, 1 << 21)  # a 2 MiB large page at PFN 0x400
    pt.map(0xFFFFF80040000000, 0x40000000, 1 << 30)  # a 1 GiB page
    pt.unmap_marker(0xFFFFF80000003000)
    pages = {pfn: bytes(data) for pfn, data in pt.pages.items()}
    data_pfns = [0x300, 0x301, 0x302, 0x303, 0x400, 0x412, 0x5FF, 0x40000]
    pages.update(make_pages(data_pfns))
    path = write_kind(tmp_path, kind, pages, directory_table_base=0x100 * PAGE | 0x2)  # low PCID-ish bits
    kp = kdmp_parser.KernelDumpParser(path)
    dtb = 0x100 * PAGE
    assert kp.directory_table_base == dtb
    for va, pa in mappings.items():
        assert kp.translate_virtual(va, dtb) == pa, hex(va)
        assert kp.translate_virtual(va + 0x123, dtb) == pa + 0x123
        assert bytes(kp.read_virtual_page(va, dtb)) == page_bytes(pa // PAGE)
    # inside the 2 MiB page: PFN 0x400 + 0x12
    assert kp.translate_virtual(0xFFFFF80000200000, dtb) == 0x400000
    assert kp.translate_virtual(0xFFFFF80000212345, dtb) == 0x412345
    assert bytes(kp.read_virtual_page(0xFFFFF80000212000, dtb)) == page_bytes(0x412)
    assert kp.translate_virtual(0xFFFFF800003FF000, dtb) == 0x5FF000
    # inside the 1 GiB page
    assert kp.translate_virtual(0xFFFFF80040000010, dtb) == 0x40000010
    # not mapped / not present
    assert kp.translate_virtual(0xFFFFF80000003000, dtb) is None
    assert kp.translate_virtual(0xFFFFF80000004000, dtb) is None
    assert kp.translate_virtual(0x0000000000010000, dtb) is None
    # and our reader stores the very page-table bytes kdmp-parser walked
    with open_dump(path) as d:
        for pfn, data in pt.pages.items():
            assert bytes(d.physical.page(pfn)) == bytes(data)
