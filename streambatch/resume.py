"""Which rows each rank emits, as *stream slices*, across resumes that may
change the world size (elastic training).

An epoch starts in some world of ``W0`` ranks: rank ``r`` emits its own plan's
stream (see :mod:`streambatch.plan` and :mod:`streambatch.shuffle`). Ranks
advance in lockstep, so "every rank delivered ``b`` batches" describes the whole
job. When the job resumes with ``W1`` ranks, the rows not yet delivered — the
tails of every old rank's stream, concatenated in rank order — are split into
``W1`` contiguous, equal parts. Each part is a list of slices of the original
streams, so a new rank keeps the old shuffled order and reads only about one
shuffle window per slice it starts in. Further changes repeat the same step,
so any history of world sizes reduces to slices of the first world's streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .plan import Remainder, rows_per_rank, wrapped_ranges

__all__ = ["StreamSlice", "advance", "rank_slices"]


@dataclass(frozen=True)
class StreamSlice:
    """Rows ``[lo, hi)`` of the emission stream of ``rank`` in the epoch's first world."""

    rank: int
    lo: int
    hi: int

    @property
    def rows(self) -> int:
        return self.hi - self.lo


def rank_slices(
    rows_per_base_rank: Sequence[int],
    history: Sequence[tuple[int, int]],
    rank: int,
    batch_size: int,
    remainder: Remainder,
) -> list[StreamSlice]:
    """The slices ``rank`` emits in the current world.

    ``rows_per_base_rank[r]`` is the length of base rank ``r``'s stream;
    ``history`` is ``[(world_size, batches_delivered), ...]`` oldest first, the
    last entry being the current world (its batches are not consumed here: the
    iterator skips them itself so the first world stays cheap to resume).
    """
    shares = [[StreamSlice(r, 0, n)] for r, n in enumerate(rows_per_base_rank)]
    for (world, batches), (next_world, _) in zip(history[:-1], history[1:]):
        if len(shares) != world:
            raise ValueError(f"history says world size {world} but {len(shares)} shares exist")
        tails = [advance(share, batches * batch_size) for share in shares]
        pool = [s for tail in tails for s in tail]
        shares = _split(pool, next_world, remainder)
    current_world = history[-1][0]
    if len(shares) != current_world:
        raise ValueError(f"history ends in world size {current_world} but {len(shares)} shares exist")
    return shares[rank]


def advance(share: list[StreamSlice], rows: int) -> list[StreamSlice]:
    """The part of ``share`` left after its first ``rows`` rows."""
    out = []
    for s in share:
        if rows >= s.rows:
            rows -= s.rows
            continue
        out.append(StreamSlice(s.rank, s.lo + rows, s.hi))
        rows = 0
    return out


def _take(pool: list[StreamSlice], lo: int, hi: int) -> list[StreamSlice]:
    """Rows ``[lo, hi)`` of the concatenation of ``pool``."""
    out, at = [], 0
    for s in pool:
        a, b = max(lo, at), min(hi, at + s.rows)
        if a < b:
            out.append(StreamSlice(s.rank, s.lo + a - at, s.lo + b - at))
        at += s.rows
    return out


def _split(pool: list[StreamSlice], world: int, remainder: Remainder) -> list[list[StreamSlice]]:
    total = sum(s.rows for s in pool)
    if total == 0:
        return [[] for _ in range(world)]
    share = rows_per_rank(total, world, remainder)
    return [
        [s for a, b in wrapped_ranges(k * share, (k + 1) * share, total) for s in _take(pool, a, b)]
        for k in range(world)
    ]
