"""Processes: EPROCESS fields and the PsActiveProcessHead walk (what !process prints).

    layout = process_layout(offsets)                     # offsets: kdshell.kernel.offsets.KernelOffsets
    walk = walk_processes(memory, head, layout, is64)    # .processes, .warnings
    p = read_process(memory, address, layout, is64)      # a Process
    find_processes(walk.processes, "lsass.exe")          # by address, CID or image name

The walk follows EPROCESS.ActiveProcessLinks from nt!PsActiveProcessHead (the KDBG's field, or
the dump header's); it is bounded and loop-safe (kdshell.kernel.layout.walk_list): a corrupt
list ends it with a warning. The Idle process is not on the list (WinDbg does not show it
either).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.handles import walk_handles
from kdshell.kernel.layout import FieldOffsets, Memory, Reader, StructLayout, walk_list

# short name: (type, field path) alternatives, the first a source knows wins
PROCESS_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "links": (("_EPROCESS", "ActiveProcessLinks"),),
    "pid": (("_EPROCESS", "UniqueProcessId"),),
    "parent": (("_EPROCESS", "InheritedFromUniqueProcessId"),),
    "name": (("_EPROCESS", "ImageFileName"),),
    "dtb": (("_EPROCESS", "Pcb.DirectoryTableBase"), ("_KPROCESS", "DirectoryTableBase")),
    "user_dtb": (("_EPROCESS", "Pcb.UserDirectoryTableBase"), ("_KPROCESS", "UserDirectoryTableBase")),
    "peb": (("_EPROCESS", "Peb"),),
    "object_table": (("_EPROCESS", "ObjectTable"),),
    "session": (("_EPROCESS", "Session"),),
    "threads": (("_EPROCESS", "ThreadListHead"),),
    "kthreads": (("_EPROCESS", "Pcb.ThreadListHead"), ("_KPROCESS", "ThreadListHead")),
    "token": (("_EPROCESS", "Token"),),
    "device_map": (("_EPROCESS", "DeviceMap"),),
    "vad_root": (("_EPROCESS", "VadRoot"),),
    "create_time": (("_EPROCESS", "CreateTime"),),
    "base_priority": (("_EPROCESS", "Pcb.BasePriority"), ("_KPROCESS", "BasePriority")),
    "active_threads": (("_EPROCESS", "ActiveThreads"),),
    "wow64": (("_EPROCESS", "WoW64Process"),),
    "session_id": (("_MM_SESSION_SPACE", "SessionId"),),
    "handle_table_code": (("_HANDLE_TABLE", "TableCode"),),
    "header_type": (("_EPROCESS", "Pcb.Header.Type"), ("_KPROCESS", "Header.Type"),
                    ("_DISPATCHER_HEADER", "Type")),
}

PROCESS_OBJECT = 3  # DISPATCHER_HEADER.Type of a process (KOBJECTS ProcessObject)


def process_layout(offsets: FieldOffsets, build: int | None = None) -> StructLayout:
    return StructLayout(offsets, PROCESS_FIELDS, build)


@dataclass
class Process:
    address: int
    pid: int | None = None
    parent: int | None = None
    name: str | None = None  # ImageFileName (15 characters at most)
    dtb: int | None = None
    peb: int | None = None
    object_table: int | None = None
    session: int | None = None  # the MM_SESSION_SPACE address (0: no session)
    session_id: int | None = None
    thread_list_head: int | None = None
    token: int | None = None
    device_map: int | None = None
    vad_root: int | None = None
    create_time: int | None = None
    base_priority: int | None = None
    active_threads: int | None = None
    user_dtb: int | None = None
    readable: bool = True  # False: the EPROCESS is not in the dump
    notes: list[str] = field(default_factory=list)

    @property
    def image(self) -> str:
        return self.name if self.name is not None else "<Data Not Accessible>"


def read_process(memory: Memory, address: int, layout: StructLayout, is64: bool) -> Process:
    """The EPROCESS at `address`; fields whose offsets are unknown or whose bytes are missing
    are None (`readable` False when not even the process ID could be read)."""
    r = Reader(memory, is64)
    f = layout.get
    p = Process(address)
    p.pid = r.maybe_ptr(address, f("pid"))
    p.readable = p.pid is not None or (f("pid") is None and r.maybe_ptr(address, 0) is not None)
    p.parent = r.maybe_ptr(address, f("parent"))
    p.dtb = r.maybe_ptr(address, f("dtb"))
    p.user_dtb = r.maybe_ptr(address, f("user_dtb"))
    p.peb = r.maybe_ptr(address, f("peb"))
    p.object_table = r.maybe_ptr(address, f("object_table"))
    p.session = r.maybe_ptr(address, f("session"))
    p.token = r.maybe_ptr(address, f("token"))
    if p.token is not None:
        p.token &= ~(0xF if is64 else 0x7)  # an EX_FAST_REF: the low bits are a reference count
    p.device_map = r.maybe_ptr(address, f("device_map"))
    p.vad_root = r.maybe_ptr(address, f("vad_root"))
    p.create_time = r.maybe_uint(address, f("create_time"), 8)
    p.base_priority = r.maybe_uint(address, f("base_priority"), 1)
    p.active_threads = r.maybe_uint(address, f("active_threads"), 4)
    threads, name = f("threads"), f("name")
    if threads is not None:
        p.thread_list_head = address + threads
    if name is not None:
        try:
            raw = r.read(address + name, 15)
            p.name = raw.split(b"\0", 1)[0].decode("latin-1")
        except MemoryNotPresent:
            p.name = None
    if p.session:
        p.session_id = r.maybe_uint(p.session, f("session_id"), 4)
    elif p.session == 0:
        p.session_id = None
    return p


def looks_like_process(memory: Memory, address: int, layout: StructLayout, is64: bool) -> bool:
    """The object's dispatcher header says ProcessObject (when the layout knows where it is)."""
    r = Reader(memory, is64)
    offset = layout.get("header_type")
    value = r.maybe_uint(address, offset if offset is not None else 0, 1)
    return value is not None and value & 0x7F == PROCESS_OBJECT


