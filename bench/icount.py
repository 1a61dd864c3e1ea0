"""Instruction counts of every bench/run_all.py row's kdshell side, at two source trees: a
before/after comparison that does not depend on the load of a shared machine.

    python bench/icount.py                          # base 949b5cc against this checkout
    python bench/icount.py --base REV --markdown out.md

Timings on a 2-core VM shared with other jobs move by 20-60 % between two runs of the same code,
so "no row more than 10 % slower" cannot be shown with a stopwatch there. Instructions can:
each row's work runs in a fresh interpreter under `valgrind --tool=callgrind`, and only the
instructions executed inside the measured call are counted (`--toggle-collect` on CPython's
`operator.call`, through which the measured part alone is called: imports and set-up are left
out). Counts repeat to within a few hundred instructions between runs (PYTHONHASHSEED fixed), so
a difference of a few percent is real. Instructions are not time (a cache miss costs more than an
add), but the same work on the same interpreter in fewer instructions is not slower.

Each tree is imported as it is (the base one exported with `git archive` into a temporary
directory): the editable install's import hook is taken out and the tree's own `kdshell` and
`commands` are imported. The dumps are run_all's, smaller: its large machine at 16 GiB with
256 K pages present (bench/machines.py), the test machine d1, the corpus dumps and the bundled
sample; counts are smaller than run_all's (valgrind runs Python about 50 times slower), per
operation where run_all gives a time per operation.

Rows not counted: peak RSS (memory, not speed: run_all measures it) and the pseudo-terminal
prompt rows (a terminal is needed; what they add to `-c q` is prompt_toolkit's import, counted in
the `import kdshell.repl` row).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASE = "949b5cc"
MACHINE_GIB, MACHINE_PAGES = 16, 1 << 18


# ================================================================================================
# In the child: import the given tree, set up, then call the measured part through operator.call.

def use_tree(tree: str) -> None:
    """Import kdshell and kdshell.commands from `tree`, not from the editable install."""
    import importlib.util

    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in getattr(h, "__module__", "")]
    sys.path_importer_cache.clear()
    sys.path.insert(0, tree)
    commands = os.path.join(tree, "commands")

    class Commands:  # commands/ installs as kdshell.commands (pyproject's package-dir)
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name != "kdshell.commands":
                return None
            return importlib.util.spec_from_file_location(name, os.path.join(commands, "__init__.py"),
                                                          submodule_search_locations=[commands])

    sys.meta_path.insert(0, Commands)


def measured(fn, *args):
    import operator

    return operator.call(fn, *args)  # the only operator.call in the process: callgrind counts inside it


def probe_open(path: str, pa: int) -> None:
    import kdshell
    import kdshell.commands  # noqa: F401
    import kdshell.session  # noqa: F401

    def run():
        s = kdshell.open(path, symbol_path="", image_path="")
        s.progress = None
        s.capture(f"!db {pa:x} L10" if s.dump.physical is not None else "dq @rsp L2")
        assert not s.failures
        s.close()

    measured(run)


def _workload_setup(meta: str):
    import random

    import kdshell
    import kdshell.commands  # noqa: F401
    import kdshell.session  # noqa: F401
    import open_read  # after kdshell: it puts the checkout first on sys.path

    info = json.loads(Path(meta).read_text())
    rng = random.Random(20261122)
    s = kdshell.open(info["path"], symbol_path="", image_path="")
    s.progress = None
    memory = s.spaces.space(info["dtb"])
    pairs = [tuple(t) for t in info["translations"]]
    return info, s, memory, pairs, rng, open_read


def probe_pages(meta: str, n: int) -> None:
    info, s, _, _, _, open_read = _workload_setup(meta)
    pfns = open_read.sample_pfns([tuple(r) for r in info["runs"]], n)
    page = s.dump.physical.page

    def run():
        for pfn in pfns:
            bytes(page(pfn))

    measured(run)


def probe_translate(meta: str, n: int, how: str) -> None:
    _, _, memory, pairs, rng, _ = _workload_setup(meta)
    vas = [pairs[rng.randrange(len(pairs))][0] + rng.randrange(0, 0x1000, 8) for _ in range(n)]
    paging = memory.paging
    tr, flush = paging.translate, paging.flush
    for va in vas:  # warm: as commands meet them the second time
        tr(va)

    def warm():
        for va in vas:
            tr(va)

    def cold():
        for va in vas:
            flush(True)
            tr(va)

    def first_touch():
        for va in vas:
            flush(False)
            tr(va)

    measured({"warm": warm, "cold": cold, "first": first_touch}[how])


def probe_sequential(meta: str, size: int) -> None:
    info, _, memory, _, _, _ = _workload_setup(meta)
    va0 = info["sequential"][0]
    read = memory.read

    def run():
        for off in range(0, size, 0x10000):
            read(va0 + off, 0x10000)

    measured(run)


def probe_pdb(path: str, lookups: int) -> None:
    import random

    from kdshell.symbols.pdb import PdbFile

    def open_index():
        pdb = PdbFile(Path(path))
        pdb.symbol_at(0)
        return pdb

    if lookups == 0:
        measured(open_index)
        return
    pdb = open_index()
    syms = pdb.all_symbols
    rng = random.Random(20261122)
    lo, hi = (syms[0].rva, syms[-1].rva + 0x1000) if syms else (0, 0x1000)
    rvas = [rng.randrange(lo, hi) for _ in range(lookups)]

    def run():
        for r in rvas:
            pdb.symbol_at(r)

    measured(run)


def probe_command(path: str, store: str, command: str) -> None:
    import kdshell
    import kdshell.commands  # noqa: F401
    import kdshell.session  # noqa: F401

    tmp = tempfile.mkdtemp(prefix="kdshell-icount-")

    def run():
        s = kdshell.open(path, symbol_path=store, image_path=store)
        s.progress = None
        text = s.capture(command.replace("{out}", os.path.join(tmp, "out.dmp")))
        assert not s.failures, text
        s.close()

    measured(run)


def probe_k64(warm: bool) -> None:
    import kdshell
    import kdshell.commands  # noqa: F401
    import kdshell.session  # noqa: F401
    import stack_cmd  # after kdshell: it puts the checkout first on sys.path

    tmp = Path(tempfile.mkdtemp(prefix="kdshell-icount-"))
    path = stack_cmd.write_dump(tmp)

    def session():
        s = kdshell.open(path, symbol_path="", image_path="")
        s.progress = None
        return s

    if warm:
        s = session()
        s.capture("k 64")
        measured(lambda: s.capture("k 64"))
    else:
        measured(lambda: session().capture("k 64"))


def probe_import(module: str) -> None:
    import importlib

    measured(importlib.import_module, module)


def probe_main(*argv: str) -> None:
    """`python -m kdshell ARGS` in this process, all of it counted (start-up is the row)."""
    import runpy

    sys.argv = ["kdshell", *argv]
    try:
        measured(lambda: runpy.run_module("kdshell", run_name="__main__", alter_sys=True))
    except SystemExit:
        pass


PROBES = {f.__name__[len("probe_"):]: f for f in (probe_open, probe_pages, probe_translate, probe_sequential,
                                                  probe_pdb, probe_command, probe_k64, probe_import, probe_main)}


# ================================================================================================
# The parent: one callgrind run per row and tree.

def count(tree: Path, probe: str, *args) -> int | str:
    """Instructions inside the measured call of `probe` run against `tree`."""
    with tempfile.NamedTemporaryFile(suffix=".callgrind") as out:
        cmd = ["valgrind", "--tool=callgrind", "--toggle-collect=_operator_call", f"--callgrind-out-file={out.name}",
               sys.executable, str(Path(__file__).resolve()), "--child", str(tree), probe, json.dumps(args)]
        env = {**os.environ, "PYTHONHASHSEED": "0", "KDSHELL_OFFLINE": "1", "NO_COLOR": "1",
               "PYTHONDONTWRITEBYTECODE": "1"}
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
        if p.returncode != 0:
            lines = [ln for ln in p.stderr.splitlines() if not ln.startswith("==")]
            return "error: " + (lines[-1] if lines else f"exit {p.returncode}")[:100]
        for line in Path(out.name).read_text().splitlines():
            if line.startswith("summary:"):
                return int(line.split()[1])
    return "error: no summary"


def export(rev: str, into: Path) -> Path:
    """The tree at `rev`, exported with git archive (no work tree, no checkout)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    # the trees compile their modules once, as an installed copy has them compiled
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(into / "kdshell"), str(into / "commands")],
                   check=False)
    return into


