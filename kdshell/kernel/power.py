"""The power manager's state: nt!PopAction (POP_POWER_ACTION), nt!PopCapabilities
(SYSTEM_POWER_CAPABILITIES) and the outstanding power IRPs on nt!PopIrpList (POP_IRP_DATA), as
!poaction and !pocaps read them.

    power = PowerState(memory, offsets, is64)
    power.action(address)          # PowerAction
    power.capabilities(address)    # Capabilities
    power.irps(list_head)          # ([PowerIrp], warning or None)

Offsets come from the kernel's PDB (these types are not in KDBG and kdshell's built-in table does not
carry them): without them each reader raises one line naming the missing field.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.layout import FieldOffsets, Memory, Reader, StructLayout, walk_list

ACTION = "_POP_POWER_ACTION"
CAPS = "SYSTEM_POWER_CAPABILITIES"  # Windows' PDB spells it without the underscore
IRP_DATA = "_POP_IRP_DATA"

ACTION_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    n: ((ACTION, n),) for n in ("Updates", "State", "Shutdown", "Action", "LightestState", "Flags", "Status",
                               "IrpMinor", "SystemState", "NextSystemState", "EffectiveSystemState",
                               "CurrentSystemState", "HiberContext")}
ACTION_SIZES = {"Updates": 1, "State": 1, "Shutdown": 1, "IrpMinor": 1}
ACTION_NEEDS = ("Updates", "State", "Action", "LightestState", "Flags", "IrpMinor", "SystemState")

BOOLEANS = ("PowerButtonPresent", "SleepButtonPresent", "LidPresent", "SystemS1", "SystemS2", "SystemS3",
            "SystemS4", "SystemS5", "HiberFilePresent", "FullWake", "VideoDimPresent", "ApmPresent", "UpsPresent",
            "ThermalControl", "ProcessorThrottle", "ProcessorMinThrottle", "ProcessorMaxThrottle", "FastSystemS4",
            "Hiberboot", "WakeAlarmPresent", "AoAc", "DiskSpinDown", "SystemBatteriesPresent",
            "BatteriesAreShortTerm")
WAKES = ("AcOnLineWake", "SoftLidWake", "RtcWake", "MinDeviceWakeState", "DefaultLowLatencyWake")
CAPS_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {n: ((CAPS, n),) for n in BOOLEANS + WAKES + ("BatteryScale",)}

IRP_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    n: ((IRP_DATA, n),) for n in ("Link", "Irp", "Pdo", "TargetDevice", "CurrentDevice", "MinorFunction",
                                 "PowerStateType", "PowerState")}
IRP_NEEDS = ("Link", "Irp", "Pdo", "MinorFunction", "PowerStateType", "PowerState")


class PowerError(KdError):
    """A power manager structure kdshell cannot read (one line)."""


@dataclass
class PowerAction:
    address: int
    values: dict[str, int | None]


@dataclass
class Capabilities:
    address: int
    values: dict[str, int]
    batteries: list[tuple[int, int]]  # (Granularity, Capacity) of BatteryScale[0..2]


@dataclass
class PowerIrp:
    data: int            # the POP_IRP_DATA
    irp: int
    pdo: int
    current: int | None  # CurrentDevice: the device the IRP was last sent to
    minor: int
    state_type: int      # 0 system, 1 device
    state: int


@dataclass
class IrpList:
    irps: list[PowerIrp] = field(default_factory=list)
    warning: str | None = None


class PowerState:
    def __init__(self, memory: Memory, offsets: FieldOffsets, is64: bool) -> None:
        self.offsets = offsets
        self.r = Reader(memory, is64)

    def _layout(self, spec: dict[str, tuple[tuple[str, str], ...]], needs: tuple[str, ...]) -> StructLayout:
        layout = StructLayout(self.offsets, spec)
        line = layout.missing_line(needs)
        if line is not None:
            raise PowerError(line)
        return layout

    def action(self, address: int) -> PowerAction:
        layout = self._layout(ACTION_FIELDS, ACTION_NEEDS)
        try:
            self.r.read(address, 1)
        except MemoryNotPresent:
            raise PowerError(f"nt!PopAction ({address:x}) is not in the dump") from None
        values: dict[str, int | None] = {}
        for name in ACTION_FIELDS:
            if name == "HiberContext":
                values[name] = self.r.maybe_ptr(address, layout.get(name))
            else:
                values[name] = self.r.maybe_uint(address, layout.get(name), ACTION_SIZES.get(name, 4))
        return PowerAction(address, values)

    def capabilities(self, address: int) -> Capabilities:
        layout = self._layout(CAPS_FIELDS, BOOLEANS[:10] + WAKES + ("BatteryScale",))
        r = self.r
        try:
            values = {n: r.uint(address + off, 1) for n in BOOLEANS if (off := layout.get(n)) is not None}
            values.update({n: r.uint(address + layout.need(n), 4) for n in WAKES})
            scale = address + layout.need("BatteryScale")
            batteries = [(r.uint(scale + 8 * i, 4), r.uint(scale + 8 * i + 4, 4)) for i in range(3)]
        except MemoryNotPresent:
            raise PowerError(f"nt!PopCapabilities ({address:x}) is not in the dump") from None
        return Capabilities(address, values, batteries)

    def irps(self, head: int) -> IrpList:
        """The POP_IRP_DATA records on nt!PopIrpList, in list order."""
        layout = self._layout(IRP_FIELDS, IRP_NEEDS)
        link = layout.need("Link")
        walk = walk_list(self.r, head, "nt!PopIrpList")
        out = IrpList(warning=walk.warning)
        for entry in walk.entries:
            data = entry - link
            r, f = self.r, layout.need
            try:
                out.irps.append(PowerIrp(data, r.ptr(data + f("Irp")), r.ptr(data + f("Pdo")),
                                         r.maybe_ptr(data, layout.get("CurrentDevice")),
                                         r.uint(data + f("MinorFunction"), 1), r.uint(data + f("PowerStateType"), 4),
                                         r.uint(data + f("PowerState"), 4)))
            except MemoryNotPresent:
                out.warning = f"POP_IRP_DATA {data:x} is not in the dump: the list ends there"
                break
        return out
