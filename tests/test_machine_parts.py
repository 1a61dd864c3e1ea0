"""Unit tests of the machine builder's parts (fixtures/machine): the golden-PDB text parser,
physical memory and the frame allocator, page tables of both formats (checked with kdshell's
independent PTE decoder and paging walk), the PE loader, typed structure access, and the CPU
(helper calls, the shadow call stack, exception delivery) on a toy machine."""
from __future__ import annotations

import struct
from pathlib import Path

import pefile
import pytest

from fixtures.machine.image import LoadedImage, bind_imports
from fixtures.machine.pagetables import (
    KERNEL_RW, MM_READWRITE, NX, P, USER_RW, PaePageTables, X64PageTables, walk,
)
from fixtures.machine.pdbtext import golden_functions, golden_publics, golden_types, undecorate
from fixtures.machine.physmem import PAGE, FrameAllocator, PhysicalMemory
from fixtures.machine.vm import Struct, VirtualView
from kdshell.errors import MemoryNotPresent
from kdshell.memory import pte as K
from kdshell.memory.paging import PAE, X64_4, PageCache, Paging

BIN = Path(__file__).resolve().parents[1] / "fixtures" / "images" / "bin"


# -- the golden PDB text ---------------------------------------------------------------------
def test_types_match_the_sources_static_asserts():
    t = golden_types("ntkrnlmp.pdb")
    assert t.offset("_KPRCB", "ProcessorState.ContextFrame") == 0x1F0
    assert t.offset("_KPCR", "Prcb") == 0x180 and t.offset("_KPCR", "Irql") == 0x50
    assert t.offset("_EPROCESS", "ImageFileName") == 0x5A8 and t.sizeof("_EPROCESS") == 0xA40
    assert t.offset("_ETHREAD", "Cid") == 0x478 and t.offset("_ETHREAD", "ThreadListEntry") == 0x4E8
    assert t.offset("_KTHREAD", "ApcState.Process") == 0xB8
    assert t.offset("_KLDR_DATA_TABLE_ENTRY", "TimeDateStamp") == 0x9C
    assert t.offset("_KDDEBUGGER_DATA64", "PteBase") == 0x360 and t.sizeof("_KDDEBUGGER_DATA64") == 0x380
    f = t.field("_KTHREAD", "SystemThread")
    assert (f.offset, f.bit, f.bits) == (0x74, 10, 1)
    assert t.offset("_KTHREAD", "WaitBlock[1]") == t.offset("_KTHREAD", "WaitBlock") + t.sizeof("_KWAIT_BLOCK")
    assert t.enum("_KTHREAD_STATE")["Waiting"] == 5
    x = golden_types("ntkrpamp.pdb", x86=True)
    assert x.offset("_KPCR", "PrcbData") == 0x120 and x.offset("_KPRCB", "ProcessorState") == 0x18
    assert x.offset("_EPROCESS", "ImageFileName") == 0x1AC
    with pytest.raises(KeyError):
        t.offset("_KTHREAD", "NoSuchField")


def test_publics_agree_with_the_export_table():
    pe = pefile.PE(str(BIN / "ntoskrnl.exe"))
    exports = {e.name.decode(): e.address for e in pe.DIRECTORY_ENTRY_EXPORT.symbols if e.name}
    publics = golden_publics("ntkrnlmp.pdb")
    for name in ("KeBugCheckEx", "ExAllocatePoolWithTag", "PsCreateSystemThread", "KdDebuggerDataBlock"):
        assert publics[name] == exports[name], name
    assert "KiIdleLoop" in golden_functions("ntkrnlmp.pdb")
    x86 = golden_publics("ntkrpamp.pdb", x86=True)
    assert x86["KeBugCheckEx"] == x86["_KeBugCheckEx@20"]
    assert undecorate("@IofCallDriver@8") == "IofCallDriver" and undecorate("_KiIdleLoop") == "KiIdleLoop"


def test_kdbg_offsets_in_the_kernel_image_match_the_types():
    """The fixture kernel fills the KDBG's Offset*/Size* fields from its C declarations; they must
    equal what the PDB types say (the builder writes the latter)."""
    from fixtures.machine.collect import kdbg_type_values

    for image, pdb, x86 in (("ntoskrnl.exe", "ntkrnlmp.pdb", False), ("x86/ntoskrnl.exe", "ntkrpamp.pdb", True)):
        img = LoadedImage.open(BIN / image)
        t = golden_types(pdb, x86)
        kdbg = img.base + golden_publics(pdb, x86)["KdDebuggerDataBlock"]
        raw = img.read(kdbg, 0x380)
        for name, value in kdbg_type_values(t, x86).items():
            f = t.field("_KDDEBUGGER_DATA64", name)
            assert int.from_bytes(raw[f.offset:f.offset + f.size], "little") == value, (image, name)


