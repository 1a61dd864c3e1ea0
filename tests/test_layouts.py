"""header.py's layouts against LITERAL offsets and sizes from ../shared/docs/formats.md.

This is our static_assert: every number below is copied from formats.md (section in the comment),
never computed from header.py. A field's offset is the sum of the sizes of the members before it
in the construct Struct (descending into nested Structs for dotted names).
"""
from __future__ import annotations

import struct

import pytest

from kdshell.dumpfile import context as ctx
from kdshell.dumpfile import header as h

from conftest import MINI_17763, TRIAGE_19041


def _inner(subcon):
    while not hasattr(subcon, "subcons") and hasattr(subcon, "subcon"):
        subcon = subcon.subcon
    return subcon


def _member(layout, path: str):
    """(offset, subcon) of a dotted member path inside a construct Struct."""
    offset = 0
    head, _, rest = path.partition(".")
    for sc in _inner(layout).subcons:
        if sc.name == head:
            if rest:
                inner_offset, inner = _member(sc, rest)
                return offset + inner_offset, inner
            return offset, sc
        offset += sc.sizeof()
    raise KeyError(f"{path} not in layout")


def offset_of(layout, path: str) -> int:
    return _member(layout, path)[0]


def size_of(layout, path: str) -> int:
    return _member(layout, path)[1].sizeof()


def check(layout, size, offsets, sizes=None):
    assert layout.sizeof() == size, f"sizeof {layout.sizeof():#x} != {size:#x}"
    wrong = {name: hex(offset_of(layout, name)) for name, off in offsets.items() if offset_of(layout, name) != off}
    assert not wrong, f"offsets differ from formats.md: {wrong}"
    for name, n in (sizes or {}).items():
        assert size_of(layout, name) == n, f"{name} is {size_of(layout, name):#x} bytes, formats.md says {n:#x}"


def test_helper_finds_offsets_honestly():
    # The helper itself: a made-up Struct with padding and nesting.
    from construct import Int8ul, Int32ul, Int64ul, Padding, Struct

    inner = Struct("a" / Int8ul, Padding(3), "b" / Int32ul)
    outer = Struct("x" / Int64ul, "in" / inner, "y" / Int32ul)
    assert offset_of(outer, "in.b") == 0xC
    assert offset_of(outer, "y") == 0x10
    with pytest.raises(KeyError):
        offset_of(outer, "nope")


# formats.md §2
def test_dump_header64():
    check(
        h.DUMP_HEADER64,
        0x2000,
        {
            "Signature": 0x000, "ValidDump": 0x004, "MajorVersion": 0x008, "MinorVersion": 0x00C,
            "DirectoryTableBase": 0x010, "PfnDataBase": 0x018, "PsLoadedModuleList": 0x020,
            "PsActiveProcessHead": 0x028, "MachineImageType": 0x030, "NumberProcessors": 0x034,
            "BugCheckCode": 0x038, "BugCheckParameters": 0x040, "VersionUser": 0x060,
            "KdDebuggerDataBlock": 0x080, "PhysicalMemoryBlock": 0x088, "ContextRecord": 0x348,
            "Exception": 0xF00, "DumpType": 0xF98, "RequiredDumpSpace": 0xFA0, "SystemTime": 0xFA8,
            "Comment": 0xFB0, "SystemUpTime": 0x1030, "MiniDumpFields": 0x1038, "SecondaryDataState": 0x103C,
            "ProductType": 0x1040, "SuiteMask": 0x1044, "WriterStatus": 0x1048, "Unused1": 0x104C,
            "KdSecondaryVersion": 0x104D, "Unused": 0x104E, "Attributes": 0x1050, "BootId": 0x1054,
            "Reserved": 0x1058,
        },
        {"BugCheckParameters": 4 * 8, "VersionUser": 32, "PhysicalMemoryBlock": 700, "ContextRecord": 3000,
         "Exception": 0x98, "Comment": 128, "BootId": 4, "Reserved": 4008},
    )


