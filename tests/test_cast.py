"""``cast=``: columns delivered as another dtype (streambatch/sources/_cast.py,
docs/formats.md "Cast on request").

Specifications: every cast delivers what pyarrow's own ``cast(..., safe=True)``
gives, from Parquet and Arrow IPC alike, for files written by pyarrow, pandas and
DuckDB; the budget counts the delivered dtype; a value the dtype cannot hold is a
``CastError`` naming file, row group and column (at open from footer statistics,
else when read), never a wrapped value; a cast the column cannot reach and an
unknown column are errors at construction; ``convert --cast`` writes the cast
dtype; a saved state belongs to its cast."""

from __future__ import annotations

import datetime
import decimal
import json
import os
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

import streambatch as sb
from streambatch.cli import main
from streambatch.convert import convert

N = 37  # rows: not a multiple of the row group / record batch size below
GROUP = 10


def _write(fmt: str, path_stem, table: pa.Table, statistics: bool = True) -> str:
    if fmt == "parquet":
        path = f"{path_stem}.parquet"
        pq.write_table(table, path, row_group_size=GROUP, write_statistics=statistics)
    else:
        path = f"{path_stem}.arrow"
        feather.write_feather(table, path, compression="uncompressed", chunksize=GROUP)
    return path


def _read_all(source: Any, **options: Any) -> dict[str, Any]:
    """Every row in stored order, each column concatenated."""
    with sb.Loader(source, batch_size=8, shuffle=False, **options) as loader:
        batches = list(loader)
    return {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}


def _decimals(scale: int, values: list[str], precision: int = 18, wide: bool = False) -> pa.Array:
    t = pa.decimal256(precision, scale) if wide else pa.decimal128(precision, scale)
    return pa.array([decimal.Decimal(v) for v in values], t)


