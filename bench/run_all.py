"""Every benchmark, side by side with the peers, in one command: one table of ratios.

    python bench/run_all.py                     # everything (about 5 minutes; dumps cached in --dir)
    python bench/run_all.py --quick             # smaller counts, no 64 GiB complete dump
    python bench/run_all.py --sections open,memory --markdown results.md

Readers (bench/readers.py), each in its own subprocess so its peak memory is its own:
- kdshell (this checkout);
- kdmp-parser (PyPI `kdmp-parser`, a test dependency);
- volatility3, its crash layer stacked by hand on a file layer, for DumpType 1 and 5 only. It is
  not a kdshell dependency: `pip install volatility3` to get its column (skipped with a note when
  it is missing);
- symbolic (Sentry's PyPI `symbolic`) for PDB address lookups, and volatility3's own PDB
  converter (`pdbconv`), when installed.

Sections (--sections):
  open       open to first command, for each dump kind: the 64 GiB machine (DumpType 1, 5, 6, 8),
             the test machine d1 (1, 5, 6, 8, 4) and the real corpus dumps. kdshell's "first
             command" is `!db <first page> L10` (`dq @rsp L2` on a small dump) run through the
             dispatcher; a peer's is its first page read. Best of up to 5 opens, imports excluded.
  reads      on the 64 GiB machine (DumpType 5, the one kind all three read): 100k random
             physical page reads (each a copy of the page), 1M virtual translations (kdshell's
             cache warm as commands use it, and cold: a full walk each time), sequential virtual
             read MB/s (64 MiB in 64 KiB reads; kdmp-parser page by page, its API's unit)
  memory     peak RSS of that whole workload on two machine sizes (16 and 64 GiB): it must not
             grow with the dump; RSS of the mapped file's pages is shown apart (page cache)
  pdb        PDB open+index for the corpus PDBs and 10k address -> symbol lookups
             (bench/pdb_index.py)
  commands   !analyze -v end to end on the bundled sample, `k` on 64 frames (bench/stack_cmd.py),
             .dump /m and .dump /f of the test machine's kernel dump. A command that is not
             registered yet prints "not implemented yet" in its row.
  start      REPL start to prompt: `python -m kdshell -z X -c q`, the interactive prompt in a
             pseudo-terminal with bytecode caches (as installed) and without, and
             `python -X importtime -c "import kdshell.session"`

Ratios are peer / kdshell for times and memory, kdshell / peer for MB/s: above 1, kdshell is
faster or smaller. Run by hand; not part of CI (DESIGN.md).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import tempfile
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from tests.fetch_corpus import corpus_dir  # noqa: E402

CORPUS_DUMPS = corpus_dir() / "dumps"  # $KDSHELL_CORPUS, default ../shared/corpus
SEED = 20261122
PEERS = ("kdmp-parser", "volatility3", "symbolic")
COLUMNS = ("kdshell",) + PEERS
NOT_IMPLEMENTED = "not implemented yet"


# ================================================================================================
# Children: one measurement in a fresh interpreter; the result is printed as JSON.

def child_open(reader: str, path: str, pa: int, tries: int = 5) -> dict:
    """Open to first command, best of up to `tries` (while the total stays under a second)."""
    from readers import import_reader, memory_mb, open_reader

    import_reader(reader)
    best, spent, n = None, 0.0, 0
    while n < tries and (n == 0 or spent < 1.0):
        t = time.perf_counter()
        r = open_reader(reader, path)
        r.first_command(pa)
        dt = time.perf_counter() - t
        r.close()
        best = dt if best is None else min(best, dt)
        spent += dt
        n += 1
    out = {"s": best, "tries": n, **memory_mb()}
    if reader == "kdshell":  # the container alone (open_dump + the page), without the session
        from kdshell.dumpfile.dump import open_dump

        times = []
        for _ in range(n):
            t = time.perf_counter()
            with open_dump(path) as d:
                if d.physical is not None:
                    d.physical.page(pa >> 12)
            times.append(time.perf_counter() - t)
        out["container_s"] = min(times)
    return out


def child_workload(reader: str, meta: str, reads: int, translations: int, cold: int, seq_chunk: int) -> dict:
    """On one large machine: open, `reads` random page reads, `translations` warm translations
    (and `cold` ones with kdshell's caches flushed each time, and with its translations flushed
    but its last-level tables kept), the sequential region read in
    `seq_chunk` pieces; the time of each, and memory: the harness's own (its address lists, in
    compact arrays) before the reader opens the dump, and the peak and anonymous RSS at the end."""
    import gc
    from array import array

    import open_read
    from readers import import_reader, memory_mb, open_reader

    info = json.loads(Path(meta).read_text())
    path, dtb, (va0, size) = info["path"], info["dtb"], info["sequential"]
    pfns = array("Q", open_read.sample_pfns([tuple(r) for r in info["runs"]], reads))
    rng = random.Random(SEED)
    pairs = [tuple(t) for t in info["translations"]]
    check = rng.sample(pairs, min(500, len(pairs)))
    vas = array("Q", (pairs[rng.randrange(len(pairs))][0] + rng.randrange(0, 0x1000, 8) for _ in range(translations)))
    del info, pairs
    import_reader(reader)
    gc.collect()
    out: dict = {"harness": memory_mb()}
    t = time.perf_counter()
    r = open_reader(reader, path, dtb)
    r.first_command(pfns[0] << 12)
    out["open_s"] = time.perf_counter() - t
    page = r.page
    t = time.perf_counter()
    for pfn in pfns:
        page(pfn)
    out["page_us"] = (time.perf_counter() - t) / reads * 1e6
    tr = r.translator()
    wrong = [va for va, pa in check if tr(va) != pa]
    if wrong:
        raise AssertionError(f"{reader}: {len(wrong)} of {len(check)} translations wrong, e.g. {wrong[0]:#x}")
    t = time.perf_counter()
    if reader == "kdmp-parser":  # called as its documentation shows: translate_virtual(va, dtb)
        tv, dtb = r.dump.translate_virtual, r.dtb
        for va in vas:
            tv(va, dtb)
    else:
        for va in vas:
            tr(va)
    out["translate_us"] = (time.perf_counter() - t) / max(1, len(vas)) * 1e6
    out["translations"] = len(vas)
    if cold and hasattr(r, "flush"):
        for key, tables in (("translate_cold_us", True), ("translate_first_touch_us", False)):
            flush = r.flusher()
            t = time.perf_counter()
            for va in vas[:cold]:
                flush(tables)
                tr(va)
            out[key] = (time.perf_counter() - t) / cold * 1e6
    read = r.reader()
    best = None
    for _ in range(2):
        t = time.perf_counter()
        first = read(va0, seq_chunk)
        for off in range(seq_chunk, size, seq_chunk):
            read(va0 + off, seq_chunk)
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    if bytes(first[:8]) != va0.to_bytes(8, "little"):
        raise AssertionError(f"{reader}: the sequential region's first page is wrong")
    out["seq_mbs"] = size / best / 1e6
    out.update(memory_mb())
    out["own_anon_mb"] = out.get("anon_mb", 0) - out["harness"].get("anon_mb", 0)
    return out


def child_baseline(reader: str) -> dict:
    from readers import import_reader, memory_mb

    import_reader(reader)
    return memory_mb()


def child_pdb_kdshell(path: str, lookups: int, answers_file: str) -> dict:
    import pdb_index

    k = pdb_index.bench_kdshell(Path(path), lookups, 3, SEED)
    Path(answers_file).write_text(json.dumps({"rvas": k["rvas"], "answers": k["answers"]}))
    return {"open_index_s": k["open"] + k["index"], "cold_s": sum(k["first"]), "lookup_us": k["lookup"] * 1e6,
            "symbols": k["symbols"], "types": k["types"]}


def child_pdb_symbolic(path: str, answers_file: str) -> dict:
    import pdb_index

    a = json.loads(Path(answers_file).read_text())
    s = pdb_index.bench_symbolic(Path(path), a["rvas"], [tuple(x) if x else None for x in a["answers"]])
    if s is None:
        return {"missing": "pip install symbolic"}
    return {"open_index_s": s["open"], "lookup_us": s["lookup"] * 1e6,
            "agree": f"{100 * s['same'] / s['both']:.0f}%" if s["both"] else "-"}


def child_pdb_volatility3(path: str) -> dict:
    """volatility3 converts a PDB to its JSON symbol format before it can use it (pdbconv)."""
    from urllib import request

    from volatility3.framework import contexts
    from volatility3.framework.symbols.windows import pdbconv

    t = time.perf_counter()
    reader = pdbconv.PdbReader(contexts.Context(), "file:" + request.pathname2url(os.path.abspath(path)))
    reader.get_json()
    return {"open_index_s": time.perf_counter() - t}


def child_command(path: str, store: str, command: str, repeat: int) -> dict:
    """A command end to end: open + the command (imports excluded), then warm repeats.
    `{out}` in the command is a fresh file name each time. Not registered: {"missing": ...}."""
    import kdshell
    import kdshell.commands  # noqa: F401
    from kdshell import dispatch
    from kdshell.errors import CommandError

    try:
        dispatch.resolve(command.replace("{out}", "x.dmp"))
    except CommandError:
        return {"missing": NOT_IMPLEMENTED}
    tmp = tempfile.mkdtemp(prefix="kdshell-bench-")
    n = 0

    def run(s):
        nonlocal n
        n += 1
        text = s.capture(command.replace("{out}", os.path.join(tmp, f"out{n}.dmp")))
        if s.failures:
            raise RuntimeError(f"{command!r} failed: {text.strip().splitlines()[-1:]}")
        return text

    t = time.perf_counter()
    s = kdshell.open(path, symbol_path=store, image_path=store)
    s.progress = None
    text = run(s)
    first = time.perf_counter() - t
    warm = []
    for _ in range(repeat):
        t = time.perf_counter()
        run(s)
        warm.append(time.perf_counter() - t)
    s.close()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return {"first_s": first, "warm_s": statistics.median(warm) if warm else None, "lines": len(text.splitlines())}


def child_k64(repeat: int) -> dict:
    import stack_cmd

    rows, _ = stack_cmd.measure(repeat)
    return {name: t for name, t in rows}


CHILDREN = {f.__name__[len("child_"):]: f for f in (child_open, child_workload, child_baseline, child_pdb_kdshell,
                                                    child_pdb_symbolic, child_pdb_volatility3, child_command,
                                                    child_k64)}


def run_child(name: str, timeout: float = 600, **kwargs) -> dict:
    """Run a child measurement in a fresh interpreter: its result, or {"error": one line}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, json.dumps(kwargs)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout ({timeout:.0f} s)"}
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["exit status %d" % p.returncode])[-1]
        return {"error": last[:120]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ================================================================================================
# The table

class Table:
    def __init__(self, machine: str = "", runs: dict[str, str] | None = None):
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.machine = machine  # on every row: where it was measured
        self.runs = runs or {}  # section -> how many runs each number is made of

    def add(self, section: str, what: str, data: str, unit: str, values: dict, *, higher_better: bool = False,
            note: str = "", runs: str | None = None) -> None:
        self.rows.append(dict(section=section, what=what, data=data, unit=unit, values=values,
                              higher=higher_better, note=note, runs=runs or self.runs.get(section, "1")))
        self.print_row(self.rows[-1])

    # -- formatting --------------------------------------------------------------------------
    @staticmethod
    def cell(v, unit: str) -> str:
        if v is None:
            return "—"
        if isinstance(v, str):
            return v
        if unit == "s":
            return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"
        if unit == "ms":
            return f"{v:.2f} ms"
        if unit == "us":
            return f"{v:.2f} µs"
        if unit == "MB/s":
            return f"{v:,.0f} MB/s"
        if unit == "MB":
            return f"{v:,.0f} MB"
        return f"{v:g} {unit}"

    @staticmethod
    def ratio(row: dict, peer: str) -> str:
        k, p = row["values"].get("kdshell"), row["values"].get(peer)
        if not isinstance(k, (int, float)) or not isinstance(p, (int, float)) or not k or not p:
            return ""
        r = k / p if row["higher"] else p / k
        return f"{r:.1f}x" if r < 100 else f"{r:.0f}x"

    def cells(self, row: dict) -> list[str]:
        out = [row["what"], row["data"]]
        for col in COLUMNS:
            c = self.cell(row["values"].get(col), row["unit"])
            if col != "kdshell" and (r := self.ratio(row, col)):
                c += f" ({r})"
            out.append(c)
        out += [row["runs"], self.machine, row["note"]]
        return out

    HEADER = ["benchmark", "data"] + list(COLUMNS) + ["runs", "machine", "note"]
    WIDTHS = [36, 34, 14, 20, 22, 18, 12, 14, 0]

    def print_row(self, row: dict) -> None:
        cells = self.cells(row)
        print("  ".join(c.ljust(w) if w else c for c, w in zip(cells, self.WIDTHS)), flush=True)

    def print_header(self) -> None:
        print("  ".join(h.ljust(w) if w else h for h, w in zip(self.HEADER, self.WIDTHS)))
        print("-" * 160)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.HEADER) + " |", "|" + "---|" * len(self.HEADER)]
        for row in self.rows:
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in self.cells(row)) + " |")
        return "\n".join(lines)


