""".dump: small memory dumps (/m) and complete/kernel/active dumps (/f, /k, /ka) written out of a
loaded dump (windbg.md §16, formats.md §3-§7).

Three kinds of truth:
- the test machines (fixtures/README.md): every scenario's complete and kernel dumps are shrunk
  with .dump /m and the result is read back: the same bug check, context, k (frames within the
  saved 16 KiB), lm, kernel object copies as the ground truth says; /f, /k and /ka outputs are
  read by kdmp-parser (an independent reader) with identical pages and context, and the kernel
  page selection is the machine's own kernel page set;
- the real small dumps of the corpus: our small dump has the same blocks in the same order and
  the same header fields filled;
- the file system: existing files, unwritable paths, a full disk, Ctrl-C -- no partial file, the
  input never written.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import kdshell
from conftest import CORPUS_DUMPS, MINI_17763, REPO, TRIAGE_19041
from fixtures.machine.catalog import PLAN
from kdshell import dispatch
from kdshell.export import convert as C
from kdshell.dumpfile import write as W
from kdshell.dumpfile.dump import open_dump
from kdshell.dumpfile.header import DUMP_HEADER64, TRIAGE_DUMP64
from kdshell.export.minidump import STACK_LIMIT

BIN = REPO / "fixtures" / "images" / "bin"
SOURCES = [(name, kind) for name, kinds in PLAN.items() for kind in kinds if kind in ("complete", "kernel")]
SCAN_WARNING = "WARNING: Stack unwind information not available. Following frames may be wrong."


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """The fixture images under the names the machines' loader lists give them: the x86 kernel is
    loaded as ntkrnlpa.exe (its file in fixtures/images/bin/x86 is ntoskrnl.exe). A symbol store
    files an image under its loaded name; a small dump has only that name to look it up by."""
    d = tmp_path_factory.mktemp("images")
    (d / "ntkrnlpa.exe").symlink_to(BIN / "x86" / "ntoskrnl.exe")
    return d


def open_session(path, image_dir=None):
    s = kdshell.open(path, symbol_path=f"{BIN};{BIN / 'x86'}", image_path=str(image_dir or ""))
    s.progress = None
    return s


def lines(session, command):
    return session.capture(command).splitlines()


def leftovers(directory: Path) -> list[str]:
    """Temporary files a writer would have left (write.py: .NAME.*.partial)."""
    return [p.name for p in directory.iterdir() if p.name.endswith(".partial")]


def parse_k(text_lines):
    """(Child-SP, RetAddr, call site) per row of `kn`, x64 and x86."""
    rows = []
    for line in text_lines[1:]:
        if line == SCAN_WARNING or not line.strip():
            continue
        n, sp, ret, site = line.split(maxsplit=3)
        rows.append((int(sp.replace("`", ""), 16), int(ret.replace("`", ""), 16), site))
    return rows


def lm_rows(text_lines):
    """([(start, end, name)] loaded, [(start, end, name)] unloaded) from lm's text."""
    loaded, unloaded, target = [], [], None
    for line in text_lines:
        if line.startswith("start "):
            target = loaded
            continue
        if line.startswith("Unloaded modules:"):
            target = unloaded
            continue
        if target is None or not line.strip() or line.startswith("WARNING"):
            continue
        start, end, name = line.split()[:3]
        target.append((int(start.replace("`", ""), 16), int(end.replace("`", ""), 16), name))
    return loaded, unloaded


def registered(name: str) -> bool:
    import kdshell.commands  # noqa: F401 - registers every command family

    return name.lower() in dispatch.REGISTRY


# -- the engine on a stand-in (no dump, no session) -----------------------------------------------
class FakeMemory:
    """Pages of a made-up kernel address space: {page address: 4096 bytes}."""

    def __init__(self, pages):
        self.pages = pages

    def read(self, address, size):
        out = b""
        while size > 0:
            page = self.pages.get(address & ~0xFFF)
            if page is None:
                from kdshell.errors import MemoryNotPresent

                raise MemoryNotPresent(address, "not in the fake")
            n = min(size, 0x1000 - (address & 0xFFF))
            out += page[address & 0xFFF : (address & 0xFFF) + n]
            address += n
            size -= n
        return out


