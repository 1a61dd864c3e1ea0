"""ARM64 kernel objects for tests/test_arm64_objects.py: the KPCR/KPRCB, the System process and
one of its worker threads, and a KDBG, laid out at the offsets of ARM64 Windows, added to the
hand-made ARM64 machine of tests/arm64_machine.py.

Two shapes, as real ARM64 dumps have them:

- a small memory dump like the one of issue 18 (Windows 11 build 22000, bug check 0x1C8, a
  worker thread of the System process): no PDB, a KDBG copy whose Offset*/Size* fields give
  what they give, the triage header's KPRCB, ETHREAD and EPROCESS copies (their addresses are
  derived, not stored), no KPCR;
- a complete dump of the same machine with the objects in memory (KiProcessorBlock, the
  KPCR head with its CurrentIrql, PsActiveProcessHead), written as build 19569, the ARM64 build
  whose kernel layouts are public.

Every offset below is literal, typed from ntdiff/headers Win10_20H2_19569/ARM64 (_EPROCESS.h,
_ETHREAD.h, _KPCR.h), from the ksarm64.h of the preview SDKs on either side of build 22000
(10.0.20262 and 10.0.22543: ETHREAD.Cid 0x4e8, ETHREAD 0x910 and EPROCESS 0xc80 bytes, the
KTHREAD, KPROCESS, KPCR and KPRCB offsets unchanged from 19569) and the KDBG's field offsets
from formats.md §10 -- not from kdshell's table -- so a wrong entry there cannot hide in both.
No public source gives build 22000's EPROCESS UniqueProcessId or ImageFileName: its copy keeps
them where 19569 has them, and kdshell must say it does not know them.
"""
from __future__ import annotations

import struct
from pathlib import Path

import arm64_machine as A
from kdshell.dumpfile.write import write_full
from kdshell.dumpfile.write_triage import TriageDriverInfo, TriageParts, write_triage

PAGE = A.PAGE
FILL = 0x5A  # bytes no field is read from: a wrong offset reads 0x5A5A...

# -- addresses ---------------------------------------------------------------------------------
PCR = 0xFFFFF804_0A8E0000  # processor 0's KPCR (page aligned)
PRCB = PCR + 0x980  # KPCR.Prcb
PROCESS = 0xFFFFB30C_2E4A7040  # the System process
THREAD = 0xFFFFB30C_2E5C1080  # a worker thread of it (ExpWorkerThread)
IDLE = 0xFFFFF804_0A9F2A40  # the idle thread
KDBG = A.NT_BASE + 0x2A00  # KdDebuggerDataBlock (nt data after the .pdata and .xdata)
KI_PROCESSOR_BLOCK = A.NT_BASE + 0x2E00
PS_ACTIVE_PROCESS_HEAD = A.NT_BASE + 0x2E40
TTBR0 = A.TTBR  # the System process's DirectoryTableBase: the address space the dump header names
STACK_LIMIT, STACK_BASE, KERNEL_STACK = A.STACK - 0x5000, A.STACK + PAGE, A.SP - 0x80
TID = 0x10C
TRAP = (THREAD & ~0xFFF) + 0x1400  # a KTRAP_FRAME (its volatile registers, the faulting pc and sp)
TRAP_X = [0x7100 + i for i in range(19)]  # x0-x18
TRAP_SPSR, TRAP_ESR, TRAP_FAULT = 0x80000005, 0x96000004, 0x10
WAITER = (THREAD & ~0xFFF) + 0x1600  # a second System thread, waiting (complete dump only)
WAITER_TID = 0x11C
WAITER_SWITCH = (THREAD & ~0xFFF) + 0x1EC0  # its KernelStack: a KSWITCH_FRAME (ksarm64.h Sw*)
WAITER_PC = A.NT_BASE + 0x118C  # SwReturn: where it resumes (PspSystemThreadStartup+0xc)
WAITER_FP = WAITER_SWITCH + 0x40
WAIT_REASON = 15  # WrQueue, as a worker thread waits
SAVED_IRQL = 0  # KPRCB.DebuggerSavedIRQL: a worker thread runs at PASSIVE_LEVEL
CURRENT_IRQL = 15  # KPCR.CurrentIrql: KeBugCheckEx raised it to HIGH_LEVEL

