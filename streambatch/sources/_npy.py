"""``.npy`` files: the header is parsed and checked against the file size at
open; rows are read with positional reads straight into the caller's arrays,
so no memory map (and no page it pins) outlives a read, and pickle is never
touched."""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Mapping

import numpy as np

from .. import native
from ..errors import CorruptInputError, RowCountError, SchemaError
from ._base import ColumnSpec, FileRows, MemoryRows, Shard, ShardReader
from ._fs import FileSystemPath
from ._retry import RetryPolicy, ShortReadError, call_with_retry, is_transient, read_exactly

__all__ = ["NpyShard", "read_npy_header"]

_MAX_HEADER_BYTES = 1 << 20

#: Remote reads: at most this many byte ranges (and bytes) are requested in one
#: ``cat_ranges`` call, which async filesystems (s3, gcs, http) send concurrently.
_REMOTE_BATCH_RANGES = 64
_REMOTE_BATCH_BYTES = 16 << 20
#: a remote resident column (at most an eighth of the budget) is read in requests of this size
_RESIDENT_REQUEST_BYTES = 8 << 20


def read_npy_header(location: FileSystemPath) -> tuple[ColumnSpec, int, int]:
    """``(spec of one row, number of rows, byte offset of the data)`` of an ``.npy``
    file, validated: not pickled, at least 1-d, C order, and long enough."""

    def read_head() -> tuple[bytes, int]:
        with location.fs.open(location.path, "rb") as f:
            return f.read(min(_MAX_HEADER_BYTES, 65536 + 10)), location.size()

    try:
        head, file_size = location.call(read_head, "header")  # retried as one request when remote
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no such file: {location.url}") from e
    import io

    buf = io.BytesIO(head)
    try:
        major, minor = np.lib.format.read_magic(buf)
        if (major, minor) == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(buf)
        elif major in (2, 3):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy format version {major}.{minor}")
    except Exception as e:  # numpy raises ValueError/EOFError/... for garbage
        raise CorruptInputError(f"{location.url}: not a valid .npy file ({e})") from e
    offset = buf.tell()
    if dtype.hasobject:
        raise SchemaError(
            f"{location.url}: dtype {dtype} holds Python objects; streambatch never "
            "unpickles data (it could run arbitrary code): store fixed-size values instead"
        )
    if len(shape) == 0:
        raise SchemaError(f"{location.url}: a 0-d array has no row axis; need at least 1 dimension")
    if fortran_order and len(shape) > 1:
        raise SchemaError(
            f"{location.url}: Fortran-order arrays are not supported (rows are not contiguous); "
            "re-save it with np.save(path, np.ascontiguousarray(a))"
        )
    spec = ColumnSpec(dtype, tuple(shape[1:]))
    num_rows = int(shape[0])
    expected = offset + num_rows * spec.row_nbytes
    if file_size < expected:
        raise CorruptInputError(
            f"{location.url}: truncated .npy file: header promises {num_rows} rows of "
            f"{spec.row_nbytes} bytes ({expected} bytes in all) but the file has {file_size} bytes"
        )
    return spec, num_rows, offset


class NpyShard(Shard):
    """One or more row-aligned ``.npy`` files, one per column."""

    def __init__(self, files: Mapping[str, FileSystemPath], path: str) -> None:
        self.path = path
        self._files = dict(files)
        self._offsets: dict[str, int] = {}
        columns: dict[str, ColumnSpec] = {}
        lengths: dict[str, int] = {}
        for name, location in self._files.items():
            spec, rows, offset = read_npy_header(location)
            columns[name] = spec
            lengths[name] = rows
            self._offsets[name] = offset
        if len(set(lengths.values())) > 1:
            listing = ", ".join(f"{self._files[n].url} has {r} rows" for n, r in lengths.items())
            raise RowCountError(f"columns of {path} have different row counts: {listing}")
        self.columns = columns
        self.num_rows = next(iter(lengths.values()))

    @property
    def unit_bounds(self) -> None:
        return None

    def open_reader(self, columns: list[str], resident: Collection[str] = ()) -> ShardReader:
        """``resident`` columns are read whole, once, when first needed, and then
        gathered from memory: for narrow columns (labels) whose per-range reads
        would cost a system call for a few bytes each, or, remotely, a request."""
        self.check_columns(list(columns))  # an unknown column is refused naming the file
        return _NpyReader(
            self.path,
            self.num_rows,
            {c: self._files[c] for c in columns},
            {c: self._offsets[c] for c in columns},
            {c: self.columns[c] for c in columns},
            getattr(self, "retry", None),
            resident=[c for c in columns if c in resident],
        )


