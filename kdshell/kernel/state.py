"""The session's kernel objects: processors, processes, threads, the implicit process.

`KernelState` holds this state for the session; it is given what it reads with (the current
memory, the kernel's offsets, the KDBG, nt's symbol lookup, the user's Selection), never the
session (the assembly is kdshell/parts.py). The reading itself is done by the functions of
kdshell.kernel.{processes,threads,prcb}, which take a memory reader and an offsets object only
(DESIGN.md "Seams").

    k = session.kernel
    k.processors()            # [Processor] (a small dump: only the crashing one)
    k.processes()             # ProcessWalk over PsActiveProcessHead (KdError on a small dump)
    k.process(address), k.thread(address), k.threads(process)
    k.current_thread(), k.current_process(), k.set_process(address)
    k.pseudo("$proc")         # $proc $thread $prcb $peb $teb

Small memory dumps keep only the crashing processor's KPRCB, its current thread and that
thread's process, as copies whose addresses the file does not store: `map_triage_copies` (run
when the session is assembled) derives them (kdshell.kernel.prcb) and adds
the copies to the saved ranges, so `dt nt!_EPROCESS <addr>` and !process read them like any
memory. Everything else says "Unable to get ... from the dump".
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.dumpfile.header import MACHINE_ARM64
from kdshell.kernel import kuser
from kdshell.kernel import prcb as P
from kdshell.kernel import processes as PS
from kdshell.kernel import threads as T
from kdshell.kernel.kdbg import Kdbg, system_range_start
from kdshell.kernel.layout import Reader, StructLayout
from kdshell.kernel.offsets import KernelOffsets


# A structure copy is never larger (a Windows 11 KPRCB is under 64 KiB): a bigger extent is a
# corrupt or hostile small dump, whose copy is cut here.
MAX_COPY = 0x40000
DEFAULT_TIME_INCREMENT = 156250  # 15.625 ms in 100 ns units, when the kernel's is not readable


def is_arm64(dump: Any) -> bool:
    return bool(dump.header.machine == MACHINE_ARM64)


def _copy_size(extent: int, stated: int | None) -> int:
    return min(extent, stated, MAX_COPY) if stated else min(extent, MAX_COPY)


def map_triage_copies(dump: Any, memory: Any, kdbg: Kdbg | None) -> P.TriageCopies | None:
    """Place a small dump's KPRCB/ETHREAD/EPROCESS copies at their addresses in `memory` (a
    SavedRangesMemory with `add_range`); the offsets come from the KDBG copy and the built-in
    table (no PDB is needed, nor loaded)."""
    tri = dump.triage
    if tri is None or tri.prcb is None:
        return None
    is64 = dump.is64
    offsets = KernelOffsets(dump.header.build, is64, kdbg=kdbg, arm64=is_arm64(dump))
    prcb_layout = P.prcb_layout(offsets, is64, arm64=is_arm64(dump))
    thread_layout = T.thread_layout(offsets)
    prcb_off, prcb_extent = tri.prcb
    prcb_size = _copy_size(prcb_extent, offsets.size("_KPRCB"))
    prcb_copy = dump.read_file(prcb_off, prcb_size)
    thread_copy = None
    if tri.thread is not None:
        thread_copy = dump.read_file(tri.thread[0], _copy_size(tri.thread[1], offsets.size("_ETHREAD")))
    block = kdbg.get("KiProcessorBlock") if kdbg is not None else None
    found = P.locate_triage_copies(prcb_copy, thread_copy, memory, block, prcb_layout, thread_layout, is64)
    if found.prcb is not None:
        memory.add_range(found.prcb, len(prcb_copy), prcb_off, "KPRCB copy")
    if found.thread is not None and thread_copy is not None:
        memory.add_range(found.thread, len(thread_copy), tri.thread[0], "ETHREAD copy")
    if found.process is not None and tri.process is not None:
        size = _copy_size(tri.process[1], offsets.size("_EPROCESS"))
        memory.add_range(found.process, size, tri.process[0], "EPROCESS copy")
    return found


def crashing_processor_number(kernel: "KernelState") -> int:
    """The processor that bug-checked (the prompt's N): a small dump's KPRCB copy says; else the
    processor whose current thread's stack holds the dump context's stack pointer. 0 when the
    dump does not tell. Read with the KDBG's offsets alone: the prompt needs no PDB."""
    d = kernel.dump
    try:
        if d.triage is not None:
            copies = kernel.triage_copies
            return copies.number if copies is not None and copies.number is not None else 0
        if (d.header.number_processors or 1) <= 1 or kernel.raw_memory() is None:
            return 0
        offsets = KernelOffsets(d.header.build, d.is64, kdbg=kernel.kdbg(), arm64=is_arm64(d))
        light = KernelState(d, kernel.raw_memory, lambda: offsets,
                            kernel.kdbg, kernel.resolve, Selection(), kernel.set_dtb, None)
        return light.find_crashing_processor()
    except KdError:
        return 0
    except Exception:  # a bug of ours must not keep the dump from opening (tests see it)
        if "PYTEST_CURRENT_TEST" in os.environ:
            raise
        return 0


@dataclass
class Selection:
    """What the user is looking at: the processor (`~Ns`; None: the one that bug-checked), the
    implicit thread (`.thread`) and the implicit process (`.process`). Shared by the kernel
    objects and the register context."""

    processor: int | None = None
    thread: int | None = None
    process: int | None = None


class KernelState:
    """The kernel objects of the session's dump (see the module note)."""

    def __init__(self, dump: Any, memory: Callable[[], Any], offsets: Callable[[], KernelOffsets],
                 kdbg: Callable[[], Any], resolve: Callable[[str], int | None], selection: Selection,
                 set_dtb: Callable[[int], Any], triage_copies: P.TriageCopies | None):
        self.dump = dump
        self.raw_memory = memory           # the current address space (None: no memory)
        self._offsets_source = offsets     # the kernel's structure offsets, rebuilt on .reload
        self.kdbg = kdbg
        self.resolve = resolve             # "nt!Name" -> address or None
        self.selection = selection
        self.set_dtb = set_dtb             # .process switches the address space
        self.triage_copies = triage_copies
        self._offsets: KernelOffsets | None = None
        self._confirming = False
        self._layouts: dict[str, Any] = {}
        self._processes: PS.ProcessWalk | None = None
        self._processors: dict[int, P.Processor] = {}
        self._crash_processor: int | None = None

    @property
    def implicit_process(self) -> int | None:
        return self.selection.process

    @implicit_process.setter
    def implicit_process(self, address: int | None) -> None:
        self.selection.process = address

    # -- facts -------------------------------------------------------------------------------
    @property
    def is64(self) -> bool:
        return bool(self.dump.is64)

    @property
    def arm64(self) -> bool:
        return is_arm64(self.dump)

    @property
    def build(self) -> int:
        return int(self.dump.header.build)

    @property
    def small(self) -> bool:
        return self.dump.triage is not None

    @property
    def memory(self) -> Any:
        memory = self.raw_memory()
        if memory is None:
            raise KdError("Memory is not available in this dump (no page tables or saved ranges kdshell can read)")
        return memory

    @property
    def reader(self) -> Reader:
        return Reader(self.memory, self.is64)

    @property
    def offsets(self) -> KernelOffsets:
        """The kernel's structure offsets (kdshell.kernel.offsets.KernelOffsets); what was read
        with older ones is forgotten when they change (.reload, .sympath)."""
        current = self._offsets_source()
        if current is not self._offsets:
            self.forget()
            self._offsets = current
            if current.entry is not None and current.entry.unconfirmed and not self._confirming:
                # Reading the processor may load symbols, which builds new offsets: check once.
                self._confirming = True
                try:
                    current.confirmed = self._confirms_inferred(current)
                finally:
                    self._confirming = False
                self._layouts.clear()
                self._processors.clear()
        return current

    def _confirms_inferred(self, offsets: KernelOffsets) -> bool:
        """Whether this dump bears out the table's inferred EPROCESS fields (an ARM64 build no
        public source describes fully, kdshell/data/offsets.json `unconfirmed`): the crashing
        thread's process must hold the thread's Cid.UniqueProcess at UniqueProcessId, a kernel
        list link at ActiveProcessLinks and a printable name at ImageFileName. Pinned by
        tests/test_arm64_objects.py (a 22000 small dump, and one whose fields sit elsewhere)."""
        pid_at = offsets.unconfirmed("_EPROCESS", "UniqueProcessId")
        links_at = offsets.unconfirmed("_EPROCESS", "ActiveProcessLinks")
        name_at = offsets.unconfirmed("_EPROCESS", "ImageFileName")
        cid_at = offsets.offset("_ETHREAD", "Cid")
        process_at = offsets.offset("_KTHREAD", "ApcState.Process")
        if pid_at is None or links_at is None or name_at is None or cid_at is None or process_at is None:
            return False
        try:
            # Any running thread will do; not the crashing processor, which is found with these offsets.
            copies = self.triage_copies if self.small else None
            number = copies.number if copies is not None and copies.number is not None else 0
            thread = self.processor(number).current_thread
            if not thread:
                return False
            r = self.reader
            process = r.ptr(thread + process_at)
            pid = r.ptr(thread + cid_at)
            link = r.ptr(process + links_at)
            name = r.read(process + name_at, 15).split(b"\0")[0]
            own_pid = r.ptr(process + pid_at)
        except KdError:  # MemoryNotPresent included: nothing to confirm with
            return False
        kernel_half = 1 << (63 if self.is64 else 31)
        return (bool(process) and pid == own_pid and pid % 4 == 0 and bool(link & kernel_half)
                and bool(name) and all(0x20 <= c < 0x7F for c in name))

    def _layout(self, name: str) -> StructLayout:
        if name not in self._layouts:
            make = {"process": lambda o: PS.process_layout(o, self.build),
                    "thread": lambda o: T.thread_layout(o, self.build),
                    "prcb": lambda o: P.prcb_layout(o, self.is64, self.build, self.arm64)}[name]
            self._layouts[name] = make(self.offsets)
        return self._layouts[name]

    @property
    def process_layout(self) -> StructLayout:
        return self._layout("process")

    @property
    def thread_layout(self) -> StructLayout:
        return self._layout("thread")

    @property
    def prcb_layout(self) -> StructLayout:
        return self._layout("prcb")

    def forget(self) -> None:
        """After .reload: offsets (and what was read with them) are looked up again."""
        self._offsets = None
        self._layouts.clear()
        self._processes = None
        self._processors.clear()

    def kdbg_value(self, name: str) -> int | None:
        """A KDBG field (None without a KDBG); addresses at the target's pointer size."""
        k = self.kdbg()
        return k.get(name) if k is not None else None

    def symbol(self, name: str) -> int | None:
        try:
            return self.resolve(f"nt!{name}")
        except KdError:
            return None

    def time_increment(self) -> int:
        """100 ns units per clock tick (KeTimeIncrement, else KeMaximumIncrement, else 15.625 ms)."""
        at = self.kdbg_value("KeTimeIncrement") or self.symbol("KeMaximumIncrement")
        if at:
            try:
                value = Reader(self.memory, self.is64).uint(at, 4)
                if value:
                    return value
            except MemoryNotPresent:
                pass
        return DEFAULT_TIME_INCREMENT

    def tick_count(self) -> int | None:
        """KUSER_SHARED_DATA's tick count at the crash, None when its page is not in the dump."""
        try:
            return Reader(self.memory, self.is64).uint(kuser.ADDRESS[self.is64] + kuser.TICK_COUNT, 4)
        except (MemoryNotPresent, KdError):
            return None

    def interrupt_time(self) -> int | None:
        """KUSER_SHARED_DATA's InterruptTime at the crash (100 ns since boot; the clock the timers'
        due times count in), None when its page is not in the dump."""
        try:
            return Reader(self.memory, self.is64).uint(kuser.ADDRESS[self.is64] + kuser.INTERRUPT_TIME, 8)
        except (MemoryNotPresent, KdError):
            return None

    # -- processors --------------------------------------------------------------------------
    def processor_count(self) -> int:
        return int(self.dump.header.number_processors or 1)

    @property
    def crashing_processor(self) -> int:
        """The processor that bug-checked; found on first use, so that opening a dump reads
        nothing the first command does not need."""
        if self._crash_processor is None:
            self._crash_processor = crashing_processor_number(self)
        return self._crash_processor

    @property
    def current_processor(self) -> int:
        """The prompt's N: the one that bug-checked, until `~Ns`."""
        chosen = self.selection.processor
        return self.crashing_processor if chosen is None else chosen

    def ki_processor_block(self) -> int | None:
        return self.kdbg_value("KiProcessorBlock") or self.symbol("KiProcessorBlock")

    def check_processor(self, number: int) -> None:
        count = self.processor_count()
        if not 0 <= number < count:
            raise KdError(f"Processor {number} does not exist (this machine had {count} "
                          f"processor{'s' if count != 1 else ''}: 0-{count - 1})")
        if self.small and number != self.crashing_processor:
            raise KdError(f"Unable to get the PRCB of processor {number} from the dump: a small memory dump "
                          f"keeps only the crashing processor's (processor {self.crashing_processor})")

    def processor(self, number: int | None = None) -> P.Processor:
        number = self.current_processor if number is None else number
        self.check_processor(number)
        if number in self._processors:
            return self._processors[number]
        if self.small:
            copies = self.triage_copies
            if copies is None or copies.prcb is None:
                raise KdError(f"Unable to get the PRCB of processor {number} from the dump: "
                              "the small dump does not say where its KPRCB copy belongs")
            p = P.read_processor(self.memory, number, copies.prcb, self.prcb_layout, self.is64, read_pcr=False)
        else:
            block = self.ki_processor_block()
            if not block:
                raise KdError(f"Unable to get the PRCB of processor {number} from the dump: "
                              "the KDBG does not say where KiProcessorBlock is")
            try:
                prcb = P.processor_block_entry(self.memory, block, number, self.is64)
            except MemoryNotPresent as exc:
                raise KdError(f"Unable to get the PRCB of processor {number} from the dump: "
                              f"KiProcessorBlock[{number}] is not in it ({exc.why})") from None
            if not prcb:
                raise KdError(f"Unable to get the PRCB of processor {number}: KiProcessorBlock[{number}] is 0")
            p = P.read_processor(self.memory, number, prcb, self.prcb_layout, self.is64)
        self._processors[number] = p
        return p

    def cpu_info(self, prcb: int) -> P.CpuInfo:
        """What the kernel wrote of the processor into the KPRCB at `prcb` (!cpuinfo, !sysinfo)."""
        return P.read_cpu_info(self.memory, prcb, self.prcb_layout, self.is64, self.offsets.size("_KPRCB"))

    def processors(self) -> list[P.Processor]:
        if self.small:
            return [self.processor(self.crashing_processor)]
        out = []
        for n in range(self.processor_count()):
            try:
                out.append(self.processor(n))
            except KdError:
                break
        return out

    def find_crashing_processor(self) -> int:
        regs = self.dump.registers()
        sp = regs.get("sp" if self.arm64 else "rsp" if self.is64 else "esp")
        if sp is None:
            return 0
        layout = self.thread_layout
        memory = self.memory

        def bounds(thread: int) -> Any:
            try:
                return T.read_stack_bounds(memory, thread, layout, self.is64)
            except KdError:  # the stack offsets are not known for this build
                return None

        def context_sp(p: P.Processor) -> int | None:
            if p.context_address is None:
                return None
            # CONTEXT.Sp (ARM64 +0x100), Rsp (x64 +0x98), Esp (x86 +0xC4)
            at = 0x100 if self.arm64 else 0x98 if self.is64 else 0xC4
            return Reader(memory, self.is64).maybe_ptr(p.context_address, at)

        found = P.crashing_processor(self.processors(), sp, bounds, context_sp)
        self._processors.clear()
        return found or 0

    # -- processes ---------------------------------------------------------------------------
    def process_head(self) -> int | None:
        return (self.kdbg_value("PsActiveProcessHead") or self.dump.header.ps_active_process_head
                or self.symbol("PsActiveProcessHead"))

    def processes(self) -> PS.ProcessWalk:
        if self.small:
            current = self.current_process()
            where = f" ({self.p(current)})" if current else ""
            raise PS.no_process_list(f"a small memory dump keeps only the current process{where}")
        if self._processes is None:
            head = self.process_head()
            if not head:
                raise PS.no_process_list("the dump does not say where PsActiveProcessHead is")
            self._processes = PS.walk_processes(self.memory, head, self.process_layout, self.is64)
        return self._processes

    def process(self, address: int) -> PS.Process:
        p = PS.read_process(self.memory, address, self.process_layout, self.is64)
        if not p.readable:
            raise KdError(f"Unable to get the process at {self.p(address)} from the dump (its EPROCESS "
                          "is not in it)")
        if not PS.looks_like_process(self.memory, address, self.process_layout, self.is64):
            raise KdError(f"TYPE mismatch for process object at {self.p(address)}")
        return p

    def handle_count(self, process: PS.Process) -> int | None:
        if process.object_table is None:
            return None
        if process.object_table == 0:
            return 0
        return PS.handle_count(self.memory, process.object_table, self.process_layout, self.is64, self.build)

    def system_range_start(self) -> int:
        return system_range_start(self.kdbg(), self.memory, self.is64)

    def find_processes(self, key: int | str) -> list[PS.Process]:
        """Processes by EPROCESS address, CID or image name; on a small dump, only the current
        process can match."""
        if self.small:
            current = self.current_process()
            candidates = [self.process(current)] if current else []
            return PS.find_processes(candidates, key, self.system_range_start())
        if not isinstance(key, str) and key >= self.system_range_start():
            return [self.process(key)]
        return PS.find_processes(self.processes().processes, key, self.system_range_start())

    def process_name(self, address: int | None) -> str | None:
        if not address:
            return None
        try:
            return self.process(address).name
        except KdError:
            return None

    # -- threads -----------------------------------------------------------------------------
    def thread(self, address: int) -> T.Thread:
        t = T.read_thread(self.memory, address, self.thread_layout, self.is64)
        if not t.readable:
            raise KdError(f"Unable to get the thread at {self.p(address)} from the dump (its ETHREAD "
                          "is not in it)")
        if not T.looks_like_thread(self.memory, address, self.thread_layout, self.is64):
            raise KdError(f"TYPE mismatch for thread object at {self.p(address)}")
        return t

    def threads(self, process: PS.Process) -> T.ThreadWalk:
        if self.small:
            current = self.current_thread()
            if current and self._thread_process(current) == process.address:
                return T.ThreadWalk([self.thread(current)],
                                    ["Only the current thread is in a small memory dump"])
            return T.ThreadWalk([], ["Unable to get the threads of this process from the dump: "
                                     "a small memory dump keeps only the current thread"])
        if process.thread_list_head is None:
            raise KdError(f"Unable to get the threads of process {self.p(process.address)}: the offset of "
                          f"_EPROCESS.ThreadListHead is not known for build {self.build} (no kernel PDB, "
                          "KDBG field or built-in entry)")
        return T.walk_threads(self.memory, process.thread_list_head, self.thread_layout, self.is64,
                              what=f"thread list of process {process.address:x}")

    def _thread_process(self, address: int) -> int | None:
        try:
            t = self.thread(address)
        except KdError:
            return None
        return t.owning_process

    def find_thread_by_id(self, tid: int) -> list[T.Thread]:
        if self.small:
            current = self.current_thread()
            return [t for t in ([self.thread(current)] if current else []) if t.tid == tid]
        out = []
        for p in self.processes().processes:
            try:
                out += [t for t in self.threads(p).threads if t.tid == tid]
            except KdError:
                continue
        return out

    def running_on(self, thread: int) -> int | None:
        for p in self._safe_processors():
            if p.current_thread == thread:
                return p.number
        return None

    def _safe_processors(self) -> list[P.Processor]:
        try:
            return self.processors()
        except KdError:
            return []

    # -- the current context -----------------------------------------------------------------
    def current_thread(self) -> int | None:
        """The implicit thread (.thread), else the current processor's KPRCB.CurrentThread."""
        if self.selection.thread:
            return self.selection.thread
        try:
            return self.processor().current_thread or None
        except KdError:
            copies = self.triage_copies
            return copies.thread if copies is not None else None

    def current_process(self) -> int | None:
        """The implicit process (.process), else the current thread's process."""
        if self.implicit_process:
            return self.implicit_process
        thread = self.current_thread()
        if not thread:
            return None
        try:
            t = self.thread(thread)
        except KdError:
            copies = self.triage_copies
            return copies.process if copies is not None else None
        return t.apc_process or t.process

    def set_process(self, address: int | None) -> PS.Process | None:
        """`.process ADDR`: the implicit process, and its DirBase as the address space (a small
        dump has no page tables: only its own process is accepted). None resets."""
        if not address:
            self.implicit_process = None
            current = self.current_process()
            if current and not self.small:
                p = self.process(current)
                if p.dtb:
                    self.set_dtb(p.dtb)
            return None
        p = self.process(address)
        if self.small:
            if address != self.current_process():
                raise KdError(f"Unable to switch to process {self.p(address)}: a small memory dump has no page "
                              "tables; only the current process is in it")
        elif p.dtb is None:
            raise KdError(f"Unable to switch to process {self.p(address)}: its DirectoryTableBase is not in the dump")
        else:
            self.set_dtb(p.dtb)
        self.implicit_process = address
        return p

    def pseudo(self, name: str) -> int | None:
        """$proc, $thread, $prcb, $peb, $teb (None when the dump cannot tell)."""
        n = name.lower()
        try:
            if n == "$thread":
                return self.current_thread()
            if n == "$proc":
                return self.current_process()
            if n == "$prcb":
                return self.processor().prcb
            if n == "$peb":
                proc = self.current_process()
                return self.process(proc).peb if proc else None
            if n == "$teb":
                thread = self.current_thread()
                return self.thread(thread).teb if thread else None
        except KdError:
            return None
        return None

    def p(self, value: int | None) -> str:
        from kdshell.format import ptr

        return ptr(value or 0, self.is64)
