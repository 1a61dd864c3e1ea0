"""Where the tasks run: in this process (-j 1), in a pool of local processes (-j N), or on a Dask
cluster (--cluster). Each gives (index, record) as tasks finish; the caller puts them in order.

The process pool enforces the per-file limits from outside: each worker says which task it
started (a queue), the parent kills a worker whose task is over its time limit or whose memory
(RSS) is over the cap, reports that task's row, and starts a new pool for the tasks left (a
worker's own RLIMIT_DATA turns most runaway allocations into a MemoryError first). A pool that
breaks for another reason (a worker killed from outside) retries the tasks that were running
once each; a task that breaks a pool twice is reported as stopped."""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator, Sequence

from kdshell.triage.worker import Settings, analyse, stopped

Job = tuple[int, str, str | None, int | None]   # index, path, sha256, size
Result = tuple[int, dict[str, Any]]
GRACE = 1.0     # seconds past the time limit before the parent kills the worker
POLL = 0.1

_started: Any = None   # the worker's end of the "task started" queue


def serial(jobs: Sequence[Job], settings: Settings) -> Iterator[Result]:
    """In this process; the time limit through SIGALRM where that exists (the main thread)."""
    for index, path, sha, size in jobs:
        with _alarm(settings.time_limit):
            record = analyse(path, settings, sha, size)
        yield index, record


class _alarm:
    def __init__(self, seconds: float | None) -> None:
        import threading

        self.on = bool(seconds) and hasattr(signal, "setitimer") and \
            threading.current_thread() is threading.main_thread()
        self.seconds = seconds or 0.0

    def __enter__(self) -> None:
        if self.on:
            self.old = signal.signal(signal.SIGALRM, _time_up)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc: object) -> None:
        if self.on:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)


def _time_up(signum: int, frame: object) -> None:
    raise TimeoutError


def _environment() -> dict[str, str]:
    """The variables kdshell reads (symbol paths, offline, caches, the zone, the test hook)."""
    return {k: v for k, v in os.environ.items() if k.startswith(("KDSHELL_", "_NT_")) or k in ("XDG_CACHE_HOME", "TZ")}


def _init_worker(started: Any, memory_mb: int | None, env: dict[str, str]) -> None:
    global _started
    _started = started
    # A forkserver's children get the environment it started with, maybe by an earlier run:
    # they take this run's.
    for name in [k for k in os.environ if k.startswith(("KDSHELL_", "_NT_")) or k in ("XDG_CACHE_HOME", "TZ")]:
        del os.environ[name]
    os.environ.update(env)
    if hasattr(time, "tzset"):
        time.tzset()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if memory_mb:
        try:
            import resource

            cap = memory_mb << 20
            resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))
        except (ImportError, ValueError, OSError):
            pass


def _task(index: int, path: str, settings: Settings, sha: str | None, size: int | None) -> Result:
    _started.put((index, os.getpid()))
    return index, analyse(path, settings, sha, size)


def processes(jobs: Sequence[Job], settings: Settings, workers: int) -> Iterator[Result]:
    """In `workers` local processes, with the per-file limits."""
    left = {job[0]: job for job in jobs}
    broke: dict[int, int] = {}
    context = multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                          else "spawn")
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload(["kdshell.triage.worker", "kdshell.analysis.report", "kdshell.session"])
    fruitless = 0   # pools in a row that broke before finishing any task
    while left:
        before = len(left)
        yield from _one_pool(context, left, broke, settings, workers)
        fruitless = fruitless + 1 if len(left) == before else 0
        if fruitless >= 3:
            from kdshell.triage.files import TriageError

            raise TriageError("the worker processes keep dying before they finish a file (try -j 1)")


