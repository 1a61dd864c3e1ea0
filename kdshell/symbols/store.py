"""The symbol path and symbol stores: where PDBs and image files are found, and how they are
downloaded (windbg.md §12).

    path = SymbolPath.parse(r"srv*/tmp/sym*https://msdl.microsoft.com/download/symbols;/my/pdbs")
    store = SymbolStore(path, log=print)
    store.find("ntkrnlmp.pdb", "3844DBB920174967BE7AA4A2C20430FA2", verify=lambda p: ...)

Elements of a path (separated by ';'):
    DIR                      a directory: a store layout DIR/NAME/KEY/NAME, or the file in
                             DIR/symbols/EXT, DIR/EXT, DIR (checked by identity, never "first found")
    srv*                     the default cache and Microsoft's server
    srv*URL | srv*STORE      a server or a local store (a URL downloads into the default cache)
    srv*CACHE*STORE[*...]    downloads (or copies) go into CACHE; stores are tried in order
    symsrv*symsrv.dll*...    the explicit form of srv*
    cache*[DIR]              files found by the elements to its right are copied into DIR
Store layout: NAME/KEY/NAME (keys case-insensitive), NAME/KEY/file.ptr ("PATH:..." points to the
file), a two-tier NA/NAME/KEY/NAME when the store has index2.txt.

Names come from the dump (RSDS PDB names, module names): they are untrusted. `safe_file_name`
keeps a bare file name or nothing (no '..', no separators, no drive letters, no device names),
keys are hex digits, and every path written is checked to stay inside its cache directory.
Downloads are bounded in size and in wall-clock time (per file, and per session across every
store), never retried, and a server that fails once is warned about once and skipped for the rest
of the session. Redirects go to http/https only, never from https to http, and only to the
server's own host (or the hosts REDIRECT_HOSTS names for it). Ctrl-C stops a download with
nothing left in the cache; temporary files a killed kdshell left are removed when a cache is first
used. Nothing downloaded is ever executed.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Callable, Iterator, TextIO

from kdshell.output import printable

if TYPE_CHECKING:
    import http.client
    import socket
    import urllib.request
    from http.client import HTTPMessage

MICROSOFT_SERVER = "https://msdl.microsoft.com/download/symbols"
DEFAULT_TIMEOUT = 10.0  # seconds per connect/read
DEFAULT_DEADLINE = 300.0  # seconds for a whole download
DEFAULT_SESSION_DEADLINE = 1800.0  # seconds of downloading in a whole session
MAX_REDIRECTS = 5
# A server's redirects go to its own host, or to these (by name suffix): Microsoft's server sends
# every file from its blob storage.
REDIRECT_HOSTS = {"msdl.microsoft.com": (".blob.core.windows.net",)}
DEFAULT_MAX_SIZE = 1 << 30  # bytes: the largest file we accept from a server
USER_AGENT = "Microsoft-Symbol-Server/10.0.0.0 (kdshell)"

_RESERVED = {"con", "prn", "aux", "nul", "conin$", "conout$", "clock$"} | \
    {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
_KEY = re.compile(r"^[0-9A-Za-z]{1,80}$")
_BAD_CHARS = set('<>:"/\\|?*') | {chr(c) for c in range(32)}


def default_cache() -> str:
    """Where `srv*` without a cache puts downloads: $KDSHELL_SYMBOL_CACHE, else the user's cache
    directory ($XDG_CACHE_HOME or ~/.cache; %LOCALAPPDATA% on Windows) + kdshell/symbols."""
    env = os.environ.get("KDSHELL_SYMBOL_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME")
    if not base and os.name == "nt":
        base = os.environ.get("LOCALAPPDATA")
    base = base or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kdshell", "symbols")


def default_symbol_path(offline: bool = False) -> str:
    """The command line's symbol path when none is given: Microsoft's server, downloads cached
    per user; offline, the cache alone. (The Python API has no default: it downloads only when
    its caller or _NT_SYMBOL_PATH names a server.)"""
    return default_cache() if offline else f"srv*{default_cache()}*{MICROSOFT_SERVER}"


def environment_symbol_path() -> str:
    """As the debuggers do: _NT_ALT_SYMBOL_PATH first, then _NT_SYMBOL_PATH."""
    return ";".join(os.environ[v] for v in ("_NT_ALT_SYMBOL_PATH", "_NT_SYMBOL_PATH") if os.environ.get(v))


def offline_requested() -> bool:
    """KDSHELL_OFFLINE=1 (anything but empty or 0): no downloads, whatever the symbol path says
    (what --offline does; the test suite sets it so that no test reaches a real server)."""
    return os.environ.get("KDSHELL_OFFLINE", "").strip() not in ("", "0")


def safe_file_name(name: str | None) -> str | None:
    """A name from the dump reduced to a bare file name, or None when it cannot be one.

    The last component of either kind of slash is kept (`C:\\build\\x.pdb` -> `x.pdb`); then the
    name is refused if it is empty, '.', '..', has a drive colon, a control or wildcard character,
    is a DOS device name (with or without an extension: `nul.pdb`, `COM1`), ends with a dot or
    space, or is longer than 255 characters.
    """
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    if not name or name in (".", "..") or len(name) > 255:
        return None
    if any(c in _BAD_CHARS for c in name) or name[-1] in ". ":
        return None
    if name.split(".", 1)[0].rstrip(" ").lower() in _RESERVED:
        return None
    return name


def safe_key(key: str | None) -> str | None:
    return key if key and _KEY.match(key) else None


def inside(directory: str, path: str) -> bool:
    """True when `path` (resolved) is inside `directory` (resolved)."""
    d = os.path.realpath(directory)
    p = os.path.realpath(path)
    return os.path.commonpath([d, p]) == d and p != d


@dataclass
class Element:
    kind: str  # "dir", "srv", "cache"
    path: str = ""  # dir: the directory; cache: the cache directory
    cache: str | None = None  # srv: where downloads go
    stores: list[str] = field(default_factory=list)  # srv: local stores or URLs, in order
    text: str = ""


def is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


class SymbolPath:
    def __init__(self, elements: list[Element], text: str) -> None:
        self.elements = elements
        self.text = text

    @classmethod
    def parse(cls, text: str | None) -> "SymbolPath":
        elements = []
        for raw in (text or "").split(";"):
            part = raw.strip()
            if not part:
                continue
            low = part.lower()
            if low.startswith("symsrv*"):
                fields = part.split("*")[2:]  # symsrv*symsrv.dll*...
                elements.append(_server(fields, part))
            elif low == "srv" or low.startswith("srv*"):
                elements.append(_server(part.split("*")[1:], part))
            elif low == "cache" or low.startswith("cache*"):
                where = part.split("*", 1)[1] if "*" in part else ""
                elements.append(Element("cache", where or default_cache(), text=part))
            else:
                elements.append(Element("dir", os.path.expanduser(part), text=part))
        return cls(elements, text or "")

    def __str__(self) -> str:
        return self.text


def _server(fields: list[str], text: str) -> Element:
    fields = [f for f in fields if f.strip()]
    if not fields:
        return Element("srv", cache=default_cache(), stores=[MICROSOFT_SERVER], text=text)
    if len(fields) == 1:
        only = fields[0]
        if is_url(only):
            return Element("srv", cache=default_cache(), stores=[only], text=text)
        return Element("srv", cache=None, stores=[only], text=text)
    return Element("srv", cache=fields[0], stores=fields[1:], text=text)


class DownloadError(Exception):
    pass


@dataclass
class DownloadBudget:
    """The seconds of downloading left in a session, shared by its stores (one per symbol path)."""
    total: float = DEFAULT_SESSION_DEADLINE
    left: float = DEFAULT_SESSION_DEADLINE
    warned: bool = False


class SymbolStore:
    """Finds files by name and key along a symbol path; one instance per path and session."""

    def __init__(self, path: SymbolPath | str | None, *, log: Callable[[str], None] | None = None,
                 warn: Callable[[str], None] | None = None, progress: TextIO | None = None,
                 timeout: float = DEFAULT_TIMEOUT, deadline: float = DEFAULT_DEADLINE, max_size: int = DEFAULT_MAX_SIZE,
                 offline: bool = False) -> None:
        self.path = path if isinstance(path, SymbolPath) else SymbolPath.parse(path)
        self.offline = offline  # servers (URLs) are skipped; local stores and caches still serve
        self.log = log or (lambda text: None)  # noisy tracing ("SYMSRV:  ...")
        self.warn = warn or (lambda text: None)  # once-per-server failures
        self.progress: TextIO | None = progress if progress is not None else sys.stderr
        self.timeout = timeout
        self.deadline = deadline
        self.max_size = max_size
        self.dead_servers: set[str] = set()
        self.budget = DownloadBudget()
        self.downloads = 0
        self._swept: set[str] = set()  # caches cleaned of stale temporary files

    # -- public ------------------------------------------------------------------------------
    def find(self, name: str, key: str, verify: Callable[[str], bool] | None = None) -> str | None:
        """The path of the file `name` with identity `key`, or None. `verify(path)` confirms a
        candidate's identity (GUID/age, timestamp/size); a file that fails it is skipped (and a
        download that fails it is deleted)."""
        fname, fkey = safe_file_name(name), safe_key(key)
        if fname is None or fkey is None:
            self.log(f"SYMSRV:  refusing the unsafe name {name!r} / key {key!r}")
            return None
        verify = verify or (lambda p: True)
        cache_dir: str | None = None
        for el in self.path.elements:
            if el.kind == "cache":
                cache_dir = el.path
                found = self._from_cache(el.path, fname, fkey, verify)
                if found:
                    return found
            elif el.kind == "dir":
                found = self._from_dir(el.path, fname, fkey, verify)
                if found and cache_dir:
                    found = self._copy_into(cache_dir, found, fname, fkey) or found
                if found:
                    return found
            else:
                found = self._from_server(el, fname, fkey, verify)
                if found:
                    return found
        return None

    # -- local stores and directories --------------------------------------------------------
    def _from_store(self, store: str, name: str, key: str, verify: Callable[[str], bool]) -> str | None:
        """NAME/KEY/NAME (or two-tier NA/NAME/KEY/NAME) in a local store, following file.ptr."""
        if not os.path.isdir(store):
            return None
        roots = [store]
        if os.path.exists(os.path.join(store, "index2.txt")):
            roots.insert(0, os.path.join(store, name[:2].lower()))
        for root in roots:
            keydir = _child(root, name) and _child(_child(root, name), key)
            if not keydir:
                continue
            candidate = _child(keydir, name)
            self.log(f"SYMSRV:  {os.path.join(keydir, name)} - {'found' if candidate else 'not found'}")
            if candidate and os.path.isfile(candidate):
                if verify(candidate):
                    return candidate
                self.log(f"SYMSRV:  {candidate} does not match (wrong identity); skipped")
            ptr = _child(keydir, "file.ptr")
            if ptr:
                found = self._follow_ptr(ptr, store, verify)
                if found:
                    return found
        return None

    def _follow_ptr(self, ptr: str, store: str, verify: Callable[[str], bool]) -> str | None:
        try:
            with open(ptr, "r", encoding="utf-8", errors="replace") as f:
                text = f.read(4096).strip()
        except OSError:
            return None
        if text.upper().startswith("MSG:"):
            self.log(f"SYMSRV:  {ptr}: {text[4:].strip()}")
            return None
        if not text.upper().startswith("PATH:"):
            return None
        target = text[5:].strip()
        if is_url(target) or target.startswith("\\\\"):
            self.log(f"SYMSRV:  {ptr} points to {target}: not followed")
            return None
        target = target if os.path.isabs(target) else os.path.join(store, target)
        if os.path.isfile(target) and verify(target):
            self.log(f"SYMSRV:  {ptr} -> {target}")
            return target
        return None

    def _from_dir(self, directory: str, name: str, key: str, verify: Callable[[str], bool]) -> str | None:
        found = self._from_store(directory, name, key, verify)
        if found:
            return found
        ext = name.rsplit(".", 1)[-1] if "." in name else ""
        places = [os.path.join(directory, "symbols", ext), os.path.join(directory, ext), directory]
        for place in places:
            candidate = _child(place, name) if os.path.isdir(place) else None
            self.log(f"DBGHELP: {os.path.join(place, name)} - {'found' if candidate else 'file not found'}")
            if candidate and os.path.isfile(candidate):
                if verify(candidate):
                    return candidate
                self.log(f"DBGHELP: {candidate} - mismatched identity")
        return None

    def _copy_into(self, cache: str, source: str, name: str, key: str) -> str | None:
        target = os.path.join(cache, name, key, name)
        if not inside(cache, target):
            return None
        if os.path.isfile(target):
            return target
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=os.path.dirname(target))
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out)
            os.replace(tmp, target)
            return target
        except OSError as exc:
            self.log(f"SYMSRV:  cannot copy {source} into {cache}: {exc.strerror}")
            return None

    # -- servers -----------------------------------------------------------------------------
    def _from_server(self, el: Element, name: str, key: str, verify: Callable[[str], bool]) -> str | None:
        if el.cache:
            found = self._from_cache(el.cache, name, key, verify)
            if found:
                return found
        for store in el.stores:
            if is_url(store):
                if el.cache is None or self.offline:
                    continue
                found = self._download(store, el.cache, name, key, verify)
            else:
                found = self._from_store(store, name, key, verify)
                if found and el.cache:
                    found = self._copy_into(el.cache, found, name, key) or found
            if found:
                return found
        return None

    def _from_cache(self, cache: str, name: str, key: str, verify: Callable[[str], bool]) -> str | None:
        """A cache kdshell downloads or copies into: a local store, swept first. Only caches:
        a store the user names is theirs, and its files are not ours to remove."""
        if os.path.isdir(cache):
            self._sweep(cache)
        return self._from_store(cache, name, key, verify)

    def _sweep(self, cache: str) -> None:
        """Once per cache: remove the temporary files a killed kdshell left in its NAME/KEY
        folders, and the folders that are then empty. Only files older than a download's
        deadline: a younger one may be another kdshell's download under way."""
        if cache in self._swept:
            return
        self._swept.add(cache)
        stale = time.time() - self.deadline
        try:
            names = [e.path for e in os.scandir(cache) if e.is_dir(follow_symlinks=False)][:20000]
            for name_dir in names:
                for key in os.scandir(name_dir):
                    if not key.is_dir(follow_symlinks=False):
                        continue
                    for f in os.scandir(key.path):
                        if f.name.endswith(".tmp") and f.is_file(follow_symlinks=False) and \
                                f.stat(follow_symlinks=False).st_mtime < stale:
                            os.unlink(f.path)
                    _prune(key.path, cache)
        except OSError:
            pass

    def _download(self, server: str, cache: str, name: str, key: str, verify: Callable[[str], bool]) -> str | None:
        if server in self.dead_servers:
            return None
        if self.budget.left <= 0:
            if not self.budget.warned:
                self.budget.warned = True
                self.warn(f"*** WARNING: no more downloads in this session: they took {self.budget.total:g} s")
            return None
        base = server.rstrip("/")
        target = os.path.join(cache, name, key, name)
        if not inside(cache, target):
            self.log(f"SYMSRV:  refusing to write outside the cache: {target}")
            return None
        with _download_lock(cache, name, key):
            # Another process (a triage worker) may have fetched it while this one waited.
            found = self._from_store(cache, name, key, verify)
            if found:
                return found
            return self._download_locked(base, server, cache, name, key, target, verify)

    def _download_locked(self, base: str, server: str, cache: str, name: str, key: str, target: str,
                         verify: Callable[[str], bool]) -> str | None:
        # Keys are case-insensitive, but a plain file server is not: after a 404 for the key as
        # symsrv spells it, ask once more in lower case (the SSQP spelling).
        tmp = None
        for spelling in dict.fromkeys([key, key.lower()]):
            url = f"{base}/{urllib.parse.quote(name)}/{spelling}/{urllib.parse.quote(name)}"
            self.log(f"SYMSRV:  GET {url}")
            started = time.monotonic()
            try:
                tmp = self._fetch(url, os.path.dirname(target), name)
            except DownloadError as exc:
                _prune(os.path.dirname(target), cache)
                self._server_failed(server, str(exc))
                return None
            except KeyboardInterrupt:  # Ctrl-C: this download stops; the command says so
                _prune(os.path.dirname(target), cache)
                self.log(f"SYMSRV:  {url} - interrupted")
                raise
            finally:
                self.budget.left -= time.monotonic() - started
            if tmp is not None:
                break
            self.log(f"SYMSRV:  {url} - not found")
        if tmp is None:
            _prune(os.path.dirname(target), cache)
            return None
        if not verify(tmp):
            os.unlink(tmp)
            _prune(os.path.dirname(target), cache)
            self._server_failed(server, f"{name} from the server is not the file asked for (bad content)")
            return None
        try:
            os.replace(tmp, target)
        except OSError as exc:
            os.unlink(tmp)
            self.warn(f"*** WARNING: cannot write {target}: {exc.strerror}")
            return None
        self.downloads += 1
        self.log(f"SYMSRV:  {target} - downloaded")
        return target

    def _server_failed(self, server: str, why: str) -> None:
        self.dead_servers.add(server)
        self.warn(f"*** WARNING: symbol server {server} failed: {why}. It is not asked again in this session.")

    def _fetch(self, url: str, directory: str, name: str) -> str | None:
        """Download into a temporary file beside the target: its path, or None for 404. The file
        has a wall-clock deadline (the smaller of the store's and what is left of the session's):
        at the deadline its connections are shut, whatever the server is in the middle of
        sending (the socket timeout holds for one recv only: a server that drips never trips it)."""
        import http.client
        import threading
        import urllib.error  # here, not at start-up: urllib.request pulls in http and email (~12 ms)
        import urllib.request

        limit = min(self.deadline, self.budget.left)
        watch = _Watch()
        timer = threading.Timer(limit, watch.expire)
        timer.daemon = True
        late = DownloadError(f"{name} took more than {limit:g} s")
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        self._resolve(urllib.parse.urlsplit(url).hostname or "", min(self.timeout, limit))
        opener = urllib.request.build_opener(_redirects(url), *_watched_handlers(watch))
        timer.start()
        try:
            try:
                response = opener.open(request, timeout=min(self.timeout, limit))
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code == 404:
                    return None
                raise DownloadError(f"HTTP {exc.code} {exc.reason}") from None
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                if watch.expired:
                    raise late from None
                reason = getattr(exc, "reason", exc)
                raise DownloadError(f"{reason}") from None
            with response:
                return self._receive(response, directory, name, watch, late)
        finally:
            timer.cancel()

    def _receive(self, response: http.client.HTTPResponse, directory: str, name: str, watch: "_Watch",
                 late: DownloadError) -> str:
        """The body of a download into a temporary file: reads of what has arrived (read1), so the
        deadline and Ctrl-C are seen between any two packets."""
        import http.client

        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and total > self.max_size:
            raise DownloadError(f"{name} is {total} bytes, more than the {self.max_size}-byte limit")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise DownloadError(f"cannot create {directory}: {exc.strerror}") from None
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        done = 0
        shown = 0.0
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    try:
                        chunk = response.read1(64 * 1024)
                    except (http.client.HTTPException, OSError, ValueError) as exc:
                        raise (late if watch.expired else DownloadError(f"{exc}")) from None
                    if watch.expired:
                        raise late
                    if not chunk:
                        break
                    done += len(chunk)
                    if done > self.max_size:
                        raise DownloadError(f"{name} is more than the {self.max_size}-byte limit")
                    out.write(chunk)
                    now = time.monotonic()
                    if now - shown > 0.5:
                        shown = now
                        self._show(name, done, total)
            self._show(name, done, total, final=True)
            if total is not None and done != total:
                raise DownloadError(f"{name}: the server sent {done} of {total} bytes")
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    def _resolve(self, host: str, wait: float) -> None:
        """Look the server's name up within the timeout: the socket timeout does not cover DNS, and
        a machine off the network with a DNS server configured can wait for it for a minute."""
        import socket
        import threading

        result: list[BaseException | None] = []

        def lookup() -> None:
            try:
                socket.getaddrinfo(host, None)
                result.append(None)
            except (OSError, UnicodeError) as exc:
                result.append(exc)

        worker = threading.Thread(target=lookup, name="kdshell-dns", daemon=True)
        worker.start()
        worker.join(wait)
        if not result:
            raise DownloadError(f"no answer from DNS for {host} within {wait:g} s")
        if result[0] is not None:
            raise DownloadError(f"{result[0]}")

    def _show(self, name: str, done: int, total: int | None, final: bool = False) -> None:
        if self.progress is None:
            return
        of = f" of {total}" if total else ""
        end = "\n" if final else ""
        try:
            self.progress.write(f"\rDownloading {printable(name)}: {done}{of} bytes{end}")
            self.progress.flush()
        except (OSError, ValueError):
            pass


