"""Pool extensions: !pool, !poolused, !poolfind, !vm (kdexts' layout).

Thin: parse WinDbg's syntax, read the pool through kdshell.kernel.pool, print what public
transcripts show:
- !pool: `Pool page ADDR region is Nonpaged pool`, then one line per block of the page,
  ` ADDR size: %4x previous size: %4x  (Allocated)  Tag` with `*` before the address and the tag of
  the block that holds ADDR, and under it `\t\tPooltag Tag : description, Binary : owner` from
  kdshell/data/pooltags.txt. A big-page block: `*ADDR : large page allocation, tag is Tag, size is
  0x... bytes`. Flag 2: only the block holding ADDR; flag 1: each block's first 0x20 bytes as
  quadwords after its line. On a segment-heap kernel (19H1+) the blocks are those of the LFH or VS
  subsegment that touch the page (kdshell.kernel.segheap), in the same layout, PreviousSize 0,
  free or allocated by the heap's own state, and a line for a chunk header that does not decode.
- !poolused [flags [tag]]: PoolTrackTable per tag, outstanding allocations and bytes in use for
  nonpaged and paged pool; flag 1 adds Frees/Diff, 2 sorts by nonpaged bytes, 4 by paged bytes
  (largest first), else by tag; the tag may hold * and ? wildcards.
- !poolfind Tag [0 nonpaged | 1 paged]: the big-page table, then every small-pool page of the
  kernel's nonpaged range (MmNonPagedPoolStart..End), or every LFH and VS subsegment of a segment
  heap, one `ADDR : tag Tag, size 0x..., Nonpaged pool` line per block, `(Free)` after the tag of
  a freed one.
- !vm: the memory-usage lines kdshell can compute: physical memory (MmNumberOfPhysicalPages), pool
  in use by tag (sums of PoolTrackTable's bytes), nonpaged pool pages the kernel counts
  (MmAllocatedNonPagedPool); the page-file and commit lines need MiState/MmTotalCommittedPages,
  which kdshell does not read yet: one line says so.
A small memory dump keeps no pool pages and no tag table: each command prints one line saying so
and that kernel, active and complete dumps have them.
"""
from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from kdshell.dispatch import Invocation, command, needs_memory
from kdshell.errors import CommandError, KdError, MemoryNotPresent
from kdshell.expr import Evaluator
from kdshell.kernel.pool import PAGE, KernelPool, PoolBlock, PoolError, TagUse, block_region, tag_owner, tag_value

if TYPE_CHECKING:
    from kdshell.session import Session

SMALL = "a small memory dump keeps no {what}; a kernel, active or complete memory dump has them"


def kernel_pool(session: Session) -> KernelPool:
    k = session.kernel
    return KernelPool(k.memory, k.offsets, k.is64, k.symbol, k.kdbg_value)


def _small(session: Session, name: str, what: str) -> None:
    """One line instead of a search through absent pages, on a small dump."""
    if session.kernel.small:
        raise KdError(f"{name}: {SMALL.format(what=what)}")


def _p(value: int, is64: bool) -> str:
    return f"{value:016x}" if is64 else f"{value:08x}"


def owner_line(tag: str) -> str:
    """The line !pool prints under the block it was asked about."""
    known = tag_owner(tag)
    if known is None:
        return f"\t\tOwning component : Unknown (tag {tag!r} is not in kdshell's pool tag list)"
    owner, what = known
    return f"\t\tPooltag {tag.ljust(4)[:4]} : {what}, Binary : {owner}"


def block_line(block: PoolBlock, star: bool, is64: bool) -> str:
    mark = "*" if star else " "
    if block.big:
        state = " (Free)" if block.freed else ""
        return f"{mark}{_p(block.address, is64)} : large page allocation{state}, tag is {block.tag_text}, " \
               f"size is {block.size:#x} bytes"
    state = "(Allocated)" if block.allocated else "(Free)     "
    return (f"{mark}{_p(block.address, is64)} size: {block.size:4x} previous size: {block.previous_size:4x}  "
            f"{state} {mark}{block.tag_text}")


