"""On-disk layouts of the kernel dump header and the records it carries.

Every layout is declared once here (the CONTEXT records in context.py), with its Windows name and
the offset of each field, and is used both to read (``.parse``) and to write (``.build``) dumps.
`tests/test_layouts.py` checks these declarations against literal offsets from
../shared/docs/formats.md.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from construct import (
    Array,
    Bytes,
    Const,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    Padding,
    Struct,
)

# construct ships no type information: its layouts (Struct, Array...) and the Containers they
# parse are typed with these names.
Layout = Any
Container = Any

PAGE_SIZE = 0x1000

SIGNATURE = b"PAGE"
VALID_DUMP_64 = b"DU64"
VALID_DUMP_32 = b"DUMP"
# The kernel fills the header page with "PAGE" before writing fields: a field still holding the
# pattern was never written and means "absent" (formats.md §1).
FILL32 = 0x45474150
FILL64 = 0x4547415045474150

HEADER64_SIZE = 0x2000
HEADER32_SIZE = 0x1000

# MachineImageType (PE machine values)
MACHINE_I386 = 0x014C
MACHINE_AMD64 = 0x8664
MACHINE_ARM64 = 0xAA64
MACHINE_NAMES = {MACHINE_I386: "x86", MACHINE_AMD64: "x64", MACHINE_ARM64: "ARM64"}

# DumpType values (formats.md §3)
DUMP_TYPE_FULL = 1
DUMP_TYPE_SUMMARY = 2
DUMP_TYPE_HEADER = 3
DUMP_TYPE_TRIAGE = 4
DUMP_TYPE_BITMAP_FULL = 5
DUMP_TYPE_BITMAP_KERNEL = 6
DUMP_TYPE_AUTOMATIC = 7
DUMP_TYPE_RDMP_KERNEL = 8
DUMP_TYPE_RDMP_KERNEL_USER = 9
DUMP_TYPE_RDMP_COMPLETE = 10

DUMP_TYPE_NAMES = {
    DUMP_TYPE_FULL: "FULL",
    DUMP_TYPE_SUMMARY: "SUMMARY",
    DUMP_TYPE_HEADER: "HEADER",
    DUMP_TYPE_TRIAGE: "TRIAGE",
    DUMP_TYPE_BITMAP_FULL: "BITMAP_FULL",
    DUMP_TYPE_BITMAP_KERNEL: "BITMAP_KERNEL",
    DUMP_TYPE_AUTOMATIC: "AUTOMATIC",
    DUMP_TYPE_RDMP_KERNEL: "KERNEL_MEMORY (RDMP)",
    DUMP_TYPE_RDMP_KERNEL_USER: "KERNEL_AND_USER_MEMORY (RDMP)",
    DUMP_TYPE_RDMP_COMPLETE: "COMPLETE_MEMORY (RDMP)",
}

# DUMP_FILE_ATTRIBUTES bits (formats.md §2.1)
ATTRIBUTE_NAMES = {
    0x1: "HiberCrash",
    0x2: "DumpDevicePowerOff",
    0x4: "InsufficientDumpfileSize",
    0x8: "KernelGeneratedTriageDump",
    0x10: "LiveDumpGeneratedDump",
    0x20: "DumpIsGeneratedOffline",
    0x40: "FilterDumpFile",
    0x80: "EarlyBootCrash",
    0x100: "EncryptedDumpData",
    0x200: "DecryptedDump",
}

# ProductType and SuiteMask names as WinDbg prints them (formats.md §2.2)
PRODUCT_NAMES = {1: "WinNt", 2: "LanManNt", 3: "Server"}
SUITE_NAMES = {
    0x1: "SmallBusiness",
    0x2: "Enterprise",
    0x4: "BackOffice",
    0x8: "Communications",
    0x10: "TerminalServer",
    0x20: "SmallBusinessRestricted",
    0x40: "EmbeddedNT",
    0x80: "DataCenter",
    0x100: "SingleUserTS",
    0x200: "Personal",
    0x400: "Blade",
    0x800: "EmbeddedRestricted",
    0x1000: "SecurityAppliance",
    0x2000: "StorageServer",
    0x4000: "ComputeServer",
    0x8000: "WHServer",
    0x20000: "MultiUserTS",
}

# --------------------------------------------------------------------------------------------
# PHYSICAL_MEMORY_DESCRIPTOR (formats.md §4)

PHYSICAL_MEMORY_RUN64 = Struct(
    "BasePage" / Int64ul,  # +0x00
    "PageCount" / Int64ul,  # +0x08
)
PHYSICAL_MEMORY_RUN32 = Struct(
    "BasePage" / Int32ul,  # +0x00
    "PageCount" / Int32ul,  # +0x04
)
PHYSICAL_MEMORY_DESCRIPTOR64 = Struct(  # at DUMP_HEADER64 +0x88; Run[] follows at +0x10
    "NumberOfRuns" / Int32ul,  # +0x00
    Padding(4),  # +0x04
    "NumberOfPages" / Int64ul,  # +0x08
)
PHYSICAL_MEMORY_DESCRIPTOR32 = Struct(  # at DUMP_HEADER32 +0x64; Run[] follows at +0x8
    "NumberOfRuns" / Int32ul,  # +0x00
    "NumberOfPages" / Int32ul,  # +0x04
)
PHYSICAL_MEMORY_BLOCK_SIZE = 700
MAX_RUNS64 = (PHYSICAL_MEMORY_BLOCK_SIZE - 0x10) // 0x10  # 42
MAX_RUNS32 = (PHYSICAL_MEMORY_BLOCK_SIZE - 0x8) // 0x8  # 86

# --------------------------------------------------------------------------------------------
# EXCEPTION_RECORD64 (0x98) / EXCEPTION_RECORD32 (0x50) (formats.md §8.4)

EXCEPTION_MAXIMUM_PARAMETERS = 15

EXCEPTION_RECORD64 = Struct(
    "ExceptionCode" / Int32ul,  # +0x00
    "ExceptionFlags" / Int32ul,  # +0x04
    "ExceptionRecord" / Int64ul,  # +0x08
    "ExceptionAddress" / Int64ul,  # +0x10
    "NumberParameters" / Int32ul,  # +0x18
    Padding(4),  # +0x1c
    "ExceptionInformation" / Array(EXCEPTION_MAXIMUM_PARAMETERS, Int64ul),  # +0x20
)
EXCEPTION_RECORD32 = Struct(
    "ExceptionCode" / Int32ul,  # +0x00
    "ExceptionFlags" / Int32ul,  # +0x04
    "ExceptionRecord" / Int32ul,  # +0x08
    "ExceptionAddress" / Int32ul,  # +0x0c
    "NumberParameters" / Int32ul,  # +0x10
    "ExceptionInformation" / Array(EXCEPTION_MAXIMUM_PARAMETERS, Int32ul),  # +0x14
)

# --------------------------------------------------------------------------------------------
# DUMP_HEADER64 (file offset 0, 0x2000 bytes; formats.md §2)

DUMP_HEADER64 = Struct(
    "Signature" / Const(SIGNATURE),  # +0x000
    "ValidDump" / Const(VALID_DUMP_64),  # +0x004
    "MajorVersion" / Int32ul,  # +0x008
    "MinorVersion" / Int32ul,  # +0x00c
    "DirectoryTableBase" / Int64ul,  # +0x010
    "PfnDataBase" / Int64ul,  # +0x018
    "PsLoadedModuleList" / Int64ul,  # +0x020
    "PsActiveProcessHead" / Int64ul,  # +0x028
    "MachineImageType" / Int32ul,  # +0x030
    "NumberProcessors" / Int32ul,  # +0x034
    "BugCheckCode" / Int32ul,  # +0x038
    Padding(4),  # +0x03c
    "BugCheckParameters" / Array(4, Int64ul),  # +0x040
    "VersionUser" / Bytes(32),  # +0x060
    "KdDebuggerDataBlock" / Int64ul,  # +0x080
    "PhysicalMemoryBlock" / Bytes(PHYSICAL_MEMORY_BLOCK_SIZE),  # +0x088
    Padding(4),  # +0x344
    "ContextRecord" / Bytes(3000),  # +0x348
    "Exception" / EXCEPTION_RECORD64,  # +0xf00
    "DumpType" / Int32ul,  # +0xf98
    Padding(4),  # +0xf9c
    "RequiredDumpSpace" / Int64ul,  # +0xfa0
    "SystemTime" / Int64ul,  # +0xfa8
    "Comment" / Bytes(128),  # +0xfb0
    "SystemUpTime" / Int64ul,  # +0x1030
    "MiniDumpFields" / Int32ul,  # +0x1038
    "SecondaryDataState" / Int32ul,  # +0x103c
    "ProductType" / Int32ul,  # +0x1040
    "SuiteMask" / Int32ul,  # +0x1044
    "WriterStatus" / Int32ul,  # +0x1048
    "Unused1" / Int8ul,  # +0x104c
    "KdSecondaryVersion" / Int8ul,  # +0x104d
    "Unused" / Bytes(2),  # +0x104e
    "Attributes" / Int32ul,  # +0x1050
    "BootId" / Int32ul,  # +0x1054
    "Reserved" / Bytes(4008),  # +0x1058
)

# DUMP_HEADER32 (file offset 0, 0x1000 bytes; formats.md §9). Field order differs from 64-bit.
DUMP_HEADER32 = Struct(
    "Signature" / Const(SIGNATURE),  # +0x000
    "ValidDump" / Const(VALID_DUMP_32),  # +0x004
    "MajorVersion" / Int32ul,  # +0x008
    "MinorVersion" / Int32ul,  # +0x00c
    "DirectoryTableBase" / Int32ul,  # +0x010
    "PfnDataBase" / Int32ul,  # +0x014
    "PsLoadedModuleList" / Int32ul,  # +0x018
    "PsActiveProcessHead" / Int32ul,  # +0x01c
    "MachineImageType" / Int32ul,  # +0x020
    "NumberProcessors" / Int32ul,  # +0x024
    "BugCheckCode" / Int32ul,  # +0x028
    "BugCheckParameters" / Array(4, Int32ul),  # +0x02c
    "VersionUser" / Bytes(32),  # +0x03c
    "PaeEnabled" / Int8ul,  # +0x05c
    "KdSecondaryVersion" / Int8ul,  # +0x05d
    "Spare" / Bytes(2),  # +0x05e
    "KdDebuggerDataBlock" / Int32ul,  # +0x060
    "PhysicalMemoryBlock" / Bytes(PHYSICAL_MEMORY_BLOCK_SIZE),  # +0x064
    "ContextRecord" / Bytes(1200),  # +0x320
    "Exception" / EXCEPTION_RECORD32,  # +0x7d0
    "Comment" / Bytes(128),  # +0x820
    "Attributes" / Int32ul,  # +0x8a0
    "BootId" / Int32ul,  # +0x8a4
    "Reserved0" / Bytes(1760),  # +0x8a8
    "DumpType" / Int32ul,  # +0xf88
    "MiniDumpFields" / Int32ul,  # +0xf8c
    "SecondaryDataState" / Int32ul,  # +0xf90
    "ProductType" / Int32ul,  # +0xf94
    "SuiteMask" / Int32ul,  # +0xf98
    "WriterStatus" / Int32ul,  # +0xf9c
    "RequiredDumpSpace" / Int64ul,  # +0xfa0
    "Reserved2" / Bytes(16),  # +0xfa8
    "SystemUpTime" / Int64ul,  # +0xfb8
    "SystemTime" / Int64ul,  # +0xfc0
    "Reserved3" / Bytes(56),  # +0xfc8
)

# --------------------------------------------------------------------------------------------
# Bitmap dumps: header at file offset 0x2000 (formats.md §5). Type 5 says 'FDMP', type 6 'SDMP'.

BITMAP_SIGNATURE_FULL = b"FDMP"
BITMAP_SIGNATURE_KERNEL = b"SDMP"

BITMAP_DUMP_HEADER64 = Struct(  # followed by the bitmap at +0x38
    "Signature" / Bytes(4),  # +0x00 'SDMP' / 'FDMP'
    "ValidDump" / Const(b"DUMP"),  # +0x04
    "DumpOptions" / Int32ul,  # +0x08
    "Reserved" / Bytes(20),  # +0x0c
    "FirstPage" / Int64ul,  # +0x20 file offset of the first stored page
    "TotalPresentPages" / Int64ul,  # +0x28 set bits = stored pages
    "Pages" / Int64ul,  # +0x30 bits in the bitmap = PFNs described
)
BITMAP_OFFSET = 0x38

# Old SUMMARY_DUMP (DumpType 2, formats.md §5.2): 32-bit fields, then an RTL_BITMAP.
SUMMARY_DUMP_HEADER = Struct(
    "Signature" / Bytes(4),  # +0x00 'SDMP'
    "ValidDump" / Const(b"DUMP"),  # +0x04
    "DumpOptions" / Int32ul,  # +0x08
    "HeaderSize" / Int32ul,  # +0x0c file offset of the first page
    "BitmapSize" / Int32ul,  # +0x10 bits
    "Pages" / Int32ul,  # +0x14 set bits
    "SizeOfBitMap" / Int32ul,  # +0x18 RTL_BITMAP.SizeOfBitMap
)
# RTL_BITMAP is {ULONG SizeOfBitMap; PULONG Buffer} with natural alignment, and the bitmap's bits
# follow it: +0x28 on 64-bit targets, +0x20 on 32-bit ones (inferred from the SDK layout).
SUMMARY_BITMAP_OFFSET64 = 0x28
SUMMARY_BITMAP_OFFSET32 = 0x20

# RDMP dumps (DumpType 8, 9, 10; formats.md §5.3), header at file offset 0x2000.
RDMP_SIGNATURE = b"RDMP"
RDMP_HEADER64 = Struct(
    "Marker" / Int32ul,  # +0x00 0x40
    "Signature" / Const(RDMP_SIGNATURE),  # +0x04
    "ValidDump" / Const(b"DUMP"),  # +0x08
    "Unused" / Int32ul,  # +0x0c
    "MetadataSize" / Int64ul,  # +0x10
    "FirstPageOffset" / Int64ul,  # +0x18 file offset of page data
)
KERNEL_RDMP_HEADER64 = Struct(  # types 8/9
    "Hdr" / RDMP_HEADER64,  # +0x00
    "Unknown1" / Int64ul,  # +0x20
    "Unknown2" / Int64ul,  # +0x28
)
FULL_RDMP_HEADER64 = Struct(  # type 10
    "Hdr" / RDMP_HEADER64,  # +0x00
    "NumberOfRanges" / Int32ul,  # +0x20
    "Reserved1" / Int16ul,  # +0x24
    "Reserved2" / Int16ul,  # +0x26
    "TotalNumberOfPages" / Int64ul,  # +0x28
)
RDMP_RANGE = Struct(  # at header +0x30, one after the other
    "PageFrameNumber" / Int64ul,  # +0x00
    "NumberOfPages" / Int64ul,  # +0x08
)
RDMP_RANGES_OFFSET = 0x30

# --------------------------------------------------------------------------------------------
# Small memory dump: TRIAGE_DUMP64 / TRIAGE_DUMP32 (formats.md §6)

TRIAGE_DUMP_VALID = b"TRGD"

TRIAGE_DUMP64 = Struct(  # 0x80 bytes; every *Offset is a file offset
    "ServicePackBuild" / Int32ul,  # +0x00
    "SizeOfDump" / Int32ul,  # +0x04
    "ValidOffset" / Int32ul,  # +0x08
    "ContextOffset" / Int32ul,  # +0x0c
    "ExceptionOffset" / Int32ul,  # +0x10
    "MmOffset" / Int32ul,  # +0x14
    "UnloadedDriversOffset" / Int32ul,  # +0x18
    "PrcbOffset" / Int32ul,  # +0x1c
    "ProcessOffset" / Int32ul,  # +0x20
    "ThreadOffset" / Int32ul,  # +0x24
    "CallStackOffset" / Int32ul,  # +0x28
    "SizeOfCallStack" / Int32ul,  # +0x2c
    "DriverListOffset" / Int32ul,  # +0x30
    "DriverCount" / Int32ul,  # +0x34
    "StringPoolOffset" / Int32ul,  # +0x38
    "StringPoolSize" / Int32ul,  # +0x3c
    "BrokenDriverOffset" / Int32ul,  # +0x40
    "TriageOptions" / Int32ul,  # +0x44
    "TopOfStack" / Int64ul,  # +0x48
    "ArchitectureSpecific" / Bytes(16),  # +0x50 IA64 backing store only
    "DataPageAddress" / Int64ul,  # +0x60
    "DataPageOffset" / Int32ul,  # +0x68
    "DataPageSize" / Int32ul,  # +0x6c
    "DebuggerDataOffset" / Int32ul,  # +0x70
    "DebuggerDataSize" / Int32ul,  # +0x74
    "DataBlocksOffset" / Int32ul,  # +0x78
    "DataBlocksCount" / Int32ul,  # +0x7c
)
TRIAGE_DUMP32 = Struct(  # 0x68 bytes
    "ServicePackBuild" / Int32ul,  # +0x00
    "SizeOfDump" / Int32ul,  # +0x04
    "ValidOffset" / Int32ul,  # +0x08
    "ContextOffset" / Int32ul,  # +0x0c
    "ExceptionOffset" / Int32ul,  # +0x10
    "MmOffset" / Int32ul,  # +0x14
    "UnloadedDriversOffset" / Int32ul,  # +0x18
    "PrcbOffset" / Int32ul,  # +0x1c
    "ProcessOffset" / Int32ul,  # +0x20
    "ThreadOffset" / Int32ul,  # +0x24
    "CallStackOffset" / Int32ul,  # +0x28
    "SizeOfCallStack" / Int32ul,  # +0x2c
    "DriverListOffset" / Int32ul,  # +0x30
    "DriverCount" / Int32ul,  # +0x34
    "StringPoolOffset" / Int32ul,  # +0x38
    "StringPoolSize" / Int32ul,  # +0x3c
    "BrokenDriverOffset" / Int32ul,  # +0x40
    "TriageOptions" / Int32ul,  # +0x44
    "TopOfStack" / Int32ul,  # +0x48
    "DataPageAddress" / Int32ul,  # +0x4c
    "DataPageOffset" / Int32ul,  # +0x50
    "DataPageSize" / Int32ul,  # +0x54
    "DebuggerDataOffset" / Int32ul,  # +0x58
    "DebuggerDataSize" / Int32ul,  # +0x5c
    "DataBlocksOffset" / Int32ul,  # +0x60
    "DataBlocksCount" / Int32ul,  # +0x64
)

# MiniDumpFields: which parts a triage dump holds (formats.md §6.3)
TRIAGE_DUMP_CONTEXT = 0x1
TRIAGE_DUMP_EXCEPTION = 0x2
TRIAGE_DUMP_PRCB = 0x4
TRIAGE_DUMP_PROCESS = 0x8
TRIAGE_DUMP_THREAD = 0x10
TRIAGE_DUMP_STACK = 0x20
TRIAGE_DUMP_DRIVER_LIST = 0x40
TRIAGE_DUMP_BROKEN_DRIVER = 0x80
TRIAGE_DUMP_MMINFO = 0x100
TRIAGE_DUMP_DATAPAGE = 0x200
TRIAGE_DUMP_DEBUGGER_DATA = 0x400
TRIAGE_DUMP_DATA_BLOCKS = 0x800
TRIAGE_FIELD_NAMES = {
    0x1: "CONTEXT",
    0x2: "EXCEPTION",
    0x4: "PRCB",
    0x8: "PROCESS",
    0x10: "THREAD",
    0x20: "STACK",
    0x40: "DRIVER_LIST",
    0x80: "BROKEN_DRIVER",
    0x100: "MMINFO",
    0x200: "DATAPAGE",
    0x400: "DEBUGGER_DATA",
    0x800: "DATA_BLOCKS",
}
TRIAGE_OPTION_OVERFLOWED = 0x100

TRIAGE_DATA_BLOCK64 = Struct(
    "Address" / Int64ul,  # +0x00
    "Offset" / Int32ul,  # +0x08
    "Size" / Int32ul,  # +0x0c
)
TRIAGE_DATA_BLOCK32 = Struct(
    "Address" / Int32ul,  # +0x00
    "Offset" / Int32ul,  # +0x04
    "Size" / Int32ul,  # +0x08
)

UNICODE_STRING64 = Struct(
    "Length" / Int16ul,  # +0x00
    "MaximumLength" / Int16ul,  # +0x02
    Padding(4),  # +0x04
    "Buffer" / Int64ul,  # +0x08
)
UNICODE_STRING32 = Struct(
    "Length" / Int16ul,  # +0x00
    "MaximumLength" / Int16ul,  # +0x02
    "Buffer" / Int32ul,  # +0x04
)

# KLDR_DATA_TABLE_ENTRY as frozen in the triage driver list (formats.md §6.6)
DUMP_KLDR_ENTRY64 = Struct(  # 0x88 bytes
    "InLoadOrderLinks" / Array(2, Int64ul),  # +0x00
    "ExceptionTable" / Int64ul,  # +0x10
    "ExceptionTableSize" / Int32ul,  # +0x18
    Padding(4),  # +0x1c
    "GpValue" / Int64ul,  # +0x20
    "NonPagedDebugInfo" / Int64ul,  # +0x28
    "DllBase" / Int64ul,  # +0x30
    "EntryPoint" / Int64ul,  # +0x38
    "SizeOfImage" / Int32ul,  # +0x40
    Padding(4),  # +0x44
    "FullDllName" / UNICODE_STRING64,  # +0x48
    "BaseDllName" / UNICODE_STRING64,  # +0x58
    "Flags" / Int32ul,  # +0x68
    "LoadCount" / Int16ul,  # +0x6c
    "Reserved" / Int16ul,  # +0x6e
    "SectionPointer" / Int64ul,  # +0x70
    "CheckSum" / Int32ul,  # +0x78
    "CoverageSectionSize" / Int32ul,  # +0x7c
    "TimeDateStamp" / Int32ul,  # +0x80
    Padding(4),  # +0x84
)
DUMP_DRIVER_ENTRY64 = Struct(  # 0x90 bytes
    "DriverNameOffset" / Int32ul,  # +0x00 file offset of a DUMP_STRING
    Padding(4),  # +0x04
    "LdrEntry" / DUMP_KLDR_ENTRY64,  # +0x08
)
DUMP_KLDR_ENTRY32 = Struct(  # 0x50 bytes
    "InLoadOrderLinks" / Array(2, Int32ul),  # +0x00
    "ExceptionTable" / Int32ul,  # +0x08
    "ExceptionTableSize" / Int32ul,  # +0x0c
    "GpValue" / Int32ul,  # +0x10
    "NonPagedDebugInfo" / Int32ul,  # +0x14
    "DllBase" / Int32ul,  # +0x18
    "EntryPoint" / Int32ul,  # +0x1c
    "SizeOfImage" / Int32ul,  # +0x20
    "FullDllName" / UNICODE_STRING32,  # +0x24
    "BaseDllName" / UNICODE_STRING32,  # +0x2c
    "Flags" / Int32ul,  # +0x34
    "LoadCount" / Int16ul,  # +0x38
    "Reserved" / Int16ul,  # +0x3a
    "SectionPointer" / Int32ul,  # +0x3c
    "CheckSum" / Int32ul,  # +0x40
    "CoverageSectionSize" / Int32ul,  # +0x44
    "TimeDateStamp" / Int32ul,  # +0x48
    Padding(4),  # +0x4c
)
DUMP_DRIVER_ENTRY32 = Struct(  # 0x54 bytes
    "DriverNameOffset" / Int32ul,  # +0x00
    "LdrEntry" / DUMP_KLDR_ENTRY32,  # +0x04
)

DUMP_UNLOADED_DRIVERS64 = Struct(  # 0x38 bytes
    "Name" / UNICODE_STRING64,  # +0x00 (stale kernel pointer)
    "DriverName" / Bytes(24),  # +0x10 WCHAR[12], truncated
    "StartAddress" / Int64ul,  # +0x28
    "EndAddress" / Int64ul,  # +0x30
)
DUMP_UNLOADED_DRIVERS32 = Struct(  # 0x28 bytes
    "Name" / UNICODE_STRING32,  # +0x00
    "DriverName" / Bytes(24),  # +0x08
    "StartAddress" / Int32ul,  # +0x20
    "EndAddress" / Int32ul,  # +0x24
)

DUMP_MM_STORAGE64 = Struct(  # 0x50 bytes
    "Version" / Int32ul,  # +0x00
    "Size" / Int32ul,  # +0x04
    "MmSpecialPoolTag" / Int32ul,  # +0x08
    "MiTriageActionTaken" / Int32ul,  # +0x0c
    "MmVerifyDriverLevel" / Int32ul,  # +0x10
    "KernelVerifier" / Int32ul,  # +0x14
    "MmMaximumNonPagedPool" / Int64ul,  # +0x18
    "MmAllocatedNonPagedPool" / Int64ul,  # +0x20
    "PagedPoolMaximum" / Int64ul,  # +0x28
    "PagedPoolAllocated" / Int64ul,  # +0x30
    "CommittedPages" / Int64ul,  # +0x38
    "CommittedPagesPeak" / Int64ul,  # +0x40
    "CommitLimitMaximum" / Int64ul,  # +0x48
)
DUMP_MM_STORAGE32 = Struct(  # 0x34 bytes
    "Version" / Int32ul,  # +0x00
    "Size" / Int32ul,  # +0x04
    "MmSpecialPoolTag" / Int32ul,  # +0x08
    "MiTriageActionTaken" / Int32ul,  # +0x0c
    "MmVerifyDriverLevel" / Int32ul,  # +0x10
    "KernelVerifier" / Int32ul,  # +0x14
    "MmMaximumNonPagedPool" / Int32ul,  # +0x18
    "MmAllocatedNonPagedPool" / Int32ul,  # +0x1c
    "PagedPoolMaximum" / Int32ul,  # +0x20
    "PagedPoolAllocated" / Int32ul,  # +0x24
    "CommittedPages" / Int32ul,  # +0x28
    "CommittedPagesPeak" / Int32ul,  # +0x2c
    "CommitLimitMaximum" / Int32ul,  # +0x30
)

# --------------------------------------------------------------------------------------------
# Secondary data: DUMP_BLOB stream (formats.md §7)

DUMP_BLOB_SIGNATURE = b"DumpBlob"
DUMP_BLOB_FILE_HEADER = Struct(  # 0x10 bytes
    "Signature" / Const(DUMP_BLOB_SIGNATURE),  # +0x00 'pmuD' 'bolB'
    "HeaderSize" / Int32ul,  # +0x08
    "BuildNumber" / Int32ul,  # +0x0c
)
DUMP_BLOB_HEADER = Struct(  # 0x20 bytes
    "HeaderSize" / Int32ul,  # +0x00
    "Tag" / Bytes(16),  # +0x04 GUID
    "DataSize" / Int32ul,  # +0x14
    "PrePad" / Int32ul,  # +0x18
    "PostPad" / Int32ul,  # +0x1c
)

# --------------------------------------------------------------------------------------------
# Decoded header: what the rest of kdshell uses, the same for 32- and 64-bit files.


def field_offset(layout: Layout, path: str) -> tuple[int, int]:
    """(offset, size) of a field of a fixed-size layout, `A.B` for nested ones: for the hot
    loops that read many records with struct rather than a construct parse each."""
    offset = 0
    for name in path.split("."):
        for sub in layout.subcons:
            if sub.name == name:
                layout = sub.subcon if hasattr(sub, "subcon") and not hasattr(sub, "subcons") else sub
                break
            offset += sub.sizeof()
        else:
            raise KeyError(path)
    return offset, layout.sizeof()


def absent(value: int, width: int = 8) -> int | None:
    """None for a field still holding the "PAGE" fill pattern, else the value."""
    fill = FILL64 if width == 8 else FILL32
    if value == fill or (width == 8 and value == FILL32):
        return None
    return value


def filetime_to_datetime(ft: int) -> _dt.datetime | None:
    """A FILETIME (100 ns since 1601-01-01 UTC) as an aware datetime, None when unset/absurd."""
    if not ft or ft in (FILL64,):
        return None
    try:
        return _dt.datetime(1601, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(microseconds=ft // 10)
    except OverflowError:
        return None


def ascii_field(raw: bytes) -> str:
    """A fixed-size ASCII field: up to the first NUL, "PAGE" fill means empty."""
    text = raw.split(b"\0", 1)[0]
    if not text or set(text.replace(b"PAGE", b"")) <= set():
        return ""
    return text.decode("ascii", "replace")


@dataclass
class DumpHeader:
    """The fields of DUMP_HEADER32/64 that kdshell uses, decoded and with fill removed."""

    is64: bool
    header_size: int
    major_version: int
    build: int
    directory_table_base: int
    pfn_database: int | None
    ps_loaded_module_list: int | None
    ps_active_process_head: int | None
    machine: int
    number_processors: int
    bugcheck_code: int
    bugcheck_parameters: tuple[int, int, int, int]
    kd_debugger_data_block: int | None
    dump_type: int
    required_dump_space: int | None
    system_time: int | None
    system_uptime: int | None
    comment: str
    minidump_fields: int | None
    secondary_data_state: int | None
    product_type: int | None
    suite_mask: int | None
    writer_status: int | None
    kd_secondary_version: int | None
    attributes: int | None
    boot_id: int | None
    pae_enabled: bool
    physical_memory_block: bytes
    context_bytes: bytes
    exception: dict[str, Any]  # decode_exception()'s
    raw: Container = field(repr=False, default=None)  # the construct Container, for .dumpdebug

    @property
    def machine_name(self) -> str:
        return MACHINE_NAMES.get(self.machine, f"machine {self.machine:#x}")

    @property
    def pointer_size(self) -> int:
        return 8 if self.is64 else 4

    @property
    def checked(self) -> bool:
        return self.major_version == 0xC

    @property
    def system_datetime(self) -> _dt.datetime | None:
        return filetime_to_datetime(self.system_time or 0)


def decode_exception(rec: Container) -> dict[str, Any]:
    count = min(rec.NumberParameters, EXCEPTION_MAXIMUM_PARAMETERS)
    return {
        "ExceptionCode": rec.ExceptionCode,
        "ExceptionFlags": rec.ExceptionFlags,
        "ExceptionRecord": rec.ExceptionRecord,
        "ExceptionAddress": rec.ExceptionAddress,
        "NumberParameters": rec.NumberParameters,
        "ExceptionInformation": list(rec.ExceptionInformation[:count]),
    }


def decode_header(raw: Container, is64: bool) -> DumpHeader:
    """Turn a parsed DUMP_HEADER32/64 Container into a DumpHeader."""
    w = 8 if is64 else 4
    params = tuple(int(p) for p in raw.BugCheckParameters)
    return DumpHeader(
        is64=is64,
        header_size=HEADER64_SIZE if is64 else HEADER32_SIZE,
        major_version=raw.MajorVersion,
        build=raw.MinorVersion,
        directory_table_base=raw.DirectoryTableBase,
        pfn_database=absent(raw.PfnDataBase, w),
        ps_loaded_module_list=absent(raw.PsLoadedModuleList, w),
        ps_active_process_head=absent(raw.PsActiveProcessHead, w),
        machine=raw.MachineImageType,
        number_processors=raw.NumberProcessors,
        bugcheck_code=raw.BugCheckCode,
        bugcheck_parameters=params,  # type: ignore[arg-type]  # the layout's Array(4): four of them
        kd_debugger_data_block=absent(raw.KdDebuggerDataBlock, w),
        dump_type=raw.DumpType,
        required_dump_space=absent(raw.RequiredDumpSpace),
        system_time=absent(raw.SystemTime),
        system_uptime=absent(raw.SystemUpTime),
        comment=ascii_field(raw.Comment),
        minidump_fields=absent(raw.MiniDumpFields, 4),
        secondary_data_state=absent(raw.SecondaryDataState, 4),
        product_type=absent(raw.ProductType, 4),
        suite_mask=absent(raw.SuiteMask, 4),
        writer_status=absent(raw.WriterStatus, 4),
        # At +0x104d/+0x5d the fill pattern leaves 'A' (0x41).
        kd_secondary_version=None if raw.KdSecondaryVersion == 0x41 else raw.KdSecondaryVersion,
        attributes=absent(raw.Attributes, 4),
        boot_id=absent(raw.BootId, 4),
        pae_enabled=getattr(raw, "PaeEnabled", 0) not in (0, 0x50),  # 'P' of the fill
        physical_memory_block=bytes(raw.PhysicalMemoryBlock),
        context_bytes=bytes(raw.ContextRecord),
        exception=decode_exception(raw.Exception),
        raw=raw,
    )

