"""The type model and WinDbg's dt rendering, on the fixture kernel PDB's types and on StaticTypes.

Offsets in the expected lines are literals from the fixture kernel (checked against
llvm-pdbutil in test_pdb.py); memory is a bytes buffer behind a reader that raises
MemoryNotPresent outside it, as the real virtual memory layer does.
"""
from __future__ import annotations

import struct

import pytest

from kdshell.errors import MemoryNotPresent
from kdshell.symbols import types as T
from kdshell.symbols.pdb import PdbFile
from kdshell.symbols.typeformat import DtOptions, format_pointer, format_quad, render

from conftest import REPO

BIN = REPO / "fixtures" / "images" / "bin"
EPROCESS = 0xFFFF920FCFADB080


@pytest.fixture(scope="module")
def nt():
    with PdbFile(BIN / "ntkrnlmp.pdb") as pdb:
        yield pdb


@pytest.fixture(scope="module")
def nt32():
    with PdbFile(BIN / "x86" / "ntkrpamp.pdb") as pdb:
        yield pdb


class Memory:
    """Sparse memory: pages of bytes; anything else raises MemoryNotPresent."""

    def __init__(self):
        self.ranges: list[tuple[int, bytearray]] = []

    def add(self, address: int, size: int) -> bytearray:
        buf = bytearray(size)
        self.ranges.append((address, buf))
        return buf

    def put(self, address: int, data: bytes) -> None:
        for base, buf in self.ranges:
            if base <= address and address + len(data) <= base + len(buf):
                buf[address - base:address - base + len(data)] = data
                return
        raise AssertionError(f"{address:#x} outside the test memory")

    def q(self, address: int, value: int) -> None:
        self.put(address, struct.pack("<Q", value))

    def read(self, address: int, size: int) -> bytes:
        for base, buf in self.ranges:
            if base <= address and address + size <= base + len(buf):
                return bytes(buf[address - base:address - base + size])
        raise MemoryNotPresent(address, "not in the test memory")


# --------------------------------------------------------------------------------------------
# The model


def test_lookups_follow_nested_members(nt):
    ep = nt.find("_EPROCESS")
    assert ep.kind == T.STRUCT and ep.size == 0xA40
    assert nt.offset_of("_EPROCESS", "ActiveProcessLinks") == 0x448
    off, t = ep.field("Pcb.DirectoryTableBase")
    assert off == 0x28 and T.type_name(t) == "Uint8B"
    off, t = ep.field("Pcb.Header.SignalState")
    assert off == 4 and t.kind == T.BASE and t.signed and t.size == 4
    assert ep.field("ActiveProcessLinks.Blink")[0] == 0x450
    assert ep.field("ProcessQuotaUsage[1]")[0] == 0x478
    assert ep.field("imagefilename")[0] == 0x5A8  # case-insensitive, as dt is
    off, t = ep.field("Pcb.AutoAlignment")
    assert off == 0x278 and t.kind == T.BITFIELD and (t.bit_position, t.bit_length) == (0, 1)
    assert ep.find_field("Pcb.NoSuchThing") is None
    with pytest.raises(T.FieldNotFound, match="_KPROCESS has no field 'NoSuchThing'"):
        ep.field("Pcb.NoSuchThing")
    with pytest.raises(T.FieldNotFound, match="not a structure"):
        ep.field("UniqueProcessId.Foo")
    with pytest.raises(T.FieldNotFound, match="outside"):
        ep.field("ProcessQuotaUsage[2]")
    with pytest.raises(T.FieldNotFound, match="not found"):
        nt.offset_of("_NOPE", "X")
    assert nt.size_of("_KTHREAD") == 0x430


