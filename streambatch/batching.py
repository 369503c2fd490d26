"""Fixed-size batches cut from the emission stream, across segment boundaries."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from .ring import RowRing
from .sources import ColumnSpec

__all__ = ["batch_sizes", "new_batch"]


def new_batch(columns: Mapping[str, ColumnSpec], rows: int) -> dict[str, np.ndarray]:
    """Fresh C-contiguous arrays for one batch; never views into the ring."""
    return {name: np.empty((rows, *spec.shape), spec.dtype) for name, spec in columns.items()}


def batch_sizes(total_rows: int, batch_size: int, drop_last: bool, first_batch: int = 0) -> Iterator[int]:
    """Sizes of the batches from ``first_batch`` on: all ``batch_size`` but a final
    partial one, which ``drop_last`` drops."""
    full, rest = divmod(total_rows, batch_size)
    for _ in range(first_batch, full):
        yield batch_size
    if rest and not drop_last and first_batch <= full:
        yield rest


class BatchFiller:
    """Gathers ring rows into batches of the planned sizes; a batch that spans two
    segments is assembled from its parts (one extra copy, once per segment)."""

    def __init__(self, ring: RowRing, columns: Mapping[str, ColumnSpec], sizes: Iterator[int], contiguous: bool):
        self._ring = ring
        self._columns = columns
        self._sizes = sizes
        self._contiguous = contiguous
        self._parts: list[dict[str, np.ndarray]] = []
        self._filled = 0
        self._size = 0
        self.finished = False
        self._next_batch()

    def _next_batch(self) -> None:
        size = next(self._sizes, None)
        self._parts, self._filled = [], 0
        if size is None:
            self.finished = True
            return
        self._size = size

    def fill(self, positions: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        """Consume ``positions`` in order, yielding each batch as it completes."""
        i = 0
        while i < positions.size and not self.finished:
            take = min(self._size - self._filled, positions.size - i)
            self._parts.append(self._ring.gather(positions[i : i + take], self._contiguous))
            self._filled += take
            i += take
            if self._filled == self._size:
                parts = self._parts
                self._next_batch()
                if len(parts) == 1:
                    yield parts[0]
                else:
                    yield {name: np.concatenate([p[name] for p in parts]) for name in self._columns}

    def fill_rows(self, rows: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Like :meth:`fill`, for rows already gathered (in order) outside the ring."""
        n = len(next(iter(rows.values()))) if rows else 0
        i = 0
        while i < n and not self.finished:
            take = min(self._size - self._filled, n - i)
            self._parts.append({name: values[i : i + take] for name, values in rows.items()})
            self._filled += take
            i += take
            if self._filled == self._size:
                parts = self._parts
                self._next_batch()
                if len(parts) == 1:
                    yield {name: np.ascontiguousarray(values) for name, values in parts[0].items()}
                else:
                    yield {name: np.concatenate([p[name] for p in parts]) for name in self._columns}
