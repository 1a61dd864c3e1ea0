"""Command families; importing this package registers every command with the dispatcher."""
from kdshell.commands import analyze, cpp, dt, dump, io, kernel, locals, memory, meta, stack, symbols, sysinfo, target, whea, checks  # noqa: F401
from kdshell.commands import hang, pnp, pool, process  # noqa: F401