def test_type_kinds(nt):
    kt = nt.find("_KTHREAD")
    fields = {f.name: f for f in kt.fields}
    assert fields["Alertable"].bit_position == 4 and fields["Alertable"].bit_length == 1
    assert fields["Reserved"].type.kind == T.BITFIELD and fields["Reserved"].bit_length == 10
    assert fields["Alerted"].type.kind == T.ARRAY and fields["Alerted"].type.count == 2
    assert fields["Priority"].type.signed and T.type_name(fields["Priority"].type) == "Char"
    li = nt.find("_LARGE_INTEGER")
    assert li.kind == T.UNION and li.size == 8
    state = nt.find("_KTHREAD_STATE")
    assert state.kind == T.ENUM and state.size == 4 and state.enum_name(5) == "Waiting"
    drv = nt.find("_DRIVER_OBJECT")
    unload = next(f for f in drv.fields if f.name == "DriverUnload").type
    assert unload.kind == T.POINTER and unload.target.kind == T.FUNCTION
    assert T.c_name(unload.target.target) == "void"
    assert [T.type_name(a) for a in unload.target.args] == ["Ptr64 _DRIVER_OBJECT"]
    assert nt.find("_kthread") is kt  # dt names are case-insensitive
    assert "_KTHREAD" in nt.names("_kthr*") and nt.names("_KTHREAD_STAT?") == ["_KTHREAD_STATE"]
    assert isinstance(nt, T.TypeSource)


# --------------------------------------------------------------------------------------------
# dt layout


def test_layout_lines(nt):
    assert render(nt.find("_LIST_ENTRY")) == [
        "   +0x000 Flink            : Ptr64 _LIST_ENTRY",
        "   +0x008 Blink            : Ptr64 _LIST_ENTRY",
    ]
    assert render(nt.find("_EPROCESS"))[:4] == [
        "   +0x000 Pcb              : _KPROCESS",
        "   +0x438 ProcessLock      : _EX_PUSH_LOCK",
        "   +0x440 UniqueProcessId  : Ptr64 Void",
        "   +0x448 ActiveProcessLinks : _LIST_ENTRY",
    ]
    lines = render(nt.find("_EPROCESS"))
    assert "   +0x5a8 ImageFileName    : [15] UChar" in lines
    assert "   +0x470 ProcessQuotaUsage : [2] Uint8B" in lines
    kt = render(nt.find("_KTHREAD"))
    assert "   +0x074 Alertable        : Pos 4, 1 Bit" in kt
    assert "   +0x074 Reserved         : Pos 22, 10 Bits" in kt
    assert "   +0x0c3 Priority         : Char" in kt
    drv = render(nt.find("_DRIVER_OBJECT"))
    assert "   +0x068 DriverUnload     : Ptr64     void" in drv
    assert "   +0x070 MajorFunction    : [28] Ptr64     int" in drv
    assert render(nt.find("_KTHREAD_STATE"))[:3] == [
        "   Initialized = 0n0", "   Ready = 0n1", "   Running = 0n2"]


def test_layout_recursion_and_options(nt):
    assert render(nt.find("_LARGE_INTEGER"), options=DtOptions(recurse=1)) == [
        "   +0x000 LowPart          : Uint4B",
        "   +0x004 HighPart         : Int4B",
        "   +0x000 u                : _LARGE_INTEGER::<unnamed-tag>",
        "      +0x000 LowPart          : Uint4B",
        "      +0x004 HighPart         : Int4B",
        "   +0x000 QuadPart         : Int8B",
    ]
    ep = nt.find("_EPROCESS")
    r1 = render(ep, options=DtOptions(recurse=1))
    assert r1[:3] == ["   +0x000 Pcb              : _KPROCESS",
                      "      +0x000 Header           : _DISPATCHER_HEADER",
                      "      +0x018 ProfileListHead  : _LIST_ENTRY"]
    r2 = render(ep, options=DtOptions(recurse=2))
    assert r2[2] == "         +0x000 Lock             : Int4B"
    assert len(render(ep, options=DtOptions(blocks=True))) > len(r2) > len(r1)
    assert render(nt.find("_LIST_ENTRY"), options=DtOptions(no_offsets=True)) == [
        "   Flink            : Ptr64 _LIST_ENTRY", "   Blink            : Ptr64 _LIST_ENTRY"]
    noind = render(ep, options=DtOptions(recurse=1, no_indent=True))
    assert noind[1] == "   +0x000 Header           : _DISPATCHER_HEADER"


