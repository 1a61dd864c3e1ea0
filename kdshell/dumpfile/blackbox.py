"""Windows' black boxes in a dump's secondary data (the DUMP_BLOB stream, formats.md §7): which
tag is which black box, and the boot status data's byte layout.

The tags are the GUIDs the kernel registers its black-box bug check callbacks under
(nt!PopBlackBoxBsdGuid, ...Ntfs..., ...Pnp..., ...WinLogon...). Source: two independent public
readers of these blobs on GitHub agree on all four values (a Rust crash-dump reader's table of
known tags, "dmp/tagged", and a C++ crash analyzer's BlackboxGuid provider ids); the NTFS one is
also in the corpus's 19041 small dump.

Only the boot status data has a public layout: RTL_BSD_DATA, the record of bootstat.dat, in
ReactOS's sdk/include/ndk/rtltypes.h (its sizeof, 0x88 = 136, is the "Version: 136" of Microsoft
Learn's !blackboxbsd example; phnt's ntrtl.h lists the same RTL_BSD_ITEM_TYPE order). The PnP,
NTFS and winlogon black boxes have no public type information: they are shown undecoded.
"""
from __future__ import annotations

from dataclasses import dataclass

from construct import Int8ul, Int16ul, Int32ul, Int64ul, Padding, Struct


@dataclass(frozen=True)
class BlackBox:
    command: str  # the WinDbg extension that shows it
    field: str  # its !analyze -v line
    tag: str  # registry-form GUID, lower case (DumpBlob.tag_text)
    owner: str  # the kernel variable that holds the tag
    what: str


BLACK_BOXES = (
    BlackBox("!blackboxbsd", "BLACKBOXBSD", "f57308df-cc45-4e01-ad76-29a4ebb010ec", "nt!PopBlackBoxBsdGuid",
             "boot status data (BSD)"),
    BlackBox("!blackboxntfs", "BLACKBOXNTFS", "00afe9c4-940d-4213-8016-cd3719b5bc20", "nt!PopBlackBoxNtfsGuid",
             "NTFS black box"),
    BlackBox("!blackboxpnp", "BLACKBOXPNP", "b7631941-532a-4cd6-b1b1-edb5917d4557", "nt!PopBlackBoxPnpGuid",
             "Plug and Play black box"),
    BlackBox("!blackboxwinlogon", "BLACKBOXWINLOGON", "80cc79cf-a719-4af1-bf97-fe29ff76ebc1",
             "nt!PopBlackBoxWinLogonGuid", "winlogon black box"),
)


def black_box(command: str) -> BlackBox:
    return next(b for b in BLACK_BOXES if b.command == command)


# RTL_BSD_DATA (ReactOS rtltypes.h; natural alignment, x64 and x86 alike: no pointers).
RTL_BSD_DATA = Struct(  # 0x88 bytes
    "Version" / Int32ul,  # +0x00: sizeof the record that wrote it
    "ProductType" / Int32ul,  # +0x04
    "AabEnabled" / Int8ul,  # +0x08 auto advanced boot
    "AabTimeout" / Int8ul,  # +0x09
    "LastBootSucceeded" / Int8ul,  # +0x0A
    "LastBootShutdown" / Int8ul,  # +0x0B
    "SleepInProgress" / Int8ul,  # +0x0C
    Padding(3),
    # RTL_BSD_DATA_POWER_TRANSITION +0x10
    "PowerButtonTimestamp" / Int64ul,  # +0x10
    "PowerFlags" / Int8ul,  # +0x18: SystemRunning:1 ConnectedStandbyInProgress:1 UserShutdown:1 SystemShutdown:1 SleepInProgress:4
    "ConnectedStandbyScenarioInstanceId" / Int8ul,  # +0x19
    "ConnectedStandbyEntryReason" / Int8ul,  # +0x1A
    "ConnectedStandbyExitReason" / Int8ul,  # +0x1B
    "SystemSleepTransitionCount" / Int16ul,  # +0x1C
    Padding(2),
    "LastReferenceTime" / Int64ul,  # +0x20
    "LastReferenceTimeChecksum" / Int32ul,  # +0x28
    "LastUpdateBootId" / Int32ul,  # +0x2C
    "BootAttemptCount" / Int8ul,  # +0x30
    "LastBootCheckpoint" / Int8ul,  # +0x31
    "Checksum" / Int8ul,  # +0x32
    Padding(1),
    "LastBootId" / Int32ul,  # +0x34
    "LastSuccessfulShutdownBootId" / Int32ul,  # +0x38
    "LastReportedAbnormalShutdownBootId" / Int32ul,  # +0x3C
    # RTL_BSD_DATA_ERROR_INFO +0x40
    "ErrorBootId" / Int32ul,  # +0x40
    "ErrorRepeatCount" / Int32ul,  # +0x44
    "ErrorOtherErrorCount" / Int32ul,  # +0x48
    "ErrorCode" / Int32ul,  # +0x4C
    "ErrorOtherErrorCount2" / Int32ul,  # +0x50
    Padding(4),
    # RTL_BSD_POWER_BUTTON_PRESS_INFO +0x58
    "LastPressTime" / Int64ul,  # +0x58
    "CumulativePressCount" / Int32ul,  # +0x60
    "LastPressBootId" / Int16ul,  # +0x64
    "LastPowerWatchdogStage" / Int8ul,  # +0x66
    "PressFlags" / Int8ul,  # +0x67: WatchdogArmed:1 ShutdownInProgress:1
    "LastReleaseTime" / Int64ul,  # +0x68
    "CumulativeReleaseCount" / Int32ul,  # +0x70
    "LastReleaseBootId" / Int16ul,  # +0x74
    "ErrorCount" / Int16ul,  # +0x76
    "CurrentConnectedStandbyPhase" / Int8ul,  # +0x78
    Padding(3),
    "TransitionLatestCheckpointId" / Int32ul,  # +0x7C
    "TransitionLatestCheckpointType" / Int32ul,  # +0x80
    "TransitionLatestCheckpointSequenceNumber" / Int32ul,  # +0x84
)
BSD_SIZE = RTL_BSD_DATA.sizeof()
# Where each section ends: a record shorter than its Version (or an older version) stops earlier.
BSD_BASE_END, BSD_ERROR_END = 0x40, 0x54


