"""What ``convert`` reads: a concatenation of *parts*, each either a dataset that
``open_dataset`` reads or a raw staging directory (one ``{column}.bin`` per
column, rows back to back) such as a streamed CSV file becomes.

Parts are small picklable descriptions; :class:`InputReader` opens them in the
process that reads (a worker reopens metadata, never receives open handles)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CorruptInputError, SchemaError, UnknownColumnError
from ..sources import ColumnSpec, Dataset, open_dataset
from ..sources._fs import resolve
from ._values import RowsTarget, Value, held_spec

if TYPE_CHECKING:  # imported where used: importing streambatch.convert stays light
    import pyarrow as pa
    import pyarrow.csv as pacsv

__all__ = [
    "DatasetPart",
    "InputReader",
    "RawPart",
    "columns_excluding",
    "fingerprint_sources",
    "is_csv_source",
    "open_parts",
    "stage_csv",
]

_CSV = (".csv", ".csv.gz", ".tsv")
_CSV_BLOCK_BYTES = 16 << 20


@dataclass(frozen=True)
class DatasetPart:
    """A source ``open_dataset`` reads (a path or URL), projected on ``columns``,
    with the columns in ``cast`` (``(column, dtype)`` pairs) read as those dtypes."""

    source: str
    columns: tuple[str, ...] | None
    num_rows: int
    storage_options: tuple[tuple[str, Any], ...] = ()
    cast: tuple[tuple[str, str], ...] = ()

    def open(self, columns: Sequence[str] | None) -> Dataset:
        """The dataset of this part (metadata only), in the process that asks."""
        return open_dataset(
            self.source, columns, cast=dict(self.cast) or None, storage_options=dict(self.storage_options) or None
        )


@dataclass(frozen=True)
class RawPart:
    """A staging directory: ``{directory}/{name}.bin`` holds ``num_rows`` C-order rows."""

    directory: str
    specs: tuple[tuple[str, str, tuple[int, ...]], ...]
    num_rows: int


Part = DatasetPart | RawPart


class InputReader:
    """Reads global row ranges of the concatenated ``parts``; a context manager
    that closes every handle it opened. A variable-length column's rows arrive as a
    ``Ragged`` (:mod:`._values`); one whose values exceed ``max_row_nbytes`` is a
    ``BudgetError`` naming the file, column and row (0: no limit)."""

    def __init__(self, parts: Sequence[Part], columns: Mapping[str, ColumnSpec], max_row_nbytes: int = 0) -> None:
        self.parts = list(parts)
        self.columns = dict(columns)
        self.max_row_nbytes = int(max_row_nbytes)
        self.offsets = np.concatenate([[0], np.cumsum([p.num_rows for p in self.parts], dtype=np.int64)])
        self._opened: dict[int, Any] = {}  # part index -> (dataset, {shard index: reader})

    def __enter__(self) -> InputReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        opened, self._opened = self._opened, {}
        for _, readers in opened.values():
            for reader in readers.values():
                reader.close()

    def read(self, start: int, stop: int) -> dict[str, Value]:
        """Rows ``[start, stop)`` of every column, as fresh arrays (``Ragged`` for
        variable-length columns)."""
        n = stop - start
        out: dict[str, Any] = {
            name: RowsTarget.open(n, held_spec(s).dtype, self.max_row_nbytes)
            if s.variable
            else np.empty((n, *s.shape), dtype=s.dtype)
            for name, s in self.columns.items()
        }
        row = start
        while row < stop:
            i = int(np.searchsorted(self.offsets, row, side="right")) - 1
            end = min(stop, int(self.offsets[i + 1]))
            local = row - int(self.offsets[i])
            target = {name: a[row - start : end - start] for name, a in out.items()}
            self._read_part(i, local, local + end - row, target)
            row = end
        return {name: a.ragged() if isinstance(a, RowsTarget) else a for name, a in out.items()}

    def _read_part(self, i: int, start: int, stop: int, out: dict[str, Any]) -> None:
        part = self.parts[i]
        if isinstance(part, RawPart):
            for name, target in out.items():
                spec = self.columns[name]
                path = os.path.join(part.directory, f"{name}.bin")
                data = np.fromfile(
                    path,
                    dtype=spec.dtype,
                    count=(stop - start) * int(np.prod(spec.shape, dtype=np.int64)),
                    offset=start * spec.row_nbytes,
                )
                if data.size * spec.dtype.itemsize != (stop - start) * spec.row_nbytes:
                    raise CorruptInputError(f"{path}: staging file is shorter than expected (rows {start}:{stop})")
                target[...] = data.reshape(target.shape)
            return
        if i not in self._opened:
            self._opened[i] = (part.open(list(self.columns)), {})
        ds, readers = self._opened[i]
        row = start
        while row < stop:
            s = int(np.searchsorted(ds.shard_offsets, row, side="right")) - 1
            end = min(stop, int(ds.shard_offsets[s + 1]))
            if s not in readers:
                readers[s] = ds.shards[s].open_reader(list(self.columns))
            base = int(ds.shard_offsets[s])
            readers[s].read_into(row - base, end - base, {n: a[row - start : end - start] for n, a in out.items()})
            row = end


def columns_excluding(
    sources: Sequence[str],
    exclude: Sequence[str],
    columns: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    cast: Mapping[str, Any] | None = None,
) -> list[str]:
    """The columns of the first source (or ``columns``) without ``exclude``: what
    ``convert --exclude`` keeps, so that a column convert cannot read or the output
    cannot store (a null-holding column, strings into npy) can be left out by name;
    ``cast`` as ``convert --cast`` reads them.
    An unknown name is an ``UnknownColumnError``."""
    first = sources[0]
    if is_csv_source(first):
        reader = _open_csv(first, None)
        try:
            names = list(reader.schema.names)
        finally:
            reader.close()
        unknown = [n for n in exclude if n not in names]
        if unknown:
            raise UnknownColumnError(f"{first}: --exclude names no column {unknown[0]!r}; columns: {names}")
        return [n for n in (columns or names) if n not in exclude]
    ds = open_dataset(
        first, columns, exclude=list(exclude), cast=cast, storage_options=dict(storage_options or {}) or None
    )
    return list(ds.columns)


def open_parts(
    sources: Sequence[str],
    columns: tuple[str, ...] | None,
    stage: str,
    staged: bool,
    storage_options: Mapping[str, Any],
    cast: Mapping[str, str] | None = None,
) -> tuple[list[Part], dict[str, ColumnSpec], dict[str, int]]:
    """The part each source becomes (a CSV file is staged under ``stage`` unless
    ``staged`` already), the columns they share (``SchemaError`` if not), with
    ``cast`` applied (Parquet and Arrow inputs; a CSV input with a cast is refused),
    and the bytes a row of each column takes in memory: for a variable-length
    column the largest estimate of any input (``Dataset.column_row_nbytes``, the
    largest per-row mean of any read unit, from footers and headers)."""
    parts: list[Part] = []
    common: dict[str, ColumnSpec] | None = None
    row_nbytes: dict[str, int] = {}
    so = tuple(sorted(storage_options.items()))
    casts = tuple((cast or {}).items())
    for i, source in enumerate(sources):
        if is_csv_source(source) and casts:
            raise SchemaError(
                f"{source}: --cast applies to Parquet and Arrow IPC inputs, cast on the decoded Arrow column; "
                "CSV columns are parsed as int64, float64 or bool: convert without --cast, then convert the output "
                "again with it"
            )
        if is_csv_source(source):
            specs = csv_columns(source, columns)
            directory = os.path.join(stage, f"csv-{i:04d}")
            if staged:
                rows = (
                    os.path.getsize(os.path.join(directory, f"{next(iter(specs))}.bin"))
                    // next(iter(specs.values())).row_nbytes
                )
                part: Part = RawPart(directory, tuple((n, s.dtype.str, s.shape) for n, s in specs.items()), rows)
            else:
                part = stage_csv(source, directory, columns, specs)
        else:
            part = DatasetPart(source, columns, 0, so, casts)
            ds = part.open(columns)
            specs = dict(ds.columns)
            part = replace(part, num_rows=ds.num_rows)
            for name in specs:
                row_nbytes[name] = max(row_nbytes.get(name, 0), ds.column_row_nbytes(name))
        if common is None:
            common = specs
        elif specs != common:
            raise SchemaError(f"{source}: columns {specs} differ from those of {sources[0]}: {common}")
        parts.append(part)
    if common is None:
        raise ValueError("sources is empty: give at least one input path")
    return parts, common, {name: max(row_nbytes.get(name, 0), spec.row_nbytes) for name, spec in common.items()}


def largest_unit_rows(parts: Sequence[Part]) -> int:
    """The largest read unit (row group, chunk) of any dataset part, 0 if none."""
    largest = 0
    for part in parts:
        if isinstance(part, DatasetPart):
            ds = part.open(part.columns)
            for shard in ds.shards:
                bounds = shard.unit_bounds
                if bounds is not None and len(bounds) > 1:
                    largest = max(largest, int(np.max(np.diff(np.asarray(bounds)))))
    return largest


# --------------------------------------------------------------------------- CSV


def is_csv_source(source: str) -> bool:
    return str(source).lower().endswith(_CSV)


def csv_columns(path: str, columns: Sequence[str] | None) -> dict[str, ColumnSpec]:
    """The numeric/bool columns of a CSV file (types inferred from its first block);
    ``SchemaError`` naming the column for anything else that is selected."""
    reader = _open_csv(path, columns)
    try:
        schema = reader.schema
    finally:
        reader.close()
    return _csv_specs(path, schema)


def _open_csv(path: str, columns: Sequence[str] | None) -> pacsv.CSVStreamingReader:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    location = resolve(path)
    convert = pacsv.ConvertOptions(include_columns=list(columns) if columns else None)
    read = pacsv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=True)
    try:
        raw = location.fs.open(location.path, "rb") if not location.is_local else pa.input_stream(location.path)
        if location.path.lower().endswith(".gz"):
            raw = pa.CompressedInputStream(raw, "gzip")
        return pacsv.open_csv(
            raw,
            read_options=read,
            convert_options=convert,
            parse_options=pacsv.ParseOptions(delimiter="\t" if path.lower().endswith(".tsv") else ","),
        )
    except (pa.ArrowInvalid, KeyError) as e:
        raise SchemaError(f"{path}: cannot read as CSV ({e})") from e


def _csv_specs(path: str, schema: pa.Schema) -> dict[str, ColumnSpec]:
    import pyarrow as pa

    specs: dict[str, ColumnSpec] = {}
    for field in schema:
        t = field.type
        if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            specs[field.name] = ColumnSpec(t.to_pandas_dtype(), ())
        elif pa.types.is_null(t):
            raise SchemaError(f"{path}: column {field.name!r} is empty in the first block (all nulls)")
        else:
            raise SchemaError(
                f"{path}: column {field.name!r} has Arrow type {t}; convert writes fixed-size numeric "
                "or bool columns only: exclude it with --columns"
            )
    if not specs:
        raise SchemaError(f"{path}: no columns selected")
    return specs


def stage_csv(path: str, directory: str, columns: Sequence[str] | None, specs: Mapping[str, ColumnSpec]) -> RawPart:
    """Stream the CSV at ``path`` block by block into ``directory/{column}.bin``."""
    import pyarrow as pa

    os.makedirs(directory, exist_ok=True)
    rows = 0
    reader = _open_csv(path, columns)
    files = {name: open(os.path.join(directory, f"{name}.bin"), "wb") for name in specs}  # noqa: SIM115
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise SchemaError(f"{path}: after row {rows}: {e} (types are inferred from the first block)") from e
            for name, spec in specs.items():
                column = batch.column(name)
                if column.null_count:
                    first = rows + _first_null(column)
                    raise SchemaError(
                        f"{path}: column {name!r} is empty at row {first} (0-based, not counting the header; "
                        f"{column.null_count} empty value(s) in rows {rows}:{rows + batch.num_rows})"
                    )
                values = column.to_numpy(zero_copy_only=False)
                if values.dtype != spec.dtype:
                    raise SchemaError(f"{path}: column {name!r} changes type to {values.dtype} near row {rows}")
                files[name].write(np.ascontiguousarray(values).data)
            rows += batch.num_rows
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
    finally:
        reader.close()
        for f in files.values():
            f.close()
    return RawPart(directory, tuple((n, s.dtype.str, s.shape) for n, s in specs.items()), rows)


def _first_null(column: pa.Array) -> int:
    """Index of the first null of an Arrow array."""
    import pyarrow.compute as pc

    return int(pc.index(column.is_null(), True).as_py())


# --------------------------------------------------------------------------- fingerprint


def fingerprint_sources(sources: Sequence[str], storage_options: Mapping[str, Any] | None = None) -> str:
    """A hash of every input file's path, size and modification time: a resumed
    conversion refuses to continue when this changed."""
    listing = []
    for source in sources:
        location = resolve(source, dict(storage_options or {}) or None)
        globbed = any(ch in location.path for ch in "*?[")
        paths = [location.path]
        if globbed:
            paths = sorted(location.call(functools.partial(location.fs.glob, location.path), "glob"))
        for p in paths:
            here = location.child(p)  # requests retried when remote (FileSystemPath.call)
            if here.isdir():
                found = here.call(functools.partial(here.fs.find, here.path, detail=True), "listing")
            else:
                found = {p: here.info()}
            for name in sorted(found):
                info = found[name]
                mtime = info.get("mtime", info.get("LastModified", info.get("created", "")))
                listing.append([name, int(info.get("size") or 0), str(mtime)])
    text = json.dumps(listing, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
