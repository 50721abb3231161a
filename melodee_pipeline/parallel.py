"""Bounded parallel map: streams results without queueing the whole input (flat memory at 100k files)."""

from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def process_pool(workers: int, preload: list[str]) -> ProcessPoolExecutor:
    # forkserver, not fork: the parent (a Dagster run) has threads, and fork with threads can deadlock.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preload)
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx)


def bounded_map(
    fn: Callable[[T], R], items: Iterable[T], executor: Executor | None, window: int = 256
) -> Iterator[R]:
    """Like `executor.map` in completion order, but at most `window` items in flight.

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


def thread_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="melodee")
