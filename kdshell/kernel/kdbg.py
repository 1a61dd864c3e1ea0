"""The kernel debugger data block (KDDEBUGGER_DATA64, "KDBG"): where the kernel's key
addresses and structure offsets live when there is no PDB (formats.md §10).

    kdbg = read_kdbg(memory, header.kd_debugger_data_block)           # a plain block, or None
    kdbg = read_kdbg(memory, address, keys=keys_from_symbols(...))     # an encoded one (§10.1)
    kdbg.get("PsActiveProcessHead"), kdbg.encoded

Always the 64-bit layout, also on 32-bit targets: there the block holds addresses sign-extended
(0xFFFFFFFF80407000), and `get` answers them cut to 32 bits, as the target's own pointers are.
Only fields below the block's `Size` are valid for a build; `get` answers None for the others.

Windows quirk -- the encoded block. Since Windows 8 (x64) the kernel keeps KdDebuggerDataBlock
scrambled in memory while the global byte KdpDataBlockEncoded is nonzero (no debugger attached
at boot). Each qword `e` of the block is stored as the inverse of

    d = KiWaitAlways ^ bswap64(&KdpDataBlockEncoded ^ rol64(e ^ KiWaitNever, KiWaitNever & 0xFF))

(formats.md §10.1; what nt!KdCopyDataBlock computes). Crash dumps written by Windows hold a
plain block (the bug check path decodes it in place; a small dump's copy is made by
KdCopyDataBlock), but dumps made from raw memory by other tools may not. We read the block
plain first; when its OwnerTag is not 'KDBG' and the three keys are known (from the kernel's
PDB: `keys_from_symbols`), we decode it and accept it only if the decoded tag and size are
right. Pinned by tests/test_kernel_objects.py::test_encoded_kdbg_*.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from kdshell.errors import MemoryNotPresent
from kdshell.kernel.layout import Memory

OWNER_TAG = b"KDBG"
MIN_SIZE, MAX_SIZE = 0x290, 0x1000
HEADER_SIZE = 0x18  # LIST_ENTRY64, OwnerTag, Size: what says a block is there
MASK64 = 0xFFFF_FFFF_FFFF_FFFF

# name: (offset, width) -- formats.md §10 (offsets past 0x338 are computed from the field
# order with natural alignment; read below `Size` only).
FIELDS: dict[str, tuple[int, int]] = {
    "OwnerTag": (0x10, 4), "Size": (0x14, 4),  # the DBGKD_DEBUG_DATA_HEADER64 after its LIST_ENTRY
    "KernBase": (0x18, 8), "BreakpointWithStatus": (0x20, 8), "SavedContext": (0x28, 8),
    "ThCallbackStack": (0x30, 2), "NextCallback": (0x32, 2), "FramePointer": (0x34, 2),
    "Flags": (0x36, 2),  # PaeEnabled:1, KiBugCheckRecoveryActive:1, PagingLevels:4
    "KiCallUserMode": (0x38, 8), "KeUserCallbackDispatcher": (0x40, 8),
    "PsLoadedModuleList": (0x48, 8), "PsActiveProcessHead": (0x50, 8), "PspCidTable": (0x58, 8),
    "ExpSystemResourcesList": (0x60, 8), "ExpPagedPoolDescriptor": (0x68, 8),
    "ExpNumberOfPagedPools": (0x70, 8), "KeTimeIncrement": (0x78, 8),
    "KeBugCheckCallbackListHead": (0x80, 8), "KiBugCheckData": (0x88, 8),
    "IopErrorLogListHead": (0x90, 8), "ObpRootDirectoryObject": (0x98, 8),
    "ObpTypeObjectType": (0xA0, 8), "MmSystemCacheStart": (0xA8, 8), "MmSystemCacheEnd": (0xB0, 8),
    "MmSystemCacheWs": (0xB8, 8), "MmPfnDatabase": (0xC0, 8), "MmSystemPtesStart": (0xC8, 8),
    "MmSystemPtesEnd": (0xD0, 8), "MmSubsectionBase": (0xD8, 8), "MmNumberOfPagingFiles": (0xE0, 8),
    "MmLowestPhysicalPage": (0xE8, 8), "MmHighestPhysicalPage": (0xF0, 8),
    "MmNumberOfPhysicalPages": (0xF8, 8), "MmMaximumNonPagedPoolInBytes": (0x100, 8),
    "MmNonPagedSystemStart": (0x108, 8), "MmNonPagedPoolStart": (0x110, 8),
    "MmNonPagedPoolEnd": (0x118, 8), "MmPagedPoolStart": (0x120, 8), "MmPagedPoolEnd": (0x128, 8),
    "MmPagedPoolInformation": (0x130, 8), "MmPageSize": (0x138, 8),
    "MmSizeOfPagedPoolInBytes": (0x140, 8), "MmTotalCommitLimit": (0x148, 8),
    "MmTotalCommittedPages": (0x150, 8), "MmSharedCommit": (0x158, 8), "MmDriverCommit": (0x160, 8),
    "MmProcessCommit": (0x168, 8), "MmPagedPoolCommit": (0x170, 8), "MmExtendedCommit": (0x178, 8),
    "MmZeroedPageListHead": (0x180, 8), "MmFreePageListHead": (0x188, 8),
    "MmStandbyPageListHead": (0x190, 8), "MmModifiedPageListHead": (0x198, 8),
    "MmModifiedNoWritePageListHead": (0x1A0, 8), "MmAvailablePages": (0x1A8, 8),
    "MmResidentAvailablePages": (0x1B0, 8), "PoolTrackTable": (0x1B8, 8),
    "NonPagedPoolDescriptor": (0x1C0, 8), "MmHighestUserAddress": (0x1C8, 8),
    "MmSystemRangeStart": (0x1D0, 8), "MmUserProbeAddress": (0x1D8, 8),
    "KdPrintCircularBuffer": (0x1E0, 8), "KdPrintCircularBufferEnd": (0x1E8, 8),
    "KdPrintWritePointer": (0x1F0, 8), "KdPrintRolloverCount": (0x1F8, 8),
    "MmLoadedUserImageList": (0x200, 8), "NtBuildLab": (0x208, 8), "KiNormalSystemCall": (0x210, 8),
    "KiProcessorBlock": (0x218, 8), "MmUnloadedDrivers": (0x220, 8), "MmLastUnloadedDriver": (0x228, 8),
    "MmTriageActionTaken": (0x230, 8), "MmSpecialPoolTag": (0x238, 8), "KernelVerifier": (0x240, 8),
    "MmVerifierData": (0x248, 8), "MmAllocatedNonPagedPool": (0x250, 8), "MmPeakCommitment": (0x258, 8),
    "MmTotalCommitLimitMaximum": (0x260, 8), "CmNtCSDVersion": (0x268, 8),
    "MmPhysicalMemoryBlock": (0x270, 8), "MmSessionBase": (0x278, 8), "MmSessionSize": (0x280, 8),
    "MmSystemParentTablePage": (0x288, 8), "MmVirtualTranslationBase": (0x290, 8),
    "OffsetKThreadNextProcessor": (0x298, 2), "OffsetKThreadTeb": (0x29A, 2),
    "OffsetKThreadKernelStack": (0x29C, 2), "OffsetKThreadInitialStack": (0x29E, 2),
    "OffsetKThreadApcProcess": (0x2A0, 2), "OffsetKThreadState": (0x2A2, 2),
    "OffsetKThreadBStore": (0x2A4, 2), "OffsetKThreadBStoreLimit": (0x2A6, 2),
    "SizeEProcess": (0x2A8, 2), "OffsetEprocessPeb": (0x2AA, 2), "OffsetEprocessParentCID": (0x2AC, 2),
    "OffsetEprocessDirectoryTableBase": (0x2AE, 2), "SizePrcb": (0x2B0, 2),
    "OffsetPrcbDpcRoutine": (0x2B2, 2), "OffsetPrcbCurrentThread": (0x2B4, 2), "OffsetPrcbMhz": (0x2B6, 2),
    "OffsetPrcbCpuType": (0x2B8, 2), "OffsetPrcbVendorString": (0x2BA, 2),
    "OffsetPrcbProcStateContext": (0x2BC, 2), "OffsetPrcbNumber": (0x2BE, 2), "SizeEThread": (0x2C0, 2),
    "L1tfHighPhysicalBitIndex": (0x2C2, 1), "L1tfSwizzleBitIndex": (0x2C3, 1), "Padding0": (0x2C4, 4),
    "KdPrintCircularBufferPtr": (0x2C8, 8), "KdPrintBufferSize": (0x2D0, 8), "KeLoaderBlock": (0x2D8, 8),
    "SizePcr": (0x2E0, 2), "OffsetPcrSelfPcr": (0x2E2, 2), "OffsetPcrCurrentPrcb": (0x2E4, 2),
    "OffsetPcrContainedPrcb": (0x2E6, 2), "OffsetPcrInitialBStore": (0x2E8, 2),
    "OffsetPcrBStoreLimit": (0x2EA, 2), "OffsetPcrInitialStack": (0x2EC, 2),
    "OffsetPcrStackLimit": (0x2EE, 2), "OffsetPrcbPcrPage": (0x2F0, 2),
    "OffsetPrcbProcStateSpecialReg": (0x2F2, 2), "GdtR0Code": (0x2F4, 2), "GdtR0Data": (0x2F6, 2),
    "GdtR0Pcr": (0x2F8, 2), "GdtR3Code": (0x2FA, 2), "GdtR3Data": (0x2FC, 2), "GdtR3Teb": (0x2FE, 2),
    "GdtLdt": (0x300, 2), "GdtTss": (0x302, 2), "Gdt64R3CmCode": (0x304, 2), "Gdt64R3CmTeb": (0x306, 2),
    "IopNumTriageDumpDataBlocks": (0x308, 8), "IopTriageDumpDataBlocks": (0x310, 8),
    "VfCrashDataBlock": (0x318, 8), "MmBadPagesDetected": (0x320, 8),
    "MmZeroedPageSingleBitErrorsDetected": (0x328, 8), "EtwpDebuggerData": (0x330, 8),
    "OffsetPrcbContext": (0x338, 2), "OffsetPrcbMaxBreakpoints": (0x33A, 2),
    "OffsetPrcbMaxWatchpoints": (0x33C, 2), "OffsetKThreadStackLimit": (0x340, 4),
    "OffsetKThreadStackBase": (0x344, 4), "OffsetKThreadQueueListEntry": (0x348, 4),
    "OffsetEThreadIrpList": (0x34C, 4), "OffsetPrcbIdleThread": (0x350, 2),
    "OffsetPrcbNormalDpcState": (0x352, 2), "OffsetPrcbDpcStack": (0x354, 2),
    "OffsetPrcbIsrStack": (0x356, 2), "SizeKDPC_STACK_FRAME": (0x358, 2),
    "OffsetKPriQueueThreadListHead": (0x35A, 2), "OffsetKThreadWaitReason": (0x35C, 2),
    "Padding1": (0x35E, 2), "PteBase": (0x360, 8), "RetpolineStubFunctionTable": (0x368, 8),
    "RetpolineStubFunctionTableSize": (0x370, 4), "RetpolineStubOffset": (0x374, 4),
    "RetpolineStubSize": (0x378, 4), "OffsetEProcessMmHotPatchContext": (0x37C, 2),
}

# Where kernel space begins when the KDBG cannot say (MmSystemRangeStart's usual value).
SYSTEM_RANGE_START = {True: 0xFFFF_8000_0000_0000, False: 0x8000_0000}

# Fields holding kernel addresses (the rest are offsets, sizes, counts and selectors).
ADDRESS_FIELDS = frozenset(
    name for name, (off, width) in FIELDS.items()
    if width == 8 and name not in ("Padding0", "KdPrintBufferSize")
)


@dataclass(frozen=True)
class KdbgKeys:
    """What decoding an encoded block needs (formats.md §10.1)."""

    wait_never: int          # nt!KiWaitNever
    wait_always: int         # nt!KiWaitAlways
    block_encoded: int       # the address of nt!KdpDataBlockEncoded
    flag: int | None = None  # KdpDataBlockEncoded's value, when it was read


def _rol64(value: int, count: int) -> int:
    count &= 63
    return ((value << count) | (value >> (64 - count))) & MASK64 if count else value


def _ror64(value: int, count: int) -> int:
    return _rol64(value, 64 - (count & 63))


def _bswap64(value: int) -> int:
    return int.from_bytes(value.to_bytes(8, "little"), "big")


def decode_qword(e: int, keys: KdbgKeys) -> int:
    """One stored qword of an encoded block -> its plain value (nt!KdCopyDataBlock)."""
    d = _rol64(e ^ keys.wait_never, keys.wait_never & 0xFF)
    d = _bswap64(d ^ keys.block_encoded)
    return d ^ keys.wait_always


def encode_qword(d: int, keys: KdbgKeys) -> int:
    """The inverse of decode_qword: what the kernel stores for the plain qword `d`."""
    e = _bswap64(d ^ keys.wait_always) ^ keys.block_encoded
    return _ror64(e, keys.wait_never & 0xFF) ^ keys.wait_never


def decode_block(raw: bytes, keys: KdbgKeys) -> bytes:
    """An encoded block (a whole number of qwords; a tail shorter than 8 bytes is dropped)."""
    out = bytearray()
    for i in range(0, len(raw) - len(raw) % 8, 8):
        out += decode_qword(int.from_bytes(raw[i : i + 8], "little"), keys).to_bytes(8, "little")
    return bytes(out)


def encode_block(raw: bytes, keys: KdbgKeys) -> bytes:
    out = bytearray()
    for i in range(0, len(raw) - len(raw) % 8, 8):
        out += encode_qword(int.from_bytes(raw[i : i + 8], "little"), keys).to_bytes(8, "little")
    return bytes(out)


@dataclass
class Kdbg:
    address: int
    size: int
    raw: bytes
    encoded: bool = False  # the block was stored encoded and decoded here
    is64: bool = True  # the target's pointer size: a 32-bit target's addresses are cut to 32 bits

    def get(self, name: str) -> int | None:
        """A field's value, or None when the block of this build is too short to have it."""
        offset, width = FIELDS[name]
        if offset + width > min(self.size, len(self.raw)):
            return None
        value = int.from_bytes(self.raw[offset : offset + width], "little")
        if not self.is64 and name in ADDRESS_FIELDS:
            value &= 0xFFFFFFFF
        return value

    @classmethod
    def from_copy(cls, raw: bytes, address: int = 0, *, is64: bool = True) -> Kdbg:
        """A block from a copy of its bytes (a small dump's, or one being written): its own
        Size field bounds it."""
        return cls(address, _header_field(raw, "Size"), raw, is64=is64)


