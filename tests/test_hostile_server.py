"""Issue 24 items 1 and 5: a hostile symbol server. A local server (127.0.0.1) that drips one
byte every 0.2 s under a large Content-Length (or in 1-byte chunks) must not hold a download past
its wall-clock deadline; Ctrl-C during a download (KeyboardInterrupt raised from the response's
read) stops it with no .tmp file and no empty key folder; a redirect goes only to http/https on
the same host, never from https to http."""
from __future__ import annotations

import http.client
import io
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import kdshell
from kdshell.cli import main
from kdshell.session import BANNER_STOPPED, STOPPED
from kdshell.symbols.store import DownloadError, SymbolPath, SymbolStore, _redirects

NAME, KEY = "evil.pdb", "0123456789ABCDEF0123456789ABCDEF1"


class Hostile(BaseHTTPRequestHandler):
    mode = "drip"
    location = ""
    stop = threading.Event()
    hits: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).hits.append(self.path)
        try:
            if self.path.startswith("/moved/"):
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"PDB")
                return
            if self.mode == "redirect":
                self.send_response(302)
                self.send_header("Location", self.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.mode == "headers":  # the status line, then a header that never ends
                self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                for _ in range(300):
                    if self.stop.wait(0.2):
                        return
                    self.wfile.write(b"x")
                    self.wfile.flush()
                return
            self.send_response(200)
            chunked = self.mode == "chunked"
            self.send_header("Transfer-Encoding", "chunked") if chunked else self.send_header("Content-Length", "1000000")
            self.end_headers()
            for _ in range(300):
                if self.stop.wait(0.2):
                    return
                self.wfile.write(b"1\r\nx\r\n" if chunked else b"x")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def hostile():
    class H(Hostile):
        hits = []
        stop = threading.Event()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.handler = H
    yield httpd
    H.stop.set()
    httpd.shutdown()
    httpd.server_close()


def _store(cache, url, **kw):
    warnings: list[str] = []
    store = SymbolStore(f"srv*{cache}*{url}", warn=warnings.append, progress=None, **kw)
    return store, warnings


def _leftovers(cache) -> list[str]:
    """Whatever a download left in the cache: files and folders."""
    return [os.path.join(d, n) for d, dirs, files in os.walk(cache) for n in dirs + files]


@pytest.mark.parametrize("mode", ["drip", "chunked", "headers"])
def test_a_dripping_server_is_dropped_at_the_deadline(hostile, tmp_path, mode):
    hostile.handler.mode = mode
    cache = tmp_path / "cache"
    store, warnings = _store(cache, hostile.url, deadline=1.0)
    start = time.monotonic()
    assert store.find(NAME, KEY) is None
    assert time.monotonic() - start < 1.5
    assert len(warnings) == 1 and "took more than 1 s" in warnings[0], warnings
    assert _leftovers(cache) == []


def test_the_session_budget_bounds_every_download_after_it(hostile, tmp_path):
    cache = tmp_path / "cache"
    store, warnings = _store(cache, f"{hostile.url}/a*{hostile.url}/b", deadline=100.0)
    store.budget.left = 1.0
    start = time.monotonic()
    assert store.find(NAME, KEY) is None  # /a drips until the session's second is spent; /b is not asked
    assert time.monotonic() - start < 1.5
    assert store.budget.left <= 0 and all("/b/" not in hit for hit in hostile.handler.hits)
    assert "took more than 1 s" in warnings[0] and "no more downloads in this session" in warnings[1]
    assert store.find("other.pdb", KEY) is None and len(warnings) == 2  # said once


def _interrupt(monkeypatch):
    def read1(self, n=-1):
        raise KeyboardInterrupt

    monkeypatch.setattr(http.client.HTTPResponse, "read1", read1)


def test_ctrl_c_during_a_download_leaves_nothing_behind(hostile, tmp_path, monkeypatch):
    _interrupt(monkeypatch)
    cache = tmp_path / "cache"
    store, warnings = _store(cache, hostile.url)
    with pytest.raises(KeyboardInterrupt):
        store.find(NAME, KEY)
    assert _leftovers(cache) == [] and warnings == []
    assert store.dead_servers == set()  # the server did nothing wrong: asked again next time


def test_stale_temporary_files_are_cleaned_when_the_cache_is_first_used(tmp_path):
    cache = tmp_path / "cache"
    old = cache / NAME / KEY / f".{NAME}.x1.tmp"
    fresh = cache / "b.pdb" / KEY / ".b.pdb.x2.tmp"  # maybe another kdshell's download under way
    kept = cache / "c.pdb" / KEY / "c.pdb"
    for f in (old, fresh, kept):
        f.parent.mkdir(parents=True)
        f.write_bytes(b"")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    (cache / "d.pdb" / KEY).mkdir(parents=True)  # an empty key folder a kill left
    store, _ = _store(cache, "http://127.0.0.1:9", offline=True)
    store.find("z.pdb", KEY)
    assert sorted(os.path.relpath(p, cache) for p in _leftovers(cache)) == sorted(
        ["b.pdb", f"b.pdb/{KEY}", f"b.pdb/{KEY}/.b.pdb.x2.tmp", "c.pdb", f"c.pdb/{KEY}", f"c.pdb/{KEY}/c.pdb"])


def test_a_store_the_user_names_is_not_swept(tmp_path):
    """Only kdshell's caches are cleaned: an old .tmp in the user's own store stays."""
    own = tmp_path / "own"
    theirs = own / NAME / KEY / f".{NAME}.x1.tmp"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"")
    os.utime(theirs, (time.time() - 3600, time.time() - 3600))
    store, _ = _store(tmp_path / "cache", "http://127.0.0.1:9", offline=True)
    store.path = SymbolPath.parse(f"{own};srv*{tmp_path / 'cache'}*{own}")
    assert store.find("z.pdb", KEY) is None
    assert theirs.exists()


