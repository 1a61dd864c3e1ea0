"""The committed fixture images are what their sources build to.

The images (a small Windows-like kernel, HAL and drivers with PDBs) are built with clang/lld-link,
which CI does not install: the outputs are committed. CI checks they match their SHA256SUMS; where
the toolchain exists (a developer machine), a rebuild from the sources must give the same bytes.
"""
import hashlib
import shutil
import subprocess
from pathlib import Path

import pefile
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BIN = FIXTURES / "images" / "bin"


def sums(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        out[name.lstrip("*")] = digest
    return out


def test_committed_binaries_match_their_sums():
    recorded = sums(BIN / "SHA256SUMS")
    assert len(recorded) >= 16
    for name, digest in recorded.items():
        assert hashlib.sha256((BIN / name).read_bytes()).hexdigest() == digest, name


def test_images_carry_rsds_matching_their_pdb_name():
    for image, pdb in (("ntoskrnl.exe", "ntkrnlmp.pdb"), ("mydrv.sys", "mydrv.pdb"), ("x86/ntoskrnl.exe", "ntkrpamp.pdb")):
        pe = pefile.PE(str(BIN / image), fast_load=False)
        cv = [d for d in pe.DIRECTORY_ENTRY_DEBUG if d.struct.Type == 2][0].entry
        assert cv.CvSignature == b"RSDS"
        assert cv.PdbFileName.rstrip(b"\0").decode() == pdb
        # The PDB's GUID (at a fixed place in the PDB info stream) is checked by the PDB tests.


@pytest.mark.toolchain
def test_rebuild_gives_the_committed_bytes(tmp_path):
    tools = ("clang", "lld-link", "llvm-dlltool", "llvm-nm", "llvm-pdbutil", "llvm-readobj")
    if not all(shutil.which(t) for t in tools):
        pytest.skip("clang/lld toolchain not installed (apt-get install clang lld llvm)")
    if "version 14." not in subprocess.run(["clang", "--version"], capture_output=True, text=True).stdout:
        pytest.skip("the committed images were built with clang 14")
    copy = tmp_path / "fixtures"
    shutil.copytree(FIXTURES / "images" / "src", copy / "images" / "src")
    shutil.copy(FIXTURES / "build.sh", copy / "build.sh")
    subprocess.run(["bash", str(copy / "build.sh")], check=True, capture_output=True, timeout=600)
    assert sums(copy / "images" / "bin" / "SHA256SUMS") == sums(BIN / "SHA256SUMS")
