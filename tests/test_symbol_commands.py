"""The symbol commands as a user sees them: lm, lmv, ln, x, u/dps/? with symbols, .reload, dt,
!lmi, !dh, !sym, .sympath/.symfix/.exepath, on the real small dump with the corpus symbol store
and on a synthetic complete dump of the fixture kernel (real images and PDBs)."""
import subprocess
import sys
import time

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, MINI_17763, TRIAGE_19041
from kdshell.kernel.offsets import KernelOffsets, build_entry
from kdshell.parts import builtin_types
from kdshell.symbols.types import wildcard
from test_modules import BIN, MYDRV_BASE, KernelMachine

AMDPPM_PDB = str(CORPUS_SYMBOLS / "amdppm.pdb" / "1C19FDDB27BB3399D9B45973EFEAFCF31" / "amdppm.pdb")
AMDPPM_SYS = str(CORPUS_SYMBOLS / "amdppm.sys" / "c9c030003b000" / "amdppm.sys")


def lines(session, command):
    return session.capture(command).splitlines()


@pytest.fixture
def triage():
    with kdshell.open(TRIAGE_19041, symbol_path=str(CORPUS_SYMBOLS), image_path="") as s:
        s.progress = None
        yield s


@pytest.fixture(scope="module")
def complete_path(tmp_path_factory):
    return KernelMachine().write(tmp_path_factory.mktemp("complete"))


@pytest.fixture
def complete(complete_path):
    with kdshell.open(complete_path, symbol_path=str(BIN), image_path="") as s:
        s.progress = None
        yield s


# -- the real small dump -------------------------------------------------------------------------
def test_lm_lists_all_151_drivers(triage):
    out = lines(triage, "lm")
    assert out[0] == "start             end                 module name"
    mods = out[1:152]
    assert len(mods) == 151 and all(m.endswith("(deferred)") for m in mods)
    assert mods[:3] == [
        "fffff804`79440000 fffff804`79446000   hal        (deferred)",
        "fffff804`79450000 fffff804`7945b000   kd         (deferred)",
        "fffff804`79460000 fffff804`79487000   tm         (deferred)",
    ]
    assert "fffff804`7ba00000 fffff804`7ca46000   nt         (deferred)" in mods
    assert "fffff804`87780000 fffff804`8778e000   dump_dumpstorport (deferred)" in mods
    assert "fffff804`8b6b0000 fffff804`8dc96000   nvlddmkm   (deferred)" in mods
    assert out[152:] == [
        "",
        "Unloaded modules:",
        "fffff804`87de0000 fffff804`87dfc000   dam.sys",
        "fffff804`79d30000 fffff804`79d42000   WdBoot.sys",
        "fffff804`802c0000 fffff804`802d1000   hwpolicy.sys",
        "fffff804`793e0000 fffff804`79409000   mcupdate.dll",
    ]


def test_ln_on_the_faulting_address(triage):
    assert lines(triage, "ln 0xfffff8048b58334c") == [
        "(fffff804`8b5832dc)   amdppm!WriteIoMemRawEx+0x70   |  (fffff804`8b583370)   amdppm!WriteIoMemRawHidden"]
    assert lines(triage, "ln amdppm!WriteIoMemRawEx") == [
        "(fffff804`8b5832dc)   amdppm!WriteIoMemRawEx   |  (fffff804`8b583370)   amdppm!WriteIoMemRawHidden",
        "Exact matches:",
        "    amdppm!WriteIoMemRawEx (WriteIoMemRawEx)",
    ]
    assert lines(triage, "lm m amdppm")[1] == (
        f"fffff804`8b580000 fffff804`8b5bb000   amdppm     (pdb symbols)          {AMDPPM_PDB}")
    assert lines(triage, "ln ffffffff`00000000") == []  # in no module: nothing, as WinDbg


