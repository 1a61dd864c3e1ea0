"""Page-table entries as Windows writes them: the one place that decodes a PTE.

Both the reads (paging.py) and `!pte` use `decode()`, so what `dq` can or cannot read and what
`!pte` prints always agree. Facts from x64-unwind.md §6.1-§6.6.

A valid entry is the hardware's (PFN, flags). An invalid one (Valid = 0) is one of Windows'
software formats, tried in this order (the order WinDbg's `!pte` and MemProcFS use):

  transition  (Transition = 1, Prototype = 0)  the page is still in RAM on the standby/modified
              list: readable from its PFN.
  prototype   (Prototype = 1)  the real PTE is a prototype PTE elsewhere in kernel memory
              (shared sections, mapped files); reads follow it once.
  software    page file (number, offset), demand zero (offset 0) or "look in the VAD"
              (offset 0xFFFFFFFF): never in a crash dump.
  zero        all bits clear: nothing committed here.

L1TF mitigation (Windows 10 1803+, build 17134): Windows sets a high physical-address bit
(InvalidPteMask, bit 45 by default, KDBG.L1tfHighPhysicalBitIndex says which) in
not-present entries so a speculative walk lands outside RAM, and marks such entries by leaving
SwizzleBit (bit 4) clear. Example: transition PTE 0x00002000_1A2B3880 has SwizzleBit clear, so
bit 45 is cleared before use and the PFN is 0x1A2B3, not 0x2000_0001A2B3. We clear the mask
bits of every not-present entry whose SwizzleBit is clear (see test_paging.py::
test_transition_pte_with_l1tf_bit and ::test_pagefile_pte_swizzled).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:  # paging.py imports this module
    from kdshell.memory.paging import Level

# Entry kinds
VALID = "valid"
TRANSITION = "transition"
PROTOTYPE = "prototype"
PAGEFILE = "pagefile"
DEMAND_ZERO = "demand zero"
VAD = "vad"
ZERO = "zero"

# MM protection values (5 bits) and their names as !pte prints them: "Protect: 4 - ReadWrite".
PROTECTION_NAMES = (
    "NoAccess", "ReadOnly", "Execute", "ExecuteRead", "ReadWrite", "WriteCopy", "ExecuteReadWrite",
    "ExecuteWriteCopy",
)

# Windows builds where the software PTE layout changed (x64-unwind.md §6.2).
BUILD_1803 = 17134  # PageFileLow moved to bits 12-15; SwizzleBit appears
DEFAULT_L1TF_BIT = 45  # MemProcFS' default InvalidPteMask when the kernel does not say


def protection_text(protection: int) -> str:
    """`4 - ReadWrite`, `c - ReadWrite NoCache`, `18 - NoAccess Guard NoCache`."""
    words = [PROTECTION_NAMES[protection & 7]]
    if protection & 0x10:
        words.append("Guard")
    if protection & 0x8:
        words.append("NoCache")
    return f"{protection:x} - {' '.join(words)}"


@dataclass(frozen=True)
class PteFormat:
    """How the entries of one kernel are laid out: the paging mode's entry width and the build.

    `invalid_mask` is InvalidPteMask (0 when the kernel does not use one).
    """

    mode: str = "x64"  # "x64" (also 5-level), "pae" or "x86"
    build: int = 19041
    invalid_mask: int = 0

    @classmethod
    def for_kernel(cls, mode: str, build: int, l1tf_bit: int | None = None) -> "PteFormat":
        """The format of a kernel: `l1tf_bit` from KDBG.L1tfHighPhysicalBitIndex when known.

        None means "not known": 1803+ kernels get the MemProcFS default (bit 45); 0 from the
        KDBG means the mitigation is off.
        """
        if mode == "x86" or build < BUILD_1803:
            return cls(mode, build, 0)
        bit = DEFAULT_L1TF_BIT if l1tf_bit is None else l1tf_bit
        return cls(mode, build, (1 << bit) if bit else 0)


@dataclass(frozen=True)
class PteState:
    """One decoded entry."""

    kind: str
    raw: int
    pfn: int | None = None  # valid and transition entries
    protection: int | None = None
    pagefile: int | None = None  # page-file number
    offset: int | None = None  # page offset in that page file
    proto_address: int | None = None  # VA of the prototype PTE (None for "look in the VAD")
    large: bool = False

    @property
    def resident(self) -> bool:
        """Bytes are in RAM (and so possibly in the dump)."""
        return self.kind in (VALID, TRANSITION)


def decode(entry: int, fmt: PteFormat) -> PteState:
    """Decode a PTE (or a PDE/PPE...: the software formats are the same at every level)."""
    if entry & 1:
        if fmt.mode == "x86":
            return PteState(VALID, entry, pfn=entry >> 12)
        return PteState(VALID, entry, pfn=(entry >> 12) & 0xFF_FFFF_FFFF)
    if entry == 0:
        return PteState(ZERO, entry)
    if fmt.mode == "x86":
        return _decode_x86(entry)
    raw = entry
    if fmt.invalid_mask and not entry & 0x10:
        entry &= ~fmt.invalid_mask
    protection = (entry >> 5) & 0x1F
    if entry & 0xC00 == 0x800:
        pfn_bits = 0x3FFFFFF if fmt.mode == "pae" else 0xF_FFFF_FFFF  # PAE: bits 12-37; x64: 12-47
        return PteState(TRANSITION, raw, pfn=(entry >> 12) & pfn_bits, protection=protection)
    if entry & 0x400:
        if fmt.mode == "pae":
            address = entry >> 32
            return PteState(PROTOTYPE, raw, protection=protection, proto_address=address or None)
        address = entry >> 16
        if address == 0xFFFF_FFFF_0000:  # ProtoAddress all ones: "look in the VAD" (Proto: VAD)
            return PteState(VAD, raw, protection=protection)
        if address & (1 << 47):
            address |= 0xFFFF_0000_0000_0000
        return PteState(PROTOTYPE, raw, protection=protection, proto_address=address)
    if fmt.build >= BUILD_1803:
        number = (entry >> 12) & 0xF
    else:
        number = (entry >> 1) & 0xF
    high = entry >> 32
    if high == 0:
        return PteState(DEMAND_ZERO, raw, protection=protection)
    if high == 0xFFFFFFFF:
        return PteState(VAD, raw, protection=protection)
    return PteState(PAGEFILE, raw, protection=protection, pagefile=number, offset=high)


def _decode_x86(entry: int) -> PteState:
    """Non-PAE 32-bit software PTEs (x64-unwind.md §6.6)."""
    protection = (entry >> 5) & 0x1F
    if entry & 0xC01 == 0x800:
        return PteState(TRANSITION, entry, pfn=entry >> 12, protection=protection)
    if entry & 0x407 == 0x400:
        address = 0x80000000 | ((entry >> 1) & 0x7FFFFC00) | ((entry << 1) & 0x3FF)
        return PteState(PROTOTYPE, entry, protection=protection, proto_address=address)
    high = entry >> 12
    if high == 0:
        return PteState(DEMAND_ZERO, entry, protection=protection)
    if high == 0xFFFFF:
        return PteState(VAD, entry, protection=protection)
    return PteState(PAGEFILE, entry, protection=protection, pagefile=(entry >> 1) & 0xF, offset=high)


def describe(state: PteState) -> str:
    """Why a read stops at this entry, in the user's words (`not valid (nothing committed)`)."""
    k = state.kind
    if k == ZERO:
        return "not valid (nothing committed)"
    if k == PAGEFILE:
        return (f"the page is in page file {state.pagefile} at offset {state.offset:x}; "
                "page-file contents are not in a crash dump")
    if k == DEMAND_ZERO:
        protect = protection_text(state.protection)  # type: ignore[arg-type]  # decode() sets it
        return f"demand-zero page, never touched (Protect: {protect})"
    if k == VAD:
        return "not valid, the VAD describes this page (not in the dump)"
    if k == PROTOTYPE:
        if state.proto_address is None:
            return "prototype PTE without an address"
        return f"prototype PTE at {state.proto_address:x}"
    return "not valid"


