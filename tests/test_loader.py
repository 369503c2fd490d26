"""The loader's contract, the same for every format: exactly-once delivery,
fixed-size batches, determinism, and columns that stay row-aligned."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import streambatch as sb
from tests.conftest import collect, ids_of, make_columns, write_dataset


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "ordered"])
@pytest.mark.parametrize("drop_last", [False, True], ids=["keep-last", "drop-last"])
@pytest.mark.parametrize("batch_size", [1, 64, 100, 333, 1000, 5000])
def test_every_row_exactly_once_per_epoch(dataset_factory, fmt, shuffle, drop_last, batch_size):
    n = 1000
    path = dataset_factory(fmt, n=n, chunk_rows=64, shards=2)
    loader = sb.Loader(path, batch_size, shuffle=shuffle, drop_last=drop_last, memory_limit="2MiB")
    batches = collect(loader)
    ids = ids_of(batches)
    assert len(batches) == len(loader)
    sizes = [len(b["id"]) for b in batches]
    if drop_last:
        assert sizes == [batch_size] * (n // batch_size)
        assert len(np.unique(ids)) == len(ids) == (n // batch_size) * batch_size
    else:
        assert sizes[:-1] == [batch_size] * (len(sizes) - 1) and 0 < sizes[-1] <= batch_size
        assert np.array_equal(np.sort(ids), np.arange(n))
    if not shuffle and not drop_last:
        assert np.array_equal(ids, np.arange(n))
    for batch in batches:  # columns stay aligned, N-d rows keep dtype and shape
        assert batch["img"].dtype == np.int32 and batch["img"].shape[1:] == (3, 2)
        assert np.array_equal(batch["img"][:, 2, 1], batch["id"])
        assert np.array_equal(batch["x"][:, 0], batch["id"].astype(np.float32))
        assert all(a.flags.c_contiguous and a.flags.owndata for a in batch.values())


def test_shuffled_order_is_not_the_stored_order(dataset_factory, fmt):
    path = dataset_factory(fmt, n=2000, chunk_rows=50)
    ids = ids_of(collect(sb.Loader(path, 100, memory_limit="1MiB")))
    assert not np.array_equal(ids, np.arange(2000))
    # past the ramp-up, a batch mixes rows of many read units
    middle = ids[1000:1100] // 50
    assert len(np.unique(middle)) > 8


def test_same_batches_whatever_the_thread_count(dataset_factory, fmt):
    path = dataset_factory(fmt, n=3000, chunk_rows=64, shards=3)
    runs = []
    for threads in (1, 2, 4):
        loader = sb.Loader(path, 128, seed=7, memory_limit="1MiB", num_threads=threads)
        loader.set_epoch(3)
        runs.append(ids_of(collect(loader)))
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])


def test_epochs_and_seeds_give_different_orders(dataset_factory, fmt):
    path = dataset_factory(fmt, n=2000, chunk_rows=64)
    loader = sb.Loader(path, 100, seed=1, memory_limit="1MiB")
    epoch0 = ids_of(collect(loader))
    epoch1 = ids_of(collect(loader))  # epochs advance by themselves
    loader.set_epoch(0)
    again0 = ids_of(collect(loader))
    other_seed = ids_of(collect(sb.Loader(path, 100, seed=2, memory_limit="1MiB")))
    assert np.array_equal(epoch0, again0)
    assert not np.array_equal(epoch0, epoch1)
    assert not np.array_equal(epoch0, other_seed)
    assert np.array_equal(np.sort(epoch1), np.arange(2000))


@pytest.mark.parametrize(
    "rows, limit, window, golden",
    [
        # the data fits the budget: a full permutation
        (
            5000,
            "512KiB",
            17,
            [
                ([4431, 4921, 893, 4983, 1189, 4381, 110, 2897, 704, 1848], "77dacc20bfe9c362"),
                ([670, 859, 1082, 4583, 1631, 2020, 3529, 215, 1385, 4246], "bbf6b384cc068cd8"),
            ],
        ),
        # ten times the budget: the sliding window
        (
            50000,
            "512KiB",
            10,
            [
                ([49799, 49610, 49598, 49611, 49625, 49795, 49739, 49779, 49626, 49648], "1f13e70365d62061"),
                ([45884, 46082, 46077, 46087, 46041, 46105, 45933, 45804, 45992, 45805], "c41be28ed99cb649"),
            ],
        ),
    ],
    ids=["fits", "window"],
)
def test_golden_order_is_pinned(tmp_path, rows, limit, window, golden):
    """A change of the row order for a fixed seed must be deliberate: it breaks
    every saved checkpoint. Update the expected values only on purpose."""
    path = write_dataset("npy", tmp_path, make_columns(rows))
    loader = sb.Loader(path, 100, seed=0, memory_limit=limit)
    assert loader.budget.window_pieces == window and loader.budget.piece_rows == 342
    for head, digest in golden:
        ids = ids_of(collect(loader))
        assert ids[:10].tolist() == head
        assert hashlib.sha256(ids.tobytes()).hexdigest()[:16] == digest


def test_open_dataset_reads_metadata(dataset_factory, fmt):
    path = dataset_factory(fmt, n=500, chunk_rows=64, shards=2)
    ds = sb.open_dataset(path)
    assert ds.num_rows == 500
    assert ds.columns["img"] == (np.dtype(np.int32), (3, 2))
    assert ds.columns["id"] == (np.dtype(np.int64), ())
    projected = sb.open_dataset(path, columns=["id"])
    assert list(projected.columns) == ["id"]
    batch = next(iter(sb.Loader(projected, 10)))
    assert list(batch) == ["id"]


def test_dict_and_single_file_sources(tmp_path):
    cols = make_columns(300)
    for name, values in cols.items():
        np.save(tmp_path / f"{name}.npy", values)
    from_dict = sb.Loader({k: str(tmp_path / f"{k}.npy") for k in cols}, 50, shuffle=False)
    assert np.array_equal(ids_of(collect(from_dict)), np.arange(300))
    single = sb.open_dataset(str(tmp_path / "img.npy"))
    assert list(single.columns) == ["img"] and single.num_rows == 300
    listed = sb.open_dataset([str(tmp_path / "id.npy"), str(tmp_path / "id.npy")])
    assert listed.num_rows == 600


def test_first_batch_needs_few_pieces_whatever_the_window(tmp_path):
    """First-batch latency must not grow with the window: the ramp emits the
    first rows from the first pieces only. 8 MiB: a sliding window over a fifth
    of the data; 64 MiB: the data fits, and the first batch waits for the head
    of the epoch, a fixed number of rows (``plan._MIN_HEAD_ROWS``, 8192), so that
    it is drawn from many pieces."""
    from streambatch import plan as plan_module

    path = write_dataset("npy", tmp_path, make_columns(200_000))
    for limit, head in (("8MiB", 0), ("64MiB", plan_module._MIN_HEAD_ROWS)):
        loader = sb.Loader(path, 256, memory_limit=limit)
        plan = loader.plan()
        from streambatch.shuffle import WindowShuffle

        shuffle = WindowShuffle(plan, loader.budget.max_segment_ticks)
        needed, rows = 0, 0
        for segment in shuffle.segments():
            needed, rows = segment.pieces_needed, rows + segment.positions.size
            if rows >= 256:
                break
        assert loader.budget.window_pieces > 100
        assert loader.budget.fits == bool(head)
        # at most twice the 8 batches' worth the previous schedule needed, beyond the head
        assert needed * loader.budget.piece_rows <= 16 * 256 + 1.5 * head, (limit, needed)


def test_state_dict_round_trips_through_json_and_resumes_exactly(dataset_factory, fmt):
    path = dataset_factory(fmt, n=1500, chunk_rows=64, shards=2)
    full = ids_of(collect(sb.Loader(path, 64, seed=3, memory_limit="1MiB")))
    for stop_after in (0, 1, 7, 23, 24):
        loader = sb.Loader(path, 64, seed=3, memory_limit="1MiB")
        it = iter(loader)
        head = [next(it) for _ in range(stop_after)]
        state = json.loads(json.dumps(loader.state_dict()))
        it.close()
        resumed = sb.Loader(path, 64, seed=3, memory_limit="1MiB", num_threads=1)
        resumed.load_state_dict(state)
        tail = collect(resumed)
        assert np.array_equal(np.concatenate([ids_of(head), ids_of(tail)]), full), stop_after
    assert len(json.dumps(state)) < 10_000


def test_state_mismatch_names_the_field(dataset_factory):
    path = dataset_factory("npy", n=500)
    state = sb.Loader(path, 64, seed=3).state_dict()
    with pytest.raises(sb.StateMismatchError, match="seed"):
        sb.Loader(path, 64, seed=4).load_state_dict(state)
    with pytest.raises(sb.StateMismatchError, match="batch_size"):
        sb.Loader(path, 32, seed=3).load_state_dict(state)


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_ranks_get_disjoint_equal_shares_that_cover_the_epoch(dataset_factory, fmt, world_size):
    n = 1001
    path = dataset_factory(fmt, n=n, chunk_rows=300)  # fewer units than ranks x something
    shares = []
    for rank in range(world_size):
        loader = sb.Loader(path, 50, rank=rank, world_size=world_size, remainder="drop", memory_limit="1MiB")
        shares.append(ids_of(collect(loader)))
    lengths = {len(s) for s in shares}
    assert lengths == {n // world_size}
    union = np.concatenate(shares)
    assert len(np.unique(union)) == len(union)
    padded = [ids_of(collect(sb.Loader(path, 50, rank=r, world_size=world_size))) for r in range(world_size)]
    assert {len(s) for s in padded} == {-(-n // world_size)}
    assert set(np.concatenate(padded).tolist()) == set(range(n))


def test_rank_and_world_size_come_from_torchrun_variables(dataset_factory, monkeypatch):
    path = dataset_factory("npy", n=400)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    loader = sb.Loader(path, 10)
    assert (loader.rank, loader.world_size) == (1, 4)
    assert len(ids_of(collect(loader))) == 100
    explicit = sb.Loader(path, 10, rank=0, world_size=1)
    assert (explicit.rank, explicit.world_size) == (0, 1)
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK"):
        sb.Loader(path, 10)


def test_a_window_of_few_read_units_warns(dataset_factory):
    path = dataset_factory("parquet", n=20_000, chunk_rows=5000)
    with pytest.warns(sb.PoorShuffleWarning, match="convert --shuffle"):
        sb.Loader(path, 100, memory_limit="2MiB")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sb.Loader(path, 100, memory_limit="2MiB", shuffle=False)  # no shuffle asked: nothing to warn about


def test_default_threads_follow_the_storage(dataset_factory):
    local = sb.Loader(dataset_factory("npy", n=100), 10)
    assert 2 <= local.num_threads <= 8
    assert sb.Loader(dataset_factory("npy", n=100), 10, num_threads=3).num_threads == 3


def test_a_reader_timeout_surfaces_instead_of_hanging(dataset_factory, monkeypatch):
    from streambatch.sources import _npy

    def timing_out(self, starts, stops, out):
        raise sb.ReaderTimeoutError("x.npy rows 0:10: read timed out")

    monkeypatch.setattr(_npy._NpyReader, "read_many", timing_out)
    monkeypatch.setattr(_npy._NpyReader, "plain_rows", lambda self: None)  # reads go through read_many
    loader = sb.Loader(dataset_factory("npy", n=1000), 10, memory_limit="1MiB")
    with pytest.raises(TimeoutError, match="timed out"):
        next(iter(loader))


def test_narrow_columns_are_held_whole_and_charged_to_the_budget(dataset_factory):
    path = dataset_factory("npy", n=20_000)
    loader = sb.Loader(path, 100, memory_limit="4MiB")
    b = loader.budget
    assert "id" in b.resident_columns and b.resident_bytes >= 20_000 * 8
    assert b.ring_bytes + b.scratch_bytes + b.fetch_bytes + b.batch_bytes + b.resident_bytes <= b.memory_limit
    assert np.array_equal(np.sort(ids_of(collect(loader))), np.arange(20_000))
    ordered = sb.Loader(path, 100, memory_limit="4MiB", shuffle=False)
    assert ordered.budget.resident_columns == ()  # sequential reads need no help


def test_a_column_spec_reads_like_its_dtype_shape_tuple(dataset_factory):
    spec = sb.open_dataset(dataset_factory("npy", n=10)).columns["img"]
    dtype, shape = spec
    assert (spec[0], spec[1], spec[-1], len(spec)) == (dtype, shape, shape, 2)
    assert tuple(spec) == spec[:] == (np.dtype(np.int32), (3, 2)) == spec
    assert repr(spec) == "(int32, (3, 2))"


@pytest.mark.parametrize("fmt", ["npy", "parquet", "zarr"])
def test_the_first_batch_does_not_wait_for_modules_only_rare_paths_need(fmt, tmp_path):
    """In a fresh process, a shuffled epoch's first batch needs neither
    ``pyarrow.compute`` (~0.1 s to import: casts, null fills and dictionary recoding
    use it) nor ``numpy.ma`` (~35 ms, pulled in by plain ``np.unique``): importing
    them was most of the first-batch latency of a Parquet epoch."""
    import subprocess
    import sys

    path = write_dataset(fmt, tmp_path, make_columns(5000), 500, 2)
    script = (
        "import sys, streambatch as sb\n"
        f"it = iter(sb.Loader({path!r}, 100, memory_limit='1MiB', seed=0))\n"
        "next(it)\n"
        "it.close()\n"
        "print(sorted(m for m in ('pyarrow.compute', 'numpy.ma') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
