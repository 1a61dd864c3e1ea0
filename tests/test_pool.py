"""!pool, !poolused, !poolfind, !vm and !analyze's pool lines against the test machines' pool
ledger (fixtures/machine/poolledger.py: every ExAllocatePoolWithTag/ExFreePoolWithTag call the CPU
made, block rules applied by the builder, counts summed by the builder), the POOL_HEADER layouts
against the fixture kernel's PDB text (llvm-pdbutil's view), and the real corpus dumps (small
dumps: one line each, never a traceback)."""
import re

import pytest

import kdshell
from conftest import assert_poolused_is_the_ledgers, REPO, corpus_dumps_if_present, open_corpus, open_machine, run_lines as lines
from fixtures.machine.pdbtext import golden_types
from kdshell.kernel.pool import HEADER32, HEADER64, TRACKER64, tag_owner, tag_text, tag_value

BIN = REPO / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"
POOL_LINE = re.compile(r"^([ *])([0-9a-f]{16}) size: ([ 0-9a-f]{4}) previous size: ([ 0-9a-f]{4})  "
                       r"\((Allocated|Free)\)\s+([ *])(.{4})$")




@pytest.fixture(scope="module")
def c2(machines):
    s = open_machine(machines, "c2")
    yield s, machines.truth("c2")
    s.close()


def small_blocks(truth):
    return [b for b in truth["pool"]["blocks"] if b["kind"] == "small"]


# -- layouts -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("x86,layout", [(False, HEADER64), (True, HEADER32)])
def test_pool_header_layout_is_the_kernels(x86, layout):
    t = golden_types("ntkrpamp.pdb" if x86 else "ntkrnlmp.pdb", x86)
    assert t.sizeof("_POOL_HEADER") == layout.size
    for name, (pos, length) in (("PreviousSize", layout.previous_size), ("PoolIndex", layout.pool_index),
                                ("BlockSize", layout.block_size), ("PoolType", layout.pool_type)):
        f = t.field("_POOL_HEADER", name)
        assert (f.offset * 8 + f.bit, f.bits) == (pos, length), name
    assert t.offset("_POOL_HEADER", "PoolTag") == layout.tag


def test_windows10_tracker_layout_is_self_consistent():
    fields, size = TRACKER64
    spans = sorted((off, off + width) for off, width in fields.values())
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])) and spans[-1][1] <= size == 0x28


def test_tags():
    assert tag_text(0x7244794D) == "MyDr" and tag_value("MyDr") == 0x7244794D
    assert tag_value("Irp") == 0x20707249 and tag_text(0x20707249 | 0x80000000) == "Irp "
    assert tag_owner("Irp")[0] == "nt!io" and tag_owner("MyDr")[0] == "mydrv.sys" and tag_owner("Zz9!") is None


# -- !pool -----------------------------------------------------------------------------------------------
def test_pool_names_the_double_freed_block_and_its_page(c2):
    s, truth = c2
    freed = truth["bugcheck"]["parameters"][3]
    block = next(b for b in small_blocks(truth) if b["va"] == freed)
    assert truth["pool"]["double_frees"] == [freed] and block["freed"] and block["tag"] == "MyDr"
    out = lines(s, f"!pool {freed:x}")
    assert out[0] == f"Pool page {freed:016x} region is Nonpaged pool"
    rows = [POOL_LINE.match(line) for line in out[1:] if not line.startswith("\t")]
    assert all(rows), out
    page = freed & ~0xFFF
    starred = [m for m in rows if m.group(1) == "*"]
    assert len(starred) == 1
    m = starred[0]
    assert (int(m.group(2), 16), int(m.group(3), 16), m.group(5), m.group(6), m.group(7)) == \
        (block["header"], block["block_size"], "Free", "*", "MyDr")
    assert out[out.index(m.group(0)) + 1] == ("\t\tPooltag MyDr : records and buffers of the test machines' mydrv "
                                              "driver, Binary : mydrv.sys")
    # every block of the page, in order, chained, covering the page; the ledger's blocks are among them
    addresses = [int(r.group(2), 16) for r in rows]
    sizes = [int(r.group(3), 16) for r in rows]
    assert addresses[0] == page and addresses[-1] + sizes[-1] == page + 0x1000
    assert [int(r.group(4), 16) for r in rows] == [0] + sizes[:-1]
    assert all(a + n == b for a, n, b in zip(addresses, sizes, addresses[1:]))
    ledger = {b["header"]: b for b in small_blocks(truth) if page <= b["header"] < page + 0x1000}
    assert set(ledger) <= set(addresses) and len(ledger) >= len(rows) - 1
    for r in rows:
        b = ledger.get(int(r.group(2), 16))
        if b is None:  # the page's unused tail: one free block
            assert (r.group(5), r.group(7)) == ("Free", "Free") and r is rows[-1]
            continue
        assert (int(r.group(3), 16), r.group(5), r.group(7)) == \
            (b["block_size"], "Free" if b["freed"] else "Allocated", b["tag"])
    only = lines(s, f"!pool {freed:x} 2")
    assert only[1] == m.group(0) and len(only) == 3