def test_lmv_shows_the_image_from_the_store(triage):
    assert lines(triage, "lmvm amdppm") == [
        "start             end                 module name",
        "fffff804`8b580000 fffff804`8b5bb000   amdppm     (deferred)",
        "    Loaded symbol image file: amdppm.sys",
        f"    Mapped memory image file: {AMDPPM_SYS}",
        "    Image path: \\SystemRoot\\System32\\drivers\\amdppm.sys",
        "    Image name: amdppm.sys",
        "    Image was built with /Brepro flag.",
        "    Timestamp:        C9C03000 (This is a reproducible build file hash, not a timestamp)",
        "    CheckSum:         00038E6B",
        "    ImageSize:        0003B000",
        "    File version:     10.0.19041.1110",
        "    Product version:  10.0.19041.1110",
        "    File flags:       0 (Mask 3F)",
        "    File OS:          40004 NT Win32",
        "    File type:        3.7 Driver",
        "    File date:        00000000.00000000",
        "    Translations:     0409.04b0",
        "    Information from resource tables:",
        "        CompanyName:      Microsoft Corporation",
        "        ProductName:      Microsoft® Windows® Operating System",
        "        InternalName:     amdppm.sys",
        "        OriginalFilename: amdppm.sys",
        "        ProductVersion:   10.0.19041.1110",
        "        FileVersion:      10.0.19041.1110 (WinBuild.160101.0800)",
        "        FileDescription:  Processor Device Driver",
        "        LegalCopyright:   © Microsoft Corporation. All rights reserved.",
    ]
    out = lines(triage, "lm v m kd")
    assert out[2:] == [
        "    Image path: \\SystemRoot\\system32\\kd.dll",
        "    Image name: kd.dll",
        "    Timestamp:        Mon Feb  2 09:30:16 2105 (FE185FA8)",
        "    CheckSum:         00004EF6",
        "    ImageSize:        0000B000",
        "    Translations:     0000.04b0 0000.04e4 0409.04b0 0409.04e4",
        "    Information from resource tables:",
    ]


def test_symbols_in_expressions_disassembly_and_dps(triage):
    assert lines(triage, "? amdppm!WriteIoMemRawEx+10") == ["Evaluate expression: -8776575339796 = fffff804`8b5832ec"]
    assert lines(triage, "u amdppm!WriteIoMemRawEx L3") == [
        "amdppm!WriteIoMemRawEx:",
        "fffff804`8b5832dc 4883ec28        sub     rsp,28h",
        "fffff804`8b5832e0 80390a          cmp     byte ptr [rcx],0Ah",
        "fffff804`8b5832e3 4c8bc1          mov     r8,rcx",
    ]
    assert lines(triage, "u fffff804`8b58334c L2") == [
        "amdppm!WriteIoMemRawEx+0x70:",
        "fffff804`8b58334c 43891401        mov     dword ptr [r9+r8],edx",
        "fffff804`8b583350 eb0b            jmp     amdppm!WriteIoMemRawEx+0x81 (fffff804`8b58335d)",
    ]
    assert lines(triage, "dps @rsp+8 L1") == ["ffff8504`29892128  fffff804`8b5a2e2c amdppm!RegisterSubspace+0x28"]
    # nt has no PDB here: the KDBG still names the kernel's variables
    assert lines(triage, "dq nt!PsLoadedModuleList L1") == ["fffff804`7c62a390  ????????`????????"]
    assert lines(triage, "? nt!KiProcessorBlock") == ["Evaluate expression: -8776825447296 = fffff804`7c6fdc80"]
    assert lines(triage, "? nt") == ["Evaluate expression: -8776839069696 = fffff804`7ba00000"]
    assert lines(triage, "? nt!NoSuchThing") == ["Couldn't resolve error at 'nt!NoSuchThing'"]


