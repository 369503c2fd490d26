"""The chunk plan: which rows each rank reads in which order, as a pure function
of (dataset metadata, seed, epoch, rank, world size, plan parameters).

An epoch is laid out in three steps, all deterministic and cheap (numpy on
per-unit arrays, no data read):

1. *Units*: each shard is cut into read units. Formats that must read whole
   units (Parquet row groups, Zarr chunks) give their own; random-access
   formats (``.npy``) are tiled into ``piece_rows``-row units whose phase moves
   every epoch, so unit boundaries differ between epochs.
2. *Order*: with ``shuffle`` the units are permuted (the same permutation on every
   rank, since it depends on seed and epoch only); the concatenation of units in
   that order is the epoch's global row sequence.
3. *Rank split*: rank ``r`` of ``W`` takes rows ``[r*q, (r+1)*q)`` of that sequence,
   cutting units where needed, so every rank gets exactly ``q`` rows however few
   units there are. The remainder ``N % W`` is dropped or padded by wrapping.

The result, :class:`EpochPlan`, is a list of *pieces* (shard, start, stop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .sources import Dataset

__all__ = ["EpochPlan", "PlanParams", "make_plan", "rows_per_rank", "wrapped_ranges"]

_PLAN_STREAM = 0x51AB  # separates the plan's random stream from the key stream
RAMP = 4  # how fast the window widens at the start of an epoch (pieces of span per piece)

Remainder = Literal["pad", "drop"]


@dataclass(frozen=True)
class PlanParams:
    """What decides the order besides (seed, epoch, rank, world size).

    ``window_pieces`` is how many pieces the shuffle window mixes;
    ``piece_rows`` is the unit size used for random-access shards.
    """

    shuffle: bool
    seed: int
    window_pieces: int
    piece_rows: int
    remainder: Remainder = "pad"

    def __post_init__(self) -> None:
        if self.window_pieces < 1:
            raise ValueError(f"window_pieces must be >= 1, got {self.window_pieces}")
        if self.piece_rows < 1:
            raise ValueError(f"piece_rows must be >= 1, got {self.piece_rows}")
        if self.remainder not in ("pad", "drop"):
            raise ValueError(f"remainder must be 'pad' or 'drop', got {self.remainder!r}")


@dataclass(frozen=True)
class EpochPlan:
    """The pieces one rank reads in one epoch, in order.

    Piece ``i`` is rows ``[start[i], stop[i])`` of ``dataset.shards[shard[i]]``;
    ``offsets[i]`` is its first position in this rank's row sequence.
    """

    shard: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    offsets: np.ndarray
    window_pieces: int
    key_seed: int
    shuffle: bool

    @property
    def num_pieces(self) -> int:
        return int(self.shard.shape[0])

    @property
    def num_rows(self) -> int:
        return int(self.offsets[-1])

    @property
    def sizes(self) -> np.ndarray:
        return self.stop - self.start

    def spans(self) -> np.ndarray:
        """How many ticks each piece's rows are spread over: the window size, ramped
        near both ends. At the start piece ``i`` spreads over ``RAMP * (i + 1)``
        ticks, so the first batch needs only the first few pieces while the window
        widens quickly; at the end spans shrink so that every key is below
        ``num_pieces``."""
        i = np.arange(self.num_pieces, dtype=np.int64)
        if not self.shuffle:
            return np.ones_like(i)
        ramp_up = RAMP * (i + 1)
        return np.maximum(1, np.minimum(np.minimum(self.window_pieces, ramp_up), self.num_pieces - i))


def rows_per_rank(num_rows: int, world_size: int, remainder: Remainder) -> int:
    """Rows every rank gets in an epoch."""
    if remainder == "drop":
        return num_rows // world_size
    return -(-num_rows // world_size)


def make_plan(
    dataset: Dataset, params: PlanParams, epoch: int, rank: int = 0, world_size: int = 1
) -> EpochPlan:
    """The pieces ``rank`` reads in ``epoch``; the same arguments give the same plan."""
    rng = np.random.default_rng(np.random.SeedSequence([params.seed, epoch, _PLAN_STREAM]))
    shard, start, stop = _units(dataset, params, rng)
    if params.shuffle and shard.size:
        order = rng.permutation(shard.size)
        shard, start, stop = shard[order], start[order], stop[order]
    shard, start, stop = _rank_slice(shard, start, stop, params.remainder, rank, world_size)
    sizes = stop - start
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    key_seed = int(np.random.SeedSequence([params.seed, epoch, rank, world_size]).generate_state(1, np.uint64)[0])
    return EpochPlan(shard, start, stop, offsets, params.window_pieces, key_seed, params.shuffle)


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
