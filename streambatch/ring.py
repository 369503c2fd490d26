"""The ring: per column, storage for ``capacity`` rows where read rows wait to be emitted.

The row at position ``p`` of a rank's row sequence lives in slot ``p % capacity``.
Pieces are admitted in sequence order and released in sequence order, so the
live positions always form one window ``[released, admitted)`` no longer than
the capacity, and slots never collide. Pages are touched only as rows arrive.

How a column is stored is its :class:`~streambatch.columns.ColumnKind`'s
business: fixed-size columns are one preallocated array; variable-length
columns (strings, ragged lists) hold per-slot offsets into chunks of values,
freed as positions are released, so ``variable_nbytes`` -- what they hold --
stays within ``arena_bytes`` while the reader admits by bytes too (see
:mod:`streambatch.columns` for the invariant).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import native
from .columns import ColumnKind

__all__ = ["RowRing", "SpareRing"]


class RowRing:
    """Per-column storage of ``capacity`` rows. ``arena_bytes`` is what the budget
    gives the values of variable-length columns (0 when there are none)."""

    def __init__(self, kinds: Mapping[str, ColumnKind], capacity: int, arena_bytes: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1 row, got {capacity}")
        self.capacity = int(capacity)
        self.kinds = dict(kinds)
        self.storages = {name: kind.storage(self.capacity) for name, kind in self.kinds.items()}
        self._variable = [self.storages[n] for n, k in self.kinds.items() if k.variable]
        rows = [r for r in (storage.rows for storage in self.storages.values()) if r is not None]
        #: every column's slots as one array (all columns fixed-size), or None
        self._rows: list[np.ndarray] | None = rows if len(rows) == len(self.storages) else None
        self.arena_bytes = int(arena_bytes)
        #: estimated bytes of values per row of the variable-length columns (for admission)
        self.variable_row_nbytes = sum(k.row_nbytes for k in self.kinds.values() if k.variable)
        #: what a ring of the same storage is built from (:class:`SpareRing`)
        self.layout = _layout(self.kinds, self.capacity, self.arena_bytes)

    @property
    def variable(self) -> bool:
        return bool(self._variable)

    @property
    def variable_nbytes(self) -> int:
        """Bytes of variable-length values held now."""
        return sum(s.nbytes for s in self._variable)

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

    def views(self, slot: int, length: int) -> dict[str, Any]:
        """Writable targets of ``length`` rows from ``slot`` (C-contiguous array views
        for fixed-size columns)."""
        return {name: storage.view(slot, length) for name, storage in self.storages.items()}

    def scratch(self, length: int) -> dict[str, Any]:
        """Storage for ``length`` rows outside the ring (a read that wraps around it is
        decoded once into scratch, then copied in two parts with :meth:`put`)."""
        return {name: kind.storage(length) for name, kind in self.kinds.items()}

    def put(self, slot: int, scratch: Mapping[str, Any], offset: int, length: int) -> None:
        """Rows ``[offset, offset + length)`` of ``scratch`` into slots ``[slot, slot + length)``."""
        for name, storage in self.storages.items():
            storage.copy_from(slot, scratch[name], offset, length)

    def release(self, lo: int, hi: int) -> None:
        """Positions ``[lo, hi)`` have been emitted: variable-length values only they
        hold are freed (fixed-size storage holds nothing per row to free)."""
        if not self._variable or hi <= lo:
            return
        if hi - lo >= self.capacity:
            slots = np.arange(self.capacity, dtype=np.int64)
        else:
            slots = np.arange(lo, hi, dtype=np.int64) % self.capacity
        for storage in self._variable:
            storage.release(slots)

    def clear(self) -> None:
        """Free every variable-length value (no read is in flight)."""
        for storage in self._variable:
            storage.clear()

    @property
    def fixed(self) -> bool:
        """Every column is fixed-size: batches can be gathered with :meth:`gather_into`."""
        return self._rows is not None

    def arrays(self) -> dict[str, np.ndarray]:
        """Each column's ``(capacity, *shape)`` slots (fixed-size columns only), which
        readers of plain rows write into directly."""
        assert self._rows is not None  # internal: callers check ``fixed``
        return dict(zip(self.storages, self._rows))

    def new_batch(self, rows: int) -> dict[str, np.ndarray]:
        """Uninitialised arrays for a batch of ``rows`` rows (fixed-size columns only)."""
        assert self._rows is not None  # internal: callers check ``fixed``
        return {name: np.empty((rows, *a.shape[1:]), a.dtype) for name, a in zip(self.storages, self._rows)}

    def gather_into(self, positions: np.ndarray, targets: list[tuple[dict[str, np.ndarray], int, int]]) -> None:
        """The rows at ``positions``, in order, into ``targets``: ``(batch, offset,
        rows)`` each, filled one after the other (together ``len(positions)`` rows),
        every column in one call (:func:`streambatch.native.gather`)."""
        assert self._rows is not None  # internal: callers check ``fixed``
        slots = positions % self.capacity
        destinations = [
            [batch[name][offset : offset + rows] for batch, offset, rows in targets] for name in self.storages
        ]
        native.gather(self._rows, slots, destinations)

    def gather(self, positions: np.ndarray, contiguous: bool) -> dict[str, Any]:
        """Fresh batch values holding the rows at ``positions``, in that order."""
        if contiguous and positions.size:
            lo = int(positions[0])
            runs = self.spans(lo, lo + positions.size)
            if len(runs) == 1:
                slot, _, length = runs[0]
                return {name: s.gather_run(slot, length) for name, s in self.storages.items()}
        slots = positions % self.capacity
        return {name: s.gather(slots) for name, s in self.storages.items()}


class SpareRing:
    """The ring of a loader's last finished iterator, kept for its next one.

    Each epoch is a new iterator, and a new ring would fault its pages in again
    (~0.15-0.4 s per GB here, on the reader threads' critical path) and be
    unmapped at the end. The loader keeps at most one idle ring, only while no
    thread can still write it, and never more than its budget's ring; a layout
    that no longer matches is dropped. ``Loader.close()`` frees it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ring: RowRing | None = None

    def take(self, kinds: Mapping[str, ColumnKind], capacity: int, arena_bytes: int = 0) -> RowRing:
        """The spare ring if it has this layout, else a new one."""
        with self._lock:
            ring, self._ring = self._ring, None
        if ring is not None and ring.layout == _layout(kinds, capacity, arena_bytes):
            return ring
        return RowRing(kinds, capacity, arena_bytes)

    def keep(self, ring: RowRing) -> None:
        """``ring`` is idle for good (every thread that used it has ended). Rings with
        variable-length columns are not kept: their values are freed as rows go."""
        if not ring.fixed:
            return
        with self._lock:
            if self._ring is None:
                self._ring = ring

    def clear(self) -> None:
        with self._lock:
            self._ring = None


def _layout(kinds: Mapping[str, ColumnKind], capacity: int, arena_bytes: int) -> tuple[Any, ...]:
    columns = tuple((name, type(kind), kind.spec, kind.row_nbytes) for name, kind in kinds.items())
    return (int(capacity), int(arena_bytes), columns)
