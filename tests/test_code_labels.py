"""Names that are true (issue 17 part 4): a code address is named after a code symbol (a function,
a code public, an export in an executable section) or not at all (`module+0xOFFSET`); the names
nt gets from the KDBG when it has no PDB are data and never name code, while a data address may
carry a data name. Whether an address is code comes from the module's section table (its headers
in the dump, or its image file). `k`, `r`, `u`, `dps` and `ln` print the same text for an address.

Truth: on the corpus dump triage-x64-19041-1000007e.dmp nt has no PDB and no image file but its
headers are in the dump (`db fffff8047ba00000` shows MZ, the PE header at +0x110): .text is RVA
0x200000-0x5c5c09, .data starts at 0xc00000; fffff8047bdf5a80 is KeBugCheckEx (the dump's own
exception record is the bug check's breakpoint there), and the KDBG's variables are data.
"""
from __future__ import annotations

import pytest

import kdshell
from kdshell.format import ptr
from test_stack_commands import BIN, CONTEXT_P4, MACHINE_SYMBOLS, SCAN_WARNING, lines, parse_k

NT_BASE = 0xFFFFF8047BA00000
KEBUGCHECKEX = 0xFFFFF8047BDF5A80


def test_nt_code_is_never_named_after_a_kdbg_variable(triage):
    assert lines(triage, f"ln {KEBUGCHECKEX:x}") == ["(fffff804`7ba00000)   nt+0x3f5a80"]
    assert triage.symbols.status(triage.symbols.module("nt")) == "kdbg symbols"
    assert lines(triage, f"u {KEBUGCHECKEX:x} L1") == [
        "nt+0x3f5a80:", "fffff804`7bdf5a80 48894c2408      mov     qword ptr [rsp+8],rcx"]
    assert lines(triage, "dps ffff850429890ee8 L1") == ["ffff8504`29890ee8  fffff804`7be0f4e1 nt+0x40f4e1"]
    # KiCallUserMode is a routine the KDBG names: still no function symbol to name code after
    assert lines(triage, "ln fffff8047bdf9070") == ["(fffff804`7ba00000)   nt+0x3f9070"]
    assert lines(triage, ".exr -1")[0] == "ExceptionAddress: fffff8047bdf5a80 (nt+0x00000000003f5a80)"
    triage.run("~0s")
    assert lines(triage, "r")[-2:] == ["nt+0x3f5a80:", "fffff804`7bdf5a80 48894c2408      mov     qword ptr "
                                       "[rsp+8],rcx ss:0018:ffff8504`29890ef0=000000000000007e"]


def test_nt_data_keeps_its_kdbg_names(triage):
    """The KDBG's own fields point at nt's variables: dps names them, ln names an address inside one."""
    assert lines(triage, "dps nt!KdDebuggerDataBlock+0x48 L2") == [
        "fffff804`7c600b68  fffff804`7c62a390 nt!PsLoadedModuleList",
        "fffff804`7c600b70  fffff804`7c61e200 nt!PsActiveProcessHead"]
    assert lines(triage, "ln nt!PsLoadedModuleList+8") == [
        "(fffff804`7c62a390)   nt!PsLoadedModuleList+0x8   |  (fffff804`7c62a7a0)   nt!MmVerifierData"]


def test_code_or_data_comes_from_the_section_table_in_the_dump(triage):
    symbols = triage.symbols
    assert symbols.executable(KEBUGCHECKEX) is True                    # .text
    assert symbols.executable(NT_BASE + 0x5C6000) is True              # PAGE
    assert symbols.executable(0xFFFFF8047C62A390) is False             # .data: PsLoadedModuleList
    assert symbols.executable(NT_BASE + 0x110) is False                # the headers
    assert symbols.executable(NT_BASE + 0xC9000) is False              # .pdata
    assert symbols.executable(0xFFFFF8048B58334C) is True              # amdppm's .text (its image file)
    assert symbols.executable(0x1000) is None                          # outside every module


def ln_name(s, address):
    """The name `ln` gives an address (before the `|`), None outside every module."""
    out = lines(s, f"ln {address:x}")
    return out[0].split(")", 1)[1].split("|")[0].strip() if out else None


