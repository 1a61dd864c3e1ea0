"""WinDbg's text of an Analysis (kdshell.analysis.analyze), and its JSON form from the same facts:
the short form and its "Probably caused by" line (also the banner's), `!analyze -v` (windbg.md
§2), `-show`, `.exr`, the teaching section, and `--analyze-json`. The CONTEXT, TRAP_FRAME and
STACK_TEXT blocks come from kdshell.stack.text, as `.cxr`, `.trap` and `kb` print them.

`have(name)` tells whether a command exists (the teaching section suggests only those): the
dispatcher's, handed in by the caller.
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Callable, Sequence

from kdshell import __version__
from kdshell.analysis import bugcodes
from kdshell.analysis.analyze import Analysis, Culprit
from kdshell.analysis.facts import black_boxes, cpu_facts, firmware_facts
from kdshell.analysis.dpcfacts import dpc_fields
from kdshell.analysis.irpfacts import irp_stack_lines
from kdshell.analysis.poolfacts import pool_fields, region_suffix
from kdshell.analysis.rules import BAD_IP, CRITICAL_PROCESS, HARDWARE, MANUAL, MEMORY, POOL, status_text
from kdshell.analysis.teach import explain
from kdshell.disasm import for_machine
from kdshell.errors import KdError
from kdshell.format import ptr
from kdshell.kernel.verifier import read_verifier, verifier_layout
from kdshell.kernel.whea import SEVERITIES, SOURCE_TYPES, mci_status_bits, name_of, section_summary
from kdshell.stack.text import RESETTING, KOptions, call_site, context_lines, frame_lines, missing_page_lines
from kdshell.view import SessionView



# --analyze-json's schema (also `!analyze -json` and `kdshell triage --json`): 1 the first; 2 adds
# "schema", "machine" and "whea"; 3 adds the dump's crash_time, uptime_s, build, machine,
# processors and computer, "processor" (the crashing one's number), and error_json's record for a
# dump that cannot be analysed (additions only)
JSON_SCHEMA = 3
STARS = "*" * 79
EMPTY = "*" + " " * 77 + "*"
BANNER = [STARS, EMPTY, "*" + " " * 24 + "Bugcheck Analysis" + " " * 36 + "*", EMPTY, STARS]


# -- one-line forms ------------------------------------------------------------------------------
def probably_caused_by(a: Analysis) -> str:
    """`Probably caused by : amdppm.sys ( amdppm!WriteIoMemRawEx+70 )` or what replaces it."""
    if a.verdict == MANUAL:
        return f"No driver is to blame : {a.name} (the crash was requested on purpose)"
    if a.culprit is not None and a.culprit.frame is None and not a.culprit.function:
        return f"Probably caused by : {a.culprit.image}"  # named by the dump (0x9F_3: the IRP's holder)
    if a.culprit is not None:
        return f"Probably caused by : {a.culprit.image} ( {a.culprit.symbol_name} )"
    if a.verdict == BAD_IP:
        ip = a.fault_frame.ip if a.fault_frame is not None else 0
        return f"Probably caused by : Unknown_Image ( bad instruction pointer {ptr(ip, a.is64)} )"
    if a.verdict in (POOL, MEMORY):
        where = f" ( {a.detector.symbol_name} )" if a.detector is not None else ""
        return f"Probably caused by : {a.pseudo_module}{where}"
    if a.verdict in (HARDWARE, CRITICAL_PROCESS):
        return f"Probably caused by : {a.pseudo_module}"
    return "Probably caused by : Unknown_Image ( ANALYSIS_INCONCLUSIVE )"


def bugcheck_line(a: Analysis) -> str:
    return f"BugCheck {a.code:X}, {{{', '.join(f'{p:x}' for p in a.params)}}}"


# -- the bug check's name and parameters (also -show) --------------------------------------------
def title_lines(code: int, params: Sequence[int], is64: bool = True) -> list[str]:
    entry = bugcodes.lookup(code)
    lines = [bugcodes.describe(code)]
    if entry is not None and entry.notes:
        note = entry.notes[0].upper() + entry.notes[1:]
        lines.append(note if note.endswith(".") else note + ".")
    lines.append("Arguments:")
    meanings = entry.parameters if entry is not None else ("",) * 4
    for i in range(4):
        value = params[i] if i < len(params) else 0
        lines.append(f"Arg{i + 1}: {_hex(value, is64)}, {meanings[i] or '(not documented)'}")
    return lines


def _hex(value: int, is64: bool) -> str:
    return f"{value & 0xFFFFFFFFFFFFFFFF:016x}" if is64 else f"{value & 0xFFFFFFFF:08x}"


# -- the short form ----------------------------------------------------------------------------------
def short_lines(a: Analysis) -> list[str]:
    return BANNER + ["", "Use !analyze -v to get detailed debugging information.", "", bugcheck_line(a), "",
                     probably_caused_by(a), "", "Followup:     MachineOwner", "---------", ""]


# -- the -v form ---------------------------------------------------------------------------------------
def verbose_lines(session: SessionView, a: Analysis) -> list[str]:
    is64 = a.is64
    out = BANNER + [""] + title_lines(a.code, a.params, is64) + ["", "Debugging Details:", "------------------", ""]

    def field(name: str, value: str, sep: str = "  ") -> None:
        out.extend([f"{name}:{sep}{value}", ""])

    out += ["KEY_VALUES_STRING: 1", ""]
    for key, value in (("Analysis.Elapsed.mSec", f"{a.elapsed_ms:.0f}"),
                       ("Bugcheck.Code.DumpHeader", f"{a.code:#x}"),
                       ("Failure.Bucket", a.bucket), ("Failure.Hash", a.failure_hash)):
        out += [f"    Key  : {key}", f"    Value: {value}", ""]
    out.append("")
    field("BUGCHECK_CODE", f"{a.code:x}")
    for i, p in enumerate(a.params):
        field(f"BUGCHECK_P{i + 1}", f"{p:x}", " ")
    field("FILE_IN_CAB", os.path.basename(a.dump_path))
    attributes = session.dump.header.attributes
    if attributes:
        field("DUMP_FILE_ATTRIBUTES", f"{attributes:#x}", " ")
    for name, value in _or_none(firmware_facts, session).items():
        field(name, value)
    cpu = _or_none(cpu_facts, session)
    for name, value in cpu.items():
        field(name, value, " ")
    for name, value in whea_fields(a):
        field(name, value)
    if a.base_code in VERIFIER_CODES:
        field("VERIFIER_LEVEL", verifier_level(session))
    if a.critical_process:
        field("CRITICAL_PROCESS", a.critical_process)
    if a.base_code == 0x9F:
        field("DRVPOWERSTATE_SUBCODE", f"{a.params[0]:x}")
    if a.irp:
        field("IRP_ADDRESS", ptr(a.irp["irp"], is64))
        field("DEVICE_OBJECT", ptr(a.irp["device_object"], is64))
        field("DRIVER_OBJECT", ptr(a.irp["driver_object"], is64))
        if a.irp.get("image"):
            field("IMAGE_NAME_OF_DRIVER", a.irp["image"])
        out += irp_stack_lines(session, a.irp["irp"])
    if a.fault_address is not None and a.access in ("read", "write") and a.exception is None:
        field(f"{a.access.upper()}_ADDRESS", f"{a.fault_address:x}{region_suffix(session, a.fault_address)}")
    for name, value in pool_fields(session, a.code, a.params) + dpc_fields(session, a.code, a.params, a.stack):
        field(name, value)
    if a.exception is not None and a.exception.address is not None:
        out += [f"EXCEPTION_RECORD:  {a.exception.address:x} -- (.exr {a.exception.address:#x})"]
        out += exr_lines(session, a.exception.address) + [""]
    if a.context_record is not None:
        out += [f"CONTEXT:  {a.context_record:x} -- (.cxr {a.context_record:#x})"]
        out += context_block(session, a.context_record, trap=False) + [""]
    if a.trap_frame is not None:
        out += [f"TRAP_FRAME:  {a.trap_frame:x} -- (.trap {a.trap_frame:#x})"]
        out += context_block(session, a.trap_frame, trap=True) + [""]
    for box, _ in black_boxes(session):
        # WinDbg prints the box's command after the count, and two blank lines, except winlogon's.
        if box.field == "BLACKBOXWINLOGON":
            field(box.field, "1", " ")
        else:
            out.extend([f"{box.field}: 1 ({box.command})", "", ""])
    if a.process_name:
        field("PROCESS_NAME", a.process_name)
    if a.irql is not None:
        field("CURRENT_IRQL", f"{a.irql:x}")
    exc = a.exception
    if exc is not None:
        text = status_text(exc.code)
        field("ERROR_CODE", f"(NTSTATUS) {exc.code:#x}" + (f" - {text}" if text else ""), " ")
        field("EXCEPTION_CODE_STR", f"{exc.code:x}")
        for i, param in enumerate(exc.parameters[:2]):
            field(f"EXCEPTION_PARAMETER{i + 1}", _hex(param, is64))
        if a.fault_address is not None and a.access in ("read", "write"):
            field(f"{a.access.upper()}_ADDRESS", f"{a.fault_address:x}{region_suffix(session, a.fault_address)}")
    if a.access == "execute" and a.fault_address is not None:
        field("FAILED_INSTRUCTION_ADDRESS", f"{a.fault_address:x}")
    if a.verdict == MANUAL and a.detector is not None:
        field("BUGCHECKING_DRIVER", a.detector.image)
    if a.stack:
        out.append("STACK_TEXT:  ")
        out += frame_lines(a.stack, KOptions(mode="b"), symbols=session.symbols, memory=session.memory,
                           is64=is64, header=False)
        out.append("")
    blamed = a.culprit or (a.detector if a.verdict != MANUAL else None)
    if a.verdict == BAD_IP and a.fault_frame is not None:
        field("FAILED_INSTRUCTION_ADDRESS", f"\n{ptr(a.fault_frame.ip, is64)} ??              ???")
    if blamed is not None and blamed.ip is not None:
        out += ["FOLLOWUP_IP: ", blamed.symbol_name, followup_instruction(session, blamed.ip), ""]
    if a.culprit is not None:
        if a.culprit.frame is not None or a.culprit.function:
            field("SYMBOL_NAME", a.culprit.symbol_name)
        field("MODULE_NAME", a.culprit.module, " ")
        field("IMAGE_NAME", a.culprit.image)
        if a.culprit.image_version:
            field("IMAGE_VERSION", a.culprit.image_version)
    elif a.pseudo_module:
        if a.detector is not None:
            field("SYMBOL_NAME", a.detector.symbol_name)
        field("MODULE_NAME", a.pseudo_module, " ")
        field("IMAGE_NAME", a.pseudo_module)
    if a.stack:
        field("STACK_COMMAND", a.stack_command)
    if a.culprit is not None and a.culprit.frame is not None:
        field("BUCKET_ID_FUNC_OFFSET", f"{a.culprit.offset:x}")
    field("FAILURE_BUCKET_ID", a.bucket)
    for key in ("OS_VERSION", "BUILDLAB_STR", "OSPLATFORM_TYPE", "OSNAME"):
        if a.os.get(key):
            field(key, a.os[key])
    field("FAILURE_ID_HASH", a.failure_hash)
    for note in a.notes:
        out.append(f"NOTE: {note}")
    for error in a.errors:
        out.append(f"WARNING: {error}")
    if a.notes or a.errors:
        out.append("")
    out += ["Followup:     MachineOwner", "---------", ""]
    return out


HARDWARE_WORDS = ("This is a hardware error report, not a driver bug: the {who} detected an error it could not "
                  "correct and Windows stopped the machine to protect the data. No driver on the stack caused it; "
                  "look at the hardware named here (firmware/BIOS and microcode updates, overclocking or "
                  "undervolting, temperatures, power supply, and the part itself).")


VERIFIER_CODES = (0xC4, 0xC9)  # DRIVER_VERIFIER_DETECTED_VIOLATION, DRIVER_VERIFIER_IOMANAGER_VIOLATION


def verifier_level(session: SessionView) -> str:
    """The verify level (verifier.exe's /flags) in nt!MmVerifierData, with the command to see it."""
    k = session.kernel
    at = k.symbol("MmVerifierData")
    if at is None:
        return "unknown (nt!MmVerifierData needs the kernel's symbols)"
    try:
        level = read_verifier(k.memory, at, verifier_layout(k.offsets, k.build), k.is64).level
    except KdError:
        return "unknown (nt!MmVerifierData is not in the dump)"
    return f"{level:#x} -- (!verifier)"


def whea_fields(a: Analysis) -> list[tuple[str, str]]:
    """0x124's lines: the error source (P1), the record (P2) and what its sections say."""
    if a.base_code != 0x124:
        return []
    p1, p2 = a.params[0], a.params[1]
    out = [("WHEA_ERROR_SOURCE", f"{name_of(SOURCE_TYPES, p1)} (P1 = {p1:#x})"),
           ("WHEA_ERROR_RECORD", f"{p2:x} -- (!errrec {p2:#x})")]
    rec = a.whea
    who = "processor" if p1 in (0, 1) else "platform"
    if rec is not None:
        out.append(("WHEA_ERROR_SEVERITY", name_of(SEVERITIES, rec.severity)))
        for s in rec.sections:
            if s.mca is not None:
                m, e = s.mca, s.mca.error
                out.append(("WHEA_ERROR_TYPE", f"{e.kind}: {e.mnemonic} ({e.words})"))
                out.append(("WHEA_MCA_BANK", f"processor {m.processor}, bank {m.bank}: MCi_STATUS {m.status:x} "
                                             f"({' '.join(mci_status_bits(m.status, m.vendor))}), MCi_ADDR "
                                             f"{m.address:x}, MCi_MISC {m.misc:x}"))
            elif s.generic is not None or s.arm is not None:
                out.append(("WHEA_PROCESSOR_ERROR", section_summary(s)))
            elif s.memory is not None:
                who = "memory controller"
                out.append(("WHEA_MEMORY_ERROR", section_summary(s)))
            elif s.pcie is not None:
                who = "PCI Express device"
                out.append(("WHEA_PCIE_ERROR", section_summary(s)))
    out.append(("HARDWARE_ERROR", HARDWARE_WORDS.format(who=who)))
    return out


def _or_none(facts: Callable[[SessionView], dict[str, str]], session: SessionView) -> dict[str, str]:
    """A facts function's answer, or nothing when the dump cannot give it."""
    try:
        return facts(session)
    except KdError:
        return {}


def machine_json(session: SessionView) -> dict[str, Any]:
    """The machine facts of -v (schema addition, version 2): firmware (SMBIOS), CPU (KPRCB) and
    the black boxes in the secondary data; each empty when the dump lacks it."""
    cpu: dict[str, Any] = {}
    for key, value in _or_none(cpu_facts, session).items():
        name = key.removeprefix("CPU_").lower()  # -v's hex numbers as JSON numbers
        cpu[name] = int(value, 16) if name in ("count", "mhz", "family", "model", "stepping") else value.strip()
    return {"firmware": {k.lower(): v for k, v in _or_none(firmware_facts, session).items()}, "cpu": cpu,
            "black_boxes": [{"field": box.field, "command": box.command, "size": blob.data_size}
                            for box, blob in black_boxes(session)]}


def context_block(session: SessionView, address: int, *, trap: bool) -> list[str]:
    """What `.cxr ADDR` / `.trap ADDR` print, from the record itself (the user's context is not
    touched), then WinDbg's "Resetting default scope"."""
    state = session.context
    try:
        frame = state.trap_frame(address) if trap else state.context_record(address)
    except KdError as exc:
        return [str(exc), RESETTING]
    lines, errors = context_lines(session.memory, frame.registers, session.is64, session.symbolize, trap=trap,
                                  machine=state.machine)
    return missing_page_lines(errors) + lines + [RESETTING]


def followup_instruction(session: SessionView, ip: int) -> str:
    memory = session.memory
    if memory is None:
        return f"{ptr(ip, session.is64)} ??              ???"
    dis = for_machine(session.context.machine, session.symbolize)
    return dis.format(dis.decode(memory, ip, 1)[0])


# -- .exr ------------------------------------------------------------------------------------------------
def exr_lines(session: SessionView, address: int) -> list[str]:
    """`.exr ADDR`: the EXCEPTION_RECORD, as WinDbg prints it."""
    from kdshell.analysis.facts import exception_record

    try:
        rec = exception_record(session, address)
    except KdError as exc:
        return [f"Unable to read the exception record at {ptr(address, session.is64)}: {exc}"]
    is64 = session.is64
    ip = rec["ExceptionAddress"]
    where = ""
    sym = session.symbolize(ip)
    if sym is not None:
        name, off = sym
        where = f" ({name}+0x{off:016x})" if is64 else f" ({name}+0x{off:08x})"
    code = rec["ExceptionCode"]
    text = status_text(code)
    lines = [f"ExceptionAddress: {_hex(ip, is64)}{where}",
             f"   ExceptionCode: {code:08x}" + (f" ({text})" if text else ""),
             f"  ExceptionFlags: {rec['ExceptionFlags']:08x}",
             f"NumberParameters: {rec['NumberParameters']}"]
    info = rec["ExceptionInformation"]
    for i, value in enumerate(info):
        lines.append(f"   Parameter[{i}]: {_hex(value, is64)}")
    if code == 0xC0000005 and len(info) >= 2:
        verb = {0: "Attempt to read from address", 1: "Attempt to write to address",
                8: "Attempt to execute non-executable address"}.get(info[0])
        if verb:
            lines.append(f"{verb} {_hex(info[1], is64)}")
    return lines


# -- the teaching section ------------------------------------------------------------------------------
def teach_lines(a: Analysis, have: Callable[[str], bool]) -> list[str]:
    e = explain(a, have=have)
    out = ["What happened (for newcomers):", "------------------------------"]
    for paragraph in e.what:
        out += _wrap(paragraph, 96) + [""]
    if e.next:
        out.append("What to look at next:")
        for cmd, why in e.next:
            out += [f"  {cmd}", f"      {why}"]
        out.append("")
    return out


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


# -- JSON -------------------------------------------------------------------------------------------------
def _addr(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def _culprit_json(c: Culprit | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {"module": c.module, "image": c.image, "symbol_name": c.symbol_name, "function": c.function,
            "offset": _addr(c.offset), "module_offset": _addr(c.module_offset), "frame": c.frame,
            "ip": _addr(c.ip), "kind": c.kind or "driver", "guessed": c.guessed, "image_version": c.image_version,
            "timestamp": _addr(c.timestamp), "company": c.company}


def _whea_json(a: Analysis) -> dict[str, Any] | None:
    """0x124's record (schema addition of kdshell 0.1: absent before, null for other bug checks)."""
    if a.base_code != 0x124:
        return None
    rec = a.whea
    out: dict[str, Any] = {"source_type": a.params[0], "source": name_of(SOURCE_TYPES, a.params[0]),
                           "record": _addr(a.params[1]), "decoded": rec is not None}
    if rec is None:
        return out
    out["severity"] = name_of(SEVERITIES, rec.severity)
    out["sections"] = [s.name for s in rec.sections]
    mca = rec.first("mca")
    if mca is not None and mca.mca is not None:
        m = mca.mca
        out["mca"] = {"processor": m.processor, "bank": m.bank, "status": _addr(m.status), "address": _addr(m.address),
                      "misc": _addr(m.misc), "error": m.error.mnemonic, "class": m.error.kind,
                      "status_bits": mci_status_bits(m.status, m.vendor)}
    return out


def error_json(path: str, error: str) -> dict[str, Any]:
    """The record of a dump that could not be opened or analysed: the schema, the file, the error."""
    return {"schema": JSON_SCHEMA, "kdshell": __version__, "dump": {"file": path}, "error": error}


def dump_facts(session: SessionView) -> dict[str, Any]:
    """The header's facts a triage row shows: when it crashed (UTC), the uptime, the build, the
    machine; the computer's name is not in a dump's header (WinDbg's `Machine Name:` is empty too)."""
    h = session.dump.header
    when = h.system_datetime
    utc = None if when is None else when.astimezone(datetime.timezone.utc)
    return {"crash_time": utc.strftime("%Y-%m-%dT%H:%M:%SZ") if utc is not None else None,
            "uptime_s": None if h.system_uptime is None else h.system_uptime // 10_000_000,
            "build": h.build, "machine": h.machine_name, "processors": h.number_processors, "computer": None}


def processor_json(session: SessionView) -> dict[str, Any]:
    """The crashing processor's number (its CPU facts are "machine"'s "cpu")."""
    try:
        number: int | None = session.context.default_processor
    except KdError:
        number = None
    return {"number": number}


def analysis_json(session: SessionView, a: Analysis, have: Callable[[str], bool]) -> dict[str, Any]:
    """The JSON form: the same facts as -v, for scripts and triage pipelines. Addresses and
    other 64-bit values are hex strings (JSON numbers lose precision past 2**53). Versioned by
    "schema" (JSON_SCHEMA)."""
    entry = a.bugcheck
    e = explain(a, have=have)
    stack = []
    for f, s in zip(a.stack, a.symbols):
        stack.append({"frame": f.number, "child_sp": _addr(f.sp), "return_address": _addr(f.ret), "ip": _addr(f.ip),
                      "call_site": call_site(session.symbols, f, session.is64), "module": s.module_name, "function": s.function,
                      "how": f.how, "guessed": f.guess, "trap_frame": _addr(f.trap_frame)})
    exc = a.exception
    blamed = a.culprit
    return {
        "kdshell": __version__,
        "schema": JSON_SCHEMA,
        "dump": {"file": a.dump_path, "kind": a.dump_kind, **dump_facts(session)},
        "processor": processor_json(session),
        "bugcheck": {"code": f"{a.code:#x}", "name": a.name, "title": a.title,
                     "description": entry.notes if entry else "",
                     "parameters": [{"value": f"{p:#x}", "meaning": (entry.parameters[i] if entry else "")}
                                    for i, p in enumerate(a.params)]},
        "os": {"version": a.os.get("OS_VERSION"), "build_lab": a.os.get("BUILD_LAB"),
               "branch": a.os.get("BUILDLAB_STR"), "platform": a.os.get("OSPLATFORM_TYPE"), "name": a.os.get("OSNAME")},
        "process_name": a.process_name,
        "irql": a.irql,
        "fault_context": {"kind": a.fault.kind, "address": _addr(a.fault.address) if a.fault.kind != "processor"
                          else a.fault.address, "command": a.fault.command},
        "trap_frame": _addr(a.trap_frame),
        "context_record": _addr(a.context_record),
        "exception": None if exc is None else {
            "record": _addr(exc.address), "code": f"{exc.code:#x}", "text": status_text(exc.code),
            "flags": exc.flags, "address": _addr(exc.ip), "parameters": [_addr(p) for p in exc.parameters]},
        "access": None if a.access is None else {"kind": a.access, "address": _addr(a.fault_address)},
        "stack": stack,
        "faulting_frame": a.start if a.stack else None,
        "stack_command": a.stack_command if a.stack else None,
        "verdict": a.verdict,
        "culprit": _culprit_json(blamed),
        "detector": _culprit_json(a.detector),
        "probably_caused_by": probably_caused_by(a),
        "symbol_name": blamed.symbol_name if blamed else (a.detector.symbol_name if a.detector else None),
        "module_name": blamed.module if blamed else a.pseudo_module,
        "image_name": blamed.image if blamed else a.pseudo_module,
        "bucket_id_func_offset": f"{blamed.offset:x}" if blamed and blamed.frame is not None else None,
        "failure_bucket_id": a.bucket,
        "failure_id_hash": a.failure_hash,
        "critical_process": a.critical_process,
        "machine": machine_json(session),
        "whea": _whea_json(a),
        "irp": None if a.irp is None else {k: (_addr(v) if isinstance(v, int) else v) for k, v in a.irp.items()},
        "explanation": {"what_happened": e.what, "next_steps": [{"command": c, "why": w} for c, w in e.next]},
        "notes": a.notes,
        "errors": a.errors,
        "analysis_ms": round(a.elapsed_ms, 1),
    }


def json_text(session: SessionView, a: Analysis, have: Callable[[str], bool]) -> str:
    return json.dumps(analysis_json(session, a, have), indent=2)
