"""ARM64 dumps (issue 18, parts 1-3): the CONTEXT's registers in `r` and in expressions, AArch64
disassembly in WinDbg's syntax (u, ub, uf), and Windows' ARM64 translation tables (reads through
every level, a 2 MiB block, the not-valid kinds, !pte and !vtop).

The syntax tests replay public WinDbg output (register block: a user-mode ARM64 target's `r`;
disassembly: Microsoft's Arm64EC ABI page, an amsi!AmsiScanBuffer listing, a DumpAnalysis.org
post); the dump tests run on tests/arm64_machine.py, an ARM64 machine laid out from literal
layouts and written by kdshell's own writers (complete, kernel and small dumps).
"""
from __future__ import annotations

import struct

import pytest

import arm64_machine as A
import kdshell
from kdshell.arm64_text import psr_text, register_lines
from kdshell.disasm import for_machine
from kdshell.dumpfile.context import decode_context
from kdshell.errors import MemoryNotPresent
from kdshell.expr import Registers
from kdshell.memory import pte as P
from kdshell.memory.paging import ARM64, PageCache, Paging, SelfMap


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    d = tmp_path_factory.mktemp("arm64")
    return {kind: A.write(d, kind) for kind in ("full", "bitmap", "triage")}


@pytest.fixture
def full(dumps):
    with kdshell.open(dumps["full"]) as s:
        yield s


def lines(session, command):
    return session.capture(command).splitlines()


# -- registers -------------------------------------------------------------------------------
def test_context_decodes_every_register():
    regs = decode_context(A.MACHINE_ARM64, A.context())
    for name, value in A.registers().items():
        assert regs[name] == value, name
    assert regs["v0"] == A.V0 and regs["v1"] == 7 and regs["v31"] == 0
    assert regs["contextflags"] == 0x00400007
    assert {f"bvr{i}" for i in range(8)} | {"wcr0", "wcr1", "wvr1"} <= set(regs)


# A user-mode ARM64 target's `r` as WinDbg printed it (public: gef-extras' windbg.py quotes it).
WINDBG_R = """\
 x0=0000000000000078   x1=000002037b0069e0   x2=0000000000000010   x3=000000293a8ff9f0
 x4=000000293a8ffb90   x5=000000293a8ff9eb   x6=0000000000000000   x7=0000000000000000
 x8=0000000000000072   x9=0000000000000000  x10=0000000000000000  x11=ffffffffff817aa9
x12=00007ffea822efe0  x13=0000000000000967  x14=00007ffea8241b1e  x15=00007ffea822f008
x16=0000000000000000  x17=0000000000000000  x18=0000000000000000  x19=000002037b006d60
x20=000002037b0069e0  x21=000002037b004c10  x22=0000000000000010  x23=000000007ffe03c0
x24=0000000000000001  x25=0000000000000000  x26=000000293a8ff9e0  x27=0000000000000010
x28=0000000000000000   fp=000000293a8ffc10   lr=00007ffea80f7388   sp=000000293a8ff9e0
 pc=00007ffea80e30f4  psr=60000000 -ZC- EL0""".splitlines()


def test_register_block_is_windbgs():
    regs = {}
    for line in WINDBG_R:
        for cell in line.split():
            if "=" in cell:
                name, value = cell.split("=")
                regs[name] = int(value, 16)
    regs["cpsr"] = regs.pop("psr")
    assert register_lines(regs) == WINDBG_R
    assert psr_text(0x80000005) == "psr=80000005 N--- EL1"
    assert psr_text(0x30000000) == "psr=30000000 --CV EL0"


def test_r_on_the_arm64_dump(full):
    r = A.registers()
    assert lines(full, "r") == [
        " x0=00000000000001c8   x1=0101010101010101   x2=0202020202020202   x3=0303030303030303",
        " x4=0404040404040404   x5=0505050505050505   x6=0606060606060606   x7=0707070707070707",
        " x8=0808080808080808   x9=0909090909090909  x10=0a0a0a0a0a0a0a0a  x11=0b0b0b0b0b0b0b0b",
        "x12=0c0c0c0c0c0c0c0c  x13=0d0d0d0d0d0d0d0d  x14=0e0e0e0e0e0e0e0e  x15=0f0f0f0f0f0f0f0f",
        "x16=1010101010101010  x17=1111111111111111  x18=1212121212121212  x19=1313131313131313",
        "x20=1414141414141414  x21=1515151515151515  x22=1616161616161616  x23=1717171717171717",
        "x24=1818181818181818  x25=1919191919191919  x26=1a1a1a1a1a1a1a1a  x27=1b1b1b1b1b1b1b1b",
        f"x28=1c1c1c1c1c1c1c1c   fp={r['fp']:016x}   lr={r['lr']:016x}   sp={r['sp']:016x}",
        f" pc={A.PC:016x}  psr=60000005 -ZC- EL1",
        "nt!KeBugCheckEx+0x24:",
        "fffff804`12201024 94000007 bl          nt!KeBugCheck2",
    ]


