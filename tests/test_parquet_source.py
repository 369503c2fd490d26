"""ParquetShard: what a Parquet file looks like to streambatch.

A shard reads only the footer; its units are row groups; every readable Arrow
type maps to one ``ColumnSpec``; everything else, and every null, is a
``SchemaError`` naming the file and column; damaged bytes are a
``CorruptInputError`` naming the file (and the row group once data is read).
"""

from __future__ import annotations

import itertools
import json
import re
from decimal import Decimal
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streambatch.errors import CorruptInputError, SchemaError, SourceNotFoundError
from streambatch.sources._base import ColumnSpec
from streambatch.sources._fs import resolve
from streambatch.sources._parquet import ParquetShard
from tests.conformance import ReaderConformance, fd_count
from tests.conftest import read_shard

# --------------------------------------------------------------------------- helpers


def write(path, table: pa.Table, **kwargs) -> str:
    kwargs.setdefault("row_group_size", 4)
    pq.write_table(table, path, **kwargs)
    return str(path)


def shard_of(path, **kwargs) -> ParquetShard:
    return ParquetShard(resolve(str(path)), **kwargs)


read = read_shard


def read_by_row_group(shard: ParquetShard, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """Every row, one read per row group (how the loader calls it)."""
    columns = list(shard.columns) if columns is None else columns
    out = {c: np.empty((shard.num_rows, *shard.columns[c].shape), shard.columns[c].dtype) for c in columns}
    bounds = shard.unit_bounds
    reader = shard.open_reader(columns)
    try:
        for lo, hi in itertools.pairwise(bounds):
            reader.read_into(int(lo), int(hi), {c: a[lo:hi] for c, a in out.items()})
    finally:
        reader.close()
    return out


def fsb_column(values: np.ndarray, name: str = "x", with_metadata: bool = True) -> tuple[pa.Field, pa.Array]:
    """``values`` (rows, *shape) stored as fixed_size_binary, optionally with dtype/shape metadata."""
    values = np.ascontiguousarray(values)
    width = values.itemsize * int(np.prod(values.shape[1:], dtype=np.int64))
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(values), [None, pa.py_buffer(values.tobytes())])
    metadata = {b"dtype": values.dtype.str.encode(), b"shape": json.dumps(list(values.shape[1:])).encode()}
    return pa.field(name, pa.binary(width), metadata=metadata if with_metadata else None), arr


def table_of(*columns: tuple[pa.Field, pa.Array]) -> pa.Table:
    return pa.Table.from_arrays([a for _, a in columns], schema=pa.schema([f for f, _ in columns]))


# --------------------------------------------------------------------------- the reader contract

N = 300  # rows of the conformance files: 10 row groups of 32, the last one short


def conformance_columns(n: int = N) -> dict[str, np.ndarray]:
    """``id``, ``x`` and ``img`` encode the row, so a mix-up between rows shows."""
    ids = np.arange(n, dtype=np.int64)
    x = (ids[:, None] * 4 + np.arange(4)).astype(np.float32)
    img = (ids[:, None, None] * 6 + np.arange(6).reshape(3, 2)).astype(np.int32)
    return {"id": ids, "x": x, "img": img, "flag": ids % 3 == 0}


def fixed_size_list(values: np.ndarray) -> pa.Array:
    """``values`` (rows, *shape) as nested fixed_size_list arrays."""
    arr = pa.array(values.reshape(-1))
    for width in reversed(values.shape[1:]):
        arr = pa.FixedSizeListArray.from_arrays(arr, width)
    return arr


class ParquetConformance(ReaderConformance):
    casts = True

    def table(self, columns: dict[str, np.ndarray]) -> pa.Table:
        raise NotImplementedError

    def make(self, tmp_path):
        columns = conformance_columns()
        return shard_of(write(tmp_path / "c.parquet", self.table(columns), row_group_size=32)), columns


class TestParquetFixedSizeBinary(ParquetConformance):
    """Tensors as fixed_size_binary with dtype/shape field metadata (streambatch's own layout)."""

    def table(self, columns):
        plain = [(pa.field(c, pa.from_numpy_dtype(columns[c].dtype)), pa.array(columns[c])) for c in ("id", "flag")]
        return table_of(plain[0], fsb_column(columns["x"], "x"), fsb_column(columns["img"], "img"), plain[1])


class TestParquetFixedSizeList(ParquetConformance):
    """Tensors as (nested) fixed_size_list, as pyarrow writes ``pa.list_(type, n)``."""

    def table(self, columns):
        return pa.table({c: fixed_size_list(v) if v.ndim > 1 else v for c, v in columns.items()})


