"""Small helpers to write dumps of every kind into a test's tmp_path.

    pages = make_pages([1, 2, 3, 0x100])                 # PFN-stamped, distinct contents
    path = write_kind(tmp_path, "bitmap6", pages, bugcheck_code=0xD1)
    path = write_kind(tmp_path, "triage", triage=default_triage_parts())

KINDS lists the kinds: full, bitmap5, bitmap6, rdmp8, rdmp9, rdmp10, triage, full32, triage32.
Extra keyword arguments are DumpHeaderFields overrides; writer options go in `options`.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from kdshell.dumpfile.write import (
    DumpHeaderFields,
    make_context_amd64,
    make_context_x86,
    make_exception,
    write_bitmap,
    write_full,
    write_rdmp,
)
from kdshell.dumpfile.write_triage import TriageDriverInfo, TriageParts, write_triage

PAGE = 0x1000
KINDS = ("full", "bitmap5", "bitmap6", "rdmp8", "rdmp9", "rdmp10", "triage", "full32", "triage32")
PHYSICAL_KINDS = tuple(k for k in KINDS if not k.startswith("triage"))
KDBG_VA64 = 0xFFFFF8047C600B20
KDBG_VA32 = 0x8275EC28


def page_bytes(pfn: int) -> bytes:
    """4096 bytes that could only belong to this PFN: its number, then a PFN-seeded hash stream."""
    seed = hashlib.sha256(pfn.to_bytes(8, "little")).digest()
    body = (seed * (PAGE // len(seed)))[: PAGE - 16]
    return b"PFN:" + struct.pack("<Q", pfn) + b"\xaa\x55\xaa\x55" + body


def make_pages(pfns) -> dict[int, bytes]:
    return {pfn: page_bytes(pfn) for pfn in pfns}


def default_context(is64: bool = True, **regs) -> bytes:
    if is64:
        values = dict(rax=0x1111, rcx=0x2222, rdx=0x3333, rbx=0x4444, rsp=0xFFFFF80412345F00,
                      rbp=0xFFFFF80412345F80, rsi=0x5555, rdi=0x6666, r8=8, r9=9, r10=10, r11=11, r12=12,
                      r13=13, r14=14, r15=15, rip=0xFFFFF8047C1D2F30, efl=0x40246, mxcsr=0x1F80, xmm3=0x33 << 100)
        values.update(regs)
        return make_context_amd64(**values)
    values = dict(eax=0x11, ebx=0x22, ecx=0x33, edx=0x44, esi=0x55, edi=0x66, ebp=0x8B3F1F80, esp=0x8B3F1F00,
                  eip=0x82A1C4D0, efl=0x246)
    values.update(regs)
    return make_context_x86(**values)


def default_fields(**overrides) -> DumpHeaderFields:
    """Plausible header facts of a Windows 10 x64 (or, with is64=False, x86 PAE) machine."""
    is64 = overrides.get("is64", True)
    if is64:
        values = dict(
            is64=True, build=19041, directory_table_base=0x1AD000, pfn_database=0xFFFFFA8000000000,
            ps_loaded_module_list=0xFFFFF8047C62A7A0, ps_active_process_head=0xFFFFF8047C61F4A0,
            number_processors=4, bugcheck_code=0x1000007E,
            bugcheck_parameters=(0xFFFFFFFFC0000005, 0xFFFFF8048B58334C, 0xFFFF850429891EE8, 0xFFFF850429891720),
            kd_debugger_data_block=KDBG_VA64,
            exception=make_exception(0x80000003, 0xFFFFF8047C1D2F30, parameters=(0, 0x1234)),
        )
    else:
        values = dict(
            is64=False, build=7601, directory_table_base=0x185000, pfn_database=0x84000000,
            ps_loaded_module_list=0x8275B850, ps_active_process_head=0x827544C8, number_processors=2,
            bugcheck_code=0xD1, bugcheck_parameters=(0x10, 2, 0, 0x8A6C1234), kd_debugger_data_block=KDBG_VA32,
            exception=make_exception(0x80000003, 0x82A1C4D0, parameters=(0, 0x1234)), pae_enabled=True,
        )
    values.update(
        system_time=133_500_000_000_000_000, system_uptime=36_000_000_000, comment="kdshell test dump",
        product_type=1, suite_mask=0x110, attributes=0x8, boot_id=0x7D,
    )
    values.update(overrides)
    if "context" not in values:
        values["context"] = default_context(values["is64"])
    return DumpHeaderFields(**values)


def default_triage_parts(is64: bool = True, **overrides) -> TriageParts:
    """A small memory dump's parts: drivers, unloaded drivers, stack, KDBG copy, data blocks."""
    hi = 0xFFFFF80400000000 if is64 else 0x80000000
    kdbg = bytearray(0x380)
    kdbg[0x10:0x18] = b"KDBG\x80\x03\x00\x00"
    kdbg[0x18:0x20] = (hi + 0x7C000000 if is64 else hi + 0x2800000).to_bytes(8, "little")
    values = dict(
        stack=bytes(range(256)) * 32,
        top_of_stack=(0xFFFF850429891000 if is64 else 0x8B3F1000),
        prcb=b"PRCB" * 0x100, process=b"EPRO" * 0x80, thread=b"ETHR" * 0x90,
        mm=dict(CommittedPages=125829, CommitLimitMaximum=2073913),
        unloaded=[("dam.sys", hi + 0x10000, hi + 0x2C000), ("a_very_long_driver_name.sys", hi + 0x40000, hi + 0x51000)],
        drivers=[
            TriageDriverInfo("\\SystemRoot\\system32\\ntoskrnl.exe", hi + 0x7C000000, 0x1046000, 0x0D8333E6, 0xA5938C),
            TriageDriverInfo("\\SystemRoot\\system32\\hal.dll", hi + 0x7B000000, 0x6000, 0x1A7BD7E9),
            TriageDriverInfo("crashdrv.sys", hi + 0x01000000, 0x3000, 0x12345678, 0x9ABC),
        ],
        broken_driver=2,
        kdbg=bytes(kdbg),
        data_page=((0xFFFFF78000000000 if is64 else 0xFFDF0000), b"\x5a" * PAGE),
        data_blocks=[
            ((0xFFFF9B00021FF340 if is64 else 0x85001340), b"block one" * 100),
            ((0xFFFF9B0002300180 if is64 else 0x85100180), b"\x01\x02\x03"),
            ((hi + 0x7C62A7A0), bytes(range(156))),
        ],
    )
    values.update(overrides)
    return TriageParts(**values)


def write_kind(tmp_path, kind: str, pages=None, *, triage: TriageParts | None = None, name: str | None = None,
               blobs=(), options: dict | None = None, **fields) -> Path:
    """Write a dump of `kind` into tmp_path and return its path."""
    options = dict(options or {})
    is64 = not kind.endswith("32")
    f = default_fields(is64=is64, **fields)
    path = Path(tmp_path) / (name or f"{kind}.dmp")
    if kind.startswith("triage"):
        write_triage(path, f, triage if triage is not None else default_triage_parts(is64), blobs=blobs, **options)
        return path
    if pages is None:
        pages = make_pages([1, 2, 3, 0x10, 0x11, 0x200])
    if kind in ("full", "full32"):
        write_full(path, f, pages, blobs=blobs, **options)
    elif kind in ("bitmap5", "bitmap6"):
        write_bitmap(path, f, pages, int(kind[-1]), blobs=blobs, **options)
    elif kind in ("rdmp8", "rdmp9", "rdmp10"):
        write_rdmp(path, f, pages, int(kind[4:]), blobs=blobs, **options)
    else:
        raise ValueError(f"unknown dump kind {kind!r}")
    return path
