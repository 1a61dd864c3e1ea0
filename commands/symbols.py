"""Modules and symbols: lm, .reload, ln, x, dt, !sym, !lmi, !dh, .sympath, .symfix, .exepath.

Thin: parse the WinDbg syntax, ask the session's `Symbols` (kdshell.symbols.resolver), print
WinDbg's columns (windbg.md §4, §6, §12).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kdshell.dispatch import Invocation, command
from kdshell.errors import CommandError, KdError, MemoryNotPresent
from kdshell.expr import Evaluator
from kdshell.format import ptr
from kdshell.symbols.modules import Module, image_name_as_linked, in_user_space
from kdshell.symbols.pe import DebugEntry, PeImage
from kdshell.symbols.resolver import DEFERRED, EXPORTS, FUNCTION, KDBG, PDB, PdbSymbols, Symbol, SymbolTable
from kdshell.symbols.store import MICROSOFT_SERVER, SymbolPath, default_cache
from kdshell.symbols.types import wildcard

if TYPE_CHECKING:
    from kdshell.session import Session
    from kdshell.symbols.pdb import PdbFile
    from kdshell.symbols.pdb import Symbol as PdbSymbol

LM_HEADER = "start             end                 module name"


def _addr(session: Session, value: int) -> str:
    return ptr(value, session.is64)


# -- lm ------------------------------------------------------------------------------------------
LM_SYNTAX = "lm [v][o][l][k][u][e][sm][1m][t][n][f][i][p] [m Pattern | M Pattern | a Address]"
# the columns that replace the symbol status, in the order they print (`lm t n`: name, then date)
COLUMN_OPTIONS = ("n", "i", "f", "p", "t")


def lm_options(inv: Invocation) -> dict[str, Any]:
    """lm's glued and separate options (`lmtsmn`, `lm t n`, `lmvm nt`): the letters
    v o l k u e c t n f i p D, sm, 1m, and `m Pattern`, `M Pattern`, `a Address`."""
    # the letters are True or False; m, M and a their text, or None
    opts: dict[str, Any] = {c: False for c in "volkuectnfipD"}
    opts.update({"sm": False, "1m": False, "m": None, "M": None, "a": None})
    words = ([inv.suffix] if inv.suffix else []) + list(inv.args)
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        j = 0
        while j < len(w):
            if w.startswith("1m", j) or w.startswith("sm", j):
                opts[w[j : j + 2]] = True
                j += 2
                continue
            c = w[j]
            j += 1
            if c in "mMa":
                rest = w[j:]
                if not rest:
                    if i >= len(words):
                        typed = f"{inv.name}{inv.suffix} {inv.text}".strip()
                        raise CommandError(f"lm: '{c}' needs {'a pattern' if c != 'a' else 'an address'}, "
                                           f"e.g. '{typed} nt'")
                    rest = words[i]
                    i += 1
                opts[c] = rest
                break
            if c in opts:
                opts[c] = True
                continue
            fixed = f"{inv.name}{inv.suffix} {inv.text}".replace(c, "", 1).strip()
            raise CommandError(f"lm: unknown option '{c}' ({LM_SYNTAX}). Did you mean '{fixed}'?")
    return opts


def status_text(session: Session, module: Module) -> tuple[str, str]:
    """The (status, path) columns of lm: `(deferred)`, `(pdb symbols)  path`, ..."""
    syms = session.symbols
    status = syms.status(module)
    if status == DEFERRED:
        return "(deferred)", ""
    table = syms.table(module, load=False)
    if status == PDB and isinstance(table, PdbSymbols):
        return ("(private pdb symbols)" if table.private else "(pdb symbols)"), table.path
    if status == EXPORTS and table is not None:
        return "(export symbols)", table.path or module.image_name
    if status == KDBG:
        return "(KDBG symbols)", ""
    return "(no symbols)", ""


def module_line(session: Session, module: Module) -> str:
    status, path = status_text(session, module)
    name = module.name.ljust(10)
    line = f"{_addr(session, module.base)} {_addr(session, module.end)}   {name} {status.ljust(22)} {path}"
    return line.rstrip()


def _column_text(session: Session, module: Module, option: str) -> str:
    """One of the columns `n i f p t` print instead of the symbol status."""
    if option == "n":
        return image_name_as_linked(module, session.is64).ljust(12)
    if option == "i":  # the image file the debugger loaded: the listed name (lmv's "Loaded symbol image file")
        return module.image_name
    if option == "f":
        return module.path
    if option == "p":  # an image file that lent its bytes (lmv's "Mapped memory image file"), else nothing
        return str(module.state.get("image_file") or "")
    image = None if module.timestamp is not None else _image_quietly(session, module)
    return _timestamp_text(_stamp(module, image), None)


def column_line(session: Session, module: Module, columns: list[str]) -> str:
    """`lm t n`'s row: the name in 8 columns, then the chosen columns, one space apart."""
    cells = [_column_text(session, module, c) for c in columns]
    head = f"{_addr(session, module.base)} {_addr(session, module.end)}   {module.name.ljust(8)}"
    return " ".join([head] + cells).rstrip()


