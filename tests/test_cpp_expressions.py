"""??: C++ expressions (kdshell/cppexpr.py, commands/cpp.py).

Truth, independent of the code under test:
- dt's layout and value lines (the offsets and values it prints for the same structure),
  `!process -1 0`'s Image line, dv's value of a local: each found by a different command;
- C++'s integer rules, written out here as literal results (int division truncates toward
  zero, unsigned int64 wraps, shifts act on the promoted left operand, hex literals past
  INT_MAX are unsigned int);
- WinDbg transcripts for the layouts (`int 0n65`, `unsigned int64 0xffffffff`ffffffff`,
  `ULONG 0`, `struct _OBJECT_TYPE * 0x...` followed by field lines, a UNICODE_STRING's type
  line then ` "text"` then its fields);
- the corpus dump's kernel (build 19041): _EPROCESS is 0xa40 bytes and ImageFileName is at
  0x5a8 (public layouts of that build), and the System process is `System`.
"""
from __future__ import annotations

import re

import pytest

import kdshell
import kdshell.commands  # noqa: F401  (registers the commands, ?? among them)
from conftest import CORPUS_SYMBOLS, REPO, TRIAGE_19041
from kdshell.cli import bundled_sample
from kdshell.dispatch import resolve

BIN = REPO / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"


def lines(session, command):
    return session.capture(command).splitlines()


def one(session, command):
    out = lines(session, command)
    assert len(out) == 1, out
    return out[0]


@pytest.fixture(scope="module")
def sample():
    dump, store = bundled_sample()
    with kdshell.open(dump, symbol_path=store, image_path=store) as s:
        s.progress = None
        yield s


def dt_offsets(session, type_name):
    """{field: offset} from dt's layout lines."""
    out = {}
    for line in lines(session, f"dt {type_name}"):
        m = re.match(r"\s+\+0x([0-9a-f]+) (\w+)\s*:", line)
        if m:
            out.setdefault(m.group(2), int(m.group(1), 16))
    return out


def number(text):
    """The value of `0n12`, `0x1c`, `0xffffc20a`00001040`, `0`."""
    text = text.replace("`", "")
    return int(text[2:], 10) if text.startswith("0n") else int(text, 16 if text.startswith("0x") else 10)


def test_dispatcher_routes_double_question_mark_to_cpp():
    cmd, inv = resolve("?? sizeof(nt!_EPROCESS)")
    assert cmd.name == "??" and inv.text == "sizeof(nt!_EPROCESS)"
    assert resolve("? 1+1")[0].name == "?"
    assert resolve("??1")[0].name == "??"


def test_sizeof_and_field_offset_match_dt(sample):
    offsets = dt_offsets(sample, "nt!_EPROCESS")
    for field in ("ActiveProcessLinks", "ImageFileName", "UniqueProcessId"):
        assert one(sample, f"?? #FIELD_OFFSET(nt!_EPROCESS, {field})") == f"long 0n{offsets[field]}"
    size = one(sample, "?? sizeof(nt!_EPROCESS)")
    assert size == "unsigned int64 0xa40"  # the layout line of the transcript
    assert number(size.split()[-1]) > max(offsets.values())
    assert one(sample, "?? sizeof(nt!_LIST_ENTRY)") == "unsigned int64 0x10"
    # the element after the first is sizeof bytes on: pointer arithmetic scales by it
    assert one(sample, "?? (unsigned int64)&((nt!_EPROCESS*)0)[1]") == "unsigned int64 0xa40"
    kpcb = dt_offsets(sample, "nt!_KPROCESS")["ThreadListHead"]
    assert one(sample, "?? #FIELD_OFFSET(nt!_EPROCESS, Pcb.ThreadListHead)") == f"long 0n{kpcb}"


def test_member_chains_match_dt_at_an_address(sample):
    dt = {m.group(1): m.group(2) for m in re.finditer(
        r"\+0x[0-9a-f]+ (\w+)\s*: (.*)", sample.capture("dt nt!_EPROCESS @$proc UniqueProcessId ActiveProcessLinks"))}
    pid = one(sample, "?? ((nt!_EPROCESS*)@$proc)->UniqueProcessId")
    assert pid.startswith("void * ") and number(pid.split()[2]) == number(dt["UniqueProcessId"].split()[0])
    flink = re.search(r"\[ (\S+) - (\S+) \]", dt["ActiveProcessLinks"])
    head = lines(sample, "?? ((nt!_EPROCESS*)@$proc)->ActiveProcessLinks.Flink")[0]
    assert head == f"struct _LIST_ENTRY * {flink.group(1)}"
    # `.` on a pointer and `->` on a structure are accepted, as WinDbg does
    assert lines(sample, "?? (*(nt!_EPROCESS*)@$proc).ActiveProcessLinks.Blink")[0] == \
        f"struct _LIST_ENTRY * {flink.group(2)}"
    stack = one(sample, "?? ((nt!_KTHREAD*)@$thread)->StackBase")
    dt_stack = re.search(r"StackBase\s*: (\S+)", sample.capture("dt nt!_KTHREAD @$thread StackBase")).group(1)
    assert stack == f"void * {dt_stack}"


