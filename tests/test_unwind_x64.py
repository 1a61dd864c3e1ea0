"""x64 unwind data: the parser against llvm-readobj, and every opcode on hand-made stacks.

1. Every RUNTIME_FUNCTION / UNWIND_INFO of every x64 fixture image, parsed by kdshell, is compared
   field by field with the committed `llvm-readobj --unwind` dumps (fixtures/images/golden) - an
   independent tool's view of the same bytes. The golden text is parsed here.
2. One hand-made image + stack per opcode (and per form: ALLOC_LARGE 16/32-bit, MACHFRAME with and
   without an error code, SAVE_*_FAR, SAVE_XMM128, v2 EPILOG codes, v1 obsolete slots), where the
   expected caller context is worked out by hand in the test from the prolog it describes.
3. Prolog offsets (partial unwinds), epilogs (add/lea/pop/ret/tail jmp), chained and indirect
   entries, leaf functions.
4. Hostile unwind data: bounded UnwindError, never a hang or another exception.
The unwind info bytes are written here from the format (x64-unwind.md §2), not with kdshell.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import pefile
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.stack.unwind_x64 import (FunctionTable, NoUnwindData, UnwindCache, UnwindError, decode_epilog,
                                      exception_directory, mapped_image_reader, parse_unwind_info,
                                      virtual_unwind)

BIN = Path(__file__).resolve().parents[1] / "fixtures" / "images" / "bin"
GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "images" / "golden"
X64_IMAGES = ("ntoskrnl.exe", "hal.dll", "mydrv.sys", "storfilt.sys", "kbdcrash.sys")

# ------------------------------------------------------------------------------------------
# 1. The parser against llvm-readobj


def parse_readobj_unwind(text: str) -> list[dict]:
    """The RuntimeFunction blocks of `llvm-readobj --unwind` output."""
    section = text[text.index("UnwindInformation ["):]
    out = []
    for block in re.split(r"\n  RuntimeFunction \{", section)[1:]:
        rf: dict = {}
        rf["start"] = int(re.search(r"StartAddress: \((0x[0-9A-F]+)\)", block).group(1), 16)
        rf["end"] = int(re.search(r"EndAddress: \((0x[0-9A-F]+)\)", block).group(1), 16)
        rf["info"] = int(re.search(r"UnwindInfoAddress: \((0x[0-9A-F]+)\)", block).group(1), 16)
        rf["version"] = int(re.search(r"Version: (\d+)", block).group(1))
        rf["flags"] = int(re.search(r"Flags \[ \((0x[0-9A-F]+)\)", block).group(1), 16)
        rf["prolog"] = int(re.search(r"PrologSize: (\d+)", block).group(1))
        fr = re.search(r"FrameRegister: (-|\w+ \((0x[0-9A-F]+)\))", block)
        rf["frame_register"] = 0 if fr.group(1) == "-" else int(fr.group(2), 16)
        fo = re.search(r"FrameOffset: (-|0x[0-9A-F]+)", block).group(1)
        rf["frame_offset"] = 0 if fo == "-" else int(fo, 16)
        rf["count"] = int(re.search(r"UnwindCodeCount: (\d+)", block).group(1))
        codes = []
        for m in re.finditer(r"\n\s+0x([0-9A-F]+): (\w+)(.*)", block.split("UnwindCodes [", 1)[1].split("]", 1)[0]):
            args = dict(re.findall(r"(\w+)=([\w]+)", m.group(3)))
            codes.append((int(m.group(1), 16), m.group(2), args))
        rf["codes"] = codes
        h = re.search(r"Handler: \((0x[0-9A-F]+)\)", block)
        rf["handler"] = int(h.group(1), 16) if h else None
        out.append(rf)
    return out


def _load(name: str):
    pe = pefile.PE(str(BIN / name))
    return pe.OPTIONAL_HEADER.ImageBase, pe.get_memory_mapped_image()


def _code_as_readobj(code, info) -> tuple[int, str, dict]:
    """kdshell's decoded code in readobj's words."""
    args: dict[str, str] = {}
    name = code.name
    if name == "PUSH_NONVOL":
        args["reg"] = code.register.upper()
    elif name in ("ALLOC_SMALL", "ALLOC_LARGE"):
        args["size"] = str(code.value)
    elif name == "SET_FPREG":
        args["reg"] = info.frame_register_name.upper()
        args["offset"] = f"0x{info.frame_offset:X}"
    elif name in ("SAVE_NONVOL", "SAVE_NONVOL_FAR", "SAVE_XMM128", "SAVE_XMM128_FAR"):
        args["reg"] = code.register.upper()
        args["offset"] = f"0x{code.value:X}"
    elif name == "PUSH_MACHFRAME":
        args["errcode"] = "yes" if code.op_info else "no"
    return code.offset, name, args


@pytest.mark.parametrize("name", X64_IMAGES)
def test_every_unwind_info_matches_llvm_readobj(name):
    base, mapped = _load(name)
    golden = parse_readobj_unwind((GOLDEN / f"{name}.readobj.txt").read_text())
    table = FunctionTable(mapped_image_reader(mapped))
    entries = list(table.entries())
    assert len(entries) == len(golden) == table.count > 0
    for rf, want in zip(entries, golden):
        assert base + rf.begin == want["start"]
        assert base + rf.end == want["end"]
        assert base + rf.unwind_rva == want["info"]
        assert table.lookup(rf.begin) == rf and table.lookup(rf.end - 1) == rf
        info = table.unwind_info(rf.unwind_rva)
        assert info.version == want["version"]
        assert info.flags == want["flags"]
        assert info.prolog_size == want["prolog"]
        assert info.count_of_codes == want["count"]
        assert info.frame_register == want["frame_register"]
        assert info.frame_offset == want["frame_offset"] * 16
        assert [_code_as_readobj(c, info) for c in info.codes] == want["codes"], hex(want["start"])
        assert sum(c.slots for c in info.codes) == info.count_of_codes
        assert (base + info.handler_rva if info.handler_rva is not None else None) == want["handler"]


def test_the_golden_dumps_exercise_every_common_code():
    seen = set()
    for name in X64_IMAGES:
        for rf in parse_readobj_unwind((GOLDEN / f"{name}.readobj.txt").read_text()):
            seen.update((c[1], c[2].get("errcode")) for c in rf["codes"])
    names = {n for n, _ in seen}
    assert {"PUSH_NONVOL", "ALLOC_SMALL", "ALLOC_LARGE", "SET_FPREG", "SAVE_NONVOL", "SAVE_NONVOL_FAR",
            "SAVE_XMM128", "SAVE_XMM128_FAR", "PUSH_MACHFRAME"} <= names
    assert ("PUSH_MACHFRAME", "yes") in seen and ("PUSH_MACHFRAME", "no") in seen


def test_pdata_read_from_dump_memory_and_lookup():
    """The same parser through a dump-memory reader (VA = base + RVA); a paged-out .pdata page is
    searched entry by entry; paged-out headers are NoUnwindData (the walker falls back)."""
    base, mapped = _load("ntoskrnl.exe")
    pdata_rva, pdata_size = exception_directory(mapped_image_reader(mapped))
    hole = (0, 0)  # nothing missing

    def reader(missing: tuple[int, int]):
        def read(rva, n):
            if rva < missing[1] and rva + n > missing[0]:
                raise MemoryNotPresent(base + rva, "page not present in the dump file")
            return bytes(mapped[rva:rva + n])
        return read

    full = FunctionTable(reader(hole))
    # .pdata's last quarter missing: the bulk read fails, lookups go entry by entry (a binary
    # search for an early function never probes the missing entries)
    lazy = FunctionTable(reader((pdata_rva + 12 * (full.count * 3 // 4), pdata_rva + pdata_size)))
    assert lazy._raw is None and full._raw is not None
    for rf in list(full.entries())[: full.count // 4]:
        assert lazy.lookup(rf.begin + 1) == full.lookup(rf.begin + 1) == rf
    with pytest.raises(NoUnwindData):
        lazy.lookup(list(full.entries())[-1].begin)
    with pytest.raises(NoUnwindData):
        FunctionTable(reader((0, 0x1000)))


# ------------------------------------------------------------------------------------------
# 2. Hand-made images and stacks


def slot(offset: int, op: int, info: int) -> int:
    """One UNWIND_CODE slot: CodeOffset, UnwindOp (low nibble), OpInfo (high nibble)."""
    return offset | (op << 8) | (info << 12)


def unwind_info(codes: list[int], *, prolog: int, version: int = 1, flags: int = 0, frame_reg: int = 0,
                frame_off: int = 0, tail: bytes = b"") -> bytes:
    """UNWIND_INFO bytes: header, the u16 slots (padded to even), then handler/chain data."""
    raw = bytes([version | flags << 3, prolog, len(codes), frame_reg | frame_off << 4])
    raw += struct.pack(f"<{len(codes)}H", *codes)
    if len(codes) % 2:
        raw += b"\0\0"
    return raw + tail


RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15 = range(16)
PUSH, ALLOC_L, ALLOC_S, SETFP, SAVE, SAVE_FAR, EPILOG, SPARE, XMM, XMM_FAR, MACH = range(11)
CODE_RVA, PDATA_RVA, XDATA_RVA = 0x1000, 0x3000, 0x4000


class FakeImage:
    """A module built in memory: code at 0x1000, .pdata at 0x3000, UNWIND_INFO from 0x4000.
    It is its own module table (module_at) for virtual_unwind and the walker."""

    def __init__(self, base: int = 0xFFFFF80005000000, size: int = 0x8000, name: str = "fake.sys"):
        self.base, self.size, self.name = base, size, name
        self.buf = bytearray(size)
        self.functions: list[tuple[int, int, int]] = []
        self.next_info = XDATA_RVA
        self.image = mapped_image_reader(self.buf)

    @property
    def exception_directory(self):
        return PDATA_RVA, 12 * len(self.functions)

    def add(self, begin: int, end: int, info: bytes | int, code: bytes = b"") -> int:
        """A function [begin, end) (RVAs) with `info` (bytes, placed in .xdata; or an int used as
        the raw UnwindData field, e.g. an indirect entry). Returns the UnwindData used."""
        if isinstance(info, int):
            unwind = info
        else:
            unwind = self.next_info
            self.buf[unwind:unwind + len(info)] = info
            self.next_info = (unwind + len(info) + 3) & ~3
        self.functions.append((begin, end, unwind))
        self.functions.sort()
        pdata = b"".join(struct.pack("<III", *f) for f in self.functions)
        self.buf[PDATA_RVA:PDATA_RVA + len(pdata)] = pdata
        if code:
            self.buf[begin:begin + len(code)] = code
        return unwind

    def module_at(self, address: int):
        return self if self.base <= address < self.base + self.size else None

    def function_start(self, address: int) -> bool:
        return False  # no symbols: the walker knows the .pdata begin addresses itself

    def va(self, rva: int) -> int:
        return self.base + rva


class Memory:
    """Sparse little-endian memory: 4 KiB pages created on write; reads of absent pages raise
    MemoryNotPresent, as the dump's virtual memory does."""

    def __init__(self):
        self.pages: dict[int, bytearray] = {}

    def write(self, address: int, data: bytes) -> None:
        for i, b in enumerate(data):
            a = address + i
            self.pages.setdefault(a >> 12, bytearray(0x1000))[a & 0xFFF] = b

    def q(self, address: int, *values: int) -> None:
        self.write(address, struct.pack(f"<{len(values)}Q", *values))

    def read(self, address: int, size: int) -> bytes:
        out = bytearray()
        for a in range(address, address + size):
            page = self.pages.get(a >> 12)
            if page is None:
                raise MemoryNotPresent(a, "not in the test memory")
            out.append(page[a & 0xFFF])
        return bytes(out)