def lm_modules(session: Session, o: dict[str, Any]) -> list[Module]:
    """The loaded modules the options select, in lm's order."""
    syms = session.symbols
    modules = syms.modules.sorted
    if o["sm"]:
        modules.sort(key=lambda m: m.name.lower())
    if o["m"] is not None:
        wanted = {id(m) for m in syms.modules.match(o["m"])}
        modules = [m for m in modules if id(m) in wanted]
    if o["M"] is not None:
        rx = wildcard(o["M"])
        modules = [m for m in modules if rx.fullmatch(m.path) or rx.fullmatch(m.image_name)]
    if o["a"] is not None:
        address = Evaluator(session).evaluate(o["a"])
        modules = [m for m in modules if m.contains(address)]
    if o["l"]:
        modules = [m for m in modules if syms.status(m) in (PDB, EXPORTS)]
    if o["e"]:  # a symbol problem: no symbols, or only exports (Microsoft Learn, lm)
        modules = [m for m in modules if syms.status(m) not in (PDB, DEFERRED)]
    if o["u"] != o["k"]:  # u: user-mode modules only, k: kernel-mode only; both: all
        modules = [m for m in modules if in_user_space(m.base, session.is64) == o["u"]]
    return modules


@command("lm", family="symbols", option_suffix=True, syntax=LM_SYNTAX,
         summary="List the loaded (and unloaded) modules with their symbol status, dates or paths",
         example="lm t n",
         details="v: image details (version resource, timestamp); o: loaded only; l: only modules whose\n"
                 "symbols are loaded; e: only modules with a symbol problem (none, or exports only);\n"
                 "k/u: kernel-/user-mode modules only; m: module name pattern (* ?); M: image path\n"
                 "pattern; a: the module containing an address; sm: sort by name; 1m: names only.\n"
                 "Instead of the symbol status: t the image timestamp, n the image name, f the full\n"
                 "image path, i the loaded image file name, p the mapped image file (lmtsmn = dates by name).")
def lm(session: Session, inv: Invocation) -> None:
    o = lm_options(inv)
    syms = session.symbols
    modules = lm_modules(session, o)
    out = session.out
    for w in syms.modules.warnings:
        out.warn(f"WARNING: {w}")
    if o["1m"]:
        out.lines(m.name for m in modules)
        return
    columns = [c for c in COLUMN_OPTIONS if o[c]]
    out.line(LM_HEADER)
    for m in modules:
        out.line(column_line(session, m, columns) if columns else module_line(session, m))
        if o["v"]:
            out.lines(verbose_lines(session, m))
    show_unloaded = not (o["o"] or o["l"] or o["e"] or o["u"] or o["a"] is not None or o["M"] is not None)
    unloaded = syms.modules.unloaded
    if o["m"] is not None:
        rx = wildcard(o["m"])
        unloaded = [u for u in unloaded if rx.fullmatch(u.name.rsplit(".", 1)[0]) or rx.fullmatch(u.name)]
    if show_unloaded and unloaded:
        out.line("")
        out.line("Unloaded modules:")
        for u in unloaded:
            out.line(f"{_addr(session, u.start)} {_addr(session, u.end)}   {u.name}")


def _timestamp_text(stamp: int | None, image: PeImage | None) -> str:
    if stamp is None:
        return "unavailable"
    if image is not None and image.reproducible:
        return f"{stamp:08X} (This is a reproducible build file hash, not a timestamp)"
    t = time.localtime(stamp)
    return f"{time.strftime('%a %b', t)} {t.tm_mday:2d} {time.strftime('%H:%M:%S %Y', t)} ({stamp:08X})"