def test_every_ledger_block_is_found(c2):
    s, truth = c2
    from kdshell.commands.pool import kernel_pool

    pool = kernel_pool(s)
    for b in truth["pool"]["blocks"]:
        got = pool.find(b["va"])
        assert got is not None, b
        if b["kind"] == "small":
            assert (got.address, got.size, got.tag_text, got.allocated, got.big) == \
                (b["header"], b["block_size"], b["tag"], not b["freed"], False)
            assert got.paged == b["paged"]
        else:
            assert (got.address, got.size, got.tag_text, got.freed, got.big) == \
                (b["va"], b["size"], b["tag"], b["freed"], True)


def test_big_page_blocks_freed_and_allocated(machines):
    truth = machines.truth("50")
    freed = [b for b in truth["pool"]["blocks"] if b["kind"] == "big" and b["freed"]]
    live = [b for b in truth["pool"]["blocks"] if b["kind"] == "big" and not b["freed"]]
    assert freed and live and freed[-1]["tag"] == "MyDr"
    with open_machine(machines, "50") as s:
        b = freed[-1]
        out = lines(s, f"!pool {b['va'] + 0x10:x}")
        assert out[1] == f"*{b['va']:016x} : large page allocation (Free), tag is MyDr, size is {b['size']:#x} bytes"
        b = live[0]
        out = lines(s, f"!pool {b['va']:x}")
        assert out[1] == f"*{b['va']:016x} : large page allocation, tag is {b['tag']}, size is {b['size']:#x} bytes"
        # !analyze's READ_ADDRESS names the freed pool's region
        out = lines(s, "!analyze -v")
        assert f"READ_ADDRESS:  {truth['bugcheck']['parameters'][0]:x} Nonpaged pool" in out


# -- !poolused / !poolfind / !vm ---------------------------------------------------------------------------
def test_poolused_is_the_ledgers_sum(c2):
    s, truth = c2
    tracker = truth["pool"]["tracker"]
    out = lines(s, "!poolused")
    rows = assert_poolused_is_the_ledgers(out, tracker)
    assert list(rows) == sorted(rows)  # by tag
    total = out[-1].split()
    assert total[0] == "TOTAL" and int(total[2]) == sum(t["nonpaged_bytes"] for t in tracker.values())
    by_np = [line[1:5] for line in lines(s, "!poolused 2") if "\t" in line]
    assert by_np[0] == max(tracker, key=lambda k: tracker[k]["nonpaged_bytes"])
    verbose = [line for line in lines(s, "!poolused 1 MyDr") if line.startswith(" MyDr")]
    mydr = tracker["MyDr"]
    assert verbose[0].split()[1:5] == [str(mydr["nonpaged_allocs"]), str(mydr["nonpaged_frees"]), "0", "0"]


def test_poolfind_lists_every_block_of_the_tag(c2):
    s, truth = c2
    out = lines(s, "!poolfind Obtb")
    found = {int(line.split()[0], 16): line for line in out if re.match(r"^[0-9a-f]{16} : tag", line)}
    want = {b["header"] if b["kind"] == "small" else b["va"]: b for b in truth["pool"]["blocks"] if b["tag"] == "Obtb"}
    assert set(found) == set(want) and any(b["kind"] == "big" for b in want.values())
    freed = [line for line in lines(s, "!poolfind MyDr") if "tag MyDr" in line]
    block = next(b for b in truth["pool"]["blocks"] if b["tag"] == "MyDr")
    assert freed == [f"{block['header']:016x} : tag MyDr (Free), size {block['block_size'] - 0x10:#10x}, Nonpaged pool"]


