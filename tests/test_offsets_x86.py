"""The built-in x86 offsets (kdshell/data/offsets.json "x86"): every 32-bit kernel of the table
resolves to a consistent layout, a few offsets per build are pinned from the public sources the
entries name, the 19041 entry agrees with the test machine's x86 kernel (built with the real
19041 layouts), and a 32-bit dump opened without any symbols lists its processes, threads and
modules as it does with the kernel's PDB.
"""
from __future__ import annotations

import re

import pytest

import kdshell
from kdshell.kernel.offsets import LOADER_ENTRY_32, KernelOffsets, build_entry
from kdshell.parts import builtin_types
from test_kernel_commands import MACHINE_SYMBOLS, lines, thread_head, with_object_tables

BUILDS = [7601, 9600, 10240, 14393, 15063, 16299, 17134, 17763, 18362, 19041]

# What the kernel-object readers need from the table when there is no PDB (the KDBG may give
# some of them too, but the table must not count on it).
REQUIRED = {
    "_LIST_ENTRY": ["Flink", "Blink"],
    "_UNICODE_STRING": ["Length", "MaximumLength", "Buffer"],
    "_CLIENT_ID": ["UniqueProcess", "UniqueThread"],
    "_KAPC_STATE": ["ApcListHead", "Process"],
    "_KPROCESS": ["DirectoryTableBase", "ThreadListHead"],
    "_KLDR_DATA_TABLE_ENTRY": ["InLoadOrderLinks", "DllBase", "SizeOfImage", "FullDllName", "BaseDllName"],
    "_KPRCB": ["CurrentThread", "NextThread", "IdleThread", "ProcessorState.ContextFrame"],
    "_EPROCESS": ["Pcb", "UniqueProcessId", "ActiveProcessLinks", "InheritedFromUniqueProcessId", "Peb", "ObjectTable",
                  "ImageFileName", "ThreadListHead"],
    "_KTHREAD": ["InitialStack", "StackLimit", "StackBase", "KernelStack", "ApcState", "Teb", "State", "WaitReason",
                 "WaitMode", "Process", "ThreadListEntry"],
    "_ETHREAD": ["Tcb", "Cid", "StartAddress", "Win32StartAddress", "ThreadListEntry"],
}

# Bytes a field of each dt type takes on x86 (structures: their x86 sizes); a type not here fails
# the test, so a new kind of field gets a width before it can be checked against its structure.
WIDTHS = {"Ptr": 4, "Uint4B": 4, "Int4B": 4, "Uint2B": 2, "UChar": 1, "Char": 1, "[15] UChar": 15,
          "[2] _LIST_ENTRY": 16, "_LIST_ENTRY": 8, "_UNICODE_STRING": 8, "_CLIENT_ID": 8, "_KAPC_STATE": 0x18,
          "_LARGE_INTEGER": 8, "_EX_FAST_REF": 4, "_RTL_AVL_TREE": 4, "_CONTEXT": 0x2CC, "_KSPECIAL_REGISTERS": 0x54}


def width(entry, dtype: str) -> int:
    if dtype.startswith("Ptr "):
        return WIDTHS["Ptr"]
    if dtype in ("_KPROCESS", "_KTHREAD"):  # embedded (EPROCESS.Pcb, ETHREAD.Tcb): the entry's own size
        return entry.size(dtype) or 1
    return WIDTHS[dtype]


