"""ARM64 stacks (issue 18, part 4): the unwind-code decoder and packed unwind data from literal
encodings (the bit layouts of Microsoft's "ARM64 exception handling"), and `k` on
tests/arm64_machine.py's 5-frame stack: by .pdata/.xdata on the complete dump, by the
frame-record chain on the small dump (no image, so no .pdata), the leaf rule at the top, and pc
inside a prolog or an epilog.

The machine's frames, by its prologs (see arm64_machine.FUNCTIONS): KeBugCheckEx (packed, CR 2,
0x20 bytes) at Child-SP f00, PopPowerButtonWorkCallback (.xdata, 0x50 bytes) at f20,
ExpWorkerThread (packed, CR 3, RegI 4, 0x30 bytes) at f70, PspSystemThreadStartup (.xdata, E=1,
0x10 bytes) at fa0, KiStartSystemThread (no .pdata, fp 0) at fb0.
"""
from __future__ import annotations

import pytest

import arm64_machine as A
import kdshell
from kdshell.stack.frames import RegisterFrame
from kdshell.stack.unwind_arm64 import Code, UnwindError, decode_codes, packed_codes, parse_xdata, strip_pac
from kdshell.stack.unwind_x64 import mapped_image_reader


# -- the decoder ----------------------------------------------------------------------------------
def ops(data: bytes) -> list[tuple[str, str | None, int]]:
    return [(c.op, c.reg, c.offset) for c in decode_codes(data)]


def test_the_specs_example_prolog():
    # str x19,[sp,#-0x10]! / sub sp,sp,#0x810 / stp fp,lr,[sp] / mov fp,sp, undone last first:
    # set_fp 11100001, save_fplr 01|000000, alloc_m 11000|000'10000001 (0x81 * 16),
    # save_reg_x 1101010|0'000|00001 (x19, (1+1)*8), end 11100100
    assert ops(bytes((0xE1, 0x40, 0xC0, 0x81, 0xD4, 0x01, 0xE4))) == [
        ("set_fp", None, 0), ("save_fplr", "fp", 0), ("alloc_m", None, 0x810), ("save_reg_x", "x19", 0x10),
        ("end", None, 0)]


def test_every_code_form():
    assert ops(bytes((0x1F,))) == [("alloc_s", None, 0x1F0)]
    assert ops(bytes((0x26,))) == [("save_r19r20_x", "x19", 0x30)]        # 001|00110: 6*8
    assert ops(bytes((0x42,))) == [("save_fplr", "fp", 0x10)]
    assert ops(bytes((0x81,))) == [("save_fplr_x", "fp", 0x10)]           # (1+1)*8
    assert ops(bytes((0xC8, 0x82))) == [("save_regp", "x21", 0x10)]       # 110010|00'10|000010
    assert ops(bytes((0xCC, 0x43))) == [("save_regp_x", "x20", 0x20)]     # X=1, (3+1)*8
    assert ops(bytes((0xD1, 0x01))) == [("save_reg", "x23", 0x8)]         # 110100|01'00|000001
    assert ops(bytes((0xD5, 0x23))) == [("save_reg_x", "x28", 0x20)]      # 1101010|1'001|00011
    assert ops(bytes((0xD6, 0x42))) == [("save_lrpair", "x21", 0x10)]     # 1101011|0'01|000010: x(19+2)
    assert ops(bytes((0xD8, 0x44))) == [("save_fregp", "d9", 0x20)]       # 1101100|0'01|000100
    assert ops(bytes((0xDA, 0x01))) == [("save_fregp_x", "d8", 0x10)]
    assert ops(bytes((0xDC, 0xC2))) == [("save_freg", "d11", 0x10)]
    assert ops(bytes((0xDE, 0x41))) == [("save_freg_x", "d10", 0x10)]     # 11011110'010|00001
    assert ops(bytes((0xE0, 0x00, 0x10, 0x00))) == [("alloc_l", None, 0x10000)]
    assert ops(bytes((0xE2, 0x03))) == [("add_fp", None, 0x18)]
    assert [c.op for c in decode_codes(bytes((0xFC, 0xE3, 0xE5, 0xE9, 0xE4, 0x02)))] == \
        ["pac_sign_lr", "nop", "end_c", "machine_frame", "end"]               # stops at end
    with pytest.raises(UnwindError):
        decode_codes(bytes((0xF0,)))
    with pytest.raises(UnwindError):
        decode_codes(bytes((0xC8,)))   # cut short


def test_save_next_extends_the_pair_before_it():
    # stp x19,x20,[sp,#-0x30]! / stp x21,x22,[sp,#0x10] (save_next) / stp x23,x24,[sp,#0x20]
    codes = decode_codes(bytes((0xE6, 0xE6, 0x26, 0xE4)))
    assert [(c.op, c.reg, c.offset) for c in codes[:3]] == [
        ("save_regp", "x23", 0x20), ("save_regp", "x21", 0x10), ("save_r19r20_x", "x19", 0x30)]
    assert decode_codes(bytes((0xE6, 0xD8, 0x02)))[0] == Code("save_fregp", 1, "d10", 0x20, True)


