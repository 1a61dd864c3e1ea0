"""CONTEXT records (formats.md §8): a processor's registers as the dump header, a small dump,
.cxr and the KPRCB's saved context hold them, one layout per machine, and their decoding into
WinDbg's register names.

Declared once here, with the offset of each field; `tests/test_layouts.py` checks them against
literal offsets from ../shared/docs/formats.md.
"""
from __future__ import annotations

from construct import Array, Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Struct

from kdshell.dumpfile.header import MACHINE_AMD64, MACHINE_ARM64, MACHINE_I386

M128A = Bytes(16)

XSAVE_FORMAT = Struct(  # XMM_SAVE_AREA32, 512 bytes
    "ControlWord" / Int16ul,  # +0x00
    "StatusWord" / Int16ul,  # +0x02
    "TagWord" / Int8ul,  # +0x04
    "Reserved1" / Int8ul,  # +0x05
    "ErrorOpcode" / Int16ul,  # +0x06
    "ErrorOffset" / Int32ul,  # +0x08
    "ErrorSelector" / Int16ul,  # +0x0c
    "Reserved2" / Int16ul,  # +0x0e
    "DataOffset" / Int32ul,  # +0x10
    "DataSelector" / Int16ul,  # +0x14
    "Reserved3" / Int16ul,  # +0x16
    "MxCsr" / Int32ul,  # +0x18
    "MxCsr_Mask" / Int32ul,  # +0x1c
    "FloatRegisters" / Array(8, M128A),  # +0x20
    "XmmRegisters" / Array(16, M128A),  # +0xa0
    "Reserved4" / Bytes(96),  # +0x1a0
)

X64_GPR_NAMES = (
    "Rax", "Rcx", "Rdx", "Rbx", "Rsp", "Rbp", "Rsi", "Rdi",
    "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15",
)

CONTEXT_AMD64 = Struct(  # 0x4d0 bytes
    "P1Home" / Int64ul,  # +0x000
    "P2Home" / Int64ul,  # +0x008
    "P3Home" / Int64ul,  # +0x010
    "P4Home" / Int64ul,  # +0x018
    "P5Home" / Int64ul,  # +0x020
    "P6Home" / Int64ul,  # +0x028
    "ContextFlags" / Int32ul,  # +0x030
    "MxCsr" / Int32ul,  # +0x034
    "SegCs" / Int16ul,  # +0x038
    "SegDs" / Int16ul,  # +0x03a
    "SegEs" / Int16ul,  # +0x03c
    "SegFs" / Int16ul,  # +0x03e
    "SegGs" / Int16ul,  # +0x040
    "SegSs" / Int16ul,  # +0x042
    "EFlags" / Int32ul,  # +0x044
    "Dr0" / Int64ul,  # +0x048
    "Dr1" / Int64ul,  # +0x050
    "Dr2" / Int64ul,  # +0x058
    "Dr3" / Int64ul,  # +0x060
    "Dr6" / Int64ul,  # +0x068
    "Dr7" / Int64ul,  # +0x070
    "Rax" / Int64ul,  # +0x078
    "Rcx" / Int64ul,  # +0x080
    "Rdx" / Int64ul,  # +0x088
    "Rbx" / Int64ul,  # +0x090
    "Rsp" / Int64ul,  # +0x098
    "Rbp" / Int64ul,  # +0x0a0
    "Rsi" / Int64ul,  # +0x0a8
    "Rdi" / Int64ul,  # +0x0b0
    "R8" / Int64ul,  # +0x0b8
    "R9" / Int64ul,  # +0x0c0
    "R10" / Int64ul,  # +0x0c8
    "R11" / Int64ul,  # +0x0d0
    "R12" / Int64ul,  # +0x0d8
    "R13" / Int64ul,  # +0x0e0
    "R14" / Int64ul,  # +0x0e8
    "R15" / Int64ul,  # +0x0f0
    "Rip" / Int64ul,  # +0x0f8
    "FltSave" / XSAVE_FORMAT,  # +0x100
    "VectorRegister" / Array(26, M128A),  # +0x300
    "VectorControl" / Int64ul,  # +0x4a0
    "DebugControl" / Int64ul,  # +0x4a8
    "LastBranchToRip" / Int64ul,  # +0x4b0
    "LastBranchFromRip" / Int64ul,  # +0x4b8
    "LastExceptionToRip" / Int64ul,  # +0x4c0
    "LastExceptionFromRip" / Int64ul,  # +0x4c8
)
CONTEXT_AMD64_FLAGS = 0x100000
CONTEXT_FULL_AMD64 = 0x10000B

FLOATING_SAVE_AREA = Struct(  # 112 bytes
    "ControlWord" / Int32ul,  # +0x00
    "StatusWord" / Int32ul,  # +0x04
    "TagWord" / Int32ul,  # +0x08
    "ErrorOffset" / Int32ul,  # +0x0c
    "ErrorSelector" / Int32ul,  # +0x10
    "DataOffset" / Int32ul,  # +0x14
    "DataSelector" / Int32ul,  # +0x18
    "RegisterArea" / Bytes(80),  # +0x1c
    "Cr0NpxState" / Int32ul,  # +0x6c
)

