"""Function parameters of a stack frame from private symbols, for `kp` / `kP`.

    params = frame_parameters(pdb, module_base, frame, is64, read)
        -> None          the PDB has no procedure record for the function (public symbols,
                         exports): kp prints the frame as k does
        -> []            a function without parameters: kp prints `(void)`
        -> [Parameter]   each with its name, C type name and value (None: not recoverable)

Where a parameter lives comes from the function's records in its module's symbol stream
(CodeView, as LLVM and MSVC write them):
  S_LOCAL (flags: parameter) followed by S_DEFRANGE_* records:
    FRAMEPOINTER_REL[_FULL_SCOPE]   [frame base + offset]; the frame base is the register that
                                    S_FRAMEPROC names for parameters (RSP: the frame's Child-SP,
                                    RBP/R13: that register in the frame, when it is known)
    REGISTER_REL                    [register + offset]
    REGISTER                        the register itself (frame 0, or a non-volatile register the
                                    unwinder restored)
  S_REGREL32 (MSVC): [register + offset]; the first N of them are the N parameters.
A location whose address range does not cover the frame's instruction is not used (the value
is then "unavailable", as WinDbg prints it). Values of types up to 8 bytes are read; larger
ones (structures passed by value) are shown by address.

Windows/CodeView quirk: for a frame other than the top one the instruction is a return address,
i.e. just *after* the call; the range check uses the address of the call (frame.lookup_address).
Pinned by tests/test_stack_commands.py::test_kp_shows_parameters_from_private_symbols.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable

from kdshell.errors import KdError

S_END, S_BLOCK32, S_REGREL32, S_FRAMEPROC = 0x0006, 0x1103, 0x1111, 0x1012
S_LOCAL, S_DEFRANGE_REGISTER, S_DEFRANGE_FRAMEPOINTER_REL = 0x113E, 0x1141, 0x1142
S_DEFRANGE_FRAMEPOINTER_REL_FULL_SCOPE, S_DEFRANGE_REGISTER_REL = 0x1144, 0x1145
S_INLINESITE, S_INLINESITE_END, S_PROC_ID_END = 0x114D, 0x114E, 0x114F
PROC_KINDS = frozenset((0x110F, 0x1110, 0x1146, 0x1147, 0x1155, 0x1156))
S_INLINESITE2 = 0x115D
SCOPE_OPEN = PROC_KINDS | {S_BLOCK32, S_INLINESITE, S_INLINESITE2}
SCOPE_CLOSE = frozenset((S_END, S_INLINESITE_END, S_PROC_ID_END))
LOCAL_IS_PARAM = 0x0001

# CodeView register numbers (CV_AMD64_* / CV_REG_*) -> WinDbg names
CV_AMD64 = {328: "rax", 329: "rbx", 330: "rcx", 331: "rdx", 332: "rsi", 333: "rdi", 334: "rbp", 335: "rsp",
            **{336 + i: f"r{8 + i}" for i in range(8)}, 33: "rip"}
CV_X86 = {17: "eax", 18: "ecx", 19: "edx", 20: "ebx", 21: "esp", 22: "ebp", 23: "esi", 24: "edi", 33: "eip"}
# 32-bit views of 64-bit registers (a 32-bit parameter kept in ecx, r8d, ...)
CV_AMD64_LOW32 = {17: "rax", 18: "rcx", 19: "rdx", 20: "rbx", 21: "rsp", 22: "rbp", 23: "rsi", 24: "rdi",
                  **{360 + i: f"r{8 + i}" for i in range(8)}}
# S_FRAMEPROC flags bits 16-17 (encodedParamBasePointer): 1 = stack pointer, 2 = frame pointer
PARAM_BASE_X64 = {1: "rsp", 2: "rbp", 3: "r13"}
PARAM_BASE_X86 = {1: "esp", 2: "ebp", 3: "ebx"}


@dataclass
class Location:
    kind: str                  # "frame" | "regrel" | "register"
    register: str | None = None
    offset: int = 0
    start: int | None = None   # RVA range where the location holds (None: the whole function)
    length: int = 0
    gaps: tuple[tuple[int, int], ...] = ()

    def covers(self, rva: int) -> bool:
        if self.start is None:
            return True
        if not self.start <= rva < self.start + self.length:
            return False
        return not any(self.start + g <= rva < self.start + g + n for g, n in self.gaps)


@dataclass
class ParamInfo:
    name: str
    type_index: int
    locations: list[Location]


@dataclass
class Parameter:
    name: str
    type_name: str
    value: int | None
    size: int = 8
    signed: bool = False
    pointer: bool = False
    address: int | None = None   # where a large (by-value) parameter lives

    @property
    def value_text(self) -> str:
        if self.value is None:
            if self.address is not None:
                return f"0x{self.address:x}"
            return "<Value unavailable error>"
        v = self.value
        if self.pointer:
            return "0x" + (f"{v >> 32:08x}`{v & 0xFFFFFFFF:08x}" if self.size == 8 else f"{v:08x}")
        if self.signed:
            bits = self.size * 8
            if v >> (bits - 1) & 1:
                v -= 1 << bits
            return f"0n{v}"
        if self.size == 8 and v >> 32:
            return f"0x{v >> 32:x}`{v & 0xFFFFFFFF:08x}"
        return f"{v:#x}"


def _cstr(buf: bytes, pos: int, end: int) -> str:
    stop = buf.find(b"\0", pos, end)
    return bytes(buf[pos : stop if stop >= 0 else end]).decode("utf-8", "replace")


def _range(data: bytes, p: int, rva_of) -> tuple[int | None, int, tuple]:
    off, seg, length = struct.unpack_from("<IHH", data, p)
    gaps = []
    q = p + 8
    while q + 4 <= len(data):
        gaps.append(struct.unpack_from("<HH", data, q))
        q += 4
    return rva_of(seg, off), length, tuple(gaps)


_CACHE: dict[tuple[int, int], tuple | None] = {}


def procedure_info(pdb: Any, rva: int) -> tuple[Any, list[ParamInfo], int] | None:
    """(function Symbol, parameter records, S_FRAMEPROC flags) of the function containing
    `rva`, or None when the PDB has no procedure record for it."""
    hit = pdb.lookup(rva)
    if hit is None:
        return None
    sym = hit[0]
    key = (id(pdb), sym.rva)
    if key in _CACHE:
        return _CACHE[key]
    found = None
    if sym.kind == "function" and sym.module >= 0 and 0 <= sym.module < len(pdb.modules):
        stream = pdb.modules[sym.module].stream
        if stream != 0xFFFF:
            try:
                found = _scan_module(pdb, pdb.msf.stream(stream), sym)
            except (struct.error, IndexError, KdError):
                found = None
    if len(_CACHE) > 4096:
        _CACHE.clear()
    _CACHE[key] = found
    return found


def _scan_module(pdb: Any, data: bytes, sym: Any):
    pos, end = 4, len(data)
    while pos + 4 <= end:
        n, kind = struct.unpack_from("<HH", data, pos)
        rec_end = pos + 2 + n
        if n < 2 or rec_end > end:
            return None
        if kind in PROC_KINDS:
            off, seg = struct.unpack_from("<IH", data, pos + 4 + 28)
            if pdb.rva_of(seg, off) == sym.rva:
                return (sym,) + _proc_body(pdb, data, rec_end, end)
            # skip to the procedure's end (parent/end are stream offsets)
            (proc_end,) = struct.unpack_from("<I", data, pos + 8)
            if pos < proc_end < end:
                n2, _ = struct.unpack_from("<HH", data, proc_end)
                rec_end = proc_end + 2 + n2
        pos = rec_end
    return None


def _proc_body(pdb: Any, data: bytes, pos: int, end: int) -> tuple[list[ParamInfo], int]:
    params: list[ParamInfo] = []
    regrels: list[ParamInfo] = []
    flags = 0
    depth = 0
    current: ParamInfo | None = None
    while pos + 4 <= end:
        n, kind = struct.unpack_from("<HH", data, pos)
        p, rec_end = pos + 4, pos + 2 + n
        pos = rec_end
        if kind in SCOPE_CLOSE:
            if depth == 0:
                break
            depth -= 1
            continue
        if kind in SCOPE_OPEN:
            depth += 1
            current = None
            continue
        if depth:
            continue
        rec = data[p:rec_end]
        if kind == S_FRAMEPROC:
            flags = struct.unpack_from("<I", rec, 22)[0]
        elif kind == S_LOCAL:
            ti, lflags = struct.unpack_from("<IH", rec, 0)
            current = None
            if lflags & LOCAL_IS_PARAM:
                current = ParamInfo(_cstr(rec, 6, len(rec)), ti, [])
                params.append(current)
        elif current is not None and kind == S_DEFRANGE_FRAMEPOINTER_REL:
            (off,) = struct.unpack_from("<i", rec, 0)
            start, length, gaps = _range(rec, 4, pdb.rva_of)
            current.locations.append(Location("frame", None, off, start, length, gaps))
        elif current is not None and kind == S_DEFRANGE_FRAMEPOINTER_REL_FULL_SCOPE:
            (off,) = struct.unpack_from("<i", rec, 0)
            current.locations.append(Location("frame", None, off))
        elif current is not None and kind == S_DEFRANGE_REGISTER_REL:
            reg, _, off = struct.unpack_from("<HHi", rec, 0)
            start, length, gaps = _range(rec, 8, pdb.rva_of)
            current.locations.append(Location("regrel", _reg(pdb, reg), off, start, length, gaps))
        elif current is not None and kind == S_DEFRANGE_REGISTER:
            reg, _ = struct.unpack_from("<HH", rec, 0)
            start, length, gaps = _range(rec, 4, pdb.rva_of)
            current.locations.append(Location("register", _reg(pdb, reg), 0, start, length, gaps))
        elif kind == S_REGREL32:
            off, ti, reg = struct.unpack_from("<iIH", rec, 0)
            regrels.append(ParamInfo(_cstr(rec, 10, len(rec)), ti, [Location("regrel", _reg(pdb, reg), off)]))
    if not params and regrels:
        params = regrels  # frame_parameters keeps as many as the function type has arguments
    return params, flags


def _reg(pdb: Any, number: int) -> str | None:
    if getattr(pdb, "pointer_size", 8) == 8:
        return CV_AMD64.get(number) or CV_AMD64_LOW32.get(number)
    return CV_X86.get(number)


def kp_type_name(t: Any) -> str:
    """WinDbg's spelling of a parameter type in kp: `struct _DRIVER_OBJECT *`, `unsigned int64`."""
    from kdshell.symbols.types import CLASS, ENUM, POINTER, STRUCT, UNION, c_name

    if t is None:
        return "<unknown>"
    text = c_name(t).replace("__int64", "int64")
    inner, depth = t.strip(), 0
    while inner.kind == POINTER and inner.target is not None and depth < 8:
        inner, depth = inner.target.strip(), depth + 1
    if inner.kind in (STRUCT, CLASS, UNION, ENUM) and not text.startswith(inner.kind + " "):
        text = f"{inner.kind} {text}"
    return text


