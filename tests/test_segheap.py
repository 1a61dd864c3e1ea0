"""The segment heap of 19H1+ (kdshell/kernel/segheap.py) on the 13a machine, whose kernel's pool is
one (fixtures/images/src/nt/amd64/heap.c, random keys in RtlpHpHeapGlobals): !pool, !poolfind,
!poolused and !analyze 0x13A against the pool ledger (every ExAllocatePoolWithTag/ExFreePoolWithTag
call the CPU made, block rules applied by the builder: fixtures/machine/poolledger.py), the heap's
types against the fixture PDB's text, and one line where the types are missing."""
import re
import shutil
import struct

import pytest

import kdshell
from conftest import assert_poolused_is_the_ledgers, MACHINE_SYMBOLS, corpus_dumps_if_present, open_corpus, open_machine, run_lines as lines
from fixtures.machine.pdbtext import golden_types
from kdshell.kernel.pool import KernelPool
from kdshell.kernel.segheap import HeapError, SegmentHeap

POOL_LINE = re.compile(r"^([ *])([0-9a-f]{16}) size: ([ 0-9a-f]{4}) previous size: ([ 0-9a-f]{4})  "
                       r"\((Allocated|Free)\)\s+([ *])(.{4})$")
HEAP_KINDS = ("lfh", "vs")


@pytest.fixture(scope="module")
def m13a(machines):
    s = open_machine(machines, "13a")
    yield s, machines.truth("13a")
    s.close()


def kernel_pool(s) -> KernelPool:
    k = s.kernel
    return KernelPool(k.memory, k.offsets, k.is64, k.symbol, k.kdbg_value)


def heap_blocks(truth):
    return [b for b in truth["pool"]["blocks"] if b["kind"] in HEAP_KINDS]


def corrupted(truth):
    """The block whose VS chunk header the overrun hit: P3 of the bug check."""
    p = truth["bugcheck"]["parameters"]
    return next(b for b in heap_blocks(truth) if b.get("chunk") == p[2])


# -- the fixture kernel's types are what kdshell reads ---------------------------------------------------
def test_heap_types_are_in_the_fixture_pdb():
    t = golden_types("ntkrnlmp.pdb", False)
    assert t.sizeof("_HEAP_VS_CHUNK_HEADER") == 0x10 and t.sizeof("_HEAP_PAGE_RANGE_DESCRIPTOR") == 0x20
    f = t.field("_HEAP_VS_CHUNK_HEADER_SIZE", "UnsafeSize")
    assert (f.offset * 8 + f.bit, f.bits) == (16, 16)
    assert t.offset("_HEAP_PAGE_RANGE_DESCRIPTOR", "RangeFlags") == 0x18
    assert t.offset("_HEAP_LFH_SUBSEGMENT", "BlockOffsets") == 0x28
    assert t.offset("_RTLP_HP_HEAP_GLOBALS", "LfhKey") == 8


def test_the_machine_pool_is_a_segment_heap_keyed_by_its_random_keys(m13a):
    s, truth = m13a
    heap = kernel_pool(s).segment_heap()
    keys = truth["pool"]["segment_heap"]
    assert heap is not None and (heap.heap_key, heap.lfh_key) == (keys["heap_key"], keys["lfh_key"])
    assert keys["heap_key"] not in (0, keys["lfh_key"])
    kinds = {b["kind"] for b in truth["pool"]["blocks"]}
    assert {"lfh", "vs", "big"} <= kinds
    p = truth["bugcheck"]["parameters"]
    assert truth["bugcheck"]["code"] == 0x13A and p[0] == 0x11 and p[1] == heap.heaps[0]


def test_classic_machines_keep_the_classic_pool(machines):
    with open_machine(machines, "c2") as s:
        assert kernel_pool(s).segment_heap() is None
    assert "segment_heap" not in machines.truth("c2")["pool"]


# -- every block the CPU allocated ---------------------------------------------------------------------
def test_every_ledger_block_is_found(m13a):
    s, truth = m13a
    pool = kernel_pool(s)
    bad = corrupted(truth)
    for b in truth["pool"]["blocks"]:
        got = pool.find(b["va"])
        assert got is not None, b
        if b["kind"] == "big":
            assert (got.address, got.size, got.tag_text, got.freed, got.big) == \
                (b["va"], b["size"], b["tag"], b["freed"], True)
            continue
        assert (got.address, got.size, got.tag_text, got.allocated, got.kind) == \
            (b["header"], b["block_size"], b["tag"], not b["freed"], b["kind"]), b
        assert got.paged == b["paged"] and got.chunk == b.get("chunk")
        assert got.corrupt == (b is bad)
    # the VS chunk header in front of a block is part of it
    assert pool.find(bad["chunk"]).address == bad["header"]


