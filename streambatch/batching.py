"""Fixed-size batches cut from the emission stream, across segment boundaries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .ring import RowRing

__all__ = ["BatchFiller", "batch_sizes"]


def batch_sizes(total_rows: int, batch_size: int, drop_last: bool, first_batch: int = 0) -> Iterator[int]:
    """Sizes of the batches from ``first_batch`` on: all ``batch_size`` but a final
    partial one, which ``drop_last`` drops."""
    full, rest = divmod(total_rows, batch_size)
    for _ in range(first_batch, full):
        yield batch_size
    if rest and not drop_last and first_batch <= full:
        yield rest


class BatchFiller:
    """Gathers ring rows into batches of the planned sizes.

    When every column is fixed-size, each batch is allocated once and filled in
    place, up to ``group_batches`` batches per gather (one native call for all of
    them and every column: see :meth:`RowRing.gather_into`), so a batch that spans
    two segments costs no extra copy. Otherwise a batch is assembled from the
    parts each segment gives it, each column by its kind (an array, a
    ``Ragged``, strings): one extra copy, once per segment."""

    def __init__(self, ring: RowRing, sizes: Iterator[int], contiguous: bool):
        self._ring = ring
        self._kinds = ring.kinds
        self._sizes = sizes
        self._contiguous = contiguous
        self._parts: list[dict[str, Any]] = []
        #: the batch being filled in place (fixed-size columns), rows ``[0, _filled)`` written
        self._batch: dict[str, np.ndarray] | None = None
        self._filled = 0
        self._size = 0
        self.finished = False
        #: rows of the current ``fill``/``fill_rows`` call consumed so far
        self.taken = 0
        #: batches gathered at most per ``ready`` call and gather (the producer raises it
        #: as its hand-over groups grow: a batch group is handed over whole anyway)
        self.group_batches = 1
        self._next_batch()

    def _next_batch(self) -> None:
        size = next(self._sizes, None)
        self._parts, self._batch, self._filled = [], None, 0
        if size is None:
            self.finished = True
            return
        self._size = size

    def fill(self, positions: np.ndarray, ready: Callable[[int, int], int]) -> Iterator[dict[str, Any]]:
        """Consume ``positions`` in order, yielding each batch as it completes.

        ``ready(a, b)`` is asked before rows ``[a, b)`` are gathered; it returns ``c``
        in ``(a, b]`` once rows ``[a, c)`` are in the ring, and the rest is asked for
        again: rows are read as they are needed, not a segment ahead."""
        if self._ring.fixed:
            return self._fill_in_place(positions, ready)

        def part(a: int, b: int) -> tuple[int, dict[str, Any]]:
            c = ready(a, b)
            return c, self._ring.gather(positions[a:c], self._contiguous)

        return self._consume(positions.size, part)

    def fill_rows(self, rows: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Like :meth:`fill`, for rows already gathered (in order) outside the ring."""
        n = len(next(iter(rows.values()))) if rows else 0
        return self._consume(n, lambda a, b: (b, {name: values[a:b] for name, values in rows.items()}))

    def _fill_in_place(self, positions: np.ndarray, ready: Callable[[int, int], int]) -> Iterator[dict[str, Any]]:
        """:meth:`fill` for fixed-size columns: the rows of up to ``group_batches``
        batches gathered in one call, straight into the batches' own arrays."""
        ring = self._ring
        if self._parts:  # a batch begun from rows read outside the ring (``fill_rows``)
            self._batch = ring.new_batch(self._size)
            ring_parts, self._parts = self._parts, []
            done = 0
            for rows in ring_parts:
                n = len(next(iter(rows.values())))
                for name, values in rows.items():
                    self._batch[name][done : done + n] = values
                done += n
        n = positions.size
        i = self.taken = 0
        while i < n and not self.finished:
            want = self._size - self._filled + (self.group_batches - 1) * self._size
            c = ready(i, min(n, i + want))
            targets: list[tuple[dict[str, np.ndarray], int, int]] = []
            completed: list[dict[str, Any]] = []
            j = i
            while j < c and not self.finished:
                if self._batch is None:
                    self._batch = ring.new_batch(self._size)
                take = min(self._size - self._filled, c - j)
                targets.append((self._batch, self._filled, take))
                self._filled += take
                j += take
                if self._filled == self._size:
                    completed.append(self._batch)
                    self._next_batch()
            ring.gather_into(positions[i:j], targets)
            i = self.taken = j
            yield from completed

    def _consume(self, n: int, part: Callable[[int, int], tuple[int, dict[str, Any]]]) -> Iterator[dict[str, Any]]:
        """``part(a, b)`` gathers rows ``[a, c)`` for some ``c`` in ``(a, b]`` and returns ``(c, rows)``."""
        if self._batch is not None:  # a batch begun in place continues from parts
            self._parts = [{name: values[: self._filled] for name, values in self._batch.items()}]
            self._batch = None
        i = self.taken = 0
        while i < n and not self.finished:
            end, rows = part(i, i + min(self._size - self._filled, n - i))
            self._parts.append(rows)
            self._filled += end - i
            i = self.taken = end
            if self._filled == self._size:
                parts = self._parts
                self._next_batch()
                if len(parts) == 1:
                    yield parts[0]
                else:
                    yield {name: kind.concatenate([p[name] for p in parts]) for name, kind in self._kinds.items()}
