"""Files as the tools users have write them -- pandas, polars, DuckDB, pyarrow,
zarr and xarray with their defaults -- read through ``sb.Loader`` and
``sb.open_dataset``: every row exactly once, value-equal to what was written,
and every column either delivered or refused by name (issue 11).

Each case writes a small dataset under ``tmp_path`` and returns what a batch
must hold for every row (keyed by an ``id`` column), plus the ``open_dataset``
options that make it readable.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streambatch as sb

N = 203  # not a multiple of any row group or chunk size below


@dataclass
class Case:
    path: str
    expected: dict[str, np.ndarray]
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


def _ids() -> np.ndarray:
    return np.arange(N, dtype=np.int64)


def _emb(width: int, dtype=np.float32) -> np.ndarray:
    return (np.arange(N)[:, None] * 10 + np.arange(width)[None, :]).astype(dtype)


# --------------------------------------------------------------------------- writers


def pandas_embeddings(tmp_path) -> Case:
    """pandas: an ndarray per row (-> list<float>), NaN as null, a categorical, a string."""
    import pandas as pd

    emb = _emb(8)
    score = np.arange(N, dtype=np.float64)
    score[::17] = np.nan
    names = np.array(["cat", "dog", "emu"])
    df = pd.DataFrame(
        {
            "id": _ids(),
            "emb": list(emb),
            "score": score,
            "kind": pd.Categorical(names[np.arange(N) % 3], categories=list(names)),
            "text": [f"row {i}" for i in range(N)],
        }
    )
    path = str(tmp_path / "pandas.parquet")
    df.to_parquet(path, row_group_size=37)
    filled = np.where(np.isnan(score), -1.0, score)
    return Case(
        path,
        {"id": _ids(), "emb": emb, "score": filled, "kind": (np.arange(N) % 3).astype(np.int8)},
        {"exclude": ["text"], "fill_nulls": {"score": -1.0}},
        {"kind": {"categories": ["cat", "dog", "emu"], "ordered": False}},
    )


def pandas_matrices(tmp_path) -> Case:
    """pandas: a list of lists per row (-> list<list<int64>>), a 3x2 matrix."""
    import pandas as pd

    m = (np.arange(N)[:, None, None] + np.arange(6).reshape(1, 3, 2)).astype(np.int64)
    df = pd.DataFrame({"id": _ids(), "m": [r.tolist() for r in m]})
    path = str(tmp_path / "pandas-m.parquet")
    df.to_parquet(path, row_group_size=50)
    return Case(path, {"id": _ids(), "m": m})


def polars_lists(tmp_path) -> Case:
    """polars: ``List`` (-> large_list) and ``Array`` (-> fixed_size_list), zstd."""
    import polars as pl

    emb = _emb(5)
    arr = _emb(4, np.int16)
    df = pl.DataFrame(
        {
            "id": _ids(),
            "emb": pl.Series(emb.tolist(), dtype=pl.List(pl.Float32)),
            "arr": pl.Series(arr.tolist(), dtype=pl.Array(pl.Int16, 4)),
        }
    )
    path = str(tmp_path / "polars.parquet")
    df.write_parquet(path, row_group_size=64)
    return Case(path, {"id": _ids(), "emb": emb, "arr": arr})


def duckdb_arrays(tmp_path) -> Case:
    """DuckDB: ``FLOAT[3]`` (written as list<float>) and a fixed-length ``INTEGER[]``."""
    import duckdb

    path = str(tmp_path / "duckdb.parquet")
    con = duckdb.connect()
    try:
        con.execute(
            f"COPY (SELECT i::BIGINT AS id, [i * 10, i * 10 + 1, i * 10 + 2]::FLOAT[3] AS v, "
            f"[i, -i]::INTEGER[] AS pair FROM range({N}) t(i) ORDER BY i) "
            f"TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 60)"
        )
    finally:
        con.close()
    pair = np.stack([np.arange(N), -np.arange(N)], axis=1).astype(np.int32)
    return Case(path, {"id": _ids(), "v": _emb(3), "pair": pair})


def pyarrow_lists(tmp_path) -> Case:
    """pyarrow: list, large_list, list<list>, list<fixed_size_list>, fixed_size_list."""
    emb = _emb(4)
    cube = (np.arange(N)[:, None, None] * 100 + np.arange(6).reshape(1, 2, 3)).astype(np.int32)
    fsl = _emb(2, np.float64)
    t = pa.table(
        {
            "id": pa.array(_ids()),
            "a": pa.array(emb.tolist(), pa.list_(pa.float32())),
            "b": pa.array(emb.tolist(), pa.large_list(pa.float32())),
            "c": pa.array(cube.tolist(), pa.list_(pa.list_(pa.int32()))),
            "d": pa.array(cube.tolist(), pa.list_(pa.list_(pa.int32(), 3))),
            "e": pa.array(fsl.tolist(), pa.list_(pa.float64(), 2)),
        }
    )
    path = str(tmp_path / "pyarrow.parquet")
    pq.write_table(t, path, row_group_size=40)
    return Case(path, {"id": _ids(), "a": emb, "b": emb, "c": cube, "d": cube, "e": fsl})


def zarr_defaults(tmp_path) -> Case:
    """zarr with default settings: chunks holding only the fill value are not written."""
    import zarr

    path = str(tmp_path / "plain.zarr")
    labels = np.zeros(N, dtype=np.int64)
    labels[100:140] = np.arange(40) + 1  # chunks 0-4 and 7-10 hold only the fill value 0
    pad = np.full((N, 3), -1.0, dtype=np.float32)
    pad[:20] = 7.0
    group = zarr.open_group(path, mode="w")
    group.create_array("id", data=_ids(), chunks=(20,))
    group.create_array("labels", data=labels, chunks=(20,))
    group.create_array("pad", data=pad, chunks=(20, 3), fill_value=-1.0)
    assert len(os.listdir(os.path.join(path, "labels", "c"))) == 2  # really missing chunks
    assert len(os.listdir(os.path.join(path, "pad", "c"))) == 1
    return Case(path, {"id": _ids(), "labels": labels, "pad": pad})


def _xarray(tmp_path, zarr_format: int) -> Case:
    import xarray as xr

    x = _emb(4)
    label = np.arange(N) % 5
    ds = xr.Dataset(
        {
            "x": (("sample", "feature"), x),
            "label": (("sample",), label),
            "scale": ((), 2.5),
        },
        coords={"sample": np.arange(N) * 2, "feature": ["a", "b", "c", "d"], "fid": ("feature", np.arange(4))},
    )
    path = str(tmp_path / f"xr{zarr_format}.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's notes on unspecified v3 data types / consolidated metadata
        ds.to_zarr(path, mode="w", zarr_format=zarr_format)
    return Case(path, {"sample": np.arange(N) * 2, "x": x, "label": label}, {"columns": None})


def xarray_v3(tmp_path) -> Case:
    """xarray ``Dataset.to_zarr`` (format 3): coordinates along ``feature``, a 0-d variable."""
    return _xarray(tmp_path, 3)


def xarray_v2(tmp_path) -> Case:
    """The same in Zarr format 2 (dimension names in ``_ARRAY_DIMENSIONS``)."""
    return _xarray(tmp_path, 2)


WRITERS: list[Callable[[Any], Case]] = [
    pandas_embeddings,
    pandas_matrices,
    polars_lists,
    duckdb_arrays,
    pyarrow_lists,
    zarr_defaults,
    xarray_v3,
    xarray_v2,
]


def _key(case: Case) -> str:
    return "id" if "id" in case.expected else "sample"


@pytest.mark.parametrize("write", WRITERS, ids=[w.__name__ for w in WRITERS])
def test_every_row_exactly_once_and_value_equal_to_the_source(tmp_path, write):
    case = write(tmp_path)
    options = {k: v for k, v in case.options.items() if k != "columns"}
    ds = sb.open_dataset(case.path, **options)
    assert set(ds.columns) == set(case.expected)
    for name, values in case.expected.items():
        assert ds.columns[name] == (values.dtype, values.shape[1:]), name
    assert ds.column_metadata == case.metadata
    key = _key(case)
    with sb.Loader(case.path, batch_size=16, seed=3, memory_limit="64MiB", **options) as loader:
        batches = list(loader)
    got = {name: np.concatenate([b[name] for b in batches]) for name in case.expected}
    order = np.argsort(got[key], kind="stable")
    assert len(got[key]) == N
    np.testing.assert_array_equal(got[key][order], np.sort(case.expected[key]))  # each row once
    rank = np.argsort(case.expected[key], kind="stable")
    for name, values in case.expected.items():
        np.testing.assert_array_equal(got[name][order], values[rank], err_msg=name)


def test_xarray_coordinates_off_the_row_axis_are_listed_as_not_columns_and_refused_by_name(tmp_path):
    case = xarray_v3(tmp_path)
    ds = sb.open_dataset(case.path)
    assert set(ds.ignored) == {"feature", "fid", "scale"}
    assert "not the row dimension 'sample'" in ds.ignored["fid"]
    with pytest.raises(sb.SchemaError, match=r"'fid' is not a column: along dimension 'feature'"):
        sb.open_dataset(case.path, columns=["x", "fid"])
    assert list(sb.open_dataset(case.path, columns=["label"]).columns) == ["label"]


# --------------------------------------------------------------------------- refused by name


def _pandas(tmp_path, name: str, **columns: Any) -> str:
    import pandas as pd

    path = str(tmp_path / name)
    pd.DataFrame({"id": np.arange(6), **columns}).to_parquet(path, row_group_size=3)
    return path


def _tz_column() -> dict[str, Any]:
    import pandas as pd

    return {"t": pd.date_range("2024-01-01", periods=6, tz="Europe/Paris")}


def _decimal_column() -> dict[str, Any]:
    import decimal

    return {"d": [decimal.Decimal(f"{i}.25") for i in range(6)]}


REFUSED = [
    # (id, the columns written beside "id", the column refused, words its message must hold)
    ("list-of-strings", lambda: {"s": [["a"], ["b", "c"], [], ["d"], ["e"], ["f"]]}, "s", ["list values of type"]),
    (
        "nested-ragged-list",
        lambda: {"tokens": [[[1, 2]], [[3]], [[4, 5, 6]], [[7]], [[8, 9]], [[10]]]},
        "tokens",
        ["list<element: list<element: int64>>", "variable-length lists", "exclude=['tokens']"],
    ),
    ("tz-timestamp", _tz_column, "t", ["tz=", "time-zone-aware"]),
    ("decimal", _decimal_column, "d", ["decimal128", "decimals have no numpy equivalent"]),
]


@pytest.mark.parametrize(("case_id", "make", "column", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_column_that_cannot_be_delivered_is_refused_at_open_naming_file_column_type_and_remedy(
    tmp_path, case_id, make, column, words
):
    path = _pandas(tmp_path, f"{case_id}.parquet", **make())
    for call in (lambda: sb.open_dataset(path), lambda: sb.Loader(path, batch_size=2)):
        with pytest.raises(sb.SchemaError) as info:
            call()
        message = str(info.value)
        for word in [path, repr(column), "columns=['id']", f"exclude=[{column!r}]", *words]:
            assert word in message, (word, message)
    for options in ({"exclude": [column]}, {"columns": ["id"]}):  # the remedies work
        with sb.Loader(path, batch_size=4, shuffle=False, **options) as loader:
            assert np.concatenate([b["id"] for b in loader]).tolist() == list(range(6))
    with pytest.raises(sb.SchemaError, match=re.escape(f"column {column!r} cannot be read")):
        sb.open_dataset(path, columns=["id", column])


@pytest.mark.parametrize(
    ("values", "words"),
    [
        (pa.array([["a"], ["b"]], pa.list_(pa.string())), "list values of type string: variable-length strings"),
        (pa.array([[{"p": 1}], [{"p": 2}]]), "list values of type struct<p: int64>: structs are not supported"),
    ],
    ids=["list-of-strings", "list-of-structs"],
)
def test_a_list_of_unreadable_values_is_refused_for_its_values(tmp_path, values, words):
    path = str(tmp_path / "l.parquet")
    pq.write_table(pa.table({"id": [0, 1], "v": values}), path)
    with pytest.raises(sb.SchemaError, match=re.escape(words)):
        sb.open_dataset(path)


def test_a_file_of_only_unreadable_columns_is_an_error_not_empty_batches(tmp_path):
    path = str(tmp_path / "s.parquet")
    pq.write_table(pa.table({"s": [{"p": 1}, {"p": 2}], "t": [["a"], ["b", "c"]]}), path)
    with pytest.raises(sb.SchemaError, match=r"2 column\(s\) cannot be read"):
        sb.open_dataset(path)


def test_a_list_row_of_another_length_is_an_error_naming_file_row_group_and_row(tmp_path):
    # row group 1 holds 12 values in 4 rows, as if every row had 3: only decoding tells
    rows = [[0, 0, 0]] * 4 + [[1, 1], [1, 1, 1, 1], [1, 1, 1], [1, 1, 1]] + [[2, 2, 2]] * 2
    path = str(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"id": np.arange(10), "v": pa.array(rows, pa.list_(pa.int16()))}), path, row_group_size=4)
    ds = sb.open_dataset(path)
    assert ds.columns["v"] == (np.int16, (3,))
    reader = ds.shards[0].open_reader(["v"])
    try:
        reader.read_into(0, 4, {"v": np.empty((4, 3), np.int16)})  # row group 0 is fine
        with pytest.raises(sb.SchemaError) as info:
            reader.read_into(4, 8, {"v": np.empty((4, 3), np.int16)})
    finally:
        reader.close()
    message = str(info.value)
    for word in [path, "row group 1 row 0", "row 4 of the file", "'v'", "list of 2 values", "must hold 3"]:
        assert word in message, (word, message)


def test_list_lengths_that_differ_between_row_groups_make_a_ragged_column(tmp_path):
    rows = [[0, 0]] * 3 + [[1, 1, 1]] * 3
    path = str(tmp_path / "two.parquet")
    pq.write_table(pa.table({"v": pa.array(rows, pa.list_(pa.int16()))}), path, row_group_size=3)
    assert sb.open_dataset(path).columns["v"] == sb.ColumnSpec(np.int16, (), "list")
    with sb.Loader(path, batch_size=6, shuffle=False) as loader:
        (batch,) = list(loader)
    assert batch["v"].tolist() == rows


# --------------------------------------------------------------------------- nulls


def test_nulls_are_found_at_open_from_the_footer_naming_file_column_and_row_group(tmp_path):
    path = _pandas(tmp_path, "nan.parquet", x=[0.0, 1.0, 2.0, 3.0, np.nan, 5.0])
    with pytest.raises(sb.SchemaError) as info:
        sb.open_dataset(path)  # no reader is opened: the footer statistics say so
    message = str(info.value)
    for word in [path, "column 'x'", "row group 1", "1 nulls", "fill_nulls={'x': value}"]:
        assert word in message, (word, message)
    assert sb.open_dataset(path, columns=["id"]).num_rows == 6  # only the requested columns count


def test_without_statistics_nulls_are_found_when_the_row_group_is_read(tmp_path):
    path = str(tmp_path / "nostats.parquet")
    x = pa.array([0.0, 1.0, 2.0, 3.0, None, 5.0])
    pq.write_table(pa.table({"x": x}), path, row_group_size=3, write_statistics=False)
    ds = sb.open_dataset(path)
    with pytest.raises(sb.SchemaError) as info, sb.Loader(ds, batch_size=2, shuffle=False) as loader:
        list(loader)
    assert f"{path}: column 'x' row group 1 has 1 nulls" in str(info.value)


@pytest.mark.parametrize("statistics", [True, False], ids=["statistics", "no-statistics"])
def test_fill_nulls_reads_nulls_as_the_value_and_the_column_is_not_refused(tmp_path, statistics):
    path = str(tmp_path / "fill.parquet")
    x = pa.array([0.0, None, 2.0, 3.0, None, 5.0])
    v = pa.array([[1, 2], [None, 4], [5, 6], [7, 8], [9, None], [11, 12]], pa.list_(pa.int32()))
    pq.write_table(pa.table({"x": x, "v": v}), path, row_group_size=3, write_statistics=statistics)
    with sb.Loader(path, batch_size=6, shuffle=False, fill_nulls={"x": -1.0, "v": 0}) as loader:
        (batch,) = list(loader)
    assert batch["x"].tolist() == [0.0, -1.0, 2.0, 3.0, -1.0, 5.0]
    assert batch["v"].tolist() == [[1, 2], [0, 4], [5, 6], [7, 8], [9, 0], [11, 12]]


@pytest.mark.parametrize(
    ("fill", "error", "words"),
    [
        ({"nope": 0}, KeyError, ["no column 'nope'"]),
        ({"x": 0.5}, sb.SchemaError, ["fill_nulls['x'] = 0.5", "int64"]),
        ({"x": "a"}, sb.SchemaError, ["fill_nulls['x']"]),
        (["x"], TypeError, ["fill_nulls must be a dict"]),
    ],
    ids=["unknown", "inexact", "not-a-number", "not-a-dict"],
)
def test_bad_fill_nulls_are_refused_naming_the_column_and_value(tmp_path, fill, error, words):
    path = str(tmp_path / "i.parquet")
    pq.write_table(pa.table({"x": pa.array([1, None, 3], pa.int64())}), path)
    with pytest.raises(error) as info:
        sb.open_dataset(path, fill_nulls=fill)
    for word in words:
        assert word in str(info.value)


def test_a_null_list_cannot_be_filled_and_is_named(tmp_path):
    path = str(tmp_path / "nl.parquet")
    v = pa.array([[1], None, [5]], pa.list_(pa.int32()))  # the footer counts 3 values in 3 rows
    pq.write_table(pa.table({"v": v}), path, write_statistics=False)
    ds = sb.open_dataset(path, fill_nulls={"v": 0})
    reader = ds.shards[0].open_reader(["v"])
    try:
        with pytest.raises(sb.SchemaError, match=r"column 'v' row group 0 has 1 null lists"):
            reader.read_into(0, 3, {"v": np.empty((3, 1), np.int32)})
    finally:
        reader.close()


# --------------------------------------------------------------------------- categoricals


def test_categorical_codes_are_recoded_when_a_row_group_has_another_dictionary(tmp_path):
    path = str(tmp_path / "cat.parquet")
    first = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int8()), pa.array(["a", "b"]))
    second = pa.DictionaryArray.from_arrays(pa.array([0, 1, 1], pa.int8()), pa.array(["b", "a"]))
    with pq.ParquetWriter(path, pa.schema([("c", first.type)])) as w:
        w.write_table(pa.table({"c": first}))
        w.write_table(pa.table({"c": second}))
    ds = sb.open_dataset(path)
    assert ds.column_metadata["c"]["categories"] == ["a", "b"]
    with sb.Loader(ds, batch_size=6, shuffle=False) as loader:
        (batch,) = list(loader)
    categories = np.array(ds.column_metadata["c"]["categories"])
    assert categories[batch["c"]].tolist() == ["a", "b", "a", "b", "a", "a"]


# --------------------------------------------------------------------------- Python's conventions


def test_an_unknown_column_is_also_a_key_error_with_a_readable_message(tmp_path):
    path = _pandas(tmp_path, "k.parquet")
    for options in ({"columns": ["idd"]}, {"exclude": ["idd"]}):
        with pytest.raises(KeyError) as info:
            sb.open_dataset(path, **options)
        assert isinstance(info.value, sb.SchemaError) and isinstance(info.value, sb.UnknownColumnError)
        assert str(info.value).startswith(("exclude: unknown column 'idd'", f"{path}: no column 'idd'"))
        assert not str(info.value).startswith('"')  # KeyError's quoting is undone


def test_row_counts_that_differ_and_empty_datasets_are_value_errors(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(5))
    np.save(tmp_path / "b.npy", np.zeros(6))
    with pytest.raises(ValueError) as info:
        sb.open_dataset({"a": str(tmp_path / "a.npy"), "b": str(tmp_path / "b.npy")})
    assert isinstance(info.value, sb.RowCountError) and isinstance(info.value, sb.SchemaError)
    path = str(tmp_path / "empty.parquet")
    pq.write_table(pa.table({"x": pa.array([], pa.int64())}), path)
    with pytest.raises(ValueError) as info:
        sb.Loader(path, batch_size=2)
    assert isinstance(info.value, sb.EmptyDatasetError)


# --------------------------------------------------------------------------- symbolic links


def test_a_directory_of_symbolic_links_to_data_files_reads_them(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    pq.write_table(pa.table({"id": np.arange(0, 5)}), shared / "a.parquet")
    pq.write_table(pa.table({"id": np.arange(5, 9)}), shared / "b.parquet")
    linked = tmp_path / "linked"
    linked.mkdir()
    for name in ("a.parquet", "b.parquet"):
        os.symlink(shared / name, linked / name)
    os.symlink(shared, linked / "more")  # a linked directory too
    os.symlink(tmp_path / "nowhere", linked / "dangling.parquet")  # not a file: skipped
    ds = sb.open_dataset(str(linked))
    assert [s.num_rows for s in ds.shards] == [5, 4, 5, 4]
    with sb.Loader(ds, batch_size=3, shuffle=False) as loader:
        assert sorted(np.concatenate([b["id"] for b in loader]).tolist()) == sorted([*range(9), *range(9)])


def test_a_float_fill_value_is_rounded_to_the_columns_precision(tmp_path):
    path = str(tmp_path / "f4.parquet")
    pq.write_table(pa.table({"x": pa.array([1.0, None], pa.float32())}), path)
    with sb.Loader(path, batch_size=2, shuffle=False, fill_nulls={"x": 0.1}) as loader:
        (batch,) = list(loader)
    assert batch["x"].dtype == np.float32 and batch["x"].tolist() == [1.0, float(np.float32(0.1))]


def test_finding_nested_list_lengths_at_open_does_not_read_the_whole_column_chunk(tmp_path):
    """The inner lengths of a list<list<T>> come from its first row: a fresh process
    (a fresh Arrow pool, whose peak is measured) opens a file of one 10 MB row group."""
    import subprocess
    import sys

    path = str(tmp_path / "nested.parquet")
    n = 160_000
    values = np.arange(n * 16, dtype=np.float32).reshape(n, 4, 4)
    pq.write_table(
        pa.table({"m": pa.array(values.tolist(), pa.list_(pa.list_(pa.float32())))}),
        path,
        row_group_size=n,
        compression="none",
    )
    assert os.path.getsize(path) > 10 << 20
    code = (
        "import pyarrow as pa, streambatch as sb\n"
        f"ds = sb.open_dataset({path!r})\n"
        "assert ds.columns['m'] == ('float32', (4, 4)), ds.columns\n"
        "print(pa.default_memory_pool().max_memory())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out.split()[-1]) < 4 << 20  # a few pages, not the 10 MB column chunk
