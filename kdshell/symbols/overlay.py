"""The dump's memory with the modules' image files behind it, and the module view the stack
walker takes (kdshell.stack.walk): both read images through the symbols layer's `ImageSource`
(kdshell.symbols.resolver.Symbols)."""
from __future__ import annotations

from typing import Any, Iterator, Protocol

from kdshell.errors import MemoryNotPresent
from kdshell.memory.virtual import Chunk, Stretch, VirtualMemory
from kdshell.symbols.modules import Module, ModuleList
from kdshell.symbols.pe import PeImage


class ImageSource(Protocol):
    """What the overlay and the unwinder's view read of the symbols layer."""

    @property
    def modules(self) -> ModuleList: ...

    def module_at(self, address: int) -> Module | None: ...

    def headers(self, module: Module) -> PeImage | None: ...

    def file_image(self, module: Module) -> PeImage | None: ...

    def fill(self, address: int, size: int) -> bytes | None: ...

    def memory(self) -> Any: ...

    def table(self, module: Module, load: bool = True) -> Any: ...


# -- the memory overlay -------------------------------------------------------------------------
class ImageOverlay:
    """The session's virtual memory with image files behind it: a read the dump cannot answer
    is answered from the module's image file when there is one.

    Its other attributes are the wrapped memory's; `inner` is that memory itself (what has page
    tables, if any).
    """

    def __init__(self, inner: VirtualMemory, symbols: ImageSource) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_symbols", symbols)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    @property
    def inner(self) -> VirtualMemory:
        return self._inner

    def read(self, address: int, size: int) -> bytes:
        try:
            return self._inner.read(address, size)
        except MemoryNotPresent:
            pass
        out = bytearray()
        for _, piece, _ in self.chunks(address, size):
            if isinstance(piece, MemoryNotPresent):
                raise piece
            out += piece
        return bytes(out)

    def chunks(self, address: int, size: int) -> Iterator[Chunk]:
        for at, piece, length in self._inner.chunks(address, size):
            if not isinstance(piece, MemoryNotPresent):
                yield at, piece, length
                continue
            yield from self._fill(at, length, piece)

    def stretches(self, address: int, size: int) -> Iterator[Stretch]:
        """The inner memory's stretches (its chunks when it has none), holes filled as chunks() does."""
        inner = getattr(self._inner, "stretches", None)
        if inner is None:
            yield from self.chunks(address, size)
            return
        for at, piece, length in inner(address, size):
            if not isinstance(piece, MemoryNotPresent):
                yield at, piece, length
                continue
            yield from self._fill(at, length, piece)

    def _fill(self, address: int, length: int, error: MemoryNotPresent) -> Iterator[Chunk]:
        """Fill a hole page by page from images; what no image has stays a hole."""
        end = address + length
        cursor = address
        symbols = self._symbols
        while cursor < end:
            module = symbols.module_at(cursor)
            if module is None or symbols.file_image(module) is None:
                # no image here: the hole runs to the next module (or the end of this module)
                if module is None:
                    nxt = symbols.modules.next_start(cursor)
                    stop = min(end, nxt) if nxt is not None and nxt > cursor else end
                else:
                    stop = min(end, module.end)
                yield cursor, _hole(error, cursor), stop - cursor
                cursor = stop
                continue
            step = min(end - cursor, 0x1000 - (cursor & 0xFFF))
            data = symbols.fill(cursor, step)
            if data is None:
                yield cursor, _hole(error, cursor), step
            else:
                yield cursor, data, step
            cursor += step

    # The helpers over read() and chunks(), as every memory has them (pointer_size and
    # address_mask come from the wrapped memory).
    read_pointer = VirtualMemory.read_pointer
    read_int = VirtualMemory.read_int
    readable = VirtualMemory.readable
    read_partial = VirtualMemory.read_partial


def _hole(error: MemoryNotPresent, address: int) -> MemoryNotPresent:
    if error.address == address:
        return error
    clone = MemoryNotPresent.__new__(type(error))
    clone.__dict__.update(error.__dict__)
    clone.args = error.args
    clone.address = address
    return clone


class UnwindModules:
    """Adapter for kdshell.stack.walk: modules with an image reader and their .pdata location.
    A module's view is made again when its headers change (a path change found its image)."""

    def __init__(self, symbols: ImageSource) -> None:
        self.symbols = symbols
        self._views: dict[int, _ModuleView] = {}

    def module_at(self, address: int) -> _ModuleView | None:
        module = self.symbols.module_at(address)
        if module is None:
            return None
        view = self._views.get(module.base)
        if view is None or view.module is not module or view.headers is not self.symbols.headers(module):
            view = self._views[module.base] = _ModuleView(self.symbols, module)
        return view

    def function_start(self, address: int) -> bool:
        """A code symbol (a PDB function or public, an export) begins exactly at `address`."""
        from kdshell.symbols.resolver import DATA  # resolver imports this module

        module = self.symbols.module_at(address)
        table = self.symbols.table(module) if module is not None else None
        if module is None or table is None:
            return False
        rva = address - module.base
        return any(s.kind != DATA for s in table.exact(rva))


class _ModuleView:
    """One module for the unwinder: `image(rva, size)` reads through the session's memory (the
    dump, with the image file behind it: a small dump's missing .pdata comes from the file, which
    the symbol path may download), `exception_directory` from the headers (in the dump or the
    file's), `executable(rva)` from their section table."""

    def __init__(self, symbols: ImageSource, module: Module) -> None:
        self.module = module
        self.base, self.size, self.name = module.base, module.size, module.name
        self.headers = headers = symbols.headers(module)
        memory = symbols.memory()
        self.image = None
        self.exception_directory = None
        if headers is not None and memory is not None:
            base = module.base
            self.image = lambda rva, size: memory.read(base + rva, size)
            rva, size = headers.directory(3)
            if rva and size:
                self.exception_directory = (rva, size)

    def executable(self, rva: int) -> bool | None:
        """Is `rva` in an executable section? None without a section table."""
        return self.headers.executable(rva) if self.headers is not None else None