def test_gather_with_a_stand_in_source():
    from kdshell.export.minidump import KernelObjects, SmallDumpSource, gather
    from kdshell.dumpfile.write_triage import TriageDriverInfo

    stack_base = 0xFFFF_A000_0001_0000
    pages = {stack_base - 0x1000 * i: bytes([i]) * 0x1000 for i in range(1, 7)}  # 6 pages of stack
    code = 0xFFFF_F800_0000_3000
    pool = 0xFFFF_C000_0000_0000
    kdbg_at = 0xFFFF_F800_0000_8000
    pages.update({code: b"\xcc" * 0x1000, pool: bytes(range(256)) * 16, kdbg_at: bytes(0x1000)})
    kdbg = bytearray(0x380)
    kdbg[0x10:0x18] = b"KDBG" + (0x380).to_bytes(4, "little")
    kdbg[0x218:0x220] = (kdbg_at + 0x370).to_bytes(8, "little")  # KiProcessorBlock: inside the copy
    sp = stack_base - 0x5800  # 0x5800 below the base: 16 KiB of it kept
    src = SmallDumpSource(
        fields=W.DumpHeaderFields(bugcheck_code=0xD1, bugcheck_parameters=(pool + 0x10, 2, 0, code + 0x10),
                                  kd_debugger_data_block=kdbg_at, context=W.make_context_amd64(rip=code + 0x10, rsp=sp),
                                  exception=W.make_exception(0x80000003, code)),
        read=FakeMemory(pages).read, registers={"rip": code + 0x10, "rsp": sp, "rbx": pool + 0x800, "rcx": 5},
        drivers=[TriageDriverInfo("\\SystemRoot\\system32\\ntoskrnl.exe", 0xFFFF_F800_0000_0000, 0x10000, 0x1234, 0x99)],
        kdbg_address=kdbg_at, kdbg=bytes(kdbg), kernel_start=0xFFFF_8000_0000_0000,
        objects=KernelObjects(stack_base=stack_base, stack_limit=stack_base - 0x6000,
                              bugcheck_registers={"rip": code, "rsp": sp - 0x100}),
    )
    small = gather(src)
    top, end = small.stack_range
    assert top == sp - 0x100 and end == top + STACK_LIMIT  # from the bug check's RSP, 16 KiB
    assert small.parts.stack == src.read(top, STACK_LIMIT)
    # the data page: the first parameter pointing at readable kernel memory (P1, the pool page)
    assert small.parts.data_page == (pool, pages[pool])
    # blocks: the code page (P4 and RIP), rbx's window inside the pool page is the data page's
    # already, KiProcessorBlock inside the KDBG copy's range is the copy's: nothing twice
    assert small.blocks == [(code, 0x1000)]
    assert small.fields.minidump_fields == 0x1 | 0x2 | 0x20 | 0x40 | 0x80 | 0x200 | 0x400 | 0x800
    assert small.parts.drivers[0].timestamp == 0x1234 and small.parts.broken_driver is None
    # a stack whose pages run out: kept up to the first missing one
    del pages[stack_base - 0x2000]
    small = gather(src)
    assert small.stack_range == (sp - 0x100, stack_base - 0x2000) and small.notes


@pytest.mark.parametrize("code, access", [(0xD0, 1), (0xC5, 0), (0xD3, 1), (0xCD, 0), (0x100000D1, 1)])
def test_small_dump_keeps_the_fault_addresss_paging_entries(code, access):
    """Every bug check whose P1 is the memory referenced (kdshell/data/bugcheck_params.tsv) has
    that address's PXE..PTE kept, so `!pte` works on the small dump (0xC5/0xD0/0xCD/0xD3 were
    once left out); the paging entries of a code without one are not asked for."""
    from kdshell.export.minidump import KernelObjects, SmallDumpSource, gather

    stack_base = 0xFFFF_A000_0001_0000
    sp = stack_base - 0x800
    code_page, fault = 0xFFFF_F800_0000_3000, 0xFFFF_C000_0123_4568
    self_map = 0xFFFF_F6FB_0000_0000  # where the fake's paging entries live (made-up, readable)
    pages = {stack_base - 0x1000: bytes(0x1000), code_page: b"\xcc" * 0x1000, self_map: bytes(0x1000)}
    asked = []

    def entries(va):
        asked.append(va)
        return [self_map + (va >> 39 & 0x1FF) * 8]

    def source(bugcheck, params):
        return SmallDumpSource(
            fields=W.DumpHeaderFields(bugcheck_code=bugcheck, bugcheck_parameters=params,
                                      context=W.make_context_amd64(rip=code_page + 0x10, rsp=sp)),
            read=FakeMemory(pages).read, registers={"rip": code_page + 0x10, "rsp": sp},
            objects=KernelObjects(stack_base=stack_base, stack_limit=stack_base - 0x6000),
            paging_entries=entries)

    gather(source(code, (fault, 2, access, code_page + 0x10)))
    assert fault in asked
    asked.clear()
    gather(source(0xE2, (fault, 0, 0, 0)))  # MANUALLY_INITIATED_CRASH: no fault address
    assert fault not in asked and asked