def rows(work: Path) -> list[tuple[str, str, str, tuple, int]]:
    """(row, data, probe, args, operations counted) for each run_all row."""
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(REPO))
    from machines import _name, bench_machine
    from run_all import CORPUS_DUMPS, first_present_pa

    from kdshell.cli import bundled_sample

    machines = work / "machines"
    big = f"{MACHINE_GIB} GiB machine"
    out: list[tuple[str, str, str, tuple, int]] = []
    for kind in ("complete", "bitmap5", "kernel", "rdmp8"):
        info = bench_machine(machines, kind, MACHINE_GIB, MACHINE_PAGES, quiet=True)
        out.append((f"open to first command, {kind}", big, "open", (info["path"], first_present_pa(info["path"])), 1))
    from fixtures.machine.catalog import build_set

    d1 = build_set(machines / "machines", ["d1"])["machines"]["d1"]["dumps"]
    for kind in ("complete", "bitmap5", "kernel", "rdmp8", "small"):
        if kind in d1:
            out.append((f"open to first command, {kind}", "test machine d1", "open",
                        (d1[kind], first_present_pa(d1[kind]) or 0), 1))
    for name in ("triage-x64-19041-1000007e.dmp", "mini-x64-17763-1000007e.dmp", "full-x64-19045-truncated-16k.dmp"):
        path = CORPUS_DUMPS / name
        if path.exists():
            out.append(("open to first command", "corpus " + name[:-4], "open",
                        (str(path), first_present_pa(str(path)) or 0), 1))
    bench_machine(machines, "bitmap5", MACHINE_GIB, MACHINE_PAGES, quiet=True)
    meta = str(machines / f"{_name('bitmap5', MACHINE_GIB, MACHINE_PAGES, 64)}.json")
    label = f"{big}, type 5"
    out += [
        ("random page reads (per page)", label, "pages", (meta, 2000), 2000),
        ("virtual translations, warm (per op)", label, "translate", (meta, 20000, "warm"), 20000),
        ("  caches flushed each time (per op)", label, "translate", (meta, 5000, "cold"), 5000),
        ("  first touch of each page (per op)", label, "translate", (meta, 5000, "first"), 5000),
        ("sequential virtual read (per 64 KiB)", label, "sequential", (meta, 4 << 20), 64),
    ]
    import pdb_index

    for pdb in pdb_index.default_pdbs():
        if "fixtures" in str(pdb) and pdb.name != "ntkrnlmp.pdb":
            continue
        out.append(("PDB open + index", pdb.name, "pdb", (str(pdb), 0), 1))
        out.append(("address -> symbol (per lookup)", pdb.name, "pdb", (str(pdb), 2000), 2000))
    sample = bundled_sample()
    if sample:
        out.append(("!analyze -v end to end", "bundled sample", "command", (sample[0], sample[1], "!analyze -v"), 1))
    out.append(("k on 64 frames (warm)", "64-frame small dump", "k64", (True,), 1))
    out.append(("k on 64 frames (cold: new session)", "64-frame small dump", "k64", (False,), 1))
    for flag, what in (("/m", "small dump"), ("/f", "complete dump")):
        out.append((f".dump {flag} ({what})", "test machine d1 kernel dump", "command",
                    (d1["kernel"], "", f".dump {flag} {{out}}"), 1))
    out.append(("start to prompt, -c q (whole run)", "bundled sample", "main", ("-c", "q"), 1))
    kernel = bench_machine(machines, "kernel", MACHINE_GIB, MACHINE_PAGES, quiet=True)["path"]
    out.append(("start to prompt, -c q (whole run)", f"{big} kernel dump", "main", ("-z", kernel, "-c", "q"), 1))
    out.append(("import kdshell.session + commands", "fresh interpreter", "import", ("kdshell.commands",), 1))
    out.append(("import kdshell.repl (the prompt's own imports)", "after session", "import", ("kdshell.repl",), 1))
    return out


