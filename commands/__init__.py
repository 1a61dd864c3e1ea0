"""Command families; importing this package registers every command with the dispatcher."""
from kdshell.commands import (  # noqa: F401
    analyze, checks, cpp, dt, dump, dx, hang, io, iterate, kernel, locals, memory, meta, pnp, pool, process, queues,
    script, stack, symbols, sysinfo, target, whea,
)