CONTEXT_X86 = Struct(  # 0x2cc bytes
    "ContextFlags" / Int32ul,  # +0x00
    "Dr0" / Int32ul,  # +0x04
    "Dr1" / Int32ul,  # +0x08
    "Dr2" / Int32ul,  # +0x0c
    "Dr3" / Int32ul,  # +0x10
    "Dr6" / Int32ul,  # +0x14
    "Dr7" / Int32ul,  # +0x18
    "FloatSave" / FLOATING_SAVE_AREA,  # +0x1c
    "SegGs" / Int32ul,  # +0x8c
    "SegFs" / Int32ul,  # +0x90
    "SegEs" / Int32ul,  # +0x94
    "SegDs" / Int32ul,  # +0x98
    "Edi" / Int32ul,  # +0x9c
    "Esi" / Int32ul,  # +0xa0
    "Ebx" / Int32ul,  # +0xa4
    "Edx" / Int32ul,  # +0xa8
    "Ecx" / Int32ul,  # +0xac
    "Eax" / Int32ul,  # +0xb0
    "Ebp" / Int32ul,  # +0xb4
    "Eip" / Int32ul,  # +0xb8
    "SegCs" / Int32ul,  # +0xbc
    "EFlags" / Int32ul,  # +0xc0
    "Esp" / Int32ul,  # +0xc4
    "SegSs" / Int32ul,  # +0xc8
    "ExtendedRegisters" / Bytes(512),  # +0xcc
)
CONTEXT_I386_FLAGS = 0x10000
CONTEXT_FULL_X86 = 0x10007

CONTEXT_ARM64 = Struct(  # 0x390 bytes
    "ContextFlags" / Int32ul,  # +0x000
    "Cpsr" / Int32ul,  # +0x004
    "X" / Array(29, Int64ul),  # +0x008 X0..X28
    "Fp" / Int64ul,  # +0x0f0
    "Lr" / Int64ul,  # +0x0f8
    "Sp" / Int64ul,  # +0x100
    "Pc" / Int64ul,  # +0x108
    "V" / Array(32, M128A),  # +0x110
    "Fpcr" / Int32ul,  # +0x310
    "Fpsr" / Int32ul,  # +0x314
    "Bcr" / Array(8, Int32ul),  # +0x318
    "Bvr" / Array(8, Int64ul),  # +0x338
    "Wcr" / Array(2, Int32ul),  # +0x378
    "Wvr" / Array(2, Int64ul),  # +0x380
)

CONTEXT_BY_MACHINE = {
    MACHINE_AMD64: CONTEXT_AMD64,
    MACHINE_I386: CONTEXT_X86,
    MACHINE_ARM64: CONTEXT_ARM64,
}


def decode_context(machine: int, raw: bytes) -> dict[str, int]:
    """Registers of a CONTEXT record by WinDbg's lower-case names (rax, rip, efl, cs, xmm0, ...;
    on ARM64 x0-x28, fp, lr, sp, pc, cpsr, fpcr, fpsr, v0-v31 and the debug registers bcr0-7,
    bvr0-7, wcr0-1, wvr0-1)."""
    layout = CONTEXT_BY_MACHINE.get(machine)
    if layout is None or len(raw) < layout.sizeof():
        return {}
    c = layout.parse(bytes(raw[: layout.sizeof()]))
    regs: dict[str, int] = {}
    if machine in (MACHINE_AMD64, MACHINE_I386):
        gprs = X64_GPR_NAMES + ("Rip",) if machine == MACHINE_AMD64 else (
            "Eax", "Ebx", "Ecx", "Edx", "Esi", "Edi", "Eip", "Esp", "Ebp")
        for name in gprs:
            regs[name.lower()] = c[name]
        regs["efl"] = c.EFlags
        for seg in ("Cs", "Ds", "Es", "Fs", "Gs", "Ss"):
            regs[seg.lower()] = c["Seg" + seg]
        for dr in ("Dr0", "Dr1", "Dr2", "Dr3", "Dr6", "Dr7"):
            regs[dr.lower()] = c[dr]
        if machine == MACHINE_AMD64:
            regs["mxcsr"] = c.MxCsr
            for i, xmm in enumerate(c.FltSave.XmmRegisters):
                regs[f"xmm{i}"] = int.from_bytes(xmm, "little")
        regs["contextflags"] = c.ContextFlags
    else:  # ARM64: x29 and x30 are WinDbg's fp and lr
        for i, x in enumerate(c.X):
            regs[f"x{i}"] = x
        regs.update(fp=c.Fp, lr=c.Lr, sp=c.Sp, pc=c.Pc, cpsr=c.Cpsr, fpcr=c.Fpcr, fpsr=c.Fpsr,
                    contextflags=c.ContextFlags)
        for i, v in enumerate(c.V):
            regs[f"v{i}"] = int.from_bytes(v, "little")
        for name, values in (("bcr", c.Bcr), ("bvr", c.Bvr), ("wcr", c.Wcr), ("wvr", c.Wvr)):
            for i, value in enumerate(values):
                regs[f"{name}{i}"] = value
    return regs
