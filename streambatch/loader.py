"""``Loader``: the one place that knows the order of the stages.

plan (pieces for this epoch and rank) -> window shuffle (row order, computed on
positions) -> prefetch pool (reads pieces into ring slots) -> batching (gathers
ring rows into fixed-size batches).

A ``Loader`` is a cheap description; each ``iter(loader)`` makes an
``EpochIterator`` that owns the threads, the ring and the open files, and
releases them when the epoch ends, on ``close()``, when the loop is left early
or when the iterator is garbage collected.
"""

from __future__ import annotations

import os
import threading
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ._units import parse_bytes
from .batching import BatchFiller, batch_sizes
from .budget import Budget, plan_budget
from .distributed import resolve_rank_and_world_size
from .errors import EmptyDatasetError, PoorShuffleWarning
from .plan import EpochPlan, Remainder, make_plan, rows_per_rank
from .prefetch import BackgroundIterator, ReaderPool
from .reading import PieceReads
from .resume import StreamSlice, advance, rank_slices
from .ring import RowRing
from .shuffle import Segment, WindowShuffle
from .sources import Dataset, SourceLike, open_dataset
from .sources._handles import ReaderCache
from .sources._retry import RetryPolicy
from .state import LoaderState, order_params

__all__ = ["EpochIterator", "Loader"]

#: column -> a numpy array, a ``Ragged`` (variable-length lists) or, with ``pad=``, padded arrays
Batch = dict[str, Any]

_REMOTE_THREADS = 16

#: fewer distinct read units than this mixed at once draws a PoorShuffleWarning
_FEW_PIECES = 16

#: batch groups assembled ahead of the consumer (counted in the budget's batches in flight)
_READY_GROUPS = 2


#: bumped in a forked child, whose copies of live iterators have no threads
_forks_seen = [0]
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _forks_seen.__setitem__(0, _forks_seen[0] + 1))


def _default_threads(dataset: Dataset) -> int:
    """Local files: about one thread per core (reads are CPU work from the page
    cache). Object storage: 16, so request latencies overlap."""
    if any("://" in s.path and "file://" not in s.path for s in dataset.shards):
        return _REMOTE_THREADS
    return max(2, min(8, os.cpu_count() or 2))


