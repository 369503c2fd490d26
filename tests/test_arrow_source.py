"""Arrow IPC files (file and stream format, Feather) and Hugging Face
``save_to_disk`` directories as a source: random access with positional reads
where the file allows it, every row exactly once and value-equal through
``sb.Loader``, columns refused by name, nothing memory-mapped, and no
descriptor left behind by a closed reader.

The Hugging Face layout is written with pyarrow directly (``datasets`` is a
heavy dependency): Arrow *stream* files ``data-0000i-of-0000n.arrow`` plus the
``state.json`` and ``dataset_info.json`` that ``Dataset.save_to_disk`` writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.feather as feather
import pytest

import streambatch as sb
from streambatch.sources._arrow import ArrowShard
from streambatch.sources._fs import resolve
from tests.conformance import ReaderConformance

N = 1000


def source_table() -> pa.Table:
    ids = np.arange(N, dtype=np.int64)
    emb = (ids[:, None] * 10 + np.arange(4)[None, :]).astype(np.float32)
    return pa.table(
        {
            "id": ids,
            "emb": pa.array(emb.tolist(), pa.list_(pa.float32())),
            "img": pa.array((ids[:, None] + np.zeros((1, 6), np.int16)).tolist(), pa.list_(pa.int16(), 6)),
            "kind": pa.DictionaryArray.from_arrays(pa.array(ids % 3, pa.int8()), pa.array(["a", "b", "c"])),
        }
    )


def expected() -> dict[str, np.ndarray]:
    ids = np.arange(N, dtype=np.int64)
    return {
        "id": ids,
        "emb": (ids[:, None] * 10 + np.arange(4)[None, :]).astype(np.float32),
        "img": (ids[:, None] + np.zeros((1, 6), np.int16)).astype(np.int16),
        "kind": (ids % 3).astype(np.int8),
    }


def write_stream(path, table: pa.Table, chunk: int = 128, compression=None) -> None:
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, table.schema, options=options) as writer:
        for batch in table.to_batches(max_chunksize=chunk):
            writer.write_batch(batch)


def feather_lz4(tmp_path) -> str:
    path = tmp_path / "lz4.feather"
    feather.write_feather(source_table(), str(path), chunksize=128)  # pyarrow's default: lz4
    return str(path)


def feather_uncompressed(tmp_path) -> str:
    path = tmp_path / "plain.arrow"
    feather.write_feather(source_table(), str(path), chunksize=128, compression="uncompressed")
    return str(path)


def ipc_stream(tmp_path) -> str:
    path = tmp_path / "stream.arrows"
    write_stream(path, source_table(), chunk=100)
    return str(path)


def huggingface_directory(tmp_path) -> str:
    """What ``Dataset.save_to_disk`` writes: stream files and their listing."""
    root = tmp_path / "hf"
    root.mkdir()
    table = source_table()
    names = ["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"]
    write_stream(root / names[0], table.slice(0, 600), chunk=64)
    write_stream(root / names[1], table.slice(600), chunk=64)
    (root / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": n} for n in names], "_fingerprint": "x", "_split": "train"})
    )
    features = {"id": {"dtype": "int64", "_type": "Value"}, "label": {"names": ["neg", "pos"], "_type": "ClassLabel"}}
    (root / "dataset_info.json").write_text(json.dumps({"features": features}))
    return str(root)


def pandas_feather(tmp_path) -> str:
    import pandas as pd

    e = expected()
    df = pd.DataFrame(
        {
            "id": e["id"],
            "emb": list(e["emb"]),
            "img": list(e["img"]),
            "kind": pd.Categorical.from_codes(e["kind"], ["a", "b", "c"]),
        }
    )
    path = tmp_path / "pandas.feather"
    df.to_feather(str(path))
    return str(path)


def polars_ipc(tmp_path) -> str:
    import polars as pl

    e = expected()
    df = pl.DataFrame(
        {
            "id": e["id"],
            "emb": pl.Series(e["emb"].tolist(), dtype=pl.List(pl.Float32)),
            "img": pl.Series(e["img"].tolist(), dtype=pl.Array(pl.Int16, 6)),
            "kind": pl.Series(["a", "b", "c"] * (N // 3) + ["a"], dtype=pl.Enum(["a", "b", "c"])),
        }
    )
    path = tmp_path / "polars.arrow"
    df.write_ipc(str(path), compression="uncompressed")
    return str(path)


WRITERS: list[Callable[..., str]] = [
    feather_lz4,
    feather_uncompressed,
    ipc_stream,
    huggingface_directory,
    pandas_feather,
    polars_ipc,
]


# --------------------------------------------------------------------------- the reader contract


class TestArrowIpcFile(ReaderConformance):
    """An uncompressed IPC file (Feather v2): random access with positional reads."""

    casts = True
    write = staticmethod(feather_uncompressed)

    def make(self, tmp_path):
        (shard,) = sb.open_dataset(self.write(tmp_path)).shards
        return shard, expected()


class TestArrowIpcStream(TestArrowIpcFile):
    write = staticmethod(ipc_stream)


class TestArrowCompressedFile(TestArrowIpcFile):
    """lz4 record batches (pyarrow's Feather default): read a record batch at a time."""

    write = staticmethod(feather_lz4)


class TestHuggingFaceSaveToDisk(TestArrowIpcFile):
    """``Dataset.save_to_disk``: its first stream file (rows 0:600)."""

    def make(self, tmp_path):
        first = sb.open_dataset(huggingface_directory(tmp_path)).shards[0]
        return first, {name: values[:600] for name, values in expected().items() if name in first.columns}


# --------------------------------------------------------------------------- through the loader


@pytest.mark.parametrize("write", WRITERS, ids=[w.__name__ for w in WRITERS])
def test_every_row_exactly_once_and_value_equal_through_the_loader(tmp_path, write):
    path = write(tmp_path)
    ds = sb.open_dataset(path)
    want = expected()
    assert set(ds.columns) == set(want)
    assert ds.columns["emb"] == (np.float32, (4,)) and ds.columns["img"] == (np.int16, (6,))
    assert ds.column_metadata["kind"]["categories"] == ["a", "b", "c"]
    with sb.Loader(ds, batch_size=32, seed=5, memory_limit="32MiB") as loader:
        batches = list(loader)
    got = {name: np.concatenate([b[name] for b in batches]) for name in ds.columns}
    order = np.argsort(got["id"])
    np.testing.assert_array_equal(got["id"][order], want["id"])
    for name in ("emb", "img"):
        np.testing.assert_array_equal(got[name][order], want[name], err_msg=name)
    np.testing.assert_array_equal(got["kind"][order].astype(np.int64), want["kind"].astype(np.int64))


@pytest.mark.parametrize(
    ("write", "random_access"),
    [(feather_uncompressed, True), (ipc_stream, True), (huggingface_directory, True), (feather_lz4, False)],
    ids=["file", "stream", "huggingface", "compressed"],
)
def test_uncompressed_files_are_random_access_and_compressed_ones_read_by_record_batch(tmp_path, write, random_access):
    ds = sb.open_dataset(write(tmp_path))
    for shard in ds.shards:
        if random_access:
            assert shard.unit_bounds is None
        else:
            assert np.diff(shard.unit_bounds).tolist() == [128] * 7 + [N - 7 * 128]


def _mapped(path: str) -> int:
    with open("/proc/self/maps") as f:
        return sum(path in line for line in f)


def _fds(path: str) -> int:
    return sum(os.readlink(f"/proc/self/fd/{fd}") == path for fd in os.listdir("/proc/self/fd") if _link(fd))


def _link(fd: str) -> bool:
    try:
        os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return True


@pytest.mark.parametrize("write", [feather_uncompressed, ipc_stream, feather_lz4], ids=["file", "stream", "lz4"])
def test_nothing_is_mapped_and_no_descriptor_outlives_close(tmp_path, write):
    path = write(tmp_path)
    shard = ArrowShard(resolve(path))
    assert _mapped(path) == 0 and _fds(path) == 0  # the shard holds nothing open
    reader = shard.open_reader(list(shard.columns))
    out = {"id": np.empty(10, np.int64), "kind": np.empty(10, np.int8)}
    reader.read_into(0, 10, out)
    assert _mapped(path) == 0 and _fds(path) == 1  # one descriptor, read with pread; no map
    reader.close()
    reader.close()  # idempotent
    assert _mapped(path) == 0 and _fds(path) == 0
    assert out["id"].tolist() == list(range(10))  # copies, not views of the map
    with pytest.raises(ValueError, match="closed"):
        reader.read_into(0, 1, {"id": np.empty(1, np.int64)})


def test_nulls_are_found_at_open_naming_the_record_batch_and_fill_nulls_fills_them(tmp_path):
    path = tmp_path / "nulls.arrow"
    x = pa.array([float(i) if i != 150 else None for i in range(200)])
    feather.write_feather(pa.table({"x": x}), str(path), chunksize=100, compression="uncompressed")
    with pytest.raises(sb.SchemaError) as info:
        sb.open_dataset(str(path))
    for word in [str(path), "column 'x'", "record batch 1", "1 nulls", "fill_nulls"]:
        assert word in str(info.value)
    with sb.Loader(str(path), batch_size=200, shuffle=False, fill_nulls={"x": -1.0}) as loader:
        (batch,) = list(loader)
    assert batch["x"][150] == -1.0 and batch["x"][149] == 149.0


@pytest.mark.parametrize(
    ("column", "words"),
    [
        (pa.array([["a"], ["bb", "c"], []]), ["list values of type string"]),
        (
            pa.array([[[1]], [[2, 3]], [[4]]], pa.list_(pa.list_(pa.int64()))),
            ["variable-length lists", "exclude=['bad']"],
        ),
    ],
    ids=["list-of-strings", "nested-ragged-list"],
)
def test_columns_that_cannot_be_delivered_are_refused_by_name(tmp_path, column, words):
    path = tmp_path / "bad.arrow"
    feather.write_feather(pa.table({"id": np.arange(3), "bad": column}), str(path), compression="uncompressed")
    with pytest.raises(sb.SchemaError) as info:
        sb.open_dataset(str(path))
    for word in [str(path), "'bad'", *words]:
        assert word in str(info.value)
    assert list(sb.open_dataset(str(path), exclude=["bad"]).columns) == ["id"]


def test_a_list_row_of_another_length_is_an_error_naming_batch_and_row(tmp_path):
    # the first record batch's rows all hold 2 values, the second's 2 on average: read as (2,) arrays
    rows = [[1, 1]] * 4 + [[2], [2, 2, 2]]
    path = tmp_path / "ragged.arrow"
    table = pa.table({"v": pa.array(rows, pa.list_(pa.int8()))})
    feather.write_feather(table, str(path), compression="uncompressed", chunksize=4)
    shard = ArrowShard(resolve(str(path)))
    assert shard.columns["v"] == (np.int8, (2,))
    reader = shard.open_reader(["v"])
    try:
        with pytest.raises(sb.SchemaError, match=r"record batch 1 row 0: column 'v' holds a list of 1 values"):
            reader.read_into(0, 6, {"v": np.empty((6, 2), np.int8)})
    finally:
        reader.close()


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
def test_a_compressed_stream_is_read_record_batch_by_record_batch(tmp_path, codec):
    # the stream is indexed by its message headers at open, so a compressed one needs
    # no walk through the record batches before a row to reach it
    path = tmp_path / "z.arrows"
    write_stream(path, source_table(), compression=codec)
    ds = sb.open_dataset(str(path))
    assert np.diff(ds.shards[0].unit_bounds).tolist() == [128] * 7 + [N - 7 * 128]
    with sb.Loader(ds, batch_size=N, shuffle=False) as loader:
        (batch,) = list(loader)
    for name, values in expected().items():
        np.testing.assert_array_equal(batch[name], values, err_msg=name)


def test_huggingface_class_labels_are_the_columns_categories(tmp_path):
    root = tmp_path / "hf"
    root.mkdir()
    write_stream(root / "data-00000-of-00001.arrow", pa.table({"label": np.array([0, 1, 1], np.int64)}))
    (root / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    features = {"label": {"names": ["neg", "pos"], "_type": "ClassLabel"}}
    (root / "dataset_info.json").write_text(json.dumps({"features": features}))
    ds = sb.open_dataset(str(root))
    assert ds.column_metadata == {"label": {"categories": ["neg", "pos"], "ordered": False}}
    with sb.Loader(ds, batch_size=3, shuffle=False) as loader:
        assert next(iter(loader))["label"].tolist() == [0, 1, 1]


def test_a_huggingface_dataset_dict_asks_for_one_split(tmp_path):
    root = tmp_path / "dd"
    (root / "train").mkdir(parents=True)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    with pytest.raises(sb.SchemaError, match=r"DatasetDict.*open one split"):
        sb.open_dataset(str(root))


def test_garbage_is_corrupt_input_naming_the_file(tmp_path):
    path = tmp_path / "junk.arrow"
    path.write_bytes(b"not arrow at all" * 10)
    with pytest.raises(sb.CorruptInputError, match=str(path)):
        sb.open_dataset(str(path))


# --------------------------------------------------------------------------- the same rows in every layout

M = 3000


def mixed_table() -> pa.Table:
    """Fixed-width, dictionary, string and ragged columns (a few nulls-free long strings,
    so string views point out of line)."""
    ids = np.arange(M, dtype=np.int64)
    lengths = ids % 7
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    return pa.table(
        {
            "id": ids,
            "x": pa.FixedSizeListArray.from_arrays(pa.array(np.repeat(ids, 3).astype(np.float32)), 3),
            "flag": pa.array(ids % 2 == 0),
            "kind": pa.DictionaryArray.from_arrays(pa.array(ids % 3, pa.int8()), pa.array(["a", "b", "c"])),
            "text": pa.array([f"row {i} " + "x" * int(i % 20) for i in range(M)]),
            "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.arange(offsets[-1], dtype=np.int32))),
        }
    )


def _layouts(tmp_path) -> dict[str, str]:
    """The rows of ``mixed_table`` as Parquet, Arrow file/stream (plain, lz4, zstd) and
    ``.npy`` (its fixed-width columns)."""
    import pyarrow.parquet as pq

    table = mixed_table()
    paths = {"parquet": str(tmp_path / "t.parquet")}
    pq.write_table(table, paths["parquet"], row_group_size=250)
    for codec in (None, "lz4", "zstd"):
        name = codec or "plain"
        paths[f"file-{name}"] = str(tmp_path / f"{name}.arrow")
        feather.write_feather(table, paths[f"file-{name}"], chunksize=250, compression=codec or "uncompressed")
        paths[f"stream-{name}"] = str(tmp_path / f"{name}.arrows")
        write_stream(paths[f"stream-{name}"], table, chunk=250, compression=codec)
    npy = tmp_path / "npy"
    npy.mkdir()
    np.save(npy / "id.npy", table["id"].to_numpy())
    np.save(npy / "x.npy", np.repeat(table["id"].to_numpy(), 3).astype(np.float32).reshape(-1, 3))
    np.save(npy / "flag.npy", table["flag"].to_numpy(zero_copy_only=False))
    np.save(npy / "kind.npy", (table["id"].to_numpy() % 3).astype(np.int8))
    paths["npy"] = str(npy)
    return paths


def _epoch(path: str, columns: list[str] | None = None, **kw) -> list[dict[str, np.ndarray]]:
    kw = {"batch_size": 128, "seed": 3, "memory_limit": "4MiB", **kw}
    with sb.Loader(sb.open_dataset(path, columns=columns), **kw) as loader:
        return [dict(b) for b in loader]


def _same(a: list[dict], b: list[dict], what: str) -> None:
    assert len(a) == len(b), what
    for k, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys(), what
        for name in x:
            if isinstance(x[name], np.ndarray):
                np.testing.assert_array_equal(x[name], y[name], err_msg=f"{what}: batch {k} column {name}")
            else:  # Ragged
                np.testing.assert_array_equal(x[name].values, y[name].values, err_msg=f"{what}: batch {k} {name}")
                np.testing.assert_array_equal(x[name].offsets, y[name].offsets, err_msg=f"{what}: batch {k} {name}")


FIXED = ["id", "x", "flag", "kind"]


def test_file_stream_and_compressed_ipc_give_the_batches_of_the_same_rows_as_parquet_and_npy(tmp_path):
    paths = _layouts(tmp_path)
    # in stored order, every layout gives the same batches (npy: its fixed-width columns)
    reference = _epoch(paths["parquet"], shuffle=False)
    for name, path in paths.items():
        if name != "npy":
            _same(_epoch(path, shuffle=False), reference, f"{name} (stored order)")
    _same(_epoch(paths["npy"], shuffle=False), _epoch(paths["parquet"], FIXED, shuffle=False), "npy (stored order)")
    # shuffled: uncompressed IPC (file or stream) is random access like .npy, and plans the same epoch
    npy = _epoch(paths["npy"])
    for name in ("file-plain", "stream-plain"):
        _same(_epoch(paths[name], FIXED), npy, f"{name} vs npy (shuffled)")
    # compressed: one unit per record batch, the same units in file and stream, lz4 or zstd
    units = _epoch(paths["file-zstd"])
    for name in ("file-lz4", "stream-lz4", "stream-zstd"):
        _same(_epoch(paths[name]), units, f"{name} vs file-zstd (shuffled)")
    got = {name: np.concatenate([b[name] for b in units]) for name in ("id", "kind", "text")}
    order = np.argsort(got["id"])
    assert got["id"][order].tolist() == list(range(M))
    assert got["text"][order].tolist() == mixed_table()["text"].to_pylist()


def test_many_threads_reading_random_ranges_at_once_get_the_source(tmp_path):
    paths = _layouts(tmp_path)
    reference = _epoch(paths["parquet"], shuffle=False, batch_size=M)[0]
    for name in ("file-plain", "stream-plain", "file-lz4"):
        batches = _epoch(paths[name], num_threads=8, memory_limit="2MiB", batch_size=100)
        got = {c: np.concatenate([b[c] for b in batches]) for c in ("id", "x", "text")}
        order = np.argsort(got["id"])
        for c in ("id", "x", "text"):
            np.testing.assert_array_equal(got[c][order], reference[c], err_msg=f"{name} {c}")
        tokens = sb.Ragged.concatenate([b["tokens"] for b in batches]).take(order)
        np.testing.assert_array_equal(tokens.values, reference["tokens"].values, err_msg=name)


def test_a_remote_file_reads_as_the_local_one(tmp_path):
    import fsspec

    paths = _layouts(tmp_path)
    fs = fsspec.filesystem("memory")
    try:
        for name in ("file-plain", "stream-plain", "file-zstd", "stream-lz4"):
            url = f"memory://streambatch-arrow/{os.path.basename(paths[name])}"
            fs.pipe(url, Path(paths[name]).read_bytes())
            _same(_epoch(url), _epoch(paths[name]), name)
    finally:
        fs.rm("/streambatch-arrow", recursive=True)


# --------------------------------------------------------------------------- dictionaries, views, damage


def test_a_stream_that_replaces_a_dictionary_is_re_coded_to_the_first_one_and_a_delta_extends_it(tmp_path):
    def batch(codes, values):
        return pa.record_batch(
            [
                pa.array(np.arange(len(codes))),
                pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), pa.array(values)),
            ],
            names=["id", "kind"],
        )

    first, second = batch([0, 1, 2], ["a", "b", "c"]), batch([0, 1, 0], ["c", "a"])  # a replacement
    path = tmp_path / "replaced.arrows"
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_stream(f, first.schema) as writer:
        writer.write_batch(first)
        writer.write_batch(second)
    ds = sb.open_dataset(str(path))
    assert ds.column_metadata["kind"]["categories"] == ["a", "b", "c"]
    with sb.Loader(ds, batch_size=6, shuffle=False) as loader:
        (got,) = list(loader)
    assert got["kind"].tolist() == [0, 1, 2, 2, 0, 2]  # "c", "a", "c" in the first dictionary's codes

    delta = str(tmp_path / "delta.arrows")
    options = pa.ipc.IpcWriteOptions(emit_dictionary_deltas=True)
    with pa.OSFile(delta, "wb") as f, pa.ipc.new_stream(f, first.schema, options=options) as writer:
        writer.write_batch(batch([0, 1], ["a", "b"]))
        writer.write_batch(batch([1, 0], ["a", "b", "c"]))  # extends the first: written as a delta, + ["c"]
    # the second batch's dictionary is ["a", "b"] + the delta ["c"]: values the categories do not
    # hold are refused, as for a Parquet row group whose dictionary differs
    with (
        pytest.raises(sb.SchemaError, match=r"values \['c'\] that are not among the categories read at open"),
        sb.Loader(delta, batch_size=4, shuffle=False) as loader,
    ):
        list(loader)


