"""``streambatch convert`` over variable-length columns -- strings, binary, ragged
lists (token ids) -- as pandas, polars, DuckDB and pyarrow write them, and as Arrow
IPC: Parquet output stores them (``large_string``, ``large_binary``,
``large_list<T>``), value-equal to the source, every row exactly once, with and
without ``--shuffle``, over several shards; the Loader reads the output back
(strings as ``StringDType``, lists as ``Ragged``); row groups are cut by bytes; a
row too large for the memory limit and an output that cannot store a column are
refused by name; ``--resume`` after SIGKILL gives the same bytes; ``info`` shows
the columns (issue 11, item 8).

(Test ids avoid the word "large": the quick suite runs with ``-k "not large"``.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pyarrow.parquet as pq
import pytest

import streambatch as sb
from streambatch import cli
from streambatch.convert import convert
from streambatch.info import describe, format_info
from streambatch.sources import ColumnSpec
from streambatch.writers import ParquetWriter

from .conftest import digest_tree
from .convert_kill import run_killed, was_killed

N = 3000
#: small enough that --shuffle makes many buckets and several read blocks
MEMORY = "256KiB"


def _text(i: int) -> str:
    return "" if i % 50 == 0 else f"row {i} é✓ " + "x" * (i % 13)


def _tokens(i: int) -> list[int]:
    return [1000 * i + k for k in range((i * 7919) % 61)]  # 0..60 values, 0 for i % 61 == 0


def _blob(i: int) -> bytes:
    return bytes([i % 256]) * (i % 5) + b"\x00" * (i % 3)  # trailing zero bytes are kept


@dataclass
class Source:
    path: str
    kinds: dict[str, str]  # column -> ColumnSpec.kind


def pandas_file(tmp_path) -> Source:
    import pandas as pd

    frame = pd.DataFrame(
        {
            "id": np.arange(N),
            "text": [_text(i) for i in range(N)],
            "tokens": [np.asarray(_tokens(i), np.int32) for i in range(N)],  # an ndarray per row
            "blob": [_blob(i) for i in range(N)],
        }
    )
    path = str(tmp_path / "pandas.parquet")
    frame.to_parquet(path, row_group_size=700)
    return Source(path, {"id": "fixed", "text": "str", "tokens": "list", "blob": "bytes"})


def polars_file(tmp_path) -> Source:
    import polars as pl

    frame = pl.DataFrame(
        {
            "id": pl.Series(range(N), dtype=pl.Int64),
            "text": pl.Series([_text(i) for i in range(N)], dtype=pl.Utf8),
            "tokens": pl.Series([_tokens(i) for i in range(N)], dtype=pl.List(pl.Int32)),
            "blob": pl.Series([_blob(i) for i in range(N)], dtype=pl.Binary),
        }
    )
    path = str(tmp_path / "polars.parquet")
    frame.write_parquet(path, row_group_size=1000)
    return Source(path, {"id": "fixed", "text": "str", "tokens": "list", "blob": "bytes"})


def duckdb_file(tmp_path) -> Source:
    import duckdb

    path = str(tmp_path / "duck.parquet")
    con = duckdb.connect()
    try:  # VARCHAR and INTEGER[] of varying length
        con.execute(
            "COPY (SELECT i::BIGINT AS id, 'row ' || i || repeat('é', (i % 9)::INTEGER) AS text, "
            "[(x + 1000 * i)::INTEGER for x in range(i % 7)]::INTEGER[] AS tokens "
            f"FROM range({N}) t(i) ORDER BY i) TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 512)"
        )
    finally:
        con.close()
    return Source(path, {"id": "fixed", "text": "str", "tokens": "list"})


def _arrow_table() -> pa.Table:
    return pa.table(
        {
            "id": pa.array(np.arange(N), pa.int64()),
            "text": pa.array([_text(i) for i in range(N)], pa.large_string()),
            "tokens": pa.array([[v / 2 for v in _tokens(i)] for i in range(N)], pa.large_list(pa.float64())),
            "mask": pa.array([[k % 3 == 0 for k in range(i % 5)] for i in range(N)], pa.list_(pa.bool_())),
            "blob": pa.array([_blob(i) for i in range(N)], pa.large_binary()),
            "emb": pa.array([[i, -i] for i in range(N)], pa.list_(pa.float32(), 2)),  # fixed-size beside
        }
    )


_ARROW_KINDS = {"id": "fixed", "text": "str", "tokens": "list", "mask": "list", "blob": "bytes", "emb": "fixed"}


def pyarrow_file(tmp_path) -> Source:
    path = str(tmp_path / "pyarrow.parquet")
    pq.write_table(_arrow_table(), path, row_group_size=800)
    return Source(path, _ARROW_KINDS)


def arrow_ipc_file(tmp_path) -> Source:
    path = str(tmp_path / "data.arrow")
    feather.write_feather(_arrow_table(), path, compression="uncompressed", chunksize=600)
    return Source(path, _ARROW_KINDS)


WRITERS: list[Callable[..., Source]] = [pandas_file, polars_file, duckdb_file, pyarrow_file, arrow_ipc_file]


@pytest.fixture(scope="module", params=WRITERS, ids=[w.__name__ for w in WRITERS])
def source(request, tmp_path_factory) -> Source:
    return request.param(tmp_path_factory.mktemp(request.param.__name__))


def _source_rows(path: str) -> dict[str, list]:
    """Every column of the source as Python values, in row order (pyarrow's reading)."""
    table = feather.read_table(path) if path.endswith(".arrow") else pq.read_table(path)
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _python(value) -> list:
    """A batch column as Python values per row (Ragged rows as lists)."""
    return value.tolist()


def _read(dest: str, **kw) -> list[dict]:
    with sb.Loader(dest, batch_size=256, **{"shuffle": False, **kw}) as loader:
        return list(loader)


def _check(batches: list[dict], expected: dict[str, list], kinds: dict[str, str]) -> list[int]:
    """Every row of every batch equals the source row its ``id`` names; returns the ids."""
    ids: list[int] = []
    for batch in batches:
        assert set(batch) == set(expected)
        rows = batch["id"].tolist()
        for name, value in batch.items():
            if kinds[name] == "list":
                assert isinstance(value, sb.Ragged) and value.offsets.dtype == np.int64
            elif kinds[name] == "str":
                assert isinstance(value.dtype, np.dtypes.StringDType)
            elif kinds[name] == "bytes":
                assert value.dtype == object
            assert _python(value) == [expected[name][i] for i in rows], name
        ids.extend(rows)
    return ids


def _convert(src: str, dest: str, **kw) -> dict:
    convert([src], dest, "parquet", **{"rows_per_shard": 1100, "memory_limit": MEMORY, "progress": False, **kw})
    with open(os.path.join(dest, "manifest.json")) as f:
        return json.load(f)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_parquet_output_holds_every_row_once_value_equal_to_the_source(source, tmp_path, shuffle):
    dest = str(tmp_path / "out")
    manifest = _convert(source.path, dest, shuffle=shuffle, seed=3)
    assert len(manifest["shards"]) == 3
    kinds = {c["name"]: c.get("kind", "fixed") for c in manifest["schema"]["columns"]}
    assert kinds == source.kinds
    assert sb.open_dataset(dest).columns == sb.open_dataset(source.path).columns
    schema = pq.read_schema(os.path.join(dest, "part-00000.parquet"))
    for name, kind in source.kinds.items():
        if kind != "fixed":
            check = {
                "str": pa.types.is_large_string,
                "bytes": pa.types.is_large_binary,
                "list": pa.types.is_large_list,
            }[kind]
            assert check(schema.field(name).type), (name, schema.field(name).type)
    ids = _check(_read(dest), _source_rows(source.path), source.kinds)
    assert sorted(ids) == list(range(N))
    assert (ids == list(range(N))) is not shuffle  # --shuffle: a permutation on disk


def test_the_loader_shuffles_the_output_and_pads_its_lists(tmp_path):
    src = pyarrow_file(tmp_path)
    dest = str(tmp_path / "out")
    _convert(src.path, dest)
    expected = _source_rows(src.path)
    ids = _check(_read(dest, shuffle=True, seed=1, memory_limit="8MiB"), expected, src.kinds)
    assert sorted(ids) == list(range(N)) and ids != list(range(N))
    (batch, *_) = _read(dest, pad={"tokens": (8, -1.0)})
    for k, i in enumerate(batch["id"].tolist()):
        row = expected["tokens"][i][:8]
        assert batch["tokens"][k, : len(row)].tolist() == row and batch["tokens_length"][k] == len(row)


def test_a_cast_list_column_is_written_at_the_cast_dtype(tmp_path):
    src = duckdb_file(tmp_path)
    dest = str(tmp_path / "out")
    _convert(src.path, dest, cast={"tokens": "int64"})
    assert sb.open_dataset(dest).columns["tokens"] == ColumnSpec(np.int64, (), "list")
    batches = _read(dest)
    assert all(b["tokens"].values.dtype == np.int64 for b in batches)
    _check(batches, _source_rows(src.path), src.kinds)


# --------------------------------------------------------------------------- row groups


def _row_bytes(tokens: pa.Array) -> np.ndarray:
    """Bytes of each row as convert's row groups count them: id, and the list's values plus its offset."""
    lengths = np.diff(tokens.offsets.to_numpy())
    return 8 + 8 + 4 * lengths


def test_row_groups_of_variable_rows_are_cut_by_their_bytes(tmp_path):
    # short rows, then rows 100 times longer: a row count from any estimate would be wrong for one of them
    lengths = np.where(np.arange(N) < N // 2, 8, 800) + np.arange(N) % 2
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.arange(int(offsets[-1]), dtype=np.int32)))
    src = str(tmp_path / "steps.parquet")
    pq.write_table(pa.table({"id": np.arange(N), "tokens": tokens}), src, row_group_size=N)
    dest = str(tmp_path / "out")
    manifest = _convert(src, dest, rows_per_shard=N)
    target = manifest["params"]["chunk_bytes"]
    assert target == 128 << 10
    units = manifest["shards"][0]["unit_rows"]
    metadata = pq.read_metadata(os.path.join(dest, "part-00000.parquet"))
    assert units == [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]  # the manifest agrees
    sizes = _row_bytes(tokens)
    bounds = np.concatenate([[0], np.cumsum(units)])
    for g, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        group = int(sizes[a:b].sum())
        if g < len(units) - 1:  # each group ends at the first row that brings it to the target
            assert group >= target and group - int(sizes[b - 1]) < target, (g, group)
    assert units[0] > 10 * units[-2]  # short rows: many per group; long rows: few
    means = [-(-int(lengths[a:b].sum()) // int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]
    assert manifest["shards"][0]["values_per_row"] == {"tokens": max(means)}  # the largest group mean


def test_chunk_rows_when_given_fixes_the_row_groups_of_variable_rows(tmp_path):
    src = pyarrow_file(tmp_path)
    manifest = _convert(src.path, str(tmp_path / "out"), chunk_rows=100)
    assert "chunk_bytes" not in manifest["params"]
    assert all(set(s["unit_rows"]) == {100} for s in manifest["shards"])


@pytest.mark.parametrize("row_group_bytes", [None, 2000], ids=["by-rows", "by-bytes"])
def test_row_groups_do_not_depend_on_how_rows_are_split_into_blocks(tmp_path, row_group_bytes):
    rows = _arrow_table().select(["id", "text", "tokens", "blob"])
    specs = {n: sb.open_dataset(pyarrow_file(tmp_path).path).columns[n] for n in rows.column_names}
    with sb.Loader(pyarrow_file(tmp_path).path, batch_size=N, shuffle=False, columns=list(specs)) as loader:
        (whole,) = list(loader)
    digests = []
    for block in (N, 7, 1000, 1):
        path = str(tmp_path / f"b{block}.parquet")
        writer = ParquetWriter(path, specs, row_group_rows=256, row_group_bytes=row_group_bytes)
        for a in range(0, N, block):
            writer.write({n: v[a : a + block] for n, v in whole.items()})
        writer.close()
        digests.append(digest_tree(tmp_path)[f"b{block}.parquet"])
    assert len(set(digests)) == 1
    assert pq.read_table(path)["text"].to_pylist() == rows["text"].to_pylist()


# --------------------------------------------------------------------------- refusals, memory


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_zarr_output_stores_strings_and_the_loader_reads_them_back(tmp_path, shuffle):
    src = pyarrow_file(tmp_path).path
    dest = str(tmp_path / "out")
    convert([src], dest, "zarr", columns=["id", "text"], shuffle=shuffle, chunk_rows=64, progress=False)
    expected = dict(zip(pq.read_table(src)["id"].to_pylist(), pq.read_table(src)["text"].to_pylist()))
    with sb.Loader(dest, batch_size=50, shuffle=False) as loader:
        assert loader.columns["text"].kind == "str"
        batches = list(loader)
    ids = np.concatenate([b["id"] for b in batches])
    texts = np.concatenate([b["text"] for b in batches])
    assert sorted(ids.tolist()) == sorted(expected)
    assert texts.dtype == np.dtypes.StringDType()
    assert [str(t) for t in texts] == [expected[i] for i in ids.tolist()]


@pytest.mark.parametrize(
    ("shard_format", "column", "reason"),
    [
        ("npy", "text", "a .npy file holds fixed-size rows only"),
        ("npy", "tokens", "a .npy file holds fixed-size rows only"),
        ("npy", "blob", "a .npy file holds fixed-size rows only"),
        ("zarr", "tokens", "Zarr has no variable-length list data type"),
        ("zarr", "blob", "Zarr has no variable-length binary data type"),
    ],
)
def test_an_output_that_cannot_store_a_column_refuses_it_by_name_with_the_remedy(
    tmp_path, shard_format, column, reason
):
    src = pyarrow_file(tmp_path).path
    dest = str(tmp_path / "out")
    with pytest.raises(sb.SchemaError) as info:
        convert([src], dest, shard_format, columns=["id", column], shuffle=True, progress=False)
    message = str(info.value)
    for word in [f"column {column!r}", reason, f"--exclude {column}", "--format parquet"]:
        assert word in message, (word, message)
    assert not os.path.exists(dest)  # refused before anything was written
    convert([src], dest, shard_format, columns=["id", "emb"], progress=False)  # the fixed-size columns convert


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
@pytest.mark.parametrize("writer", ["parquet", "arrow"])
def test_a_row_too_large_for_the_memory_limit_is_an_error_naming_file_column_and_row(tmp_path, shuffle, writer):
    lengths = np.full(4000, 10)
    lengths[2345] = 600_000  # 2.4 MB of int32 in one row; 8 MiB allows a row 1 MiB
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.zeros(int(offsets[-1]), np.int32)))
    table = pa.table({"id": np.arange(4000), "tokens": tokens})
    path = str(tmp_path / f"huge-row.{writer}")
    if writer == "parquet":
        pq.write_table(table, path, row_group_size=1000)
    else:
        feather.write_feather(table, path, compression="uncompressed", chunksize=1000)
    with pytest.raises(sb.BudgetError) as info:
        convert([path], str(tmp_path / "out"), "parquet", shuffle=shuffle, memory_limit="8MiB", progress=False)
    for word in [path, "column 'tokens'", "row 2345", "2,400,000 bytes", "memory_limit"]:
        assert word in str(info.value), (word, str(info.value))


