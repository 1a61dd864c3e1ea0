"""PnP device nodes (DEVICE_NODE), a device's power fields (DEVOBJ_EXTENSION) and the VAD tree
(MMVAD_SHORT in an RTL_AVL_TREE): what !devnode, !podev and !vad read.

    nodes = DevNodes(memory, offsets, is64)
    nodes.tree(root)              # [(depth, DevNode)], depth-first, Child then Sibling
    nodes.node(address)           # one DevNode
    nodes.power(device)           # PowerInfo of a DEVICE_OBJECT (its DEVOBJ_EXTENSION)
    vads = VadTree(memory, offsets, is64).walk(root)   # [Vad] in address order, each with its level

Offsets come from the kernel's PDB, else the built-in table (kdshell/data/offsets.json, x64
19041..19045). The names of the devnode states, VAD types and protections are in
kdshell/data/mm_pnp_names.tsv. Walks are bounded and loop-safe: a node met twice, an unreadable
node or more than MAX_NODES nodes end the walk with a warning.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.layout import FieldOffsets, Memory, Reader, StructLayout

MAX_NODES = 65536
MAX_DEPTH = 256

DEVNODE_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "sibling": (("_DEVICE_NODE", "Sibling"),),
    "child": (("_DEVICE_NODE", "Child"),),
    "parent": (("_DEVICE_NODE", "Parent"),),
    "pdo": (("_DEVICE_NODE", "PhysicalDeviceObject"),),
    "instance": (("_DEVICE_NODE", "InstancePath"),),
    "service": (("_DEVICE_NODE", "ServiceName"),),
    "state": (("_DEVICE_NODE", "State"),),
    "previous": (("_DEVICE_NODE", "PreviousState"),),
    "problem": (("_DEVICE_NODE", "Problem"),),
    "flags": (("_DEVICE_NODE", "Flags"),),
    "dev_objext": (("_DEVICE_OBJECT", "DeviceObjectExtension"),),
    "dev_type": (("_DEVICE_OBJECT", "Type"),),
    "dev_driver": (("_DEVICE_OBJECT", "DriverObject"),),
    "doe_power": (("_DEVOBJ_EXTENSION", "PowerFlags"),),
    "doe_dope": (("_DEVOBJ_EXTENSION", "Dope"),),
    "doe_devnode": (("_DEVOBJ_EXTENSION", "DeviceNode"),),
}
TREE_NEEDS = ("sibling", "child", "pdo", "instance", "service", "state", "previous")

VAD_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "left": (("_MMVAD_SHORT", "VadNode.Left"), ("_RTL_BALANCED_NODE", "Left")),
    "right": (("_MMVAD_SHORT", "VadNode.Right"), ("_RTL_BALANCED_NODE", "Right")),
    "start": (("_MMVAD_SHORT", "StartingVpn"),),
    "end": (("_MMVAD_SHORT", "EndingVpn"),),
    "start_high": (("_MMVAD_SHORT", "StartingVpnHigh"),),
    "end_high": (("_MMVAD_SHORT", "EndingVpnHigh"),),
    "vad_type": (("_MMVAD_SHORT", "u.VadFlags.VadType"),),
    "protection": (("_MMVAD_SHORT", "u.VadFlags.Protection"),),
    "private": (("_MMVAD_SHORT", "u.VadFlags.PrivateMemory"),),
    "commit": (("_MMVAD_SHORT", "u1.VadFlags1.CommitCharge"),),
}
VAD_NEEDS = ("left", "right", "start", "end", "vad_type", "protection", "private")
# A mapped view's file: MMVAD.Subsection -> SUBSECTION.ControlArea -> CONTROL_AREA.FilePointer (an
# EX_FAST_REF: the low 4 bits on x64, 3 on x86, are a reference count) -> FILE_OBJECT.FileName
FILE_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "subsection": (("_MMVAD", "Subsection"),),
    "control_area": (("_SUBSECTION", "ControlArea"),),
    "file_pointer": (("_CONTROL_AREA", "FilePointer"),),
    "file_name": (("_FILE_OBJECT", "FileName"),),
}


class PnpError(KdError):
    """A device node, device object or VAD kdshell cannot read (one line)."""


@cache
def names() -> dict[str, dict[int, str]]:
    """kind -> value -> name, from kdshell/data/mm_pnp_names.tsv."""
    out: dict[str, dict[int, str]] = {}
    text = resources.files("kdshell").joinpath("data/mm_pnp_names.tsv").read_text(encoding="utf-8")
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        kind, value, name = line.split("\t")[:3]
        out.setdefault(kind, {})[int(value, 0)] = name
    return out


def state_name(value: int | None) -> str:
    if value is None:
        return "?"
    return names()["devnode_state"].get(value, f"{value:#x}")


def protection_name(value: int) -> str:
    """An MM_* protection index (MMVAD_FLAGS.Protection) in WinDbg's words."""
    table = names()["protection"]
    base = table.get(value & 7, "?")
    extra = {0x8: "NOCACHE", 0x10: "GUARD", 0x18: "WRITECOMBINE"}.get(value & 0x18)
    if value & 0x18 and value & 7 == 0:  # NOCACHE/GUARD/WRITECOMBINE over NO_ACCESS: decommitted forms
        return extra or base
    return f"{extra} {base}" if extra else base