def _bool(value: int) -> str:
    return "TRUE" if value else "FALSE"


def bsd_lines(data: bytes) -> list[str]:
    """!blackboxbsd's text (Microsoft Learn's example: labels, blank lines between sections, its
    "progrees" spelling) for the sections the record holds."""
    version = int.from_bytes(data[0:4], "little") if len(data) >= 4 else 0
    extent = min(len(data), version)
    if extent < BSD_BASE_END:
        return [f"Boot status data too short to decode: version {version:#x}, {len(data):#x} bytes."]
    r = RTL_BSD_DATA.parse(data[:BSD_SIZE].ljust(BSD_SIZE, b"\0"))
    f = r.PowerFlags
    out = [f"Version: {r.Version}", f"Product type: {r.ProductType}", "",
           f"Auto advanced boot: {_bool(r.AabEnabled)}", f"Advanced boot menu timeout: {r.AabTimeout}",
           f"Last boot succeeded: {_bool(r.LastBootSucceeded)}", f"Last boot shutdown: {_bool(r.LastBootShutdown)}",
           f"Sleep in progrees: {_bool(r.SleepInProgress)}", "",
           f"Power button timestamp: {r.PowerButtonTimestamp:#x}" if r.PowerButtonTimestamp else
           "Power button timestamp: 0",
           f"System running: {_bool(f & 1)}", f"Connected standby in progress: {_bool(f & 2)}",
           f"User shutdown in progress: {_bool(f & 4)}", f"System shutdown in progress: {_bool(f & 8)}",
           f"Sleep in progress: {f >> 4}",
           f"Connected standby scenario instance id: {r.ConnectedStandbyScenarioInstanceId}",
           f"Connected standby entry reason: {r.ConnectedStandbyEntryReason}",
           f"Connected standby exit reason: {r.ConnectedStandbyExitReason}",
           f"System sleep transitions to on: {r.SystemSleepTransitionCount}",
           f"Last reference time: {r.LastReferenceTime:#x}",
           f"Last reference time checksum: {r.LastReferenceTimeChecksum:#x}",
           f"Last update boot id: {r.LastUpdateBootId}", "",
           f"Boot attempt count: {r.BootAttemptCount}", f"Last boot checkpoint: {_bool(r.LastBootCheckpoint)}",
           f"Checksum: {r.Checksum:#x}", f"Last boot id: {r.LastBootId}",
           f"Last successful shutdown boot id: {r.LastSuccessfulShutdownBootId}",
           f"Last reported abnormal shutdown boot id: {r.LastReportedAbnormalShutdownBootId}"]
    if extent >= BSD_ERROR_END:
        out += ["", f"Error info boot id: {r.ErrorBootId}", f"Error info repeat count: {r.ErrorRepeatCount}",
                f"Error info other error count: {r.ErrorOtherErrorCount}", f"Error info code: {r.ErrorCode}",
                f"Error info other error count: {r.ErrorOtherErrorCount2}"]
    if extent >= BSD_SIZE:
        p = r.PressFlags
        out += ["", f"Power button last press time: {r.LastPressTime:#x}",
                f"Power button cumulative press count: {r.CumulativePressCount}",
                f"Power button last press boot id: {r.LastPressBootId}",
                f"Power button last power watchdog stage: {r.LastPowerWatchdogStage:#x}",
                f"Power button watchdog armed: {_bool(p & 1)}",
                f"Power button shutdown in progress: {_bool(p & 2)}",
                f"Power button last release time: {r.LastReleaseTime:#x}",
                f"Power button cumulative release count: {r.CumulativeReleaseCount}",
                f"Power button last release boot id: {r.LastReleaseBootId}",
                f"Power button error count: {r.ErrorCount}",
                f"Power button current connected standby phase: {r.CurrentConnectedStandbyPhase}",
                f"Power button transition latest checkpoint id: {r.TransitionLatestCheckpointId}",
                f"Power button transition latest checkpoint type: {r.TransitionLatestCheckpointType}",
                "Power button transition latest checkpoint sequence number: "
                f"{r.TransitionLatestCheckpointSequenceNumber}"]
    if extent > BSD_SIZE:
        out += ["", f"({extent - BSD_SIZE:#x} bytes of version {version} past the public RTL_BSD_DATA layout "
                "are not decoded.)"]
    return out
