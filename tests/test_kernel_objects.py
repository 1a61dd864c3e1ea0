"""The kernel-object layer (kdshell.kernel: kdbg, processes, threads, prcb, state).

Three kinds of truth:
- small in-memory fakes with literal layouts (lists that loop, encoded KDBG blocks encoded here
  from the formula in formats.md §10.1, handle tables, structure copies);
- the test machines (fixtures/README.md): for every scenario and dump kind, the processes,
  threads, CIDs, image names, DTBs, processors and current threads the builder made;
- the real small dumps of the corpus: their EPROCESS/ETHREAD/KPRCB copies, read here by hand at
  the offsets their KDBG and the built-in table give (checked once against the raw bytes, then
  pinned).
"""
from __future__ import annotations

import shutil
import struct

import pytest

import kdshell
from conftest import MINI_17763, REPO, TRIAGE_19041, open_machine
from fixtures.machine.catalog import PLAN
from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel import kdbg as K
from kdshell.kernel.layout import Reader, walk_list
from kdshell.kernel.prcb import locate_triage_copies, prcb_layout, self_address
from kdshell.kernel.processes import handle_count, process_layout
from kdshell.kernel.threads import read_thread, thread_layout

BIN = REPO / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"
MACHINE_DUMPS = [(name, kind) for name, kinds in PLAN.items() for kind in kinds]


# -- fakes ---------------------------------------------------------------------------------------
class FakeMemory:
    """Sparse bytes at virtual addresses; a read of a byte never written raises MemoryNotPresent."""

    def __init__(self):
        self.bytes: dict[int, int] = {}

    def write(self, address: int, data: bytes) -> None:
        for i, b in enumerate(data):
            self.bytes[address + i] = b

    def q(self, address: int, value: int) -> None:
        self.write(address, struct.pack("<Q", value & 0xFFFF_FFFF_FFFF_FFFF))

    def read(self, address: int, size: int) -> bytes:
        out = bytearray()
        for a in range(address, address + size):
            if a not in self.bytes:
                raise MemoryNotPresent(a, "not in the fake")
            out.append(self.bytes[a])
        return bytes(out)


class FakeOffsets:
    build = 19041
    types = None

    def __init__(self, table: dict[tuple[str, str], int], sizes: dict[str, int] | None = None):
        self.table = table
        self.sizes = sizes or {}

    def offset(self, type_name, path):
        return self.table.get((type_name, path))

    def source(self, type_name, path):
        return "fake" if (type_name, path) in self.table else None

    def size(self, type_name):
        return self.sizes.get(type_name)


# -- lists -------------------------------------------------------------------------------------
HEAD = 0x1000


def linked(memory: FakeMemory, nodes: list[int], last_to=HEAD) -> None:
    chain = [HEAD] + nodes
    for a, b in zip(chain, chain[1:] + [last_to]):
        memory.q(a, b)          # Flink
        memory.q(b + 8, a)      # Blink


def test_list_walk_follows_flink_to_the_head():
    m = FakeMemory()
    linked(m, [0x2000, 0x3000, 0x4000])
    walk = walk_list(Reader(m, True), HEAD, "test")
    assert walk.entries == [0x2000, 0x3000, 0x4000] and walk.warning is None


def test_list_walk_ends_a_loop_with_a_warning():
    m = FakeMemory()
    linked(m, [0x2000, 0x3000, 0x4000], last_to=0x3000)  # the last entry points back into the list
    walk = walk_list(Reader(m, True), HEAD, "active process")
    assert walk.entries == [0x2000, 0x3000, 0x4000]
    assert walk.warning == "The active process list loops at 0x3000; stopped after 3 entries"
    m.q(0x2000, 0x2000)  # an entry pointing at itself
    assert walk_list(Reader(m, True), HEAD, "x").entries == [0x2000]


def test_list_walk_stops_at_missing_and_null_entries_and_at_its_bound():
    m = FakeMemory()
    linked(m, [0x2000, 0x3000])
    m.q(0x3000, 0x9000)  # 0x9000 is not in the dump
    walk = walk_list(Reader(m, True), HEAD, "thread")
    assert walk.entries == [0x2000, 0x3000]
    assert walk.warning == "The thread list entry at 0x9000 is not in the dump; the list stops after 2 entries"
    m.q(0x3000, 0)
    assert "a NULL link after 2 entries" in walk_list(Reader(m, True), HEAD, "thread").warning
    assert walk_list(Reader(m, True), 0x8000, "x").warning == "The x list head at 0x8000 is not in the dump"
    big = FakeMemory()
    linked(big, [0x10000 + 0x10 * i for i in range(50)])
    walk = walk_list(Reader(big, True), HEAD, "long", limit=20)
    assert len(walk.entries) == 20 and walk.warning == "The long list has more than 20 entries; stopped there"


