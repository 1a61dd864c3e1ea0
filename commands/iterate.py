"""The iteration extensions: !for_each_process, !for_each_thread, !for_each_module,
!for_each_frame and !list run a command for each object, its address (or fields) replacing the
@#Name words (@#Process, @#Thread, @#Base ...) or in @$extret (!list). They are loops of
kdshell.script.flow: Ctrl-C and .scriptstop stop them, .break leaves them.
"""
from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING

from kdshell.dispatch import Invocation, command, needs_memory
from kdshell.errors import CommandError, MemoryNotPresent
from kdshell.expr import Evaluator
from kdshell.format import ptr
from kdshell.script import flow

if TYPE_CHECKING:
    from kdshell.session import Session


def _command_text(inv: Invocation, default: str) -> str:
    text = inv.text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].replace('\\"', '"')
    return text or default


def _fill(text: str, values: dict[str, str]) -> str:
    return re.sub(r"@#(\w+)", lambda m: values.get(m.group(1).lower(), m.group(0)), text)


@command("!for_each_process", family="kernel", syntax='!for_each_process ["CommandString"]', needs=(needs_memory,),
         summary="Run a command for each process; @#Process is its EPROCESS address",
         example='!for_each_process ".printf \\"%ma\\\\n\\", @#Process+5a8"')
def for_each_process(session: Session, inv: Invocation) -> None:
    text = _command_text(inv, "!process @#Process 0")
    procs = session.kernel.processes().processes
    flow.for_each(session, [_fill(text, {"process": f"0x{p.address:x}"}) for p in procs])


@command("!for_each_thread", family="kernel", syntax='!for_each_thread ["CommandString"]', needs=(needs_memory,),
         summary="Run a command for each thread of every process; @#Thread is its ETHREAD address",
         example='!for_each_thread "!thread @#Thread 2"')
def for_each_thread(session: Session, inv: Invocation) -> None:
    text = _command_text(inv, "!thread @#Thread")
    kernel = session.kernel

    def blocks() -> list[str]:
        out = []
        for p in kernel.processes().processes:
            for t in kernel.threads(p).threads:
                out.append(_fill(text, {"thread": f"0x{t.address:x}", "process": f"0x{p.address:x}"}))
        return out

    flow.for_each(session, blocks())


@command("!for_each_module", family="symbols", syntax='!for_each_module ["CommandString"]',
         summary="Run a command for each loaded module: @#Base, @#End, @#Size, @#ModuleName, @#ImageName, "
                 "@#TimeDateStamp, @#Checksum, @#ModuleIndex",
         example='!for_each_module ".if (@#TimeDateStamp < 0x50000000) { .echo @#ModuleName }"')
def for_each_module(session: Session, inv: Invocation) -> None:
    text = _command_text(inv, ".echo @#Base @#End @#ModuleName")
    blocks = []
    for i, m in enumerate(session.symbols.modules.modules):
        blocks.append(_fill(text, {
            "base": f"0x{m.base:x}", "end": f"0x{m.end:x}", "size": f"0x{m.size:x}", "modulename": m.name,
            "imagename": m.image_name, "loadedimagename": m.image_name, "modulenameindex": str(i),
            "moduleindex": f"0x{i:x}", "timedatestamp": f"0x{(m.timestamp or 0):x}",
            "checksum": f"0x{(m.checksum or 0):x}"}))
    flow.for_each(session, blocks)


@command("!for_each_frame", family="stack", syntax='!for_each_frame ["CommandString"]', needs=(needs_memory,),
         summary="Run a command in each frame of the current stack (@#Frame is the frame number)",
         example="!for_each_frame dv")
def for_each_frame(session: Session, inv: Invocation) -> None:
    text = _command_text(inv, "")
    frames = session.context.walk(session.context.kframes)
    try:
        flow.for_each(session, [f".frame 0x{i:x}" + (f"; {_fill(text, {'frame': f'0x{i:x}'})}" if text else "")
                                for i in range(len(frames))])
    finally:
        session.capture(".frame 0")


LIST_SYNTAX = '!list -x "Command" [-a "Arguments"] [-t [Module!]Type.Field] [-e] [-m Max] Address'


@command("!list", family="memory", syntax=LIST_SYNTAX, needs=(needs_memory,),
         summary="Walk a linked list from Address, running a command on each element (@$extret is its address)",
         example='!list -t nt!_LIST_ENTRY.Flink -x "dq @$extret L2" nt!PsActiveProcessHead',
         details="The next element is the pointer at the element (or at Type.Field's offset with -t);\n"
                 "the walk ends at a null pointer or back at the start. -a puts the element's address\n"
                 "and Arguments after Command; -e echoes each command; -m stops after Max elements.")
def list_(session: Session, inv: Invocation) -> None:
    try:
        args = shlex.split(inv.text)
    except ValueError:
        raise CommandError(f"!list: missing closing quote ({LIST_SYNTAX})") from None
    cmd, extra, field, echo, limit = "", None, 0, False, None
    rest: list[str] = []
    while args:
        a = args.pop(0)
        if a in ("-x", "-a", "-t", "-m") and not args:
            raise CommandError(f"!list: {a} needs a value ({LIST_SYNTAX})")
        if a == "-x":
            cmd = args.pop(0)
        elif a == "-a":
            extra = args.pop(0)
        elif a == "-e":
            echo = True
        elif a == "-m":
            limit = Evaluator(session).evaluate(args.pop(0))
        elif a == "-t":
            field = _field_offset(session, args.pop(0))
        else:
            rest.append(a)
    if not rest:
        raise CommandError(f"!list: which address? ({LIST_SYNTAX})")
    start = Evaluator(session).evaluate(" ".join(rest))
    memory = session.memory
    assert memory is not None
    size = 8 if session.is64 else 4
    elements: list[int] = []
    element = start
    seen = set()
    broken = None
    while element and element not in seen and (limit is None or len(elements) < limit):
        seen.add(element)
        elements.append(element)
        try:
            element = int.from_bytes(memory.read(element + field, size), "little")
        except MemoryNotPresent:  # the elements met so far still run; one line says where it ended
            broken = f"!list: the link at {ptr(element + field, session.is64)} is not in the dump; the list stops here"
            break
        if element == start:
            break

    def text_for(e: int) -> str:
        if extra is not None:
            return f"{cmd} {ptr(e, session.is64)} {extra}"
        return cmd if cmd else f"dp 0x{e:x} L{4 if session.is64 else 8}"

    def blocks() -> list[str]:
        out = []
        for e in elements:
            one = text_for(e)
            out.append((f".echo {one}; " if echo else "") + one)
        return out

    def extret(i: int) -> None:
        session.pseudo_registers["$extret"] = elements[i]

    flow.for_each(session, blocks(), extret)
    if broken:
        session.out.lines([broken])


def _field_offset(session: Session, spec: str) -> int:
    """`[Module!]Type.Field[.Sub]` -> the field's offset in the type."""
    name, _, path = spec.partition(".")
    module, _, tname = name.rpartition("!")
    if not path:
        raise CommandError(f"!list -t: {spec} names no field (Type.Field)")
    for _, source, _ in session.symbols.type_sources(module or None):
        t = source.find(tname)
        if t is None:
            continue
        found = t.find_field(path)
        if found is None:
            raise CommandError(f"!list -t: {tname} has no field {path}")
        return found[0]
    raise CommandError(f"Symbol {name} not found.")