# -- ARM64 build 19569 offsets (ntdiff) --------------------------------------------------------
PCR_SELF, PCR_CURRENT_IRQL, PCR_MAJOR, PCR_MINOR, PCR_PRCB = 0x18, 0x38, 0x3C, 0x3E, 0x980
PRCB_CURRENT_THREAD, PRCB_NEXT_THREAD, PRCB_IDLE_THREAD, PRCB_NUMBER = 0x8, 0x10, 0x18, 0x24
PRCB_CONTEXT_FRAME, PRCB_MHZ, PRCB_DEBUGGER_SAVED_IRQL, PRCB_SIZE = 0x360, 0x6F4, 0xF19, 0x8A80
PRCB_DISPATCHER_READY_LIST_HEAD = 0xD00  # [32] LIST_ENTRY: empty lists point at themselves
KT_INITIAL_STACK, KT_STACK_LIMIT, KT_STACK_BASE, KT_KERNEL_STACK = 0x28, 0x30, 0x38, 0x58
KT_APC_PROCESS, KT_TEB, KT_STATE, KT_PROCESS, KT_WAIT_REASON = 0xB0, 0xE8, 0x17C, 0x240, 0x2A3
KT_THREAD_LIST_ENTRY = 0x318
ET_START_ADDRESS, ET_CID, ET_WIN32_START, ET_THREAD_LIST_ENTRY, ETHREAD_SIZE = 0x470, 0x498, 0x4F0, 0x508, 0x8B8
EP_DTB, EP_KTHREAD_LIST, EP_PID, EP_LINKS, EP_PARENT, EP_PEB = 0x28, 0x38, 0x3F8, 0x400, 0x4F8, 0x508
EP_IMAGE, EP_THREAD_LIST, EPROCESS_SIZE = 0x560, 0x598, 0xC00
# builds 22000 and 26100 (the SDKs' ksarm64.h: EtCid, *ObjectLength, PcDebuggerSavedIRQL - PcPrcb): what moved
ET_CID_22000, ETHREAD_SIZE_22000, EPROCESS_SIZE_22000 = 0x4E8, 0x910, 0xC80
ETHREAD_SIZE_26100, EPROCESS_SIZE_26100, PRCB_DEBUGGER_SAVED_IRQL_26100 = 0x778, 0x900, 0xF99
# build 26100's EPROCESS (ntdiff/headers Win11_2409_24H2/ARM64 _EPROCESS.h): KPROCESS 0x1b8 bytes
EP_26100 = {"pid": 0x1C0, "links": 0x1C8, "parent": 0x2C0, "peb": 0x2D0, "image": 0x328, "threads": 0x360}


def layout(build: int) -> tuple[int, int, int]:
    """(ETHREAD.Cid, ETHREAD size, EPROCESS size) of `build`."""
    if build < 20000:
        return ET_CID, ETHREAD_SIZE, EPROCESS_SIZE
    if build < 26100:
        return ET_CID_22000, ETHREAD_SIZE_22000, EPROCESS_SIZE_22000
    return ET_CID_22000, ETHREAD_SIZE_26100, EPROCESS_SIZE_26100