def test_ctrl_c_in_a_command_download_returns_to_the_prompt(hostile, tmp_path, monkeypatch, machines):
    _interrupt(monkeypatch)
    cache = tmp_path / "cache"
    s = kdshell.open(str(machines.path("d1", "small")), symbol_path=f"srv*{cache}*{hostile.url}", offline=False)
    s.progress = None
    text = s.capture("!analyze -v")
    assert text == STOPPED + "\n"  # one line
    assert "Traceback" not in text and _leftovers(cache) == []
    assert s.capture("? 1 + 1").strip().startswith("Evaluate expression: 2")


def test_ctrl_c_during_the_banners_analysis_skips_the_culprit_line(hostile, tmp_path, monkeypatch, machines, capsys):
    _interrupt(monkeypatch)
    monkeypatch.delenv("KDSHELL_OFFLINE")
    cache = tmp_path / "cache"
    monkeypatch.setattr("sys.stdin", open(os.devnull))
    status = main(["-z", str(machines.path("d1", "small")), "-y", f"srv*{cache}*{hostile.url}", "-c", "? 2; q"])
    out, err = capsys.readouterr()
    assert out.count(BANNER_STOPPED) == 1 and "Kernel base = " in out  # the lines without symbols stay
    assert "Probably caused by :" not in out and "Evaluate expression: 2" in out  # the commands still ran
    assert "Traceback" not in out + err and status == 0
    assert _leftovers(cache) == []


def test_ctrl_c_in_the_culprit_analysis_alone_skips_only_that_line(machines, monkeypatch):
    def analyze(session):
        raise KeyboardInterrupt

    monkeypatch.setattr("kdshell.analysis.analyze.analyze", analyze)
    s = kdshell.open(str(machines.path("d1", "small")))
    with s.out.capture() as shown:
        lines = s.banner()
    assert shown == [BANNER_STOPPED + "\n"]
    assert lines[-1].startswith("BugCheck D1, ") and not any("Probably caused by" in line for line in lines)


# -- redirects (item 5) ---------------------------------------------------------------------------
def test_a_redirect_on_the_same_host_is_followed(hostile, tmp_path):
    hostile.handler.mode = "redirect"
    hostile.handler.location = f"{hostile.url}/moved/{NAME}"
    store, warnings = _store(tmp_path / "cache", hostile.url)
    found = store.find(NAME, KEY)
    assert found is not None and open(found, "rb").read() == b"PDB" and warnings == []


def test_a_redirect_to_ftp_is_refused_without_connecting(hostile, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    hostile.handler.mode = "redirect"
    hostile.handler.location = f"ftp://127.0.0.1:{listener.getsockname()[1]}/{NAME}"
    store, warnings = _store(tmp_path / "cache", hostile.url)
    assert store.find(NAME, KEY) is None
    assert len(warnings) == 1 and "a redirect not http or https was refused (ftp://127.0.0.1:" in warnings[0]
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody came
    listener.close()
    assert _leftovers(tmp_path / "cache") == []


def test_a_redirect_to_another_host_is_refused(hostile, tmp_path):
    hostile.handler.mode = "redirect"
    hostile.handler.location = f"http://localhost:{hostile.server_address[1]}/moved/{NAME}"  # same server, other name
    store, warnings = _store(tmp_path / "cache", hostile.url)
    assert store.find(NAME, KEY) is None
    assert "a redirect to another host was refused" in warnings[0]
    assert not any(hit.startswith("/moved/") for hit in hostile.handler.hits)


@pytest.mark.parametrize("to,refused", [
    ("http://msdl.microsoft.com/download/symbols/x.pdb", "from https to http"),
    ("https://evil.example/x.pdb", "to another host"),
    ("https://msdl.microsoft.com.evil.example/x.pdb", "to another host"),
    ("file:///etc/passwd", "not http or https"),
    ("https://vsblobprodscussu5shard2.blob.core.windows.net/b-1/x.blob", None),  # Microsoft's own storage
    ("https://msdl.microsoft.com/other/x.pdb", None),
])
def test_redirect_rules(to, refused):
    import urllib.request

    url = "https://msdl.microsoft.com/download/symbols/x.pdb/KEY/x.pdb"
    handler = _redirects(url)
    request = urllib.request.Request(url)
    if refused is None:
        assert handler.redirect_request(request, io.BytesIO(), 302, "Found", http.client.HTTPMessage(), to).full_url == to
    else:
        with pytest.raises(DownloadError, match=refused):
            handler.redirect_request(request, io.BytesIO(), 302, "Found", http.client.HTTPMessage(), to)