def test_layout_field_selection(nt):
    ep = nt.find("_EPROCESS")
    assert render(ep, fields=["UniqueProcessId", "ActiveProcessLinks"]) == [
        "   +0x440 UniqueProcessId    : Ptr64 Void",
        "   +0x448 ActiveProcessLinks : _LIST_ENTRY",
    ]
    assert render(ep, fields=["ActiveProcessLinks."]) == [
        "   +0x448 ActiveProcessLinks :",
        "      +0x000 Flink            : Ptr64 _LIST_ENTRY",
        "      +0x008 Blink            : Ptr64 _LIST_ENTRY",
    ]
    assert render(ep, fields=["Pcb.DirectoryTableBase"]) == [
        "   +0x000 Pcb :",
        "      +0x028 DirectoryTableBase : Uint8B",
    ]
    assert render(ep, fields=["Unique"], options=DtOptions(prefix_match=True)) == [
        "   +0x440 UniqueProcessId : Ptr64 Void"]


# --------------------------------------------------------------------------------------------
# dt with an address


@pytest.fixture
def process_memory():
    m = Memory()
    m.add(EPROCESS, 0xA40)
    m.add(0xFFFF920FCFADC000, 0x100)
    m.q(EPROCESS + 0x440, 4)  # UniqueProcessId
    m.q(EPROCESS + 0x448, 0xFFFF920FCFADB380)  # ActiveProcessLinks.Flink
    m.q(EPROCESS + 0x450, 0xFFFFF8054D7F5B00)  # .Blink
    m.put(EPROCESS + 0x5A8, b"System\0")  # ImageFileName
    m.q(EPROCESS + 0x468, 0x01D5094EE0F80F70)  # CreateTime
    m.q(EPROCESS + 0x470, 0x10C4)  # ProcessQuotaUsage[0]
    m.q(EPROCESS + 0x490, 0x0000020B0B3AD000)  # PeakVirtualSize (past 4 GB)
    m.q(EPROCESS + 0x498, 0x4BF645C)  # VirtualSize
    m.put(EPROCESS + 0x460, struct.pack("<I", 0b101 | (3 << 12)))  # Flags2 bits
    m.put(EPROCESS + 0x5FC, struct.pack("<i", -1073741819))  # LastThreadExitStatus
    m.put(EPROCESS + 0x000, bytes([3]))  # Pcb.Header.Type
    m.put(EPROCESS + 0x280, bytes([8]))  # Pcb.BasePriority (Char)
    m.put(EPROCESS + 0x283, bytes([0x41]))  # Pcb.Flags (UChar) 'A'
    m.q(EPROCESS + 0x28, 0x1AA002)  # Pcb.DirectoryTableBase
    return m


def test_values_of_selected_fields(nt, process_memory):
    ep, read = nt.find("_EPROCESS"), process_memory.read
    lines = render(ep, EPROCESS, read, fields=[
        "UniqueProcessId", "ActiveProcessLinks", "ImageFileName", "CreateTime", "ExitTime",
        "ProcessQuotaUsage", "PeakVirtualSize", "VirtualSize", "RundownProtect",
        "LastThreadExitStatus", "Peb", "JobNotReallyActive", "AccountingFolded",
        "NewProcessReported", "DefaultPagePriority"])
    assert lines == [
        "   +0x440 UniqueProcessId      : 0x00000000`00000004 Void",
        "   +0x448 ActiveProcessLinks   : _LIST_ENTRY [ 0xffff920f`cfadb380 - 0xfffff805`4d7f5b00 ]",
        "   +0x458 RundownProtect       : 0",
        "   +0x460 JobNotReallyActive   : 0y1",
        "   +0x460 AccountingFolded     : 0y0",
        "   +0x460 NewProcessReported   : 0y1",
        "   +0x460 DefaultPagePriority  : 0y011",
        "   +0x468 CreateTime           : _LARGE_INTEGER 0x01d5094e`e0f80f70",
        "   +0x470 ProcessQuotaUsage    : [2] 0x10c4",
        "   +0x490 PeakVirtualSize      : 0x0000020b`0b3ad000",
        "   +0x498 VirtualSize          : 0x4bf645c",
        "   +0x550 Peb                  : (null)",
        "   +0x5a8 ImageFileName        : [15]  \"System\"",
        "   +0x5fc LastThreadExitStatus : 0n-1073741819",
        "   +0x840 ExitTime             : _LARGE_INTEGER 0x0",
    ]


