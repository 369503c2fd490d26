"""Writers of the loader-friendly layouts, shared by ``streambatch demo`` and
``streambatch convert``: Parquet with tensor columns as FixedSizeBinary (dtype
and shape in the field metadata; measured 4x faster to read here than
FixedSizeList), Zarr v3 chunked along rows, and one ``.npy`` per column.

Variable-length columns (``ColumnSpec.variable``: strings, binary, ragged lists)
are written by the Parquet writer only, as ``large_string``, ``large_binary`` and
``large_list<T>``, built from a block's offsets and values buffers (no per-row
Python). A block holds such a column as a :class:`~streambatch.Ragged` -- of the
UTF-8 / raw bytes for strings and binary -- or as the batch value the loader
delivers (a ``StringDType`` array, an object array of ``bytes``). Zarr and npy
output refuse them by name (:func:`refuse_unstorable`)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import SchemaError
from .ragged import Ragged
from .sources import ColumnSpec
from .sources._tensor import tensor_metadata

__all__ = [
    "NpyWriter",
    "ParquetWriter",
    "ZarrWriter",
    "arrow_column",
    "arrow_field",
    "as_ragged",
    "refuse_unstorable",
]


#: numpy kinds a scalar Parquet column stores as the matching Arrow primitive type.
_PRIMITIVE_KINDS = "biufmM"

#: Why an output format cannot store a variable-length column of each kind.
_CANNOT_STORE = {
    "npy": {kind: "a .npy file holds fixed-size rows only" for kind in ("str", "bytes", "list")},
    "zarr": {
        "bytes": "Zarr has no variable-length binary data type",
        "list": "Zarr has no variable-length list data type",
    },
}


def refuse_unstorable(columns: Mapping[str, ColumnSpec], output: str) -> None:
    """Refuse, by name and with the remedy, a variable-length column (strings,
    binary, ragged lists: ``ColumnSpec.variable``) that ``output`` cannot store:
    Parquet stores them all; npy and Zarr none."""
    reasons = _CANNOT_STORE.get(output, {})
    for name, spec in columns.items():
        if spec.variable and spec.kind in reasons:
            raise SchemaError(
                f"column {name!r} is variable-length {spec!r}: {output} output cannot store it "
                f"({reasons[spec.kind]}); choose Parquet output (--format parquet), which stores it, "
                f"or exclude it (--exclude {name})"
            )


def _spec(spec: ColumnSpec | tuple[np.dtype, tuple[int, ...]]) -> ColumnSpec:
    return spec if isinstance(spec, ColumnSpec) else ColumnSpec(*spec)


def _dictionary_columns(schema: pa.Schema, lists: list[str]) -> list[str]:
    """The columns worth dictionary-encoding: scalars and strings (labels, categories),
    not list values (token ids) and not FixedSizeBinary rows (tensors, records), whose
    values rarely repeat: pyarrow would write the whole column chunk of a small row
    group as a dictionary page plus indices, and every read would gather it back
    (measured on a ``convert --shuffle`` of 2 M float32[128] rows, 2,016-row groups:
    a shard decoded with 0.16-0.18 CPU-s against 0.124-0.131 plain, 0.37-0.62 s
    against 0.18-0.30 wall; the conversion took 7.2 s against 5.8; list values: 100 k
    rows of 500 int32 tokens took 246 MB and 5.7 s with a dictionary, 203 MB and 2.6 s
    without)."""
    return [f.name for f in schema if f.name not in lists and not pa.types.is_fixed_size_binary(f.type)]


def arrow_field(name: str, dtype: np.dtype, shape: tuple[int, ...], kind: str = "fixed") -> pa.Field:
    """A primitive field for scalar rows of a native-order number, bool or datetime;
    FixedSizeBinary with dtype/shape metadata for tensors and for every other
    fixed-size dtype (big-endian, complex, ``S``/``U`` strings, structured), which
    Arrow has no primitive type for: the bytes are kept and read back as they are.
    Variable-length kinds: ``large_string`` (``"str"``), ``large_binary``
    (``"bytes"``) and ``large_list<T>`` of ``dtype`` values (``"list"``)."""
    dtype = np.dtype(dtype)
    if kind == "str":
        return pa.field(name, pa.large_string(), nullable=False)
    if kind == "bytes":
        return pa.field(name, pa.large_binary(), nullable=False)
    if kind == "list":
        if dtype.kind not in _PRIMITIVE_KINDS or not dtype.isnative:
            raise SchemaError(f"column {name!r}: lists of {dtype} values have no Arrow type; Parquet cannot store it")
        return pa.field(
            name, pa.large_list(pa.field("item", pa.from_numpy_dtype(dtype), nullable=False)), nullable=False
        )
    if dtype.hasobject or dtype.itemsize == 0:
        raise SchemaError(f"column {name!r}: dtype {dtype} is not a fixed-size value; Parquet output cannot store it")
    if dtype.fields is not None:
        raise SchemaError(
            f"column {name!r}: structured dtype {dtype}: Parquet output keeps no field names; "
            "store each field as its own column, or choose npy or zarr output"
        )
    if not shape and dtype.kind in _PRIMITIVE_KINDS and dtype.isnative and dtype.fields is None:
        return pa.field(name, pa.from_numpy_dtype(dtype), nullable=False)
    width = int(dtype.itemsize * np.prod(shape))
    return pa.field(name, pa.binary(width), nullable=False, metadata=tensor_metadata(dtype, shape))


def as_ragged(values: Ragged | np.ndarray, kind: str) -> Ragged:
    """A variable-length column's block value as a ``Ragged``: itself for lists; for
    strings (a ``StringDType`` or ``str`` array) and binary (an object array of
    ``bytes``) the UTF-8 / raw bytes of every row, through Arrow (no per-row Python).
    A ``Ragged`` is taken as it is (for strings and binary: of ``uint8``)."""
    if isinstance(values, Ragged):
        return values
    if kind == "list":
        raise TypeError(f"a list column's block value must be a Ragged, got {type(values).__name__}")
    arrow_type = pa.large_string() if kind == "str" else pa.large_binary()
    arr = pa.array(np.asarray(values), type=arrow_type)
    if arr.null_count:
        raise SchemaError(f"a {kind} column holds {arr.null_count} None value(s); Parquet output stores no nulls")
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int64, count=arr.offset + n + 1)[arr.offset :]
    data = arr.buffers()[2]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
    base = int(offsets[0])
    return Ragged(raw[base : int(offsets[-1])], offsets - base)


def _variable_array(values: Ragged, field: pa.Field) -> pa.Array:
    """An Arrow array of ``field``'s variable-length type over ``values``' buffers."""
    offsets = np.ascontiguousarray(values.offsets, dtype=np.int64)
    if pa.types.is_large_list(field.type):
        items = pa.array(np.ascontiguousarray(values.values), type=field.type.value_type)
        return pa.LargeListArray.from_arrays(pa.array(offsets), items, type=field.type)
    data = np.ascontiguousarray(values.values).view(np.uint8)
    arr = pa.Array.from_buffers(field.type, len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    arr.validate()  # offsets within the data; not the UTF-8 (what was read as strings was already checked)
    return arr


def arrow_column(values: np.ndarray | Ragged, field: pa.Field) -> pa.Array:
    """Wrap ``values`` (rows first) as an Arrow array of ``field``'s type, without
    copying; a variable-length field takes a ``Ragged`` (see :func:`as_ragged`)."""
    t = field.type
    if pa.types.is_large_list(t) or pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        kind = "list" if pa.types.is_large_list(t) else "str" if pa.types.is_large_string(t) else "bytes"
        return _variable_array(as_ragged(values, kind), field)
    if isinstance(values, Ragged):
        raise TypeError(f"column {field.name!r} of Arrow type {t} takes a NumPy array, got a Ragged")
    values = np.ascontiguousarray(values)
    if not pa.types.is_fixed_size_binary(field.type):
        return pa.array(values, type=field.type)
    raw = pa.py_buffer(values.reshape(-1).view(np.uint8))
    return pa.Array.from_buffers(field.type, len(values), [None, raw])


class ParquetWriter:
    """Append row blocks to one Parquet file, with page checksums so bit rot is
    detectable on read. ``columns`` maps names to ``ColumnSpec`` (or ``(dtype,
    shape)`` for fixed-size rows).

    Row groups are cut across blocks (the rows after the last whole group wait for
    the next block): each holds ``row_group_rows`` rows, or, with
    ``row_group_bytes``, ends at the first row that brings it to that many bytes
    of row data (fixed rows, plus the values and an 8-byte offset of every
    variable-length row) or to ``row_group_rows`` rows, whichever comes first;
    the last group holds what is left. The groups depend on the rows only, never
    on how they were split into blocks.

    ``values_per_row`` gives, per variable-length column, the largest per-row mean
    of any row group written of its values (list items; bytes of a string or
    binary), rounded up: what a reader's memory budget reserves per row."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        columns: Mapping[str, ColumnSpec | tuple[np.dtype, tuple[int, ...]]],
        row_group_rows: int,
        compression: str | None = None,
        filesystem=None,
        row_group_bytes: int | None = None,
    ) -> None:
        self.specs = {n: _spec(s) for n, s in columns.items()}
        self.schema = pa.schema([arrow_field(n, s.dtype, s.shape, s.kind) for n, s in self.specs.items()])
        self.row_group_rows = int(row_group_rows)
        self.row_group_bytes = int(row_group_bytes) if row_group_bytes else None
        self._fixed_row_nbytes = sum(s.row_nbytes for s in self.specs.values() if not s.variable)
        lists = [n for n, s in self.specs.items() if s.kind == "list"]
        self._writer = pq.ParquetWriter(
            path,
            self.schema,
            compression=compression or "none",
            write_page_checksum=True,
            filesystem=filesystem,
            write_statistics=False,
            use_dictionary=_dictionary_columns(self.schema, lists),
        )
        self._carry: dict[str, np.ndarray | Ragged] | None = None  # rows of the row group not yet complete
        self._carry_nbytes = 0
        self.values_per_row = {n: 0 for n, s in self.specs.items() if s.variable}
        self.rows = 0

    def write(self, block: Mapping[str, np.ndarray | Ragged]) -> None:
        block = {n: as_ragged(block[n], s.kind) if s.variable else block[n] for n, s in self.specs.items()}
        n = len(next(iter(block.values())))
        sizes = self._row_nbytes(block, n)
        start = 0
        carry = self._carry
        if carry is not None:  # complete the waiting row group first
            held = len(next(iter(carry.values())))
            end = self._group_end(sizes, 0, held, self._carry_nbytes)
            if end is None:
                self._carry = {k: _joined(carry[k], block[k]) for k in block}
                self._carry_nbytes += int(sizes.sum())
                return
            self._write_groups({k: _joined(carry[k], block[k][:end]) for k in block}, [held + end])
            self._carry, self._carry_nbytes, start = None, 0, end
        ends: list[int] = []
        while (end := self._group_end(sizes, ends[-1] if ends else start, 0, 0)) is not None:
            ends.append(end)
        if ends:
            self._write_groups({k: v[start : ends[-1]] for k, v in block.items()}, [e - start for e in ends])
            start = ends[-1]
        if start < n:
            self._carry = {k: _owned(v[start:]) for k, v in block.items()}
            self._carry_nbytes = int(sizes[start:].sum())

    def _row_nbytes(self, block: Mapping[str, np.ndarray | Ragged], n: int) -> np.ndarray:
        """Bytes of each row of ``block`` as row groups count them (zeros: by rows only)."""
        sizes = np.zeros(n, np.int64)
        if self.row_group_bytes is None:
            return sizes
        sizes += self._fixed_row_nbytes
        for name, spec in self.specs.items():
            if spec.variable:
                value = block[name]
                assert isinstance(value, Ragged)  # made so by write()
                sizes += 8 + value.lengths * value.values.dtype.itemsize
        return sizes

    def _group_end(self, sizes: np.ndarray, start: int, rows: int, nbytes: int) -> int | None:
        """Where the row group that holds ``rows`` rows of ``nbytes`` bytes before
        ``sizes[start]`` ends in ``sizes`` (exclusive), or ``None`` if not within it."""
        last = start + self.row_group_rows - rows - 1  # the row that fills it by rows
        if self.row_group_bytes is not None:
            cumulative = np.cumsum(sizes[start : last + 1])
            full = int(np.searchsorted(cumulative, self.row_group_bytes - nbytes, side="left"))
            last = min(last, start + full)
        return last + 1 if last < sizes.size else None

    def _write_groups(self, rows: Mapping[str, np.ndarray | Ragged], ends: list[int]) -> None:
        """Write ``rows`` as the row groups ending at ``ends`` (the last is ``len(rows)``)."""
        arrays = [arrow_column(rows[f.name], f) for f in self.schema]
        table = pa.Table.from_arrays(arrays, schema=self.schema)
        if self.row_group_bytes is None:  # whole groups of row_group_rows (the last may be short): one call
            ends = [*range(self.row_group_rows, table.num_rows, self.row_group_rows), table.num_rows]
            self._writer.write_table(table, row_group_size=self.row_group_rows)
        else:
            for a, b in zip([0, *ends[:-1]], ends):
                self._writer.write_table(table.slice(a, b - a), row_group_size=b - a)
        bounds = np.asarray([0, *ends], np.int64)
        for name in self.values_per_row:
            value = rows[name]
            assert isinstance(value, Ragged)  # made so by write()
            counts = np.diff(value.offsets[bounds])
            means = -(-counts // np.maximum(1, np.diff(bounds)))
            self.values_per_row[name] = max(self.values_per_row[name], int(means.max(initial=0)))
        self.rows += table.num_rows

    def close(self) -> None:
        try:
            carry, self._carry = self._carry, None
            if carry is not None:
                self._write_groups(carry, [len(next(iter(carry.values())))])
        finally:
            self._writer.close()


def _owned(value: np.ndarray | Ragged) -> np.ndarray | Ragged:
    """A copy that holds no view of the block it was sliced from."""
    if isinstance(value, Ragged):
        return Ragged(value.values.copy(), value.offsets)
    return np.array(value)


def _joined(a: np.ndarray | Ragged, b: np.ndarray | Ragged) -> np.ndarray | Ragged:
    if isinstance(a, Ragged):
        assert isinstance(b, Ragged)  # internal: one column's values are of one kind
        return Ragged.concatenate([a, b])
    assert isinstance(b, np.ndarray)
    return np.concatenate([a, b])


class ZarrWriter:
    """A Zarr v3 group with one array per column, chunked by ``chunk_rows`` along rows."""

    def __init__(
        self,
        path: str,
        columns: Mapping[str, ColumnSpec | tuple[np.dtype, tuple[int, ...]]],
        num_rows: int,
        chunk_rows: int,
        compression: str | None = None,
    ) -> None:
        import zarr

        specs = {n: _spec(s) for n, s in columns.items()}
        refuse_unstorable(specs, "zarr")
        # strings: zarr 3's variable-length UTF-8 type, read back as StringDType
        self._text = {n for n, spec in specs.items() if spec.variable and spec.kind == "str"}
        for name, (dtype, _) in columns.items():
            if name in self._text:
                continue
            dtype = np.dtype(dtype)
            if not dtype.isnative and dtype.itemsize > 1:  # zarr 3 reads it back in native order
                raise SchemaError(
                    f"column {name!r}: dtype {dtype.str} is not in native byte order, and a Zarr store reads "
                    "it back as native: choose Parquet or npy output, or byte-swap the column first"
                )
            if dtype.hasobject or dtype.itemsize == 0:
                raise SchemaError(f"column {name!r}: dtype {dtype} is not a fixed-size value; Zarr cannot store it")
        self._group = zarr.open_group(path, mode="w", zarr_format=3)
        compressors = _zarr_compressors(compression)
        self._arrays = {
            name: self._group.create_array(
                name,
                shape=(num_rows, *shape),
                chunks=(chunk_rows, *shape),
                dtype=str if name in self._text else np.dtype(dtype),
                compressors=compressors,
                fill_value="" if name in self._text else 0,
                # write every chunk, even all-fill ones, so a missing chunk file always means damage
                config={"write_empty_chunks": True},  # type: ignore[arg-type] # zarr's TypedDict: 'order' is optional
            )
            for name, (dtype, shape) in columns.items()
        }
        self.rows = 0

    def write(self, block: Mapping[str, np.ndarray]) -> None:
        n = len(next(iter(block.values())))
        for name, array in self._arrays.items():
            values = block[name]
            if name in self._text:
                values = _strings(values)
            array[self.rows : self.rows + n] = values
        self.rows += n

    def close(self) -> None:
        pass


def _strings(values: Ragged | np.ndarray) -> np.ndarray:
    """A string column's block value as a ``StringDType`` array (a ``Ragged`` holds
    each row's UTF-8 bytes)."""
    if isinstance(values, Ragged):
        offsets = np.asarray(values.offsets, dtype=np.int64)
        arr = pa.LargeStringArray.from_buffers(
            len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(values.values))
        )
        return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.dtypes.StringDType())
    return np.asarray(values, dtype=np.dtypes.StringDType())


