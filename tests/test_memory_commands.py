"""The memory commands as a user sees them: exact WinDbg lines on the real corpus dumps and on
synthetic dumps with real page tables (x64 4/5-level, PAE, non-PAE), written by our writers."""
from pathlib import Path

import pytest

import kdshell
from conftest import FULL_TRUNCATED, MINI_17763, TRIAGE_19041
from dumpfactory import KDBG_VA32, KDBG_VA64, page_bytes, write_kind
from test_paging import K, PAE, PAGE, X64_5, X86, Machine, kernel_machine

# mov [rsp+8],rcx / sub rsp,28h / mov eax,[rbx] / lea r8,[rip-..] / call rel32 / mov rax,gs:[188h]
# / add rsp,-80h / ret / int 3
CODE = bytes.fromhex("48894c2408" "4883ec28" "8b03" "4c8d0514f0f9ff" "e8e608e9ff" "65488b042588010000"
                     "4883c480" "c3" "cc")


def kdbg_block(pte_base: int, kern_base: int, flags: int = 0) -> bytes:
    b = bytearray(0x380)
    b[0x10:0x18] = b"KDBG\x80\x03\x00\x00"
    b[0x18:0x20] = kern_base.to_bytes(8, "little")
    b[0x36:0x38] = flags.to_bytes(2, "little")
    b[0x360:0x368] = pte_base.to_bytes(8, "little")
    return bytes(b)


def patch(m: Machine, pfn: int, offset: int, data: bytes) -> None:
    page = bytearray(m.pages[pfn])
    page[offset : offset + len(data)] = data
    m.pages[pfn] = page


def x64_machine() -> Machine:
    m = kernel_machine()
    patch(m, 0x5100, 0xB20, kdbg_block(0xFFFFF68000000000, 0xFFFFF8047BA00000))
    patch(m, 0x5001, 0x100, CODE)
    m.map(0xFFFFF80412345000, 0x5200)  # the default context's stack page
    return m


@pytest.fixture(scope="module")
def triage():
    with kdshell.open(TRIAGE_19041) as s:
        yield s


@pytest.fixture
def x64(tmp_path):
    m = x64_machine()
    with kdshell.open(write_kind(tmp_path, "full", m.bytes_pages(), directory_table_base=m.dtb)) as s:
        yield s


def lines(session, command):
    return session.capture(command).splitlines()


# -- the real small dumps ------------------------------------------------------------------------
def test_dq_rsp_on_the_triage_dump(triage):
    assert lines(triage, "dq @rsp L4") == [
        "ffff8504`29892120  00000000`00000000 fffff804`8b5a2e2c",
        "ffff8504`29892130  00000000`00000000 00000000`00000000",
    ]
    assert lines(triage, "dq ffff8504`29890ee8 L2") == ["ffff8504`29890ee8  fffff804`7be0f4e1 00000000`0000007e"]


def test_db_of_the_kdbg_copy(triage):
    assert lines(triage, "db fffff804`7c600b20 L20") == [
        "fffff804`7c600b20  70 07 64 7c 04 f8 ff ff-70 07 64 7c 04 f8 ff ff  p.d|....p.d|....",
        "fffff804`7c600b30  4b 44 42 47 80 03 00 00-00 00 a0 7b 04 f8 ff ff  KDBG.......{....",
    ]
    assert lines(triage, "db fffff804`7c600b30 L4") == [
        "fffff804`7c600b30  4b 44 42 47                                      KDBG"]
    assert lines(triage, "da fffff804`7c600b30") == ['fffff804`7c600b30  "KDBG.."']


def test_missing_memory_prints_question_marks(triage):
    assert lines(triage, "dq ffff8504`29890ee0 L4") == [
        "ffff8504`29890ee0  ????????`???????? fffff804`7be0f4e1",
        "ffff8504`29890ef0  00000000`0000007e ffffffff`c0000005",
    ]
    assert lines(triage, "db ffff8504`29890ee0 L10") == [
        "ffff8504`29890ee0  ?? ?? ?? ?? ?? ?? ?? ??-e1 f4 e0 7b 04 f8 ff ff  ????????...{...."]
    assert lines(triage, "dd 0 L4") == ["00000000`00000000  ???????? ???????? ???????? ????????"]
    assert lines(triage, "da 0") == ['00000000`00000000  "' + "?" * 48 + '"']
    assert lines(triage, "u 0 L2") == ["00000000`00000000 ??              ???", "00000000`00000001 ??              ???"]