def check_labels_agree(s):
    """Each frame of `k` is named the same by `u` and `r` (frame 0), `dps` on its return slot and `ln`."""
    frames = parse_k([x for x in lines(s, "kn 40") if x != SCAN_WARNING])
    assert frames
    sites = {}
    for n, sp, _, site in frames:
        if n == 0:
            ip = s.registers["rip"]
            assert lines(s, f"u {ip:x} L1")[0] == f"{site}:"
            assert lines(s, "r")[-2] == f"{site}:"
        else:
            ip = frames[n - 1][2]
            if s.memory.read_pointer(sp - 8) != ip:
                continue  # reached through a trap frame: its RIP is not below the Child-SP
            assert lines(s, f"dps {sp - 8:x} L1")[0].split(maxsplit=2)[2] == site, n
        assert ln_name(s, ip) == (site if "!" in site or "+" in site else None), n
        sites[n] = site
    return sites


def test_k_r_u_dps_and_ln_agree_on_the_corpus(triage):
    triage.run(f".cxr {CONTEXT_P4:x}")
    sites = check_labels_agree(triage)
    assert sites[0] == "amdppm!WriteIoMemRawEx+0x70" and "nt+0x252f55" in sites.values()
    triage.run("~0s")
    assert check_labels_agree(triage)[0] == "nt+0x3f5a80"


@pytest.mark.parametrize("name,kind,symbol_path", [
    ("d1", "kernel", ""),               # nt: exports from the dump's image and the KDBG's names
    ("d1", "small", ""),                # nt: the KDBG's names only, no section table
    ("d1", "small", MACHINE_SYMBOLS),   # every PDB
    ("e2", "kernel", ""),
    ("7e-plain", "small", str(BIN)),
])
def test_k_r_u_dps_and_ln_agree_on_the_test_machines(machines, name, kind, symbol_path):
    with kdshell.open(machines.path(name, kind), symbol_path=symbol_path, image_path="") as s:
        sites = check_labels_agree(s)
    kdbg_names = ("PsLoadedModuleList", "KiBugCheckData", "KdDebuggerDataBlock", "MmPfnDatabase", "KiProcessorBlock")
    assert not any(n in site for site in sites.values() for n in kdbg_names)


def test_machine_data_names_from_the_kdbg(machines):
    """nt without a PDB on a test machine: the KDBG's pointers name nt's variables, at the truth's
    addresses, with or without the section table (the kernel dump has nt's headers, the small dump
    not: there only a variable's first byte is named)."""
    truth = machines.truth("d1")
    g = truth["globals"]
    kdbg = g["nt!KdDebuggerDataBlock"]
    for kind in ("kernel", "small"):
        with kdshell.open(machines.path("d1", kind), symbol_path="", image_path="") as s:
            assert lines(s, f"dps {kdbg + 0x48:x} L2") == [
                f"{ptr(kdbg + 0x48)}  {ptr(g['nt!PsLoadedModuleList'])} nt!PsLoadedModuleList",
                f"{ptr(kdbg + 0x50)}  {ptr(g['nt!PsActiveProcessHead'])} nt!PsActiveProcessHead"]
            inside = g["nt!KiBugCheckData"] + 0x10
            nt = s.symbols.module("nt")
            assert ln_name(s, inside) == ("nt!KiBugCheckData+0x10" if kind == "kernel" else f"nt+0x{inside - nt.base:x}")


def test_a_function_and_a_data_name_at_one_address():
    """The function names code; the data name is never the nearest symbol of the two (k, ln, u)."""
    from kdshell.symbols.resolver import DATA, FUNCTION, Symbol, SymbolTable

    table = SymbolTable("export symbols", None, [Symbol("KiCallUserMode", 0x100, DATA),
                                                 Symbol("KeUserCall", 0x100, FUNCTION), Symbol("Later", 0x200)])
    assert table.at(0x120).name == "KeUserCall" and table.at(0x100).name == "KeUserCall"
    assert table.at(0x200).name == "Later" and table.at(0xFF) is None