def test_x_with_wildcards(triage):
    assert lines(triage, "x amdppm!WriteIo*") == [
        "fffff804`8b58324c amdppm!WriteIoMemRaw (WriteIoMemRaw)",
        "fffff804`8b5832dc amdppm!WriteIoMemRawEx (WriteIoMemRawEx)",
        "fffff804`8b583370 amdppm!WriteIoMemRawHidden (WriteIoMemRawHidden)",
    ]
    assert lines(triage, "x /2 amdppm!WriteIoMemRaw?x") == ["fffff804`8b5832dc amdppm!WriteIoMemRawEx"]
    assert lines(triage, "x amdppm!CpcHiddenProcessorMitigationReported") == [
        "fffff804`8b598c80 amdppm!CpcHiddenProcessorMitigationReported = <no type information>"]
    assert lines(triage, "x nosuch!x") == ["Couldn't resolve 'nosuch!x': no module named nosuch"]


def test_reload_and_status(triage):
    assert lines(triage, ".reload") == [
        "Loading Kernel Symbols",
        "." * 64, "." * 64, "." * 23,
        "Loading unloaded module list",
        "....",
    ]
    assert lines(triage, ".reload /f amdppm.sys") == []
    assert lines(triage, "lml") == [
        "start             end                 module name",
        f"fffff804`8b580000 fffff804`8b5bb000   amdppm     (pdb symbols)          {AMDPPM_PDB}",
    ]
    assert lines(triage, ".reload /f kd.dll") == [
        "Unable to load image \\SystemRoot\\system32\\kd.dll, Win32 error 0n2",
        "*** WARNING: Unable to verify timestamp for kd.dll",
        "*** ERROR: Module load completed but symbols could not be loaded for kd.dll",
    ]
    assert lines(triage, "lm m kd")[1] == "fffff804`79450000 fffff804`7945b000   kd         (no symbols)"
    assert lines(triage, ".reload nosuch.sys") == ['"nosuch.sys" was not found in the image list.']


def test_sym_noisy_traces_the_search(triage):
    assert lines(triage, "!sym noisy") == ["noisy mode - symbol prompts on"]
    out = lines(triage, "ln 0xfffff8048b58334c")
    assert f"SYMSRV:  {CORPUS_SYMBOLS}/amdppm.sys/c9c030003b000/amdppm.sys - found" in out
    assert f"SYMSRV:  {AMDPPM_PDB} - found" in out
    assert out[-1].startswith("(fffff804`8b5832dc)   amdppm!WriteIoMemRawEx+0x70")
    assert lines(triage, "!sym quiet") == ["quiet mode - symbol prompts on"]
    assert lines(triage, "!sym") == ["!sym <noisy/quiet> - quiet mode"]
    assert lines(triage, "!sym loud") == ["Usage: !sym noisy|quiet"]


def test_sympath_symfix_exepath(tmp_path):
    with kdshell.open(TRIAGE_19041, symbol_path="", image_path="") as s:
        s.progress = None
        assert lines(s, "ln 0xfffff8048b58334c") == ["(fffff804`8b580000)   amdppm+0x334c"]
        assert lines(s, f".sympath {CORPUS_SYMBOLS}") == [
            f"Symbol search path is: {CORPUS_SYMBOLS}",
            f"Expanded Symbol search path is: {str(CORPUS_SYMBOLS).lower()}",
            "",
            "************* Path validation summary **************",
            "Response                         Time (ms)     Location",
            f"OK                                             {CORPUS_SYMBOLS}",
        ]
        # the module whose symbols were not found is looked for again
        assert lines(s, "ln 0xfffff8048b58334c")[0].startswith("(fffff804`8b5832dc)   amdppm!WriteIoMemRawEx+0x70")
        s.run(f".sympath+ {tmp_path / 'nothere'}")
        assert s.symbol_path == f"{CORPUS_SYMBOLS};{tmp_path / 'nothere'}"
        assert lines(s, ".sympath")[-1] == f"{'Error'.ljust(47)}{tmp_path / 'nothere'}"
        s.run(f".symfix {tmp_path / 'cache'}")
        assert s.symbol_path == f"srv*{tmp_path / 'cache'}*https://msdl.microsoft.com/download/symbols"
        s.run(".symfix+ /other")
        assert s.symbol_path.endswith(";srv*/other*https://msdl.microsoft.com/download/symbols")
        assert lines(s, f".exepath {tmp_path}")[:2] == [
            f"Executable image search path is: {tmp_path}",
            f"Expanded Executable image search path is: {str(tmp_path).lower()}"]
        assert s.image_path == str(tmp_path)


