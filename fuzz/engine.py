"""The engine the harnesses share: run a target on many inputs, tell bugs from answers, keep
and minimize what breaks it.

A harness (fuzz/<target>.py) is a module with
    NAME                       the target's name ("containers", "pdb", ...)
    seeds() -> [(name, bytes)] seed inputs (the real corpus, the test machines, the fixtures)
    one_input(data)            the target: returns, or raises a KdError (a clean one-line error);
                               anything else is a bug
    TIMEOUT                    seconds one input may take before it counts as a hang

What counts as a crash (issue #11): any exception other than the KdError family, a hang (an
input running longer than TIMEOUT), or unbounded memory (MemoryError under the runner's address
space limit; libFuzzer's -rss_limit_mb under atheris).

Two engines:
- builtin: random structure-aware mutations of the seeds (bit flips, interesting integers at
  aligned offsets, chunk copies, truncation, splicing), with a small pool of inputs that gave a
  new *outcome* (error message shape), so deeper states get mutated too. No coverage feedback;
  deterministic for a seed; used by CI (tests/test_fuzz_short.py) and when atheris is missing.
- atheris (PyPI; libFuzzer, coverage-guided, kdshell instrumented): fuzz/run.py --engine atheris.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import struct
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Hang(BaseException):
    """Raised by the alarm in an input that runs too long (a BaseException so that no
    `except Exception` in the code under test swallows it; not KeyboardInterrupt either, which
    the dispatcher turns into "command stopped")."""


@dataclass
class Finding:
    kind: str  # "exception", "hang", "memory"
    signature: str  # what identifies the bug: exception type + innermost kdshell frame
    message: str
    trace: str
    data: bytes = b""

    def line(self) -> str:
        return f"{self.kind}: {self.signature}: {self.message[:160]}"


@dataclass
class Stats:
    inputs: int = 0
    clean_errors: int = 0
    answers: int = 0
    seconds: float = 0.0
    findings: dict[str, Finding] = field(default_factory=dict)
    outcomes: set[str] = field(default_factory=set)


def _signature(exc: BaseException, tb_text: str) -> str:
    """Type + the innermost frame in kdshell (or the innermost frame at all)."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', tb_text)
    ours = [f for f in frames if "/kdshell/" in f[0] or "/commands/" in f[0]]
    pick = (ours or frames or [("?", "0", "?")])[-1]
    where = f"{Path(pick[0]).parent.name}/{Path(pick[0]).name}:{pick[2]}"
    name = type(exc).__name__
    if getattr(exc, "trace", None):  # the original exception's type: the traceback's last line
        last = tb_text.strip().splitlines()[-1] if tb_text.strip() else ""
        name = last.split(":", 1)[0].strip().rsplit(".", 1)[-1] or name
    return f"{name} in {where}"


def classify(exc: BaseException, tb_text: str | None = None) -> Finding:
    """A bug's kind and signature. An exception carrying `.trace` (an internal error the
    dispatcher caught and kept) is judged by that traceback."""
    tb_text = tb_text or getattr(exc, "trace", None) or "".join(traceback.format_exception(exc))
    if isinstance(exc, Hang):
        kind = "hang"
    elif isinstance(exc, MemoryError):
        kind = "memory"
    else:
        kind = "exception"
    return Finding(kind, _signature(exc, tb_text), str(exc).replace("\n", " "), tb_text)