def test_other_display_formats(triage):
    assert lines(triage, "dd @rsp-8 L8") == [
        "ffff8504`29892118  00000018 00000000 00000000 00000000",
        "ffff8504`29892128  8b5a2e2c fffff804 00000000 00000000",
    ]
    assert lines(triage, "dw @rsp L8") == ["ffff8504`29892120  0000 0000 0000 0000 2e2c 8b5a f804 ffff"]
    assert lines(triage, "dc @rsp L4") == [
        "ffff8504`29892120  00000000 00000000 8b5a2e2c fffff804  ........,.Z....."]
    assert lines(triage, "dp @rsp L2") == ["ffff8504`29892120  00000000`00000000 fffff804`8b5a2e2c"]
    # the value is inside amdppm; without its symbols WinDbg shows module+offset
    assert lines(triage, "dps @rsp L2") == ["ffff8504`29892120  00000000`00000000",
                                            "ffff8504`29892128  fffff804`8b5a2e2c amdppm+0x22e2c"]
    assert lines(triage, "dyb @rsp+8 L4") == [
        "                   76543210 76543210 76543210 76543210",
        "                   -------- -------- -------- --------",
        "ffff8504`29892128  00101100 00101110 01011010 10001011  2c 2e 5a 8b",
    ]
    assert lines(triage, "du fffff804`7c600b30 L2") == ['fffff804`7c600b30  ".."']  # 0x444b 0x4742
    assert lines(triage, "dq /c 1 @rsp L2") == ["ffff8504`29892120  00000000`00000000",
                                               "ffff8504`29892128  fffff804`8b5a2e2c"]


def test_dps_uses_the_symbol_hook(triage):
    triage.symbolize = lambda a: ("nt!KiSomething", 0x2c) if a == 0xFFFFF8048B5A2E2C else None
    try:
        assert lines(triage, "dps @rsp+8 L1") == ["ffff8504`29892128  fffff804`8b5a2e2c nt!KiSomething+0x2c"]
    finally:
        triage.symbolize = lambda a: None


def test_empty_line_continues_the_display(triage):
    triage.capture("dq @rsp L2")
    assert triage.repeat == "dq L2"
    with triage.out.capture() as buf:
        triage.repeat_last()
    assert "".join(buf).splitlines() == ["ffff8504`29892130  00000000`00000000 00000000`00000000"]
    assert lines(triage, "d L2") == ["ffff8504`29892140  00000000`00060001 fffff804`8b58313f"]
    triage.capture("u @rip L1")
    assert lines(triage, "u L1") == ["fffff804`8b583350 eb0b            jmp     fffff804`8b58335d"]


def test_r_on_the_triage_dump(triage):
    assert lines(triage, "r") == [
        "rax=ffffc08be4da6240 rbx=0000000000000001 rcx=0000000000000020",
        "rdx=0000000000000001 rsi=ffffc08be457fcf0 rdi=ffffc08be52e7310",
        "rip=fffff8048b58334c rsp=ffff850429892120 rbp=fffff8048b58f598",
        " r8=ffff9b0003360008  r9=0000000000000044 r10=0000000000000020",
        "r11=0000000000000020 r12=0000000000000015 r13=fffff8048b590b01",
        "r14=0000000000000000 r15=0000000000000015",
        "iopl=0         nv up ei pl zr na pe nc",
        "cs=0010  ss=0018  ds=002b  es=002b  fs=0053  gs=002b             efl=00050246",
        "fffff804`8b58334c 43891401        mov     dword ptr [r9+r8],edx ds:ffff9b00`0336004c=????????",
    ]
    assert lines(triage, "r rax") == ["rax=ffffc08be4da6240"]
    assert lines(triage, "r eax, @rbx, zf") == ["eax=e4da6240 rbx=0000000000000001 zf=1"]
    assert lines(triage, "r foo") == ["Bad register error at 'foo'"]


def test_r_sets_registers_in_the_session_only():
    with kdshell.open(TRIAGE_19041) as s:
        assert lines(s, "r rax=0x1234; r rax") == ["rax=0000000000001234"]
        assert lines(s, "r al = 0ff; r rax") == ["rax=00000000000012ff"]
        assert lines(s, "r $t0 = @rsp + 8; ? $t0; r $t0") == [
            f"Evaluate expression: {0xFFFF850429892128 - (1 << 64)} = ffff8504`29892128", "$t0=ffff850429892128"]
        assert lines(s, "dq $t0 L1") == ["ffff8504`29892128  fffff804`8b5a2e2c"]
        assert lines(s, "r $ip = 1") == ["Bad register error at '$ip'"]
    with kdshell.open(TRIAGE_19041) as s:  # the dump itself is untouched
        assert lines(s, "r rax") == ["rax=ffffc08be4da6240"]


def test_u_and_ub_on_the_triage_dump(triage):
    assert lines(triage, "u @rip L4") == [
        "fffff804`8b58334c 43891401        mov     dword ptr [r9+r8],edx",
        "fffff804`8b583350 eb0b            jmp     fffff804`8b58335d",
        "fffff804`8b583352 6643891401      mov     word ptr [r9+r8],dx",
        "fffff804`8b583357 eb04            jmp     fffff804`8b58335d",
    ]
    assert lines(triage, "ub @rip L3") == [
        "fffff804`8b583344 751c            jne     fffff804`8b583362",
        "fffff804`8b583346 4b891401        mov     qword ptr [r9+r8],rdx",
        "fffff804`8b58334a eb11            jmp     fffff804`8b58335d",
    ]