# formats.md §9
def test_dump_header32():
    check(
        h.DUMP_HEADER32,
        0x1000,
        {
            "Signature": 0x000, "ValidDump": 0x004, "MajorVersion": 0x008, "MinorVersion": 0x00C,
            "DirectoryTableBase": 0x010, "PfnDataBase": 0x014, "PsLoadedModuleList": 0x018,
            "PsActiveProcessHead": 0x01C, "MachineImageType": 0x020, "NumberProcessors": 0x024,
            "BugCheckCode": 0x028, "BugCheckParameters": 0x02C, "VersionUser": 0x03C, "PaeEnabled": 0x05C,
            "KdSecondaryVersion": 0x05D, "Spare": 0x05E, "KdDebuggerDataBlock": 0x060,
            "PhysicalMemoryBlock": 0x064, "ContextRecord": 0x320, "Exception": 0x7D0, "Comment": 0x820,
            "Attributes": 0x8A0, "BootId": 0x8A4, "DumpType": 0xF88, "MiniDumpFields": 0xF8C,
            "SecondaryDataState": 0xF90, "ProductType": 0xF94, "SuiteMask": 0xF98, "WriterStatus": 0xF9C,
            "RequiredDumpSpace": 0xFA0, "SystemUpTime": 0xFB8, "SystemTime": 0xFC0,
        },
        {"BugCheckParameters": 4 * 4, "PhysicalMemoryBlock": 700, "ContextRecord": 1200, "Exception": 0x50,
         "Comment": 128, "Reserved0": 1760, "Reserved2": 16, "Reserved3": 56, "RequiredDumpSpace": 8},
    )


# formats.md §1 and §3
def test_magic_values():
    assert h.SIGNATURE == b"PAGE" and h.VALID_DUMP_64 == b"DU64" and h.VALID_DUMP_32 == b"DUMP"
    assert h.FILL32 == 0x45474150 and h.FILL32.to_bytes(4, "little") == b"PAGE"
    assert h.FILL64.to_bytes(8, "little") == b"PAGEPAGE"
    assert (h.HEADER64_SIZE, h.HEADER32_SIZE) == (0x2000, 0x1000)
    assert (h.MACHINE_I386, h.MACHINE_AMD64, h.MACHINE_ARM64) == (0x014C, 0x8664, 0xAA64)
    assert (h.DUMP_TYPE_FULL, h.DUMP_TYPE_SUMMARY, h.DUMP_TYPE_HEADER, h.DUMP_TYPE_TRIAGE) == (1, 2, 3, 4)
    assert (h.DUMP_TYPE_BITMAP_FULL, h.DUMP_TYPE_BITMAP_KERNEL, h.DUMP_TYPE_AUTOMATIC) == (5, 6, 7)
    assert (h.DUMP_TYPE_RDMP_KERNEL, h.DUMP_TYPE_RDMP_KERNEL_USER, h.DUMP_TYPE_RDMP_COMPLETE) == (8, 9, 10)
    assert int.from_bytes(h.BITMAP_SIGNATURE_KERNEL, "little") == 0x504D4453
    assert int.from_bytes(h.BITMAP_SIGNATURE_FULL, "little") == 0x504D4446
    assert int.from_bytes(h.RDMP_SIGNATURE, "little") == 0x504D4452
    assert h.TRIAGE_DUMP_VALID == b"TRGD"
    assert h.DUMP_BLOB_SIGNATURE == b"DumpBlob"


# formats.md §4
def test_physical_memory_descriptor():
    check(h.PHYSICAL_MEMORY_DESCRIPTOR64, 0x10, {"NumberOfRuns": 0x0, "NumberOfPages": 0x8})
    check(h.PHYSICAL_MEMORY_DESCRIPTOR32, 0x8, {"NumberOfRuns": 0x0, "NumberOfPages": 0x4})
    check(h.PHYSICAL_MEMORY_RUN64, 16, {"BasePage": 0, "PageCount": 8})
    check(h.PHYSICAL_MEMORY_RUN32, 8, {"BasePage": 0, "PageCount": 4})
    assert h.PHYSICAL_MEMORY_BLOCK_SIZE == 700
    assert (h.MAX_RUNS64, h.MAX_RUNS32) == (42, 86)