def _region(pool: KernelPool, address: int) -> str:
    return pool.region(address) or "Unknown"


# -- !pool ---------------------------------------------------------------------------------------
@command("!pool", family="kernel", needs=(needs_memory,), syntax="!pool Address [Flags]",
         summary="Show the pool block that holds an address, with the other blocks of its page",
         example="!pool @rcx",
         details="The block holding Address is marked with *. Flags: 1 adds each block's first bytes, "
                 "2 shows only the block holding Address. Big (page-sized) blocks come from nt!PoolBigPageTable; "
                 "on a segment-heap kernel (19H1+) the page's blocks come from its LFH or VS subsegment, decoded "
                 "with nt!RtlpHpHeapGlobals' keys.")
def pool_(session: Session, inv: Invocation) -> None:
    if not inv.args:
        raise CommandError("!pool: give an address (!pool Address [Flags])")
    ev = Evaluator(session)
    try:
        address = ev.evaluate(inv.args[0])
        flags = ev.evaluate(inv.args[1]) if len(inv.args) > 1 else 0
    except KdError as e:
        raise CommandError(f"!pool: {e}") from None
    session.out.lines(pool_lines(session, address, flags))


def pool_lines(session: Session, address: int, flags: int = 0) -> list[str]:
    pool = kernel_pool(session)
    is64 = session.kernel.is64
    address &= pool.reader.mask
    page = address & ~(PAGE - 1)
    out = [f"Pool page {_p(address, is64)} region is {_region(pool, address)}"]
    try:
        big = pool.find_big(address)
    except PoolError:
        big = None
    if big is not None:
        return out + [block_line(big, True, is64), owner_line(big.tag_text)]
    walk = pool.walk_page(address)
    if session.kernel.small and not any(b.contains(address) for b in walk.blocks):
        # the few pages a small dump keeps (stacks, code) are not pool: one line, not a failed walk
        raise KdError(f"!pool: {SMALL.format(what='pool pages')}")
    if not walk.blocks and walk.problem and walk.problem.endswith("is not in the dump"):
        return out + [f"{_p(page, is64)}: Unable to get contents of pool block (the page is not in the dump)"]
    for block in walk.blocks:
        star = block.contains(address)
        if flags & 2 and not star:
            continue
        out.append(block_line(block, star, is64))
        if flags & 1:
            out += _raw_lines(pool, block.address, is64)
        if star:
            out.append(owner_line(block.tag_text))
    if walk.problem:
        out.append(walk.problem)
        if not any(b.contains(address) for b in walk.blocks):
            out.append(f"{_p(address, is64)} is not in a pool block kdshell can find (no big-page entry holds it)")
    return out


def _raw_lines(pool: KernelPool, address: int, is64: bool) -> list[str]:
    out = []
    for row in range(2):
        at = address + 0x10 * row
        try:
            q = [pool.reader.uint(at + 8 * i, 8) for i in range(2)]
            out.append(f"    {_p(at, is64)}  {q[0]:016x} {q[1]:016x}")
        except MemoryNotPresent:
            out.append(f"    {_p(at, is64)}  ????????????????")
    return out


# -- !poolused -----------------------------------------------------------------------------------
@command("!poolused", family="kernel", needs=(needs_memory,),
         syntax="!poolused [Flags [Tag]]",
         summary="Show pool use per tag (nt!PoolTrackTable): allocations and bytes, nonpaged and paged",
         example="!poolused 2",
         details="Flags: 1 adds frees and differences; 2 sorts by nonpaged bytes, 4 by paged bytes (largest "
                 "first); otherwise by tag. Tag may hold * and ? wildcards.")
