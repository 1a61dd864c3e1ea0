"""Command families; importing this package registers every command with the dispatcher."""
from kdshell.commands import memory, meta, target  # noqa: F401