# formats.md §8.1
def test_context_amd64():
    check(
        ctx.CONTEXT_AMD64,
        0x4D0,
        {
            "P1Home": 0x00, "P6Home": 0x28, "ContextFlags": 0x30, "MxCsr": 0x34, "SegCs": 0x38, "SegDs": 0x3A,
            "SegEs": 0x3C, "SegFs": 0x3E, "SegGs": 0x40, "SegSs": 0x42, "EFlags": 0x44, "Dr0": 0x48,
            "Dr1": 0x50, "Dr2": 0x58, "Dr3": 0x60, "Dr6": 0x68, "Dr7": 0x70, "Rax": 0x78, "Rcx": 0x80,
            "Rdx": 0x88, "Rbx": 0x90, "Rsp": 0x98, "Rbp": 0xA0, "Rsi": 0xA8, "Rdi": 0xB0, "R8": 0xB8,
            "R9": 0xC0, "R10": 0xC8, "R11": 0xD0, "R12": 0xD8, "R13": 0xE0, "R14": 0xE8, "R15": 0xF0,
            "Rip": 0xF8, "FltSave": 0x100, "FltSave.ControlWord": 0x100, "FltSave.StatusWord": 0x102,
            "FltSave.TagWord": 0x104, "FltSave.ErrorOpcode": 0x106, "FltSave.ErrorOffset": 0x108,
            "FltSave.ErrorSelector": 0x10C, "FltSave.DataOffset": 0x110, "FltSave.DataSelector": 0x114,
            "FltSave.MxCsr": 0x118, "FltSave.MxCsr_Mask": 0x11C, "FltSave.FloatRegisters": 0x120,
            "FltSave.XmmRegisters": 0x1A0, "VectorRegister": 0x300, "VectorControl": 0x4A0,
            "DebugControl": 0x4A8, "LastBranchToRip": 0x4B0, "LastBranchFromRip": 0x4B8,
            "LastExceptionToRip": 0x4C0, "LastExceptionFromRip": 0x4C8,
        },
        {"FltSave": 512, "FltSave.XmmRegisters": 16 * 16, "VectorRegister": 26 * 16},
    )
    # Xmm15 at 0x290: 16-byte registers from Xmm0 at 0x1A0.
    assert offset_of(ctx.CONTEXT_AMD64, "FltSave.XmmRegisters") + 15 * 16 == 0x290
    assert ctx.CONTEXT_FULL_AMD64 == 0x10000B and ctx.CONTEXT_AMD64_FLAGS == 0x100000


# formats.md §8.2
def test_context_x86():
    check(
        ctx.CONTEXT_X86,
        0x2CC,
        {
            "ContextFlags": 0x00, "Dr0": 0x04, "Dr1": 0x08, "Dr2": 0x0C, "Dr3": 0x10, "Dr6": 0x14, "Dr7": 0x18,
            "FloatSave": 0x1C, "SegGs": 0x8C, "SegFs": 0x90, "SegEs": 0x94, "SegDs": 0x98, "Edi": 0x9C,
            "Esi": 0xA0, "Ebx": 0xA4, "Edx": 0xA8, "Ecx": 0xAC, "Eax": 0xB0, "Ebp": 0xB4, "Eip": 0xB8,
            "SegCs": 0xBC, "EFlags": 0xC0, "Esp": 0xC4, "SegSs": 0xC8, "ExtendedRegisters": 0xCC,
        },
        {"FloatSave": 112, "FloatSave.RegisterArea": 80, "ExtendedRegisters": 512},
    )
    assert ctx.CONTEXT_I386_FLAGS == 0x10000


# formats.md §8.3
def test_context_arm64():
    check(
        ctx.CONTEXT_ARM64,
        0x390,
        {
            "ContextFlags": 0x0, "Cpsr": 0x4, "X": 0x08, "Fp": 0xF0, "Lr": 0xF8, "Sp": 0x100, "Pc": 0x108,
            "V": 0x110, "Fpcr": 0x310, "Fpsr": 0x314, "Bcr": 0x318, "Bvr": 0x338, "Wcr": 0x378, "Wvr": 0x380,
        },
        {"X": 29 * 8, "V": 32 * 16},
    )


