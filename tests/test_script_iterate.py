"""The iteration extensions (!for_each_process, !for_each_thread, !for_each_module,
!for_each_frame, !list) and the example scripts (examples/threads.txt, old_drivers.txt,
list_walk.txt), checked against a test machine's ground truth and run on a corpus dump."""
import re

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, REPO, TRIAGE_19041

BIN = REPO / "fixtures" / "images" / "bin"
EXAMPLES = REPO / "examples"


@pytest.fixture
def machine(machines):
    with kdshell.open(machines.path("d1", "complete"), symbol_path=str(BIN), image_path="", offline=True) as s:
        s.progress = None
        yield s, machines.truth("d1")


def _base(function):
    return function.split("+", 1)[0]


def test_for_each_process_and_thread(machine):
    s, truth = machine
    active = [p for p in truth["processes"] if p["active_list"]]
    out = s.capture('!for_each_process ".printf \\"%p\\n\\", @#Process"').split()
    assert [int(a, 16) for a in out] == [p["address"] for p in active]
    out = s.capture('!for_each_thread ".printf \\"%p\\n\\", @#Thread"').split()
    assert sorted(int(a, 16) for a in out) == sorted(t for p in active for t in p["threads"])


def test_for_each_module_and_old_drivers_example(machine):
    s, truth = machine
    out = s.capture('!for_each_module ".printf \\"@#ModuleName %p %08x\\n\\", @#Base, @#TimeDateStamp"').splitlines()
    assert [line.split() for line in out] == [[m["short"], f"{m['base']:016x}", f"{m['timestamp']:08x}"]
                                              for m in truth["modules"]]
    cutoff = sorted(m["timestamp"] for m in truth["modules"])[2]  # some older, some not
    out = s.capture(f"$$>a<{EXAMPLES / 'old_drivers.txt'} 0x{cutoff:x}").splitlines()
    assert out == [f"{m['short']} {m['timestamp']:08x}" for m in truth["modules"] if m["timestamp"] < cutoff]
    assert s.capture("? $exentry").split()[-1].replace("`", "") == f"{truth['modules'][0]['entry_point']:016x}"


def test_list_walk_example_and_list(machine):
    s, truth = machine
    out = s.capture(f"$$><{EXAMPLES / 'list_walk.txt'}").splitlines()
    names = [m["name"] for m in truth["modules"]]
    assert [line.split() for line in out] == [[f"{m['ldr_entry']:016x}", m["name"]] for m in truth["modules"]]
    assert names
    # !list from the first entry: every entry, then the head (WinDbg stops only back at the start)
    out = s.capture('!list -t nt!_LIST_ENTRY.Flink -x ".printf \\"%p\\n\\", @$extret" poi(nt!PsLoadedModuleList)').split()
    head = int(s.capture("? nt!PsLoadedModuleList").split()[-1].replace("`", ""), 16)
    assert [int(a, 16) for a in out] == [m["ldr_entry"] for m in truth["modules"]] + [head]
    out = s.capture('!list -m 2 -x "dq @$extret L1" poi(nt!PsLoadedModuleList)').splitlines()
    assert len(out) == 2
    assert "needs a value" in s.capture("!list -x")
    assert "missing closing quote" in s.capture('!list -x "dq')


def test_threads_example_shows_each_stack(machine):
    s, truth = machine
    text = s.capture(f"$$><{EXAMPLES / 'threads.txt'}")
    assert "Traceback" not in text
    blocks = re.split(r"^THREAD ", text, flags=re.M)[1:]
    by_address = {int(b.split()[0], 16): b for b in blocks}
    active = {p["address"] for p in truth["processes"] if p["active_list"]}
    threads = [t for t in truth["threads"] if t["process"] in active]
    assert set(by_address) == {t["address"] for t in threads}
    for t in threads:
        if t["state_name"] == "Running" or not t["frames"]:
            continue
        names = [line.strip() for line in by_address[t["address"]].splitlines()]
        wanted = [_base(f["function"]) for f in t["frames"] if "!" in f["function"]][:3]
        got = [_base(n) for n in names if "!" in n]
        assert got[:len(wanted)] == wanted, (hex(t["address"]), names)


def test_for_each_frame(machine):
    s, truth = machine
    out = s.capture('!for_each_frame ".printf \\"F @#Frame\\n\\""').splitlines()
    frames = [line for line in out if line.startswith("F ")]
    assert frames[:3] == ["F 0x0", "F 0x1", "F 0x2"]
    assert s.capture(".frame").startswith("00 ")  # the frame is put back


