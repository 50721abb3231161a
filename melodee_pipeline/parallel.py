"""Bounded parallel map: streams results without queueing the whole input (flat memory at 100k files)."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
import threading
import types
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _die_with_parent(parent_pid: int, preload: list[str]) -> None:
    """Worker initializer: a worker must not outlive a crashed (SIGKILLed) parent, holding its pipes.

    SIGTERM and SIGINT end a worker. A forked one inherits its parent's handlers (a Dagster op's
    raise instead); the pool terminates its other workers with SIGTERM when one dies, and a worker
    that lived on would block writing a result nobody reads, with the run waiting on it."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: workers then exit when they next read their closed task queue
    if os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect
    for module in preload:
        importlib.import_module(module)


def process_pool(workers: int, preload: list[str]) -> ProcessPoolExecutor:
    """Worker processes that die with this one (PR_SET_PDEATHSIG), so a SIGKILLed run leaves none behind.

    fork when this process has no other thread: the cheapest start, and safe. Otherwise (a Dagster
    run worker has threads, and fork with threads can deadlock) spawn. Not forkserver: its workers
    are the server's children, and would outlive a SIGKILLed parent.
    """
    method = "fork" if threading.active_count() == 1 else "spawn"
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=multiprocessing.get_context(method),
        initializer=_die_with_parent, initargs=(os.getpid(), preload),
    )
    if method == "spawn":
        # A spawned process re-imports the parent's __main__; in a Dagster run worker that is all
        # of dagster's CLI (seconds per worker). Ours need only `preload`, so they start without it.
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            for _ in range(workers):  # each submit to a pool without an idle worker spawns one
                pool.submit(os.getpid)
        finally:
            sys.modules["__main__"] = main
    return pool


def bounded_map(
    fn: Callable[[T], R], items: Iterable[T], executor: Executor | None, window: int = 256
) -> Iterator[R]:
    """Like `executor.map` (results in submission order), but at most `window` items in flight.

    With `executor=None` it runs inline, which is what `workers=1` means.
    """
    if executor is None:
        yield from map(fn, items)
        return
    pending: deque = deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        while len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def batched(items: Iterable[T], max_items: int, max_weight: int = 0, size: Callable[[T], int] = lambda _: 0) -> Iterator[list[T]]:
    """Lists of at most `max_items` items, closed early once their `size` adds up to `max_weight`
    (so tasks of large files stay small and the workers stay evenly loaded)."""
    chunk: list[T] = []
    weight = 0
    for item in items:
        chunk.append(item)
        weight += size(item)
        if len(chunk) >= max_items or (max_weight and weight >= max_weight):
            yield chunk
            chunk, weight = [], 0
    if chunk:
        yield chunk


def thread_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="melodee")
