"""The test machines (fixtures/machine) against the dumps written of them.

The ground truth is what the builder did and what the emulated CPU really executed; these tests
check that kdshell's containers and memory layer, and kdmp-parser (an independent reader), see
the same in every dump: header facts, the context, the pages present, a few thousand address
translations, the loaded-module and process lists walked through virtual memory, the small
dumps' parts, and that every recorded stack frame was genuinely executed.
"""
from __future__ import annotations

import hashlib
import struct

import capstone
import pytest

from kdshell.dumpfile.dump import open_dump
from kdshell.errors import MemoryNotPresent
from kdshell.kernel.kdbg import read_kdbg
from kdshell.session import Session

pytest.importorskip("unicorn")

PAGE = 0x1000
EXPECTED = {"d1": 0xD1, "7e": 0x1000007E, "7e-plain": 0x7E, "3b": 0x3B, "e2": 0xE2, "50": 0x50, "d1-x86": 0xD1,
            "c2": 0xC2, "e2-deadlock": 0xE2}
CULPRIT = {"d1": "mydrv.sys", "7e": "mydrv.sys", "7e-plain": "mydrv.sys", "3b": "storfilt.sys", "e2": None,
           "50": "mydrv.sys", "d1-x86": "mydrv.sys", "c2": None, "e2-deadlock": None}  # c2: nt raises it, KiBugCheckDriver stays empty
EXPECTED["124"], CULPRIT["124"] = 0x124, None  # the machine check (fixtures/machine/whea.py)
EXPECTED["133"], CULPRIT["133"] = 0x133, None  # the DPC watchdog (fixtures/machine/sched.py)
EXPECTED["13a"], CULPRIT["13a"] = 0x13A, None  # the segment heap raises it (nt/amd64/heap.c)
EXPECTED["9f"], CULPRIT["9f"] = 0x9F, None  # the power IRP watchdog (fixtures/machine/power.py): nt names no driver
PHYSICAL_KINDS = ("complete", "bitmap5", "kernel", "active", "rdmp8")
DUMP_TYPE = {"complete": 1, "bitmap5": 5, "kernel": 6, "active": 6, "rdmp8": 8, "small": 4}


def physical_dumps(machines, x64_only=False):
    for name, kind, path in machines.dumps():
        if kind in PHYSICAL_KINDS and not (x64_only and name.endswith("x86")):
            yield name, kind, path


def memory_dump(machines, name):
    """The scenario's dump with the most memory (complete if it has one, else kernel)."""
    kinds = machines.kinds(name)
    return machines.path(name, "complete" if "complete" in kinds else "kernel")


def function_of(truth, frame) -> str:
    return frame["function"].split("+")[0]


# -- bug checks --------------------------------------------------------------------------------
def test_every_scenario_ends_in_its_bug_check(machines):
    assert set(machines.scenarios) == set(EXPECTED)
    for name in machines.scenarios:
        t = machines.truth(name)
        assert t["bugcheck"]["code"] == EXPECTED[name], name
        assert t["culprit"] == CULPRIT[name], name
        assert t["call_chain"][0]["function"].startswith("nt!KeBugCheckEx"), name


