"""The sliding-window shuffle, computed on row positions only (no data).

Every row at position ``p`` of piece ``i`` gets the key ``i + span_i * u(p)``,
with ``u`` a counter-based hash in [0, 1) of ``(key_seed, p)`` and ``span_i`` the
window (fewer pieces near the ends of the epoch). The epoch emits rows in key
order. Consequences, each relied on elsewhere:

* the order is a pure function of the plan: whatever the thread count, timing or
  segmentation, the same plan gives the same row order;
* rows with keys below tick ``t`` come only from pieces ``< t``, so emission can
  start once the first piece is read (the ramp makes the first tick hold piece 0
  whole), and piece ``i`` can be released once tick ``i + span_i`` is reached:
  at most ``window_pieces`` pieces are live at any tick;
* in steady state every tick mixes rows of ``window_pieces`` different pieces;
* resuming at any position needs only keys (cheap hashing), then reads the
  pieces still live at that position: about one window of data.
"""

from __future__ import annotations

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

    ``positions`` are positions in the rank's row sequence. Pieces ``< tick_hi``
    must be loaded to emit it; once it is consumed, pieces with
    ``i + span_i <= tick_hi`` are no longer needed.
    """

    tick_lo: int
    tick_hi: int
    positions: np.ndarray


class WindowShuffle:
    """Produces the epoch's emission order one segment of ticks at a time."""

    def __init__(self, plan: EpochPlan, max_segment_ticks: int) -> None:
        self.plan = plan
        self.spans = plan.spans()
        self.sizes = plan.sizes
        self.release_tick = np.arange(plan.num_pieces, dtype=np.int64) + self.spans
        self.max_segment_ticks = max(1, int(max_segment_ticks))

    def keys(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, positions)`` of every row of pieces ``[first, last)``."""
        plan = self.plan
        lo, hi = int(plan.offsets[first]), int(plan.offsets[last])
        positions = np.arange(lo, hi, dtype=np.int64)
        sizes = self.sizes[first:last]
        base = np.repeat(np.arange(first, last, dtype=np.float64), sizes)
        if plan.shuffle:
            scale = np.repeat(self.spans[first:last].astype(np.float64), sizes)
            return base + scale * uniform_hash(plan.key_seed, positions), positions
        within = positions - np.repeat(plan.offsets[first:last], sizes)
        return base + within / np.repeat(sizes, sizes), positions

    def first_live_piece(self, tick: int) -> int:
        """The lowest piece still needed at ``tick``."""
        return int(np.searchsorted(self.release_tick, tick, side="right"))

    def locate(self, rows_done: int) -> tuple[int, int]:
        """``(tick, skip)``: emission resumes at ``tick`` after dropping ``skip`` rows."""
        if rows_done <= 0:
            return 0, 0
        step = max(self.max_segment_ticks, 64)
        tick, emitted = 0, 0
        pending = np.zeros(0)
        next_piece = 0
        n = self.plan.num_pieces
        while tick < n:
            hi = min(tick + step, n)
            keys, _ = self.keys(next_piece, hi)
            next_piece = hi
            pending = np.concatenate([pending, keys])
            inside = pending < hi
            count = int(inside.sum())
            if emitted + count > rows_done:
                # the position lies in [tick, hi): find the exact tick by counting floors
                floors = np.floor(pending[inside]).astype(np.int64)
                per_tick = np.bincount(floors - tick, minlength=hi - tick)
                cumulative = emitted + np.cumsum(per_tick)
                offset = int(np.searchsorted(cumulative, rows_done, side="right"))
                before = int(cumulative[offset - 1]) if offset else emitted
                return tick + offset, rows_done - before
            emitted += count
            pending = pending[~inside]
            tick = hi
        return n, rows_done - emitted

    def segments(self, start_tick: int = 0) -> Iterator[Segment]:
        """Segments from ``start_tick`` to the end of the epoch. They start one tick
        long and double up to ``max_segment_ticks``, so the first batch waits for
        only the first pieces."""
        n = self.plan.num_pieces
        tick = start_tick
        next_piece = self.first_live_piece(tick)
        pending_keys = np.zeros(0)
        pending_pos = np.zeros(0, dtype=np.int64)
        length = 1
        while tick < n:
            hi = min(tick + length, n)
            keys, positions = self.keys(next_piece, hi)
            next_piece = hi
            if pending_keys.size:
                keys = np.concatenate([pending_keys, keys])
                positions = np.concatenate([pending_pos, positions])
            inside = keys < hi
            if tick > 0 and tick == start_tick:
                inside &= keys >= tick  # resuming: rows of earlier ticks were emitted already
            chosen = keys[inside]
            order = np.argsort(chosen)  # keys are distinct 53-bit hashes: no ties to break
            yield Segment(tick, hi, positions[inside][order])
            outside = ~inside if not (tick > 0 and tick == start_tick) else keys >= hi
            pending_keys, pending_pos = keys[outside], positions[outside]
            tick = hi
            length = min(length * 2, self.max_segment_ticks)