def test_list_walk_masks_a_32_bit_targets_sign_extended_head():
    m = FakeMemory()
    m.write(0x80001000, struct.pack("<II", 0x80002000, 0x80002000))
    m.write(0x80002000, struct.pack("<II", 0x80001000, 0x80001000))
    walk = walk_list(Reader(m, False), 0xFFFFFFFF80001000, "x")
    assert walk.entries == [0x80002000] and walk.warning is None


# -- the KDBG ------------------------------------------------------------------------------------
def formula_encode(d: int, never: int, always: int, block_encoded: int) -> int:
    """The inverse of formats.md §10.1's decode, written out here independently:
    d = always ^ bswap(block ^ rol(e ^ never, never & 0xFF))  =>  e = ror(bswap(d ^ always) ^ block, n) ^ never"""
    x = int.from_bytes((d ^ always).to_bytes(8, "little"), "big") ^ block_encoded
    n = never & 0x3F
    x = ((x >> n) | (x << (64 - n))) & 0xFFFF_FFFF_FFFF_FFFF if n else x
    return x ^ never


def plain_block(size: int = 0x340) -> bytes:
    raw = bytearray(size)
    struct.pack_into("<QQ", raw, 0, 0xFFFFF8000000A000, 0xFFFFF8000000A000)
    raw[0x10:0x14] = b"KDBG"
    struct.pack_into("<I", raw, 0x14, size)
    struct.pack_into("<Q", raw, 0x18, 0xFFFFF80000000000)    # KernBase
    struct.pack_into("<Q", raw, 0x50, 0xFFFFF80000008010)    # PsActiveProcessHead
    struct.pack_into("<Q", raw, 0x218, 0xFFFFF80000009870)   # KiProcessorBlock
    struct.pack_into("<H", raw, 0x2B4, 0x8)                  # OffsetPrcbCurrentThread
    struct.pack_into("<H", raw, 0x338, 0x1F0)                # OffsetPrcbContext
    return bytes(raw)


KEYS = K.KdbgKeys(wait_never=0x1234_5678_9ABC_DE2D, wait_always=0x0F1E_2D3C_4B5A_6978,
                  block_encoded=0xFFFFF8000000AA01)


def encoded(raw: bytes, keys=KEYS) -> bytes:
    out = bytearray()
    for i in range(0, len(raw), 8):
        d = int.from_bytes(raw[i : i + 8], "little")
        out += formula_encode(d, keys.wait_never, keys.wait_always, keys.block_encoded).to_bytes(8, "little")
    return bytes(out)


def test_kdbg_decoding_is_the_formats_md_formula():
    raw = plain_block()
    assert K.decode_block(encoded(raw), KEYS) == raw
    assert K.encode_block(raw, KEYS) == encoded(raw)
    # a rotate count of 0 (KiWaitNever's low byte 0x40, taken mod 64) leaves the value unrotated
    keys0 = K.KdbgKeys(0x40, 0x55, 0x77)
    assert K.decode_qword(K.encode_qword(0xDEADBEEF, keys0), keys0) == 0xDEADBEEF


def test_encoded_kdbg_is_read_with_the_keys_and_validated():
    m = FakeMemory()
    address = 0xFFFFF8000000A000
    raw = plain_block()
    m.write(address, encoded(raw))
    assert K.read_kdbg(m, address) is None and K.is_encoded(m, address)
    k = K.read_kdbg(m, address, KEYS)
    assert k is not None and k.encoded and k.size == 0x340 and k.raw == raw
    assert k.get("KiProcessorBlock") == 0xFFFFF80000009870 and k.get("OffsetPrcbCurrentThread") == 8
    assert k.get("PteBase") is None  # 0x360 lies beyond this block's Size (a Windows 7 sized block)
    wrong = K.KdbgKeys(KEYS.wait_never, KEYS.wait_always ^ 1, KEYS.block_encoded)
    assert K.read_kdbg(m, address, wrong) is None  # the decoded tag is wrong: not accepted
    plain = FakeMemory()
    plain.write(address, raw)
    k = K.read_kdbg(plain, address, KEYS)  # a plain block is taken as it is, keys or not
    assert k is not None and not k.encoded and not K.is_encoded(plain, address)


def test_kdbg_rejects_bad_tags_and_sizes():
    m = FakeMemory()
    bad = bytearray(plain_block())
    struct.pack_into("<I", bad, 0x14, 0x100)  # below the smallest block (XP's 0x290)
    m.write(0x5000, bytes(bad))
    assert K.read_kdbg(m, 0x5000) is None
    assert K.read_kdbg(m, 0x9999) is None and K.read_kdbg(m, None) is None