def test_process_image_name_matches_bang_process(sample):
    image = re.search(r"Image: (\S+)", sample.capture("!process -1 0")).group(1)
    assert one(sample, "?? ((nt!_EPROCESS*)@$proc)->ImageFileName") == f'unsigned char [15] "{image}"'
    out = lines(sample, "?? @$proc")  # a typed pseudo-register: the pointer, then dt's lines
    assert out[0] == "struct _EPROCESS * " + one(sample, "? @$proc").split(" = ")[1].join(["0x", ""])
    assert f'ImageFileName    : [15]  "{image}"' in "\n".join(out)


def test_structure_layout_is_type_line_then_dt_lines(sample):
    out = lines(sample, "?? *(nt!_LIST_ENTRY*)&((nt!_EPROCESS*)@$proc)->ActiveProcessLinks")
    assert out[0] == "struct _LIST_ENTRY"
    assert out[2:] == lines(sample, "dt nt!_LIST_ENTRY @$proc+0x448")[1:]
    assert re.fullmatch(r"   \+0x000 Flink            : 0x\S+ _LIST_ENTRY.*", out[2])


def test_locals_match_dv(sample):
    try:
        sample.run(".frame 3")
        dv = re.search(r"Register = (\S+)", sample.capture("dv")).group(1)
        assert one(sample, "?? Register") == f"unsigned int * {dv}"
        assert one(sample, "?? *Register") == "Memory access error at '*Register'"  # the bad address
        sample.run(".frame 7")
        assert re.search(r'DeviceName = "(.*)"', sample.capture("dv")).group(1) == r"\Device\MyDrv"
        out = lines(sample, "?? DeviceName")
        assert out[:2] == ["struct _UNICODE_STRING", r' "\Device\MyDrv"']
        assert out[2] == "   +0x000 Length           : 0x1a"
        assert one(sample, "?? Status == 0") == "bool true"
        assert one(sample, "?? DeviceName.Length / 2") == "int 0n13"
        assert lines(sample, "?? &DeviceName")[0].startswith("struct _UNICODE_STRING * 0xffffc20a`")
    finally:
        sample.run(".frame 0")


def test_globals_with_types(sample):
    assert one(sample, "?? mydrv!MyDrvDriverObject") == "struct _DRIVER_OBJECT * 0x00000000`00000000"
    assert one(sample, "?? mydrv!MyDrvDriverObject->DriverName") == \
        "Memory access error at 'mydrv!MyDrvDriverObject->DriverName'"
    x = sample.capture("x nt!KeNumberProcessors").split()[0]
    assert one(sample, "?? &nt!KeNumberProcessors").startswith(f"char * 0x{x} ")  # char*: its string follows
    assert one(sample, "?? @@masm(nt!KeNumberProcessors)") == f"unsigned int64 0x{x}"
    assert one(sample, "?? @@c++(sizeof(nt!_LIST_ENTRY)) * 2") == "unsigned int64 0x20"


@pytest.mark.parametrize("expr, shown", [
    ("1+2*3", "int 0n7"),
    ("(1+2)*3", "int 0n9"),
    ("-7/2", "int 0n-3"),
    ("-7%2", "int 0n-1"),
    ("7/-2", "int 0n-3"),
    ("((unsigned int64)0 - 1)", "unsigned int64 0xffffffff`ffffffff"),
    ("0u - 1", "unsigned int 0xffffffff"),
    ("-1 < 0u", "bool false"),            # -1 converts to unsigned int
    ("-1 < 0", "bool true"),
    ("2147483647 + 1", "int 0n-2147483648"),
    ("(-2147483647 - 1) / -1", "int 0n-2147483648"),
    ("2147483648", "int64 0n2147483648"),
    ("0x80000000", "unsigned int 0x80000000"),
    ("0xffffffffffffffff", "unsigned int64 0xffffffff`ffffffff"),
    ("0xffffe584`22064000 & 0x3", "unsigned int64 0"),  # past INT64_MAX: unsigned
    ("(ULONG)(0xffffe584`22064000 & 0x3)", "ULONG 0"),
    ("1 << 33", "int 0n0"),
    ("1i64 << 33", "int64 0n8589934592"),
    ("-16 >> 2", "int 0n-4"),
    ("0x80000000 >> 31", "unsigned int 0x1"),
    ("010", "int 0n8"),
    ("~0", "int 0n-1"),
    ("!5", "bool false"),
    ("5 & 3 | 8 ^ 1", "int 0n9"),
    ("3 > 2 && 2 > 1", "bool true"),
    ("(0x76daf724-0x76daf620)/4", "int 0n65"),
    ("(unsigned char)0x141", "unsigned char 0x41 'A'"),
    ("(char)-1", "char 0n-1 ''"),
    ("sizeof(int) + sizeof(unsigned int64)", "unsigned int64 0xc"),
    ("(bool)7", "bool true"),
    ("((((((1))))))", "int 0n1"),
])
def test_cpp_integer_rules(sample, expr, shown):
    assert one(sample, f"?? {expr}") == shown


