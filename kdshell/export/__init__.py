"""`.dump`: writing a dump out of the open one. minidump.py gathers a small memory dump's parts
(context, stack, KPRCB/ETHREAD/EPROCESS copies, module list, data blocks) from a complete or
kernel dump; convert.py turns one kind into another (/f, /k, /ka). They read through the kernel,
stack and symbol layers and write with the byte-level writers of kdshell.dumpfile."""