def test_r_shows_and_sets_single_registers(full):
    assert lines(full, "r x0") == ["x0=00000000000001c8"]
    assert lines(full, "r w1, x29, x30, pc, psr, xip0, v0, d0") == [
        f"w1=01010101 x29={A.SP:016x} x30={A.NT_BASE + 0x1118:016x} pc={A.PC:016x} psr=60000005 "
        "xip0=1010101010101010 v0=00112233445566778899aabbccddeeff d0=8899aabbccddeeff"]
    full.capture("r w2=0xfffffffff; r x3=@x1+1")  # a w register keeps the x register's top half
    assert lines(full, "r x2, x3") == ["x2=02020202ffffffff x3=0101010101010102"]
    assert lines(full, "r fpcr, fpsr, cpsr") == ["fpcr=03000000 fpsr=00000010 cpsr=60000005"]
    assert "Bad register" in full.capture("r rax")


def test_expressions_know_every_arm64_register(full):
    def value(text):
        return full.capture(f"? {text}").split("= ")[-1].strip().replace("`", "")

    assert value("@$ip") == f"{A.PC:016x}"
    assert value("@$csp") == f"{A.SP:016x}"
    assert value("@$ra") == f"{A.NT_BASE + 0x1118:016x}"
    assert value("@$retreg") == f"{0x1C8:016x}"
    assert value("@fp - @sp + 0x20") == f"{0x20:016x}"  # mov x29, sp
    assert value("@w4 + @wip1") == f"{0x04040404 + 0x11111111:016x}"
    assert value("x5 + 1") == "0505050505050506"  # a bare register name, as WinDbg takes it
    assert value("poi(@sp)") == f"{A.SP + 0x50:016x}"  # the frame record: the caller's fp
    assert value("@s0") == "00000000ccddeeff"
    regs = Registers(A.registers(), True)
    assert regs.arm64 and regs.ip == A.PC and regs.sp == A.SP
    assert not Registers({"rip": 1, "rsp": 2}, True).arm64


# -- disassembly -----------------------------------------------------------------------------
class Words:
    """Code words at an address, for the disassembler (read_partial, as VirtualMemory gives)."""

    def __init__(self, base, words):
        self.base, self.code = base, b"".join(struct.pack("<I", w) for w in words)

    def read_partial(self, address, size):
        data, valid = bytearray(size), bytearray(size)
        for i in range(size):
            off = address + i - self.base
            if 0 <= off < len(self.code):
                data[i], valid[i] = self.code[off], 1
        return bytes(data), valid, []


def symbols(table):
    def symbolize(address):
        for name, (start, size) in table.items():
            if start <= address < start + size:
                return name, address - start
        return None
    return symbolize