def test_pool_lists_the_vs_blocks_around_the_corrupted_header(m13a):
    s, truth = m13a
    bad = corrupted(truth)
    out = lines(s, f"!pool {bad['va']:x}")
    assert out[0] == f"Pool page {bad['va']:016x} region is Nonpaged pool"
    rows = [POOL_LINE.match(line) for line in out[1:] if not line.startswith(("\t", "The VS"))]
    assert all(rows), out
    starred = [m for m in rows if m.group(1) == "*"]
    assert [(int(m.group(2), 16), int(m.group(3), 16), m.group(5), m.group(7)) for m in starred] == \
        [(bad["header"], bad["block_size"], "Allocated", "MyDr")]
    assert (f"The VS chunk header at {bad['chunk']:x} does not decode with nt!RtlpHpHeapGlobals.HeapKey "
            "(a size past the subsegment's end): it is corrupt") in out
    # the ledger's VS blocks on this page are the allocated rows, in order; the rest are free chunks
    page = bad["va"] & ~0xFFF
    ledger = {b["header"]: b for b in heap_blocks(truth) if b["kind"] == "vs"}
    allocated = [int(m.group(2), 16) for m in rows if m.group(5) == "Allocated"]
    assert allocated == sorted(allocated) and all(a in ledger for a in allocated)
    want = [h for h, b in ledger.items() if h < page + 0x1000 and h + b["block_size"] > page and not b["freed"]]
    assert allocated == sorted(want)
    for m in rows:
        assert int(m.group(4), 16) == 0  # the segment heap keeps no previous size
    # a VS block the driver freed: free by its chunk header, its POOL_HEADER kept
    freed = [b for h, b in ledger.items() if h < page + 0x1000 and h + b["block_size"] > page and b["freed"]]
    assert freed
    free_rows = {int(m.group(2), 16): m for m in rows if m.group(5) == "Free"}
    for b in freed:
        m = free_rows[b["header"]]
        assert (int(m.group(3), 16), m.group(7)) == (b["block_size"], b["tag"])


def test_pool_on_an_lfh_page_shows_the_bitmaps_state(m13a):
    s, truth = m13a
    mydr = [b for b in heap_blocks(truth) if b["tag"] == "MyDr" and b["kind"] == "lfh"]
    freed = next(b for b in mydr if b["freed"])
    kept = next(b for b in mydr if not b["freed"])
    out = lines(s, f"!pool {kept['va'] + 8:x}")
    rows = {int(m.group(2), 16): m for m in map(POOL_LINE.match, out[1:]) if m}
    assert rows[kept["header"]].group(1) == "*" and rows[kept["header"]].group(5) == "Allocated"
    assert rows[freed["header"]].group(5) == "Free" and rows[freed["header"]].group(7) == "MyDr"
    page = kept["va"] & ~0xFFF
    ledger = {b["header"]: b for b in heap_blocks(truth) if page <= b["header"] < page + 0x1000}
    assert set(ledger) <= set(rows)
    for address, m in rows.items():
        b = ledger.get(address)
        if b is None:  # never handed out: free, no header
            assert m.group(5) == "Free" and m.group(7) == "????"
            continue
        assert (int(m.group(3), 16), m.group(5), m.group(7)) == \
            (b["block_size"], "Free" if b["freed"] else "Allocated", b["tag"])
    only = lines(s, f"!pool {freed['va']:x} 2")
    assert len(only) == 3 and only[1].startswith(f"*{freed['header']:016x} size:   40") and "(Free)" in only[1]


def test_poolfind_scans_the_heaps_subsegments(m13a):
    s, truth = m13a
    out = lines(s, "!poolfind MyDr")
    assert "Searching the segment heap's LFH and VS subsegments (1 heap, 1 segment) for tag 0x7244794d (MyDr)" in out
    found = [line for line in out if re.match(r"^[0-9a-f]{16} : tag MyDr", line)]
    want = [f"{b['header']:016x} : tag MyDr{' (Free)' if b['freed'] else ''}, size {b['block_size'] - 0x10:#10x}, "
            "Nonpaged pool" for b in sorted(heap_blocks(truth), key=lambda b: b["header"]) if b["tag"] == "MyDr"]
    assert found == want and len(want) == 5
    # every tag the CPU allocated from the heap is found, block for block
    obtb = {int(line.split()[0], 16) for line in lines(s, "!poolfind Obtb") if " : tag Obtb" in line}
    assert obtb == {b["header"] if b["kind"] != "big" else b["va"] for b in truth["pool"]["blocks"] if b["tag"] == "Obtb"}


