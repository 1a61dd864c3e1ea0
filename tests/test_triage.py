"""`kdshell triage`: a folder of every test machine's small dump, a kernel dump, the corpus dumps
(when present), a truncated file, a non-dump and an empty file, through the serial path, the
process pool and a Dask LocalCluster; the cache; the per-file limits; the command line.

Expected values come from the machines' truth JSON (bug check, culprit image, build, processors)
and from the dump header decoded here (the crash time), never from kdshell's earlier output."""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import corpus_dumps_if_present
from fixtures.machine.catalog import PLAN
from kdshell import triage
from kdshell.triage.cli import progress_text

SCENARIOS = tuple(name for name, kinds in PLAN.items() if "small" in kinds)  # every machine's small dump
BAD = {"truncated.dmp": "file ends inside", "empty.dmp": "too small to be a dump",
       "notes.dmp": "not a Windows kernel dump"}


@pytest.fixture(scope="module")
def folder(machines, tmp_path_factory):
    """The mixed folder (a sub-folder too, for the recursion) and {file name: scenario}."""
    root = tmp_path_factory.mktemp("crashes")
    (root / "sub").mkdir()
    names = {}
    for name in SCENARIOS:
        shutil.copy(machines.path(name, "small"), root / f"{name}-small.dmp")
        names[f"{name}-small.dmp"] = name
    shutil.copy(machines.path("d1", "kernel"), root / "sub" / "d1-kernel.dmp")
    names["d1-kernel.dmp"] = "d1"
    for dump in corpus_dumps_if_present():
        shutil.copy(dump, root / "sub" / dump.name)
    small = Path(machines.path("d1", "small")).read_bytes()
    (root / "truncated.dmp").write_bytes(small[:8192])
    (root / "empty.dmp").write_bytes(b"")
    (root / "notes.dmp").write_bytes(b"not a dump, a text file someone left here\n" * 200)
    (root / "readme.txt").write_text("a folder's other files are not dumps")
    return root, names


