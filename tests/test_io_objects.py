"""!drvobj, !devobj, !devstack, !irp on the test machines (kernel types from the fixture kernel's
PDB) and on a real corpus dump (public symbols, no nt PDB: one clear line each), plus hostile
objects (a looping device list, StackCount 255) built in memory with the machine's own offsets."""
import re

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, REPO, TRIAGE_19041, open_machine, run_lines as lines
from kdshell.errors import MemoryNotPresent
from kdshell.kernel.io import IO_TYPE_DEVICE, IO_TYPE_DRIVER, IO_TYPE_IRP, MAX_STACK_LOCATIONS, IoObjects

BIN = REPO / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"




def _evaluate(session, expression):
    from kdshell.expr import Evaluator

    return Evaluator(session).evaluate(expression)


@pytest.fixture(scope="module")
def plain(machines):
    """7e-plain: storfilt forwarded an IOCTL to \\Device\\MyDrv; mydrv faulted while handling it."""
    return open_machine(machines, "7e-plain")


def test_drvobj_by_name_lists_devices_and_dispatch_routines(plain):
    driver = _evaluate(plain, "poi(mydrv!MyDrvDriverObject)")
    device = _evaluate(plain, "poi(mydrv!MyDrvDeviceObject)")
    out = lines(plain, "!drvobj \\Driver\\mydrv 2")
    assert out[:3] == [f"Driver object ({driver:016x}) is for:", " \\Driver\\mydrv", "Driver Extension List: (id , addr)"]
    assert "Device Object list:" not in out  # bit 0 not asked for
    entry = _evaluate(plain, "mydrv!DriverEntry")
    assert f"DriverEntry:   {entry:016x}  mydrv!DriverEntry" in out
    assert "DriverStartIo: 00000000" in out
    assert f"DriverUnload:  {_evaluate(plain, 'mydrv!MyDrvUnload'):016x}  mydrv!MyDrvUnload" in out
    routines = out[out.index("Dispatch routines:") + 1:]
    assert len(routines) == 28
    control = _evaluate(plain, "mydrv!MyDrvDispatchDeviceControl")
    assert routines[0x0E] == f"[0e] IRP_MJ_DEVICE_CONTROL              {control:016x}  mydrv!MyDrvDispatchDeviceControl"
    assert routines[0x00].endswith("mydrv!MyDrvDispatchCreateClose")
    assert routines[0x02].endswith("mydrv!MyDrvDispatchCreateClose")
    assert routines[0x1B].startswith("[1b] IRP_MJ_PNP ") and routines[0x1B].endswith("nt!IopInvalidDeviceRequest")
    # the name without \Driver\, and the address, give the same object; default flags list devices
    by_address = lines(plain, f"!drvobj {driver:x}")
    assert by_address == lines(plain, "!drvobj mydrv")
    assert by_address[-2:] == ["Device Object list:", f"{device:016x}"]


def test_drvobj_7_adds_each_devices_block(plain):
    out = lines(plain, "!drvobj storfilt 7")
    device = _evaluate(plain, "poi(storfilt!StorFiltDeviceObject)")
    assert f"Device object ({device:016x}) is for:" in out
    assert out[-1] == "Device queue is not busy."
    assert out[out.index("Dispatch routines:") + 1 + 0x0E].endswith("storfilt!StorFiltDispatchDeviceControl")


def test_devobj_shows_driver_extension_and_queue(plain):
    device = _evaluate(plain, "poi(mydrv!MyDrvDeviceObject)")
    driver = _evaluate(plain, "poi(mydrv!MyDrvDriverObject)")
    out = lines(plain, "!devobj poi(mydrv!MyDrvDeviceObject)")
    # storfilt holds a file object on \Device\MyDrv (IoGetDeviceObjectPointer): RefCount 1
    assert out == [
        f"Device object ({device:016x}) is for:",
        f"  \\Driver\\mydrv DriverObject {driver:016x}",
        "Current Irp 00000000 RefCount 1 Type 00000022 Flags 00000080",
        f"DevExt {_evaluate(plain, f'poi({device:x}+40)'):016x} DevObjExt 00000000",
        "Device queue is not busy.",
    ]