_FILE_TYPES = {1: "App", 2: "Dll", 3: "Driver", 4: "Font", 5: "VXD", 7: "StaticLib"}
_FILE_OS = {0x40004: "NT Win32", 0x40000: "NT", 0x4: "Win32", 0x10001: "DOS Win16", 0x10004: "DOS Win32"}
_STRING_ORDER = ["CompanyName", "ProductName", "InternalName", "OriginalFilename", "ProductVersion",
                 "FileVersion", "FileDescription", "LegalCopyright", "LegalTrademarks", "Comments",
                 "PrivateBuild", "SpecialBuild"]


def _stamp(module: Module, image: PeImage | None) -> int | None:
    """The module's TimeDateStamp: the loader entry's, else (an entry without it) the image header's."""
    if module.timestamp is not None:
        return module.timestamp
    return image.timestamp if image is not None else None


def _image_quietly(session: Session, module: Module) -> PeImage | None:
    """The module's headers (the dump's, even when its export or debug directory is not there,
    else the image file's), None when neither is readable."""
    try:
        return session.symbols.headers(module)
    except KdError:
        return None


def verbose_lines(session: Session, module: Module) -> list[str]:
    """lmv's block for one module."""
    syms = session.symbols
    image = _image_quietly(session, module)
    file_path = module.state.get("image_file")
    lines = []
    if file_path:  # an image file lent its bytes (WinDbg's "mapped memory image")
        lines.append(f"    Loaded symbol image file: {module.image_name}")
        lines.append(f"    Mapped memory image file: {file_path}")
    lines.append(f"    Image path: {module.path}")
    lines.append(f"    Image name: {module.image_name}")
    if syms.status(module) in (PDB, EXPORTS):
        lines.append("    Browse all global symbols  functions  data")
    repro = image is not None and image.reproducible
    if repro:
        lines.append("    Image was built with /Brepro flag.")
    stamp = _stamp(module, image)
    lines.append(f"    Timestamp:        {_timestamp_text(stamp, image)}")
    checksum = module.checksum if module.checksum is not None else (image.checksum if image else None)
    if checksum is not None:
        lines.append(f"    CheckSum:         {checksum:08X}")
    lines.append(f"    ImageSize:        {module.size:08X}")
    info = image.version_info if image is not None else None
    if info is None:
        lines.append("    Translations:     0000.04b0 0000.04e4 0409.04b0 0409.04e4")
        lines.append("    Information from resource tables:")
        return lines
    fv = ".".join(str(x) for x in info.file_version)
    pv = ".".join(str(x) for x in info.product_version)
    lines.append(f"    File version:     {fv}")
    lines.append(f"    Product version:  {pv}")
    lines.append(f"    File flags:       {info.flags:X} (Mask {info.flags_mask:X})")
    lines.append(f"    File OS:          {info.os:X} {_FILE_OS.get(info.os, '')}".rstrip())
    lines.append(f"    File type:        {info.type:X}.{info.subtype:X} {_FILE_TYPES.get(info.type, '')}".rstrip())
    lines.append(f"    File date:        {info.date >> 32:08X}.{info.date & 0xFFFFFFFF:08X}")
    trans = " ".join(f"{lang:04x}.{cp:04x}" for lang, cp in info.translations) or "0000.04b0"
    lines.append(f"    Translations:     {trans}")
    lines.append("    Information from resource tables:")
    keys = [k for k in _STRING_ORDER if k in info.strings] + sorted(k for k in info.strings if k not in _STRING_ORDER)
    for k in keys:
        lines.append(f"        {(k + ':').ljust(18)}{info.strings[k]}")
    return lines


# -- .reload -------------------------------------------------------------------------------------
@command(".reload", family="symbols", syntax=".reload [/f] [/u] [/v] [Module[=Address[,Size[,Timestamp]]]]",
         summary="Read the module list again; load symbols now (/f) or forget them (/u)",
         example=".reload /f amdppm.sys",
         details="Without /f symbols stay deferred until something needs them. Module=Address,Size\n"
                 "adds a module the dump's list does not have (or moves one).")
