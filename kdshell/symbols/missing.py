"""Why a module has no symbols, in one line the user can act on.

    missing_symbols_line(symbols, module)
    -> "*** Symbols for amdppm.sys not found (amdppm.pdb 1C19FDDB...1 is not on the symbol path): ..."

The resolver records what it looked for and did not find (module.state "wanted_pdb": the PDB's
name and key; "wanted_image": the image's, for a small dump that lacks the image headers that
name the PDB); this module turns that into the line, with the fix that fits the symbol path:
offline, no path, a server that failed, or a server that does not have the file.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from kdshell.symbols.resolver import KDBG, NONE
from kdshell.symbols.store import is_url

if TYPE_CHECKING:
    from kdshell.symbols.modules import Module
    from kdshell.symbols.resolver import Symbols


def lacks_symbols(symbols: Symbols, module: Module) -> bool:
    """The module's symbols were looked for (not deferred) and give no function names."""
    return symbols.status(module) in (NONE, KDBG)


def what_is_missing(module: Module) -> str:
    """The file the module's names would come from, as the resolver last looked for it."""
    st = module.state
    pdb, image = st.get("wanted_pdb"), st.get("wanted_image")
    if pdb:
        return f"{pdb[0]} {pdb[1]} is not on the symbol path"
    if image:
        return f"its image {image[0]} {image[1]}, which names the PDB, is on no path"
    if st.get("image") is not None:
        return "its image has no debug record that names a PDB"
    return "its image could not be read"


def how_to_fix(symbols: Symbols) -> str:
    servers = [s for el in symbols.store.path.elements for s in el.stores if is_url(s)]
    if symbols.offline:
        return "downloads are off (--offline), so add a local store with .sympath+ DIR"
    if not servers:
        return "add a store with .sympath+ DIR (or -y), or .symfix for Microsoft's server"
    if all(s in symbols.store.dead_servers for s in servers):
        return "the symbol server failed (see its warning), so add a local store with .sympath+ DIR"
    return "the symbol server lacks it too, so add the folder that has it with .sympath+ DIR"


def missing_symbols_line(symbols: Symbols, module: Module) -> str | None:
    """The line for a module without symbols; None when it has some (or was never looked at)."""
    if not lacks_symbols(symbols, module):
        return None
    return f"*** Symbols for {module.image_name} not found ({what_is_missing(module)}): {how_to_fix(symbols)}"
