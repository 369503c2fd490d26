"""ZarrShard: what a Zarr store (format 3 or 2) looks like to streambatch.

A shard reads metadata documents only; a group is a column per array, a lone
array is one column named after its store; the units are chunks (or shards)
along axis 0. Broken metadata is a ``CorruptInputError`` naming the document;
arrays off the row axis are ``ignored`` and unsupported ones ``unreadable``, each
refused by name when requested. A missing chunk reads as ``fill_value``, as zarr
defines it, unless ``allow_missing_chunks=False`` (convert outputs): then it is a
``CorruptInputError`` naming the chunk key; a chunk that does not decode is a
``CorruptInputError`` naming the chunk key. Variable-length strings and bytes
(written by zarr and by xarray) are ``str``/``bytes`` columns, fixed-width
``U``/``S`` arrays fixed-width ones.
"""

from __future__ import annotations

import itertools
import logging
import os
import uuid

import fsspec
import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

from streambatch.errors import CorruptInputError, RowCountError, SchemaError, SourceNotFoundError
from streambatch.sources._base import ColumnSpec
from streambatch.sources._fs import resolve
from streambatch.sources._zarr import ZarrShard
from tests.conformance import ReaderConformance
from tests.conftest import read_shard

N = 50  # rows in the standard store
CHUNK = 8  # rows per chunk along axis 0: 7 chunks, the last one short

# --------------------------------------------------------------------------- helpers


def source_columns(n: int = N) -> dict[str, np.ndarray]:
    """``images[i]`` and ``labels[i]`` both encode ``i``, and no chunk is all zeros
    (zarr would not write it), so every chunk exists on disk."""
    ids = np.arange(n, dtype=np.int64)
    images = ((ids[:, None, None] * 12 + np.arange(12).reshape(4, 3)) % 251 + 1).astype(np.uint8)
    return {"images": images, "labels": ids * 10 + 1}


def write_group(path, columns=None, zarr_format: int = 3, chunk_rows: int = CHUNK, **kwargs) -> str:
    """A group with one array per column, chunked along rows only."""
    columns = source_columns() if columns is None else columns
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    for name, values in columns.items():
        array = group.create_array(
            name,
            shape=values.shape,
            chunks=(chunk_rows, *values.shape[1:]),
            dtype=values.dtype,
            fill_value=0,
            **kwargs,
        )
        array[:] = values
    return str(path)


def shard_of(path, **kwargs) -> ZarrShard:
    return ZarrShard(resolve(str(path)), **kwargs)


read = read_shard


def read_by_unit(shard: ZarrShard) -> dict[str, np.ndarray]:
    """Every row, one read per unit (how the loader calls it)."""
    out = {c: np.empty((shard.num_rows, *s.shape), s.dtype) for c, s in shard.columns.items()}
    reader = shard.open_reader(list(shard.columns))
    try:
        bounds = shard.unit_bounds.tolist()
        for start, stop in itertools.pairwise(bounds):
            reader.read_into(start, stop, {c: a[start:stop] for c, a in out.items()})
    finally:
        reader.close()
    return out


def chunk_file(store, array: str, key: str) -> str:
    """The file holding chunk ``key`` of ``array`` (``c/3/0/0`` or ``3.0.0``)."""
    return os.path.join(str(store), array, *key.split("/"))


@pytest.fixture
def store(tmp_path) -> str:
    return write_group(tmp_path / "data.zarr")


@pytest.fixture
def memory_url():
    """A fresh ``memory://`` prefix, removed afterwards (fsspec's memory store is global)."""
    url = f"memory://streambatch-test-{uuid.uuid4().hex}/data.zarr"
    yield url
    fs = fsspec.filesystem("memory")
    root = url[len("memory://") :].split("/")[0]
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


# --------------------------------------------------------------------------- the reader contract


class TestZarrV3(ReaderConformance):
    holds_handles_between_reads = False  # a local store opens each chunk file per read
    zarr_format = 3

    def make(self, tmp_path):
        columns = source_columns(200)
        path = write_group(tmp_path / "c.zarr", columns, zarr_format=self.zarr_format, chunk_rows=16, **self.codecs())
        return shard_of(path), columns

    def codecs(self) -> dict:
        return {"compressors": [ZstdCodec()]}