def test_values_full_structure_and_recursion(nt, process_memory):
    ep, read = nt.find("_EPROCESS"), process_memory.read
    lines = render(ep, EPROCESS, read)
    assert lines[:5] == [
        "   +0x000 Pcb              : _KPROCESS",
        "   +0x438 ProcessLock      : _EX_PUSH_LOCK",
        "   +0x440 UniqueProcessId  : 0x00000000`00000004 Void",
        "   +0x448 ActiveProcessLinks : _LIST_ENTRY [ 0xffff920f`cfadb380 - 0xfffff805`4d7f5b00 ]",
        "   +0x458 RundownProtect   : 0",
    ]
    assert "   +0x460 Flags2           : 0x3005" in lines
    assert "   +0x460 DefaultPagePriority : 0y011" in lines
    assert not any("Memory read error" in x for x in lines)
    pcb = render(ep, EPROCESS, read, fields=["Pcb."])
    assert "      +0x028 DirectoryTableBase : 0x1aa002" in pcb
    assert "      +0x280 BasePriority     : 8 ''" in pcb
    assert "      +0x283 Flags            : 0x41 'A'" in pcb
    assert "      +0x282 Visited          : 0 ''" in pcb
    deep = render(ep, EPROCESS, read, options=DtOptions(recurse=2))
    assert deep[:3] == [
        "   +0x000 Pcb              : _KPROCESS",
        "      +0x000 Header           : _DISPATCHER_HEADER",
        "         +0x000 Lock             : 0n3",
    ]
    assert "         +0x000 Type             : 0x3 ''" in deep


def test_list_entry_and_strings(nt, process_memory):
    m = process_memory
    le = render(nt.find("_LIST_ENTRY"), EPROCESS + 0x448, m.read)
    assert le == [
        " [ 0xffff920f`cfadb380 - 0xfffff805`4d7f5b00 ]",
        # Flink points into readable memory (zeros): its summary shows; Blink's target is
        # missing, so only the type name follows the pointer.
        "   +0x000 Flink            : 0xffff920f`cfadb380 _LIST_ENTRY "
        "[ 0x00000000`00000000 - 0x00000000`00000000 ]",
        "   +0x008 Blink            : 0xfffff805`4d7f5b00 _LIST_ENTRY",
    ]
    us = 0xFFFF920FCFADC000
    text = "Process".encode("utf-16-le")
    m.put(us, struct.pack("<HHIQ", len(text), len(text) + 2, 0, us + 0x40))
    m.put(us + 0x40, text)
    assert render(nt.find("_UNICODE_STRING"), us, m.read) == [
        ' "Process"',
        "   +0x000 Length           : 0xe",
        "   +0x002 MaximumLength    : 0x10",
        "   +0x008 Buffer           : 0xffff920f`cfadc040",
    ]
    # a pointer to a structure shows its summary too, and a bad buffer says where
    ansi = us + 0x80
    m.put(ansi, struct.pack("<HHIQ", 5, 6, 0, us + 0x60) + b"")
    m.put(us + 0x60, b"hello\0")
    assert render(nt.find("_STRING"), ansi, m.read) == [
        ' "hello"',
        "   +0x000 Length           : 0x5",
        "   +0x002 MaximumLength    : 0x6",
        "   +0x008 Buffer           : 0xffff920f`cfadc060  \"hello\"",
    ]
    m.put(us, struct.pack("<HHIQ", 4, 4, 0, 0xFFFF800000000000))
    assert render(nt.find("_UNICODE_STRING"), us, m.read)[0] == \
        ' "--- memory read error at address 0xffff8000`00000000 ---"'