# KDDEBUGGER_DATA64 (formats.md §10)
KDBG_FIELDS = {
    "KernBase": (0x18, 8), "PsLoadedModuleList": (0x48, 8), "PsActiveProcessHead": (0x50, 8),
    "KiProcessorBlock": (0x218, 8), "OffsetKThreadNextProcessor": (0x298, 2), "OffsetKThreadTeb": (0x29A, 2),
    "OffsetKThreadKernelStack": (0x29C, 2), "OffsetKThreadInitialStack": (0x29E, 2),
    "OffsetKThreadApcProcess": (0x2A0, 2), "OffsetKThreadState": (0x2A2, 2), "SizeEProcess": (0x2A8, 2),
    "OffsetEprocessPeb": (0x2AA, 2), "OffsetEprocessParentCID": (0x2AC, 2),
    "OffsetEprocessDirectoryTableBase": (0x2AE, 2), "SizePrcb": (0x2B0, 2), "OffsetPrcbCurrentThread": (0x2B4, 2),
    "OffsetPrcbMhz": (0x2B6, 2), "OffsetPrcbProcStateContext": (0x2BC, 2), "OffsetPrcbNumber": (0x2BE, 2),
    "SizeEThread": (0x2C0, 2), "SizePcr": (0x2E0, 2), "OffsetPcrSelfPcr": (0x2E2, 2),
    "OffsetPcrContainedPrcb": (0x2E6, 2), "OffsetKThreadStackLimit": (0x340, 4),
    "OffsetKThreadStackBase": (0x344, 4), "OffsetPrcbIdleThread": (0x350, 2), "OffsetKThreadWaitReason": (0x35C, 2),
}
KDBG_OFFSETS = {
    "OffsetKThreadNextProcessor": 0x238, "OffsetKThreadTeb": KT_TEB, "OffsetKThreadKernelStack": KT_KERNEL_STACK,
    "OffsetKThreadInitialStack": KT_INITIAL_STACK, "OffsetKThreadApcProcess": KT_APC_PROCESS,
    "OffsetKThreadState": KT_STATE, "SizeEProcess": EPROCESS_SIZE, "OffsetEprocessPeb": EP_PEB,
    "OffsetEprocessParentCID": EP_PARENT, "OffsetEprocessDirectoryTableBase": EP_DTB, "SizePrcb": PRCB_SIZE,
    "OffsetPrcbCurrentThread": PRCB_CURRENT_THREAD, "OffsetPrcbMhz": PRCB_MHZ,
    "OffsetPrcbProcStateContext": PRCB_CONTEXT_FRAME, "OffsetPrcbNumber": PRCB_NUMBER, "SizeEThread": ETHREAD_SIZE,
    "SizePcr": 0x9400, "OffsetPcrSelfPcr": PCR_SELF, "OffsetPcrContainedPrcb": PCR_PRCB,
    "OffsetKThreadStackLimit": KT_STACK_LIMIT, "OffsetKThreadStackBase": KT_STACK_BASE,
    "OffsetPrcbIdleThread": PRCB_IDLE_THREAD, "OffsetKThreadWaitReason": KT_WAIT_REASON,
}


def _put(buf: bytearray, offset: int, value: int, size: int = 8) -> None:
    buf[offset : offset + size] = value.to_bytes(size, "little")


def prcb(build: int = 19569) -> bytes:
    b = bytearray([FILL]) * PRCB_SIZE
    _put(b, PRCB_CURRENT_THREAD, THREAD)
    _put(b, PRCB_NEXT_THREAD, 0)
    _put(b, PRCB_IDLE_THREAD, IDLE)
    _put(b, PRCB_NUMBER, 0, 4)
    _put(b, PRCB_MHZ, 2995, 4)
    b[PRCB_DEBUGGER_SAVED_IRQL_26100 if build >= 26100 else PRCB_DEBUGGER_SAVED_IRQL] = SAVED_IRQL
    for i in range(32):
        head = PRCB + PRCB_DISPATCHER_READY_LIST_HEAD + 16 * i
        _put(b, PRCB_DISPATCHER_READY_LIST_HEAD + 16 * i, head)
        _put(b, PRCB_DISPATCHER_READY_LIST_HEAD + 16 * i + 8, head)
    return bytes(b)


def thread(build: int = 19569) -> bytes:
    cid, size, _ = layout(build)
    b = bytearray([FILL]) * size
    b[0:4] = bytes([6, 0, 0x1A, 0])  # DISPATCHER_HEADER: ThreadObject
    for off, value in ((KT_INITIAL_STACK, STACK_BASE - 0x60), (KT_STACK_LIMIT, STACK_LIMIT),
                       (KT_STACK_BASE, STACK_BASE), (KT_KERNEL_STACK, KERNEL_STACK),
                       (KT_APC_PROCESS, PROCESS), (KT_TEB, 0), (KT_PROCESS, PROCESS),
                       (cid, 4), (cid + 8, TID)):
        _put(b, off, value)
    b[KT_STATE] = 2  # Running
    b[KT_WAIT_REASON] = WAIT_REASON
    _put(b, KT_THREAD_LIST_ENTRY, PROCESS + EP_KTHREAD_LIST)
    _put(b, KT_THREAD_LIST_ENTRY + 8, PROCESS + EP_KTHREAD_LIST)
    if build < 20000:
        for off, value in ((ET_START_ADDRESS, A.NT_BASE + A.EXPORTS["ExpWorkerThread"]),
                           (ET_WIN32_START, A.NT_BASE + A.EXPORTS["ExpWorkerThread"]),
                           (ET_THREAD_LIST_ENTRY, PROCESS + EP_THREAD_LIST),
                           (ET_THREAD_LIST_ENTRY + 8, PROCESS + EP_THREAD_LIST)):
            _put(b, off, value)
    return bytes(b)