class TestZarrV2(TestZarrV3):
    zarr_format = 2

    def codecs(self) -> dict:
        return {}

    def test_the_store_is_format_2(self, tmp_path):
        shard, _ = self.make(tmp_path)
        assert os.path.exists(os.path.join(shard.path, "labels", ".zarray"))
        assert shard.unit_bounds.tolist() == [*range(0, 200, 16), 200]


# --------------------------------------------------------------------------- layout


def test_a_group_is_one_column_per_array_sorted_by_name(store):
    shard = shard_of(store)
    assert shard.path == store
    assert list(shard.columns) == ["images", "labels"]
    assert shard.columns["images"] == ColumnSpec(np.uint8, (4, 3))
    assert shard.columns["labels"] == ColumnSpec(np.int64, ())
    assert shard.num_rows == N


def test_units_are_the_chunks_along_axis_0_the_last_one_short(store):
    bounds = shard_of(store).unit_bounds
    assert bounds.dtype == np.int64
    assert bounds.tolist() == [0, 8, 16, 24, 32, 40, 48, 50]


def test_sub_groups_are_skipped(tmp_path):
    path = write_group(tmp_path / "data.zarr")
    zarr.open_group(path, mode="a").create_group("extra").create_array("other", shape=(3,), dtype="f4")
    assert list(shard_of(path).columns) == ["images", "labels"]


def test_a_single_array_store_is_one_column_named_after_the_store(tmp_path):
    values = source_columns()["images"]
    array = zarr.create_array(str(tmp_path / "images.zarr"), shape=values.shape, chunks=(CHUNK, 4, 3), dtype="u1")
    array[:] = values
    shard = shard_of(tmp_path / "images.zarr")
    assert list(shard.columns) == ["images"]
    assert shard.num_rows == N
    np.testing.assert_array_equal(read(shard, 40, 48)["images"], values[40:48])


def test_the_largest_chunk_along_axis_0_sets_the_units_and_other_arrays_still_read_correctly(tmp_path):
    path = str(tmp_path / "mixed.zarr")
    group = zarr.open_group(path, mode="w")
    source = source_columns()
    for name, rows in (("images", 5), ("labels", 20)):
        values = source[name]
        group.create_array(name, shape=values.shape, chunks=(rows, *values.shape[1:]), dtype=values.dtype)[:] = values
    shard = shard_of(path)
    assert shard.unit_bounds.tolist() == [0, 20, 40, 50]
    got = read_by_unit(shard)
    for name, values in source.items():
        np.testing.assert_array_equal(got[name], values)


def test_a_sharded_array_is_read_one_inner_chunk_per_unit(tmp_path):
    """Zarr reads an inner chunk of a shard on its own (a ranged request after the
    shard index), so the units are the inner chunks: more of them to shuffle."""
    path = str(tmp_path / "sharded.zarr")
    labels = source_columns()["labels"]
    zarr.open_group(path, mode="w").create_array("labels", shape=(N,), chunks=(5,), shards=(20,), dtype="i8")[:] = (
        labels
    )
    shard = shard_of(path)
    assert shard.unit_bounds.tolist() == list(range(0, 51, 5))
    np.testing.assert_array_equal(read_by_unit(shard)["labels"], labels)


# --------------------------------------------------------------------------- schema errors


def test_an_array_of_another_length_is_not_a_column_and_is_a_row_count_error_when_requested(tmp_path):
    path = str(tmp_path / "ragged.zarr")
    group = zarr.open_group(path, mode="w")
    group.create_array("a", shape=(12,), dtype="f4")
    group.create_array("b", shape=(12, 2), dtype="f4")
    group.create_array("c", shape=(10,), dtype="f4")
    shard = shard_of(path)
    assert list(shard.columns) == ["a", "b"] and shard.num_rows == 12
    assert "10 rows" in str(shard.ignored["c"])
    with pytest.raises(RowCountError) as info:  # a ValueError too
        shard.open_reader(["a", "c"])
    assert path in str(info.value) and "'c'" in str(info.value) and "10 rows" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_0d_array_is_not_a_column_and_is_refused_by_name(tmp_path):
    path = str(tmp_path / "scalar.zarr")
    group = zarr.open_group(path, mode="w")
    group.create_array("rows", shape=(4,), dtype="f4")
    group.create_array("scalar", shape=(), dtype="f4")
    shard = shard_of(path)
    assert list(shard.columns) == ["rows"]
    with pytest.raises(SchemaError, match=r"'scalar' is not a column: a 0-d array has no row axis"):
        shard.check_columns(["scalar"])


