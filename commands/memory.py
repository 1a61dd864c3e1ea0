"""Reading memory: d* (db dw dd dq dp dc da du dps dqs dds dyb d), !db/!dc/!dd/!dq/!dw,
s, !vtop, !pte, r, u/ub, ?, .formats, n.

Thin: parse with the expression evaluator, read through session.memory (which is one interface
over page tables and a small dump's saved ranges), print WinDbg's columns. Holes print as `??`
(`????????` per dword); a page the dump left out also prints WinDbg's
`Page 24d116 not present in the dump file. Type ".hh dbgerr004" for details` (once per page,
unless .ignore_missing_pages 1).
"""
from __future__ import annotations

import math
import struct
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

from kdshell.disasm import for_machine, symbol_text
from kdshell.dispatch import CommandFunc, Invocation, command, needs_memory, needs_physical
from kdshell.progress import Progress
from kdshell.errors import CommandError, KdError, MemoryNotPresent
from kdshell.expr import Evaluator, ExprError, Registers, is_settable_pseudo, pseudo_register, signed
from kdshell.dumpfile.header import MACHINE_ARM64
from kdshell.format import ptr, session_time
from kdshell.memory import pte as P
from kdshell.memory import search as S
from kdshell.memory.paging import Level, Paging, PagingMode, SelfMap
from kdshell.memory.virtual import TranslatedMemory, VirtualMemory
from kdshell.stack.text import context_lines

if TYPE_CHECKING:
    from kdshell.session import Session


class Readable(Protocol):
    """What d* reads: virtual memory, or (/p and the !d* forms) physical memory."""

    def read_partial(self, address: int, size: int) -> tuple[bytes, bytearray, list[MemoryNotPresent]]: ...


AddressText = Callable[[int], str]
# a d* format: (unit size, default count in units, units per line, kind)
Format = tuple[int, int, int, str]


def _continued(session: Session, key: str) -> dict[str, Any]:
    """Where the last d* ("d"), physical d* ("p") or u ("u") stopped: {"next": address, ...}, or {}."""
    state = session.continuation.get(key, {})
    return state if isinstance(state, dict) else {}


def _chars(data: bytes, valid: bytearray) -> str:
    return "".join(
        ("?" if not valid[i] else chr(b) if 0x20 <= b < 0x7F else ".") for i, b in enumerate(data)
    )


# -- d* -----------------------------------------------------------------------------------------
FORMATS: dict[str, Format] = {
    "db": (1, 0x80, 16, "bytes"), "dw": (2, 0x40, 8, "num"), "dd": (4, 0x20, 4, "num"),
    "dq": (8, 0x10, 2, "num"), "dc": (4, 0x20, 4, "chars"), "dyb": (1, 0x20, 4, "binary"),
    "da": (1, 0x100, 48, "ascii"), "du": (2, 0x100, 48, "unicode"),
    "dds": (4, 0x20, 1, "symbols"), "dqs": (8, 0x10, 1, "symbols"),
}


def _format_for(name: str, is64: bool) -> tuple[str, Format]:
    if name == "dp":
        name = "dq" if is64 else "dd"
    elif name == "dps":
        name = "dqs" if is64 else "dds"
    return name, FORMATS[name]


def _options(inv_text: str) -> tuple[dict[str, int], str]:
    """Leading `/c N` and `/p` options of a d* command; the rest is the range."""
    opts: dict[str, int] = {}  # "columns": N, "physical": True
    text = inv_text.strip()
    while text.startswith("/"):
        word, _, rest = text.partition(" ")
        if word.lower().startswith("/c"):
            width = word[2:]
            if not width:
                width, _, rest = rest.strip().partition(" ")
            try:
                opts["columns"] = int(width, 16)
            except ValueError:
                raise CommandError(f"Bad column count '{width}'") from None
            if not 0 < opts["columns"] <= 0x100:
                raise CommandError(f"Bad column count '{width}'")
        elif word.lower().startswith("/p"):
            opts["physical"] = True
        else:
            raise CommandError(f"Unknown option '{word}'")
        text = rest.strip()
    return opts, text