@pytest.mark.parametrize("build", BUILDS)
def test_every_x86_entry_resolves_to_a_consistent_layout(build):
    entry = build_entry(build, False)
    assert entry is not None and entry.exact and entry.source and entry.release
    assert entry.origin.startswith(f"kdshell's built-in offsets for build {build}")
    for tname, fields in REQUIRED.items():
        for path in fields:
            assert entry.offset(tname, path) is not None, (build, tname, path)
    # 32-bit pointers: the list, string and CID layouts
    assert entry.size("_LIST_ENTRY") == 8 and entry.offset("_LIST_ENTRY", "Blink") == 4
    assert entry.size("_UNICODE_STRING") == 8 and entry.offset("_UNICODE_STRING", "Buffer") == 4
    assert entry.size("_CLIENT_ID") == 8 and entry.offset("_CLIENT_ID", "UniqueThread") == 4
    assert entry.size("_KAPC_STATE") == 0x18 and entry.offset("_KAPC_STATE", "Process") == 0x10
    # every field inside its structure when the entry states the size
    for tname, t in entry.types.items():
        for path, (offset, dtype) in t["fields"].items():
            assert offset >= 0 and dtype, (tname, path)
            if t["size"] is not None:
                assert offset + width(entry, dtype) <= t["size"], (build, tname, path, hex(offset), dtype)
    # the embedded KPROCESS / KTHREAD come first, the executive's fields after them
    kprocess, kthread = entry.size("_KPROCESS"), entry.size("_KTHREAD")
    assert entry.offset("_EPROCESS", "Pcb") == 0 and entry.offset("_ETHREAD", "Tcb") == 0
    assert kprocess < entry.offset("_EPROCESS", "UniqueProcessId") < entry.offset("_EPROCESS", "ActiveProcessLinks")
    assert kthread <= entry.offset("_ETHREAD", "StartAddress") < entry.offset("_ETHREAD", "Cid") \
        < entry.offset("_ETHREAD", "Win32StartAddress") < entry.offset("_ETHREAD", "ThreadListEntry")
    assert entry.offset("_EPROCESS", "ActiveProcessLinks") == entry.offset("_EPROCESS", "UniqueProcessId") + 4
    assert entry.offset("_KTHREAD", "ApcState.Process") == entry.offset("_KTHREAD", "ApcState") + 0x10
    assert entry.offset("_KPRCB", "ProcessorState.ContextFrame") == 0x18
    # x86 facts every 32-bit kernel since Windows 7 shares
    assert entry.offset("_KPROCESS", "DirectoryTableBase") == 0x18
    assert entry.offset("_KPROCESS", "ThreadListHead") == 0x2C
    assert [entry.offset("_KPRCB", f) for f in ("CurrentThread", "NextThread", "IdleThread")] == [4, 8, 0xC]
    assert entry.offset("_KTHREAD", "Process") == 0x150
    for name, offset in LOADER_ENTRY_32.items():  # what lm assumes when the table is silent
        assert entry.offset("_KLDR_DATA_TABLE_ENTRY", name) == offset
    # dt's view of the entry: 32-bit pointers
    types = builtin_types(build, False)
    assert types.offset_of("_EPROCESS", "ImageFileName") == entry.offset("_EPROCESS", "ImageFileName")
    assert types.offset_of("_ETHREAD", "Cid") == entry.offset("_ETHREAD", "Cid")