@contextlib.contextmanager
def _download_lock(cache: str, name: str, key: str) -> Iterator[None]:
    """One download of a file at a time across processes sharing the cache (kdshell triage's
    workers): an exclusive lock on cache/.NAME.KEY.lock, removed when done (a process still
    waiting on it then finds the file in the cache); where locks do not exist, none."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = os.path.join(cache, f".{name}.{key}.lock")
    try:
        os.makedirs(cache, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def _redirects(url: str) -> "urllib.request.HTTPRedirectHandler":
    """A redirect handler for a download from `url`: http/https only, never from https to http,
    and only to the server's own host or those REDIRECT_HOSTS lists for it."""
    import urllib.request

    origin = (urllib.parse.urlsplit(url).hostname or "").lower()
    allowed = REDIRECT_HOSTS.get(origin, ())

    class Redirects(urllib.request.HTTPRedirectHandler):
        max_redirections = MAX_REDIRECTS

        def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                             headers: HTTPMessage, newurl: str) -> urllib.request.Request | None:
            new, old = urllib.parse.urlsplit(newurl), urllib.parse.urlsplit(req.full_url)
            host = (new.hostname or "").lower()
            why = ("not http or https" if new.scheme not in ("http", "https")
                   else "from https to http" if old.scheme == "https" and new.scheme == "http"
                   else "to another host" if host != origin and not host.endswith(allowed)
                   else None)
            if why is not None:
                fp.close()
                raise DownloadError(f"a redirect {why} was refused ({newurl[:200]})")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    return Redirects()


