"""The 0x9F scenario (a device power IRP storfilt.sys holds past the power manager's watchdog,
fixtures/machine/power.py), !analyze on it, !irp/!devobj/!devstack/!podev on its parameters,
!poaction and !pocaps on every x64 machine, and !vad's file names -- all against the machine's truth
(what the builder laid, what the CPU ran: truth 'power', 'pnp', 'vads', 'bugcheck', 'call_chain');
the real corpus dumps answer or say in one line what they lack."""
import re
import struct

import pytest

import kdshell
from conftest import corpus_dumps_if_present, open_corpus, open_machine

D3 = 4  # DEVICE_POWER_STATE PowerDeviceD3 (wdm.h)
IRP_MJ_POWER, IRP_MN_SET_POWER = 0x16, 0x2
# SYSTEM_POWER_STATE -> the S-state !pocaps prints (PowerSystemSleeping1 = S1 ... Shutdown = S5)
S_STATES = {0: "Sx", 1: "S0", 2: "S1", 3: "S2", 4: "S3", 5: "S4", 6: "S5"}


def _w(value):
    return f"{value >> 32:08x}`{value & 0xFFFFFFFF:08x}"


@pytest.fixture(scope="module")
def m9f(machines):
    with open_machine(machines, "9f") as s:
        yield s, machines.truth("9f")


def test_the_watchdog_bug_checks_with_the_blocked_irp(machines):
    """What the CPU ran: KeBugCheckEx(0x9F, 3, PDO, &TRIAGE_9F_POWER on the watchdog's stack, IRP) from
    nt!PopIrpWatchdog, a DPC retired by the idle loop; the IRP is the one storfilt kept."""
    truth = machines.truth("9f")
    blocked = truth["power"]["blocked"]
    code, params = truth["bugcheck"]["code"], truth["bugcheck"]["parameters"]
    assert code == 0x9F and params[0] == 3 and params[1] == blocked["pdo"] and params[3] == blocked["irp"]
    chain = [f["function"].split("+")[0] for f in truth["call_chain"]]
    assert chain[:5] == ["nt!KeBugCheckEx", "nt!PopIrpWatchdog", "nt!KiExecuteAllDpcs", "nt!KiRetireDpcList",
                         "nt!KiIdleLoop"]
    # P3 lies in PopIrpWatchdog's frame (between its stack pointer and its caller's)
    assert chain[1] == "nt!PopIrpWatchdog"
    assert truth["call_chain"][1]["sp"] < params[2] < truth["call_chain"][2]["sp"]
    assert blocked["waited_seconds"] > blocked["timeout_seconds"]


@pytest.mark.parametrize("kind", ["kernel", "complete", "small"])
def test_analyze_names_the_driver_holding_the_irp(machines, kind):
    truth = machines.truth("9f")
    blocked = truth["power"]["blocked"]
    with open_machine(machines, "9f", kind) as s:
        out = s.capture("!analyze -v").splitlines()
        short = s.capture("!analyze")
    image, module = blocked["holder_image"], blocked["holder_image"].rsplit(".", 1)[0]
    assert "DRVPOWERSTATE_SUBCODE:  3" in out
    assert f"IRP_ADDRESS:  {_w(blocked['irp'])}" in out
    assert f"DEVICE_OBJECT:  {_w(blocked['fdo'])}" in out
    assert f"IMAGE_NAME:  {image}" in out and f"MODULE_NAME: {module}" in out
    assert blocked["device_state"] > 1  # a set-power to D3: WinDbg 10's bucket says POWER_DOWN
    assert f"FAILURE_BUCKET_ID:  0x9F_3_POWER_DOWN_IMAGE_{image}" in out
    at = out.index(f"IRP_STACK:  {blocked['stack_size']} locations, current {blocked['current_location']} (>)")
    current = out[at + blocked["current_location"]]
    assert current == f"   >[IRP_MJ_POWER({IRP_MJ_POWER:x}), IRP_MN_SET_POWER({IRP_MN_SET_POWER:x})] " \
                      f"{blocked['fdo']:016x} {blocked['holder_driver']}"
    stack = out[out.index("STACK_TEXT:  ") + 1:]
    assert "nt!PopIrpWatchdog+0x" in stack[1] and stack[0].endswith(": nt!KeBugCheckEx")
    assert f"Probably caused by : {image}" in short


def test_small_dump_keeps_the_irp_and_its_stack(machines):
    """The small dump's data blocks (truth: what the writer put in, as the power manager's triage callback
    does) hold the IRP, the holder's device and driver objects: !irp answers from them."""
    truth = machines.truth("9f")
    blocked = truth["power"]["blocked"]
    blocks = truth["dumps"]["small"]["small"]["data_blocks"]

    def kept(address):
        return any(b["address"] <= address < b["address"] + b["size"] for b in blocks)

    assert kept(blocked["irp"]) and kept(blocked["fdo"])
    with open_machine(machines, "9f", "small") as s:
        out = s.capture(f"!irp {blocked['irp']:x}").splitlines()
    assert out[0].startswith(f"Irp is active with {blocked['stack_size']} stacks")
    assert out[out.index(">[IRP_MJ_POWER(16), IRP_MN_SET_POWER(2)]") + 2].strip() == blocked["holder_driver"]


