"""Reading pieces into the ring: admission in plan order as ring space allows,
jobs in the reader pool, and waiting for the pieces a segment needs.

Invariant: the ring positions of admitted-but-unreleased pieces,
``[offsets[released], offsets[admitted])``, never exceed the ring's capacity,
so a job never overwrites a row that has not been emitted yet.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from .budget import Budget
from .errors import ReaderError, StreambatchError
from .plan import EpochPlan
from .prefetch import ReaderPool, Stopped
from .ring import RowRing
from .sources import Dataset
from .sources._handles import ReaderCache

__all__ = ["PieceReads"]


class PieceReads:
    """Admits pieces into the ring in order (as space allows) and reads them in the pool."""

    def __init__(
        self,
        plan: EpochPlan,
        dataset: Dataset,
        ring: RowRing,
        pool: ReaderPool,
        cache: ReaderCache,
        budget: Budget,
        stop: threading.Event,
    ) -> None:
        self.stop = stop
        self.plan = plan
        self.ring = ring
        self.pool = pool
        self.offsets = plan.offsets.tolist()
        self.jobs: deque[tuple[int, int, Future[None]]] = deque()
        self.released = 0
        self.admitted = 0
        self.loaded = 0
        self.stop_piece = plan.num_pieces
        self.job_end = _job_ends(plan.offsets, budget.job_rows)
        self._read_piece = _piece_reader(plan, dataset, ring, cache, threading.BoundedSemaphore(
            budget.decode_slots(pool.num_threads)))

    def start_at(self, first_live: int, stop_piece: int) -> None:
        """Read from piece ``first_live`` on, and nothing from ``stop_piece`` on."""
        self.released = self.admitted = self.loaded = first_live
        self.stop_piece = stop_piece

    def drain(self) -> None:
        """Wait for every read in flight (their ring slots are about to be reused)."""
        while self.jobs:
            _, _, future = self.jobs.popleft()
            _result(future, self.stop)

    def admit(self) -> None:
        """Submit reads for the next pieces while the ring has room for them."""
        offsets, n = self.offsets, self.stop_piece
        capacity = self.ring.capacity
        while self.admitted < n:
            first = self.admitted
            end = min(self.job_end[first], n)
            if offsets[end] - offsets[self.released] > capacity:
                return
            self.jobs.append((first, end, self.pool.submit(functools.partial(self._read_piece, first, end))))
            self.admitted = end

    def wait_loaded(self, upto: int) -> None:
        """Block until pieces ``< upto`` are in the ring; re-raise a reader's error here."""
        while self.loaded < upto:
            if not self.jobs:
                self.admit()
                if not self.jobs:
                    raise RuntimeError(
                        f"internal error: piece {self.loaded} cannot be admitted "
                        f"(ring of {self.ring.capacity} rows full); please report this"
                    )
            _, end, future = self.jobs.popleft()
            _result(future, self.stop)
            self.loaded = end

    def release(self, first_live: int) -> None:
        self.released = max(self.released, first_live)


def _result(future: Future[None], stop: threading.Event) -> None:
    """``future.result()``, giving up when the consumer has gone away."""
    while True:
        try:
            return future.result(timeout=0.1)
        except FutureTimeout:
            if future.done():
                raise  # the read itself raised a TimeoutError (e.g. ReaderTimeoutError)
            if stop.is_set():
                raise Stopped from None
        except CancelledError:
            raise Stopped from None


def _job_ends(offsets: np.ndarray, job_rows: int) -> list[int]:
    """For each piece, where a job starting there ends: as many pieces as fit in
    ``job_rows`` rows, at least one."""
    n = offsets.size - 1
    ends = np.searchsorted(offsets, offsets[:-1] + job_rows, side="right") - 1
    return np.clip(np.maximum(ends, np.arange(1, n + 1)), 0, n).tolist()


def _piece_reader(
    plan: EpochPlan, dataset: Dataset, ring: RowRing, cache: ReaderCache, decode: threading.BoundedSemaphore
) -> Callable[[int, int], None]:
    """The job body run in pool threads: read pieces ``[a, b)`` into their ring slots.

    Consecutive pieces of one shard form a run whose ring slots are contiguous
    (split where the ring wraps), read with one ``read_many`` call."""
    shards = dataset.shards

    def read(first: int, end: int) -> None:
        k = first
        while k < end:
            index = int(plan.shard[k])
            run_end = k + 1
            while run_end < end and plan.shard[run_end] == index:
                run_end += 1
            shard = shards[index]
            try:
                reader = cache.acquire(index)
                try:
                    if shard.unit_bounds is None:
                        _read_run(reader, ring, plan, k, run_end)
                    else:
                        with decode:
                            for piece in range(k, run_end):
                                _read_unit(reader, ring, plan, piece)
                finally:
                    cache.release(index)
            except StreambatchError:
                raise
            except Exception as error:
                where = shard.describe_rows(int(plan.start[k]), int(plan.stop[run_end - 1]))
                raise ReaderError(f"reading {where} failed: {error!r}") from error
            k = run_end

    return read


def _read_run(reader: Any, ring: RowRing, plan: EpochPlan, first: int, end: int) -> None:
    """Pieces ``[first, end)`` of one random-access shard, gathered run by run."""
    starts, stops = plan.start[first:end], plan.stop[first:end]
    lo = int(plan.offsets[first])
    runs = ring.spans(lo, int(plan.offsets[end]))
    if len(runs) == 2:  # split the pieces at the ring's end
        cut = runs[0][2]
        ends = np.cumsum(stops - starts)
        k = int(np.searchsorted(ends, cut, side="left"))
        before = cut - (int(ends[k - 1]) if k else 0)
        s1, e1 = starts[: k + 1].copy(), stops[: k + 1].copy()
        e1[-1] = s1[-1] + before
        s2, e2 = starts[k:].copy(), stops[k:].copy()
        s2[0] = s2[0] + before
        if e1[-1] == s1[-1]:
            s1, e1 = s1[:-1], e1[:-1]
        parts = [(s1, e1), (s2, e2)]
    else:
        parts = [(starts, stops)]
    for (slot, _, length), (s, e) in zip(runs, parts):
        reader.read_many(s, e, ring.views(slot, length))


def _read_unit(reader: Any, ring: RowRing, plan: EpochPlan, piece: int) -> None:
    start, stop = int(plan.start[piece]), int(plan.stop[piece])
    runs = ring.spans(int(plan.offsets[piece]), int(plan.offsets[piece + 1]))
    if len(runs) == 1:
        slot, _, length = runs[0]
        reader.read_into(start, stop, ring.views(slot, length))
        return
    # a unit that wraps around the ring: decode once into scratch, copy both parts
    scratch = {name: np.empty((stop - start, *a.shape[1:]), a.dtype) for name, a in ring.arrays.items()}
    reader.read_into(start, stop, scratch)
    for slot, offset, length in runs:
        for name, view in ring.views(slot, length).items():
            view[...] = scratch[name][offset : offset + length]
