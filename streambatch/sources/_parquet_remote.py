"""Remote Parquet reads: the byte ranges of a row group's column chunks (neighbours
merged), the footer fetched with ranged requests, and the fetched bytes served to
``ParquetFile`` as a file (``_RangeFile``) so a row group decodes from memory
(see :mod:`streambatch.fetch`)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptInputError
from ._base import FetchedUnit
from ._fs import FileSystemPath, ReadOnlyFile
from ._retry import RetryPolicy, call_with_retry, read_exactly

#: Smallest valid Parquet file: "PAR1" + footer length (4 bytes) + "PAR1".
_MIN_FILE_BYTES = 12

if TYPE_CHECKING:
    from ._parquet import _ParquetReader


#: Neighbouring column chunks closer than this are fetched in one request (the
#: bytes between them are cheaper than a request's latency); the fetched bytes,
#: gaps included, are what ``fetch_nbytes`` counts.
_MAX_GAP = 1 << 20
#: Bytes of a remote file's end read first for its footer (most footers fit).
_FOOTER_READ = 64 << 10
#: Locks for reading a remote footer once per shard (striped: a shard is pickled, a lock is not).
_FOOTER_LOCKS = tuple(threading.Lock() for _ in range(64))


def _chunk_ranges(group: pq.RowGroupMetaData, leaves: list[int]) -> list[tuple[int, int]]:
    """The byte ranges ``[lo, hi)`` holding the column chunks ``leaves`` of one row
    group (each chunk starts at its dictionary page, if any, else at its first data
    page), sorted, neighbours less than ``_MAX_GAP`` apart merged."""
    chunks = []
    for j in leaves:
        column = group.column(j)
        start = column.data_page_offset
        dictionary = column.dictionary_page_offset
        if column.has_dictionary_page and dictionary is not None and 0 < dictionary < start:
            start = dictionary
        if column.total_compressed_size > 0:
            chunks.append((int(start), int(start + column.total_compressed_size)))
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(chunks):
        if merged and lo - merged[-1][1] <= _MAX_GAP:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _fetch_footer(location: FileSystemPath, size: int, retry: RetryPolicy | None) -> pq.FileMetaData:
    """The footer of a remote Parquet file of ``size`` bytes, read with ranged
    requests (the last ``_FOOTER_READ`` bytes, then the rest of a longer footer),
    which ``location``'s cache serves; each request retried."""
    url = location.url
    if size < _MIN_FILE_BYTES:
        raise CorruptInputError(f"{url}: not a valid Parquet file: it is {size} bytes long")

    def read(lo: int, hi: int) -> bytes:
        def attempt() -> bytes:
            return bytes(read_exactly(location.cat_file(lo, hi), hi - lo, f"{url} (footer) bytes {lo}:{hi}"))

        return call_with_retry(attempt, retry, f"{url} (footer)", secrets=location.secrets)

    tail = read(size - min(size, _FOOTER_READ), size)
    if tail[-4:] != b"PAR1":
        raise CorruptInputError(f"{url}: not a valid Parquet file (it does not end with PAR1)")
    length = int.from_bytes(tail[-8:-4], "little")
    if length + 8 + 4 > size:
        raise CorruptInputError(f"{url}: not a valid Parquet file (a footer of {length} bytes in {size})")
    if length + 8 > len(tail):
        tail = read(size - 8 - length, size - len(tail)) + tail
    try:
        return pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-(length + 8) :]))
    except (pa.ArrowException, OSError) as e:
        raise CorruptInputError(f"{url}: not a valid Parquet file ({e})") from e


class _FetchedRowGroup(FetchedUnit):
    """The fetched column chunks of one row group (``parts``: ``(offset, bytes)``)."""

    def __init__(self, reader: _ParquetReader, group: int, names: list[str], parts: list[tuple[int, Any]]) -> None:
        self._reader = reader
        self.group = group
        self.names = names
        self.parts = parts
        self.nbytes = sum(len(data) for _, data in parts)

    def read_into(self, start: int, stop: int, out: Mapping[str, np.ndarray]) -> None:
        self._reader._read_ranges([(start, stop)], out, fetched=self)


class _RangeFile(ReadOnlyFile):
    """A read-only file of ``size`` bytes of which ``parts`` (``(offset, bytes)``,
    sorted, disjoint) are in memory: what ``ParquetFile`` reads one row group
    from. Reads outside them go to ``fetch(start, stop)``."""

    def __init__(self, parts: list[tuple[int, Any]], size: int, fetch) -> None:  # type: ignore[no-untyped-def]
        super().__init__(size)
        self._parts = [(lo, memoryview(data)) for lo, data in parts]
        self._fetch = fetch

    def _span(self, n: int | None) -> tuple[int, int]:
        start = self._pos
        return start, self._size if n is None or n < 0 else min(self._size, start + n)

    def _held(self, start: int, stop: int) -> memoryview | None:
        for lo, data in self._parts:
            if lo <= start and stop <= lo + len(data):
                return data[start - lo : stop - lo]
        return None

    def read(self, n: int = -1) -> bytes:
        start, stop = self._span(n)
        if stop <= start:
            return b""
        self._pos = stop
        held = self._held(start, stop)
        return held.tobytes() if held is not None else bytes(self._fetch(start, stop))

    def read_buffer(self, n: int = -1) -> memoryview | bytes:
        """Like ``read`` without a copy: pyarrow wraps the returned view."""
        start, stop = self._span(n)
        held = self._held(start, stop) if stop > start else None
        if held is not None:
            self._pos = stop
            return held
        return self.read(n)

    def close(self) -> None:
        self.closed = True
        self._parts = []