def test_kdbg_field_table_offsets():
    """Literal offsets from formats.md §10 (our static_assert for the table)."""
    literal = {"KernBase": 0x18, "PsLoadedModuleList": 0x48, "PsActiveProcessHead": 0x50, "MmPfnDatabase": 0xC0,
               "KiProcessorBlock": 0x218, "OffsetKThreadApcProcess": 0x2A0, "SizeEProcess": 0x2A8,
               "OffsetPrcbCurrentThread": 0x2B4, "OffsetPrcbNumber": 0x2BE, "SizeEThread": 0x2C0,
               "L1tfHighPhysicalBitIndex": 0x2C2, "OffsetPcrContainedPrcb": 0x2E6,
               "OffsetPrcbProcStateSpecialReg": 0x2F2, "OffsetPrcbContext": 0x338,
               "OffsetKThreadStackLimit": 0x340, "OffsetKThreadWaitReason": 0x35C, "PteBase": 0x360}
    for name, offset in literal.items():
        assert K.FIELDS[name][0] == offset, name
    block = K.Kdbg(0, 0x340, plain_block())
    assert block.get("KiProcessorBlock") == 0xFFFFF80000009870
    assert block.get("OffsetKThreadStackLimit") is None  # 0x340: past this block's Size


def test_kdbg_addresses_of_a_32_bit_target_are_cut_to_32_bits():
    """A 32-bit kernel's KDBG holds addresses sign-extended; its lists hold 32-bit pointers, so a
    walk compares against the 32-bit head (else it runs past the head: the x86 module list)."""
    raw = bytearray(plain_block())
    raw[0x48:0x50] = (0xFFFFFFFF80407000).to_bytes(8, "little")
    raw[0x36:0x38] = (0xFFFF).to_bytes(2, "little")  # Flags: not an address, kept whole
    assert K.Kdbg(0, 0x340, bytes(raw), is64=False).get("PsLoadedModuleList") == 0x80407000
    assert K.Kdbg(0, 0x340, bytes(raw), is64=False).get("Flags") == 0xFFFF
    assert K.Kdbg(0, 0x340, bytes(raw)).get("PsLoadedModuleList") == 0xFFFFFFFF80407000


# -- processes, threads, handle tables -----------------------------------------------------------
P_OFF = {("_EPROCESS", "UniqueProcessId"): 0x440, ("_EPROCESS", "ActiveProcessLinks"): 0x448,
         ("_EPROCESS", "ImageFileName"): 0x5A8, ("_EPROCESS", "InheritedFromUniqueProcessId"): 0x540,
         ("_KPROCESS", "DirectoryTableBase"): 0x28, ("_EPROCESS", "Peb"): 0x550,
         ("_EPROCESS", "ObjectTable"): 0x570, ("_EPROCESS", "ThreadListHead"): 0x5E0}


def test_process_fields_and_walk_with_a_fake():
    from kdshell.kernel.processes import walk_processes

    m = FakeMemory()
    offsets = FakeOffsets(P_OFF)
    layout = process_layout(offsets)
    procs = {0x10000: (4, b"System", 0x1AD000), 0x20000: (0x1C4, b"smss.exe", 0xA31000)}
    linked(m, [a + 0x448 for a in procs])
    for a, (pid, name, dtb) in procs.items():
        m.q(a + 0x440, pid)
        m.write(a + 0x5A8, name.ljust(15, b"\0"))
        m.q(a + 0x540, 4 if pid != 4 else 0)
        m.q(a + 0x28, dtb)
        m.q(a + 0x550, 0)
        m.q(a + 0x570, 0)
    walk = walk_processes(m, HEAD, layout, True)
    assert [(p.address, p.pid, p.name, p.dtb, p.parent) for p in walk.processes] == [
        (0x10000, 4, "System", 0x1AD000, 0), (0x20000, 0x1C4, "smss.exe", 0xA31000, 4)]
    assert walk.processes[0].thread_list_head == 0x10000 + 0x5E0 and walk.warnings == []
    assert layout.sources["pid"] == "fake" and layout.get("token") is None


def test_an_unknown_offset_says_which_field():
    layout = process_layout(FakeOffsets({}))
    with pytest.raises(KdError, match=r"The offset of _EPROCESS.ActiveProcessLinks is not known for build 19041"):
        layout.need("links")


