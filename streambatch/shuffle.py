"""The sliding-window shuffle, computed on row positions only (no data).

Every row at position ``p`` of piece ``i`` gets the key
``load[i] + (end[i] - load[i]) * u(p)``, with ``u`` a counter-based hash in
[0, 1) of ``(key_seed, p)`` and ``load``/``end`` the plan's tick schedule (see
:func:`streambatch.plan.ticks`). The epoch emits rows in key order.
Consequences, each relied on elsewhere:

* the order is a pure function of the plan: whatever the thread count, timing or
  segmentation, the same plan gives the same row order;
* rows with keys below tick ``t`` come only from the pieces with
  ``load < t`` (a prefix), so emission starts once the first pieces are read,
  and piece ``i`` can be released once tick ``end[i]`` is reached;
* resuming at any position needs only keys (cheap hashing), then reads the
  pieces still live at that position: about one window of data.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .plan import EpochPlan

__all__ = ["Segment", "WindowShuffle"]

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def uniform_hash(seed: int, positions: np.ndarray) -> np.ndarray:
    """SplitMix64 of ``seed + (p + 1) * gamma`` mapped to float64 in [0, 1)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (positions.astype(np.uint64) + np.uint64(1)) * _GAMMA
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class Segment:
    """Rows whose keys fall in ticks ``[tick_lo, tick_hi)``, in emission order.

    ``positions`` are positions in the rank's row sequence, ``keys`` their
    (increasing) keys. Pieces ``< pieces_needed`` must be loaded to emit it; once
    it is consumed, pieces ``< first_live`` are no longer needed (and once its
    rows up to key ``k`` are, pieces ``< plan.first_live_piece(k)``).
    """

    tick_lo: int
    tick_hi: int
    positions: np.ndarray
    keys: np.ndarray
    pieces_needed: int
    first_live: int


class WindowShuffle:
    """Produces the epoch's emission order one segment of ticks at a time."""

    def __init__(self, plan: EpochPlan, max_segment_ticks: int) -> None:
        self.plan = plan
        self.sizes = plan.sizes
        # data that fits has many fine ticks (see plan.ticks): 16 segments or so in all
        self.max_segment_ticks = max(1, int(max_segment_ticks), plan.last_tick // 16 if plan.fits else 0)

    def keys(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, positions)`` of every row of pieces ``[first, last)``."""
        plan = self.plan
        lo, hi = int(plan.offsets[first]), int(plan.offsets[last])
        positions = np.arange(lo, hi, dtype=np.int64)
        sizes = self.sizes[first:last]
        base = np.repeat(plan.load[first:last], sizes)
        scale = np.repeat(plan.end[first:last] - plan.load[first:last], sizes)
        if plan.shuffle:
            return base + scale * uniform_hash(plan.key_seed, positions), positions
        within = positions - np.repeat(plan.offsets[first:last], sizes)
        return base + scale * (within / np.repeat(sizes, sizes)), positions

    def first_live_piece(self, tick: float) -> int:
        """The lowest piece still needed at ``tick``."""
        return self.plan.first_live_piece(tick)

    def locate(self, rows_done: int) -> tuple[int, int]:
        """``(tick, skip)``: emission resumes at ``tick`` after dropping ``skip`` rows."""
        if rows_done <= 0:
            return 0, 0
        emitted = 0
        for tick, hi, keys, _, _ in self._sweep(0, 0, itertools.repeat(max(self.max_segment_ticks, 64))):
            if emitted + len(keys) > rows_done:
                # the position lies in [tick, hi): find the exact tick by counting floors
                floors = np.floor(keys).astype(np.int64)
                per_tick = np.bincount(floors - tick, minlength=hi - tick)
                cumulative = emitted + np.cumsum(per_tick)
                offset = int(np.searchsorted(cumulative, rows_done, side="right"))
                before = int(cumulative[offset - 1]) if offset else emitted
                return tick + offset, rows_done - before
            emitted += len(keys)
        return self.plan.last_tick, rows_done - emitted

    def segments(self, start_tick: int = 0) -> Iterator[Segment]:
        """Segments from ``start_tick`` to the end of the epoch. They start one tick
        long and double up to ``max_segment_ticks``, so the first batch waits for
        only the first pieces."""
        resuming = start_tick > 0
        lengths = _doubling(self.max_segment_ticks)
        for tick, hi, keys, positions, needed in self._sweep(start_tick, self.first_live_piece(start_tick), lengths):
            if resuming:  # rows of earlier ticks were emitted already
                kept = keys >= tick
                keys, positions = keys[kept], positions[kept]
                resuming = False
            order = np.argsort(keys)  # keys are distinct 53-bit hashes: no ties to break
            yield Segment(tick, hi, positions[order], keys[order], needed, self.first_live_piece(hi))

    def _sweep(
        self, tick: int, next_piece: int, lengths: Iterator[int]
    ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, int]]:
        """Walk the ticks from ``tick`` to the end, ``next(lengths)`` ticks at a time:
        for each ``[tick, hi)``, ``(tick, hi, keys, positions, needed)`` of the rows whose
        keys are below ``hi`` and were not given before. Pieces ``[next_piece, needed)``
        are keyed as ``hi`` needs them; rows with later keys are carried to the next
        step, ahead of the new pieces' rows."""
        plan = self.plan
        last_tick = plan.last_tick
        pending_keys = np.zeros(0)
        pending_pos = np.zeros(0, dtype=np.int64)
        while tick < last_tick:
            hi = min(tick + next(lengths), last_tick)
            needed = max(next_piece, plan.pieces_needed(hi))
            keys, positions = self.keys(next_piece, needed)
            next_piece = needed
            if pending_keys.size:
                keys = np.concatenate([pending_keys, keys])
                positions = np.concatenate([pending_pos, positions])
            inside = keys < hi
            yield tick, hi, keys[inside], positions[inside], needed
            later = ~inside
            pending_keys, pending_pos = keys[later], positions[later]
            tick = hi


def _doubling(limit: int) -> Iterator[int]:
    """1, 2, 4, ... up to ``limit``, then ``limit`` for ever."""
    length = 1
    while True:
        yield length
        length = min(length * 2, limit)
