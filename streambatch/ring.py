"""The ring: one preallocated array per column where read rows wait to be emitted.

The row at position ``p`` of a rank's row sequence lives in slot ``p % capacity``.
Pieces are admitted in sequence order and released in sequence order, so the
live positions always form one window ``[released, admitted)`` no longer than
the capacity, and slots never collide. Pages are touched only as rows arrive.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .sources import ColumnSpec

__all__ = ["RowRing"]


class RowRing:
    """Per-column ring arrays of ``capacity`` rows."""

    def __init__(self, columns: Mapping[str, ColumnSpec], capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1 row, got {capacity}")
        self.capacity = int(capacity)
        self.arrays = {name: np.empty((self.capacity, *spec.shape), spec.dtype) for name, spec in columns.items()}

    def spans(self, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """``(slot, offset, length)`` runs covering positions ``[lo, hi)``: one run, or
        two when the range wraps past the end of the ring."""
        if hi - lo > self.capacity:
            raise ValueError(f"positions {lo}:{hi} do not fit a ring of {self.capacity} rows")
        first = lo % self.capacity
        length = hi - lo
        if first + length <= self.capacity:
            return [(first, 0, length)]
        head = self.capacity - first
        return [(first, 0, head), (0, head, length - head)]

    def views(self, slot: int, length: int) -> dict[str, np.ndarray]:
        """Writable C-contiguous views of ``length`` rows from ``slot``."""
        return {name: array[slot : slot + length] for name, array in self.arrays.items()}

    def gather(self, positions: np.ndarray, contiguous: bool) -> dict[str, np.ndarray]:
        """Fresh arrays holding the rows at ``positions``, in that order.

        ``ndarray.take`` into a new array is used on purpose: measured here, it
        releases the GIL (reader threads keep running) where ``np.take(..., out=)``
        and fancy indexing hold it or run slower."""
        if contiguous and positions.size:
            lo = int(positions[0])
            runs = self.spans(lo, lo + positions.size)
            if len(runs) == 1:
                slot, _, length = runs[0]
                return {name: array[slot : slot + length].copy() for name, array in self.arrays.items()}
        slots = positions % self.capacity
        return {name: array.take(slots, axis=0) for name, array in self.arrays.items()}