def test_u_labels_through_the_symbol_hook():
    with kdshell.open(TRIAGE_19041) as s:
        start = 0xFFFFF8048B583340
        s.symbolize = lambda a: ("crashdrv!Fault", a - start) if start <= a < start + 0x40 else None
        assert lines(s, "u @rip L2") == [
            "crashdrv!Fault+0xc:",
            "fffff804`8b58334c 43891401        mov     dword ptr [r9+r8],edx",
            "fffff804`8b583350 eb0b            jmp     crashdrv!Fault+0x1d (fffff804`8b58335d)",
        ]


def test_search_on_the_triage_dump(triage):
    assert lines(triage, 's -a fffff804`7c600b20 L100 "KDBG"') == [
        "fffff804`7c600b30  4b 44 42 47 80 03 00 00-00 00 a0 7b 04 f8 ff ff  KDBG.......{...."]
    assert lines(triage, "s -q ffff8504`29890ee8 L2118 fffff804`7be0f4e1") == [
        "ffff8504`29890ee8  fffff804`7be0f4e1 00000000`0000007e"]
    assert lines(triage, "s -1b ffff8504`29890000 L?10000000 e1 f4 e0 7b") == ["0xffff8504`29890ee8"]
    assert lines(triage, "s -b 0 L20000000 41") == ["Range error in 'L20000000'"]


def test_expressions_and_formats(triage):
    assert lines(triage, "? 1000") == ["Evaluate expression: 4096 = 00000000`00001000"]
    assert lines(triage, "? poi(0)") == ["Memory access error at ')'"]
    assert lines(triage, ".formats 0x4700") == [
        "Evaluate expression:",
        "  Hex:     00000000`00004700",
        "  Decimal: 18176",
        "  Decimal (unsigned) : 18176",
        "  Octal:   0000000000000000043400",
        "  Binary:  00000000 00000000 00000000 00000000 00000000 00000000 01000111 00000000",
        "  Chars:   ......G.",
        "  Time:    Thu Jan  1 05:02:56 1970",
        "  Float:   low 2.547e-041 high 0",
        "  Double:  8.98014e-320",
    ]
    assert lines(triage, "n") == ["base is 16"]


def test_radix(triage):
    try:
        assert lines(triage, "n 10; ? 10") == ["base is 10", "Evaluate expression: 10 = 00000000`0000000a"]
    finally:
        triage.capture("n 16")


def test_pte_from_the_saved_page_tables_of_small_dumps(triage):
    assert lines(triage, "!pte @rsp") == [
        "                                           VA ffff850429892120",
        "PXE at FFFFFDFEFF7FB850    PPE at FFFFFDFEFF70A080    PDE at FFFFFDFEE1410A60    PTE at FFFFFDC28214C490",
        "contains 0A0000082A7F1863  contains 0A0000082A7F2863  contains 0A0000000042F863  contains 8A00000006518963",
        "pfn 82a7f1    ---DA--KWEV  pfn 82a7f2    ---DA--KWEV  pfn 42f       ---DA--KWEV  pfn 6518      -G-DA--KW-V",
    ]
    with kdshell.open(MINI_17763) as s:
        assert lines(s, "!pte 0") == [
            "                                           VA 0000000000000000",
            "PXE at FFFFFDFEFF7FB000    PPE at FFFFFDFEFF600000    PDE at FFFFFDFEC0000000    PTE at FFFFFD8000000000",
            "contains 8A000002423FE867  contains 0000000000000000",
            "pfn 2423fe    ---DA--UW-V  not valid",
        ]
    assert lines(triage, "!vtop 0 @rsp") == [
        "This dump has no page tables: a small memory dump keeps only saved virtual ranges"]
    assert lines(triage, "!db 0") == ["Physical memory is not available in this dump (a small memory dump keeps none)"]


