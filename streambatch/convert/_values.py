"""A column's rows inside ``convert``, between reading and writing: how a block
holds them, how they are permuted, and how they are staged on disk.

A block maps each column to its rows. A fixed-size column's rows are a NumPy
array ``(rows, *shape)``; a variable-length one's (strings, binary, ragged lists)
are a :class:`~streambatch.Ragged` -- of the UTF-8 / raw bytes for strings and
binary, so that permuting, slicing and concatenating are vectorised offset
arithmetic and the Parquet writer builds Arrow arrays from the two buffers
without decoding a string. :func:`held_kinds` gives the column kinds
(:mod:`streambatch.columns`) that hold them so: a block is permuted through
``kind.take`` exactly as the loader permutes a batch.

Staging (shuffle buckets): a fixed column is ``{name}.bin``, rows back to back; a
variable one is ``{name}.bin`` (the values back to back) plus
``{name}.lengths`` (int64, each row's number of values).

Reading: a reader copies a variable-length column's rows into a
:class:`RowsTarget` (the ``VariableTarget`` contract readers write to), which
keeps each write's values as they came and joins them in row order once -- an
in-order read needs none of the ring's per-slot bookkeeping. A row whose values
exceed :func:`row_limit` of the memory limit is refused when written
(``RowTooLarge``, which the source turns into a ``BudgetError`` naming file,
column and row, as for the loader), so no single row takes more than one read
block's share of memory.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Mapping

import numpy as np

from ..columns import ColumnKind, RowTooLarge, VariableTarget, kind_of
from ..ragged import Ragged
from ..sources import ColumnSpec

__all__ = [
    "RowsTarget",
    "Value",
    "append_rows",
    "held_kinds",
    "held_spec",
    "load_rows",
    "row_limit",
    "staging_files",
    "take",
    "take_pieces",
    "take_values",
]

#: One column's rows in a block.
Value = np.ndarray | Ragged

#: A variable-length row may hold at most this fraction of the memory limit: the
#: budget of one read block of shuffle pass 1 (``_planning.scatter_block_rows``).
_ROW_SHARE = 8


def row_limit(memory_limit: int) -> int:
    """The most bytes of values one variable-length row may hold under ``memory_limit``."""
    return max(1, int(memory_limit) // _ROW_SHARE)


def held_spec(spec: ColumnSpec) -> ColumnSpec:
    """How a block holds a column: as it is, strings and binary as lists of their bytes."""
    return ColumnSpec(np.dtype(np.uint8), (), "list") if spec.kind in ("str", "bytes") else spec


def held_kinds(columns: Mapping[str, ColumnSpec]) -> dict[str, ColumnKind]:
    """The kind that holds each column's rows in a block (:func:`held_spec`): a
    block is permuted and joined through these kinds' ``take`` and ``concatenate``."""
    return {name: kind_of(name, held_spec(spec), spec.row_nbytes) for name, spec in columns.items()}


def take(kinds: Mapping[str, ColumnKind], block: Mapping[str, Value], indices: np.ndarray) -> dict[str, Value]:
    """The rows of ``block`` at ``indices``, in that order, through each column's kind."""
    return {name: kinds[name].take(value, indices) for name, value in block.items()}


