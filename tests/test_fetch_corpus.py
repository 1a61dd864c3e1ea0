"""tests/fetch_corpus.py against a local HTTP server (127.0.0.1, no real network): files land
whole and checked, or not at all; what is there already is not fetched again; one line per file."""
import functools
import hashlib
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import CORPUS, FULL_TRUNCATED, MINI_17763, REPO, TRIAGE_19041
from tests.fetch_corpus import MANIFEST, CorpusFile, check, corpus_dir, fetch, main

FILES = {"dumps/a.dmp": os.urandom(300_000), "symbols/b.pdb/KEY/b.pdb": os.urandom(5000)}
MANIFEST_HERE = [CorpusFile(dest, "owner/repo", "0123abcd", "in/repo/" + Path(dest).name,
                            hashlib.sha256(data).hexdigest()) for dest, data in FILES.items()]
URL_PATH = {e.dest: f"/{e.repo}/{e.commit}/{e.path}" for e in MANIFEST_HERE}


class Mirror(BaseHTTPRequestHandler):
    """Serves FILES at their manifest URLs: 404 for anything else, other bytes for the names in
    `wrong`, half the file and then a closed connection for those in `dropped`."""

    def __init__(self, *args, wrong, dropped, hits, **kw):
        self.wrong, self.dropped, self.hits = wrong, dropped, hits
        super().__init__(*args, **kw)

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.hits.append(self.path)
        dest = next((d for d, p in URL_PATH.items() if p == self.path), None)
        if dest is None:
            self.send_error(404, "Not Found")
            return
        data = FILES[dest] if dest not in self.wrong else b"not the file" + FILES[dest][12:]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if dest in self.dropped:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)


@pytest.fixture
def mirror(monkeypatch):
    """Start it with mirror(wrong=..., dropped=...): (base URL, the paths asked for)."""
    monkeypatch.setenv("no_proxy", "*")
    servers = []

    def start(wrong=(), dropped=()):
        hits = []
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Mirror, wrong=set(wrong),
                                                                         dropped=set(dropped), hits=hits))
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}", hits

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def run(directory, base, manifest=MANIFEST_HERE):
    lines = []
    failed = fetch(directory, manifest, base, timeout=10, out=lines.append)
    return failed, lines


def files_in(directory) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def test_fetches_checks_and_then_keeps_what_is_there(mirror, tmp_path):
    base, hits = mirror()
    failed, lines = run(tmp_path, base)
    assert failed == 0
    assert files_in(tmp_path) == sorted(FILES)
    for dest, data in FILES.items():
        assert (tmp_path / dest).read_bytes() == data
    assert lines == [f"{d}: fetched ({len(FILES[d])} bytes from {base}{URL_PATH[d]})" for d in FILES]
    assert check(tmp_path, MANIFEST_HERE, out=lines.append) == 0
    # the second time nothing is downloaded
    del hits[:]
    assert run(tmp_path, base) == (0, [f"{d}: present" for d in FILES])
    assert hits == []


def test_a_file_with_the_wrong_sha256_is_fetched_again(mirror, tmp_path):
    base, hits = mirror()
    damaged = tmp_path / "dumps" / "a.dmp"
    damaged.parent.mkdir()
    damaged.write_bytes(b"half a download")
    lines = []
    assert check(tmp_path, MANIFEST_HERE, out=lines.append) == 2
    assert lines[0].startswith("dumps/a.dmp: sha256 ") and lines[1] == "symbols/b.pdb/KEY/b.pdb: missing"
    assert run(tmp_path, base)[0] == 0
    assert damaged.read_bytes() == FILES["dumps/a.dmp"]


def test_wrong_bytes_are_not_kept(mirror, tmp_path):
    base, _ = mirror(wrong={"dumps/a.dmp"})
    failed, lines = run(tmp_path, base)
    assert failed == 1
    want = hashlib.sha256(FILES["dumps/a.dmp"]).hexdigest()
    assert lines[0].startswith("dumps/a.dmp: FAILED: sha256 ") and f" is not {want} (" in lines[0]
    assert lines[0].endswith(f"({base}{URL_PATH['dumps/a.dmp']})") and "\n" not in lines[0]
    assert files_in(tmp_path) == ["symbols/b.pdb/KEY/b.pdb"]  # the other file came; no temporary file is left


def test_a_dropped_connection_leaves_no_partial_file(mirror, tmp_path):
    base, _ = mirror(dropped={"dumps/a.dmp"})
    failed, lines = run(tmp_path, base)
    assert failed == 1 and lines[0].startswith("dumps/a.dmp: FAILED: ")
    assert files_in(tmp_path) == ["symbols/b.pdb/KEY/b.pdb"]


def test_the_command_line_with_the_real_manifest(mirror, tmp_path):
    """`python -m tests.fetch_corpus DIR` from the checkout: against a server that has none of the
    files, one line each, exit status 1, and nothing written."""
    base, hits = mirror()
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
    p = subprocess.run([sys.executable, "-m", "tests.fetch_corpus", str(tmp_path / "corpus"), "--base-url", base],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert p.stdout.splitlines() == [f"{e.dest}: FAILED: HTTP 404 Not Found ({e.url(base)})" for e in MANIFEST] + [
        f"{len(MANIFEST)} of {len(MANIFEST)} files could not be fetched; run again to retry them"]
    assert sorted(hits) == sorted(e.url("") for e in MANIFEST)
    assert files_in(tmp_path) == []
    assert main(["--check", str(tmp_path / "corpus")]) == 1


def test_the_setting_names_the_corpus(monkeypatch, tmp_path):
    monkeypatch.setenv("KDSHELL_CORPUS", str(tmp_path))
    assert corpus_dir() == tmp_path
    monkeypatch.delenv("KDSHELL_CORPUS")
    assert corpus_dir() == REPO.parent / "shared" / "corpus"


def test_the_manifest_is_the_corpus():
    """Every file the tests use is in the manifest, with the sha256 of the file the tests read."""
    listed = {e.dest for e in MANIFEST}
    assert {str(p.relative_to(CORPUS)) for p in (TRIAGE_19041, MINI_17763, FULL_TRUNCATED)} <= listed
    assert check(CORPUS) == 0
    assert {str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file() and p.name != "README.md"} == listed
