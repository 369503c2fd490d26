"""Pass 1 of the two-pass shuffle: stream the input once and append every row to
one of many *bucket* files, each bucket holding exactly a planned number of rows.

Output rows ``[0, N)`` are cut into shards, and each shard into buckets small
enough to permute in memory. Pass 1 draws, block by block, how many of the
block's rows go to each bucket (a multivariate hypergeometric draw from the
capacities left), then which rows (a permutation within the block). The result
is a uniformly random assignment of rows to buckets with exact sizes; pass 2
(``_shards.write_shard``) permutes each bucket in memory, so the concatenated
output is a uniformly random permutation of the input, deterministic by seed.
Memory: one input block plus its gathered copy, gathered bucket by bucket through
the columns' kinds (in pieces of bounded values for variable-length columns:
``_values.take_pieces``). A variable-length column is staged as its values and
row lengths (:mod:`._values`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from ..sources import ColumnSpec
from ._inputs import InputReader, Part
from ._values import append_rows, held_kinds, row_limit, staging_files, take_pieces, take_values

__all__ = ["plan_buckets", "scatter_to_buckets"]


def plan_buckets(shard_rows: Sequence[int], bucket_rows: int) -> list[list[int]]:
    """Per shard, the sizes of its buckets: near-equal, each <= ``bucket_rows``."""
    plan = []
    for rows in shard_rows:
        k = max(1, -(-rows // bucket_rows))
        base, extra = divmod(rows, k)
        plan.append([base + (1 if j < extra else 0) for j in range(k)])
    return plan


def bucket_dir(stage: str, bucket: int) -> str:
    return os.path.join(stage, f"bucket-{bucket:06d}")


def scatter_to_buckets(
    parts: Sequence[Part],
    columns: dict[str, ColumnSpec],
    capacities: Sequence[int],
    stage: str,
    seed: int,
    block_rows: int,
    on_rows: Callable[[int], None] = lambda n: None,
    memory_limit: int = 0,
) -> None:
    """Append every input row to a bucket under ``stage`` (``bucket-NNNNNN/{column}.bin``,
    and ``{column}.lengths`` for a variable-length column); ``memory_limit`` bounds a
    variable-length row (``_values.row_limit``) and a piece of a take (0: no bound)."""
    remaining = np.asarray(capacities, dtype=np.int64)
    total = int(remaining.sum())
    kinds = held_kinds(columns)
    max_values = take_values(memory_limit) if memory_limit else 1 << 62
    for b in range(len(remaining)):
        os.makedirs(bucket_dir(stage, b), exist_ok=True)
    with InputReader(parts, columns, row_limit(memory_limit) if memory_limit else 0) as reader:
        for k, a in enumerate(range(0, total, block_rows)):
            block = reader.read(a, min(total, a + block_rows))
            m = len(next(iter(block.values())))
            rng = np.random.default_rng(np.random.SeedSequence([seed, 1, k]))
            counts = rng.multivariate_hypergeometric(remaining, m)
            remaining -= counts
            labels = np.repeat(np.arange(len(counts)), counts)
            rng.shuffle(labels)
            order = np.argsort(labels, kind="stable")  # the block's rows, bucket by bucket
            ends = np.cumsum(counts)
            for bucket in np.flatnonzero(counts):
                rows = order[ends[bucket] - counts[bucket] : ends[bucket]]
                for piece in take_pieces(kinds, block, rows, max_values):
                    for name, values in piece.items():
                        append_rows(bucket_dir(stage, int(bucket)), name, values)
            on_rows(m)
    if remaining.any():
        raise RuntimeError(f"shuffle pass 1 left {int(remaining.sum())} bucket slots empty")
    for b in range(len(capacities)):
        for file in (f for name, spec in columns.items() for f in staging_files(name, spec)):
            fd = os.open(os.path.join(bucket_dir(stage, b), file), os.O_RDONLY | os.O_CREAT)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