def _one_pool(context: Any, left: dict[int, Job], broke: dict[int, int], settings: Settings,
              workers: int) -> Iterator[Result]:
    """Runs the tasks left until they are done or the pool breaks (a worker killed)."""
    started = context.Queue()
    running: dict[int, tuple[int, float]] = {}   # index -> (pid, start)
    verdicts: dict[int, str] = {}                 # index -> why the parent stopped it
    broken = False
    with ProcessPoolExecutor(max_workers=min(workers, len(left)), mp_context=context, initializer=_init_worker,
                             initargs=(started, settings.memory_mb, _environment())) as pool:
        futures: dict[Future[Result], int] = {}
        try:
            for i, path, sha, size in left.values():
                futures[pool.submit(_task, i, path, settings, sha, size)] = i
        except BrokenProcessPool:
            broken = True
        while futures and not broken:
            done, _ = wait(futures, timeout=POLL, return_when=FIRST_COMPLETED)
            _drain(started, running)
            for future in done:
                index = futures.pop(future)
                try:
                    _, record = future.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                running.pop(index, None)
                left.pop(index, None)
                yield index, record
            if not broken:
                _watch(running, settings, verdicts)
        if broken:
            _drain(started, running)
            for index, why in verdicts.items():
                job = left.pop(index)
                yield index, stopped(job[1], why, job[2], job[3])
            for index in running:
                if index in left:
                    broke[index] = broke.get(index, 0) + 1
                    if broke[index] >= 2:
                        job = left.pop(index)
                        yield index, stopped(job[1], "its worker died (memory cap or a crash)", job[2], job[3])
            for pid, _ in running.values():
                _kill(pid)
            pool.shutdown(wait=True, cancel_futures=True)
    started.close()


def _drain(started: Any, running: dict[int, tuple[int, float]]) -> None:
    while True:
        try:
            index, pid = started.get_nowait()
        except (queue.Empty, OSError, ValueError):
            return
        running[index] = (pid, time.monotonic())


def _watch(running: dict[int, tuple[int, float]], settings: Settings, verdicts: dict[int, str]) -> None:
    now = time.monotonic()
    for index, (pid, start) in list(running.items()):
        if index in verdicts:
            continue
        if settings.time_limit and now - start > settings.time_limit + GRACE:
            verdicts[index] = f"over the time limit ({settings.time_limit:g} s)"
        elif settings.memory_mb and _rss_mb(pid) > settings.memory_mb:
            verdicts[index] = f"over the memory cap ({settings.memory_mb} MiB)"
        else:
            continue
        _kill(pid)


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def cluster(jobs: Sequence[Job], settings: Settings, address: str) -> Iterator[Result]:
    """On Dask: `local:N` starts a LocalCluster of N worker processes (for tests and trials),
    anything else is a scheduler's address (tcp://host:8786). Each task is one dump; the workers
    read the paths themselves (a shared file system, or URLs through fsspec). The time limit and
    memory cap are the cluster's own (Dask workers' memory_limit), not enforced per task."""
    from kdshell.triage.files import TriageError

    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise TriageError("--cluster needs Dask's distributed: pip install 'kdshell[cluster]'") from None
    local = None
    if address.startswith("local:"):
        count = address.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise TriageError(f"--cluster {address}: local:N needs a number of workers, e.g. local:4")
        local = LocalCluster(n_workers=int(count), threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(local)
    else:
        try:
            client = Client(address)  # waits distributed.comm.timeouts.connect (30 s by default)
        except (OSError, TimeoutError, ValueError) as exc:
            raise TriageError(f"--cluster {address}: cannot reach the Dask scheduler: {exc}") from None
    try:
        keys = [f"kdshell-triage-{i}-{sha or ''}" for i, _, sha, _ in jobs]
        futures = client.map(analyse, [j[1] for j in jobs], [settings] * len(jobs), [j[2] for j in jobs],
                             [j[3] for j in jobs], key=keys, pure=False)
        order = {f.key: job for f, job in zip(futures, jobs)}
        # Results come back in batches as they finish (one round trip per batch, not per dump).
        for future, result in as_completed(futures, with_results=True, raise_errors=False):
            i, path, sha, size = order[future.key]
            if future.status == "error" or not isinstance(result, dict):
                # the worker died or the task was lost: the row says so
                lost = future.exception() if future.status == "error" else result
                result = stopped(path, f"the cluster lost the task ({type(lost).__name__}: {lost})", sha, size)
            yield i, result
    finally:
        client.close(timeout=20)  # bounded: a busy machine must not keep the run from ending
        if local is not None:
            local.close(timeout=20)