def short_machine() -> str:
    """The host in a few words, for every row: CPU count and whether others share it."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return f"{os.cpu_count()}-core {platform.machine()}, load {load:.1f}"


def value(result: dict, key: str):
    """A child's number, or the reason there is none."""
    if "missing" in result:
        return result["missing"]
    if "error" in result:
        return "error: " + result["error"]
    return result.get(key)


# ================================================================================================
# Sections

def first_present_pa(path: str) -> int | None:
    from kdshell.dumpfile.dump import open_dump

    with open_dump(path) as d:
        if d.physical is None:
            return None
        for first, count in d.physical.present_runs():
            for pfn in range(first, first + min(count, 4)):
                try:
                    d.physical.page(pfn)
                    return pfn << 12
                except Exception:
                    continue
    return None


def dump_type(path: str) -> int:
    """DumpType, read at its literal offset (formats.md §2)."""
    with open(path, "rb") as f:
        sig64 = f.read(8)[4:8] == b"DU64"
        f.seek(0xF98 if sig64 else 0xF88)
        return int.from_bytes(f.read(4), "little")


def supported(reader: str, dtype: int) -> bool:
    if reader == "kdmp-parser":
        return dtype in (1, 5, 6, 8, 9, 10)
    if reader == "volatility3":
        return dtype in (1, 5)
    return reader == "kdshell"