def display(session: Session, name: str, text: str, *, physical: bool = False) -> None:
    """One d* command (also the physical !d* forms, which prefix `#`)."""
    opts, text = _options(text)
    physical = physical or bool(opts.get("physical"))
    is64 = session.is64
    _, (unit, default_count, per_line, kind) = _format_for(name, is64)
    if "columns" in opts and kind not in ("ascii", "unicode"):
        per_line = opts["columns"]
    ev = Evaluator(session)
    rng, pos = ev.parse_range(text, unit)
    if pos < len(text.rstrip()):
        raise CommandError(f"^ Extra character error in '{name} {text}'")
    state = _continued(session, "p" if physical else "d")
    start = rng.start if rng is not None and rng.start is not None else state.get("next")
    if start is None:
        start = 0 if physical else Registers(session.registers, is64).ip
    count = rng.count if rng is not None and rng.count is not None else default_count
    memory: Readable | None = session.physical_memory if physical else session.memory
    if memory is None:
        needs_physical(session) if physical else needs_memory(session)
    assert memory is not None  # the guard raised
    mask = 0xFFFF_FFFF_FFFF_FFFF if is64 or physical else 0xFFFFFFFF
    start &= mask
    addr_text = (lambda a: f"#{a:8x}") if physical else (lambda a: ptr(a, is64))
    if kind in ("ascii", "unicode"):
        lines, end = _strings(session, memory, start, count, unit, addr_text)
        session.out.lines(lines)
    else:
        # In blocks of whole lines, so `L?` ranges stream instead of being read whole.
        block = max(1, 0x10000 // (unit * per_line)) * unit * per_line
        total = count * unit
        for off in range(0, total, block):
            at = (start + off) & mask
            data, valid, errors = memory.read_partial(at, min(block, total - off))
            session.report_missing(errors)
            if kind == "binary" and off:
                data_lines = _rows(session, kind, unit, per_line, at, data, valid, addr_text, is64, physical)[2:]
            else:
                data_lines = _rows(session, kind, unit, per_line, at, data, valid, addr_text, is64, physical)
            session.out.lines(data_lines)
            if off == 0:
                first = next((i for i in range(0, len(data), unit) if valid[i]), None)
                if first is not None:
                    session.pseudo_registers["$p"] = int.from_bytes(data[first : first + unit], "little")
        end = start + total
    session.continuation["p" if physical else "d"] = {"next": end & mask, "name": name}
    if physical and not opts.get("physical"):
        again = "!" + name  # !db and friends
    else:
        again = name + (" /p" if physical else "")
    session.repeat = again + (f" L{count:x}" if rng is not None and rng.count is not None else "")


def _cell(data: bytes, valid: bytearray, i: int, unit: int) -> str:
    if not all(valid[i : i + unit]) or i + unit > len(data):
        if unit == 8:
            return "????????`????????"
        return "?" * (unit * 2)
    value = int.from_bytes(data[i : i + unit], "little")
    if unit == 8:
        return ptr(value)
    return f"{value:0{unit * 2}x}"


def _rows(session: Session, kind: str, unit: int, per_line: int, start: int, data: bytes, valid: bytearray,
          addr_text: AddressText, is64: bool, physical: bool) -> list[str]:
    lines: list[str] = []
    step = unit * per_line
    sep = " " if physical else "  "
    for off in range(0, len(data), step):
        chunk = range(off, min(off + step, len(data)), unit)
        head = addr_text(start + off) + sep
        if kind == "bytes":
            byte_cells = []
            for j, i in enumerate(chunk):
                byte_cells.append(("-" if j == 8 and per_line == 16 else " " if j else "") +
                                  ("??" if not valid[i] else f"{data[i]:02x}"))
            hexpart = "".join(byte_cells).ljust(per_line * 3 - 1)
            lines.append(head + hexpart + sep + _chars(data[off : off + step], valid[off : off + step]))
        elif kind == "binary":
            cells = " ".join("????????" if not valid[i] else f"{data[i]:08b}" for i in chunk)
            hexes = " ".join("??" if not valid[i] else f"{data[i]:02x}" for i in chunk)
            lines.append(head + cells.ljust(per_line * 9 - 1) + "  " + hexes)
        elif kind == "symbols":
            i = off
            cell = _cell(data, valid, i, unit)
            line = head + cell
            if "?" not in cell:
                sym = session.symbolize(int.from_bytes(data[i : i + unit], "little"))
                if sym is not None:
                    line += " " + symbol_text(*sym)
            lines.append(line)
        else:
            cells = " ".join(_cell(data, valid, i, unit) for i in chunk)
            if kind == "chars":
                width = per_line * (unit * 2 + 1) - 1
                lines.append(head + cells.ljust(width) + sep + _chars(data[off : off + step], valid[off : off + step]))
            else:
                lines.append(head + cells)
    if kind == "binary" and lines:
        pad = " " * (len(addr_text(start)) + 2)
        header = " ".join(["76543210"] * min(per_line, len(data)))
        lines[:0] = [pad + header, pad + " ".join(["--------"] * min(per_line, len(data)))]
    return lines


def _strings(session: Session, memory: Readable, start: int, count: int, unit: int,
             addr_text: AddressText) -> tuple[list[str], int]:
    """da/du: up to the first NUL or `count` characters, 48 to a line, in quotes."""
    chars: list[str] = []
    end = start
    unreadable = done = False
    for off in range(0, count * unit, 0x1000):
        data, valid, errors = memory.read_partial(start + off, min(0x1000, count * unit - off))
        session.report_missing(errors)
        for i in range(0, len(data) - unit + 1, unit):
            if not all(valid[i : i + unit]):
                unreadable = done = True
                break
            c = int.from_bytes(data[i : i + unit], "little")
            end = start + off + i + unit
            if c == 0:
                done = True
                break
            chars.append(chr(c) if 0x20 <= c < 0x7F else ".")
        if done:
            break
    if not chars and unreadable:
        return [f'{addr_text(start)}  "{"?" * min(48, count)}"'], start + min(48, count) * unit
    lines = []
    for i in range(0, max(len(chars), 1), 48):
        lines.append(f'{addr_text(start + i * unit)}  "{"".join(chars[i : i + 48])}"')
    return lines, end


def _register_display(name: str, summary: str) -> CommandFunc:
    @command(name, family="memory", syntax=f"{name} [/c Columns] [Address [L Count | L?Count | EndAddress]]",
             summary=summary, needs=(needs_memory,),
             example=f"{name} @rsp L8" if name != "da" else "da @rcx")
    def cmd(session: Session, inv: Invocation) -> None:
        display(session, inv.name.lower(), inv.text)

    return cmd


for _name, _summary in (
    ("db", "Display bytes and their ASCII characters"),
    ("dw", "Display words (2 bytes)"),
    ("dd", "Display double words (4 bytes)"),
    ("dq", "Display quad words (8 bytes)"),
    ("dp", "Display pointer-sized values"),
    ("dc", "Display double words and their ASCII characters"),
    ("da", "Display an ASCII string"),
    ("du", "Display a Unicode (UTF-16) string"),
    ("dps", "Display pointers and the symbols they point at"),
    ("dqs", "Display quad words and the symbols they point at"),
    ("dds", "Display double words and the symbols they point at"),
    ("dyb", "Display bytes in binary"),
):
    _register_display(_name, _summary)


@command("d", family="memory", syntax="d [Address [L Count]]", needs=(needs_memory,),
         summary="Display memory in the format of the last d* command (db at first)")
def d_(session: Session, inv: Invocation) -> None:
    last = _continued(session, "d").get("name", "db")
    display(session, last, inv.text)


def _register_physical(name: str, summary: str) -> CommandFunc:
    @command("!" + name, family="memory", syntax=f"!{name} [PhysicalAddress] [L Size]", summary=summary,
             needs=(needs_physical,), example=f"!{name} 1ad000")
    def cmd(session: Session, inv: Invocation) -> None:
        text = inv.text.strip()
        if text.startswith("["):  # caching attribute ([c], [uc], [wc]): meaningless in a dump
            text = text.partition("]")[2].strip()
        if text.startswith("-m"):
            text = text[2:].strip()
        _physical_display(session, name, text)

    return cmd


def _physical_display(session: Session, name: str, text: str) -> None:
    ev = Evaluator(session)
    unit = {"db": 1, "dc": 4, "dd": 4, "dq": 8, "dw": 2}[name]
    rng, _ = ev.parse_range(text, unit)
    start = rng.start if rng is not None and rng.start is not None else _continued(session, "p").get("next", 0)
    memory: Readable | None = session.physical_memory
    assert memory is not None  # !d* needs physical memory (its guard)
    data, valid, errors = memory.read_partial(start, unit)
    if not valid[0]:
        session.report_missing(errors)
        raise KdError(f"physical memory read at {start:x} failed")
    display(session, name, text, physical=True)


for _name, _what in (("db", "bytes and ASCII"), ("dc", "double words and ASCII"), ("dd", "double words"),
                     ("dq", "quad words"), ("dw", "words")):
    _register_physical(_name, f"Display physical memory: {_what}")


# -- s ------------------------------------------------------------------------------------------
_SEARCH_UNITS = {"b": 1, "w": 2, "d": 4, "q": 8, "a": 1, "u": 2}


@command("s", family="memory", syntax='s [-[1]b|w|d|q|a|u|sa|su] Range Pattern', needs=(needs_memory,),
         summary="Search memory for bytes, words, dwords, qwords or a string",
         example='s -a @rsp L1000 "KDBG"',
         details="The range needs L? above 256 MB. Unreadable pages are skipped. -1 prints only\n"
                 "addresses; -sa/-su list every printable string of 3 or more characters.")
def search(session: Session, inv: Invocation) -> None:
    text = inv.text.strip()
    kind, only_address = "b", False
    if text.startswith("-"):
        flag, _, text = text.partition(" ")
        flag = flag[1:].lower()
        if flag.startswith("["):
            inner, _, flag = flag[1:].partition("]")
            only_address = "1" in inner
        if flag.startswith("1"):
            only_address, flag = True, flag[1:]
        kind = flag or "b"
        if kind not in _SEARCH_UNITS and kind not in ("sa", "su"):
            raise CommandError(f"^ Syntax error in 's {inv.text}': unknown search type '-{flag}'")
    unit = _SEARCH_UNITS.get(kind, 1 if kind == "sa" else 2)
    ev = Evaluator(session)
    rng, pos = ev.parse_range(text, 1)
    if rng is None or rng.start is None or rng.count is None:
        raise CommandError("Usage: s [-b|w|d|q|a|u] Address L Length Pattern")
    pattern_text = text[pos:].strip()
    memory = session.memory
    assert memory is not None  # s needs memory (its guard)
    if kind in ("sa", "su"):
        _strings_search(session, memory, rng.start, rng.count, unit)
        return
    pattern = _pattern(ev, kind, unit, pattern_text)
    progress = Progress(session.progress, "Searching", rng.count)
    try:
        _report_hits(session, memory, kind, unit, only_address,
                     S.find(memory, rng.start, rng.count, pattern, unit if kind in ("w", "d", "q") else 1,
                                 progress.update))
    finally:
        progress.done()


def _report_hits(session: Session, memory: VirtualMemory, kind: str, unit: int, only_address: bool,
                 hits: Iterable[int]) -> None:
    is64 = session.is64
    for address in hits:
        if only_address:
            session.out.line("0x" + ptr(address, is64))
            continue
        fmt = {"b": "db", "a": "db", "u": "db", "w": "dw", "d": "dd", "q": "dq"}[kind]
        fmt_name, (u, _, per_line, k) = _format_for(fmt, is64)
        data, valid, _ = memory.read_partial(address, u * per_line)
        session.out.lines(_rows(session, k, u, per_line, address, data, valid, lambda a: ptr(a, is64), is64, False))


def _pattern(ev: Evaluator, kind: str, unit: int, text: str) -> bytes:
    if not text:
        raise CommandError("s needs a pattern to search for")
    if kind in ("a", "u"):
        if text.startswith('"') and text.endswith('"') and len(text) >= 2:
            text = text[1:-1]
        return text.encode("latin-1", "replace") if kind == "a" else text.encode("utf-16-le")
    out = bytearray()
    for word in text.split():
        if word.startswith('"'):
            out += word.strip('"').encode("latin-1", "replace")
            continue
        value = ev.evaluate(word)
        out += (value & ((1 << (8 * unit)) - 1)).to_bytes(unit, "little")
    return bytes(out)


def _strings_search(session: Session, memory: VirtualMemory, start: int, length: int, unit: int) -> None:
    is64 = session.is64
    for at, text in S.strings(memory, start, length, unit):
        session.out.line(f'{ptr(at, is64)}  "{text}"')


# -- !vtop and !pte ------------------------------------------------------------------------------
def _page_tables(session: Session) -> TranslatedMemory | None:
    """The current address space when the dump's own memory is translated through page tables
    (session.memory may put image files in front of it; they have none)."""
    m = session.raw_memory
    return m if isinstance(m, TranslatedMemory) else None


def _translated(session: Session) -> TranslatedMemory:
    m = _page_tables(session)
    if m is None:
        raise KdError("This dump has no page tables: a small memory dump keeps only saved virtual ranges")
    return m


@command("!vtop", family="memory", syntax="!vtop DirBase|PFN|0 VirtualAddress", needs=(needs_memory,),
         summary="Translate a virtual address step by step through the page tables",
         example="!vtop 0 @rsp", details="0 uses the current address space's DirBase.")
def vtop(session: Session, inv: Invocation) -> None:
    ev = Evaluator(session)
    if len(inv.args) != 2:
        raise CommandError("Usage: !vtop DirBase VirtualAddress (DirBase 0 = current)")
    base = ev.evaluate(inv.args[0])
    va = ev.evaluate(inv.args[1])
    current = _translated(session)
    mode = current.paging.mode
    highest = getattr(current.physical, "highest_pfn", 0)
    if base == 0:
        dtb = current.dtb
    elif base & 0xFFF == 0 or base >= max(highest, 1):
        dtb = base & mode.dtb_mask
    else:
        dtb = base << 12
    paging = session.spaces.space(dtb).paging if dtb != current.dtb else current.paging
    w = paging.walk(va)
    tag = mode.vtop_prefix + ":"
    digits = 16 if mode.is64 else 8
    pae = ", PAE enabled." if mode.name == "x86 PAE" else ""
    out = session.out
    va_text = f"{va & (0xFFFF_FFFF_FFFF_FFFF if mode.is64 else 0xFFFFFFFF):0{digits}x}"
    out.line(f"{tag} Virt {va_text}, pagedir {paging.dtb:0{digits}x}{pae}")
    for step in w.steps:
        if step.entry is None:
            break
        out.line(f"{tag} {step.level.vtop_name} {step.entry_address:0{digits}x}")
    if w.physical is not None:
        what = "Large page mapped phys" if w.large else "Transition phys" if w.transition else "Mapped phys"
        out.line(f"{tag} {what} {w.physical:0{digits}x}")
        if mode.pte_mode == "arm64" and not w.transition:  # who may read, write, execute it
            entries = [s.entry for s in w.steps if s.entry is not None]
            out.line(f"{tag} {P.arm64_access_text(entries[:-1], entries[-1])}")
        out.line(f"Virtual address {va_text} translates to physical address {w.physical:x}.")
        return
    err = w.error
    if err is not None and err.pfn is not None and err.entry is None:
        session.report_missing([err])
    elif w.steps and w.steps[-1].entry is not None:
        step = w.steps[-1]
        if step.entry == 0:
            out.line(f"{tag} zero {step.level.vtop_name}")
        else:
            assert step.state is not None  # decoded with every entry read
            out.line(f"{tag} {step.level.vtop_name} {step.entry:0{digits}x} {P.describe(step.state)}")
    out.line(f"Virtual address {va_text} translation fails, error 0xD0000147.")


@command("!pte", family="memory", syntax="!pte VirtualAddress | PteAddress", needs=(needs_memory,),
         summary="Show the page-table entries that map an address, with flags and PFNs",
         example="!pte @rip",
         details="The entry addresses are those of the PTE self-map (KDBG.PteBase, or found in the\n"
                 "top table); their values come from walking the tables (or the saved copies in a\n"
                 "small memory dump).")
def pte_(session: Session, inv: Invocation) -> None:
    ev = Evaluator(session)
    if not inv.args:
        raise CommandError("Usage: !pte VirtualAddress")
    address = ev.evaluate(inv.args[0])
    session.out.lines(pte_lines(session, address))


def _pte_setup(session: Session) -> tuple[PagingMode, SelfMap, Paging | None]:
    """(mode, self-map, walker or None) for !pte on this dump."""
    from kdshell.memory.paging import ARM64, X64_4, X86, PAE

    m = _page_tables(session)
    kdbg = session.kdbg
    pte_base = kdbg.get("PteBase") if kdbg is not None else None
    if m is not None:
        mode = m.paging.mode
        smap = SelfMap.find(mode, m.pages, m.dtb, pte_base if mode.is64 else None)
        return mode, smap, m.paging
    if _arm64(session):
        mode = ARM64
    else:
        mode = X64_4 if session.is64 else (PAE if session.dump.header.pae_enabled else X86)
    if not mode.is64:
        return mode, SelfMap(mode, 0xC0000000), None
    if not pte_base:
        raise KdError("Levels not implemented for this platform (MmPteBase is unknown in this dump)")
    return mode, SelfMap(mode, pte_base), None


def pte_lines(session: Session, address: int) -> list[str]:
    mode, smap, paging = _pte_setup(session)
    va_digits = 16 if mode.is64 else 8
    # An address inside the PTE self-map is taken as a PTE's address: show the page it maps.
    va = smap.mapped_va(address) if smap.contains(address) else address
    levels = [lv for lv in mode.levels if not (mode.name == "x86 PAE" and lv.name == "PDPE")]
    addrs = smap.addresses(va)[-len(levels):]
    fmt = paging.fmt if paging is not None else session.spaces.pte_format
    entries: list[int | None] = []
    if paging is not None:
        w = paging.walk(va)
        by_level = {s.level.name: s.entry for s in w.steps}
        entries = [by_level.get(lv.name) for lv in levels]
    else:
        memory = session.memory
        assert memory is not None  # !pte needs memory (its guard)
        for a in addrs:
            try:
                entries.append(memory.read_int(a, mode.entry_size))
            except MemoryNotPresent:
                entries.append(None)

    def inner(i: int, entry: int) -> str:
        return _large_inner(paging, entry, va, levels[i + 1], mode)

    return P.report_lines(va, levels, addrs, entries, fmt, va_digits, mode.entry_size, inner)


def _large_inner(paging: Paging | None, entry: int, va: int, nxt: Level, mode: PagingMode) -> str:
    """What the self-map shows below a large entry: the large page's own bytes read as entries."""
    if paging is None:
        return "?" * (mode.entry_size * 2)
    index = (va >> nxt.shift) & ((1 << nxt.bits) - 1)
    try:
        raw = paging.pages.read((entry & mode.table_mask) + index * mode.entry_size, mode.entry_size)
    except MemoryNotPresent:
        return "?" * (mode.entry_size * 2)
    return f"{int.from_bytes(raw, 'little'):0{mode.entry_size * 2}X}"


# -- r ------------------------------------------------------------------------------------------
@command("r", family="memory", syntax="r [Register[=Value][, Register ...]]",
         summary="Show the registers of the current context, or show/set one (in this session only)",
         example="r rax=0x1234", details="Changes never touch the dump. $t0-$t19 are yours to set.")
def r_(session: Session, inv: Invocation) -> None:
    text = inv.text.strip()
    out = session.out
    if not text:
        lines, errors = context_lines(session.memory, session.registers, session.is64, session.symbolize,
                                      machine=session.context.machine)
        session.report_missing(errors)
        out.lines(lines)
        return
    regs = Registers(session.registers, session.is64)
    ev = Evaluator(session)
    shown = []
    for part in _split_top(text):
        name, eq, value_text = part.partition("=")
        name = name.strip()
        bare = name[1:] if name.startswith("@") else name
        if eq:
            value = ev.evaluate(value_text.strip())
            if bare.startswith("$"):
                if not is_settable_pseudo(bare):
                    raise ExprError(f"Bad register error at '{name}'")
                session.pseudo_registers[bare.lower()] = value
            else:
                regs.set(bare, value)
            continue
        shown.append(_show_register(session, regs, bare, name))
    if shown:
        out.line(" ".join(shown))


def _arm64(session: Session) -> bool:
    return session.dump.header.machine == MACHINE_ARM64


def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (p.strip() for p in parts) if p]


