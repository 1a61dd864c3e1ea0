"""!errrec, !whea and !analyze for bug check 0x124 (issue 19 part 2).

Expected values come from the 0x124 test machine's truth (fixtures/machine/whea.py, an encoder of
the UEFI CPER layouts independent of kdshell's decoder) and, for the MCA error codes, from the
Intel SDM's compound error code table written out here as literal codes and mnemonics.
"""
from __future__ import annotations

import json
import struct

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, REPO, TRIAGE_19041
from fixtures.machine import whea as encoder
from kdshell.cli import main
from kdshell.dispatch import REGISTRY
from kdshell.errors import KdError, MemoryNotPresent
from kdshell.kernel.whea import mca_error, parse_record

BIN = REPO / "fixtures" / "images" / "bin"


@pytest.fixture(params=["complete", "kernel", "small"])
def machine(request, machines):
    with kdshell.open(machines.path("124", request.param), symbol_path=str(BIN), image_path="") as s:
        s.progress = None
        yield request.param, machines.truth("124"), s


def value(lines: list[str], name: str) -> str:
    """The value of the first `Name          : value` line."""
    for line in lines:
        rest = line.strip()[len(name):].lstrip() if line.strip().startswith(name) else ""
        if rest.startswith(":"):
            return rest[1:].strip()
    raise AssertionError(f"no {name} line in {lines}")


def test_the_bug_check_is_raised_with_the_record_and_mci_status(machine):
    _, truth, s = machine
    w = truth["whea"]
    status = w["mca"]["status"]
    assert truth["bugcheck"] == {"code": 0x124, "parameters": [0, w["records"]["mce"]["address"], status >> 32,
                                                               status & 0xFFFFFFFF]}


def test_errrec_decodes_the_machine_check_record(machine):
    _, truth, s = machine
    w = truth["whea"]
    mce = w["records"]["mce"]
    out = s.capture(f"!errrec {mce['address']:x}").splitlines()
    assert out[1] == f"Common Platform Error Record @ {mce['address']:016x}"
    assert value(out, "Severity") == "Fatal (1)"
    assert value(out, "Length") == str(mce["length"])
    assert value(out, "Creator") == "Microsoft"
    assert value(out, "Notify Type") == w["source_name"]
    assert value(out, "Timestamp") == "3/12/2024 10:23:45 (UTC)"
    names = [line.split(":", 1)[1].strip() for line in out if line.startswith("Section ") and ":" in line]
    assert names == w["mce_sections"]
    g, eg = w["generic"], w["expect_generic"]
    assert value(out, "Proc. Type") == eg["proc_type"] and value(out, "Instr. Set") == eg["isa"]
    assert value(out, "Error Type") == eg["error_type"] and value(out, "Operation") == eg["operation"]
    assert value(out, "CPU Version") == f"0x{g['cpu_version']:016x}"
    assert value(out, "Brand String") == g["brand"]
    cpuid = encoder.xpf_processor()[0x10:0x20]  # CPUID leaf 1 as the encoder packed it
    assert value(out, "CPU Id") == " ".join(f"{b:02x}" for b in cpuid[:8]) + " - " + " ".join(
        f"{b:02x}" for b in cpuid[8:])
    assert value(out, "Local APIC Id") == f"0x{w['mca']['apic_id']:016x}"
    assert value(out, "Check Type") == "Cache Check"
    assert value(out, "Check Info") == f"0x{encoder.CHECK_INFO:016x} ({encoder.EXPECT_CHECK})"
    m, em = w["mca"], w["expect_mca"]
    assert value(out, "Error") == f"{em['mnemonic']} (Proc {m['processor']} Bank {m['bank']})"
    assert value(out, "Status") == f"0x{m['status']:016x}"
    assert value(out, "Address") == f"0x{m['address']:016x}"
    assert value(out, "Misc.") == f"0x{m['misc']:016x}"
    assert value(out, "Status bits").split() == em["flags"]
    assert value(out, "MCA code").startswith(f"0x{m['status'] & 0xFFFF:04x} {em['kind']}:")
    assert value(out, "CPU vendor") == "Intel"
    # section 0's descriptor follows the 0x80-byte header; its body follows the three descriptors
    assert f"Descriptor    @ {mce['address'] + 0x80:016x}" in out
    assert f"Section       @ {mce['address'] + 0x80 + 3 * 0x48:016x}" in out