def test_poolused_is_the_ledgers_sum(m13a):
    s, truth = m13a
    tracker = truth["pool"]["tracker"]
    assert_poolused_is_the_ledgers(lines(s, "!poolused"), tracker)


# -- !analyze ------------------------------------------------------------------------------------------
def test_analyze_names_the_corrupted_block_and_the_one_before(m13a):
    s, truth = m13a
    bad = corrupted(truth)
    before = next(b for b in heap_blocks(truth) if b["kind"] == "vs" and b["header"] + b["block_size"] == bad["chunk"])
    assert before["tag"] == "MyDr" and before["caller"] != 0
    out = lines(s, "!analyze -v")
    assert f"POOL_ADDRESS:  {bad['chunk']:x} Nonpaged pool" in out
    assert (f"POOL_BLOCK:  {bad['header']:x} size: {bad['block_size']:x} (Allocated) tag MyDr (records and buffers "
            "of the test machines' mydrv driver, mydrv.sys)") in out
    assert (f"CORRUPTED_HEADER:  {bad['chunk']:x} (the VS chunk header in front of {bad['header']:x} does not decode "
            f"with the heap key); the block before it: {before['header']:x} size: {before['block_size']:x} "
            "(Allocated) tag MyDr") in out
    assert any(line.startswith("FAILURE_BUCKET_ID:  0x13A_11_") for line in out)
    # the heap raised it inside the free that mydrv called: the frame the CPU ran
    caller = next(f["function"] for f in truth["call_chain"] if f["function"].startswith("mydrv!"))
    assert caller.startswith("mydrv!MyDrvHeapOverrun+0x")
    assert lines(s, "!analyze")[10] == f"Probably caused by : Pool_Corruption ( {caller.replace('+0x', '+')} )"