def test_lmi_and_dh(triage):
    assert lines(triage, "!lmi amdppm") == [
        "Loaded Module Info: [amdppm] ",
        "         Module: amdppm",
        "   Base Address: fffff8048b580000",
        "     Image Name: amdppm.sys",
        "   Machine Type: 34404 (AMD64)",
        "     Time Stamp: C9C03000 (This is a reproducible build file hash, not a timestamp)",
        "           Size: 3b000",
        "       CheckSum: 38e6b",
        "Characteristics: 22",
        "Debug Data Dirs: Type  Size     VA  Pointer",
        "             CODEVIEW    23, 110bc,   104bc RSDS - GUID: {1C19FDDB-27BB-3399-D9B4-5973EFEAFCF3}",
        "               Age: 1, Pdb: amdppm.pdb",
        "                 POGO   2a0, 110e0,   104e0",
        "                REPRO    24, 11380,   10780",
        f"     Image Type: FILE     - Image read successfully from {AMDPPM_SYS}.",
        "    Symbol Type: PDB      - Symbols loaded successfully from symbol search path.",
        f"                 {AMDPPM_PDB}",
    ]
    out = lines(triage, "!dh amdppm")
    assert out[1:6] == ["File Type: EXECUTABLE IMAGE", "FILE HEADER VALUES", "    8664 machine (AMD64)",
                        "       A number of sections", "C9C03000 time date stamp"]
    assert "   10F60 [      54] address [size] of Debug Directory" in out
    assert "SECTION HEADER #6" in out and "    PAGE name" in out
    assert out[-1] == "\tcodeview      23       110bc    104bc\tFormat: RSDS, guid, 1, amdppm.pdb" or \
        "\tcodeview" in "\n".join(out)
    assert lines(triage, "!dh kd") == ["No PE header for kd: the dump does not have it and no image file was found"]
    assert lines(triage, "!dh -z amdppm") == ["!dh: unknown option -z"]


def test_dt_from_the_builtin_table(triage):
    out = lines(triage, "dt nt!_EPROCESS")
    assert out[0].startswith("(no PDB for nt: kdshell's built-in offsets for build 19041, Windows 10 2004..22H2, from: ")
    assert out[1:] == [
        "   +0x000 Pcb              : _KPROCESS",
        "   +0x440 UniqueProcessId  : Ptr64 Void",
        "   +0x448 ActiveProcessLinks : _LIST_ENTRY",
        "   +0x540 InheritedFromUniqueProcessId : Ptr64 Void",
        "   +0x550 Peb              : Ptr64 _PEB",
        "   +0x570 ObjectTable      : Ptr64 _HANDLE_TABLE",
        "   +0x5a8 ImageFileName    : [15] UChar",
        "   +0x5e0 ThreadListHead   : _LIST_ENTRY",
        "   +0x7d8 VadRoot          : _RTL_AVL_TREE",
    ]
    assert lines(triage, "dt nt!*THREAD*") == ["          nt!_ETHREAD", "          nt!_KTHREAD"]
    assert lines(triage, "dt nt!_NOSUCH") == ["Symbol nt!_NOSUCH not found."]
    assert lines(triage, "dt amdppm!_X") == ["Symbol amdppm!_X not found."]
    assert lines(triage, "dt -z nt!_EPROCESS")[0].startswith("dt: unknown option '-z'")


