"""A small pool of named daemon threads that run read jobs ahead of the consumer.

Invariant: the pool never holds data itself. Jobs write into ring slots the
consumer reserved for them, so read-ahead is bounded by the ring, and results
travel back through ``concurrent.futures.Future`` objects, exceptions included,
to be re-raised in the consumer's thread.

Shutdown cancels first and joins second (a join before cancelling deadlocks
when a job is blocked on slow storage): ``close()`` sets the stop event, fails
every queued job, then joins each thread with a timeout. Threads are daemons,
so a read stuck in the kernel can never keep the interpreter alive.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["ReaderPool"]

_pool_ids = itertools.count()
_JOIN_TIMEOUT_S = 5.0


class ReaderPool:
    """``num_threads`` threads named ``streambatch-reader-<pool>-<k>``."""

    def __init__(self, num_threads: int) -> None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        pool_id = next(_pool_ids)
        self._threads = [
            threading.Thread(
                target=_work, args=(self._jobs, self._stop), name=f"streambatch-reader-{pool_id}-{k}", daemon=True
            )
            for k in range(num_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Queue ``fn``; its result or exception arrives in the returned future."""
        future: Future[Any] = Future()
        if self._stop.is_set():
            future.cancel()
            return future
        self._jobs.put((future, fn))
        return future

    def close(self, timeout: float = _JOIN_TIMEOUT_S) -> None:
        """Stop the threads; idempotent, and safe to call from a finalizer."""
        if self._stop.is_set():
            return
        self._stop.set()
        for _ in self._threads:
            self._jobs.put(None)
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(timeout)
        while True:  # fail whatever was still queued, so no waiter blocks forever
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()


def _work(jobs: queue.SimpleQueue[Any], stop: threading.Event) -> None:
    while True:
        item = jobs.get()
        if item is None:
            return
        future, fn = item
        if stop.is_set():
            future.cancel()
            continue
        if not future.set_running_or_notify_cancel():
            continue
        try:
            result = fn()
        except BaseException as error:  # noqa: BLE001 - everything travels to the consumer
            future.set_exception(error)
        else:
            future.set_result(result)
        del future, fn, item  # drop references to ring slots before blocking again
