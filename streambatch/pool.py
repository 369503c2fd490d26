"""A small pool of named daemon threads that run read jobs ahead of the consumer.

Invariant: the pool never holds data itself. Jobs write into ring slots the
consumer reserved for them, so read-ahead is bounded by the ring, and results
travel back through ``concurrent.futures.Future`` objects, exceptions included,
to be re-raised in the consumer's thread.

Shutdown cancels first and joins second (a join before cancelling deadlocks
when a job is blocked on slow storage): ``close()`` sets the stop event, fails
every queued job, then joins each thread with a timeout. Jobs run under the
stop event (:func:`~streambatch.sources._retry.stopped_by`), so a job waiting
between retries, or for a request on an asynchronous filesystem, gives up at
once instead of holding ``close()`` for its remaining attempts. Threads are
daemons, so a read stuck in the kernel can never keep the interpreter alive.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from .sources._retry import Stopped, stopped_by

__all__ = ["BackgroundIterator", "ReaderPool", "Stopped"]

_pool_ids = itertools.count()
_JOIN_TIMEOUT_S = 5.0
#: How often a consumer waiting for the next item checks whether it was closed meanwhile.
_STOP_POLL_S = 0.05


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
    def num_threads(self) -> int:
        return len(self._threads)

    @property
    def ended(self) -> bool:
        """Every thread has returned (none can still be running a job)."""
        return not any(thread.is_alive() for thread in self._threads)


def _work(jobs: queue.SimpleQueue[Any], stop: threading.Event) -> None:
    with stopped_by(stop):
        _run_jobs(jobs, stop)


def _run_jobs(jobs: queue.SimpleQueue[Any], stop: threading.Event) -> None:
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
        except BaseException as error:
            future.set_exception(error)
        else:
            future.set_result(result)
        del future, fn, item  # drop references to ring slots before blocking again


class BackgroundIterator:
    """Runs an iterator on a named daemon thread, handing its items over a queue
    of at most ``depth`` ready items, so the consumer's own work (a training
    step) overlaps with producing the next items.

    Items arrive in order; an exception in the producer is re-raised by the
    next ``get()``, after which ``get()`` raises ``StopIteration``. ``close()``
    stops the producer within a bounded time and is idempotent; called from
    another thread while a ``get()`` waits, that ``get()`` raises
    ``StopIteration`` within ``_STOP_POLL_S`` (the stopped producer puts nothing more).
    """

    def __init__(self, items: Iterator[Any], depth: int, stop: threading.Event, name: str) -> None:
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(1, depth))
        self._stop = stop
        self._done = False
        self._thread = threading.Thread(
            target=_produce_until_stopped, args=(items, self._queue, stop), name=name, daemon=True
        )
        self._thread.start()

    def __iter__(self) -> BackgroundIterator:
        return self

    def __next__(self) -> Any:
        return self.get()

    def get(self) -> Any:
        if self._done:
            raise StopIteration
        while True:
            try:
                kind, value = self._queue.get(timeout=_STOP_POLL_S)
                break
            except queue.Empty:
                if self._stop.is_set():  # closed or stopped while we waited: nothing more will come
                    self._done = True
                    raise StopIteration from None
        if kind == "item":
            return value
        self._done = True
        if kind == "error":
            raise value
        raise StopIteration

    @property
    def ended(self) -> bool:
        """The producer thread has returned."""
        return not self._thread.is_alive()

    def request_stop(self) -> None:
        """Ask the producer to stop at its next wait, without joining it."""
        self._stop.set()

    def close(self, timeout: float = _JOIN_TIMEOUT_S) -> None:
        self._done = True
        self._stop.set()
        while True:  # unblock a producer waiting to put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


def _produce_until_stopped(items: Iterator[Any], out: queue.Queue[tuple[str, Any]], stop: threading.Event) -> None:
    with stopped_by(stop):  # reads the producer makes itself (direct .npy rows) stop with it
        _produce(items, out, stop)


def _produce(items: Iterator[Any], out: queue.Queue[tuple[str, Any]], stop: threading.Event) -> None:
    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    try:
        for item in items:
            if not put(("item", item)):
                return
        put(("end", None))
    except Stopped:
        return
    except BaseException as error:
        if not stop.is_set():
            put(("error", error))
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
