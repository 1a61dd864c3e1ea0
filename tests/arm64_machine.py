"""A small ARM64 machine laid out by hand, for tests/test_arm64.py: real ARM64 translation
tables (4 KiB granule, 48-bit VA, four levels, a self-map entry, a 2 MiB block), an `nt` image
with an export table, code assembled for AArch64, a loaded-module list and a CONTEXT, written
by kdshell's own writers as a complete, a kernel (bitmap) and a small memory dump.

Every layout is literal here (offsets from formats.md §8.3 for the CONTEXT; the ARM64 descriptor
bits from Windows' _MMPTE_HARDWARE of ARM64 builds, as ReactOS' ndk/arm64/mmtypes.h gives them;
the KLDR_DATA_TABLE_ENTRY offsets of 64-bit Windows), not taken from kdshell's declarations, so
a layout bug cannot hide in both the fixture and the reader.
"""
from __future__ import annotations

import struct
from pathlib import Path

from kdshell.dumpfile.write import DumpHeaderFields, make_exception, write_bitmap, write_full
from kdshell.dumpfile.write_triage import TriageDriverInfo, TriageParts, write_triage

PAGE = 0x1000
MACHINE_ARM64 = 0xAA64

# -- descriptor bits ------------------------------------------------------------------------------
VALID, TABLE = 1 << 0, 1 << 1  # bit 1: table (levels 0-2) or page (level 3); clear at 1-2: block
OWNER = 1 << 6  # AP[1]: EL0 may access
NOT_DIRTY = 1 << 7  # AP[2]: read-only (Windows: clean)
INNER = 3 << 8  # SH: inner shareable
AF = 1 << 10
NG = 1 << 11
PXN, UXN, WRITABLE = 1 << 53, 1 << 54, 1 << 55
KERNEL_RW = VALID | TABLE | INNER | AF | PXN | UXN | WRITABLE  # kernel data: no one executes it
KERNEL_RX = VALID | TABLE | INNER | AF | NOT_DIRTY | UXN  # kernel code: read-only, EL1 executes
KERNEL_RO = VALID | TABLE | INNER | AF | NOT_DIRTY | PXN | UXN
USER_RW = VALID | TABLE | INNER | AF | NG | OWNER | WRITABLE  # EL0 read/write (so EL1 may not execute)
TABLE_ENTRY = VALID | TABLE

# -- the address space ------------------------------------------------------------------------------
TTBR = 0x0005_0000_0010_0001  # ASID 5 in bits 63:48, CnP in bit 0; the table is at PFN 0x100
ROOT_PFN = 0x100
SELF_INDEX = 0x1F6  # the self-map entry: PTE_BASE = FFFFFB00`00000000
PTE_BASE = 0xFFFF_FB00_0000_0000
NT_BASE = 0xFFFFF804_12200000  # 2 MiB aligned: its pages share one level-3 table
NT_SIZE = 0x3000
BLOCK_VA = 0xFFFFF804_12400000  # a 2 MiB block at physical 0x600000
BLOCK_PA = 0x600000
POOL = 0xFFFF9B00_00010000  # the loader entry and a prototype PTE
PROTO_PTE = POOL + 0x800
STACK = 0xFFFF8504_29890000
USER_VA = 0x00007FF6_12340000
TRANS_VA, PAGEFILE_VA, PROTO_VA, DEMAND_VA, ZERO_VA = (NT_BASE + 0x10000 + i * PAGE for i in range(5))
PFN = {"nt_head": 0x200, "nt_text": 0x201, "nt_data": 0x202, "pool": 0x203, "stack": 0x204,
       "transition": 0x205, "proto": 0x206, "user": 0x207, "block_page": (BLOCK_PA >> 12) + 3}

# -- nt: exports and code -------------------------------------------------------------------------
EXPORTS = {"KeBugCheckEx": 0x1000, "KeBugCheck2": 0x1040, "KiBugCheckData": 0x2010, "PsLoadedModuleList": 0x2100,
           "PopPowerButtonWorkCallback": 0x1100, "ExpWorkerThread": 0x1140, "PspSystemThreadStartup": 0x1180,
           "KiStartSystemThread": 0x11C0, "KeGetCurrentIrql": 0x1200}
