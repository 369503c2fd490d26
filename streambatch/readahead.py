"""Read-ahead bounded by the ring: pieces admitted in plan order as ring space allows,
jobs in the reader pool, and waiting for the pieces a segment needs.

Invariant: the ring positions of admitted-but-unreleased pieces,
``[offsets[released], offsets[admitted])``, never exceed the ring's capacity,
so a job never overwrites a row that has not been emitted yet.

Streamed units (slices of one Parquet row group, see ``plan.stream``) are read
through one open :class:`~streambatch.sources.RowStream` each, slice after
slice. Jobs run in any order on any thread, so a slice waits until the slice
before it in its stream has been read; that never deadlocks, because jobs are
taken from the pool's queue in plan order and a slice's predecessor is in the
same job or an earlier one, which is running or done.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from .budget import Budget
from .errors import ReaderError, StreambatchError
from .fetch import UnitReads
from .plain_reads import PlainRowReads
from .plan import EpochPlan
from .pool import ReaderPool, Stopped
from .ring import RowRing
from .sources import Dataset, RowStream
from .sources._handles import ReaderCache

__all__ = ["PieceReads"]

#: Read jobs queued ahead at most: enough to keep every thread busy, few enough that
#: admitting a whole dataset that fits does not queue thousands of jobs before the
#: first batch (admission continues as jobs complete).
_MAX_JOBS_AHEAD = 64


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
        self.jobs: deque[tuple[int, int, list[Future[None]]]] = deque()
        self.released = 0
        self.admitted = 0
        self.loaded = 0
        self.stop_piece = plan.num_pieces
        self.job_end = _job_ends(plan.offsets, budget.job_rows)
        self.streams = _Streams(plan, dataset, cache, stop)
        self.units = UnitReads(plan, dataset, cache, pool, budget, stop)
        self._read_piece = _piece_reader(plan, dataset, ring, cache, self.streams, self.units, pool.num_threads)

    def start_at(self, first_live: int, stop_piece: int) -> None:
        """Read from piece ``first_live`` on, and nothing from ``stop_piece`` on."""
        self.released = self.admitted = self.loaded = first_live
        self.stop_piece = stop_piece
        self.streams.start_at(first_live, stop_piece)

    def drain(self) -> None:
        """Wait for every read in flight (their ring slots are about to be reused),
        then close the streams still open."""
        try:
            while self.jobs:
                _, _, futures = self.jobs.popleft()
                for future in futures:
                    _result(future, self.stop)
        finally:
            self.streams.close()
            self.units.close()  # units fetched ahead and not read
            self.ring.clear()  # the rows of this plan are emitted or abandoned

    def admit(self, need: int = 0) -> None:
        """Submit reads for the next pieces while the ring has room for them: rows
        (always) and, with variable-length columns, bytes: the values held plus
        the estimate for the rows admitted but not loaded must stay within the
        ring's ``arena_bytes``, except for pieces ``< need`` (the segment being
        emitted needs them; without them it could never proceed)."""
        offsets, n = self.offsets, self.stop_piece
        self.units.ahead(self.admitted, n)  # units after the admitted ones, fetched ahead as memory allows
        ring = self.ring
        capacity = ring.capacity
        while self.admitted < n and len(self.jobs) < _MAX_JOBS_AHEAD:
            first = self.admitted
            end = min(self.job_end[first], n)
            if offsets[end] - offsets[self.released] > capacity:
                return
            if ring.variable and first >= need:
                pending = (offsets[end] - offsets[self.loaded]) * ring.variable_row_nbytes
                if ring.variable_nbytes + pending > ring.arena_bytes:
                    return
            if self.plan.streamed:
                jobs = _split_by_stream(self.plan.stream, first, end)
            else:  # one job of consecutive pieces
                jobs = [np.arange(first, end, dtype=np.int64)]
            futures = [self.pool.submit(functools.partial(self._read_piece, pieces)) for pieces in jobs]
            self.jobs.append((first, end, futures))
            self.admitted = end

    def wait_loaded(self, upto: int, emitted: Callable[[], int] | None = None) -> None:
        """Block until pieces ``< upto`` are in the ring; re-raise a reader's error here.

        When the ring is too full to admit them, ``emitted()`` says below which
        piece every row has been emitted (exactly, where the releases after each
        batch group are conservative): a ring that holds one read unit reads the
        next one once the last row of the first is out."""
        while self.loaded < upto:
            if not self.jobs:
                self.admit(upto)
                if not self.jobs and emitted is not None:
                    self.release(emitted())
                    self.admit(upto)
                if not self.jobs:
                    raise RuntimeError(
                        f"internal error: piece {self.loaded} cannot be admitted "
                        f"(ring of {self.ring.capacity} rows full); please report this"
                    )
            _, end, futures = self.jobs.popleft()
            self.admit(upto)  # keep the pool fed while we wait
            for future in futures:
                _result(future, self.stop)
            self.loaded = end

    def release(self, first_live: int) -> None:
        """Pieces before ``first_live`` are emitted: their slots may be reused.

        Only loaded ones are freed: a piece whose rows were all read directly
        (the first batch of a resume) may still have its read in flight, and a
        piece admitted into its slots would then be overwritten by it."""
        first_live = min(first_live, self.loaded)
        if first_live > self.released:
            self.ring.release(self.offsets[self.released], self.offsets[first_live])
            self.released = first_live


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


def _split_by_stream(stream: np.ndarray, first: int, end: int) -> list[np.ndarray]:
    """Pieces ``[first, end)`` as independent jobs: the pieces read on their own,
    then the slices of each stream (in order). Slices of different streams
    interleave in the plan; grouping them lets the pool read streams in parallel
    instead of each job waiting on the slices of the job before it."""
    ids = stream[first:end]
    pieces = np.arange(first, end, dtype=np.int64)
    if not (ids >= 0).any():
        return [pieces]
    order = np.argsort(ids, kind="stable")
    ids, pieces = ids[order], pieces[order]
    cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
    return np.split(pieces, cuts)


def _job_ends(offsets: np.ndarray, job_rows: int) -> list[int]:
    """For each piece, where a job starting there ends: as many pieces as fit in
    ``job_rows`` rows, at least one."""
    n = offsets.size - 1
    ends = np.searchsorted(offsets, offsets[:-1] + job_rows, side="right") - 1
    return np.clip(np.maximum(ends, np.arange(1, n + 1)), 0, n).tolist()


class _Streams:
    """The open streams of one plan, by stream id: opened at their first slice read,
    closed after their last one (or by ``close``). Thread-safe."""

    def __init__(self, plan: EpochPlan, dataset: Dataset, cache: ReaderCache, stop: threading.Event) -> None:
        self._plan = plan
        self._dataset = dataset
        self._cache = cache
        self._stop = stop
        self._lock = threading.Condition()
        self._open: dict[int, RowStream] = {}
        self._next_row: dict[int, int] = {}  # stream -> start row of the slice to read next
        self._last_row: dict[int, int] = {}  # stream -> stop row of its last slice to read
        self._failed: set[int] = set()  # streams whose read raised: their later slices are never read
        self._closed = False

    def start_at(self, first: int, end: int) -> None:
        """Slices ``[first, end)`` of the plan are to be read."""
        ids = self._plan.stream[first:end]
        streamed = np.flatnonzero(ids >= 0)
        if not streamed.size:
            return
        ids = ids[streamed]
        unique, head = np.unique(ids, return_index=True)
        _, tail = np.unique(ids[::-1], return_index=True)
        tail = ids.size - 1 - tail
        starts = self._plan.start[first + streamed[head]].tolist()
        stops = self._plan.stop[first + streamed[tail]].tolist()
        with self._lock:
            self._next_row = dict(zip(unique.tolist(), starts))
            self._last_row = dict(zip(unique.tolist(), stops))

    def read(self, piece: int, out: Mapping[str, np.ndarray]) -> None:
        """Piece ``piece`` (a slice of its stream) into ``out``, after the slice before it."""
        stream_id = int(self._plan.stream[piece])
        start, stop = int(self._plan.start[piece]), int(self._plan.stop[piece])
        with self._lock:
            while self._next_row.get(stream_id) != start:
                # a slice before this one failed (its error reaches the consumer), or the consumer has gone
                if self._closed or self._stop.is_set() or stream_id in self._failed:
                    raise Stopped
                if self._next_row.get(stream_id, start) > start:
                    raise RuntimeError(f"internal error: slice {piece} of stream {stream_id} read twice")
                self._lock.wait(0.1)
            stream = self._open.get(stream_id)
        try:
            if stream is None:
                stream = self._new_stream(piece, start, self._last_row[stream_id])
            stream.read_into(start, stop, out)
        except BaseException:
            self._discard(stream_id)
            raise
        with self._lock:
            self._next_row[stream_id] = stop
            # after its last slice the stream is done: close it outside the lock
            finished = self._open.pop(stream_id, None) if stop >= self._last_row[stream_id] else None
            self._lock.notify_all()
        if finished is not None:
            finished.close()

    def _new_stream(self, piece: int, start: int, stop: int) -> RowStream:
        index = int(self._plan.shard[piece])
        reader = self._cache.acquire(index)
        try:
            stream = reader.open_stream(start, stop, int(self._plan.stop[piece] - start))
        finally:
            self._cache.release(index)
        with self._lock:
            if self._closed:
                stream.close()
                raise Stopped
            self._open[int(self._plan.stream[piece])] = stream
        return stream

    def _discard(self, stream_id: int) -> None:
        with self._lock:
            stream = self._open.pop(stream_id, None)
            self._failed.add(stream_id)
            self._lock.notify_all()
        if stream is not None:
            stream.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            streams, self._open = list(self._open.values()), {}
            self._lock.notify_all()
        for stream in streams:
            stream.close()


def _piece_reader(
    plan: EpochPlan,
    dataset: Dataset,
    ring: RowRing,
    cache: ReaderCache,
    streams: _Streams,
    units: UnitReads,
    num_threads: int,
) -> Callable[[np.ndarray], None]:
    """The job body run in pool threads: read ``pieces`` (increasing indices, as
    :func:`_split_by_stream` groups them) into their ring slots.

    A streamed piece is read through its stream. Other pieces of shards that
    store plain rows (local ``.npy``) are read all at once, whatever their
    shards (:class:`~streambatch.plain_reads.PlainRowReads`); otherwise
    consecutive pieces of one shard form a run whose ring slots are contiguous
    (split where the ring wraps), read with one ``read_many`` call."""
    shards = dataset.shards
    plain = PlainRowReads(plan, dataset, ring, cache, cache.max_open // max(1, num_threads)) if ring.fixed else None

    def failed(first: int, last: int, error: Exception, more: str = "") -> ReaderError:
        """A read of pieces ``first`` to ``last`` (rows of one shard) that raised, named."""
        where = shards[int(plan.shard[first])].describe_rows(int(plan.start[first]), int(plan.stop[last]))
        return ReaderError(f"reading {where}{more} failed: {error!r}")

    def read(pieces: np.ndarray) -> None:
        if plan.stream[pieces[0]] >= 0:  # one stream's slices, in order
            for k in pieces.tolist():
                try:
                    _read_streamed(streams, ring, plan, k)
                except (StreambatchError, Stopped):
                    raise
                except Exception as error:
                    raise failed(k, k, error) from error
            return
        if plain is not None:
            try:
                if plain.read(pieces):
                    return
            except (StreambatchError, Stopped):
                raise
            except Exception as error:
                k = int(pieces[0])
                raise failed(k, k, error, f" and {pieces.size - 1} more pieces" if pieces.size > 1 else "") from error
        # pieces read on their own: runs of consecutive pieces of one shard
        breaks = np.flatnonzero((np.diff(pieces) != 1) | (np.diff(plan.shard[pieces]) != 0)) + 1
        for run in np.split(pieces, breaks) if breaks.size else (pieces,):
            k, run_end = int(run[0]), int(run[-1]) + 1
            index = int(plan.shard[k])
            shard = shards[index]
            try:
                reader = cache.acquire(index)
                try:
                    if shard.unit_bounds is None:
                        _read_run(reader, ring, plan, k, run_end)
                    else:  # fetched outside the decode slots, decoded inside them
                        units.read(
                            reader, list(range(k, run_end)), lambda source, piece: _read_unit(source, ring, plan, piece)
                        )
                finally:
                    cache.release(index)
            except StreambatchError:
                raise
            except Exception as error:
                raise failed(k, run_end - 1, error) from error

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


def _read_streamed(streams: _Streams, ring: RowRing, plan: EpochPlan, piece: int) -> None:
    runs = ring.spans(int(plan.offsets[piece]), int(plan.offsets[piece + 1]))
    if len(runs) == 1:
        slot, _, length = runs[0]
        streams.read(piece, ring.views(slot, length))
        return
    rows = int(plan.stop[piece] - plan.start[piece])
    scratch = ring.scratch(rows)
    streams.read(piece, {name: storage.view(0, rows) for name, storage in scratch.items()})
    for slot, offset, length in runs:
        ring.put(slot, scratch, offset, length)


def _read_unit(reader: Any, ring: RowRing, plan: EpochPlan, piece: int) -> None:
    start, stop = int(plan.start[piece]), int(plan.stop[piece])
    runs = ring.spans(int(plan.offsets[piece]), int(plan.offsets[piece + 1]))
    if len(runs) == 1:
        slot, _, length = runs[0]
        reader.read_into(start, stop, ring.views(slot, length))
        return
    # a unit that wraps around the ring: decode once into scratch, copy both parts
    scratch = ring.scratch(stop - start)
    reader.read_into(start, stop, {name: storage.view(0, stop - start) for name, storage in scratch.items()})
    for slot, offset, length in runs:
        ring.put(slot, scratch, offset, length)
