"""The epoch plan: which rows each rank reads in which order, and when each read
piece may be emitted, as a pure function of (dataset metadata, seed, epoch,
rank, world size, plan parameters).

An epoch is laid out in five steps, all deterministic and cheap (numpy on
per-unit arrays, no data read):

1. *Units*: each shard is cut into read units. Random-access shards (``.npy``)
   are tiled into ``piece_rows``-row units whose phase moves every epoch;
   other formats give their own (Parquet row groups, Zarr chunks).
2. *Order*: with ``shuffle`` the units are permuted (the same permutation on
   every rank: it depends on seed and epoch only).
3. *Rank split*: rank ``r`` of ``W`` takes rows ``[r*q, (r+1)*q)`` of the
   concatenated sequence, cutting units where needed; the remainder ``N % W``
   is dropped or padded by wrapping.
4. *Pieces and lanes*: a unit that the format can *stream* (read in order in
   slices without holding it whole: Parquet row groups) is cut into slices of
   ``piece_rows``; every other unit is one piece. The units are dealt into at
   most ``lanes`` lanes of consecutive units, and the lanes' pieces are
   interleaved by their progress through the lane, so that consecutive pieces
   come from different units: a window of pieces mixes rows from ``lanes``
   distinct parts of the dataset even when one unit is far larger than the
   window. A unit's slices stay in order, which is what a stream needs.
5. *Ticks*: piece ``i`` gets a load tick ``load[i]`` and an end tick ``end[i]``;
   the shuffle (:mod:`streambatch.shuffle`) gives its rows keys uniform in
   ``[load[i], end[i])``. See :func:`ticks` for the schedule.

The result, :class:`EpochPlan`, lists the pieces (shard, start, stop, stream)
in the order they are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from .sources import Dataset

__all__ = ["EpochPlan", "PlanParams", "make_plan", "rows_per_rank", "ticks", "wrapped_ranges"]

_PLAN_STREAM = 0x51AB  # separates the plan's random stream from the key stream

#: Pieces loaded per tick during the ramp at the start of an epoch (steady state: 1).
RAMP = 8
#: The ``k``-th piece read on its own ends at most ``_FIRST_SPAN * (k + 1) ** 2`` ticks after it loads.
_FIRST_SPAN = RAMP
#: Data that fits: the first batch waits for one or two read units (_head_rows), and at least this many rows.
_MIN_HEAD_ROWS = 8192
#: Data that fits: rows emitted (from the head alone) before anything else needs to be loaded.
_FIRST_ROWS = 256
#: Epochs of at least this many rows wait for one whole read unit, not two (see _head_rows).
_ONE_UNIT_HEAD_EPOCH = 2000 * _FIRST_ROWS
#: Data that fits: rows per tick, on average.
_ROWS_PER_TICK = 64
#: Data that fits: the rows loaded double with every this many rows emitted.
_DOUBLING_ROWS = 256

Remainder = Literal["pad", "drop"]


@dataclass(frozen=True)
class PlanParams:
    """What decides the order besides (seed, epoch, rank, world size).

    ``window_pieces`` is how many pieces may be live at once (the shuffle
    window); ``piece_rows`` is the size of random-access units; ``slice_rows``
    the size of the slices streamed units are read in (about 4 per lane in
    the window: each slice costs ~60 µs of calls, and finer slices barely mix
    better, since a lane's window rows are one run of its unit either way —
    measured: 64 k-row groups at 25 %, 16 per lane 1.12 at 0.97 M rows/s, 4 per
    lane 1.22 at 1.07 M rows/s); ``lanes`` is how many
    units may be streamed at once (each open stream costs memory, see
    :mod:`streambatch.budget`).
    """

    shuffle: bool
    seed: int
    window_pieces: int
    piece_rows: int
    lanes: int = 1
    remainder: Remainder = "pad"
    slice_rows: int = 0  # rows of a streamed unit's slices; 0: piece_rows
    stream_min_rows: int = 0  # streamable units of fewer rows are read whole

    def __post_init__(self) -> None:
        if self.window_pieces < 1:
            raise ValueError(f"window_pieces must be >= 1, got {self.window_pieces}")
        if self.piece_rows < 1:
            raise ValueError(f"piece_rows must be >= 1, got {self.piece_rows}")
        if self.lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {self.lanes}")
        if self.remainder not in ("pad", "drop"):
            raise ValueError(f"remainder must be 'pad' or 'drop', got {self.remainder!r}")


@dataclass(frozen=True)
class EpochPlan:
    """The pieces one rank reads in one epoch, in read order.

    Piece ``i`` is rows ``[start[i], stop[i])`` of ``dataset.shards[shard[i]]``;
    ``offsets[i]`` is its first position in this rank's row sequence.
    ``stream[i]`` is ``-1`` for a piece read on its own, else the id of the
    streamed unit it is a slice of: the pieces of one stream are consecutive
    row ranges, in increasing ``i``. ``load``/``end`` are the tick schedule
    (both non-decreasing).
    """

    shard: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    stream: np.ndarray
    offsets: np.ndarray
    load: np.ndarray
    end: np.ndarray
    key_seed: int
    shuffle: bool
    #: every piece may be live at once (the data fits): ticks share one end
    fits: bool = False

    @property
    def num_pieces(self) -> int:
        return int(self.shard.shape[0])

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def sizes(self) -> np.ndarray:
        return self.stop - self.start

    @property
    def last_tick(self) -> int:
        """One past the last tick that holds a key."""
        return int(np.ceil(self.end[-1])) if self.num_pieces else 0

    def pieces_needed(self, tick: float) -> int:
        """How many pieces (a prefix) must be loaded to emit keys below ``tick``."""
        return int(np.searchsorted(self.load, tick, side="left"))

    def pieces_holding(self, key: float) -> int:
        """How many pieces (a prefix) must be loaded to emit the row with ``key``
        and every row before it."""
        return int(np.searchsorted(self.load, key, side="right"))

    def piece_of(self, positions: np.ndarray) -> np.ndarray:
        """The piece holding each of ``positions`` (positions in the rank's row sequence)."""
        return np.searchsorted(self.offsets, positions, side="right") - 1

    def first_live_piece(self, tick: float) -> int:
        """The lowest piece still holding keys at or above ``tick``."""
        # the method, not np.searchsorted's dispatch: called per batch group
        return int(self.end.searchsorted(tick, side="right"))

    @cached_property
    def streamed(self) -> bool:
        """Some pieces are slices of streamed units."""
        return bool((self.stream >= 0).any())


def rows_per_rank(num_rows: int, world_size: int, remainder: Remainder) -> int:
    """Rows every rank gets in an epoch."""
    if remainder == "drop":
        return num_rows // world_size
    return -(-num_rows // world_size)


def make_plan(dataset: Dataset, params: PlanParams, epoch: int, rank: int = 0, world_size: int = 1) -> EpochPlan:
    """The pieces ``rank`` reads in ``epoch``; the same arguments give the same plan."""
    rng = np.random.default_rng(np.random.SeedSequence([params.seed, epoch, _PLAN_STREAM]))
    shard, start, stop = _units(dataset, params, rng)
    if params.shuffle and shard.size:
        order = rng.permutation(shard.size)
        shard, start, stop = shard[order], start[order], stop[order]
    shard, start, stop = _rank_slice(shard, start, stop, params.remainder, rank, world_size)
    streamed = np.array([s.streams_units for s in dataset.shards], dtype=bool)
    slice_rows = params.slice_rows or params.piece_rows
    shard, start, stop, stream = _pieces(
        shard, start, stop, streamed, slice_rows, params.lanes, max(slice_rows + 1, params.stream_min_rows)
    )
    sizes = stop - start
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    head_rows = _head_rows(sizes, stream, params.lanes)
    load, end = ticks(sizes, stream >= 0, params.window_pieces, params.shuffle, head_rows)
    key_seed = int(np.random.SeedSequence([params.seed, epoch, rank, world_size]).generate_state(1, np.uint64)[0])
    fits = params.shuffle and shard.size <= params.window_pieces
    return EpochPlan(shard, start, stop, stream, offsets, load, end, key_seed, params.shuffle, fits)


def ticks(
    sizes: np.ndarray, streamed: np.ndarray, window: int, shuffle: bool, head_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(load, end)``: the rows of piece ``i`` (``sizes[i]`` rows; ``streamed[i]``
    if it is a slice of a streamed unit) get keys uniform in ``[load[i], end[i])``.

    Emission in key order then has two properties the pipeline relies on: keys
    below tick ``t`` come only from pieces with ``load < t`` (a prefix, so the
    first batch needs only the first pieces), and piece ``i`` can be released
    once tick ``end[i]`` is reached; at most ``window`` pieces are live at once.

    * **The data fits** (``len(sizes) <= window``): every piece ends at one
      common tick ``T``. A row not emitted by tick ``t`` then has its key uniform
      in ``[t, T)`` whatever its piece (the uniform is memoryless), so once all
      pieces are loaded the rest of the epoch is a uniform random permutation of
      the rows left. The first ``head_rows`` rows (about two read units) load at
      tick 0, so the first batch waits for them only; after that the rows loaded
      double with every ``_DOUBLING_ROWS`` rows emitted (in expectation), so all
      the data is in after a few dozen batches, and only those few are drawn
      from part of it.
    * **It does not fit**: the first ``window / 2`` pieces load ``RAMP`` per
      tick (a fast start), then one per ``RAMP`` ticks; each piece ends
      ``window`` pieces after the steady-state schedule would load it, which
      keeps ``window`` pieces live. The last pieces share the final tick, half a
      window after the last load, so the epoch ends by draining the window
      uniformly instead of emitting its last pieces on their own. Pieces read on
      their own (not slices: ``.npy`` pieces, whole units) end at most
      ``_FIRST_SPAN * (k + 1) ** 2`` ticks after they load (the ``k``-th of the
      epoch), so the first batch needs a handful of pieces and only the first
      ~``sqrt(window)`` pieces are affected.
    * Without shuffle, piece ``i`` holds tick ``[i, i + 1)`` alone: stored order.
    """
    num_pieces = len(sizes)
    i = np.arange(num_pieces, dtype=np.float64)
    if not shuffle:
        return i, i + 1
    if num_pieces == 0:
        return i, i
    if num_pieces <= window:
        return _fitting_ticks(np.asarray(sizes, dtype=np.float64), head_rows)
    ramp = max(1, window // 2)
    load = np.where(i < ramp, i, ramp + (i - ramp) * RAMP)
    end = np.minimum((i + window) * RAMP - ramp * (RAMP - 1), load[-1] + max(1, window // 2) * RAMP)
    cap = np.where(streamed, np.inf, load + _FIRST_SPAN * (i + 1) ** 2)
    # contiguous: a reversed view would be copied by every searchsorted on it (~140 us a call)
    return load, np.ascontiguousarray(np.minimum.accumulate(np.minimum(end, cap)[::-1])[::-1])


def _fitting_ticks(sizes: np.ndarray, head_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Load ticks of data that fits: the head (pieces starting in the first
    ``head_rows`` rows) loads at tick 0; piece ``i`` after it loads when (in
    expectation) the rows emitted reach ``_FIRST_ROWS + _DOUBLING_ROWS *
    log2(rows before i / head_rows)``; every piece ends at ``T``. With all ends at ``T``, the rows
    expected to be emitted by tick ``t`` are ``sum_j sizes[j] (t - load[j]) /
    (T - load[j])`` over the pieces loaded before ``t``: linear in ``t`` between
    loads, so each load tick is solved from two running sums."""
    n = len(sizes)
    # ~_ROWS_PER_TICK rows a tick on average: fine enough that the first segments of
    # emission (a few ticks) need only the head
    total_ticks = float(max(n, np.sum(sizes) / _ROWS_PER_TICK))
    before = np.concatenate([[0.0], np.cumsum(sizes)[:-1]])
    head = max(1.0, float(head_rows))
    target = np.where(
        before < head, 0.0, _FIRST_ROWS + _DOUBLING_ROWS * np.log2(np.maximum(before, head) / head)
    )  # 0 for the head: it loads at tick 0; the rest once the first rows are out
    load = np.zeros(n)
    rate = offset = 0.0  # sum of sizes/(T - load), sum of sizes*load/(T - load) so far
    latest = 0.0
    for k in range(n):
        if target[k] > 0 and rate > 0:
            latest = max(latest, min((target[k] + offset) / rate, total_ticks * (1 - 1e-9)))
        load[k] = latest
        weight = sizes[k] / (total_ticks - latest)
        rate += weight
        offset += weight * latest
    return load, np.full(n, total_ticks)


def _units(dataset: Dataset, params: PlanParams, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    shards, starts, stops = [], [], []
    for index, shard in enumerate(dataset.shards):
        bounds = shard.unit_bounds
        if bounds is None:
            step = params.piece_rows
            phase = int(rng.integers(0, step)) if params.shuffle and shard.num_rows > step else 0
            inner = np.arange(phase if phase else step, shard.num_rows, step, dtype=np.int64)
            bounds = np.concatenate([[0], inner, [shard.num_rows]])
        bounds = np.asarray(bounds, dtype=np.int64)
        keep = bounds[1:] > bounds[:-1]  # zero-row units hold nothing to read
        starts.append(bounds[:-1][keep])
        stops.append(bounds[1:][keep])
        shards.append(np.full(int(keep.sum()), index, dtype=np.int32))
    if not shards:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(0, dtype=np.int32), empty, empty
    return np.concatenate(shards), np.concatenate(starts), np.concatenate(stops)


def _pieces(
    shard: np.ndarray,
    start: np.ndarray,
    stop: np.ndarray,
    streamed: np.ndarray,
    piece_rows: int,
    lanes: int,
    min_rows: int = 0,
) -> tuple[np.ndarray, ...]:
    """Units -> pieces in read order: streamable units of at least ``min_rows``
    (and more than a piece) are cut into ``piece_rows`` slices (a stream each),
    then lanes are interleaved."""
    sizes = stop - start
    min_rows = max(min_rows, piece_rows + 1)
    sliced = streamed[shard] & (sizes >= min_rows) if shard.size else np.zeros(0, dtype=bool)
    counts = np.where(sliced, -(-sizes // piece_rows), 1)
    unit = np.repeat(np.arange(shard.size, dtype=np.int64), counts)
    within = np.arange(unit.size, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    p_start = start[unit] + within * np.where(sliced[unit], piece_rows, 0)
    p_stop = np.where(sliced[unit], np.minimum(p_start + piece_rows, stop[unit]), stop[unit])
    stream = np.where(sliced[unit], unit, -1)
    p_shard = shard[unit]
    lanes = min(lanes, int(sliced.sum()) or 1)
    if lanes > 1:
        order = _interleave(unit, p_start - start[unit], sizes, lanes)
        p_shard, p_start, p_stop, stream = p_shard[order], p_start[order], p_stop[order], stream[order]
    return p_shard, p_start, p_stop, stream


def _head_rows(sizes: np.ndarray, stream: np.ndarray, lanes: int) -> int:
    """Rows the first batch of data that fits waits for: two read units, so that the
    first batches mix more than one; one unit read whole when the epoch holds at least
    ``_ONE_UNIT_HEAD_EPOCH`` rows, where the first ``_FIRST_ROWS`` rows drawn from a
    single unit move the score by under 0.01 and a second unit would double the first
    batch's wait (measured with 64k-row Zarr chunks and Parquet row groups at 200 % of
    1 GB: 412-617 ms with two, 222-252 ms with one, 204-355 ms for the previous loader;
    score 1.001 either way). Streamed units interleave slice by slice in the read
    order, so two slices of each lane already mix ``lanes`` units."""
    whole = sizes[stream < 0]
    units_in_head = 1 if int(np.sum(sizes)) >= _ONE_UNIT_HEAD_EPOCH else 2
    head = units_in_head * int(whole.max()) if whole.size else 0
    streamed = sizes[stream >= 0]
    if streamed.size:
        # distinct streams (np.unique would import numpy.ma: ~35 ms of the first batch)
        open_at_once = min(lanes, int(np.count_nonzero(np.bincount(stream[stream >= 0]))))
        head = max(head, 2 * open_at_once * int(streamed.max()))
    return max(_MIN_HEAD_ROWS, head)


def _interleave(unit: np.ndarray, row_in_unit: np.ndarray, unit_sizes: np.ndarray, lanes: int) -> np.ndarray:
    """Read order of pieces dealt into ``lanes`` lanes of consecutive whole units
    (balanced by rows), each lane's pieces placed by how far through its lane
    they start: a round robin over the lanes that ends them together."""
    unit_begin = np.concatenate([[0], np.cumsum(unit_sizes)[:-1]])
    total = int(unit_sizes.sum())
    lane_of_unit = np.minimum(unit_begin * lanes // max(1, total), lanes - 1)
    lane_begin = np.full(lanes, total, dtype=np.int64)
    np.minimum.at(lane_begin, lane_of_unit, unit_begin)
    lane_rows = np.bincount(lane_of_unit, weights=unit_sizes, minlength=lanes)
    lane = lane_of_unit[unit]
    progress = (unit_begin[unit] - lane_begin[lane] + row_in_unit) / np.maximum(lane_rows[lane], 1)
    return np.lexsort((lane, progress))


def _rank_slice(
    shard: np.ndarray, start: np.ndarray, stop: np.ndarray, remainder: Remainder, rank: int, world_size: int
) -> tuple[np.ndarray, ...]:
    """Rows ``[rank*q, (rank+1)*q)`` of the sequence, wrapping around for padding."""
    total = int((stop - start).sum())
    if world_size == 1 or total == 0:
        return shard, start, stop
    q = rows_per_rank(total, world_size, remainder)
    parts = [_cut(shard, start, stop, a, b) for a, b in wrapped_ranges(rank * q, (rank + 1) * q, total)]
    return tuple(np.concatenate(column) for column in zip(*parts))


def wrapped_ranges(lo: int, hi: int, total: int) -> list[tuple[int, int]]:
    """Positions ``[lo, hi)`` of a sequence of ``total`` rows repeated end to end
    (how padding to equal shares wraps around), as ranges within ``[0, total)``;
    on tiny datasets the padding can wrap more than once."""
    ranges = []
    while lo < hi:
        base = (lo // total) * total
        ranges.append((lo - base, min(hi, base + total) - base))
        lo = base + total
    return ranges


def _cut(shard: np.ndarray, start: np.ndarray, stop: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, ...]:
    """Units covering sequence positions ``[lo, hi)``, trimmed to exactly those rows."""
    ends = np.cumsum(stop - start)
    begins = ends - (stop - start)
    first = int(np.searchsorted(ends, lo, side="right"))
    last = int(np.searchsorted(begins, hi, side="left"))
    s, a, b = shard[first:last].copy(), start[first:last].copy(), stop[first:last].copy()
    if s.size:
        a[0] += lo - begins[first]
        b[-1] -= ends[last - 1] - hi
    return s, a, b