# -- physical memory -------------------------------------------------------------------------
def test_physical_memory_and_allocator():
    mem = PhysicalMemory([(0x1, 0x9E), (0x100, 0x100)])
    assert mem.total_pages == 0x19E and mem.highest_pfn == 0x1FF
    assert mem.is_ram(0x1) and not mem.is_ram(0) and not mem.is_ram(0xA0) and mem.is_ram(0x150)
    mem.write(0x1FFE, b"\x01\x02\x03\x04")  # across a page boundary
    assert mem.read(0x1FFE, 4) == b"\x01\x02\x03\x04" and mem.page(2)[:2] == b"\x03\x04"
    assert mem.page(0x150) == bytes(PAGE)
    with pytest.raises(ValueError):
        mem.write(0xA0000, b"x")
    fa = FrameAllocator(mem, 0x9C)
    fa.reserve(0x100, 2)
    got = [fa.alloc() for _ in range(4)]
    assert got == [0x9C, 0x9D, 0x9E, 0x102]  # skips the hole and the reserved frames
    fb = FrameAllocator(PhysicalMemory([(0x1, 0x9E), (0x100, 0x100)]), 0x9C)
    fb.reserve(0x100, 2)
    assert [fb.alloc() for _ in range(4)] == got  # deterministic
    assert fa.alloc(4, align=4) % 4 == 0


def test_physical_memory_round_trips_through_unicorn():
    pytest.importorskip("unicorn")
    from unicorn import UC_ARCH_X86, UC_MODE_64, Uc

    mem = PhysicalMemory([(0x1, 0x10)])
    mem.write(0x3000, b"before")
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    mem.attach(uc)
    assert mem.read(0x3000, 6) == b"before"
    mem.write(0x5000, b"during")
    uc.mem_write(0x7000, b"guest")
    mem.detach()
    assert mem.read(0x5000, 6) == b"during" and mem.read(0x7000, 5) == b"guest" and mem.read(0x3000, 6) == b"before"
    assert set(mem.pages) == {3, 5, 7}


# -- page tables ------------------------------------------------------------------------------
class _Physical:
    """A PhysicalMemory as kdshell's paging layer wants it (MemoryNotPresent for non-RAM)."""

    def __init__(self, mem):
        self.mem = mem

    def page(self, pfn):
        if not self.mem.is_ram(pfn):
            raise MemoryNotPresent(pfn << 12, "not RAM", physical=True)
        return memoryview(self.mem.page(pfn))


def _x64():
    mem = PhysicalMemory([(0x1, 0x9E), (0x100, 0x1F00), (0x40000, 0x200)])
    fa = FrameAllocator(mem, 0x600)
    fa.reserve(0x1AD, 1)
    t = X64PageTables(mem, fa, swizzle=True, self_map_index=0x1B5)
    return mem, fa, t, t.new_space("System", dtb_pfn=0x1AD)