def test_the_loader_budgets_the_output_by_the_bytes_the_manifest_records(tmp_path):
    src = pandas_file(tmp_path)
    dest = str(tmp_path / "out")
    manifest = _convert(src.path, dest)
    recorded = [s["values_per_row"] for s in manifest["shards"]]
    ds = sb.open_dataset(dest)
    # no footer is read: the estimate is the manifest's largest per-row mean (int32 tokens, string bytes)
    assert ds.column_row_nbytes("tokens") == 16 + 4 * max(r["tokens"] for r in recorded)
    assert ds.column_row_nbytes("text") == 16 + max(r["text"] for r in recorded)
    mean_tokens = np.mean([len(_tokens(i)) for i in range(N)])
    assert ds.column_row_nbytes("tokens") >= 16 + 4 * mean_tokens


# --------------------------------------------------------------------------- resume, workers, info


@pytest.mark.parametrize(
    ("point", "n", "shuffle"),
    [("between_shards", 2, False), ("mid_shard", 2, False), ("between_shards", 2, True), ("pass1_block", 3, True)],
)
def test_a_killed_conversion_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path, point, n, shuffle):
    src = polars_file(tmp_path).path
    opts = dict(rows_per_shard=700, memory_limit=MEMORY, shuffle=shuffle, seed=5)
    clean, dest = str(tmp_path / "clean"), str(tmp_path / "dest")
    convert([src], clean, "parquet", progress=False, **opts)
    args = [
        "convert",
        src,
        dest,
        "--format",
        "parquet",
        "--rows-per-shard",
        "700",
        "--memory-limit",
        MEMORY,
        "--seed",
        "5",
        "--quiet",
    ] + (["--shuffle"] if shuffle else [])
    killed = run_killed(args, str(tmp_path / "hook"), point, n)
    assert was_killed(killed), (killed.returncode, killed.stderr)
    assert not os.path.exists(os.path.join(dest, "manifest.json"))
    result = convert([src], dest, "parquet", resume=True, progress=False, **opts)
    assert result.rows == N
    assert digest_tree(dest) == digest_tree(clean)
    ids = _check(_read(dest), _source_rows(src), polars_file(tmp_path).kinds)
    assert sorted(ids) == list(range(N))