def test_bug_check_parameters(machines):
    d1 = machines.truth("d1")
    p = d1["bugcheck"]["parameters"]
    assert p[0] == 0xFFFFF8A000BAD000 and p[1] == 2 and p[2] == 0  # address, IRQL, read
    assert function_of(d1, {"function": _describe(d1, p[3])}) == "mydrv!MyDrvReadRegister"
    trap = next(f for f in d1["call_chain"] if f["kind"] == "trap")
    assert trap["rip"] == p[3] and d1["exceptions"][0]["cr2"] == p[0] and d1["exceptions"][0]["vector"] == 14

    e = machines.truth("7e")
    p = e["bugcheck"]["parameters"]
    assert p[0] == 0xC0000005
    assert _describe(e, p[1]).startswith("mydrv!MyDrvReadRecordLength")
    # P3/P4: the exception and context records, on the crashing thread's stack
    thread = next(t for t in e["threads"] if t["processor"] == 0)
    assert thread["stack_limit"] <= p[2] < thread["initial_stack"]
    assert thread["stack_limit"] <= p[3] < thread["initial_stack"]
    with open_dump(machines.path("7e", "complete")) as d:
        mem = Session(d).memory
        record = mem.read(p[2], 0x98)
        code, _, _, address, nparams = struct.unpack_from("<IIQQI", record)
        assert code == 0xC0000005 and address == p[1] and nparams == 2
        assert struct.unpack_from("<QQ", record, 0x20) == (0, 4)  # read of NULL->Length
        context = mem.read(p[3], 0x4D0)
        assert struct.unpack_from("<Q", context, 0xF8)[0] == p[1]  # Rip
        # a _M code: the dump's context is that exception context (as in the corpus 0x1000007E dumps)
        assert d.registers()["rip"] == p[1] == e["context"]["rip"]
        assert e["context_is_exception_context"]

    b = machines.truth("3b")
    p = b["bugcheck"]["parameters"]
    assert p[0] == 0xC0000005 and p[3] == 0
    assert _describe(b, p[1]).startswith("storfilt!StorFiltValidateDescriptor")
    assert b["exceptions"][0]["cr2"] == 0x10

    f = machines.truth("50")
    p = f["bugcheck"]["parameters"]
    pool = next(r for r in f["regions"] if r["name"] == "nonpaged pool")
    assert pool["va"] <= p[0] < pool["va"] + pool["size"] and p[1] == 0 and p[3] == 0  # freed
    assert _describe(f, p[2]).startswith("mydrv!MyDrvChecksumBuffer")
    assert any(t["kind"] == "zero" and "freed by the kernel" in t["note"] for t in f["translations"])

    assert machines.truth("e2")["bugcheck"]["parameters"] == [0, 0, 0, 0]
    x = machines.truth("d1-x86")["bugcheck"]["parameters"]
    assert x[0] == 0xE0BAD000 and x[1] == 2 and x[2] == 0


def _describe(truth, address) -> str:
    for m in truth["modules"]:
        if m["base"] <= address < m["base"] + m["size"]:
            frames = [f for t in truth["threads"] for f in t["frames"]] + truth["call_chain"]
            for f in frames:
                if f["rip"] == address:
                    return f["function"]
            return m["short"]
    return hex(address)


def test_call_chains_read_as_windows_shows_them(machines):
    chains = {n: [function_of(None, f) for f in machines.truth(n)["call_chain"]] for n in machines.scenarios}
    assert chains["d1"][:4] == ["nt!KeBugCheckEx", "nt!KiBugCheckDispatch", "nt!KiPageFault", "mydrv!MyDrvReadRegister"]
    assert chains["d1"][-3:] == ["nt!Phase1Initialization", "nt!PspSystemThreadStartup", "nt!KiStartSystemThread"]
    assert chains["7e"][:7] == ["nt!KeBugCheckEx", "nt!PspUnhandledExceptionInSystemThread", "nt!RtlDispatchException",
                                "nt!KiDispatchException", "nt!KiExceptionDispatch", "nt!KiPageFault",
                                "mydrv!MyDrvReadRecordLength"]
    three_b = chains["3b"]
    assert three_b[1] == "nt!KiSystemServiceHandler" and "storfilt!StorFiltWalkDescriptors" in three_b
    assert three_b.index("nt!IopSynchronousServiceTail") < three_b.index("nt!KiSystemServiceCopyEnd")
    assert [f["kind"] for f in machines.truth("3b")["call_chain"]][-2:] == ["syscall", "user"]
    assert chains["e2"][1:4] == ["nt!KeBugCheck", "kbdcrash!KbdCrashInitiateCrash", "kbdcrash!KbdCrashHandleScanCode"]
    assert "nt!KiRetireDpcList" in chains["e2"] and chains["e2"][-1] == "nt!KiSystemStartup"
    assert chains["50"][1:3] == ["nt!MiSystemFault", "nt!MmAccessFault"]
    plain = chains["7e-plain"]
    assert plain[6] == "mydrv!MyDrvParseRecord" and plain.count("nt!IofCallDriver") == 2
    assert plain[-3:] == ["storfilt!StorFiltSelfTestThread", "nt!PspSystemThreadStartup", "nt!KiStartSystemThread"]
    # without the _M flag the dump's context is KeBugCheckEx's own
    p = machines.truth("7e-plain")
    assert not p["context_is_exception_context"] and p["context"] == p["bugcheck_context"]
    assert chains["d1-x86"][:3] == ["nt!KeBugCheckEx", "nt!KiTrap0E", "mydrv!MyDrvReadRegister"]


