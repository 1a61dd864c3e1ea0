"""dt: structure layouts and values (windbg.md §6), from the module's PDB or, for nt without one,
kdshell's built-in table of kernel structure offsets (kdshell/kernel/offsets.py).

The rendering is kdshell.symbols.typeformat's; this module parses the command line and finds
the type.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdshell.dispatch import Invocation, command
from kdshell.errors import CommandError, KdError
from kdshell.expr import Evaluator
from kdshell.symbols import typeformat

if TYPE_CHECKING:
    from kdshell.session import Session


@command("dt", family="symbols", syntax="dt [-r[N]] [-b] [-a[N]] [-i] [-o] [-y] [-l ListField] [Module!]Type [Field...] [Address]",
         summary="Show a structure's layout, or its values at an address",
         example="dt nt!_EPROCESS ffff920f`cfadb380 UniqueProcessId ImageFileName",
         details="Module!*Pattern* lists types. Without the kernel's PDB, nt's structures come from\n"
                 "kdshell's built-in table of offsets (only the fields it knows).\n"
                 "-l ListField: Address is the first structure of a list linked through ListField\n"
                 "(a LIST_ENTRY); each structure is shown in turn until the list comes back.")
def dt(session: Session, inv: Invocation) -> None:
    run_dt(session, inv)


# -- dt ------------------------------------------------------------------------------------------
_DT_FLAGS = "rbaioyv"


def _dt_parse(inv: Invocation) -> tuple[Any, ...]:
    opts = typeformat.DtOptions()
    words: list[str] = []
    args = list(inv.args)
    list_field = None
    if "-l" in args:
        i = args.index("-l")
        if i + 1 >= len(args):
            raise CommandError("dt -l: which list field? (dt -l ListField Type Address)")
        list_field = args[i + 1]
        del args[i:i + 2]
    for a in args:
        if a.startswith("-") and len(a) > 1 and a[1] in _DT_FLAGS and (not words or a[2:] in ("", *"0123456789")):
            c, rest = a[1], a[2:]
            if c == "r":
                opts.recurse = int(rest) if rest.isdigit() else 1
            elif c == "b":
                opts.blocks = True
            elif c == "a":
                opts.arrays = int(rest) if rest.isdigit() else 0
            elif c == "i":
                opts.no_indent = True
            elif c == "o":
                opts.no_offsets = True
            elif c == "y":
                opts.prefix_match = True
            continue
        if a.startswith("-") and len(a) > 1 and not a[1:2].isdigit() and not words:
            raise CommandError(f"dt: unknown option '{a}' (dt [-r[N]] [-b] [-a[N]] [-i] [-o] [-y] Type [Field] [Address])")
        words.append(a)
    if not words:
        raise CommandError("Usage: dt [Module!]Type [Field...] [Address]")
    return opts, words, list_field


def _dt_list(session: Session, module_name: str | None, pattern: str) -> None:
    found = False
    for name, source, _ in session.symbols.type_sources(module_name):
        for tname in source.names(pattern):
            session.out.line(f"          {name}!{tname}")
            found = True
    if not found:
        shown = f"{module_name}!{pattern}" if module_name else pattern
        raise KdError(f"Symbol {shown} not found.")


def run_dt(session: Session, inv: Invocation) -> None:
    opts, words, list_field = _dt_parse(inv)
    spec = words[0]
    module_name, _, tname = spec.rpartition("!")
    module_name = module_name or None
    if "*" in tname or "?" in tname:
        _dt_list(session, module_name, tname)
        return
    found = None
    sources = session.symbols.type_sources(module_name)
    for name, source, origin in sources:
        t = source.find(tname)
        if t is not None:
            found = (name, t, origin)
            break
    if found is None:
        # a module named whose PDB has no types (stripped, or its TPI stream lost): say so
        empty = [name for name, source, _ in sources if getattr(source, "type_count", None) == 0]
        why = f" ({empty[0]}'s symbol file holds no type information)" if module_name and empty else ""
        raise KdError(f"Symbol {spec} not found{why}.")
    _, t, origin = found
    fields, address = [], None
    ev = Evaluator(session)
    for w in words[1:]:
        base = w.split(".", 1)[0].rstrip("*")
        is_field = t.strip().is_aggregate and base and (
            t.strip().member(base) is not None or (opts.prefix_match and any(
                f.name.lower().startswith(base.lower()) for f in t.strip().fields)))
        if is_field:
            fields.append(w)
            continue
        if address is not None:
            raise CommandError(f"dt: '{w}' is neither a field of {tname} nor the only address")
        address = ev.evaluate(w)
    if origin:
        session.out.line(f"(no PDB for nt: {origin}; only the fields it knows)")
    memory = session.memory
    read = memory.read if memory is not None else None
    if address is not None and read is None:
        raise KdError("Memory is not available in this dump")

    def symbolize(value: int) -> str | None:
        hit = session.symbolize(value)
        if hit is None:
            return None
        return f"{hit[0]}+0x{hit[1]:x}" if hit[1] else hit[0]

    if list_field is not None:
        if address is None or read is None:
            raise CommandError("dt -l: the address of the list's first structure is needed")
        _dt_list_walk(session, t, address, list_field, opts, fields, symbolize)
        return
    lines = typeformat.render(t, address, read, pointer_size=8 if session.is64 else 4, options=opts,
                              fields=fields or None, symbolize=symbolize)
    session.out.lines(lines)


MAX_LIST = 100_000  # elements: a list longer than this is corrupt (it loops without coming back)


def _dt_list_walk(session: Session, t: Any, address: int, list_field: str, opts: Any, fields: list[str],
                  symbolize: Any) -> None:
    """dt -l: each structure of the list through `list_field` (a LIST_ENTRY: its Flink points
    at the next structure's field), from `address` until the list comes back or ends."""
    found = t.find_field(list_field)
    if found is None:
        raise CommandError(f"dt -l: {list_field} is not a field of the type")
    offset = found[0]
    memory = session.memory
    assert memory is not None
    size = 8 if session.is64 else 4
    from kdshell.format import ptr0x

    seen: set[int] = set()
    current = address
    while current and current not in seen and len(seen) < MAX_LIST:
        seen.add(current)
        session.out.line(f"{list_field} at {ptr0x(current + offset, session.is64)}")
        session.out.line("-" * 45)
        session.out.lines(typeformat.render(t, current, memory.read, pointer_size=size, options=opts,
                                            fields=fields or None, symbolize=symbolize))
        session.out.line("")
        flink = int.from_bytes(memory.read(current + offset, size), "little")
        current = flink - offset if flink else 0
        if current == address:
            break