# -- the synthetic complete dump with the fixture images and PDBs --------------------------------
def test_lm_ln_x_u_with_private_symbols(complete):
    complete.run(".reload /f")
    assert lines(complete, "lm") == [
        "start             end                 module name",
        f"fffff800`00000000 fffff800`0001b000   nt         (private pdb symbols)  {BIN}/ntkrnlmp.pdb",
        f"fffff800`00400000 fffff800`00405000   hal        (private pdb symbols)  {BIN}/hal.pdb",
        f"fffff800`01000000 fffff800`01005000   mydrv      (private pdb symbols)  {BIN}/mydrv.pdb",
        f"fffff800`01800000 fffff800`01805000   mydrv_fffff80001800000 (private pdb symbols)  {BIN}/mydrv.pdb",
        "fffff800`02000000 fffff800`02009000   afd        (no symbols)",
        "",
        "Unloaded modules:",
        "fffff800`03100000 fffff800`0311c000   dam.sys",
        "fffff800`03000000 fffff800`0300f000   dump_storport.sys",
    ]
    assert lines(complete, "ln @rip") == [
        "(fffff800`010011b0)   mydrv!MyDrvUseAfterFree+0x10   |  (fffff800`01001250)   mydrv!MyDrvFreeRecord"]
    assert lines(complete, "x nt!KeBugCheck*") == [
        "fffff800`000027b0 nt!KeBugCheck2 (unsigned int, unsigned __int64, unsigned __int64, unsigned __int64, "
        "unsigned __int64, _KTRAP_FRAME *)",
        "fffff800`000028c0 nt!KeBugCheck (unsigned int)",
        "fffff800`000082d6 nt!KeBugCheckEx (KeBugCheckEx)",
        "fffff800`0000b040 nt!KeBugCheckCallbackListHead = _LIST_ENTRY",
        "fffff800`0000da24 nt!KeBugCheckActive = unsigned int",
        "fffff800`0000da28 nt!KeBugCheckCount = unsigned int",
    ]
    assert lines(complete, "u mydrv!MyDrvUseAfterFree L7")[0::7] == ["mydrv!MyDrvUseAfterFree:",
                                                                     "fffff800`010011ca ff1510100000    call    "
                                                                     "qword ptr [mydrv!__imp_ExAllocatePoolWithTag "
                                                                     "(fffff800`010021e0)]"]
    assert lines(complete, "dps @rsp L6") == [
        "ffff8504`29890000  fffff800`000082d6 nt!KeBugCheckEx",
        "ffff8504`29890008  fffff800`01001234 mydrv!MyDrvUseAfterFree+0x84",
        "ffff8504`29890010  00000000`00000000",
        "ffff8504`29890018  11223344`55667788",
        "ffff8504`29890020  fffff800`004010c0 hal!HalInitSystem",
        "ffff8504`29890028  fffff800`02000010 afd+0x10",
    ]
    assert lines(complete, "dq nt!PsLoadedModuleList L2") == ["fffff800`0000b000  ffff9b00`00010000 ffff9b00`00010400"]


def test_symbols_are_deferred_until_needed(complete):
    assert lines(complete, "lm m mydrv")[1].endswith("(deferred)")
    assert lines(complete, "? mydrv!MyDrvParseRecord") == ["Evaluate expression: -8796076240864 = fffff800`01001020"]
    assert lines(complete, "lm m mydrv")[1] == (
        f"fffff800`01000000 fffff800`01005000   mydrv      (private pdb symbols)  {BIN}/mydrv.pdb")
    assert lines(complete, "lm m nt")[1].endswith("(deferred)")
    assert lines(complete, "? KeBugCheckEx") == ["Evaluate expression: -8796092988714 = fffff800`000082d6"]
    assert lines(complete, "? rax") == ["Evaluate expression: 4369 = 00000000`00001111"]