def _header_field(head: bytes, name: str) -> int:
    offset, width = FIELDS[name]
    return int.from_bytes(head[offset : offset + width], "little")


def _valid_header(head: bytes) -> int | None:
    """The Size of a block whose header is right, else None."""
    offset, width = FIELDS["OwnerTag"]
    if head[offset : offset + width] != OWNER_TAG:
        return None
    size = _header_field(head, "Size")
    return size if MIN_SIZE <= size <= MAX_SIZE else None


def system_range_start(kdbg: Kdbg | None, memory: Memory, is64: bool) -> int:
    """Where kernel space begins: *MmSystemRangeStart through the KDBG, else the usual value."""
    where = kdbg.get("MmSystemRangeStart") if kdbg is not None else None
    if where:
        try:
            value = int.from_bytes(memory.read(where, 8 if is64 else 4), "little")
        except MemoryNotPresent:
            value = 0
        if value:
            return value
    return SYSTEM_RANGE_START[is64]


def read_kdbg(memory: Memory, address: int | None, keys: KdbgKeys | None = None, *, is64: bool = True) -> Kdbg | None:
    """The KDBG at `address` if it is readable and carries its tag and a plausible size (decoded
    with `keys` when it is stored encoded), else None. `is64`: the target's pointer size."""
    if not address:
        return None
    try:
        head = memory.read(address, HEADER_SIZE)
    except MemoryNotPresent:
        return None
    size = _valid_header(head)
    if size is not None:
        try:
            return Kdbg(address, size, memory.read(address, size), is64=is64)
        except MemoryNotPresent:
            return None
    if keys is None:
        return None
    size = _valid_header(decode_block(head, keys))
    if size is None:
        return None
    try:
        raw = memory.read(address, (size + 7) & ~7)
    except MemoryNotPresent:
        return None
    return Kdbg(address, size, decode_block(raw, keys)[:size], encoded=True, is64=is64)