def take_pieces(
    kinds: Mapping[str, ColumnKind], block: Mapping[str, Value], indices: np.ndarray, max_values: int
) -> Iterator[dict[str, Value]]:
    """The rows of ``block`` at ``indices``, in that order, as consecutive blocks whose
    variable-length columns hold about ``max_values`` values at most (a piece ends at
    the row that crosses a multiple of it): a ``Ragged``'s take builds int64 index
    arrays of its values' size (about 24 bytes a value at its peak), so its pieces
    bound that memory (:func:`take_values`). Fixed-size columns only: one piece."""
    counts = [block[n].lengths[indices] for n, k in kinds.items() if k.variable and n in block]  # type: ignore[union-attr]
    if not counts or not indices.size:
        yield take(kinds, block, indices)
        return
    held = np.sum(counts, axis=0)
    before = np.cumsum(held) - held  # values of the rows before each row
    cuts = np.flatnonzero(np.diff(before // max(1, max_values))) + 1
    for piece in np.split(indices, cuts):
        yield take(kinds, block, piece)


def take_values(memory_limit: int) -> int:
    """Values of variable-length rows one piece of :func:`take_pieces` holds: its
    index arrays then take about a tenth of ``memory_limit``."""
    return max(1 << 12, int(memory_limit) // 256)


class RowsTarget(VariableTarget):
    """Rows ``[slot, slot + length)`` of one read of ``rows`` variable-length rows, as
    a reader writes them (``len()``, step-1 slices, :meth:`write`); every row must
    be written exactly once, in any order of disjoint ranges, before
    :meth:`ragged`. Thread safety: one reading thread (convert reads a block in the
    calling thread)."""

    __slots__ = ("_rows",)

    def __init__(self, rows: _Rows, slot: int, length: int) -> None:
        self._rows, self._slot, self._length = rows, slot, length

    def __getitem__(self, index: slice) -> RowsTarget:
        start, stop, step = index.indices(self._length)
        if step != 1:
            raise ValueError("variable-length targets take step-1 slices only")
        return RowsTarget(self._rows, self._slot + start, max(0, stop - start))

    @property
    def values_dtype(self) -> np.dtype:
        return self._rows.values_dtype

    def write(self, offsets: np.ndarray, values: np.ndarray) -> None:
        self._rows.write(self._slot, self._length, offsets, values)

    @classmethod
    def open(cls, rows: int, values_dtype: np.dtype, max_row_nbytes: int = 0) -> RowsTarget:
        """A target for ``rows`` rows of ``values_dtype`` values."""
        return cls(_Rows(rows, values_dtype, max_row_nbytes), 0, rows)

    def ragged(self) -> Ragged:
        """Every row written, in row order."""
        return self._rows.ragged()


class _Rows:
    def __init__(self, rows: int, values_dtype: np.dtype, max_row_nbytes: int) -> None:
        self.rows, self.values_dtype, self.max_row_nbytes = rows, np.dtype(values_dtype), int(max_row_nbytes)
        self.pieces: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # first row -> (lengths, values); a rewrite replaces

    def write(self, slot: int, length: int, offsets: np.ndarray, values: np.ndarray) -> None:
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.size != length + 1:
            raise ValueError(f"{length} rows need {length + 1} offsets, got {offsets.size}")
        if not length:
            return
        lengths = np.diff(offsets)
        itemsize = self.values_dtype.itemsize
        if self.max_row_nbytes and int(lengths.max()) * itemsize > self.max_row_nbytes:
            row = int(np.argmax(lengths))
            raise RowTooLarge(row, int(lengths[row]) * itemsize, self.max_row_nbytes)
        # a copy: the reader's buffers (a whole decoded row group) are not kept
        own = np.array(values[int(offsets[0]) : int(offsets[-1])], dtype=self.values_dtype, copy=True)
        self.pieces[slot] = (lengths, own)

    def ragged(self) -> Ragged:
        starts = sorted(self.pieces)
        pieces = [self.pieces[s] for s in starts]
        expected = [0, *np.cumsum([len(p[0]) for p in pieces], dtype=np.int64).tolist()]
        if starts != expected[:-1] or expected[-1] != self.rows:
            raise RuntimeError(f"a read wrote the rows from {starts} of {self.rows} rows: not every row once")
        offsets = np.zeros(self.rows + 1, np.int64)
        if not pieces:
            return Ragged(np.empty(0, self.values_dtype), offsets)
        np.cumsum(np.concatenate([p[0] for p in pieces]), out=offsets[1:])
        values = pieces[0][1] if len(pieces) == 1 else np.concatenate([p[1] for p in pieces])
        return Ragged(values, offsets)


def staging_files(name: str, spec: ColumnSpec) -> list[str]:
    """The staging file names of column ``name`` in a directory."""
    return [f"{name}.bin", f"{name}.lengths"] if spec.variable else [f"{name}.bin"]


def append_rows(directory: str, name: str, value: Value) -> None:
    """Append a column's rows to its staging files in ``directory``."""
    if isinstance(value, Ragged):
        with open(os.path.join(directory, f"{name}.lengths"), "ab") as f:
            f.write(value.lengths.data)
        data = np.ascontiguousarray(value.values)
    else:
        data = np.ascontiguousarray(value)
    with open(os.path.join(directory, f"{name}.bin"), "ab") as f:
        f.write(data.reshape(-1).view(np.uint8).data)


def load_rows(directory: str, name: str, spec: ColumnSpec, rows: int) -> Value:
    """The ``rows`` rows of column ``name`` staged in ``directory`` (an ``OSError``
    with ``EIO`` naming the file if it holds another amount)."""
    path = os.path.join(directory, f"{name}.bin")
    if spec.variable:
        lengths = _exactly(os.path.join(directory, f"{name}.lengths"), np.dtype(np.int64), rows)
        offsets = np.zeros(rows + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        dtype = held_spec(spec).dtype
        return Ragged(_exactly(path, dtype, int(offsets[-1])), offsets)
    count = rows * int(np.prod(spec.shape, dtype=np.int64))
    return _exactly(path, spec.dtype, count).reshape(rows, *spec.shape)


def _exactly(path: str, dtype: np.dtype, count: int) -> np.ndarray:
    data = np.fromfile(path, dtype=dtype, count=count) if count else np.empty(0, dtype)
    if data.size != count:
        raise OSError(errno.EIO, f"staging file {path} holds {data.size} values, expected {count}", path)
    return data