STACK = 0xFFFFF88000A00000
RET = 0xFFFFF80001234567   # a return address into the caller


def ctx(rip: int, rsp: int, **regs: int) -> dict[str, int]:
    c = {name: 0x1111 * (i + 1) for i, name in enumerate(
        ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"))}
    c.update({f"xmm{i}": (0xAB << 120) | i for i in range(16)})
    c.update(rip=rip, rsp=rsp, efl=0x246, cs=0x10, ss=0x18)
    c.update(regs)
    return c


def unwind(img: FakeImage, mem: Memory, context: dict):
    return virtual_unwind(context, img.module_at, mem.read, UnwindCache())


def test_push_nonvol():
    # push rbx (off 1); push r14 (off 3): codes in reverse order
    img, mem = FakeImage(), Memory()
    img.add(0x1000, 0x1100, unwind_info([slot(3, PUSH, R14), slot(1, PUSH, RBX)], prolog=3))
    mem.q(STACK, 0xE14, 0xEB0, RET)
    caller, step = unwind(img, mem, ctx(img.va(0x1050), STACK))
    assert (caller["rip"], caller["rsp"]) == (RET, STACK + 0x18)
    assert (caller["r14"], caller["rbx"]) == (0xE14, 0xEB0)
    assert step.restored == {"r14": STACK, "rbx": STACK + 8, "rip": STACK + 0x10}
    assert step.kind == "unwind" and step.child_sp == STACK and step.return_slot == STACK + 0x10
    assert caller["rsi"] == ctx(0, 0)["rsi"]  # untouched registers carry over


def test_alloc_small_and_both_alloc_large_forms():
    img, mem = FakeImage(), Memory()
    img.add(0x1000, 0x1040, unwind_info([slot(4, ALLOC_S, 4)], prolog=4))               # 4*8+8 = 0x28
    img.add(0x1040, 0x1080, unwind_info([slot(7, ALLOC_L, 0), 0x201], prolog=7))         # 0x201*8 = 0x1008
    img.add(0x1080, 0x10C0, unwind_info([slot(7, ALLOC_L, 1), 0x3458, 0x0012], prolog=7))  # 0x123458
    for begin, size in ((0x1000, 0x28), (0x1040, 0x1008), (0x1080, 0x123458)):
        mem.q(STACK + size, RET + size)
        caller, step = unwind(img, mem, ctx(img.va(begin + 0x20), STACK))
        assert (caller["rip"], caller["rsp"]) == (RET + size, STACK + size + 8), hex(size)
        assert step.return_slot == STACK + size


def frame_pointer_function(img: FakeImage, begin: int = 0x1000) -> None:
    """push rbp (1); sub rsp, 0x40 (5); lea rbp, [rsp+0x20] (10); mov [rbp+0x10], rbx (14, saved
    at establisher+0x30); movaps [rbp-0x10], xmm7 (18, establisher+0x10)"""
    img.add(begin, begin + 0x100, unwind_info(
        [slot(18, XMM, 7), 0x1, slot(14, SAVE, RBX), 0x6, slot(10, SETFP, 0), slot(5, ALLOC_S, 7), slot(1, PUSH, RBP)],
        prolog=18, frame_reg=RBP, frame_off=2))


def test_set_fpreg_save_nonvol_and_save_xmm128_use_the_frame_pointer():
    """The body moved RSP (sub rsp, 0x30 after the prolog): the unwind must start from
    RBP - 0x20 (the establisher frame), and the SAVE offsets count from there, not from RSP."""
    img, mem = FakeImage(), Memory()
    frame_pointer_function(img)
    est = STACK + 0x100
    mem.q(est + 0x30, 0xB0B)                       # rbx
    mem.write(est + 0x10, (0x77 << 100 | 7).to_bytes(16, "little"))  # xmm7
    mem.q(est + 0x40, 0xBEEF)                      # saved rbp
    mem.q(est + 0x48, RET)
    caller, step = unwind(img, mem, ctx(img.va(0x1080), est - 0x30, rbp=est + 0x20))
    assert step.establisher_frame == est
    assert caller["rbx"] == 0xB0B and caller["xmm7"] == 0x77 << 100 | 7
    assert caller["rbp"] == 0xBEEF
    assert (caller["rip"], caller["rsp"]) == (RET, est + 0x50)
    assert step.restored == {"xmm7": est + 0x10, "rbx": est + 0x30, "rbp": est + 0x40, "rip": est + 0x48}


@pytest.mark.parametrize("off, expect", [
    (0, "entry"),          # nothing executed: RIP = [RSP]
    (1, "pushed"),         # push rbp done
    (5, "allocated"),      # sub rsp, 0x40 done
    (10, "framed"),        # lea rbp done: the frame pointer is in effect
    (14, "saved"),         # rbx saved too (xmm7 not yet)
])
def test_prolog_offset_partial_unwinds(off, expect):
    img, mem = FakeImage(), Memory()
    frame_pointer_function(img)
    s = STACK + 0x100
    rip = img.va(0x1000 + off)
    if expect == "entry":
        mem.q(s, RET)
        caller, step = unwind(img, mem, ctx(rip, s))
        assert (caller["rip"], caller["rsp"], caller["rbp"]) == (RET, s + 8, ctx(0, 0)["rbp"])
        assert step.prolog_offset == 0
        return
    if expect == "pushed":
        mem.q(s, 0xBEEF, RET)
        caller, _ = unwind(img, mem, ctx(rip, s))
        assert (caller["rip"], caller["rsp"], caller["rbp"]) == (RET, s + 0x10, 0xBEEF)
        return
    # s is the establisher (RSP after sub rsp, 0x40); RBP is garbage until lea
    mem.q(s + 0x30, 0xB0B)
    mem.write(s + 0x10, b"\x55" * 16)
    mem.q(s + 0x40, 0xBEEF, RET)
    rbp = s + 0x20 if expect in ("framed", "saved") else 0xDEAD0000
    caller, step = unwind(img, mem, ctx(rip, s, rbp=rbp))
    assert (caller["rip"], caller["rsp"], caller["rbp"]) == (RET, s + 0x50, 0xBEEF)
    assert step.establisher_frame == s
    assert caller["rbx"] == (0xB0B if expect == "saved" else ctx(0, 0)["rbx"])
    assert caller["xmm7"] == ctx(0, 0)["xmm7"]   # CodeOffset 18 > off: not saved yet


def test_save_nonvol_far_and_save_xmm128_far():
    """sub rsp, 0x110028; mov [rsp+0x110020], rbx; movaps [rsp+0x100000], xmm6 (storfilt's
    StorFiltLargeFrameCopy shape)."""
    img, mem = FakeImage(), Memory()
    img.add(0x1000, 0x1100, unwind_info(
        [slot(0x17, XMM_FAR, 6), 0x0000, 0x0010, slot(0x0F, SAVE_FAR, RBX), 0x0020, 0x0011,
         slot(7, ALLOC_L, 1), 0x0028, 0x0011], prolog=0x17))
    mem.q(STACK + 0x110020, 0xB0B)
    mem.write(STACK + 0x100000, (0x66 << 64 | 6).to_bytes(16, "little"))
    mem.q(STACK + 0x110028, RET)
    caller, step = unwind(img, mem, ctx(img.va(0x1040), STACK))
    assert caller["rbx"] == 0xB0B and caller["xmm6"] == 0x66 << 64 | 6
    assert (caller["rip"], caller["rsp"]) == (RET, STACK + 0x110030)


@pytest.mark.parametrize("errcode", [0, 1])
def test_push_machframe_with_and_without_error_code(errcode):
    """A trap handler: [error code] RIP CS RFLAGS RSP SS pushed by the CPU, then push rbp and
    sub rsp, 0x158 (a KTRAP_FRAME). The interrupted RIP/RSP come from the machine frame; no
    return address is popped. The trap frame starts 0x168 below the RIP slot."""
    img, mem = FakeImage(), Memory()
    codes = [slot(8, ALLOC_L, 0), 0x158 // 8, slot(1, PUSH, RBP)]
    if not errcode:
        codes += [slot(0, ALLOC_S, 0)]      # sub rsp, 8 keeps the ErrorCode slot
    codes += [slot(0, MACH, errcode)]
    img.add(0x1000, 0x1100, unwind_info(codes, prolog=8))
    tf = STACK + 0x1000                      # trap frame = Child-SP of the handler
    mem.q(tf + 0x158, 0xBEEF)                # rbp pushed
    mem.q(tf + 0x160, 0x2)                   # error code (or the reserved slot)
    mem.q(tf + 0x168, 0xFFFFF80001000123, 0x10, 0x10282, STACK + 0x2008, 0x18)
    caller, step = unwind(img, mem, ctx(img.va(0x1040), tf))
    assert (caller["rip"], caller["rsp"]) == (0xFFFFF80001000123, STACK + 0x2008)
    assert (caller["cs"], caller["efl"], caller["ss"], caller["rbp"]) == (0x10, 0x10282, 0x18, 0xBEEF)
    assert step.machine_frame == tf + 0x168 and step.error_code == bool(errcode)
    assert step.trap_frame == tf and step.return_slot is None


def test_version2_epilog_codes_are_skipped_and_locate_the_epilog():
    """v2: EPILOG codes (1 slot each) first; the prolog codes still apply in the body, and RIP
    inside a described epilog is emulated."""
    # push rbx (1); sub rsp, 0x20 (5). Epilogs: size 6 (add rsp,0x20 / pop rbx / ret = 4+1+1),
    # one at the end of the function (OpInfo bit 0) and one 0x40 bytes before the end.
    epilog = bytes.fromhex("4883C420") + b"\x5B\xC3"
    img, mem = FakeImage(), Memory()
    codes = [slot(6, EPILOG, 1), slot(0x40, EPILOG, 0), slot(0, EPILOG, 0),  # the last is padding
             slot(5, ALLOC_S, 3), slot(1, PUSH, RBX)]
    img.add(0x1000, 0x1100, unwind_info(codes, prolog=5, version=2))
    img.buf[0x1100 - 6:0x1100] = epilog
    img.buf[0x1100 - 0x40:0x1100 - 0x40 + 6] = epilog
    info = parse_unwind_info(img.image, XDATA_RVA)
    assert info.epilogs == ((6, 6), (0x40, 6)) and len(info.codes) == 5
    mem.q(STACK + 0x20, 0xB0B, RET)
    # body
    caller, step = unwind(img, mem, ctx(img.va(0x1050), STACK))
    assert (caller["rip"], caller["rsp"], caller["rbx"], step.kind) == (RET, STACK + 0x30, 0xB0B, "unwind")
    # at the pop of the first epilog (RSP already back above the locals)
    caller, step = unwind(img, mem, ctx(img.va(0x1100 - 0x40 + 4), STACK + 0x20))
    assert (caller["rip"], caller["rsp"], caller["rbx"], step.kind) == (RET, STACK + 0x30, 0xB0B, "epilog")
    # the same bytes outside the described ranges are not an epilog in v2
    img.buf[0x1080:0x1086] = epilog
    caller, step = unwind(img, mem, ctx(img.va(0x1084), STACK))
    assert step.kind == "unwind" and caller["rsp"] == STACK + 0x30


def test_version1_obsolete_save_xmm_slots():
    """v1 op 6 (UWOP_SAVE_XMM) takes 2 slots and op 7 (UWOP_SAVE_XMM_FAR) 3; the codes after them
    must still be found (and those obsolete saves restore nothing)."""
    img, mem = FakeImage(), Memory()
    img.add(0x1000, 0x1100, unwind_info(
        [slot(9, EPILOG, 6), 0x2, slot(9, SPARE, 7), 0x0, 0x1, slot(5, ALLOC_S, 3), slot(1, PUSH, RBX)], prolog=9))
    info = parse_unwind_info(img.image, XDATA_RVA)
    assert [c.slots for c in info.codes] == [2, 3, 1, 1]
    mem.q(STACK + 0x20, 0xB0B, RET)
    caller, _ = unwind(img, mem, ctx(img.va(0x1050), STACK))
    assert (caller["rip"], caller["rsp"], caller["rbx"]) == (RET, STACK + 0x30, 0xB0B)
    assert caller["xmm6"] == ctx(0, 0)["xmm6"]


def test_leaf_function_without_pdata():
    img, mem = FakeImage(), Memory()
    img.add(0x1000, 0x1010, unwind_info([slot(1, PUSH, RBX)], prolog=1))
    mem.q(STACK, RET)
    caller, step = unwind(img, mem, ctx(img.va(0x1800), STACK))
    assert (caller["rip"], caller["rsp"], step.kind, step.function) == (RET, STACK + 8, "leaf", None)


def test_indirect_entry():
    """UnwindData & 1: the RVA of another RUNTIME_FUNCTION whose unwind data applies."""
    img, mem = FakeImage(), Memory()
    img.add(0x1000, 0x1040, unwind_info([slot(4, ALLOC_S, 2)], prolog=4))  # 0x18
    img.add(0x1800, 0x1840, PDATA_RVA | 1)   # points at the first entry
    mem.q(STACK + 0x18, RET)
    caller, step = unwind(img, mem, ctx(img.va(0x1820), STACK))
    assert (caller["rip"], caller["rsp"]) == (RET, STACK + 0x20)
    assert (step.function.begin, step.function.end) == (0x1800, 0x1840)


def test_chained_unwind_info():
    """A split fragment [0x1200, 0x1240): its own codes save R12 (mov [rsp+0x28], r12 at offset
    5 of the fragment) and chain to the parent, whose prolog is push rbx; sub rsp, 0x30. In the
    fragment's prolog only the executed fragment codes apply; the parent's always do."""
    img, mem = FakeImage(), Memory()
    parent = img.add(0x1000, 0x1100, unwind_info([slot(5, ALLOC_S, 5), slot(1, PUSH, RBX)], prolog=5))
    chain = struct.pack("<III", 0x1000, 0x1100, parent)
    img.add(0x1200, 0x1240, unwind_info([slot(5, SAVE, R12), 0x5], prolog=5, flags=4, tail=chain))
    mem.q(STACK + 0x28, 0xC12)
    mem.q(STACK + 0x30, 0xB0B, RET)
    caller, step = unwind(img, mem, ctx(img.va(0x1220), STACK))
    assert (caller["rip"], caller["rsp"], caller["rbx"], caller["r12"]) == (RET, STACK + 0x40, 0xB0B, 0xC12)
    assert step.info.chained.begin == 0x1000
    # at the fragment's first byte the r12 save has not happened; the parent's frame is there
    caller, _ = unwind(img, mem, ctx(img.va(0x1200), STACK))
    assert (caller["rip"], caller["rsp"], caller["rbx"], caller["r12"]) == (RET, STACK + 0x40, 0xB0B, ctx(0, 0)["r12"])


# ------------------------------------------------------------------------------------------
# 3. Epilogs


def epilog_function(img: FakeImage, code: bytes, *, fp: bool = False) -> None:
    """push rbx; [push rbp;] sub rsp, 0x20 [; lea rbp, [rsp+0x10]] then `code` at 0x1080."""
    if fp:
        info = unwind_info([slot(10, SETFP, 0), slot(6, ALLOC_S, 3), slot(2, PUSH, RBP), slot(1, PUSH, RBX)],
                           prolog=10, frame_reg=RBP, frame_off=1)
    else:
        info = unwind_info([slot(5, ALLOC_S, 3), slot(1, PUSH, RBX)], prolog=5)
    img.add(0x1000, 0x1080 + len(code), info)
    img.buf[0x1080:0x1080 + len(code)] = code


@pytest.mark.parametrize("code, at, rsp_delta, pops", [
    # add rsp, 0x20 / pop rbx / ret
    ("4883C420 5B C3", 0, 0, ["rbx"]),
    ("4883C420 5B C3", 4, 0x20, ["rbx"]),
    ("4883C420 5B C3", 5, 0x28, []),
    # add rsp, imm32 / pop rbx / rep ret
    ("4881C420000000 5B F3C3", 0, 0, ["rbx"]),
    # add rsp / pop rbx / tail call jmp rel32 out of the function
    ("4883C420 5B E900100000", 0, 0, ["rbx"]),
    # add rsp / pop rbx / rex.w jmp [rip+x] (tail call through the IAT)
    ("4883C420 5B 48FF2500100000", 0, 0, ["rbx"]),
    # pop r-registers: 41 5C = pop r12 (treated as a pop of r12 here)
    ("4883C420 415C C3", 0, 0, ["r12"]),
])
def test_epilog_emulation(code, at, rsp_delta, pops):
    img, mem = FakeImage(), Memory()
    epilog_function(img, bytes.fromhex(code.replace(" ", "")))
    s = STACK + rsp_delta
    values = {"rbx": 0xB0B, "r12": 0xC12}
    slot_at = STACK + 0x20
    if not pops:
        slot_at = STACK + 0x28
    mem.q(slot_at, *([values[p] for p in pops] + [RET]))
    if not pops:
        mem.q(STACK + 0x28, RET)
    caller, step = unwind(img, mem, ctx(img.va(0x1080 + at), s))
    assert step.kind == "epilog"
    assert (caller["rip"], caller["rsp"]) == (RET, STACK + 0x30)
    for p in pops:
        assert caller[p] == values[p]


def test_epilog_with_lea_rsp_from_the_frame_pointer():
    # lea rsp, [rbp+0x10] (48 8D 65 10); pop rbp; pop rbx; ret
    img, mem = FakeImage(), Memory()
    epilog_function(img, bytes.fromhex("488D6510 5D 5B C3".replace(" ", "")), fp=True)
    est = STACK + 0x100            # RSP after sub rsp, 0x20; rbp = est + 0x10
    mem.q(est + 0x20, 0xBEEF, 0xB0B, RET)
    caller, step = unwind(img, mem, ctx(img.va(0x1080), est - 0x40, rbp=est + 0x10))
    assert step.kind == "epilog"
    assert (caller["rip"], caller["rsp"], caller["rbp"], caller["rbx"]) == (RET, est + 0x38, 0xBEEF, 0xB0B)


@pytest.mark.parametrize("code", [
    "4883C420 5B EBF0",          # jmp back into the function: a loop, not an epilog
    "4883C420 90 C3",            # a nop between: not the epilog shape
    "FFE0",                      # jmp rax without REX.W: a jump table
    "4883C420",                  # no terminator
    "488D6510 5D C3",            # lea rsp without a frame register in the unwind info
])
def test_not_an_epilog(code):
    img, mem = FakeImage(), Memory()
    epilog_function(img, bytes.fromhex(code.replace(" ", "")))
    mem.q(STACK + 0x20, 0xB0B, RET)
    caller, step = unwind(img, mem, ctx(img.va(0x1080), STACK))
    assert step.kind == "unwind"
    assert (caller["rip"], caller["rsp"], caller["rbx"]) == (RET, STACK + 0x30, 0xB0B)


def test_decode_epilog_shapes():
    f = lambda h, fr=0: decode_epilog(bytes.fromhex(h), 0x1000, 0x1000, 0x1100, fr)  # noqa: E731
    assert f("4883C408 5B 5D 415E C3") == [("add", 8), ("pop", 3), ("pop", 5), ("pop", 14), ("ret", 0)]
    assert f("C20800") == [("ret", 8)]
    assert f("498D6424F8 C3", fr=12) == [("lea", (12, -8)), ("ret", 0)]   # lea rsp, [r12-8]
    assert f("488DA500010000 C3", fr=5) == [("lea", (5, 0x100)), ("ret", 0)]
    assert decode_epilog(bytes.fromhex("E9F0FFFFFF"), 0x1050, 0x1000, 0x1100, 0) is None  # jmp into the function
    assert f("E9F0FFFFFF") == [("ret", 0)]  # the same jump from 0x1000 leaves it: a tail call
    assert f("5C C3") is None               # pop rsp is not an epilog


# ------------------------------------------------------------------------------------------
# 4. Hostile unwind data


def hostile(info: bytes, *, at: int | None = None) -> FakeImage:
    img = FakeImage()
    img.add(0x1000, 0x1100, info)
    if at is not None:  # move the info to `at` (e.g. the end of the image)
        img.buf[at:at + len(info)] = info
        img.functions[0] = (0x1000, 0x1100, at)
        img.buf[PDATA_RVA:PDATA_RVA + 12] = struct.pack("<III", *img.functions[0])
    return img


@pytest.mark.parametrize("img, message", [
    (lambda: hostile(bytes([1, 0, 255, 0]), at=0x8000 - 4), "past"),                # 255 codes past the end
    (lambda: hostile(unwind_info([slot(4, ALLOC_L, 0)], prolog=4)), "needs 2 slots"),
    (lambda: hostile(unwind_info([slot(4, ALLOC_L, 1), 0x10], prolog=4)), "needs 3 slots"),
    (lambda: hostile(unwind_info([slot(4, 11, 0)], prolog=4)), "unknown unwind op"),
    (lambda: hostile(unwind_info([slot(4, SPARE, 0)], prolog=4, version=2)), "unknown unwind op"),
    (lambda: hostile(unwind_info([slot(4, ALLOC_L, 1), 0xFFF0, 0xFFFF], prolog=4)), "allocates"),
    (lambda: hostile(unwind_info([slot(4, ALLOC_S, 1)], prolog=4, version=5)), "version"),
    (lambda: hostile(unwind_info([slot(1, PUSH, RSP)], prolog=1)), "pops RSP"),
    (lambda: hostile(unwind_info([slot(4, SETFP, 0)], prolog=4)), "without a frame register"),
    (lambda: hostile(unwind_info([slot(4, MACH, 3)], prolog=4)), "PUSH_MACHFRAME"),
])
def test_hostile_unwind_info_is_a_bounded_error(img, message):
    img = img()
    mem = Memory()
    mem.q(STACK, *range(0x100))
    with pytest.raises(UnwindError, match=message):
        unwind(img, mem, ctx(img.va(0x1050), STACK))


def test_chain_loops_and_deep_chains_are_bounded():
    img, mem = FakeImage(), Memory()
    mem.q(STACK, *range(0x100))
    # an info chained to itself
    at = img.next_info
    img.add(0x1000, 0x1100, unwind_info([slot(1, PUSH, RBX)], prolog=1, flags=4,
                                        tail=struct.pack("<III", 0x1000, 0x1100, at)))
    with pytest.raises(UnwindError, match="loops"):
        unwind(img, mem, ctx(img.va(0x1050), STACK))
    # a chain of 40 distinct infos
    img = FakeImage(size=0x10000)
    infos = [XDATA_RVA + 0x20 * i for i in range(41)]
    for i, rva in enumerate(infos):
        tail = struct.pack("<III", 0x1000, 0x1100, infos[i + 1]) if i < 40 else b""
        raw = unwind_info([slot(0, ALLOC_S, 0)], prolog=0, flags=4 if i < 40 else 0, tail=tail)
        img.buf[rva:rva + len(raw)] = raw
    img.functions = [(0x1000, 0x1100, infos[0])]
    img.buf[PDATA_RVA:PDATA_RVA + 12] = struct.pack("<III", 0x1000, 0x1100, infos[0])
    with pytest.raises(UnwindError, match="deeper"):
        unwind(img, mem, ctx(img.va(0x1050), STACK))


def test_indirect_loops_and_bad_headers_are_bounded():
    img, mem = FakeImage(), Memory()
    mem.q(STACK, RET)
    img.add(0x1000, 0x1100, PDATA_RVA | 1)   # an indirect entry pointing at itself
    with pytest.raises(UnwindError, match="nest"):
        unwind(img, mem, ctx(img.va(0x1050), STACK))
    with pytest.raises(UnwindError, match="MZ"):
        FunctionTable(mapped_image_reader(bytes(0x1000)))
    pe = bytearray(0x400)
    pe[0:2] = b"MZ"
    struct.pack_into("<I", pe, 0x3C, 0x80)
    pe[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<H", pe, 0x98, 0x20B)
    struct.pack_into("<I", pe, 0x98 + 0x6C, 16)
    struct.pack_into("<II", pe, 0x98 + 0x70 + 24, 0x200, 12 * 0x100000)   # 1M entries
    with pytest.raises(UnwindError, match="too large"):
        FunctionTable(mapped_image_reader(pe))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(info=st.binary(min_size=4, max_size=80), stack=st.binary(min_size=0x80, max_size=0x80),
       off=st.integers(0, 0xFF), rbp=st.sampled_from([STACK, STACK + 0x40, 0, 2**64 - 8]))
def test_random_unwind_info_never_escapes_as_anything_but_kderror(info, stack, off, rbp):
    img = FakeImage()
    img.add(0x1000, 0x1100, info)
    img.buf[0x1000:0x1100] = (info * 64)[:0x100].ljust(0x100, b"\xc3")   # arbitrary code bytes too (epilog decoding)
    mem = Memory()
    mem.write(STACK, stack)
    try:
        caller, step = unwind(img, mem, ctx(img.va(0x1000 + off), STACK, rbp=rbp))
    except KdError:
        return
    assert 0 <= caller["rsp"] < 2**64 and 0 <= caller["rip"] < 2**64