# Offsets pinned from the public sources the entries name (Volatility 2's x86 vtypes, ntdiff's
# x86 headers, hvmi's x86 tables): (type, field or "size") -> value.
PINNED = {
    7601: {("_EPROCESS", "UniqueProcessId"): 0xB4, ("_EPROCESS", "ImageFileName"): 0x16C, ("_EPROCESS", "Peb"): 0x1A8,
           ("_EPROCESS", "ThreadListHead"): 0x188, ("_EPROCESS", "size"): 0x2C0, ("_KTHREAD", "Teb"): 0x88,
           ("_KTHREAD", "StackBase"): 0x190, ("_KTHREAD", "ThreadListEntry"): 0x1E0, ("_KTHREAD", "size"): 0x200,
           ("_ETHREAD", "Cid"): 0x22C, ("_ETHREAD", "Win32StartAddress"): 0x260, ("_ETHREAD", "ThreadListEntry"): 0x268,
           ("_ETHREAD", "size"): 0x2B8, ("_KLDR_DATA_TABLE_ENTRY", "CheckSum"): 0x40},
    9600: {("_EPROCESS", "InheritedFromUniqueProcessId"): 0x134, ("_EPROCESS", "Peb"): 0x140,
           ("_EPROCESS", "ObjectTable"): 0x150, ("_EPROCESS", "ImageFileName"): 0x170, ("_EPROCESS", "ThreadListHead"): 0x194,
           ("_KTHREAD", "InitialStack"): 0x20, ("_KTHREAD", "State"): 0x90, ("_KTHREAD", "WaitReason"): 0x18B,
           ("_ETHREAD", "Cid"): 0x364, ("_ETHREAD", "ThreadListEntry"): 0x39C, ("_ETHREAD", "size"): 0x418},
    10240: {("_EPROCESS", "ImageFileName"): 0x170, ("_EPROCESS", "ThreadListHead"): 0x194, ("_KPROCESS", "size"): 0xA8,
            ("_ETHREAD", "Cid"): 0x374, ("_ETHREAD", "ThreadListEntry"): 0x3AC, ("_KTHREAD", "size"): 0x348,
            ("_KLDR_DATA_TABLE_ENTRY", "TimeDateStamp"): 0x58},
    14393: {("_EPROCESS", "ImageFileName"): 0x174, ("_EPROCESS", "ThreadListHead"): 0x198, ("_EPROCESS", "Peb"): 0x144,
            ("_ETHREAD", "Cid"): 0x374, ("_ETHREAD", "Win32StartAddress"): 0x3A4, ("_KTHREAD", "IdealProcessor"): 0x16C},
    15063: {("_EPROCESS", "ImageFileName"): 0x17C, ("_EPROCESS", "ObjectTable"): 0x15C, ("_ETHREAD", "Cid"): 0x37C,
            ("_ETHREAD", "ThreadListEntry"): 0x3B4, ("_KTHREAD", "size"): 0x350, ("_ETHREAD", "size"): 0x480},
    16299: {("_EPROCESS", "ImageFileName"): 0x17C, ("_ETHREAD", "Cid"): 0x37C, ("_KPROCESS", "size"): 0xB0},
    17134: {("_EPROCESS", "size"): 0x400, ("_EPROCESS", "VadRoot"): 0x29C, ("_ETHREAD", "Cid"): 0x37C},
    17763: {("_EPROCESS", "ImageFileName"): 0x17C, ("_EPROCESS", "InheritedFromUniqueProcessId"): 0x140,
            ("_EPROCESS", "Token"): 0xFC, ("_EPROCESS", "ExitStatus"): 0x298, ("_EPROCESS", "size"): 0x408,
            ("_ETHREAD", "Cid"): 0x37C, ("_ETHREAD", "Win32StartAddress"): 0x3AC, ("_KTHREAD", "TrapFrame"): 0x6C},
    18362: {("_EPROCESS", "ImageFileName"): 0x17C, ("_EPROCESS", "VadRoot"): 0x310, ("_EPROCESS", "size"): 0x480,
            ("_ETHREAD", "Cid"): 0x384, ("_ETHREAD", "ThreadListEntry"): 0x3BC, ("_KTHREAD", "size"): 0x358},
    19041: {("_EPROCESS", "UniqueProcessId"): 0xE4, ("_EPROCESS", "ImageFileName"): 0x1AC, ("_EPROCESS", "size"): 0x4C0,
            ("_KPROCESS", "size"): 0xE0, ("_KTHREAD", "size"): 0x280, ("_ETHREAD", "Cid"): 0x2AC,
            ("_ETHREAD", "ThreadListEntry"): 0x2E4, ("_ETHREAD", "size"): 0x4E0, ("_KPRCB", "size"): 0x5F00},
}


@pytest.mark.parametrize("build", sorted(PINNED))
def test_x86_offsets_pinned_from_the_sources(build):
    entry = build_entry(build, False)
    for (tname, what), value in PINNED[build].items():
        got = entry.size(tname) if what == "size" else entry.offset(tname, what)
        assert got == value, (build, tname, what)