def test_workers_do_not_change_the_bytes(tmp_path):
    src = pyarrow_file(tmp_path).path
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _convert(src, one, shuffle=True, seed=2)
    _convert(src, two, shuffle=True, seed=2, workers=2)
    assert digest_tree(one) == digest_tree(two)


def test_info_shows_the_variable_length_columns_of_a_converted_output(tmp_path, capsys):
    src = pyarrow_file(tmp_path)
    dest = str(tmp_path / "out")
    _convert(src.path, dest)
    info = describe(dest)
    assert {n: c.get("kind", "fixed") for n, c in info["columns"].items()} == src.kinds
    assert info["columns"]["tokens"]["dtype"] == "float64" and info["manifest"]["shard_format"] == "parquet"
    text = format_info(info)
    for words in ["text", "str per row"], ["tokens", "list per row (Ragged)"], ["blob", "bytes per row"]:
        assert any(all(w in line for w in words) for line in text.splitlines()), words
    assert cli.main(["info", dest, "--verify"]) == 0
    assert "list per row (Ragged)" in capsys.readouterr().out


def test_several_sources_are_concatenated_in_order(tmp_path):
    a, b = pyarrow_file(tmp_path), arrow_ipc_file(tmp_path)  # a Parquet file, then an Arrow IPC file
    dest = str(tmp_path / "out")
    convert([a.path, b.path], dest, "parquet", rows_per_shard=2500, memory_limit=MEMORY, progress=False)
    expected = _source_rows(a.path)
    batches = _read(dest)
    ids = [i for batch in batches for i in batch["id"].tolist()]
    assert ids == list(range(N)) * 2
    text = [t for batch in batches for t in batch["text"].tolist()]
    assert text == expected["text"] * 2


def test_a_permutation_is_taken_in_pieces_of_bounded_values():
    from streambatch.convert._values import held_kinds, take_pieces

    lengths = np.arange(1000) % 37
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    block = {"id": np.arange(1000), "tokens": sb.Ragged(np.arange(int(offsets[-1]), dtype=np.int32), offsets)}
    kinds = held_kinds({"id": ColumnSpec(np.int64, ()), "tokens": ColumnSpec(np.int32, (), "list")})
    order = np.random.default_rng(0).permutation(1000)
    pieces = list(take_pieces(kinds, block, order, max_values=500))
    assert len(pieces) > 30
    assert all(p["tokens"].values.size <= 500 + 36 for p in pieces)  # a piece ends at the row that crosses
    assert np.concatenate([p["id"] for p in pieces]).tolist() == order.tolist()
    assert sb.Ragged.concatenate([p["tokens"] for p in pieces]) == block["tokens"].take(order)
