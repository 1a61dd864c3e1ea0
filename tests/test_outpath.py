"""The output-path policy (kdshell.outpath, issue 24): logs and written dumps never land on the
dump being read (by any name), on a special file, or on a binary file; modes follow the umask and
/o keeps the replaced file's mode. The dump's sha256 is the check that nothing was lost."""
import hashlib
import os
import stat
import subprocess
import sys

import pytest

import kdshell
from dumpfactory import write_kind
from kdshell.errors import KdError
from kdshell.outpath import open_log


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def dump(tmp_path):
    return write_kind(tmp_path, "bitmap6")


def one_error_line(text: str) -> str:
    lines = [t for t in text.splitlines() if t and not t.startswith("0: kd>")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_logopen_refuses_the_dump_by_every_name(dump, tmp_path):
    digest = sha256(dump)
    link, hard = tmp_path / "link.log", tmp_path / "hard.log"
    link.symlink_to(dump)
    os.link(dump, hard)
    with kdshell.open(dump) as s:
        for cmd in (".logopen", ".logappend"):
            for target in (dump, link, hard):
                line = one_error_line(s.capture(f"{cmd} {target}"))
                assert "is the dump being read" in line and cmd in line
        assert s.out.log is None
    assert sha256(dump) == digest


def test_logopen_refuses_special_files(dump, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    with kdshell.open(dump) as s:
        assert "is a FIFO" in one_error_line(s.capture(f".logopen {fifo}"))  # and does not hang
        assert "is a directory" in one_error_line(s.capture(f".logappend {folder}"))
        if os.path.exists("/dev/null"):
            assert "is a device" in one_error_line(s.capture(".logopen /dev/null"))
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_logs_truncate_only_logs(dump, tmp_path):
    old_log, binary, empty = tmp_path / "old.log", tmp_path / "data.bin", tmp_path / "empty.log"
    old_log.write_text("earlier session\n")
    binary.write_bytes(b"MZ\0\0" + bytes(range(256)))
    empty.write_bytes(b"")
    before = binary.read_bytes()
    with kdshell.open(dump) as s:
        s.capture(f".logappend {old_log}")
        s.capture(".echo appended")
        s.capture(".logclose")
        assert old_log.read_text().startswith("earlier session\n") and "appended" in old_log.read_text()
        s.capture(f".logopen {old_log}")
        s.capture(".echo fresh")
        s.capture(".logclose")
        assert "earlier session" not in old_log.read_text() and "fresh" in old_log.read_text()
        for cmd in (".logopen", ".logappend"):
            assert "is not a text log" in one_error_line(s.capture(f"{cmd} {binary}"))
        s.capture(f".logopen {empty}")
        s.capture(".logclose")
        assert "Opened log file" in empty.read_text()
    assert binary.read_bytes() == before


def test_protected_files_are_checked_on_the_open_file(tmp_path):
    """The policy function itself: a protected file other than the dump is named in the message."""
    pdb = tmp_path / "nt.pdb"
    pdb.write_text("text, but loaded")
    with pytest.raises(KdError, match="a file kdshell has open"):
        open_log(str(pdb), [str(tmp_path / "missing.dmp"), str(pdb)], False, ".logopen")
    assert pdb.read_text() == "text, but loaded"


def test_logo_onto_the_dump_is_refused_before_truncating(dump, tmp_path):
    digest = sha256(dump)
    link = tmp_path / "link.log"
    link.symlink_to(dump)
    for target in (dump, link):
        p = subprocess.run([sys.executable, "-m", "kdshell", "-logo", str(target), "-z", str(dump), "-c", "q"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert p.stderr.strip().count("\n") == 0 and "is the dump being read" in p.stderr
    assert sha256(dump) == digest


def test_dump_command_refuses_special_files(dump, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    digest = sha256(dump)
    with kdshell.open(dump) as s:
        assert "is a FIFO" in s.capture(f".dump /o /f {fifo}")
        hard = tmp_path / "hard.dmp"
        os.link(dump, hard)
        assert "is the dump being read" in s.capture(f".dump /o /f {hard}")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and sha256(dump) == digest


def test_loaded_pdb_and_image_are_protected(tmp_path):
    """A PDB and an image file the session has loaded are refused as log and dump targets."""
    import shutil

    from test_modules import BIN, KernelMachine

    store = tmp_path / "store"
    store.mkdir()
    for name in ("ntkrnlmp.pdb", "ntoskrnl.exe"):
        shutil.copy(BIN / name, store / name)
    dump = KernelMachine().write(tmp_path)
    digests = {p: sha256(p) for p in store.iterdir()}
    with kdshell.open(dump, symbol_path=str(store), image_path=str(store)) as s:
        s.progress = None
        assert "nt!KiSwapThread" in s.capture("x nt!KiSwapThread")
        s.symbols.file_image(s.symbols.modules.by_name("nt"))
        assert set(s.protected_files()[1:]) == {str(store / "ntkrnlmp.pdb"), str(store / "ntoskrnl.exe")}
        for target in store.iterdir():
            for cmd in (".logopen", ".logappend", ".dump /o /m"):
                assert "a file kdshell has open" in one_error_line(s.capture(f"{cmd} {target}"))
    assert {p: sha256(p) for p in store.iterdir()} == digests