def reload_(session: Session, inv: Invocation) -> None:
    flags: set[str] = set()
    names: list[str] = []
    for a in inv.args:
        if a.startswith("/") or (a.startswith("-") and len(a) > 1):
            for c in a[1:]:
                if c not in "fuvnilw":
                    raise CommandError(f".reload: unknown option '{a}'")
                flags.add(c)
        else:
            names.append(a)
    syms = session.symbols
    saved_noisy = syms.noisy
    if "v" in flags:
        syms.noisy = True
    try:
        if not names:
            modules = syms.reload()
            out = session.out
            out.line("Loading Kernel Symbols")
            out.lines(_dots(len(modules)))
            if modules.unloaded:
                out.line("Loading unloaded module list")
                out.lines(_dots(len(modules.unloaded)))
            for w in modules.warnings:
                out.warn(f"WARNING: {w}")
            if "f" in flags:
                for m in modules:
                    _load_reporting(session, m)
            return
        for text in names:
            module = _reload_target(session, text)
            if "u" in flags:
                module.state.clear()
                continue
            module.state.pop("table", None)
            module.state.pop("image", None)
            module.state.pop("file_image", None)
            if "f" in flags:
                _load_reporting(session, module)
    finally:
        syms.noisy = saved_noisy


def _dots(n: int) -> list[str]:
    if n <= 0:
        return []
    return ["." * min(64, n - i) for i in range(0, n, 64)]


def _reload_target(session: Session, text: str) -> Module:
    syms = session.symbols
    name, eq, where = text.partition("=")
    if not eq:
        module = syms.module(name) or syms.module(name.rsplit(".", 1)[0])
        if module is None:
            raise CommandError(f'"{name}" was not found in the image list.')
        return module
    parts = [p for p in where.split(",")]
    ev = Evaluator(session)
    base = ev.evaluate(parts[0])
    existing = syms.module(name) or syms.module(name.rsplit(".", 1)[0])
    size = ev.evaluate(parts[1]) if len(parts) > 1 and parts[1] else (existing.size if existing else 0)
    stamp = ev.evaluate(parts[2]) if len(parts) > 2 and parts[2] else (existing.timestamp if existing else None)
    if not size:
        raise CommandError(f".reload {text}: give the size too (Module=Address,Size)")
    return syms.add_module(name, base, size, stamp)


def _load_reporting(session: Session, module: Module) -> None:
    """Load one module's symbols now, with WinDbg's messages when it does not work out."""
    syms = session.symbols
    table = syms.table(module)
    if table is not None and table.kind != KDBG:
        return
    image = module.state.get("image")
    if image is None:
        session.out.warn(f"Unable to load image {module.path}, Win32 error 0n2")
        session.out.warn(f"*** WARNING: Unable to verify timestamp for {module.image_name}")
    if table is not None:
        session.out.warn(f"*** WARNING: no symbols for {module.image_name}: only the kernel variables the KDBG names")
        return
    session.out.warn(f"*** ERROR: Module load completed but symbols could not be loaded for {module.image_name}")


# -- ln and x ------------------------------------------------------------------------------------
def _symbol_text(table: SymbolTable | PdbSymbols | None, module: Module, s: Symbol) -> str:
    name = f"{module.name}!{s.name}"
    if s.kind == FUNCTION:
        return f"{name} ({_signature(table, s)})"
    return f"{name} = {_data_type(table, s)}"


def _pdb_symbol(table: SymbolTable | PdbSymbols | None, s: Symbol) -> tuple[PdbFile | None, PdbSymbol | None]:
    pdb = getattr(table, "pdb", None)
    if pdb is None:
        return None, None
    raw = pdb.symbol(s.name)
    if raw is None or raw.rva != s.rva:
        return pdb, None
    return pdb, raw


def _signature(table: SymbolTable | PdbSymbols | None, s: Symbol) -> str:
    pdb, raw = _pdb_symbol(table, s)
    if pdb is not None and raw is not None and raw.type_index:
        try:
            t = pdb.symbol_type(raw)
        except KdError:
            t = None
        if t is not None and t.kind == "function":
            from kdshell.symbols.types import c_name

            args = [c_name(a) for a in t.args]
            return ", ".join(args) if args else "void"
    return s.name


def _data_type(table: SymbolTable | PdbSymbols | None, s: Symbol) -> str:
    pdb, raw = _pdb_symbol(table, s)
    if pdb is not None and raw is not None and raw.type_index:
        try:
            t = pdb.symbol_type(raw)
        except KdError:
            t = None
        if t is not None:
            from kdshell.symbols.types import c_name

            return c_name(t)
    return "<no type information>"


@command("ln", family="symbols", syntax="ln Address",
         summary="List the nearest symbols before and after an address",
         example="ln fffff804`8b58334c")