def test_devstack_marks_the_device(plain):
    device = _evaluate(plain, "poi(storfilt!StorFiltDeviceObject)")
    out = lines(plain, f"!devstack {device:x}")
    assert out[0] == "  !DevObj           !DrvObj            !DevExt           ObjectName"
    assert out[1] == f"> {device:016x}  \\Driver\\storfilt   00000000"
    assert len(out) == 2


def test_irp_in_flight_to_mydrv(plain):
    assert plain.run(".frame 8")  # mydrv!MyDrvDispatchDeviceControl(DeviceObject, Irp)
    with plain.out.capture() as buf:
        plain.run("dv")
    irp = int(next(l for l in "".join(buf).splitlines() if l.strip().startswith("Irp =")).split("=")[1]
              .replace("`", ""), 16)
    device = _evaluate(plain, "poi(mydrv!MyDrvDeviceObject)")
    file_object = _evaluate(plain, "poi(storfilt!StorFiltMyDrvFile)")
    out = lines(plain, f"!irp {irp:x}")
    assert re.fullmatch(r"Irp is active with 1 stacks 1 is current \(= 0x([0-9a-f]+)\)", out[0])
    assert int(out[0].split("0x")[1][:-1], 16) == irp + plain.kernel.offsets.size("_IRP")  # the only location
    system_buffer = _evaluate(plain, f"poi({irp:x}+18)")
    assert out[1] == f" No Mdl: System buffer={system_buffer:016x}: Thread 00000000:  Irp stack trace."
    assert out[2:] == [
        "     cmd  flg cl Device   File     Completion-Context",
        ">[IRP_MJ_DEVICE_CONTROL(e), N/A(0)]",
        f"            0  0 {device:016x} {file_object:016x} 00000000-00000000",
        "               \\Driver\\mydrv",
        "                        Args: 00000000 00000008 0x222404 00000000",  # IOCTL_MYDRV_PARSE, 8-byte input
    ]
    detail = lines(plain, f"!irp {irp:x} 1")
    assert "Flags = 00000000" in detail and "UserIosb = 00000000" in detail
    assert detail[-5:] == out[-5:]


def test_x86_machine(machines):
    s = open_machine(machines, "d1-x86", "complete")
    driver = _evaluate(s, "poi(mydrv!MyDrvDriverObject)")
    out = lines(s, "!drvobj mydrv 3")
    assert out[0] == f"Driver object ({driver:08x}) is for:"
    assert out[out.index("Dispatch routines:") + 1 + 0x0E].endswith("mydrv!MyDrvDispatchDeviceControl")
    assert lines(s, "!devstack poi(mydrv!MyDrvDeviceObject)")[1].startswith(
        f"> {_evaluate(s, 'poi(mydrv!MyDrvDeviceObject)'):08x}  \\Driver\\mydrv ")


@pytest.mark.parametrize("text, message", [
    ("!drvobj poi(mydrv!MyDrvDeviceObject)", "is not a driver object (its Type is 0x3, a driver object's is 0x4)"),
    ("!devobj poi(mydrv!MyDrvDriverObject)", "is not a device object (its Type is 0x4"),
    ("!irp poi(mydrv!MyDrvDriverObject)", "is not a IRP (its Type is 0x4"),
    ("!devobj 10", "10 is not in the dump: cannot read the device object"),
    ("!drvobj \\Driver\\nosuch", "no driver object named \\Driver\\nosuch"),
    ("!drvobj", "give a driver object's address or a driver's name"),
    ("!irp", "give an address"),
])
def test_bad_input_is_one_line(plain, text, message):
    with plain.out.capture() as buf:
        assert not plain.run(text)
    assert len(buf) == 1 and buf[0].endswith("\n") and message in buf[0], buf


