"""How WinDbg spells numbers, addresses and times: one place for each convention."""
from __future__ import annotations

import datetime as _dt


def ptr(value: int, is64: bool = True) -> str:
    """An address as WinDbg prints it: `fffff804`7ba00000` (64-bit) or `8054c000` (32-bit)."""
    if is64:
        value &= 0xFFFF_FFFF_FFFF_FFFF
        return f"{value >> 32:08x}`{value & 0xFFFFFFFF:08x}"
    return f"{value & 0xFFFFFFFF:08x}"


def ptr0x(value: int, is64: bool = True) -> str:
    """`0xfffff804`7ba00000`, as in the banner's "Kernel base = " line."""
    return "0x" + ptr(value, is64)


def session_time(when: _dt.datetime, tz: _dt.tzinfo | None = None) -> str:
    """`Mon Dec 16 10:30:45.123 2024 (UTC + 9:00)`: the analyst's local zone, like WinDbg."""
    local = when.astimezone(tz)
    offset = local.utcoffset() or _dt.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return (
        f"{local:%a %b} {local.day:2d} {local:%H:%M:%S}.{local.microsecond // 1000:03d} {local.year} "
        f"(UTC {sign} {minutes // 60}:{minutes % 60:02d})"
    )


def uptime(hundred_ns: int) -> str:
    """`0 days 2:15:30.456` from a 100 ns count."""
    ms_total = hundred_ns // 10_000
    days, rest = divmod(ms_total, 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, ms = divmod(rest, 1000)
    return f"{days} days {hours}:{minutes:02d}:{seconds:02d}.{ms:03d}"


def hex_ascii_lines(data: bytes, start: int = 0, width: int = 16) -> list[str]:
    """`db`-style lines: offset, bytes with a '-' after the eighth, then ASCII."""
    lines = []
    for off in range(0, len(data), width):
        chunk = data[off : off + width]
        cells = [f"{b:02x}" for b in chunk] + ["  "] * (width - len(chunk))
        hexpart = " ".join(cells[:8]) + "-" + " ".join(cells[8:]) if width == 16 else " ".join(cells)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{start + off:08x}  {hexpart}  {text}")
    return lines
