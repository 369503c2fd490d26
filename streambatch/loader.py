"""``Loader``: the description of what to load, and where its consumer is.

A ``Loader`` checks its options eagerly, opens the dataset (metadata only),
splits ``memory_limit`` into the budget and derives each epoch's plan from it;
it is cheap and holds no threads. It knows the position its consumer has
reached (``epoch``, ``len()``, ``state_dict``/``load_state_dict``,
``set_epoch``) by asking its newest iterator's cursor.

Each ``iter(loader)`` makes an :class:`~streambatch.epoch.EpochIterator`, the
epoch engine (:mod:`streambatch.epoch`): it runs the stages, owns the threads,
the ring and the open files, and records the batches its consumer received.
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._units import parse_bytes
from .budget import Budget, plan_budget
from .distributed import resolve_rank_and_world_size
from .epoch import EpochCursor, EpochIterator
from .errors import EmptyDatasetError, PoorShuffleWarning
from .plan import EpochPlan, Remainder, make_plan, rows_per_rank
from .resume import StreamSlice, rank_slices
from .ring import SpareRing
from .sources import Dataset, SourceLike, open_dataset
from .sources._retry import RetryPolicy
from .state import LoaderState, order_params

__all__ = ["Loader"]

_REMOTE_THREADS = 16

#: fewer distinct read units than this mixed at once draws a PoorShuffleWarning
_FEW_PIECES = 16


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
            source,
            columns,
            exclude=exclude,
            fill_nulls=fill_nulls,
            cast=cast,
            storage_options=storage_options,
            retry=retry,
            cache_dir=cache_dir,
            cache_limit=cache_limit,
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
        # the position: the newest iterator's cursor, or (before the first iter(), after
        # set_epoch or load_state_dict) one no iterator moves. Where the next iterator
        # starts and what state_dict() reports; an older iterator moves only its own
        self._cursor = EpochCursor(0, [(self.world_size, 0)])
        # live iterators, for close(): weak, so a dropped iterator's finalizer can run
        self._iterators: weakref.WeakSet[EpochIterator] = weakref.WeakSet()
        # the last finished iterator's ring, reused by the next (no pages faulted in again)
        self._spare_ring = SpareRing()

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
        rows = sum(s.rows for s in self._slices(self._cursor.position()[1]))
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
        return self._cursor.position()[0]

    def set_epoch(self, epoch: int) -> None:
        """Produce ``epoch`` next, from its beginning (a new permutation per epoch)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._cursor = EpochCursor(int(epoch), [(self.world_size, 0)])  # live iterators no longer move it

    def plan(self, epoch: int | None = None, *, rank: int | None = None, world_size: int | None = None) -> EpochPlan:
        """The pieces a rank reads in ``epoch`` of a fresh run (default: this rank,
        the next epoch)."""
        params = self.budget.plan_params(self.shuffle, self.seed, self.remainder)
        return make_plan(
            self.dataset,
            params,
            self.epoch if epoch is None else epoch,
            self.rank if rank is None else rank,
            self.world_size if world_size is None else world_size,
        )

    def __iter__(self) -> EpochIterator:
        """A new pass from the current position; from now on ``state_dict()``
        follows this iterator's consumer, no longer an older iterator's."""
        # taken over before the iterator is built, so a failed iter() detaches older ones too
        self._cursor = EpochCursor(*self._cursor.position())
        iterator = EpochIterator(self, self._cursor)
        self._iterators.add(iterator)
        return iterator

    # -- resume --------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What the consumer has received, as a small JSON-safe dict."""
        epoch, history = self._cursor.position()
        return LoaderState(epoch, [list(h) for h in history], self.rank, order_params(self)).to_dict()

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
        self._cursor = EpochCursor(saved.epoch, history)  # live iterators no longer move it

    # -- lifecycle -----------------------------------------------------------
    def close(self) -> None:
        """Stop every live iterator's threads and free its buffers, and the ring kept
        for the next iterator; idempotent (a later ``iter()`` makes a new ring)."""
        for iterator in list(self._iterators):
            iterator.close()
        self._spare_ring.clear()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Loader({self.dataset!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"seed={self.seed}, rank={self.rank}/{self.world_size}; {self.budget.describe()})"
        )


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