def test_enums_function_pointers_and_arrays(nt):
    m = Memory()
    base = 0xFFFFF80000400000
    m.add(base, 0x400)
    m.put(base + 0x0, struct.pack("<I", 5))  # ThreadState: Waiting
    m.put(base + 0x4, struct.pack("<I", 0x7F))  # WaitReason: no such value
    m.put(base + 0xC, struct.pack("<I", 0x200))  # PoolType: NonPagedPoolNx
    anchors = render(nt.find("_KDFIX_TYPE_ANCHORS"), base, m.read,
                     fields=["ThreadState", "WaitReason", "PoolType"])
    assert anchors == [
        "   +0x000 ThreadState : 5 ( Waiting )",
        "   +0x004 WaitReason  : 7f ( ??? )",
        "   +0x00c PoolType    : 200 ( NonPagedPoolNx )",
    ]
    drv = base + 0x100
    m.q(drv + 0x68, 0xFFFFF80001001234)  # DriverUnload
    for i in range(28):
        m.q(drv + 0x70 + 8 * i, 0xFFFFF80001000010 + i)
    names = {0xFFFFF80001001234: "mydrv!MyDrvUnload+0"}
    lines = render(nt.find("_DRIVER_OBJECT"), drv, m.read, symbolize=names.get,
                   fields=["DriverUnload", "DriverInit", "MajorFunction"])
    assert lines == [
        "   +0x058 DriverInit    : (null)",
        "   +0x068 DriverUnload  : 0xfffff800`01001234     void  mydrv!MyDrvUnload+0",
        "   +0x070 MajorFunction : [28] 0xfffff800`01000010     int  +fffff80001000010",
    ]
    arr = render(nt.find("_DRIVER_OBJECT"), drv, m.read, fields=["MajorFunction"],
                 options=DtOptions(arrays=3))
    assert arr == [
        "   +0x070 MajorFunction :",
        "    [00] 0xfffff800`01000010     int  +fffff80001000010",
        "    [01] 0xfffff800`01000011     int  +fffff80001000011",
        "    [02] 0xfffff800`01000012     int  +fffff80001000012",
    ]


def test_unreadable_memory(nt, process_memory):
    # _LIST_ENTRY with nothing behind it: ???? per pointer and the failing address at the end
    assert render(nt.find("_LIST_ENTRY"), 0xFFFFC48068D7D000, process_memory.read) == [
        "   +0x000 Flink            : ????",
        "   +0x008 Blink            : ????",
        "Memory read error ffffc48068d7d008",
    ]
    # a structure that straddles the end of readable memory: fields before it still show
    start = EPROCESS + 0xA40 - 0x10
    lines = render(nt.find("_KAPC_STATE"), start, process_memory.read)
    assert lines[0].startswith("   +0x000 ApcListHead      : [2] _LIST_ENTRY [ 0x00000000`00000000")
    assert "   +0x020 Process          : ????" in lines
    assert "   +0x028 KernelApcInProgress : ??" in lines
    assert lines[-1].startswith("Memory read error ffff920f")


def test_32_bit_target(nt32):
    m = Memory()
    base = 0x8641E030
    m.add(base, 0x500)
    le = nt32.offset_of("_EPROCESS", "ActiveProcessLinks")
    pid = nt32.offset_of("_EPROCESS", "UniqueProcessId")
    m.put(base + pid, struct.pack("<I", 0x124))
    m.put(base + le, struct.pack("<II", 0x882ABD00, 0x86A15880))
    lines = render(nt32.find("_EPROCESS"), base, m.read, pointer_size=4,
                   fields=["UniqueProcessId", "ActiveProcessLinks"])
    assert lines == [
        f"   +0x{pid:03x} UniqueProcessId    : 0x00000124 Void",
        f"   +0x{le:03x} ActiveProcessLinks : _LIST_ENTRY [ 0x882abd00 - 0x86a15880 ]",
    ]
    assert render(nt32.find("_LIST_ENTRY")) == [
        "   +0x000 Flink            : Ptr32 _LIST_ENTRY",
        "   +0x004 Blink            : Ptr32 _LIST_ENTRY",
    ]


def test_number_formats():
    assert format_pointer(0xFFFFF8054D7F5B00) == "0xfffff805`4d7f5b00"
    assert format_pointer(4) == "0x00000000`00000004"
    assert format_pointer(0x80549C4C, 4) == "0x80549c4c"
    assert format_quad(0) == "0"
    assert format_quad(0x4BF645C) == "0x4bf645c"
    assert format_quad(0x20B0B3AD000) == "0x0000020b`0b3ad000"


# --------------------------------------------------------------------------------------------
# StaticTypes: a dict-defined TypeSource

