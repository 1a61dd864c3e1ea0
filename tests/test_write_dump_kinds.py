"""write_dump's choice of writer by DumpType, and its one-line refusals."""
from __future__ import annotations

import pytest

from kdshell.dumpfile.write import DumpHeaderFields, DumpWriteError
from kdshell.dumpfile.write_triage import write_dump


@pytest.mark.parametrize("dump_type", [1, 5, 6, 8, 9, 10])
def test_page_kinds_without_pages_are_refused_before_writing(tmp_path, dump_type):
    path = tmp_path / "out.dmp"
    with pytest.raises(DumpWriteError, match=f"DumpType {dump_type} dump needs its pages"):
        write_dump(path, dump_type, DumpHeaderFields())
    assert list(tmp_path.iterdir()) == []


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(DumpWriteError, match="cannot write DumpType 3"):
        write_dump(tmp_path / "out.dmp", 3, DumpHeaderFields(), {})
    assert list(tmp_path.iterdir()) == []


def test_page_kind_with_pages_is_written(tmp_path):
    path = tmp_path / "out.dmp"
    size = write_dump(path, 6, DumpHeaderFields(), {0x10: bytes(range(256)) * 16})
    assert path.stat().st_size == size
    assert path.read_bytes()[:8] == b"PAGEDU64"