def process(build: int = 19569, moved: int = 0) -> bytes:
    """The System process; 22000 keeps 19569's places for the fields no source gives (read only
    once the dump confirms them), unless `moved` shifts them; 26100 has its own."""
    b = bytearray([FILL]) * layout(build)[2]
    b[0:4] = bytes([3, 0, 0x3F, 0])  # DISPATCHER_HEADER: ProcessObject
    at = (dict(pid=EP_PID + moved, links=EP_LINKS + moved, parent=EP_PARENT, peb=EP_PEB, image=EP_IMAGE + moved,
               threads=EP_THREAD_LIST)
          if build < 26100 else EP_26100)
    for off, value in ((EP_DTB, TTBR0), (at["pid"], 4), (at["parent"], 0), (at["peb"], 0),
                       (at["links"], PS_ACTIVE_PROCESS_HEAD), (at["links"] + 8, PS_ACTIVE_PROCESS_HEAD),
                       (EP_KTHREAD_LIST, THREAD + KT_THREAD_LIST_ENTRY),
                       (EP_KTHREAD_LIST + 8, THREAD + KT_THREAD_LIST_ENTRY),
                       (at["threads"], THREAD + ET_THREAD_LIST_ENTRY),
                       (at["threads"] + 8, THREAD + ET_THREAD_LIST_ENTRY)):
        _put(b, off, value)
    b[at["image"] : at["image"] + 15] = b"System".ljust(15, b"\0")
    return bytes(b)


def kdbg(offsets: bool = True, build: int = 19569) -> bytes:
    """A KDDEBUGGER_DATA64: the KDBG header, the kernel's variables, and (offsets=True) the
    Offset*/Size* fields a real kernel fills in."""
    b = bytearray(0x380)
    b[0x10:0x18] = b"KDBG\x80\x03\x00\x00"  # OwnerTag, Size
    values = {"KernBase": A.NT_BASE, "PsLoadedModuleList": A.NT_BASE + A.EXPORTS["PsLoadedModuleList"],
              "PsActiveProcessHead": PS_ACTIVE_PROCESS_HEAD, "KiProcessorBlock": KI_PROCESSOR_BLOCK}
    if offsets:
        _, ethread_size, eprocess_size = layout(build)
        values.update(KDBG_OFFSETS, SizeEThread=ethread_size, SizeEProcess=eprocess_size)
        if build >= 26100:
            values.update(OffsetEprocessPeb=EP_26100["peb"], OffsetEprocessParentCID=EP_26100["parent"],
                          OffsetPrcbProcStateContext=0x380)  # ksarm64.h 26100: PsContextFrame 0x340 + 0x40
    for name, value in values.items():
        at, size = KDBG_FIELDS[name]
        _put(b, at, value, size)
    return bytes(b)


def trap_frame() -> bytes:
    """A KTRAP_FRAME at ksarm64.h's Tr* offsets: the fault of the 0x7E variant of tests/arm64_machine.py."""
    b = bytearray(0x150)
    b[3] = 0  # PreviousMode: KernelMode
    _put(b, 0x8, TRAP_FAULT)  # FaultAddress
    _put(b, 0x90, TRAP_SPSR, 4)
    _put(b, 0x94, TRAP_ESR, 4)
    _put(b, 0x98, A.CXR_SP)
    for i, value in enumerate(TRAP_X):
        _put(b, 0xA0 + 8 * i, value)
    _put(b, 0x138, A.NT_BASE + 0x1154)  # lr
    _put(b, 0x140, A.STACK + 0xF50)  # fp
    _put(b, 0x148, A.CXR_PC)
    return bytes(b)


def waiter() -> bytes:
    """The waiting thread (19569 offsets): the list links put it after THREAD."""
    b = bytearray(thread())
    _put(b, ET_CID + 8, WAITER_TID)
    _put(b, KT_KERNEL_STACK, WAITER_SWITCH)
    b[KT_STATE] = 5  # Waiting
    for entry, head in ((KT_THREAD_LIST_ENTRY, EP_KTHREAD_LIST), (ET_THREAD_LIST_ENTRY, EP_THREAD_LIST)):
        _put(b, entry, PROCESS + head)  # Flink: back to the head
        _put(b, entry + 8, THREAD + entry)  # Blink: the running thread
    return bytes(b)


