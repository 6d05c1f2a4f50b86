"""Executors: run one pure function over many tasks and hand back (task, result) as each finishes.

An executor only computes; the caller (the sweep driver) persists each result the moment it
arrives, so whatever stops the run loses at most the points still in flight. Any executor with
`map_unordered(compute, tasks)` plugs into `echo_sim.cli.sweep.run_grid` (a Ray one, say).

`LocalExecutor(jobs)` runs in this process (jobs = 1) or in a pool of `jobs` worker processes that
never outlive the driver:
- Ctrl-C / SIGTERM of the driver: queued tasks are cancelled and the workers terminated at once
  (leaving a plain ProcessPoolExecutor would wait for every queued task); KeyboardInterrupt
  propagates, so the CLI reports "interrupted" with the finished points kept.
- SIGKILL of the driver (nothing runs in it any more): each worker asked the kernel to kill it when
  its parent dies (Linux PR_SET_PDEATHSIG) and, on any platform, polls its parent id and exits
  when it changes.
- Workers ignore SIGINT: a terminal's Ctrl-C reaches the whole process group, and the driver alone
  decides what stops (no traceback per worker).
Workers are started with "spawn": a fresh interpreter, no inherited threads or locks, and their
parent is the driver itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Callable, Iterable, Iterator, Protocol, TypeVar

Task = TypeVar("Task")
Result = TypeVar("Result")
PARENT_POLL_S = 0.5  # how often a worker checks that its driver is alive
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Executor(Protocol):
    def map_unordered(self, compute: Callable[[Task], Result], tasks: Iterable[Task]) -> Iterator[tuple[Task, Result]]:
        """Yield (task, compute(task)) for every task, in completion order; an exception in
        compute, or a KeyboardInterrupt, stops all remaining work before it propagates."""


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block SIGTERM raises KeyboardInterrupt (so the same clean-up runs for both)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: die with the driver, leave Ctrl-C to the driver."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the driver died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Terminate the workers now. The pool's manager thread then fails every unfinished future
    (cancelling them here as well races with it: InvalidStateError on Python 3.11)."""
    # ProcessPoolExecutor has no public way to terminate its workers before Python 3.14.
    workers = list((getattr(pool, "_processes", None) or {}).values())
    for process in workers:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in workers:
        with contextlib.suppress(Exception):
            process.join(timeout=2)
            if process.is_alive():
                process.kill()
    pool.shutdown(wait=False)


class LocalExecutor:
    def __init__(self, jobs: int):
        if jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {jobs}")
        self.jobs = jobs

    def map_unordered(self, compute, tasks):
        tasks = list(tasks)
        with sigterm_as_interrupt():
            if self.jobs == 1 or len(tasks) <= 1:
                for task in tasks:
                    yield task, compute(task)
                return
            yield from self._pool(compute, tasks)

    def _pool(self, compute, tasks):
        pool = ProcessPoolExecutor(max_workers=min(self.jobs, len(tasks)),
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_exit_with_parent, initargs=(os.getpid(),))
        futures = {pool.submit(compute, task): task for task in tasks}
        pending = set(futures)
        try:
            while pending:
                # wait() with a timeout, not as_completed(): the main thread must wake up for signals
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield futures[future], future.result()
        except BaseException:
            _stop(pool)
            raise
        pool.shutdown(wait=True)