# -- the machines' contents ------------------------------------------------------------------------
def test_machines_have_processes_threads_and_processors(machines):
    for name in machines.scenarios:
        t = machines.truth(name)
        active = [p for p in t["processes"] if p["active_list"]]
        names = [p["name"] for p in active]
        assert names[0] == "System" and len(active) >= 5, name
        assert {"smss.exe", "csrss.exe", "services.exe", "svchost.exe"} <= set(names)
        assert len(t["threads"]) >= 10, name
        users = [th for th in t["threads"] if th["kind"] == "user"]
        assert users and all(th["teb"] for th in users)
        pids = {p["address"]: p["pid"] for p in t["processes"]}
        for th in t["threads"]:
            assert th["cid"][0] == pids[th["process"]]
        if name.endswith("x86"):
            continue
        assert len(t["processors"]) == 2 and t["processors"][1]["context"]["rip"]
        assert len({p["dtb"] for p in active}) == len(active)  # one address space per process
        # waiting user threads entered the kernel through syscall and wait in KeWaitForSingleObject
        # (and, x64, three of them were readied at the crash: same stacks, state Ready; sched.py)
        waiting = [th for th in users if th["state"] in (5, 1)]
        assert len(waiting) >= 8 and len([th for th in users if th["state"] == 1]) == (0 if name == "124" else 3)
        for th in waiting:
            fn = [function_of(t, f) for f in th["frames"]]
            assert fn[:4] == ["nt!KiSwapContext", "nt!KiSwapThread", "nt!KiCommitThreadWait",
                              "nt!KeWaitForSingleObject"], fn
            assert "nt!KiSystemServiceCopyEnd" in fn and th["frames"][-1]["user"]


def test_unloaded_drivers_and_modules(machines):
    t = machines.truth("d1")
    assert [m["name"] for m in t["modules"]] == ["ntoskrnl.exe", "hal.dll", "mydrv.sys", "storfilt.sys",
                                                  "kbdcrash.sys"]
    assert [u["name"] for u in t["unloaded_modules"]] == ["dump_storport.sys", "dam.sys", "WdBoot.sys"]


# -- headers and contexts --------------------------------------------------------------------------
def test_dump_headers_agree_with_the_truth(machines):
    for name, kind, path in machines.dumps():
        t = machines.truth(name)
        with open_dump(path) as d:
            h = d.header
            assert d.dump_type == DUMP_TYPE[kind], (name, kind)
            assert d.warnings == []
            assert h.bugcheck_code == t["bugcheck"]["code"]
            assert list(h.bugcheck_parameters) == t["bugcheck"]["parameters"]
            assert h.kd_debugger_data_block == t["globals"]["nt!KdDebuggerDataBlock"]
            assert h.ps_loaded_module_list == t["globals"]["nt!PsLoadedModuleList"]
            assert h.ps_active_process_head == t["globals"]["nt!PsActiveProcessHead"]
            assert h.number_processors == len(t["processors"])
            assert h.directory_table_base == t["dtb"]
            assert h.pfn_database == t["globals"]["PfnDatabase"]
            regs = d.registers()
            for reg, value in t["context"].items():
                if reg in regs and reg not in ("cs", "ss", "ds", "es", "fs", "gs"):
                    assert regs[reg] == value, (name, kind, reg)
            expected_blobs = t["dumps"][kind]["blobs"]
            assert len(d.blobs()) == expected_blobs


def test_pages_present_in_each_kind(machines):
    for name, kind, path in physical_dumps(machines):
        t = machines.truth(name)
        ram = {p for a, n in t["page_sets"]["ram"] for p in range(a, a + n)}
        kernel = {p for a, n in t["page_sets"]["kernel"] for p in range(a, a + n)}
        user = {p for a, n in t["page_sets"]["user"] for p in range(a, a + n)}
        expected = {"complete": ram, "bitmap5": ram, "kernel": kernel, "rdmp8": kernel, "active": kernel | user}[kind]
        with open_dump(path) as d:
            runs = list(d.physical.present_runs())
            present = {p for a, n in runs for p in range(a, a + n)}
            assert present == expected, (name, kind)
            assert not (user & kernel)