def test_errrec_memory_and_pcie_sections(machines):
    truth = machines.truth("124")
    w = truth["whea"]
    with kdshell.open(machines.path("124", "kernel"), symbol_path=str(BIN), image_path="") as s:
        s.progress = None
        mem = s.capture(f"!errrec {w['records']['memory']['address']:x}").splitlines()
        assert value(mem, "Section 0") == "Memory" and value(mem, "Severity") == "Corrected (2)"
        assert value(mem, "Notify Type") == "Corrected Machine Check"
        assert value(mem, "Physical Addr") == f"0x{w['memory']['address']:016x}"
        assert value(mem, "Phys Addr Mask") == f"0x{w['memory']['mask']:016x}"
        for name, key in (("Node", "node"), ("Module", "module"), ("Bank", "bank"), ("Device", "device"),
                          ("Row", "row"), ("Column", "column")):
            assert value(mem, name) == str(w["memory"][key]), name
        assert value(mem, "Error Type") == w["memory_error_type"]
        pcie = s.capture(f"!errrec {w['records']['pcie']['address']:x}").splitlines()
        p = w["pcie"]
        assert value(pcie, "Section 0") == "PCI Express" and value(pcie, "Port Type") == w["pcie_port_type"]
        assert value(pcie, "Version") == f"{p['version'][0]}.{p['version'][1]}"
        assert value(pcie, "Command/Status") == f"0x{p['command']:04x}/0x{p['status']:04x}"
        assert value(pcie, "VenId:DevId") == f"{p['vendor_id']:04x}:{p['device_id']:04x}"
        assert value(pcie, "Class code") == f"{p['class_code']:06x}"
        assert value(pcie, "Second. Bus") == f"0x{p['secondary_bus']:02x}"
        assert value(pcie, "Slot") == f"0x{p['slot']:04x}"


def test_errrec_bad_addresses_say_so_in_one_line(machine):
    kind, truth, s = machine
    address = truth["whea"]["records"]["mce"]["address"]
    for arg, words in ((f"{address + 8:x}", "is not a WHEA_ERROR_RECORD"), ("0", "not in the dump"),
                       ("", "give the address"), ("nosuchsymbol!x", "is not an address")):
        out = s.capture(f"!errrec {arg}").splitlines()
        assert len(out) == 1 and words in out[0], (arg, out)


def test_whea_summarises_the_bug_check(machine):
    _, truth, s = machine
    w = truth["whea"]
    out = s.capture("!whea").splitlines()
    assert out[0] == "Error Source Type : Machine Check Exception (0)"
    assert out[1] == f"Error Record      : {w['records']['mce']['address']:016x} (!errrec {w['records']['mce']['address']:x})"
    m, em = w["mca"], w["expect_mca"]
    assert out[-1] == (f"  2: x86/x64 MCA - {em['mnemonic']} ({em['kind']}), processor {m['processor']} "
                       f"bank {m['bank']}")