# -- .dump /m from every machine ------------------------------------------------------------------
@pytest.mark.parametrize("name,kind", SOURCES, ids=[f"{n}-{k}" for n, k in SOURCES])
def test_small_dump_of_every_machine(machines, tmp_path, image_dir, name, kind):
    truth = machines.truth(name)
    is64 = truth["arch"] == "x64"
    sp_name = "rsp" if is64 else "esp"
    out = tmp_path / "mini.dmp"
    with open_session(machines.path(name, kind), image_dir) as src:
        text = lines(src, f".dump /m {out}")
        assert text[0] == f"Creating {out} - mini kernel dump"
        assert "Dump successfully written" in text
        assert not leftovers(tmp_path)
        with open_session(out, image_dir) as small:
            d, s = small.dump, src.dump
            # the header: bug check, context, exception record, times
            assert d.dump_type == 4 and d.is_small and not d.warnings
            assert d.header.bugcheck_code == s.header.bugcheck_code
            assert d.header.bugcheck_parameters == s.header.bugcheck_parameters
            assert d.context_bytes() == s.context_bytes()
            assert d.registers() == s.registers()
            assert d.exception == s.exception
            for f in ("system_time", "system_uptime", "build", "number_processors", "kd_debugger_data_block",
                      "ps_loaded_module_list", "ps_active_process_head", "directory_table_base"):
                assert getattr(d.header, f) == getattr(s.header, f), f
            assert d.header.required_dump_space == d.size
            # as small as Windows' own (these machines are tiny: 30-40 KB; Windows' 64 KB-2 MB)
            assert 16 << 10 < d.size < 256 << 10

            # the kernel stack: from KeBugCheckEx's stack pointer up to the stack base, <= 16 KiB
            th = d.triage.header
            bug_sp = truth["bugcheck_context"][sp_name]
            thread = next(t for t in truth["threads"] if t["address"] == truth["processors"][0]["current_thread"])
            assert th.TopOfStack == bug_sp
            assert th.SizeOfCallStack == min(thread["initial_stack"], bug_sp + STACK_LIMIT) - bug_sp
            memory = src.spaces.space(s.header.directory_table_base)
            assert d.read_file(th.CallStackOffset, th.SizeOfCallStack) == memory.read(bug_sp, th.SizeOfCallStack)

            # the KPRCB, ETHREAD and EPROCESS copies are the crashing processor's
            cpu = truth["processors"][0]
            for part, address in ((d.triage.prcb, cpu["prcb"]), (d.triage.thread, thread["address"]),
                                  (d.triage.process, thread["process"])):
                off, extent = part
                head = d.read_file(off, 0x40)
                assert head == memory.read(address, 0x40)
            assert d.read_file(th.DebuggerDataOffset, th.DebuggerDataSize) == src.kdbg.raw

            # the driver list: names, bases, sizes, timestamps, checksums, the culprit
            drivers = [(x.base, x.size, x.timestamp, x.checksum) for x in d.triage.drivers
                       if not x.name.startswith("Unknown_Module")]
            assert drivers == [(m["base"], m["size"], m["timestamp"], m["checksum"]) for m in truth["modules"]]
            if truth["culprit"]:
                assert d.triage.broken_driver.name.lower().endswith(truth["culprit"].lower())
            else:
                assert d.triage.broken_driver is None
            assert [(u.name, u.start, u.end) for u in d.triage.unloaded] == [
                (u.name[:12], u.start, u.end) for u in src.symbols.modules.unloaded]
            # secondary data travels with the dump
            assert [(b.tag, d.read_file(b.data_offset, b.data_size)) for b in d.blobs()] == [
                (b.tag, s.read_file(b.data_offset, b.data_size)) for b in s.blobs()]

            # k: the same frames, as far as the saved stack reaches
            end = th.TopOfStack + th.SizeOfCallStack
            want = [r for r in parse_k(lines(src, "kn 100")) if r[0] < end]
            got = parse_k(lines(small, "kn 100"))
            assert want and got[: len(want)] == want
            # lm: the same modules (unloaded names keep 12 characters, as Windows keeps them)
            src_loaded, src_unloaded = lm_rows(lines(src, "lm"))
            got_loaded, got_unloaded = lm_rows(lines(small, "lm"))
            assert got_loaded == src_loaded
            assert got_unloaded == [(a, b, n[:12]) for a, b, n in src_unloaded]
            assert lines(small, ".bugcheck") == lines(src, ".bugcheck")
            assert lines(small, "r") == lines(src, "r")
            if is64:  # x86: see test_x86_build_lab_line (the KDBG's pointers are sign-extended)
                assert lines(small, "vertarget") == lines(src, "vertarget")