def test_irp_devobj_devstack_podev_on_the_parameters(m9f):
    s, truth = m9f
    blocked = truth["power"]["blocked"]
    pdo, fdo, irp = blocked["pdo"], blocked["fdo"], blocked["irp"]
    out = s.capture(f"!irp {irp:x}").splitlines()
    assert out[0].startswith(f"Irp is active with {blocked['stack_size']} stacks {blocked['current_location']} "
                             "is current")
    at = out.index(f">[IRP_MJ_POWER({IRP_MJ_POWER:x}), IRP_MN_SET_POWER({IRP_MN_SET_POWER:x})]")
    assert f" {fdo:016x} " in out[at + 1] and out[at + 1].rstrip().endswith("pending")  # IoMarkIrpPending
    assert out[at + 2].strip() == blocked["holder_driver"]
    devobj = s.capture(f"!devobj {pdo:x}").splitlines()
    assert f"AttachedDevice (Upper) {fdo:016x} {blocked['holder_driver']}" in devobj
    assert f"DevNode {blocked['devnode']:016x}" in " ".join(devobj)
    stack = s.capture(f"!devstack {pdo:x}").splitlines()
    assert stack[1].split()[0] == f"{fdo:016x}" and stack[2].split()[:2] == [">", f"{pdo:016x}"]
    assert stack[3] == f"!DevNode {blocked['devnode']:016x} :"
    podev = s.capture(f"!podev {pdo:x}").splitlines()
    flags = blocked["pdo_power_flags"]
    assert flags & 0x400  # the kernel marked the device's power IRP active
    assert f"PowerFlags: {flags:08x} =>SystemState={flags & 0xF} DeviceState={(flags >> 4) & 0xF} dvact" in podev
    assert f"DevNode: {blocked['devnode']:016x}" in podev


SYSTEM_NAMES = {0: "Unspecified", 1: "Working", 4: "Sleeping3"}


@pytest.mark.parametrize("scenario", ["9f", "d1"])
def test_poaction_is_popaction(machines, scenario):
    truth = machines.truth(scenario)["power"]
    a = truth["action"]
    with open_machine(machines, scenario) as s:
        out = s.capture("!poaction").splitlines()
    assert out[0] == f"PopAction: {truth['action_address']:x}"
    assert out[1].startswith(f"  State..........: {a['State']:x} - ")
    assert out[3] == "  Action.........: " + {0: "None", 2: "Sleep"}[a["Action"]]
    assert out[4] == f"  Lightest State.: {SYSTEM_NAMES[a['LightestState']]}"
    assert out[5].startswith(f"  Flags..........: {a['Flags']:x}")
    assert out[7] == f"  System State...: {SYSTEM_NAMES[a['SystemState']]}"
    at = out.index(f"Allocated power irps (PopIrpList - {truth['irp_list']:x})")
    irps = out[at + 1:out.index(f"Irp worker threads (PopIrpThreadList - {truth['thread_list']:x})") - 1]
    blocked = truth.get("blocked")
    if blocked is None:
        assert irps == [] and a["State"] == 0
    else:
        assert irps == [f"  IRP: {blocked['irp']:x} (set/D{blocked['device_state'] - 1},), PDO: {blocked['pdo']:x}, "
                        f"CURRENT: {blocked['fdo']:x}"]


@pytest.mark.parametrize("scenario", ["9f", "3b"])
def test_pocaps_is_popcapabilities(machines, scenario):
    truth = machines.truth(scenario)["power"]
    c = truth["capabilities"]
    with open_machine(machines, scenario) as s:
        out = s.capture("!pocaps").splitlines()
    assert out[0] == f"PopCapabilities @ {truth['capabilities_address']:#x}"
    misc = [n for k, n in (("PowerButtonPresent", "PwrButton"), ("SleepButtonPresent", "SlpButton"),
                           ("LidPresent", "Lid"), ("SystemS1", "S1"), ("SystemS2", "S2"), ("SystemS3", "S3"),
                           ("SystemS4", "S4"), ("SystemS5", "S5"), ("HiberFilePresent", "HiberFile"),
                           ("FullWake", "FullWake")) if c[k]]
    assert out[1].split(":", 1)[1].split() == misc
    assert ("Thermal" in out[2]) == bool(c["ThermalControl"])
    if c["ProcessorThrottle"]:
        assert f"MinThrottle = {c['ProcessorMinThrottle']:02d}%, MaxThrottle = {c['ProcessorMaxThrottle']:02d}%" \
            in out[2]
    assert ("SpinDown" in out[3]) == bool(c["DiskSpinDown"])
    wakes = {line.split(":")[0].strip(): line.split(":")[1].strip() for line in out[out.index("  Wake Caps") + 1:]}
    assert wakes == {"Ac OnLine Wake": S_STATES[c["AcOnLineWake"]], "Soft Lid Wake": S_STATES[c["SoftLidWake"]],
                     "RTC Wake": S_STATES[c["RtcWake"]], "Min Device Wake": S_STATES[c["MinDeviceWakeState"]],
                     "Default Wake": S_STATES[c["DefaultLowLatencyWake"]]}