def test_disassembly_replays_windbgs_public_arm64_listings():
    # Microsoft's Arm64EC ABI page (kernelbase!GetMachineTypeAttributes)
    dis = for_machine(A.MACHINE_ARM64, symbols({"kernelbase!GetMachineTypeAttributes": (0x1_80243810, 0x100),
                                                "kernelbase!#__security_push_cookie": (0x1_8013D1A0, 0x40)}))
    mem = Words(0x1_80243810, (0xD503237F, 0xA9BC7BFD, 0xA90153F3, 0xA9025BF5, 0xF9001BF9, 0x910003FD,
                               0x97FBE65E, 0xD10083FF))
    assert dis.listing(dis.decode(mem, 0x1_80243810, 8)) == [
        "kernelbase!GetMachineTypeAttributes:",
        "00000001`80243810 d503237f pacibsp",
        "00000001`80243814 a9bc7bfd stp         fp,lr,[sp,#-0x40]!",
        "00000001`80243818 a90153f3 stp         x19,x20,[sp,#0x10]",
        "00000001`8024381c a9025bf5 stp         x21,x22,[sp,#0x20]",
        "00000001`80243820 f9001bf9 str         x25,[sp,#0x30]",
        "00000001`80243824 910003fd mov         fp,sp",
        "00000001`80243828 97fbe65e bl          kernelbase!#__security_push_cookie",
        "00000001`8024382c d10083ff sub         sp,sp,#0x20",
    ]
    # an amsi!AmsiScanBuffer listing: xip1, a branch and a literal load by symbol
    dis = for_machine(A.MACHINE_ARM64, symbols({"amsi!AmsiScanBuffer": (0x7FF8_BAD44E30, 0x200)}))
    mem = Words(0x7FF8_BAD44EF0, (0xD63F0220, 0xD63F01E0, 0x14000002, 0x180000E0, 0xA8C47BFD, 0xA9426BF9,
                                  0xA9415BF5, 0xA8C353F3))
    assert dis.listing(dis.decode(mem, 0x7FF8_BAD44EF0, 8)) == [
        "amsi!AmsiScanBuffer+0xc0:",
        "00007ff8`bad44ef0 d63f0220 blr         xip1",
        "00007ff8`bad44ef4 d63f01e0 blr         x15",
        "00007ff8`bad44ef8 14000002 b           amsi!AmsiScanBuffer+0xd0",
        "00007ff8`bad44efc 180000e0 ldr         w0,amsi!AmsiScanBuffer+0xe8",
        "00007ff8`bad44f00 a8c47bfd ldp         fp,lr,[sp],#0x40",
        "00007ff8`bad44f04 a9426bf9 ldp         x25,x26,[sp,#0x20]",
        "00007ff8`bad44f08 a9415bf5 ldp         x21,x22,[sp,#0x10]",
        "00007ff8`bad44f0c a8c353f3 ldp         x19,x20,[sp],#0x30",
    ]
    # a DumpAnalysis.org post (whitespace as the blog kept it)
    dis = for_machine(A.MACHINE_ARM64)
    got = dis.listing(dis.decode(Words(0x7FF7_D061AFDC, (0xF9533F69, 0xD2800028, 0xF9000128)), 0x7FF7_D061AFDC, 3))
    assert [" ".join(line.split()) for line in got] == [
        "00007ff7`d061afdc f9533f69 ldr x9,[x27,#0x2678]", "00007ff7`d061afe0 d2800028 mov x8,#1",
        "00007ff7`d061afe4 f9000128 str x8,[x9]"]


def test_disassembly_syntax_details():
    dis = for_machine(A.MACHINE_ARM64)
    # beq (not b.eq), upper-case hex, an extend inside brackets without its comma, one outside with it,
    # w16-w18 by their ABI names, an unreadable word
    mem = Words(0x1000, (0x54000040, 0xD10D43FF, 0xB8627908, 0x8B284D28, 0x2A1103E0, 0xD4200000))
    got = [dis.format(line) for line in dis.decode(mem, 0x1000, 7)]
    assert got == [
        "00000000`00001000 54000040 beq         00000000`00001008",
        "00000000`00001004 d10d43ff sub         sp,sp,#0x350",
        "00000000`00001008 b8627908 ldr         w8,[x8,x2 lsl #2]",
        "00000000`0000100c 8b284d28 add         x8,x9,w8,uxtw #3",
        "00000000`00001010 2a1103e0 mov         w0,wip1",
        "00000000`00001014 d4200000 brk         #0",
        "00000000`00001018 ???????? ???",
    ]
    # an adrp pairs with the add/load/store that uses its register, unless the register is written first
    dis = for_machine(A.MACHINE_ARM64, symbols({"nt!Data": (0x2010, 0x10)}))
    mem = Words(0x1000, (0xB0000008, 0xAA0003E8, 0x91004108, 0xB0000009, 0xF9000100, 0xF9400D29))
    assert [line.operands for line in dis.decode(mem, 0x1000, 6)] == [
        "x8,00000000`00002000", "x8,x0", "x8,x8,#0x10", "x9,nt!Data+0x8", "x0,[x8]", "x9,[x9,nt!Data+0x8]"]
    assert dis.is_call(dis.decode(Words(0, (0x94000001,)), 0, 1)[0])
    assert not dis.is_call(dis.decode(Words(0, (0x14000001,)), 0, 1)[0])