class TestParquetPlainList(ParquetConformance):
    """Vectors as plain ``list<float>`` of one length, as pandas and most writers store them."""

    def table(self, columns):
        lists = {"x": pa.array(columns["x"].tolist(), pa.list_(pa.float32()))}
        lists["img"] = pa.array(columns["img"].tolist(), pa.list_(pa.list_(pa.int32())))
        return pa.table({c: lists.get(c, v) for c, v in columns.items()})


# --------------------------------------------------------------------------- rows and units


def test_footer_gives_rows_path_and_row_group_bounds(tmp_path):
    path = write(tmp_path / "a.parquet", pa.table({"a": np.arange(10, dtype=np.int64)}), row_group_size=4)
    shard = shard_of(path)
    assert shard.path == path
    assert shard.num_rows == 10
    assert shard.unit_bounds.dtype == np.int64
    assert shard.unit_bounds.tolist() == [0, 4, 8, 10]
    assert shard.describe_rows(5, 7) == f"{path} rows 5:7 (row group 1)"


def test_zero_row_row_groups_give_equal_consecutive_bounds_and_read_fine(tmp_path):
    path = tmp_path / "z.parquet"
    t = pa.table({"a": np.arange(5, dtype=np.int64)})
    with pq.ParquetWriter(path, t.schema) as w:
        w.write_table(t.slice(0, 0))
        w.write_table(t)
        w.write_table(t.slice(0, 0))
        w.write_table(pa.table({"a": np.arange(5, 8, dtype=np.int64)}))
    shard = shard_of(path)
    assert shard.unit_bounds.tolist() == [0, 0, 5, 5, 8]
    assert read_by_row_group(shard)["a"].tolist() == list(range(8))
    assert read(shard, 5, 8)["a"].tolist() == [5, 6, 7]


def test_a_file_with_no_rows_has_bounds_zero_zero(tmp_path):
    path = write(tmp_path / "e.parquet", pa.table({"a": np.zeros(0, np.float32)}))
    shard = shard_of(path)
    assert shard.num_rows == 0
    assert shard.columns == {"a": ColumnSpec(np.float32, ())}
    assert shard.unit_bounds.tolist() in ([0], [0, 0])


# --------------------------------------------------------------------------- type mapping

PRIMITIVES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
]


@pytest.mark.parametrize("dtype", PRIMITIVES)
def test_primitive_columns_are_1d_with_the_same_numpy_dtype(tmp_path, dtype):
    rng = np.random.default_rng(0)
    values = (rng.integers(0, 2, 10) if dtype == "bool" else rng.integers(0, 100, 10)).astype(dtype)
    path = write(tmp_path / "p.parquet", pa.table({"v": values}))
    shard = shard_of(path)
    assert shard.columns == {"v": ColumnSpec(np.dtype(dtype), ())}
    got = read_by_row_group(shard)["v"]
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, values)


@pytest.mark.parametrize(
    ("arrow_type", "numpy_dtype"),
    [
        (pa.timestamp("ns"), "datetime64[ns]"),
        (pa.timestamp("us"), "datetime64[us]"),
        (pa.duration("ms"), "timedelta64[ms]"),
        (pa.date32(), "datetime64[D]"),
    ],
)
def test_temporal_columns_map_to_datetime64_and_timedelta64(tmp_path, arrow_type, numpy_dtype):
    values = np.arange(10, dtype=np.int32 if arrow_type == pa.date32() else np.int64)
    arr = pa.array(values).cast(arrow_type)
    path = write(tmp_path / "t.parquet", pa.table({"t": arr}))
    shard = shard_of(path)
    spec = shard.columns["t"]
    assert spec == ColumnSpec(np.dtype(numpy_dtype), ())
    np.testing.assert_array_equal(read_by_row_group(shard)["t"], arr.to_numpy(zero_copy_only=False).astype(numpy_dtype))


def test_fixed_size_binary_with_dtype_and_shape_metadata_is_an_nd_array(tmp_path):
    values = np.arange(10 * 4 * 3, dtype="<f4").reshape(10, 4, 3)
    path = write(tmp_path / "f.parquet", table_of(fsb_column(values)))
    shard = shard_of(path)
    assert shard.columns == {"x": ColumnSpec(np.float32, (4, 3))}
    np.testing.assert_array_equal(read_by_row_group(shard)["x"], values)