def test_a_variable_length_string_array_of_two_dimensions_is_unreadable_naming_it(tmp_path):
    path = str(tmp_path / "text.zarr")
    group = zarr.open_group(path, mode="w")
    group.create_array("rows", shape=(4,), dtype="f4")
    group.create_array("pairs", shape=(4, 2), dtype=str)
    shard = shard_of(path)
    assert list(shard.columns) == ["rows"] and "pairs" in shard.unreadable
    with pytest.raises(SchemaError, match=r"'pairs'.*2 dimensions of variable-length strings.*exclude=\['pairs'\]"):
        shard.check_columns(["pairs"])


# --------------------------------------------------------------------------- not a store / broken metadata


def test_a_missing_path_is_source_not_found(tmp_path):
    with pytest.raises(SourceNotFoundError, match=r"nope\.zarr"):
        shard_of(tmp_path / "nope.zarr")


def test_a_directory_without_zarr_metadata_is_source_not_found(tmp_path):
    (tmp_path / "plain.zarr").mkdir()
    with pytest.raises(SourceNotFoundError, match=r"plain\.zarr: not a Zarr store"):
        shard_of(tmp_path / "plain.zarr")


def test_a_file_is_not_a_store(tmp_path):
    (tmp_path / "file.zarr").write_bytes(b"PK\x03\x04 not a directory")
    with pytest.raises(CorruptInputError, match=r"file\.zarr: not a Zarr store: it is a file"):
        shard_of(tmp_path / "file.zarr")


def test_a_group_without_arrays_is_source_not_found(tmp_path):
    path = str(tmp_path / "hollow.zarr")
    zarr.open_group(path, mode="w").create_group("only_a_subgroup")
    with pytest.raises(SourceNotFoundError, match="holds no arrays"):
        shard_of(path)


@pytest.mark.parametrize("document", ["zarr.json", "labels/zarr.json"])
def test_truncated_zarr_json_is_corrupt_input_naming_the_document(store, document):
    path = os.path.join(store, document)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CorruptInputError, match=f"{path}: unreadable Zarr metadata") as info:
        shard_of(store)
    assert info.value.__cause__ is not None


def test_truncated_zarray_is_corrupt_input_naming_the_document(tmp_path):
    store = write_group(tmp_path / "v2.zarr", zarr_format=2)
    path = os.path.join(store, "labels", ".zarray")
    with open(path, "r+b") as f:
        f.truncate(20)
    with pytest.raises(CorruptInputError, match=f"{path}: unreadable Zarr metadata"):
        shard_of(store)


def test_array_metadata_missing_a_field_is_corrupt_input_not_a_silently_skipped_array(store):
    # zarr's own Group.members() skips such an array with a warning
    with open(os.path.join(store, "labels", "zarr.json"), "w") as f:
        f.write('{"zarr_format": 3, "node_type": "array"}')
    with pytest.raises(CorruptInputError, match=r"labels/zarr\.json: invalid Zarr metadata"):
        shard_of(store)


# --------------------------------------------------------------------------- missing and corrupt chunks


@pytest.mark.parametrize(("zarr_format", "key"), [(3, "c/3"), (2, "3")])
def test_a_deleted_chunk_is_corrupt_input_naming_the_chunk_key(tmp_path, zarr_format, key):
    store = write_group(tmp_path / "data.zarr", zarr_format=zarr_format)
    os.remove(chunk_file(store, "labels", key))
    shard = shard_of(store, allow_missing_chunks=False)  # metadata is intact: opening succeeds
    read(shard, 16, 24)  # other chunks still read
    with pytest.raises(CorruptInputError) as info:
        read(shard, 24, 32)
    message = str(info.value)
    assert f"labels/{key}" in message
    assert store in message
    assert "'labels'" in message


def test_a_deleted_chunk_of_an_n_d_array_names_its_full_key(store):
    os.remove(chunk_file(store, "images", "c/0/0/0"))
    with pytest.raises(CorruptInputError, match=r"array 'images' chunk images/c/0/0/0: missing"):
        read(shard_of(store, allow_missing_chunks=False), 0, 8)