def test_truncated_full_dump_reports_missing_pages():
    with kdshell.open(FULL_TRUNCATED) as s:
        assert lines(s, "dq @rsp L4") == [
            'Page 1ad not present in the dump file. Type ".hh dbgerr004" for details',
            "ffffc10f`7507f190  ????????`???????? ????????`????????",
            "ffffc10f`7507f1a0  ????????`???????? ????????`????????",
        ]
        s.capture(".ignore_missing_pages 1")
        assert lines(s, "dq @rsp L2") == ["ffffc10f`7507f190  ????????`???????? ????????`????????"]
        s.capture(".ignore_missing_pages 0")
        assert lines(s, "!vtop 0 @rsp") == [
            "Amd64VtoP: Virt ffffc10f7507f190, pagedir 00000000001ad000",
            'Page 1ad not present in the dump file. Type ".hh dbgerr004" for details',
            "Virtual address ffffc10f7507f190 translation fails, error 0xD0000147.",
        ]
        assert lines(s, "!db 2000 L20") == [
            "#    2000 03 00 00 00 00 00 00 00-00 00 86 80 d3 10 02 00 ................",
            "#    2010 00 06 01 01 00 00 00 00-03 01 00 00 00 00 00 00 ................",
        ]
        assert lines(s, "!dq 0 L2") == ['Page 0 not present in the dump file. Type ".hh dbgerr004" for details',
                                        "physical memory read at 0 failed"]
        assert lines(s, "!pte @rsp")[-1] == "Unable to get PXE FFFFF6FB7DBEDC10"


# -- synthetic x64 dumps ---------------------------------------------------------------------------
def test_vtop_every_kind_of_mapping(x64):
    assert lines(x64, f"!vtop 0 {K + 0x123:x}") == [
        "Amd64VtoP: Virt fffff8047ba00123, pagedir 00000000001ad000",
        "Amd64VtoP: PML4E 00000000001adf80",
        "Amd64VtoP: PDPE 0000000000300088",
        "Amd64VtoP: PDE 0000000000301ee8",
        "Amd64VtoP: PTE 0000000000303000",
        "Amd64VtoP: Mapped phys 0000000005000123",
        "Virtual address fffff8047ba00123 translates to physical address 5000123.",
    ]
    assert lines(x64, "!vtop 1ad fffff804`72480123")[-2:] == [
        "Amd64VtoP: Large page mapped phys 0000000002080123",
        "Virtual address fffff80472480123 translates to physical address 2080123.",
    ]
    assert lines(x64, "!vtop 1ad000 ffff8000`00000008")[-2:] == [
        "Amd64VtoP: Large page mapped phys 0000000040000008",
        "Virtual address ffff800000000008 translates to physical address 40000008.",
    ]
    assert lines(x64, f"!vtop 0 {K + 0x10 * PAGE:x}")[-2:] == [
        "Amd64VtoP: Transition phys 0000000006000000",
        "Virtual address fffff8047ba10000 translates to physical address 6000000.",
    ]
    assert lines(x64, f"!vtop 0 {K + 0x11 * PAGE:x}")[-2:] == [
        "Amd64VtoP: PTE 0000009900002090 the page is in page file 2 at offset 99; "
        "page-file contents are not in a crash dump",
        "Virtual address fffff8047ba11000 translation fails, error 0xD0000147.",
    ]
    assert lines(x64, f"!vtop 0 {K + 0x200000:x}")[-2:] == [
        "Amd64VtoP: zero PDE", "Virtual address fffff8047bc00000 translation fails, error 0xD0000147."]


def test_pte_every_kind_of_entry(x64):
    head = "PXE at FFFFF6FB7DBEDF80    PPE at FFFFF6FB7DBF0088    "
    assert lines(x64, f"!pte {K:x}") == [
        "                                           VA fffff8047ba00000",
        head + "PDE at FFFFF6FB7E011EE8    PTE at FFFFF6FC023DD000",
        "contains 0000000000300063  contains 0000000000301063  contains 0000000000303063  contains 0000000005000063",
        "pfn 300       ---DA--KWEV  pfn 301       ---DA--KWEV  pfn 303       ---DA--KWEV  pfn 5000      ---DA--KWEV",
    ]
    large = lines(x64, "!pte fffff804`72480123")
    assert large[2].startswith("contains 0000000000300063  contains 0000000000301063  contains 00000000020000E3  ")
    assert large[3].endswith("pfn 2000      --LDA--KWEV  LARGE PAGE pfn 2080")
    assert lines(x64, "!pte ffff8000`00000008")[3] == "pfn 307       ---DA--KWEV  pfn 40000     --LDA--KWEV  LARGE PAGE pfn 40000"
    indent = " " * 81
    assert lines(x64, f"!pte {K + 0x10 * PAGE:x}")[3:] == [
        "pfn 300       ---DA--KWEV  pfn 301       ---DA--KWEV  pfn 303       ---DA--KWEV  not valid",
        indent + "Transition: 6000", indent + "Protect: 4 - ReadWrite"]
    assert lines(x64, f"!pte {K + 0x11 * PAGE:x}")[4:] == [
        indent + "PageFile: 2", indent + "Offset: 99", indent + "Protect: 4 - ReadWrite"]
    assert lines(x64, f"!pte {K + 0x200000:x}")[2:] == [
        "contains 0000000000300063  contains 0000000000301063  contains 0000000000000000",
        "pfn 300       ---DA--KWEV  pfn 301       ---DA--KWEV  not valid"]
    # an address inside the self-map is a PTE address: !pte shows the page it maps
    assert lines(x64, "!pte FFFFF6FC023DD000")[0] == "                                           VA fffff8047ba00000"


