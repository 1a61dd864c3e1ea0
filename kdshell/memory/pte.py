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

ARM64 (Windows' _MMPTE_* of ARM64 builds, as ReactOS' sdk/include/ndk/arm64/mmtypes.h gives
them "based on WoA symbols"; MemProcFS' mm_arm64.c reads the same bits):
  hardware  Valid 0, NotLargePage 1 (table or page; clear = block), CacheType 2-3 (AttrIndx),
            NonSecure 5, Owner 6 (AP[1]: EL0 may access), NotDirty 7 (AP[2]: read-only),
            Shareability 8-9, Accessed 10 (AF), NonGlobal 11 (nG), PageFrameNumber 12-47,
            Contiguous 52, PrivilegedNoExecute 53 (PXN), UserNoExecute 54 (UXN), Writable 55
            (software: writes allowed, NotDirty cleared on the first), CopyOnWrite 56, and in
            table entries PxnTable 59, UxnTable 60, ApTable 61-62, NsTable 63.
  transition  Protection 1-5, Prototype 10 = 0, Transition 11 = 1, PageFrameNumber 12-51.
  prototype   Protection 1-5, Prototype 10 = 1, ProtoAddress 16-63 (sign-extended from 47).
  software    Protection 1-5, PageFileLow 6-9, Prototype 10, Transition 11, PageFileHigh 32-63
              (0: demand zero; 0xFFFFFFFF: the VAD says).
No L1TF mask on ARM64 (an x86 CPU issue). Pinned by tests/test_arm64.py.
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

    mode: str = "x64"  # "x64" (also 5-level), "pae", "x86" or "arm64"
    build: int = 19041
    invalid_mask: int = 0

    @classmethod
    def for_kernel(cls, mode: str, build: int, l1tf_bit: int | None = None) -> "PteFormat":
        """The format of a kernel: `l1tf_bit` from KDBG.L1tfHighPhysicalBitIndex when known.

        None means "not known": 1803+ kernels get the MemProcFS default (bit 45); 0 from the
        KDBG means the mitigation is off.
        """
        if mode in ("x86", "arm64") or build < BUILD_1803:
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
        if fmt.mode == "arm64":
            return PteState(VALID, entry, pfn=(entry >> 12) & 0xF_FFFF_FFFF)
        return PteState(VALID, entry, pfn=(entry >> 12) & 0xFF_FFFF_FFFF)
    if entry == 0:
        return PteState(ZERO, entry)
    if fmt.mode == "x86":
        return _decode_x86(entry)
    if fmt.mode == "arm64":
        return _decode_arm64(entry)
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
        return _prototype48(raw, protection, entry >> 16)
    if fmt.build >= BUILD_1803:
        number = (entry >> 12) & 0xF
    else:
        number = (entry >> 1) & 0xF
    return _not_in_memory(raw, protection, entry >> 32, 0xFFFFFFFF, number)


def _prototype48(raw: int, protection: int, address: int) -> PteState:
    """x64's and ARM64's prototype PTE: a 48-bit ProtoAddress, all ones meaning "look in the VAD"
    (Proto: VAD), else a kernel address to sign-extend."""
    if address == 0xFFFF_FFFF_0000:
        return PteState(VAD, raw, protection=protection)
    if address & (1 << 47):
        address |= 0xFFFF_0000_0000_0000
    return PteState(PROTOTYPE, raw, protection=protection, proto_address=address)


def _not_in_memory(raw: int, protection: int, high: int, all_ones: int, pagefile: int) -> PteState:
    """The last choice of every machine: the page-file offset field (`high`) is 0 for demand-zero,
    all ones for a page the VAD describes, else where the page is in page file `pagefile`."""
    if high == 0:
        return PteState(DEMAND_ZERO, raw, protection=protection)
    if high == all_ones:
        return PteState(VAD, raw, protection=protection)
    return PteState(PAGEFILE, raw, protection=protection, pagefile=pagefile, offset=high)


def _decode_x86(entry: int) -> PteState:
    """Non-PAE 32-bit software PTEs (x64-unwind.md §6.6)."""
    protection = (entry >> 5) & 0x1F
    if entry & 0xC01 == 0x800:
        return PteState(TRANSITION, entry, pfn=entry >> 12, protection=protection)
    if entry & 0x407 == 0x400:
        address = 0x80000000 | ((entry >> 1) & 0x7FFFFC00) | ((entry << 1) & 0x3FF)
        return PteState(PROTOTYPE, entry, protection=protection, proto_address=address)
    return _not_in_memory(entry, protection, entry >> 12, 0xFFFFF, (entry >> 1) & 0xF)


def _decode_arm64(entry: int) -> PteState:
    """ARM64's software PTEs (the module note)."""
    protection = (entry >> 1) & 0x1F
    if entry & 0xC00 == 0x800:
        return PteState(TRANSITION, entry, pfn=(entry >> 12) & 0xFF_FFFF_FFFF, protection=protection)
    if entry & 0x400:
        return _prototype48(entry, protection, entry >> 16)
    return _not_in_memory(entry, protection, entry >> 32, 0xFFFFFFFF, (entry >> 6) & 0xF)


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


# ARM64's hardware bits (the module note)
A64_OWNER, A64_NOT_DIRTY, A64_ACCESSED, A64_NON_GLOBAL = 0x40, 0x80, 0x400, 0x800
A64_PXN, A64_UXN, A64_WRITABLE, A64_COPY_ON_WRITE = 1 << 53, 1 << 54, 1 << 55, 1 << 56
A64_PXN_TABLE, A64_UXN_TABLE, A64_AP_TABLE_NO_EL0, A64_AP_TABLE_READ_ONLY = 1 << 59, 1 << 60, 1 << 61, 1 << 62


def _kernel_half(va: int) -> bool:
    return bool(va >> 47 & 1)


def flags_text_arm64(entry: int, va: int, block: bool) -> str:
    """x64's 11 columns from ARM64's bits: C CopyOnWrite, G nG clear, L a block, D NotDirty
    clear, A AF, N and T always `-` (the cache type is a MAIR index, not two bits), U/K
    AP[1], W/R the Writable bit or AP[2] clear, E the execute-never bit of the address's half
    clear (PXN for kernel addresses, UXN for user ones), V valid."""
    xn = A64_PXN if _kernel_half(va) else A64_UXN
    return "".join((
        "C" if entry & A64_COPY_ON_WRITE else "-",
        "-" if entry & A64_NON_GLOBAL else "G",
        "L" if block else "-",
        "-" if entry & A64_NOT_DIRTY else "D",
        "A" if entry & A64_ACCESSED else "-",
        "--",
        "U" if entry & A64_OWNER else "K",
        "W" if entry & A64_WRITABLE or not entry & A64_NOT_DIRTY else "R",
        "-" if entry & xn else "E",
        "V" if entry & 1 else "-",
    ))


def arm64_access_text(tables: Sequence[int], leaf: int) -> str:
    """Who may read, write and execute the page or block `leaf` maps, with the limits the table
    entries above it set (APTable, PXNTable, UXNTable), as the MMU applies them:
    `Access: EL1 read/write, EL0 none; execute: EL1 no (PXN), EL0 no (UXN)`.

    AP[2:1] = 00 EL1 read/write, 01 both read/write, 10 EL1 read-only, 11 both read-only; a
    page EL0 may write is never executable at EL1 (the architecture implies PXN). Windows' clean
    writable pages are AP[2] = 1 with its Writable bit: the first write faults and dirties them.
    """
    above = 0
    for t in tables:
        above |= t
    el0 = bool(leaf & A64_OWNER) and not above & A64_AP_TABLE_NO_EL0
    read_only = bool(leaf & A64_NOT_DIRTY) or bool(above & A64_AP_TABLE_READ_ONLY)
    if read_only and leaf & A64_WRITABLE and not above & A64_AP_TABLE_READ_ONLY:
        rw = "read/write (clean: the first write faults)"
    else:
        rw = "read-only" if read_only else "read/write"

    def execute(own: int, table: int, own_name: str) -> str:
        if leaf & own:
            return f"no ({own_name})"
        if above & table:
            return f"no ({own_name}Table)"
        return "yes"

    el1_x = execute(A64_PXN, A64_PXN_TABLE, "PXN")
    if el0 and not read_only and el1_x == "yes":
        el1_x = "no (EL0 may write it)"
    el0_x = execute(A64_UXN, A64_UXN_TABLE, "UXN") if el0 else "no (no EL0 access)"
    return f"Access: EL1 {rw}, EL0 {rw if el0 else 'none'}; execute: EL1 {el1_x}, EL0 {el0_x}"


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
    arm64 = fmt.mode == "arm64"
    mapped: list[int] = []  # the valid entries walked, down to the page or large page
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
        large = lv.maps_large(e)
        flags = flags_text_arm64(e, va, large) if arm64 else flags_text(e, entry_size == 8)
        info_row.append(f"pfn {state.pfn:<10x}{flags}")
        mapped.append(e)
        if large and lv.large_mask is not None:
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
    if arm64 and mapped and (len(mapped) == len(levels) or levels[len(mapped) - 1].maps_large(mapped[-1])):
        lines.append(arm64_access_text(mapped[:-1], mapped[-1]))
    return lines + [indent + x for x in extra if x]
