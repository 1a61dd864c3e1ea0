"""Object headers: what !object shows. Every object the object manager allocates has an
OBJECT_HEADER in front of its body: pointer and handle counts, and a TypeIndex that names its
OBJECT_TYPE through nt!ObTypeIndexTable.

    layout = object_layout(offsets, is64)
    header = read_object_header(memory, body_address, layout, is64)    # MemoryNotPresent if not in the dump
    kind = object_type(memory, header, layout, is64, build, cookie_at, table_at, examples)
    kind.index, kind.address (the OBJECT_TYPE), kind.name

Windows quirk -- the encoded TypeIndex. Since Windows 10 (build 10240) the header stores
TypeIndex XORed with the second byte of the header's own address and the byte nt!ObHeaderCookie:
stored 0x5C at header 0xFFFF8A0C`12345630 with cookie 0x2D is 0x5C ^ 0x56 ^ 0x2D = 0x27. We
decode it with the cookie; without the cookie (no kernel PDB) the index stays unknown, but two
objects still have the same type exactly when `stored ^ second address byte` agree.

Naming the type: ObTypeIndexTable[index] -> OBJECT_TYPE.Name. When that cannot be read (the
table is not in the dump, or holds no entry), an object whose index equals that of an object
the kernel itself designates -- the current thread, its process -- has that object's type; any
other keeps its number (`<type index 33>`). The dispatcher header is not consulted: a
DEVICE_OBJECT's Type (3, IO_TYPE_DEVICE) reads as ProcessObject. Pinned by
tests/test_kernel_commands.py::test_object_header and ::test_object_device_is_not_a_process.
"""
from __future__ import annotations

from dataclasses import dataclass

from kdshell.errors import MemoryNotPresent
from kdshell.kernel.layout import FieldOffsets, Memory, Reader, StructLayout

OBJECT_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "body": (("_OBJECT_HEADER", "Body"),),
    "pointer_count": (("_OBJECT_HEADER", "PointerCount"),),
    "handle_count": (("_OBJECT_HEADER", "HandleCount"),),
    "type_index": (("_OBJECT_HEADER", "TypeIndex"),),
    "type_name": (("_OBJECT_TYPE", "Name"),),
}
# When no source knows a field: OBJECT_HEADER and OBJECT_TYPE's head have kept this layout since
# Windows 7 (OBJECT_TYPE: TypeList, then Name).
DEFAULT_OFFSETS = {
    True: {"body": 0x30, "pointer_count": 0, "handle_count": 8, "type_index": 0x18, "type_name": 0x10},
    False: {"body": 0x18, "pointer_count": 0, "handle_count": 4, "type_index": 0xC, "type_name": 0x8},
}
ENCODED_INDEX_BUILD = 10240  # the first build whose headers store TypeIndex encoded


def object_layout(offsets: FieldOffsets, is64: bool = True, build: int | None = None) -> StructLayout:
    return StructLayout(offsets, OBJECT_FIELDS, build)


def _offset(layout: StructLayout, name: str, is64: bool) -> int:
    found = layout.get(name)
    return found if found is not None else DEFAULT_OFFSETS[is64][name]


@dataclass
class ObjectHeader:
    body: int           # the object's address
    address: int        # its OBJECT_HEADER
    pointer_count: int  # LONG_PTR, signed
    handle_count: int
    stored_index: int   # TypeIndex as stored (encoded from build 10240)

    def unkeyed_index(self, build: int) -> int:
        """TypeIndex without the address byte (still XORed with the cookie on an encoding build):
        equal for two objects exactly when their types are."""
        return self.stored_index ^ ((self.address >> 8) & 0xFF) if build >= ENCODED_INDEX_BUILD else self.stored_index


def header_address(body: int, layout: StructLayout, is64: bool) -> int:
    return body - _offset(layout, "body", is64)


def read_object_header(memory: Memory, body: int, layout: StructLayout, is64: bool) -> ObjectHeader:
    """The header of the object at `body`; MemoryNotPresent when the dump does not have it."""
    r = Reader(memory, is64)
    header = header_address(body, layout, is64)
    sign = 1 << (8 * r.psize - 1)

    def signed(value: int) -> int:
        return value - 2 * sign if value & sign else value

    return ObjectHeader(body, header, signed(r.uint(header + _offset(layout, "pointer_count", is64), r.psize)),
                        signed(r.uint(header + _offset(layout, "handle_count", is64), r.psize)),
                        r.uint(header + _offset(layout, "type_index", is64), 1))


@dataclass
class ObjectType:
    index: int | None    # the decoded TypeIndex (None: it needs nt!ObHeaderCookie, which is unknown)
    address: int | None  # its OBJECT_TYPE, when ObTypeIndexTable says
    name: str | None     # None: no source names it


def object_type(memory: Memory, header: ObjectHeader, layout: StructLayout, is64: bool, build: int,
                cookie_at: int | None, table_at: int | None, examples: dict[str, int]) -> ObjectType:
    """The object's type from its TypeIndex (see the module note). `cookie_at`: the address of
    nt!ObHeaderCookie; `table_at`: of nt!ObTypeIndexTable; `examples`: type name -> the body of
    an object known to be of that type."""
    r = Reader(memory, is64)
    index: int | None = header.unkeyed_index(build)
    if build >= ENCODED_INDEX_BUILD:
        cookie = r.maybe_uint(cookie_at, 0, 1) if cookie_at else None
        index = header.unkeyed_index(build) ^ cookie if cookie is not None else None
    type_object = r.maybe_ptr(table_at, index * r.psize) if table_at and index is not None else None
    if type_object:
        name = r.unicode_string(type_object + _offset(layout, "type_name", is64))
        if name:
            return ObjectType(index, type_object, name)
    wanted = header.unkeyed_index(build)
    for name, body in examples.items():
        try:
            if body and read_object_header(memory, body, layout, is64).unkeyed_index(build) == wanted:
                return ObjectType(index, type_object, name)
        except MemoryNotPresent:
            continue
    return ObjectType(index, type_object, None)
