"""Debugger command programs: control flow tokens, .printf, aliases, pseudo-registers, and how a
loop that never ends is stopped (Ctrl-C, .scriptstop), on a test machine and a corpus dump."""
import _thread
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, TRIAGE_19041

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["machine", "corpus"])
def session(request, machines):
    if request.param == "machine":
        path, sympath = machines.path("d1", "complete"), ""
    else:
        path, sympath = TRIAGE_19041, str(CORPUS_SYMBOLS)
        if not path.exists():
            pytest.skip("corpus not available")
    with kdshell.open(path, symbol_path=sympath, offline=True) as s:
        s.progress = None
        yield s


def lines(session, text):
    return session.capture(text).splitlines()


# -- control flow -------------------------------------------------------------------------------
def test_for_while_do(session):
    assert lines(session, '.for (r $t0 = 0; @$t0 < 3; r $t0 = @$t0 + 1) { .printf "i=%d\\n", @$t0 }') == \
        ["i=0", "i=1", "i=2"]
    assert lines(session, "r $t1 = 0; .while (@$t1 < 2) { r $t1 = @$t1 + 1; .echo w }") == ["w", "w"]
    assert lines(session, ".do { .echo once } (0)") == ["once"]
    # several increment commands, separated by ';' inside the parentheses
    assert lines(session, '.for (r $t0 = 0; @$t0 < 2; r $t0 = @$t0 + 1; r $t1 = @$t1 + 10) { .printf "%x\\n", @$t1 }') == \
        ["2", "12"]


def test_if_elsif_else_break_continue(session):
    assert lines(session, ".if (1) { .echo yes } .else { .echo no }") == ["yes"]
    assert lines(session, ".if (0) { .echo a } .elsif (2 > 1) { .echo b } .else { .echo c }") == ["b"]
    assert lines(session, ".if (0) { .echo a } .elsif (0) { .echo b } .else { .echo c }") == ["c"]
    out = lines(session, ".for (r $t0 = 0; @$t0 < 10; r $t0 = @$t0 + 1) { .if (@$t0 == 1) { .continue }; "
                         ".if (@$t0 == 3) { .break }; .printf \"%d\\n\", @$t0 }")
    assert out == ["0", "2"]


def test_blocks_span_lines_in_scripts(session, tmp_path):
    script = tmp_path / "s.txt"
    script.write_text(".for (r $t0 = 0; @$t0 < 2; r $t0 = @$t0 + 1)\n{\n  .if (@$t0 == 0) {\n    .echo zero\n  }\n"
                      "  .else {\n    .echo other\n  }\n}\n.echo done\n")
    for run in (f"$$<{script}", f"$$><{script}"):
        out = [line for line in lines(session, run) if not line.startswith("0: kd>")]
        assert out == ["zero", "other", "done"]


def test_foreach(session):
    assert lines(session, ".foreach (t { .echo a b c }) { .echo [t] t }") == ["[t] a", "[t] b", "[t] c"]
    assert lines(session, '.foreach /pS 1 /ps 1 /s (t "1 2 3 4 5") { .echo t }') == ["2", "4"]
    assert lines(session, '.foreach /s (t "x y") { .echo ${t}! }') == ["x!", "y!"]