# -- kdmp-parser -------------------------------------------------------------------------------
def test_kdmp_parser_reads_every_complete_and_bitmap_dump(machines, capfd):
    kdmp_parser = pytest.importorskip("kdmp_parser")
    checked = 0
    for name, kind, path in physical_dumps(machines, x64_only=True):
        t = machines.truth(name)
        kp = kdmp_parser.KernelDumpParser(path)
        assert int(kp.type) == DUMP_TYPE[kind]
        c = kp.context
        for reg in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "rip", "r8", "r9", "r10", "r11", "r12",
                    "r13", "r14", "r15"):
            assert getattr(c, reg.capitalize() if len(reg) > 2 else reg.upper()) == t["context"][reg], (name, kind, reg)
        h = kp.header
        assert h.BugCheckCode == t["bugcheck"]["code"]
        assert list(h.BugCheckCodeParameter) == t["bugcheck"]["parameters"]
        assert kp.directory_table_base == t["dtb"]
        with open_dump(path) as d:
            ours = {p for a, n in d.physical.present_runs() for p in range(a, a + n)}
            assert set(kp.pages.keys()) == {p * PAGE for p in ours}
            for pfn in sorted(ours)[:: max(1, len(ours) // 50)]:
                assert bytes(kp.read_physical_page(pfn * PAGE)) == bytes(d.physical.page(pfn)), (name, kind, pfn)
        for x in t["translations"]:
            assert kp.translate_virtual(x["va"], x["dtb"]) == x["pa"], (name, kind, hex(x["va"]), x["note"])
            checked += 1
    capfd.readouterr()  # kdmp-parser prints a line per failed translation
    assert checked > 5000


# -- kdshell's own memory layer ------------------------------------------------------------------
def test_kdshell_translates_what_the_builder_mapped(machines):
    for name in machines.scenarios:
        t = machines.truth(name)
        with open_dump(memory_dump(machines, name)) as d:
            s = Session(d)
            s.memory  # noqa: B018 - settles the PTE format from the KDBG (L1TF bit)
            for x in t["translations"]:
                space = s.spaces.space(x["dtb"])
                if x["pa"] is not None:
                    assert space.translate(x["va"]) == x["pa"], (name, hex(x["va"]), x["note"])
                elif "resident_pa" in x:  # transition, prototype: still in RAM, readable
                    assert space.translate(x["va"]) == x["resident_pa"], (name, hex(x["va"]), x["kind"])
                else:
                    with pytest.raises(MemoryNotPresent):
                        space.translate(x["va"])


def test_kdshell_walks_the_module_and_process_lists(machines):
    for name, kind, path in physical_dumps(machines):
        t = machines.truth(name)
        is64 = t["arch"] == "x64"
        ps = 8 if is64 else 4
        o = dict(dllbase=0x30, size=0x40, basename=0x58, pid=0x440, links=0x448, image=0x5A8, dtb=0x28) if is64 else \
            dict(dllbase=0x18, size=0x20, basename=0x2C, pid=0xE4, links=0xE8, image=0x1AC, dtb=0x18)
        with open_dump(path) as d:
            mem = Session(d).memory
            head = t["globals"]["nt!PsLoadedModuleList"]
            entry = mem.read_pointer(head)
            modules = []
            while entry != head and len(modules) < 20:
                base = mem.read_pointer(entry + o["dllbase"])
                size = mem.read_int(entry + o["size"], 4)
                length = mem.read_int(entry + o["basename"], 2)
                buf = mem.read_pointer(entry + o["basename"] + ps)
                modules.append((mem.read(buf, length).decode("utf-16-le"), base, size, entry))
                entry = mem.read_pointer(entry)
            assert modules == [(m["name"], m["base"], m["size"], m["ldr_entry"]) for m in t["modules"]], (name, kind)
            head = t["globals"]["nt!PsActiveProcessHead"]
            entry = mem.read_pointer(head)
            procs = []
            while entry != head and len(procs) < 20:
                ep = entry - o["links"]
                image = mem.read(ep + o["image"], 15).split(b"\0")[0].decode()
                procs.append((ep, mem.read_pointer(ep + o["pid"]), image, mem.read_pointer(ep + o["dtb"])))
                entry = mem.read_pointer(entry)
            expected = [(p["address"], p["pid"], p["name"], p["dtb"]) for p in t["processes"] if p["active_list"]]
            assert procs == expected, (name, kind)


def test_kdbg_in_the_dumps(machines):
    for name, kind, path in physical_dumps(machines):
        t = machines.truth(name)
        with open_dump(path) as d:
            s = Session(d)
            kdbg = read_kdbg(s.memory, d.header.kd_debugger_data_block)
            assert kdbg is not None and kdbg.size == 0x380
            ps = 8 if t["arch"] == "x64" else 4
            mask = (1 << (8 * ps)) - 1  # x86 KDBG pointers are sign-extended
            assert kdbg.get("PsLoadedModuleList") & mask == t["globals"]["nt!PsLoadedModuleList"]
            assert kdbg.get("OffsetKThreadApcProcess") == t["kdbg"]["OffsetKThreadApcProcess"]
            assert kdbg.get("SizeEProcess") == t["kdbg"]["SizeEProcess"]
            assert kdbg.get("OffsetPrcbCurrentThread") == t["kdbg"]["OffsetPrcbCurrentThread"]
            assert kdbg.get("PteBase") & mask == t["pte_base"]
            # the unloaded-driver list the KDBG points at
            array = s.memory.read_pointer(kdbg.get("MmUnloadedDrivers") & ((1 << (8 * ps)) - 1))
            count = s.memory.read_int(kdbg.get("MmLastUnloadedDriver") & ((1 << (8 * ps)) - 1), 4)
            names = []
            for i in range(count):
                e = array + i * (0x28 if ps == 8 else 0x18)
                length = s.memory.read_int(e, 2)
                names.append(s.memory.read(s.memory.read_pointer(e + ps), length).decode("utf-16-le"))
            assert names == [u["name"] for u in t["unloaded_modules"]]


def test_waiting_threads_resume_where_their_switch_frames_say(machines):
    for name in ("d1", "3b", "d1-x86"):
        t = machines.truth(name)
        x64 = t["arch"] == "x64"
        with open_dump(machines.path(name, "complete")) as d:
            mem = Session(d).memory
            for th in t["threads"]:
                if th["state"] != 5:
                    continue
                ks = th["kernel_stack"]
                f0 = th["frames"][0]
                if x64:
                    assert f0["rip"] == mem.read_pointer(ks + 0x38) and f0["sp"] == ks + 0x40
                else:
                    assert f0["rip"] == mem.read_pointer(ks + 8) and f0["sp"] == ks + 0xC
                assert th["stack_limit"] <= f0["sp"] < th["initial_stack"]


# -- the stacks were really executed ------------------------------------------------------------
def _images():
    from fixtures.machine.image import LoadedImage
    from fixtures.machine.machine import BIN

    out = []
    for rel in ("ntoskrnl.exe", "hal.dll", "mydrv.sys", "storfilt.sys", "kbdcrash.sys", "x86/ntoskrnl.exe",
                "x86/hal.dll", "x86/mydrv.sys"):
        out.append(LoadedImage.open(BIN / rel))
    return out


def _after_call(images, address: int) -> bool:
    """True when a call instruction ends exactly at `address` in one of the images."""
    for img in images:
        if img.contains(address):
            md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if img.is64 else capstone.CS_MODE_32)
            for length in range(2, 8):
                code = img.read(address - length, length)
                insns = list(md.disasm(code, address - length))
                if len(insns) == 1 and insns[0].size == length and insns[0].mnemonic.startswith("call"):
                    return True
    return False


def _after_hlt(images, address: int) -> bool:
    img = next(i for i in images if i.contains(address))
    return img.read(address - 1, 1) == b"\xf4"


def test_recorded_stacks_were_really_executed(machines):
    images = _images()
    for name in machines.scenarios:
        t = machines.truth(name)
        dtb_of = {p["address"]: p["dtb"] for p in t["processes"]}
        path = memory_dump(machines, name)
        complete = "complete" in path.name
        with open_dump(path) as d:
            s = Session(d)
            stacks = [(t["call_chain"], t["dtb"])] + [(th["frames"], dtb_of[th["process"]]) for th in t["threads"]]
            for frames, dtb in stacks:
                space = s.spaces.space(dtb)
                for f in frames:
                    if f["kind"] == "call":  # rip is a return address
                        # 0x124: the machine check arrived at the idle loop's hlt (fixtures/machine/whea.py)
                        assert _after_call(images, f["rip"]) or (
                            t.get("whea") and _after_hlt(images, f["rip"])), (name, f["function"])
                    if "return_slot" in f and f["return_address"] is not None and (complete or not f.get("user")):
                        assert space.read_pointer(f["return_slot"]) == f["return_address"], (name, f["function"])
                    if f["kind"] == "trap":
                        assert any(e["rip"] == f["rip"] and e["rsp"] == f["sp"] for e in t["exceptions"])


# -- small memory dumps ---------------------------------------------------------------------------
def test_small_dumps_hold_what_windows_puts_in_them(machines):
    for name in machines.scenarios:
        t = machines.truth(name)
        info = t["dumps"]["small"]["small"]
        with open_dump(machines.path(name, "small")) as d:
            tri = d.triage
            assert [(x.name, x.base, x.size, x.timestamp, x.checksum) for x in tri.drivers] == [
                (m["name"], m["base"], m["size"], m["timestamp"], m["checksum"]) for m in t["modules"]]
            # DUMP_UNLOADED_DRIVERS keeps WCHAR DriverName[12]: names are cut to 12 characters
            assert [u.name for u in tri.unloaded] == [u["name"][:12] for u in t["unloaded_modules"]]
            mem = tri.memory
            # the stack from the bug-checking RSP to the stack base
            assert tri.header.TopOfStack == info["top_of_stack"]
            sp = t["bugcheck_context"]["rsp" if t["arch"] == "x64" else "esp"]
            assert mem.read(sp, 8) is not None
            # the KDBG copy, KiBugCheckData and the code at the crash address
            assert mem.read(d.header.kd_debugger_data_block + 0x10, 4) == b"KDBG"
            ps = 8 if t["arch"] == "x64" else 4
            data = mem.read(t["globals"]["nt!KiBugCheckData"], 5 * ps)
            assert int.from_bytes(data[:ps], "little") == t["bugcheck"]["code"]
            rip = t["context"]["rip" if ps == 8 else "eip"]
            assert len(mem.read(rip & ~0xFFF, PAGE)) == PAGE
            # the copies: KPRCB, ETHREAD and EPROCESS of the crashing thread
            cur = next(th for th in t["threads"] if th["processor"] == 0)
            thread_copy = d.read_file(tri.header.ThreadOffset, 0x40)
            with open_dump(memory_dump(machines, name)) as full:
                real = Session(full).memory.read(cur["address"], 0x40)
            assert thread_copy == real
            if t["culprit"]:
                broken = tri.broken_driver
                assert broken is not None and broken.name == t["culprit"]


# -- determinism ----------------------------------------------------------------------------------
def test_generation_is_deterministic(tmp_path):
    from fixtures.machine.catalog import build_scenario

    sums = []
    for i in (1, 2):
        entry = build_scenario("d1", tmp_path / str(i), kinds=("complete", "kernel", "small"))
        files = sorted(list(entry["dumps"].values()) + [entry["truth"]])
        sums.append([hashlib.sha256(open(f, "rb").read()).hexdigest() for f in files])
    assert sums[0] == sums[1]


# -- the bundled sample ----------------------------------------------------------------------------
def test_bundled_sample_is_what_make_sample_makes(tmp_path):
    from fixtures.make_sample import SAMPLE, make_sample

    out = tmp_path / "sample"
    fresh = {str(f.relative_to(out)): hashlib.sha256(f.read_bytes()).hexdigest() for f in make_sample(out)}
    committed = {str(f.relative_to(SAMPLE)): hashlib.sha256(f.read_bytes()).hexdigest()
                 for f in SAMPLE.rglob("*") if f.is_file()}
    assert fresh == committed, "kdshell/data/sample is stale: run python fixtures/make_sample.py"