NT_LISTING = [
    "nt!KeBugCheckEx:",
    "fffff804`12201000 d503237f pacibsp",
    "fffff804`12201004 a9be7bfd stp         fp,lr,[sp,#-0x20]!",
    "fffff804`12201008 910003fd mov         fp,sp",
    "fffff804`1220100c b0000008 adrp        x8,nt!KiBugCheckData",
    "fffff804`12201010 91004108 add         x8,x8,nt!KiBugCheckData",
    "fffff804`12201014 f9000100 str         x0,[x8]",
    "fffff804`12201018 b0000009 adrp        x9,nt!KiBugCheckData+0x8",
    "fffff804`1220101c f9400d29 ldr         x9,[x9,nt!KiBugCheckData+0x8]",
    "fffff804`12201020 b4000040 cbz         x0,nt!KeBugCheckEx+0x28",
    "fffff804`12201024 94000007 bl          nt!KeBugCheck2",
    "fffff804`12201028 37180081 tbnz        w1,#3,nt!KeBugCheckEx+0x38",
    "fffff804`1220102c a8c27bfd ldp         fp,lr,[sp],#0x20",
    "fffff804`12201030 d50323ff autibsp",
    "fffff804`12201034 d65f03c0 ret",
    "fffff804`12201038 14000002 b           nt!KeBugCheck2",
    "fffff804`1220103c d503201f nop",
    "nt!KeBugCheck2:",
    "fffff804`12201040 a9bf7bfd stp         fp,lr,[sp,#-0x10]!",
    "fffff804`12201044 910003fd mov         fp,sp",
    "fffff804`12201048 58007ec0 ldr         x0,nt!KiBugCheckData+0x10",
    "fffff804`1220104c d43e0000 brk         #0xF000",
]


@pytest.mark.parametrize("kind", ["full", "bitmap"])
def test_u_symbolises_branches_and_adrp_pairs(dumps, kind):
    with kdshell.open(dumps[kind]) as s:
        assert lines(s, "u nt!KeBugCheckEx L14") == NT_LISTING
        assert lines(s, "u") == ["nt!KeBugCheck2+0x10:"] + [  # u goes on where the last one stopped
            f"fffff804`{0x12201050 + 4 * i:08x} 00000000 udf         #0" for i in range(8)]


def test_ub_steps_back_four_bytes_an_instruction(full):
    assert lines(full, "ub @pc L3") == [
        "nt!KeBugCheckEx+0x18:",
        "fffff804`12201018 b0000009 adrp        x9,nt!KiBugCheckData+0x8",
        "fffff804`1220101c f9400d29 ldr         x9,[x9,nt!KiBugCheckData+0x8]",
        "fffff804`12201020 b4000040 cbz         x0,nt!KeBugCheckEx+0x28",
    ]
    assert lines(full, "ub nt!KeBugCheck2 L1") == ["nt!KeBugCheckEx+0x3c:", "fffff804`1220103c d503201f nop"]


def test_uf_follows_arm64_branches(full):
    want = NT_LISTING[:10] + ["nt!KeBugCheckEx+0x24:", NT_LISTING[10], "nt!KeBugCheckEx+0x28:", NT_LISTING[11],
                              "nt!KeBugCheckEx+0x2c:"] + NT_LISTING[12:15] + ["nt!KeBugCheckEx+0x38:", NT_LISTING[15]]
    assert lines(full, "uf nt!KeBugCheckEx") == want
    assert lines(full, "uf /c nt!KeBugCheckEx") == [
        "nt!KeBugCheckEx (fffff804`12201000)", "  nt!KeBugCheckEx+0x24 (fffff804`12201024):",
        "    call to nt!KeBugCheck2"]


def test_small_dump_r_and_u(dumps):
    """A small memory dump has the context and the code block at pc, and nt by name only."""
    with kdshell.open(dumps["triage"]) as s:
        assert lines(s, "r")[-3:] == [f" pc={A.PC:016x}  psr=60000005 -ZC- EL1", "nt+0x1024:",
                                      "fffff804`12201024 94000007 bl          nt+0x1040"]
        assert lines(s, "u nt+0x1044 L2") == ["nt+0x1044:", "fffff804`12201044 910003fd mov         fp,sp",
                                              "fffff804`12201048 58007ec0 ldr         x0,nt+0x2020"]
        assert lines(s, "!pte @pc") == ["Levels not implemented for this platform (MmPteBase is unknown in this dump)"]