def _show_register(session: Session, regs: Registers, bare: str, typed: str) -> str:
    if bare.startswith("$"):
        value = pseudo_register(session, regs, bare)
        if value is None:
            raise ExprError(f"Bad register error at '{typed}'")
        return f"{bare.lower()}={value & 0xFFFF_FFFF_FFFF_FFFF:0{16 if session.is64 else 8}x}"
    where = regs._where(bare)
    if where is None:
        raise ExprError(f"Bad register error at '{typed}'")
    width = where[2]
    value = regs.get(bare)
    digits = max(1, width // 4) if width > 2 else 1
    return f"{bare.lower()}={value:0{digits}x}"


# -- u / ub -------------------------------------------------------------------------------------
@command("u", "uu", family="memory", syntax="u [Address [L Count | EndAddress]]", needs=(needs_memory,),
         summary="Disassemble (8 instructions from the address, or from where the last u stopped)",
         example="u @rip L4", details="Bytes the dump lacks show as '??  ???' and disassembly goes on\n"
                                      "past them (so uu, 'u unsafe', is the same command here).")
def u_(session: Session, inv: Invocation) -> None:
    _unassemble(session, inv.text, backward=False)


@command("ub", family="memory", syntax="ub [Address [L Count]]", needs=(needs_memory,),
         summary="Disassemble the instructions before an address", example="ub @rip",
         details="ARM64 instructions are 4 bytes: ub steps back exactly 4 bytes each.")
def ub_(session: Session, inv: Invocation) -> None:
    _unassemble(session, inv.text, backward=True)


def _unassemble(session: Session, text: str, backward: bool) -> None:
    ev = Evaluator(session)
    rng, _ = ev.parse_range(text, 1)
    regs = Registers(session.registers, session.is64)
    state = _continued(session, "u")
    start = rng.start if rng is not None and rng.start is not None else state.get("next", regs.ip)
    memory = session.memory
    assert memory is not None  # u and ub need memory (their guard)
    dis = for_machine(session.dump.header.machine, session.symbolize)
    if rng is not None and rng.end is not None:
        if rng.end - start > 0x100000:
            raise ExprError(f"Range error in '{text.strip()}'")
        lines = dis.decode(memory, start, end=rng.end)
    else:
        count = rng.count if rng is not None and rng.count is not None else 8
        if count > 0x10000:
            raise ExprError(f"Range error in '{text.strip()}'")
        lines = dis.backward(memory, start, count) if backward else dis.decode(memory, start, count)
    session.report_missing(dis.errors)
    session.out.lines(dis.listing(lines))
    if lines:
        session.continuation["u"] = {"next": lines[-1].end}
    session.repeat = "u"


UF_SYNTAX = "uf [/c] [/o] Address"
UF_LIMIT = 20000  # instructions: a function larger than this is shown in part


@command("uf", family="memory", syntax=UF_SYNTAX, needs=(needs_memory,),
         summary="Disassemble a whole function, following its branches", example="uf nt!KeBugCheckEx",
         details="The function holding Address (its extent from the PDB or the image's .pdata;\n"
                 "without either, from Address to the next symbol). Every block reachable through\n"
                 "jumps is shown once, in address order, under a 'function+offset:' label.\n"
                 "/c: only the calls each block makes. /o: address order (the default here).")
def uf_(session: Session, inv: Invocation) -> None:
    words = inv.text.split()
    options: set[str] = set()
    while words and words[0].startswith("/") and words[0][1:].isalpha():
        options.add(words.pop(0)[1:].lower())
    unknown = options - {"c", "o"}
    if unknown:
        raise CommandError(f"uf: option /{sorted(unknown)[0]} is not supported ({UF_SYNTAX})")
    if not words:
        raise CommandError(f"uf: which function? ({UF_SYNTAX})")
    address = Evaluator(session).evaluate(" ".join(words))
    symbols = session.symbols
    bounds = symbols.function_bounds(address)
    if bounds is not None:
        start, end = bounds
    else:
        start, end = address, _next_symbol(session, address)
    memory = session.memory
    assert memory is not None  # uf needs memory (its guard)
    dis = for_machine(session.dump.header.machine, session.symbolize)
    flow = dis.flow(memory, start, lambda a: start <= a < end, UF_LIMIT)
    if flow.lines[start].data is None:
        raise CommandError(f"No code found, aborting ({ptr(start, session.is64)} is not in the dump)")
    out = session.out
    if not flow.complete:
        out.warn("Flow analysis was incomplete, some code may be missing")
    lines = [flow.lines[a] for a in sorted(flow.lines)]
    if "c" in options:
        out.line(f"{dis.target_text(start)}")
        for line in lines:
            if dis.is_call(line):
                out.line(f"  {dis.target_text(line.address)}:")
                out.line(f"    call to {line.operands}")
        return
    previous_end = None
    for line in lines:
        if line.address in flow.leaders or line.address != previous_end:
            out.line(dis.label(line.address, True) or f"{ptr(line.address, session.is64)}:")
        out.line(dis.format(line))
        previous_end = line.end


def _next_symbol(session: Session, address: int) -> int:
    """Where the code after `address` stops being its function's, as far as symbols tell: the
    next symbol, else the module's end (a page on, outside every module)."""
    found = session.symbols.nearest(address)
    if found is None:
        return address + 0x1000
    module, _, following, _ = found
    return module.base + following.rva if following is not None else module.end


# -- ? .formats n -------------------------------------------------------------------------------
@command("?", family="memory", syntax="? Expression", summary="Evaluate a MASM expression",
         example="? poi(@rsp) + 0n10", details="Numbers are hex unless 'n' changed the radix; 0n = decimal,\n"
                                              "0x = hex, 0t = octal, 0y = binary.")
def evaluate(session: Session, inv: Invocation) -> None:
    if not inv.text.strip():
        raise CommandError("Usage: ? Expression")
    value = Evaluator(session).evaluate(inv.text)
    session.pseudo_registers["$exp"] = value
    if session.is64:
        session.out.line(f"Evaluate expression: {signed(value)} = {ptr(value)}")
    else:
        session.out.line(f"Evaluate expression: {signed(value, 32)} = {value & 0xFFFFFFFF:08x}")


def _g(x: float) -> str:
    """C's %g with Windows' three-digit exponent: 2.547e-041."""
    text = f"{x:g}"
    if "e" in text:
        mant, exp = text.split("e")
        text = f"{mant}e{exp[0]}{int(exp[1:]):03d}"
    return text


def formats_lines(value: int, is64: bool) -> list[str]:
    value &= 0xFFFF_FFFF_FFFF_FFFF if is64 else 0xFFFFFFFF
    size = 8 if is64 else 4
    raw = value.to_bytes(size, "big")
    binary = " ".join(f"{b:08b}" for b in raw)
    chars = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in raw)
    lines = ["Evaluate expression:", f"  Hex:     {ptr(value, is64)}", f"  Decimal: {signed(value, size * 8)}"]
    if is64:
        lines.append(f"  Decimal (unsigned) : {value}")
    lines += [f"  Octal:   {value:0{22 if is64 else 11}o}", f"  Binary:  {binary}", f"  Chars:   {chars}",
              f"  Time:    {_time_text(value)}"]
    low, high = value & 0xFFFFFFFF, value >> 32
    as_float = lambda v: _g(struct.unpack("<f", v.to_bytes(4, "little"))[0])  # noqa: E731
    lines.append(f"  Float:   low {as_float(low)} high {as_float(high)}")
    double = struct.unpack("<d", value.to_bytes(8, "little"))[0]
    lines.append(f"  Double:  {_g(double) if math.isfinite(double) else double}")
    return lines