def _crash_time(path: Path) -> str:
    """DUMP_HEADER64/32's SystemTime (a FILETIME at 0xFA8 / 0xFC0), decoded here."""
    data = path.read_bytes()[:0x1000]
    filetime = struct.unpack_from("<Q", data, 0xFA8 if data[4:8] == b"DU64" else 0xFC0)[0]
    when = datetime.datetime(1601, 1, 1) + datetime.timedelta(microseconds=filetime // 10)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _stable(records):
    """The records less what differs from run to run (timings, whether the cache answered)."""
    out = []
    for r in records:
        r = json.loads(json.dumps(r))
        r.pop("analysis_ms", None)
        t = r.get("triage", {})
        t.pop("elapsed_ms", None)
        t.pop("cpu_ms", None)
        t.pop("cached", None)
        if "analyze_v" in t:  # less the value under "Key  : Analysis.Elapsed.mSec"
            lines = t["analyze_v"].splitlines()
            t["analyze_v"] = [x for i, x in enumerate(lines) if not (i and "Analysis.Elapsed.mSec" in lines[i - 1])]
        out.append(r)
    return out


def _check_rows(records, root, names, machines):
    by_name = {os.path.basename(r["dump"]["file"]): r for r in records}
    expected = set(names) | set(BAD) | {d.name for d in corpus_dumps_if_present()}
    assert set(by_name) == expected  # readme.txt is not a dump file; sub/ was searched
    for file, scenario in names.items():
        r = by_name[file]
        truth = machines.truth(scenario)
        assert "error" not in r, r.get("error")
        assert r["schema"] == 3
        # the crashing processor: the one whose context is the bug check's
        assert [r["processor"]["number"]] == [p["number"] for p in truth["processors"]
                                              if p["context"] == truth["bugcheck_context"]]
        assert int(r["bugcheck"]["code"], 16) == truth["bugcheck"]["code"]
        mask = (1 << (64 if truth["arch"] == "x64" else 32)) - 1
        assert [int(p["value"], 16) for p in r["bugcheck"]["parameters"]] == \
            [p & mask for p in truth["bugcheck"]["parameters"]]
        if truth["culprit"]:
            assert r["image_name"] == truth["culprit"] == triage.row(r)["module"]
        assert r["dump"]["build"] == truth["build"]
        assert r["dump"]["processors"] == len(truth["processors"])
        assert r["dump"]["crash_time"] == _crash_time(Path(r["triage"]["path"]))
        assert r["triage"]["sha256"] and "FAILURE_BUCKET_ID:  " + r["failure_bucket_id"] in r["triage"]["analyze_v"]
    for file, words in BAD.items():
        r = by_name[file]
        assert words in r["error"] and r["error"].count(file) == 1, r["error"]
        assert triage.row(r)["error"] == r["error"]


@pytest.fixture(scope="module")
def serial(folder):
    root, _ = folder
    return triage.run([str(root)], triage.Options(jobs=1, cache=""))


def test_serial_rows_and_errors(folder, serial, machines):
    root, names = folder
    _check_rows(serial, root, names, machines)
    summary = triage.summarize(serial)
    assert summary["failed"] == len(BAD) and summary["total"] == len(serial)
    mydrv = next(g for g in summary["by_module"] if g["name"] == "mydrv.sys")
    # Every dump whose truth blames mydrv.sys is in its group, and no dump whose truth blames another.
    blamed = {f for f, s in names.items() if machines.truth(s)["culprit"] == "mydrv.sys"}
    others = {f for f, s in names.items() if machines.truth(s)["culprit"] not in (None, "mydrv.sys")}
    assert blamed <= set(mydrv["files"]) and not others & set(mydrv["files"])
    assert mydrv["count"] == len(mydrv["files"]) >= len(blamed) >= 6
    assert mydrv["first"] == mydrv["last"] == _crash_time(root / "d1-small.dmp")


def test_process_pool_gives_the_same_records(folder, serial):
    root, _ = folder
    pooled = triage.run([str(root)], triage.Options(jobs=2, cache=""))
    assert _stable(pooled) == _stable(serial)


def test_dask_local_cluster_gives_the_same_records(folder, serial):
    pytest.importorskip("distributed")
    root, _ = folder
    clustered = triage.run([str(root)], triage.Options(cluster="local:2", cache=""))
    assert _stable(clustered) == _stable(serial)


def test_the_cache_answers_a_rerun_and_sees_a_changed_file(machines, tmp_path):
    root = tmp_path / "crashes"
    root.mkdir()
    for name in ("d1", "3b"):
        shutil.copy(machines.path(name, "small"), root / f"{name}.dmp")
    db = str(tmp_path / "cache.sqlite")
    first = triage.run([str(root)], triage.Options(jobs=1, cache=db))
    assert [r["triage"]["cached"] for r in first] == [False, False]
    again = triage.run([str(root)], triage.Options(jobs=1, cache=db))
    assert [r["triage"]["cached"] for r in again] == [True, True]
    assert _stable(again) == _stable(first)
    # d1.dmp now holds 7e's crash: its content changed, so it is analysed again.
    shutil.copy(machines.path("7e", "small"), root / "d1.dmp")
    third = triage.run([str(root)], triage.Options(jobs=1, cache=db))
    assert [r["triage"]["cached"] for r in third] == [True, False]
    assert int(third[1]["bugcheck"]["code"], 16) == machines.truth("7e")["bugcheck"]["code"]
    assert third[1]["dump"]["file"] == str(root / "d1.dmp")


def test_a_hanging_or_growing_file_is_stopped_and_the_batch_goes_on(machines, tmp_path, monkeypatch):
    root = tmp_path / "crashes"
    root.mkdir()
    for name in ("d1", "3b", "50"):
        shutil.copy(machines.path(name, "small"), root / f"{name}.dmp")
    # Each limit alone in its case, so that a busy machine cannot make the other one trip first.
    for hook, seconds, mib, words in (("hang:3b.dmp", 3, 4096, "stopped: over the time limit (3 s)"),
                                      ("grow:3b.dmp", 120, 400, "stopped: over the memory cap (400 MiB)")):
        monkeypatch.setenv("KDSHELL_TRIAGE_TEST", hook)
        records = triage.run([str(root)], triage.Options(jobs=2, cache="", time_limit=seconds, memory_mb=mib))
        assert [os.path.basename(r["dump"]["file"]) for r in records] == ["3b.dmp", "50.dmp", "d1.dmp"]
        assert records[0]["error"] == words, [r.get("error") for r in records]
        assert int(records[1]["bugcheck"]["code"], 16) == machines.truth("50")["bugcheck"]["code"]
        assert int(records[2]["bugcheck"]["code"], 16) == machines.truth("d1")["bugcheck"]["code"]


def test_paths_globs_and_a_missing_path(folder):
    root, _ = folder
    files = triage.expand([str(root / "**" / "d1-*.dmp"), str(root / "d1-small.dmp")])
    assert sorted(os.path.basename(f) for f in files) == ["d1-kernel.dmp", "d1-small.dmp", "d1-x86-small.dmp"]
    with pytest.raises(triage.TriageError, match="no-such-folder: no such file or folder"):
        triage.run([str(root / "no-such-folder")], triage.Options(cache=""))


def test_the_command_line(folder, tmp_path):
    root, names = folder
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"))
    env.pop("KDSHELL_SYMBOL_CACHE", None)
    p = subprocess.run([sys.executable, "-m", "kdshell", "triage", str(root), "--json", "-j", "1"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0 and p.stderr == ""  # no progress bar when piped
    records = [json.loads(line) for line in p.stdout.splitlines()]
    assert {os.path.basename(r["dump"]["file"]) for r in records} >= set(names) | set(BAD)
    assert (tmp_path / "xdg" / "kdshell" / "triage.sqlite").is_file()  # the cache, beside the symbol cache
    p = subprocess.run([sys.executable, "-m", "kdshell.triage", str(root / "d1-small.dmp"), str(root / "empty.dmp"),
                        "--csv"], capture_output=True, text=True, timeout=120, env=env)
    lines = p.stdout.splitlines()
    assert lines[0].startswith("file,crash_time,computer,os_build,bugcheck,code,p1,p2,p3,p4,module,symbol")
    assert ",DRIVER_IRQL_NOT_LESS_OR_EQUAL,0xd1," in lines[1] and ",mydrv.sys," in lines[1]
    assert lines[2].startswith(str(root / "empty.dmp")) and "empty.dmp: file is too small to be a dump" in lines[2]
    p = subprocess.run([sys.executable, "-m", "kdshell", "triage", str(root / "d1-small.dmp"), "--no-cache"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert "1 dumps, 1 analysed, 0 failed" in p.stdout and "By culprit module:" in p.stdout
    table = p.stdout.splitlines()
    assert table[0].split()[:3] == ["File", "Crash", "time"] and table[2].startswith("d1-small.dmp  ")
    p = subprocess.run([sys.executable, "-m", "kdshell", "triage", str(root / "missing.dmp")],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2 and p.stderr == f"kdshell triage: {root / 'missing.dmp'}: no such file or folder\n"


def test_two_dumps_after_z_point_to_triage(tmp_path):
    a, b = tmp_path / "A.dmp", tmp_path / "B.dmp"
    p = subprocess.run([sys.executable, "-m", "kdshell", "-z", str(a), str(b)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2
    assert p.stderr == f"kdshell: one dump at a time ({b} not opened): for many dumps use kdshell triage {a} {b}\n"


def test_the_progress_text():
    assert progress_text(0, 300, 0, 0.0) == "triage [>                       ] 0/300  0.0/s  ETA --:--"
    # 150 of 300 done, 100 of them analysed in 2 s (50 came from the cache): 50/s, 3 s left.
    assert progress_text(150, 300, 100, 2.0) == "triage [============>           ] 150/300  50.0/s  ETA 0:03"
    assert progress_text(300, 300, 300, 3.0).startswith("triage [========================] 300/300  100.0/s")


# -- the HTML page in a real headless browser --------------------------------------------------------------
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1000"]


def _browser():
    """(chromium, chromedriver) paths, or a skip saying what is missing (.ci/run installs both)."""
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if chrome is None or driver is None:
        pytest.skip("no headless browser: apt-get install chromium chromium-driver (as .ci/run does)")
    pytest.importorskip("selenium", reason="selenium is in the test extras: pip install -e '.[test]'")
    return chrome, driver


def _png_pixels(data: bytes):
    """(width, height, rows of RGB tuples) of an 8-bit RGB/RGBA PNG (what Chromium writes), decoded here."""
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(width)])
        prev = line
    return width, height, rows


def test_the_html_page_sorts_expands_and_draws(serial, tmp_path):
    chrome, driver_path = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from kdshell.triage.html import write_html

    page = tmp_path / "triage.html"
    write_html(str(page), serial)
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html  # nothing to fetch
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in CHROME_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        browser.get(page.as_uri())
        rows = browser.find_elements(By.CSS_SELECTOR, "#body tr.row")
        assert len(rows) == len(serial)
        headings = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#head th")]
        code_column = headings.index("Code")

        def codes():
            return [tr.find_elements(By.TAG_NAME, "td")[code_column].text
                    for tr in browser.find_elements(By.CSS_SELECTOR, "#body tr.row")]

        want = sorted((r["bugcheck"]["code"] for r in serial if "error" not in r), key=lambda c: int(c, 16))
        browser.find_elements(By.CSS_SELECTOR, "#head th")[code_column].click()
        assert [c for c in codes() if c] == want                       # numbers, not text: 0x3b before 0xd1
        browser.find_elements(By.CSS_SELECTOR, "#head th")[code_column].click()
        assert [c for c in codes() if c] == want[::-1]
        # A row opens onto its !analyze -v text, and closes again.
        first = browser.find_element(By.CSS_SELECTOR, "#body tr.row")
        index = int(first.get_attribute("data-index"))
        first.click()
        detail = browser.find_element(By.CSS_SELECTOR, "#body tr.detail pre")
        record = serial[index]
        assert ("FAILURE_BUCKET_ID:  " + record["failure_bucket_id"]) in detail.text if "error" not in record \
            else record["error"] in detail.text
        first.click()
        assert not browser.find_elements(By.CSS_SELECTOR, "#body tr.detail")
        # The summary: each bucket with its count, as summarize() groups the records.
        buckets = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
                   for tr in browser.find_elements(By.CSS_SELECTOR, "#by-bucket tr")][1:]
        assert [(int(b[0]), b[1]) for b in buckets] == [(g["count"], g["name"])
                                                         for g in triage.summarize(serial)["by_bucket"]]
        # The charts: each has drawn bars in the palette's colours, not a blank box.
        assert len(browser.find_elements(By.CSS_SELECTOR, "#modules rect.bar")) == \
            len(triage.summarize(serial)["by_module"])
        for chart in ("timeline", "modules"):
            width, height, pixels = _png_pixels(browser.find_element(By.ID, chart).screenshot_as_png)
            inked = sum(1 for line in pixels for p in line if max(p) - min(p) > 60)  # coloured, not grey or white
            assert inked > width * height // 50, f"{chart}: {inked} coloured pixels of {width}x{height}"
            blue = sum(1 for line in pixels for p in line if abs(p[0] - 0x3B) < 12 and abs(p[1] - 0x6F) < 12
                       and abs(p[2] - 0xD8) < 12)
            assert blue > 100, f"{chart}: the first bucket's/module's colour is missing"
    finally:
        browser.quit()


def test_workers_share_the_symbol_cache_one_download_per_file(monkeypatch, tmp_path):
    """Three copies of the corpus triage dump in two worker processes, symbols from a server on
    127.0.0.1: each file the server has is downloaded once, and every row is symbolized."""
    from conftest import CORPUS_SYMBOLS, TRIAGE_19041
    from test_store import AMDPPM_PDB_KEY, _serve

    served = _serve(CORPUS_SYMBOLS)
    server = next(served)
    try:
        monkeypatch.delenv("KDSHELL_OFFLINE")
        for i in range(3):
            shutil.copy(TRIAGE_19041, tmp_path / f"crash{i}.dmp")
        cache = tmp_path / "symbols"
        records = triage.run([str(tmp_path)], triage.Options(jobs=2, cache="", offline=False,
                                                             symbol_path=f"srv*{cache}*{server.url}"))
        assert [r["symbol_name"] for r in records] == ["amdppm!WriteIoMemRawEx+70"] * 3
        hits = server.handler.hits
        assert hits.count(f"/amdppm.pdb/{AMDPPM_PDB_KEY}/amdppm.pdb") == 1
        assert (cache / "amdppm.pdb" / AMDPPM_PDB_KEY / "amdppm.pdb").is_file()
    finally:
        next(served, None)


def test_urls_through_fsspec(machines, tmp_path):
    """A worker that shares no file system reads URLs (here file://, as s3:// or gcs:// would be)."""
    pytest.importorskip("fsspec")
    shutil.copy(machines.path("d1", "small"), tmp_path / "d1.dmp")
    shutil.copy(machines.path("3b", "small"), tmp_path / "3b.dmp")
    url = (tmp_path / "*.dmp").as_uri().replace("%2A", "*")
    records = triage.run([url], triage.Options(jobs=1, cache=""))
    assert [r["dump"]["file"] for r in records] == [(tmp_path / n).as_uri() for n in ("3b.dmp", "d1.dmp")]
    assert [int(r["bugcheck"]["code"], 16) for r in records] == \
        [machines.truth(n)["bugcheck"]["code"] for n in ("3b", "d1")]
    assert records[1]["triage"]["sha256"] == hashlib.sha256((tmp_path / "d1.dmp").read_bytes()).hexdigest()
    assert not list(Path(tempfile.gettempdir()).glob("kdshell-triage-*"))  # the copies are gone


def test_a_cache_that_is_not_a_database_is_one_line(machines, tmp_path):
    bad = tmp_path / "cache.sqlite"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(triage.TriageError, match=f"cannot use the cache {bad}: file is not a database"):
        triage.run([str(machines.path("d1", "small"))], triage.Options(cache=str(bad)))


def test_the_progress_bar_shows_on_a_terminal(machines, tmp_path):
    import pty

    for name in ("d1", "3b"):
        shutil.copy(machines.path(name, "small"), tmp_path / f"{name}.dmp")
    leader, follower = pty.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "kdshell", "triage", str(tmp_path), "-j", "1", "--no-cache"],
                           stdout=subprocess.PIPE, stderr=follower, text=True, timeout=120)
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert p.returncode == 0 and "2 dumps, 2 analysed, 0 failed" in p.stdout
    text = shown.decode()
    assert "triage [========================] 2/2  " in text and "/s  ETA 0:00" in text
    assert text.endswith("\r" + " " * 72 + "\r")  # and it is wiped before the table


def test_a_cluster_that_cannot_be_had_is_one_line(machines):
    pytest.importorskip("distributed")
    dump = str(machines.path("d1", "small"))
    with pytest.raises(triage.TriageError, match="local:N needs a number of workers"):
        triage.run([dump], triage.Options(cluster="local:many", cache=""))
    import dask

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
            pytest.raises(triage.TriageError, match="cannot reach the Dask scheduler"):
        triage.run([dump], triage.Options(cluster="tcp://127.0.0.1:1", cache=""))