def installed(reader: str) -> bool:
    from readers import available

    return available(reader)


def section_open(t: Table, args, machines) -> None:
    datasets = []
    for kind in ("complete", "bitmap5", "kernel", "rdmp8"):
        if kind == "complete" and args.quick:
            continue
        info = machines.large(kind)
        datasets.append((f"{args.gib} GiB machine", info["path"]))
    d1 = machines.d1()
    for kind in ("complete", "bitmap5", "kernel", "rdmp8", "small"):
        if kind in d1:
            datasets.append(("test machine d1", d1[kind]))
    for name in ("triage-x64-19041-1000007e.dmp", "mini-x64-17763-1000007e.dmp", "full-x64-19045-truncated-16k.dmp"):
        if (CORPUS_DUMPS / name).exists():
            datasets.append(("corpus " + name.split("-1000")[0].split("-truncated")[0], str(CORPUS_DUMPS / name)))
    for label, path in datasets:
        dtype = dump_type(path)
        pa = first_present_pa(path)
        values, container = {}, None
        for reader in ("kdshell", "kdmp-parser", "volatility3"):
            if not installed(reader):
                values[reader] = "not installed"
            elif not supported(reader, dtype) or (pa is None and reader != "kdshell"):
                values[reader] = "unsupported"
            else:
                r = run_child("open", reader=reader, path=path, pa=pa or 0)
                values[reader] = value(r, "s")
                container = r.get("container_s", container)
        size = os.path.getsize(path)
        note = (f"{size / 2**30:.0f} GiB file" if size > 2**30 else f"{size / 2**20:.1f} MiB file" if size > 2**20
                else f"{size / 2**10:.0f} KiB file")
        if container is not None:
            note += f"; kdshell's container alone {container * 1e3:.1f} ms"
        t.add("open", f"open to first command, type {dtype}", label, "s", values, note=note)