# -- !analyze and !thread on the result (other engineers' commands) --------------------------------
ANALYZE_KEYS = ("BUGCHECK_CODE", "MODULE_NAME", "IMAGE_NAME", "SYMBOL_NAME", "FAILURE_BUCKET_ID", "BUCKET_ID")


def analyze_lines(session) -> list[str]:
    """!analyze -v without what names the file or times the analysis."""
    out, skip = [], False
    for line in lines(session, "!analyze -v"):
        if skip or line.startswith("FILE_IN_CAB"):
            skip = False
            continue
        skip = "Analysis.Elapsed" in line  # its Value line follows
        out.append(line)
    return out


@pytest.mark.parametrize("name", ["d1", "7e", "7e-plain", "3b", "e2", "50"])
def test_analyze_names_the_same_culprit_and_bucket(machines, tmp_path, name):
    if not registered("!analyze"):
        pytest.skip("!analyze is not registered yet (commands/analyze.py is not in commands/__init__.py): "
                    "the culprit/bucket comparison waits for it")
    out = tmp_path / "mini.dmp"
    with open_session(machines.path(name, "kernel")) as src:
        src.run(f".dump /m {out}")
        want = analyze_lines(src)
    with open_session(out) as small:
        got = analyze_lines(small)
    assert [ln for ln in got if ln.startswith(ANALYZE_KEYS)] == [ln for ln in want if ln.startswith(ANALYZE_KEYS)]
    assert any(ln.startswith("FAILURE_BUCKET_ID") for ln in got)
    assert got == want


@pytest.mark.parametrize("name", ["d1", "7e", "3b", "e2"])
def test_thread_shows_the_same_crashing_thread(machines, tmp_path, name):
    if not registered("!thread"):
        pytest.skip("!thread is not registered yet (commands/kernel.py is not in commands/__init__.py)")
    out = tmp_path / "mini.dmp"
    with open_session(machines.path(name, "kernel")) as src:
        src.run(f".dump /m {out}")
        want = lines(src, "!thread")
    with open_session(out) as small:
        got = lines(small, "!thread")
    assert want[0].startswith("THREAD ") and got == want


def test_x86_build_lab_line(machines, tmp_path, image_dir):
    """The x86 small dump keeps NtBuildLab's string (a data block at its 32-bit address); the KDBG
    copy holds the address sign-extended, as every 32-bit KDBG does. vertarget shows the line
    when the small dump's memory reads sign-extended addresses as 32-bit ones."""
    out = tmp_path / "mini.dmp"
    with open_session(machines.path("d1-x86", "complete"), image_dir) as src:
        src.run(f".dump /m {out}")
        lab = src.kdbg.get("NtBuildLab") & 0xFFFFFFFF
        text = src.memory.read(lab, 16)
        want = lines(src, "vertarget")
    with open_session(out, image_dir) as small:
        assert small.dump.triage.memory.read(lab, 16) == text
        got = lines(small, "vertarget")
        assert any(line.startswith("Edition build lab: ") for line in got)
        assert got == want


# -- the layout, against the small dumps Windows wrote ---------------------------------------------
PART_FIELDS = ("MmOffset", "UnloadedDriversOffset", "PrcbOffset", "ProcessOffset", "ThreadOffset",
               "CallStackOffset", "DebuggerDataOffset", "DriverListOffset", "StringPoolOffset",
               "DataPageOffset", "DataBlocksOffset")