def is_encoded(memory: Memory, address: int | None) -> bool:
    """A block is there (readable) but its header is not a plain KDBG header."""
    if not address:
        return False
    try:
        return _valid_header(memory.read(address, HEADER_SIZE)) is None
    except MemoryNotPresent:
        return False


def keys_from_symbols(resolve: Callable[[str], int | None], memory: Memory) -> KdbgKeys | None:
    """The decoding keys from the kernel's symbols (a PDB): nt!KiWaitNever, nt!KiWaitAlways and
    the address of nt!KdpDataBlockEncoded; None when any is missing or unreadable."""
    never_at, always_at, flag_at = (resolve(f"nt!{n}") for n in ("KiWaitNever", "KiWaitAlways",
                                                                    "KdpDataBlockEncoded"))
    if not (never_at and always_at and flag_at):
        return None
    try:
        never = int.from_bytes(memory.read(never_at, 8), "little")
        always = int.from_bytes(memory.read(always_at, 8), "little")
        flag = memory.read(flag_at, 1)[0]
    except MemoryNotPresent:
        return None
    return KdbgKeys(never, always, flag_at, flag)


class KdbgSource:
    """The dump's KDBG, read once in plain form; decoded on first request when Windows left it
    encoded (formats.md §10.1), with keys looked up through `resolve` (nt's PDB). The plain
    block, or its absence, serves everything that must not load symbols (the module list)."""

    def __init__(self, memory: Any, address: int | None, is64: bool):
        self._memory = memory
        self.address = address
        self.is64 = is64
        self.plain = read_kdbg(memory, address, is64=is64) if memory is not None else None
        self.encoded = memory is not None and self.plain is None and is_encoded(memory, address)
        self._decoded: Kdbg | None = None
        self._tried = False

    def block(self, resolve: Callable[[str], int | None]) -> Kdbg | None:
        """The plain block, else the decoded one (None when the keys cannot be found)."""
        if not self.encoded:
            return self.plain
        if not self._tried:
            self._tried = True
            keys = keys_from_symbols(resolve, self._memory)
            self._decoded = read_kdbg(self._memory, self.address, keys, is64=self.is64) if keys else None
        return self._decoded
