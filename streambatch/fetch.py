"""Read units (Parquet row groups, Zarr chunks) fetched apart from their decodes.

A remote unit is read in two steps: its bytes are fetched (requests, latency),
then decoded (CPU) in one of the budget's decode slots. Holding a slot for the
fetch let only a few requests be in flight whatever the thread count, so with
object-storage latency the rate followed requests per decode slot. Here:

* the read job of an admitted piece fetches its unit outside the decode slots
  (several units of one job in one batched request), then decodes it in one;
* the units of the pieces *after* the admitted ones (in plan order, so in the
  order they will be needed) are fetched ahead by pool jobs of their own, as
  far as the decode scratch and the fetch-ahead share allow: their read jobs
  then find the bytes in memory. The ring bounds how many pieces are admitted; fetching ahead is
  bounded by bytes instead, so latency is hidden even when the ring has room
  for only a few pieces beyond the shuffle window.

Memory: the budget's decode scratch plus its fetch-ahead share
(``Budget.scratch_bytes + Budget.fetch_bytes``, the *limit*; the share is 0
unless a shard fetches its units). Nothing here changes the plan: the order of
the rows is the same at any latency and thread count. ``held`` counts the fetched bytes
of each unit until its decode ends, plus ``unit_nbytes`` (its decoded rows)
per decode running, or ``2 * unit_nbytes`` for a unit decoded straight from a
local file (compressed pages and decoded rows, what the scratch is sized for).
Invariants: at most ``decode_slots`` decodes at once, and ``held <=
limit``, except that a unit the scratch cannot hold is read alone,
and that an admitted piece never waits for bytes fetched ahead for later
pieces (they cannot be decoded before it: waiting would deadlock), which can
pass the limit by one unit. A fetch, ahead or not, leaves room for a decode;
fetch-ahead jobs run on at most half the pool's threads.

Faults: a failed fetch-ahead job keeps its error, and the read job of that
piece raises it, so the consumer sees the same error, at the same place in
the order, as if the read job had fetched itself. Every wait gives up with
``Stopped`` once the consumer has gone or the pool stops.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

import numpy as np

from .pool import ReaderPool, Stopped
from .sources._retry import check_stopped

if TYPE_CHECKING:
    from .budget import Budget
    from .plan import EpochPlan
    from .sources import Dataset, Shard
    from .sources._handles import ReaderCache

__all__ = ["UnitReads", "fetches_ahead"]

#: Pieces fetched ahead of the admitted ones at most (bookkeeping for tiny units).
_MAX_AHEAD_PIECES = 1024


class _Ahead:
    """A unit fetched ahead: its job's future and the bytes reserved for it."""

    __slots__ = ("future", "nbytes")

    def __init__(self, nbytes: int) -> None:
        self.future: Future[Any] | None = None
        self.nbytes = nbytes


def fetches_ahead(shard: Shard) -> bool:
    """Whether the units of ``shard`` are fetched here, ahead of their decodes: read
    whole (it has units) and fetched before they are decoded (remote). The budget
    sets its fetch-ahead share aside for datasets with such shards."""
    return shard.fetches_units and shard.unit_bounds is not None