def why_not_readable(state: PteState, level: str, digits: int = 16) -> str:
    """`PDE contains 0000000000000000: not valid (nothing committed)`"""
    return f"{level} contains {state.raw:0{digits}X}: {describe(state)}"


# -- !pte's flag string ---------------------------------------------------------------------
def flags_text(entry: int, has_nx: bool = True) -> str:
    """The 11-character flag column of `!pte`: C G L D A N T U/K W/R E V (windbg.md §11).

    Writable is the hardware bit 1 or Windows' software "Write" bit 11 (dirty-bit emulation on
    MP systems). E is shown when NX (bit 63) is clear; 32-bit non-PAE entries have no NX bit.
    """
    return "".join((
        "C" if entry & 0x200 else "-",
        "G" if entry & 0x100 else "-",
        "L" if entry & 0x80 else "-",
        "D" if entry & 0x40 else "-",
        "A" if entry & 0x20 else "-",
        "N" if entry & 0x10 else "-",
        "T" if entry & 0x8 else "-",
        "U" if entry & 0x4 else "K",
        "W" if entry & 0x802 else "R",
        "E" if not (has_nx and entry >> 63) else "-",
        "V" if entry & 0x1 else "-",
    ))


# -- !pte's report -----------------------------------------------------------------------------
COLUMN = 27  # each "PXE at FFFFDAED76BB5F80    " column of !pte (windbg.md §11)