@pytest.mark.parametrize("code,params", [(0xC2, "freed"), (0x19, "scanned")])
def test_analyze_c2_and_19_name_segment_heap_blocks(machines, tmp_path, code, params):
    """13a's dump relabelled as 0xC2 subtype 7 (P4: the freed LFH block) and 0x19 subtype 0x20 (P2: a
    VS block's POOL_HEADER): !analyze names the block from the segment heap."""
    truth = machines.truth("13a")
    blocks = heap_blocks(truth)
    if code == 0xC2:
        b = next(b for b in blocks if b["kind"] == "lfh" and b["freed"] and b["tag"] == "MyDr")
        p = (7, 0x1200, 0, b["va"])
        address, state = b["va"], "Free"
    else:
        b = next(b for b in blocks if b["kind"] == "vs" and b["tag"] == "Thre")
        p = (0x20, b["header"], b["header"] + b["block_size"], 0)
        address, state = b["header"], "Allocated"
    path = tmp_path / "relabelled.dmp"
    shutil.copy(machines.path("13a", "kernel"), path)
    with open(path, "r+b") as f:
        f.seek(0x38)
        f.write(struct.pack("<I", code))
        f.seek(0x40)
        f.write(struct.pack("<4Q", *p))
    with kdshell.open(path, symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        out = s.capture("!analyze -v").splitlines()
    assert f"POOL_ADDRESS:  {address:x} Nonpaged pool" in out
    assert any(line.startswith(f"POOL_BLOCK:  {b['header']:x} size: {b['block_size']:x} ({state}) tag {b['tag']}")
               for line in out), out
    assert any(line == f"FREED_POOL_TAG:  {b['tag']}" for line in out) == (code == 0xC2)


# -- what is missing: one line -------------------------------------------------------------------------
class _Without:
    """The kernel's types without one of them."""

    def __init__(self, offsets, missing):
        self.types = _TypesWithout(offsets.types, missing)


class _TypesWithout:
    def __init__(self, types, missing):
        self._types, self._missing = types, missing

    def find(self, name):
        return None if name == self._missing else self._types.find(name)


@pytest.mark.parametrize("missing", ["_HEAP_VS_CHUNK_HEADER", "_EX_POOL_HEAP_MANAGER_STATE", "_RTLP_HP_HEAP_GLOBALS"])
def test_a_missing_type_is_one_line(m13a, missing):
    s, truth = m13a
    k = s.kernel
    pool = KernelPool(k.memory, _Without(k.offsets, missing), k.is64, k.symbol, k.kdbg_value)
    assert pool.segment_heap() is None
    assert pool.heap_error == f"the pool is a segment heap kdshell cannot read: the kernel's symbols have no type {missing}"
    with pytest.raises(HeapError):
        SegmentHeap.open(pool.reader, _TypesWithout(k.offsets.types, missing), k.symbol)
    walk = pool.walk_page(corrupted(truth)["va"])
    assert walk.problem.endswith(pool.heap_error) and "\n" not in walk.problem


def test_small_dump_says_what_it_lacks(machines):
    with open_machine(machines, "13a", "small") as s:
        for command in ("!pool ffffc20a00017600", "!poolfind MyDr", "!poolused"):
            with s.out.capture() as buf:
                s.run(command)
            out = "".join(buf).splitlines()
            assert len(out) == 1 and "small memory dump keeps no" in out[0], out


@pytest.mark.parametrize("path", corpus_dumps_if_present(), ids=lambda p: p.name)
def test_corpus_pool_on_addresses_answers_or_says_one_line(path):
    """Real dumps (Windows 10 17763 and 19041, a segment-heap kernel, without its PDB): !pool on
    the bug check's parameters and the context's stack pointer answers without a traceback."""
    with open_corpus(path) as s:
        addresses = [a for a in s.dump.header.bugcheck_parameters if a > 0xFFFF800000000000][:3] + [0xFFFFC20A00017600]
        for address in addresses:
            with s.out.capture() as buf:
                s.run(f"!pool {address:x}")
            text = "".join(buf)
            assert "Traceback" not in text and "Internal error" not in text, text
            if s.kernel.small:
                assert len(text.splitlines()) == 1 and "small memory dump" in text, text


def test_region_comes_from_the_block_when_the_kernel_keeps_no_ranges(m13a):
    """Windows 10 has no MmNonPagedPoolStart/End: a segment-heap block's region is its pool type's."""
    s, truth = m13a
    k = s.kernel

    def symbol(name):
        return None if name.startswith(("MmNonPagedPool", "MmPagedPool")) else k.symbol(name)

    def kdbg_value(name):
        return None if name.startswith(("MmNonPagedPool", "MmPagedPool")) else k.kdbg_value(name)

    pool = KernelPool(k.memory, k.offsets, k.is64, symbol, kdbg_value)
    assert pool.nonpaged_range() is None
    blocks = heap_blocks(truth)
    paged = [b for b in blocks if b["paged"]]
    assert paged and any(not b["paged"] for b in blocks)
    for b in blocks:
        assert pool.region(b["va"]) == ("Paged pool" if b["paged"] else "Nonpaged pool"), b
    assert pool.region(k.symbol("KiBugCheckData")) is None  # nt's .data is no pool


class _KeyFlipped:
    """The dump's memory with one byte of a key changed: what a decoder that skipped the key would not notice."""

    def __init__(self, memory, at):
        self.memory, self.at = memory, at

    def read(self, address, size):
        data = bytearray(self.memory.read(address, size))
        if address <= self.at < address + size:
            data[self.at - address] ^= 0x10
        return bytes(data)


def test_a_wrong_key_does_not_decode(m13a):
    s, truth = m13a
    k = s.kernel
    keys = k.symbol("RtlpHpHeapGlobals")
    kept = next(b for b in heap_blocks(truth) if b["kind"] == "lfh" and not b["freed"])
    vs = next(b for b in heap_blocks(truth) if b["kind"] == "vs" and not b["freed"])
    lfh_wrong = KernelPool(_KeyFlipped(k.memory, keys + 8), k.offsets, k.is64, k.symbol, k.kdbg_value)
    walk = lfh_wrong.walk_page(kept["va"])
    assert not walk.blocks and walk.problem.startswith("The LFH subsegment at ") and "LfhKey" in walk.problem
    assert lfh_wrong.find(vs["va"]).address == vs["header"]  # the VS chunks need only HeapKey
    heap_wrong = KernelPool(_KeyFlipped(k.memory, keys + 1), k.offsets, k.is64, k.symbol, k.kdbg_value)
    assert heap_wrong.segment_heap() is not None
    assert heap_wrong.segment_heap().locate(vs["va"]) is None  # no segment's signature matches
    assert heap_wrong.find(vs["va"]) is None


def test_pool_outside_the_subsegments_says_where_it_is(m13a):
    s, truth = m13a
    heap = kernel_pool(s).segment_heap()
    (_, segment, shift, first), = list(heap.segments())
    assert segment == min(b["header"] for b in heap_blocks(truth)) & ~0xFFFFF  # the one 1 MB segment
    out = lines(s, f"!pool {segment:x}")
    assert out[1] == (f"{segment:x} is in the segment's own header of the segment heap's segment {segment:x}: "
                      "it holds no pool blocks")
    used = max(b["header"] + b["block_size"] for b in heap_blocks(truth))
    beyond = segment + 0xFF000  # the segment's last page: past every range the heap carved
    assert used < beyond
    assert lines(s, f"!pool {beyond:x}")[1] == (f"{beyond:x} is in a free page range of the segment heap's segment "
                                                f"{segment:x}: it holds no pool blocks")