def test_reads_transition_and_large_pages(x64):
    assert lines(x64, f"dq {K + 0x10 * PAGE:x} L2") == ["fffff804`7ba10000  00006000`3a4e4650 55aa55aa`00000000"]
    assert lines(x64, f"dq {K + 0x11 * PAGE:x} L2") == ["fffff804`7ba11000  ????????`???????? ????????`????????"]
    assert lines(x64, "dd ffff8000`00001000 L2") == ["ffff8000`00001000  3a4e4650 00040001"]
    assert lines(x64, f"db {K + PAGE - 8:x} L10") == [
        "fffff804`7ba00ff8  " + " ".join(f"{b:02x}" for b in page_bytes(0x5000)[-8:]) + "-50 46 4e 3a 01 50 00 00  "
        + "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in page_bytes(0x5000)[-8:]) + "PFN:.P.."]


def test_u_on_synthetic_code(x64):
    assert lines(x64, f"u {K + PAGE + 0x100:x} L9") == [
        "fffff804`7ba01100 48894c2408      mov     qword ptr [rsp+8],rcx",
        "fffff804`7ba01105 4883ec28        sub     rsp,28h",
        "fffff804`7ba01109 8b03            mov     eax,dword ptr [rbx]",
        "fffff804`7ba0110b 4c8d0514f0f9ff  lea     r8,[fffff804`7b9a0126]",
        "fffff804`7ba01112 e8e608e9ff      call    fffff804`7b8919fd",
        "fffff804`7ba01117 65488b042588010000 mov     rax,qword ptr gs:[188h]",
        "fffff804`7ba01120 4883c480        add     rsp,0FFFFFFFFFFFFFF80h",
        "fffff804`7ba01124 c3              ret",
        "fffff804`7ba01125 cc              int     3",
    ]
    assert lines(x64, f"ub {K + PAGE + 0x125:x} L3") == [
        "fffff804`7ba01117 65488b042588010000 mov     rax,qword ptr gs:[188h]",
        "fffff804`7ba01120 4883c480        add     rsp,0FFFFFFFFFFFFFF80h",
        "fffff804`7ba01124 c3              ret",
    ]


def test_search_across_a_page_boundary(x64):
    tail = page_bytes(0x5000)[-2:].hex(" ")
    assert lines(x64, f"s -1b {K:x} L2000 {tail} 50 46")[0] == "0x" + "fffff804`7ba00ffe"
    assert lines(x64, f"s -1a {K:x} L?20000000 \"PFN:\"") == [
        "0xfffff804`7ba00000", "0xfffff804`7ba01000", "0xfffff804`7ba02000", "0xfffff804`7ba03000",
        "0xfffff804`7ba10000", "0xfffff804`7c600000"]


def test_physical_display(x64):
    assert lines(x64, "!dd 5000000 L4") == ["# 5000000 3a4e4650 00005000 00000000 55aa55aa"]
    assert lines(x64, "!dq 5000000 L2") == ["# 5000000 00005000`3a4e4650 55aa55aa`00000000"]
    assert lines(x64, "db /p 5000000 L4") == ["# 5000000 50 46 4e 3a                                     PFN:"]


def test_missing_pages_in_a_kernel_bitmap_dump(tmp_path):
    m = x64_machine()
    pages = m.bytes_pages()
    del pages[0x5800]  # the user page: a kernel dump leaves it out
    with kdshell.open(write_kind(tmp_path, "bitmap6", pages, directory_table_base=m.dtb)) as s:
        assert lines(s, "dq 7ff6`12340000 L2") == [
            'Page 5800 not present in the dump file. Type ".hh dbgerr004" for details',
            "00007ff6`12340000  ????????`???????? ????????`????????",
        ]
        assert lines(s, "? poi(7ff6`12340000)") == ["Memory access error at ')'"]
        assert lines(s, "!pte 7ff6`12340000")[3].endswith("pfn 5800      ---DA--UWEV")


def test_address_spaces_by_dtb(tmp_path):
    m = x64_machine()
    other = Machine(dtb=0x2AD000, first_table_pfn=0x900)  # a second process: same VA, other page
    other.map(K, 0x5003)
    pages = m.bytes_pages()
    pages.update(other.bytes_pages())
    with kdshell.open(write_kind(tmp_path, "full", pages, directory_table_base=m.dtb)) as s:
        assert s.memory.read_pointer(K + 4) == 0x5000
        s.set_dtb(0x2AD000)
        assert s.dtb == 0x2AD000 and s.memory.read_pointer(K + 4) == 0x5003
        assert lines(s, f"!vtop 0 {K:x}")[-1] == "Virtual address fffff8047ba00000 translates to physical address 5003000."
        assert lines(s, f"!vtop 1ad000 {K:x}")[-1] == "Virtual address fffff8047ba00000 translates to physical address 5000000."
        s.set_dtb(0x1AD000)
        assert s.memory.read_pointer(K + 4) == 0x5000


def test_five_level_dump(tmp_path):
    m = Machine(X64_5)
    m.map(KDBG_VA64 & ~0xFFF, 0x5100)
    patch(m, 0x5100, 0xB20, kdbg_block(0, 0xFFFFF8047BA00000, flags=5 << 2))
    m.map(0xFF5FF8047BA00000, 0x5000)
    with kdshell.open(write_kind(tmp_path, "bitmap6", m.bytes_pages(), directory_table_base=m.dtb)) as s:
        assert s.spaces.mode is X64_5
        assert lines(s, "dq ff5ff804`7ba00000 L2") == ["ff5ff804`7ba00000  00005000`3a4e4650 55aa55aa`00000000"]
        assert lines(s, "!vtop 0 ff5ff804`7ba00000")[1:3] == [
            "Amd64VtoP: PML5E 00000000001adaf8", "Amd64VtoP: PML4E 0000000000304f80"]
        assert lines(s, "!pte ff5ff804`7ba00000")[1].startswith("PML5E at FFEDF6FB7DBEDAF8  PXE at ")


# -- synthetic 32-bit dumps ------------------------------------------------------------------------
def machine32(pae: bool) -> Machine:
    m = Machine(PAE if pae else X86, dtb=0x185000 if pae else 0x39000)
    m.map(KDBG_VA32 & ~0xFFF, 0x2100)
    patch(m, 0x2100, 0xC28, kdbg_block(0, 0x82800000))
    m.map(0x82A1C000, 0x2200, content=b"\0" * 0x4D0 + bytes.fromhex("8bff558bec"))  # eip: mov edi,edi...
    m.map(0x8B3F1000, 0x2300)  # the stack (esp = 8b3f1f00)
    m.map_large(0x80400000, 0x600000 if pae else 0x400000, depth=1 if pae else 0)
    m.set(0x90000000, (0x777 << 12) | 0x880 | (4 << 5))
    m.data(0x777)
    return m


@pytest.mark.parametrize("pae", [True, False])
def test_x86_dumps(tmp_path, pae):
    m = machine32(pae)
    path = write_kind(tmp_path, "full32", m.bytes_pages(), directory_table_base=m.dtb, pae_enabled=pae)
    with kdshell.open(path) as s:
        assert s.spaces.mode is (PAE if pae else X86)
        assert lines(s, "r") == [
            "eax=00000011 ebx=00000022 ecx=00000033 edx=00000044 esi=00000055 edi=00000066",
            "eip=82a1c4d0 esp=8b3f1f00 ebp=8b3f1f80 iopl=0         nv up ei pl zr na pe nc",
            "cs=0008  ss=0010  ds=0023  es=0023  fs=0030  gs=0000             efl=00000246",
            "82a1c4d0 8bff            mov     edi,edi",
        ]
        stack = page_bytes(0x2300)[0xF00:0xF08]
        words = [int.from_bytes(stack[i : i + 4], "little") for i in (0, 4)]
        assert lines(s, "dp @esp L2") == [f"8b3f1f00  {words[0]:08x} {words[1]:08x}"]
        assert lines(s, "dd 90000000 L2") == ["90000000  3a4e4650 00000777"]
        assert lines(s, "? -1") == ["Evaluate expression: -1 = ffffffff"]
        vtop = lines(s, "!vtop 0 80412345")
        assert vtop[0] == f"X86VtoP: Virt 80412345, pagedir {m.dtb:08x}" + (", PAE enabled." if pae else "")
        assert vtop[-1] == f"Virtual address 80412345 translates to physical address {0x612345 if pae else 0x412345:x}."
        pte = lines(s, "!pte 90000000")
        assert pte[1].startswith("PDE at C0602400" if pae else "PDE at C0300900")
        assert pte[-2:] == [" " * 27 + "Transition: 777", " " * 27 + "Protect: 4 - ReadWrite"]
        assert lines(s, "!pte c0200550")[0].endswith("VA 80154000") if not pae else True


def test_strings_symbols_and_physical_forms_on_a_synthetic_dump(tmp_path):
    m = x64_machine()
    text = "Hello, kernel".encode()
    patch(m, 0x5002, 0x10, text + b"\0\0\0" + "Wide".encode("utf-16-le") + b"\0\0")
    patch(m, 0x5002, 0x100, (K + PAGE + 0x100).to_bytes(8, "little") + (0x1234).to_bytes(8, "little"))
    with kdshell.open(write_kind(tmp_path, "bitmap5", m.bytes_pages(), directory_table_base=m.dtb)) as s:
        at = K + 2 * PAGE
        assert lines(s, f"da {at + 0x10:x}") == ['fffff804`7ba02010  "Hello, kernel"']
        assert lines(s, f"du {at + 0x20:x}") == ['fffff804`7ba02020  "Wide"']
        # (the byte before it is the 0x55 of the page's stamp: 'U')
        assert lines(s, f"s -sa {at:x} L40")[-1] == 'fffff804`7ba0200f  "UHello, kernel"'
        assert lines(s, f"s -su {at:x} L40") == ['fffff804`7ba02020  "Wide"']
        s.symbolize = lambda a: ("nt!KiCode", a - (K + PAGE + 0x100)) if a == K + PAGE + 0x100 else None
        assert lines(s, f"dqs {at + 0x100:x} L2") == ["fffff804`7ba02100  fffff804`7ba01100 nt!KiCode",
                                                      "fffff804`7ba02108  00000000`00001234"]
        assert lines(s, f"dds {at + 0x108:x} L1") == ["fffff804`7ba02108  00001234"]
        assert lines(s, f"u {K + PAGE + 0x100:x} L1") == [
            "nt!KiCode:", "fffff804`7ba01100 48894c2408      mov     qword ptr [rsp+8],rcx"]
        assert lines(s, "!dc 5002010 L4") == ["# 5002010 6c6c6548 6b202c6f 656e7265 0000006c Hello, kernel..."]
        assert lines(s, "!dw 5002010 L4") == ["# 5002010 6548 6c6c 2c6f 6b20"]
        assert lines(s, f"dyb {at + 0x10:x} L2") == [
            "                   76543210 76543210",
            "                   -------- --------",
            "fffff804`7ba02010  01001000 01100101                    48 65",
        ]


DUMP_COMMANDS = ["db @$csp", "dw @$csp", "dd @$csp", "dq @$csp", "dp @$csp", "dc @$csp", "da @$csp",
                 "du @$csp", "dps @$csp L4", "dqs @$csp L4", "dds @$csp L4", "dyb @$csp", "d", "r", "r $ip",
                 "u", "ub @$ip L2", "? @$ip", ".formats @$csp", "n", "s -d @$csp L100 0", "!pte @$ip",
                 "!vtop 0 @$ip", "!db 0 L10", "!dd 0", "!dq 0"]


@pytest.mark.parametrize("which", [pytest.param(TRIAGE_19041, id="triage"), pytest.param(MINI_17763, id="mini"),
                                   "x64", "pae", "x86"])
def test_every_command_runs_on_every_kind_of_dump(tmp_path, which):
    """No internal error, and an answer (or a one-line error in the user's words) for every command."""
    if isinstance(which, Path):
        path = which
    elif which == "x64":
        m = x64_machine()
        path = write_kind(tmp_path, "rdmp8", m.bytes_pages(), directory_table_base=m.dtb)
    else:
        m = machine32(which == "pae")
        path = write_kind(tmp_path, "full32", m.bytes_pages(), directory_table_base=m.dtb, pae_enabled=which == "pae")
    with kdshell.open(path) as s:
        for command in DUMP_COMMANDS:
            with s.out.capture() as buf:
                s.run(command)
            text = "".join(buf)
            assert "Internal error" not in text, command
            assert text or command.startswith("s "), command
            assert all(len(line) < 200 for line in text.splitlines()), command


def test_paging_mode_can_be_set_by_a_later_layer(tmp_path):
    m = Machine(X64_5)
    m.map(0xFF5FF8047BA00000, 0x5000)
    with kdshell.open(write_kind(tmp_path, "full", m.bytes_pages(), directory_table_base=m.dtb)) as s:
        assert s.spaces.mode.name == "x64"  # no KDBG to probe: 4-level, and the read fails
        assert lines(s, "dd ff5ff804`7ba00000 L1") == ["ff5ff804`7ba00000  ????????"]
        s.spaces.set_mode(X64_5)  # what CR4.LA57 in KPRCB.ProcessorState will say
        assert lines(s, "dd ff5ff804`7ba00000 L1") == ["ff5ff804`7ba00000  3a4e4650"]


def test_prototype_demand_zero_and_vad_entries_in_a_dump(tmp_path):
    m = x64_machine()
    proto_page = 0xFFFFC182CC1FF000
    m.map(proto_page, 0x5300, content=b"")
    patch(m, 0x5300, 0xDF8, ((0x5001 << 12) | 0x63).to_bytes(8, "little"))  # valid prototype PTE
    m.set(K + 0x20 * PAGE, 0xC182CC1FFDF80400 | (4 << 5))  # -> Proto: FFFFC182CC1FFDF8
    m.set(K + 0x21 * PAGE, 4 << 5)  # demand zero, ReadWrite
    m.set(K + 0x22 * PAGE, 0xFFFFFFFF00000000 | (4 << 5))  # "look in the VAD"
    with kdshell.open(write_kind(tmp_path, "bitmap6", m.bytes_pages(), directory_table_base=m.dtb)) as s:
        assert lines(s, f"dd {K + 0x20 * PAGE:x} L2") == ["fffff804`7ba20000  3a4e4650 00005001"]
        indent = " " * 81
        assert lines(s, f"!pte {K + 0x20 * PAGE:x}")[2:] == [
            "contains 0000000000300063  contains 0000000000301063  contains 0000000000303063  contains C182CC1FFDF80480",
            "pfn 300       ---DA--KWEV  pfn 301       ---DA--KWEV  pfn 303       ---DA--KWEV  not valid",
            indent + "Proto: FFFFC182CC1FFDF8", indent + "Protect: 4 - ReadWrite"]
        assert lines(s, f"!pte {K + 0x21 * PAGE:x}")[-2:] == [indent + "DemandZero", indent + "Protect: 4 - ReadWrite"]
        assert lines(s, f"!pte {K + 0x22 * PAGE:x}")[-2:] == [indent + "Proto: VAD", indent + "Protect: 4 - ReadWrite"]
        assert lines(s, f"? dwo({K + 0x21 * PAGE:x})") == ["Memory access error at ')'"]
        assert lines(s, f"dd {K + 0x22 * PAGE:x} L1") == ["fffff804`7ba22000  ????????"]


# -- uf ------------------------------------------------------------------------------------------
def _labels(out: list[str]) -> list[str]:
    return [line for line in out if line.endswith(":")]


def test_uf_follows_the_branches_of_a_real_function():
    """amdppm!WriteIoMemRawEx (the corpus crash's function, its extent from the PDB): every block
    once, in address order, each under its label; from any address inside, the same listing."""
    from conftest import CORPUS_SYMBOLS

    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS)) as s:
        out = lines(s, "uf amdppm!WriteIoMemRawEx")
        assert _labels(out) == ["amdppm!WriteIoMemRawEx:"] + [f"amdppm!WriteIoMemRawEx+0x{o:x}:" for o in (
            0x10, 0x17, 0x2f, 0x35, 0x3b, 0x42, 0x4e, 0x5b, 0x60, 0x65, 0x6a, 0x70, 0x76, 0x7d, 0x81, 0x86)]
        code = [line for line in out if not line.endswith(":")]
        addresses = [int(line.split()[0].replace("`", ""), 16) for line in code]
        assert addresses == sorted(set(addresses))  # each instruction once, in order
        assert addresses[0] == 0xFFFFF8048B5832DC and code[-1].endswith(" ret")
        assert "fffff804`8b58334c 43891401        mov     dword ptr [r9+r8],edx" in code  # the faulting one
        assert lines(s, "uf @rip") == out  # @rip is +0x70
        assert lines(s, "uf /c amdppm!WriteIoMemRawEx") == [
            "amdppm!WriteIoMemRawEx (fffff804`8b5832dc)",
            "  amdppm!WriteIoMemRawEx+0x10 (fffff804`8b5832ec):",
            "    call to amdppm!WriteIoMemRaw (fffff804`8b58324c)",
        ]