def test_foreach_file(session, tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("one\ntwo  three\n")
    assert lines(session, f'.foreach /f (w "{f}") {{ .echo w }}') == ["one", "two", "three"]
    assert "Couldn't open file" in session.capture(f'.foreach /f (w "{tmp_path / "none"}") {{ .echo w }}')


def test_j_z_block_catch_leave(session):
    assert lines(session, "j 1 .echo one ; .echo two") == ["one"]
    assert lines(session, "j (0) '.echo one' ; '.echo two; .echo three'") == ["two", "three"]
    session.run("r $t2 = 3")
    assert lines(session, '.printf "%d;", @$t2; r $t2 = @$t2 - 1; z(@$t2 > 0)') == ["3;2;1;"]
    assert session.capture("r $t2") == "$t2=0000000000000000\n"
    before = session.failures
    out = lines(session, ".catch { .echo in; nosuchcmd; .echo not-here }; .echo after")
    assert out[0] == "in" and "Syntax error in 'nosuchcmd'" in out[1] and out[2:] == ["after"]
    assert session.failures == before  # a caught error does not fail the run
    assert lines(session, ".catch { .echo a; .leave; .echo b }; .echo c") == ["a", "c"]


def test_printf_formats(session):
    is64 = session.is64
    out = session.capture('.printf "%x|%X|%d|%u|%I64x|%5d|%-4x|%c|%%|%N\\n", 0x123456789, 0xabc, -1, -1, '
                          '0x123456789, 0n42, 0xa, 0x41, 1')
    assert out == "23456789|ABC|-1|4294967295|123456789|   42|a   |A|%|0000000000000001\n"
    proc = int(session.capture("? @$proc").split()[-1].replace("`", ""), 16)
    width = 16 if is64 else 8
    assert session.capture('.printf "%p\\n", @$proc') == f"{proc:0{width}x}\n"
    ip = session.capture("? @$ip").split()[-1]
    named = session.capture("ln @$ip")
    out = session.capture('.printf "%y\\n", @$ip').strip()
    assert out.endswith(f"({ip})") or out == ip
    if "nt!KeBugCheckEx" in named:
        assert out.startswith("nt!KeBugCheckEx")
    assert "<Memory access error>" in session.capture('.printf "%ma\\n", 0')


# -- errors ---------------------------------------------------------------------------------------
def test_unbalanced_braces_and_bad_tokens(session, tmp_path):
    assert session.capture(".if (1) { .echo a").strip() == "^ Syntax error in '.if (1) { .echo a': missing '}'"
    assert "^ Syntax error in '.for (r $t0 = 0; 1' " not in session.capture(".for (r $t0 = 0; 1")
    assert "missing ')'" in session.capture(".for (r $t0 = 0; 1")
    assert "a '{' block must follow" in session.capture(".block .echo x")
    assert "only valid inside a .for, .while or .do loop" in session.capture(".break")
    assert "only valid inside a .catch block" in session.capture(".leave")
    assert ".else without .if" in session.capture(".else { .echo x }")
    script = tmp_path / "bad.txt"
    script.write_text(".if (1) {\n.echo inside\n")
    out = session.capture(f"$$<{script}")
    assert "missing '}'" in out and "inside" not in out.split("missing")[1]
    assert "Traceback" not in out


def test_aliases(session):
    assert session.capture("al") == "No aliases\n"
    session.run("as greet hello world; $$ as takes the rest of the line")
    assert session.capture("al").splitlines()[2] == " greet            hello world; $$ as takes the rest of the line "
    session.run("ad greet")
    session.run('aS who "you"; .block { .echo who ${who} x${who}y }')
    assert lines(session, ".echo who ${who}") == ["you you"]
    assert lines(session, ".echo ${/d:who} ${/d:nobody} [${/f:nobody}] ${/n:who} ${/v:who}") == ["1 0 [] who ${/v:who}"]
    session.run("as /x sum 0n10+6")
    assert lines(session, ".echo sum") == ["0x10"]
    session.run("as ${/v:who} me")
    assert lines(session, ".echo who") == ["me"]
    # aliases are expanded when a line or block is entered: a later block sees the new value
    session.run("ad *")
    assert lines(session, "aS late now; .echo late; .block { .echo late }") == ["late", "now"]


def test_unknown_alias(session):
    assert lines(session, ".echo ${nosuch}") == ["${nosuch}"]
    assert session.capture("ad nosuch").strip() == "No alias named 'nosuch'"
    assert session.capture("ad /q nosuch") == ""


def test_pseudo_registers(session):
    code = session.dump.header.bugcheck_code
    params = session.dump.header.bugcheck_parameters
    assert session.capture("? $bug_code").split()[2] == str(code)
    for i, p in enumerate(params, 1):
        assert int(session.capture(f"? @$bug_param{i}").split()[-1].replace("`", ""), 16) == p
    assert session.capture("? $ptrsize").split()[2] == ("8" if session.is64 else "4")
    session.run("r $t19 = 0n77")
    assert session.capture("? @$t19").split()[2] == "77"
    assert "Bad register error" in session.capture("r $t20 = 1")


def test_typed_pseudo_register(session):
    out = session.capture("r? $t3 = (nt!_EPROCESS*)@$proc; ?? @$t3->UniqueProcessId")
    pid = int(session.capture("? $tpid").split()[-1].replace("`", ""), 16)
    assert out.strip().endswith(f"{pid:x}") or out.strip().endswith(f"{pid:08x}")


def test_machine_pseudo_registers_match_truth(machines):
    truth = machines.truth("d1")
    with kdshell.open(machines.path("d1", "complete"), offline=True) as s:
        s.progress = None
        code, params = truth["bugcheck"]["code"], truth["bugcheck"]["parameters"]
        assert s.capture('.printf "%x %p\\n", $bug_code, $bug_param1') == f"{code:x} {params[0]:016x}\n"
        chain = truth["call_chain"]
        assert int(s.capture("? $ra").split()[-1].replace("`", ""), 16) == chain[0]["return_address"]
        assert int(s.capture("? $scopeip").split()[-1].replace("`", ""), 16) == chain[0]["rip"]


# -- stopping a loop that never ends ----------------------------------------------------------------
def test_endless_for_stops_on_ctrl_c_from_a_pseudo_register_read(session, monkeypatch):
    reads = []
    real = session.automatic_pseudo

    def counting(name):
        reads.append(name)
        if len(reads) == 50:
            raise KeyboardInterrupt
        return real(name)

    monkeypatch.setattr(session, "automatic_pseudo", counting)
    before = session.failures
    out = session.capture(".for (r $t0 = 0; $bug_code; r $t0 = @$t0 + 1) { r $t5 = @$t0 }; .echo not-after")
    assert out == "Command stopped (Ctrl-C).\n" or out.endswith("Command stopped (Ctrl-C).\n")
    assert "not-after" not in out
    assert session.failures == before + 1
    assert session.capture("? @$t0").split()[2] == "49"  # 50 condition reads: 49 rounds ran


def test_endless_while_stops_on_sigint(session):
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    try:
        out = session.capture("r $t0 = 0; .while (1) { r $t0 = @$t0 + 1 }")
    finally:
        timer.cancel()
    assert "Command stopped (Ctrl-C)." in out
    assert int(session.capture("? @$t0").split()[-1].replace("`", ""), 16) > 0
    assert session.flow.depth == 0 and session.flow.loops == 0  # nothing left half-open
    assert lines(session, ".echo still-working") == ["still-working"]


def test_endless_for_in_a_script_stops_on_scriptstop(session, tmp_path):
    script = tmp_path / "loop.txt"
    script.write_text(".for (r $t0 = 0; 1; r $t0 = @$t0 + 1) {\n  .if (@$t0 == 5) { nosuchcmd }\n}\n.echo after\n")
    session.run(".scriptstop 1")
    out = session.capture(f"$$<{script}")
    assert "Syntax error in 'nosuchcmd'" in out and "stopped at its first failing command" in out
    assert "after" not in out.replace("0: kd> .echo after", "")
    assert session.capture("? @$t0").split()[2] == "5"
    out = session.capture(".for (r $t0 = 0; 1; r $t0 = @$t0 + 1) { .if (@$t0 == 7) { nosuchcmd } }")
    assert session.capture("? @$t0").split()[2] == "7"


def test_cli_ctrl_c_stops_endless_loop(machines):
    dump = machines.path("d1", "complete")
    env = dict(os.environ, KDSHELL_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "kdshell", str(dump), "-c", ".echo go; .for (;1;) { r $t0 = 1 }"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=REPO, text=True)
    out = ""
    for line in proc.stdout:
        out += line
        if line.strip() == "go":
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=30)
    out += rest
    assert "Command stopped (Ctrl-C)." in out
    assert proc.returncode == 1 and "Traceback" not in out
