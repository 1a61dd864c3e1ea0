"""Command families; importing this package registers every command with the dispatcher."""
from kdshell.commands import analyze, cpp, dt, dump, io, kernel, locals, memory, iterate, meta, script, stack, symbols, sysinfo, target  # noqa: F401
