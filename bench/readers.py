"""The three readers the benchmarks compare, behind one small interface.

    r = open_reader("kdshell", path, dtb)      # or "kdmp-parser", "volatility3"
    r.page(pfn) -> bytes                       # one physical page (a copy: the data is read)
    r.translate(va) -> int | None              # virtual -> physical through `dtb`
    r.read_virtual(va, size) -> bytes          # sequential virtual reads
    r.first_command(pa)                        # what "to first command" means for this reader

- kdshell: `kdshell.open(path)` (a Session), its compiled walk when built ("kdshell-python": the
  Python walk alone, as on an install without a C compiler); pages from the container, translations and virtual
  reads through the session's memory (its translation cache warm, as commands use it);
  `first_command` runs `!db <pa> L10` through the dispatcher.
- kdmp-parser (PyPI `kdmp-parser`, a C++ library behind a Python binding): its public
  `KernelDumpParser` wrapper; pages come back as bytearrays, virtual reads page by page.
- volatility3 (PyPI `volatility3`; not a kdshell dependency): its crash layer stacked by hand on
  a file layer (types 1 and 5 only: `supported_dumptypes`), an `Intel32e` layer on top for
  virtual addresses (fixtures-toolchain.md §1).

Imports happen in `import_reader` so callers can keep them out of their timings.
"""
from __future__ import annotations

READERS = ("kdshell", "kdmp-parser", "volatility3")
VOL3_TYPES = (1, 5)
VOL3_INSTALL = "pip install volatility3  (a peer, not a kdshell dependency)"


def available(reader: str) -> bool:
    try:
        import_reader(reader)
        return True
    except ImportError:
        return False


def import_reader(reader: str) -> None:
    if reader in ("kdshell", "kdshell-python"):
        import kdshell  # noqa: F401
        import kdshell.commands  # noqa: F401  (the registry, loaded at the first Session)
        import kdshell.session  # noqa: F401
    elif reader == "kdmp-parser":
        import kdmp_parser  # noqa: F401
    elif reader == "volatility3":
        import volatility3.framework  # noqa: F401
        from volatility3.framework import contexts  # noqa: F401
        from volatility3.framework.layers import crash, intel, physical  # noqa: F401
    else:
        raise ValueError(reader)


class KdshellReader:
    name = "kdshell"
    compiled = True  # the compiled walk (kdshell/memory/_walk.c) when it is built

    def __init__(self, path: str, dtb: int | None = None):
        import kdshell
        from kdshell.memory import paging

        # every address space this process makes from now on (they are made lazily)
        paging.COMPILED = self.compiled and paging._CompiledTranslator is not None
        self.session = kdshell.open(path, symbol_path="", image_path="")
        self.session.progress = None
        self.dtb = dtb

    def first_command(self, pa: int) -> str:
        s = self.session
        text = s.capture(f"!db {pa:x} L10" if s.dump.physical is not None else "dq @rsp L2")
        if s.failures:
            raise RuntimeError(f"kdshell's first command failed: {text.strip()}")
        return text

    def page(self, pfn: int) -> bytes:
        return bytes(self.session.dump.physical.page(pfn))

    def _memory(self):
        s = self.session
        return s.spaces.space(self.dtb) if self.dtb is not None else s.raw_memory

    def translate(self, va: int):
        return self._memory().translate(va)

    def translator(self):
        return self._memory().paging.translate  # what reads and commands call, one frame down

    def reader(self):
        return self._memory().read

    def flush(self, tables: bool = False) -> None:
        self._memory().paging.flush(tables)

    def flusher(self):
        """The flush itself, bound once: a timed loop of flushed walks pays for the flush, not
        for finding the address space again on every call."""
        return self._memory().paging.flush

    def close(self) -> None:
        self.session.close()


class KdshellPythonReader(KdshellReader):
    """kdshell as it runs where the install had no C compiler: the Python walk alone."""

    name = "kdshell-python"
    compiled = False


