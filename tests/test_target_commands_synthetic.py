"""The target commands on synthetic dumps of every kind (the corpus has no bitmap/RDMP/32-bit)."""
import pytest

import kdshell
from dumpfactory import KINDS, write_kind

KIND_LINES = {
    "full": "Kernel Complete Dump File: Full address space is available",
    "bitmap5": "Kernel Bitmap Dump File: Full address space is available",
    "bitmap6": "Kernel Bitmap Dump File: Kernel address space is available, User address space may not be available.",
    "rdmp8": "Kernel Range Dump File: Only kernel address space is available",
    "rdmp9": "Kernel Range Dump File: Kernel address space is available, User address space may not be available.",
    "rdmp10": "Kernel Range Dump File: Full address space is available",
    "triage": "Mini Kernel Dump File: Only registers and stack trace are available",
    "full32": "Kernel Complete Dump File: Full address space is available",
    "triage32": "Mini Kernel Dump File: Only registers and stack trace are available",
}


@pytest.mark.parametrize("kind", KINDS)
def test_banner_vertarget_bugcheck(tmp_path, kind):
    path = write_kind(tmp_path, kind, blobs=[("12345678-1234-5678-9abc-def012345678", b"hello blob")])
    with kdshell.open(path) as s:
        banner = s.banner()
        assert banner[1] == KIND_LINES[kind]
        assert banner[2] == "Comment: 'kdshell test dump'"
        vt = s.capture("vertarget").splitlines()
        if kind.endswith("32"):
            assert vt[0] == "Windows 7 Kernel Version 7601 MP (2 procs) Free x86 compatible"
            assert s.capture(".bugcheck").splitlines() == [
                "Bugcheck code 000000D1", "Arguments 00000010 00000002 00000000 8a6c1234"]
        else:
            assert vt[0] == "Windows 10 Kernel Version 19041 MP (4 procs) Free x64"
            assert s.capture(".bugcheck").splitlines()[0] == "Bugcheck code 1000007E"
        assert vt[1] == "Product: WinNt, suite: TerminalServer SingleUserTS"
        # 133500000000000000 (FILETIME) is 2024-01-17 21:20:00 UTC; 36e9 x 100 ns is one hour.
        assert "Debug session time: Wed Jan 17 21:20:00.000 2024 (UTC + 0:00)" in vt
        assert "System Uptime: 0 days 1:00:00.000" in vt
        assert s.capture(".time").splitlines() == [
            "Debug session time: Wed Jan 17 21:20:00.000 2024 (UTC + 0:00)", "System Uptime: 0 days 1:00:00.000"]
        tags = s.capture(".enumtag").splitlines()
        assert tags[0] == "{12345678-1234-5678-9ABC-DEF012345678} - 0xa bytes"
        assert "hello blob" in tags[1]
        dd = s.capture(".dumpdebug")
        assert ("DUMP_HEADER64:" in dd) != kind.endswith("32")
        assert "Comment               'kdshell test dump'" in dd
        assert s.failures == 0


def test_triage_kernel_base_from_kdbg_copy(tmp_path):
    with kdshell.open(write_kind(tmp_path, "triage")) as s:
        # The KDBG copy's KernBase (formats.md §10, +0x18) wins over the driver list.
        assert "Kernel base = 0xfffff804`7c000000 PsLoadedModuleList = 0xfffff804`7c62a7a0" in s.capture("vertarget")


def test_dumpdebug_bitmap_type_header(tmp_path):
    with kdshell.open(write_kind(tmp_path, "bitmap6")) as s:
        text = s.capture(".dumpdebug")
        assert "BITMAP_DUMP_HEADER64:" in text
        assert "TotalPresentPages     00000000`00000006" in text
        assert "PresentPages          6" in text