def test_packed_unwind_data_stands_for_the_canonical_prolog():
    exp = A.PDATA[2][1]   # ExpWorkerThread: RegI 4, CR 3, FrameSize 0x30
    assert [(c.op, c.reg, c.offset) for c in packed_codes(exp)] == [
        ("set_fp", None, 0), ("save_fplr_x", "fp", 0x10), ("save_regp", "x21", 0x10),
        ("save_regp_x", "x19", 0x20)]
    ke = A.PDATA[0][1]    # KeBugCheckEx: CR 2 (pacibsp), FrameSize 0x20
    assert [c.op for c in packed_codes(ke)] == ["set_fp", "save_fplr_x", "pac_sign_lr"]
    # CR 1 with RegI 1: x19 and lr saved together; RegF 1: d8, d9; FrameSize 0x40 (0x20 saved)
    cr1 = 1 | 1 << 13 | 1 << 16 | 1 << 21 | 4 << 23
    assert [(c.op, c.reg, c.offset) for c in packed_codes(cr1)] == [
        ("alloc_m", None, 0x20), ("save_fregp", "d8", 0x10), ("save_lrpair_x", "x19", 0x20)]


def test_xdata_header_scopes_and_a_shared_epilog():
    image = bytearray(0x3000)
    for rva, record in A.XDATA.items():
        image[rva : rva + len(record)] = record
    read = mapped_image_reader(bytes(image))
    pop = parse_xdata(read, 0x1100, 0x2500)
    assert pop.length == 0x28 and pop.epilogs == ((0x1118, 6),)
    assert [c.op for c in pop.codes(6)] == ["alloc_s", "save_fplr", "save_r19r20_x", "end"]
    psp = parse_xdata(read, 0x1180, 0x2540)   # E=1: the epilog is the function's last 2 instructions
    assert psp.length == 0x14 and psp.epilogs == ((0x118C, 1),)


def test_pac_is_stripped_from_return_addresses():
    assert strip_pac(A.SIGNED_LR) == A.NT_BASE + 0x1118
    assert strip_pac(0x0012_7FF6_1234_0000) == 0x7FF6_1234_0000


# -- k on the machine -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    d = tmp_path_factory.mktemp("arm64k")
    return {kind: A.write(d, kind) for kind in ("full", "triage")}


def s_(offset: int) -> str:
    v = A.STACK + offset
    return f"{v >> 32:08x}`{v & 0xFFFFFFFF:08x}"


def n_(rva: int) -> str:
    v = A.NT_BASE + rva
    return f"{v >> 32:08x}`{v & 0xFFFFFFFF:08x}"


HEADER = "Child-SP          RetAddr               Call Site"
BY_PDATA = [
    f"{s_(0xF20)} {n_(0x1154)}     nt!PopPowerButtonWorkCallback+0x18",
    f"{s_(0xF70)} {n_(0x118C)}     nt!ExpWorkerThread+0x14",
    f"{s_(0xFA0)} {n_(0x11C8)}     nt!PspSystemThreadStartup+0xc",
    f"{s_(0xFB0)} 00000000`00000000     nt!KiStartSystemThread+0x8",
]


def k_with(session, **regs: int) -> list[str]:
    ctx = dict(A.registers(), **regs)
    session.context.set(RegisterFrame("context", 0, ctx, frozenset(ctx)), "test")
    return session.capture("k").splitlines()


def test_k_unwinds_by_pdata(dumps):
    with kdshell.open(dumps["full"]) as s:
        assert s.capture("k").splitlines() == [
            HEADER, f"{s_(0xF00)} {n_(0x1118)}     nt!KeBugCheckEx+0x24"] + BY_PDATA
        kv = s.capture("kv").splitlines()
        assert [line.rsplit(" ", 1)[-1] for line in kv[1:]] == \
            ["[context]", "[unwind]", "[unwind]", "[unwind]", "[unwind]"]
        s.capture(".frame 2")
        # ExpWorkerThread's x19 and x20 as PopPowerButtonWorkCallback's prolog saved them
        assert s.capture("r x19, x20, fp").split() == ["x19=0000000000001919", "x20=0000000000002020",
                                                       f"fp={A.STACK + 0xF70:016x}"]


