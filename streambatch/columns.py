"""Column kinds: how one column is held in the ring and turned into a batch value.

One contract, :class:`ColumnKind`, with two implementations the ring and the
batcher use without knowing which they hold:

* :class:`FixedKind` -- a fixed-size row (``ColumnSpec.kind == "fixed"``): one
  preallocated ``(capacity, *shape)`` array; a reader copies rows straight into
  views of it and a batch is ``array.take(slots)``. This is the path every
  numeric column takes, unchanged in cost.
* :class:`VariableKind` -- strings, binary and ragged lists. Per ring slot an
  int64 start and length (16 bytes, preallocated) point into a *chunk*: the
  values of the rows one read wrote, copied out of Arrow's buffers into an
  array of their own. A batch concatenates its rows' values and becomes a
  :class:`~streambatch.Ragged` (lists), a ``StringDType`` array (``str``) or an
  object array of ``bytes``.

Memory invariant of variable-length storage: a chunk lives exactly as long as
one ring slot refers to it. Writing a slot or releasing its position drops the
slot's reference (under the storage's lock, so each reference is dropped once),
and the chunk is freed with its last reference. So the values held are at most
those of the rows in the ring's slots -- never more than ``capacity`` rows --
and, with admission bounded by bytes as well as rows
(:meth:`streambatch.readahead.PieceReads.admit`), about the rows of the shuffle
window and the read-ahead. ``nbytes`` counts them exactly, so the reader
admits against what was really read, not only against the footer's estimate.

A row whose values alone exceed ``max_row_nbytes`` (the column's share of the
budget) is refused when written: :class:`RowTooLarge`, which the source turns
into a ``BudgetError`` naming file, column and row.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .ragged import Ragged
from .sources import ColumnSpec

__all__ = [
    "ColumnKind",
    "ColumnStorage",
    "FixedKind",
    "RowTooLarge",
    "VariableKind",
    "VariableTarget",
    "kind_of",
]


class RowTooLarge(Exception):
    """Row ``row`` (of the rows being written) holds ``nbytes`` bytes of values, more
    than ``limit``; the source re-raises it as a ``BudgetError`` naming the file."""

    def __init__(self, row: int, nbytes: int, limit: int) -> None:
        super().__init__(f"row {row} holds {nbytes} bytes, more than {limit}")
        self.row, self.nbytes, self.limit = row, nbytes, limit


class ColumnStorage(abc.ABC):
    """The ring's storage of one column: ``capacity`` slots. ``view`` targets are
    written by reader threads concurrently (disjoint slots); everything else is
    called by the batcher thread."""

    @abc.abstractmethod
    def view(self, slot: int, length: int) -> Any:
        """What a reader writes rows ``[slot, slot + length)`` into: an ndarray for a
        fixed kind, a :class:`VariableTarget` for a variable one."""

    @abc.abstractmethod
    def gather(self, slots: np.ndarray) -> Any:
        """A fresh batch value holding the rows of ``slots``, in that order."""

    @abc.abstractmethod
    def gather_run(self, slot: int, length: int) -> Any:
        """A fresh batch value holding rows ``[slot, slot + length)``."""

    @abc.abstractmethod
    def copy_from(self, slot: int, source: ColumnStorage, offset: int, length: int) -> None:
        """Rows ``[offset, offset + length)`` of ``source`` (same kind) into ``[slot, slot + length)``."""

    def release(self, slots: np.ndarray) -> None:  # noqa: B027 - fixed storage holds nothing per row
        """The rows of ``slots`` have been emitted: free what only they hold."""

    def clear(self) -> None:  # noqa: B027
        """Every row has been emitted or abandoned: free what rows hold."""

    @property
    def nbytes(self) -> int:
        """Bytes held beyond the preallocated slots (variable-length values)."""
        return 0

    @property
    def rows(self) -> np.ndarray | None:
        """Every slot as one C-contiguous ``(capacity, *shape)`` array, which batches
        are gathered from in one native call per group; ``None`` for storage that is
        not one array (variable-length values)."""
        return None


class ColumnKind(abc.ABC):
    """How a column of ``spec`` is stored and delivered. ``row_nbytes`` is what the
    budget reserves per row (an estimate for variable-length rows)."""

    variable: bool = False

    def __init__(self, name: str, spec: ColumnSpec, row_nbytes: int) -> None:
        self.name = name
        self.spec = spec
        self.row_nbytes = int(row_nbytes)

    @abc.abstractmethod
    def storage(self, capacity: int) -> ColumnStorage:
        """Storage for ``capacity`` rows (the ring's, or scratch for one read)."""

    @abc.abstractmethod
    def concatenate(self, parts: Sequence[Any]) -> Any:
        """One batch value of the rows of ``parts``, in order."""

    @abc.abstractmethod
    def take(self, value: Any, indices: np.ndarray) -> Any:
        """The rows of batch value ``value`` at ``indices``."""


# --------------------------------------------------------------------------- fixed


class FixedKind(ColumnKind):
    def storage(self, capacity: int) -> ColumnStorage:
        return _FixedStorage(np.empty((capacity, *self.spec.shape), self.spec.dtype))

    def concatenate(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)

    def take(self, value: np.ndarray, indices: np.ndarray) -> np.ndarray:
        return value.take(indices, axis=0)


class _FixedStorage(ColumnStorage):
    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    @property
    def rows(self) -> np.ndarray:
        return self.array

    def view(self, slot: int, length: int) -> np.ndarray:
        return self.array[slot : slot + length]

    def gather(self, slots: np.ndarray) -> np.ndarray:
        # ``take`` into a new array on purpose: it releases the GIL (reader threads keep
        # running) where ``np.take(..., out=)`` and fancy indexing hold it or run slower
        return self.array.take(slots, axis=0)

    def gather_run(self, slot: int, length: int) -> np.ndarray:
        return self.array[slot : slot + length].copy()

    def copy_from(self, slot: int, source: ColumnStorage, offset: int, length: int) -> None:
        assert isinstance(source, _FixedStorage)  # internal: same kind by construction
        self.array[slot : slot + length] = source.array[offset : offset + length]


# --------------------------------------------------------------------------- variable


class VariableKind(ColumnKind):
    """Strings (``kind == "str"``: UTF-8 bytes in the ring, ``StringDType`` in a batch),
    binary (``"bytes"``: an object array of ``bytes``) and ragged lists (``"list"``:
    a :class:`~streambatch.Ragged` of ``spec.dtype`` values)."""

    variable = True

    def __init__(self, name: str, spec: ColumnSpec, row_nbytes: int, max_row_nbytes: int = 0) -> None:
        super().__init__(name, spec, row_nbytes)
        self.values_dtype = spec.dtype if spec.kind == "list" else np.dtype(np.uint8)
        #: a row's values may hold at most this many bytes (0: no limit)
        self.max_row_nbytes = int(max_row_nbytes)

    def storage(self, capacity: int) -> ColumnStorage:
        return _VariableStorage(self, capacity)

    def deliver(self, values: np.ndarray, offsets: np.ndarray) -> Any:
        """The batch value of rows given as concatenated values and offsets."""
        if self.spec.kind == "list":
            return Ragged(values, offsets)
        import pyarrow as pa  # here, not at import: `.npy`-only use never loads pyarrow

        n = offsets.size - 1
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(values)]
        if self.spec.kind == "str":
            strings = pa.Array.from_buffers(pa.large_string(), n, buffers)
            return strings.to_numpy(zero_copy_only=False).astype(self.spec.dtype)
        return pa.Array.from_buffers(pa.large_binary(), n, buffers).to_numpy(zero_copy_only=False)

    def concatenate(self, parts: Sequence[Any]) -> Any:
        if self.spec.kind == "list":
            return Ragged.concatenate(parts)
        return np.concatenate(parts)

    def take(self, value: Any, indices: np.ndarray) -> Any:
        return value.take(indices)


