"""!analyze's pool facts: the region of a READ/WRITE_ADDRESS, and for the pool bug checks (0xC2
BAD_POOL_CALLER, 0x19 BAD_POOL_HEADER, 0x13A KERNEL_MODE_HEAP_CORRUPTION) the pool block a
parameter points into, with its tag and owner (kdshell.kernel.pool, kdshell/data/pooltags.txt).

    region_suffix(session, address)  -> " Nonpaged pool" or ""
    pool_fields(session, analysis)   -> [("POOL_ADDRESS", "ffff... Nonpaged pool"), ("POOL_BLOCK", ...), ...]

Which parameter: the first of P2, P3, P4, P1 that lies in a pool block kdshell can find (0xC2
subtype 7 names the freed address in P4, 0x19 subtype 0x20 the scanned entry in P2, 0x13A the
corrupted entry in P3). A segment-heap block whose VS chunk header does not decode (0x13A) adds
CORRUPTED_HEADER with the block that ends where that header starts. A small dump keeps no pool
pages: the field says so instead.
"""
from __future__ import annotations

from kdshell.errors import KdError
from kdshell.kernel.pool import KernelPool, PoolBlock, tag_owner
from kdshell.view import SessionView

POOL_CODES = (0xC2, 0x19, 0x13A)
BAD_POOL_CALLER_DOUBLE_FREE = (0x6, 0x7)  # 0xC2 subtypes that free an already freed block


def _pool(session: SessionView) -> KernelPool | None:
    k = session.kernel
    if session.memory is None:
        return None
    try:
        return KernelPool(k.memory, k.offsets, k.is64, k.symbol, k.kdbg_value)
    except KdError:
        return None


def region_suffix(session: SessionView, address: int) -> str:
    pool = _pool(session)
    if pool is None:
        return ""
    try:
        region = pool.region(address)
    except KdError:
        return ""
    return f" {region}" if region else ""


def _find(pool: KernelPool, address: int) -> PoolBlock | None:
    try:
        return pool.find(address)
    except KdError:
        return None


def _corrupted(pool: KernelPool, block: PoolBlock) -> str:
    """A segment-heap block whose VS chunk header does not decode, and the block that ends where the
    header starts (the one most likely to have written past its end)."""
    chunk = block.chunk or 0
    text = f"{chunk:x} (the VS chunk header in front of {block.address:x} does not decode with the heap key)"
    try:
        walk = pool.walk_page(chunk - 1)
    except KdError:
        return text
    before = next((b for b in walk.blocks if b.address + b.size == chunk), None)
    if before is not None:
        state = "Allocated" if before.allocated else "Free"
        text += f"; the block before it: {before.address:x} size: {before.size:x} ({state}) tag {before.tag_text}"
    return text


def pool_fields(session: SessionView, code: int, params: tuple[int, ...] | list[int]) -> list[tuple[str, str]]:
    if code not in POOL_CODES or len(params) < 4:
        return []
    pool = _pool(session)
    if pool is None:
        return []
    try:
        start = session.kernel.system_range_start()
    except KdError:
        start = 0x8000_0000_0000_0000 if session.is64 else 0x8000_0000
    mask = pool.reader.mask
    candidates = [params[i] & mask for i in (1, 2, 3, 0) if params[i] & mask >= start]
    for address in candidates:
        block = _find(pool, address)
        if block is None:
            continue
        region = region_suffix(session, address)
        owner = tag_owner(block.tag_text)
        whose = f" ({owner[1]}, {owner[0]})" if owner else ""
        state = "Allocated" if block.allocated else "Free"
        size = f"size is {block.size:#x} bytes" if block.big else f"size: {block.size:x}"
        kind = "large page allocation, " if block.big else ""
        fields = [("POOL_ADDRESS", f"{address:x}{region}"),
                  ("POOL_BLOCK", f"{block.address:x} {kind}{size} ({state}) tag {block.tag_text}{whose}")]
        if block.corrupt and block.chunk is not None:
            fields.append(("CORRUPTED_HEADER", _corrupted(pool, block)))
        if not block.allocated or (code == 0xC2 and params[0] in BAD_POOL_CALLER_DOUBLE_FREE):
            fields.append(("FREED_POOL_TAG", block.tag_text))
        return fields
    if candidates and session.kernel.small:
        return [("POOL_ADDRESS", f"{candidates[0]:x} (its pool block is not in a small memory dump; a kernel "
                                 "or complete memory dump has it)")]
    return []
