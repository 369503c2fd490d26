"""Arrow IPC files -- the file format (Feather v2, ``.arrow``) and the stream
format -- and Hugging Face ``Dataset.save_to_disk`` directories, which hold
stream-format files ``data-0000i-of-0000n.arrow`` listed in ``state.json``.

Random access through a memory map
    An uncompressed IPC file is read in place: each record batch's buffers are
    views of the memory-mapped file, so any row range is cheap to copy and
    ``unit_bounds`` is ``None``, as for ``.npy`` (the loader then cuts the file
    into many small pieces and shuffles nearly as well as a full permutation).
    The file format indexes its record batches in its footer; a stream is
    indexed once, when a reader opens, by walking its message headers (the data
    pages are not read). A compressed file (LZ4/ZSTD buffers, Feather's default)
    must decompress a whole record batch to read any row of it: its units are
    its record batches. A compressed *stream* has no index to reach a batch
    without decompressing the ones before it, and is refused.

Columns
    Arrow types map to ``ColumnSpec`` exactly as for Parquet (see
    :mod:`._parquet`: fixed-size and fixed-length lists as N-d arrays,
    dictionaries as their codes with the categories in ``column_metadata``);
    the list lengths are found from the first record batch's offsets and checked
    for every batch at open (two offsets each) and row by row when read. Null
    counts are in the IPC metadata, so nulls are found at open, per record batch.
    ``cast=`` casts decoded columns as for Parquet; the IPC metadata holds no
    value statistics, so a value the cast cannot take fails the read of its rows.

Handles
    A shard holds no open file. A reader holds one memory map (one file
    descriptor) and checks each record batch once, when first used (nulls, list
    offsets evenly spaced); reads then only copy. ``close()`` drops every batch
    it handed out and closes the map, so no mapping outlives the reader (batches
    are copied into the caller's arrays, never returned as views).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import pyarrow as pa

from ..errors import CorruptInputError, SchemaError, SourceNotFoundError
from ._base import ColumnSpec, Shard, ShardReader
from ._fs import FileSystemPath
from ._parquet import (
    _check_list_lengths,
    _count_nulls,
    _has_variable_list,
    _list_levels,
    _Plan,
    _plan_for,
    _ragged_plan,
    _variable_reason,
    cast_plans,
    copy_column,
    plans_to_read,
    unreadable_reason,
)

__all__ = ["ArrowShard", "huggingface_shards"]

_FILE_MAGIC = b"ARROW1"


class ArrowShard(Shard):
    """One Arrow IPC file (file or stream format); read in place through a memory map.
    ``labels`` gives integer columns their category names (Hugging Face ``ClassLabel``),
    shown in ``column_metadata`` like the categories of a dictionary column."""

    def __init__(self, location: FileSystemPath, labels: Mapping[str, list[str]] | None = None) -> None:
        self.location = location
        self.path = location.url
        if not location.is_local:
            raise SchemaError(
                f"{self.path}: Arrow IPC files are read through a memory map, from local paths only; "
                "copy the file locally or rewrite it with `streambatch convert`"
            )
        if not location.exists():
            raise SourceNotFoundError(f"no such file: {self.path}")
        self.columns: dict[str, ColumnSpec] = {}
        self.unreadable: dict[str, str] = {}
        self.column_metadata: dict[str, dict[str, object]] = {}
        self._categories: dict[str, pa.Array] = {}
        self._plans: dict[str, _Plan] = {}
        self._nulls: dict[str, tuple[int, int]] = {}  # column -> (first batch with nulls, nulls in it)
        self._value_counts: dict[str, set[float]] = {}  # list column -> leaf values per row, per batch
        self._variable_nbytes: dict[str, int] = {}  # variable-length column -> largest value bytes per row
        with _Opened(self.path) as opened:
            self.stream = opened.stream
            schema = opened.schema
            counts: list[int] = []
            compressed = False
            first: pa.RecordBatch | None = None
            for i, batch in enumerate(opened.batches()):
                counts.append(batch.num_rows)
                if first is None and batch.num_rows:
                    first = batch
                    compressed = not opened.is_view(batch)
                    if compressed and self.stream:
                        raise SchemaError(
                            f"{self.path}: a compressed Arrow stream has no random access (every record batch "
                            "before a row must be decompressed to reach it); write it uncompressed or in the "
                            "Arrow file format (pyarrow.feather.write_feather(..., compression='uncompressed')), "
                            "or rewrite it with `streambatch convert`"
                        )
                self._scan_batch(i, batch, schema)
            self._plan_columns(schema, first)
        for name, names in (labels or {}).items():
            if name in self.columns and name not in self.column_metadata:
                self.column_metadata[name] = {"categories": list(names), "ordered": False}
        self.num_rows = int(sum(counts))
        self.compressed = compressed
        self._batch_bounds = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self._batch_bounds.flags.writeable = False

    # -- open: what the metadata says ------------------------------------------------
    def _scan_batch(self, index: int, batch: pa.RecordBatch, schema: pa.Schema) -> None:
        """Null counts (IPC metadata, no data read) and list value counts (two offsets
        per list level) of one record batch, remembered for the columns' plans."""
        for j, field in enumerate(schema):
            column = batch.column(j)
            nulls = _metadata_nulls(column)
            if nulls and field.name not in self._nulls:
                self._nulls[field.name] = (index, nulls)
            sizes, _ = _list_levels(field.type)
            if any(s is None for s in sizes) and batch.num_rows:
                per_row = _values_per_row(column)
                self._value_counts.setdefault(field.name, set()).add(per_row)
            if batch.num_rows:
                nbytes = _value_nbytes(column)
                if nbytes is not None:
                    per = -(-nbytes // batch.num_rows)
                    self._variable_nbytes[field.name] = max(per, self._variable_nbytes.get(field.name, 0))

    def _plan_columns(self, schema: pa.Schema, first: pa.RecordBatch | None) -> None:
        seen: set[str] = set()
        self._fields: dict[str, pa.Field] = {}  # what with_cast plans from
        for j, field in enumerate(schema):
            if field.name in seen:
                self.columns.pop(field.name, None)
                self._plans.pop(field.name, None)
                self._fields.pop(field.name, None)
                self.unreadable[field.name] = "the name appears more than once in the schema"
                continue
            seen.add(field.name)
            self._fields[field.name] = field
            plan = self._plan_of(field, None if first is None else first.column(j))
            if isinstance(plan, str):
                self.unreadable[field.name] = unreadable_reason(field, plan)
            else:
                self._plans[field.name] = plan
                self.columns[field.name] = plan.spec
        self._stored = (self._plans, self.columns, self.unreadable, self._variable_nbytes)  # with_cast starts here

    def _plan_of(self, field: pa.Field, first: pa.Array | None) -> _Plan | str:
        lengths = None
        if _has_variable_list(field.type):
            ragged = _ragged_plan(field.type)
            if first is None:
                return ragged or _variable_reason(field.name, "the file has no rows to find the length from")
            counts = self._value_counts.get(field.name, set())
            if len(counts) != 1 or not float(next(iter(counts))).is_integer():
                return ragged or _variable_reason(field.name, "record batches hold different numbers of values per row")
            lengths = _first_row_lengths(first.slice(0, 1), field.type)
            if int(np.prod(lengths)) != int(next(iter(counts))):
                return ragged or _variable_reason(field.name, f"the first row is {lengths} but rows hold other lengths")
            if ragged is not None and _varies(first):
                return ragged  # the first batch alone has rows of different lengths
        plan = _plan_for(field, lengths)
        if isinstance(plan, _Plan) and plan.kind == "dict":
            if first is None:
                return "a dictionary column with no rows: its categories are unknown"
            values = first.dictionary.to_pylist()
            dictionary = pa.array(values, first.dictionary.type)  # a copy: no view of the map outlives open
            self._categories[field.name] = dictionary
            self.column_metadata[field.name] = {
                "categories": values,
                "ordered": bool(field.type.ordered),
            }
        return plan

    def with_cast(self, cast: Mapping[str, np.dtype]) -> ArrowShard:
        """A copy whose cast columns have read plans that cast each decoded slice
        (:meth:`Shard.with_cast`, :mod:`._cast`). The IPC metadata has no value
        statistics: a value the cast cannot take fails the read of its rows,
        naming the file, the column, the row and the value."""
        plans, columns, unreadable, value_nbytes = self._stored
        other = copy.copy(self)
        other._plans, other.columns, other.unreadable = cast_plans(self.path, self._fields, plans, columns,
                                                                   unreadable, cast)
        other.cast = MappingProxyType(dict(cast))
        other._variable_nbytes = dict(value_nbytes)
        for name, plan in other._plans.items():  # a ragged column's values per row, at the delivered dtype
            if plan.kind == "ragged" and plan.cast is not None and name in value_nbytes:
                stored = max(1, plans[name].spec.dtype.itemsize)
                other._variable_nbytes[name] = -(-value_nbytes[name] * plan.spec.dtype.itemsize // stored)
        return other

    # -- the contract -----------------------------------------------------------------
    @property
    def unit_bounds(self) -> np.ndarray | None:
        """``None`` (any row range is cheap) unless the file is compressed: then its
        record batches, each decompressed whole to read any of its rows."""
        return self._batch_bounds if self.compressed else None

    def check_columns(self, names: list[str]) -> None:
        """Unknown or unreadable columns, and nulls the IPC metadata counts (unless
        ``fill_nulls`` fills them), are ``SchemaError`` naming file and column."""
        super().check_columns(names)
        for name in names:
            if name in self._nulls and name not in self.fill_nulls:
                batch, nulls = self._nulls[name]
                raise SchemaError(_null_message(self.path, name, batch, nulls))

    def open_reader(self, columns: list[str]) -> ShardReader:
        columns = list(dict.fromkeys(columns))
        self.check_columns(columns)
        return _ArrowReader(self, plans_to_read(self._plans, columns, self.fill_nulls))

    def variable_row_nbytes(self, name: str) -> int:
        """Bytes of values per row of a variable-length column: the largest mean of any
        record batch, from its offsets (exact for each batch)."""
        return self._variable_nbytes.get(name, 0)

    def batch_of(self, row: int) -> int:
        return int(np.searchsorted(self._batch_bounds, row, side="right")) - 1

    def describe_rows(self, start: int, stop: int) -> str:
        if 0 <= start < self.num_rows:
            first, last = self.batch_of(start), self.batch_of(max(start, stop - 1))
            where = f"record batch {first}" if first == last else f"record batches {first}-{last}"
            return f"{self.path} rows {start}:{stop} ({where})"
        return super().describe_rows(start, stop)


class _ArrowReader(ShardReader):
    """Copies row ranges out of the memory-mapped record batches. Batch objects are
    views of the map; they are fetched once and shared by the pool threads (reading
    a memory map needs no file position)."""

    def __init__(self, shard: ArrowShard, plans: dict[str, _Plan]) -> None:
        self._shard = shard
        self._plans = plans
        self._lock = threading.Lock()
        self._opened: _Opened | None = _Opened(shard.path)
        try:
            schema = self._opened.schema
            self._index = {name: schema.get_field_index(name) for name in plans}
            self._batches: list[pa.RecordBatch | None] = [None] * (len(shard._batch_bounds) - 1)
            if self._opened.stream:  # no index to reach batch i: walk the messages once (views, no data read)
                streamed = list(self._opened.batches())
                if len(streamed) != len(self._batches):
                    raise CorruptInputError(f"{shard.path}: the file changed since it was opened (record batches)")
                for i, batch in enumerate(streamed):
                    for name in plans:
                        self._check(name, batch.column(self._index[name]), i, 0)
                    self._batches[i] = batch
        except BaseException:
            self._opened.close()
            raise
        if not self._opened.stream and self._opened.num_batches != len(self._batches):
            self.close()
            raise CorruptInputError(f"{shard.path}: the file changed since it was opened (record batch count)")

    def _batch(self, i: int) -> pa.RecordBatch:
        """Record batch ``i``, its opened columns checked (nulls, list lengths) the first
        time it is used, so that each read only copies."""
        with self._lock:
            if self._opened is None:
                raise ValueError(f"reader of {self._shard.path} is closed")
            batch = self._batches[i]
            if batch is not None:
                return batch
            batch = self._opened.batch(i)
            for name in self._plans:
                self._check(name, batch.column(self._index[name]), i, 0)
            if not self._shard.compressed:  # a view of the map: keep it; a decompressed copy: drop it
                self._batches[i] = batch
            return batch

    def read_into(self, start: int, stop: int, out: Mapping[str, np.ndarray]) -> None:
        shard = self._shard
        if not 0 <= start <= stop <= shard.num_rows:
            raise ValueError(f"{shard.path}: rows {start}:{stop} are outside 0:{shard.num_rows}")
        for name, target in out.items():
            if name not in self._plans:
                raise SchemaError(f"{shard.path}: column {name!r} was not opened by this reader")
            if len(target) != stop - start:
                raise ValueError(f"{shard.path}: out[{name!r}] has {len(target)} rows, expected {stop - start}")
        bounds = shard._batch_bounds
        row = start
        while row < stop:
            i = shard.batch_of(row)
            base = int(bounds[i])
            end = min(stop, int(bounds[i + 1]))
            batch = self._batch(i)
            if batch.num_rows != int(bounds[i + 1]) - base:
                raise CorruptInputError(
                    f"{shard.path} record batch {i}: {batch.num_rows} rows, expected {int(bounds[i + 1]) - base} "
                    "(the file changed since it was opened)"
                )
            for name, target in out.items():
                column = batch.column(self._index[name]).slice(row - base, end - row)
                copy_column(column, self._plans[name], target[row - start : end - start],
                            shard._categories.get(name), shard.path, name, row)
            row = end

    def _check(self, name: str, column: pa.Array, batch: int, offset: int) -> None:
        """Nulls and list lengths of a record batch's column, once per batch: one
        vectorised pass over its offsets (null counts come from the IPC metadata)."""
        plan, path = self._plans[name], self._shard.path
        chunked = pa.chunked_array([column])
        nulls = _count_nulls(chunked, leaves=plan.fill is None)
        if nulls:
            raise SchemaError(_null_message(path, name, batch, nulls))
        if any(plan.checked_lengths):
            _check_list_lengths(chunked, plan, lambda row, n, k: SchemaError(
                f"{path} record batch {batch} row {offset + row}: column {name!r} holds a list of {n} values "
                f"where every row must hold {k} (the first record batch's rows all do, so it is read as fixed-size "
                "arrays): rewrite the file with the varying rows in its first record batch, or exclude the column"
            ))

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, None
            self._batches = []
        if opened is not None:
            opened.close()


class _Opened:
    """A memory-mapped IPC file and its reader; a context manager."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._map = pa.memory_map(path, "r")
        except FileNotFoundError as e:
            raise SourceNotFoundError(f"no such file: {path}") from e
        except (pa.ArrowException, OSError) as e:
            raise CorruptInputError(f"{path}: cannot map the file ({e})") from e
        try:
            self.size = self._map.size()
            head = bytes(self._map.read_at(len(_FILE_MAGIC), 0)) if self.size >= len(_FILE_MAGIC) else b""
            self._map.seek(0)
            self._whole = self._map.read_buffer(self.size) if self.size else None  # a view: no copy
            self._map.seek(0)
            self.stream = head != _FILE_MAGIC
            self._reader = pa.ipc.open_stream(self._map) if self.stream else pa.ipc.open_file(self._map)
            self.schema = self._reader.schema
        except (pa.ArrowException, OSError, ValueError) as e:
            self.close()
            raise CorruptInputError(f"{path}: not a valid Arrow IPC file or stream ({e})") from e
        except BaseException:
            self.close()
            raise

    @property
    def num_batches(self) -> int:
        return self._reader.num_record_batches

    def batches(self):  # type: ignore[no-untyped-def]
        """Every record batch in order (the stream is read once, message by message)."""
        try:
            if self.stream:
                yield from self._reader
            else:
                for i in range(self._reader.num_record_batches):
                    yield self._reader.get_batch(i)
        except (pa.ArrowException, OSError) as e:
            raise CorruptInputError(f"{self.path}: unreadable record batch ({e})") from e

    def batch(self, i: int) -> pa.RecordBatch:
        try:
            return self._reader.get_batch(i)
        except (pa.ArrowException, OSError) as e:
            raise CorruptInputError(f"{self.path} record batch {i}: {e}") from e

    def is_view(self, batch: pa.RecordBatch) -> bool:
        """Whether the batch's buffers lie inside the memory map (uncompressed)."""
        if self._whole is None:
            return True
        lo, hi = self._whole.address, self._whole.address + self._whole.size
        for column in batch.columns:
            for buf in _all_buffers(column):
                if buf is not None and buf.size and not lo <= buf.address < hi:
                    return False
        return True

    def close(self) -> None:
        self._reader = None
        self._whole = None
        self._map.close()

    def __enter__(self) -> _Opened:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _all_buffers(arr: pa.Array) -> list[pa.Buffer | None]:
    found = list(arr.buffers())
    if pa.types.is_dictionary(arr.type):
        found += arr.dictionary.buffers()
    return found


def _metadata_nulls(arr: pa.Array) -> int:
    """Nulls of a column and of its list children, from the counts the IPC metadata
    stores for whole arrays (``.values``, not sliced children, so nothing is scanned)."""
    total = arr.null_count
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        arr = arr.values
        total += arr.null_count
    return total


def _values_per_row(arr: pa.Array) -> float:
    """Leaf values per row of a list column, from the first and last offsets of
    each variable level (a constant length gives an integer)."""
    rows = len(arr)
    per_row = 1.0
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        if pa.types.is_fixed_size_list(arr.type):
            per_row *= arr.type.list_size
            arr = arr.flatten()
            continue
        offsets = arr.offsets
        n = len(arr)
        values = offsets[n].as_py() - offsets[0].as_py()
        per_row *= values / n if n else 0
        arr = arr.flatten()
    return per_row if rows else 0.0


def _value_nbytes(arr: pa.Array) -> int | None:
    """Bytes of the values of a string/binary or single-level list column (from its
    first and last offsets), ``None`` for other types."""
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t):
        n = len(arr)
        offsets = np.frombuffer(arr.buffers()[1], np.int64 if t in (pa.large_string(), pa.large_binary()) else np.int32,
                                count=arr.offset + n + 1)[arr.offset :]
        return int(offsets[-1] - offsets[0])
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_primitive(t.value_type):
        offsets = arr.offsets
        width = max(1, t.value_type.bit_width // 8)
        return int(offsets[len(arr)].as_py() - offsets[0].as_py()) * width
    if str(t) in ("string_view", "binary_view"):
        return int(arr.nbytes)
    return None


def _varies(arr: pa.Array) -> bool:
    """Whether the rows of a single-level list array differ in length (reads its offsets)."""
    lengths = np.diff(arr.offsets.to_numpy())
    return bool(lengths.size) and bool((lengths != lengths[0]).any())


def _first_row_lengths(row: pa.Array, t: pa.DataType) -> list[int]:
    """The length of every list level in the one-row array ``row``."""
    lengths = []
    arr = row
    for _ in _list_levels(t)[0]:
        child = arr.flatten()
        lengths.append(len(child) // max(len(arr), 1))
        arr = child
    return lengths


def _null_message(path: str, name: str, batch: int, nulls: int) -> str:
    return (
        f"{path}: column {name!r} record batch {batch} has {nulls} nulls; streambatch needs every "
        f"value present: pass fill_nulls={{{name!r}: value}} to read them as a value, or drop them"
    )


# --------------------------------------------------------------------------- Hugging Face


def huggingface_shards(location: FileSystemPath) -> list[Shard]:
    """The Arrow files of a Hugging Face ``Dataset.save_to_disk`` directory, in the
    order its ``state.json`` lists them (``_data_files``)."""
    root = location.path.rstrip("/")
    state_location = location.child(f"{root}/state.json")
    if not state_location.exists() and location.child(f"{root}/dataset_dict.json").exists():
        raise SchemaError(
            f"{location.url} is a Hugging Face DatasetDict (dataset_dict.json): open one split, "
            f"e.g. {location.url.rstrip('/')}/train"
        )
    try:
        with state_location.fs.open(state_location.path, "rb") as f:
            state = json.loads(f.read().decode("utf-8"))
        files = [entry["filename"] for entry in state["_data_files"]]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CorruptInputError(
            f"{state_location.url}: not a Hugging Face save_to_disk state (expected _data_files: "
            f"[{{'filename': ...}}]): {e!r}"
        ) from e
    if not files:
        raise SourceNotFoundError(f"{state_location.url} lists no data files")
    labels = _class_labels(location.child(f"{root}/dataset_info.json"))
    shards: list[Shard] = []
    for name in files:
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise CorruptInputError(f"{state_location.url}: data file name {name!r} is not a file in the directory")
        shards.append(ArrowShard(location.child(f"{root}/{name}"), labels))
    return shards


def _class_labels(info: FileSystemPath) -> dict[str, list[str]]:
    """Column -> names of the top-level ``ClassLabel`` features in ``dataset_info.json``
    (``{}`` when the file is absent or says nothing about them)."""
    if not info.exists():
        return {}
    try:
        with info.fs.open(info.path, "rb") as f:
            features = json.loads(f.read().decode("utf-8")).get("features") or {}
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise CorruptInputError(f"{info.url}: not valid JSON ({e})") from e
    if not isinstance(features, dict):
        return {}
    return {
        str(name): [str(n) for n in feature["names"]]
        for name, feature in features.items()
        if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list)
    }
