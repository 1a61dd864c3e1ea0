"""Small pieces the kernel-object readers share: field offsets resolved once from an offsets
object, typed reads from a memory reader, and a bounded, loop-safe LIST_ENTRY walk.

The offsets object is a `kdshell.kernel.offsets.KernelOffsets` (PDB types, then the KDBG's
Offset*/Size* fields, then the built-in table), or anything with the same three methods:
`offset(type, path)`, `source(type, path)` and `size(type)`; `types` (a TypeSource or None) is
used for bitfields. The memory reader needs only `read(address, size)`, raising
MemoryNotPresent for bytes the dump does not have.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from kdshell.errors import KdError, MemoryNotPresent

# No real list is longer; a longer walk is a corrupt (or hostile) list.
MAX_LIST_ENTRIES = 65536


class FieldOffsets(Protocol):
    """What a StructLayout asks of its offsets object (kdshell.kernel.offsets.KernelOffsets)."""

    def offset(self, type_name: str, path: str) -> int | None: ...

    def source(self, type_name: str, path: str) -> str | None: ...


class Memory(Protocol):
    """A memory reader: bytes at a virtual address, MemoryNotPresent for those the dump lacks."""

    def read(self, address: int, size: int) -> bytes: ...


class OffsetUnknown(KdError):
    """A field whose offset no source knows for this build."""


@dataclass
class StructLayout:
    """Field offsets for one reader, each from the first (type, path) alternative that some
    source knows: `spec` maps a short name to its alternatives (the same field reached through
    _ETHREAD.Tcb.X or _KTHREAD.X, say)."""

    offsets: FieldOffsets
    spec: dict[str, tuple[tuple[str, str], ...]]
    build: int | None = None
    arm64: bool = False  # ARM64's structures (no CR8; the KPCR keeps the IRQL)
    found: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    where: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, alternatives in self.spec.items():
            for type_name, path in alternatives:
                value = self.offsets.offset(type_name, path)
                if value is not None:
                    self.found[name] = value
                    self.sources[name] = self.offsets.source(type_name, path) or "?"
                    self.where[name] = (type_name, path)
                    break

    def get(self, name: str) -> int | None:
        return self.found.get(name)

    def missing(self, names: tuple[str, ...]) -> list[str]:
        """"_TYPE.Field" of each of `names` whose offset no source knows."""
        return [".".join(self.spec[n][0]) for n in names if n not in self.found]

    def missing_line(self, names: tuple[str, ...]) -> str | None:
        """One line naming the offsets that are not known (None: all are)."""
        gone = self.missing(names)
        if not gone:
            return None
        build = getattr(self.offsets, "build", self.build)
        arch = "ARM64 " if self.arm64 or getattr(self.offsets, "arm64", False) else ""
        what, verb = ("offset of", "is") if len(gone) == 1 else ("offsets of", "are")
        return (f"The {what} {', '.join(gone)} {verb} not known for {arch}build {build} (no kernel PDB, "
                "KDBG field or built-in entry): load the kernel's symbols")

    def need(self, name: str) -> int:
        value = self.found.get(name)
        if value is None:
            type_name, path = self.spec[name][0]
            build = getattr(self.offsets, "build", self.build)
            raise OffsetUnknown(f"The offset of {type_name}.{path} is not known for build {build} "
                                "(no kernel PDB, KDBG field or built-in entry): load the kernel's symbols")
        return value

    def bitfield(self, name: str) -> tuple[int, int, int] | None:
        """(byte offset, bit position, bit length) of a bitfield, from PDB types only."""
        types = getattr(self.offsets, "types", None)
        if types is None:
            return None
        for type_name, path in self.spec.get(name, ()):
            t = types.find(type_name)
            if t is None:
                continue
            try:
                found = t.find_field(path)
            except KdError:
                found = None
            if found is None:
                continue
            offset, ftype = found
            if getattr(ftype, "kind", "") == "bitfield":
                return offset, ftype.bit_position, ftype.bit_length
        return None


class Reader:
    """Typed little-endian reads; `maybe_*` answer None for missing bytes or unknown offsets."""

    def __init__(self, memory: Memory, is64: bool) -> None:
        self.memory = memory
        self.is64 = is64
        self.psize = 8 if is64 else 4
        self.mask = 0xFFFF_FFFF_FFFF_FFFF if is64 else 0xFFFFFFFF

    def read(self, address: int, size: int) -> bytes:
        return self.memory.read(address & self.mask, size)

    def uint(self, address: int, size: int) -> int:
        return int.from_bytes(self.read(address, size), "little")

    def ptr(self, address: int) -> int:
        return self.uint(address, self.psize)

    def maybe_uint(self, base: int, offset: int | None, size: int) -> int | None:
        if offset is None:
            return None
        try:
            return self.uint(base + offset, size)
        except MemoryNotPresent:
            return None

    def maybe_ptr(self, base: int, offset: int | None) -> int | None:
        return self.maybe_uint(base, offset, self.psize)

    def maybe_bits(self, base: int, bits: tuple[int, int, int] | None) -> int | None:
        if bits is None:
            return None
        offset, pos, length = bits
        nbytes = (pos + length + 7) // 8
        raw = self.maybe_uint(base, offset, nbytes)
        return None if raw is None else (raw >> pos) & ((1 << length) - 1)

    def unicode_string(self, address: int, limit: int = 1024) -> str | None:
        """A UNICODE_STRING's text (Length in bytes, Buffer after the alignment pad)."""
        try:
            length = self.uint(address, 2)
            buffer = self.ptr(address + (8 if self.is64 else 4))
            if not length or not buffer:
                return ""
            return self.read(buffer, min(length, 2 * limit) & ~1).decode("utf-16-le", "replace")
        except MemoryNotPresent:
            return None


@dataclass
class ListWalk:
    entries: list[int]
    warning: str | None = None


def walk_list(reader: Reader, head: int, what: str, limit: int = MAX_LIST_ENTRIES) -> ListWalk:
    """The entries (LIST_ENTRY addresses) of the doubly linked list at `head`, following Flink.

    Bounded and loop-safe: an unreadable entry, an entry seen twice, a NULL link or more than
    `limit` entries end the walk with a warning (the entries met so far are kept)."""
    head &= reader.mask  # a 32-bit target's KDBG pointers are sign-extended
    entries: list[int] = []
    seen = {head}
    try:
        entry = reader.ptr(head)
    except MemoryNotPresent:
        return ListWalk([], f"The {what} list head at {head:#x} is not in the dump")
    while entry != head:
        if entry == 0:
            return ListWalk(entries, f"The {what} list is broken: a NULL link after {len(entries)} entries")
        if entry in seen:
            return ListWalk(entries, f"The {what} list loops at {entry:#x}; stopped after {len(entries)} entries")
        if len(entries) >= limit:
            return ListWalk(entries, f"The {what} list has more than {limit} entries; stopped there")
        seen.add(entry)
        try:
            nxt = reader.ptr(entry)
        except MemoryNotPresent:
            return ListWalk(entries, f"The {what} list entry at {entry:#x} is not in the dump; "
                                     f"the list stops after {len(entries)} entries")
        entries.append(entry)
        entry = nxt
    return ListWalk(entries)
