"""``streambatch convert`` and ``streambatch info`` over columns as other tools
write them: every readable column is converted (fixed-length lists into the
output's tensor layout), what cannot be read or stored is refused by name, and
``--exclude`` leaves columns out; ``info`` lists unreadable columns instead of
failing (issue 11)."""

from __future__ import annotations

import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streambatch as sb
from streambatch import cli
from streambatch.convert import convert
from streambatch.info import describe, format_info

N = 150
OUTPUTS = ("parquet", "npy", "zarr")


def duckdb_file(tmp_path) -> str:
    import duckdb

    path = str(tmp_path / "duck.parquet")
    con = duckdb.connect()
    try:
        con.execute(
            f"COPY (SELECT i::BIGINT AS id, [i, i + 0.5, -i]::FLOAT[3] AS v FROM range({N}) t(i) ORDER BY i) "
            f"TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 40)"
        )
    finally:
        con.close()
    return path


def pandas_file(tmp_path) -> str:
    import pandas as pd

    score = np.arange(N, dtype=np.float64)
    score[7] = np.nan
    df = pd.DataFrame(
        {
            "id": np.arange(N),
            "emb": list(np.arange(N * 4, dtype=np.float32).reshape(N, 4)),
            "text": [f"t{i}" for i in range(N)],
            "score": score,
        }
    )
    path = str(tmp_path / "pandas.parquet")
    df.to_parquet(path, row_group_size=64)
    return path


def read_back(dest: str) -> dict[str, np.ndarray]:
    with sb.Loader(dest, batch_size=N, shuffle=False) as loader:
        (batch,) = list(loader)
    return batch


@pytest.mark.parametrize("shard_format", OUTPUTS)
def test_a_duckdb_fixed_length_list_is_converted_into_every_output_format(tmp_path, shard_format):
    src = duckdb_file(tmp_path)
    dest = str(tmp_path / f"out-{shard_format}")
    convert([src], dest, shard_format, progress=False)
    ds = sb.open_dataset(dest)
    assert ds.columns == {"id": (np.int64, ()), "v": (np.float32, (3,))}
    got = read_back(dest)
    i = np.arange(N, dtype=np.float32)
    np.testing.assert_array_equal(got["id"], np.arange(N))
    np.testing.assert_array_equal(got["v"], np.stack([i, i + 0.5, -i], axis=1))


def test_convert_stores_strings_in_parquet_refuses_them_by_name_in_npy_and_exclude_leaves_them_out(tmp_path, capsys):
    src = pandas_file(tmp_path)
    dest = str(tmp_path / "out")
    assert cli.main(["convert", src, dest, "--format", "parquet", "--quiet", "--exclude", "score"]) == 0
    got = read_back(dest)
    assert sorted(got) == ["emb", "id", "text"]
    assert isinstance(got["text"].dtype, np.dtypes.StringDType) and got["text"].tolist() == [f"t{i}" for i in range(N)]
    npy = str(tmp_path / "out-npy")
    assert cli.main(["convert", src, npy, "--format", "npy", "--quiet", "--exclude", "score"]) == 1
    err = capsys.readouterr().err  # npy output has no variable-length rows
    assert "'text'" in err and "variable-length (str)" in err and "--exclude text" in err and "--format parquet" in err
    dest = str(tmp_path / "out-excluded")  # (a refused conversion leaves its journal in the first DEST)
    assert cli.main(["convert", src, dest, "--format", "npy", "--quiet", "--exclude", "text,score"]) == 0
    got = read_back(dest)
    assert sorted(got) == ["emb", "id"]
    np.testing.assert_array_equal(got["emb"], np.arange(N * 4, dtype=np.float32).reshape(N, 4))
    assert cli.main(["convert", src, str(tmp_path / "o2"), "--format", "npy", "--exclude", "txt"]) == 1
    assert "unknown column 'txt'" in capsys.readouterr().err


def test_convert_refuses_nulls_by_name(tmp_path, capsys):
    src = pandas_file(tmp_path)
    code = cli.main(["convert", src, str(tmp_path / "o"), "--format", "npy", "--quiet", "--exclude", "text"])
    assert code == 1
    err = capsys.readouterr().err
    assert "column 'score' row group 0 has 1 nulls" in err


@pytest.mark.parametrize(
    ("shard_format", "values", "words"),
    [("zarr", np.arange(N, dtype=">f4"), ["'x'", ">f4", "native byte order", "Parquet or npy"])],
    ids=["big-endian-to-zarr"],
)
def test_what_an_output_format_cannot_store_is_refused_by_name(tmp_path, shard_format, values, words):
    np.save(tmp_path / "x.npy", values)
    with pytest.raises(sb.SchemaError) as info:
        convert([str(tmp_path / "x.npy")], str(tmp_path / "out"), shard_format, progress=False)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize(
    "values",
    [
        np.arange(N, dtype=">f4"),
        np.array([f"s{i}" for i in range(N)], dtype="U4"),
        np.arange(N).astype("datetime64[ms]"),
        (np.arange(N) * 1j).astype(np.complex64),
    ],
    ids=["big-endian", "fixed-width-str", "datetime", "complex"],
)
@pytest.mark.parametrize("shard_format", ["parquet", "npy"])
def test_fixed_size_dtypes_round_trip_through_parquet_and_npy_output(tmp_path, values, shard_format):
    np.save(tmp_path / "x.npy", values)
    dest = str(tmp_path / "out")
    convert([str(tmp_path / "x.npy")], dest, shard_format, progress=False)
    got = read_back(dest)["x"]
    assert got.tolist() == values.tolist()


def test_info_lists_unreadable_columns_with_the_reason_instead_of_failing(tmp_path, capsys):
    src = pandas_file(tmp_path)
    info = describe(src)
    assert set(info["columns"]) == {"id", "emb", "text"}  # strings are read (as StringDType)
    assert set(info["unreadable"]) == {"score"} and "nulls" in info["unreadable"]["score"]
    text = format_info(info)
    assert "cannot be read (1;" in text and "score" in text
    assert cli.main(["info", src]) == 0
    assert "score" in capsys.readouterr().out


def test_info_shows_xarray_coordinates_as_not_columns(tmp_path):
    import xarray as xr

    path = str(tmp_path / "x.zarr")
    data = xr.Dataset({"x": (("n", "f"), np.zeros((5, 2)))}, coords={"f": [10, 20]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data.to_zarr(path, mode="w")
    info = describe(path)
    assert set(info["columns"]) == {"x"}
    assert "not the row dimension 'n'" in info["not_columns"]["f"]
    assert "not columns (1;" in format_info(info)


def test_a_convert_output_still_fails_on_a_missing_zarr_chunk(tmp_path):
    import os

    pq.write_table(pa.table({"x": np.zeros(N, np.int64)}), tmp_path / "zeros.parquet")  # all fill value
    dest = str(tmp_path / "out")
    convert([str(tmp_path / "zeros.parquet")], dest, "zarr", chunk_rows=50, progress=False)
    os.remove(os.path.join(dest, "part-00000.zarr", "x", "c", "1"))
    with pytest.raises(sb.SourceNotFoundError, match=r"x/c/1"):  # the manifest lists the chunk file
        sb.open_dataset(dest)
