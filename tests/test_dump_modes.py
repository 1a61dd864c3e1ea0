"""Written dumps (kdshell.dumpfile.write, issue 24): never replace a special file, a new file's mode
from the umask, /o keeps the replaced file's mode and (as root) owner."""
import os
import stat

import pytest

from kdshell.dumpfile import write as W
from kdshell.errors import KdError


def _write(path, overwrite=True):
    from dumpfactory import default_fields, make_pages

    return W.write_full(path, default_fields(), make_pages([1, 2]), overwrite=overwrite)


def test_dump_writer_refuses_special_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    for target, kind in ((fifo, "a FIFO"), (folder, "a directory")):
        with pytest.raises(KdError, match=kind):
            _write(target)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and folder.is_dir()
    assert sorted(os.listdir(tmp_path)) == ["fifo", "folder"]  # no temporary left


def test_written_dump_modes(tmp_path):
    old = os.umask(0o027)
    try:
        _write(tmp_path / "new.dmp", overwrite=False)
        assert stat.S_IMODE(os.stat(tmp_path / "new.dmp").st_mode) == 0o640
        os.umask(0o002)
        _write(tmp_path / "new2.dmp", overwrite=False)
        assert stat.S_IMODE(os.stat(tmp_path / "new2.dmp").st_mode) == 0o664
    finally:
        os.umask(old)
    kept = tmp_path / "kept.dmp"
    kept.write_bytes(b"old")
    os.chmod(kept, 0o604)
    owner = os.stat(kept).st_uid, os.stat(kept).st_gid
    _write(kept)
    st = os.stat(kept)
    assert stat.S_IMODE(st.st_mode) == 0o604 and (st.st_uid, st.st_gid) == owner
    assert kept.read_bytes()[:8] == b"PAGEDU64"  # the new dump replaced the old bytes


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="changing a file's owner needs root")
def test_overwrite_keeps_the_owner_as_root(tmp_path):
    kept = tmp_path / "kept.dmp"
    kept.write_bytes(b"old")
    os.chown(kept, 1234, 2345)
    _write(kept)
    st = os.stat(kept)
    assert (st.st_uid, st.st_gid) == (1234, 2345)