def test_analyze_names_the_source_bank_and_type_and_says_hardware(machine):
    _, truth, s = machine
    w = truth["whea"]
    m, em = w["mca"], w["expect_mca"]
    out = s.capture("!analyze -v").splitlines()
    assert f"WHEA_ERROR_SOURCE:  {w['source_name']} (P1 = 0x0)" in out
    assert f"WHEA_ERROR_RECORD:  {w['records']['mce']['address']:x} -- (!errrec {w['records']['mce']['address']:#x})" in out
    kind = next(line for line in out if line.startswith("WHEA_ERROR_TYPE:"))
    assert kind.startswith(f"WHEA_ERROR_TYPE:  {em['kind']}: {em['mnemonic']}")
    bank = next(line for line in out if line.startswith("WHEA_MCA_BANK:"))
    assert f"processor {m['processor']}, bank {m['bank']}: MCi_STATUS {m['status']:x}" in bank
    words = next(line for line in out if line.startswith("HARDWARE_ERROR:"))
    assert "hardware error report, not a driver bug" in words
    assert "FAILURE_BUCKET_ID:  0x124_0_GenuineIntel_PROCESSOR_CACHE" in out
    assert "MODULE_NAME: GenuineIntel" in out
    assert "Probably caused by : GenuineIntel" in s.capture("!analyze")
    teach = " ".join(s.capture("!analyze -teach").split())  # unwrapped
    assert f"a {em['kind']} error ({em['mnemonic']}: " in teach and f"bank {m['bank']} of processor {m['processor']}" in teach
    assert "  !whea" in s.capture("!analyze -teach")


def test_analyze_show_points_at_a_command_that_exists(machine):
    _, _, s = machine
    out = s.capture("!analyze -show 0x124")
    assert "!errrec" in out and "!errrec" in REGISTRY


def test_analyze_json_has_the_record(machines, capsys):
    truth = machines.truth("124")
    w = truth["whea"]
    assert main(["-z", str(machines.path("124", "small")), "-y", str(BIN), "--offline", "--analyze-json"]) == 0
    data = json.loads(capsys.readouterr().out)["whea"]
    assert data["record"] == f"{w['records']['mce']['address']:#x}" and data["decoded"] is True
    assert data["mca"]["bank"] == w["mca"]["bank"] and data["mca"]["error"] == w["expect_mca"]["mnemonic"]
    assert data["mca"]["class"] == w["expect_mca"]["kind"] and data["sections"] == w["mce_sections"]


# The Intel SDM's compound error codes, written out here: (code, mnemonic, class)
SDM_CODES = [
    (0x0000, "NO_ERR", "unclassified"),
    (0x0005, "INTERNAL_PARITY_ERR", "internal"),
    (0x0400, "INTERNAL_TIMER_ERR", "internal"),
    (0x0405, "INTERNAL_UNCLASSIFIED_ERR", "internal"),
    (0x000F, "GCACHELG_ERR", "cache hierarchy"),          # 0000 0000 0000 11LL
    (0x0014, "DTLBL0_ERR", "TLB"),                        # 0000 0000 0001 TTLL
    (0x0011, "ITLBL1_ERR", "TLB"),
    (0x0090, "RD_CHANNEL0_ERR", "memory controller"),     # 0000 0000 1MMM CCCC
    (0x00AF, "WR_CHANNELN_ERR", "memory controller"),
    (0x00C3, "MS_CHANNEL3_ERR", "memory controller"),
    (0x0134, "DCACHEL0_DRD_ERR", "cache hierarchy"),      # 0000 0001 RRRR TTLL
    (0x1134, "DCACHEL0_DRD_ERR", "cache hierarchy"),      # bit 12 (filtering) is not part of the class
    (0x0151, "ICACHEL1_IRD_ERR", "cache hierarchy"),
    (0x017A, "GCACHEL2_EVICT_ERR", "cache hierarchy"),
    (0x0E0B, "BUSLG_GEN_ERR_IO_NOTIMEOUT_ERR", "bus/interconnect"),  # 0000 1PPT RRRR IILL
    (0x0C0F, "BUSLG_OBS_ERR_OTHER_NOTIMEOUT_ERR", "bus/interconnect"),  # PP 10: observed
    (0x0911, "BUSL1_SRC_RD_M_TIMEOUT_ERR", "bus/interconnect"),
]


@pytest.mark.parametrize("code,mnemonic,kind", SDM_CODES)
def test_mca_error_codes(code, mnemonic, kind):
    e = mca_error(code)
    assert (e.mnemonic, e.kind) == (mnemonic, kind)