def poolused_(session: Session, inv: Invocation) -> None:
    _small(session, "!poolused", "pool tag table (nt!PoolTrackTable)")
    try:
        flags = Evaluator(session).evaluate(inv.args[0]) if inv.args else 0
    except KdError as e:
        raise CommandError(f"!poolused: {e}") from None
    pattern = inv.args[1] if len(inv.args) > 1 else None
    try:
        uses = kernel_pool(session).tracker()
    except PoolError as e:
        raise KdError(f"!poolused: {e}") from None
    session.out.lines(poolused_lines(uses, flags, pattern))


def poolused_lines(uses: list[TagUse], flags: int = 0, pattern: str | None = None) -> list[str]:
    if pattern:
        uses = [u for u in uses if fnmatch.fnmatchcase(u.tag_text.rstrip(), pattern) or
                fnmatch.fnmatchcase(u.tag_text, pattern)]
    if flags & 2:
        uses = sorted(uses, key=lambda u: (-u.nonpaged_bytes, u.tag_text))
        by = "NonPaged Pool Consumed"
    elif flags & 4:
        uses = sorted(uses, key=lambda u: (-u.paged_bytes, u.tag_text))
        by = "Paged Pool Consumed"
    else:
        uses = sorted(uses, key=lambda u: u.tag_text)
        by = "Tag"
    verbose = bool(flags & 1)
    out = [f" Sorting by {by}", ""]
    if verbose:
        out += ["                            NonPaged                                         Paged",
                " Tag       Allocs       Frees      Diff         Used       Allocs       Frees      Diff         Used",
                ""]
    else:
        out += ["                NonPaged                  Paged",
                " Tag     Allocs         Used     Allocs         Used", ""]
    for u in uses:
        owner = tag_owner(u.tag_text)
        text = f"{owner[1]}, Binary: {owner[0]}" if owner else f"UNKNOWN pooltag '{u.tag_text}'"
        if verbose:
            row = (f" {u.tag_text} {u.nonpaged_allocs:10d} {u.nonpaged_frees:11d} {u.nonpaged_used:9d} "
                   f"{u.nonpaged_bytes:12d} {u.paged_allocs:12d} {u.paged_frees:11d} {u.paged_used:9d} {u.paged_bytes:12d}")
        else:
            row = f" {u.tag_text} {u.nonpaged_used:8d} {u.nonpaged_bytes:12d} {u.paged_used:10d} {u.paged_bytes:12d}"
        out.append(f"{row}\t{text}")
    np_used, np_bytes = sum(u.nonpaged_used for u in uses), sum(u.nonpaged_bytes for u in uses)
    p_used, p_bytes = sum(u.paged_used for u in uses), sum(u.paged_bytes for u in uses)
    if verbose:
        out.append(f" TOTAL {sum(u.nonpaged_allocs for u in uses):10d} {sum(u.nonpaged_frees for u in uses):11d} "
                   f"{np_used:9d} {np_bytes:12d} {sum(u.paged_allocs for u in uses):12d} "
                   f"{sum(u.paged_frees for u in uses):11d} {p_used:9d} {p_bytes:12d}")
    else:
        out.append(f" TOTAL{np_used:8d} {np_bytes:12d} {p_used:10d} {p_bytes:12d}")
    return out


# -- !poolfind -----------------------------------------------------------------------------------
@command("!poolfind", family="kernel", needs=(needs_memory,),
         syntax="!poolfind Tag [PoolType]",
         summary="Find the pool blocks with a tag: the big-page table, then the small-pool pages",
         example="!poolfind MyDr",
         details="PoolType: 0 nonpaged (the default), 1 paged. Small blocks are searched in the segment heap's "
                 "LFH and VS subsegments (19H1+), else in the kernel's nonpaged range "
                 "(MmNonPagedPoolStart..MmNonPagedPoolEnd) when the kernel keeps one.")
