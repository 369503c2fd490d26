"""Where every record batch of an Arrow IPC file lies, found from its metadata
alone: the flatbuffer headers are parsed here, the bodies are never read.

An IPC file is a sequence of *encapsulated messages*: ``0xFFFFFFFF``, a 32-bit
metadata length, a flatbuffer ``Message`` (padded to 8 bytes), then the message
body (``bodyLength`` bytes). The file format is the same stream behind the
magic ``ARROW1\\0\\0``, plus a footer listing the ``Block`` (offset, metadata
length, body length) of every dictionary and record batch; a stream has no
footer and is indexed by walking its messages once, header by header (a
positional read of each header, the bodies skipped).

Each ``RecordBatch`` header lists, in pre-order over the schema's fields, one
``FieldNode`` (length, null count) per array and one ``Buffer`` (offset,
length within the body) per buffer, so the bytes of any column of any row range
can be located and read without reading anything else (:mod:`._arrow_ranges`).
The flatbuffer layouts are Arrow's ``format/Message.fbs``, ``File.fbs`` and
``Schema.fbs``; only the fields needed here are decoded.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..errors import CorruptInputError, SchemaError

__all__ = ["BatchLayout", "IpcIndex", "field_layout", "index_file"]

_FILE_MAGIC = b"ARROW1"
_CONTINUATION = 0xFFFFFFFF
#: Message header types (``MessageHeader`` union in Message.fbs).
_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH = 1, 2, 3
#: ``CompressionType`` in Message.fbs -> the codec name of ``pyarrow.decompress``.
_CODECS = {0: "lz4", 1: "zstd"}
#: Bytes read at a message's start: its prefix and (usually all of) its header.
_HEADER_GUESS = 4096
#: A metadata flatbuffer larger than this is not believed (a corrupt length).
_MAX_METADATA_BYTES = 256 << 20

#: ``read(offset, size) -> bytes``: a positional read of the file.
Read = Callable[[int, int], bytes]


# --------------------------------------------------------------------------- flatbuffers


class _Table:
    """A flatbuffer table at ``pos`` in ``buf``: its fields by vtable slot."""

    __slots__ = ("buf", "pos", "vsize", "vtable")

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vsize = struct.unpack_from("<H", buf, self.vtable)[0]

    def _at(self, slot: int) -> int:
        entry = 4 + 2 * slot
        if entry >= self.vsize:
            return 0
        rel = struct.unpack_from("<H", self.buf, self.vtable + entry)[0]
        return self.pos + rel if rel else 0

    def scalar(self, slot: int, fmt: str, default: int = 0) -> int:
        at = self._at(slot)
        return struct.unpack_from("<" + fmt, self.buf, at)[0] if at else default

    def table(self, slot: int) -> _Table | None:
        at = self._at(slot)
        return _Table(self.buf, at + struct.unpack_from("<I", self.buf, at)[0]) if at else None

    def vector(self, slot: int) -> tuple[int, int]:
        """``(position of the first element, number of elements)``; ``(0, 0)`` if absent."""
        at = self._at(slot)
        if not at:
            return 0, 0
        start = at + struct.unpack_from("<I", self.buf, at)[0]
        return start + 4, struct.unpack_from("<I", self.buf, start)[0]

    def structs(self, slot: int, width: int, dtype: str = "<i8") -> np.ndarray:
        """A vector of structs of ``width`` int64s each, as an ``(n, width)`` array."""
        start, n = self.vector(slot)
        return np.frombuffer(self.buf, dtype=dtype, count=n * width, offset=start).reshape(n, width).copy()

    def tables(self, slot: int) -> list[_Table]:
        start, n = self.vector(slot)
        return [
            _Table(self.buf, start + 4 * k + struct.unpack_from("<I", self.buf, start + 4 * k)[0]) for k in range(n)
        ]


def _root(buf: bytes) -> _Table:
    return _Table(buf, struct.unpack_from("<I", buf, 0)[0])


# --------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class BatchLayout:
    """One record batch (or dictionary batch) as its header describes it.

    ``nodes[k] = (length, null_count)`` of the k-th array in pre-order;
    ``buffers[k] = (offset, length)``, the offset in the file (the body's start
    added); ``variadic`` the data buffer counts of the view-typed arrays;
    ``codec`` the ``pyarrow.decompress`` codec of every buffer, or ``None``."""

    num_rows: int
    nodes: np.ndarray
    buffers: np.ndarray
    variadic: tuple[int, ...]
    codec: str | None
    body_offset: int
    body_length: int


@dataclass(frozen=True)
class IpcIndex:
    """Schema, dictionaries and record batches of one IPC file or stream.

    ``dictionary_ids[name]`` is the dictionary id of a top-level
    dictionary-encoded field; ``dictionaries[i]`` maps each id to the dictionary
    batches in force for record batch ``i`` (a replacement and the deltas that
    followed it, in order)."""

    stream: bool
    size: int
    schema: pa.Schema
    batches: tuple[BatchLayout, ...]
    dictionary_ids: dict[str, int]
    dictionaries: tuple[dict[int, tuple[BatchLayout, ...]], ...]


def index_file(read: Read, size: int, path: str) -> IpcIndex:
    """Index the IPC file (``read`` is a positional read of its ``size`` bytes):
    the footer's blocks for the file format, one walk over the message headers
    for a stream. Bodies are not read. ``CorruptInputError`` names ``path``."""
    try:
        head = read(0, min(size, 8))
        if head[: len(_FILE_MAGIC)] == _FILE_MAGIC:
            return _index_file_format(read, size, path)
        return _index_stream(read, size, path, 0)
    except (struct.error, ValueError, IndexError, pa.ArrowException) as e:
        raise CorruptInputError(f"{path}: not a valid Arrow IPC file or stream ({e})") from e


def _message_at(read: Read, offset: int, size: int, path: str) -> tuple[_Table, int] | None:
    """The ``Message`` at ``offset`` and the offset of its body; ``None`` at the end of
    the stream (an end marker, or no bytes left)."""
    if offset + 4 > size:
        return None
    prefix = read(offset, min(_HEADER_GUESS, size - offset))  # most headers fit: one read, not two
    (first,) = struct.unpack_from("<I", prefix, 0)
    if first == _CONTINUATION:
        if len(prefix) < 8:
            raise CorruptInputError(f"{path}: the stream ends inside a message header at byte {offset}")
        (length,) = struct.unpack_from("<i", prefix, 4)
        start = offset + 8
    else:  # the format before Arrow 0.15: the length alone
        length, start = struct.unpack_from("<i", prefix, 0)[0], offset + 4
    if length == 0:
        return None
    if length < 0 or length > _MAX_METADATA_BYTES or start + length > size:
        raise CorruptInputError(f"{path}: message at byte {offset} claims {length} bytes of metadata")
    have = len(prefix) - (start - offset)
    raw = prefix[start - offset : start - offset + length] if have >= length else read(start, length)
    return _root(raw), start + length


def _dictionary_ids(schema: _Table | None, path: str) -> dict[str, int]:
    """The dictionary id of each top-level dictionary-encoded field of a ``Schema``
    table (Schema.fbs: ``fields``, each ``Field`` with its ``name`` and ``dictionary``).
    A big-endian file (``endianness``) is refused: its values would be read byte-swapped."""
    if schema is not None and schema.scalar(0, "h") == 1:
        raise SchemaError(f"{path}: a big-endian Arrow IPC file; rewrite it little-endian (the native order here)")
    ids: dict[str, int] = {}
    for field in schema.tables(1) if schema is not None else []:
        encoding = field.table(4)
        if encoding is not None:
            start, n = field.vector(0)  # a string is a vector of bytes
            ids[bytes(field.buf[start : start + n]).decode("utf-8")] = encoding.scalar(0, "q")
    return ids


class _FileView(io.RawIOBase):
    """A read-only file object over ``read``, for pyarrow to parse a footer's schema."""

    def __init__(self, read: Read, size: int) -> None:
        self._read, self._size, self._pos = read, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else self._size + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = max(0, min(len(buffer), self._size - self._pos))
        buffer[:n] = self._read(self._pos, n) if n else b""
        self._pos += n
        return n


