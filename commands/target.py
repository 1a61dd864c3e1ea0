"""What the dump is: vertarget, .bugcheck, .time, .dumpdebug, .enumtag, the !blackbox* black boxes."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import construct

from kdshell.analysis.facts import black_boxes
from kdshell.dispatch import Invocation, command
from kdshell.dumpfile.blackbox import BLACK_BOXES, black_box, bsd_lines
from kdshell.dumpfile.header import TRIAGE_FIELD_NAMES
from kdshell.errors import CommandError
from kdshell.format import hex_ascii_lines, ptr
from kdshell.target import time_lines, version_lines

if TYPE_CHECKING:
    from kdshell.session import Session


@command("vertarget", family="target", syntax="vertarget",
         summary="Show the crashed machine's Windows version, kernel base and times")
def vertarget(session: Session, inv: Invocation) -> None:
    session.out.lines(version_lines(session))


@command(".bugcheck", family="target", syntax=".bugcheck",
         summary="Show the bug check code and its four parameters",
         details="The code says what kind of crash it was; '!analyze -v' explains the parameters.")
def bugcheck(session: Session, inv: Invocation) -> None:
    h = session.dump.header
    session.out.line(f"Bugcheck code {h.bugcheck_code:08X}")
    session.out.line("Arguments " + " ".join(ptr(p, h.is64) for p in h.bugcheck_parameters))


@command(".time", family="target", syntax=".time",
         summary="Show when the machine crashed and how long it had been running",
         details="The dump header's SystemTime and SystemUpTime; a dump that lacks them says so.")
def time_(session: Session, inv: Invocation) -> None:
    lines = time_lines(session.dump.header)
    if not lines:
        raise CommandError(".time: this dump's header holds no system time or uptime")
    session.out.lines(lines)


# Header fields .dumpdebug leaves out: raw buffers shown elsewhere, and padding.
_SKIP = {"Signature", "ValidDump", "PhysicalMemoryBlock", "ContextRecord", "Exception", "Reserved",
         "Reserved0", "Reserved2", "Reserved3", "Unused", "Unused1", "Spare", "ArchitectureSpecific",
         "VersionUser", "Comment", "Hdr", "DumpType", "Attributes", "MiniDumpFields"}


def _field_lines(layout: Any, values: Any, is64: bool) -> list[str]:
    """`Name   value` lines for each integer field of a construct layout, widths by field size."""
    lines = []
    for sub in layout.subcons:
        name = sub.name
        if not name or name in _SKIP:
            continue
        value = values[name]
        if isinstance(value, int):
            size = sub.sizeof()
            text = ptr(value, True) if size == 8 else f"{value:0{size * 2}x}"
            lines.append(f"{name:<22}{text}")
        elif isinstance(value, (list, construct.ListContainer)) and value and isinstance(value[0], int):
            for i, v in enumerate(value):
                lines.append(f"{name}[{i}]".ljust(22) + (ptr(v, True) if is64 else f"{v:08x}"))
    return lines


@command(".dumpdebug", family="target", syntax=".dumpdebug",
         summary="Show the dump file's header fields (layout and kind of the file itself)")
def dumpdebug(session: Session, inv: Invocation) -> None:
    d = session.dump
    h = d.header
    out = session.out
    bits = "64" if d.is64 else "32"
    out.line(f"----- {bits} bit {d.kind_line.split(':', 1)[0].replace(' File', '')} Analysis")
    out.line("")
    out.line(f"DUMP_HEADER{bits}:")
    out.lines(_field_lines(_header_layout(d), h.raw, d.is64))
    out.line(f"{'DumpType':<22}{h.dump_type:08x} ({d.type_name})")
    if h.comment:
        out.line(f"{'Comment':<22}'{h.comment}'")
    if d.attribute_names:
        out.line(f"{'Attributes':<22}{h.attributes:08x} ({' '.join(d.attribute_names)})")
    if h.minidump_fields is not None:
        names = [n for bit, n in TRIAGE_FIELD_NAMES.items() if h.minidump_fields & bit]
        out.line(f"{'MiniDumpFields':<22}{h.minidump_fields:08x} ({' '.join(names)})")
    if d.type_header is not None:
        out.line("")
        layout, title = _type_layout(d)
        out.line(f"{title}:")
        out.lines(_field_lines(layout, d.type_header, d.is64))
        if d.physical is not None:
            out.line(f"{'PresentPages':<22}{d.physical.present_pages:x}")
    if d.warnings:
        out.line("")
        out.lines(f"WARNING: {w}" for w in d.warnings)


def _header_layout(d: Any) -> Any:
    from kdshell.dumpfile.header import DUMP_HEADER32, DUMP_HEADER64
    return DUMP_HEADER64 if d.is64 else DUMP_HEADER32


def _type_layout(d: Any) -> Any:
    from kdshell.dumpfile import header as H
    t = d.dump_type
    if d.triage is not None:
        return (H.TRIAGE_DUMP64, "TRIAGE_DUMP64") if d.is64 else (H.TRIAGE_DUMP32, "TRIAGE_DUMP32")
    if t in (H.DUMP_TYPE_BITMAP_FULL, H.DUMP_TYPE_BITMAP_KERNEL):
        return H.BITMAP_DUMP_HEADER64, "BITMAP_DUMP_HEADER64"
    if t == H.DUMP_TYPE_SUMMARY:
        return H.SUMMARY_DUMP_HEADER, "SUMMARY_DUMP"
    if t == H.DUMP_TYPE_RDMP_COMPLETE:
        return H.FULL_RDMP_HEADER64, "FULL_RDMP_HEADER64"
    return H.KERNEL_RDMP_HEADER64, "KERNEL_RDMP_HEADER64"


@command(".enumtag", family="target", syntax=".enumtag",
         summary="List the secondary data blobs (bug check callback data) saved in the dump",
         details="Drivers can add data to a dump while the machine crashes; each blob has a GUID tag.")
def enumtag(session: Session, inv: Invocation) -> None:
    if inv.args:
        raise CommandError(".enumtag takes no arguments")
    blobs = session.dump.blobs()
    out = session.out
    if not blobs:
        out.line("No secondary data tags in the dump.")
        return
    for blob in blobs:
        out.line(f"{{{blob.tag_text.upper()}}} - {blob.data_size:#x} bytes")
        data = session.dump.read_file(blob.data_offset, min(blob.data_size, 0x40))
        out.lines("  " + line for line in hex_ascii_lines(data))


def _blackbox(session: Session, inv: Invocation) -> None:
    box = black_box(inv.name.lower())
    if inv.args:
        raise CommandError(f"{box.command} takes no arguments")
    out = session.out
    found = dict((b.command, blob) for b, blob in black_boxes(session))
    blob = found.get(box.command)
    if blob is None:
        tag = "{" + box.tag.upper() + "}"
        if not session.dump.blobs():
            out.line(f"No {box.what} here: this dump has no secondary data (DumpBlob); Windows 10 and later "
                     f"add it, tagged {tag}, to the complete, kernel and small memory dumps they write at a crash.")
        else:
            out.line(f"No {box.what} in this dump: its secondary data has no {tag} ({box.owner}) blob.")
        return
    data = session.dump.read_file(blob.data_offset, blob.data_size)
    if box.command == "!blackboxbsd":
        out.lines(bsd_lines(data))
        return
    out.line(f"{box.what}: {{{blob.tag_text.upper()}}} ({box.owner}) - {blob.data_size:#x} bytes; "
             "no public layout, not decoded:")
    out.lines(hex_ascii_lines(data))


for _box in BLACK_BOXES:
    command(_box.command, family="target", syntax=_box.command,
            summary=f"Show the {_box.what} from the dump's secondary data",
            details="Windows' own crash-time callbacks save these; '.enumtag' lists every blob.")(_blackbox)
