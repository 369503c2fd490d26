"""Arrow IPC files (file and stream format, Feather) and Hugging Face
``save_to_disk`` directories as a source: random access through a memory map
where the file allows it, every row exactly once and value-equal through
``sb.Loader``, columns refused by name, and no descriptor or mapping left
behind by a closed reader.

The Hugging Face layout is written with pyarrow directly (``datasets`` is a
heavy dependency): Arrow *stream* files ``data-0000i-of-0000n.arrow`` plus the
``state.json`` and ``dataset_info.json`` that ``Dataset.save_to_disk`` writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

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
    """An uncompressed IPC file (Feather v2): random access through a memory map."""

    holds_handles_between_reads = False  # the memory map outlives its descriptor
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


@pytest.mark.parametrize("write", [feather_uncompressed, ipc_stream], ids=["file", "stream"])
def test_no_descriptor_or_mapping_outlives_close(tmp_path, write):
    path = write(tmp_path)
    shard = ArrowShard(resolve(path))
    assert _mapped(path) == 0 and _fds(path) == 0  # the shard holds nothing open
    reader = shard.open_reader(list(shard.columns))
    out = {"id": np.empty(10, np.int64), "kind": np.empty(10, np.int8)}
    reader.read_into(0, 10, out)
    assert _mapped(path) == 1
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


def test_a_compressed_stream_is_refused_with_the_remedy(tmp_path):
    path = tmp_path / "z.arrows"
    write_stream(path, source_table(), compression="zstd")
    with pytest.raises(sb.SchemaError, match=r"compressed Arrow stream has no random access"):
        sb.open_dataset(str(path))


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