def test_polars_string_views_in_any_order_read_as_strings(tmp_path):
    import polars as pl

    words = [f"{i:05d}-" + "long enough to live out of line" * (i % 3) * 20 for i in range(2000)]
    path = str(tmp_path / "views.arrow")
    pl.DataFrame({"id": np.arange(2000), "word": words}).write_ipc(path, compression="uncompressed")
    assert pa.ipc.open_file(path).schema.field("word").type == pa.string_view()
    # views shuffled over 1.3 MB of data buffers: a range gathers its strings from all over them
    order = np.random.default_rng(0).permutation(2000)
    views = pa.array(words, pa.string_view())
    validity, raw, *data = views.buffers()
    assert validity is None and len(data) > 10
    permuted = np.frombuffer(raw, np.int32).reshape(-1, 4)[order]
    scattered_views = pa.Array.from_buffers(pa.string_view(), 2000, [None, pa.py_buffer(permuted), *data])
    shuffled = pa.table({"id": order, "word": scattered_views})
    scattered = str(tmp_path / "scattered.arrow")
    feather.write_feather(shuffled, scattered, compression="uncompressed", chunksize=500)
    for source in (path, scattered):
        batches = _epoch(source, batch_size=64)
        ids = np.concatenate([b["id"] for b in batches])
        got = np.concatenate([b["word"] for b in batches])
        assert got.dtype == np.dtypes.StringDType()
        assert [words[i] for i in ids] == got.tolist(), source


@pytest.mark.parametrize("write", [feather_uncompressed, ipc_stream], ids=["file", "stream"])
def test_a_truncated_file_is_corrupt_input_naming_it(tmp_path, write):
    path = write(tmp_path)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    with pytest.raises(sb.CorruptInputError, match=str(path)):
        sb.open_dataset(path)


def test_a_file_that_shrinks_after_open_is_corrupt_input_naming_it(tmp_path):
    path = feather_uncompressed(tmp_path)
    ds = sb.open_dataset(path)
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(sb.CorruptInputError, match=r"changed since it was opened"):
        ds.shards[0].open_reader(["id"])