def test_fixed_size_binary_with_metadata_and_scalar_shape(tmp_path):
    values = np.arange(10, dtype="<i8")
    path = write(tmp_path / "f.parquet", table_of(fsb_column(values)))
    shard = shard_of(path)
    assert shard.columns == {"x": ColumnSpec(np.int64, ())}
    np.testing.assert_array_equal(read_by_row_group(shard)["x"], values)


def test_fixed_size_binary_without_metadata_is_its_raw_bytes_as_uint8(tmp_path):
    values = np.arange(10 * 6, dtype=np.uint8).reshape(10, 6)
    path = write(tmp_path / "f.parquet", table_of(fsb_column(values, with_metadata=False)))
    shard = shard_of(path)
    assert shard.columns == {"x": ColumnSpec(np.uint8, (6,))}
    np.testing.assert_array_equal(read_by_row_group(shard)["x"], values)


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({b"dtype": b"<f4", b"shape": b"[5]"}, "20 bytes per row, but each value holds 16"),
        ({b"dtype": b"<f4"}, "both 'dtype' and 'shape'"),
        ({b"dtype": b"not-a-dtype", b"shape": b"[4]"}, "not a numpy dtype"),
        ({b"dtype": b"<f4", b"shape": b"four"}, "JSON list"),
        ({b"dtype": b"O", b"shape": b"[2]"}, "plain fixed-size numpy dtype"),
    ],
)
def test_fixed_size_binary_with_inconsistent_metadata_is_unsupported(tmp_path, metadata, match):
    arr = pa.array([bytes(16)] * 3, type=pa.binary(16))
    field = pa.field("x", pa.binary(16), metadata=metadata)
    path = write(
        tmp_path / "f.parquet", table_of((field, arr), (pa.field("ok", pa.int32()), pa.array([1, 2, 3], pa.int32())))
    )
    shard = shard_of(path)  # construction succeeds: only requesting the column fails
    assert "x" not in shard.columns and "x" in shard.unsupported
    assert list(shard.columns) == ["ok"]
    with pytest.raises(SchemaError, match=match) as info:
        shard.open_reader(["x"])
    assert path in str(info.value) and "'x'" in str(info.value) and "fixed_size_binary[16]" in str(info.value)


def test_fixed_size_list_is_a_1d_row(tmp_path):
    values = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 3)
    shard = shard_of(write(tmp_path / "l.parquet", pa.table({"v": arr})))
    assert shard.columns == {"v": ColumnSpec(np.float32, (3,))}
    np.testing.assert_array_equal(read_by_row_group(shard)["v"], values)


def test_nested_fixed_size_lists_are_an_nd_row(tmp_path):
    values = np.arange(10 * 2 * 3, dtype=np.int16).reshape(10, 2, 3)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 3)
    arr = pa.FixedSizeListArray.from_arrays(inner, 2)
    shard = shard_of(write(tmp_path / "l.parquet", pa.table({"v": arr})))
    assert shard.columns == {"v": ColumnSpec(np.int16, (2, 3))}
    np.testing.assert_array_equal(read_by_row_group(shard)["v"], values)


def test_fixed_size_list_of_bool(tmp_path):
    values = (np.arange(10 * 3) % 3 == 0).reshape(10, 3)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 3)
    shard = shard_of(write(tmp_path / "l.parquet", pa.table({"v": arr})))
    assert shard.columns == {"v": ColumnSpec(np.bool_, (3,))}
    np.testing.assert_array_equal(read(shard, 1, 3)["v"], values[1:3])


def test_flat_fixed_size_list_with_shape_metadata_is_reshaped(tmp_path):
    values = np.arange(10 * 12, dtype=np.float64).reshape(10, 4, 3)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), 12)
    field = pa.field("v", arr.type, metadata={b"shape": b"[4, 3]"})
    shard = shard_of(write(tmp_path / "l.parquet", table_of((field, arr))))
    assert shard.columns == {"v": ColumnSpec(np.float64, (4, 3))}
    np.testing.assert_array_equal(read_by_row_group(shard)["v"], values)


def test_fixed_size_list_shape_metadata_must_hold_the_same_number_of_values(tmp_path):
    arr = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(30, np.float32)), 3)
    field = pa.field("v", arr.type, metadata={b"shape": b"[2, 2]"})
    shard = shard_of(write(tmp_path / "l.parquet", table_of((field, arr))))
    with pytest.raises(SchemaError, match=r"shape \[2, 2\] holds 4 values per row but the list holds 3"):
        shard.check_columns(["v"])