def fmt(v: int | str, per: int) -> str:
    if isinstance(v, str):
        return v
    x = v / per
    return f"{x / 1e6:,.1f} M" if x >= 1e6 else f"{x / 1e3:,.1f} k" if x >= 1e4 else f"{x:,.0f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--base", default=BASE, help="the revision to compare with (default: %(default)s)")
    ap.add_argument("--dir", default="/tmp/kdshell-icount", help="dumps and the exported tree")
    ap.add_argument("--only", help="rows whose name contains one of these (comma-separated)")
    ap.add_argument("--skip", help="rows whose name contains one of these (comma-separated)")
    ap.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        tree, probe, probe_args = args.child
        use_tree(tree)
        sys.path.insert(1, str(HERE))  # open_read, stack_cmd (bench/, this checkout's)
        PROBES[probe](*json.loads(probe_args))
        for name in ("kdshell", "kdshell.commands"):  # the tree asked for, not another
            module = sys.modules.get(name)
            if module is not None and not str(module.__file__).startswith(tree):
                raise SystemExit(f"{name} came from {module.__file__}, not {tree}")
        return 0
    if subprocess.run(["which", "valgrind"], capture_output=True).returncode != 0:
        print("valgrind is not installed: apt-get install valgrind", file=sys.stderr)
        return 1
    work = Path(args.dir)
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.base], capture_output=True, text=True,
                         check=True).stdout.strip()
    base = export(rev, work / f"tree-{rev}")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "kdshell", "commands"],
                           capture_output=True, text=True).stdout.strip()
    this = f"{head}{' + changes' if dirty else ''}"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "kdshell"), str(REPO / "commands")],
                   check=False)
    lines = [f"| row | data | {rev} (before) | {this} (after) | after / before |", "|---|---|---|---|---|"]
    print(f"instructions, {rev} -> {this}")
    worst = 0.0
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(2)  # the two trees side by side: counts do not depend on the load
    for row, data, probe, pargs, per in rows(work):
        if args.only and not any(w in row for w in args.only.split(",")):
            continue
        if args.skip and any(w in row for w in args.skip.split(",")):
            continue
        b, a = pool.submit(count, base, probe, *pargs), pool.submit(count, REPO, probe, *pargs)
        before, after = b.result(), a.result()
        ratio = f"{after / before:.3f}" if isinstance(before, int) and isinstance(after, int) and before else "-"
        if ratio != "-":
            worst = max(worst, after / before)  # type: ignore[operator]
        line = f"| {row} | {data} | {fmt(before, per)} | {fmt(after, per)} | {ratio} |"
        print(line, flush=True)
        lines.append(line)
    lines.append(f"\nWorst row: after / before = {worst:.3f}")
    print(lines[-1])
    if args.markdown:
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