class _Watch:
    """The sockets of one download, shut down when its deadline expires (from a timer thread)."""

    def __init__(self) -> None:
        import threading

        self.sockets: list[socket.socket] = []
        self.expired = False
        self.lock = threading.Lock()

    def add(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.append(sock)
            if self.expired:
                _shut(sock)

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    import socket as sockets

    try:
        sock.shutdown(sockets.SHUT_RDWR)  # a recv blocked in another thread returns at once
    except OSError:
        pass


def _watched_handlers(watch: _Watch) -> list[urllib.request.BaseHandler]:
    """HTTP and HTTPS handlers whose connections report their sockets to `watch`."""
    import http.client
    import urllib.request

    class Http(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            watch.add(self.sock)

    class Https(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            watch.add(self.sock)

    class HttpHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Http, req)

    class HttpsHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(Https, req, context=getattr(self, "_context", None))

    return [HttpHandler(), HttpsHandler()]


def _child(directory: str | None, name: str) -> str | None:
    """`directory/name`, matched case-insensitively (store keys and Windows names ignore case)."""
    if not directory:
        return None
    exact = os.path.join(directory, name)
    if os.path.exists(exact):
        return exact
    try:
        with os.scandir(directory) as it:
            for n, entry in enumerate(it):
                if n > 10000:
                    break
                if entry.name.lower() == name.lower():
                    return entry.path
    except OSError:
        return None
    return None


def _prune(directory: str, cache: str) -> None:
    """Remove the empty NAME/KEY directories a failed download left in the cache."""
    for _ in range(2):
        if not inside(cache, directory):
            return
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = os.path.dirname(directory)