# -- paging ----------------------------------------------------------------------------------
class Pages:
    def __init__(self, pages):
        self.pages = pages

    def page(self, pfn):
        if pfn not in self.pages:
            raise MemoryNotPresent(pfn << 12, "not in the test's pages", physical=True)
        return bytes(self.pages[pfn])


def paging():
    return Paging(PageCache(Pages(A.build().pages)), A.TTBR, ARM64, P.PteFormat.for_kernel("arm64", 22000))


def test_walk_reads_through_every_level_and_the_block():
    p = paging()
    assert p.dtb == 0x100000  # the ASID and CnP bits of the TTBR are not the table's address
    assert p.translate(A.NT_BASE + 0x1024) == (A.PFN["nt_text"] << 12) | 0x24
    assert p.translate(A.USER_VA + 5) == (A.PFN["user"] << 12) | 5  # the low half, same table
    assert p.translate(A.BLOCK_VA + 0x3008) == A.BLOCK_PA + 0x3008  # bit 1 clear at level 2
    assert p.translate(A.BLOCK_VA + 0x1F_FFFF) == A.BLOCK_PA + 0x1F_FFFF
    assert p.translate(A.TRANS_VA + 8) == (A.PFN["transition"] << 12) | 8
    assert p.translate(A.PROTO_VA) == A.PFN["proto"] << 12  # the prototype PTE, followed once
    w = p.walk(A.NT_BASE + 0x2000)
    assert [s.level.name for s in w.steps] == ["PXE", "PPE", "PDE", "PTE"] and not w.large
    assert [s.entry_address for s in w.steps] == [0x100000 + 0x1F0 * 8, 0x110000 + 0x10 * 8, 0x111000 + 0x91 * 8,
                                                  0x112000 + 2 * 8]
    for va, why in ((A.PAGEFILE_VA, "the page is in page file 2 at offset 1234"),
                    (A.DEMAND_VA, "demand-zero page"), (A.ZERO_VA, "nothing committed"),
                    (0x0000_8000_0000_0000, "not a canonical 48-bit address")):
        with pytest.raises(MemoryNotPresent, match=why):
            p.translate(va)


def test_a_1gib_block_at_level_1():
    t = A.Arm64Tables()
    va = 0xFFFF_C000_4000_0000
    t.set(t.leaf_table(va, 1), (va >> 30) & 0x1FF, 0x8000_0000 | (A.KERNEL_RW & ~A.TABLE))
    t.pages[(0x8000_0000 + 0x123_4000) >> 12] = bytearray(b"1 GiB".ljust(A.PAGE, b"\0"))
    p = Paging(PageCache(Pages(t.pages)), 0x100000, ARM64, P.PteFormat("arm64"))
    assert p.translate(va + 0x123_4567) == 0x8123_4567
    assert p.walk(va).large


def test_arm64_software_ptes():
    fmt = P.PteFormat.for_kernel("arm64", 22000, l1tf_bit=45)
    assert fmt.invalid_mask == 0  # no L1TF swizzling on ARM64
    valid = P.decode((0xF_1234_5678 << 12) | A.KERNEL_RW, fmt)
    assert (valid.kind, valid.pfn) == (P.VALID, 0xF_1234_5678)
    t = P.decode((0xAB_CDEF_0123 << 12) | (1 << 11) | (6 << 1), fmt)  # a 40-bit transition PFN
    assert (t.kind, t.pfn, t.protection) == (P.TRANSITION, 0xAB_CDEF_0123, 6)
    proto = P.decode((0x9B00_0001_0800 << 16) | (1 << 10) | (1 << 1), fmt)
    assert (proto.kind, proto.proto_address, proto.protection) == (P.PROTOTYPE, 0xFFFF_9B00_0001_0800, 1)
    assert P.decode((0xFFFF_FFFF_0000 << 16) | (1 << 10), fmt).kind == P.VAD
    pf = P.decode((0x1234 << 32) | (0xF << 6) | (4 << 1), fmt)
    assert (pf.kind, pf.pagefile, pf.offset, pf.protection) == (P.PAGEFILE, 0xF, 0x1234, 4)
    assert P.decode(0x18 << 1, fmt).kind == P.DEMAND_ZERO
    assert P.decode(0xFFFF_FFFF_0000_0008, fmt).kind == P.VAD