def ln(session: Session, inv: Invocation) -> None:
    if not inv.text:
        raise CommandError("Usage: ln Address")
    address = Evaluator(session).evaluate(inv.text)
    found = session.symbols.nearest(address)
    if found is None:
        return
    module, before, after, exact = found
    table = session.symbols.table(module, load=False)
    out = session.out
    if before is None:
        out.line(f"({_addr(session, module.base)})   {module.name}+0x{address - module.base:x}")
        return
    at = module.base + before.rva
    disp = address - at
    left = f"({_addr(session, at)})   {module.name}!{before.name}" + (f"+0x{disp:x}" if disp else "")
    if after is not None:
        left += f"   |  ({_addr(session, module.base + after.rva)})   {module.name}!{after.name}"
    out.line(left)
    if exact:
        out.line("Exact matches:")
        for s in exact:
            out.line(f"    {_symbol_text(table, module, s)}")


@command("x", family="symbols", syntax="x [/0|/1|/2] [/v] Module!Symbol",
         summary="List symbols matching a pattern (wildcards * and ?)",
         example="x nt!KeBugCheck*",
         details="/0 addresses only, /1 names only, /2 address and name, /v kind and size.")
def x_(session: Session, inv: Invocation) -> None:
    opts: set[str] = set()
    pattern = None
    for a in inv.args:
        if a.startswith("/"):
            if a.lower() not in ("/0", "/1", "/2", "/v", "/a", "/n", "/q", "/f", "/d"):
                raise CommandError(f"x: unknown option '{a}'")
            opts.add(a.lower())
        elif pattern is None:
            pattern = a
        else:
            raise CommandError("x: give one Module!Symbol pattern")
    if not pattern:
        raise CommandError("Usage: x Module!Symbol (wildcards * and ?)")
    if "!" not in pattern:
        pattern = "*!" + pattern
    syms = session.symbols
    if "*" not in pattern.split("!", 1)[0] and "?" not in pattern.split("!", 1)[0]:
        if syms.module(pattern.split("!", 1)[0]) is None:
            raise CommandError(f"Couldn't resolve '{pattern}': no module named {pattern.split('!', 1)[0]}")
    hits = syms.search(pattern)
    if "/n" in opts:
        hits.sort(key=lambda h: (h[0].name.lower(), h[1].name.lower()))
    else:
        hits.sort(key=lambda h: h[0].base + h[1].rva)
    out = session.out
    for module, s in hits:
        address = _addr(session, module.base + s.rva)
        if "/0" in opts:
            out.line(address)
        elif "/1" in opts:
            out.line(f"{module.name}!{s.name}")
        elif "/2" in opts:
            out.line(f"{address} {module.name}!{s.name}")
        else:
            table = syms.table(module, load=False)
            kind = ""
            if "/v" in opts:
                kind = f"prv {'func' if s.kind == FUNCTION else 'global'}   {s.size:x} ".ljust(18)
            out.line(f"{kind}{address} {_symbol_text(table, module, s)}")


# -- !sym, .sympath, .symfix, .exepath -----------------------------------------------------------
@command("!sym", family="symbols", syntax="!sym noisy|quiet",
         summary="Trace (noisy) or stop tracing (quiet) where symbols are looked for",
         example="!sym noisy")
def sym_(session: Session, inv: Invocation) -> None:
    syms = session.symbols
    if not inv.args:
        session.out.line(f"!sym <noisy/quiet> - {'noisy' if syms.noisy else 'quiet'} mode")
        return
    word = inv.args[0].lower()
    if word not in ("noisy", "quiet") or len(inv.args) > 1:
        raise CommandError("Usage: !sym noisy|quiet")
    syms.noisy = word == "noisy"
    session.out.line(f"{word} mode - symbol prompts on")


def _validation(path_text: str) -> list[str]:
    lines = ["", "************* Path validation summary **************",
             "Response                         Time (ms)     Location"]
    import os

    for el in SymbolPath.parse(path_text).elements:
        if el.kind == "dir":
            state = "OK" if os.path.isdir(el.path) else "Error"
        else:
            state = "Deferred"
        lines.append(f"{state.ljust(47)}{el.text}")
    return lines


def _new_path(current: str, inv: Invocation) -> str | None:
    """The path a .sympath/.exepath invocation sets: None to just show it."""
    text = inv.text.strip()
    append = inv.name.endswith("+") or inv.suffix == "+"
    if text.startswith("+"):
        append, text = True, text[1:].strip()
    if not text:
        return None if not append else current
    if append and current:
        return current + ";" + text
    return text