def test_x86_lines_and_left_out_fields():
    # 1909 and 22H2 use their kernel line's entry; 10586 is another layout and has none
    assert build_entry(18363, False).build == 18362 and not build_entry(18363, False).exact
    assert build_entry(19045, False).build == 19041
    assert build_entry(10586, False) is None and build_entry(7600, False) is None and build_entry(22000, False) is None
    assert build_entry(16299, False).types == build_entry(15063, False).types  # same_as
    # left out where the sources (or two revisions of the build) disagree: see the entries' source
    for build in (9600, 10240, 14393, 15063, 16299):
        entry = build_entry(build, False)
        assert entry.size("_EPROCESS") is None and entry.offset("_EPROCESS", "VadRoot") is None
    assert build_entry(7601, False).offset("_EPROCESS", "VadRoot") is None  # an _MM_AVL_TABLE there
    assert build_entry(7601, False).offset("_KLDR_DATA_TABLE_ENTRY", "TimeDateStamp") is None
    # the x64 table is the x64 one
    assert build_entry(19041, True).offset("_EPROCESS", "ImageFileName") == 0x5A8


def test_x86_19041_entry_agrees_with_the_test_machine_kernel():
    """The test machine's x86 kernel is built with the real 19041 layouts (C_ASSERT_OFFSET in
    fixtures/images/src/inc/nti386.h and ntkrnl.h); its PDB, as llvm-pdbutil printed it, must
    agree with every field and size of the 19041 entry that it declares."""
    from fixtures.machine.pdbtext import golden_types

    golden = golden_types("x86-ntkrpamp.pdb")
    entry = build_entry(19041, False)
    checked = 0
    for tname, t in entry.types.items():
        for path, (offset, _) in t["fields"].items():
            try:
                theirs = golden.offset(tname, path)
            except Exception:  # noqa: BLE001 - a field the machine's kernel does not declare
                continue
            assert theirs == offset, (tname, path)
            checked += 1
        if t["size"] is not None and tname != "_KPRCB":  # the machine declares its KPRCB up to 0x418 only
            assert golden.sizeof(tname) == t["size"], tname
    assert checked >= 70


def test_x86_19041_entry_agrees_with_the_machine_kdbg(machines):
    """Every Offset*/Size* field the x86 machine's KDBG states matches the 19041 entry (the
    machine's KPRCB, hence its KDBG SizePrcb, stops at 0x418)."""
    from kdshell.kernel.offsets import KDBG_OFFSETS, KDBG_SIZES

    entry = build_entry(19041, False)
    with kdshell.open(machines.path("d1-x86", "complete"), symbol_path="", image_path="") as s:
        kdbg_only = KernelOffsets(19041, False, kdbg=s.kdbg)
        kdbg_only.entry = None
        checked = 0
        for tname, fpath, _ in KDBG_OFFSETS:
            ours, theirs = entry.offset(tname, fpath), kdbg_only.offset(tname, fpath)
            if ours is not None and theirs is not None:
                assert ours == theirs, (tname, fpath)
                checked += 1
        assert checked >= 17
        for tname, _ in KDBG_SIZES:
            if tname in ("_EPROCESS", "_ETHREAD"):
                assert entry.size(tname) == kdbg_only.size(tname)


# -- a 32-bit dump without symbols ---------------------------------------------------------------
def _without_symbol_names(out: list[str]) -> list[str]:
    """What does not depend on symbols: no stack rows, no symbol before a start address, no
    Alertable (a bitfield, only a PDB gives it)."""
    kept = []
    in_stack = False
    for line in out:
        if line.strip().startswith("ChildEBP"):
            in_stack = True
        elif not line.strip():
            in_stack = False
        if in_stack:
            continue
        line = re.sub(r"(Win32 Start Address) .*\((0x[0-9a-f]+)\)$", r"\1 \2", line)
        kept.append(re.sub(r" (Non-)?Alertable$", "", line))
    return kept


