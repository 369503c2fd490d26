"""Remote read units fetched apart from their decodes (``streambatch.fetch``):
requests overlap beyond the decode slots, the fetched bytes stay within the
decode scratch and the fetch-ahead share the budget sets aside for them, faults
surface as before, and the batches are those of the same files read locally when
the data fits (the fetch-ahead share comes out of the ring otherwise), whatever the
latency and the thread count. Remote ``.npy``: a column held whole is read whole."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import streambatch as sb
import streambatch.fetch as fetch
from streambatch import RetryPolicy
from streambatch.convert import convert
from tests.conftest import ids_of, make_columns, write_dataset
from tests.remote_fixtures import FlakyFS, LatencyFS, upload

N = 6000
FAST = RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.01)


@pytest.fixture
def latency():
    LatencyFS.configure()
    yield LatencyFS
    LatencyFS.configure()


@pytest.fixture
def flaky():
    FlakyFS.reset()
    yield FlakyFS
    FlakyFS.reset()


@pytest.fixture
def units(monkeypatch):
    """Every ``UnitReads`` the loaders make, to look at what they held."""
    made: list[fetch.UnitReads] = []
    original = fetch.UnitReads.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(fetch.UnitReads, "__init__", init)
    return made


def _batches(source, **kw) -> list[dict[str, np.ndarray]]:
    kw.setdefault("batch_size", 100)
    kw.setdefault("memory_limit", "1MiB")
    kw.setdefault("seed", 3)
    kw.setdefault("num_threads", 16)
    with sb.Loader(source, **kw) as loader:
        return list(loader)


def _assert_same(got: list[dict[str, np.ndarray]], expected: list[dict[str, np.ndarray]]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("fmt", ["parquet", "zarr"])
def test_requests_overlap_beyond_the_decode_slots(fmt, latency, units, tmp_path):
    """Units of 1000 rows (48 KB) in a 1 MiB budget: two decode slots. With 50 ms
    per request, more units are in flight than decode slots (before, a unit's
    fetch held its decode slot: at most two units in flight, one request per
    array each), the fetched bytes stay within the decode scratch and the
    fetch-ahead share (plus one unit), and the batches equal the local ones."""
    local = write_dataset(fmt, tmp_path, make_columns(N), 1000, 2)
    expected = _batches(local)
    latency.configure(0.05)
    with sb.Loader(f"latency://{local}", batch_size=100, memory_limit="1MiB", seed=3, num_threads=16) as loader:
        budget = loader.budget
        got = list(loader)
    _assert_same(got, expected)
    slots = budget.decode_slots(16)
    assert slots == 2
    requests_per_unit = 3 if fmt == "zarr" else 1  # zarr: one object per array; parquet: one range per row group
    assert latency.peak > slots * requests_per_unit, (latency.peak, slots)
    assert any(u.peak_held for u in units)
    for u in units:
        assert u.peak_held <= budget.scratch_bytes + budget.fetch_bytes + budget.unit_nbytes, (u.peak_held, budget)


@pytest.mark.parametrize("fmt", ["parquet", "zarr"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_random_latencies_and_thread_counts_give_the_local_batches(fmt, shuffle, latency, tmp_path):
    """Requests finish in any order (0-20 ms each, seeded): the batches, every
    column, are those of the local files, for 1, 4 and 16 threads and two epochs."""
    local = write_dataset(fmt, tmp_path, make_columns(3000), 250, 3)
    for threads, seed in ((1, 0), (4, 1), (16, 2)):
        latency.configure(0.02, jitter=True, seed=seed)
        for epoch in (0, 1):
            kw = dict(shuffle=shuffle, num_threads=threads)
            with sb.Loader(local, batch_size=100, memory_limit="1MiB", seed=3, **kw) as here:
                here.set_epoch(epoch)
                expected = list(here)
            with sb.Loader(f"latency://{local}", batch_size=100, memory_limit="1MiB", seed=3, **kw) as there:
                there.set_epoch(epoch)
                _assert_same(list(there), expected)


@pytest.mark.parametrize("fmt", ["parquet", "zarr"])
def test_remote_units_in_flight_are_a_budget_term_of_their_own(fmt, latency, units, tmp_path):
    """40,000 rows of 48 bytes (1.9 MB) in 1 MiB, units of 1,000 rows: the data does
    not fit. Read locally, nothing is fetched and nothing is set aside; read remotely,
    the budget sets aside an eighth of memory_limit (at most 8 units) for bytes
    fetched ahead of their decodes, out of the ring, and every part of the budget
    still adds up to at most memory_limit. The fetched bytes held stay within decode
    scratch + fetch-ahead (+ one unit); the remote order, a permutation, is the same
    at any latency and thread count."""
    local = write_dataset(fmt, tmp_path, make_columns(40_000), 1000, 2)
    here = sb.Loader(local, batch_size=100, memory_limit="1MiB", seed=3).budget
    assert here.fetch_bytes == 0 and not here.fits
    latency.configure(0.0)
    expected = _batches(f"latency://{local}", num_threads=1)
    with sb.Loader(f"latency://{local}", batch_size=100, memory_limit="1MiB", seed=3) as loader:
        there = loader.budget
    assert there.fetch_bytes == min((1 << 20) // 8, 8 * there.unit_nbytes) > 0
    assert there.unit_nbytes == here.unit_nbytes and there.scratch_bytes == here.scratch_bytes
    assert there.ring_bytes < here.ring_bytes
    parts = there.ring_bytes + there.scratch_bytes + there.fetch_bytes + there.batch_bytes + there.resident_bytes
    assert parts + there.plan_bytes + there.stream_bytes <= there.memory_limit
    np.testing.assert_array_equal(np.sort(ids_of(expected)), np.arange(40_000))
    for threads, seed in ((4, 1), (16, 2)):
        units.clear()
        latency.configure(0.01, jitter=True, seed=seed)
        _assert_same(_batches(f"latency://{local}", num_threads=threads), expected)
        assert any(u.peak_held for u in units)
        for u in units:
            assert u.peak_held <= there.scratch_bytes + there.fetch_bytes + there.unit_nbytes, (u.peak_held, there)


def test_units_are_fetched_ahead_of_their_read_jobs(latency, units, tmp_path, monkeypatch):
    """The units of pieces after the admitted ones are fetched by jobs of their own
    (in plan order), and their read jobs decode those bytes: no unit is fetched
    twice."""
    local = write_dataset("parquet", tmp_path, make_columns(N), 500, 1)
    ahead: list[int] = []
    original = fetch.UnitReads._fetch_ahead

    def counting(self, piece, entry):
        ahead.append(piece)
        return original(self, piece, entry)

    monkeypatch.setattr(fetch.UnitReads, "_fetch_ahead", counting)
    latency.configure(0.02)
    _assert_same(_batches(f"latency://{local}"), _batches(local))
    assert len(ahead) > 3 and len(set(ahead)) == len(ahead)
    assert latency.requests == 12  # one data request per row group
    assert all(not u._ahead and u._held == 0 for u in units), "bytes left held after the epoch"


@pytest.mark.parametrize("fmt", ["parquet", "zarr"])
def test_a_fetch_that_keeps_failing_is_a_remote_read_error(fmt, flaky, tmp_path):
    """Every data request fails: the consumer gets RemoteReadError naming the URL,
    as before the fetches were decoupled; no thread or handle is left (no_leaks)."""
    local = write_dataset(fmt, tmp_path, make_columns(2000), 200, 2)
    upload(local, FlakyFS(skip_instance_cache=True), f"flaky://f/{fmt}")
    dataset = sb.open_dataset(f"flaky://f/{fmt}", retry=FAST)
    flaky.configure("always")
    with pytest.raises(sb.RemoteReadError, match=rf"flaky://f/{fmt}.*failed after 4 attempts"):
        _batches(dataset)


def test_a_missing_zarr_chunk_of_a_converted_store_names_the_chunk(flaky, tmp_path):
    """A store whose manifest lists every chunk: a chunk deleted remotely after the
    dataset was opened is a CorruptInputError naming the array and chunk when its
    unit is fetched."""
    local = write_dataset("zarr", tmp_path / "src", make_columns(2000), 200, 1)
    out = str(tmp_path / "conv")
    convert([local], out, "zarr", rows_per_shard=1000, chunk_rows=200)
    upload(out, FlakyFS(skip_instance_cache=True), "flaky://m/zarr")
    dataset = sb.open_dataset("flaky://m/zarr", retry=FAST)  # the manifest's files are checked here
    victim = sorted(k for k in FlakyFS.store if "/id/c/" in k)[2]
    del FlakyFS.store[victim]
    with pytest.raises(sb.CorruptInputError, match=r"array 'id' chunk .*id/c/\d+: missing"):
        _batches(dataset)


def test_a_sharded_zarr_array_is_read_in_its_decode(latency, tmp_path):
    """A shard object holds many units: a sharded array is not fetched ahead but
    read in its decode (zarr reads the inner chunk's range), beside a plain array
    whose chunks are fetched ahead; the batches equal the local ones."""
    path = str(tmp_path / "mixed.zarr")
    group = zarr.open_group(path, mode="w")
    group.create_array("id", shape=(2000,), chunks=(100,), shards=(500,), dtype="i8")[:] = np.arange(2000)
    group.create_array("x", shape=(2000, 4), chunks=(100, 4), dtype="f4")[:] = np.arange(8000).reshape(2000, 4)
    shard = sb.open_dataset(f"latency://{path}").shards[0]
    assert shard.fetches_units
    latency.configure(0.005)
    got = _batches(f"latency://{path}", num_threads=4)
    _assert_same(got, _batches(path, num_threads=4))
    np.testing.assert_array_equal(np.sort(ids_of(got)), np.arange(2000))


@pytest.mark.parametrize("request_bytes, label_requests", [(8 << 20, 1), (50_000, 4)])
def test_a_remote_npy_column_held_whole_is_read_whole_not_per_piece(
    request_bytes, label_requests, latency, tmp_path, monkeypatch
):
    """A narrow column the budget holds whole (``resident_columns``, charged to it) is
    read remotely as it is locally: once, in requests of at most
    ``_RESIDENT_REQUEST_BYTES`` (160 KB here: 1 or 4 of them), then gathered from
    memory; before, every shuffled piece sent a request for its few bytes of labels
    beside the one for its features. The batches are the local ones."""
    from streambatch.sources import _npy

    monkeypatch.setattr(_npy, "_RESIDENT_REQUEST_BYTES", request_bytes)
    root = tmp_path / "npy"
    root.mkdir()
    np.save(root / "id.npy", np.arange(20_000, dtype=np.int64))
    np.save(root / "x.npy", np.arange(20_000 * 64, dtype=np.float32).reshape(20_000, 64))
    paths: list[str] = []
    original = LatencyFS._cat_file

    async def recording(self, path, start=None, end=None, **kwargs):
        paths.append(path)
        return await original(self, path, start, end, **kwargs)

    monkeypatch.setattr(LatencyFS, "_cat_file", recording)
    latency.configure(0.001)
    kw = dict(batch_size=100, memory_limit="2MiB", num_threads=4, seed=3)
    with sb.Loader(f"latency://{root}", **kw) as loader:
        assert loader.budget.resident_columns == ("id",) and not loader.budget.fits
        got = list(loader)
    _assert_same(got, _batches(str(root), **kw))
    label_reads = [p for p in paths if p.endswith("id.npy")]
    feature_reads = [p for p in paths if p.endswith("x.npy")]
    assert len(label_reads) == label_requests  # (headers are read through files, not counted here)
    assert len(feature_reads) > 20 * len(label_reads)
