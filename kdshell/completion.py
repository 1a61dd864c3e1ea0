"""What Tab completes after a command: module names, `module!symbol` names, `dt` type names.

Only modules whose symbols are already loaded are searched for symbols (completion must never
start a download or a long load); module names always complete.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kdshell.symbols.resolver import Symbols

MAX_WORDS = 200


class CompletionSource(Protocol):
    """The session, for its modules and symbols."""

    @property
    def symbols(self) -> Symbols: ...


def words(session: CompletionSource, command: str, word: str) -> list[str]:
    symbols = session.symbols
    modules = symbols.modules
    if "!" not in word:
        prefix = word.lower()
        names = [m.name for m in modules if m.name.lower().startswith(prefix)]
        return sorted(n + "!" if command in ("dt", "x", "u", "ln", "bp") else n for n in names)[:MAX_WORDS]
    module_name, _, partial = word.partition("!")
    module = modules.by_name(module_name)
    if module is None:
        return []
    pattern = partial + "*"
    if command == "dt":
        types = symbols.types(module)
        found = list(types.names(pattern)) if types is not None else []
    else:
        table = symbols.table(module, load=False)
        found = [s.name for s in table.match(pattern)] if table is not None else []
    return [f"{module_name}!{name}" for name in sorted(set(found))[:MAX_WORDS]]