def _n(values: list[Any]) -> list[Any]:
    return (values * (N // len(values) + 1))[:N]


# (id, stored array, cast dtype): the delivered values must equal pyarrow's safe cast
CASTS = [
    ("decimal-float64", _decimals(3, _n(["1.125", "-99.999", "123456789012345.678", "0.001"])), "float64"),
    ("decimal-float32", _decimals(3, _n(["1.125", "-99.999", "3.333"])), "float32"),
    ("decimal-integral-int64", _decimals(2, _n(["12.00", "-3.00", "99999999.00"])), "int64"),
    ("decimal256-float64", _decimals(2, _n(["1.25", "-7.5", "1e40"]), precision=60, wide=True), "float64"),
    ("ts-utc-ns", pa.array(_n([0, 1_700_000_000_123_456_789, -5]), pa.timestamp("ns", tz="UTC")), "datetime64[ns]"),
    ("ts-paris-us", pa.array(_n([0, 1_711_846_800_000_000]), pa.timestamp("us", tz="Europe/Paris")), "datetime64[us]"),
    (
        "ts-paris-us-to-ns",
        pa.array(_n([7, 1_711_846_800_000_000]), pa.timestamp("us", tz="Europe/Paris")),
        "datetime64[ns]",
    ),
    ("ts-naive-ns-to-ms", pa.array(_n([0, 1_000_000, 5_000_000_000]), pa.timestamp("ns")), "datetime64[ms]"),
    ("date32-ms", pa.array(_n([0, 19_000, -1]), pa.date32()), "datetime64[ms]"),
    ("duration-s-ns", pa.array(_n([0, 3600, -1]), pa.duration("s")), "timedelta64[ns]"),
    ("float64-float32", pa.array(_n([0.1, -1e30, np.nan, np.inf, 3.0])), "float32"),
    ("float32-float16", pa.array(_n([0.1, -60000.0, 2.5]), pa.float32()), "float16"),
    ("float64-int32", pa.array(_n([1.0, -2.0, 2.0**31 - 1])), "int32"),
    ("int64-int32", pa.array(_n([0, -(2**31), 2**31 - 1]), pa.int64()), "int32"),
    ("int64-float64", pa.array(_n([0, 2**53, -(2**53)]), pa.int64()), "float64"),
    ("int32-int64", pa.array(_n([0, -1, 2**31 - 1]), pa.int32()), "int64"),
    ("uint8-float32", pa.array(_n([0, 255, 7]), pa.uint8()), "float32"),
    ("bool-int8", pa.array(_n([True, False, True])), "int8"),
    (
        "fixed-list-float64-float32",
        pa.array(_n([[0.5, 1.5, 2.5], [-1.0, 0.0, 1e10]]), pa.list_(pa.float64(), 3)),
        "float32",
    ),
    ("list-const-int64-int16", pa.array(_n([[1, 2], [-3, 4]]), pa.list_(pa.int64())), "int16"),
]


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
@pytest.mark.parametrize(("case_id", "stored", "dtype"), CASTS, ids=[c[0] for c in CASTS])
def test_a_cast_delivers_the_values_of_pyarrows_own_safe_cast(tmp_path, fmt, case_id, stored, dtype):
    path = _write(fmt, tmp_path / case_id, pa.table({"id": np.arange(N), "v": stored}))
    ds = sb.open_dataset(path, cast={"v": dtype})
    assert ds.columns["v"].dtype == np.dtype(dtype) and ds.cast == {"v": np.dtype(dtype)}
    got = _read_all(path, cast={"v": dtype})
    target = pa.from_numpy_dtype(np.dtype(dtype))
    if pa.types.is_list(stored.type) or pa.types.is_fixed_size_list(stored.type):
        expected = np.array(pc.cast(stored, pa.list_(target), safe=True).to_pylist(), dtype=dtype)
    else:
        expected = pc.cast(stored, target, safe=True).to_numpy(zero_copy_only=False).astype(dtype)
    assert got["v"].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got["v"], expected)
    np.testing.assert_array_equal(got["id"], np.arange(N))


TIMES = [
    # (stored time of day, cast dtype, expected per stored count)
    (pa.time64("us"), "timedelta64[us]", lambda c: c.astype("timedelta64[us]")),
    (pa.time64("us"), "timedelta64[ns]", lambda c: c.astype("timedelta64[us]").astype("timedelta64[ns]")),
    (pa.time64("ns"), "int64", lambda c: c),
    (pa.time32("ms"), "timedelta64[s]", lambda c: c.astype("timedelta64[ms]").astype("timedelta64[s]")),
    (pa.time32("ms"), "int32", lambda c: c.astype(np.int32)),
]


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
@pytest.mark.parametrize(("arrow_type", "dtype", "expect"), TIMES, ids=[f"{t[0]}-{t[1]}" for t in TIMES])
def test_a_time_of_day_is_delivered_as_the_time_since_midnight_or_its_count(tmp_path, fmt, arrow_type, dtype, expect):
    per_second = {"ms": 1000, "us": 10**6, "ns": 10**9}[arrow_type.unit]
    counts = (np.arange(N, dtype=np.int64) * 3607 % 86400) * per_second  # whole seconds: exact in any unit
    stored = pa.array(counts.astype(np.int32) if pa.types.is_time32(arrow_type) else counts).view(arrow_type)
    path = _write(fmt, tmp_path / "t", pa.table({"t": stored}))
    got = _read_all(path, cast={"t": dtype})["t"]
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, expect(counts))
    if dtype == "timedelta64[s]":  # 01:00:07 is 3607 s after midnight
        assert got[1] == np.timedelta64(3607, "s")