@command(".sympath", ".sympath+", family="symbols", syntax=".sympath [+] [Path[;...]]",
         summary="Show, set or append to the symbol search path",
         example=".sympath srv*/tmp/sym*https://msdl.microsoft.com/download/symbols",
         details="Elements: a directory; srv*[Cache*]Store (a URL or a store directory); cache*Dir.\n"
                 "Modules whose symbols were not found are looked for again on next use.")
def sympath(session: Session, inv: Invocation) -> None:
    _search_path(session, inv, "symbol_path", "Symbol search path", "<empty>")


def _search_path(session: Session, inv: Invocation, attribute: str, label: str, empty: str) -> None:
    """.sympath/.exepath: set or append when given a path, then show it as WinDbg does."""
    new = _new_path(getattr(session, attribute), inv)
    if new is not None:
        setattr(session, attribute, new)
        session.symbols.retry_failed()
    path = getattr(session, attribute)
    session.out.line(f"{label} is: {path or empty}")
    session.out.line(f"Expanded {label} is: {path.lower() or empty}")
    if path:
        session.out.lines(_validation(path))


@command(".symfix", ".symfix+", family="symbols", syntax=".symfix [+] [LocalCache]",
         summary="Use Microsoft's symbol server (downloads go to LocalCache or the default cache)",
         example=".symfix /tmp/sym")
def symfix(session: Session, inv: Invocation) -> None:
    text = inv.text.strip()
    append = inv.name.endswith("+")
    if text.startswith("+"):
        append, text = True, text[1:].strip()
    element = f"srv*{text}*{MICROSOFT_SERVER}" if text else "srv*"
    current = session.symbol_path
    session.symbol_path = f"{current};{element}" if append and current else element
    session.symbols.retry_failed()
    cache = text or default_cache()
    if session.symbols.offline:
        session.out.warn(f"Downloads are off (--offline or KDSHELL_OFFLINE): only the cache {cache} is searched")
    if session.symbols.noisy:
        session.out.line(f"DBGHELP: Symbol Search Path: {session.symbol_path} (downloads go to {cache})")


@command(".exepath", ".exepath+", family="symbols", syntax=".exepath [+] [Path[;...]]",
         summary="Show, set or append to the executable image search path (image files for small dumps)",
         example=".exepath /images")
def exepath(session: Session, inv: Invocation) -> None:
    _search_path(session, inv, "image_path", "Executable image search path", "")


# -- !lmi, !dh -----------------------------------------------------------------------------------
def _module_arg(session: Session, text: str) -> Module:
    syms = session.symbols
    module = syms.module(text) or syms.module(text.rsplit(".", 1)[0])
    if module is None:
        try:
            address = Evaluator(session).evaluate(text)
        except KdError:
            address = None
        module = syms.module_at(address) if address is not None else None
    if module is None:
        raise CommandError(f"{text} not found in the module list")
    return module


@command("!lmi", family="symbols", syntax="!lmi Module|Address",
         summary="Show what kdshell knows about one module: image, debug record, symbols",
         example="!lmi amdppm")
def lmi(session: Session, inv: Invocation) -> None:
    if not inv.args:
        raise CommandError("Usage: !lmi Module|Address")
    module = _module_arg(session, inv.args[0])
    syms = session.symbols
    table = syms.table(module)
    image = _image_quietly(session, module)
    out = session.out
    out.line(f"Loaded Module Info: [{inv.args[0]}] ")
    out.line(f"         Module: {module.name}")
    out.line(f"   Base Address: {module.base:x}")
    out.line(f"     Image Name: {module.image_name}")
    if image is not None:
        out.line(f"   Machine Type: {image.machine} ({image.machine_name})")
    stamp = _stamp(module, image)
    if stamp is not None:
        out.line(f"     Time Stamp: {_timestamp_text(stamp, image)}")
    out.line(f"           Size: {module.size:x}")
    checksum = module.checksum if module.checksum is not None else (image.checksum if image else None)
    if checksum is not None:
        out.line(f"       CheckSum: {checksum:x}")
    if image is not None:
        out.line(f"Characteristics: {image.characteristics:x}")
        try:
            entries = image.debug_entries
        except MemoryNotPresent:
            entries = None
        if entries is None:
            out.line("Debug Data Dirs: (not in the dump)")
        elif entries:
            out.line("Debug Data Dirs: Type  Size     VA  Pointer")
            for e in entries:
                out.line(f"{_DEBUG_TYPES.get(e.type, str(e.type)):>21} {e.size:5x}, {e.rva:5x}, {e.file_offset:7x}"
                         + _cv_suffix(image, e))
        source = "MEMORY" if module.state.get("image_file") is None else "FILE"
        where = module.state.get("image_file") or "loaded memory"
        out.line(f"     Image Type: {source.ljust(8)} - Image read successfully from {where}.")
    else:
        out.line("     Image Type: (not found: the dump has no headers and no image path has the file)")
    if table is None:
        out.line("    Symbol Type: NONE     - No symbols loaded")
    elif table.kind == PDB:
        out.line("    Symbol Type: PDB      - Symbols loaded successfully from symbol search path.")
        out.line(f"                 {table.path}")
    elif table.kind == KDBG:
        out.line("    Symbol Type: KDBG     - Only the kernel variables the KDBG names (no PDB, no exports).")
    else:
        out.line("    Symbol Type: EXPORT   - Symbols loaded from the image's export table.")


