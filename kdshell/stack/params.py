"""Function parameters of a stack frame from private symbols, for `kp` / `kP`.

    params = frame_parameters(pdb, module_base, frame, is64, read)
        -> None          the PDB has no procedure record for the function (public symbols,
                         exports, assembly code) or the record is corrupt: kp prints the frame
                         as k does
        -> []            a function without parameters: kp prints `(void)`
        -> [Parameter]   each with its name, C type name and value (None: not recoverable)

The procedure, which of its variables are parameters and where each one is at the frame's
instruction all come from kdshell.symbols.locals, as for `dv` (its module note describes the
records): kp shows the parameters dv shows, at the same places (sub-registers such as BPL or
R9B included; x86 frame-relative parameters of S_FRAMEPROC code 1 count from VFRAME, not ESP).
A location whose address range does not cover the frame's instruction, or a register the walk
does not know for the frame (frame 0 included: a thread's saved context holds RIP/RSP/RBP
only), gives no value ("unavailable", as WinDbg prints it). Values of types up to 8 bytes are read;
larger ones (structures passed by value) are shown by address. A procedure type with arguments
but no parameter records gives `<argN>` names without values.

Windows/CodeView quirk: for a frame other than the top one the instruction is a return address,
i.e. just *after* the call; the range check uses the address of the call (frame.lookup_address;
dv does the same).
Pinned by tests/test_stack_commands.py::test_kp_shows_parameters_from_private_symbols.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from kdshell.errors import KdError
from kdshell.symbols import types as T
from kdshell.symbols.locals import argument_types, frame_registers, locate, procedure_at
from kdshell.symbols.values import c_type_name

if TYPE_CHECKING:
    from kdshell.stack.walk import Frame
    from kdshell.symbols.pdb import PdbFile


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


def frame_parameters(pdb: PdbFile, module_base: int, frame: Frame, is64: bool,
                     read: Callable[[int, int], bytes]) -> list[Parameter] | None:
    """The parameters of `frame`'s function with their values (see the module docstring)."""
    rva = frame.lookup_address - module_base
    try:
        proc = procedure_at(pdb, rva)
    except KdError:  # a corrupt record: dv says so; kp shows the frame without parameters
        return None
    if proc is None:
        return None
    params = [v for v in proc.visible(rva) if v.is_param]
    if not params:
        # a type but no records: names are unknown, values too
        return [Parameter(f"<arg{i}>", c_type_name(t), None)
                for i, t in enumerate(argument_types(pdb, proc.type_index))]
    registers = frame_registers(frame, is64)
    out = []
    for var in params:
        try:
            t = pdb.type_by_index(var.type_index).strip()
        except KdError:
            t = None
        size = t.size if t is not None and t.size else (8 if is64 else 4)
        pointer = t is not None and t.kind == T.POINTER
        signed = bool(t is not None and getattr(t, "signed", False) and not pointer)
        param = Parameter(var.name, c_type_name(t), None, size, signed, pointer)
        where = locate(proc, var, registers, rva, size)
        if where.address is not None:
            if size > 8:
                param.address = where.address
            else:
                try:
                    param.value = int.from_bytes(read(where.address, size), "little")
                except KdError:
                    pass
        elif where.value is not None and size <= 8:
            param.value = where.value & ((1 << (8 * size)) - 1)
        out.append(param)
    return out