def poolfind_(session: Session, inv: Invocation) -> None:
    if not inv.args:
        raise CommandError("!poolfind: give a tag (!poolfind Tag [PoolType])")
    _small(session, "!poolfind", "pool pages")
    text = inv.args[0]
    if text.lower().startswith("0x") and len(text) > 6:
        value = int(text, 16)
    else:
        value = tag_value(text)
    session.out.lines(poolfind_lines(session, value))


def poolfind_lines(session: Session, tag: int) -> list[str]:
    pool = kernel_pool(session)
    is64 = session.kernel.is64
    text = PoolBlock(0, 0, tag, 0).tag_text
    out = [f"Scanning large pool allocation table for tag {tag:#x} ({text})", ""]
    try:
        for b in pool.big_pages():
            if b.tag & 0x7FFFFFFF == tag & 0x7FFFFFFF:
                out.append(_found(b, _region(pool, b.address), is64))
    except PoolError as e:
        out.append(str(e))
    scope = pool.small_scope()
    out.append("")
    if scope is None:
        out.append(NO_SMALL_SCOPE if not pool.heap_error else f"{pool.heap_error}: only the large pool table was "
                   "searched")
        return out
    out += [f"Searching {scope} for tag {tag:#x} ({text})", ""]
    blocks, note = pool.scan_small(lambda b: b.tag & 0x7FFFFFFF == tag & 0x7FFFFFFF)
    out += [_found(b, _block_region(b), is64, pool.header.size) for b in blocks]
    if note:
        out.append(note)
    return out


NO_SMALL_SCOPE = ("The kernel keeps no nonpaged pool range (nt!MmNonPagedPoolStart/End): only the large pool "
                  "table was searched")


def _block_region(b: PoolBlock) -> str:
    """Classic small blocks come from the nonpaged range; a segment heap's say by their pool type."""
    return block_region(b) if b.kind in ("lfh", "vs") and b.pool_type else "Nonpaged pool"


def _found(b: PoolBlock, region: str, is64: bool, header: int = 0) -> str:
    free = " (Free)" if not b.allocated else ""
    return f"{_p(b.address, is64)} : tag {b.tag_text}{free}, size {b.size - header:#10x}, {region}"


# -- !vm -----------------------------------------------------------------------------------------
def _vm_row(label: str, pages: int) -> str:
    return f"{label}{pages:>{max(33 - len(label), 1)}} ({pages * 4:>11} Kb)"


@command("!vm", family="kernel", needs=(needs_memory,), syntax="!vm [Flags]",
         summary="Show memory use: physical memory and pool in use",
         example="!vm",
         details="Physical memory from nt!MmNumberOfPhysicalPages, pool in use from the pool tag table's "
                 "bytes, nonpaged pool pages from nt!MmAllocatedNonPagedPool.")
def vm_(session: Session, inv: Invocation) -> None:
    _small(session, "!vm", "memory manager counters or pool tag table")
    session.out.lines(vm_lines(session))


def vm_lines(session: Session) -> list[str]:
    pool = kernel_pool(session)
    out = ["", "*** Virtual Memory Usage ***", ""]
    physical = pool.variable("MmNumberOfPhysicalPages")
    if physical is not None:
        out.append(_vm_row("Physical Memory:", physical))
    try:
        uses = pool.tracker()
    except KdError as e:
        uses = []
        out.append(f"Pool usage: {e}")
    if uses:
        out.append(_vm_row("NonPagedPool Usage:", -(-sum(u.nonpaged_bytes for u in uses) // PAGE)))
        out.append(_vm_row("PagedPool Usage:", -(-sum(u.paged_bytes for u in uses) // PAGE)))
    allocated = pool.allocated_pages()
    if allocated is not None:
        out.append(_vm_row("NonPagedPool Pages:", allocated))
    out.append("Page file, available, commit and system PTE lines: kdshell does not read the memory manager's "
               "state (MiState, MmTotalCommittedPages) yet")
    return out