def _zarr_compressors(compression: str | None):
    if compression in (None, "none"):
        return None
    from zarr.codecs import BloscCodec, ZstdCodec

    if compression == "zstd":
        return [ZstdCodec(level=3)]
    if compression == "lz4":
        return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
    raise ValueError(f"compression must be none, zstd or lz4, got {compression!r}")


class NpyWriter:
    """One ``.npy`` file per column in ``directory``, appended block by block with
    plain writes (no memory map, so writing never holds the file in RSS)."""

    def __init__(
        self, directory: str, columns: Mapping[str, ColumnSpec | tuple[np.dtype, tuple[int, ...]]], num_rows: int
    ) -> None:
        refuse_unstorable({n: _spec(s) for n, s in columns.items()}, "npy")
        os.makedirs(directory, exist_ok=True)
        self.num_rows = num_rows = int(num_rows)
        self._files = {}
        for name, (dtype, shape) in columns.items():
            f = open(os.path.join(directory, f"{name}.npy"), "wb")  # noqa: SIM115 - closed in close()
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                "fortran_order": False,
                "shape": (num_rows, *(int(d) for d in shape)),
            }
            np.lib.format.write_array_header_1_0(f, header)
            self._files[name] = f
        self.rows = 0

    def write(self, block: Mapping[str, np.ndarray]) -> None:
        n = len(next(iter(block.values())))
        for name, f in self._files.items():
            # raw bytes: a memoryview of datetime64 or structured values cannot be written directly
            f.write(np.ascontiguousarray(block[name]).reshape(-1).view(np.uint8).data)
        self.rows += n

    def close(self) -> None:
        files, self._files = self._files, {}
        for f in files.values():
            f.close()
        if self.rows != self.num_rows and files:
            raise ValueError(f"NpyWriter: the header promises {self.num_rows} rows but {self.rows} were written")


def write_blocks(writer, blocks: Iterable[Mapping[str, np.ndarray]]) -> int:
    """Feed ``blocks`` to ``writer`` and close it; returns the rows written."""
    try:
        for block in blocks:
            writer.write(block)
    finally:
        writer.close()
    return writer.rows
