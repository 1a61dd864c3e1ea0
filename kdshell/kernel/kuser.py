"""KUSER_SHARED_DATA: the page the kernel shares read-only with every process (times, version,
tick count), at a fixed kernel address per architecture (formats.md; windbg.md §10's "Ticks:").

    ADDRESS[is64] + TICK_COUNT   -> the tick count (KSYSTEM_TIME TickCount, low dword first)
"""
from __future__ import annotations

# The kernel's view of the page (user mode sees it at 0x7FFE0000).
ADDRESS = {True: 0xFFFF_F780_0000_0000, False: 0xFFDF_0000}

# Fields (the same offsets on x86 and x64).
INTERRUPT_TIME = 0x8  # InterruptTime (KSYSTEM_TIME: LowPart, High1Time), 100 ns since boot
TICK_COUNT = 0x320  # TickCountQuad / TickCount (KSYSTEM_TIME, 12 bytes)
TICK_COUNT_SIZE = 12
