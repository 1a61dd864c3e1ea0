"""!cpuinfo and !sysinfo cpuinfo/cpuspeed/cpumicrocode (issue 19 part 1) on both corpus small
dumps and a test machine's complete dump. Expected values are decoded here from the dump's own
bytes: the small dump's KPRCB copy (TRIAGE_DUMP64.PrcbOffset, formats.md §6.1) at the public
_KPRCB offsets (Vergilius Project, x64 1809 and 2004), and the fixture kernel's init.c values."""
from __future__ import annotations

import struct

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, MINI_17763, REPO, TRIAGE_19041
from kdshell.commands.sysinfo import CPUINFO_HEADER

BIN = REPO / "fixtures" / "images" / "bin"
# _KPRCB (x64): CpuType +0x40, CpuStep +0x42 (stepping, model), MHz +0x44; VendorString, then
# FeatureBits (+0x10) and UpdateSignature (+0x18)
VENDOR_AT = {TRIAGE_19041: 0x8590, MINI_17763: 0x6290}


def prcb_copy(path) -> bytes:
    raw = path.read_bytes()
    offset = struct.unpack_from("<I", raw, 0x2000 + 0x1C)[0]  # TRIAGE_DUMP64.PrcbOffset
    return raw[offset:]


def expected(path) -> dict:
    prcb = prcb_copy(path)
    v = VENDOR_AT[path]
    return {"family": prcb[0x40], "stepping": prcb[0x42], "model": prcb[0x43],
            "mhz": struct.unpack_from("<I", prcb, 0x44)[0], "vendor": prcb[v:v + 12].decode(),
            "features": struct.unpack_from("<Q", prcb, v + 0x10)[0],
            "signature": struct.unpack_from("<Q", prcb, v + 0x18)[0]}