@dataclass
class ProcessWalk:
    processes: list[Process]
    warnings: list[str]
    head: int | None = None


def walk_processes(memory: Memory, head: int, layout: StructLayout, is64: bool) -> ProcessWalk:
    """Every process on PsActiveProcessHead, in list order."""
    links = layout.need("links")
    walk = walk_list(Reader(memory, is64), head, "active process")
    processes = [read_process(memory, entry - links, layout, is64) for entry in walk.entries]
    warnings = [walk.warning] if walk.warning else []
    return ProcessWalk(processes, warnings, head)


def find_processes(processes: list[Process], key: int | str, system_range_start: int | None = None) -> list[Process]:
    """Processes matching `key`: an EPROCESS address, a process ID (a number below the system
    range), or an image name (case-insensitive; WinDbg matches the 15-character ImageFileName)."""
    if isinstance(key, str):
        want = key.lower()
        return [p for p in processes if p.name is not None and
                (p.name.lower() == want or (len(p.name) >= 14 and want.startswith(p.name.lower())))]
    if system_range_start is not None and key >= system_range_start:
        return [p for p in processes if p.address == key]
    by_address = [p for p in processes if p.address == key]
    return by_address or [p for p in processes if p.pid == key]


def handle_count(memory: Memory, table: int, layout: StructLayout, is64: bool, build: int) -> int | None:
    """How many handles a process's handle table holds (kdshell.kernel.handles walks it); None when
    the table cannot be read."""
    code_offset = layout.get("handle_table_code")
    if code_offset is None:
        code_offset = 8 if build >= 9200 else 0
    entries = walk_handles(memory, table, code_offset, is64, build)
    return None if entries is None else len(entries)


def no_process_list(reason: str) -> KdError:
    return KdError(f"Unable to get the list of processes from the dump: {reason}")