@pytest.mark.parametrize("text, kind", [
    ("!drvobj \\Driver\\disk", "_DRIVER_OBJECT"), ("!drvobj ffff850429891720 2", "_DRIVER_OBJECT"),
    ("!devobj ffff850429891720", "_DEVICE_OBJECT"), ("!devstack ffff850429891720", "_DEVICE_OBJECT"),
    ("!irp ffff850429891720", "_IRP"),
])
def test_corpus_dump_without_kernel_pdb(text, kind):
    s = kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="")
    s.progress = None
    with s.out.capture() as buf:
        assert not s.run(text)
    assert len(buf) == 1 and buf[0].startswith(f"The kernel's type {kind} is not available (no kernel PDB): ")
    assert "needs nt's symbols" in buf[0]


# -- hostile objects -------------------------------------------------------------------------------
class Memory:
    """Sparse little-endian memory: bytes written are readable, the rest is missing."""

    def __init__(self):
        self.bytes: dict[int, int] = {}

    def write(self, address, data):
        for i, b in enumerate(data):
            self.bytes[address + i] = b

    def put(self, address, value, size):
        self.write(address, value.to_bytes(size, "little"))

    def read(self, address, size):
        try:
            return bytes(self.bytes[address + i] for i in range(size))
        except KeyError:
            raise MemoryNotPresent(address, "not in the test memory") from None


def test_looping_device_list_and_stack_are_bounded(plain):
    o = plain.kernel.offsets
    mem = Memory()
    driver, a, b = 0x10000, 0x20000, 0x30000
    mem.write(driver, bytes(0x200))
    mem.put(driver, IO_TYPE_DRIVER, 2)
    mem.put(driver + o.offset("_DRIVER_OBJECT", "DeviceObject"), a, 8)
    for dev, other in ((a, b), (b, a)):
        mem.write(dev, bytes(0x150))
        mem.put(dev, IO_TYPE_DEVICE, 2)
        mem.put(dev + o.offset("_DEVICE_OBJECT", "DriverObject"), driver, 8)
        mem.put(dev + o.offset("_DEVICE_OBJECT", "NextDevice"), other, 8)  # a -> b -> a ...
        mem.put(dev + o.offset("_DEVICE_OBJECT", "AttachedDevice"), other, 8)
    io = IoObjects(mem, o, True)
    d = io.driver(driver)
    assert d.devices == [a, b] and "loops" in d.warning
    stack, warning = io.device_stack(a)
    assert [x.address for x in stack] == [b, a] and "loops" in warning


def test_irp_stack_count_255_is_capped_by_its_size(plain):
    o = plain.kernel.offsets
    body, location = o.size("_IRP"), o.size("_IO_STACK_LOCATION")
    mem = Memory()
    irp = 0x40000
    mem.write(irp, bytes(body + 2 * location))
    mem.put(irp, IO_TYPE_IRP, 2)
    mem.put(irp + o.offset("_IRP", "Size"), 0xFFFF, 2)  # claims far more than is there
    mem.put(irp + o.offset("_IRP", "StackCount"), 255, 1)
    mem.put(irp + o.offset("_IRP", "CurrentLocation"), 1, 1)
    mem.put(irp + body + o.offset("_IO_STACK_LOCATION", "MajorFunction"), 0x16, 1)
    got = IoObjects(mem, o, True).irp(irp)
    assert len(got.locations) == MAX_STACK_LOCATIONS and "255 stack locations" in got.warning
    assert got.locations[0].major == 0x16 and got.locations[0].readable
    assert not got.locations[2].readable  # past the bytes there are


def test_drvobj_by_a_module_name_the_dump_cannot_resolve_says_so():
    """`mydrv` is also the module's base as an expression: !drvobj takes it as a driver's name,
    and says it cannot find it (the bundled small dump has no boot-driver table), rather than
    reading the image header as a driver object."""
    from kdshell.cli import bundled_sample

    dump, store = bundled_sample()
    with kdshell.open(dump, symbol_path=store, image_path=store) as s:
        before = s.failures
        out = s.capture("!drvobj mydrv 2").strip()
        assert s.failures == before + 1 and "\n" not in out
        assert out.startswith("!drvobj: no driver object named mydrv")