# xor eax,eax / (+2) inc eax / cmp eax,0Ah / jne +2 / (+9) jmp +9: a loop, then a jump to itself
LOOP = bytes.fromhex("31c0" "ffc0" "83f80a" "75f9" "ebfe")


def test_uf_on_synthetic_code_with_loops(tmp_path):
    m = x64_machine()
    patch(m, 0x5001, 0x300, LOOP)
    with kdshell.open(write_kind(tmp_path, "full", m.bytes_pages(), directory_table_base=m.dtb)) as s:
        assert lines(s, f"uf {K + PAGE + 0x300:x}") == [
            "fffff804`7ba01300:",
            "fffff804`7ba01300 31c0            xor     eax,eax",
            "fffff804`7ba01302:",
            "fffff804`7ba01302 ffc0            inc     eax",
            "fffff804`7ba01304 83f80a          cmp     eax,0Ah",
            "fffff804`7ba01307 75f9            jne     fffff804`7ba01302",
            "fffff804`7ba01309:",
            "fffff804`7ba01309 ebfe            jmp     fffff804`7ba01309",
        ]
        assert lines(s, f"uf {K + PAGE + 0x100:x}")[-2:] == [  # CODE: the call is stepped over
            "fffff804`7ba01120 4883c480        add     rsp,0FFFFFFFFFFFFFF80h",
            "fffff804`7ba01124 c3              ret",
        ]
        for bad, message in (("uf", "uf: which function?"), ("uf /z 1", "uf: option /z is not supported"),
                             ("uf 0", "No code found, aborting")):
            before = s.failures
            out = s.capture(bad).strip()
            assert s.failures == before + 1 and out.startswith(message) and "\n" not in out, (bad, out)


def test_uu_is_u(triage):
    assert lines(triage, "uu @rip L4") == lines(triage, "u @rip L4")
