"""``Ragged``: a batch of variable-length rows (token ids), as one values array and offsets.

>>> import numpy as np
>>> from streambatch import Ragged
>>> r = Ragged(np.array([5, 6, 7, 8], np.int32), np.array([0, 3, 3, 4]))
>>> len(r), r[0].tolist(), r.lengths.tolist()
(3, [5, 6, 7], [3, 0, 1])
>>> padded, lengths = r.padded(2, fill=0)
>>> padded.tolist(), lengths.tolist()
([[5, 6], [0, 0], [8, 0]], [2, 0, 1])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Ragged"]


class Ragged:
    """Rows of varying length: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``.

    ``values`` is a 1-D NumPy array (all rows' values, concatenated), ``offsets``
    an int64 array of ``len(self) + 1`` increasing entries starting at 0. Both are
    fresh arrays owned by the batch (no view of a reader's buffers). Slicing with
    a step-1 slice gives a ``Ragged``, an integer index one row (a view).
    """

    __slots__ = ("offsets", "values")

    def __init__(self, values: np.ndarray, offsets: np.ndarray) -> None:
        values = np.asarray(values)
        offsets = np.asarray(offsets, dtype=np.int64)
        if values.ndim != 1:
            raise ValueError(f"Ragged values must be 1-D, got shape {values.shape}")
        if offsets.ndim != 1 or offsets.size < 1:
            raise ValueError(f"Ragged offsets must be 1-D with at least one entry, got shape {offsets.shape}")
        if offsets[0] != 0 or offsets[-1] != values.size:
            raise ValueError(
                f"Ragged offsets must run from 0 to len(values)={values.size}, got {offsets[0]}..{offsets[-1]}"
            )
        self.values = values
        self.offsets = offsets

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    @property
    def lengths(self) -> np.ndarray:
        """The number of values of each row (int64)."""
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes + self.offsets.nbytes)

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    def __getitem__(self, index: int | slice) -> np.ndarray | Ragged:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("a Ragged can be sliced with step 1 only; use take() to reorder rows")
            stop = max(start, stop)
            lo, hi = int(self.offsets[start]), int(self.offsets[stop])
            return Ragged(self.values[lo:hi], self.offsets[start : stop + 1] - lo)
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {index} of a Ragged of {len(self)} rows")
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ragged):
            return NotImplemented
        return bool(np.array_equal(self.offsets, other.offsets) and np.array_equal(self.values, other.values))

    __hash__ = None  # type: ignore[assignment]  # mutable arrays: not hashable

    def __repr__(self) -> str:
        return f"Ragged({len(self)} rows, {self.values.size} values of {self.values.dtype})"

    def tolist(self) -> list[list]:
        return [row.tolist() for row in self]

    def take(self, indices: np.ndarray) -> Ragged:
        """The rows at ``indices``, in that order (fresh arrays)."""
        indices = np.asarray(indices, dtype=np.int64)
        starts, lengths = self.offsets[indices], self.lengths[indices]
        offsets = np.zeros(indices.size + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        # each output value's source position: its row's start plus its place in the row
        within = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
        return Ragged(self.values[np.repeat(starts, lengths) + within], offsets)

    @staticmethod
    def concatenate(parts: Sequence[Ragged]) -> Ragged:
        """The rows of ``parts``, one after another (fresh arrays)."""
        if not parts:
            raise ValueError("Ragged.concatenate needs at least one part")
        values = np.concatenate([p.values for p in parts])
        offsets = [np.zeros(1, np.int64)]
        base = 0
        for p in parts:
            offsets.append(p.offsets[1:] + base)
            base += int(p.offsets[-1])
        return Ragged(values, np.concatenate(offsets))

    def padded(self, length: int, fill: object = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(array, lengths)``: an array of shape ``(len(self), length)`` holding each
        row's first ``length`` values, the rest ``fill``; rows longer than ``length``
        are **truncated** (their values past ``length`` are dropped). ``lengths``
        (int64) holds how many values of each row are in the array,
        ``min(row length, length)``, so ``np.arange(length) < lengths[:, None]`` is
        the mask of real values."""
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"padded length must be a non-negative integer, got {length!r}")
        length = int(length)
        rows = len(self)
        out = np.full((rows, length), fill, dtype=self.values.dtype)
        kept = np.minimum(self.lengths, length)
        if rows and length:
            columns = np.arange(length)
            mask = columns[None, :] < kept[:, None]
            source = self.offsets[:-1, None] + columns[None, :]
            out[mask] = self.values[source[mask]]
        return out, kept