class UnitReads:
    """Fetches and decodes the units of one plan within the decode scratch (see
    the module docstring). ``ahead`` is called by the consumer as it admits
    pieces, ``read`` by the read jobs, ``close`` when the plan is done.
    Thread-safe."""

    def __init__(
        self,
        plan: EpochPlan,
        dataset: Dataset,
        cache: ReaderCache,
        pool: ReaderPool,
        budget: Budget,
        stop: threading.Event,
    ) -> None:
        self._plan = plan
        self._cache = cache
        self._pool = pool
        self._stop = stop
        self._slots = max(1, budget.decode_slots(pool.num_threads))
        self._limit = max(0, int(budget.scratch_bytes + budget.fetch_bytes))
        self._decoded = max(0, int(budget.unit_nbytes))
        self._row_nbytes = max(1, int(budget.row_nbytes))
        self._held = 0
        #: the most ``held`` has been (for tests and diagnostics)
        self.peak_held = 0
        self._held_ahead = 0  # of ``_held``: units fetched ahead, not yet taken by their read job
        self._running = 0
        self._decodes_waiting = 0
        self._room = threading.Condition()
        self._closed = False
        # pieces whose unit can be fetched ahead: read whole (not a stream slice), of a shard that fetches
        fetching = np.array([fetches_ahead(s) for s in dataset.shards] or [False], dtype=bool)
        self._fetchable = (plan.stream < 0) & fetching[plan.shard] if fetching.any() else None
        self._frontier = 0
        self._ahead: dict[int, _Ahead] = {}
        self._jobs_ahead = 0  # fetch-ahead jobs queued or running
        # at most half the pool fetches ahead: the read jobs the consumer waits for are not queued behind them
        self._max_jobs_ahead = pool.num_threads // 2

    # ------------------------------------------------------------ fetch ahead
    def ahead(self, first: int, end: int) -> None:
        """Fetch ahead the units of pieces ``first`` (the next piece to admit) to
        ``end`` (exclusive), in order, as far as the limit allows, with fetch-ahead
        jobs on at most half the pool's threads at a time."""
        fetchable = self._fetchable
        if fetchable is None:
            return
        plan = self._plan
        with self._room:
            if self._closed:
                return
            self._frontier = p = max(self._frontier, first)
            last = min(end, first + _MAX_AHEAD_PIECES)
            while p < last and self._jobs_ahead < self._max_jobs_ahead:
                if fetchable[p]:
                    estimate = int(plan.stop[p] - plan.start[p]) * self._row_nbytes
                    if self._held + estimate + self._decoded > self._limit:  # leave room for a decode
                        break
                    entry = _Ahead(estimate)
                    self._ahead[p] = entry
                    self._hold(estimate)
                    self._held_ahead += estimate
                    self._jobs_ahead += 1
                    entry.future = self._pool.submit(functools.partial(self._fetch_ahead, p, entry))
                    entry.future.add_done_callback(self._job_done)
                p += 1
            self._frontier = p

    def _job_done(self, _future: Future[Any]) -> None:
        with self._room:
            self._jobs_ahead -= 1

    def _fetch_ahead(self, piece: int, entry: _Ahead) -> Any:
        """The job body: the unit of ``piece`` fetched (``None``: its reader fetches
        nothing ahead); the reservation follows the size the reader gives."""
        plan = self._plan
        index = int(plan.shard[piece])
        start, stop = int(plan.start[piece]), int(plan.stop[piece])
        reader = self._cache.acquire(index)
        try:
            sizes = reader.fetch_nbytes([start], [stop])
            if sizes is None:
                return None
            self._resize(piece, entry, int(sizes[0]))
            return reader.fetch([start], [stop])[0]
        finally:
            self._cache.release(index)

    def _resize(self, piece: int, entry: _Ahead, nbytes: int) -> None:
        with self._room:
            if self._closed:
                return
            delta, entry.nbytes = nbytes - entry.nbytes, nbytes
            self._hold(delta)
            if self._ahead.get(piece) is entry:  # not taken by its read job yet
                self._held_ahead += delta
            self._room.notify_all()

    def _take(self, piece: int) -> _Ahead | None:
        """The fetch ahead of ``piece``, now the read job's (its bytes no longer
        count as fetched ahead); ``None`` when there was none, or its job had not
        started (cancelled: the read job fetches itself)."""
        with self._room:
            entry = self._ahead.pop(piece, None)
            if entry is None:
                return None
            self._held_ahead -= entry.nbytes
            assert entry.future is not None
            if entry.future.cancel():
                self._held -= entry.nbytes
                self._room.notify_all()
                return None
            return entry

    def _wait(self, entry: _Ahead) -> Any:
        """The result of a fetch-ahead job (its error raised here)."""
        assert entry.future is not None
        while True:
            try:
                return entry.future.result(timeout=0.1)
            except FutureTimeout:
                if entry.future.done():
                    raise  # the fetch itself raised a TimeoutError
                self._check_stopped()
            except CancelledError:
                raise Stopped from None

    def close(self) -> None:
        """Drop what was fetched ahead and not read (the plan is done or abandoned)."""
        with self._room:
            self._closed = True
            entries, self._ahead = list(self._ahead.values()), {}
            for entry in entries:
                assert entry.future is not None
                entry.future.cancel()
                self._held -= entry.nbytes
            self._held_ahead = 0
            self._room.notify_all()

    # ------------------------------------------------------------ read jobs
    def read(self, reader: Any, pieces: list[int], read_one: Callable[[Any, int], None]) -> None:
        """The units of ``pieces`` (of one shard, read by ``reader``), in order:
        ``read_one(source, piece)`` decodes a unit from ``source`` (its fetched
        bytes, or ``reader`` itself) into the ring."""
        plan = self._plan
        starts = [int(plan.start[p]) for p in pieces]
        stops = [int(plan.stop[p]) for p in pieces]
        sizes = reader.fetch_nbytes(starts, stops) if self._fetchable is not None else None
        if sizes is None:  # decoded straight from the file, as without fetching
            with self._decoding(2 * self._decoded, 0):
                for piece in pieces:
                    read_one(reader, piece)
            return
        i = 0
        while i < len(pieces):
            entry = self._take(pieces[i])
            if entry is not None:
                self._decode_fetched(entry, pieces[i], read_one)
                i += 1
                continue
            # the next pieces not fetched ahead: fetched together, as many as the limit allows
            end, total = i + 1, sizes[i]
            while (
                end < len(pieces)
                and pieces[end] not in self._ahead
                and self._held + total + sizes[end] + self._decoded <= self._limit
            ):
                total += sizes[end]
                end += 1
            self._reserve(total)
            held = total
            try:
                units = reader.fetch(starts[i:end], stops[i:end])
                for k in range(end - i):
                    unit, units[k] = units[k], None
                    with self._decoding(self._decoded, sizes[i + k]):
                        held -= sizes[i + k]  # released when the decode ends
                        read_one(unit, pieces[i + k])
                    del unit  # its bytes go before the next unit decodes
            finally:
                self._release(held)
            i = end

    def _decode_fetched(self, entry: _Ahead, piece: int, read_one: Callable[[Any, int], None]) -> None:
        try:
            unit = self._wait(entry)
        except BaseException:
            self._release(entry.nbytes)
            raise
        if unit is None:  # the reader fetches nothing ahead after all: it reads the unit itself
            self._release(entry.nbytes)
            raise RuntimeError(f"internal error: piece {piece} was fetched ahead by a reader that fetches nothing")
        with self._decoding(self._decoded, entry.nbytes):
            read_one(unit, piece)

    def _reserve(self, nbytes: int) -> None:
        """Room for ``nbytes`` fetched for admitted pieces, leaving room for a decode;
        decodes go first. Bytes fetched ahead are not waited for."""
        with self._room:
            while self._held - self._held_ahead and (
                self._decodes_waiting or self._held + nbytes + self._decoded > self._limit
            ):
                self._check_stopped()
                self._room.wait(0.1)
            self._hold(nbytes)

    @contextlib.contextmanager
    def _decoding(self, extra: int, fetched: int) -> Iterator[None]:
        """One decode slot, and ``extra`` bytes for its decoded rows; on leaving, the
        ``fetched`` bytes of the unit (reserved before its fetch) go too."""
        with self._room:
            counted = False  # among the decodes waiting for room (fetches then wait for them)
            try:
                while self._running >= self._slots or (self._running and self._held + extra > self._limit):
                    if counted != (self._running < self._slots):
                        counted = not counted
                        self._decodes_waiting += 1 if counted else -1
                    self._check_stopped()
                    self._room.wait(0.1)
            finally:
                self._decodes_waiting -= counted
            self._running += 1
            self._hold(extra)
        try:
            yield
        finally:
            with self._room:
                self._running -= 1
                self._held -= extra + fetched
                self._room.notify_all()

    def _hold(self, nbytes: int) -> None:
        """``held += nbytes``, the lock held."""
        self._held += nbytes
        self.peak_held = max(self.peak_held, self._held)

    def _release(self, nbytes: int) -> None:
        if nbytes:
            with self._room:
                self._held -= nbytes
                self._room.notify_all()

    def _check_stopped(self) -> None:
        """The consumer has gone (``stop``), or the pool is closing (its stop event)."""
        if self._stop.is_set():
            raise Stopped
        check_stopped()