def test_iteration_stops_on_break_error_and_ctrl_c(machine, monkeypatch):
    s, _ = machine
    out = s.capture('!for_each_module ".echo @#ModuleName; .break"').splitlines()
    assert out == ["nt"]
    before = s.failures
    out = s.capture('!for_each_module ".echo @#ModuleName; nosuchcmd"').splitlines()
    assert out[0] == "nt" and "Syntax error in 'nosuchcmd'" in out[1] and len(out) == 2
    assert s.failures == before + 1
    calls = []
    real = s.automatic_pseudo

    def stop(name):
        calls.append(name)
        raise KeyboardInterrupt

    monkeypatch.setattr(s, "automatic_pseudo", stop)
    assert s.capture('!for_each_process "? $bug_code"') == "Command stopped (Ctrl-C).\n"
    monkeypatch.setattr(s, "automatic_pseudo", real)


def test_examples_on_a_corpus_dump():
    if not TRIAGE_19041.exists():
        pytest.skip("corpus not available")
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="", offline=True) as s:
        s.progress = None
        lm = s.capture("lm").splitlines()[1:]
        out = s.capture('!for_each_module ".printf \\"@#ModuleName %p\\n\\", @#Base"').splitlines()
        assert len(out) == len([line for line in lm if line.strip() and not line.startswith(("Unloaded", "    "))]) or out
        for line in out[:5]:
            name, base = line.split()
            assert any(row.split()[:1] == [base[:8] + "`" + base[8:]] and row.split()[2] == name for row in lm), line
        text = s.capture(f"$$>a<{EXAMPLES / 'old_drivers.txt'} 0xffffffff")
        assert len(text.splitlines()) == len(out)
        assert "Traceback" not in s.capture(f"$$><{EXAMPLES / 'threads.txt'}")


def test_dt_l_walks_a_list(machine):
    s, truth = machine
    active = [p for p in truth["processes"] if p["active_list"]]
    out = s.capture("r? $t4 = #FIELD_OFFSET(nt!_EPROCESS, ActiveProcessLinks); "
                    "dt -l ActiveProcessLinks nt!_EPROCESS ImageFileName poi(nt!PsActiveProcessHead)-@$t4")
    names = re.findall(r'ImageFileName\s+: \[15\]\s+"([^"]*)"', out)
    assert names[:len(active)] == [p["name"] for p in active]
    links = [int(a.replace("`", ""), 16) for a in re.findall(r"^ActiveProcessLinks at 0x(\S+)", out, re.M)]
    offset = int(s.capture("? @$t4").split()[-1].replace("`", ""), 16)
    assert links[:len(active)] == [p["address"] + offset for p in active]
    assert "which list field" in s.capture("dt nt!_EPROCESS -l")
    assert "is not a field" in s.capture("dt -l NoSuchField nt!_EPROCESS @$proc")


def test_pool_tag_example_lists_the_tags_blocks(machine):
    """examples/pool_tag.txt: the blocks of one tag are the machine's live blocks of that tag (the
    pool ledger of the truth: every allocation and free the CPU made)."""
    s, truth = machine
    live = [b for b in truth["pool"]["blocks"] if not b["freed"] and b["kind"] == "small"]
    tag = max({b["tag"] for b in live}, key=lambda t: sum(b["tag"] == t for b in live))
    out = s.capture(f"$$>a<{EXAMPLES / 'pool_tag.txt'} {tag}")
    assert out.splitlines()[0] == f"Pool tag {tag}:"
    found = [int(line.split()[0], 16) for line in out.splitlines() if re.match(r"[0-9a-f]{16} : tag ", line)]
    assert sorted(found) == sorted(b["header"] for b in live if b["tag"] == tag)
    counts = truth["pool"]["tracker"][tag]
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == [tag])
    assert int(row[1]) == counts["nonpaged_allocs"] - counts["nonpaged_frees"]


def test_list_stops_at_a_link_not_in_the_dump(machine):
    """The elements met before an unreadable link still run; one line says where the list ended."""
    s, _ = machine
    out = s.capture('!list -x ".printf \\"%p\\n\\", @$extret" 0xffff800000000000').splitlines()
    assert out == ["ffff800000000000",
                   "!list: the link at ffff8000`00000000 is not in the dump; the list stops here"]