# KeBugCheckEx (rva 0x1000) and KeBugCheck2 (0x1040), assembled with
# `llvm-mc -triple=aarch64-windows -show-encoding` from:
#   pacibsp / stp x29,x30,[sp,#-0x20]! / mov x29,sp / adrp x8,#4096 / add x8,x8,#0x10 /
#   str x0,[x8] / adrp x9,#4096 / ldr x9,[x9,#0x18] / cbz x0,#8 / bl #28 / tbnz w1,#3,#16 /
#   ldp x29,x30,[sp],#0x20 / autibsp / ret / b #8 / nop /
#   stp x29,x30,[sp,#-0x10]! / mov x29,sp / ldr x0,#0xfd8 / brk #0xf000
CODE_WORDS = (
    0xD503237F, 0xA9BE7BFD, 0x910003FD, 0xB0000008, 0x91004108, 0xF9000100, 0xB0000009, 0xF9400D29,
    0xB4000040, 0x94000007, 0x37180081, 0xA8C27BFD, 0xD50323FF, 0xD65F03C0, 0x14000002, 0xD503201F,
    0xA9BF7BFD, 0x910003FD, 0x58007EC0, 0xD43E0000,
)
CODE = b"".join(struct.pack("<I", w) for w in CODE_WORDS)
PC = NT_BASE + 0x1024  # the bl to KeBugCheck2
SP = STACK + 0xF00

# The callers of KeBugCheckEx, assembled with `llvm-mc -triple=aarch64-windows -filetype=obj`
# (the .text words of the object file), one function per rva:
FUNCTIONS = {
    # PopPowerButtonWorkCallback, .xdata: stp x19,x20,[sp,#-0x30]! / stp x29,x30,[sp,#0x10] /
    # add x29,sp,#0x10 / sub sp,sp,#0x20 / mov x0,#0x1c8 / bl KeBugCheckEx / add sp,sp,#0x20 /
    # ldp x29,x30,[sp,#0x10] / ldp x19,x20,[sp],#0x30 / ret
    0x1100: (0xA9BD53F3, 0xA9017BFD, 0x910043FD, 0xD10083FF, 0xD2803900, 0x97FFFFBB, 0x910083FF, 0xA9417BFD,
             0xA8C353F3, 0xD65F03C0),
    # ExpWorkerThread, packed (RegI 4, CR 3, FrameSize 0x30): stp x19,x20,[sp,#-0x20]! /
    # stp x21,x22,[sp,#0x10] / stp x29,x30,[sp,#-0x10]! / mov x29,sp / blr x19 / ldp x29,x30,[sp],#0x10 /
    # ldp x21,x22,[sp,#0x10] / ldp x19,x20,[sp],#0x20 / ret
    0x1140: (0xA9BE53F3, 0xA9015BF5, 0xA9BF7BFD, 0x910003FD, 0xD63F0260, 0xA8C17BFD, 0xA9415BF5, 0xA8C253F3,
             0xD65F03C0),
    # PspSystemThreadStartup, .xdata with one epilog (E=1) sharing the prolog's codes:
    # stp x29,x30,[sp,#-0x10]! / mov x29,sp / blr x20 / ldp x29,x30,[sp],#0x10 / ret
    0x1180: (0xA9BF7BFD, 0x910003FD, 0xD63F0280, 0xA8C17BFD, 0xD65F03C0),
    # KiStartSystemThread, no .pdata: mov x29,xzr / blr x21 / brk #0xf000
    0x11C0: (0xAA1F03FD, 0xD63F02A0, 0xD43E0000),
    # KeGetCurrentIrql, a leaf without .pdata: ldrb w0,[x18,#0x38] / ret
    0x1200: (0x3940E240, 0xD65F03C0),
}


def text() -> bytes:
    """nt's .text page: CODE at rva 0x1000, FUNCTIONS at theirs."""
    page = bytearray(PAGE)
    page[: len(CODE)] = CODE
    for rva, words in FUNCTIONS.items():
        page[rva - 0x1000 : rva - 0x1000 + 4 * len(words)] = b"".join(struct.pack("<I", w) for w in words)
    return bytes(page)