_DEBUG_TYPES = {1: "COFF", 2: "CODEVIEW", 3: "FPO", 4: "MISC", 9: "BORLAND", 12: "VC_FEATURE", 13: "POGO",
                14: "ILTCG", 16: "REPRO", 20: "EX_DLLCHARACTERISTICS"}


def _cv_suffix(image: PeImage, entry: DebugEntry) -> str:
    if entry.type != 2:
        return ""
    try:
        cv = image.codeview
    except MemoryNotPresent:
        return " (not in the dump)"
    if cv is None:
        return ""
    if cv.guid is not None:
        return f" RSDS - GUID: {{{str(cv.guid).upper()}}}\n               Age: {cv.age}, Pdb: {cv.pdb_path}"
    return f" NB10 - Sig: {cv.signature:x}, Age: {cv.age}, Pdb: {cv.pdb_path}"


_DIRECTORIES = ["Export", "Import", "Resource", "Exception", "Security", "Base Relocation", "Debug",
                "Description", "Special", "Thread Storage", "Load Configuration", "Bound Import",
                "Import Address Table", "Delay Import", "COR20 Header", "Reserved"]
_FILE_FLAGS = {0x1: "Relocations stripped", 0x2: "Executable", 0x4: "Line numbers stripped",
               0x8: "Symbols stripped", 0x20: "App can handle >2gb addresses", 0x100: "32 bit word machine",
               0x200: "Debug information stripped", 0x1000: "System", 0x2000: "DLL"}
_DLL_FLAGS = {0x20: "High entropy VA supported", 0x40: "Dynamic base", 0x80: "Force integrity",
              0x100: "NX compatible", 0x200: "No isolation", 0x400: "No structured exception handling",
              0x800: "No bind", 0x1000: "AppContainer", 0x2000: "WDM driver", 0x4000: "Guard",
              0x8000: "Terminal server aware"}
_SUBSYSTEMS = {1: "Native", 2: "Windows GUI", 3: "Windows CUI", 9: "Windows CE GUI", 10: "EFI Application",
               11: "EFI Boot Service Driver", 12: "EFI Runtime Driver", 16: "Windows Boot Application"}
_SCN_FLAGS = [(0x20, "Code"), (0x40, "Initialized Data"), (0x80, "Uninitialized Data"),
              (0x02000000, "Discardable"), (0x04000000, "Not Cached"), (0x08000000, "Not Paged"),
              (0x10000000, "Shared")]