def _batch_layout(header: _Table, body_offset: int, body_length: int) -> BatchLayout:
    """A ``RecordBatch`` table (Message.fbs) as a ``BatchLayout``."""
    nodes = header.structs(1, 2)
    buffers = header.structs(2, 2)
    buffers[:, 0] += body_offset
    compression = header.table(3)
    codec = None
    if compression is not None:
        kind = compression.scalar(0, "b", 0)
        if kind not in _CODECS:
            raise CorruptInputError(f"unknown IPC compression codec {kind}")
        codec = _CODECS[kind]
    start, n = header.vector(4)
    variadic = tuple(struct.unpack_from(f"<{n}q", header.buf, start)) if n else ()
    return BatchLayout(int(header.scalar(0, "q")), nodes, buffers, variadic, codec, body_offset, body_length)


def _index_stream(read: Read, size: int, path: str, offset: int) -> IpcIndex:
    """Walk the messages from ``offset``: schema first, then dictionaries and record
    batches in order (a dictionary batch replaces, or with ``isDelta`` extends, the
    dictionary of its id for the record batches after it)."""
    found = _message_at(read, offset, size, path)
    if found is None:
        raise CorruptInputError(f"{path}: no schema message")
    message, _ = found
    if message.scalar(1, "B") != _SCHEMA:
        raise CorruptInputError(f"{path}: the first message is not a schema")
    schema = pa.ipc.read_schema(pa.py_buffer(_raw_message(read, offset, size, path)))
    ids = _dictionary_ids(message.table(2), path)
    batches: list[BatchLayout] = []
    in_force: dict[int, tuple[BatchLayout, ...]] = {}
    states: list[dict[int, tuple[BatchLayout, ...]]] = []
    position = offset
    while True:
        found = _message_at(read, position, size, path)
        if found is None:
            break
        message, body = found
        body_length = int(message.scalar(3, "q"))
        if body_length < 0 or body + body_length > size:
            raise CorruptInputError(f"{path}: message at byte {position} claims {body_length} body bytes")
        kind, header = message.scalar(1, "B"), message.table(2)
        if kind == _RECORD_BATCH and header is not None:
            batches.append(_batch_layout(header, body, body_length))
            states.append(dict(in_force))
        elif kind == _DICTIONARY_BATCH and header is not None:
            data = header.table(1)
            if data is None:
                raise CorruptInputError(f"{path}: a dictionary batch at byte {position} holds no data")
            layout = _batch_layout(data, body, body_length)
            key = int(header.scalar(0, "q"))
            delta = bool(header.scalar(2, "B"))
            in_force[key] = (*in_force.get(key, ()), layout) if delta else (layout,)
        position = body + body_length
    return IpcIndex(True, size, schema, tuple(batches), ids, tuple(states))