STATIC = {
    "_LIST_ENTRY": {"size": 0x10, "fields": [
        ("Flink", 0x0, "Ptr64 _LIST_ENTRY"), ("Blink", 0x8, "Ptr64 _LIST_ENTRY")]},
    "_KPROCESS": {"size": 0x438, "fields": [
        ("DirectoryTableBase", 0x28, "Uint8B"), ("AutoAlignment", 0x278, "Uint4B", 0, 1),
        ("ReservedFlags", 0x278, "ULONG", 11, 21)]},
    "_EPROCESS": {"size": 0xA40, "fields": [
        ("Pcb", 0x0, "_KPROCESS"), ("UniqueProcessId", 0x440, "Ptr64 Void"),
        ("ActiveProcessLinks", 0x448, "_LIST_ENTRY"), ("ImageFileName", 0x5A8, "[15] UChar"),
        ("State", 0x5B8, "_KTHREAD_STATE")]},
    "_KTHREAD_STATE": {"enum": {"Initialized": 0, "Ready": 1, "Waiting": 5}},
    "_LARGE_INTEGER": {"union": True, "size": 8, "fields": [
        ("LowPart", 0, "Uint4B"), ("HighPart", 4, "Int4B"), ("QuadPart", 0, "Int8B")]},
}


def test_static_types_are_a_type_source():
    src = T.StaticTypes(STATIC)
    assert isinstance(src, T.TypeSource)
    assert src.offset_of("_EPROCESS", "ActiveProcessLinks") == 0x448
    assert src.offset_of("_EPROCESS", "Pcb.DirectoryTableBase") == 0x28
    assert src.offset_of("_EPROCESS", "ActiveProcessLinks.Blink") == 0x450
    off, t = src.field("_EPROCESS", "Pcb.ReservedFlags")
    assert off == 0x278 and (t.kind, t.bit_position, t.bit_length) == (T.BITFIELD, 11, 21)
    assert src.find("_eprocess") is src.find("_EPROCESS")
    assert src.find("_NOPE") is None
    assert src.names("_K*") == ["_KPROCESS", "_KTHREAD_STATE"]
    assert src.find("_LARGE_INTEGER").kind == T.UNION
    assert src.size_of("_EPROCESS") == 0xA40
    assert render(src.find("_EPROCESS")) == [
        "   +0x000 Pcb              : _KPROCESS",
        "   +0x440 UniqueProcessId  : Ptr64 Void",
        "   +0x448 ActiveProcessLinks : _LIST_ENTRY",
        "   +0x5a8 ImageFileName    : [15] UChar",
        "   +0x5b8 State            : _KTHREAD_STATE",
    ]
    m = Memory()
    m.add(EPROCESS, 0xA40)
    m.q(EPROCESS + 0x448, EPROCESS + 0x448)
    m.q(EPROCESS + 0x450, EPROCESS + 0x448)
    m.put(EPROCESS + 0x5A8, b"Idle\0")
    m.put(EPROCESS + 0x5B8, struct.pack("<I", 5))
    m.put(EPROCESS + 0x278, struct.pack("<I", 1 | (0x1234 << 11)))
    assert render(src.find("_EPROCESS"), EPROCESS, m.read, options=DtOptions(recurse=1)) == [
        "   +0x000 Pcb              : _KPROCESS",
        "      +0x028 DirectoryTableBase : 0",
        "      +0x278 AutoAlignment    : 0y1",
        "      +0x278 ReservedFlags    : 0y000000001001000110100 (0x1234)",
        "   +0x440 UniqueProcessId  : (null)",
        "   +0x448 ActiveProcessLinks : _LIST_ENTRY [ 0xffff920f`cfadb4c8 - 0xffff920f`cfadb4c8 ]",
        "      +0x000 Flink            : 0xffff920f`cfadb4c8 _LIST_ENTRY [ 0xffff920f`cfadb4c8 - 0xffff920f`cfadb4c8 ]",
        "      +0x008 Blink            : 0xffff920f`cfadb4c8 _LIST_ENTRY [ 0xffff920f`cfadb4c8 - 0xffff920f`cfadb4c8 ]",
        "   +0x5a8 ImageFileName    : [15]  \"Idle\"",
        "   +0x5b8 State            : 5 ( Waiting )",
    ]


def test_static_types_errors():
    src = T.StaticTypes({"_A": {"size": 4, "fields": [("x", 0, "_MISSING")]}})
    with pytest.raises(Exception, match="not defined"):
        src.find("_A").fields
    with pytest.raises(T.FieldNotFound):
        src.offset_of("_A", "y")