def section_reads(t: Table, args, machines, sizes) -> dict:
    """The workload on each machine size; returns {gib: {reader: result}} for the memory rows."""
    results = {}
    for gib, present in sizes:
        info = machines.large("bitmap5", gib, present)
        per = {}
        for reader in ("kdshell", "kdmp-parser", "volatility3"):
            if not installed(reader):
                per[reader] = {"missing": "not installed"}
                continue
            n = args.translations if reader != "volatility3" else args.translations // 10
            runs = 1 if reader == "volatility3" else args.runs  # its 64 GiB bitmap takes 20 s to open
            results_r = [run_child("workload", timeout=1800, reader=reader, meta=info["meta"], reads=args.reads,
                                   translations=n, cold=args.translations // 10 if reader == "kdshell" else 0,
                                   seq_chunk=0x10000) for _ in range(runs)]
            per[reader] = best_of(results_r)
        python_walk = None  # kdshell as installed without a C compiler: its Python walk alone
        if installed("kdshell"):
            python_walk = best_of([run_child("workload", timeout=1800, reader="kdshell-python", meta=info["meta"],
                                             reads=args.reads, translations=args.translations,
                                             cold=args.translations // 10, seq_chunk=0x10000)
                                   for _ in range(args.runs)])
        results[gib] = per
        if (gib, present) != sizes[-1]:
            continue
        label = f"{gib} GiB machine, type 5"
        t.add("reads", f"{args.reads // 1000}k random page reads", label, "us",
              {r: value(v, "page_us") for r, v in per.items()}, note="per page, copied out")
        t.add("reads", f"{args.translations // 1000}k virtual translations", label, "us",
              {r: value(v, "translate_us") for r, v in per.items()},
              note=f"per translation; kdshell warm (its cache, as commands use it); volatility3 "
                   f"{args.translations // 10000}k")
        cold = value(per["kdshell"], "translate_cold_us")
        t.add("reads", "  same, kdshell caches flushed each time", label, "us",
              {"kdshell": cold, "kdmp-parser": value(per["kdmp-parser"], "translate_us"),
               "volatility3": value(per["volatility3"], "translate_us")},
              note="a full 4-level walk per call in every reader")
        t.add("reads", "  same, kdshell first touch of each page", label, "us",
              {"kdshell": value(per["kdshell"], "translate_first_touch_us"),
               "kdmp-parser": value(per["kdmp-parser"], "translate_us"),
               "volatility3": value(per["volatility3"], "translate_us")},
              note="translations flushed, last-level tables kept (as commands meet a new page)")
        if python_walk is not None:
            peers = {"kdmp-parser": value(per["kdmp-parser"], "translate_us"),
                     "volatility3": value(per["volatility3"], "translate_us")}
            for what, key in (("warm", "translate_us"), ("caches flushed", "translate_cold_us"),
                              ("first touch", "translate_first_touch_us")):
                t.add("reads", f"  same, {what}: kdshell's Python walk", label, "us",
                      {"kdshell": value(python_walk, key), **peers},
                      note="the Python walk alone, as on an install without a C compiler")
        t.add("reads", "sequential virtual read", label, "MB/s",
              {r: value(v, "seq_mbs") for r, v in per.items()}, higher_better=True,
              note="64 MiB in 64 KiB reads; kdmp-parser page by page")
    return results


def best_of(results: list[dict]) -> dict:
    """Several runs of a child: the best time of each measure, the largest memory."""
    good = [r for r in results if "error" not in r and "missing" not in r]
    if not good:
        return results[0]
    out = dict(good[0])
    for key in out:
        values = [r[key] for r in good if isinstance(r.get(key), (int, float))]
        if not values:
            continue
        if key.endswith(("_us", "_s")):
            out[key] = min(values)
        elif key.endswith("mbs"):
            out[key] = max(values)
        elif key.endswith("_mb"):
            out[key] = max(values)
    return out


def section_memory(t: Table, args, results: dict, sizes) -> None:
    base = {r: run_child("baseline", reader=r) for r in ("kdshell", "kdmp-parser", "volatility3") if installed(r)}
    for gib, present in sizes:
        per = results.get(gib, {})
        label = f"{gib} GiB machine, {present * 4 // 1024} MiB present"
        t.add("memory", "peak RSS, whole workload", label, "MB", {r: value(v, "peak_mb") for r, v in per.items()},
              note="open + page reads + translations + sequential read, harness included; file-backed "
                   "pages (the mapped dump, page cache) count here")
        t.add("memory", "  reader's own anonymous memory", label, "MB",
              {r: value(v, "own_anon_mb") for r, v in per.items()},
              note="anonymous RSS at the end minus the harness's before the open")
    t.notes.append("Interpreter + imports alone (peak RSS): " + ", ".join(
        f"{r} {value(v, 'peak_mb'):.0f} MB" if isinstance(value(v, "peak_mb"), float) else f"{r} {value(v, 'peak_mb')}"
        for r, v in base.items()))


def section_pdb(t: Table, args) -> None:
    import pdb_index

    vol = installed("volatility3")
    pdbs = pdb_index.default_pdbs()
    if not any("fixtures" not in str(p) for p in pdbs):
        t.notes.append(f"No corpus PDB rows: none under {CORPUS_DUMPS.parent / 'symbols'} (set KDSHELL_CORPUS).")
    for path in pdbs:
        if "fixtures" in str(path) and path.name != "ntkrnlmp.pdb":
            continue  # the corpus PDBs and one fixture PDB
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            k = run_child("pdb_kdshell", path=str(path), lookups=args.lookups, answers_file=f.name)
            s = run_child("pdb_symbolic", path=str(path), answers_file=f.name) if "error" not in k else {}
        v = run_child("pdb_volatility3", path=str(path), timeout=900) if vol else {"missing": "not installed"}
        label = f"{path.name} ({path.stat().st_size // 1024} KB)"
        t.add("pdb", "PDB open + index", label, "s",
              {"kdshell": value(k, "open_index_s"), "symbolic": value(s, "open_index_s"),
               "volatility3": value(v, "open_index_s")},
              note=f"{k.get('symbols', '?')} symbols, {k.get('types', '?')} types; symbolic: symcache; "
                   f"volatility3: pdbconv to its JSON")
        t.add("pdb", f"{args.lookups // 1000}k address -> symbol", label, "us",
              {"kdshell": value(k, "lookup_us"), "symbolic": value(s, "lookup_us")},
              note=f"per lookup; same symbol start as symbolic on code: {s.get('agree', '-')}")


def section_commands(t: Table, args, machines) -> None:
    from kdshell.cli import bundled_sample

    sample, store = bundled_sample()
    r = run_child("command", path=sample, store=store, command="!analyze -v", repeat=5)
    t.add("commands", "!analyze -v end to end", "bundled sample", "s",
          {"kdshell": value(r, "first_s")}, note="open + command, imports excluded; target < 1 s")
    k = run_child("k64", repeat=args.repeat)
    t.add("commands", "k on 64 frames (warm)", "64-frame small dump", "ms",
          {"kdshell": k["k 64 (warm)"] * 1e3 if "error" not in k else value(k, "")}, note="bench/stack_cmd.py")
    if "error" not in k:
        t.add("commands", "k on 64 frames (cold: new session)", "64-frame small dump", "ms",
              {"kdshell": k["k 64 (cold: new session)"] * 1e3})
    d1 = machines.d1()
    for flag, what in (("/m", "small dump"), ("/f", "complete dump")):
        r = run_child("command", path=d1["kernel"], store="", command=f".dump {flag} {{out}}", repeat=2)
        t.add("commands", f".dump {flag} ({what})", "test machine d1 kernel dump", "s",
              {"kdshell": value(r, "first_s")}, note="open + write, imports excluded")


def _wall(cmd: list[str], n: int, env=None) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=env, check=False)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def prompt_time(args: list[str], n: int, env: dict) -> float | str:
    """Start to the interactive prompt in a pseudo-terminal: until `kd>` is on the screen. The
    terminal answers prompt_toolkit's cursor-position request, as a real one does."""
    import pty
    import select

    times = []
    for _ in range(n):
        pid, fd = pty.fork()
        if pid == 0:  # the child: kdshell at a terminal
            os.execve(sys.executable, [sys.executable, "-m", "kdshell", *args], {**env, "NO_COLOR": "1"})
        t = time.perf_counter()
        seen = b""
        try:
            while b"kd>" not in seen and time.perf_counter() - t < 20:
                ready, _, _ = select.select([fd], [], [], 0.5)
                if ready:
                    try:
                        chunk = os.read(fd, 65536)
                    except OSError:
                        break
                    if b"\x1b[6n" in chunk:
                        os.write(fd, b"\x1b[1;1R")
                    seen += chunk
            times.append(time.perf_counter() - t if b"kd>" in seen else float("nan"))
            os.write(fd, b"q\r")
            deadline = time.time() + 5
            while time.time() < deadline:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                try:
                    if select.select([fd], [], [], 0.1)[0]:
                        os.read(fd, 65536)
                except OSError:
                    pass
            else:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
        finally:
            os.close(fd)
    good = [x for x in times if x == x]
    return statistics.median(good) if good else "no prompt"