def _raw_message(read: Read, offset: int, size: int, path: str) -> bytes:
    """The bytes of the (body-less) message at ``offset``, for ``pyarrow.ipc.read_schema``."""
    prefix = read(offset, 8)
    (first,) = struct.unpack_from("<I", prefix, 0)
    length = struct.unpack_from("<i", prefix, 4 if first == _CONTINUATION else 0)[0]
    header = 8 if first == _CONTINUATION else 4
    raw = read(offset, header + length)
    if first != _CONTINUATION:  # pyarrow reads the legacy framing too, but only with the marker here
        raw = struct.pack("<Ii", _CONTINUATION, length) + raw[4:]
    return raw


def _index_file_format(read: Read, size: int, path: str) -> IpcIndex:
    """The footer's blocks (File.fbs ``Footer``); each block's header is then read for
    its nodes and buffers. A file format holds one dictionary per id (deltas allowed,
    no replacement), in force for every record batch."""
    if size < 2 * len(_FILE_MAGIC) + 8 + 4:
        raise CorruptInputError(f"{path}: too short for an Arrow IPC file ({size} bytes)")
    tail = read(size - len(_FILE_MAGIC) - 4, len(_FILE_MAGIC) + 4)
    if tail[4:] != _FILE_MAGIC:
        raise CorruptInputError(f"{path}: no Arrow IPC footer (the file does not end with ARROW1; truncated?)")
    (footer_length,) = struct.unpack_from("<i", tail, 0)
    footer_start = size - len(_FILE_MAGIC) - 4 - footer_length
    if footer_length <= 0 or footer_start < 8:
        raise CorruptInputError(f"{path}: the footer claims {footer_length} bytes")
    footer = _root(read(footer_start, footer_length))
    # the footer's schema (pyarrow reads the footer alone; some writers, polars, put no
    # schema message after the magic)
    with pa.ipc.open_file(pa.PythonFile(_FileView(read, size), mode="r")) as reader:
        schema = reader.schema
    ids = _dictionary_ids(footer.table(1), path)
    dictionaries: dict[int, tuple[BatchLayout, ...]] = {}
    for offset, meta, body in _blocks(footer, 2):
        message = _block_message(read, offset, meta, size, path)
        header = message.table(2)
        data = None if header is None else header.table(1)
        if header is None or data is None or message.scalar(1, "B") != _DICTIONARY_BATCH:
            raise CorruptInputError(f"{path}: the footer's dictionary block at byte {offset} is not a dictionary")
        key = int(header.scalar(0, "q"))
        layout = _batch_layout(data, offset + meta, body)
        dictionaries[key] = (*dictionaries.get(key, ()), layout) if header.scalar(2, "B") else (layout,)
    batches = []
    for offset, meta, body in _blocks(footer, 3):
        message = _block_message(read, offset, meta, size, path)
        header = message.table(2)
        if header is None or message.scalar(1, "B") != _RECORD_BATCH:
            raise CorruptInputError(f"{path}: the footer's record batch block at byte {offset} is not a record batch")
        batches.append(_batch_layout(header, offset + meta, body))
    return IpcIndex(False, size, schema, tuple(batches), ids, tuple(dictionaries for _ in batches))