# formats.md §8.4
def test_exception_records():
    check(
        h.EXCEPTION_RECORD64,
        0x98,
        {"ExceptionCode": 0, "ExceptionFlags": 4, "ExceptionRecord": 8, "ExceptionAddress": 0x10,
         "NumberParameters": 0x18, "ExceptionInformation": 0x20},
    )
    check(
        h.EXCEPTION_RECORD32,
        0x50,
        {"ExceptionCode": 0, "ExceptionFlags": 4, "ExceptionRecord": 8, "ExceptionAddress": 0xC,
         "NumberParameters": 0x10, "ExceptionInformation": 0x14},
    )
    assert h.EXCEPTION_MAXIMUM_PARAMETERS == 15


# formats.md §5 and §5.2
def test_bitmap_headers():
    check(
        h.BITMAP_DUMP_HEADER64,
        0x38,
        {"Signature": 0x00, "ValidDump": 0x04, "DumpOptions": 0x08, "FirstPage": 0x20,
         "TotalPresentPages": 0x28, "Pages": 0x30},
    )
    assert h.BITMAP_OFFSET == 0x38
    check(
        h.SUMMARY_DUMP_HEADER,
        0x1C,
        {"Signature": 0x0, "ValidDump": 0x4, "DumpOptions": 0x8, "HeaderSize": 0xC, "BitmapSize": 0x10,
         "Pages": 0x14, "SizeOfBitMap": 0x18},
    )


# formats.md §5.3
def test_rdmp_headers():
    check(
        h.RDMP_HEADER64,
        0x20,
        {"Marker": 0x00, "Signature": 0x04, "ValidDump": 0x08, "MetadataSize": 0x10, "FirstPageOffset": 0x18},
    )
    check(h.KERNEL_RDMP_HEADER64, 0x30, {"Hdr": 0x0, "Hdr.FirstPageOffset": 0x18})
    check(h.FULL_RDMP_HEADER64, 0x30, {"NumberOfRanges": 0x20, "TotalNumberOfPages": 0x28})
    check(h.RDMP_RANGE, 0x10, {"PageFrameNumber": 0x0, "NumberOfPages": 0x8})
    assert h.RDMP_RANGES_OFFSET == 0x30


# formats.md §6.1
def test_triage_dump64():
    check(
        h.TRIAGE_DUMP64,
        0x80,
        {
            "ServicePackBuild": 0x00, "SizeOfDump": 0x04, "ValidOffset": 0x08, "ContextOffset": 0x0C,
            "ExceptionOffset": 0x10, "MmOffset": 0x14, "UnloadedDriversOffset": 0x18, "PrcbOffset": 0x1C,
            "ProcessOffset": 0x20, "ThreadOffset": 0x24, "CallStackOffset": 0x28, "SizeOfCallStack": 0x2C,
            "DriverListOffset": 0x30, "DriverCount": 0x34, "StringPoolOffset": 0x38, "StringPoolSize": 0x3C,
            "BrokenDriverOffset": 0x40, "TriageOptions": 0x44, "TopOfStack": 0x48,
            "ArchitectureSpecific": 0x50, "DataPageAddress": 0x60, "DataPageOffset": 0x68,
            "DataPageSize": 0x6C, "DebuggerDataOffset": 0x70, "DebuggerDataSize": 0x74,
            "DataBlocksOffset": 0x78, "DataBlocksCount": 0x7C,
        },
        {"ArchitectureSpecific": 16, "TopOfStack": 8, "DataPageAddress": 8},
    )


# formats.md §6.1: "TRIAGE_DUMP32: all fields u32, no ArchitectureSpecific union, same names in the
# same order" -- so 26 u32 fields; the offsets below follow from that sentence.
def test_triage_dump32():
    check(
        h.TRIAGE_DUMP32,
        0x68,
        {"TriageOptions": 0x44, "TopOfStack": 0x48, "DataPageAddress": 0x4C, "DataPageOffset": 0x50,
         "DataPageSize": 0x54, "DebuggerDataOffset": 0x58, "DebuggerDataSize": 0x5C, "DataBlocksOffset": 0x60,
         "DataBlocksCount": 0x64},
    )


