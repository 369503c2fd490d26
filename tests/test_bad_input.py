"""Bad input fails loudly, early and precisely (RELIABILITY.md A3-A8, B1).

Every case asserts the exception *type* (a streambatch class that also inherits
the matching built-in) and that the message names the thing at fault: the path,
the column, the parameter and the value. Whatever can be checked from headers
and footers fails in ``open_dataset`` / ``Loader(...)``, in the caller's thread,
before any reader thread exists; what can only fail while reading surfaces from
the consumer's ``next()`` with the original error chained.
"""

from __future__ import annotations

import os
import re
import threading
import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import streambatch as sb
from streambatch.writers import ParquetWriter, ZarrWriter, write_blocks
from tests.conftest import ids_of, make_columns


def _our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("streambatch-")]


def _raises_naming(exc_type, *fragments, call):
    """Run ``call``; it must raise ``exc_type`` whose message contains every fragment."""
    with pytest.raises(exc_type) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not named in: {message}"
    return info.value


def _npy_with_data(path, n=100, width=10) -> str:
    np.save(path, np.arange(n * width, dtype=np.float64).reshape(n, width))
    return str(path)


def _cut(path, keep: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(keep)


def _data_offset(path) -> int:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


# --------------------------------------------------------------------------
# A8: paths that hold nothing to read
# --------------------------------------------------------------------------


def _missing_file(tmp_path):
    return str(tmp_path / "does-not-exist.npy"), "does-not-exist.npy"


def _missing_dir(tmp_path):
    return str(tmp_path / "no" / "such" / "dir"), str(tmp_path / "no" / "such" / "dir")


def _empty_glob(tmp_path):
    (tmp_path / "other.parquet.bak").write_bytes(b"x")
    return str(tmp_path / "*.parquet"), "*.parquet"


def _empty_dir(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return str(d), str(d)


def _dir_without_data_files(tmp_path):
    d = tmp_path / "notes"
    (d / "sub").mkdir(parents=True)
    (d / "README.txt").write_text("no data here")
    (d / "sub" / "labels.csv").write_text("a,b\n1,2\n")
    return str(d), str(d)


@pytest.mark.parametrize(
    "make",
    [_missing_file, _missing_dir, _empty_glob, _empty_dir, _dir_without_data_files],
    ids=["missing-file", "missing-dir", "glob-matches-nothing", "empty-dir", "dir-without-data-files"],
)
def test_a_source_with_nothing_to_read_is_source_not_found(tmp_path, make):
    source, named = make(tmp_path)
    error = _raises_naming(sb.SourceNotFoundError, named, call=lambda: sb.open_dataset(source))
    assert isinstance(error, FileNotFoundError)  # existing `except FileNotFoundError` keeps working
    # the Loader fails the same way, before any thread starts
    _raises_naming(sb.SourceNotFoundError, named, call=lambda: sb.Loader(source, 8))
    assert _our_threads() == []


@pytest.mark.parametrize("name", ["data.txt", "data.csv", "data.json"])
def test_an_unsupported_file_type_is_named_with_its_path(tmp_path, name):
    path = tmp_path / name
    path.write_text("a,b\n1,2\n")
    error = _raises_naming(sb.SchemaError, str(path), "unsupported file type", call=lambda: sb.open_dataset(str(path)))
    assert isinstance(error, TypeError)


def test_dict_source_columns_with_different_row_counts_name_both_files_and_lengths(tmp_path):
    x = _npy_with_data(tmp_path / "x.npy", n=100)
    y = _npy_with_data(tmp_path / "y.npy", n=99)
    error = _raises_naming(
        (ValueError, sb.SchemaError), x, y, "100", "99", call=lambda: sb.open_dataset({"x": x, "y": y})
    )
    assert isinstance(error, sb.StreambatchError)


def test_npy_directory_columns_with_different_row_counts_name_both_files(tmp_path):
    d = tmp_path / "cols"
    d.mkdir()
    a = _npy_with_data(d / "a.npy", n=50)
    b = _npy_with_data(d / "b.npy", n=51)
    _raises_naming(sb.SchemaError, a, b, "50", "51", call=lambda: sb.open_dataset(str(d)))


# --------------------------------------------------------------------------
# A3: .npy files that must be refused at open time
# --------------------------------------------------------------------------


def _object_dtype(path):
    np.save(path, np.array([{"a": 1}, None, "text"], dtype=object), allow_pickle=True)


def _zero_d(path):
    np.save(path, np.float32(3.0))


def _fortran_2d(path):
    np.save(path, np.asfortranarray(np.arange(60, dtype=np.int32).reshape(10, 6)))


@pytest.mark.parametrize(
    "write, pattern",
    [
        (_object_dtype, r"(?i)pickl"),  # says pickle is never loaded
        (_zero_d, r"0-d|dimension"),
        (_fortran_2d, r"Fortran"),
    ],
    ids=["object-dtype", "0-d", "fortran-order-2d"],
)
def test_unsupported_npy_layouts_are_schema_errors_naming_the_file(tmp_path, write, pattern):
    path = tmp_path / "col.npy"
    write(path)
    error = _raises_naming(sb.SchemaError, str(path), call=lambda: sb.open_dataset(str(path)))
    assert re.search(pattern, str(error)), str(error)


def test_object_dtype_message_says_pickle_is_never_loaded(tmp_path):
    path = tmp_path / "objects.npy"
    _object_dtype(path)
    with pytest.raises(sb.SchemaError) as info:
        sb.open_dataset(str(path))
    message = str(info.value).lower()
    assert "never" in message and "pickl" in message, message


def _cut_data_section(path):
    _npy_with_data(path)
    offset = _data_offset(path)
    _cut(path, offset + (os.path.getsize(path) - offset) // 2)


def _cut_inside_header(path):
    _npy_with_data(path)
    _cut(path, 20)  # the magic (8 bytes) and part of the header dict


def _zero_bytes(path):
    open(path, "wb").close()


def _zip_garbage(path):
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04" + os.urandom(200))


def _data_section_one_byte_short(path):
    _npy_with_data(path)
    _cut(path, os.path.getsize(path) - 1)


@pytest.mark.parametrize(
    "damage",
    [_cut_data_section, _data_section_one_byte_short, _cut_inside_header, _zero_bytes, _zip_garbage],
    ids=["data-cut-in-half", "data-one-byte-short", "header-cut", "zero-bytes", "PK-garbage"],
)
def test_a_truncated_or_garbage_npy_is_corrupt_input_at_open(tmp_path, damage):
    path = tmp_path / "col.npy"
    damage(path)
    error = _raises_naming(sb.CorruptInputError, str(path), call=lambda: sb.open_dataset(str(path)))
    assert isinstance(error, ValueError)
    # also inside a directory source, and through the Loader, before any thread starts
    _raises_naming(sb.CorruptInputError, str(path), call=lambda: sb.Loader(str(tmp_path), 4))
    assert _our_threads() == []


# --------------------------------------------------------------------------
# A7: schema drift between Parquet files of one directory
# --------------------------------------------------------------------------


def _write_parquet(path, table: pa.Table) -> str:
    pq.write_table(table, str(path))
    return str(path)


@pytest.mark.parametrize(
    "second",
    [
        pa.table({"x": pa.array(np.arange(10, dtype=np.int64)), "y": pa.array(np.ones(10, np.float32))}),
        pa.table({"x": pa.array(np.arange(10, dtype=np.int32))}),
    ],
    ids=["int32-vs-int64", "column-missing"],
)
def test_parquet_files_with_different_schemas_name_both_files(tmp_path, second):
    d = tmp_path / "drift"
    d.mkdir()
    first = _write_parquet(
        d / "a.parquet",
        pa.table({"x": pa.array(np.arange(10, dtype=np.int32)), "y": pa.array(np.ones(10, np.float32))}),
    )
    other = _write_parquet(d / "b.parquet", second)
    error = _raises_naming(sb.SchemaError, first, other, call=lambda: sb.open_dataset(str(d)))
    assert re.search(r"'x'|'y'", str(error)), f"the column is not named: {error}"


# --------------------------------------------------------------------------
# A6: a requested column that does not exist
# --------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["npy", "parquet"])
def test_unknown_column_is_named_and_available_columns_are_listed(dataset_factory, form):
    path = dataset_factory(form, n=50)
    for call in (lambda: sb.open_dataset(path, columns=["id", "nope"]), lambda: sb.Loader(path, 8, columns=["nope"])):
        error = _raises_naming(sb.SchemaError, "'nope'", "'id'", "'x'", "'img'", call=call)
        assert re.search(r"(?i)available|readable", str(error)), str(error)


# --------------------------------------------------------------------------
# Loader arguments
# --------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "8", None], ids=repr)
def test_batch_size_must_be_a_positive_integer(dataset_factory, batch_size):
    path = dataset_factory("npy", n=20)
    _raises_naming(ValueError, "batch_size", repr(batch_size), call=lambda: sb.Loader(path, batch_size))


@pytest.mark.parametrize("memory_limit", ["-1", "abc", 0, "10XB", -5, "", "0MiB"], ids=repr)
def test_memory_limit_must_be_a_positive_size(dataset_factory, memory_limit):
    path = dataset_factory("npy", n=20)
    _raises_naming(
        ValueError, "memory_limit", repr(memory_limit), call=lambda: sb.Loader(path, 4, memory_limit=memory_limit)
    )


@pytest.mark.parametrize("memory_limit", ["4MiB", "6MiB"])
def test_a_parquet_row_group_larger_than_the_budget_is_streamed(tmp_path, memory_limit):
    """A row group need not be held whole: it is read slice by slice, so a budget
    smaller than one row group still delivers every row exactly once."""
    path = str(tmp_path / "big-groups.parquet")
    n, width = 8192, 256  # one row group of 8 MiB
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None], width, axis=1)
    write_blocks(ParquetWriter(path, {"x": (np.float32, (width,))}, row_group_rows=n), [{"x": x}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sb.PoorShuffleWarning)  # one row group: few parts to mix
        loader = sb.Loader(path, 32, memory_limit=memory_limit)
    assert loader.budget.ring_bytes < n * width * 4
    rows = np.concatenate([b["x"] for b in loader])
    assert np.array_equal(np.sort(rows[:, 0]), np.arange(n, dtype=np.float32))
    assert (rows == rows[:, :1]).all()


@pytest.mark.parametrize("memory_limit", ["1MiB", "4MiB"])
def test_memory_limit_too_small_for_one_zarr_chunk_is_a_clear_error(tmp_path, memory_limit):
    """A compressed Zarr chunk must be decoded whole: a budget that cannot hold a
    few of them is refused, saying what is enough."""
    path = str(tmp_path / "big-chunks.zarr")
    n, width = 8192, 256  # one chunk of 8 MiB
    block = {"x": np.zeros((n, width), np.float32)}
    write_blocks(ZarrWriter(path, {"x": (np.float32, (width,))}, n, chunk_rows=n), [block])
    with pytest.raises(ValueError) as info:  # a bad argument value for this data
        sb.Loader(path, 32, memory_limit=memory_limit)
    message = str(info.value)
    assert "memory_limit" in message and "too small" in message, message
    advice = re.search(r"(?:at least|>=)\s*([0-9.]+ [KMG]iB)", message)
    assert advice, f"no advice on what is enough: {message}"
    assert _our_threads() == []
    # the advised size is enough
    advised = advice.group(1).replace(" ", "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sb.PoorShuffleWarning)
        loader = sb.Loader(path, 32, memory_limit=advised)
    with loader:
        assert len(loader) == n // 32


@pytest.mark.parametrize(
    "rank, world_size",
    [(1, 1), (2, 2), (5, 4), (-1, 2)],
    ids=["rank1-of-1", "rank2-of-2", "rank5-of-4", "negative-rank"],
)
def test_rank_outside_world_size_is_a_value_error(dataset_factory, rank, world_size):
    path = dataset_factory("npy", n=20)
    _raises_naming(
        ValueError,
        "rank",
        repr(rank),
        str(world_size),
        call=lambda: sb.Loader(path, 4, rank=rank, world_size=world_size),
    )


# --------------------------------------------------------------------------
# A4: an empty dataset fails at construction, never as a silent or hanging epoch
# --------------------------------------------------------------------------


def _empty_npy(tmp_path):
    d = tmp_path / "empty-npy"
    d.mkdir()
    np.save(d / "x.npy", np.zeros((0, 3), np.float32))
    np.save(d / "y.npy", np.zeros((0,), np.int64))
    return str(d)


def _empty_parquet(tmp_path):
    path = tmp_path / "empty.parquet"
    write_blocks(ParquetWriter(str(path), {"x": (np.float32, (3,))}, row_group_rows=10), [])
    return str(path)


@pytest.mark.parametrize("make", [_empty_npy, _empty_parquet], ids=["npy-0-rows", "parquet-0-rows"])
def test_an_empty_dataset_is_empty_dataset_error_at_construction(tmp_path, make):
    source = make(tmp_path)
    assert sb.open_dataset(source).num_rows == 0  # opening it is fine ...
    started = time.monotonic()
    error = _raises_naming(sb.EmptyDatasetError, source, call=lambda: sb.Loader(source, 4))  # ... loading it is not
    assert time.monotonic() - started < 5
    assert isinstance(error, sb.SchemaError)
    assert _our_threads() == []


# --------------------------------------------------------------------------
# B1: a failure inside a reader thread reaches the consumer
# --------------------------------------------------------------------------


def _next_until_error(iterator, limit_s: float = 10.0):
    """Call next() until it raises; returns (batches before, exception, seconds)."""
    started = time.monotonic()
    batches = []
    while time.monotonic() - started < limit_s:
        try:
            batches.append(next(iterator))
        except StopIteration:
            pytest.fail(f"the epoch ended without an error after {len(batches)} batches")
        except Exception as error:
            return batches, error, time.monotonic() - started
    pytest.fail(f"no error within {limit_s} s")


def test_npy_truncated_after_open_raises_from_next_naming_the_file(tmp_path, capfd):
    n = 20000
    root = tmp_path / "ds"
    root.mkdir()
    cols = make_columns(n)
    for name, values in cols.items():
        np.save(root / f"{name}.npy", values)
    loader = sb.Loader(str(root), 64, memory_limit="1MiB", num_threads=2)  # open-time checks pass
    victim = root / "x.npy"
    _cut(victim, _data_offset(victim) + (os.path.getsize(victim) - _data_offset(victim)) // 3)

    iterator = iter(loader)
    delivered, error, seconds = _next_until_error(iterator)

    assert isinstance(error, (sb.CorruptInputError, sb.ReaderError)), repr(error)
    assert str(victim) in str(error), str(error)
    assert seconds < 5, f"the error took {seconds:.1f} s to reach the consumer"
    assert sum(len(b["id"]) for b in delivered) < n
    for _ in range(3):  # the iterator is finished for good
        with pytest.raises(StopIteration):
            next(iterator)
    assert _our_threads() == [], "reader threads outlived the error"
    for batch in delivered:  # batches delivered before the error stay valid
        assert np.array_equal(batch["x"][:, 0], batch["id"].astype(np.float32))
    assert "Exception in thread" not in capfd.readouterr().err


@pytest.fixture
def fail_third_read(monkeypatch):
    """Patch the reader class of ``dataset``'s format so that its 3rd read call
    (``plain_rows`` for shards of plain rows, whose jobs are read from the layout
    it gives, ``read_many`` for other random-access shards, ``read_into`` for unit
    shards and for the streams of formats that stream units) raises
    ``RuntimeError("boom")``; returns the error that was raised."""
    raised: list[BaseException] = []

    def install(dataset: sb.Dataset) -> list[BaseException]:
        shard = dataset.shards[0]
        probe = shard.open_reader(list(dataset.columns))
        if probe.plain_rows() is not None:
            targets = [(type(probe), "plain_rows")]
        else:
            targets = [(type(probe), "read_many" if shard.unit_bounds is None else "read_into")]
        if shard.streams_units:
            stream = probe.open_stream(0, int(shard.unit_bounds[1]), 1)
            targets.append((type(stream), "read_into"))
            stream.close()
        probe.close()
        calls = iter(range(1, 10**9))
        lock = threading.Lock()

        def failing_version(original):
            def failing(self, *args, **kwargs):
                with lock:
                    k = next(calls)
                if k == 3:
                    error = RuntimeError("boom")
                    raised.append(error)
                    raise error
                return original(self, *args, **kwargs)

            return failing

        for cls, method in targets:
            monkeypatch.setattr(cls, method, failing_version(getattr(cls, method)))
        return raised

    return install


def test_an_exception_in_a_reader_thread_reaches_next_as_reader_error(dataset_factory, fmt, fail_third_read, capfd):
    n = 20000
    path = dataset_factory(fmt, n=n, chunk_rows=500)
    dataset = sb.open_dataset(path)
    raised = fail_third_read(dataset)
    loader = sb.Loader(dataset, 64, memory_limit="1MiB", num_threads=2)

    iterator = iter(loader)
    delivered, error, seconds = _next_until_error(iterator)

    assert isinstance(error, sb.ReaderError), repr(error)
    assert isinstance(error, OSError)
    assert len(raised) == 1 and error.__cause__ is raised[0], "the original error must be chained"
    assert "boom" in str(error)
    assert dataset.shards[0].path in str(error), f"the file is not named: {error}"
    assert re.search(r"rows \d+:\d+", str(error)), f"the rows are not named: {error}"
    assert seconds < 5
    assert len(ids_of(delivered)) < n
    with pytest.raises(StopIteration):
        next(iterator)
    assert _our_threads() == []
    captured = capfd.readouterr()
    assert "Exception in thread" not in captured.err and "Traceback" not in captured.err, captured.err


def test_an_epoch_that_failed_is_not_counted_as_finished(dataset_factory, fail_third_read):
    """After a reader error the iterator is done, but the epoch is not: the
    loader's position must stay in epoch 0 at the batches the consumer got, so
    a checkpoint saved in an ``except`` handler resumes instead of skipping rows."""
    dataset = sb.open_dataset(dataset_factory("npy", n=20000))
    fail_third_read(dataset)
    loader = sb.Loader(dataset, 64, memory_limit="1MiB", num_threads=2)
    iterator = iter(loader)
    _delivered, error, _ = _next_until_error(iterator)
    assert isinstance(error, sb.ReaderError)
    with pytest.raises(StopIteration):
        next(iterator)
    assert loader.epoch == 0, "a failed epoch was counted as finished"
    assert loader.state_dict()["epoch"] == 0