def test_a_tz_aware_timestamp_is_delivered_as_the_utc_instant_not_the_wall_clock(tmp_path):
    import pandas as pd

    local = pd.date_range("2024-03-31 00:00", periods=4, freq="h", tz="Europe/Paris")  # the DST night
    path = str(tmp_path / "paris.parquet")
    pd.DataFrame({"ts": local}).to_parquet(path)
    got = _read_all(path, cast={"ts": "datetime64[ns]"})["ts"]
    np.testing.assert_array_equal(got, local.tz_convert("UTC").tz_localize(None).to_numpy("datetime64[ns]"))
    assert got[0] == np.datetime64("2024-03-30T23:00")  # midnight in Paris (UTC+1) is 23:00 UTC the day before
    assert local[2].hour == 3 and got[2] == np.datetime64("2024-03-31T01:00")  # 03:00 local, now UTC+2
    assert np.diff(got).tolist() == [np.timedelta64(3600 * 10**9, "ns")] * 3  # instants an hour apart


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_a_ragged_list_is_cast_value_by_value_and_its_budget_estimate_follows(tmp_path, fmt):
    rows = [list(range(i % 5)) for i in range(N)]
    path = _write(fmt, tmp_path / "tokens", pa.table({"tok": pa.array(rows, pa.list_(pa.int64()))}))
    stored, cast = sb.open_dataset(path), sb.open_dataset(path, cast={"tok": "int32"})
    assert cast.columns["tok"] == sb.ColumnSpec(np.int32, (), "list")
    values = stored.column_row_nbytes("tok") - 16, cast.column_row_nbytes("tok") - 16  # 16: offset and length
    assert values[1] == -(-values[0] // 2)
    with sb.Loader(path, batch_size=N, shuffle=False, cast={"tok": "int32"}) as loader:
        batch = next(iter(loader))
    assert batch["tok"].values.dtype == np.int32
    assert [batch["tok"][i].tolist() for i in range(N)] == rows


def test_the_budget_counts_the_delivered_dtype(tmp_path):
    x = np.arange(N * 4, dtype=np.float64).reshape(N, 4)
    path = _write(
        "parquet",
        tmp_path / "x",
        pa.table({"x": pa.array(list(x), pa.list_(pa.float64(), 4)), "price": _decimals(2, _n(["1.25", "2.5"]))}),
    )
    ds = sb.open_dataset(path, cast={"x": "float32", "price": "float32"})
    assert ds.columns["x"] == (np.float32, (4,)) and ds.row_nbytes == 4 * 4 + 4
    loader = sb.Loader(path, batch_size=8, cast={"x": "float32", "price": "float32"}, memory_limit="1MiB")
    wide = sb.Loader(path, batch_size=8, cast={"x": "float64", "price": "float64"}, memory_limit="1MiB")
    assert loader.dataset.row_nbytes * 2 == wide.dataset.row_nbytes
    kinds = loader.budget.column_kinds(loader.dataset)
    assert kinds["x"].spec.dtype == np.float32 and kinds["price"].spec.dtype == np.float32  # the ring holds cast values


# --------------------------------------------------------------------------- the writers users have


def test_pandas_decimal_objects_and_tz_aware_datetimes(tmp_path):
    import pandas as pd

    prices = [decimal.Decimal(f"{i}.{i % 100:02d}") for i in range(N)]
    df = pd.DataFrame(
        {
            "id": np.arange(N),
            "price": prices,  # an object column of Decimal: pyarrow infers decimal128
            "ts": pd.date_range("2024-01-01", periods=N, freq="37min", tz="Europe/Paris"),
            "utc": pd.date_range("2024-06-01", periods=N, freq="s", tz="UTC"),
        }
    )
    path = str(tmp_path / "pandas.parquet")
    df.to_parquet(path, row_group_size=GROUP)
    table = pq.read_table(path)
    assert pa.types.is_decimal(table.schema.field("price").type) and table.schema.field("ts").type.tz == "Europe/Paris"
    with pytest.raises(sb.SchemaError, match=re.escape("cast={'price': 'float64'}")):
        sb.open_dataset(path)
    cast = {"price": "float64", "ts": "datetime64[ns]", "utc": "datetime64[us]"}
    got = _read_all(path, cast=cast)
    np.testing.assert_allclose(got["price"], [float(p) for p in prices], rtol=1e-15)
    for name, dtype in cast.items():
        expected = pc.cast(table.column(name), pa.from_numpy_dtype(np.dtype(dtype)), safe=True)
        np.testing.assert_array_equal(got[name], expected.to_numpy())
    np.testing.assert_array_equal(got["ts"], df["ts"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("M8[ns]"))


def test_duckdb_decimal_timestamptz_and_time(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    path = str(tmp_path / "duck.parquet")
    duckdb.sql(
        f"COPY (SELECT i AS id, (i * 1.125 - 7)::DECIMAL(18,3) AS price, "
        f"TIMESTAMPTZ '2024-03-31 01:30:00+00' + i * INTERVAL 1 HOUR AS ts, "
        f"TIME '12:00:00' + i * INTERVAL 1 SECOND AS t FROM range({N}) r(i)) TO '{path}' (FORMAT parquet)"
    )
    table = pq.read_table(path)
    assert str(table.schema.field("price").type) == "decimal128(18, 3)"
    assert table.schema.field("ts").type.tz == "UTC" and pa.types.is_time(table.schema.field("t").type)
    cast = {"price": "float64", "ts": "datetime64[us]", "t": "timedelta64[us]"}
    got = _read_all(path, cast=cast)
    np.testing.assert_array_equal(got["price"], np.arange(N) * 1.125 - 7)
    np.testing.assert_array_equal(got["price"], pc.cast(table.column("price"), pa.float64()).to_numpy())
    np.testing.assert_array_equal(got["ts"], pc.cast(table.column("ts"), pa.timestamp("us")).to_numpy())
    assert got["ts"][0] == np.datetime64("2024-03-31T01:30")
    np.testing.assert_array_equal(got["t"], (12 * 3600 + np.arange(N)) * np.timedelta64(1, "s"))
    exact = _read_all(path, cast={"price": "float64", "ts": "datetime64[s]", "t": "int64"})
    np.testing.assert_array_equal(exact["t"], (12 * 3600 + np.arange(N)) * 10**6)  # microseconds since midnight


# --------------------------------------------------------------------------- refused at construction


def test_a_cast_naming_an_unknown_column_is_an_unknown_column_error(tmp_path):
    path = _write("parquet", tmp_path / "a", pa.table({"x": np.arange(N)}))
    for call in (
        lambda: sb.open_dataset(path, cast={"nope": "int32"}),
        lambda: sb.Loader(path, batch_size=4, cast={"nope": "int32"}),
    ):
        with pytest.raises(sb.UnknownColumnError, match=r"cast: unknown column 'nope' in .*a\.parquet; columns: 'x'"):
            call()
    with pytest.raises(KeyError):
        sb.open_dataset(path, cast={"nope": "int32"})


IMPOSSIBLE = [
    # (stored array, cast dtype, words the message must hold besides path, column, type and dtype)
    (pa.array(_n([0, 1]), pa.timestamp("ms", tz="UTC")), "float32", "casts to datetime64[unit]"),
    (_decimals(2, _n(["1.25"])), "float16", "no cast from decimals to float16"),
    (pa.array(_n([0.5])), "bool", "not cast to bool"),
    (pa.array(_n([5]), pa.int64()), "float16", "cast to float32"),
    (pa.array(_n([5]), pa.int64()), "datetime64[ns]", "casts to an integer or float dtype"),
    (pa.array(_n([0]), pa.time64("us")), "float64", "casts to timedelta64[unit]"),
    (pa.array(_n(["a"])), "float64", "strings and binary are not cast"),
    (pa.array(_n(["a", "b"])).dictionary_encode(), "int64", "codes of a dictionary"),
    (pa.array(_n([{"p": 1}])), "float64", "has no cast to float64"),
    (pa.array(_n([[decimal.Decimal("1.5")]]), pa.list_(pa.decimal128(4, 1))), "float64", "a list column"),
    (pa.array(_n([0]), pa.timestamp("s")), "datetime64[D]", "units s, ms, us, ns"),
]


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
@pytest.mark.parametrize(("stored", "dtype", "words"), IMPOSSIBLE, ids=[f"{c[0].type}-{c[1]}" for c in IMPOSSIBLE])
def test_a_cast_the_column_cannot_reach_is_a_schema_error_at_construction(tmp_path, fmt, stored, dtype, words):
    path = _write(fmt, tmp_path / "c", pa.table({"id": np.arange(N), "v": stored}))
    as_stored = (pq.read_schema(path) if fmt == "parquet" else feather.read_table(path).schema).field("v").type
    for call in (
        lambda: sb.open_dataset(path, cast={"v": dtype}),
        lambda: sb.Loader(path, batch_size=4, cast={"v": dtype}),
    ):
        with pytest.raises(sb.SchemaError) as info:
            call()
        message = str(info.value)
        for word in (path, "'v'", f"Arrow type {as_stored}", f"cannot be cast to {np.dtype(dtype)}", words):
            assert word in message, (word, message)


@pytest.mark.parametrize(
    ("cast", "error", "words"),
    [
        ("float32", TypeError, "cast must be a dict"),
        ({"x": "object"}, sb.SchemaError, "is not a dtype cast= delivers"),
        ({"x": "complex128"}, sb.SchemaError, "is not a dtype cast= delivers"),
        ({"x": ">f4"}, sb.SchemaError, "not in native byte order"),
        ({"x": "datetime64"}, sb.SchemaError, "has no unit"),
        ({"x": "no-such-dtype"}, sb.SchemaError, "is not a NumPy dtype"),
        ({1: "float32"}, TypeError, "cast keys must be column names"),
    ],
    ids=["not-a-dict", "object", "complex", "big-endian", "no-unit", "garbage", "non-str-key"],
)
def test_a_cast_argument_that_is_not_a_dict_of_deliverable_dtypes_is_refused(tmp_path, cast, error, words):
    path = _write("parquet", tmp_path / "a", pa.table({"x": np.arange(N)}))
    with pytest.raises(error, match=re.escape(words)):
        sb.open_dataset(path, cast=cast)


def _bad_at_25(good: Any, bad: Any) -> list[Any]:
    """``N`` values, all ``good`` but row 25 (row group 2, row 5 in it)."""
    values = [good] * N
    values[25] = bad
    return values


OVERFLOWS = [
    # (stored values, one of which a cast cannot take; cast dtype; Arrow's words)
    (pa.array(_bad_at_25(3, 2**40), pa.int64()), "int32", "not in range"),
    (pa.array(_bad_at_25(2.5, 1e300)), "float32", "out of the range of the float dtype"),
    (_decimals(2, _bad_at_25("3.00", "99.50")), "int32", "data loss"),
    (pa.array(_bad_at_25(2.0, np.nan)), "int64", "truncated"),
    (pa.array(_bad_at_25(1, 10**11), pa.timestamp("s", tz="UTC")), "datetime64[ns]", "out of bounds"),
]
OVERFLOW_IDS = ["int64-int32", "float64-float32", "decimal-fraction-int32", "nan-int64", "ts-s-ns"]


@pytest.mark.parametrize(("stored", "dtype", "words"), OVERFLOWS, ids=OVERFLOW_IDS)
def test_a_value_the_cast_cannot_take_is_refused_at_open_from_the_footer_statistics(tmp_path, stored, dtype, words):
    path = _write("parquet", tmp_path / "o", pa.table({"id": np.arange(N), "v": stored}))
    if dtype == "int64" and words == "truncated":  # Parquet statistics leave NaN out: found when read
        ds = sb.open_dataset(path, cast={"v": dtype})
        with pytest.raises(sb.CastError, match=r"rows 25:26 \(row group 2\)"):
            _read_all(ds)
        return
    for call in (
        lambda: sb.open_dataset(path, cast={"v": dtype}),
        lambda: sb.Loader(path, batch_size=4, cast={"v": dtype}),
    ):
        with pytest.raises(sb.CastError) as info:
            call()
        message = str(info.value)
        for word in (f"{path} row group 2", "'v'", "footer statistics", str(np.dtype(dtype)), words):
            assert word in message, (word, message)
    assert isinstance(info.value, sb.SchemaError) and isinstance(info.value, ValueError)
    sb.open_dataset(path, columns=["id"], cast={"v": dtype})  # only a requested column is refused
    sb.open_dataset(path, exclude=["v"], cast={"v": dtype})


@pytest.mark.parametrize("fmt", ["parquet-no-statistics", "parquet-streamed", "arrow"])
@pytest.mark.parametrize(("stored", "dtype", "words"), OVERFLOWS, ids=OVERFLOW_IDS)
def test_without_statistics_the_read_names_the_row_group_row_and_value(tmp_path, fmt, stored, dtype, words):
    table = pa.table({"id": np.arange(N), "v": stored})
    if fmt == "parquet-streamed":  # one row group far larger than a piece: read through a stream, in slices
        path = str(tmp_path / "big.parquet")
        big = pa.concat_tables([table] + [table.slice(0, 20)] * 20_000)  # rows 0:20 are good
        pq.write_table(big, path, row_group_size=len(big), write_statistics=False)
        where = f"{path} rows 25:26 (row group 0)"
        options: dict[str, Any] = {"memory_limit": "8MiB", "batch_size": 256}
        assert sb.Loader(path, cast={"v": dtype}, shuffle=False, **options).budget.stream_bytes > 0
    else:
        path = _write(fmt.split("-")[0], tmp_path / "o", table, statistics=False)
        where = f"{path} rows 25:26 (row group 2)" if fmt.startswith("parquet") else f"{path} row 25"
        options = {"batch_size": 4}
    loader = sb.Loader(path, cast={"v": dtype}, shuffle=False, **options)  # nothing at open tells
    with pytest.raises(sb.CastError) as info:
        for _ in loader:
            pass
    message = str(info.value)
    value = repr(stored[25].as_py())
    for word in (where, "'v'", f"value {value}", f"to {np.dtype(dtype)}", words):
        assert word in message, (word, message)


# --------------------------------------------------------------------------- how it composes


def test_fill_nulls_fills_with_a_value_of_the_delivered_dtype(tmp_path):
    stored = pa.array([decimal.Decimal("1.50"), None] * (N // 2) + [None], pa.decimal128(5, 2))
    path = _write("parquet", tmp_path / "n", pa.table({"v": stored}))
    with pytest.raises(sb.SchemaError, match=r"has .* nulls"):
        sb.open_dataset(path, cast={"v": "float32"})
    got = _read_all(path, cast={"v": "float32"}, fill_nulls={"v": -1.0})["v"]
    assert got.dtype == np.float32 and got[:4].tolist() == [1.5, -1.0, 1.5, -1.0]


def test_an_opened_dataset_is_cast_again_from_its_columns_as_stored(tmp_path):
    path = _write("parquet", tmp_path / "a", pa.table({"x": np.arange(N), "p": _decimals(1, _n(["2.5"]))}))
    first = sb.open_dataset(path, cast={"p": "float32", "x": "int32"})
    again = sb.open_dataset(first, cast={"p": "float64"})
    assert again.columns == {"x": (np.int64, ()), "p": (np.float64, ())} and again.cast == {"p": np.float64}
    assert sb.open_dataset(first).columns == first.columns  # cast=None keeps the dataset's own
    assert list(first.columns) == ["x", "p"]  # schema order, the cast column where it is stored
    with pytest.raises(sb.SchemaError, match="decimals have no numpy equivalent"):
        sb.open_dataset(first, cast={})


@pytest.mark.parametrize("fmt", ["npy", "zarr"])
def test_npy_and_zarr_columns_are_not_cast_and_say_why(tmp_path, fmt):
    from tests.conftest import write_dataset

    path = write_dataset(fmt, tmp_path, {"x": np.arange(N, dtype=np.float64)}, chunk_rows=GROUP)
    with pytest.raises(sb.SchemaError) as info:
        sb.Loader(path, batch_size=4, cast={"x": "float32"})
    message = str(info.value)
    for word in ("'x'", "dtype float64", "cannot be cast to float32", "Parquet and Arrow IPC", "store the column as"):
        assert word in message, (word, message)
    assert _read_all(path, cast={"x": "float64"})["x"].tolist() == list(range(N))  # its own dtype: nothing to do


def test_the_thread_count_does_not_change_cast_batches(tmp_path):
    path = _write("parquet", tmp_path / "a", pa.table({"id": np.arange(N), "p": _decimals(3, _n(["1.125", "2"]))}))
    runs = []
    for threads in (1, 3):
        with sb.Loader(path, batch_size=5, cast={"p": "float32"}, num_threads=threads, seed=4) as loader:
            runs.append([(b["id"].tolist(), b["p"].tolist()) for b in loader])
    assert runs[0] == runs[1]


# --------------------------------------------------------------------------- resume


def test_a_state_resumes_under_the_same_cast_and_refuses_another(tmp_path):
    path = _write("parquet", tmp_path / "a", pa.table({"id": np.arange(N), "p": _decimals(2, _n(["1.25", "7"]))}))
    options = {"batch_size": 4, "seed": 1, "memory_limit": "1MiB"}
    with sb.Loader(path, cast={"p": "float64"}, **options) as loader:
        whole = [b["id"].tolist() for b in loader]
        loader.set_epoch(0)
        it = iter(loader)
        head = [next(it)["id"].tolist() for _ in range(3)]
        state = json.loads(json.dumps(loader.state_dict()))
        it.close()
    assert head == whole[:3]
    with sb.Loader(path, cast={"p": "float64"}, **options) as resumed:
        resumed.load_state_dict(state)
        assert [b["id"].tolist() for b in resumed] == whole[3:]
    with (
        sb.Loader(path, cast={"p": "float32"}, **options) as other,
        pytest.raises(sb.StateMismatchError, match=r"dataset: saved .*cast="),
    ):
        other.load_state_dict(state)


# --------------------------------------------------------------------------- convert and info


def test_convert_cast_writes_the_cast_dtype_and_records_it(tmp_path):
    import pandas as pd

    src = str(tmp_path / "src.parquet")
    pd.DataFrame(
        {
            "id": np.arange(N),
            "price": [decimal.Decimal(f"{i}.5") for i in range(N)],
            "ts": pd.date_range("2024-01-01", periods=N, freq="h", tz="Europe/Paris"),
            "x": np.linspace(0, 1, N),
        }
    ).to_parquet(src, row_group_size=GROUP)
    with pytest.raises(sb.SchemaError, match="decimals have no numpy equivalent"):
        convert([src], str(tmp_path / "refused"), "parquet", progress=False)
    dest = str(tmp_path / "out")
    argv = [
        "convert",
        src,
        dest,
        "--format",
        "parquet",
        "--quiet",
        "--cast",
        "price=float64",
        "--cast",
        "ts=datetime64[ns]",
        "--cast",
        "x=float32",
    ]
    assert main(argv) == 0
    ds = sb.open_dataset(dest)
    assert ds.columns == {
        "id": (np.int64, ()),
        "price": (np.float64, ()),
        "ts": (np.dtype("M8[ns]"), ()),
        "x": (np.float32, ()),
    }
    got = _read_all(dest)
    expected = _read_all(src, cast={"price": "float64", "ts": "datetime64[ns]", "x": "float32"})
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    with open(os.path.join(dest, "manifest.json")) as f:
        params = json.load(f)["params"]
    assert params["cast"] == {"price": "float64", "ts": "datetime64[ns]", "x": "float32"}
    npy = str(tmp_path / "npy")
    result = convert(
        [src], npy, "npy", cast={"price": np.float32, "ts": "datetime64[s]"}, columns=["price", "ts"], progress=False
    )
    assert result.rows == N and sb.open_dataset(npy).columns["price"] == (np.float32, ())


def test_convert_cast_refuses_an_overflow_and_a_csv_input_and_combines_with_exclude(tmp_path, capsys):
    src = _write(
        "parquet",
        tmp_path / "src",
        pa.table({"id": np.arange(N), "big": np.arange(N) * 2**40, "p": _decimals(1, _n(["0.5"]))}),
    )
    assert (
        main(
            [
                "convert",
                src,
                str(tmp_path / "o1"),
                "--format",
                "npy",
                "--quiet",
                "--cast",
                "big=int32",
                "--cast",
                "p=float32",
            ]
        )
        == 1
    )
    assert "row group 0: column 'big'" in capsys.readouterr().err
    assert (
        main(
            [
                "convert",
                src,
                str(tmp_path / "o2"),
                "--format",
                "npy",
                "--quiet",
                "--exclude",
                "big",
                "--cast",
                "p=float32",
            ]
        )
        == 0
    )
    assert sb.open_dataset(str(tmp_path / "o2")).columns == {"id": (np.int64, ()), "p": (np.float32, ())}
    csv = tmp_path / "a.csv"
    csv.write_text("a,b\n1,2.5\n3,4.5\n")
    assert main(["convert", str(csv), str(tmp_path / "o3"), "--format", "npy", "--quiet", "--cast", "b=float32"]) == 1
    assert "--cast applies to Parquet and Arrow IPC inputs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", src, str(tmp_path / "o4"), "--format", "npy", "--cast", "p"])
    assert "--cast must be COL=DTYPE" in capsys.readouterr().err


def test_info_names_the_cast_a_column_needs_and_shows_it_applied(tmp_path, capsys):
    path = _write(
        "parquet",
        tmp_path / "a",
        pa.table(
            {
                "id": np.arange(N),
                "p": _decimals(3, _n(["1.125"])),
                "ts": pa.array(_n([0]), pa.timestamp("us", tz="UTC")),
                "t": pa.array(_n([0]), pa.time64("ns")),
            }
        ),
    )
    assert main(["info", path]) == 0
    out = capsys.readouterr().out
    for hint in (
        "cast={'p': 'float64'}",
        "--cast p=float64",
        "cast={'ts': 'datetime64[us]'}",
        "the instant in UTC",
        "cast={'t': 'timedelta64[ns]'}",
    ):
        assert hint in out, (hint, out)
    assert main(["info", path, "--cast", "p=float32", "--cast", "ts=datetime64[us]", "--cast", "t=int64"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"p\s+float32\s+scalar\s+\(cast\)", out) and "cannot be read" not in out
    assert "(8 per row" not in out and "(28 per row)" in out
    assert main(["info", path, "--cast", "p=int8"]) == 0  # a value it cannot take: listed, not fatal
    assert "row group 0: column 'p' holds values" in capsys.readouterr().out


def test_a_timestamp_example_datetime_module_is_exact(tmp_path):
    """``datetime.time`` objects (pandas ``object`` columns of times) become time64[us]."""
    import pandas as pd

    path = str(tmp_path / "times.parquet")
    pd.DataFrame({"t": [datetime.time(9, 30, i % 60, 250) for i in range(N)]}).to_parquet(path)
    got = _read_all(path, cast={"t": "timedelta64[us]"})["t"]
    assert got[3] == np.timedelta64((9 * 3600 + 30 * 60 + 3) * 10**6 + 250, "us")