class Loader:
    """Iterate a dataset larger than memory as fixed-size, shuffled NumPy batches.

    >>> loader = Loader("data/", batch_size=256, memory_limit="256MiB")  # doctest: +SKIP
    >>> for epoch in range(3):                                          # doctest: +SKIP
    ...     loader.set_epoch(epoch)
    ...     for batch in loader:            # dict[str, np.ndarray]
    ...         train_step(batch["x"], batch["y"])

    Contracts:

    * every batch has exactly ``batch_size`` rows except the last of an epoch,
      which is partial unless ``drop_last``; arrays are fresh C-contiguous copies;
    * each row of the rank's share is delivered exactly once per epoch;
    * the order is a pure function of (dataset, seed, epoch, rank, world_size,
      memory_limit): ``num_threads`` and timing never change it;
    * peak RSS of the process stays <= ``memory_limit`` + 300 MiB (interpreter,
      imports and allocator slack; see :mod:`streambatch.budget` for the split);
    * epochs advance by themselves when one is iterated to the end;
      ``set_epoch`` picks one explicitly;
    * ``state_dict()``/``load_state_dict()`` resume mid-epoch exactly, also
      with another world size;
    * a string column arrives as a ``StringDType`` array, a binary one as an object
      array of ``bytes``, a variable-length list column as a
      :class:`~streambatch.Ragged`; ``pad={"tokens": (2048, 0)}`` delivers
      ``batch["tokens"]`` as a ``(rows, 2048)`` array instead (longer rows
      truncated, the rest filled with 0) and ``batch["tokens_length"]`` (int64)
      with each row's ``min(length, 2048)``;
    * ``cast={"price": "float64", "ts": "datetime64[ns]"}`` delivers columns as
      another dtype (decimals, tz-aware timestamps as UTC, time of day, narrower
      numbers; see :func:`~streambatch.open_dataset`): the ring and the budget hold
      the cast values, and a value the dtype cannot hold is a ``CastError``, never
      wrapped; the cast is part of the dataset a saved state must match;
    * ``rank``/``world_size`` default to the ``torch.distributed`` process group or
      the ``RANK``/``WORLD_SIZE`` variables (see :mod:`streambatch.distributed`);
      every rank gets a disjoint share and the same number of batches, the
      remainder padded by wrapping (``remainder="pad"``) or dropped (``"drop"``).
    """

    def __init__(
        self,
        source: SourceLike,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        memory_limit: int | str = "512MiB",
        num_threads: int | None = None,
        columns: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        fill_nulls: Mapping[str, Any] | None = None,
        cast: Mapping[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        remainder: Remainder = "pad",
        storage_options: dict[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | str | None = None,
        pad: Mapping[str, tuple[int, Any]] | None = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if num_threads is not None and (not isinstance(num_threads, (int, np.integer)) or num_threads < 1):
            raise ValueError(f"num_threads must be a positive integer or None, got {num_threads!r}")
        rank, world_size = resolve_rank_and_world_size(rank, world_size)
        if not isinstance(world_size, (int, np.integer)) or world_size < 1:
            raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank!r}")
        if remainder not in ("pad", "drop"):
            raise ValueError(f"remainder must be 'pad' or 'drop', got {remainder!r}")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.memory_limit = parse_bytes(memory_limit)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.remainder: Remainder = remainder
        # exclude / fill_nulls / cast: see open_dataset (columns that cannot be read, nulls,
        # delivered dtypes); cache_dir / cache_limit: a local copy of remote files (see open_dataset)
        self.dataset: Dataset = open_dataset(
            source, columns, exclude=exclude, fill_nulls=fill_nulls, cast=cast, storage_options=storage_options,
            retry=retry, cache_dir=cache_dir, cache_limit=cache_limit,
        )
        self.num_threads = int(num_threads) if num_threads is not None else _default_threads(self.dataset)
        self.pad: dict[str, tuple[int, Any]] = _check_pad(pad, self.dataset)
        if self.dataset.num_rows == 0:
            paths = ", ".join(s.path for s in self.dataset.shards[:5])
            raise EmptyDatasetError(f"the dataset has 0 rows (shards: {paths}); nothing to load")
        self.budget: Budget = plan_budget(self.dataset, self.memory_limit, self.batch_size, self.shuffle)
        mixed = self.budget.mixed_units
        if self.shuffle and mixed is not None and mixed < _FEW_PIECES:
            warnings.warn(
                f"batches will mix rows of only {mixed} read unit(s) at a time: {self.budget.shuffle_limit()} "
                f"(memory_limit={self.memory_limit}; see docs/shuffling.md). Raise memory_limit, or rewrite the data "
                "with `streambatch convert --shuffle` (small row groups, globally permuted).",
                PoorShuffleWarning,
                stacklevel=2,
            )
        self._epoch = 0
        # [(world_size, batches delivered), ...] of the epoch so far, oldest first:
        # where the next iterator starts, and what state_dict() reports
        self._history: list[tuple[int, int]] = [(self.world_size, 0)]
        self._generation = 0
        self._iterators: weakref.WeakSet[EpochIterator] = weakref.WeakSet()

    # -- sizes ---------------------------------------------------------------
    @property
    def columns(self) -> dict[str, Any]:
        return self.dataset.columns

    @property
    def rows_per_epoch(self) -> int:
        """Rows this rank receives per epoch (before ``drop_last``)."""
        return rows_per_rank(self.dataset.num_rows, self.world_size, self.remainder)

    def __len__(self) -> int:
        """Batches this rank yields in the epoch ``iter(loader)`` will run, counted
        from the start of the current world: after an elastic resume, the batches
        of this world's share of what was left (those already delivered in this
        world included)."""
        rows = sum(s.rows for s in self._slices(self._history))
        full, rest = divmod(rows, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def _slices(self, history: list[tuple[int, int]]) -> list[StreamSlice]:
        """This rank's share of the epoch in the current world, as stream slices of
        the epoch's first world (see :mod:`streambatch.resume`)."""
        base_world = history[0][0]
        per_base_rank = [rows_per_rank(self.dataset.num_rows, base_world, self.remainder)] * base_world
        return rank_slices(per_base_rank, history, self.rank, self.batch_size, self.remainder)

    # -- epochs --------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch the next ``iter(loader)`` will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Produce ``epoch`` next, from its beginning (a new permutation per epoch)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._epoch = int(epoch)
        self._history = [(self.world_size, 0)]
        self._generation += 1  # live iterators no longer move the loader's position

    def plan(self, epoch: int | None = None, *, rank: int | None = None, world_size: int | None = None) -> EpochPlan:
        """The pieces a rank reads in ``epoch`` of a fresh run (default: this rank,
        the next epoch)."""
        params = self.budget.plan_params(self.shuffle, self.seed, self.remainder)
        return make_plan(
            self.dataset,
            params,
            self._epoch if epoch is None else epoch,
            self.rank if rank is None else rank,
            self.world_size if world_size is None else world_size,
        )

    def __iter__(self) -> EpochIterator:
        self._generation += 1  # the newest iterator is the one state_dict() follows
        iterator = EpochIterator(self, self._epoch, list(self._history), self._generation)
        self._iterators.add(iterator)
        return iterator

    def _delivered(
        self, generation: int, epoch: int, history: list[tuple[int, int]], batches: int, finished: bool
    ) -> None:
        if generation != self._generation:
            return  # set_epoch, load_state_dict or a newer iterator took over
        if finished:
            self._epoch = epoch + 1
            self._history = [(self.world_size, 0)]
        else:
            self._epoch = epoch
            self._history = [*history[:-1], (history[-1][0], batches)]

    # -- resume --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What the consumer has received, as a small JSON-safe dict."""
        history = [list(h) for h in self._history]
        return LoaderState(self._epoch, history, self.rank, order_params(self)).to_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue exactly where the saved loader's consumer stopped.

        The state of any rank describes the whole job (ranks advance in lockstep),
        so every rank may load rank 0's state. With a different ``world_size`` the
        rows not yet delivered are split among the new ranks: none lost or repeated
        beyond the ``remainder`` policy's padding (at most ``world_size - 1`` rows)."""
        saved = LoaderState.from_dict(state)
        saved.check_compatible(self)
        history = [(int(w), int(b)) for w, b in saved.history]
        if history[-1][0] != self.world_size:
            history.append((self.world_size, 0))
        self._epoch = saved.epoch
        self._history = history
        self._generation += 1

    # -- lifecycle -----------------------------------------------------------
    def close(self) -> None:
        """Stop every live iterator's threads and free its buffers; idempotent."""
        for iterator in list(self._iterators):
            iterator.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Loader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, rank={self.rank}/{self.world_size}; {self.budget.describe()})"
        )


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

    def __init__(self, pool: ReaderPool, cache: ReaderCache) -> None:
        self.pool = pool
        self.cache = cache
        self.batches: BackgroundIterator | None = None

    def close(self) -> None:
        if self.batches is not None:
            self.batches.request_stop()
        self.pool.close()
        if self.batches is not None:
            self.batches.close()
        self.cache.close()


class EpochIterator(Iterator[Batch]):
    """One pass over one epoch; owns the reader threads, the ring and open files."""

    def __init__(self, loader: Loader, epoch: int, history: list[tuple[int, int]], generation: int) -> None:
        self._loader = loader
        self._generation = generation
        self.epoch = epoch
        self._history: list[tuple[int, int]] = [(int(world), int(batches)) for world, batches in history]
        start_batch = self._history[-1][1]
        self.batches_delivered = start_batch
        self._forks = _forks_seen[0]
        self._stopped = False
        self._ready: deque[Batch] = deque()
        budget = loader.budget
        dataset = loader.dataset
        base_world = self._history[0][0]
        slices = loader._slices(self._history)
        total = sum(s.rows for s in slices)
        remaining = advance(slices, start_batch * loader.batch_size)
        plans = {r: loader.plan(epoch, rank=r, world_size=base_world) for r in {s.rank for s in remaining}}
        ring = RowRing(budget.column_kinds(dataset), budget.ring_rows, budget.arena_bytes)
        pool = ReaderPool(loader.num_threads)
        cache = ReaderCache(
            dataset, max_open=_max_open_readers(dataset, loader.num_threads), resident=budget.resident_columns
        )
        self._resources = _Resources(pool, cache)
        self._finalizer = weakref.finalize(self, self._resources.close)
        self._pad = loader.pad
        filler = BatchFiller(
            ring,
            batch_sizes(total, loader.batch_size, loader.drop_last, start_batch),
            contiguous=not loader.shuffle,
        )
        streams = [(plans[s.rank], s.lo, s.hi) for s in remaining]
        stop = threading.Event()
        producer = _emit(streams, dataset, ring, pool, cache, budget, filler, stop, loader.batch_size)
        self._batches = BackgroundIterator(producer, _READY_GROUPS, stop, f"streambatch-batcher-{id(self):x}")
        self._resources.batches = self._batches

    def __next__(self) -> Batch:
        if self._stopped:
            raise StopIteration  # closed, failed or finished: only a normal end counts
        if _forks_seen[0] != self._forks:  # checked per batch: cheaper than os.getpid()
            raise RuntimeError(
                "this iterator was created in another process (fork); call iter(loader) in this process"
            )
        try:
            if not self._ready:
                self._ready.extend(self._batches.get())
            batch = self._ready.popleft()
            if self._pad:
                batch = _padded(batch, self._pad)
        except StopIteration:
            self.close()
            self._loader._delivered(self._generation, self.epoch, self._history, self.batches_delivered, finished=True)
            raise
        except BaseException:
            self.close()
            raise
        self.batches_delivered += 1
        self._loader._delivered(self._generation, self.epoch, self._history, self.batches_delivered, finished=False)
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


def _emit(
    streams: list[tuple[EpochPlan, int, int]],
    dataset: Dataset,
    ring: RowRing,
    pool: ReaderPool,
    cache: ReaderCache,
    budget: Budget,
    filler: BatchFiller,
    stop: threading.Event,
    batch_size: int,
) -> Iterator[list[Batch]]:
    """The producer side: for each stream slice ``(plan, lo, hi)``, the segments of
    its window shuffle from row ``lo`` to ``hi``, gathered into batches that run
    across slice boundaries, handed over in groups (never held back across a
    wait for reads, so the first batch is not delayed).

    Resuming mid-stream, every live piece holds rows of the very next batch, so
    the whole window must be read before the ring can serve it. When every shard
    is random access (``.npy``), the first batch is instead read row by row,
    straight from the files, while the window loads in the pool."""
    direct_ok = all(s.unit_bounds is None for s in dataset.shards)
    try:
        for plan, lo, hi in streams:
            if filler.finished:
                return
            shuffle = WindowShuffle(plan, budget.max_segment_ticks)
            reads = PieceReads(plan, dataset, ring, pool, cache, budget, stop)
            tick, skip = shuffle.locate(lo)
            stop_piece = plan.pieces_needed(shuffle.locate(hi)[0] + 1) if hi < plan.num_rows else plan.num_pieces
            reads.start_at(shuffle.first_live_piece(tick), stop_piece)
            left = hi - lo
            direct = batch_size if (direct_ok and tick > 0) else 0
            for segment in shuffle.segments(tick):
                reads.admit()
                positions, keys = segment.positions, segment.keys
                if skip:
                    positions, keys, skip = positions[skip:], keys[skip:], 0
                if positions.size > left:
                    positions, keys = positions[:left], keys[:left]
                left -= positions.size
                if direct:
                    head, positions, keys = positions[:direct], positions[direct:], keys[direct:]
                    direct -= head.size
                    done = list(filler.fill_rows(_read_rows(plan, head, ring, cache)))
                    if done:
                        yield done
                    if not positions.size:
                        if filler.finished or left == 0:
                            break
                        reads.release(segment.first_live)  # the segment was read directly: its pieces are done
                        continue
                group: list[Batch] = []
                for batch in filler.fill(positions, _waiter(plan, reads, positions, keys, segment, filler)):
                    group.append(batch)
                    if len(group) == budget.batch_group:
                        yield group
                        group = []
                        # pieces whose every row is emitted free their slots now, not at the
                        # segment's end: reads keep flowing instead of coming in bursts
                        reads.release(plan.first_live_piece(keys[filler.taken - 1]))
                    reads.admit()
                if group:
                    yield group
                if filler.finished or left == 0:
                    break
                reads.release(segment.first_live)
            reads.drain()
    finally:
        pool.close()


def _waiter(
    plan: EpochPlan, reads: PieceReads, positions: np.ndarray, keys: np.ndarray, segment: Segment, filler: BatchFiller
) -> Callable[[int, int], int]:
    """``ready(a, b)`` for :meth:`BatchFiller.fill`: rows are gathered as soon as
    their pieces are loaded, so the first batch waits for its own rows only; and
    a ring that holds a single read unit still runs: the rows of a loaded piece
    are gathered first, then (every row of it emitted) the next piece is read."""
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


def _check_pad(pad: Mapping[str, tuple[int, Any]] | None, dataset: Dataset) -> dict[str, tuple[int, Any]]:
    """``pad={"tokens": (length, fill)}``: validated against the dataset's columns."""
    if pad is None:
        return {}
    if not isinstance(pad, Mapping):
        raise TypeError(f"pad must be a dict {{column: (length, fill)}}, got {type(pad).__name__}")
    checked: dict[str, tuple[int, Any]] = {}
    for name, value in pad.items():
        spec = dataset.columns.get(name)
        if spec is None:
            raise ValueError(f"pad: no column {name!r} among the loaded columns {list(dataset.columns)}")
        if spec.kind != "list":
            raise ValueError(
                f"pad: column {name!r} is {spec!r}, not a variable-length list; pad= applies to ragged list columns"
            )
        if not isinstance(value, tuple) or len(value) != 2:
            raise ValueError(f"pad[{name!r}] must be a tuple (length, fill), got {value!r}")
        length, fill = value
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise ValueError(f"pad[{name!r}] length must be a positive integer, got {length!r}")
        try:
            fits = bool(np.array(fill, dtype=spec.dtype) == fill)
        except (TypeError, ValueError, OverflowError):
            fits = False
        if not fits:
            raise ValueError(f"pad[{name!r}] fill {fill!r} is not a value of the column's dtype {spec.dtype}")
        lengths = f"{name}_length"
        if lengths in dataset.columns:
            raise ValueError(f"pad[{name!r}] delivers its lengths as {lengths!r}, which is already a column")
        checked[name] = (int(length), fill)
    return checked


def _padded(batch: Batch, pad: Mapping[str, tuple[int, Any]]) -> Batch:
    """``batch`` with each padded column as a ``(rows, length)`` array (longer rows
    truncated) and its lengths, ``min(row length, length)``, as ``<name>_length``."""
    out = dict(batch)
    for name, (length, fill) in pad.items():
        out[name], out[f"{name}_length"] = batch[name].padded(length, fill)
    return out
