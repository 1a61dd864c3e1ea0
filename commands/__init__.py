"""Command families; importing this package registers every command with the dispatcher."""
from kdshell.commands import dt, memory, meta, stack, symbols, target  # noqa: F401
