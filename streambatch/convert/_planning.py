"""How the rows become shards: rows per shard and per chunk, and the shard tasks
(read ranges of the inputs in order, or buckets of the shuffle's pass 1).

Every size is planned in bytes of row data in memory: ``row_nbytes`` counts a
variable-length column (strings, binary, ragged lists) at its footer estimate
(the largest per-row mean of any input read unit), so shards, shuffle buckets
and read blocks hold about the bytes they are planned for whatever the row
lengths. Parquet row groups of such columns are cut by their actual bytes when
written (``Layout.chunk_bytes``), not by a row count from the estimate."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .._units import parse_bytes
from ..sources import ColumnSpec
from . import _inputs
from ._inputs import Part
from ._options import DEFAULT_SHARD_SIZE, MAX_CHUNK_ROWS, ConvertOptions, chunk_target_bytes, default_chunk_rows
from ._shards import ShardTask
from ._shuffle import bucket_dir, plan_buckets

__all__ = ["Layout", "bucket_capacities", "layout", "plan_tasks", "scatter_block_rows"]


@dataclass(frozen=True)
class Layout:
    """Rows per chunk and per shard, and the shards' row bounds ``[0, ..., total]``.

    ``chunk_bytes`` (Parquet output with variable-length columns, no ``chunk_rows``
    given): a row group ends at the first row that brings it to that many bytes,
    or at ``chunk_rows`` rows; ``None``: every row group holds ``chunk_rows`` rows."""

    chunk_rows: int
    per_shard: int
    bounds: list[int]
    row_nbytes: int
    chunk_bytes: int | None = None

    @property
    def shard_rows(self) -> list[int]:
        return [b - a for a, b in zip(self.bounds[:-1], self.bounds[1:])]

    @property
    def total(self) -> int:
        return self.bounds[-1]


def layout(
    total: int, columns: dict[str, ColumnSpec], o: ConvertOptions, column_nbytes: dict[str, int] | None = None
) -> Layout:
    """The layout of ``total`` rows; ``column_nbytes`` gives each column's bytes per row
    (``_inputs.open_parts``; default: ``ColumnSpec.row_nbytes``, fixed-size columns)."""
    row_nbytes = sum((column_nbytes or {}).get(n, s.row_nbytes) for n, s in columns.items())
    by_bytes = o.shard_format == "parquet" and not o.chunk_rows and any(s.variable for s in columns.values())
    chunk_rows = MAX_CHUNK_ROWS if by_bytes else o.chunk_rows or default_chunk_rows(row_nbytes, o.shuffle)
    per_shard = o.rows_per_shard or max(1, (o.shard_size or parse_bytes(DEFAULT_SHARD_SIZE)) // max(1, row_nbytes))
    if not o.rows_per_shard and not by_bytes and per_shard > chunk_rows:
        per_shard -= per_shard % chunk_rows  # whole row groups / chunks per shard
    return Layout(
        chunk_rows,
        per_shard,
        [*range(0, total, per_shard), total],
        row_nbytes,
        chunk_target_bytes(o.shuffle) if by_bytes else None,
    )


def _budget_rows(o: ConvertOptions, row_nbytes: int) -> int:
    return max(1, o.memory_limit // 4 // max(1, row_nbytes))


def scatter_block_rows(o: ConvertOptions, row_nbytes: int) -> int:
    """Rows per block of shuffle pass 1: bounded by the budget only (not by
    workers), so the output is independent of them."""
    return max(1, min(65536, o.memory_limit // 8 // max(1, row_nbytes)))


def bucket_capacities(shape: Layout, o: ConvertOptions) -> list[list[int]]:
    """Rows of each bucket of pass 1, per shard (a shard is made of its buckets)."""
    return plan_buckets(shape.shard_rows, _budget_rows(o, shape.row_nbytes))


def plan_tasks(
    parts: list[Part], columns: dict[str, ColumnSpec], shape: Layout, o: ConvertOptions, work: str, stage: str
) -> list[ShardTask]:
    """One task per shard: read its range of ``parts`` in order, or (``shuffle``)
    its buckets under ``stage``."""
    common: dict[str, Any] = dict(
        dest=work,
        shard_format=o.shard_format,
        columns=tuple(columns.items()),
        chunk_rows=shape.chunk_rows,
        chunk_bytes=shape.chunk_bytes,
        compression=o.compression,
        memory_limit=o.memory_limit,
    )
    # read blocks of whole row groups where groups are cut by rows (so the writer carries
    # no rows over); by bytes, any block (the writer carries the rest of a group)
    align = shape.chunk_rows if shape.chunk_bytes is None else 1
    shard_rows = shape.shard_rows
    if not o.shuffle:
        unit = _inputs.largest_unit_rows(parts)
        block = max(unit, _budget_rows(o, shape.row_nbytes) // (2 * o.workers))
        block = max(align, block - block % align)
        return [
            ShardTask(index=i, rows=n, block_rows=block, parts=tuple(parts), start=a, stop=a + n, **common)
            for i, (a, n) in enumerate(zip(shape.bounds[:-1], shard_rows))
        ]
    scatter_block = scatter_block_rows(o, shape.row_nbytes)
    tasks, b = [], 0
    block = max(align, scatter_block - scatter_block % align)
    for i, sizes in enumerate(bucket_capacities(shape, o)):
        buckets = tuple((bucket_dir(os.path.join(stage, "buckets"), b + j), n, b + j) for j, n in enumerate(sizes))
        b += len(sizes)
        tasks.append(ShardTask(index=i, rows=shard_rows[i], block_rows=block, buckets=buckets, seed=o.seed, **common))
    return tasks
