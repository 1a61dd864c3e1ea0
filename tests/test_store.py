"""The symbol path and stores: grammar, local store layouts (keys in any case, file.ptr,
index2.txt, cache*), downloads from a local HTTP server (127.0.0.1, http.server in a thread)
serving the corpus's symbol store, and the failures: a server that is down, slow, sends garbage or
too much; names from a dump that try to leave the cache."""
import functools
import io
import os
import shutil
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

import kdshell
from conftest import CORPUS_SYMBOLS, TRIAGE_19041
from kdshell.symbols.store import MICROSOFT_SERVER, SymbolPath, SymbolStore, safe_file_name, safe_key

AMDPPM_PDB_KEY = "1C19FDDB27BB3399D9B45973EFEAFCF31"
AMDPPM_SYS_KEY = "C9C030003b000"


class Handler(SimpleHTTPRequestHandler):
    mode = "serve"
    hits: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        type(self).hits.append(self.path)
        mode = type(self).mode
        if mode == "slow":
            time.sleep(1.5)
        if mode == "garbage":
            body = b"<html>not a pdb</html>" * 50
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if mode == "huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10 << 30))
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            return
        if mode == "error":
            self.send_error(503, "Service Unavailable")
            return
        try:
            super().do_GET()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (the slow server's test): no traceback in a later test's output


@pytest.fixture
def corpus_server():
    """An HTTP symbol server over the corpus store."""
    yield from _serve(CORPUS_SYMBOLS)


@pytest.fixture
def server(tmp_path_factory):
    """An HTTP symbol server over an empty store, for the failures: `server.handler.mode` says which."""
    yield from _serve(tmp_path_factory.mktemp("served"))


def _serve(directory):
    class H(Handler):
        hits = []

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(H, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.handler = H
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def down_url():
    """The URL of a port nobody listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def make_store(path, **kw):
    warnings, log, progress = [], [], io.StringIO()
    store = SymbolStore(path, warn=warnings.append, log=log.append, progress=progress, **kw)
    return store, warnings, log, progress


# -- grammar -------------------------------------------------------------------------------------
def test_symbol_path_grammar(monkeypatch, tmp_path):
    monkeypatch.setenv("KDSHELL_SYMBOL_CACHE", str(tmp_path / "default"))
    p = SymbolPath.parse(f"srv*;srv*https://x.example/sym;srv*/c*/store1*https://y.example;"
                         f"cache*/cc;cache*;{tmp_path};symsrv*symsrv.dll*/d*https://z.example;  ;srv*/plain")
    got = [(e.kind, e.path, e.cache, e.stores) for e in p.elements]
    default = str(tmp_path / "default")
    assert got == [
        ("srv", "", default, [MICROSOFT_SERVER]),
        ("srv", "", default, ["https://x.example/sym"]),
        ("srv", "", "/c", ["/store1", "https://y.example"]),
        ("cache", "/cc", None, []),
        ("cache", default, None, []),
        ("dir", str(tmp_path), None, []),
        ("srv", "", "/d", ["https://z.example"]),
        ("srv", "", None, ["/plain"]),
    ]


# -- local stores --------------------------------------------------------------------------------
def test_a_plain_directory_that_is_a_store(tmp_path):
    store, warnings, log, _ = make_store(str(CORPUS_SYMBOLS))
    found = store.find("amdppm.pdb", AMDPPM_PDB_KEY)
    assert found == str(CORPUS_SYMBOLS / "amdppm.pdb" / AMDPPM_PDB_KEY / "amdppm.pdb")
    # keys and names match in any case (the corpus spells the image key in lower case)
    assert store.find("AMDPPM.SYS", "c9c030003B000").endswith("amdppm.sys/c9c030003b000/amdppm.sys")
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY.replace("1C19", "2C19")) is None
    assert warnings == []


def test_identity_is_checked_not_first_found(tmp_path):
    (tmp_path / "symbols" / "pdb").mkdir(parents=True)
    shutil.copy(CORPUS_SYMBOLS / "user32.pdb" / "15F778B3671D4EFDBDCDE79905308B792" / "user32.pdb",
                tmp_path / "symbols" / "pdb" / "amdppm.pdb")  # the right name, the wrong file
    good = str(CORPUS_SYMBOLS / "amdppm.pdb" / AMDPPM_PDB_KEY / "amdppm.pdb")
    store, *_ = make_store(f"{tmp_path};{CORPUS_SYMBOLS}")
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY, verify=lambda p: os.path.getsize(p) == os.path.getsize(good)) == good


def test_file_ptr_and_two_tier_stores(tmp_path):
    real = CORPUS_SYMBOLS / "amdppm.pdb" / AMDPPM_PDB_KEY / "amdppm.pdb"
    ptr_store = tmp_path / "ptr"
    (ptr_store / "amdppm.pdb" / AMDPPM_PDB_KEY).mkdir(parents=True)
    (ptr_store / "amdppm.pdb" / AMDPPM_PDB_KEY / "file.ptr").write_text(f"PATH:{real}")
    store, *_ = make_store(f"srv*{ptr_store}")
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY) == str(real)
    (ptr_store / "amdppm.pdb" / AMDPPM_PDB_KEY / "file.ptr").write_text("MSG: the file is not available")
    store, _, log, _ = make_store(f"srv*{ptr_store}")
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY) is None
    assert any("the file is not available" in line for line in log)
    two = tmp_path / "two"
    (two / "am" / "amdppm.pdb" / AMDPPM_PDB_KEY).mkdir(parents=True)
    (two / "index2.txt").write_text("")
    shutil.copy(real, two / "am" / "amdppm.pdb" / AMDPPM_PDB_KEY / "amdppm.pdb")
    store, *_ = make_store(f"srv*{two}")
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY) == str(two / "am" / "amdppm.pdb" / AMDPPM_PDB_KEY / "amdppm.pdb")


def test_cache_element_copies_what_it_finds(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(CORPUS_SYMBOLS / "amdppm.pdb" / AMDPPM_PDB_KEY / "amdppm.pdb", flat / "amdppm.pdb")
    cache = tmp_path / "cache"
    store, *_ = make_store(f"cache*{cache};{flat}")
    found = store.find("amdppm.pdb", AMDPPM_PDB_KEY)
    assert found == str(cache / "amdppm.pdb" / AMDPPM_PDB_KEY / "amdppm.pdb")
    assert os.path.getsize(found) == os.path.getsize(flat / "amdppm.pdb")


# -- downloads -----------------------------------------------------------------------------------
def test_download_into_the_cache(corpus_server, tmp_path):
    server = corpus_server
    cache = tmp_path / "cache"
    store, warnings, log, progress = make_store(f"srv*{cache}*{server.url}")
    found = store.find("amdppm.pdb", AMDPPM_PDB_KEY)
    target = cache / "amdppm.pdb" / AMDPPM_PDB_KEY / "amdppm.pdb"
    assert found == str(target)
    assert target.read_bytes() == (CORPUS_SYMBOLS / "amdppm.pdb" / AMDPPM_PDB_KEY / "amdppm.pdb").read_bytes()
    assert server.handler.hits == [f"/amdppm.pdb/{AMDPPM_PDB_KEY}/amdppm.pdb"]
    size = target.stat().st_size
    assert progress.getvalue().endswith(f"\rDownloading amdppm.pdb: {size} of {size} bytes\n")
    assert not [n for n in os.listdir(target.parent) if n.endswith(".tmp")]
    # the second time it comes from the cache
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY) == str(target)
    assert len(server.handler.hits) == 1 and warnings == []
    # not on the server: a 404 is no failure
    assert store.find("nothere.pdb", AMDPPM_PDB_KEY) is None and warnings == []


def test_the_triage_dump_with_a_symbol_server(corpus_server, tmp_path):
    server = corpus_server
    cache = tmp_path / "cache"
    with kdshell.open(TRIAGE_19041, symbol_path=f"srv*{cache}*{server.url}", image_path="", offline=False) as s:
        s.progress = None
        assert s.capture("ln 0xfffff8048b58334c").splitlines()[0] == (
            "(fffff804`8b5832dc)   amdppm!WriteIoMemRawEx+0x70   |  (fffff804`8b583370)   amdppm!WriteIoMemRawHidden")
    assert (cache / "amdppm.sys" / "C9C030003b000" / "amdppm.sys").exists()  # asked as symsrv spells it
    assert (cache / "amdppm.pdb" / AMDPPM_PDB_KEY / "amdppm.pdb").exists()


def test_a_server_that_is_down_warns_once_and_is_skipped(down_url, tmp_path):
    store, warnings, _, _ = make_store(f"srv*{tmp_path}*{down_url}", timeout=2)
    start = time.monotonic()
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY) is None
    assert store.find("other.pdb", AMDPPM_PDB_KEY) is None
    assert time.monotonic() - start < 2
    assert len(warnings) == 1
    assert warnings[0].startswith(f"*** WARNING: symbol server {down_url} failed: ")
    assert warnings[0].endswith("It is not asked again in this session.")


def test_a_slow_server_times_out(server, tmp_path):
    server.handler.mode = "slow"
    store, warnings, _, _ = make_store(f"srv*{tmp_path}*{server.url}", timeout=0.3)
    start = time.monotonic()
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY) is None
    assert time.monotonic() - start < 1.5
    assert len(warnings) == 1 and "timed out" in warnings[0]


def test_garbage_from_a_server_is_not_kept(server, tmp_path):
    server.handler.mode = "garbage"
    store, warnings, _, _ = make_store(f"srv*{tmp_path}*{server.url}")
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY, verify=lambda p: open(p, "rb").read(4) == b"Micr") is None
    assert warnings == [f"*** WARNING: symbol server {server.url} failed: amdppm.pdb from the server is not the "
                        "file asked for (bad content). It is not asked again in this session."]
    assert [p for p in tmp_path.rglob("*")] == []  # no file, no empty NAME/KEY directory


def test_downloads_are_bounded_in_size(server, tmp_path):
    server.handler.mode = "huge"
    store, warnings, _, _ = make_store(f"srv*{tmp_path}*{server.url}", max_size=1 << 20)
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY) is None
    assert "more than the 1048576-byte limit" in warnings[0]
    assert not list(tmp_path.rglob("*.tmp"))


def test_server_errors_warn(server, tmp_path):
    server.handler.mode = "error"
    store, warnings, _, _ = make_store(f"srv*{tmp_path}*{server.url}")
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY) is None
    assert warnings == [f"*** WARNING: symbol server {server.url} failed: HTTP 503 Service Unavailable. "
                        "It is not asked again in this session."]


# -- names from the dump -------------------------------------------------------------------------
@pytest.mark.parametrize("name, safe", [
    ("amdppm.pdb", "amdppm.pdb"),
    ("d:\\os\\obj\\amd64fre\\amdppm.pdb", "amdppm.pdb"),  # a build path: its file name only
    ("../../../etc/passwd", "passwd"),  # any directory part is dropped
    ("/etc/shadow", "shadow"),
    ("..", None), (".", None), ("", None), ("dir\\..", None),
    ("C:evil.pdb", None),  # drive-relative
    ("C:", None),
    ("evil.pdb:stream", None),  # NTFS stream
    ("CON", None), ("nul.pdb", None), ("COM1.sys", None), ("lpt9", None), ("AUX .pdb", None),
    ("a\0b.pdb", None), ("what?.pdb", None), ("trailing.", None), ("x" * 300, None),
])
def test_safe_file_names(name, safe):
    assert safe_file_name(name) == safe


def test_unsafe_names_never_reach_the_disk_or_the_server(server, tmp_path):
    cache = tmp_path / "cache"
    store, warnings, log, _ = make_store(f"srv*{cache}*{server.url}")
    for name, key in [("..", AMDPPM_PDB_KEY), ("nul.pdb", AMDPPM_PDB_KEY), ("C:x.pdb", AMDPPM_PDB_KEY),
                      ("amdppm.pdb", "../../x"), ("amdppm.pdb", "AB/CD"), ("amdppm.pdb", "")]:
        assert store.find(name, key) is None
    assert server.handler.hits == []
    assert not cache.exists()
    assert safe_key("1C19FDDB27BB3399D9B45973EFEAFCF31") and safe_key("..") is None


# -- the default path, offline ---------------------------------------------------------------------
def test_the_default_cache_and_path(monkeypatch, tmp_path):
    from kdshell.symbols import store

    monkeypatch.delenv("KDSHELL_SYMBOL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.default_cache() == str(tmp_path / "xdg" / "kdshell" / "symbols")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store.default_cache() == str(tmp_path / "home" / ".cache" / "kdshell" / "symbols")
    assert store.default_symbol_path() == f"srv*{store.default_cache()}*{MICROSOFT_SERVER}"
    assert store.default_symbol_path(offline=True) == store.default_cache()
    monkeypatch.setenv("KDSHELL_SYMBOL_CACHE", str(tmp_path / "mine"))
    assert store.default_symbol_path() == f"srv*{tmp_path / 'mine'}*{MICROSOFT_SERVER}"
    for value, offline in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv("KDSHELL_OFFLINE", value)
        assert store.offline_requested() is offline


def test_offline_asks_no_server_but_reads_the_cache(corpus_server, tmp_path):
    cache = tmp_path / "cache"
    store, warnings, _, _ = make_store(f"srv*{cache}*{corpus_server.url}", offline=True)
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY) is None
    assert corpus_server.handler.hits == [] and warnings == []
    online, *_ = make_store(f"srv*{cache}*{corpus_server.url}")
    assert online.find("amdppm.pdb", AMDPPM_PDB_KEY) is not None  # now in the cache
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY) == str(cache / "amdppm.pdb" / AMDPPM_PDB_KEY / "amdppm.pdb")
    assert len(corpus_server.handler.hits) == 1


def test_a_dns_lookup_that_hangs_is_cut_short(monkeypatch, tmp_path):
    """Off the network with a DNS server configured, a name lookup can wait far longer than the
    socket timeout (which does not cover DNS): it is given the timeout, then the server is dropped."""
    import socket

    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: time.sleep(5))
    store, warnings, _, _ = make_store(f"srv*{tmp_path}*https://symbols.invalid/x", timeout=0.3)
    start = time.monotonic()
    assert store.find("amdppm.pdb", AMDPPM_PDB_KEY) is None
    assert store.find("other.pdb", AMDPPM_PDB_KEY) is None  # not asked again
    assert time.monotonic() - start < 1.5
    assert warnings == ["*** WARNING: symbol server https://symbols.invalid/x failed: no answer from DNS for "
                        "symbols.invalid within 0.3 s. It is not asked again in this session."]


def test_the_command_line_downloads_by_default(corpus_server, monkeypatch, tmp_path, capsys):
    """No -y, no _NT_SYMBOL_PATH, not offline: the command line uses srv*<user cache>*<Microsoft's
    server> (here the test's server on 127.0.0.1 stands in for Microsoft's), and says so."""
    from kdshell import cli
    from kdshell.symbols import store

    monkeypatch.delenv("KDSHELL_OFFLINE")
    monkeypatch.setattr(store, "MICROSOFT_SERVER", corpus_server.url)
    cache = tmp_path / "symbol-cache"
    assert cli.main(["-z", str(TRIAGE_19041), "-c", "ln 0xfffff8048b58334c; q"]) == 0
    out = capsys.readouterr().out
    assert (f"\nSymbol search path is: srv*{cache}*{corpus_server.url} (the default; -y PATH or --offline to change)\n"
            in out)
    assert "amdppm!WriteIoMemRawEx+0x70" in out
    assert (cache / "amdppm.pdb" / AMDPPM_PDB_KEY / "amdppm.pdb").exists()
    # and the Python API keeps to what it is given: no path, no download
    with kdshell.open(TRIAGE_19041, offline=False) as s:
        assert s.symbol_path == "" and "amdppm+0x334c" in s.capture("ln 0xfffff8048b58334c")