def test_x64_page_tables_walk_as_kdshell_walks_them():
    mem, fa, t, s = _x64()
    t.map(s, 0xFFFFF80000001000, 0x300000, KERNEL_RW | NX)
    t.map(s, 0xFFFFF80000200000, 0x400000, KERNEL_RW, size=1 << 21)
    t.map(s, 0xFFFFE00000000000, 0x40000000, KERNEL_RW | NX, size=1 << 30)
    user = t.new_space("user")
    t.map(user, 0x7FF600001000, 0x500000, USER_RW)
    t.set_entry(s, 0xFFFFF80000002000, t.transition(0x1234, MM_READWRITE), "transition")
    t.set_entry(s, 0xFFFFF80000003000, t.pagefile(1, 0x1A2), "pagefile")
    t.set_entry(s, 0xFFFFF80000004000, t.prototype(0xFFFF8A8000000010), "prototype")
    t.set_entry(s, 0xFFFFF80000005000, t.demand_zero(), "demand_zero")
    fmt = K.PteFormat.for_kernel("x64", 19041, 45)
    cache = PageCache(_Physical(mem))
    ks = Paging(cache, s.dtb, X64_4, fmt)
    us = Paging(cache, user.dtb, X64_4, fmt)
    assert ks.translate(0xFFFFF80000001234) == t.translate(s, 0xFFFFF80000001234) == 0x300234
    assert ks.translate(0xFFFFF80000212345) == 0x412345
    assert ks.translate(0xFFFFE00012345678) == 0x52345678
    assert us.translate(0x7FF600001010) == 0x500010 and t.translate(s, 0x7FF600001010) is None
    assert us.translate(0xFFFFF80000001000) == 0x300000  # the kernel half is shared
    # software PTEs decode as kdshell's independent decoder reads them
    lv, e = t.leaf_entry(s, 0xFFFFF80000002000)
    state = K.decode(e, fmt)
    assert state.kind == K.TRANSITION and state.pfn == 0x1234 and e >> 45 & 1 and not e & 0x10  # swizzled
    assert K.decode(t.leaf_entry(s, 0xFFFFF80000003000)[1], fmt).kind == K.PAGEFILE
    assert K.decode(t.leaf_entry(s, 0xFFFFF80000003000)[1], fmt).offset == 0x1A2
    proto = K.decode(t.leaf_entry(s, 0xFFFFF80000004000)[1], fmt)
    assert proto.kind == K.PROTOTYPE and proto.proto_address == 0xFFFF8A8000000010
    assert K.decode(t.leaf_entry(s, 0xFFFFF80000005000)[1], fmt).kind == K.DEMAND_ZERO
    # the self-map: the PTE of a VA is readable at MiGetPteAddress(VA)
    assert t.pte_base == 0xFFFFDA8000000000
    pte_va = t.pte_address(0xFFFFF80000001000)
    assert ks.translate(pte_va) is not None
    v = VirtualView(t, s)
    assert v.read_u64(pte_va) == (0x300000 | KERNEL_RW | NX)
    # the builder's record
    kinds = [r.kind for r in s.record]
    assert kinds[:3] == ["valid", "large", "large"] and "prototype" in kinds
    leaves = [(va, lv) for va, size, lv, e, epa in walk(t, s) if e & P and lv == 3]
    assert (0xFFFFF80000001000, 3) in leaves


def test_pae_page_tables_and_self_map():
    mem = PhysicalMemory([(0x1, 0x9E), (0x100, 0x1F00)])
    fa = FrameAllocator(mem, 0x600)
    fa.reserve(0x185, 1)
    t = PaePageTables(mem, fa, swizzle=False)
    s = t.new_space("System", dtb_pfn=0x185)
    t.map(s, 0x80400000, 0x200000, KERNEL_RW, size=1 << 21)
    t.map(s, 0x84000000, 0x700000, KERNEL_RW)
    u = t.new_space("user")
    t.map(u, 0x00100000, 0x701000, USER_RW)
    t.map(s, 0x85000000, 0x702000, KERNEL_RW)  # a kernel PDE added after the user space exists
    t.set_entry(u, 0x00101000, t.transition(0x777), "transition")
    fmt = K.PteFormat.for_kernel("pae", 19041)
    cache = PageCache(_Physical(mem))
    ks, us = Paging(cache, s.dtb, PAE, fmt), Paging(cache, u.dtb, PAE, fmt)
    assert ks.translate(0x80412345) == 0x212345 and us.translate(0x80412345) == 0x212345
    assert us.translate(0x85000010) == 0x702010  # propagated into every space
    assert us.translate(0x00100020) == 0x701020
    assert us.translate(0x00101000) == 0x777000  # kdshell reads transition pages from their PFN
    assert t.translate(u, 0x00101000) is None
    v = VirtualView(t, s, 4)
    assert v.read_u64(t.pte_address(0x84000000)) == 0x700000 | KERNEL_RW
    assert t.pte_address(0xC0000000) == 0xC0600000  # PDE_BASE


# -- images ---------------------------------------------------------------------------------
def test_images_are_laid_out_and_bound():
    nt = LoadedImage.open(BIN / "ntoskrnl.exe")
    hal = LoadedImage.open(BIN / "hal.dll")
    drv = LoadedImage.open(BIN / "mydrv.sys")
    bind_imports([nt, hal, drv])
    for dll, name, slot in drv.imports:
        target = {"ntoskrnl.exe": nt, "hal.dll": hal}[dll].exports[name]
        assert struct.unpack("<Q", drv.read(slot, 8))[0] == target
    slot = next(s for d, n, s in hal.imports if n == "KeBugCheckEx")
    assert struct.unpack("<Q", hal.read(slot, 8))[0] == nt.exports["KeBugCheckEx"]
    text = next(s for s in nt.sections if s.name == ".text")
    assert text.executable and not text.writable
    assert nt.read(nt.base, 2) == b"MZ" and nt.section_of(nt.base + text.rva).name == ".text"
    assert len(nt.pdb_key) == 33 and nt.pdb_key.endswith("1") and nt.image_key.startswith(f"{nt.timestamp:08x}")


