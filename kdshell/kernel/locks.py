"""Executive resources and who waits for them (what !locks and !analyze -hang read).

    locks = Locks(memory, offsets, is64, symbol, kdbg_value, threads)   # threads: every Thread of the dump
    locks.resources()     -> ResourceWalk: every ERESOURCE on nt!ExpSystemResourcesList
    locks.wait_chains()   -> [Chain]: for each thread waiting on a resource, who owns it, whose owner
                              waits for what, until a thread that does not wait on a resource or a
                              cycle (a deadlock)

ERESOURCE (Windows 10, x64 offsets; x86 in ERESOURCE32): SystemResourcesList +0x0 (the list links),
OwnerTable +0x10 (shared owners beyond the first: OwnerTable[0].TableSize entries),
ActiveCount +0x18, Flag +0x1A (0x80 ResourceOwnedExclusive), SharedWaiters +0x20 (a KSEMAPHORE),
ExclusiveWaiters +0x28 (a KEVENT), OwnerEntry +0x30 (OWNER_ENTRY: OwnerThread, then OwnerCount in
bits 3-31), ActiveEntries +0x40, ContentionCount +0x44, NumberOfSharedWaiters +0x48,
NumberOfExclusiveWaiters +0x4C. Fields are read by name from the kernel's types when present.
A waiter is a thread in the Waiting state whose wait block names the resource's ExclusiveWaiters
event or SharedWaiters semaphore (kdshell.kernel.threads.wait_objects).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.layout import Memory, Reader, StructLayout, walk_list
from kdshell.kernel.threads import Thread, wait_objects

RESOURCE_OWNED_EXCLUSIVE = 0x80
OWNER_COUNT_SHIFT = 3  # OWNER_ENTRY: IoPriorityBoosted, OwnerReferenced, IoQoSPriorityBoosted, then OwnerCount
MAX_OWNER_TABLE = 1024
ERESOURCE64 = {"SystemResourcesList": 0x0, "OwnerTable": 0x10, "ActiveCount": 0x18, "Flag": 0x1A,
               "SharedWaiters": 0x20, "ExclusiveWaiters": 0x28, "OwnerEntry": 0x30, "ActiveEntries": 0x40,
               "ContentionCount": 0x44, "NumberOfSharedWaiters": 0x48, "NumberOfExclusiveWaiters": 0x4C}
ERESOURCE32 = {"SystemResourcesList": 0x0, "OwnerTable": 0x8, "ActiveCount": 0xC, "Flag": 0xE,
               "SharedWaiters": 0x10, "ExclusiveWaiters": 0x14, "OwnerEntry": 0x18, "ActiveEntries": 0x20,
               "ContentionCount": 0x24, "NumberOfSharedWaiters": 0x28, "NumberOfExclusiveWaiters": 0x2C}


class LocksError(KdError):
    """The resource list is not known or not in the dump."""


@dataclass
class Owner:
    thread: int
    count: int


@dataclass
class Resource:
    address: int
    flag: int
    active_count: int
    contention: int
    shared_waiters: int
    exclusive_waiters: int
    owners: list[Owner] = field(default_factory=list)
    exclusive_waiting: list[int] = field(default_factory=list)  # thread addresses
    shared_waiting: list[int] = field(default_factory=list)
    exclusive_event: int = 0
    shared_semaphore: int = 0

    @property
    def exclusive(self) -> bool:
        return bool(self.flag & RESOURCE_OWNED_EXCLUSIVE)

    @property
    def held(self) -> bool:
        return self.active_count != 0 and bool(self.owners)


@dataclass
class ResourceWalk:
    resources: list[Resource]
    warning: str | None = None


@dataclass
class Link:
    thread: int
    resource: int
    owner: int | None  # the resource's (first) owner


@dataclass
class Chain:
    links: list[Link]
    cycle: bool  # the last owner is the first waiter: a deadlock


class Locks:
    def __init__(self, memory: Memory, offsets: Any, is64: bool, symbol: Callable[[str], int | None],
                 kdbg_value: Callable[[str], int | None], threads: list[Thread], thread_layout: StructLayout) -> None:
        self.memory = memory
        self.reader = Reader(memory, is64)
        self.offsets = offsets
        self.is64 = is64
        self.symbol = symbol
        self.kdbg_value = kdbg_value
        self.threads = threads
        self.thread_layout = thread_layout
        self.fields = dict(ERESOURCE64 if is64 else ERESOURCE32)
        for name in self.fields:
            found = offsets.offset("_ERESOURCE", name) if offsets is not None else None
            if found is not None:
                self.fields[name] = found

    def _head(self) -> int:
        try:
            head = self.kdbg_value("ExpSystemResourcesList")
        except KeyError:
            head = None
        head = head or self.symbol("ExpSystemResourcesList")
        if not head:
            raise LocksError("nt!ExpSystemResourcesList is not known (no KDBG field or kernel symbols)")
        return head

    def _waiting(self) -> dict[int, list[int]]:
        """Object address -> the threads waiting on it."""
        size = self.offsets.size("_KWAIT_BLOCK") if self.offsets is not None else None
        out: dict[int, list[int]] = {}
        for t in self.threads:
            for obj, _ in wait_objects(self.memory, t, self.thread_layout, self.is64, size):
                out.setdefault(obj, []).append(t.address)
        return out

    def resources(self) -> ResourceWalk:
        head = self._head()
        try:
            if self.reader.ptr(head) == 0:  # never initialised: no resource was ever made
                return ResourceWalk([])
        except MemoryNotPresent:
            raise LocksError(f"nt!ExpSystemResourcesList ({head:x}) is not in the dump") from None
        walk = walk_list(self.reader, head, "system resource")
        waiting = self._waiting()
        f = self.fields
        out = []
        for entry in walk.entries:
            address = entry - f["SystemResourcesList"]
            try:
                out.append(self._read(address, waiting))
            except MemoryNotPresent:
                return ResourceWalk(out, f"The resource at {address:x} is not in the dump; the list stops there")
        return ResourceWalk(out, walk.warning)

    def _read(self, address: int, waiting: dict[int, list[int]]) -> Resource:
        r, f, ps = self.reader, self.fields, self.reader.psize
        flag = r.uint(address + f["Flag"], 2)
        active = r.uint(address + f["ActiveCount"], 2)
        res = Resource(address, flag, active, r.uint(address + f["ContentionCount"], 4),
                       r.uint(address + f["NumberOfSharedWaiters"], 4), r.uint(address + f["NumberOfExclusiveWaiters"], 4))
        owner = r.ptr(address + f["OwnerEntry"])
        count = r.uint(address + f["OwnerEntry"] + ps, 4) >> OWNER_COUNT_SHIFT
        if owner and count:
            res.owners.append(Owner(owner, count))
        table = r.ptr(address + f["OwnerTable"])
        if table:
            try:
                size = r.uint(table + ps, 4)
                for i in range(1, min(size, MAX_OWNER_TABLE)):
                    at = table + i * 2 * ps
                    thread, n = r.ptr(at), r.uint(at + ps, 4) >> OWNER_COUNT_SHIFT
                    if thread and n:
                        res.owners.append(Owner(thread, n))
            except MemoryNotPresent:
                pass
        res.exclusive_event = r.ptr(address + f["ExclusiveWaiters"])
        res.shared_semaphore = r.ptr(address + f["SharedWaiters"])
        res.exclusive_waiting = waiting.get(res.exclusive_event, []) if res.exclusive_event else []
        res.shared_waiting = waiting.get(res.shared_semaphore, []) if res.shared_semaphore else []
        return res

    def wait_chains(self, resources: list[Resource] | None = None) -> list[Chain]:
        """From every thread waiting on a resource: thread -> resource -> owner -> the resource
        that owner waits on ... until an owner that waits on none, or a thread met again."""
        resources = self.resources().resources if resources is None else resources
        waits_on: dict[int, Resource] = {}
        for res in resources:
            for t in res.exclusive_waiting + res.shared_waiting:
                waits_on.setdefault(t, res)
        chains: list[Chain] = []
        seen_cycles: set[frozenset[int]] = set()
        for start in waits_on:
            links: list[Link] = []
            visited: list[int] = []
            thread: int | None = start
            while thread is not None and thread in waits_on and thread not in visited:
                visited.append(thread)
                res = waits_on[thread]
                owner = res.owners[0].thread if res.owners else None
                links.append(Link(thread, res.address, owner))
                thread = owner
            cycle = thread is not None and thread in visited
            if thread is not None and cycle:
                first = visited.index(thread)
                members = frozenset(visited[first:])
                if members in seen_cycles:
                    continue
                seen_cycles.add(members)
                links = links[first:]
            chains.append(Chain(links, cycle))
        return chains