@pytest.mark.parametrize("expr, message", [
    ("foo", "Couldn't resolve error at 'foo'"),
    ("0n10", "Syntax error at '0n10'"),       # MASM's prefixes are not C++
    ("0y101", "Syntax error at '0y101'"),
    ("1/0", "Divide by zero error at '/0'"),
    ("1 +", "Syntax error at ''"),
    ("(1", "Syntax error at ''"),
    ("0x1ffffffffffffffff", "Overflow error at '0x1ffffffffffffffff'"),
    ("(nt!_NOSUCHTYPE*)0", "Couldn't resolve error at 'nt!_NOSUCHTYPE*)0'"),
    ("((nt!_EPROCESS*)@$proc)->NoSuchField", "Couldn't resolve error at 'NoSuchField'"),
    ("((nt!_EPROCESS*)0)->Pcb", "Memory access error at '(nt!_EPROCESS*)0)->Pcb'"),
    ("((unsigned char*)0)[0x7fffffffffffffff]", "Memory access error at '(unsigned char*)0)[0x7fffffffffffffff]'"),
    ("@nosuchreg", "Bad register error at '@nosuchreg'"),
    ("1 2", "Syntax error at '2'"),
    ("*5", "Type conflict error at '*5'"),
])
def test_errors_are_one_line(sample, expr, message):
    assert one(sample, f"?? {expr}") == message


def test_nesting_and_sizes_are_bounded(sample):
    deep = one(sample, "?? " + "(" * 2000 + "1" + ")" * 2000)
    assert deep.startswith("Syntax error at '((((") and "nested too deeply" in deep
    assert one(sample, "?? " + "-" * 3000 + "1").startswith("Syntax error at")
    assert one(sample, "?? " + "1+" * 5000 + "1").startswith("Syntax error at")  # too long
    assert one(sample, "??") .startswith("Syntax: ?? Expression")


@pytest.fixture(scope="module")
def d1(machines):
    with kdshell.open(machines.path("d1", "kernel"), symbol_path=MACHINE_SYMBOLS, image_path="") as s:
        s.progress = None
        yield s


def test_machine_process_and_offsets(d1):
    offsets = dt_offsets(d1, "nt!_EPROCESS")
    assert one(d1, "?? #FIELD_OFFSET(nt!_EPROCESS, ImageFileName)") == f"long 0n{offsets['ImageFileName']}"
    image = re.search(r"Image: (\S+)", d1.capture("!process -1 0")).group(1)
    shown = one(d1, "?? ((nt!_EPROCESS*)@$proc)->ImageFileName")
    assert re.fullmatch(rf'unsigned char \[\d+\] "{re.escape(image)}"', shown)


@pytest.fixture(scope="module")
def corpus():
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.progress = None
        yield s


def test_corpus_dump_arithmetic_and_type_errors(corpus):
    assert one(corpus, "?? (0x76daf724-0x76daf620)/4") == "int 0n65"
    assert one(corpus, "?? @$proc - @$proc") == "int64 0n0"
    assert one(corpus, "?? ((unsigned int64)0 - 1)") == "unsigned int64 0xffffffff`ffffffff"
    # amdppm has a public PDB only: its symbols have no types
    assert one(corpus, "?? amdppm!WriteIoMemRawEx") == \
        "Type information missing error at 'amdppm!WriteIoMemRawEx'"
    assert one(corpus, "?? sizeof(amdppm!_NOSUCH)") == "Couldn't resolve error at 'amdppm!_NOSUCH)'"
    # nt without its PDB: kdshell's built-in layout of build 19041 still answers
    assert one(corpus, "?? #FIELD_OFFSET(nt!_EPROCESS, ImageFileName)") == "long 0n1448"
    assert one(corpus, "?? ((nt!_EPROCESS*)@$proc)->ImageFileName") == 'unsigned char [15] "System"'