def test_k_follows_the_frame_record_chain_without_pdata(dumps):
    # the small dump holds the stack and the code but not nt's image: no .pdata; Child-SP is
    # then the frame record's address + 16 (the frame's own area below the record is unknown)
    with kdshell.open(dumps["triage"]) as s:
        lines = s.capture("k").splitlines()
        assert lines[:6] == [
            HEADER,
            f"{s_(0xF00)} {n_(0x1118)}     nt+0x1024",
            f"{s_(0xF10)} {n_(0x1154)}     nt+0x1118",
            f"{s_(0xF60)} {n_(0x118C)}     nt+0x1154",
            f"{s_(0xF80)} {n_(0x11C8)}     nt+0x118c",
            f"{s_(0xFB0)} 00000000`00000000     nt+0x11c8",
        ]
        assert s.capture("kv").splitlines()[2].endswith("[frame chain]")
        # the leaf rule without .pdata: reading back from pc finds the previous function's ret
        # before any `mov x29, sp`, so lr is the caller and the frame record its caller's
        leaf = k_with(s, pc=A.NT_BASE + 0x1204, lr=A.NT_BASE + 0x1028)
        assert leaf[1:4] == [f"{s_(0xF00)} {n_(0x1028)}     nt+0x1204", f"{s_(0xF00)} {n_(0x1118)}     nt+0x1028",
                             f"{s_(0xF10)} {n_(0x1154)}     nt+0x1118"]
        # pc between PspSystemThreadStartup's stp x29,x30,[sp,#-0x10]! and its mov x29,sp: the
        # record is at sp, the caller's sp 0x10 above (a guess: saves before the stp are unknown)
        pushed = k_with(s, pc=A.NT_BASE + 0x1184, sp=A.STACK + 0xFA0, fp=0, lr=0)
        assert pushed == [HEADER, f"{s_(0xFA0)} {n_(0x11C8)}     nt+0x1184",
                          "WARNING: Stack unwind information not available. Following frames may be wrong.",
                          f"{s_(0xFB0)} 00000000`00000000     nt+0x11c8"]


def test_k_leaf_at_the_top(dumps):
    # KeGetCurrentIrql has no .pdata entry: at the context its caller is lr, on the same sp
    with kdshell.open(dumps["full"]) as s:
        assert k_with(s, pc=A.NT_BASE + 0x1204, lr=A.NT_BASE + 0x1028) == [
            HEADER, f"{s_(0xF00)} {n_(0x1028)}     nt!KeGetCurrentIrql+0x4",
            f"{s_(0xF00)} {n_(0x1118)}     nt!KeBugCheckEx+0x28"] + BY_PDATA


def test_k_inside_a_prolog_and_an_epilog(dumps):
    with kdshell.open(dumps["full"]) as s:
        # PopPowerButtonWorkCallback+8: stp x19,x20,[sp,#-0x30]! and stp fp,lr,[sp,#0x10] have
        # run, add x29 and sub sp have not: only the last two codes are undone
        assert k_with(s, pc=A.NT_BASE + 0x1108, sp=A.STACK + 0xF40, fp=A.STACK + 0xF70, lr=0) == [
            HEADER, f"{s_(0xF40)} {n_(0x1154)}     nt!PopPowerButtonWorkCallback+0x8"] + BY_PDATA[1:]
        # its epilog's third instruction (ldp x19,x20,[sp],#0x30): fp and lr already restored
        assert k_with(s, pc=A.NT_BASE + 0x1120, sp=A.STACK + 0xF40, fp=A.STACK + 0xF70,
                      lr=A.NT_BASE + 0x1154)[1:3] == [
            f"{s_(0xF40)} {n_(0x1154)}     nt!PopPowerButtonWorkCallback+0x20", BY_PDATA[1]]
        # ExpWorkerThread's packed epilog after ldp x29,x30,[sp],#0x10 and ldp x21,x22,[sp,#0x10]:
        # ldp x19,x20,[sp],#0x20 is left
        assert k_with(s, pc=A.NT_BASE + 0x115C, sp=A.STACK + 0xF80, fp=A.STACK + 0xFA0,
                      lr=A.NT_BASE + 0x118C)[1:3] == [f"{s_(0xF80)} {n_(0x118C)}     nt!ExpWorkerThread+0x1c",
                                                      BY_PDATA[2]]
        # KeBugCheckEx's, between ldp x29,x30,[sp],#0x20 and autibsp: only pac_sign_lr is left
        assert k_with(s, pc=A.NT_BASE + 0x1030, sp=A.STACK + 0xF20, fp=A.STACK + 0xF50,
                      lr=A.SIGNED_LR)[1:3] == [f"{s_(0xF20)} {n_(0x1118)}     nt!KeBugCheckEx+0x30", BY_PDATA[0]]
        # PspSystemThreadStartup's ret (E=1 epilog, sharing the prolog's codes): nothing left
        assert k_with(s, pc=A.NT_BASE + 0x1190, sp=A.STACK + 0xFB0, fp=0, lr=A.NT_BASE + 0x11C8) == [
            HEADER, f"{s_(0xFB0)} {n_(0x11C8)}     nt!PspSystemThreadStartup+0x10", BY_PDATA[3]]