def test_access_text_applies_the_table_limits():
    data, code, user = A.KERNEL_RW | (A.PFN["nt_data"] << 12), A.KERNEL_RX, A.USER_RW
    assert P.arm64_access_text([], data) == \
        "Access: EL1 read/write, EL0 none; execute: EL1 no (PXN), EL0 no (no EL0 access)"
    assert P.arm64_access_text([], code).endswith("execute: EL1 yes, EL0 no (no EL0 access)")
    assert P.arm64_access_text([P.A64_PXN_TABLE], code).endswith("execute: EL1 no (PXNTable), EL0 no (no EL0 access)")
    assert P.arm64_access_text([], user) == \
        "Access: EL1 read/write, EL0 read/write; execute: EL1 no (EL0 may write it), EL0 yes"
    assert P.arm64_access_text([P.A64_AP_TABLE_NO_EL0], user).startswith("Access: EL1 read/write, EL0 none;")
    clean = (user | A.NOT_DIRTY) & ~A.OWNER
    assert P.arm64_access_text([], clean).startswith("Access: EL1 read/write (clean: the first write faults), EL0 none")
    assert P.arm64_access_text([P.A64_AP_TABLE_READ_ONLY], clean).startswith("Access: EL1 read-only,")


def test_self_map_is_found_in_the_top_table():
    p = paging()
    smap = SelfMap.find(ARM64, p.pages, A.TTBR)
    assert smap.pte_base == A.PTE_BASE


def _selfmap(va):
    """The entry addresses of a VA through the self-map at PTE_BASE (x64-unwind.md §6.3's formula)."""
    out, a = [], va
    for _ in range(4):
        a = A.PTE_BASE + ((a >> 9) & 0x7F_FFFF_FFF8)
        out.append(a)
    return out[::-1]


def _head(va):
    pxe, ppe, pde, pte = _selfmap(va)
    return [" " * 43 + f"VA {va:016x}",
            f"PXE at {pxe:016X}    PPE at {ppe:016X}    PDE at {pde:016X}    PTE at {pte:016X}"]


TABLES = "contains 0000000000110003  contains 0000000000111003  contains 0000000000112003  "
TABLE_FLAGS = "pfn 110       -G-D---KWEV  pfn 111       -G-D---KWEV  pfn 112       -G-D---KWEV  "
INDENT = " " * 81


def test_pte_on_valid_pages(full):
    # code: read-only, EL1 may execute it (PXN clear)
    assert lines(full, "!pte @pc") == _head(A.PC) + [
        TABLES + "contains 0040000000201783", TABLE_FLAGS + "pfn 201       -G--A--KREV",
        "Access: EL1 read-only, EL0 none; execute: EL1 yes, EL0 no (no EL0 access)"]
    # data: PXN set, so no E, although a writable kernel page
    data = A.NT_BASE + 0x2000
    assert lines(full, f"!pte {data:x}") == _head(data) + [
        TABLES + "contains 00E0000000202703", TABLE_FLAGS + "pfn 202       -G-DA--KW-V",
        "Access: EL1 read/write, EL0 none; execute: EL1 no (PXN), EL0 no (no EL0 access)"]
    # a PTE's own address (inside the self-map) shows the page it maps
    assert lines(full, f"!pte {_selfmap(data)[3]:x}") == lines(full, f"!pte {data:x}")
    # a user page: U, not global, writable at EL0 and so never executable at EL1
    got = lines(full, f"!pte {A.USER_VA:x}")
    assert got[0] == " " * 43 + f"VA {A.USER_VA:016x}"
    assert got[2].endswith("contains 0080000000207F43") and got[3].endswith("pfn 207       ---DA--UWEV")
    assert got[4] == "Access: EL1 read/write, EL0 read/write; execute: EL1 no (EL0 may write it), EL0 yes"


def test_pte_on_the_2mib_block(full):
    va = A.BLOCK_VA + 0x3008
    got = lines(full, f"!pte {va:x}")
    assert got[:2] == _head(va)
    assert got[2].startswith(TABLES[:54] + "contains 00E0000000600701  contains ")
    assert got[3] == TABLE_FLAGS[:54] + "pfn 600       -GLDA--KW-V  LARGE PAGE pfn 603"
    assert got[4] == "Access: EL1 read/write, EL0 none; execute: EL1 no (PXN), EL0 no (no EL0 access)"