def switch_frame() -> bytes:
    return struct.pack("<QQQQ", 0, 0, WAITER_FP, WAITER_PC)  # ApcBypass, pad, Fp, Return


def pcr_head() -> bytes:
    b = bytearray([FILL]) * PCR_PRCB
    _put(b, 0, 0)  # NtTib head
    _put(b, PCR_SELF, PCR)
    b[PCR_CURRENT_IRQL] = CURRENT_IRQL
    _put(b, PCR_MAJOR, 1, 2)
    _put(b, PCR_MINOR, 1, 2)
    return bytes(b)


def write_small(tmp_path: Path, build: int = 22000, offsets: bool = True, moved: int = 0) -> Path:
    """The small memory dump of issue 18's shape (see the module note); `moved` shifts the
    EPROCESS fields no public source gives for 22000 away from 19569's places."""
    path = Path(tmp_path) / f"arm64-objects-{build}-{'kdbg' if offsets else 'table'}-{moved:x}.dmp"
    header = A.fields(build=build, kd_debugger_data_block=KDBG)
    parts = TriageParts(
        stack=A.stack_page(), top_of_stack=A.STACK,
        prcb=prcb(build), thread=thread(build), process=process(build, moved), kdbg=kdbg(offsets, build),
        drivers=[TriageDriverInfo("\\SystemRoot\\system32\\ntoskrnl.exe", A.NT_BASE, A.NT_SIZE, 0x5F3A1B2C, 0x1234)],
        data_blocks=[(A.NT_BASE + 0x1000, A.text()[:0x208])],
    )
    write_triage(path, header, parts)
    return path


def write_complete(tmp_path: Path, build: int = 19569) -> Path:
    """A complete dump of the machine with the objects in memory."""
    t = A.build()
    nt_data = t.pages[A.PFN["nt_data"]]
    k = kdbg(offsets=False)
    nt_data[KDBG - A.NT_BASE - 0x2000 : KDBG - A.NT_BASE - 0x2000 + len(k)] = k
    _put(nt_data, KI_PROCESSOR_BLOCK - A.NT_BASE - 0x2000, PRCB)
    head = PS_ACTIVE_PROCESS_HEAD - A.NT_BASE - 0x2000
    _put(nt_data, head, PROCESS + EP_LINKS)
    _put(nt_data, head + 8, PROCESS + EP_LINKS)
    objects = {PCR: pcr_head() + prcb(), PROCESS & ~0xFFF: None, THREAD & ~0xFFF: None}
    pfn = 0x400
    blob = objects[PCR]
    for i in range(0, len(blob), PAGE):
        t.map(PCR + i, pfn, A.KERNEL_RW, blob[i : i + PAGE])
        pfn += 1
    for address, content in ((PROCESS, process()), (THREAD, thread())):
        page = address & ~0xFFF
        data = bytearray(2 * PAGE)
        data[address - page : address - page + len(content)] = content
        if address == THREAD:
            data[TRAP - page : TRAP - page + 0x150] = trap_frame()
            for at, blob in ((WAITER, waiter()), (WAITER_SWITCH, switch_frame())):
                data[at - page : at - page + len(blob)] = blob
            for entry, head in ((KT_THREAD_LIST_ENTRY, EP_KTHREAD_LIST), (ET_THREAD_LIST_ENTRY, EP_THREAD_LIST)):
                _put(data, THREAD - page + entry, WAITER + entry)  # THREAD -> WAITER -> head
        if address == PROCESS:
            for entry, head in ((KT_THREAD_LIST_ENTRY, EP_KTHREAD_LIST), (ET_THREAD_LIST_ENTRY, EP_THREAD_LIST)):
                _put(data, PROCESS - page + head + 8, WAITER + entry)  # the head's Blink
        for i in range(2):
            t.map(page + i * PAGE, pfn, A.KERNEL_RW, bytes(data[i * PAGE : (i + 1) * PAGE]))
            pfn += 1
    path = Path(tmp_path) / f"arm64-objects-{build}-full.dmp"
    header = A.fields(build=build, kd_debugger_data_block=KDBG, number_processors=1,
                      ps_active_process_head=PS_ACTIVE_PROCESS_HEAD)
    write_full(path, header, {n: bytes(p) for n, p in t.pages.items()})
    return path