# .pdata (rva 0x2400, 8-byte RUNTIME_FUNCTIONs) and .xdata, by the field layouts of Microsoft's
# "ARM64 exception handling":
PDATA_RVA = 0x2400
PDATA = (
    # KeBugCheckEx: Flag 1, FunctionLength 0x38/4 (to its ret), CR 2 (pacibsp, chained), FrameSize 0x20/16
    (0x1000, 1 | (0x38 // 4) << 2 | 2 << 21 | 2 << 23),
    (0x1100, 0x2500),   # PopPowerButtonWorkCallback: .xdata
    # ExpWorkerThread: Flag 1, FunctionLength 0x24/4, RegI 4, CR 3, FrameSize 0x30/16
    (0x1140, 1 | (0x24 // 4) << 2 | 4 << 16 | 3 << 21 | 3 << 23),
    (0x1180, 0x2540),   # PspSystemThreadStartup: .xdata
)
XDATA = {
    # FunctionLength 0x28/4, E 0, EpilogCount 1, CodeWords 3; the epilog at +0x18 starts at code 6;
    # codes: alloc_s 0x20, add_fp 0x10, save_fplr 0x10, save_r19r20_x 0x30, end |
    # alloc_s 0x20, save_fplr 0x10, save_r19r20_x 0x30, end | nop nop
    0x2500: struct.pack("<II", 0x28 // 4 | 1 << 22 | 3 << 27, 6 | 6 << 22)
    + bytes((0x02, 0xE2, 0x02, 0x42, 0x26, 0xE4, 0x02, 0x42, 0x26, 0xE4, 0xE3, 0xE3)),
    # FunctionLength 0x14/4, E 1 (EpilogCount = the epilog's first code: 1), CodeWords 1;
    # codes: set_fp, save_fplr_x 0x10, end, nop
    0x2540: struct.pack("<I", 0x14 // 4 | 1 << 21 | 1 << 22 | 1 << 27) + bytes((0xE1, 0x81, 0xE4, 0xE3)),
}
# PAC: KeBugCheckEx signed lr (pacibsp) before saving it; the signature is in bits 48-54, 56-63
SIGNED_LR = 0x3A0B_0000_0000_0000 | (NT_BASE & 0x0000_FFFF_FFFF_FFFF) | (1 << 55) | 0x1118
# The frame records and saved registers, by the prologs above (Child-SPs 0xF00, 0xF20, 0xF70,
# 0xFA0, 0xFB0 by .pdata):
STACK_WORDS = {
    0xF00: STACK + 0xF50, 0xF08: SIGNED_LR,                          # KeBugCheckEx's record
    0xF40: 0x1919, 0xF48: 0x2020,                                     # PopPower..: x19, x20
    0xF50: STACK + 0xF70, 0xF58: NT_BASE + 0x1154,                   # PopPower..'s record
    0xF70: STACK + 0xFA0, 0xF78: NT_BASE + 0x118C,                   # ExpWorkerThread's record
    0xF80: NT_BASE + 0x1100, 0xF88: 0x2121, 0xF90: 0x2222, 0xF98: 0x2323,  # its x19-x22
    0xFA0: 0, 0xFA8: NT_BASE + 0x11C8,                                # PspSystemThreadStartup's record
}


def stack_page() -> bytes:
    page = bytearray(struct.pack("<QQ", 0xAAAA, 0xBBBB) * (PAGE // 16))
    page[0xF00:] = bytes(PAGE - 0xF00)
    for off, value in STACK_WORDS.items():
        struct.pack_into("<Q", page, off, value)
    return bytes(page)


def registers() -> dict[str, int]:
    """The crashing context's values: x0 the bug check code, x1-x28 n * 0x0101010101010101."""
    regs = {f"x{i}": i * 0x0101010101010101 for i in range(29)}
    regs.update(x0=0x1C8, fp=SP, lr=NT_BASE + 0x1118, sp=SP, pc=PC, cpsr=0x60000005,
                fpcr=0x03000000, fpsr=0x00000010)
    return regs


V0 = 0x00112233_44556677_8899AABB_CCDDEEFF

# A 0x7E (SYSTEM_THREAD_EXCEPTION_NOT_HANDLED) variant: P3 an EXCEPTION_RECORD64, P4 a CONTEXT
# record in pool, the access violation at the `mov x0,#0x1c8` of PopPowerButtonWorkCallback
# after its prolog (sp is its Child-SP 0xF20, fp its frame record at 0xF50).
EXR = POOL + 0x400
CXR = POOL + 0xA00
CXR_PC = NT_BASE + 0x1110
CXR_SP = STACK + 0xF20
FAULT_ADDRESS = 0x10
PARAMS_7E = (0xC0000005, CXR_PC, EXR, CXR)


def cxr_registers() -> dict[str, int]:
    regs = {f"x{i}": 0x7E00 + i for i in range(29)}
    regs.update(fp=STACK + 0xF50, lr=NT_BASE + 0x1154, sp=CXR_SP, pc=CXR_PC, cpsr=0x80000005, fpcr=0, fpsr=0)
    return regs


def exception_record() -> bytes:
    """An EXCEPTION_RECORD64 (0x98 bytes): code, flags, record, address, count, parameters at +0x20."""
    return struct.pack("<IIQQII2Q", 0xC0000005, 0, 0, CXR_PC, 2, 0, 0, FAULT_ADDRESS).ljust(0x98, b"\0")


def context(r: dict[str, int] | None = None) -> bytes:
    """A CONTEXT_ARM64 (0x390 bytes) at formats.md §8.3's literal offsets."""
    r = r or registers()
    c = bytearray(0x390)
    struct.pack_into("<II", c, 0x0, 0x00400007, r["cpsr"])  # CONTEXT_ARM64 | CONTROL | INTEGER | FLOATING
    for i in range(29):
        struct.pack_into("<Q", c, 0x08 + 8 * i, r[f"x{i}"])
    struct.pack_into("<QQQQ", c, 0xF0, r["fp"], r["lr"], r["sp"], r["pc"])
    c[0x110:0x120] = V0.to_bytes(16, "little")
    c[0x120:0x130] = (7).to_bytes(16, "little")  # v1
    struct.pack_into("<II", c, 0x310, r["fpcr"], r["fpsr"])
    return bytes(c)


def pe_header(base: int, size: int, exports: dict[str, int]) -> bytes:
    """The first page of a PE32+ ARM64 image: DOS header, NT headers, two sections and an export
    directory (at rva 0x400) naming `exports`."""
    p = bytearray(PAGE)
    p[0:2] = b"MZ"
    struct.pack_into("<I", p, 0x3C, 0x80)
    p[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", p, 0x84, MACHINE_ARM64, 2, 0x5F3A1B2C, 0, 0, 0xF0, 0x22)
    opt = 0x98
    struct.pack_into("<HBBIIIII", p, opt, 0x20B, 14, 0, 0x1000, 0x1000, 0, 0x1000, 0x1000)
    struct.pack_into("<QII", p, opt + 0x18, base, 0x1000, 0x200)  # ImageBase, alignments
    struct.pack_into("<HHHHHHI", p, opt + 0x28, 10, 0, 10, 0, 10, 0, 0)  # versions
    struct.pack_into("<IIIHH", p, opt + 0x38, size, 0x400, 0x1234, 1, 0x160)  # SizeOfImage ... Subsystem
    struct.pack_into("<QQQQII", p, opt + 0x48, 0x80000, 0x1000, 0x100000, 0x1000, 0, 16)
    names = sorted(exports)
    export_dir, strings = 0x400, 0x500
    struct.pack_into("<II", p, opt + 0x70, export_dir, 0x200)  # DataDirectory[0]: exports
    struct.pack_into("<II", p, opt + 0x70 + 3 * 8, PDATA_RVA, 8 * len(PDATA))  # [3]: exceptions
    sections = opt + 0xF0
    for i, (name, rva, flags) in enumerate(((b".text", 0x1000, 0x60000020), (b".data", 0x2000, 0xC0000040))):
        struct.pack_into("<8sIIIIIIHHI", p, sections + 40 * i, name, 0x1000, rva, 0x1000, rva, 0, 0, 0, 0, flags)
    functions, name_rvas, ordinals = export_dir + 0x28, export_dir + 0x28 + 4 * len(names), \
        export_dir + 0x28 + 8 * len(names)
    dll = strings
    p[dll : dll + 13] = b"ntoskrnl.exe\0"
    at = dll + 16
    struct.pack_into("<IIHHIIIIIII", p, export_dir, 0, 0, 0, 0, dll, 1, len(names), len(names),
                     functions, name_rvas, ordinals)
    for i, name in enumerate(names):
        struct.pack_into("<I", p, functions + 4 * i, exports[name])
        struct.pack_into("<I", p, name_rvas + 4 * i, at)
        struct.pack_into("<H", p, ordinals + 2 * i, i)
        p[at : at + len(name) + 1] = name.encode() + b"\0"
        at += len(name) + 1
    return bytes(p)


class Arm64Tables:
    """Translation tables built entry by entry; pages by PFN."""

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {ROOT_PFN: bytearray(PAGE)}
        self.next_table = 0x110

    def entry(self, pfn: int, index: int) -> int:
        return struct.unpack_from("<Q", self.pages[pfn], index * 8)[0]

    def set(self, pfn: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self.pages[pfn], index * 8, value)

    def _down(self, table: int, index: int) -> int:
        e = self.entry(table, index)
        if not e & VALID:
            child = self.next_table
            self.next_table += 1
            self.pages[child] = bytearray(PAGE)
            self.set(table, index, (child << 12) | TABLE_ENTRY)
            return child
        return (e >> 12) & 0xF_FFFF_FFFF

    def leaf_table(self, va: int, levels: int = 3) -> int:
        """The table `levels` steps below the root on the way to `va` (created as needed)."""
        table = ROOT_PFN
        for shift in (39, 30, 21)[:levels]:
            table = self._down(table, (va >> shift) & 0x1FF)
        return table

    def map(self, va: int, pfn: int, flags: int = KERNEL_RW, content: bytes = b"") -> None:
        self.set(self.leaf_table(va), (va >> 12) & 0x1FF, (pfn << 12) | flags)
        page = self.pages.setdefault(pfn, bytearray(PAGE))
        page[: len(content)] = content

    def pte(self, va: int, raw: int) -> None:
        """A level-3 entry written as is (the not-valid kinds)."""
        self.set(self.leaf_table(va), (va >> 12) & 0x1FF, raw)

    def block(self, va: int, pa: int, flags: int) -> None:
        """A 2 MiB block: a level-2 entry with bit 1 clear."""
        self.set(self.leaf_table(va, 2), (va >> 21) & 0x1FF, pa | (flags & ~TABLE))


def _ustr(text: str, buffer: int) -> bytes:
    n = len(text) * 2
    return struct.pack("<HHIQ", n, n, 0, buffer)


def build() -> Arm64Tables:
    t = Arm64Tables()
    t.set(ROOT_PFN, SELF_INDEX, (ROOT_PFN << 12) | TABLE_ENTRY | PXN | UXN)  # the self-map
    t.map(NT_BASE, PFN["nt_head"], KERNEL_RO, pe_header(NT_BASE, NT_SIZE, EXPORTS))
    t.map(NT_BASE + 0x1000, PFN["nt_text"], KERNEL_RX, text())
    data = bytearray(PAGE)
    data[0x10:0x20] = b"KiBugCheckData!!"
    data[0x100:0x110] = struct.pack("<QQ", POOL, POOL)  # PsLoadedModuleList: one entry
    for i, entry in enumerate(PDATA):
        struct.pack_into("<II", data, PDATA_RVA - 0x2000 + 8 * i, *entry)
    for rva, record in XDATA.items():
        data[rva - 0x2000 : rva - 0x2000 + len(record)] = record
    t.map(NT_BASE + 0x2000, PFN["nt_data"], KERNEL_RW, bytes(data))
    pool = bytearray(PAGE)  # the KLDR_DATA_TABLE_ENTRY of nt (64-bit offsets)
    head = NT_BASE + EXPORTS["PsLoadedModuleList"]
    full, short = "\\SystemRoot\\system32\\ntoskrnl.exe", "ntoskrnl.exe"
    pool[0:16] = struct.pack("<QQ", head, head)
    pool[0x30:0x44] = struct.pack("<QQI", NT_BASE, NT_BASE + 0x1000, NT_SIZE)
    pool[0x48:0x68] = _ustr(full, POOL + 0x200) + _ustr(short, POOL + 0x300)
    pool[0x78:0x7C] = struct.pack("<I", 0x1234)
    pool[0x9C:0xA0] = struct.pack("<I", 0x5F3A1B2C)
    pool[0x200 : 0x200 + 2 * len(full)] = full.encode("utf-16-le")
    pool[0x300 : 0x300 + 2 * len(short)] = short.encode("utf-16-le")
    pool[0x800:0x808] = struct.pack("<Q", (PFN["proto"] << 12) | KERNEL_RW)  # the prototype PTE
    pool[EXR - POOL : EXR - POOL + 0x98] = exception_record()
    pool[CXR - POOL : CXR - POOL + 0x390] = context(cxr_registers())
    t.map(POOL, PFN["pool"], KERNEL_RW, bytes(pool))
    t.map(STACK, PFN["stack"], KERNEL_RW, stack_page())
    t.map(USER_VA, PFN["user"], USER_RW, b"user page")
    t.block(BLOCK_VA, BLOCK_PA, KERNEL_RW)
    t.pages[PFN["block_page"]] = bytearray(b"in the 2 MiB block".ljust(PAGE, b"\0"))
    # not valid (Windows' ARM64 software PTEs): Protection in bits 1-5 (4 = ReadWrite)
    t.pte(TRANS_VA, (PFN["transition"] << 12) | (1 << 11) | (4 << 1))  # Transition 11, Prototype 10 clear
    t.pages[PFN["transition"]] = bytearray(b"standby page".ljust(PAGE, b"\0"))
    t.pte(PAGEFILE_VA, (0x1234 << 32) | (2 << 6) | (4 << 1))  # PageFileHigh 0x1234, PageFileLow 2
    t.pte(PROTO_VA, ((PROTO_PTE & 0xFFFF_FFFF_FFFF) << 16) | (1 << 10) | (1 << 1))  # ProtoAddress 16-63
    t.pages[PFN["proto"]] = bytearray(b"shared through a prototype".ljust(PAGE, b"\0"))
    t.pte(DEMAND_VA, 4 << 1)  # demand zero: PageFileHigh 0
    t.pte(ZERO_VA, 0)
    return t


def fields(**overrides: object) -> DumpHeaderFields:
    values: dict = dict(
        is64=True, machine=MACHINE_ARM64, build=22000, directory_table_base=TTBR,
        ps_loaded_module_list=NT_BASE + EXPORTS["PsLoadedModuleList"], number_processors=8,
        bugcheck_code=0x1C8, bugcheck_parameters=(0, 0, 0, 0), context=context(),
        exception=make_exception(0x80000003, PC), system_time=133_500_000_000_000_000,
        system_uptime=36_000_000_000, comment="kdshell ARM64 test dump",
    )
    values.update(overrides)
    return DumpHeaderFields(**values)


def write(tmp_path: Path, kind: str = "full", code: int = 0x1C8) -> Path:
    """The machine as a complete ("full"), kernel ("bitmap") or small ("triage") dump, of bug
    check 0x1C8 or (code=0x7E) of the exception whose records are in pool."""
    path = Path(tmp_path) / f"arm64-{kind}-{code:x}.dmp"
    header = fields() if code == 0x1C8 else fields(bugcheck_code=code, bugcheck_parameters=PARAMS_7E)
    if kind == "triage":
        pool = bytes(build().pages[PFN["pool"]])
        parts = TriageParts(
            stack=stack_page(), top_of_stack=STACK,  # TopOfStack: the lowest address saved
            drivers=[TriageDriverInfo("\\SystemRoot\\system32\\ntoskrnl.exe", NT_BASE, NT_SIZE, 0x5F3A1B2C, 0x1234)],
            data_blocks=[(NT_BASE + 0x1000, text()[:0x208])]
            + ([(EXR, pool[EXR - POOL : EXR - POOL + 0x98]), (CXR, pool[CXR - POOL : CXR - POOL + 0x390])]
               if code != 0x1C8 else []),
        )
        write_triage(path, header, parts)
        return path
    pages = {pfn: bytes(data) for pfn, data in build().pages.items()}
    if kind == "full":
        write_full(path, header, pages)
    else:
        write_bitmap(path, header, pages, 6)
    return path
