"""Images from the symbol server for unwinding (issue 17 part 3).

A small dump keeps none of nt's code, headers or .pdata: `k` can unwind through nt's frames only
with nt's image. Here the test machines' images and PDBs are served by a local HTTP symbol server
(127.0.0.1, tests/test_store.py's) in store layout, NAME/KEY/NAME, with the keys computed by
pefile (TimeDateStamp + SizeOfImage for images, GUID + age for PDBs), as symstore lays them out;
kdshell asks for ntoskrnl.exe by the TimeDateStamp and SizeOfImage of the small dump's driver
list, downloads it into the cache and unwinds with its .pdata. The frames are checked against
the truth's call chain: what the emulated CPU executed.
"""
from __future__ import annotations

import shutil

import pefile
import pytest

import kdshell
from kdshell.symbols.modules import Module, ModuleList, image_file_names
from test_stack_commands import BIN, SCAN_WARNING, check_rows, expected_rows, lines, parse_k
from test_store import _serve

IMAGES = [BIN / n for n in ("ntoskrnl.exe", "hal.dll", "mydrv.sys", "storfilt.sys", "kbdcrash.sys")] + \
    [BIN / "x86" / n for n in ("ntoskrnl.exe", "hal.dll", "mydrv.sys")]
SCENARIOS = ("d1", "7e", "7e-plain", "3b", "e2", "50", "d1-x86")


def image_key(path) -> str:
    pe = pefile.PE(str(path), fast_load=True)
    return f"{pe.FILE_HEADER.TimeDateStamp:08X}{pe.OPTIONAL_HEADER.SizeOfImage:x}"


