"""Command families; importing this package registers every command with the dispatcher."""
from kdshell.commands import dt, memory, meta, symbols, target  # noqa: F401