def test_a_missing_chunk_reads_fill_value_by_default_as_zarr_defines_it_logged_once(store, caplog):
    os.remove(chunk_file(store, "labels", "c/3"))
    os.remove(chunk_file(store, "labels", "c/4"))
    shard = shard_of(store)
    with caplog.at_level(logging.DEBUG, logger="streambatch"):
        got = read(shard, 24, 32)
        read(shard, 24, 40)
    np.testing.assert_array_equal(got["labels"], np.zeros(8, np.int64))
    np.testing.assert_array_equal(got["images"], source_columns()["images"][24:32])
    logged = [r for r in caplog.records if "is not stored" in r.getMessage()]
    assert len(logged) == 1 and "labels/c/3" in logged[0].getMessage()  # once per store, not per key
    assert logged[0].levelno == logging.DEBUG  # normal in zarr stores: no warning


@pytest.mark.parametrize("damage", ["garbage", "empty"])
def test_a_corrupt_chunk_is_corrupt_input_naming_the_chunk_key(tmp_path, damage):
    store = write_group(tmp_path / "data.zarr", compressors=[ZstdCodec()])
    path = chunk_file(store, "images", "c/2/0/0")
    size = os.path.getsize(path)
    with open(path, "wb") as f:
        f.write(b"\x00" * size if damage == "garbage" else b"")
    shard = shard_of(store)
    with pytest.raises(CorruptInputError, match=r"array 'images' chunk images/c/2/0/0: cannot decode") as info:
        read(shard, 16, 24)
    assert store in str(info.value)
    assert info.value.__cause__ is not None  # zarr's own error, e.g. RuntimeError from zstd
    np.testing.assert_array_equal(read(shard, 8, 16)["images"], source_columns()["images"][8:16])


# --------------------------------------------------------------------------- reader contract


def test_reads_check_out_arrays(store):
    shard = shard_of(store)
    reader = shard.open_reader(["labels"])
    with pytest.raises(ValueError, match=r"rows 48:51 are outside 0:50"):
        reader.read_into(48, 51, {"labels": np.empty(3, np.int64)})
    with pytest.raises(ValueError, match=r"out\['labels'\] is int32"):
        reader.read_into(0, 8, {"labels": np.empty(8, np.int32)})
    reader.close()


# --------------------------------------------------------------------------- fsspec URLs


def test_a_memory_url_reads_through_fsspec(memory_url):
    write_group(memory_url)
    shard = ZarrShard(resolve(memory_url))
    assert shard.path == memory_url
    assert shard.num_rows == N
    assert shard.unit_bounds.tolist() == [0, 8, 16, 24, 32, 40, 48, 50]
    got = read_by_unit(shard)
    for name, values in source_columns().items():
        np.testing.assert_array_equal(got[name], values)


def test_a_missing_chunk_in_a_memory_store_is_corrupt_input(memory_url):
    write_group(memory_url)
    location = resolve(memory_url)
    location.fs.rm(f"{location.path}/labels/c/1")
    with pytest.raises(CorruptInputError, match=r"chunk labels/c/1: missing"):
        read(ZarrShard(location, allow_missing_chunks=False), 8, 16)


def test_a_missing_memory_url_is_source_not_found(memory_url):
    with pytest.raises(SourceNotFoundError):
        ZarrShard(resolve(memory_url))


def test_a_file_url_is_read_as_a_local_store(store):
    shard = ZarrShard(resolve(f"file://{store}"))
    assert shard.path == store
    np.testing.assert_array_equal(read(shard, 48, 50)["labels"], source_columns()["labels"][48:50])


# --------------------------------------------------------------------------- strings


TEXT_ROWS = 300
#: zarr warns that U/S and variable-length bytes have no Zarr 3 specification yet ("may change")
UNSTABLE = pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification")


def words(n: int = TEXT_ROWS) -> list[str]:
    """Strings of 0-40 characters, some of them not ASCII (UTF-8 bytes != characters)."""
    return [f"{i}:" + "é" * (i % 7) + "w" * (i % 31) if i % 10 else "" for i in range(n)]