def test_vad_names_the_mapped_files(machines):
    truth = machines.truth("3b")
    with open_machine(machines, "3b", "complete") as s:
        for proc in truth["vads"]:
            s.capture(f".process {proc['process']:x}")
            lines = s.capture("!vad").splitlines()
            for v in proc["vads"]:
                line = next(x for x in lines if x.startswith(f"{v['address']:016x} "))
                if v["file_name"]:
                    assert line.endswith(f"EXECUTE_WRITECOPY  {v['file_name']}"), line
                else:
                    assert "\\" not in line
        # one control area per file, shared: every process's ntdll view names the same file object
        ntdll = {v["file_object"] for p in truth["vads"] for v in p["vads"] if v["what"] == "ntdll"}
        assert len(ntdll) == 1
        s.capture(".process 0")


def test_the_19041_table_reads_the_file_names(machines):
    """Without the PDB, kdshell/data/offsets.json's 19041 entry (Vergilius-checked) finds the same names."""
    from kdshell.kernel.devnodes import VadTree
    from kdshell.kernel.offsets import KernelOffsets

    truth = machines.truth("3b")
    with open_machine(machines, "3b") as s:
        proc = truth["vads"][-1]
        walk = VadTree(s.kernel.memory, KernelOffsets(19041, True), True).walk(proc["root"])
    assert not walk.warnings
    assert [v.file_name for v in walk.vads] == [v["file_name"] for v in sorted(proc["vads"],
                                                                               key=lambda v: v["start_vpn"])]


def test_vad_without_the_file_offsets_says_so_in_one_line(machines):
    from kdshell.kernel.devnodes import VadTree

    class WithoutMmvad:
        """The machine kernel's offsets, minus _MMVAD (a kernel whose types lack it)."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def offset(self, type_name, path):
            return None if type_name == "_MMVAD" else self.inner.offset(type_name, path)

        def source(self, type_name, path):
            return None if type_name == "_MMVAD" else self.inner.source(type_name, path)

    truth = machines.truth("3b")
    proc = truth["vads"][-1]
    with open_machine(machines, "3b") as s:
        walk = VadTree(s.kernel.memory, WithoutMmvad(s.kernel.offsets), True).walk(proc["root"])
    lines = [w for w in walk.warnings if "mapped views are shown without their file names" in w]
    assert len(lines) == 1 and "_MMVAD.Subsection" in lines[0]
    assert len(walk.vads) == len(proc["vads"]) and all(v.file_name is None for v in walk.vads)


@pytest.mark.parametrize("path", corpus_dumps_if_present(), ids=lambda p: p.name)
def test_corpus_dumps(path):
    with open_corpus(path) as s:
        for command in ("!pocaps", "!poaction"):
            text = s.capture(command)
            assert "Traceback" not in text and "Internal error" not in text
            assert len(text.strip().splitlines()) == 1, (command, text)
            assert re.search(r"small memory dump keeps no|is not in the kernel's symbols", text), text


@pytest.mark.parametrize("major, minor, state, down", [
    (IRP_MJ_POWER, IRP_MN_SET_POWER, 4, True),    # D3
    (IRP_MJ_POWER, IRP_MN_SET_POWER, 1, False),   # D0 / S0: powering up
    (IRP_MJ_POWER, 3, 4, False),                  # IRP_MN_QUERY_POWER
    (0x1B, IRP_MN_SET_POWER, 4, False),           # IRP_MJ_PNP
])
def test_power_down_is_read_from_the_stack_location(major, minor, state, down):
    from kdshell.analysis.facts import IRP_FIELDS, _sets_lower_power

    location = 0x1000
    raw = bytearray(0x48)
    raw[0:2] = bytes((major, minor))
    struct.pack_into("<I", raw, IRP_FIELDS[True][("_IO_STACK_LOCATION", "Parameters.Power.State")], state)

    class Memory:
        def read(self, address, size):
            return bytes(raw[address - location:address - location + size])

    assert _sets_lower_power(Memory(), location, lambda t, p: IRP_FIELDS[True][(t, p)]) is down
