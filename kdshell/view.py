"""What the analysis and export floors read of the session (`!analyze`, its facts and report,
`vertarget`, `.dump`). They sit below kdshell/session.py and may not import it: this protocol
says, once, what they may rely on; the Session satisfies it (mypy checks every call)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kdshell.dumpfile.dump import DumpFile
    from kdshell.kernel.kdbg import Kdbg
    from kdshell.kernel.offsets import OffsetsHolder
    from kdshell.kernel.state import KernelState
    from kdshell.memory.spaces import AddressSpaces
    from kdshell.memory.virtual import VirtualMemory
    from kdshell.stack.context import ContextState
    from kdshell.symbols.resolver import Symbols


class SessionView(Protocol):
    processor: int  # the current processor (!analyze sets the crashing one while it runs)

    @property
    def dump(self) -> DumpFile: ...

    @property
    def is64(self) -> bool: ...

    @property
    def memory(self) -> VirtualMemory | None: ...  # with the modules' image files behind it

    @property
    def spaces(self) -> AddressSpaces: ...

    @property
    def kdbg(self) -> Kdbg | None: ...

    @property
    def kernel_base(self) -> int | None: ...

    @property
    def parts(self) -> OffsetsHolder: ...

    @property
    def symbols(self) -> Symbols: ...

    @property
    def kernel(self) -> KernelState: ...

    @property
    def context(self) -> ContextState: ...

    def resolve_symbol(self, name: str) -> int | None: ...

    def symbolize(self, address: int) -> tuple[str, int] | None: ...