def test_thread_fields_with_a_fake():
    m = FakeMemory()
    offsets = FakeOffsets({("_ETHREAD", "Cid"): 0x478, ("_KTHREAD", "State"): 0x184, ("_KTHREAD", "Teb"): 0xF0,
                           ("_KTHREAD", "WaitReason"): 0x283, ("_KTHREAD", "ApcState.Process"): 0xB8,
                           ("_KTHREAD", "Priority"): 0xC3})
    layout = thread_layout(offsets)
    m.write(0x5000, bytes(0x500))
    m.q(0x5000 + 0x478, 0x1A5C)
    m.q(0x5000 + 0x480, 0x134)
    m.write(0x5000 + 0x184, b"\x05")
    m.write(0x5000 + 0x283, b"\x06")
    m.write(0x5000 + 0xC3, b"\xfe")  # a signed char: -2
    m.q(0x5000 + 0xB8, 0x20000)
    t = read_thread(m, 0x5000, layout, True)
    assert (t.pid, t.tid, t.state_name, t.wait_reason, t.apc_process, t.priority) == (
        0x1A5C, 0x134, "Waiting", 6, 0x20000, -2)
    assert t.win32_thread is None and t.owning_process == 0x20000  # no KTHREAD.Process offset: the APC state's


def test_handle_count_levels():
    m = FakeMemory()
    layout = process_layout(FakeOffsets({("_HANDLE_TABLE", "TableCode"): 8}))
    page0, page1 = 0x100000, 0x102000
    m.write(page0, bytes(0x1000))
    m.write(page1, bytes(0x1000))
    m.q(page0 + 0, 0xFFFF_0000_1234_0000)          # entry 0 of a page is never a handle
    for i in (1, 2, 5):
        m.q(page0 + 16 * i, (0xFFFFC20A00053010 >> 4 << 20) | 1)
    m.q(page0 + 16 * 7 + 8, 0x1234)                # a free entry: its link is in the second qword
    m.q(page1 + 16 * 3, (0xFFFFC20A00060010 >> 4 << 20) | 1)
    m.write(0x200000, bytes(0x10))
    m.q(0x200008, page0)                           # level 0
    assert handle_count(m, 0x200000, layout, True, 19041) == 3
    m.write(0x300000, bytes(0x1000))
    m.q(0x300000, page0)
    m.q(0x300008, page1)
    m.q(0x200008, 0x300000 | 1)                    # level 1: a page of level-0 page pointers
    assert handle_count(m, 0x200000, layout, True, 19041) == 4
    m.q(0x300010, 0x999000)                        # a level-0 page not in the dump
    assert handle_count(m, 0x200000, layout, True, 19041) is None


def test_object_type_from_the_encoded_type_index():
    """OBJECT_HEADER.TypeIndex = index ^ second byte of the header address ^ nt!ObHeaderCookie
    (build 10240+); ObTypeIndexTable[index] -> OBJECT_TYPE.Name. The PDB's header offsets are
    the ones used (here a made-up Body at 0x40), the fallbacks only for what it lacks."""
    from kdshell.kernel.objects import object_layout, object_type, read_object_header

    m = FakeMemory()
    cookie_at, table_at, type_at, name_buffer = 0x5000, 0x6000, 0x7000, 0x8000
    header, body = 0xFFFF_C20A_0005_2A00, 0xFFFF_C20A_0005_2A40
    cookie, index = 0x2D, 0x25
    m.write(cookie_at, bytes([cookie]))
    m.write(table_at, bytes(0x40 * 8))
    m.q(table_at + index * 8, type_at)
    m.write(type_at, bytes(0x20))
    m.write(type_at + 0x10, struct.pack("<HH", 12, 14))           # OBJECT_TYPE.Name: "Device"
    m.q(type_at + 0x18, name_buffer)
    m.write(name_buffer, "Device".encode("utf-16-le"))
    m.write(header, bytes(0x40))
    m.q(header, 3)                                                  # PointerCount
    m.q(header + 8, -1)                                             # HandleCount (signed)
    m.write(header + 0x18, bytes([index ^ 0x2A ^ cookie]))          # the stored TypeIndex
    layout = object_layout(FakeOffsets({("_OBJECT_HEADER", "Body"): 0x40}), True)
    h = read_object_header(m, body, layout, True)
    assert (h.address, h.pointer_count, h.handle_count) == (header, 3, -1)
    kind = object_type(m, h, layout, True, 19041, cookie_at, table_at, {})
    assert (kind.index, kind.address, kind.name) == (index, type_at, "Device")
    # no cookie: the index is unknown, but an object of the same type still names it
    other, other_body = 0xFFFF_C20A_0007_1100, 0xFFFF_C20A_0007_1140
    m.write(other, bytes(0x40))
    m.write(other + 0x18, bytes([index ^ 0x11 ^ cookie]))
    kind = object_type(m, h, layout, True, 19041, None, table_at, {"Process": other_body})
    assert (kind.index, kind.name) == (None, "Process")
    kind = object_type(m, h, layout, True, 19041, None, table_at, {})
    assert (kind.index, kind.name) == (None, None)