def import_time(env: dict) -> tuple[float, list[tuple[str, float]]]:
    """`python -X importtime -c "import kdshell.session"`: the cumulative time of
    kdshell.session and the largest self times."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", "import kdshell.session, kdshell.commands"],
                       capture_output=True, text=True, check=True, env=env)
    total, selfs = 0, []
    for line in p.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        parts = line[len("import time:"):].split("|")
        try:
            own, cum = int(parts[0]), int(parts[1])
        except ValueError:
            continue
        name = parts[2].strip()
        selfs.append((name, own / 1e6))
        if parts[2].startswith(" kdshell.") and not parts[2].startswith("  "):
            total += cum
    selfs.sort(key=lambda x: -x[1])
    return total / 1e6, selfs[:6]


def _env(bytecode: bool) -> dict:
    """The child's environment: with bytecode caches (as after `pip install`, which compiles them,
    or any run that may write __pycache__), or with none (PYTHONDONTWRITEBYTECODE set and the
    caches removed: every module compiled from source at each start)."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["KDSHELL_OFFLINE"] = "1"  # the default symbol path would time downloads from Microsoft's server
    if not bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="kdshell-nopyc-")  # an empty cache
    return env


def section_start(t: Table, args, machines) -> None:
    n = 3 if args.quick else 7
    cached, uncached = _env(True), _env(False)
    kd = [sys.executable, "-m", "kdshell"]
    _wall(kd + ["-c", "q"], 1, env=cached)  # writes the bytecode caches, as a first run does
    bare = _wall([sys.executable, "-c", "pass"], n)
    t.add("start", "start to prompt, -c q (pipe)", "bundled sample", "s", {"kdshell": _wall(kd + ["-c", "q"], n, cached)},
          note=f"python -m kdshell -c q, wall; bare interpreter {bare * 1e3:.0f} ms; target < 0.3 s")
    big = machines.large("kernel")["path"]
    t.add("start", "start to prompt, -c q (pipe)", f"{args.gib} GiB kernel dump", "s",
          {"kdshell": _wall(kd + ["-z", big, "-c", "q"], n, cached)}, note="python -m kdshell -z X -c q")
    t.add("start", "start to interactive prompt (pty)", "bundled sample", "s",
          {"kdshell": prompt_time([], n, cached)}, note="until 'kd> ' is on the terminal (prompt_toolkit loaded)")
    t.add("start", "start to interactive prompt (pty), empty bytecode cache", "bundled sample", "s",
          {"kdshell": prompt_time([], n, uncached)},
          note="every module, prompt_toolkit's too, compiled from source: the worst first start")
    code = ("import time; t = time.perf_counter(); import kdshell.session, kdshell.commands; "
            "print(time.perf_counter() - t)")
    real = statistics.median(float(subprocess.check_output([sys.executable, "-c", code], env=cached))
                             for _ in range(n))
    total, top = import_time(cached)
    t.add("start", "import kdshell.session + commands", "in a fresh interpreter", "s", {"kdshell": real},
          note=f"python -X importtime: {total * 1e3:.0f} ms; largest self times "
               + ", ".join(f"{name} {s * 1e3:.0f} ms" for name, s in top[:4]))