class _NpyReader(ShardReader):
    def __init__(
        self,
        path: str,
        num_rows: int,
        files: dict[str, FileSystemPath],
        offsets: dict[str, int],
        specs: dict[str, ColumnSpec],
        retry: RetryPolicy | None = None,
        resident: Collection[str] = (),
    ) -> None:
        self._path = path
        self._resident: dict[str, np.ndarray | None] = dict.fromkeys(resident)
        self._num_rows = num_rows
        self._retry = retry
        self._files = files
        self._offsets = offsets
        self._specs = specs
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        #: held while a resident column loads, so that racing threads wait for one read
        self._load_lock = threading.Lock()
        self._closed = False
        self._plain: dict[str, FileRows | MemoryRows] | None = None

    def _fd(self, column: str) -> int:
        with self._lock:
            if self._closed:
                raise ValueError("reader is closed")
            fd = self._fds.get(column)
            if fd is None:
                fd = os.open(self._files[column].path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                self._fds[column] = fd
            return fd

    def _check(self, starts: np.ndarray, stops: np.ndarray, out: Mapping[str, np.ndarray]) -> None:
        """Refuse ranges outside the shard (a negative start would read header bytes)
        and columns this reader was not opened for, naming the shard."""
        n = self._num_rows
        bad = np.flatnonzero((starts < 0) | (stops < starts) | (stops > n))
        if bad.size:
            k = int(bad[0])
            raise ValueError(f"{self._path}: rows {int(starts[k])}:{int(stops[k])} are outside 0:{n}")
        for column in out:
            if column not in self._specs:
                raise SchemaError(f"{self._path}: column {column!r} was not opened by this reader")

    def read_into(self, start: int, stop: int, out: Mapping[str, np.ndarray]) -> None:
        self._check(np.array([start]), np.array([stop]), out)
        for column, target in out.items():
            row_nbytes = self._specs[column].row_nbytes
            offset = self._offsets[column] + start * row_nbytes
            view = _bytes_of(target)
            location = self._files[column]
            if location.is_local:
                _pread_exactly(self._fd(column), view, offset, location.url)
            else:
                self._read_remote(column, view, offset, start, stop)

    def read_many(self, starts: np.ndarray, stops: np.ndarray, out: Mapping[str, np.ndarray]) -> None:
        """Many row ranges, one positional read each straight into ``out`` (measured
        here: faster than gathering from a memory map, whose page faults cost more
        than the reads, and nothing stays mapped)."""
        self._check(np.asarray(starts), np.asarray(stops), out)
        read = {c: t for c, t in out.items() if c not in self._resident}
        if len(read) < len(out):
            lengths = stops - starts
            rows = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
            for column in out.keys() - read.keys():
                out[column][...] = self._resident_column(column).take(rows, axis=0)
        if not all(self._files[c].is_local for c in read):
            return self._read_many_remote(starts, stops, read)
        for column, target in read.items():
            row = self._specs[column].row_nbytes
            offsets = starts * row + self._offsets[column]
            sizes = (stops - starts) * row
            short = native.pread_ranges(self._fd(column), offsets, sizes, _bytes_of(target))
            if short is not None:
                k, done = short
                raise CorruptInputError.truncated(self._files[column].url, int(offsets[k]) + done, int(sizes[k]) - done)

    def plain_rows(self) -> dict[str, FileRows | MemoryRows] | None:
        """Every column as plain rows: its open local file, or (resident) its values
        in memory, loaded on first use. ``None`` when a file is remote."""
        if not all(location.is_local for location in self._files.values()):
            return None
        rows = self._plain
        if rows is None:
            rows = {
                column: (
                    MemoryRows(self._resident_column(column))
                    if column in self._resident
                    else FileRows(self._fd(column), self._offsets[column], spec.row_nbytes, self._files[column].url)
                )
                for column, spec in self._specs.items()
            }
            self._plain = rows  # racing threads build equal mappings: either may stay
        return rows

    def _resident_column(self, column: str) -> np.ndarray:
        """The whole column, read on first use: one positional read locally, and
        requests of at most ``_RESIDENT_REQUEST_BYTES`` remotely (each retried)."""
        values = self._resident[column]
        if values is not None:
            return values
        with self._load_lock:
            values = self._resident[column]
            if values is not None:  # another thread loaded it while this one waited
                return values
            spec = self._specs[column]
            values = np.empty((self._num_rows, *spec.shape), spec.dtype)
            view = _bytes_of(values)
            location = self._files[column]
            if location.is_local:
                _pread_exactly(self._fd(column), view, self._offsets[column], location.url)
            else:
                row = spec.row_nbytes
                block = max(1, _RESIDENT_REQUEST_BYTES // max(1, row))
                for lo in range(0, self._num_rows, block):
                    hi = min(self._num_rows, lo + block)
                    self._read_remote(column, view[lo * row : hi * row], self._offsets[column] + lo * row, lo, hi)
            with self._lock:
                if self._closed:
                    raise ValueError("reader is closed")
                self._resident[column] = values
            return values

    # -- remote (fsspec) reads: one request per byte range, retried ----------
    def _read_remote(
        self, column: str, view: memoryview, offset: int, start: int, stop: int, failed: BaseException | None = None
    ) -> None:
        """Rows ``[start, stop)`` of ``column`` (at byte ``offset``) into ``view``; a failed
        or short request is sent again for the same bytes (``RetryPolicy``)."""
        location = self._files[column]
        nbytes = len(view)

        def describe() -> str:
            return f"{location.url} rows {start}:{stop} (bytes {offset}:{offset + nbytes})"

        def attempt() -> None:
            data = location.cat_file(offset, offset + nbytes)
            view[:] = read_exactly(data, nbytes, describe())

        call_with_retry(attempt, self._retry, describe, secrets=location.secrets, first_error=failed)

    def _read_many_remote(self, starts: np.ndarray, stops: np.ndarray, out: Mapping[str, np.ndarray]) -> None:
        """Adjacent ranges merged, then up to ``_REMOTE_BATCH_RANGES`` requests per
        ``cat_ranges`` call (concurrent on async filesystems, so latency overlaps);
        a range that failed transiently or came back short is read again alone."""
        starts, stops = np.asarray(starts, dtype=np.int64), np.asarray(stops, dtype=np.int64)
        if len(starts) > 1:  # merge runs where one range ends where the next begins
            breaks = np.flatnonzero(starts[1:] != stops[:-1]) + 1
            first = np.concatenate([[0], breaks])
            last = np.concatenate([breaks, [len(starts)]]) - 1
            starts, stops = starts[first], stops[last]
        positions = np.concatenate([[0], np.cumsum(stops - starts)]).tolist()
        starts_l, stops_l = starts.tolist(), stops.tolist()
        for column, target in out.items():
            location = self._files[column]
            row = self._specs[column].row_nbytes
            base = self._offsets[column]
            view = _bytes_of(target)
            k = 0
            while k < len(starts_l):
                end, nbytes = k, 0
                while (
                    end < len(starts_l)
                    and end - k < _REMOTE_BATCH_RANGES
                    and (end == k or nbytes + (stops_l[end] - starts_l[end]) * row <= _REMOTE_BATCH_BYTES)
                ):
                    nbytes += (stops_l[end] - starts_l[end]) * row
                    end += 1
                batch = range(k, end)
                if len(batch) == 1:
                    results: list[object] = [None]
                else:
                    try:
                        results = location.cat_ranges(
                            [base + starts_l[j] * row for j in batch], [base + stops_l[j] * row for j in batch]
                        )
                    except Exception as e:  # the whole call failed (its timeout): each range alone, retried
                        if not is_transient(e):
                            raise
                        results = [e] * len(batch)
                for j, data in zip(batch, results):
                    part = view[positions[j] * row : positions[j + 1] * row]
                    if isinstance(data, (bytes, bytearray, memoryview)) and len(data) == len(part):
                        part[:] = data
                        continue
                    failed: BaseException | None = None  # None: a lone range, not requested yet
                    if isinstance(data, BaseException):
                        failed = data
                    elif data is not None:  # came back short: attempt 1 failed with a short read
                        failed = ShortReadError(f"{location.url} rows {starts_l[j]}:{stops_l[j]}: short read")
                    self._read_remote(column, part, base + starts_l[j] * row, starts_l[j], stops_l[j], failed)
                del results
                k = end

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._resident = dict.fromkeys(self._resident)
            self._plain = None
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def _bytes_of(array: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, writable, for positional reads into it."""
    return memoryview(array.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # numpy's stubs lack the buffer protocol


def _pread_exactly(fd: int, view: memoryview, offset: int, url: str) -> None:
    """``len(view)`` bytes of ``fd`` at ``offset`` into ``view``, or the error naming
    where ``url`` ended."""
    short = native.pread_ranges(fd, np.array([offset]), np.array([len(view)]), view)
    if short is not None:
        raise CorruptInputError.truncated(url, offset + short[1], len(view) - short[1])
