"""``.npy`` files: the header is parsed and checked against the file size at
open; rows are read with positional reads straight into the caller's arrays,
so no memory map (and no page it pins) outlives a read, and pickle is never
touched."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

import numpy as np

from ..errors import CorruptInputError, SchemaError
from ._base import ColumnSpec, Shard, ShardReader
from ._fs import FileSystemPath

__all__ = ["NpyShard", "read_npy_header"]

_MAX_HEADER_BYTES = 1 << 20


def read_npy_header(location: FileSystemPath) -> tuple[ColumnSpec, int, int]:
    """``(spec of one row, number of rows, byte offset of the data)`` of an ``.npy``
    file, validated: not pickled, at least 1-d, C order, and long enough."""
    try:
        with location.fs.open(location.path, "rb") as f:
            head = f.read(min(_MAX_HEADER_BYTES, 65536 + 10))
            file_size = location.size()
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
            raise SchemaError(f"columns of {path} have different row counts: {listing}")
        self.columns = columns
        self.num_rows = next(iter(lengths.values()))

    @property
    def unit_bounds(self) -> None:
        return None

    def open_reader(self, columns: list[str]) -> ShardReader:
        return _NpyReader(
            self.num_rows,
            {c: self._files[c] for c in columns},
            {c: self._offsets[c] for c in columns},
            {c: self.columns[c] for c in columns},
        )


class _NpyReader(ShardReader):
    def __init__(
        self,
        num_rows: int,
        files: dict[str, FileSystemPath],
        offsets: dict[str, int],
        specs: dict[str, ColumnSpec],
    ) -> None:
        self._num_rows = num_rows
        self._files = files
        self._offsets = offsets
        self._specs = specs
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _fd(self, column: str) -> int:
        with self._lock:
            if self._closed:
                raise ValueError("reader is closed")
            fd = self._fds.get(column)
            if fd is None:
                fd = os.open(self._files[column].path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                self._fds[column] = fd
            return fd

    def read_into(self, start: int, stop: int, out: Mapping[str, np.ndarray]) -> None:
        for column, target in out.items():
            row_nbytes = self._specs[column].row_nbytes
            offset = self._offsets[column] + start * row_nbytes
            nbytes = (stop - start) * row_nbytes
            view = memoryview(target.reshape(-1).view(np.uint8))
            location = self._files[column]
            if location.is_local:
                _pread_exactly(self._fd(column), view, offset, location.url)
            else:
                data = location.fs.cat_file(location.path, start=offset, end=offset + nbytes)
                if len(data) != nbytes:
                    raise CorruptInputError(
                        f"{location.url}: short read at byte {offset}: got {len(data)} of {nbytes} bytes"
                    )
                view[:] = data

    def read_many(self, starts: np.ndarray, stops: np.ndarray, out: Mapping[str, np.ndarray]) -> None:
        """Many row ranges, one positional read each straight into ``out`` (measured
        here: faster than gathering from a memory map, whose page faults cost more
        than the reads, and nothing stays mapped)."""
        if not all(self._files[c].is_local for c in out):
            return super().read_many(starts, stops, out)
        for column, target in out.items():
            row = self._specs[column].row_nbytes
            fd = self._fd(column)
            view = memoryview(target.reshape(-1).view(np.uint8))
            offsets = (starts * row + self._offsets[column]).tolist()
            sizes = ((stops - starts) * row).tolist()
            done = 0
            url = self._files[column].url
            for offset, size in zip(offsets, sizes):
                _pread_exactly(fd, view[done : done + size], offset, url)
                done += size

    def _rows_nbytes(self, column: str) -> int:
        return self._num_rows * self._specs[column].row_nbytes

    def close(self) -> None:
        with self._lock:
            self._closed = True
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def _pread_exactly(fd: int, view: memoryview, offset: int, url: str) -> None:
    done = 0
    total = len(view)
    while done < total:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise CorruptInputError(
                f"{url}: file ended at byte {offset + done}, {total - done} bytes short "
                "(was it truncated after the dataset was opened?)"
            )
        done += n