def test_parse_record_rejects_damage():
    raw = encoder.records()["mce"]
    rec = parse_record(raw, 0x1000)
    assert [s.name for s in rec.sections] == ["Processor Generic", "x86/x64 Processor Specific", "x86/x64 MCA"]
    bad_count = bytearray(raw)
    struct.pack_into("<H", bad_count, 0x0A, 200)
    with pytest.raises(KdError, match="claims 200 sections"):
        parse_record(bytes(bad_count), 0x1000)
    outside = bytearray(raw)
    struct.pack_into("<I", outside, 0x80 + 2 * 0x48, 0x7000)  # section 2 offset past the record
    rec = parse_record(bytes(outside), 0x1000)
    assert rec.sections[2].mca is None and "outside the record" in (rec.sections[2].problem or "")
    with pytest.raises(KdError, match="no CPER signature"):
        parse_record(b"CPER" + b"\0" * 0x7C, 0)


def test_corpus_errrec_on_a_non_record_and_whea_without_0x124():
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.progress = None
        out = s.capture("!errrec @rsp").splitlines()
        assert len(out) == 1 and "is not a WHEA_ERROR_RECORD: no CPER signature" in out[0]
        out = s.capture("!whea").splitlines()
        assert len(out) == 1 and "not 0x124" in out[0] and "0x1000007e" in out[0]
        verbose = s.capture("!analyze -v")
        assert "WHEA_" not in verbose and "HARDWARE_ERROR" not in verbose


def test_a_record_kept_only_in_secondary_data(tmp_path):
    """A small dump whose P2 page was not saved, with the record in a DUMP_BLOB: decoded from the copy."""
    from dumpfactory import write_kind

    raw = encoder.records()["mce"]
    status = encoder.MCA["status"]
    p2 = 0xFFFFC20A_0BAD0010
    tag = bytes(range(16))
    path = write_kind(tmp_path, "triage", bugcheck_code=0x124,
                      bugcheck_parameters=(0, p2, status >> 32, status & 0xFFFFFFFF),
                      blobs=[(tag, b"WHEA" + bytes(12) + raw + bytes(8))], name="whea-blob.dmp")
    with kdshell.open(path, symbol_path="", image_path="") as s:
        s.progress = None
        out = s.capture(f"!errrec {p2:x}").splitlines()
        assert out[0].startswith("(the record's memory is not in the dump: decoded from the copy in the dump's "
                                 "secondary data {")
        assert out[2] == f"Common Platform Error Record @ {p2:016x}"
        assert value(out, "Error") == f"{encoder.EXPECT_MCA['mnemonic']} (Proc 0 Bank {encoder.MCA['bank']})"
        verbose = s.capture("!analyze -v").splitlines()
        assert any(line.startswith(f"WHEA_ERROR_TYPE:  {encoder.EXPECT_MCA['kind']}") for line in verbose)
        assert any(line.startswith("NOTE: The WHEA error record's memory is not in the dump") for line in verbose)
        other = s.capture(f"!errrec {p2 + 0x1000:x}").splitlines()  # not P2: no copy is offered
        assert len(other) == 1 and "not in the dump" in other[0]


def test_arm_processor_section():
    """An ARM64 record (UEFI N.2.4.4) packed by the encoder: MPIDR, MIDR and each error's type and addresses."""
    from kdshell.commands.whea import record_lines

    rec = parse_record(encoder.records()["arm"], 0xFFFF_8000_0000_1000)
    out = record_lines(rec)
    a = encoder.ARM_ERR
    assert value(out, "Section 0") == "ARM Processor Specific"
    assert value(out, "MPIDR") == f"0x{a['mpidr']:016x}" and value(out, "MIDR") == f"0x{a['midr']:016x}"
    assert value(out, "Error Info 0") == "TLB Error (First)" and value(out, "Error Info 1") == "Cache Error"
    first = out.index("Error Info 0  : TLB Error (First)")
    assert out[first + 1:first + 4] == [f"  Error Info  : 0x{a['errors'][0]['info']:016x}",
                                        f"  Virt. Addr  : 0x{a['errors'][0]['va']:016x}",
                                        f"  Phys. Addr  : 0x{a['errors'][0]['pa']:016x}"]


