"""Benchmark: the `k 64` command, warm, on a 64-frame stack (issue #6: under 50 ms).

    python bench/stack_cmd.py [--repeat 100]

Reuses bench/stack_walk.py's machine: three functions calling each other in a ring (push/push/sub;
an RBP frame with a lea-rsp epilog; a 4 KB ALLOC_LARGE frame with SAVE_NONVOL), run under Unicorn
until 64 calls deep. Here the module gets PE headers, a .pdata directory entry and an export
table naming the three functions, and the machine is written as a small memory dump (the image
as a saved data block, the stack as the dump's stack), so the measurement is the whole command
as a user runs it: dispatch, the session's warm Walker, symbolisation of every frame and the
WinDbg columns.

  - k 64 (warm)       the same session, the command run again and again
  - kn 64 (warm)      with frame numbers
  - kv 64 (warm)      with the home slots read for each frame
  - k 64 (cold)       a new session per run (dump opened, modules and exports read, tables parsed)
  - walk only (warm)  session.context.walk(64): the engine without the formatting

Run by hand; nothing here is asserted (DESIGN.md: bench/ is not CI). Needs unicorn.
"""
from __future__ import annotations

import argparse
import statistics
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stack_walk  # noqa: E402  (bench/stack_walk.py: the machine)

import kdshell  # noqa: E402
from kdshell.dumpfile.write import DumpHeaderFields, make_context_amd64  # noqa: E402
from kdshell.dumpfile.write_triage import TriageDriverInfo, TriageParts, write_triage  # noqa: E402

STAMP = 0x5F3C1A2B
EXPORTS_RVA = 0x3800
NAMES = ("BenchA", "BenchB", "BenchC")


def pe_image(code: bytearray) -> bytes:
    """stack_walk's module (code at 0x1000, .pdata at 0x2000, UNWIND_INFO at 0x3000) with PE
    headers in its first page and an export directory at 0x3800."""
    image = bytearray(code)
    size = len(image)
    image[0:2] = b"MZ"
    struct.pack_into("<I", image, 0x3C, 0x80)
    image[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", image, 0x84, 0x8664, 1, STAMP, 0, 0, 0xF0, 0x22)
    opt = 0x98
    struct.pack_into("<HBBIIIII", image, opt, 0x20B, 14, 0, 0x3000, 0, 0, 0x1000, 0x1000)
    struct.pack_into("<QIIHHHHHHIIIIHH", image, opt + 24, stack_walk.BASE, 0x1000, 0x200, 10, 0, 10, 0,
                     10, 0, 0, size, 0x400, 0, 1, 0)
    struct.pack_into("<QQQQII", image, opt + 72, 0x40000, 0x1000, 0x100000, 0x1000, 0, 16)
    dirs = opt + 112
    struct.pack_into("<II", image, dirs + 0 * 8, EXPORTS_RVA, 0x100)   # export table
    struct.pack_into("<II", image, dirs + 3 * 8, 0x2000, 36)          # exception table (.pdata)
    section = dirs + 16 * 8
    struct.pack_into("<8sIIIIIIHHI", image, section, b".text", size - 0x1000, 0x1000, size - 0x1000, 0x1000,
                     0, 0, 0, 0, 0x60000020 | 0x40000000)
    # exports: the three functions, by name
    funcs = (0x1000, 0x1100, 0x1200)
    at = EXPORTS_RVA + 40
    func_rva, names_rva, ords_rva, strings = at, at + 12, at + 24, at + 32
    name_rvas, pos = [], strings
    dll = b"bench.sys\0"
    image[pos:pos + len(dll)] = dll
    dll_rva, pos = pos, pos + len(dll)
    for n in NAMES:
        raw = n.encode() + b"\0"
        image[pos:pos + len(raw)] = raw
        name_rvas.append(pos)
        pos += len(raw)
    struct.pack_into("<IIHHIIIIIII", image, EXPORTS_RVA, 0, STAMP, 0, 0, dll_rva, 1, 3, 3, func_rva, names_rva,
                     ords_rva)
    struct.pack_into("<III", image, func_rva, *funcs)
    struct.pack_into("<III", image, names_rva, *name_rvas)
    struct.pack_into("<HHH", image, ords_rva, 0, 1, 2)
    return bytes(image)


def write_dump(outdir: Path) -> Path:
    regs, read, _ = stack_walk.build()
    code, _ = stack_walk._code()
    image = pe_image(code)
    stack = read(stack_walk.STACK, stack_walk.STACK_SIZE)
    ctx = {k: v for k, v in regs.items()}
    fields = DumpHeaderFields(
        is64=True, build=19041, directory_table_base=0x1AD000, pfn_database=0, ps_loaded_module_list=0,
        ps_active_process_head=0, number_processors=1, bugcheck_code=0xE2, bugcheck_parameters=(0, 0, 0, 0),
        kd_debugger_data_block=0, context=make_context_amd64(**ctx))
    parts = TriageParts(
        stack=stack, top_of_stack=stack_walk.STACK,
        drivers=[TriageDriverInfo("\\SystemRoot\\system32\\ntoskrnl.exe", 0xFFFFF80000000000, 0x100000, 1),
                 TriageDriverInfo("\\SystemRoot\\system32\\drivers\\bench.sys", stack_walk.BASE, len(image), STAMP)],
        data_blocks=[(stack_walk.BASE, image)])
    path = outdir / "bench-stack.dmp"
    write_triage(path, fields, parts, overwrite=True)
    return path


def timeit(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def measure(repeat: int = 100) -> tuple[list[tuple[str, float]], list[str]]:
    """The rows (name, median seconds) and the first lines of `kn 64`; also used by
    bench/run_all.py."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dump(Path(tmp))
        s = kdshell.open(path, symbol_path="", image_path="")
        s.progress = None
        out = s.capture("kn 64").splitlines()
        frames = [line for line in out[1:] if not line.startswith("WARNING")]
        assert len(frames) == 64 and "bench!BenchA" in out[1], out[:3]
        assert not any(line.startswith("WARNING") for line in out), "every frame should be unwound"

        def cold():
            with kdshell.open(path, symbol_path="", image_path="") as c:
                c.progress = None
                c.capture("k 64")

        rows = [
            ("k 64 (warm)", timeit(lambda: s.capture("k 64"), repeat)),
            ("kn 64 (warm)", timeit(lambda: s.capture("kn 64"), repeat)),
            ("kv 64 (warm)", timeit(lambda: s.capture("kv 64"), repeat)),
            ("k 64 (cold: new session)", timeit(cold, max(5, repeat // 10))),
            ("walk only (warm)", timeit(lambda: s.context.walk(64), repeat)),
        ]
        s.close()
    return rows, out[:4]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=100)
    args = ap.parse_args(argv)
    rows, first = measure(args.repeat)
    print(f"Python {sys.version.split()[0]}, 64-frame genuine stack in a small memory dump, "
          f"median of {args.repeat} (cold: {max(5, args.repeat // 10)})")
    print(f"{'command':28} {'ms':>9} {'us/frame':>9}")
    for name, t in rows:
        print(f"{name:28} {t * 1e3:9.3f} {t * 1e6 / 64:9.1f}")
    print("first lines of kn 64:")
    for line in first:
        print("  " + line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