# ================================================================================================
# Inputs

class Machines:
    """The benchmark dumps, built once and cached in --dir."""

    def __init__(self, directory: Path, gib: int, present: int):
        self.dir = directory
        self.gib, self.present = gib, present
        self._d1 = None

    def large(self, kind: str, gib: int | None = None, present: int | None = None) -> dict:
        from machines import _name, bench_machine

        gib, present = gib or self.gib, present or self.present
        info = bench_machine(self.dir, kind, gib, present)
        info["meta"] = str(self.dir / f"{_name(kind, gib, present, 64)}.json")
        return info

    def d1(self) -> dict[str, str]:
        if self._d1 is None:
            from fixtures.machine.catalog import build_set

            index = build_set(self.dir / "machines", ["d1"])
            self._d1 = index["machines"]["d1"]["dumps"]
        return self._d1


def parse_count(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
    return int(text.rstrip("KM")) * mult


def describe_machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    versions = []
    for mod, name in (("kdmp_parser", "kdmp-parser"), ("volatility3", "volatility3"), ("symbolic", "symbolic")):
        try:
            from importlib.metadata import version

            versions.append(f"{name} {version(name)}")
        except Exception:
            versions.append(f"{name} not installed")
    return (f"{platform.node() or 'this machine'}: {cpu}, {os.cpu_count()} cores{mem}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}; " + ", ".join(versions))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--sections", default="open,reads,memory,pdb,commands,start")
    ap.add_argument("--dir", default="/tmp/kdshell-bench", help="where the benchmark dumps are built and kept")
    ap.add_argument("--gib", type=int, default=64, help="size of the large machine")
    ap.add_argument("--present", default="1M", help="pages present in its dumps")
    ap.add_argument("--small-gib", type=int, default=16, help="the smaller machine of the memory comparison")
    ap.add_argument("--reads", type=int, default=100_000)
    ap.add_argument("--translations", type=int, default=1_000_000)
    ap.add_argument("--lookups", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--runs", type=int, default=2, help="workload runs per reader (best of; volatility3 once)")
    ap.add_argument("--quick", action="store_true", help="smaller counts, no complete 64 GiB dump")
    ap.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        name, kwargs = args.child
        print(json.dumps(CHILDREN[name](**json.loads(kwargs))))
        return 0
    if args.quick:
        args.reads, args.translations, args.lookups, args.repeat, args.runs = 20_000, 100_000, 2_000, 10, 1
    present = parse_count(args.present)
    sizes = [(args.small_gib, present * args.small_gib // args.gib), (args.gib, present)]
    machines = Machines(Path(args.dir), args.gib, present)
    sections = args.sections.split(",")
    started = time.perf_counter()
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    print(f"kdshell benchmarks, {when}; {describe_machine()}")
    if not installed("volatility3"):
        print("volatility3 is not installed: its column is skipped. To get it: pip install volatility3 "
              "(a peer for comparison, not a kdshell dependency)")
    print("ratios: peer / kdshell for times and memory, kdshell / peer for MB/s (above 1: kdshell is better)\n")
    t = Table(short_machine(), {
        "open": "best of ≤5", "reads": f"best of {args.runs}", "memory": "1 per reader",
        "pdb": "best of 3", "commands": f"best of {args.repeat}", "start": f"best of {args.repeat}",
    })
    t.print_header()
    if "open" in sections:
        section_open(t, args, machines)
    results = {}
    if "reads" in sections or "memory" in sections:
        results = section_reads(t, args, machines, sizes)
    if "memory" in sections:
        section_memory(t, args, results, sizes)
    if "pdb" in sections:
        section_pdb(t, args)
    if "commands" in sections:
        section_commands(t, args, machines)
    if "start" in sections:
        section_start(t, args, machines)
    for note in t.notes:
        print(note)
    print(f"\n{len(t.rows)} rows in {time.perf_counter() - started:.0f} s")
    if args.markdown:
        Path(args.markdown).write_text(f"{when}; {describe_machine()}\n\n{t.markdown()}\n\n" +
                                       "\n".join(t.notes) + "\n")
        print(f"Markdown table written to {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