def frame_parameters(pdb: Any, module_base: int, frame: Any, is64: bool,
                     read: Callable[[int, int], bytes]) -> list[Parameter] | None:
    """The parameters of `frame`'s function with their values (see the module docstring)."""
    from kdshell.symbols.types import POINTER

    rva = frame.lookup_address - module_base
    info = procedure_info(pdb, rva)
    if info is None:
        return None
    sym, params, flags = info
    ftype = pdb.symbol_type(sym)
    arg_types = list(ftype.args) if ftype is not None and ftype.kind == "function" else []
    if not params and arg_types and not (len(arg_types) == 1 and kp_type_name(arg_types[0]) == "void"):
        # a type but no records: names are unknown, values too
        return [Parameter(f"<arg{i}>", kp_type_name(t), None) for i, t in enumerate(arg_types)]
    if len(params) > len(arg_types) and arg_types and all(p.locations[0].kind == "regrel" for p in params):
        params = params[: len(arg_types)]   # MSVC S_REGREL32: the first N records are the parameters
    base_names = PARAM_BASE_X64 if is64 else PARAM_BASE_X86
    base_reg = base_names.get((flags >> 16) & 3)
    sp_name = "rsp" if is64 else "esp"
    out = []
    for p in params:
        try:
            t = pdb.type_by_index(p.type_index).strip()
        except KdError:
            t = None
        size = t.size if t is not None and t.size else (8 if is64 else 4)
        pointer = t is not None and t.kind == POINTER
        signed = bool(t is not None and getattr(t, "signed", False) and not pointer)
        param = Parameter(p.name, kp_type_name(t), None, size, signed, pointer)
        loc = next((loc for loc in p.locations if loc.covers(rva)), None)
        if loc is not None:
            _evaluate(param, loc, frame, base_reg, sp_name, read)
        out.append(param)
    return out


def _register(frame: Any, name: str | None, sp_name: str) -> int | None:
    if name is None:
        return None
    if name == sp_name:
        return frame.sp
    if frame.number != 0 and name not in frame.known:
        return None
    return frame.registers.get(name)


def _evaluate(param: Parameter, loc: Location, frame: Any, base_reg: str | None, sp_name: str,
              read: Callable[[int, int], bytes]) -> None:
    if loc.kind == "register":
        value = _register(frame, loc.register, sp_name)
        if value is not None and param.size <= 8:
            param.value = value & ((1 << (8 * param.size)) - 1)
        return
    base = _register(frame, loc.register if loc.kind == "regrel" else base_reg, sp_name)
    if base is None:
        return
    address = (base + loc.offset) & 0xFFFF_FFFF_FFFF_FFFF
    if param.size > 8:
        param.address = address
        return
    try:
        param.value = int.from_bytes(read(address, param.size), "little")
    except KdError:
        pass