class VariableTarget:
    """Rows ``[slot, slot + length)`` of a variable-length storage, as a reader sees
    them: ``len()``, step-1 slicing, and :meth:`write`."""

    __slots__ = ("_length", "_slot", "_storage")

    def __init__(self, storage: _VariableStorage, slot: int, length: int) -> None:
        self._storage, self._slot, self._length = storage, slot, length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: slice) -> VariableTarget:
        start, stop, step = index.indices(self._length)
        if step != 1:
            raise ValueError("variable-length targets take step-1 slices only")
        return VariableTarget(self._storage, self._slot + start, max(0, stop - start))

    @property
    def values_dtype(self) -> np.dtype:
        return self._storage.kind.values_dtype

    def write(self, offsets: np.ndarray, values: np.ndarray) -> None:
        """Row ``i`` of the target becomes ``values[offsets[i]:offsets[i + 1]]`` (copied:
        the caller's buffers are not kept); ``len(offsets) == len(self) + 1``."""
        self._storage.write(self._slot, self._length, offsets, values)


class _VariableStorage(ColumnStorage):
    """Per slot: chunk id, start in the chunk, length; chunks freed with their last slot."""

    def __init__(self, kind: VariableKind, capacity: int) -> None:
        self.kind = kind
        self._chunk = np.full(capacity, -1, dtype=np.int64)
        self._start = np.zeros(capacity, dtype=np.int64)
        self._length = np.zeros(capacity, dtype=np.int64)
        self._chunks: dict[int, np.ndarray] = {}
        self._refs: dict[int, int] = {}
        self._next = 0
        self._held = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        return self._held

    def view(self, slot: int, length: int) -> VariableTarget:
        return VariableTarget(self, slot, length)

    def write(self, slot: int, length: int, offsets: np.ndarray, values: np.ndarray) -> None:
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.size != length + 1:
            raise ValueError(f"{length} rows need {length + 1} offsets, got {offsets.size}")
        lengths = np.diff(offsets)
        limit = self.kind.max_row_nbytes
        itemsize = self.kind.values_dtype.itemsize
        if limit and length and int(lengths.max()) * itemsize > limit:
            row = int(np.argmax(lengths))
            raise RowTooLarge(row, int(lengths[row]) * itemsize, limit)
        base = int(offsets[0]) if length else 0
        own = np.array(values[base : int(offsets[-1])], dtype=self.kind.values_dtype, copy=True)
        with self._lock:
            self._drop(self._chunk[slot : slot + length])
            chunk = self._next
            self._next += 1
            self._chunk[slot : slot + length] = chunk
            self._start[slot : slot + length] = offsets[:-1] - base
            self._length[slot : slot + length] = lengths
            if length:
                self._chunks[chunk] = own
                self._refs[chunk] = length
                self._held += own.nbytes

    def _drop(self, ids: np.ndarray) -> None:
        """Drop one reference per entry of ``ids`` (-1: none); caller holds the lock."""
        if not ids.size or ids.max() < 0:  # the common case: slots released before they are rewritten
            return
        ids = ids[ids >= 0]
        unique, counts = np.unique(ids, return_counts=True)
        for chunk, count in zip(unique.tolist(), counts.tolist()):
            left = self._refs[chunk] - count
            if left:
                self._refs[chunk] = left
            else:
                del self._refs[chunk]
                self._held -= self._chunks.pop(chunk).nbytes

    def release(self, slots: np.ndarray) -> None:
        with self._lock:
            self._drop(self._chunk[slots])
            self._chunk[slots] = -1

    def clear(self) -> None:
        with self._lock:
            self._chunk[:] = -1
            self._chunks.clear()
            self._refs.clear()
            self._held = 0

    def raw(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(values, offsets)`` of the rows at ``slots``, in that order (fresh arrays)."""
        ids, starts, lengths = self._chunk[slots], self._start[slots], self._length[slots]
        offsets = np.zeros(slots.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        if not slots.size:
            return np.empty(0, self.kind.values_dtype), offsets
        chunks = self._chunks
        if (ids == ids[0]).all():  # one chunk (in-order reads): one vectorised gather
            values = chunks[int(ids[0])] if int(offsets[-1]) else np.empty(0, self.kind.values_dtype)
            within = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
            return values[np.repeat(starts, lengths) + within], offsets
        parts = [chunks[c][s : s + n] for c, s, n in zip(ids.tolist(), starts.tolist(), lengths.tolist()) if n]
        values = np.concatenate(parts) if parts else np.empty(0, self.kind.values_dtype)
        return values, offsets

    def gather(self, slots: np.ndarray) -> Any:
        return self.kind.deliver(*self.raw(slots))

    def gather_run(self, slot: int, length: int) -> Any:
        return self.gather(np.arange(slot, slot + length, dtype=np.int64))

    def copy_from(self, slot: int, source: ColumnStorage, offset: int, length: int) -> None:
        assert isinstance(source, _VariableStorage)  # internal: same kind by construction
        values, offsets = source.raw(np.arange(offset, offset + length, dtype=np.int64))
        self.write(slot, length, offsets, values)


def kind_of(name: str, spec: ColumnSpec, row_nbytes: int, max_row_nbytes: int = 0) -> ColumnKind:
    """The kind of column ``name``: fixed, or variable for ``spec.variable``."""
    if spec.variable:
        return VariableKind(name, spec, row_nbytes, max_row_nbytes)
    return FixedKind(name, spec, row_nbytes)


def fixed_kinds(columns: Mapping[str, ColumnSpec]) -> dict[str, ColumnKind]:
    """Kinds of fixed-size columns only (what code that has no budget, e.g. tests, uses)."""
    return {n: kind_of(n, s, s.row_nbytes) for n, s in columns.items()}