# -- small dump copies ---------------------------------------------------------------------------
def test_self_address_votes_of_empty_list_heads():
    base = 0xFFFFB8005D200180
    copy = bytearray(0x400)
    for off in (0x100, 0x230, 0x3F0):  # three empty LIST_ENTRY heads
        struct.pack_into("<QQ", copy, off, base + off, base + off)
    struct.pack_into("<QQ", copy, 0x40, 0x1234, 0x1234)  # a coincidence elsewhere: one vote only
    assert self_address(bytes(copy), True) == base
    assert self_address(bytes(copy), True, (0xFFF, 0x180)) == base
    assert self_address(bytes(copy), True, (0xFFF, 0x0)) is None
    assert self_address(bytes(0x100), True) is None


def test_locate_triage_copies_from_ki_processor_block_or_the_copy_itself():
    offsets = FakeOffsets({("_KPRCB", "Number"): 0x24, ("_KPRCB", "CurrentThread"): 0x8,
                           ("_KTHREAD", "ApcState.Process"): 0xB8})
    prcb = bytearray(0x300)
    struct.pack_into("<Q", prcb, 0x8, 0xFFFF8903517E7240)
    struct.pack_into("<I", prcb, 0x24, 6)
    thread = bytearray(0x500)
    struct.pack_into("<Q", thread, 0xB8, 0xFFFF89034CEDB080)
    m = FakeMemory()
    m.q(0xFFFFF80000009870 + 6 * 8, 0xFFFFB8005D200180)
    found = locate_triage_copies(bytes(prcb), bytes(thread), m, 0xFFFFF80000009870, prcb_layout(offsets),
                                 thread_layout(offsets), True)
    assert (found.number, found.prcb, found.thread, found.process) == (
        6, 0xFFFFB8005D200180, 0xFFFF8903517E7240, 0xFFFF89034CEDB080)
    assert found.how["prcb"] == "KiProcessorBlock[6]"
    # KiProcessorBlock not saved: the copy's own empty list heads tell
    for off in (0x100, 0x200):
        struct.pack_into("<QQ", prcb, off, 0xFFFFB8005D200180 + off, 0xFFFFB8005D200180 + off)
    found = locate_triage_copies(bytes(prcb), bytes(thread), FakeMemory(), 0xFFFFF80000009870,
                                 prcb_layout(offsets), thread_layout(offsets), True)
    assert found.prcb == 0xFFFFB8005D200180 and found.how["prcb"] == "the KPRCB copy's own list heads"


# -- the test machines -------------------------------------------------------------------------

def crashing_processor(truth) -> int:
    """The processor whose current thread's stack holds the dump context's stack pointer."""
    sp = truth["context"]["rsp" if truth["arch"] == "x64" else "esp"]
    threads = {t["address"]: t for t in truth["threads"]}
    for p in truth["processors"]:
        t = threads[p["current_thread"]]
        if t["stack_limit"] <= sp < t["initial_stack"]:
            return p["number"]
    raise AssertionError("no processor holds the context's stack")


def system_handles(truth) -> int:
    """Kernel handles in the System process: the thread handles PsCreateSystemThread returned to
    the drivers and to x64's nt!ExpWorkerInitialization (the truth's `handles` lists only those the
    builder itself created), one per system thread that starts outside nt or at nt!ExpWorkerThread
    (its address from the golden PDB text)."""
    from fixtures.machine.pdbtext import golden_publics

    nt = truth["modules"][0]
    worker = golden_publics("ntkrnlmp.pdb").get("ExpWorkerThread") if truth["arch"] == "x64" else None
    return sum(1 for t in truth["threads"] if t["kind"] == "system"
               and (not nt["base"] <= t["start_address"] < nt["base"] + nt["size"]
                    or worker is not None and t["start_address"] == nt["base"] + worker))