def test_error_sources_through_the_kernel_types():
    """nt!WheapErrorSourceTable walked with offsets as a kernel PDB gives them (here: a fake offsets
    object with _WHEAP_ERROR_SOURCE_TABLE/_WHEAP_ERROR_SOURCE's fields), over packed memory."""
    from kdshell.kernel.layout import OffsetUnknown, StructLayout
    from kdshell.kernel.whea import SOURCE_FIELDS, error_sources

    fields = {("_WHEAP_ERROR_SOURCE_TABLE", "Count"): 4, ("_WHEAP_ERROR_SOURCE_TABLE", "Items"): 8,
              ("_WHEAP_ERROR_SOURCE", "ListEntry"): 0, ("_WHEAP_ERROR_SOURCE", "PlatformErrorSourceId"): 0x14,
              ("_WHEAP_ERROR_SOURCE", "ErrorCount"): 0x18, ("_WHEAP_ERROR_SOURCE", "Type"): 0x28,
              ("_WHEAP_ERROR_SOURCE", "TotalErrors"): 0x54}

    class Offsets:
        def __init__(self, known):
            self.known = known

        def offset(self, type_name, path):
            return self.known.get((type_name, path))

        def source(self, type_name, path):
            return "pdb"

    table, first, second = 0x1000, 0x2000, 0x3000
    mem = bytearray(0x4000)
    struct.pack_into("<I", mem, table + 4, 2)
    struct.pack_into("<QQ", mem, table + 8, first, second)   # Items: Flink, Blink
    struct.pack_into("<QQ", mem, first, second, table + 8)
    struct.pack_into("<QQ", mem, second, table + 8, first)
    for at, (sid, kind, errors, total) in ((first, (0, 0, 1, 1)), (second, (1, 1, 0, 7))):
        struct.pack_into("<I", mem, at + 0x14, sid)
        struct.pack_into("<I", mem, at + 0x18, errors)
        struct.pack_into("<I", mem, at + 0x28, kind)
        struct.pack_into("<I", mem, at + 0x54, total)

    class Memory:
        def read(self, address, size):
            if address + size > len(mem):
                raise MemoryNotPresent(address, "outside")
            return bytes(mem[address:address + size])

    count, sources, warning = error_sources(Memory(), table, StructLayout(Offsets(fields), SOURCE_FIELDS), True)
    assert count == 2 and warning is None
    assert [(s.address, s.source_id, s.type, s.error_count, s.total_errors) for s in sources] == [
        (first, 0, 0, 1, 1), (second, 1, 1, 0, 7)]
    with pytest.raises(OffsetUnknown):
        error_sources(Memory(), table, StructLayout(Offsets({}), SOURCE_FIELDS), True)


def test_a_pcie_error_source(tmp_path):
    """0x124 with P1 = 4 (PCI Express): the source is named and the record's PCIe section summarised."""
    from dumpfactory import write_kind

    p2 = 0xFFFFC20A_0BAD0010
    path = write_kind(tmp_path, "triage", bugcheck_code=0x124, bugcheck_parameters=(4, p2, 0, 0),
                      blobs=[(bytes(range(16)), encoder.records()["pcie"])], name="whea-pcie.dmp")
    with kdshell.open(path, symbol_path="", image_path="") as s:
        s.progress = None
        out = s.capture("!analyze -v").splitlines()
    p = encoder.PCIE_ERR
    assert "WHEA_ERROR_SOURCE:  PCI Express (P1 = 0x4)" in out
    assert f"WHEA_PCIE_ERROR:  Root Port {p['vendor_id']:04x}:{p['device_id']:04x} bus {p['primary_bus']:x}" in out
    words = next(line for line in out if line.startswith("HARDWARE_ERROR:"))
    assert "the PCI Express device detected an error" in words