def _time_text(value: int) -> str:
    """A 32-bit value as a time_t in local time; a larger one as a FILETIME."""
    import datetime as dt

    if value <= 0xFFFFFFFF:
        t = time.localtime(value)
        return time.strftime("%a %b ", t) + f"{t.tm_mday:2d}" + time.strftime(" %H:%M:%S %Y", t)
    try:
        when = dt.datetime(1601, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=value // 10)
        return session_time(when)
    except (OverflowError, ValueError):
        return "***** Invalid FILETIME"


@command(".formats", family="memory", syntax=".formats Expression",
         summary="Show a value as hex, decimal, octal, binary, characters, time and floats",
         example=".formats 0x4700")
def formats(session: Session, inv: Invocation) -> None:
    if not inv.text.strip():
        raise CommandError("Usage: .formats Expression")
    session.out.lines(formats_lines(Evaluator(session).evaluate(inv.text), session.is64))


@command("n", family="memory", syntax="n [8|10|16]", summary="Show or set the default number base of expressions",
         example="n 10")
def radix(session: Session, inv: Invocation) -> None:
    if inv.args:
        if inv.args[0] not in ("8", "10", "16"):
            raise CommandError(f"Invalid radix '{inv.args[0]}': use 8, 10 or 16")
        session.radix = int(inv.args[0])
    session.out.line(f"base is {session.radix}")