# formats.md §6.2 - §6.7
def test_triage_records():
    check(h.TRIAGE_DATA_BLOCK64, 0x10, {"Address": 0x0, "Offset": 0x8, "Size": 0xC})
    check(h.TRIAGE_DATA_BLOCK32, 0xC, {"Address": 0x0, "Offset": 0x4, "Size": 0x8})
    check(
        h.DUMP_MM_STORAGE64,
        0x50,
        {"Version": 0x0, "Size": 0x4, "MmSpecialPoolTag": 0x8, "MiTriageActionTaken": 0xC,
         "MmVerifyDriverLevel": 0x10, "KernelVerifier": 0x14, "MmMaximumNonPagedPool": 0x18,
         "MmAllocatedNonPagedPool": 0x20, "PagedPoolMaximum": 0x28, "PagedPoolAllocated": 0x30,
         "CommittedPages": 0x38, "CommittedPagesPeak": 0x40, "CommitLimitMaximum": 0x48},
    )
    check(h.DUMP_MM_STORAGE32, 0x34, {"MmMaximumNonPagedPool": 0x18, "CommitLimitMaximum": 0x30})
    check(
        h.DUMP_UNLOADED_DRIVERS64,
        0x38,
        {"Name": 0x0, "DriverName": 0x10, "StartAddress": 0x28, "EndAddress": 0x30},
        {"DriverName": 24},
    )
    check(
        h.DUMP_UNLOADED_DRIVERS32,
        0x28,
        {"Name": 0x0, "DriverName": 0x8, "StartAddress": 0x20, "EndAddress": 0x24},
    )
    check(
        h.DUMP_DRIVER_ENTRY64,
        0x90,
        {
            "DriverNameOffset": 0x0, "LdrEntry": 0x8,
            "LdrEntry.InLoadOrderLinks": 8 + 0x00, "LdrEntry.ExceptionTable": 8 + 0x10,
            "LdrEntry.ExceptionTableSize": 8 + 0x18, "LdrEntry.GpValue": 8 + 0x20,
            "LdrEntry.NonPagedDebugInfo": 8 + 0x28, "LdrEntry.DllBase": 8 + 0x30,
            "LdrEntry.EntryPoint": 8 + 0x38, "LdrEntry.SizeOfImage": 8 + 0x40,
            "LdrEntry.FullDllName": 8 + 0x48, "LdrEntry.BaseDllName": 8 + 0x58, "LdrEntry.Flags": 8 + 0x68,
            "LdrEntry.LoadCount": 8 + 0x6C, "LdrEntry.SectionPointer": 8 + 0x70, "LdrEntry.CheckSum": 8 + 0x78,
            "LdrEntry.TimeDateStamp": 8 + 0x80,
        },
    )
    assert offset_of(h.DUMP_DRIVER_ENTRY32, "LdrEntry.DllBase") == 4 + 0x18
    assert offset_of(h.DUMP_DRIVER_ENTRY32, "LdrEntry.SizeOfImage") == 4 + 0x20
    check(h.UNICODE_STRING64, 0x10, {"Length": 0, "MaximumLength": 2, "Buffer": 8})
    check(h.UNICODE_STRING32, 0x8, {"Length": 0, "MaximumLength": 2, "Buffer": 4})
    flags = (h.TRIAGE_DUMP_CONTEXT, h.TRIAGE_DUMP_EXCEPTION, h.TRIAGE_DUMP_PRCB, h.TRIAGE_DUMP_PROCESS,
             h.TRIAGE_DUMP_THREAD, h.TRIAGE_DUMP_STACK, h.TRIAGE_DUMP_DRIVER_LIST, h.TRIAGE_DUMP_BROKEN_DRIVER,
             h.TRIAGE_DUMP_MMINFO, h.TRIAGE_DUMP_DATAPAGE, h.TRIAGE_DUMP_DEBUGGER_DATA, h.TRIAGE_DUMP_DATA_BLOCKS)
    assert flags == (0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800)
    assert h.TRIAGE_OPTION_OVERFLOWED == 0x100