def text_group(path, zarr_format: int = 3, chunk_rows: int = 32) -> dict[str, np.ndarray]:
    """``id``, variable-length ``text`` and ``blob``, fixed-width ``code`` (``U4``) and
    ``tag`` (``S3``): ``{name: values}``."""
    n = TEXT_ROWS
    values = {
        "id": np.arange(n, dtype=np.int64),
        "text": np.array(words(n), dtype=np.dtypes.StringDType()),
        "blob": np.array([bytes(range(i % 50)) for i in range(n)], dtype=object),
        "code": np.array([f"c{i % 1000}" for i in range(n)], dtype="U4"),
        "tag": np.array([f"t{i % 100}".encode() for i in range(n)], dtype="S3"),
    }
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    dtypes = {"text": str, "blob": zarr.dtype.VariableLengthBytes()}
    for name, array in values.items():
        dtype = dtypes.get(name, array.dtype)
        group.create_array(name, shape=array.shape, chunks=(chunk_rows,), dtype=dtype)[:] = array
    return values


def _epoch(path, **kw) -> list[dict]:
    import streambatch as sb

    kw = {"batch_size": 50, "seed": 2, "memory_limit": "2MiB", **kw}
    with sb.Loader(path, **kw) as loader:
        return [dict(b) for b in loader]


@UNSTABLE
@pytest.mark.parametrize("zarr_format", [3, 2])
def test_strings_and_bytes_are_variable_length_columns_and_u_s_arrays_stay_fixed_width(tmp_path, zarr_format):
    path = tmp_path / "text.zarr"
    values = text_group(path, zarr_format)
    shard = shard_of(path)
    assert shard.columns["text"] == ColumnSpec(np.dtypes.StringDType(), (), "str")
    assert shard.columns["blob"] == ColumnSpec(np.dtype(object), (), "bytes")
    assert shard.columns["code"] == (np.dtype("U4"), ()) and shard.columns["tag"] == (np.dtype("S3"), ())
    batches = _epoch(str(path))
    got = {name: np.concatenate([b[name] for b in batches]) for name in values}
    assert got["text"].dtype == np.dtypes.StringDType() and got["code"].dtype == np.dtype("U4")
    order = np.argsort(got["id"])
    assert got["id"][order].tolist() == list(range(TEXT_ROWS))  # every row once, shuffled
    for name, expected in values.items():
        assert got[name][order].tolist() == expected.tolist(), name


def test_the_budget_counts_the_utf8_bytes_of_the_largest_sampled_chunk(tmp_path):
    import streambatch as sb

    path = str(tmp_path / "lengths.zarr")
    rows = 1000
    group = zarr.open_group(path, mode="w")
    # chunks of 100 rows: 10 bytes a row, but 1000 bytes ("é" is 2 bytes) in the last chunk
    group.create_array("text", shape=(rows,), chunks=(100,), dtype=str)[:] = ["x" * 10] * 900 + ["é" * 500] * 100
    group.create_array("id", shape=(rows,), chunks=(100,), dtype="i8")[:] = np.arange(rows)
    ds = sb.open_dataset(path)
    assert ds.shards[0].variable_row_nbytes("text") == 1000
    assert ds.column_row_nbytes("text") == 16 + 1000
    with sb.Loader(ds, batch_size=100, memory_limit="4MiB", seed=0) as loader:
        assert loader.budget.variable_row_nbytes == 1000
        assert sum(len(b["id"]) for b in loader) == rows