def invalid_details(state: PteState) -> list[str]:
    """The lines !pte prints under "not valid": `Transition: 1a2b3`, `Protect: 4 - ReadWrite`..."""
    k = state.kind
    protect = f"Protect: {protection_text(state.protection)}" if state.protection is not None else ""
    if k == TRANSITION:
        return [f"Transition: {state.pfn:x}", protect]
    if k == PROTOTYPE:
        return [f"Proto: {state.proto_address or 0:X}", protect]
    if k == VAD:
        return ["Proto: VAD", protect]
    if k == PAGEFILE:
        return [f"PageFile: {state.pagefile:x}", f"Offset: {state.offset:x}", protect]
    if k == DEMAND_ZERO:
        return ["DemandZero", protect]
    return []


def report_lines(va: int, levels: Sequence[Level], addresses: list[int], entries: list[int | None],
                 fmt: PteFormat, va_digits: int, entry_size: int,
                 below_large: Callable[[int, int], str]) -> list[str]:
    """!pte's text for one VA: the entry addresses of every level, then what each contains, its
    PFN and flags, up to the first entry that is not valid, cannot be read, or maps a large page.

    `levels` are paging.Level objects, `entries` None where an entry could not be read, and
    `below_large(i, entry)` the text of the self-map entry under a large entry at level i.
    """
    digits = entry_size * 2
    at_row = [f"{lv.name} at {a:0{va_digits}X}" for lv, a in zip(levels, addresses)]
    contains_row: list[str] = []
    info_row: list[str] = []
    extra: list[str] = []
    for i, (lv, a, e) in enumerate(zip(levels, addresses, entries)):
        if e is None:
            info_row.append(f"Unable to get {lv.name} {a:0{va_digits}X}")
            break
        contains_row.append(f"contains {e:0{digits}X}")
        state = decode(e, fmt)
        if state.kind != VALID:
            info_row.append("not valid")
            extra = invalid_details(state)
            break
        info_row.append(f"pfn {state.pfn:<10x}{flags_text(e, entry_size == 8)}")
        if lv.large_mask and e & 0x80:
            if i + 1 < len(levels):  # the self-map shows the large page's own bytes one level down
                contains_row.append(f"contains {below_large(i, e)}")
            page = ((e & lv.large_mask) >> 12) + ((va >> 12) & ((1 << (lv.shift - 12)) - 1))
            info_row.append(f"LARGE PAGE pfn {page:x}")
            break
    indent = " " * (COLUMN * max(0, len(info_row) - 1))
    lines = [" " * 43 + f"VA {va:0{va_digits}x}"]
    for row in (at_row, contains_row, info_row):
        if row:
            lines.append("".join(cell.ljust(COLUMN) for cell in row[:-1]) + row[-1])
    return lines + [indent + x for x in extra if x]