def _bits_from_table(offsets: FieldOffsets, where: tuple[str, str] | None) -> tuple[int, int, int] | None:
    """(offset, position, length) of a bitfield the built-in table describes ("Pos 4, 3 Bits")."""
    entry = getattr(offsets, "entry", None)
    if entry is None or where is None:
        return None
    found = entry.types.get(where[0], {}).get("fields", {}).get(where[1])
    if not found or not str(found[1]).startswith("Pos "):
        return None
    head = found[1].split(" Bit")[0][4:]
    pos, length = (int(x) for x in head.split(","))
    return found[0], pos, length


@dataclass
class DevNode:
    address: int
    sibling: int = 0
    child: int = 0
    parent: int = 0
    pdo: int = 0
    instance_path: str | None = None
    service_name: str | None = None
    state: int | None = None
    previous_state: int | None = None
    problem: int | None = None
    flags: int | None = None


@dataclass
class Tree:
    nodes: list[tuple[int, DevNode]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class PowerInfo:
    device: int
    extension: int
    power_flags: int | None
    dope: int | None
    devnode: int | None

    @property
    def system_state(self) -> int | None:
        return None if self.power_flags is None else self.power_flags & 0xF

    @property
    def device_state(self) -> int | None:
        return None if self.power_flags is None else (self.power_flags >> 4) & 0xF


class DevNodes:
    def __init__(self, memory: Memory, offsets: FieldOffsets, is64: bool) -> None:
        self.layout = StructLayout(offsets, DEVNODE_FIELDS)
        self.r = Reader(memory, is64)
        self.is64 = is64

    def check(self) -> None:
        line = self.layout.missing_line(TREE_NEEDS)
        if line is not None:
            raise PnpError(line)

    def node(self, address: int) -> DevNode:
        self.check()
        f, r = self.layout.get, self.r
        try:
            r.read(address, 8)
        except MemoryNotPresent:
            raise PnpError(f"{address:x} is not in the dump: cannot read the device node") from None
        inst, svc = f("instance"), f("service")
        return DevNode(
            address=address, sibling=r.maybe_ptr(address, f("sibling")) or 0,
            child=r.maybe_ptr(address, f("child")) or 0, parent=r.maybe_ptr(address, f("parent")) or 0,
            pdo=r.maybe_ptr(address, f("pdo")) or 0,
            instance_path=r.unicode_string(address + inst) if inst is not None else None,
            service_name=r.unicode_string(address + svc) if svc is not None else None,
            state=r.maybe_uint(address, f("state"), 4), previous_state=r.maybe_uint(address, f("previous"), 4),
            problem=r.maybe_uint(address, f("problem"), 4), flags=r.maybe_uint(address, f("flags"), 4))

    def tree(self, root: int) -> Tree:
        """Depth-first from `root`: the node, its children (Child, then each one's Sibling)."""
        self.check()
        out = Tree()
        seen: set[int] = set()
        stack: list[tuple[int, int]] = [(0, root)]
        while stack:
            depth, address = stack.pop()
            if address in seen:
                out.warnings.append(f"Device node {address:x} is met twice: the tree loops, the walk stops there")
                continue
            if len(seen) >= MAX_NODES or depth > MAX_DEPTH:
                out.warnings.append(f"More than {MAX_NODES} nodes or {MAX_DEPTH} levels: the walk stops")
                break
            seen.add(address)
            try:
                node = self.node(address)
            except PnpError as e:
                out.warnings.append(str(e))
                continue
            out.nodes.append((depth, node))
            children: list[int] = []
            child = node.child
            while child and child not in children and len(children) < MAX_NODES:
                children.append(child)
                try:
                    child = self.node(child).sibling
                except PnpError:
                    break
            stack += [(depth + 1, c) for c in reversed(children)]
        return out

    def power(self, device: int) -> PowerInfo:
        f, r = self.layout.get, self.r
        line = self.layout.missing_line(("dev_objext", "doe_power"))
        if line is not None:
            raise PnpError(line)
        try:
            kind = r.uint(device + (f("dev_type") or 0), 2)
        except MemoryNotPresent:
            raise PnpError(f"{device:x} is not in the dump: cannot read the device object") from None
        if kind != 3:
            raise PnpError(f"{device:x} is not a device object (its Type is {kind:#x}, not 3)")
        ext = r.maybe_ptr(device, f("dev_objext")) or 0
        if not ext:
            raise PnpError(f"Device object {device:x} has no device object extension")
        return PowerInfo(device, ext, r.maybe_uint(ext, f("doe_power"), 4), r.maybe_ptr(ext, f("doe_dope")),
                         r.maybe_ptr(ext, f("doe_devnode")))


@dataclass
class Vad:
    address: int
    level: int
    start_vpn: int
    end_vpn: int
    vad_type: int
    protection: int
    private: bool
    commit: int | None
    file_name: str | None = None  # a mapped view's file (None: private, or not readable)


@dataclass
class VadWalk:
    vads: list[Vad] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class VadTree:
    def __init__(self, memory: Memory, offsets: FieldOffsets, is64: bool) -> None:
        self.layout = StructLayout(offsets, VAD_FIELDS)
        self.files = StructLayout(offsets, FILE_FIELDS)
        self.offsets = offsets
        self.r = Reader(memory, is64)
        self.fast_ref_mask = ~0xF if is64 else ~0x7

    def file_name(self, vad: int) -> str | None:
        """The name of the file a mapped VAD views (None when a link is not in the dump or NULL)."""
        f, r = self.files.need, self.r
        try:
            subsection = r.ptr(vad + f("subsection"))
            control = r.ptr(subsection + f("control_area")) if subsection else 0
            file_object = (r.ptr(control + f("file_pointer")) & self.fast_ref_mask) if control else 0
        except MemoryNotPresent:
            return None
        return r.unicode_string(file_object + f("file_name")) if file_object else None

    def _bits(self, name: str) -> tuple[int, int, int] | None:
        return self.layout.bitfield(name) or _bits_from_table(self.offsets, self.layout.where.get(name))

    def read(self, address: int, level: int) -> Vad:
        f, r = self.layout.get, self.r
        try:
            start = r.uint(address + self.layout.need("start"), 4)
            end = r.uint(address + self.layout.need("end"), 4)
        except MemoryNotPresent:
            raise PnpError(f"VAD {address:x} is not in the dump") from None
        start |= (r.maybe_uint(address, f("start_high"), 1) or 0) << 32
        end |= (r.maybe_uint(address, f("end_high"), 1) or 0) << 32
        bits = {n: r.maybe_bits(address, self._bits(n)) for n in ("vad_type", "protection", "private", "commit")}
        private = bool(bits["private"])
        name = None
        if not private and self.files.missing_line(tuple(FILE_FIELDS)) is None:  # only a mapped view is an MMVAD
            name = self.file_name(address)
        return Vad(address, level, start, end, bits["vad_type"] or 0, bits["protection"] or 0, private,
                   bits["commit"], name)

    def walk(self, root: int) -> VadWalk:
        """In address order (in-order walk of the balanced tree), each VAD with its depth."""
        missing = self.layout.missing_line(VAD_NEEDS)
        if missing is None and (self._bits("vad_type") is None or self._bits("protection") is None):
            missing = "The bit positions of MMVAD_FLAGS are not known for this build: load the kernel's symbols"
        if missing is not None:
            raise PnpError(missing)
        out = VadWalk()
        files = self.files.missing_line(tuple(FILE_FIELDS))
        if files is not None:
            out.warnings.append(f"{files}: mapped views are shown without their file names")
        seen: set[int] = set()
        left, right = self.layout.need("left"), self.layout.need("right")
        stack: list[tuple[int, int]] = []
        node, level = root, 0
        while stack or node:
            while node:
                if node in seen or len(seen) >= MAX_NODES or level > MAX_DEPTH:
                    out.warnings.append(f"VAD {node:x} is met twice or the tree is too deep: the walk stops there")
                    return out
                seen.add(node)
                stack.append((node, level))
                try:
                    node, level = self.r.ptr(node + left), level + 1
                except MemoryNotPresent:
                    if node == root:
                        raise PnpError(f"VAD {node:x} is not in the dump") from None
                    out.warnings.append(f"VAD {node:x} is not in the dump")
                    stack.pop()
                    node = 0
            if not stack:
                break
            node, level = stack.pop()
            try:
                out.vads.append(self.read(node, level))
                node, level = self.r.ptr(node + right), level + 1
            except (PnpError, MemoryNotPresent) as e:
                out.warnings.append(str(e) if isinstance(e, PnpError) else f"VAD {node:x} is not in the dump")
                node = 0
        return out