def test_struct_fields_and_bitfields():
    mem, fa, t, s = _x64()
    for i in range(3):
        t.map(s, 0xFFFFC00000000000 + i * PAGE, fa.alloc() << 12, KERNEL_RW)
    v = VirtualView(t, s)
    types = golden_types("ntkrnlmp.pdb")
    th = Struct(v, types, "_KTHREAD", 0xFFFFC00000000100)
    th["SystemThread"] = 1
    th["Alertable"] = 1
    assert th["MiscFlags"] == (1 << 10) | (1 << th.types.field("_KTHREAD", "Alertable").bit)
    th["SystemThread"] = 0
    assert th["SystemThread"] == 0 and th["Alertable"] == 1
    th["ApcState.Process"] = 0xFFFFC00000001000
    assert v.read_u64(0xFFFFC00000000100 + 0xB8) == 0xFFFFC00000001000
    head = 0xFFFFC00000002000
    v.list_init(head)
    for e in (head + 0x100, head + 0x200):
        v.list_insert_tail(head, e)
    assert v.list_walk(head) == [head + 0x100, head + 0x200]


# -- the CPU ------------------------------------------------------------------------------------
def test_cpu_calls_shadow_stack_and_page_faults():
    """A toy machine: f(a, b) calls g which faults; the handler stub records and stops."""
    pytest.importorskip("unicorn")
    from fixtures.machine.cpu import Cpu

    mem, fa, t, s = _x64()
    code, stack, handler = 0xFFFFF80000010000, 0xFFFFF80000020000, 0xFFFFF80000030000
    for va in (code, stack - PAGE, stack - 2 * PAGE, handler):
        t.map(s, va, fa.alloc() << 12, KERNEL_RW)
    v = VirtualView(t, s)
    # code+0x00 f: push rbx; call g; pop rbx; ret     code+0x20 g: mov rax,[0x1234]... faults; ret
    f = bytes.fromhex("53" "e81a000000" "5b" "c3")
    g = bytes.fromhex("488b042534120000" "c3")
    add = bytes.fromhex("488d0411" "c3")  # lea rax, [rcx+rdx]; ret
    v.write(code, f.ljust(0x20, b"\x90") + g.ljust(0x20, b"\x90") + add)
    v.write(handler, b"\xf4")  # hlt (the handler: a stop point)
    names = {"KiPageFault": handler}
    cpu = Cpu(True, t, lambda n: names[n])
    mem.attach(cpu.uc)
    from unicorn import x86_const as X

    cpu.uc.reg_write(X.UC_X86_REG_CR3, s.dtb)
    cpu.uc.reg_write(X.UC_X86_REG_CR4, 0x20 | 0x200 | 0x400)
    cpu.set_msr(0xC0000080, 0xD01)
    cpu.uc.reg_write(X.UC_X86_REG_CR0, 0x80000033)
    cpu.set_reg("rsp", stack - 0x100)
    sentinel = handler + 0x10
    v.write(sentinel, b"\xcc")
    assert cpu.call(code + 0x40, (40, 2), sentinel=sentinel) == 42
    assert cpu.sp == stack - 0x100  # the registers are restored after a call
    cpu.add_stop(handler, "handler")
    cpu.set_reg("rsp", stack - 0x100)
    stop = cpu.run(code)
    assert stop.name == "handler"
    exc = cpu.exceptions[-1]
    assert exc.vector == 14 and exc.cr2 == 0x1234 and exc.error_code == 0 and exc.rip == code + 0x20
    frames = cpu.shadow[0]
    assert [fr.kind for fr in frames] == ["call", "trap"]
    assert frames[0].ret == code + 6 and frames[0].slot == stack - 0x100 - 16  # after push rbx, call
    assert frames[1].ret == code + 0x20
    # the machine frame: SS, RSP, RFLAGS, CS, RIP, error code, as the CPU pushes them
    sp = cpu.sp
    assert struct.unpack("<6Q", v.read(sp, 48))[1] == code + 0x20 and v.read_u64(sp) == 0


def test_scenarios_are_described():
    from fixtures.machine.catalog import PLAN
    from fixtures.machine.scenarios import SCENARIOS

    assert set(PLAN) == set(SCENARIOS)
    for sc in SCENARIOS.values():
        assert sc.expect_code and sc.summary and sc.title