def test_columns_keep_schema_order(tmp_path):
    t = pa.table({"c": np.zeros(3, np.int8), "a": np.zeros(3, np.int8), "s": [{"p": 1}] * 3, "b": np.zeros(3, np.int8)})
    shard = shard_of(write(tmp_path / "o.parquet", t))
    assert list(shard.columns) == ["c", "a", "b"]
    assert list(shard.unsupported) == ["s"]


# --------------------------------------------------------------------------- reading


def test_columns_split_into_several_chunks_are_copied_chunk_by_chunk(tmp_path, monkeypatch):
    values = np.arange(12 * 2, dtype="<f8").reshape(12, 2)
    shard = shard_of(write(tmp_path / "c.parquet", table_of(fsb_column(values)), row_group_size=12))
    original = pq.ParquetFile.read_row_group

    def chunked(self, *args, **kwargs):
        table = original(self, *args, **kwargs)
        return pa.Table.from_batches(table.to_batches(max_chunksize=5), table.schema)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", chunked)
    np.testing.assert_array_equal(read(shard, 3, 11)["x"], values[3:11])


def test_an_open_reader_holds_no_arrow_memory_between_reads(tmp_path):
    """Readers stay open (one per thread and file) for a whole epoch, outside the
    memory budget: pyarrow's default pre-buffering kept the last row group's bytes
    in each of them, so memory grew with the number of shards."""
    x = np.arange(64 * 1024, dtype=np.float64)
    path = write(tmp_path / "big.parquet", pa.table({"x": x}), row_group_size=32 * 1024)  # 256 KiB groups
    shard = shard_of(path)
    out = {"x": np.empty(32 * 1024)}
    before = pa.total_allocated_bytes()
    reader = shard.open_reader(["x"])
    try:
        reader.read_into(0, 32 * 1024, out)
        reader.read_into(32 * 1024, 64 * 1024, out)
        held = pa.total_allocated_bytes() - before
    finally:
        reader.close()
    np.testing.assert_array_equal(out["x"], x[32 * 1024 :])
    assert held < 64 * 1024, f"an open reader holds {held} bytes of Arrow memory after its reads"