@pytest.mark.parametrize("name,kind", MACHINE_DUMPS, ids=[f"{n}-{k}" for n, k in MACHINE_DUMPS])
def test_kernel_objects_match_the_ground_truth(machines, name, kind):
    truth = machines.truth(name)
    is64 = truth["arch"] == "x64"
    with open_machine(machines, name, kind) as s:
        k = s.kernel
        assert s.processor == crashing_processor(truth)
        threads = {t["address"]: t for t in truth["threads"]}
        if kind == "small":
            small = truth["dumps"]["small"]["small"]
            copies = s.kernel.triage_copies
            assert (copies.prcb, copies.thread, copies.process) == (small["prcb"], small["thread"], small["process"])
            assert [p.number for p in k.processors()] == [s.processor]
            with pytest.raises(KdError, match="small memory dump keeps only the current process"):
                k.processes()
            procs = [k.process(k.current_process())]
        else:
            walk = k.processes()
            assert walk.warnings == []
            procs = walk.processes
            want = [p for p in truth["processes"] if p["active_list"]]
            assert [p.address for p in procs] == [p["address"] for p in want]
        by_address = {p["address"]: p for p in truth["processes"]}
        for p in procs:
            w = by_address[p.address]
            assert (p.pid, p.parent, p.name, p.dtb, p.peb) == (w["pid"], w["parent"], w["name"], w["dtb"], w["peb"])
            count = k.handle_count(p)
            if kind == "small":  # the handle table is not in a small dump (Idle has none)
                assert count == (0 if p.object_table == 0 else None)
            elif p.pid == 4:
                assert count == system_handles(truth)
            else:
                assert count == len(w["handles"])
            walk = k.threads(p)
            got = walk.threads
            if kind == "small":
                assert [t.address for t in got] == [truth["dumps"]["small"]["small"]["thread"]]
            else:
                assert walk.warnings == [] and [t.address for t in got] == w["threads"]
            for t in got:
                want = threads[t.address]
                assert [t.pid, t.tid] == want["cid"]
                assert (t.state, t.teb, t.initial_stack, t.stack_limit) == (
                    want["state"], want["teb"], want["initial_stack"], want["stack_limit"])
                assert t.owning_process == want["process"] == p.address
                assert t.win32_start_address == want["win32_start_address"]
                if want["state_name"] == "Waiting":
                    assert (t.kernel_stack, t.wait_reason) == (want["kernel_stack"], want["wait_reason"])
        for proc in k.processors():
            want = truth["processors"][proc.number]
            assert (proc.prcb, proc.current_thread, proc.idle_thread) == (
                want["prcb"], want["current_thread"], want["idle_thread"])
            if kind != "small":
                assert proc.pcr == want["pcr"]
            assert threads[proc.current_thread]["state_name"] == "Running"
        assert k.current_thread() == truth["processors"][s.processor]["current_thread"]
        assert k.current_process() == threads[k.current_thread()]["process"]
        if not is64 and kind != "small":
            assert k.processor(0).irql_source == "KPCR.Irql"


@pytest.mark.parametrize("name,kind", [("d1", "complete"), ("3b", "kernel"), ("e2", "small")])
def test_without_the_kernel_pdb_the_kdbg_and_the_built_in_table_serve(machines, name, kind):
    """No symbols at all: the KDBG's Offset* fields and the 19041 entry of the built-in table (the
    fixture kernel follows 19041's layout) give the same answers, and say where they come from."""
    truth = machines.truth(name)
    with open_machine(machines, name, kind, symbol_path="") as bare, open_machine(machines, name, kind) as full:
        kb, kf = bare.kernel, full.kernel
        assert kf.process_layout.sources["pid"] == "PDB"
        assert kb.thread_layout.sources["apc_process"] == "KDBG (field at +0x2a0)"
        assert kb.process_layout.sources["pid"].startswith("kdshell's built-in offsets for build 19041")
        assert kb.current_thread() == kf.current_thread()
        assert kb.current_process() == kf.current_process()
        if kind != "small":
            bare_procs = [(p.address, p.pid, p.name, p.dtb) for p in kb.processes().processes]
            assert bare_procs == [(p.address, p.pid, p.name, p.dtb) for p in kf.processes().processes]
            assert len(bare_procs) == sum(p["active_list"] for p in truth["processes"])
        cur = kb.thread(kb.current_thread())
        assert [cur.pid, cur.tid] == next(t["cid"] for t in truth["threads"] if t["address"] == cur.address)


def test_an_x86_machine_without_its_pdb_uses_the_x86_table_else_says_which_offset_is_missing(machines):
    from kdshell.kernel.offsets import KernelOffsets

    truth = machines.truth("d1-x86")
    with open_machine(machines, "d1-x86", "complete", symbol_path="") as s:
        # the 19041 entry of the table's x86 section gives what the KDBG does not
        assert s.kernel.process_layout.sources["links"].startswith("kdshell's built-in offsets for build 19041")
        assert [(p.address, p.pid, p.name) for p in s.kernel.processes().processes] == \
            [(p["address"], p["pid"], p["name"]) for p in truth["processes"] if p["active_list"]]
        assert s.kernel.processor(0).current_thread == truth["processors"][0]["current_thread"]
    # a 32-bit build the table does not know (10586: another layout than 10240's) says what is missing
    with pytest.raises(KdError, match=r"^The offset of _EPROCESS.ActiveProcessLinks is not known for build 10586"):
        process_layout(KernelOffsets(10586, False)).need("links")


