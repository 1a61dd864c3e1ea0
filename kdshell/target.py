"""Facts about the crashed machine as KD states them in its banner and in `vertarget`."""
from __future__ import annotations

from kdshell.dumpfile.header import (
    MACHINE_AMD64,
    MACHINE_ARM64,
    MACHINE_I386,
    PRODUCT_NAMES,
    SUITE_NAMES,
    DumpHeader,
)
from kdshell.errors import MemoryNotPresent
from kdshell.format import ptr0x, session_time, uptime
from kdshell.view import SessionView


# First build of each Windows -> the name WinDbg puts before "Kernel Version" (windbg.md §1) and
# its NT version (!analyze's OS_VERSION). Every 10.0 kernel, Windows 11 included, is "Windows 10".
_WINDOWS = [
    (10240, "Windows 10", "10.0"),
    (9600, "Windows 8.1", "6.3"),
    (9200, "Windows 8", "6.2"),
    (7600, "Windows 7", "6.1"),
    (6000, "Windows Vista", "6.0"),
    (3790, "Windows Server 2003", "5.2"),
    (2600, "Windows XP", "5.1"),
    (2195, "Windows 2000", "5.0"),
]

_ARCH = {MACHINE_AMD64: "x64", MACHINE_I386: "x86 compatible", MACHINE_ARM64: "ARM 64-bit (AArch64)"}


def _windows(build: int) -> tuple[int, str, str] | None:
    return next((w for w in _WINDOWS if build >= w[0]), None)


def os_name(build: int) -> str:
    w = _windows(build)
    return w[1] if w else "Windows NT"


def nt_version(build: int) -> str:
    """"10.0", "6.1" ...; "" for a build older than every Windows the table knows."""
    w = _windows(build)
    return w[2] if w else ""


def os_line(header: DumpHeader) -> str:
    """`Windows 10 Kernel Version 19041 MP (16 procs) Free x64`"""
    n = header.number_processors
    mp = "MP" if n > 1 else "UP"
    build_kind = "Checked" if header.checked else "Free"
    arch = _ARCH.get(header.machine, f"machine {header.machine:#x}")
    return f"{os_name(header.build)} Kernel Version {header.build} {mp} ({n} procs) {build_kind} {arch}"


def product_line(header: DumpHeader) -> str | None:
    """`Product: WinNt, suite: TerminalServer SingleUserTS`"""
    if header.product_type is None:
        return None
    product = PRODUCT_NAMES.get(header.product_type, f"<unknown {header.product_type}>")
    suites = [name for bit, name in SUITE_NAMES.items() if (header.suite_mask or 0) & bit]
    return f"Product: {product}, suite: {' '.join(suites)}"


def build_lab(session: SessionView) -> str | None:
    """NtBuildLab, the ASCII string the KDBG points to (not in most small dumps)."""
    kdbg, memory = session.kdbg, session.memory
    if kdbg is None or memory is None:
        return None
    address = kdbg.get("NtBuildLab")
    if not address:
        return None
    # Read up to the NUL: a small dump may save just the string's own bytes.
    raw = b""
    while len(raw) < 128 and b"\0" not in raw:
        try:
            raw += memory.read(address + len(raw), 1)
        except MemoryNotPresent:
            break
    text = raw.split(b"\0", 1)[0]
    if not text or not all(0x20 <= b < 0x7F for b in text):
        return None
    return text.decode("ascii")


def version_lines(session: SessionView, lab: bool = True) -> list[str]:
    """The block `vertarget` prints and the banner repeats; lab=False leaves out the build lab,
    which needs nt's symbols (the banner after Ctrl-C stopped their download)."""
    h = session.dump.header
    lines = [os_line(h)]
    product = product_line(h)
    if product:
        lines.append(product)
    text = build_lab(session) if lab else None
    if text:
        lines.append(f"Edition build lab: {text}")
    lines.append("Machine Name:")
    base = session.kernel_base
    mods = h.ps_loaded_module_list
    lines.append(
        f"Kernel base = {ptr0x(base, h.is64) if base is not None else '<unknown>'} "
        f"PsLoadedModuleList = {ptr0x(mods, h.is64) if mods is not None else '<unknown>'}"
    )
    return lines + time_lines(h)


def time_lines(header: DumpHeader) -> list[str]:
    """`Debug session time` (when the machine crashed) and `System Uptime`, as the header says."""
    lines: list[str] = []
    if header.system_datetime is not None:
        lines.append(f"Debug session time: {session_time(header.system_datetime)}")
    if header.system_uptime is not None:
        lines.append(f"System Uptime: {uptime(header.system_uptime)}")
    return lines
