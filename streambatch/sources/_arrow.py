"""Arrow IPC files -- the file format (Feather v2, ``.arrow``) and the stream
format -- and Hugging Face ``Dataset.save_to_disk`` directories, which hold
stream-format files ``data-0000i-of-0000n.arrow`` listed in ``state.json``.

Positional reads, no memory map
    A shard indexes its file once, at open, from the metadata alone
    (:mod:`._arrow_index`): the footer's blocks for the file format, one walk
    over the message headers for a stream (the bodies are skipped), then each
    record batch's header: where every column's buffers lie. A read of rows
    ``[start, stop)`` then reads just the bytes of those rows of the requested
    columns with positional reads (``os.pread``; ranged requests for a remote
    file), assembles them, copies them into the caller's arrays and drops them
    (:mod:`._arrow_ranges`); a null-free fixed-width column is read straight
    into the caller's array, as ``.npy`` is. Nothing stays mapped or cached, so
    only what the loader's budget holds is resident (a memory map's touched pages
    count in RSS until it is closed: 727 MiB at a 256 MiB budget before).

    An uncompressed file is random access: ``unit_bounds`` is ``None``, as for
    ``.npy``. A compressed one (LZ4/ZSTD buffers, Feather's default; a stream
    too, since the walk indexes it) must decompress a whole buffer to read any
    row of it: its units are its record batches, and a read decompresses only
    the buffers of the columns it reads.

Columns
    Arrow types map to ``ColumnSpec`` exactly as for Parquet (see
    :mod:`._parquet`: fixed-size and fixed-length lists as N-d arrays,
    dictionaries as their codes with the categories in ``column_metadata``,
    strings as ``StringDType``, ragged lists as ``Ragged``). The list lengths are
    found from the first record batch's offsets and checked for every batch at
    open (two offsets per list level) and row by row when read. Null counts are
    in the IPC metadata, so nulls are found at open, per record batch. The
    categories of a dictionary column are the dictionary in force for the first
    non-empty record batch; a stream that replaces a dictionary later has those
    batches re-coded to it (or refused if they hold other values).
    ``cast=`` casts decoded columns as for Parquet; the IPC metadata holds no
    value statistics, so a value the cast cannot take fails the read of its rows.

Handles
    A shard holds no open file. A reader holds one file descriptor (none for a
    remote file), shared by the pool threads (``pread`` has no file position);
    ``close()`` closes it.
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
from ._arrow_copy import _check_list_lengths, _count_nulls, copy_column
from ._arrow_index import BatchLayout, field_layout, index_file
from ._arrow_plans import (
    _has_variable_list,
    _is_text,
    _list_levels,
    _Plan,
    _plan_for,
    _ragged_plan,
    _variable_reason,
    cast_plans,
    plans_to_read,
    unreadable_reason,
)
from ._arrow_ranges import BatchSlicer, ByteSource, Cursor, read_array, read_fixed_into, read_variable
from ._base import ColumnSpec, Shard, ShardReader
from ._fs import FileSystemPath

__all__ = ["ArrowShard", "huggingface_shards"]

#: Dictionaries of replaced (stream) versions a reader keeps decoded, per reader.
_DICTIONARY_CACHE = 8


class ArrowShard(Shard):
    """One Arrow IPC file (file or stream format), local or remote, indexed at open.
    ``labels`` gives integer columns their category names (Hugging Face ``ClassLabel``),
    shown in ``column_metadata`` like the categories of a dictionary column."""

    def __init__(self, location: FileSystemPath, labels: Mapping[str, list[str]] | None = None) -> None:
        self.location = location
        self.path = location.url
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
        source = ByteSource(location)
        try:
            self._index = index_file(source.read, source.size(), self.path)
            schema = self._index.schema
            self._layouts = [field_layout(f.type) for f in schema]
            self._starts = np.cumsum([(0, 0, 0), *self._layouts], axis=0)[:-1].tolist()  # per field
            self._field_index = {f.name: j for j, f in enumerate(schema)}
            first = None
            for i, batch in enumerate(self._index.batches):
                self._check_header(i, batch)
                s = BatchSlicer(source, batch, self._where(i))
                if first is None and batch.num_rows:
                    first = i
                self._scan_batch(i, s, schema)
            self._plan_columns(source, schema, first)
            self._first_batch = first  # whose dictionaries are the categories
        finally:
            source.close()
        for name, names in (labels or {}).items():
            if name in self.columns and name not in self.column_metadata:
                self.column_metadata[name] = {"categories": list(names), "ordered": False}
        counts = [b.num_rows for b in self._index.batches]
        self.stream = self._index.stream
        self.num_rows = int(sum(counts))
        self.compressed = any(b.codec is not None for b in self._index.batches)
        self._batch_bounds = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self._batch_bounds.flags.writeable = False

    # -- open: what the metadata says ------------------------------------------------
    def _where(self, batch: int) -> str:
        return f"{self.path} record batch {batch}"

    def _check_header(self, i: int, batch: BatchLayout) -> None:
        nodes, buffers, views = (sum(x) for x in zip((0, 0, 0), *self._layouts))
        if (len(batch.nodes), len(batch.buffers) - sum(batch.variadic), len(batch.variadic)) != (nodes, buffers, views):
            raise CorruptInputError(
                f"{self._where(i)}: its header lists {len(batch.nodes)} arrays and {len(batch.buffers)} buffers, "
                f"the schema needs {nodes} and {buffers + sum(batch.variadic)}"
            )

    def cursor(self, batch: int, field: int) -> Cursor:
        """Where field ``field``'s node and buffers start in record batch ``batch``'s header."""
        node, buffer, view = self._starts[field]
        return Cursor(node, buffer + sum(self._index.batches[batch].variadic[:view]), view)

    def _scan_batch(self, index: int, s: BatchSlicer, schema: pa.Schema) -> None:
        """Null counts (IPC metadata, no data read) and, per variable-length column,
        list value counts and value bytes (two offsets per list level) of one record
        batch, remembered for the columns' plans and the budget."""
        rows = s.layout.num_rows
        for j, field in enumerate(schema):
            at = self.cursor(index, j)
            nulls = s.nulls(at.node, self._layouts[j][0])
            if nulls and field.name not in self._nulls:
                self._nulls[field.name] = (index, nulls)
            if not rows:
                continue
            t = _storage(field.type)
            if _has_variable_list(t):
                counts = _level_counts(s, t, at, 0, rows)
                self._value_counts.setdefault(field.name, set()).add(counts[-1] / rows)
                if len(counts) == 1 and pa.types.is_primitive(t.value_type):
                    self._add_nbytes(field.name, counts[0] * max(1, t.value_type.bit_width // 8), rows)
            elif str(t) in ("string_view", "binary_view"):
                k = at.buffer
                total = sum(s.buffer_size(b) for b in range(k + 1, k + 2 + s.layout.variadic[at.view]))
                self._add_nbytes(field.name, total, rows)
            elif _is_text(t):
                wide = pa.types.is_large_string(t) or pa.types.is_large_binary(t)
                self._add_nbytes(field.name, _span(s, at.buffer + 1, 0, rows, wide), rows)

    def _add_nbytes(self, name: str, nbytes: int, rows: int) -> None:
        per = -(-int(nbytes) // rows)
        self._variable_nbytes[name] = max(per, self._variable_nbytes.get(name, 0))

    def _plan_columns(self, source: ByteSource, schema: pa.Schema, first: int | None) -> None:
        seen: set[str] = set()
        self._fields: dict[str, pa.Field] = {}  # what with_cast plans from
        s = None if first is None else BatchSlicer(source, self._index.batches[first], self._where(first))
        for j, field in enumerate(schema):
            if field.name in seen:
                self.columns.pop(field.name, None)
                self._plans.pop(field.name, None)
                self._fields.pop(field.name, None)
                self.unreadable[field.name] = "the name appears more than once in the schema"
                continue
            seen.add(field.name)
            self._fields[field.name] = field
            plan = self._plan_of(field, j, source, s, first)
            if isinstance(plan, str):
                self.unreadable[field.name] = unreadable_reason(field, plan)
            else:
                self._plans[field.name] = plan
                self.columns[field.name] = plan.spec
        self._stored = (self._plans, self.columns, self.unreadable, self._variable_nbytes)  # with_cast starts here

    def _plan_of(
        self, field: pa.Field, j: int, source: ByteSource, s: BatchSlicer | None, first: int | None
    ) -> _Plan | str:
        lengths = None
        t = _storage(field.type)
        if _has_variable_list(t):
            ragged = _ragged_plan(t)
            if s is None or first is None:
                return ragged or _variable_reason(field.name, "the file has no rows to find the length from")
            counts = self._value_counts.get(field.name, set())
            if len(counts) != 1 or not float(next(iter(counts))).is_integer():
                return ragged or _variable_reason(field.name, "record batches hold different numbers of values per row")
            lengths = _first_row_lengths(s, t, self.cursor(first, j))
            if int(np.prod(lengths)) != int(next(iter(counts))):
                return ragged or _variable_reason(field.name, f"the first row is {lengths} but rows hold other lengths")
            if ragged is not None and _varies(s, t, self.cursor(first, j)):
                return ragged  # the first batch alone has rows of different lengths
        plan = _plan_for(field, lengths)
        if isinstance(plan, _Plan) and plan.kind == "dict":
            if first is None:
                return "a dictionary column with no rows: its categories are unknown"
            dictionary = self.dictionary(source, field.name, first)
            if isinstance(dictionary, str):
                return dictionary
            self._categories[field.name] = dictionary  # decoded from bytes read here: no view of the file
            self.column_metadata[field.name] = {
                "categories": dictionary.to_pylist(),
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
        other._plans, other.columns, other.unreadable = cast_plans(
            self.path, self._fields, plans, columns, unreadable, cast
        )
        other.cast = MappingProxyType(dict(cast))
        other._variable_nbytes = dict(value_nbytes)
        for name, plan in other._plans.items():  # a ragged column's values per row, at the delivered dtype
            if plan.kind == "ragged" and plan.cast is not None and name in value_nbytes:
                stored = max(1, plans[name].spec.dtype.itemsize)
                other._variable_nbytes[name] = -(-value_nbytes[name] * plan.spec.dtype.itemsize // stored)
        return other

    def dictionary_key(self, name: str, batch: int) -> tuple[int, ...]:
        """Which dictionary (its batches' body offsets) column ``name`` uses in ``batch``."""
        versions = self._index.dictionaries[batch].get(self._index.dictionary_ids.get(name, -1), ())
        return tuple(layout.body_offset for layout in versions)

    def dictionary(self, source: ByteSource, name: str, batch: int) -> pa.Array | str:
        """The dictionary column ``name`` uses in record batch ``batch``, decoded from its
        dictionary batches (a replacement and its deltas); a reason if it cannot be."""
        key = self._index.dictionary_ids.get(name)
        versions = self._index.dictionaries[batch].get(key, ()) if key is not None else ()
        if not versions:
            raise CorruptInputError(f"{self._where(batch)}: no dictionary batch for column {name!r} (id {key})")
        value_type = self._index.schema.field(name).type.value_type
        parts = []
        for layout in versions:
            what = f"{self.path} dictionary {key} (byte {layout.body_offset})"
            try:
                parts.append(
                    read_array(BatchSlicer(source, layout, what), value_type, Cursor(0, 0, 0), 0, layout.num_rows)
                )
            except TypeError:
                return f"dictionary values of type {value_type} are not read"
            except (pa.ArrowException, ValueError) as e:
                raise CorruptInputError(f"{what}: cannot read the dictionary of column {name!r} ({e})") from e
        return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)

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
    """Reads row ranges of the record batches with positional reads into the
    caller's arrays; safe to call from many threads at once (each read has its own
    ``BatchSlicer``; the descriptor has no shared position)."""

    def __init__(self, shard: ArrowShard, plans: dict[str, _Plan]) -> None:
        self._shard = shard
        self._plans = plans
        self._lock = threading.Lock()
        self._dictionaries: dict[tuple[str, tuple[int, ...]], pa.Array] = {}
        self._fields = {name: shard._field_index[name] for name in plans}
        self._types = {name: shard._index.schema.field(name).type for name in plans}
        self._direct = {name: _reads_directly(plan) for name, plan in plans.items()}
        self._source: ByteSource | None = ByteSource(shard.location, getattr(shard, "retry", None))
        if shard.location.is_local and self._source.size() != shard._index.size:
            self.close()
            raise CorruptInputError(f"{shard.path}: the file changed since it was opened (its size)")

    def read_into(self, start: int, stop: int, out: Mapping[str, np.ndarray]) -> None:
        shard = self._shard
        if not 0 <= start <= stop <= shard.num_rows:
            raise ValueError(f"{shard.path}: rows {start}:{stop} are outside 0:{shard.num_rows}")
        for name, target in out.items():
            if name not in self._plans:
                raise SchemaError(f"{shard.path}: column {name!r} was not opened by this reader")
            if len(target) != stop - start:
                raise ValueError(f"{shard.path}: out[{name!r}] has {len(target)} rows, expected {stop - start}")
        source = self._source
        if source is None:
            raise ValueError(f"reader of {shard.path} is closed")
        bounds = shard._batch_bounds
        row = start
        while row < stop:
            i = shard.batch_of(row)
            base = int(bounds[i])
            end = min(stop, int(bounds[i + 1]))
            s = BatchSlicer(source, shard._index.batches[i], shard._where(i))
            for name, target in out.items():
                self._read_column(s, i, name, row - base, end - base, target[row - start : end - start], row)
            row = end

    def _read_column(self, s: BatchSlicer, i: int, name: str, a: int, b: int, target: np.ndarray, row: int) -> None:
        """Rows ``[a, b)`` of record batch ``i``'s column ``name`` into ``target``."""
        shard, plan, t = self._shard, self._plans[name], self._types[name]
        at = shard.cursor(i, self._fields[name])
        if self._direct[name] == "fixed" and target.flags.c_contiguous:
            if read_fixed_into(s, t, at, a, b, target.reshape(-1).view(np.uint8).data):
                return
        elif self._direct[name] == "variable":
            found = read_variable(s, t, at, a, b)
            if found is not None:
                _write_variable(target, *found, shard.path, name, row)
                return
        try:
            nulls = s.nulls(at.node, shard._layouts[self._fields[name]][0])
            column = read_array(s, t, Cursor(at.node, at.buffer, at.view), a, b)
        except (pa.ArrowException, ValueError) as e:
            raise CorruptInputError(f"{s.what}: cannot read column {name!r} rows {a}:{b} ({e})") from e
        if plan.kind == "dict":
            column = self._with_dictionary(i, name, column)
        if nulls or any(plan.checked_lengths):
            self._check(name, column, i, a)
        categories = shard._categories.get(name) if isinstance(column, pa.DictionaryArray) else None
        copy_column(column, plan, target, categories, shard.path, name, row)

    def _with_dictionary(self, i: int, name: str, indices: pa.Array) -> pa.Array:
        """The indices alone when batch ``i`` uses the categories' dictionary; else a
        dictionary array of its own dictionary, for ``copy_column`` to re-code."""
        shard = self._shard
        key = shard.dictionary_key(name, i)
        if shard._first_batch is None or key == shard.dictionary_key(name, shard._first_batch):
            return indices
        with self._lock:
            dictionary = self._dictionaries.get((name, key))
        if dictionary is None:
            source = self._source
            if source is None:
                raise ValueError(f"reader of {shard.path} is closed")
            found = shard.dictionary(source, name, i)
            if isinstance(found, str):
                raise SchemaError(f"{shard._where(i)}: column {name!r}: {found}")
            dictionary = found
            with self._lock:
                if len(self._dictionaries) >= _DICTIONARY_CACHE:
                    self._dictionaries.pop(next(iter(self._dictionaries)))
                self._dictionaries[(name, key)] = dictionary
        return pa.DictionaryArray.from_arrays(indices, dictionary)

    def _check(self, name: str, column: pa.Array, batch: int, offset: int) -> None:
        """Nulls and list lengths of rows of a record batch's column: one vectorised
        pass over their offsets (null counts come from the IPC metadata)."""
        plan, path = self._plans[name], self._shard.path
        chunked = pa.chunked_array([column])
        nulls = _count_nulls(chunked, leaves=plan.fill is None)
        if nulls:
            raise SchemaError(_null_message(path, name, batch, nulls))
        if any(plan.checked_lengths):
            _check_list_lengths(
                chunked,
                plan,
                lambda row, n, k: SchemaError(
                    f"{path} record batch {batch} row {offset + row}: column {name!r} holds a list of {n} values "
                    f"where every row must hold {k} (the first record batch's rows all do, so it is read as fixed-size "
                    "arrays): rewrite the file with the varying rows in its first record batch, or exclude the column"
                ),
            )

    def close(self) -> None:
        with self._lock:
            source, self._source = self._source, None
            self._dictionaries = {}
        if source is not None:
            source.close()


def _storage(t: pa.DataType) -> pa.DataType:
    return t.storage_type if isinstance(t, pa.BaseExtensionType) else t


def _reads_directly(plan: _Plan) -> str | None:
    """How a column is read where its record batch has no nulls, without an Arrow array
    built: ``"fixed"``, its bytes straight into the caller's array (fixed-width, not
    booleans, no list whose length the type does not fix); ``"variable"``, its offsets
    and values into a variable-length target (strings, binary, lists of numbers). A
    cast column is decoded and cast (``copy_column``): its bytes are not the delivered ones."""
    if plan.cast is not None or plan.leaf_is_bool or plan.storage != plan.spec.dtype:
        return None
    if plan.kind in ("primitive", "fsb", "fsl") and not any(plan.checked_lengths):
        return "fixed"
    return "variable" if plan.kind in ("text", "ragged") else None


def _write_variable(target, offsets: np.ndarray, values: np.ndarray, path: str, name: str, row: int) -> None:  # type: ignore[no-untyped-def]
    """``target.write`` (a ``VariableTarget``), a row too large for its share of the
    budget named as ``copy_column`` names it."""
    from ..columns import RowTooLarge
    from ..errors import BudgetError

    try:
        target.write(offsets, values)
    except RowTooLarge as e:
        raise BudgetError(
            f"{path}: column {name!r} row {row + e.row} holds {e.nbytes:,} bytes of values, more than the "
            f"{e.limit:,} bytes its share of memory_limit holds; raise memory_limit or exclude the column"
        ) from None


def _span(s: BatchSlicer, k: int, a: int, b: int, wide: bool) -> int:
    """Values between offsets ``a`` and ``b`` of offsets buffer ``k`` (two entries read)."""
    return int(s.offsets(k, b, b, wide)[0]) - int(s.offsets(k, a, a, wide)[0])


def _level_counts(s: BatchSlicer, t: pa.DataType, at: Cursor, a: int, b: int) -> list[int]:
    """Values at each list level under rows ``[a, b)`` of a list column (its first and
    last offsets per variable level; fixed-size levels multiply)."""
    counts = []
    buffer = at.buffer
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        if pa.types.is_fixed_size_list(t):
            a, b = a * t.list_size, b * t.list_size
            buffer += 1
        else:
            wide = pa.types.is_large_list(t)
            a, b = int(s.offsets(buffer + 1, a, a, wide)[0]), int(s.offsets(buffer + 1, b, b, wide)[0])
            buffer += 2
        counts.append(b - a)
        t = _storage(t.value_type)
    return counts


def _first_row_lengths(s: BatchSlicer, t: pa.DataType, at: Cursor) -> list[int]:
    """The length of every list level in row 0."""
    lengths, before = [], 1
    for count in _level_counts(s, t, at, 0, 1):
        lengths.append(count // max(before, 1))
        before = count
    return lengths


def _varies(s: BatchSlicer, t: pa.DataType, at: Cursor) -> bool:
    """Whether the rows of a single-level list column differ in length in this batch
    (reads its offsets)."""
    if len(_list_levels(t)[0]) != 1 or pa.types.is_fixed_size_list(t):
        return False
    offsets = s.offsets(at.buffer + 1, 0, s.layout.num_rows, pa.types.is_large_list(t))
    lengths = np.diff(offsets)
    return bool(lengths.size) and bool((lengths != lengths[0]).any())


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
