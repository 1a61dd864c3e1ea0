"""Micro-benchmark: a 64-frame x64 stack walk, warm, beside a cold walk, code-only and scan-only walks.

    python bench/stack_walk.py [--repeat 200]

Builds a small module in memory - three functions that call each other in a ring, with the
prologs compilers emit (push/push/sub; push rbp/sub/lea rbp = SET_FPREG with a lea-rsp epilog;
a 4 KB ALLOC_LARGE frame with SAVE_NONVOL) and their .pdata/UNWIND_INFO written by hand - runs it
under Unicorn until it is 64 calls deep, and walks that genuine stack:

  - kdshell warm   one Walker reused: function tables and UNWIND_INFO cached
  - kdshell cold   a new Walker per walk: headers, .pdata and UNWIND_INFO read and parsed again
  - code           the module's image hidden (no unwind data), its code readable: every frame is
                   found by following the code from the return address to its epilog
                   (kdshell.stack.forward); warm (the answer per address cached) and cold
  - scan only      the same, the code not read either, so every frame is found by stack
                   scanning (the simple baseline: what a "drivers on the stack" scanner does)

Run by hand; nothing here is asserted (DESIGN.md: bench/ is not CI). Needs unicorn.
"""
from __future__ import annotations

import argparse
import statistics
import struct
import sys
import time
from dataclasses import dataclass

import unicorn
from unicorn import x86_const as X

from kdshell.errors import MemoryNotPresent
from kdshell.stack.walk import Walker

BASE = 0x1000_0000
SIZE = 0x4000
STACK = 0x2000_0000
STACK_SIZE = 0x40000
DEPTH = 64


def _code() -> tuple[bytearray, list[int]]:
    image = bytearray(SIZE)

    def put(rva: int, hexcode: str) -> None:
        raw = bytes.fromhex(hexcode.replace(" ", ""))
        image[rva:rva + len(raw)] = raw

    def call(at: int, target: int) -> str:
        return "E8" + struct.pack("<i", target - (at + 5)).hex()

    a, b, c = 0x1000, 0x1100, 0x1200
    # A: push rbx; push rsi; sub rsp, 0x28; dec ecx; jz done; call B; done: add rsp, 0x28; pop rsi; pop rbx; ret
    put(a, "53 56 4883EC28 FFC9 7405" + call(a + 0xA, b) + " 4883C428 5E 5B C3")
    # B: push rbp; sub rsp, 0x30; lea rbp, [rsp+0x20]; dec ecx; jz done; call C;
    #    done: lea rsp, [rbp+0x10]; pop rbp; ret
    put(b, "55 4883EC30 488D6C2420 FFC9 7405" + call(b + 0xE, c) + " 488D6510 5D C3")
    # C: sub rsp, 0x1008; mov [rsp+0x1000], rdi; dec ecx; jz done; call A;
    #    done: mov rdi, [rsp+0x1000]; add rsp, 0x1008; ret
    put(c, "4881EC08100000 4889BC2400100000 FFC9 7405" + call(c + 0x13, a)
        + " 488BBC2400100000 4881C408100000 C3")

    def info(prolog: int, codes: list[int], frame: int = 0) -> bytes:
        raw = bytes([1, prolog, len(codes), frame]) + struct.pack(f"<{len(codes)}H", *codes)
        return raw + (b"\0\0" if len(codes) % 2 else b"")

    xdata = [
        info(6, [0x6 | 2 << 8 | 4 << 12, 0x2 | 0 << 8 | 6 << 12, 0x1 | 0 << 8 | 3 << 12]),
        info(0xA, [0xA | 3 << 8, 0x5 | 2 << 8 | 5 << 12, 0x1 | 0 << 8 | 5 << 12], frame=5 | 2 << 4),
        info(0xF, [0xF | 4 << 8 | 7 << 12, 0x200, 0x7 | 1 << 8, 0x201]),
    ]
    pdata = b""
    at = 0x3000
    for (begin, end), raw in zip(((a, a + 0x16), (b, b + 0x19), (c, c + 0x28)), xdata):
        image[at:at + len(raw)] = raw
        pdata += struct.pack("<III", begin, end, at)
        at += (len(raw) + 3) & ~3
    image[0x2000:0x2000 + len(pdata)] = pdata
    return image, [a + 0xF, b + 0x13, c + 0x18]