def _blocks(footer: _Table, slot: int) -> list[tuple[int, int, int]]:
    """``(offset, metadata length, body length)`` of the footer's ``Block`` structs."""
    start, n = footer.vector(slot)
    return [struct.unpack_from("<qi4xq", footer.buf, start + 24 * k) for k in range(n)]


def _block_message(read: Read, offset: int, meta: int, size: int, path: str) -> _Table:
    if offset < 8 or meta <= 0 or offset + meta > size:
        raise CorruptInputError(f"{path}: the footer lists a block at byte {offset} of {meta} bytes")
    raw = read(offset, meta)
    skip = 8 if struct.unpack_from("<I", raw, 0)[0] == _CONTINUATION else 4
    return _root(raw[skip:])


# --------------------------------------------------------------------------- field layouts


def field_layout(t: pa.DataType) -> tuple[int, int, int]:
    """``(nodes, buffers, view arrays)`` one field of type ``t`` takes in a record
    batch header (the Arrow columnar format's buffer layouts, metadata version 5);
    a view array (``string_view``, ``binary_view``) also takes the variadic data
    buffers its header entry counts."""
    if isinstance(t, pa.BaseExtensionType):
        return field_layout(t.storage_type)
    if pa.types.is_dictionary(t):
        return 1, 2, 0  # the indices; the values come in dictionary batches
    if pa.types.is_null(t):
        return 1, 0, 0
    if str(t) in ("string_view", "binary_view"):
        return 1, 2, 1
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return 1, 3, 0
    own = None
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_map(t):
        own = 2
    elif hasattr(pa.types, "is_list_view") and (pa.types.is_list_view(t) or pa.types.is_large_list_view(t)):
        own = 3
    elif pa.types.is_fixed_size_list(t) or pa.types.is_struct(t):
        own = 1
    elif pa.types.is_union(t):
        own = 1 if t.mode == "sparse" else 2
    elif hasattr(pa.types, "is_run_end_encoded") and pa.types.is_run_end_encoded(t):
        own = 0
    if own is None:
        return 1, 2, 0  # fixed-width: validity and values (bool, numbers, temporal, decimal, fixed_size_binary)
    nodes, buffers, views = 1, own, 0
    for k in range(t.num_fields):
        n, b, v = field_layout(t.field(k).type)
        nodes, buffers, views = nodes + n, buffers + b, views + v
    return nodes, buffers, views
