"""Rows ``[a, b)`` of one column of an Arrow IPC record batch, read with positional
reads of just the bytes they occupy (:mod:`._arrow_index` says where).

A fixed-width column's rows are one byte run per buffer; a list or string
column's are its offsets ``[a, b]`` and then the values they span; a view
column's (``string_view``) are its 16-byte views and then the string bytes they
point at, gathered from the data buffers in as few reads as their spread allows.
What was read is assembled into a ``pyarrow.Array`` with offset 0 (validity bits
are shifted to start at row ``a``, offsets rebased to 0), which the caller
copies into its own arrays and drops: nothing read outlives a read.

A compressed record batch (LZ4 frame or ZSTD, one compressed run per buffer)
cannot be read in part: each buffer a read needs is read and decompressed whole,
once per :class:`BatchSlicer`, and only the requested columns' buffers.

:class:`ByteSource` is thread-safe: local reads are ``os.pread`` on one
descriptor (no shared file position), remote ones one ranged fsspec request
each, retried on transient errors (``RetryPolicy``).
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..errors import CorruptInputError
from ._arrow_index import BatchLayout
from ._fs import FileSystemPath
from ._npy import _pread_exactly
from ._retry import RetryPolicy, call_with_retry, read_exactly

__all__ = ["BatchSlicer", "ByteSource", "Cursor", "read_array", "read_fixed_into", "read_variable"]

#: View columns: string bytes closer than this are fetched in one read.
_GATHER_GAP = 64 << 10
_VIEW_INLINE = 12


class ByteSource:
    """Positional reads of one file, local (``os.pread``) or remote (fsspec)."""

    def __init__(self, location: FileSystemPath, retry: RetryPolicy | None = None) -> None:
        self.location = location
        self.url = location.url
        self._retry = retry if retry is not None else location.retry
        self._fd: int | None = None
        if location.is_local:
            try:
                self._fd = os.open(location.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError as e:
                raise FileNotFoundError(f"no such file: {location.url}") from e
        self.closed = False

    def size(self) -> int:
        if self._fd is not None:
            return os.fstat(self._fd).st_size
        return self.location.size()

    def read(self, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)``; a file that ends sooner is ``CorruptInputError``."""
        fd = self._fd
        if fd is not None:
            data = os.pread(fd, size, offset)
            if len(data) < size:  # a short read from a regular file: ended, or read again for the rest
                view = bytearray(size)
                view[: len(data)] = data
                _pread_exactly(fd, memoryview(view)[len(data) :], offset + len(data), self.url)
                return bytes(view)
            return data
        if self.closed:
            raise ValueError(f"reader of {self.url} is closed")
        return self._remote(offset, size)

    def read_into(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with the bytes at ``offset`` (local: straight into it)."""
        if self._fd is not None:
            _pread_exactly(self._fd, view, offset, self.url)
        else:
            view[:] = self.read(offset, len(view))

    def _remote(self, offset: int, size: int) -> bytes:
        location = self.location

        def describe() -> str:
            return f"{location.url} (bytes {offset}:{offset + size})"

        def attempt() -> bytes:
            return bytes(read_exactly(location.cat_file(offset, offset + size), size, describe()))

        return call_with_retry(attempt, self._retry, describe, secrets=location.secrets)

    def close(self) -> None:
        self.closed = True
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class BatchSlicer:
    """Byte ranges of the buffers of one record (or dictionary) batch. Not shared
    between threads: a compressed buffer, once decompressed, is kept until the
    slicer is dropped (one read)."""

    def __init__(self, source: ByteSource, layout: BatchLayout, what: str) -> None:
        self.source, self.layout, self.what = source, layout, what
        self._whole: dict[int, pa.Buffer] = {}

    @property
    def compressed(self) -> bool:
        return self.layout.codec is not None

    def node(self, k: int) -> tuple[int, int]:
        length, nulls = self.layout.nodes[k]
        return int(length), int(nulls)

    def nulls(self, first: int, count: int) -> int:
        """Nulls of ``count`` nodes from node ``first`` (a field and its children)."""
        return int(self.layout.nodes[first : first + count, 1].sum())

    def _check(self, k: int, start: int, size: int, length: int) -> None:
        if start < 0 or size < 0 or start + size > length:
            raise CorruptInputError(
                f"{self.what}: buffer {k} holds {length} bytes but its rows need bytes {start}:{start + size} "
                "(a corrupt header, or the file changed since it was opened)"
            )

    def bytes(self, k: int, start: int, size: int) -> pa.Buffer:
        """``size`` bytes from byte ``start`` of buffer ``k`` (decompressed, if it is)."""
        if size == 0:
            return pa.py_buffer(b"")
        if self.compressed:
            whole = self._decompressed(k)
            self._check(k, start, size, whole.size)
            return whole.slice(start, size)
        offset, length = (int(v) for v in self.layout.buffers[k])
        self._check(k, start, size, length)
        return pa.py_buffer(self.source.read(offset + start, size))

    def buffer_size(self, k: int) -> int:
        """Bytes buffer ``k`` holds (decompressed: from its length prefix, 8 bytes read)."""
        offset, length = (int(v) for v in self.layout.buffers[k])
        if not self.compressed or length < 8:
            return length
        (size,) = struct.unpack_from("<q", self.source.read(offset, 8), 0)
        return length - 8 if size == -1 else size

    def read_into(self, k: int, start: int, view: memoryview) -> None:
        """Buffer ``k``'s bytes from ``start`` into ``view`` (an uncompressed batch)."""
        offset, length = (int(v) for v in self.layout.buffers[k])
        self._check(k, start, len(view), length)
        self.source.read_into(view, offset + start)

    def _decompressed(self, k: int) -> pa.Buffer:
        found = self._whole.get(k)
        if found is not None:
            return found
        offset, length = (int(v) for v in self.layout.buffers[k])
        if length == 0:
            whole = pa.py_buffer(b"")
        else:
            if length < 8:
                raise CorruptInputError(f"{self.what}: compressed buffer {k} holds {length} bytes, no length prefix")
            raw = self.source.read(offset, length)
            (size,) = struct.unpack_from("<q", raw, 0)
            payload = memoryview(raw)[8:]
            try:
                whole = pa.py_buffer(payload) if size == -1 else pa.decompress(payload, size, self.layout.codec)
            except (pa.ArrowException, OSError, ValueError) as e:
                codec = self.layout.codec
                raise CorruptInputError(f"{self.what}: buffer {k} does not decompress ({codec}: {e})") from e
        self._whole[k] = whole
        return whole

    def bits(self, k: int, a: int, b: int) -> pa.Buffer:
        """The bits of rows ``[a, b)`` of a bitmap buffer, shifted to start at bit 0."""
        lo, hi = a // 8, -(-b // 8)
        raw = self.bytes(k, lo, hi - lo)
        if a % 8 == 0:
            return raw
        bits = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[a % 8 : a % 8 + (b - a)]
        return pa.py_buffer(np.packbits(bits, bitorder="little"))

    def offsets(self, k: int, a: int, b: int, wide: bool) -> np.ndarray:
        """Entries ``[a, b]`` of an offsets buffer (``b - a + 1`` of them)."""
        width = 8 if wide else 4
        raw = self.bytes(k, a * width, (b - a + 1) * width)
        return np.frombuffer(raw, np.int64 if wide else np.int32)


@dataclass
class Cursor:
    """Where the next array's node, buffers and variadic count are in a batch header."""

    node: int
    buffer: int
    view: int


@dataclass(frozen=True)
class _Layout:
    """How an array of ``type`` is laid out: ``kind`` is ``"view"``, ``"binary"``
    (offsets and bytes), ``"list"``, ``"fixed_list"`` or ``"fixed"`` (``width`` bits a
    value); ``wide`` for 64-bit offsets; ``child`` the layout of a list's values."""

    type: pa.DataType
    kind: str
    width: int = 0
    wide: bool = False
    size: int = 0
    child: _Layout | None = None


@functools.lru_cache(maxsize=256)
def _layout(t: pa.DataType) -> _Layout:
    """The layout of ``t`` (extension types by their storage, dictionaries by their
    indices), found once per type: the dispatch of every read."""
    if isinstance(t, pa.BaseExtensionType):
        t = t.storage_type
    if pa.types.is_dictionary(t):
        t = t.index_type
    if str(t) in ("string_view", "binary_view"):
        return _Layout(t, "view")
    if _is_offset_binary(t):
        return _Layout(t, "binary", wide=pa.types.is_large_string(t) or pa.types.is_large_binary(t))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _Layout(t, "list", wide=pa.types.is_large_list(t), child=_layout(t.value_type))
    if pa.types.is_fixed_size_list(t):
        return _Layout(t, "fixed_list", size=t.list_size, child=_layout(t.value_type))
    return _Layout(t, "fixed", width=_bit_width(t))


def read_array(s: BatchSlicer, t: pa.DataType, at: Cursor, a: int, b: int) -> pa.Array:
    """Rows ``[a, b)`` of the array of type ``t`` at ``at`` (advanced past it and its
    children). Dictionary columns give their indices. Types the loader delivers
    (fixed-width scalars, fixed-size binary, lists and fixed-size lists of them,
    strings and binary, their views) are read; others are a ``TypeError``."""
    return _read(s, _layout(t), at, a, b)


def _read(s: BatchSlicer, layout: _Layout, at: Cursor, a: int, b: int) -> pa.Array:
    t, kind = layout.type, layout.kind
    nulls = int(s.layout.nodes[at.node, 1])
    at.node += 1
    k, n = at.buffer, b - a
    validity = s.bits(k, a, b) if nulls else None
    null_count = -1 if nulls else 0
    if kind == "view":
        count = s.layout.variadic[at.view]
        at.buffer += 2 + count
        at.view += 1
        return _read_views(s, t, k, count, validity, a, b)
    if kind == "binary":
        at.buffer += 3
        offsets = s.offsets(k + 1, a, b, layout.wide)
        lo, hi = int(offsets[0]), int(offsets[-1])
        data = s.bytes(k + 2, lo, hi - lo)
        return pa.Array.from_buffers(t, n, [validity, pa.py_buffer(offsets - offsets[0]), data], null_count)
    if kind == "list":
        at.buffer += 2
        offsets = s.offsets(k + 1, a, b, layout.wide)
        child = _read(s, layout.child, at, int(offsets[0]), int(offsets[-1]))  # type: ignore[arg-type]
        return pa.Array.from_buffers(t, n, [validity, pa.py_buffer(offsets - offsets[0])], null_count, children=[child])
    if kind == "fixed_list":
        at.buffer += 1
        child = _read(s, layout.child, at, a * layout.size, b * layout.size)  # type: ignore[arg-type]
        return pa.Array.from_buffers(t, n, [validity], null_count, children=[child])
    width = layout.width
    at.buffer += 2
    data = s.bits(k + 1, a, b) if width == 1 else s.bytes(k + 1, a * (width // 8), n * (width // 8))
    return pa.Array.from_buffers(t, n, [validity, data], null_count)


def read_variable(s: BatchSlicer, t: pa.DataType, at: Cursor, a: int, b: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(offsets, values)`` of rows ``[a, b)`` of a null-free string/binary column (its
    bytes) or a list of whole-byte scalars (its values, as ``storage``), offsets from 0:
    what a variable-length target takes, with no Arrow array built. ``None`` (nothing
    read) for other columns, or when the rows' batch holds nulls in it."""
    layout = _layout(t)
    if layout.kind == "binary":
        if s.nulls(at.node, 1):
            return None
        offsets = s.offsets(at.buffer + 1, a, b, layout.wide)
        lo, hi = int(offsets[0]), int(offsets[-1])
        return offsets - lo, np.frombuffer(s.bytes(at.buffer + 2, lo, hi - lo), np.uint8)
    child = layout.child
    if layout.kind != "list" or child is None or child.kind != "fixed" or child.width % 8 or s.nulls(at.node, 2):
        return None
    offsets = s.offsets(at.buffer + 1, a, b, layout.wide)
    lo, hi = int(offsets[0]), int(offsets[-1])
    width = child.width // 8
    raw = s.bytes(at.buffer + 3, lo * width, (hi - lo) * width)
    return offsets - lo, np.frombuffer(raw, child.type.to_pandas_dtype())


def read_fixed_into(s: BatchSlicer, t: pa.DataType, at: Cursor, a: int, b: int, view: memoryview) -> bool:
    """Rows ``[a, b)`` of a null-free fixed-width column (a scalar, fixed-size binary or
    fixed-size lists of them; not booleans) read straight into ``view``; ``False``
    (nothing read) when the column is not one, holds nulls, or the batch is compressed."""
    if s.compressed:
        return False
    layout, levels, values = _layout(t), 0, 1
    while layout.kind == "fixed_list" and layout.child is not None:
        layout, levels, values = layout.child, levels + 1, values * layout.size
    if layout.kind != "fixed" or layout.width % 8 or s.nulls(at.node, levels + 1):
        return False
    row = values * layout.width // 8
    if len(view) != (b - a) * row:
        return False
    s.read_into(at.buffer + levels + 1, a * row, view)
    return True


def _read_views(
    s: BatchSlicer, t: pa.DataType, k: int, count: int, validity: pa.Buffer | None, a: int, b: int
) -> pa.Array:
    """Rows ``[a, b)`` of a view column: its views, and the bytes of the strings longer
    than 12 bytes (the others are inline), gathered into one new data buffer."""
    n = b - a
    views = np.frombuffer(s.bytes(k + 1, a * 16, n * 16), np.int32).reshape(n, 4).copy()
    if validity is not None:  # a null's view may hold anything
        valid = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little", count=n).astype(bool)
        views[~valid] = 0
    rows = np.flatnonzero(views[:, 0] > _VIEW_INLINE)
    parts: list[pa.Buffer] = []
    if rows.size:
        buffer, start, length = views[rows, 2], views[rows, 3].astype(np.int64), views[rows, 0].astype(np.int64)
        if (buffer < 0).any() or (buffer >= count).any():
            raise CorruptInputError(f"{s.what}: a view points at a data buffer the batch does not have")
        order = np.lexsort((start, buffer))
        buffer, start, end, rows = buffer[order], start[order], (start + length)[order], rows[order]
        # runs of one buffer whose strings lie within _GATHER_GAP of each other: one read each
        reach = np.maximum.accumulate(end)  # within a buffer: starts are sorted, so runs are contiguous
        breaks = np.flatnonzero((buffer[1:] != buffer[:-1]) | (start[1:] > reach[:-1] + _GATHER_GAP)) + 1
        first = np.concatenate([[0], breaks])
        last = np.concatenate([breaks, [len(rows)]])
        position = 0
        new_start = np.empty(len(rows), np.int64)
        for lo, hi in zip(first.tolist(), last.tolist()):
            run_start = int(start[lo])
            run_end = int(np.max(end[lo:hi]))
            parts.append(s.bytes(k + 2 + int(buffer[lo]), run_start, run_end - run_start))
            new_start[lo:hi] = position + start[lo:hi] - run_start
            position += run_end - run_start
        if position > np.iinfo(np.int32).max:
            raise CorruptInputError(f"{s.what}: rows {a}:{b} of a view column hold more than 2 GiB of strings")
        views[rows, 2] = 0
        views[rows, 3] = new_start
    data = pa.py_buffer(b"".join(p.to_pybytes() for p in parts)) if len(parts) != 1 else parts[0]
    return pa.Array.from_buffers(t, n, [validity, pa.py_buffer(views), data], -1 if validity is not None else 0)


def _is_offset_binary(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _bit_width(t: pa.DataType) -> int:
    if pa.types.is_fixed_size_binary(t):
        return 8 * t.byte_width
    try:
        return t.bit_width
    except ValueError as e:
        raise TypeError(f"Arrow type {t} is not read by streambatch") from e