def test_dt_with_the_kernel_pdb(complete):
    assert lines(complete, "dt nt!_KLDR_DATA_TABLE_ENTRY poi(nt!PsLoadedModuleList) DllBase BaseDllName") == [
        "   +0x030 DllBase     : 0xfffff800`00000000 Void",
        "   +0x058 BaseDllName : _UNICODE_STRING \"ntoskrnl.exe\"",
    ]
    assert lines(complete, "dt nt!_EPROCESS -y Unique")[0].startswith("   +0x")
    assert "          mydrv!_MYDRV_RECORD" in lines(complete, "dt mydrv!*")


def test_a_module_given_by_hand(complete):
    assert lines(complete, ".reload storfilt.sys=fffff800`01100000,5000") == []
    assert lines(complete, "lm m storfilt")[1] == "fffff800`01100000 fffff800`01105000   storfilt   (deferred)"
    assert lines(complete, ".reload bad.sys=fffff800`01100000") == [
        ".reload bad.sys=fffff800`01100000: give the size too (Module=Address,Size)"]


def test_complete_dump_without_symbols_uses_exports(complete_path):
    with kdshell.open(complete_path, symbol_path="", image_path="") as s:
        assert lines(s, "ln nt!KeBugCheckEx+3") == [
            "(fffff800`000082d6)   nt!KeBugCheckEx+0x3   |  (fffff800`0000b000)   nt!PsLoadedModuleList"]
        assert lines(s, "lm m nt")[1] == "fffff800`00000000 fffff800`0001b000   nt         (export symbols)       ntoskrnl.exe"
        assert lines(s, f"ln {MYDRV_BASE + 0x1234:x}") == ["(fffff800`01000000)   mydrv+0x1234"]
        # only exports is a symbol problem (lm e, Microsoft Learn), as is none; l lists exports as loaded
        nt = lines(s, "lm m nt")[1]
        assert lines(s, "lme")[1:] == [nt, "fffff800`01000000 fffff800`01005000   mydrv      (no symbols)"]
        assert lines(s, "lml")[1:] == [nt]
        # the kernel's exports and its KDBG names together
        assert lines(s, "x nt!PsLoaded*") == ["fffff800`0000b000 nt!PsLoadedModuleList = <no type information>"]


# -- the built-in offsets ------------------------------------------------------------------------
@pytest.mark.parametrize("path, build, sizes", [
    (TRIAGE_19041, 19041, {"_EPROCESS": 0xA40, "_ETHREAD": 0x898}),
    (MINI_17763, 17763, {"_EPROCESS": 0x850, "_ETHREAD": 0x810}),
])
def test_builtin_table_agrees_with_the_real_dumps_kdbg(path, build, sizes):
    """Every field the KDBG of a real dump states must match the table's entry for its build."""
    with kdshell.open(path, symbol_path="", image_path="") as s:
        from kdshell.kernel.offsets import KDBG_OFFSETS

        entry = build_entry(build, True)
        assert entry.exact
        kdbg_only = KernelOffsets(build, True, kdbg=s.kdbg)
        checked = 0
        for tname, fpath, field_name in KDBG_OFFSETS:
            table_value = entry.offset(tname, fpath)
            kdbg_value = kdbg_only._kdbg_value(field_name)
            if table_value is not None and kdbg_value is not None:
                assert table_value == kdbg_value, (tname, fpath)
                checked += 1
        assert checked >= 9
        for tname, size in sizes.items():
            assert entry.size(tname) == size == kdbg_only.size(tname)