def test_x86_dump_without_symbols_lists_processes_threads_and_modules(machines):
    truth = machines.truth("d1-x86")
    path = machines.path("d1-x86", "complete")
    with kdshell.open(path, symbol_path="", image_path="") as bare, \
            kdshell.open(path, symbol_path=MACHINE_SYMBOLS, image_path="") as full:
        bare.progress = full.progress = None
        offsets = bare.kernel.offsets
        assert isinstance(offsets, KernelOffsets) and offsets.types is None  # no kernel PDB
        assert offsets.source("_EPROCESS", "ImageFileName").startswith("kdshell's built-in offsets for build 19041")
        assert offsets.source("_ETHREAD", "Cid").startswith("kdshell's built-in offsets for build 19041")
        # !process 0 0: the truth's processes (addresses, PIDs, names), as with the PDB
        listed = lines(bare, "!process 0 0")
        assert listed == lines(full, "!process 0 0")
        procs = with_object_tables(full, truth)
        heads = [x for x in listed if x.startswith("PROCESS ")]
        assert [int(x.split()[1], 16) for x in heads] == [p["address"] for p in procs]
        assert [x.split()[1] for x in listed if x.startswith("    Image: ")] == [p["name"] for p in procs]
        assert [int(x.split("Cid: ")[1].split()[0], 16) for x in listed if "Cid: " in x] == [p["pid"] for p in procs]
        # !process 0 7 for one process: its threads, as the truth has them and as with the PDB
        csrss = next(p for p in truth["processes"] if p["name"] == "csrss.exe")
        threads = {t["address"]: t for t in truth["threads"]}
        out = lines(bare, "!process 0 7 csrss.exe")
        heads = [x.strip() for x in out if x.startswith("        THREAD ")]
        assert [int(x.split()[1], 16) for x in heads] == csrss["threads"] and len(heads) == 2
        for head in heads:
            t = threads[int(head.split()[1], 16)]
            assert head.startswith(thread_head(t, False) + "WAIT: (UserRequest) UserMode")
        assert _without_symbol_names(out) == _without_symbol_names(lines(full, "!process 0 7 csrss.exe"))
        for t in (threads[a] for a in csrss["threads"]):
            assert f"        Win32 Start Address 0x{t['win32_start_address']:08x}" in out
            assert f"        Stack Init {t['initial_stack']:08x} Current {t['kernel_stack']:08x}" in out
            assert f"        Base {t['initial_stack']:08x} Limit {t['stack_limit']:08x}" in out
            # !thread on each: the same thread
            one = lines(bare, f"!thread {t['address']:x}")
            assert one[0].startswith(thread_head(t, False) + "WAIT: (UserRequest) UserMode")
            assert f"{'Owning Process':<26}{csrss['address']:08x}       Image:         csrss.exe" in one
            assert _without_symbol_names(one) == _without_symbol_names(lines(full, f"!thread {t['address']:x}"))
        # !thread / .thread: the bug check's thread, running on processor 0
        current = truth["processors"][0]["current_thread"]
        t = threads[current]
        out = lines(bare, "!thread")
        assert out[0] == thread_head(t, False) + "RUNNING on processor 0"
        assert _without_symbol_names(out) == _without_symbol_names(lines(full, "!thread"))
        assert lines(bare, ".thread") == lines(full, ".thread") == [f"Implicit thread is now {current:08x}"]
        # lm: the loaded modules from PsLoadedModuleList (KLDR_DATA_TABLE_ENTRY), the same ranges
        bare_lm, full_lm = lines(bare, "lm"), lines(full, "lm")
        assert [x.split()[:3] for x in bare_lm] == [x.split()[:3] for x in full_lm]
        assert [x.split()[2] for x in bare_lm[1:4]] == ["nt", "hal", "mydrv"]


def test_x86_pcr_without_symbols_names_itself(machines):
    """!pcr's SelfPcr comes from the KDBG's OffsetPcrSelfPcr, under x86's field name."""
    path = machines.path("d1-x86", "complete")
    with kdshell.open(path, symbol_path="", image_path="") as bare, \
            kdshell.open(path, symbol_path=MACHINE_SYMBOLS, image_path="") as full:
        self_pcr = [x for x in lines(full, "!pcr") if x.strip().startswith("SelfPcr:")]
        assert self_pcr and self_pcr[0].split()[-1] != "00000000"
        assert [x for x in lines(bare, "!pcr") if x.strip().startswith("SelfPcr:")] == self_pcr