def test_set_process_switches_the_address_space(machines):
    truth = machines.truth("3b")
    with open_machine(machines, "3b", "complete") as s:
        k = s.kernel
        for p in (p for p in truth["processes"] if p["active_list"] and p["peb"]):
            k.set_process(p["address"])
            assert k.current_process() == p["address"] and s.dtb == p["dtb"]
            # its user half is the one translated now: a page the builder mapped for this DTB
            valid = [t for t in truth["translations"] if t["dtb"] == p["dtb"] and t["pa"] is not None
                     and t["va"] < 0x8000_0000_0000 and t["kind"] == "valid"]
            assert valid, p["name"]
            assert s.memory.translate(valid[0]["va"]) == valid[0]["pa"]
        k.set_process(None)  # back to the current thread's process: stortool.exe, CR3 at the crash
        assert k.current_process() == truth["processes"][-1]["address"] and s.dtb == truth["dtb"]


def test_walks_end_on_a_corrupt_process_list(machines, tmp_path):
    """A process list whose last entry points back into the list: the walk stops with a warning
    and never spins (the file is patched through its own page mapping)."""
    truth = machines.truth("d1")
    path = tmp_path / "loop.dmp"
    shutil.copy(machines.path("d1", "complete"), path)
    procs = [p for p in truth["processes"] if p["active_list"]]
    with open_machine(machines, "d1", "complete") as s:
        links = s.kernel.process_layout.need("links")
        last, second = procs[-1]["address"] + links, procs[1]["address"] + links
        pa = s.memory.translate(last)
        offset = s.dump.physical.file_offset(pa >> 12) + (pa & 0xFFF)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack("<Q", second))
    with kdshell.open(path, symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        walk = s.kernel.processes()
        assert [p.address for p in walk.processes] == [p["address"] for p in procs]
        assert walk.warnings == [f"The active process list loops at {second:#x}; stopped after {len(procs)} entries"]
        out = s.capture("!process 0 0").splitlines()
        assert out[1] == walk.warnings[0] and sum(x.startswith("PROCESS ") for x in out) == len(procs)


# -- an encoded KDBG -----------------------------------------------------------------------------
def _patch_virtual(path, session, va: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        for i in range(0, len(data)):
            pa = session.memory.translate(va + i)
            f.seek(session.dump.physical.file_offset(pa >> 12) + (pa & 0xFFF))
            f.write(data[i : i + 1])


def test_encoded_kdbg_is_decoded_with_the_keys_from_the_pdb(machines, tmp_path):
    """d1's complete dump with its KDBG stored the way a Windows 8+ kernel keeps it while
    KdpDataBlockEncoded is set (encoded here by formats.md's formula, keys written into
    KiWaitNever/KiWaitAlways): with the kernel's PDB kdshell decodes it; without, it says so."""
    path = tmp_path / "encoded.dmp"
    shutil.copy(machines.path("d1", "complete"), path)
    with open_machine(machines, "d1", "complete") as s:
        address, plain = s.kdbg.address, s.kdbg.raw
        at = {n: s.symbols.resolve(f"nt!{n}") for n in ("KiWaitNever", "KiWaitAlways", "KdpDataBlockEncoded")}
        keys = K.KdbgKeys(0x5A17_93C4_E0B2_6D3F, 0x0123_4567_89AB_CDEF, at["KdpDataBlockEncoded"])
        _patch_virtual(path, s, at["KiWaitNever"], struct.pack("<Q", keys.wait_never))
        _patch_virtual(path, s, at["KiWaitAlways"], struct.pack("<Q", keys.wait_always))
        _patch_virtual(path, s, at["KdpDataBlockEncoded"], b"\x01")
        _patch_virtual(path, s, address, encoded(plain, keys))
        want = [(p.address, p.name) for p in s.kernel.processes().processes]
        prcbs = [p.prcb for p in s.kernel.processors()]
        modules = [(m.base, m.name) for m in s.symbols.modules]
        unloaded = [(u.name, u.start) for u in s.symbols.modules.unloaded]
    with kdshell.open(path, symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        # the module list comes from the header's PsLoadedModuleList; the unloaded list (a KDBG
        # field) only once the block is decoded (kdshell/parts.py)
        assert [(m.base, m.name) for m in s.symbols.modules] == modules
        assert [(u.name, u.start) for u in s.symbols.modules.unloaded] == unloaded
        assert s.kdbg is not None and s.kdbg.encoded and s.kdbg.raw == plain
        assert [(p.address, p.name) for p in s.kernel.processes().processes] == want
        assert [p.prcb for p in s.kernel.processors()] == prcbs
    with kdshell.open(path, symbol_path="", image_path="") as s:
        assert s.kdbg is None  # no keys without the kernel's symbols
        assert K.is_encoded(s.raw_memory, address)


# -- the real small dumps --------------------------------------------------------------------------
# (dump, processor, KPRCB, ETHREAD, EPROCESS, CID, image): checked once against the copies' raw
# bytes -- UniqueProcessId at +0x440/+0x2e0, ImageFileName at +0x5a8/+0x450, Cid at +0x478/+0x638
# (19041/17763), System's ActiveProcessLinks.Blink = the header's PsActiveProcessHead -- then pinned.
CORPUS = [
    (TRIAGE_19041, 0, 0xFFFFF804782D4180, 0xFFFFC08BDE9E1640, 0xFFFFC08BDCE94180, (4, 0x108), "System",
     "KiProcessorBlock[0]"),
    (MINI_17763, 6, 0xFFFFB8005D200180, 0xFFFF8903517E7240, 0xFFFF89034CEDB080, (4, 0x198), "System",
     "the KPRCB copy's own list heads"),
]


@pytest.mark.parametrize("path,number,prcb,thread,process,cid,image,how", CORPUS, ids=["19041", "17763"])
def test_corpus_small_dump_copies(path, number, prcb, thread, process, cid, image, how):
    with kdshell.open(path, symbol_path="", image_path="") as s:
        c = s.kernel.triage_copies
        assert (c.number, c.prcb, c.thread, c.process) == (number, prcb, thread, process)
        assert c.how["prcb"] == how and c.notes == []
        assert s.processor == number and s.prompt == f"{number}: kd> "
        # the copies are memory now, at their addresses
        size = s.kernel.offsets.size("_EPROCESS")
        pieces = [r for r in s.raw_memory.sparse if r.source == "EPROCESS copy"]
        assert pieces and all(process <= r.start and r.end <= process + size for r in pieces)
        assert s.memory.readable(process, size)  # data blocks saved some of it first; the copy fills the rest
        k = s.kernel
        p = k.process(k.current_process())
        t = k.thread(k.current_thread())
        assert (p.address, p.pid, p.name, p.parent, p.peb) == (process, cid[0], image, 0, 0)
        assert (t.address, t.pid, t.tid, t.owning_process) == (thread, cid[0], cid[1], process)
        links = k.process_layout.need("links")
        assert Reader(s.memory, True).ptr(process + links + 8) == s.dump.header.ps_active_process_head
        assert k.processor().prcb == prcb and k.processor().current_thread == thread
        assert k.running_on(thread) == number
        for name, value in (("$proc", process), ("$thread", thread), ("$prcb", prcb), ("$peb", 0), ("$teb", 0)):
            assert k.pseudo(name) == value
        with pytest.raises(KdError, match=f"keeps only the crashing processor's \\(processor {number}\\)"):
            k.processor((number + 1) % 8)


# -- the built-in table --------------------------------------------------------------------------
# _ETHREAD sizes on x64 as an independent source lists them (Geoff Chappell's ETHREAD page:
# 6.1 0x498, 6.3 0x778, 1607 0x7E0, 1809 0x810, 2004 0x898), against the table's entries, which
# come from ntdiff's headers and the corpus dumps.
ETHREAD_SIZES = {7601: 0x498, 9600: 0x778, 14393: 0x7E0, 17763: 0x810, 19041: 0x898}


@pytest.mark.parametrize("build,size", sorted(ETHREAD_SIZES.items()))
def test_builtin_thread_layouts_are_consistent(build, size):
    from kdshell.kernel.offsets import build_entry

    entry = build_entry(build, True)
    assert entry.exact and entry.size("_ETHREAD") == size
    cid, links = entry.offset("_ETHREAD", "Cid"), entry.offset("_ETHREAD", "ThreadListEntry")
    assert cid is not None and links is not None and cid + 0x10 <= links < size
    kthread = entry.size("_KTHREAD")
    if kthread is not None:  # the KTHREAD (Tcb) comes first; ETHREAD's own fields follow it
        assert kthread <= entry.offset("_ETHREAD", "StartAddress") < cid
        assert entry.offset("_KTHREAD", "State") < entry.offset("_KTHREAD", "WaitReason") < kthread
