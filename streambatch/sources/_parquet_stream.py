"""Streaming one Parquet row group slice by slice.

A row group does not have to be held whole: ``ParquetFile.iter_batches`` with
``pre_buffer=False`` and a small ``buffer_size`` decodes it a page at a time
(measured here: a 205 MB, 400 k-row group streamed with an Arrow pool peak of
25 MiB, against 527 MiB to read it whole; 2.45 MiB per open stream for 64 k-row
groups with 1 MiB pages). So the planner can keep many row groups open at once,
each contributing a slice at a time to the shuffle window, and a batch mixes
far more distinct parts of a file than the budget holds whole row groups.

A stream is read strictly front to back. Starting or resuming inside a row
group decodes and drops the rows before the start (Parquet has no random access
inside a column chunk without a page index).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptInputError, RemoteReadError
from ._base import RowStream
from ._retry import call_with_retry

if TYPE_CHECKING:
    from ._parquet import ParquetShard, _ParquetReader

__all__ = ["PAGE_BYTES_ESTIMATE", "STREAM_BUFFER_BYTES", "ParquetRowStream"]

#: The read buffer of each column chunk in a stream (``ParquetFile(buffer_size=)``).
STREAM_BUFFER_BYTES = 64 << 10
#: Page size assumed for the memory estimate: the default of pyarrow, DuckDB and polars.
PAGE_BYTES_ESTIMATE = 1 << 20
#: At most this many rows are decoded per ``iter_batches`` step.
_MAX_BATCH_ROWS = 65536


class ParquetRowStream(RowStream):
    """Rows ``[start, stop)`` of one row group, decoded in order with handles of its own."""

    def __init__(self, shard: ParquetShard, reader: _ParquetReader, start: int, stop: int, rows_per_read: int) -> None:
        group = shard.row_group_of(start)
        bounds = shard.unit_bounds
        self._group_start, self._group_stop = int(bounds[group]), int(bounds[group + 1])
        if not self._group_start <= start <= stop <= self._group_stop:
            raise ValueError(f"{shard.path}: rows {start}:{stop} are not inside row group {group}")
        self._shard = shard
        self._reader = reader
        self._group = group
        self._stop = stop
        # decode in steps of the reads to come, so that a stream holds at most about
        # one read's rows decoded between reads (the budget counts pages, not rows)
        self._batch_rows = max(1, min(int(rows_per_read), _MAX_BATCH_ROWS))
        self._names = list(reader._plans)
        self._raw: pa.NativeFile | None = None
        self._file: pq.ParquetFile | None = None
        self._batches: Iterator[pa.RecordBatch] | None = None
        self._batch: pa.RecordBatch | None = None
        self._batch_row = self._group_start  # shard row of self._batch[0]
        self._next_row = self._group_start  # shard row the generator yields next
        self._done = start  # rows before this were delivered (or skipped)
        self._closed = False

    # -- reading -------------------------------------------------------------
    def read_into(self, start: int, stop: int, out: Mapping[str, np.ndarray]) -> None:
        if self._closed:
            raise ValueError(f"stream over {self._shard.path} row group {self._group} is closed")
        if start < self._done or stop > self._stop:
            raise ValueError(
                f"{self._shard.path} row group {self._group}: rows {start}:{stop} requested, "
                f"but the stream is at row {self._done} and ends at {self._stop}"
            )
        row = start
        while row < stop:
            batch = self._batch_holding(row)
            offset = row - self._batch_row
            take = min(stop - row, batch.num_rows - offset)
            self._reader._copy(batch, offset, take, out, row - start, self._batch_row)
            row += take
        if self._batch is not None and stop >= self._batch_row + self._batch.num_rows:
            self._batch = None  # all of it delivered: do not hold it until the next read
        self._done = stop
        if stop >= self._stop:
            self.close()  # nothing more will be asked: free the pages now

    def _batch_holding(self, row: int) -> pa.RecordBatch:
        while self._batch is None or row >= self._batch_row + self._batch.num_rows:
            self._batch = None  # drop the old one before decoding the next
            batch = self._next_batch()
            self._batch, self._batch_row = batch, self._next_row
            self._next_row += batch.num_rows
        return self._batch

    def _next_batch(self) -> pa.RecordBatch:
        location = self._shard.location
        if location.is_local:
            return self._decode_next()
        where = f"{location.url} row group {self._group} rows from {self._next_row}"
        return call_with_retry(self._decode_next, getattr(self._shard, "retry", None), where, secrets=location.secrets)

    def _decode_next(self) -> pa.RecordBatch:
        """The record batch that starts at ``self._next_row``. After a failure the
        stream is reopened and fast-forwarded: batch boundaries are the same on
        every pass (fixed ``batch_size``), so the same rows come back."""
        if self._batches is None:
            self._open()
            row = self._group_start
            while row < self._next_row:
                row += self._pull().num_rows
        return self._pull()

    def _pull(self) -> pa.RecordBatch:
        path = self._shard.path
        try:
            batch = next(self._batches)  # type: ignore[arg-type]
        except StopIteration:
            self._release_handles()
            raise CorruptInputError(
                f"{path} row group {self._group}: ended before row {self._next_row - self._group_start}, "
                f"the footer promises {self._group_stop - self._group_start} rows"
            ) from None
        except (pa.ArrowException, OSError) as e:
            self._release_handles()
            if isinstance(e, (ConnectionError, TimeoutError, RemoteReadError)) or not self._shard.location.is_local:
                raise  # the storage, not the bytes: retried (remote) or reported as is
            raise CorruptInputError(f"{path} row group {self._group}: {e}") from e
        first = self._next_row - self._group_start
        for name in self._names:
            self._reader.check_decoded(self._group, name, batch.column(name), first)
        return batch

    def _open(self) -> None:
        from ._parquet import _open

        location = self._shard.location
        # a remote file: the footer its reader holds (read once per shard), and its local copy with a cache
        metadata = self._shard._metadata if location.is_local else self._reader._remote_footer()[0]
        self._file, self._raw = _open(
            location, self._shard.verify, metadata, buffer_size=STREAM_BUFFER_BYTES, cached=True
        )
        self._batches = self._file.iter_batches(
            batch_size=self._batch_rows, row_groups=[self._group], columns=self._names, use_threads=False
        )

    # -- lifecycle -----------------------------------------------------------
    def _release_handles(self) -> None:
        self._batches = None
        self._batch = None
        file, raw, self._file, self._raw = self._file, self._raw, None, None
        if file is not None:
            file.close()
        if raw is not None:
            raw.close()

    def close(self) -> None:
        self._closed = True
        self._release_handles()
