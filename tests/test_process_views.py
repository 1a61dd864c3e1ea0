"""!teb and !peb on the 3b machine (the crashing thread belongs to stortool.exe): values from the
truth (the thread's TEB, CID, its process's PEB; the image base from the builder's page-table
record of the program's .text), user pages present in active/complete dumps, absent (one line) in
kernel and small dumps."""
import pytest

from conftest import REPO, corpus_dumps_if_present, open_corpus, open_machine

BIN = REPO / "fixtures" / "images" / "bin"
MACHINE_SYMBOLS = f"{BIN};{BIN / 'x86'}"



def field(out, name):
    return next(line.split(":", 1)[1].strip() for line in out if line.strip().startswith(name + ":"))


@pytest.mark.parametrize("kind", ["active", "complete"])
def test_teb_and_peb_of_the_crashing_thread(machines, kind):
    truth = machines.truth("3b")
    thread = next(t for t in truth["threads"] if t["address"] == truth["processors"][0]["current_thread"])
    process = next(p for p in truth["processes"] if p["address"] == thread["process"])
    text = next(t for t in truth["translations"] if t.get("note") == f"{process['name']} .text")
    with open_machine(machines, "3b", kind) as s:
        out = s.capture("!teb").splitlines()
        assert out[0] == f"TEB at {thread['teb']:016x}"
        assert field(out, "Self") == f"{thread['teb']:016x}"
        assert field(out, "ClientId") == f"{thread['cid'][0]:016x} . {thread['cid'][1]:016x}"
        assert field(out, "PEB Address") == f"{process['peb']:016x}"
        out = s.capture("!peb").splitlines()
        assert out[0] == f"PEB at {process['peb']:016x}"
        assert field(out, "ImageBaseAddress") == f"{text['va'] - 0x1000:016x}"
        assert field(out, "BeingDebugged") == "No"


def test_kernel_dump_has_no_user_pages(machines):
    with open_machine(machines, "3b", "kernel") as s:
        for command, what in (("!teb", "TEB"), ("!peb", "PEB")):
            out = s.capture(command).splitlines()
            assert len(out) == 1 and out[0].startswith(f"{what} at ") and "not in the dump" in out[0]
    with open_machine(machines, "e2", "kernel") as s:  # the idle thread: no TEB
        assert s.capture("!teb").splitlines() == [
            "!teb: the current thread has no TEB (a system thread runs only in kernel mode)"]


@pytest.mark.parametrize("path", corpus_dumps_if_present(), ids=lambda p: p.name)
def test_corpus_dumps(path):
    with open_corpus(path) as s:
        for command in ("!teb", "!peb"):
            text = s.capture(command)
            assert "Traceback" not in text and "Internal error" not in text
            if s.kernel.small:
                assert len(text.splitlines()) == 1
