"""The real-file corpus: where the tests find it, and how to fetch it from its public homes.

    python -m tests.fetch_corpus DIR            download what is missing into DIR, check sha256
    python -m tests.fetch_corpus --check DIR    only check: every file there, with its sha256

The tests, bench/ and fuzz/ find the corpus through one setting, $KDSHELL_CORPUS (default: the
checkout's ../shared/corpus). Each file is downloaded to a temporary file beside its destination,
checked, then renamed into place: an interrupted or wrong download leaves nothing behind. A file
already there with the right sha256 is not downloaded again. The exit status is 1 when any file
could not be had.

The URLs name the commit each file was taken from (one of them is gone from its repository's
newest tree), so the bytes are the ones whose sha256 is listed here and in the corpus README.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SETTING = "KDSHELL_CORPUS"
REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "corpus"
BASE_URL = "https://raw.githubusercontent.com"
CHUNK = 1 << 16


def corpus_dir() -> Path:
    """$KDSHELL_CORPUS, else the checkout's ../shared/corpus."""
    return Path(os.environ.get(SETTING) or DEFAULT).absolute()


@dataclass(frozen=True)
class CorpusFile:
    dest: str  # path in the corpus directory
    repo: str  # owner/name on GitHub
    commit: str
    path: str  # path in that repository
    sha256: str

    def url(self, base: str = BASE_URL) -> str:
        return f"{base.rstrip('/')}/{self.repo}/{self.commit}/{self.path}"


_PDBS = ("rizinorg/test-pdb-repository", "c40862e90ae09e4d538502d363b3e6109a19104e")
MANIFEST = (
    CorpusFile("dumps/triage-x64-19041-1000007e.dmp", "rizinorg/rizin-testbins",
               "d903ae9f42b9d33d490560ddebfa6abe7dc929bb", "dmp/triage_x64.dmp",
               "6875e8ff013eddb9d562165067be24e2a231a8851690bb101f6597ca9534cd28"),
    CorpusFile("dumps/mini-x64-17763-1000007e.dmp", "ProxyRule/proxyrule.github.io",
               "85ba65ac2c77426b400d5fbdfb657353783b39c5", "images/2001/011620-8250-01.dmp",
               "a3c43b19c94a18f8209b16dc20ff6a72420e95732658f15e560e86bcc1fccd3d"),
    CorpusFile("dumps/full-x64-19045-truncated-16k.dmp", "WerWolv/ImHex-Patterns",
               "93dc4061ea445f0a9850ff63a4918f1e93d2daaf", "tests/patterns/test_data/dmp64.hexpat.bin",
               "bc4b681654501876dd726c2217cf0e873539150ea6b29fb007a568b4a5c3ef9c"),
    *(CorpusFile("symbols/" + path, *_PDBS, path, sha) for path, sha in (
        ("amdppm.sys/c9c030003b000/amdppm.sys",
         "98d8e713724184b6a8e1e79d5392958a63076f8ea164ba1e40bc0d14ce77f855"),
        ("amdppm.pdb/1C19FDDB27BB3399D9B45973EFEAFCF31/amdppm.pdb",
         "c0540394a2cc9dd35f653a82fc51490ff1db52c2a33318bd00a852c21f09332d"),
        ("Wdf01000.sys/a9a9d36ed1000/Wdf01000.sys",
         "1be1287fad8f8e38b8d66e718150f4d3f6183091d06222d73633566289377e2d"),
        ("user32.pdb/15F778B3671D4EFDBDCDE79905308B792/user32.pdb",
         "b6d07e08b05763a5d2323deb868711a06beeaa0cca89203debfa6a9cc4ffa317"),
    )),
)


def missing(directory: Path, manifest=MANIFEST) -> list[str]:
    """The manifest's files that are not in `directory` (presence only; --check hashes them)."""
    return [f.dest for f in manifest if not (directory / f.dest).is_file()]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch_one(entry: CorpusFile, directory: Path, base: str, timeout: float) -> str:
    """Download one file into place; returns what happened. Raises OSError/ValueError on failure,
    with no file left behind (not even a partial one)."""
    dest = directory / entry.dest
    if dest.is_file() and sha256_of(dest) == entry.sha256:
        return "present"
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = entry.url(base)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for block in iter(lambda: response.read(CHUNK), b""):
                h.update(block)
                out.write(block)
                size += len(block)
        if h.hexdigest() != entry.sha256:
            raise ValueError(f"sha256 {h.hexdigest()} is not {entry.sha256} ({size} bytes from {url})")
        os.replace(tmp, dest)
        return f"fetched ({size} bytes from {url})"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch(directory: Path, manifest=MANIFEST, base: str = BASE_URL, timeout: float = 60.0, out=print) -> int:
    """Fetch every file of the manifest into `directory`; one line each. Returns the number that failed."""
    failed = 0
    for entry in manifest:
        try:
            out(f"{entry.dest}: {fetch_one(entry, directory, base, timeout)}")
        except (OSError, ValueError, http.client.HTTPException) as exc:  # urllib's errors are OSErrors
            failed += 1
            out(f"{entry.dest}: FAILED: {_reason(exc)} ({entry.url(base)})")
    return failed


def check(directory: Path, manifest=MANIFEST, out=print) -> int:
    """Every file of the manifest present with its sha256; one line for each that is not."""
    bad = 0
    for entry in manifest:
        path = directory / entry.dest
        if not path.is_file():
            bad += 1
            out(f"{entry.dest}: missing")
        elif (got := sha256_of(path)) != entry.sha256:
            bad += 1
            out(f"{entry.dest}: sha256 {got} is not {entry.sha256}")
    return bad


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):  # the socket's error, wrapped
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def main(argv=None, manifest=MANIFEST) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fetch_corpus",
                                 description="Download the real-file corpus the tests use (or check it).")
    ap.add_argument("directory", type=Path, help=f"where to put it (the tests read ${SETTING}, default {DEFAULT})")
    ap.add_argument("--check", action="store_true", help="download nothing: check every file and its sha256")
    ap.add_argument("--base-url", default=BASE_URL, help="a mirror laid out as OWNER/REPO/COMMIT/PATH")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds without data before giving up")
    args = ap.parse_args(argv)
    if args.check:
        bad = check(args.directory, manifest)
        if not bad:
            print(f"{args.directory}: all {len(manifest)} files present, sha256 checked")
        return 1 if bad else 0
    failed = fetch(args.directory, manifest, args.base_url, args.timeout)
    if failed:
        print(f"{failed} of {len(manifest)} files could not be fetched; run again to retry them")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
