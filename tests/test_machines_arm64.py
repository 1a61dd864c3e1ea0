"""The ARM64 test images (fixtures/images/bin/arm64): the fixture kernel, HAL and drivers built
with clang for aarch64-pc-windows-msvc and lld-link /machine:arm64, with real .pdata/.xdata and
PDBs; and kdshell's ARM64 unwinder stepped through their code under Unicorn's ARM64 CPU.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pefile
import pytest

from tests.test_fixture_images import sums

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BIN = FIXTURES / "images" / "bin"
ARM64 = BIN / "arm64"
IMAGES = {"ntoskrnl.exe": "ntkrnlmp.pdb", "hal.dll": "hal.pdb", "mydrv.sys": "mydrv.pdb",
          "kbdcrash.sys": "kbdcrash.pdb"}


def test_arm64_images_are_listed_in_the_sums_and_match():
    recorded = sums(BIN / "SHA256SUMS")
    names = {f"arm64/{n}" for pair in IMAGES.items() for n in pair}
    assert names <= set(recorded)
    for name in names:
        assert hashlib.sha256((BIN / name).read_bytes()).hexdigest() == recorded[name], name


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_arm64_images_are_arm64_pe_with_exception_data_and_a_pdb(image):
    pe = pefile.PE(str(ARM64 / image), fast_load=False)
    assert pe.FILE_HEADER.Machine == 0xAA64
    cv = [d for d in pe.DIRECTORY_ENTRY_DEBUG if d.struct.Type == 2][0].entry
    assert cv.CvSignature == b"RSDS"
    assert cv.PdbFileName.rstrip(b"\0").decode() == IMAGES[image]
    exc = pe.OPTIONAL_HEADER.DATA_DIRECTORY[3]  # IMAGE_DIRECTORY_ENTRY_EXCEPTION: 8-byte ARM64 entries
    assert exc.VirtualAddress and exc.Size and exc.Size % 8 == 0


@pytest.mark.toolchain
def test_arm64_rebuild_gives_the_committed_bytes(tmp_path):
    tools = ("clang", "lld-link", "llvm-dlltool", "llvm-nm", "llvm-pdbutil", "llvm-readobj", "patch")
    if not all(shutil.which(t) for t in tools):
        pytest.skip("clang/lld toolchain not installed (apt-get install clang lld llvm patch)")
    if "version 14." not in subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout:
        pytest.skip("the committed images were built with clang 14")
    copy = tmp_path / "fixtures"
    shutil.copytree(FIXTURES / "images" / "src", copy / "images" / "src")
    shutil.copy(FIXTURES / "build.sh", copy / "build.sh")
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", "KDFIX_SKIP_X86": "1"}
    subprocess.run(["bash", str(copy / "build.sh")], check=True, capture_output=True, timeout=600, env=env)
    built = sums(copy / "images" / "bin" / "SHA256SUMS")
    recorded = sums(BIN / "SHA256SUMS")
    arm64 = {n: d for n, d in recorded.items() if n.startswith("arm64/")}
    assert arm64 and {n: built.get(n) for n in arm64} == arm64
    for golden in sorted((FIXTURES / "images" / "golden").glob("arm64-*")):
        assert (copy / "images" / "golden" / golden.name).read_text() == golden.read_text(), golden.name