# formats.md §7
def test_blob_headers():
    check(h.DUMP_BLOB_FILE_HEADER, 0x10, {"Signature": 0x0, "HeaderSize": 0x8, "BuildNumber": 0xC})
    check(
        h.DUMP_BLOB_HEADER,
        0x20,
        {"HeaderSize": 0x0, "Tag": 0x4, "DataSize": 0x14, "PrePad": 0x18, "PostPad": 0x1C},
    )


# The same literal offsets, read straight from real dumps written by Windows, agree with what the
# construct layouts parse out of them.
@pytest.mark.parametrize("path", [MINI_17763, TRIAGE_19041], ids=lambda p: p.name)
def test_literal_offsets_match_real_dumps(path):
    raw = path.read_bytes()
    hdr = h.DUMP_HEADER64.parse(raw[:0x2000])
    u32 = lambda off: struct.unpack_from("<I", raw, off)[0]  # noqa: E731
    u64 = lambda off: struct.unpack_from("<Q", raw, off)[0]  # noqa: E731
    assert u32(0xF98) == hdr.DumpType == 4
    assert u32(0xC) == hdr.MinorVersion
    assert u64(0x80) == hdr.KdDebuggerDataBlock
    assert u32(0x38) == hdr.BugCheckCode == 0x1000007E
    assert u64(0x40) == hdr.BugCheckParameters[0]
    assert u64(0x348 + 0xF8) == ctx.CONTEXT_AMD64.parse(hdr.ContextRecord[:0x4D0]).Rip
    assert u32(0x348 + 0x34) == u32(0x348 + 0x118)  # MxCsr twice
    assert u64(0xFA8) == hdr.SystemTime and u32(0x1040) == hdr.ProductType
    tri = h.TRIAGE_DUMP64.parse(raw[0x2000:0x2080])
    assert u32(0x2000 + 0x7C) == tri.DataBlocksCount and u64(0x2000 + 0x48) == tri.TopOfStack
    assert raw[tri.ValidOffset : tri.ValidOffset + 4] == b"TRGD"
    entry = h.DUMP_DRIVER_ENTRY64.parse(raw[tri.DriverListOffset : tri.DriverListOffset + 0x90])
    assert u64(tri.DriverListOffset + 8 + 0x30) == entry.LdrEntry.DllBase
    assert u32(tri.DriverListOffset + 8 + 0x80) == entry.LdrEntry.TimeDateStamp
    assert raw[tri.SizeOfDump : tri.SizeOfDump + 8] == b"DumpBlob"


def test_field_offset_and_the_fast_driver_list_agree_with_construct():
    """The small dump's driver list is read with struct at field_offset's offsets: they are the
    layout's own (formats.md §6 comments), and every corpus driver reads as construct parses it."""
    import kdshell.dumpfile.header as H
    from conftest import MINI_17763, TRIAGE_19041
    from kdshell.dumpfile.dump import open_dump

    assert H.field_offset(H.DUMP_DRIVER_ENTRY64, "LdrEntry.DllBase") == (0x38, 8)
    assert H.field_offset(H.DUMP_DRIVER_ENTRY64, "LdrEntry.TimeDateStamp") == (0x88, 4)
    assert H.field_offset(H.DUMP_DRIVER_ENTRY32, "LdrEntry.CheckSum") == (0x44, 4)
    for path in (TRIAGE_19041, MINI_17763):
        with open_dump(path) as d:
            assert len(d.triage.drivers) > 100
            for drv in d.triage.drivers:
                e = H.DUMP_DRIVER_ENTRY64.parse(d.read_file(drv.entry_offset, H.DUMP_DRIVER_ENTRY64.sizeof()))
                ldr = e.LdrEntry
                assert (drv.base, drv.size, drv.timestamp, drv.checksum) == (
                    ldr.DllBase, ldr.SizeOfImage, ldr.TimeDateStamp, ldr.CheckSum)