def test_vm_physical_memory_and_pool_use(c2):
    s, truth = c2
    out = lines(s, "!vm")
    pages = sum(n for _, n in truth["physical_memory_runs"])
    assert f"Physical Memory:{pages:>17} ({pages * 4:>11} Kb)" in out
    np_pages = -(-sum(t["nonpaged_bytes"] for t in truth["pool"]["tracker"].values()) // 0x1000)
    assert f"NonPagedPool Usage:{np_pages:>14} ({np_pages * 4:>11} Kb)" in out


# -- !analyze -------------------------------------------------------------------------------------------------
def test_analyze_names_the_pool_block_and_tag(c2):
    s, truth = c2
    p = truth["bugcheck"]["parameters"]
    block = next(b for b in small_blocks(truth) if b["va"] == p[3])
    out = lines(s, "!analyze -v")
    assert f"POOL_ADDRESS:  {p[3]:x} Nonpaged pool" in out
    assert (f"POOL_BLOCK:  {block['header']:x} size: {block['block_size']:x} (Free) tag MyDr (records and buffers "
            "of the test machines' mydrv driver, mydrv.sys)") in out
    assert "FREED_POOL_TAG:  MyDr" in out
    assert lines(s, "!analyze")[10] == "Probably caused by : mydrv.sys ( mydrv!MyDrvFreeRecord+1d )"


# -- small dumps, x86, real dumps ------------------------------------------------------------------------------
NEW = ("!pool ffffc20a0006ed90", "!poolused", "!poolfind MyDr", "!vm")


def test_small_dump_says_what_it_lacks(machines):
    with open_machine(machines, "c2", "small") as s:
        for command in ("!poolused", "!poolfind MyDr", "!vm", "!pool ffffc20a0006ed90"):
            with s.out.capture() as buf:
                s.run(command)
            out = "".join(buf).splitlines()
            assert len(out) == 1 and "small memory dump keeps no" in out[0] and "kernel" in out[0], out
        p4 = machines.truth("c2")["bugcheck"]["parameters"][3]
        assert any(line.startswith(f"POOL_ADDRESS:  {p4:x} (its pool block is not in a small memory dump")
                   for line in lines(s, "!analyze -v"))


def test_x86_pool(machines):
    with open_machine(machines, "d1-x86", "complete") as s:
        out = lines(s, "!poolused")
        assert any(line.startswith(" Proc ") for line in out)
        out = [line for line in lines(s, "!poolfind Proc") if "tag Proc" in line]
        assert out
        address = int(out[0].split()[0], 16)
        page = lines(s, f"!pool {address + 8:x}")
        assert any(line.startswith(f"*{address:08x} size:") and line.endswith("*Proc") for line in page), page


@pytest.mark.parametrize("path", corpus_dumps_if_present(), ids=lambda p: p.name)
def test_corpus_dumps_answer_in_one_line_or_work(path):
    with open_corpus(path) as s:
        for command in NEW:
            with s.out.capture() as buf:
                s.run(command)
            text = "".join(buf)
            assert "Traceback" not in text and "Internal error" not in text, (command, text)
            if s.kernel.small:
                assert len(text.splitlines()) == 1 and "small memory dump" in text


def test_analyze_names_the_block_of_a_bad_pool_header(machines, tmp_path):
    """c2's dump relabelled as 0x19 subtype 0x20 (P2: the pool entry being scanned, P3: the next
    one): !analyze names the block at P2 from its POOL_HEADER, its tag and owner."""
    import shutil
    import struct

    truth = machines.truth("c2")
    block = next(b for b in small_blocks(truth) if b["tag"] == "Devi")
    path = tmp_path / "19.dmp"
    shutil.copy(machines.path("c2", "kernel"), path)
    with open(path, "r+b") as f:
        f.seek(0x38)
        f.write(struct.pack("<I", 0x19))
        f.seek(0x40)
        f.write(struct.pack("<4Q", 0x20, block["header"], block["header"] + block["block_size"], 0))
    with kdshell.open(path, symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        out = s.capture("!analyze -v").splitlines()
    assert f"POOL_ADDRESS:  {block['header']:x} Nonpaged pool" in out
    assert (f"POOL_BLOCK:  {block['header']:x} size: {block['block_size']:x} (Allocated) tag Devi (device objects "
            "made by IoCreateDevice, nt!io)") in out
    assert not any(line.startswith("FREED_POOL_TAG") for line in out)