def test_offsets_come_in_order_pdb_kdbg_table(triage, complete):
    ko = KernelOffsets(19041, True, kdbg=triage.kdbg)
    assert ko.lookup("_KTHREAD", "Teb") == (0xF0, "KDBG (field at +0x29a)")
    found = ko.lookup("_EPROCESS", "ImageFileName")
    assert found[0] == 0x5A8 and found[1].startswith("kdshell's built-in offsets for build 19041")
    assert ko.offset("_EPROCESS", "NoSuchField") is None
    nt = complete.symbols.modules.kernel
    with_pdb = KernelOffsets(19041, True, kdbg=triage.kdbg, types=complete.symbols.types(nt))
    assert with_pdb.lookup("_EPROCESS", "ActiveProcessLinks")[1] == "PDB"
    assert build_entry(19045, True).build == 19041 and not build_entry(19045, True).exact
    assert build_entry(22631, True).build == 22621
    assert build_entry(7600, True) is None
    types = builtin_types(26100, True)
    assert types.offset_of("_EPROCESS", "ImageFileName") == 0x338
    assert types.offset_of("_ETHREAD", "Cid") == 0x508


def test_cli_symbol_path_flag():
    p = subprocess.run([sys.executable, "-m", "kdshell", "-z", str(TRIAGE_19041), "-y", str(CORPUS_SYMBOLS),
                        "-c", "ln 0xfffff8048b58334c; q"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"Symbol search path is: {CORPUS_SYMBOLS}" in p.stdout
    assert "(fffff804`8b5832dc)   amdppm!WriteIoMemRawEx+0x70   |  (fffff804`8b583370)   " \
           "amdppm!WriteIoMemRawHidden" in p.stdout


def test_lm_options(complete):
    complete.run(".reload /f mydrv.sys; .reload /f afd.sys")
    assert lines(complete, f"lm a {MYDRV_BASE + 0x10:x}") == [
        "start             end                 module name",
        f"fffff800`01000000 fffff800`01005000   mydrv      (private pdb symbols)  {BIN}/mydrv.pdb",
    ]
    assert lines(complete, "lmsm 1m") == ["afd", "hal", "mydrv", "mydrv_fffff80001800000", "nt"]
    assert lines(complete, "lme")[1:] == ["fffff800`02000000 fffff800`02009000   afd        (no symbols)"]
    assert lines(complete, "lm M *drivers*")[1:] == ["fffff800`01000000 fffff800`01005000   mydrv      "
                                                     f"(private pdb symbols)  {BIN}/mydrv.pdb",
                                                     "fffff800`01800000 fffff800`01805000   "
                                                     "mydrv_fffff80001800000 (deferred)",
                                                     "fffff800`02000000 fffff800`02009000   afd        (no symbols)"]
    assert lines(complete, "lm m dam*")[-2:] == ["Unloaded modules:", "fffff800`03100000 fffff800`0311c000   dam.sys"]
    assert lines(complete, "lm q") == ["lm: unknown option 'q' (lm [v][o][l][k][u][e][sm][1m][t][n][f][i][p] [m Pattern | M Pattern | a Address]). "
                                       "Did you mean 'lm'?"]
    assert lines(complete, "lmvq m nt") == ["lm: unknown option 'q' (lm [v][o][l][k][u][e][sm][1m][t][n][f][i][p] [m Pattern | M Pattern | a Address]). "
                                            "Did you mean 'lmv m nt'?"]
    assert lines(complete, "lm m") == ["lm: 'm' needs a pattern, e.g. 'lm m nt'"]
    assert lines(complete, "lmv m") == ["lm: 'm' needs a pattern, e.g. 'lmv m nt'"]


def test_kernel_offsets_for_the_kernel_layer(triage, complete):
    ko = triage.parts.offsets()
    assert ko.types is None and ko.offset("_EPROCESS", "UniqueProcessId") == 0x440
    assert ko.source("_KPRCB", "CurrentThread") == "KDBG (field at +0x2b4)"
    ko = complete.parts.offsets()
    assert ko.source("_EPROCESS", "UniqueProcessId") == "PDB"


def test_the_unwinder_sees_modules_with_image_readers(triage):
    view = triage.symbols.unwind_modules().module_at(0xFFFFF8048B58334C)
    assert (view.name, view.base, view.size) == ("amdppm", 0xFFFFF8048B580000, 0x3B000)
    assert view.exception_directory == (0x19000, 0x1854)
    assert view.image(0x334C, 4) == bytes.fromhex("43891401")
    assert triage.symbols.unwind_modules().module_at(0x1000) is None


def test_the_other_commands_on_the_complete_dump(complete):
    assert lines(complete, "lmvm mydrv") == [
        "start             end                 module name",
        "fffff800`01000000 fffff800`01005000   mydrv      (deferred)",
        "    Image path: \\SystemRoot\\System32\\drivers\\mydrv.sys",
        "    Image name: mydrv.sys",
        "    Image was built with /Brepro flag.",
        "    Timestamp:        0E7DD69F (This is a reproducible build file hash, not a timestamp)",
        "    CheckSum:         0000773C",
        "    ImageSize:        00005000",
        "    Translations:     0000.04b0 0000.04e4 0409.04b0 0409.04e4",
        "    Information from resource tables:",
    ]
    assert lines(complete, "!lmi mydrv")[-6:] == [
        "             CODEVIEW    22,  20b4,    12b4 RSDS - GUID: {8BE9025C-4121-7FDB-4C4C-44205044422E}",
        "               Age: 1, Pdb: mydrv.pdb",
        "                REPRO     0,     0,       0",
        "     Image Type: MEMORY   - Image read successfully from loaded memory.",
        "    Symbol Type: PDB      - Symbols loaded successfully from symbol search path.",
        f"                 {BIN}/mydrv.pdb",
    ]
    dh = lines(complete, "!dh -f hal")
    assert dh[1:3] == ["File Type: DLL", "FILE HEADER VALUES"]
    assert "    2058 [      F2] address [size] of Export Directory" in dh
    complete.run("!sym noisy")
    out = lines(complete, "ln hal!HalInitSystem")
    assert f"DBGHELP: {BIN}/hal.pdb - found" in out
    assert out[-3:] == ["(fffff800`004010c0)   hal!HalInitSystem   |  (fffff800`004010c4)   hal!HalHaltSystem",
                        "Exact matches:", "    hal!HalInitSystem (unsigned int, void *)"]
    complete.run("!sym quiet")
    assert lines(complete, ".sympath")[0] == f"Symbol search path is: {BIN}"
    assert lines(complete, ".exepath+ /x")[0] == "Executable image search path is: /x"


def test_x_pathological_wildcard_is_fast(complete):
    """Issue 24: as a backtracking regular expression this pattern ran for minutes on nt."""
    every = lines(complete, "x nt!*a*")  # loads nt's symbols first: only the matching is timed
    start = time.perf_counter()
    out = lines(complete, "x nt!*a*a*a*a*a*a*a*a*a*a*a*a*b")
    assert time.perf_counter() - start < 1.0
    assert set(out) <= set(every)
    assert lines(complete, "x nt!ki*THREAD") == [n for n in every if n.split()[1].startswith("nt!Ki")
                                                  and n.split()[1].endswith("Thread")]
    # a name the old expression would take years over: 200 a's that do not end in b
    wild = wildcard("*a*a*a*a*a*a*a*a*a*a*a*a*b")
    start = time.perf_counter()
    assert not wild.fullmatch("a" * 200 + "c") and wild.fullmatch("A" * 200 + "B")
    assert time.perf_counter() - start < 1.0


def test_wildcard_semantics():
    cases = [("Ki*Thread", "KiReadyThread", True), ("ki*thread", "KiReadyThread", True),
             ("Ki?wapThread", "KiSwapThread", True), ("Ki?Thread", "KiSwapThread", False),
             ("*", "", True), ("?", "", False), ("a*", "a", True), ("*a*b*", "xbxa", False),
             ("a*b*a", "aba", True), ("a*ba", "aba", True), ("ab*ba", "aba", False),
             ("*?x", "x", False), ("a.b", "aXb", False), ("a.b", "A.B", True)]
    for pattern, name, expected in cases:
        assert wildcard(pattern).fullmatch(name) == expected, (pattern, name)
