"""PyTorch adapter: a ``torch.utils.data.IterableDataset`` over a :class:`~streambatch.Loader`.

>>> from torch.utils.data import DataLoader                               # doctest: +SKIP
>>> from streambatch.torch import StreambatchIterable                     # doctest: +SKIP
>>> data = StreambatchIterable("data/", batch_size=256, memory_limit="256MiB")  # doctest: +SKIP
>>> loader = DataLoader(data, batch_size=None, num_workers=4, pin_memory=True)  # doctest: +SKIP
>>> for epoch in range(3):                                                # doctest: +SKIP
...     data.set_epoch(epoch)
...     for batch in loader:            # dict[str, torch.Tensor]
...         train_step(batch["x"], batch["label"])

Sharding: DataLoader worker ``w`` of ``W`` on rank ``r`` of ``R`` is sub-rank
``r*W + w`` of a :class:`~streambatch.Loader` world of ``R*W``, so workers split
the rank's share disjointly and all yield the same number of batches; the
DataLoader's round-robin then gives every rank the same count too.

Resume, two ways (see docs/distributed.md):

* torchdata's ``StatefulDataLoader`` calls :meth:`StreambatchIterable.state_dict`
  and :meth:`~StreambatchIterable.load_state_dict` inside each worker (or in
  the main process with ``num_workers=0``); nothing else to do.
* Plain ``torch.utils.data.DataLoader``: count the batches the DataLoader
  delivered since ``iter()``, save ``data.state_at(batches, num_workers)``, and
  before iterating again call ``data.load_state_dict(saved)``: the workers
  continue exactly (same rank/worker counts) or elastically (others).

This module imports torch; ``import streambatch`` never does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("streambatch.torch needs PyTorch: pip install 'streambatch[torch]'") from error

from .distributed import resolve_rank_and_world_size
from .errors import StateMismatchError
from .loader import Loader
from .ragged import Ragged
from .sources import SourceLike
from .state import LoaderState

__all__ = ["StreambatchIterable", "as_tensors"]

_WORKER_KIND = "streambatch.torch/worker"
_RANK_KIND = "streambatch.torch/rank"
_VERSION = 1


def as_tensors(batch: Mapping[str, Any]) -> dict[str, Any]:
    """``{column: torch.from_numpy(array)}``: the tensors share the arrays' memory (no copy),
    except for what torch cannot hold as it is:

    * a string column (``StringDType``) becomes a Python ``list`` of ``str``, a binary
      one a ``list`` of ``bytes`` (what tokenizers take; a ``DataLoader`` passes lists
      through);
    * a variable-length list column (:class:`~streambatch.Ragged`) is a ``TypeError``
      naming the column and the remedy: ``pad={column: (length, fill)}`` delivers it
      as a ``(batch, length)`` tensor plus ``<column>_length`` (nested tensors are
      not used: ``DataLoader`` collation, pinning and most ops do not take them);

    * a non-native byte order (big-endian ``>f4`` from a ``.npy`` or Zarr store) is
      converted to native order (one copy of that column);
    * ``datetime64``/``timedelta64`` columns become ``int64`` tensors counting the
      column's own unit (``datetime64[ms]`` -> milliseconds since 1970), a view, no copy;
    * any other dtype torch refuses (``S``/``U`` bytes and strings ...) is a
      ``TypeError`` naming the column and its dtype.
    """
    return {name: _tensor(name, array) for name, array in batch.items()}


def _tensor(name: str, array: Any) -> Any:
    if isinstance(array, Ragged):
        raise TypeError(
            f"column {name!r} holds lists of varying length (a streambatch.Ragged), which a tensor cannot hold: "
            f"pass pad={{{name!r}: (length, fill)}} for a (batch, length) tensor and {name + '_length'!r}, "
            f"or exclude the column (exclude=[{name!r}])"
        )
    if isinstance(array.dtype, np.dtypes.StringDType) or array.dtype == object:
        return array.tolist()  # str / bytes: a list, as tokenizers take them
    if array.dtype.kind in "mM":
        array = array.view(np.int64)
    elif not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        return torch.from_numpy(array)
    except TypeError as e:
        raise TypeError(
            f"column {name!r} has dtype {array.dtype}, which torch cannot hold: exclude the column "
            f"(Loader(..., exclude=[{name!r}])) or store it as numbers ({e})"
        ) from e


class StreambatchIterable(IterableDataset):
    """A streambatch :class:`~streambatch.Loader` as a PyTorch ``IterableDataset``.

    Use it with ``DataLoader(adapter, batch_size=None, ...)`` (batches are already
    formed): each item is a ``dict[str, torch.Tensor]`` with leading dimension
    ``batch_size`` (the last batch of each worker partial unless ``drop_last``).

    ``rank``/``world_size`` default, like the Loader's, to the ``torch.distributed``
    process group or ``RANK``/``WORLD_SIZE``; they are resolved here, in the
    process that builds the adapter (worker processes are not in the process
    group), so build it after ``init_process_group`` or pass them. Every other
    keyword goes to :class:`~streambatch.Loader` (``memory_limit`` and
    ``num_threads`` apply to each worker's Loader). The Loaders themselves are
    built lazily, one per process that iterates; the adapter pickles small.
    """

    def __init__(
        self,
        source: SourceLike,
        batch_size: int,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        **loader_kwargs: Any,
    ) -> None:
        super().__init__()
        rank, world_size = resolve_rank_and_world_size(rank, world_size)
        self.source = source
        self.batch_size = batch_size
        self.loader_kwargs = dict(loader_kwargs)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self._epoch = 0
        #: a state to continue from at the next iter (normalised, see _normalise)
        self._pending: dict[str, Any] | None = None
        #: where state_at() counts from after a plain resume
        self._resume_base: dict[str, Any] | None = None
        # per-process, never pickled
        self._loader: Loader | None = None
        self._loader_key: tuple[int, int, int] | None = None  # (pid, sub_rank, sub_world)
        self._slot: tuple[int, int] = (0, 1)  # (worker id, num_workers) of the live loader
        # validate the arguments now, in the building process (metadata only, no rows read)
        self._probe = self._make_loader(self.rank, self.world_size)

    # -- pickling: only the description travels to workers --------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_loader"] = state["_loader_key"] = state["_probe"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- epochs ----------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` produces (in this process)."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Produce ``epoch`` from its beginning at the next ``iter(dataloader)``.

        Worker processes receive it when the DataLoader starts them, so call it
        before each epoch (like ``DistributedSampler.set_epoch``). It also
        forgets a state loaded with :meth:`load_state_dict`."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        self._epoch = int(epoch)
        self._pending = None
        self._resume_base = None

    # -- iteration -------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (int(info.id), int(info.num_workers))
        pending, self._pending = self._pending, None
        if pending is None:
            loader = self._loader_for(self.rank * workers + worker, self.world_size * workers)
            loader.set_epoch(self._epoch)
        else:
            sub_rank, state = self._resolve(pending, worker, workers)
            loader = self._loader_for(sub_rank, self.world_size * workers)
            loader.load_state_dict(state)
        self._slot = (worker, workers)
        return self._generate(loader)

    def _generate(self, loader: Loader) -> Iterator[dict[str, Any]]:
        iterator = iter(loader)
        try:
            for batch in iterator:
                yield as_tensors(batch)
        finally:
            iterator.close()
        # ran to the end: the Loader moved on to the next epoch
        self._epoch = loader.epoch
        self._resume_base = None

    def _make_loader(self, sub_rank: int, sub_world: int) -> Loader:
        return Loader(self.source, self.batch_size, rank=sub_rank, world_size=sub_world, **self.loader_kwargs)

    def _loader_for(self, sub_rank: int, sub_world: int) -> Loader:
        key = (os.getpid(), sub_rank, sub_world)
        if self._loader is None or self._loader_key != key:
            if self._loader is not None and self._loader_key is not None and self._loader_key[0] == key[0]:
                self._loader.close()
            self._loader = self._make_loader(sub_rank, sub_world)
            self._loader_key = key
        return self._loader

    # -- resume: torchdata's protocol (called per worker) ----------------------
    def state_dict(self) -> dict[str, Any]:
        """The state of the Loader this process iterates: what ``StatefulDataLoader``
        stores per worker (or for the main process with ``num_workers=0``).

        After :meth:`load_state_dict` and before ``iter()``, the loaded state. With
        DataLoader workers and a plain DataLoader, the state lives in the workers: in
        the main process use :meth:`state_at` instead (this raises there)."""
        if self._loader is None or self._loader_key is None or self._loader_key[0] != os.getpid():
            if self._pending is not None:
                return _copy(self._pending["original"])
            raise RuntimeError(
                "no Loader has been iterated in this process, so there is no progress to save here: "
                "with DataLoader workers use torchdata's StatefulDataLoader (which calls state_dict() "
                "inside the workers), or StreambatchIterable.state_at(batches, num_workers)"
            )
        worker, workers = self._slot
        return {
            "kind": _WORKER_KIND,
            "version": _VERSION,
            "world_size": self.world_size,
            "num_workers": workers,
            "worker": worker,
            "sub_rank": self._loader.rank - self.rank * workers,
            "loader": self._loader.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` at the next ``iter()``.

        Accepts a worker state from :meth:`state_dict` (what ``StatefulDataLoader``
        passes each worker), a rank state from :meth:`state_at` (the plain path:
        call it in the main process before ``iter(dataloader)``), or a
        :meth:`streambatch.Loader.state_dict`. Same world size and worker count:
        exact continuation; otherwise the rest of the epoch is re-split (see
        docs/distributed.md for when that is possible)."""
        self._pending = _normalise(state)
        self._epoch = LoaderState.from_dict(self._pending["loader"]).epoch
        self._resume_base = self._pending if self._pending["kind"] == _RANK_KIND else None

    # -- resume: the plain path (main process) ---------------------------------
    def state_at(self, batches: int, num_workers: int) -> dict[str, Any]:
        """The state of this rank after its DataLoader delivered ``batches`` batches
        since ``iter()`` (of the epoch :attr:`epoch`, or since the state loaded
        with :meth:`load_state_dict`), with ``num_workers`` workers.

        Ranks advance in lockstep, so rank 0's state describes the job: save it
        and load it into every rank's adapter, with any world size or workers."""
        if isinstance(batches, bool) or not isinstance(batches, (int, np.integer)) or batches < 0:
            raise ValueError(f"batches must be a non-negative integer, got {batches!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        workers = max(1, int(num_workers))
        sub_world = self.world_size * workers
        base = self._resume_base
        probe = self._probe or self._make_loader(self.rank, self.world_size)
        template = LoaderState.from_dict(probe.state_dict())
        if base is None:
            prefix, done, epoch = [], int(batches), self._epoch
        else:
            prefix, epoch = [list(h) for h in base["prefix"]], LoaderState.from_dict(base["loader"]).epoch
            if base["world_size"] == self.world_size and base["num_workers"] == workers:
                done = int(base["batches"]) + int(batches)
            else:
                prefix.append([base["world_size"] * base["num_workers"], base["batches"] // base["num_workers"]])
                done = int(batches)
        loader_state = template.at(epoch, [*prefix, [sub_world, done // workers]]).to_dict()
        return _rank_state(loader_state, self.world_size, workers, done)

    def _resolve(self, pending: dict[str, Any], worker: int, workers: int) -> tuple[int, dict[str, Any]]:
        """For worker slot ``worker`` of ``workers``: its sub-rank and the Loader state to load."""
        saved_world, saved_workers = pending["world_size"], pending["num_workers"]
        same = saved_world == self.world_size and saved_workers == workers
        loader_state = _copy(pending["loader"])
        if pending["kind"] == _WORKER_KIND:
            if same:
                return self.rank * workers + pending["sub_rank"], loader_state
            if saved_workers == 1:  # one stream per rank: ranks were in lockstep, the Loader re-splits
                return self.rank * workers + worker, loader_state
            raise StateMismatchError(
                f"a per-worker state saved with world_size={saved_world} and num_workers={saved_workers} "
                f"cannot be resumed with world_size={self.world_size} and num_workers={workers}: workers of a "
                "rank are not in lockstep, so one worker's state does not describe the others. "
                "Resume with the same world size and workers, or save StreambatchIterable.state_at(...)"
            )
        done = int(pending["batches"])
        history = [list(h) for h in pending["prefix"]]
        if same:  # exact: slot j continues the stream that was next in the round-robin
            identity = (done + worker) % workers
            history.append([saved_world * workers, done // workers + (1 if identity < done % workers else 0)])
            return self.rank * workers + identity, _with_history(loader_state, history)
        if done % saved_workers:
            raise StateMismatchError(
                f"this state was saved after {done} batches with num_workers={saved_workers} (not a multiple), "
                f"so its workers were not in lockstep: it resumes only with world_size={saved_world} and "
                f"num_workers={saved_workers}. To change either, checkpoint after a multiple of num_workers batches"
            )
        history.append([saved_world * saved_workers, done // saved_workers])
        return self.rank * workers + worker, _with_history(loader_state, history)

    def __repr__(self) -> str:
        return (
            f"StreambatchIterable({self.source!r}, batch_size={self.batch_size}, "
            f"rank={self.rank}/{self.world_size}, epoch={self._epoch})"
        )


def _rank_state(loader_state: dict[str, Any], world_size: int, num_workers: int, batches: int) -> dict[str, Any]:
    return {
        "kind": _RANK_KIND,
        "version": _VERSION,
        "world_size": world_size,
        "num_workers": num_workers,
        "batches": batches,
        "loader": loader_state,
    }


def _with_history(loader_state: dict[str, Any], history: list) -> dict[str, Any]:
    """``loader_state`` at the same epoch with another ``history`` (built by :class:`LoaderState`)."""
    saved = LoaderState.from_dict(loader_state)
    return saved.at(saved.epoch, history).to_dict()


def _copy(state: Any) -> Any:
    if isinstance(state, dict):
        return {k: _copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [_copy(v) for v in state]
    return state


def _normalise(saved: Mapping[str, Any]) -> dict[str, Any]:
    """Check a state's shape; give rank states a ``prefix`` (history before the current world)."""
    if not isinstance(saved, Mapping):
        raise StateMismatchError(f"a streambatch.torch state must be a dict, got {type(saved).__name__}")
    state: dict[str, Any] = _copy(dict(saved))
    kind = state.get("kind")
    if kind is None and "history" in state:  # a plain Loader state: one stream per rank
        history = state.get("history")
        if (
            not isinstance(history, list)
            or not history
            or not all(isinstance(h, (list, tuple)) and len(h) == 2 for h in history)
        ):
            raise StateMismatchError(f"loader state has an invalid history: {history!r}")
        world, delivered = history[-1]
        state = _rank_state(state, int(world), 1, int(delivered))
        kind = _RANK_KIND
    if kind not in (_WORKER_KIND, _RANK_KIND):
        raise StateMismatchError(f"not a streambatch.torch state (kind {kind!r})")
    if state.get("version") != _VERSION:
        raise StateMismatchError(f"streambatch.torch state version {state.get('version')!r} is not supported")
    for key in ("world_size", "num_workers", "loader"):
        if key not in state:
            raise StateMismatchError(f"streambatch.torch state lacks {key}")
    loader_history = LoaderState.from_dict(state["loader"]).history
    if not isinstance(loader_history, list) or not loader_history:
        raise StateMismatchError("streambatch.torch state has no valid loader history")
    state["original"] = _copy({k: v for k, v in state.items() if k != "original"})
    if kind == _RANK_KIND:
        if "batches" not in state:
            raise StateMismatchError("streambatch.torch rank state lacks batches")
        world = state["world_size"] * state["num_workers"]
        if loader_history[-1][0] != world:
            raise StateMismatchError(
                f"streambatch.torch rank state: history ends in world {loader_history[-1][0]}, "
                f"expected world_size*num_workers={world}"
            )
        state["prefix"] = [list(h) for h in loader_history[:-1]]
    elif "sub_rank" not in state:
        raise StateMismatchError("streambatch.torch worker state lacks sub_rank")
    return state