@pytest.fixture(params=[TRIAGE_19041, MINI_17763], ids=["19041", "17763"])
def small(request):
    with kdshell.open(request.param, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.progress = None
        yield request.param, s


def test_the_19041_dump_is_amd_as_its_driver_says():
    e = expected(TRIAGE_19041)
    assert e["vendor"] == "AuthenticAMD"  # the crash is in amdppm.sys, AMD's processor driver
    assert expected(MINI_17763)["vendor"] == "GenuineIntel"


def test_cpuinfo_row_on_the_small_dumps(small):
    path, s = small
    e = expected(path)
    out = s.capture("!cpuinfo").splitlines()
    assert out[0] == CPUINFO_HEADER
    n = s.kernel.crashing_processor
    assert out[1] == (f"{n:2d}  {e['family']},{e['model']},{e['stepping']} {e['vendor']} {e['mhz']:4d} "
                      f"{e['signature']:016x} {'':16}  {e['features']:08x}")
    assert len(out) == 2  # every field known: no "absent" line


def test_sysinfo_cpu_topics_on_the_small_dumps(small):
    path, s = small
    e = expected(path)
    arch = "Intel64" if e["vendor"] == "GenuineIntel" else "AMD64"
    info = s.capture("!sysinfo cpuinfo").splitlines()
    assert info[0] == "[CPU Information]"
    assert f"~MHz = REG_DWORD {e['mhz']}" in info
    assert f"Identifier = REG_SZ {arch} Family {e['family']} Model {e['model']} Stepping {e['stepping']}" in info
    assert f"VendorIdentifier = REG_SZ {e['vendor']}" in info
    assert f"MSR8B = REG_QWORD {e['signature']:x}" in info
    assert f"CurrentSpeed: {e['mhz']}" in s.capture("!sysinfo cpuspeed").splitlines()
    micro = s.capture("!sysinfo cpumicrocode").splitlines()
    sig = e["signature"]
    assert micro[:4] == [f"Cached Microcode Version: {sig >> 32:08x}:{sig & 0xFFFFFFFF:08x}",
                         f"Processor Family: {e['family']:02x}", f"Processor Model: {e['model']:02x}",
                         f"Processor Stepping: {e['stepping']:02x}"]


def test_sysinfo_bad_and_missing_topics_say_so_in_one_line(small):
    _, s = small
    assert s.capture("!sysinfo").splitlines() == [
        "!sysinfo: give one of cpuinfo, cpuspeed, cpumicrocode, gbl, machineid, smbios"]
    smbios = s.capture("!sysinfo smbios").splitlines()
    assert len(smbios) == 1 and "SMBIOS table is not found" in smbios[0]
    assert len(s.capture("!cpuinfo zz").splitlines()) == 1


def test_cpuinfo_on_a_complete_dump_says_which_fields_the_kernel_lacks(machines):
    # The fixture kernel (fixtures/images/src/nt/init.c) sets MHz = 3000 and CpuType = 6 on every
    # processor; its KPRCB declares no VendorString, FeatureBits or UpdateSignature.
    truth = machines.truth("d1")
    with kdshell.open(machines.path("d1", "complete"), symbol_path=str(BIN), image_path="") as s:
        s.progress = None
        out = s.capture("!cpuinfo").splitlines()
    assert out[0] == CPUINFO_HEADER
    rows = out[1:-1]
    assert [int(r.split()[0]) for r in rows] == [p["number"] for p in truth["processors"]]
    for r in rows:
        assert r.split()[1:3] == ["6,0,0", "3000"]
    assert out[-1].startswith("KPRCB.VendorString, KPRCB.FeatureBits, KPRCB.UpdateSignature: not known")


def test_analyze_v_prints_the_cpu_lines_after_file_in_cab(small):
    path, s = small
    e = expected(path)
    out = s.capture("!analyze -v").splitlines()
    at = out.index(next(x for x in out if x.startswith("FILE_IN_CAB:")))
    cpu = [x for x in out[at + 1:] if x.startswith("CPU_")]
    sig = e["signature"]
    assert cpu == [f"CPU_COUNT: {s.dump.header.number_processors:x}", f"CPU_MHZ: {e['mhz']:x}",
                   f"CPU_VENDOR:  {e['vendor']}", f"CPU_FAMILY: {e['family']:x}", f"CPU_MODEL: {e['model']:x}",
                   f"CPU_STEPPING: {e['stepping']:x}",
                   f"CPU_MICROCODE: {e['family']:x},{e['model']:x},{e['stepping']:x},0 (F,M,S,R)  "
                   f"SIG: {sig >> 32:X}'{sig & 0xFFFFFFFF:08X} (cache)"]
    assert out.index(cpu[-1]) < out.index(next(x for x in out if x.startswith("EXCEPTION_RECORD:")))


def test_analyze_v_leaves_out_the_cpu_lines_the_kernel_lacks(machines):
    with kdshell.open(machines.path("d1", "complete"), symbol_path=str(BIN), image_path="") as s:
        s.progress = None
        cpu = [x for x in s.capture("!analyze -v").splitlines() if x.startswith("CPU_")]
    # MHz 3000 and family 6 from init.c; no VendorString or UpdateSignature in its KPRCB
    assert cpu == [f"CPU_COUNT: {len(machines.truth('d1')['processors']):x}", "CPU_MHZ: bb8", "CPU_FAMILY: 6",
                   "CPU_MODEL: 0", "CPU_STEPPING: 0"]


class _Offsets:
    """A Windows 7 x64-style KPRCB tail: FeatureBits a ULONG right before UpdateSignature."""

    table = {"CpuType": 0x40, "CpuStep": 0x42, "MHz": 0x44, "VendorString": 0x100, "FeatureBits": 0x110,
             "UpdateSignature": 0x114}

    def offset(self, type_name: str, path: str):
        return self.table.get(path) if type_name == "_KPRCB" else None

    def source(self, type_name: str, path: str):
        return "test"


class _Memory:
    def __init__(self, data: bytes):
        self.data = data

    def read(self, address: int, size: int) -> bytes:
        return self.data[address:address + size]


def test_feature_bits_is_a_ulong_where_the_signature_follows_it():
    from kdshell.kernel.prcb import prcb_layout, read_cpu_info

    raw = bytearray(0x200)
    raw[0x40], raw[0x42], raw[0x43] = 6, 7, 0x3A
    struct.pack_into("<I", raw, 0x44, 3400)
    raw[0x100:0x10D] = b"GenuineIntel\0"
    struct.pack_into("<IQ", raw, 0x110, 0x20193FFF, 0x1900000000)
    info = read_cpu_info(_Memory(bytes(raw)), 0, prcb_layout(_Offsets(), True), True, 0x200)
    assert (info.family, info.model, info.stepping, info.mhz) == (6, 0x3A, 7, 3400)
    assert info.features == 0x20193FFF and info.update_signature == 0x1900000000
    # a table offset past the kernel's own KPRCB size is not read
    assert read_cpu_info(_Memory(bytes(raw)), 0, prcb_layout(_Offsets(), True), True, 0x100).vendor is None
