"""Command families; importing this package registers every command with the dispatcher."""
from kdshell.commands import analyze, cpp, dt, dump, dx, io, iterate, kernel, locals, memory, meta, script, stack, symbols, sysinfo, target  # noqa: F401,E501