def pdb_key(path) -> tuple[str, str]:
    pe = pefile.PE(str(path), fast_load=True)
    pe.parse_data_directories([pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_DEBUG"]])
    cv = next(d.entry for d in pe.DIRECTORY_ENTRY_DEBUG if d.struct.Type == 2)
    guid = (f"{cv.Signature_Data1:08X}{cv.Signature_Data2:04X}{cv.Signature_Data3:04X}"
            f"{cv.Signature_Data4:02X}{cv.Signature_Data5:02X}{cv.Signature_Data6.hex().upper()}")
    return cv.PdbFileName.rstrip(b"\0").decode().rsplit("\\", 1)[-1], f"{guid}{cv.Age:X}"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The x64 and x86 images and their PDBs in a symbol store."""
    root = tmp_path_factory.mktemp("store")
    for image in IMAGES:
        place = root / image.name / image_key(image)
        place.mkdir(parents=True)
        shutil.copy(image, place / image.name)
        pdb, key = pdb_key(image)
        place = root / pdb / key
        place.mkdir(parents=True)
        shutil.copy(image.parent / pdb, place / pdb)
    return root


@pytest.fixture
def server(store):
    yield from _serve(store)


def small_dump_rows(machines, name):
    """The truth's frames that a small dump can show: from the dump's context to the last frame
    whose return slot is in the saved stack."""
    truth = machines.truth(name)
    ctx, chain = truth["context"], truth["call_chain"]
    ip, sp = ("rip", "rsp") if is64(machines, name) else ("eip", "esp")
    first = next(i for i, f in enumerate(chain) if f["rip"] == ctx[ip] and f["sp"] == ctx[sp])
    small = truth["dumps"]["small"]["small"]
    end = small["top_of_stack"] + small["stack_size"]
    return [w for w, f in zip(expected_rows(chain, is64(machines, name), first), chain[first:]) if f["sp"] - 8 < end]


def is64(machines, name):
    return machines.truth(name)["arch"] == "x64"


def open_small(machines, name, symbol_path):
    s = kdshell.open(machines.path(name, "small"), symbol_path=symbol_path, image_path="", offline=False)
    s.progress = None
    return s


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_kernel_image_from_the_server_unwinds_nt(machines, server, tmp_path, name):
    want = small_dump_rows(machines, name)
    assert any(w[2].startswith("nt!") for w in want[1:])  # frames of nt past the first: unwound through nt
    kernel = BIN / ("x86" if not is64(machines, name) else "") / "ntoskrnl.exe"
    key = image_key(kernel)
    cache = tmp_path / "cache"
    with open_small(machines, name, f"srv*{cache}*{server.url}") as s:
        out = lines(s, "kn 100")
        assert SCAN_WARNING not in out
        check_rows(parse_k(out), want, is64(machines, name), f"{name}-small with the server")
        assert s.symbols.module("nt").state["image_file"] == str(cache / "ntoskrnl.exe" / key / "ntoskrnl.exe")
    assert f"/ntoskrnl.exe/{key}/ntoskrnl.exe" in server.handler.hits
    assert (cache / "ntoskrnl.exe" / key / "ntoskrnl.exe").read_bytes() == kernel.read_bytes()


@pytest.mark.parametrize("name", SCENARIOS[:-1])
def test_without_the_kernel_image_nt_cannot_be_unwound(machines, tmp_path, name):
    """The same dumps with every image and PDB but nt's on a local path: nt's frames are not the
    executed ones, or they are marked as guesses."""
    for f in BIN.iterdir():
        if f.is_file() and not f.name.startswith(("ntoskrnl", "ntkrnlmp")):
            shutil.copy(f, tmp_path / f.name)
    want = small_dump_rows(machines, name)
    with open_small(machines, name, str(tmp_path)) as s:
        out = lines(s, "kn 100")
    got = [(sp, ret) for _, sp, ret, _ in parse_k(out)]
    assert SCAN_WARNING in out or got[:len(want)] != [(w[0], w[1]) for w in want]


def test_a_path_change_brings_the_image_to_the_next_walk(machines, server, tmp_path):
    """`.sympath+` after a walk that had no image: the next `k` unwinds with the downloaded one."""
    want = small_dump_rows(machines, "d1")
    with open_small(machines, "d1", "") as s:
        assert parse_k(lines(s, "kn 100"))[1][3] != want[1][2]   # nt+0x... (no image, no names)
        s.run(f".sympath srv*{tmp_path / 'cache'}*{server.url}")
        out = lines(s, "kn 100")
        assert SCAN_WARNING not in out
        check_rows(parse_k(out), want, True, "d1-small after .sympath")


def test_the_kernel_listed_under_another_name_is_asked_for_as_ntoskrnl(machines, server, tmp_path):
    """The store (and Microsoft's server) keep every x64 kernel as ntoskrnl.exe: a module list that
    names it ntkrnlmp.exe (as linked) finds it under ntoskrnl.exe after asking for its own name."""
    key = image_key(BIN / "ntoskrnl.exe")
    truth = machines.truth("e2")
    nt = next(m for m in truth["modules"] if m["name"].lower() == "ntoskrnl.exe")
    with open_small(machines, "e2", f"srv*{tmp_path / 'cache'}*{server.url}") as s:
        s.run(f".reload ntkrnlmp.exe={nt['base']:#x},{nt['size']:#x},{int(key[:8], 16):#x}")
        module = s.symbols.module("nt")
        assert module.image_name == "ntkrnlmp.exe"
        check_rows(parse_k(lines(s, "kn 100")), small_dump_rows(machines, "e2"), True, "e2 as ntkrnlmp.exe")
    hits = server.handler.hits
    assert hits.index(f"/ntkrnlmp.exe/{key}/ntkrnlmp.exe") < hits.index(f"/ntoskrnl.exe/{key}/ntoskrnl.exe")


@pytest.mark.parametrize("path,names", [
    (r"\SystemRoot\system32\ntoskrnl.exe", ["ntoskrnl.exe"]),
    (r"\SystemRoot\system32\ntkrnlmp.exe", ["ntkrnlmp.exe", "ntoskrnl.exe"]),
    ("ntkrpamp.exe", ["ntkrpamp.exe", "ntkrnlpa.exe", "ntoskrnl.exe"]),
    ("nt", ["ntoskrnl.exe"]),
    ("hal", ["hal.dll"]),
    (r"\SystemRoot\system32\halmacpi.dll", ["halmacpi.dll", "hal.dll"]),
    (r"\SystemRoot\System32\drivers\amdppm.sys", ["amdppm.sys"]),
    ("NTOSKRNL.EXE", ["NTOSKRNL.EXE"]),
])
def test_image_file_names(path, names):
    module = Module(0xFFFFF80000000000, 0x1000, path)
    ModuleList([module])  # gives it its WinDbg name (nt, hal, ...)
    assert image_file_names(module) == names