class TimeLimit:
    """Raise Hang in the main thread after `seconds` (SIGALRM; no-op where unavailable)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.ok = hasattr(signal, "setitimer") and seconds > 0

    def _fire(self, signum, frame):
        raise Hang(f"input ran longer than {self.seconds} s")

    def __enter__(self):
        if self.ok:
            self.old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc):
        if self.ok:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        return False


def run_one(harness, data: bytes, timeout: float | None = None) -> tuple[str, Finding | None]:
    """Run the target once: ("answer" | "error:<shape>", None) or ("bug", Finding)."""
    from kdshell.errors import KdError

    try:
        with TimeLimit(timeout if timeout is not None else getattr(harness, "TIMEOUT", 10)):
            ret = harness.one_input(data)
        return f"answer:{ret}" if ret else "answer", None
    except KdError as exc:
        return f"error:{shape(exc)}", None
    except (Hang, MemoryError, Exception) as exc:  # noqa: BLE001 - this is the point
        finding = classify(exc)
        finding.data = data
        return "bug", finding


def shape(exc: BaseException) -> str:
    """An error's shape: its type and message with numbers and quoted names blurred (so inputs
    reaching a new kind of error can be told from ones reaching a known one)."""
    text = re.sub(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F`]{4,}\b|\d+|'[^']*'", "#", str(exc))[:80]
    return f"{type(exc).__name__}:{text}"


# -- mutations ---------------------------------------------------------------------------------
INTERESTING = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x1000, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
               0xFFFFFFFE, 0xFFFFFFFF, 1 << 32, 1 << 40, 1 << 63, (1 << 64) - 1, 0x2000, 0x3000, 0xFFFFF80000000000]


def mutate(rng: random.Random, data: bytes, pool: list[bytes], hot: list[tuple[int, int]] = ()) -> bytes:
    """1-8 structure-aware mutations; `hot` ranges (lo, hi) of the input are favoured."""
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 4, 8))):
        if not b:
            b += rng.randbytes(rng.randint(1, 64))
            continue
        n = len(b)
        if hot and rng.random() < 0.6:
            lo, hi = rng.choice(hot)
            lo, hi = min(lo, n - 1), min(hi, n)
            pos = rng.randrange(lo, max(lo + 1, hi))
        else:
            pos = rng.randrange(n)
        op = rng.random()
        if op < 0.25:  # bit flip
            b[pos] ^= 1 << rng.randrange(8)
        elif op < 0.35:  # random byte
            b[pos] = rng.randrange(256)
        elif op < 0.6:  # interesting integer at an aligned offset
            width = rng.choice((1, 2, 4, 8))
            pos -= pos % width
            value = rng.choice(INTERESTING)
            if rng.random() < 0.3:
                value += rng.choice((-1, 1))
            value &= (1 << (8 * width)) - 1
            if pos + width <= n:
                b[pos:pos + width] = value.to_bytes(width, "little")
        elif op < 0.7:  # a value pointing back into the file / near this offset
            width = rng.choice((4, 8))
            pos -= pos % width
            value = rng.choice((pos, n, n - 1, n + 0x1000, pos - 8 if pos >= 8 else 0, rng.randrange(n)))
            if pos + width <= n:
                b[pos:pos + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        elif op < 0.78:  # copy a chunk over another place (duplicated records, self references)
            size = rng.choice((4, 8, 16, 64, 256))
            src = rng.randrange(n)
            chunk = bytes(b[src:src + size])
            b[pos:pos + len(chunk)] = chunk
        elif op < 0.84:  # zero or fill a range
            size = rng.choice((4, 16, 64, 512, 4096))
            b[pos:pos + size] = bytes([rng.choice((0, 0xFF))]) * len(b[pos:pos + size])
        elif op < 0.9:  # truncate
            del b[rng.randrange(n):]
        elif op < 0.95 and pool:  # splice with another input
            other = rng.choice(pool)
            if other:
                cut = rng.randrange(len(other))
                b[pos:] = other[cut:cut + rng.randrange(1, 4096)]
        else:  # insert or delete a few bytes (shifts everything after)
            if rng.random() < 0.5:
                b[pos:pos] = rng.randbytes(rng.choice((1, 4, 8)))
            else:
                del b[pos:pos + rng.choice((1, 4, 8))]
    return bytes(b)


def fuzz(harness, *, seconds: float | None = None, runs: int | None = None, seed: int = 0,
         on_finding=None, log=None, hot=None) -> Stats:
    """The builtin engine: mutate seeds (and inputs with new outcomes) until the time or the
    number of runs is spent. `on_finding(finding)` is called once per new signature."""
    rng = random.Random(seed)
    seeds = [data for _, data in harness.seeds()]
    if not seeds:
        raise RuntimeError(f"{harness.NAME}: no seeds")
    pool: list[bytes] = list(seeds)
    hot_ranges = hot or getattr(harness, "HOT", None)
    stats = Stats()
    start = time.monotonic()
    last_log = start
    # every seed once, as is: they must all be clean
    queue = list(seeds)
    while True:
        elapsed = time.monotonic() - start
        spent = (seconds is not None and elapsed >= seconds) or (runs is not None and stats.inputs >= runs)
        if spent and not queue:  # the seeds run whatever the budget: a slow machine still checks them all
            break
        if queue:
            data = queue.pop(0)
        else:
            parent = rng.choice(pool)
            data = mutate(rng, parent, pool, hot_ranges(parent) if hot_ranges else ())
        outcome, finding = run_one(harness, data)
        stats.inputs += 1
        if finding is not None:
            if finding.signature not in stats.findings:
                stats.findings[finding.signature] = finding
                if on_finding:
                    on_finding(finding)
        elif outcome.startswith("answer"):
            stats.answers += 1
        else:
            stats.clean_errors += 1
        if finding is None and outcome not in stats.outcomes:
            stats.outcomes.add(outcome)
            if len(pool) < 2000:
                pool.append(data)
        if log and time.monotonic() - last_log > 30:
            last_log = time.monotonic()
            log(f"{harness.NAME}: {stats.inputs} inputs, {len(stats.outcomes)} outcomes, "
                f"{len(stats.findings)} distinct bugs, {stats.inputs / (last_log - start):.0f}/s")
    stats.seconds = time.monotonic() - start
    return stats


# -- minimizing --------------------------------------------------------------------------------
def minimize(harness, data: bytes, signature: str, *, seconds: float = 60.0) -> bytes:
    """Shrink an input while it still fails with the same signature: cut the tail, then zero
    chunks (offsets stay put, which structured formats need), then try removing chunks."""
    deadline = time.monotonic() + seconds

    def same(candidate: bytes) -> bool:
        if time.monotonic() > deadline:
            return False
        _, f = run_one(harness, candidate)
        return f is not None and f.signature == signature

    best = data
    # 1. the shortest prefix that still fails (binary search, then linear steps)
    lo, hi = 0, len(best)
    while lo < hi and time.monotonic() < deadline:
        mid = (lo + hi) // 2
        if same(best[:mid]):
            hi = mid
        else:
            lo = mid + 1
    if hi < len(best) and same(best[:hi]):
        best = best[:hi]
    # 2. zero chunks, large to small
    size = 1 << max(0, (len(best) - 1).bit_length() - 1)
    while size >= 4 and time.monotonic() < deadline:
        for pos in range(0, len(best), size):
            chunk = best[pos:pos + size]
            if not any(chunk):
                continue
            cand = best[:pos] + bytes(len(chunk)) + best[pos + size:]
            if same(cand):
                best = cand
        size //= 2
    # 3. remove chunks (shifts offsets; often fails for dumps, cheap to try)
    size = max(4, len(best) // 8)
    while size >= 4 and time.monotonic() < deadline:
        pos = 0
        while pos < len(best) and time.monotonic() < deadline:
            cand = best[:pos] + best[pos + size:]
            if same(cand):
                best = cand
            else:
                pos += size
        size //= 2
    return best


def save_finding(finding: Finding, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(finding.data).hexdigest()[:12]
    path = directory / f"{finding.kind}-{digest}.bin"
    path.write_bytes(finding.data)
    (directory / f"{finding.kind}-{digest}.txt").write_text(f"{finding.line()}\n\n{finding.trace}")
    return path


def limit_memory(mb: int) -> None:
    """An address-space limit for a fuzzing process: unbounded memory becomes MemoryError."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))
    except (ImportError, ValueError, OSError):
        pass


def u32(data: bytes, off: int) -> int:
    return struct.unpack_from("<I", data, off)[0] if off + 4 <= len(data) else 0


def tmp_dir() -> Path:
    """Where harnesses write their per-input files: RAM-backed when possible."""
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
    import tempfile

    d = Path(tempfile.mkdtemp(prefix=f"kdshell-fuzz-{os.getpid()}-", dir=base))
    import atexit
    import shutil

    atexit.register(shutil.rmtree, d, True)
    return d


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
