"""Fuzz target: the PE image reader (headers, sections, exports, debug directory / RSDS,
.pdata, version resource) and the x64 unwinder and stack walker over its unwind data.

One input is a whole image file. It is read twice, as kdshell meets images:
1. from the file (PeImage.from_file: pefile maps the sections and relocates to another base,
   as for an image from the image path);
2. in memory (PeImage over the mapped bytes, as for an image read from the dump).
Every fact is asked for (a PeFormatError or another KdError is a clean answer). Then, for up
to 24 .pdata entries picked by the input's hash, one virtual unwind step at a few offsets of
the function against a stack made from the input's own bytes, and one bounded stack walk
(64 frames) through a module table holding the image, so chained/indirect entries, epilog
emulation and the walker's progress rules all see hostile data.

Seeds: the corpus's Microsoft images (amdppm.sys, Wdf01000.sys) and the fixture images.
"""
from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass

from fuzz import seeds as _seeds
from fuzz.engine import shape, tmp_dir, u32

NAME = "pe_unwind"
TIMEOUT = 20.0
BASE = 0xFFFFF80123400000
STACK = 0xFFFFF88000A00000
_TMP = None


def seeds() -> list[tuple[str, bytes]]:
    return _seeds.images()


def _sections(data: bytes):
    """(virtual address, virtual size, raw offset) of each section, from literal offsets."""
    lfanew = u32(data, 0x3C)
    if not (0 < lfanew < len(data) - 0x100 and data[lfanew:lfanew + 4] == b"PE\0\0"):
        return None, []
    opt = lfanew + 0x18
    nsec = struct.unpack_from("<H", data, lfanew + 6)[0]
    sec = opt + struct.unpack_from("<H", data, lfanew + 0x14)[0]
    out = []
    for i in range(min(nsec, 32)):
        at = sec + 40 * i
        if at + 40 > len(data):
            break
        va, vsize, _, raw = struct.unpack_from("<IIII", data, at + 8)
        out.append((va, vsize, raw))
    return opt, out


def HOT(data: bytes) -> list[tuple[int, int]]:
    """The headers and section table; .pdata and the UNWIND_INFO of its first entries."""
    hot = [(0, 0x400)]
    opt, sections = _sections(data)
    if opt is None or data[opt:opt + 2] != b"\x0b\x02":
        return hot

    def file_offset(rva):
        for va, vsize, raw in sections:
            if va <= rva < va + vsize and raw:
                return raw + rva - va
        return None

    pdata = file_offset(u32(data, opt + 0x70 + 3 * 8))
    if pdata is not None:
        hot.append((pdata, min(len(data), pdata + 0x300)))
        for k in range(8):
            info = file_offset(u32(data, pdata + 12 * k + 8) & ~1)
            if info is not None:
                hot.append((info, min(len(data), info + 0x40)))
    return hot


@dataclass
class _Module:
    name: str
    base: int
    size: int
    image: object
    exception_directory: tuple[int, int] | None = None


class _Modules:
    def __init__(self, module: _Module):
        self.module = module

    def module_at(self, address: int):
        m = self.module
        return m if m.base <= address < m.base + m.size else None

    def function_start(self, address: int) -> bool:
        return False  # no symbols: the walker knows the .pdata begin addresses itself


def _facts(img) -> None:
    img.machine_name, img.end, img.export_name, img.reproducible
    img.exports
    for e in img.debug_entries:
        pass
    img.codeview
    img.version_info
    funcs = img.runtime_functions
    for f in funcs[:8]:
        img.runtime_function(f.begin)
        img.section_at(f.begin)
    for d in range(16):
        img.directory(d)


def _stack(data: bytes, rng: random.Random) -> bytes:
    """0x2000 bytes of stack: the input's bytes with return addresses into the image sprinkled."""
    raw = bytearray((data * (0x2000 // max(1, len(data)) + 1))[rng.randrange(max(1, len(data))):][:0x2000])
    raw += bytes(0x2000 - len(raw))
    for _ in range(16):
        at = rng.randrange(0, 0x2000 - 8, 8)
        struct.pack_into("<Q", raw, at, BASE + rng.randrange(0x1000, 0x10000))
    return bytes(raw)


def one_input(data: bytes) -> None:
    global _TMP
    from kdshell.errors import KdError, MemoryNotPresent
    from kdshell.stack.unwind_x64 import UnwindCache, virtual_unwind
    from kdshell.stack.walk import Walker
    from kdshell.symbols.pe import BytesReader, PeImage

    if _TMP is None:
        _TMP = tmp_dir()
    path = _TMP / "input.sys"
    path.write_bytes(data)
    img = PeImage.from_file(str(path), BASE)
    _facts(img)
    mem_img = PeImage(BytesReader(img.reader.data, BASE), BASE)  # as read from a dump
    _facts(mem_img)
    if not img.is64:
        return "32-bit"
    rng = random.Random(hashlib.sha1(data).digest())
    stack = _stack(data, rng)

    def read(address: int, size: int) -> bytes:
        off = address - STACK
        if 0 <= off and off + size <= len(stack):
            return stack[off:off + size]
        off = address - BASE
        if 0 <= off and off + size <= len(img.reader.data):
            return img.reader.data[off:off + size]
        raise MemoryNotPresent(address, "not in the fuzz machine")

    rva, size = img.directory(3)
    module = _Module("fuzz", BASE, img.size_of_image, lambda r, n: img.read(r, n), (rva, size) if rva else None)
    modules = _Modules(module)
    cache = UnwindCache()
    errors: set[str] = set()
    funcs = img.runtime_functions
    for f in rng.sample(funcs, min(24, len(funcs))):
        for off in {0, 1, max(0, f.end - f.begin - 1), rng.randrange(max(1, f.end - f.begin))}:
            context = {name: rng.getrandbits(64) for name in (
                "rax", "rcx", "rdx", "rbx", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")}
            context.update(rip=BASE + f.begin + off, rsp=STACK + rng.randrange(0, 0x1000, 8), efl=0x246)
            context["rbp"] = rng.choice((context["rsp"] + 0x40, context["rbp"], STACK + 0x1800))
            try:
                caller, step = virtual_unwind(context, modules.module_at, read, cache)
            except KdError as exc:
                errors.add(shape(exc)[:40])
                continue
            if not (0 <= caller["rsp"] < 1 << 64 and 0 <= caller["rip"] < 1 << 64):
                raise AssertionError(f"unwind produced an out-of-range register: {caller}")
    if funcs:
        f = rng.choice(funcs)
        context = {"rip": BASE + f.begin + rng.randrange(max(1, f.end - f.begin)), "rsp": STACK + 0x100,
                   "rbp": STACK + 0x200}
        walk = Walker(read, modules).walk(context, 64)
        if len(walk) > 64:
            raise AssertionError(f"the walk went past its frame limit: {len(walk)} frames")
        errors.add(f"walk:{walk.stop}"[:30])
    return f"{min(len(funcs), 5)}:" + ",".join(sorted(errors))