def dh_lines(image: PeImage, flags: set[str], is64: bool) -> list[str]:
    every = not flags or "-a" in flags
    out: list[str] = []
    wide = (lambda v: f"{v:016x}") if image.is64 else (lambda v: f"{v:8X}")
    if every or "-f" in flags:
        out += ["", "File Type: " + ("DLL" if image.characteristics & 0x2000 else "EXECUTABLE IMAGE"),
                "FILE HEADER VALUES", f"{image.machine:8X} machine ({image.machine_name})",
                f"{len(image.sections):8X} number of sections",
                f"{image.timestamp:8X} time date stamp", "", f"{0:8X} file pointer to symbol table",
                f"{0:8X} number of symbols", f"{0xF0 if image.is64 else 0xE0:8X} size of optional header",
                f"{image.characteristics:8X} characteristics"]
        out += [f"            {name}" for bit, name in _FILE_FLAGS.items() if image.characteristics & bit]
        out += ["", "OPTIONAL HEADER VALUES", f"{0x20B if image.is64 else 0x10B:8X} magic #",
                f"{image.linker_version[0]:5d}.{image.linker_version[1]:02d} linker version",
                f"{image.entry_point:8X} address of entry point", "         ----- new -----",
                f"{wide(image.image_base)} image base", f"{image.section_alignment:8X} section alignment",
                f"{image.file_alignment:8X} file alignment",
                f"{image.subsystem:8X} subsystem ({_SUBSYSTEMS.get(image.subsystem, 'Unknown')})",
                f"{image.os_version[0]:5d}.{image.os_version[1]:02d} operating system version",
                f"{image.image_version[0]:5d}.{image.image_version[1]:02d} image version",
                f"{image.subsystem_version[0]:5d}.{image.subsystem_version[1]:02d} subsystem version",
                f"{image.size_of_image:8X} size of image", f"{image.size_of_headers:8X} size of headers",
                f"{image.checksum:8X} checksum",
                f"{wide(image.stack_reserve)} size of stack reserve", f"{wide(image.stack_commit)} size of stack commit",
                f"{wide(image.heap_reserve)} size of heap reserve", f"{wide(image.heap_commit)} size of heap commit",
                f"{image.dll_characteristics:8X}  DLL characteristics"]
        out += [f"            {name}" for bit, name in _DLL_FLAGS.items() if image.dll_characteristics & bit]
        for i, (rva, size) in enumerate(image.directories[:16]):
            out.append(f"{rva:8X} [{size:8X}] address [size] of {_DIRECTORIES[i]} Directory")
    if every or "-s" in flags:
        for i, s in enumerate(image.sections, 1):
            access = " ".join(w for bit, w in ((0x20000000, "Execute"), (0x40000000, "Read"), (0x80000000, "Write"))
                              if s.characteristics & bit)
            out += ["", f"SECTION HEADER #{i}", f"{s.name:>8} name", f"{s.virtual_size:8X} virtual size",
                    f"{s.rva:8X} virtual address", f"{s.raw_size:8X} size of raw data",
                    f"{s.raw_offset:8X} file pointer to raw data", f"{s.characteristics:8X} flags"]
            out += [f"         {name}" for bit, name in _SCN_FLAGS if s.characteristics & bit]
            if access:
                out.append(f"         {access}")
    if every:
        try:
            entries = image.debug_entries
        except MemoryNotPresent:
            entries = None
        out += ["", "Debug Directories" + (": not in the dump" if entries is None else f"({len(entries)})")]
        if entries:
            out.append("\tType       Size     Address  Pointer")
            for e in entries:
                name = _DEBUG_TYPES.get(e.type, str(e.type)).lower()
                out.append(f"\t{name:<10}{e.size:>6x}{e.rva:>12x}{e.file_offset:>9x}" + _cv_format(image, e))
    return out


def _cv_format(image: PeImage, entry: DebugEntry) -> str:
    if entry.type != 2:
        return ""
    try:
        cv = image.codeview
    except MemoryNotPresent:
        return ""
    if cv is None:
        return ""
    if cv.guid is not None:
        return f"\tFormat: RSDS, guid, {cv.age}, {cv.pdb_path}"
    return f"\tFormat: NB10, {cv.signature:x}, {cv.age}, {cv.pdb_path}"


@command("!dh", family="symbols", syntax="!dh [-f] [-s] [-a] Module|Address",
         summary="Show a module's PE headers: file and optional header, directories, sections",
         example="!dh amdppm",
         details="-f file and optional headers only, -s sections only, -a everything (the default).")
def dh(session: Session, inv: Invocation) -> None:
    flags = {a.lower() for a in inv.args if a.startswith("-")}
    rest = [a for a in inv.args if not a.startswith("-")]
    if len(rest) != 1:
        raise CommandError("Usage: !dh [-f] [-s] [-a] Module|Address")
    bad = flags - {"-f", "-s", "-a"}
    if bad:
        raise CommandError(f"!dh: unknown option {sorted(bad)[0]}")
    module = _module_arg(session, rest[0])
    image = _image_quietly(session, module)
    if image is None:
        raise KdError(f"No PE header for {module.name}: the dump does not have it and no image file was found")
    session.out.lines(dh_lines(image, flags, session.is64))