class KdmpReader:
    name = "kdmp-parser"

    def __init__(self, path: str, dtb: int | None = None):
        import kdmp_parser

        self.dump = kdmp_parser.KernelDumpParser(path)
        self.dtb = dtb or 0

    def first_command(self, pa: int):
        page = self.dump.read_physical_page(pa)
        if page is None:
            raise RuntimeError(f"kdmp-parser has no page at {pa:#x}")
        return page

    def page(self, pfn: int) -> bytes:
        return self.dump.read_physical_page(pfn << 12)

    def translator(self):
        """A one-argument translator for checks; timed loops call translate_virtual(va, dtb)
        themselves, as kdmp-parser's documentation shows (a wrapper would add its own cost)."""
        tv, dtb = self.dump.translate_virtual, self.dtb

        def translate(va: int):
            return tv(va, dtb)

        return translate

    def translate(self, va: int):
        return self.dump.translate_virtual(va, self.dtb)

    def reader(self):
        rv, dtb = self.dump.read_virtual_page, self.dtb

        def read(va: int, size: int) -> bytes:  # page by page: its API's unit
            out = bytearray()
            end = va + size
            while va < end:
                page = rv(va & ~0xFFF, dtb)
                if page is None:
                    raise KeyError(f"{va:#x} not present")
                off = va & 0xFFF
                take = min(0x1000 - off, end - va)
                out += page[off:off + take]
                va += take
            return bytes(out)

        return read

    def close(self) -> None:
        self.dump = None


class Vol3Reader:
    name = "volatility3"

    def __init__(self, path: str, dtb: int | None = None):
        import os

        from volatility3.framework import contexts
        from volatility3.framework.layers import crash, physical

        self.ctx = ctx = contexts.Context()
        ctx.config["file.location"] = "file://" + os.path.abspath(path)
        ctx.add_layer(physical.FileLayer(ctx, "file", "file"))
        ctx.config["crash.base_layer"] = "file"
        with open(path, "rb") as f:
            head = f.read(8)
        cls = crash.WindowsCrashDump64Layer if head == b"PAGEDU64" else crash.WindowsCrashDump32Layer
        self.layer = cls(ctx, "crash", "crash")
        ctx.add_layer(self.layer)
        self.dtb = dtb if dtb is not None else self.layer.dtb
        self._virt = None

    def first_command(self, pa: int):
        return self.layer.read(pa, 16)

    def page(self, pfn: int) -> bytes:
        return self.layer.read(pfn << 12, 0x1000)

    @property
    def virt(self):
        if self._virt is None:
            from volatility3.framework.layers import intel

            self.ctx.config["virt.memory_layer"] = "crash"
            self.ctx.config["virt.page_map_offset"] = self.dtb
            self._virt = intel.WindowsIntel32e(self.ctx, "virt", "virt")
            self.ctx.add_layer(self._virt)
        return self._virt

    def translator(self):
        tr = self.virt.translate

        def translate(va: int):
            try:
                return tr(va)[0]
            except Exception:  # volatility3's InvalidAddressException and friends
                return None

        return translate

    def translate(self, va: int):
        return self.translator()(va)

    def reader(self):
        return self.virt.read

    def close(self) -> None:
        self.layer = self._virt = self.ctx = None


def open_reader(reader: str, path: str, dtb: int | None = None):
    return {"kdshell": KdshellReader, "kdshell-python": KdshellPythonReader, "kdmp-parser": KdmpReader, "volatility3": Vol3Reader}[reader](path, dtb)


def memory_mb() -> dict:
    """This process's memory: peak RSS, and now its anonymous and file-backed RSS.

    Peak RSS is VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child started by
    a big parent would report at least the parent's size. A reader that maps the dump (kdshell)
    has the pages it touched in its RSS as file-backed memory: page cache the kernel can drop at
    any time, not the reader's own state. The anonymous part is what the reader itself allocated
    (indexes, copies, Python objects)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    name = "peak_mb" if key == "VmHWM" else key[3:].lower() + "_mb"
                    out[name] = int(value.split()[0]) / 1024
    except OSError:
        pass
    if "peak_mb" not in out:
        import resource

        out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out