@UNSTABLE
def test_the_same_strings_read_from_zarr_and_parquet_give_the_same_batches(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "text.zarr"
    values = text_group(path)
    parquet = str(tmp_path / "text.parquet")
    table = pa.table(
        {
            "id": values["id"],
            "text": pa.array(values["text"].tolist(), pa.string()),
            "blob": pa.array(values["blob"].tolist(), pa.binary()),
        }
    )
    pq.write_table(table, parquet, row_group_size=32)
    columns = ["id", "text", "blob"]
    import streambatch as sb

    def rows(batches: list[dict]) -> list[tuple]:
        return sorted((int(i), t, b) for x in batches for i, t, b in zip(x["id"], x["text"], x["blob"]))

    for shuffle in (False, True):
        a = _epoch(sb.open_dataset(str(path), columns=columns), shuffle=shuffle)
        b = _epoch(sb.open_dataset(parquet, columns=columns), shuffle=shuffle)
        if shuffle:  # the units differ (Parquet streams row groups): the same rows
            assert rows(a) == rows(b)
            continue
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert x["text"].dtype == y["text"].dtype
            assert x["text"].tolist() == y["text"].tolist() and x["blob"].tolist() == y["blob"].tolist()


def test_a_missing_string_chunk_reads_its_fill_value_and_is_corrupt_input_when_chunks_must_exist(tmp_path):
    path = tmp_path / "holes.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("id", shape=(40,), chunks=(10,), dtype="i8")[:] = np.arange(40)
    text = group.create_array("text", shape=(40,), chunks=(10,), dtype=str)
    text[10:20] = [f"w{i}" for i in range(10, 20)]  # chunks 0, 2 and 3 are never written
    custom = group.create_array("label", shape=(40,), chunks=(10,), dtype=str, fill_value="n/a")
    custom[0:10] = [f"l{i}" for i in range(10)]
    assert sorted(os.listdir(path / "text" / "c")) == ["1"]
    got = _epoch(str(path), shuffle=False, batch_size=40)[0]
    assert got["text"].tolist() == [""] * 10 + [f"w{i}" for i in range(10, 20)] + [""] * 20
    assert got["label"].tolist() == [f"l{i}" for i in range(10)] + ["n/a"] * 30
    shard = shard_of(path, allow_missing_chunks=False)
    reader = shard.open_reader(["text"])
    from streambatch.columns import kind_of

    target = kind_of("text", shard.columns["text"], 64).storage(10)
    try:
        with pytest.raises(CorruptInputError, match=r"array 'text' chunk text/c/0: missing"):
            reader.read_into(0, 10, {"text": target.view(0, 10)})
    finally:
        reader.close()


@UNSTABLE
@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")  # xarray's default, format 3
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_xarray_string_variables_and_coordinates_are_columns(tmp_path, zarr_format):
    xr = pytest.importorskip("xarray")
    import streambatch as sb

    n = 100
    names = np.array([None if i % 9 == 0 else f"item-{i}" for i in range(n)], dtype=object)
    xds = xr.Dataset(
        {
            "x": (("sample", "feature"), np.arange(n * 3, dtype=np.float32).reshape(n, 3)),
            "name": ("sample", names),
            "code": ("sample", np.array([f"c{i % 7}" for i in range(n)], dtype="U2")),
        },
        coords={
            "sample": np.arange(n),
            "feature": ["f0", "f1", "f2"],
            "sid": ("sample", np.array([f"s{i}" for i in range(n)], dtype=object)),
        },
    )
    path = str(tmp_path / "xarray.zarr")
    chunks = {name: {"chunks": (16,) * xds[name].ndim} for name in ("name", "code", "sid", "sample")}
    xds.to_zarr(path, mode="w", zarr_format=zarr_format, encoding={**chunks, "x": {"chunks": (16, 3)}})
    ds = sb.open_dataset(path)
    assert set(ds.columns) == {"x", "name", "code", "sample", "sid"} and "feature" in ds.ignored
    assert ds.columns["name"].kind == "str" and ds.columns["sid"].kind == "str"
    assert ds.columns["code"] == (np.dtype("U2"), ())
    batches = _epoch(ds, batch_size=20)
    got = {c: np.concatenate([b[c] for b in batches]) for c in ("sample", "name", "sid", "code")}
    order = np.argsort(got["sample"])
    # xarray writes a missing string (None) as "": it arrives as "", as zarr stores it
    assert got["name"][order].tolist() == ["" if v is None else v for v in names]
    assert got["sid"][order].tolist() == [f"s{i}" for i in range(n)]
    assert got["code"][order].tolist() == [f"c{i % 7}" for i in range(n)]


@UNSTABLE
def test_strings_in_a_memory_store_read_through_fsspec(memory_url):
    values = text_group(memory_url)
    batches = _epoch(memory_url, num_threads=4)
    got = {c: np.concatenate([b[c] for b in batches]) for c in ("id", "text", "blob")}
    order = np.argsort(got["id"])
    for name in ("text", "blob"):
        assert got[name][order].tolist() == values[name].tolist(), name