def part_order(th) -> list[str]:
    return [n for _, n in sorted((th[n], n) for n in PART_FIELDS if th[n])]


def filled_fields(path) -> set[str]:
    """Header fields that do not hold the "PAGE" fill (formats.md §1)."""
    raw = Path(path).read_bytes()[: DUMP_HEADER64.sizeof()]
    out, off = set(), 0
    for sc in DUMP_HEADER64.subcons:
        n = sc.sizeof()
        fill = (b"PAGE" * (n // 4 + 2))[off % 4 : off % 4 + n]
        if sc.name and raw[off : off + n] != fill:
            out.add(sc.name)
        off += n
    return out


@pytest.fixture(scope="module")
def our_small(machines, tmp_path_factory):
    out = tmp_path_factory.mktemp("ours") / "d1-mini.dmp"
    with open_session(machines.path("d1", "kernel")) as src:
        src.run(f".dump /m {out}")
    return out


def test_small_dump_layout_is_windows_layout(our_small):
    ours = open_dump(our_small)
    th = ours.triage.header
    w19041, w17763 = open_dump(TRIAGE_19041).triage.header, open_dump(MINI_17763).triage.header
    # the same blocks in the same order: 19041's exactly; 17763 put the unloaded drivers after
    # the KDBG copy. The data page is ours only (both Windows dumps leave DATAPAGE out).
    mine = [p for p in part_order(th) if p != "DataPageOffset"]
    assert mine == part_order(w19041)
    assert [p for p in mine if p != "UnloadedDriversOffset"] == [
        p for p in part_order(w17763) if p != "UnloadedDriversOffset"]
    for windows in (w19041, w17763, th):
        assert windows.ContextOffset == 0x348 and windows.ExceptionOffset == 0xF00
        assert windows.MmOffset == 0x2000 + TRIAGE_DUMP64.sizeof()  # right after TRIAGE_DUMP64
        assert windows.ValidOffset == windows.SizeOfDump - 4
        # the block list, then the blocks' bytes back to back, then 'TRGD'
        first = windows.DataBlocksOffset + 16 * windows.DataBlocksCount
        with open(our_small if windows is th else (TRIAGE_19041 if windows is w19041 else MINI_17763), "rb") as f:
            f.seek(windows.DataBlocksOffset)
            table = f.read(16 * windows.DataBlocksCount)
            at = first
            for i in range(windows.DataBlocksCount):
                _, offset, size = struct.unpack_from("<QII", table, 16 * i)
                assert offset == at
                at += size
            # Windows pads up to the marker (0x20 bytes in 17763's, 0x8e in 19041's); we do not
            assert at <= windows.ValidOffset and (windows is not th or at == windows.ValidOffset)
            f.seek(windows.ValidOffset)
            assert f.read(4) == b"TRGD"
        assert windows.DebuggerDataSize >= 0x340 and windows.SizeOfCallStack <= STACK_LIMIT
        assert windows.TopOfStack + windows.SizeOfCallStack & 0xFFF == 0  # up to the stack base
    # secondary data starts right at SizeOfDump, as in both Windows dumps
    assert our_small.read_bytes()[th.SizeOfDump : th.SizeOfDump + 8] == b"DumpBlob"
    for path, windows in ((TRIAGE_19041, w19041), (MINI_17763, w17763)):
        assert Path(path).read_bytes()[windows.SizeOfDump : windows.SizeOfDump + 8] == b"DumpBlob"
    # MiniDumpFields: BASIC_INFO (0xFF) with the KDBG copy and data blocks, like both
    flags = ours.header.minidump_fields
    for windows in (open_dump(TRIAGE_19041).header, open_dump(MINI_17763).header):
        assert flags & windows.minidump_fields == windows.minidump_fields & ~0x100  # MMINFO: ours when known
    assert flags & 0xCFF == 0xCFF
    # the driver list: every name is an 8-byte aligned DUMP_STRING in the pool, as Windows'
    for drv in ours.triage.drivers:
        name_off = struct.unpack_from("<I", ours.read_file(drv.entry_offset, 4))[0]
        assert name_off % 8 == 0 and th.StringPoolOffset <= name_off < th.StringPoolOffset + th.StringPoolSize


def test_small_dump_header_fields_are_windows_fields(our_small):
    both = filled_fields(TRIAGE_19041) & filled_fields(MINI_17763)
    ours = filled_fields(our_small)
    assert both - ours == set()
    # and nothing Windows leaves as fill in both is filled by us, except what the source had
    neither = {n for n in (sc.name for sc in DUMP_HEADER64.subcons if sc.name)} - (
        filled_fields(TRIAGE_19041) | filled_fields(MINI_17763))
    assert ours & neither <= {"Signature"}


def test_small_dump_of_a_small_dump_is_refused(machines, tmp_path):
    for path in (TRIAGE_19041, MINI_17763, machines.path("d1", "small")):
        with open_session(path) as s:
            out = tmp_path / "again.dmp"
            text = s.capture(f".dump /m {out}")
            assert "already a small memory dump" in text and s.failures == 1
            text = s.capture(f".dump /f {out}")
            assert "has no physical memory" in text and s.failures == 2
            assert not out.exists() and not leftovers(tmp_path)


def test_a_truncated_complete_dump(tmp_path):
    """The corpus' 16 KiB head of a complete dump: nothing of its memory is readable."""
    with open_session(CORPUS_DUMPS / "full-x64-19045-truncated-16k.dmp") as s:
        out = tmp_path / "mini.dmp"
        ok = s.run(f".dump /m {out}")
        assert not ok and not out.exists() and not leftovers(tmp_path)
        # /f stops at the first page past the end of the file, with a one-line error
        text = s.capture(f".dump /f {out}")
        assert "cannot write dump" in text or "not all available" in text
        assert not out.exists() and not leftovers(tmp_path)


# -- /f, /k, /ka --------------------------------------------------------------------------------
kdmp_parser = pytest.importorskip("kdmp_parser")


def _u128(v) -> int:
    return v.High << 64 | v.Low


@pytest.mark.parametrize("option,dump_type,pages", [
    ("/f", 5, "all"), ("/f /type 1", 1, "all"), ("/k", 6, "kernel"), ("/ka", 6, "active"),
    ("/k /type 8", 8, "kernel"), ("/ka /type 9", 9, "active"), ("/f /type 10", 10, "all"),
])
def test_complete_and_kernel_dumps_read_by_kdmp_parser(machines, tmp_path, option, dump_type, pages):
    truth = machines.truth("3b")
    source = machines.path("3b", "complete")
    out = tmp_path / "out.dmp"
    with open_session(source) as s:
        s.progress = io.StringIO()
        text = lines(s, f".dump {option} {out}")
        assert text[-1].startswith(f"{out.stat().st_size:,} bytes") and f"(DumpType {dump_type})" in text[-1]
        assert "100%" in s.progress.getvalue()
        src_regs = s.dump.registers()
        src_pages = s.dump.physical
        kp = kdmp_parser.KernelDumpParser(out)
        assert int(kp.type) == dump_type
        c = kp.context
        for reg in ("Rax", "Rbx", "Rcx", "Rdx", "Rsi", "Rdi", "Rbp", "Rsp", "Rip", "R8", "R9", "R10", "R11",
                    "R12", "R13", "R14", "R15"):
            assert getattr(c, reg) == src_regs[reg.lower()], reg
        assert c.EFlags == src_regs["efl"] and _u128(c.Xmm1) == src_regs["xmm1"]
        h = kp.header
        assert h.BugCheckCode == s.dump.header.bugcheck_code
        assert list(h.BugCheckCodeParameter) == list(s.dump.header.bugcheck_parameters)
        assert h.DirectoryTableBase == s.dump.header.directory_table_base
        expected = {p for a, n in src_pages.present_runs() for p in range(a, a + n)}
        if pages != "all":
            sets = truth["page_sets"]
            wanted = {p for a, n in sets["kernel"] for p in range(a, a + n)}
            if pages == "active":
                wanted |= {p for a, n in sets["user"] for p in range(a, a + n)}
            expected &= wanted
        assert sorted(kp.pages.keys()) == sorted(p << 12 for p in expected)
        for pfn in sorted(expected):
            assert bytes(kp.read_physical_page(pfn << 12)) == bytes(src_pages.page(pfn)), hex(pfn)
    with open_session(out) as again:  # and kdshell reads it the same way
        assert again.dump.registers() == src_regs
        assert [m.name for m in again.symbols.modules] == [m["short"] for m in truth["modules"]]


@pytest.mark.parametrize("name", ["d1", "7e", "3b", "e2", "50", "d1-x86"])
def test_kernel_pages_are_the_machines_kernel_pages(machines, name):
    """The page-table walk finds exactly the pages the builder calls kernel (every process's
    paging structures, every page a kernel address maps) and user pages (mapped by a user half);
    transition pages (standby list) are in neither."""
    truth = machines.truth(name)
    sets = truth["page_sets"]
    kernel = {p for a, n in sets["kernel"] for p in range(a, a + n)}
    user = {p for a, n in sets["user"] for p in range(a, a + n)}
    with open_session(machines.path(name, "complete")) as s:
        for active, want in ((False, kernel), (True, kernel | user)):
            selection, notes = C.kernel_selection(s, user=active)
            got = {p for a, n in selection.runs for p in range(a, a + n)}
            assert got == want and not notes
            assert selection.dtbs == len({p["dtb"] for p in truth["processes"]})


def test_kernel_dump_of_a_kernel_dump_keeps_its_pages(machines, tmp_path):
    with open_session(machines.path("d1", "kernel")) as s:
        out = tmp_path / "k.dmp"
        s.run(f".dump /k {out}")
        a, b = open_dump(out), s.dump
        assert list(a.physical.present_runs()) == list(b.physical.present_runs())
        assert [(x.tag, x.data_size) for x in a.blobs()] == [(x.tag, x.data_size) for x in b.blobs()]
        text = lines(s, f".dump /f {tmp_path / 'f.dmp'}")
        assert any("holds only the pages it has" in ln for ln in text)


# -- options --------------------------------------------------------------------------------------
def test_options_o_u_c(machines, tmp_path):
    out = tmp_path / "mini.dmp"
    with open_session(machines.path("e2", "kernel")) as s:
        assert s.run(f".dump /m {out}")
        before = out.read_bytes()
        # an existing file is refused without /o, and left as it was
        text = s.capture(f'.dump /m /c "second" {out}')
        assert "already exists" in text and out.read_bytes() == before
        assert s.run(f'.dump /m /o /c "shrunk for the vendor" {out}')
        assert open_dump(out).header.comment == "shrunk for the vendor"
        # /u: the date, time and a process id before the extension
        text = lines(s, f".dump /u {tmp_path / 'u.dmp'}")
        made = [p.name for p in tmp_path.iterdir() if p.name.startswith("u_")]
        assert len(made) == 1
        assert re.fullmatch(r"u_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{3}_[0-9A-F]{4}\.dmp", made[0])
        assert text[0] == f"Creating {tmp_path / made[0]} - mini kernel dump"
        # /c on a kernel dump too
        assert s.run(f'.dump /k /c "kernel pages" {tmp_path / "k.dmp"}')
        assert open_dump(tmp_path / "k.dmp").header.comment == "kernel pages"
        # the default is /m
        assert s.run(f".dump {tmp_path / 'default.dmp'}")
        assert open_dump(tmp_path / "default.dmp").dump_type == 4
        for bad, message in ((".dump", "no file name"), (".dump /q x.dmp", "unknown option /q"),
                             (".dump /b x.dmp", "CAB"), (".dump /ma x.dmp", "user-mode"),
                             (".dump /m /f x.dmp", "choose one"), (".dump /k /type 5 x.dmp", "DumpType 6, 8"),
                             (".dump /m /type 6 x.dmp", "DumpType 4 only"), (".dump /c", "needs a comment"),
                             (".dump a.dmp b.dmp", "one file name")):
            assert message in s.capture(bad), bad
        assert not leftovers(tmp_path)


def test_unique_name_format():
    import datetime

    from kdshell.commands.dump import unique_name

    when = datetime.datetime(2026, 11, 22, 3, 4, 5, 678000)
    assert unique_name("/x/crash.dmp", when, 0x1A2B) == "/x/crash_2026-11-22_03-04-05-678_1A2B.dmp"
    assert unique_name("noext", when, 7) == "noext_2026-11-22_03-04-05-678_0007"


# -- errors: never a partial file, never the input --------------------------------------------------
def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_the_input_dump_is_never_written(machines, tmp_path):
    source = machines.path("7e", "kernel")
    digest, mtime = sha256(source), source.stat().st_mtime_ns
    with open_session(source) as s:
        for option in ("/m", "/o /m", "/o /f", "/o /k"):
            text = s.capture(f".dump {option} {source}")
            assert "is the dump being read" in text
        # another path to the same file
        link = tmp_path / "link.dmp"
        link.symlink_to(source)
        assert "is the dump being read" in s.capture(f".dump /o /m {link}")
    assert sha256(source) == digest and source.stat().st_mtime_ns == mtime


def test_unwritable_and_missing_directories(machines, tmp_path):
    with open_session(machines.path("d1", "kernel")) as s:
        text = s.capture(f".dump /m {tmp_path / 'no' / 'such' / 'dir.dmp'}")
        assert "cannot write dump" in text and "No such file or directory" in text
        if os.geteuid() != 0:
            locked = tmp_path / "locked"
            locked.mkdir(mode=0o555)
            text = s.capture(f".dump /m {locked / 'x.dmp'}")
            assert "Permission denied" in text and not list(locked.iterdir())
        text = s.capture(".dump /m /sys/kdshell-test.dmp")  # read-only even for root
        assert "cannot write dump" in text and ("Permission denied" in text or "Read-only" in text)
        assert not os.path.exists("/sys/kdshell-test.dmp")


class _FullDisk:
    """A file object that fails like a full disk after `room` bytes (its writes, and the page
    copies written with os.pwrite on its descriptor)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        self.take(len(data))
        return self.f.write(data)

    def take(self, n):
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("option,room", [("/m", 0x3000), ("/f", 1 << 20), ("/ka", 0)])
def test_a_full_disk_leaves_no_file(machines, tmp_path, monkeypatch, option, room):
    real = os.fdopen

    real_pwrite = os.pwrite
    disks = {}

    def fdopen(fd, *args, **kwargs):
        disks[fd] = _FullDisk(real(fd, *args, **{**kwargs, "buffering": 0}), room)
        return disks[fd]

    def pwrite(fd, data, offset):
        if fd in disks:
            disks[fd].take(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(W.os, "fdopen", fdopen)
    monkeypatch.setattr(W.os, "pwrite", pwrite)
    out = tmp_path / "full.dmp"
    with open_session(machines.path("d1", "complete")) as s:
        s.progress = io.StringIO()
        text = s.capture(f".dump {option} {out}")
    assert "cannot write dump" in text and "No space left on device" in text
    assert list(tmp_path.iterdir()) == []


def test_a_file_size_limit_leaves_no_file(machines, tmp_path):
    """A real write failure from the kernel (RLIMIT_FSIZE: EFBIG), in a child process."""
    out = tmp_path / "big.dmp"
    code = (
        "import resource, signal, sys, kdshell\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
        f"s = kdshell.open({str(machines.path('d1', 'complete'))!r}, image_path='')\n"
        "s.progress = None\n"
        f"ok = s.run('.dump /f {out}')\n"
        "sys.exit(0 if not ok else 1)\n"
    )
    env = dict(os.environ)
    env.pop("PYTEST_CURRENT_TEST", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cannot write dump" in r.stdout + r.stderr and "File too large" in r.stdout + r.stderr
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_stops_a_write_and_leaves_no_file(machines, tmp_path, monkeypatch):
    taken = []
    real_advance = C.ProgressPages.advance

    def advance(self, pages):
        taken.append(pages)
        if len(taken) == 2:  # Ctrl-C arrives in the middle of the page data (16 MiB pieces)
            raise KeyboardInterrupt
        return real_advance(self, pages)

    monkeypatch.setattr(C.ProgressPages, "advance", advance)
    out = tmp_path / "stopped.dmp"
    with open_session(machines.path("d1", "complete")) as s:
        s.progress = io.StringIO()
        text = s.capture(f".dump /f {out}")
        assert "Command stopped (Ctrl-C)." in text and "^C" not in text and s.failures == 1
        assert s.progress.getvalue().endswith("\n")  # the progress line is ended
    assert len(taken) == 2 and list(tmp_path.iterdir()) == []


def test_progress_goes_to_the_progress_stream_only(machines, tmp_path):
    with open_session(machines.path("d1", "complete")) as s:
        s.progress = io.StringIO()
        text = s.capture(f".dump /ka {tmp_path / 'a.dmp'}")
        progress = s.progress.getvalue()
    assert "Writing" not in text and "%" not in text
    assert progress.startswith("\rWriting ") and progress.endswith("100% (11 of 11 MiB)\n")
