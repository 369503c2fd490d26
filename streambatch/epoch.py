"""One pass over one epoch: the ``EpochIterator`` and the producer that feeds it.

The producer runs the stages in order on a batcher thread: plan (the stream
slices of this epoch and rank) -> window shuffle (row order, computed on
positions, a segment or two ahead on an order thread of its own) -> read-ahead
(``readahead``: pieces read into ring slots by the thread ``pool``) -> batching
(gathers ring rows into fixed-size batches), handing batches over a queue of
``budget.READY_GROUPS`` groups.

The iterator is the consumer side. It owns the threads, the ring and the open
files, and releases them when the epoch ends, on ``close()``, when the loop is
left early or when it is garbage collected; and it owns its position, an
``EpochCursor`` the loader reads (never the other way round: nothing here calls
the loader back, and nothing the loader holds keeps an iterator's threads alive).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .batching import BatchFiller, batch_sizes
from .budget import READY_GROUPS, Budget
from .plan import EpochPlan
from .pool import BackgroundIterator, ReaderPool
from .readahead import PieceReads
from .resume import advance
from .ring import RowRing, SpareRing
from .shuffle import Segment, WindowShuffle
from .sources import Dataset
from .sources._handles import ReaderCache

if TYPE_CHECKING:
    from .loader import Loader

__all__ = ["Batch", "EpochCursor", "EpochIterator"]

#: column -> a numpy array, a ``Ragged`` (variable-length lists) or, with ``pad=``, padded arrays
Batch = dict[str, Any]

#: rows ``[lo, hi)`` of a plan's emission stream (see :mod:`streambatch.resume`)
Stream = tuple[EpochPlan, int, int]


#: bumped in a forked child, whose copies of live iterators have no threads
_forks_seen = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _forks_seen.__setitem__(0, _forks_seen[0] + 1))


class EpochCursor:
    """Where one iterator's consumer is: ``epoch``, the epoch's ``history``
    ``((world_size, batches), ...)`` as the iterator started (oldest first, the
    last entry the current world), the batches delivered in the current world,
    and whether the epoch ran to its end.

    The iterator that owns it is its only writer, once per batch, from the
    consumer's thread. The loader holds its newest iterator's cursor and reads
    it (``state_dict()``, ``len()``, ``epoch``, the next ``iter()``); the cursor
    references neither, so holding it keeps no iterator, thread or buffer alive
    once the iterator is dropped, and the position it reached stays readable.
    """

    __slots__ = ("batches_delivered", "epoch", "finished", "history")

    def __init__(self, epoch: int, history: Sequence[tuple[int, int]]) -> None:
        self.epoch = int(epoch)
        self.history: tuple[tuple[int, int], ...] = tuple((int(w), int(b)) for w, b in history)
        self.batches_delivered = self.history[-1][1]
        self.finished = False

    def position(self) -> tuple[int, list[tuple[int, int]]]:
        """``(epoch, history)`` the consumer has reached; once the epoch is
        finished, the next epoch from its beginning, in the current world."""
        world = self.history[-1][0]
        if self.finished:
            return self.epoch + 1, [(world, 0)]
        return self.epoch, [*self.history[:-1], (world, self.batches_delivered)]


def _max_open_readers(dataset: Dataset, num_threads: int) -> int:
    """Open shard readers to keep, so that their file descriptors (one per column
    for ``.npy``, one per thread for Parquet) stay well inside ``RLIMIT_NOFILE``."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 64
    if soft == resource.RLIM_INFINITY:
        return 64
    per_reader = max(len(dataset.columns), num_threads, 1)
    return max(1, min(64, (soft // 2) // per_reader))


class _Resources:
    """What an iterator must release; referenced by its finalizer, never the
    iterator itself (so garbage collection can reach the iterator)."""

    def __init__(self, pool: ReaderPool, cache: ReaderCache, ring: RowRing, spare: SpareRing) -> None:
        self.pool = pool
        self.cache = cache
        self.ring = ring
        self.spare = spare
        self.batches: BackgroundIterator | None = None

    def close(self) -> None:
        if self.batches is not None:
            self.batches.request_stop()
        self.pool.close()
        if self.batches is not None:
            self.batches.close()
        self.cache.close()
        # the ring goes to the loader's next iterator, unless a thread may still write it
        # (a read blocked past the join timeout)
        if self.pool.ended and (self.batches is None or self.batches.ended):
            self.spare.keep(self.ring)


def _streams(loader: Loader, cursor: EpochCursor) -> tuple[list[Stream], Iterator[int]]:
    """What is left of the epoch at ``cursor``: the stream slices this rank
    still emits, and the sizes of the batches they make."""
    history = list(cursor.history)
    start_batch = cursor.batches_delivered
    base_world = history[0][0]
    slices = loader._slices(history)
    total = sum(s.rows for s in slices)
    remaining = advance(slices, start_batch * loader.batch_size)
    plans = {r: loader.plan(cursor.epoch, rank=r, world_size=base_world) for r in {s.rank for s in remaining}}
    streams = [(plans[s.rank], s.lo, s.hi) for s in remaining]
    return streams, batch_sizes(total, loader.batch_size, loader.drop_last, start_batch)


class EpochIterator(Iterator[Batch]):
    """One pass over one epoch; owns the reader threads, the ring and open files,
    and its position (an :class:`EpochCursor`: the batches its consumer has received).

    Made by ``iter(loader)``, which keeps no reference to the iterator that would
    keep it alive: dropped without ``close()``, its threads stop when it is
    collected. In a forked child, ``next()`` raises ``RuntimeError``."""

    def __init__(self, loader: Loader, cursor: EpochCursor) -> None:
        self._cursor = cursor
        self._forks = _forks_seen[0]
        self._stopped = False
        self._ready: deque[Batch] = deque()
        self._pad = loader.pad
        streams, sizes = _streams(loader, cursor)
        budget = loader.budget
        dataset = loader.dataset
        ring = loader._spare_ring.take(budget.column_kinds(dataset), budget.ring_rows, budget.arena_bytes)
        pool = ReaderPool(loader.num_threads)
        try:
            cache = ReaderCache(
                dataset, max_open=_max_open_readers(dataset, loader.num_threads), resident=budget.resident_columns
            )
        except BaseException:
            pool.close()  # no finalizer owns the pool's threads yet
            raise
        self._resources = _Resources(pool, cache, ring, loader._spare_ring)
        self._finalizer = weakref.finalize(self, self._resources.close)
        filler = BatchFiller(ring, sizes, contiguous=not loader.shuffle)
        stop = threading.Event()
        producer = _EpochProducer(dataset, ring, pool, cache, budget, filler, stop, loader.batch_size)
        name = f"streambatch-batcher-{id(self):x}"
        self._batches = BackgroundIterator(producer.produce(streams), READY_GROUPS, stop, name)
        self._resources.batches = self._batches

    @property
    def epoch(self) -> int:
        """The epoch this iterator produces."""
        return self._cursor.epoch

    @property
    def batches_delivered(self) -> int:
        """Batches of the current world's share received so far (those delivered
        before a resume included)."""
        return self._cursor.batches_delivered

    def __next__(self) -> Batch:
        if self._stopped:
            raise StopIteration  # closed, failed or finished: only a normal end counts
        if _forks_seen[0] != self._forks:  # checked per batch: cheaper than os.getpid()
            raise RuntimeError("this iterator was created in another process (fork); call iter(loader) in this process")
        try:
            if not self._ready:
                self._ready.extend(self._batches.get())
            batch = self._ready.popleft()
            if self._pad:
                batch = _padded(batch, self._pad)
        except StopIteration:
            closed_meanwhile = self._stopped  # by close() on another thread: not a normal end
            self.close()
            if not closed_meanwhile:
                self._cursor.finished = True
            raise
        except BaseException:
            self.close()
            raise
        self._cursor.batches_delivered += 1
        return batch

    def close(self) -> None:
        """Stop the threads, close files, free the ring; idempotent. ``next()`` then
        raises ``StopIteration`` and the epoch is not counted as finished."""
        self._stopped = True
        self._finalizer()

    def __enter__(self) -> EpochIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(eq=False)
class _EpochProducer:
    """The producer side, run on the batcher thread: for each stream slice
    ``(plan, lo, hi)``, the segments of its window shuffle from row ``lo`` to
    ``hi``, gathered into batches that run across slice boundaries, handed over
    in groups (never held back across a wait for reads, so the first batch is
    not delayed).

    Resuming mid-stream, every live piece holds rows of the very next batch, so
    the whole window must be read before the ring can serve it. When every shard
    is random access (``.npy``), the first batch is instead read row by row,
    straight from the files, while the window loads in the pool."""

    dataset: Dataset
    ring: RowRing
    pool: ReaderPool
    cache: ReaderCache
    budget: Budget
    filler: BatchFiller
    stop: threading.Event
    batch_size: int
    #: batches in the next group handed over (doubles from 1 up to ``budget.batch_group``)
    _group_target: int = field(default=1, init=False)

    def produce(self, streams: list[Stream]) -> Iterator[list[Batch]]:
        """Every batch group of ``streams``, in order; the pool is closed when the
        generator ends or is closed."""
        try:
            for plan, lo, hi in streams:
                if self.filler.finished:
                    return
                yield from self._stream(plan, lo, hi)
        finally:
            self.pool.close()

    def _stream(self, plan: EpochPlan, lo: int, hi: int) -> Iterator[list[Batch]]:
        """The batch groups of rows ``[lo, hi)`` of ``plan``'s stream, segment by
        segment; each segment's pieces are released once its rows are out."""
        shuffle = WindowShuffle(plan, self.budget.max_segment_ticks)
        # the first group is one batch: a full group of the first batches would wait
        # for the pieces of all of them (streamed slices load a few rows per tick, so
        # 8 batches need ~3x the reads of one), and the consumer waits for the group
        self._group_target = self.filler.group_batches = 1
        reads = PieceReads(plan, self.dataset, self.ring, self.pool, self.cache, self.budget, self.stop)
        tick, skip = shuffle.locate(lo)
        stop_piece = plan.pieces_needed(shuffle.locate(hi)[0] + 1) if hi < plan.num_rows else plan.num_pieces
        reads.start_at(shuffle.first_live_piece(tick), stop_piece)
        left = hi - lo
        # rows still to read directly: the first batch of a resume mid-stream
        direct = self.batch_size if (self._random_access() and tick > 0) else 0
        # the order a segment or two ahead, on a thread of its own: keys, hashes and sorts
        # depend on the plan alone (never on the data or on timing), so the order is the
        # same, and ~0.2-0.4 CPU-s an epoch of NumPy work (2 M rows) leaves the batcher's
        # critical path, most of it run while the batcher waits for reads or gathers
        segments = BackgroundIterator(shuffle.segments(tick), 1, threading.Event(), f"streambatch-order-{id(self):x}")
        try:
            yield from self._segments(plan, reads, segments, skip, left, direct)
        finally:
            segments.close()
        reads.drain()

    def _segments(
        self, plan: EpochPlan, reads: PieceReads, segments: Iterator[Segment], skip: int, left: int, direct: int
    ) -> Iterator[list[Batch]]:
        for segment in segments:
            reads.admit()
            positions, keys = _clipped(segment, skip, left)
            skip = 0
            left -= positions.size
            if direct:
                head, positions, keys = positions[:direct], positions[direct:], keys[direct:]
                direct -= head.size
                done = self._read_direct(plan, head)
                if done:
                    yield done
                if not positions.size:
                    if self.filler.finished or left == 0:
                        break
                    reads.release(segment.first_live)  # the segment was read directly: its pieces are done
                    continue
            yield from self._segment(plan, reads, segment, positions, keys)
            if self.filler.finished or left == 0:
                break
            reads.release(segment.first_live)

    def _random_access(self) -> bool:
        """Every shard reads single rows cheaply (no streamed read units)."""
        return all(s.unit_bounds is None for s in self.dataset.shards)

    def _read_direct(self, plan: EpochPlan, positions: np.ndarray) -> list[Batch]:
        """The batches completed by the rows at ``positions``, read straight from
        the files instead of through the ring; none for no rows (a segment may be
        empty: a window tick can hold no row)."""
        if not positions.size:
            return []
        return list(self.filler.fill_rows(_read_rows(plan, positions, self.ring, self.cache)))

    def _segment(
        self, plan: EpochPlan, reads: PieceReads, segment: Segment, positions: np.ndarray, keys: np.ndarray
    ) -> Iterator[list[Batch]]:
        """The batches of one segment's rows (``positions``, their ``keys``),
        gathered as their pieces load, handed over ``batch_group`` at a time (after
        groups of 1, 2, 4, ... at the start of a stream: see :meth:`_stream`)."""
        group: list[Batch] = []
        for batch in self.filler.fill(positions, self._waiter(plan, reads, segment, positions, keys)):
            group.append(batch)
            if len(group) >= self._group_target:
                yield group
                group = []
                self._group_target = min(2 * self._group_target, self.budget.batch_group)
                self.filler.group_batches = self._group_target
                # pieces whose every row is emitted free their slots now, not at the
                # segment's end: reads keep flowing instead of coming in bursts
                reads.release(plan.first_live_piece(keys[self.filler.taken - 1]))
            reads.admit()
        if group:
            yield group

    def _waiter(
        self, plan: EpochPlan, reads: PieceReads, segment: Segment, positions: np.ndarray, keys: np.ndarray
    ) -> Callable[[int, int], int]:
        """``ready(a, b)`` for :meth:`BatchFiller.fill`: rows are gathered as soon as
        their pieces are loaded, so the first batch waits for its own rows only; and
        a ring that holds a single read unit still runs: the rows of a loaded piece
        are gathered first, then (every row of it emitted) the next piece is read."""
        filler = self.filler
        load = plan.load
        last = min(segment.pieces_needed, reads.stop_piece)

        def emitted() -> int:
            # every row of the pieces below this one is out: those of the rest of the
            # segment are not, nor those with keys beyond it
            rest = positions[filler.taken :]
            later = plan.first_live_piece(segment.tick_hi)
            return min(int(plan.piece_of(rest).min()), later) if rest.size else later

        def ready(a: int, b: int) -> int:
            while True:
                loaded = reads.loaded
                if loaded >= last or keys[b - 1] < load[loaded]:
                    return b
                need = min(plan.pieces_holding(float(keys[b - 1])), last)
                if need <= reads.admitted:  # all in flight (the usual case): wait for them
                    reads.wait_loaded(need)
                    return b
                # the ring is too full to admit them: rows [a, c) need only loaded pieces
                c = a + int(np.searchsorted(keys[a:b], load[loaded], side="left"))
                if c > a:
                    return c
                # the fewest pieces that let row a out (a ring of one unit may hold no more)
                reads.wait_loaded(min(plan.pieces_holding(float(keys[a])), last), emitted)

        return ready


def _clipped(segment: Segment, skip: int, left: int) -> tuple[np.ndarray, np.ndarray]:
    """The segment's positions and keys without its first ``skip`` rows, and at
    most ``left`` of them."""
    positions, keys = segment.positions, segment.keys
    if skip:
        positions, keys = positions[skip:], keys[skip:]
    if positions.size > left:
        positions, keys = positions[:left], keys[:left]
    return positions, keys


def _read_rows(plan: EpochPlan, positions: np.ndarray, ring: RowRing, cache: ReaderCache) -> Batch:
    """The rows at ``positions`` of ``plan``'s sequence, read one by one from their
    (random-access) shards, in order: each shard's rows front to back into
    scratch, then put in order by each column's kind."""
    pieces = np.searchsorted(plan.offsets, positions, side="right") - 1
    shards = plan.shard[pieces]
    rows = plan.start[pieces] + (positions - plan.offsets[pieces])
    parts: list[Batch] = []
    destinations: list[np.ndarray] = []
    for index in np.unique(shards).tolist():
        where = np.flatnonzero(shards == index)
        order = np.argsort(rows[where], kind="stable")  # read each file front to back
        picked = rows[where][order]
        scratch = ring.scratch(picked.size)
        reader = cache.acquire(index)
        try:
            reader.read_many(picked, picked + 1, {n: s.view(0, picked.size) for n, s in scratch.items()})
        finally:
            cache.release(index)
        parts.append({n: s.gather_run(0, picked.size) for n, s in scratch.items()})
        destinations.append(where[order])
    if len(parts) == 1 and np.array_equal(destinations[0], np.arange(positions.size)):
        return parts[0]
    inverse = np.argsort(np.concatenate(destinations), kind="stable")  # row k of the parts goes to place k
    return {
        name: kind.take(kind.concatenate([p[name] for p in parts]) if len(parts) > 1 else parts[0][name], inverse)
        for name, kind in ring.kinds.items()
    }


def _padded(batch: Batch, pad: Mapping[str, tuple[int, Any]]) -> Batch:
    """``batch`` with each padded column as a ``(rows, length)`` array (longer rows
    truncated) and its lengths, ``min(row length, length)``, as ``<name>_length``."""
    out = dict(batch)
    for name, (length, fill) in pad.items():
        out[name], out[f"{name}_length"] = batch[name].padded(length, fill)
    return out