def test_read_many_concatenates_ranges_and_decodes_each_row_group_once(tmp_path, monkeypatch):
    values = np.arange(20 * 2, dtype="<i4").reshape(20, 2)
    shard = shard_of(write(tmp_path / "m.parquet", table_of(fsb_column(values)), row_group_size=5))
    decoded: list[int] = []
    original = pq.ParquetFile.read_row_group

    def counting(self, i, *args, **kwargs):
        decoded.append(i)
        return original(self, i, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    starts = np.array([11, 0, 3, 6, 14, 7, 19])
    stops = np.array([12, 2, 5, 12, 14, 9, 20])  # out of order, one spans groups 1-2, one is empty
    out = {"x": np.empty((int((stops - starts).sum()), 2), "<i4")}
    reader = shard.open_reader(["x"])
    try:
        reader.read_many(starts, stops, out)
    finally:
        reader.close()
    expected = np.concatenate([values[a:b] for a, b in zip(starts, stops, strict=True)])
    np.testing.assert_array_equal(out["x"], expected)
    assert decoded == [0, 1, 2, 3]


def test_out_arrays_with_the_wrong_row_count_are_rejected(tmp_path):
    shard = shard_of(write(tmp_path / "a.parquet", pa.table({"a": np.arange(8, dtype=np.int64)})))
    reader = shard.open_reader(["a"])
    try:
        with pytest.raises(ValueError, match="3 rows, expected 2"):
            reader.read_into(0, 2, {"a": np.empty(3, np.int64)})
    finally:
        reader.close()


# --------------------------------------------------------------------------- handles


@pytest.fixture
def memory_fs():
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    yield fs
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")


def test_an_fsspec_memory_url_reads_like_a_local_file(tmp_path, memory_fs):
    values = np.arange(10 * 3, dtype="<f4").reshape(10, 3)
    local = write(tmp_path / "a.parquet", table_of(fsb_column(values)), row_group_size=4)
    memory_fs.pipe("/x/a.parquet", Path(local).read_bytes())
    shard = ParquetShard(resolve("memory://x/a.parquet"))
    assert shard.path == "memory://x/a.parquet"
    assert shard.unit_bounds.tolist() == [0, 4, 8, 10]
    np.testing.assert_array_equal(read_by_row_group(shard)["x"], values)
    np.testing.assert_array_equal(read(shard, 5, 7)["x"], values[5:7])


def test_a_missing_memory_url_is_source_not_found(memory_fs):
    with pytest.raises(SourceNotFoundError, match=re.escape("memory://x/missing.parquet")):
        ParquetShard(resolve("memory://x/missing.parquet"))


# --------------------------------------------------------------------------- unsupported columns and nulls


@pytest.mark.parametrize(
    ("array", "arrow_type_text"),
    [
        (pa.array([["a"], ["b", "c"], []]), "list<element: string>"),
        (pa.array([[[1]], [[2, 3]], []], pa.list_(pa.list_(pa.int64()))), "list<element: list<element: int64>>"),
        (pa.array([{"p": 1}, {"p": 2}, {"p": 3}]), "struct<p: int64>"),
        (pa.array([Decimal("1.25"), Decimal("2.50"), Decimal("3.00")], pa.decimal128(10, 2)), "decimal128(10, 2)"),
        (pa.array([0, 1, 2], pa.int64()).cast(pa.timestamp("ms", tz="UTC")), "timestamp[ms, tz=UTC]"),
    ],
    ids=["list-of-strings", "nested-ragged-list", "struct", "decimal", "tz-timestamp"],
)
def test_unsupported_columns_raise_schema_error_naming_file_column_and_arrow_type(tmp_path, array, arrow_type_text):
    t = pa.table({"ok": np.arange(3, dtype=np.int64), "bad": array})
    path = write(tmp_path / "u.parquet", t)
    shard = shard_of(path)
    assert list(shard.columns) == ["ok"]
    assert arrow_type_text in shard.unsupported["bad"]
    for request in (lambda: shard.check_columns(["ok", "bad"]), lambda: shard.open_reader(["bad"])):
        with pytest.raises(SchemaError) as info:
            request()
        message = str(info.value)
        assert path in message and "'bad'" in message and arrow_type_text in message
    assert read(shard, 0, 3)["ok"].tolist() == [0, 1, 2]  # the rest of the file stays readable


def test_a_nullable_column_without_nulls_reads_normally(tmp_path):
    t = pa.table({"a": pa.array([1, 2, 3, 4, 5], pa.int64())})  # nullable in the schema
    assert t.schema.field("a").nullable
    shard = shard_of(write(tmp_path / "n.parquet", t))
    assert read(shard, 0, 5)["a"].dtype == np.int64


def test_nulls_found_in_the_footer_statistics_raise_when_the_column_is_requested(tmp_path):
    t = pa.table({"a": pa.array([1, 2, 3, 4, 5, None, 7, 8], pa.int64()), "b": np.arange(8, dtype=np.int8)})
    path = write(tmp_path / "n.parquet", t, row_group_size=4)
    shard = shard_of(path)  # the type is fine, so building succeeds
    assert shard.columns["a"] == ColumnSpec(np.int64, ())
    message = f"{path}: column 'a' row group 1 has 1 nulls; streambatch needs every value present"
    with pytest.raises(SchemaError, match=re.escape(message)):
        shard.check_columns(["a"])
    with pytest.raises(SchemaError, match=re.escape(message)):
        shard.open_reader(["b", "a"])
    assert read(shard, 0, 8, ["b"])["b"].tolist() == list(range(8))


def test_nulls_inside_fixed_size_lists_are_found_too(tmp_path):
    values = pa.array(np.arange(12, dtype=np.float32), mask=np.arange(12) == 7)
    t = pa.table({"v": pa.FixedSizeListArray.from_arrays(values, 3)})
    with pytest.raises(SchemaError, match="column 'v' row group 0 has 1 nulls"):
        shard_of(write(tmp_path / "n.parquet", t)).open_reader(["v"])


def test_without_statistics_nulls_are_found_when_their_row_group_is_read(tmp_path):
    t = pa.table({"a": pa.array([1, 2, 3, 4, None, None, 7, 8], pa.float64())})
    path = write(tmp_path / "n.parquet", t, row_group_size=4, write_statistics=False)
    shard = shard_of(path)
    reader = shard.open_reader(["a"])
    try:
        out = np.empty(4)
        reader.read_into(0, 4, {"a": out})  # row group 0 has none
        assert out.tolist() == [1, 2, 3, 4]
        with pytest.raises(SchemaError, match=re.escape(f"{path}: column 'a' row group 1 has 2 nulls")):
            reader.read_into(6, 8, {"a": np.empty(2)})  # never NaN, even outside the null rows
    finally:
        reader.close()


# --------------------------------------------------------------------------- corrupt input


def _corrupt_file(tmp_path, how: str) -> str:
    path = write(tmp_path / "bad.parquet", pa.table({"a": np.arange(1000, dtype=np.int64)}), row_group_size=100)
    data = bytearray(Path(path).read_bytes())
    if how == "0 bytes":
        data = bytearray()
    elif how == "4 bytes":
        data = data[:4]
    elif how == "truncated at half":
        data = data[: len(data) // 2]
    elif how == "last byte cut":
        data = data[:-1]
    elif how == "footer magic destroyed":
        data[-4:] = b"XXXX"
    elif how == "footer length garbage":
        data[-8:-4] = (len(data) * 10).to_bytes(4, "little")
    Path(path).write_bytes(data)
    return path


@pytest.mark.parametrize(
    "how",
    ["0 bytes", "4 bytes", "truncated at half", "last byte cut", "footer magic destroyed", "footer length garbage"],
)
def test_a_corrupt_footer_raises_corrupt_input_error_naming_the_file_at_construction(tmp_path, how):
    path = _corrupt_file(tmp_path, how)
    before = fd_count()
    with pytest.raises(CorruptInputError, match="not a valid Parquet file") as info:
        shard_of(path)
    assert path in str(info.value)
    assert fd_count() == before


def test_a_missing_file_raises_source_not_found_naming_it(tmp_path):
    path = str(tmp_path / "nope.parquet")
    with pytest.raises(SourceNotFoundError, match=re.escape("nope.parquet")) as info:
        shard_of(path)
    assert isinstance(info.value, FileNotFoundError)


def test_a_corrupt_data_page_raises_corrupt_input_error_naming_the_row_group(tmp_path):
    values = np.random.default_rng(2).random(1000)
    path = write(
        tmp_path / "c.parquet", pa.table({"a": values}), row_group_size=100, compression="snappy", use_dictionary=False
    )
    chunk = pq.ParquetFile(path).metadata.row_group(3).column(0)
    data = bytearray(Path(path).read_bytes())
    data[chunk.data_page_offset : chunk.data_page_offset + 200] = b"\xff" * 200
    Path(path).write_bytes(data)
    shard = shard_of(path)  # the footer is intact
    reader = shard.open_reader(["a"])
    try:
        out = np.empty(100)
        reader.read_into(200, 300, {"a": out})  # rows before the bad group are fine
        np.testing.assert_array_equal(out, values[200:300])
        with pytest.raises(CorruptInputError, match=re.escape(f"{path} row group 3: ")) as info:
            reader.read_into(300, 400, {"a": out})
        assert isinstance(info.value.__cause__, (pa.ArrowException, OSError))
    finally:
        reader.close()


def _zero_values(path: str, first: int, count: int) -> None:
    """Zero ``count`` PLAIN-encoded int64 values starting at the value ``first``."""
    data = bytearray(Path(path).read_bytes())
    start = data.find(np.int64(first).tobytes())
    data[start : start + 8 * count] = bytes(8 * count)
    Path(path).write_bytes(data)


def _checksummed_file_with_a_zeroed_page(tmp_path):
    """1000 int64 values in 2 uncompressed row groups with page checksums, 50
    values of row group 1 zeroed on disk."""
    values = np.arange(1, 1001, dtype=np.int64)
    path = write(
        tmp_path / "k.parquet",
        pa.table({"a": values}),
        row_group_size=500,
        compression="none",
        use_dictionary=False,
        write_page_checksum=True,
    )
    _zero_values(path, 600, 50)
    return values, path


def test_zeroed_page_with_checksums_and_verify_raises_corrupt_input_error_mentioning_the_checksum(tmp_path):
    values, path = _checksummed_file_with_a_zeroed_page(tmp_path)
    shard = shard_of(path, verify=True)
    reader = shard.open_reader(["a"])
    try:
        out = np.empty(500, np.int64)
        reader.read_into(0, 500, {"a": out})
        np.testing.assert_array_equal(out, values[:500])
        with pytest.raises(CorruptInputError, match=re.escape(f"{path} row group 1: ") + ".*checksum"):
            reader.read_into(500, 1000, {"a": out})
    finally:
        reader.close()


def test_without_verify_a_zeroed_page_is_read_silently_wrong(tmp_path):
    """Why ``verify=True`` exists: an uncompressed page has nothing else to check."""
    _values, path = _checksummed_file_with_a_zeroed_page(tmp_path)
    got = read(shard_of(path), 500, 1000)["a"]
    assert (got == 0).sum() == 50
