"""Kernel frames that hold registers: x64 KTRAP_FRAME and KEXCEPTION_FRAME, the ARM64
KTRAP_FRAME, CONTEXT records (x64, x86, ARM64).

Each decoder reads through a memory reader `read(address, size) -> bytes` and returns a
`RegisterFrame`: the registers it gives (WinDbg's lower-case names, as
`kdshell.dumpfile.context.decode_context`) and which of them are trustworthy (`known`).

Structure offsets are passed in as a small dict (field name -> offset, plus "size"); the
defaults are the Windows 10 2004 (build 19041) layouts, the same ones the fixture kernel
declares and asserts in fixtures/images/src/inc/ntamd64.h and windbg.md §9 lists. When the PDB
has the types, the caller passes its offsets instead (DESIGN.md: PDB, then KDBG, then a table).

Windows quirk - an x64 trap frame does not hold the non-volatile registers: the trap handlers
(KiPageFault, KiGeneralProtectionFault, ...) save RAX, RCX, RDX, R8-R11, XMM0-5, RBP and the
machine frame, and only the system-call entry also stores RBX/RDI/RSI. So `decode_ktrap_frame`
marks RBX, RSI, RDI, R12-R15 and XMM6-15 unknown (WinDbg's `.trap` prints "The trap frame does
not contain all registers" for the same reason). The non-volatiles of an exception come from
the KEXCEPTION_FRAME that KiExceptionDispatch builds. Pinned by tests/test_stack_walk.py
(test_ktrap_frame_decoding, test_kexception_frame_decoding).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from kdshell.dumpfile.context import CONTEXT_BY_MACHINE, CONTEXT_X86, decode_context
from kdshell.dumpfile.header import MACHINE_AMD64, MACHINE_I386

MemoryRead = Callable[[int, int], bytes]

# _KTRAP_FRAME, x64, build 19041 (windbg.md §9; fixtures ntamd64.h C_ASSERTs), 0x190 bytes.
KTRAP_FRAME_X64_19041: dict[str, int] = {
    "P1Home": 0x00, "P5": 0x20, "PreviousMode": 0x28, "PreviousIrql": 0x29, "FaultIndicator": 0x2A,
    "ExceptionActive": 0x2B, "MxCsr": 0x2C,
    "Rax": 0x30, "Rcx": 0x38, "Rdx": 0x40, "R8": 0x48, "R9": 0x50, "R10": 0x58, "R11": 0x60,
    "GsBase": 0x68, "Xmm0": 0x70, "Xmm1": 0x80, "Xmm2": 0x90, "Xmm3": 0xA0, "Xmm4": 0xB0, "Xmm5": 0xC0,
    "FaultAddress": 0xD0, "Dr0": 0xD8, "Dr1": 0xE0, "Dr2": 0xE8, "Dr3": 0xF0, "Dr6": 0xF8, "Dr7": 0x100,
    "SegDs": 0x130, "SegEs": 0x132, "SegFs": 0x134, "SegGs": 0x136, "TrapFrame": 0x138,
    "Rbx": 0x140, "Rdi": 0x148, "Rsi": 0x150, "Rbp": 0x158,
    "ErrorCode": 0x160, "Rip": 0x168, "SegCs": 0x170, "EFlags": 0x178, "Rsp": 0x180, "SegSs": 0x188,
    "size": 0x190,
}

# _KEXCEPTION_FRAME, x64, build 19041 (fixtures ntamd64.h C_ASSERTs), 0x140 bytes.
KEXCEPTION_FRAME_X64_19041: dict[str, int] = {
    "P1Home": 0x00, "P5": 0x20, "Xmm6": 0x30,  # Xmm6..Xmm15 every 0x10
    "TrapFrame": 0xD0, "OutputBuffer": 0xD8, "OutputLength": 0xE0, "MxCsr": 0xF0,
    "Rbp": 0xF8, "Rbx": 0x100, "Rdi": 0x108, "Rsi": 0x110, "R12": 0x118, "R13": 0x120, "R14": 0x128,
    "R15": 0x130, "Return": 0x138,
    "size": 0x140,
}

# _KTRAP_FRAME, x86, build 19041 (fixtures nti386.h C_ASSERTs), 0x8C bytes.
KTRAP_FRAME_X86_19041: dict[str, int] = {
    "DbgEbp": 0x00, "DbgEip": 0x04, "DbgArgMark": 0x08, "TempSegCs": 0x0C, "TempEsp": 0x10,
    "SegGs": 0x2C, "SegEs": 0x30, "SegDs": 0x34, "Edx": 0x38, "Ecx": 0x3C, "Eax": 0x40,
    "PreviousIrql": 0x47, "ExceptionList": 0x4C, "SegFs": 0x50, "Edi": 0x54, "Esi": 0x58, "Ebx": 0x5C,
    "Ebp": 0x60, "ErrCode": 0x64, "Eip": 0x68, "SegCs": 0x6C, "EFlags": 0x70, "HardwareEsp": 0x74,
    "HardwareSegSs": 0x78,
    "size": 0x8C,
}
# _KTRAP_FRAME, ARM64 (ksarm64.h's Tr* offsets, the same in every Windows SDK from 10.0.19546 to
# 10.0.26100: kdshell/data/offsets.json's ksarm64 source), 0x150 bytes. X holds x0-x18, the
# volatile registers; x19-x28 are the callee's to keep (a KEXCEPTION_FRAME has them).
KTRAP_FRAME_ARM64: dict[str, int] = {
    "ExceptionActive": 0x0, "PreviousMode": 0x3, "FaultAddress": 0x8, "Spsr": 0x90, "Esr": 0x94,
    "Sp": 0x98, "X": 0xA0, "Lr": 0x138, "Fp": 0x140, "Pc": 0x148,
    "size": 0x150,
}
ARM64_TRAP_X = 19  # x0..x18
X86_DBG_ARG_MARK = 0xBADB0D00  # KTRAP_FRAME.DbgArgMark of a frame built by the trap handlers

X64_ALL = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
           "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass
class RegisterFrame:
    """Registers decoded from a frame in memory. `registers` may hold zeros for unknown ones;
    `known` names the trustworthy ones; `extra` holds the frame's other fields (ErrorCode,
    FaultAddress, PreviousMode, TrapFrame link, ...)."""

    kind: str            # "trap frame" | "exception frame" | "context"
    address: int
    registers: dict[str, int]
    known: frozenset[str]
    extra: dict[str, int] = field(default_factory=dict)


def _u(data: bytes, off: int, size: int) -> int:
    return int.from_bytes(data[off : off + size], "little")


def decode_ktrap_frame(read: MemoryRead, address: int, offsets: dict[str, int] | None = None) -> RegisterFrame:
    """An x64 _KTRAP_FRAME at `address` as a register context (see the module note: RBX, RSI,
    RDI, R12-R15 and XMM6-15 are unknown)."""
    o = offsets or KTRAP_FRAME_X64_19041
    data = read(address, o["size"])
    regs: dict[str, int] = {name: 0 for name in X64_ALL}
    for name in ("Rax", "Rcx", "Rdx", "R8", "R9", "R10", "R11", "Rbp", "Rip", "Rsp", "Rbx", "Rdi", "Rsi"):
        regs[name.lower()] = _u(data, o[name], 8)
    regs["efl"] = _u(data, o["EFlags"], 4)
    for seg in ("Cs", "Ss", "Ds", "Es", "Fs", "Gs"):
        regs[seg.lower()] = _u(data, o["Seg" + seg], 2)
    for i in range(6):
        regs[f"xmm{i}"] = _u(data, o[f"Xmm{i}"], 16)
    regs["mxcsr"] = _u(data, o["MxCsr"], 4)
    for dr in ("Dr0", "Dr1", "Dr2", "Dr3", "Dr6", "Dr7"):
        regs[dr.lower()] = _u(data, o[dr], 8)
    known = frozenset(("rax", "rcx", "rdx", "r8", "r9", "r10", "r11", "rbp", "rip", "rsp", "efl",
                       "cs", "ss", "ds", "es", "fs", "gs", "mxcsr") + tuple(f"xmm{i}" for i in range(6)))
    # RBX/RDI/RSI are saved by the system-call entry only; they stay "unknown" here (they are
    # in `registers` for .trap to print, as WinDbg does with its warning).
    extra = {name: _u(data, o[name], 8 if name in ("ErrorCode", "FaultAddress", "TrapFrame") else 1)
             for name in ("ErrorCode", "FaultAddress", "TrapFrame", "PreviousMode", "PreviousIrql",
                          "ExceptionActive")}
    return RegisterFrame("trap frame", address, regs, known, extra)


def decode_ktrap_frame_arm64(read: MemoryRead, address: int) -> RegisterFrame:
    """An ARM64 _KTRAP_FRAME at `address`: x0-x18, fp, lr, sp, pc and the saved PSTATE (Spsr,
    shown as cpsr); x19-x28 are not in it (see KTRAP_FRAME_ARM64)."""
    o = KTRAP_FRAME_ARM64
    data = read(address, o["size"])
    regs = {f"x{i}": 0 for i in range(29)}
    for i in range(ARM64_TRAP_X):
        regs[f"x{i}"] = _u(data, o["X"] + 8 * i, 8)
    regs.update(fp=_u(data, o["Fp"], 8), lr=_u(data, o["Lr"], 8), sp=_u(data, o["Sp"], 8),
                pc=_u(data, o["Pc"], 8), cpsr=_u(data, o["Spsr"], 4))
    known = frozenset([f"x{i}" for i in range(ARM64_TRAP_X)] + ["fp", "lr", "sp", "pc", "cpsr"])
    extra = {"FaultAddress": _u(data, o["FaultAddress"], 8), "Esr": _u(data, o["Esr"], 4),
             "PreviousMode": _u(data, o["PreviousMode"], 1), "ExceptionActive": _u(data, o["ExceptionActive"], 1)}
    return RegisterFrame("trap frame", address, regs, known, extra)


def plausible_ktrap_frame(frame: RegisterFrame) -> bool:
    """A cheap check that a KTRAP_FRAME candidate holds a machine frame: kernel or user code
    selector, a stack selector, EFLAGS bit 1 set, a canonical RIP and RSP."""
    r = frame.registers

    def canonical(v: int) -> bool:
        return v < 0x0000_8000_0000_0000 or v >= 0xFFFF_8000_0000_0000

    return ((r["cs"] & ~3) in (0x10, 0x20, 0x30) and (r["ss"] & ~3) in (0x00, 0x18, 0x28)
            and bool(r["efl"] & 2) and canonical(r["rip"]) and canonical(r["rsp"]) and r["rip"] != 0)


def decode_kexception_frame(read: MemoryRead, address: int,
                            offsets: dict[str, int] | None = None) -> RegisterFrame:
    """An x64 _KEXCEPTION_FRAME: the non-volatile registers (RBP, RBX, RDI, RSI, R12-R15,
    XMM6-15) and the return address (`extra["Return"]`)."""
    o = offsets or KEXCEPTION_FRAME_X64_19041
    data = read(address, o["size"])
    regs = {}
    for name in ("Rbp", "Rbx", "Rdi", "Rsi", "R12", "R13", "R14", "R15"):
        regs[name.lower()] = _u(data, o[name], 8)
    for i in range(6, 16):
        regs[f"xmm{i}"] = _u(data, o["Xmm6"] + 0x10 * (i - 6), 16)
    extra = {"Return": _u(data, o["Return"], 8), "TrapFrame": _u(data, o["TrapFrame"], 8),
             "MxCsr": _u(data, o["MxCsr"], 8)}
    return RegisterFrame("exception frame", address, regs, frozenset(regs), extra)


def decode_context_record(read: MemoryRead, address: int, machine: int = MACHINE_AMD64) -> RegisterFrame:
    """A CONTEXT record at `address` (for .cxr), decoded by dumpfile/context.py's declaration
    of the machine's layout (x64, ARM64; any other machine's as x86)."""
    layout = CONTEXT_BY_MACHINE.get(machine, CONTEXT_X86)
    regs = decode_context(machine, read(address, layout.sizeof()))
    return RegisterFrame("context", address, regs, frozenset(k for k in regs if k != "contextflags"))


def trap_frame_of_machine_frame(machine_frame_rip: int, offsets: dict[str, int] | None = None) -> int:
    """The KTRAP_FRAME around a machine frame whose RIP slot is at `machine_frame_rip`
    (KiPageFault & co. build the trap frame so that its Rip field is the hardware's RIP slot:
    trap frame = slot - 0x168 on 19041)."""
    o = offsets or KTRAP_FRAME_X64_19041
    return machine_frame_rip - o["Rip"]


def decode_ktrap_frame_x86(read: MemoryRead, address: int, offsets: dict[str, int] | None = None) -> RegisterFrame:
    """An x86 _KTRAP_FRAME (all general registers are saved on x86). For a kernel-mode trap the
    CPU pushed no ESP/SS: the interrupted ESP is the address of HardwareEsp."""
    o = offsets or KTRAP_FRAME_X86_19041
    data = read(address, o["size"])
    regs = {name.lower(): _u(data, o[name], 4)
            for name in ("Eax", "Ebx", "Ecx", "Edx", "Esi", "Edi", "Ebp", "Eip")}
    regs["efl"] = _u(data, o["EFlags"], 4)
    for seg in ("Cs", "Ds", "Es", "Fs", "Gs"):
        regs[seg.lower()] = _u(data, o["Seg" + seg], 4) & 0xFFFF
    if regs["cs"] & 1:  # from user mode (or v86): the CPU pushed ESP and SS
        regs["esp"] = _u(data, o["HardwareEsp"], 4)
        regs["ss"] = _u(data, o["HardwareSegSs"], 4) & 0xFFFF
    else:
        regs["esp"] = (address + o["HardwareEsp"]) & 0xFFFFFFFF
        regs["ss"] = 0x10
    extra = {name: _u(data, o[name], 4) for name in ("DbgEbp", "DbgEip", "DbgArgMark", "ErrCode")}
    return RegisterFrame("trap frame", address, regs, frozenset(regs), extra)


__all__ = [
    "KTRAP_FRAME_X64_19041", "KEXCEPTION_FRAME_X64_19041", "KTRAP_FRAME_X86_19041", "X86_DBG_ARG_MARK",
    "RegisterFrame", "decode_ktrap_frame", "decode_kexception_frame", "decode_context_record",
    "decode_ktrap_frame_x86", "trap_frame_of_machine_frame", "plausible_ktrap_frame", "MACHINE_AMD64",
    "MACHINE_I386",
]