@pytest.mark.parametrize("va,entry,details", [
    (A.TRANS_VA, "0000000000205808", ["Transition: 205", "Protect: 4 - ReadWrite"]),
    (A.PAGEFILE_VA, "0000123400000088", ["PageFile: 2", "Offset: 1234", "Protect: 4 - ReadWrite"]),
    (A.PROTO_VA, "9B00000108000402", ["Proto: FFFF9B0000010800", "Protect: 1 - ReadOnly"]),
    (A.DEMAND_VA, "0000000000000008", ["DemandZero", "Protect: 4 - ReadWrite"]),
    (A.ZERO_VA, "0000000000000000", []),
])
def test_pte_on_not_valid_entries(full, va, entry, details):
    assert lines(full, f"!pte {va:x}") == _head(va) + [
        TABLES + f"contains {entry}", TABLE_FLAGS + "not valid"] + [INDENT + d for d in details]


def test_vtop_on_arm64(full):
    data = A.NT_BASE + 0x2000
    assert lines(full, f"!vtop 0 {data:x}") == [
        f"Arm64VtoP: Virt {data:016x}, pagedir 0000000000100000",
        "Arm64VtoP: PXE 0000000000100f80", "Arm64VtoP: PPE 0000000000110080",
        "Arm64VtoP: PDE 0000000000111488", "Arm64VtoP: PTE 0000000000112010",
        "Arm64VtoP: Mapped phys 0000000000202000",
        "Arm64VtoP: Access: EL1 read/write, EL0 none; execute: EL1 no (PXN), EL0 no (no EL0 access)",
        f"Virtual address {data:016x} translates to physical address 202000."]
    block = lines(full, f"!vtop 100 {A.BLOCK_VA + 0x3008:x}")  # the DirBase as a PFN
    assert block[3:6] == ["Arm64VtoP: PDE 0000000000111490", "Arm64VtoP: Large page mapped phys 0000000000603008",
                          "Arm64VtoP: Access: EL1 read/write, EL0 none; execute: EL1 no (PXN), EL0 no (no EL0 access)"]
    failed = lines(full, f"!vtop 0 {A.PAGEFILE_VA:x}")
    assert failed[-2:] == [
        "Arm64VtoP: PTE 0000123400000088 the page is in page file 2 at offset 1234; page-file contents are not "
        "in a crash dump", f"Virtual address {A.PAGEFILE_VA:016x} translation fails, error 0xD0000147."]
    assert lines(full, f"!vtop 0 {A.TRANS_VA:x}")[-2] == "Arm64VtoP: Transition phys 0000000000205000"


@pytest.mark.parametrize("kind", ["full", "bitmap"])
def test_reads_through_the_tables(dumps, kind):
    with kdshell.open(dumps[kind]) as s:
        assert lines(s, f"da {A.TRANS_VA:x}") == [f"fffff804`12210000  \"standby page\""]
        assert lines(s, f"da {A.PROTO_VA:x}") == [f"fffff804`12212000  \"shared through a prototype\""]
        assert lines(s, f"da {A.BLOCK_VA + 0x3000:x}") == [f"fffff804`12403000  \"in the 2 MiB block\""]
        assert lines(s, f"da {A.USER_VA:x}") == [f"00007ff6`12340000  \"user page\""]
        assert lines(s, f"db {A.PAGEFILE_VA:x} L4") == [
            f"fffff804`12211000  ?? ?? ?? ??" + " " * 38 + "????"]
        assert lines(s, "lm")[1].startswith("fffff804`12200000 fffff804`12203000   nt ")


def test_commands_that_do_not_apply_to_arm64_say_so(full):
    # the kernel-object commands work on ARM64 (tests/test_arm64_objects.py); the CPUID ones do not apply
    for command in ("!cpuinfo", "!sysinfo cpuspeed"):
        out = lines(full, command)
        assert len(out) == 1 and "does not apply to ARM64 dumps" in out[0], command
    # the work queues come from the kernel's PDB types, as on x64: without them, one line naming them
    out = lines(full, "!exqueue")
    assert len(out) == 1 and "_EX_PARTITION.WorkQueues" in out[0] and "_ENODE.ExWorkQueues" in out[0], out
    # the KPRCB's queues work from the kernel's PDB (tests/test_machines_arm64.py); without it, one line
    for command in ("!ready", "!dpcs", "!timer"):
        out = lines(full, command)
        assert len(out) == 1 and "not known for ARM64 build 22000" in out[0], command