@dataclass
class Module:
    name: str
    base: int
    size: int
    image: object
    exception_directory: tuple[int, int] = (0x2000, 36)


class Modules:
    def __init__(self, module: Module):
        self.module = module

    def module_at(self, address: int):
        m = self.module
        return m if m.base <= address < m.base + m.size else None

    def function_start(self, address: int) -> bool:
        return False


def build():
    image, done = _code()
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.mem_map(BASE, SIZE)
    uc.mem_write(BASE, bytes(image))
    uc.mem_map(STACK, STACK_SIZE)
    rsp = STACK + STACK_SIZE - 0x108  # as a call leaves it: RSP = 8 mod 16 at a function's entry
    uc.mem_write(rsp, b"\0" * 8)  # return address 0 ends the walk
    uc.reg_write(X.UC_X86_REG_RSP, rsp)
    uc.reg_write(X.UC_X86_REG_RCX, DEPTH)
    stops = {BASE + d for d in done}
    state = {}

    def hook(_, address, size, __):
        if address in stops:
            state["regs"] = {n: uc.reg_read(getattr(X, f"UC_X86_REG_{n.upper()}"))
                             for n in ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10",
                                       "r11", "r12", "r13", "r14", "r15", "rip")}
            uc.emu_stop()

    uc.hook_add(unicorn.UC_HOOK_CODE, hook)
    uc.emu_start(BASE + 0x1000, 0, count=10_000)
    stack = bytes(uc.mem_read(STACK, STACK_SIZE))

    def read(address: int, size: int) -> bytes:
        off = address - STACK
        if 0 <= off and off + size <= STACK_SIZE:
            return stack[off:off + size]
        off = address - BASE
        if 0 <= off and off + size <= SIZE:
            return bytes(image[off:off + size])
        raise MemoryNotPresent(address, "not in the benchmark machine")

    def image_read(rva: int, n: int) -> bytes:
        if rva < 0 or rva + n > SIZE:
            raise MemoryNotPresent(BASE + rva, "past the image")
        return bytes(image[rva:rva + n])

    return state["regs"], read, image_read


def timeit(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args(argv)
    regs, read, image_read = build()
    visible = Modules(Module("bench.sys", BASE, SIZE, image_read))
    hidden = Modules(Module("bench.sys", BASE, SIZE, None))
    walker = Walker(read, visible)
    walk = walker.walk(regs, 1000)
    assert len(walk) == DEPTH and walk.stop == "null return address", (len(walk), walk.stop)
    assert all(f.how in ("context", "unwind") for f in walk)
    code_walker = Walker(read, hidden, max_scan_frames=1000)
    decoded = code_walker.walk(regs, 1000)
    scan_walker = Walker(read, hidden, max_scan_frames=1000, decode=False)
    scanned = scan_walker.walk(regs, 1000)
    rows = [
        ("kdshell warm (unwind data)", timeit(lambda: walker.walk(regs, 1000), args.repeat), len(walk)),
        ("kdshell cold (new Walker)", timeit(lambda: Walker(read, visible).walk(regs, 1000), args.repeat), len(walk)),
        ("code (image hidden), warm", timeit(lambda: code_walker.walk(regs, 1000), args.repeat), len(decoded)),
        ("code (image hidden), cold", timeit(lambda: Walker(read, hidden, max_scan_frames=1000).walk(regs, 1000),
                                             max(args.repeat // 10, 3)), len(decoded)),
        ("scan only (code not read)", timeit(lambda: scan_walker.walk(regs, 1000), args.repeat), len(scanned)),
    ]
    print(f"Python {sys.version.split()[0]}, unicorn {unicorn.__version__}, {DEPTH}-frame genuine stack, "
          f"median of {args.repeat}")
    print(f"{'walk':32} {'ms/walk':>9} {'us/frame':>9} {'frames':>7}")
    for name, t, n in rows:
        print(f"{name:32} {t * 1e3:9.3f} {t * 1e6 / max(n, 1):9.1f} {n:7d}")
    truth = [(f.ip, f.sp) for f in walk]
    print(f"code frames matching the unwound ones: {sum((f.ip, f.sp) in truth for f in decoded)}/{len(decoded)}")
    print(f"scan-only frames matching the unwound ones: {sum((f.ip, f.sp) in truth for f in scanned)}/{len(scanned)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
