"""The error types every layer raises; the dispatcher turns them into one line for the user."""


class KdError(Exception):
    """An error whose message is fit to print as-is at the prompt (one line, the user's words)."""


class DumpFormatError(KdError):
    """The dump file is malformed: names the field and the file offset where it went wrong."""

    def __init__(self, message: str, field: str | None = None, offset: int | None = None) -> None:
        self.field = field
        self.offset = offset
        where = []
        if field:
            where.append(field)
        if offset is not None:
            where.append(f"at file offset {offset:#x}")
        super().__init__(f"{message} ({' '.join(where)})" if where else message)


class MemoryNotPresent(KdError):
    """An address whose bytes are not in the dump.

    `address` is the virtual or physical address asked for, `why` says what is missing in the
    user's words ("page 24d116 not present in the dump file", "prototype PTE", ...).
    """

    def __init__(self, address: int, why: str, physical: bool = False) -> None:
        self.address = address
        self.why = why
        self.physical = physical
        kind = "physical address" if physical else "address"
        super().__init__(f"Memory read error at {kind} {address:#x}: {why}")


class CommandError(KdError):
    """Bad command syntax or arguments."""


class DumpWriteError(KdError):
    """A dump could not be written (bad input, existing file, full disk, ...)."""


class SymbolFileError(KdError):
    """A symbol file (PDB) is truncated, corrupt or of a kind we cannot read; one line saying what."""

    def __init__(self, message: str, path: str | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class Quit(Exception):
    """Raised by `q`: the front end stops reading commands."""


class FlowSignal(Exception):
    """Not an error: `.break`, `.continue`, `.leave` and an aborted command program unwinding
    to the construct that ends them (kdshell.script.flow)."""
