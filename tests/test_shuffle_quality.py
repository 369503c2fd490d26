"""Shuffle quality is set by memory, not by file layout: data that fits is fully
shuffled, more memory never hurts, and row groups far larger than the budget are
streamed (slices of many row groups open at once) with the loader's other
contracts intact: exactly once, the same order whatever the thread count, exact
resume at every batch boundary, and peak RSS within the bound."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

import streambatch as sb
from streambatch.quality import ShuffleScore

CLASSES = 10
WIDTH = 8


def _class_sorted(n: int, width: int = WIDTH) -> dict[str, np.ndarray]:
    label = (np.arange(n, dtype=np.int64) * CLASSES) // n
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None], width, axis=1)  # x[:, k] == row id
    return {"x": x, "label": label}


def _write(layout: str, root, n: int, width: int = WIDTH) -> str:
    """``layout`` as a common writer lays it out: ``npy``; ``pq-<rows>`` (pyarrow,
    fixed-size lists, ``rows`` per row group, snappy); ``zarr-<rows>`` (zarr defaults)."""
    cols = _class_sorted(n, width)
    kind, _, unit = layout.partition("-")
    path = os.path.join(str(root), layout)
    if kind == "npy":
        os.makedirs(path)
        for name, values in cols.items():
            np.save(os.path.join(path, f"{name}.npy"), values)
    elif kind == "pq":
        path += ".parquet"
        x = pa.FixedSizeListArray.from_arrays(pa.array(cols["x"].reshape(-1)), width)
        pq.write_table(pa.table({"x": x, "label": cols["label"]}), path, row_group_size=int(unit))
    else:
        path += ".zarr"
        with zarr.config.set({"array.write_empty_chunks": True}):  # class 0's label chunk is all fill_value
            group = zarr.open_group(path, mode="w")
            group.create_array("x", data=cols["x"], chunks=(int(unit), width))
            group.create_array("label", data=cols["label"], chunks=(int(unit),))
    return path


def _epoch(loader: sb.Loader) -> tuple[float, np.ndarray]:
    """(score, row ids in order) of one epoch, checking that columns stay aligned."""
    scorer = ShuffleScore(CLASSES)
    ids = []
    for batch in loader:
        scorer.add(batch["label"])
        ids.append(batch["x"][:, 0].astype(np.int64))
        assert (batch["x"] == batch["x"][:, :1]).all()
    return scorer.score(), np.concatenate(ids)


def _loader(path: str, limit: str, **kw) -> sb.Loader:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sb.PoorShuffleWarning)
        return sb.Loader(path, 256, memory_limit=limit, **kw)


N = 100_000


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    names = ("npy", "pq-8192", "pq-100000", "zarr-4096", "zarr-16384")
    return {name: _write(name, root, N) for name in names}


@pytest.mark.parametrize("layout", ["npy", "pq-8192", "pq-100000", "zarr-4096", "zarr-16384"])
def test_data_that_fits_is_fully_shuffled(layouts, layout):
    """With the whole dataset inside the budget, every layout scores like a full
    permutation, however large its read units (one row group holding everything)."""
    loader = _loader(layouts[layout], "64MiB")
    assert loader.budget.fits
    assert loader.budget.ring_rows < 2 * N, "the ring is sized to the data, not to the budget"
    score, ids = _epoch(loader)
    assert np.array_equal(np.sort(ids), np.arange(N))
    assert score <= 1.05, score


def test_data_that_fits_reads_row_groups_whole_when_their_decodes_fit(layouts):
    """Streams only pay when the data does not fit: held whole, every row group is
    live at once anyway, and a whole row group decodes with less CPU than slices
    of many interleaved streams."""
    loader = _loader(layouts["pq-8192"], "64MiB")
    assert loader.budget.fits and loader.budget.stream_bytes == 0, loader.budget.describe()
    assert not (loader.plan().stream >= 0).any()


def test_unshuffled_epochs_read_row_groups_whole_when_they_fit_and_stream_them_when_not(tmp_path):
    """Stored order mixes nothing, so streaming a row group that fits only costs
    decode time: row groups of 4 MB (wider than one open stream costs) are read
    whole, one piece each; a row group larger than the budget is still read, front
    to back, as one stream."""
    n = 40_960
    loader = _loader(_write("pq-8192", tmp_path, n, width=128), "48MiB", shuffle=False)
    assert loader.budget.stream_bytes == 0, loader.budget.describe()
    plan = loader.plan()
    assert not (plan.stream >= 0).any() and len(plan.stream) == n // 8192, "one piece per row group"
    _, ids = _epoch(loader)
    assert np.array_equal(ids, np.arange(n))

    streamed = _loader(_streamed(tmp_path), "16MiB", shuffle=False)
    assert streamed.budget.stream_bytes > 0 and streamed.budget.lanes == 1, streamed.budget.describe()
    _, ids = _epoch(streamed)
    assert np.array_equal(ids, np.arange(240_000))


@pytest.mark.parametrize("layout", ["npy", "pq-8192"])
def test_more_memory_never_hurts(layouts, layout):
    scores = [_epoch(_loader(layouts[layout], limit))[0] for limit in ("2MiB", "4MiB", "8MiB", "64MiB")]
    assert all(later <= earlier + 0.03 for earlier, later in zip(scores, scores[1:])), scores


def _streamed(tmp_path, n: int = 240_000, group: int = 80_000) -> str:
    """Rows of 264 bytes in row groups of 21 MB: larger than the window of a 32 MiB budget."""
    return _write(f"pq-{group}", tmp_path, n, width=64)


def test_row_groups_larger_than_the_window_are_streamed_and_mixed(tmp_path):
    """Three row groups of 21 MB under a budget of 32 MiB: all three are streamed at
    once, so every batch mixes rows of the three (a window of whole row groups
    could not hold even one)."""
    path = _streamed(tmp_path)
    loader = _loader(path, "32MiB")
    budget = loader.budget
    assert budget.stream_bytes > 0 and budget.lanes == 3 and not budget.fits
    assert budget.ring_rows < 80_000, "the window holds less than one row group"
    score, ids = _epoch(loader)
    assert np.array_equal(np.sort(ids), np.arange(240_000))
    groups = ids[: ids.size // 256 * 256].reshape(-1, 256) // 80_000
    mixed = np.mean([len(np.unique(g)) for g in groups[10:-10]])
    assert mixed > 2.9, f"batches mix rows of {mixed:.2f} row groups on average"
    assert score < 10, score  # three class-sorted places at a time: the most three streams can do


def test_the_first_batch_waits_for_the_slices_it_needs_not_for_a_group_of_batches(tmp_path, monkeypatch):
    """Streamed slices load a few rows per tick each, so eight batches need far more
    slices read than one: the first batch is handed over on its own. With one slow
    reader thread (it cannot run far ahead), the slices read by then are the ones
    the first batch's rows come from, plus the one in flight."""
    from streambatch.shuffle import WindowShuffle
    from streambatch.sources import _parquet_stream

    path = _write("pq-8192", tmp_path, 24 * 8192, width=128)  # 4 MB row groups: each streamed
    loader = _loader(path, "32MiB", num_threads=1)
    plan, budget = loader.plan(), loader.budget
    assert budget.batch_group > 1 and (plan.stream >= 0).all()
    keys = np.concatenate(
        [s.keys for s in itertools.islice(WindowShuffle(plan, budget.max_segment_ticks).segments(), 40)]
    )
    needed = plan.pieces_holding(float(keys[255]))  # slices holding the first 256 rows of the order
    assert plan.pieces_holding(float(keys[256 * budget.batch_group - 1])) > needed + 8, "a group would need more"

    reads = []
    read_into = _parquet_stream.ParquetRowStream.read_into

    def slow_read_into(self, start, stop, out):
        time.sleep(0.02)
        read_into(self, start, stop, out)
        reads.append(stop - start)

    monkeypatch.setattr(_parquet_stream.ParquetRowStream, "read_into", slow_read_into)
    with loader:
        it = iter(loader)
        next(it)
        read_by_then = len(reads)
    assert needed <= read_by_then <= needed + 1, (read_by_then, needed)


def test_streamed_order_does_not_depend_on_the_thread_count(tmp_path):
    path = _streamed(tmp_path)
    runs = [_epoch(_loader(path, "32MiB", num_threads=t, seed=5))[1] for t in (1, 2, 4)]
    assert np.array_equal(runs[0], runs[1]) and np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("remainder", ["pad", "drop"])
def test_streamed_ranks_split_row_groups_exactly_once(tmp_path, world_size, remainder):
    """Rank boundaries fall inside row groups: a rank's stream starts mid-group."""
    n = 60_001
    path = _write("pq-20000", tmp_path, n, width=64)
    seen = []
    for rank in range(world_size):
        loader = _loader(path, "4MiB", rank=rank, world_size=world_size, remainder=remainder)
        assert loader.budget.stream_bytes > 0
        seen.append(_epoch(loader)[1])
    counts = {len(s) for s in seen}
    assert len(counts) == 1, "every rank gets the same number of rows"
    everything = np.concatenate(seen)
    if remainder == "drop":
        assert len(np.unique(everything)) == len(everything) == (n // world_size) * world_size
    else:
        assert np.array_equal(np.unique(everything), np.arange(n))
        assert len(everything) - n < world_size


def test_resume_at_every_batch_boundary_is_exact_with_streams(tmp_path):
    path = _write("pq-5000", tmp_path, 12_000, width=64)
    kw = {"seed": 2}
    loader = _loader(path, "1MiB", **kw)
    assert loader.budget.stream_bytes > 0
    full = [b["x"][:, 0].copy() for b in loader]
    for k in range(len(full) + 1):
        first = _loader(path, "1MiB", **kw)
        it = iter(first)
        for _ in range(k):
            next(it)
        state = first.state_dict()
        it.close()
        resumed = _loader(path, "1MiB", **kw)
        resumed.load_state_dict(state)
        rest = [b["x"][:, 0] for b in resumed]
        assert len(rest) == len(full) - k, k
        assert all(np.array_equal(a, b) for a, b in zip(rest, full[k:])), k


# VmHWM, not ru_maxrss: Linux carries the parent's high-water mark across exec into ru_maxrss
_ONE_BIG_GROUP = """
import sys, warnings
import streambatch as sb
warnings.simplefilter("ignore")
loader = sb.Loader(sys.argv[1], 256, memory_limit="64MiB")
rows = sum(len(b["label"]) for b in loader)
hwm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(rows, hwm, loader.budget.stream_bytes)
"""


@pytest.mark.slow
def test_a_million_row_group_runs_at_64mib_within_the_rss_bound(tmp_path):
    """pandas and pyarrow write 1,048,576 rows per row group by default: at 64 MiB the
    group is streamed, not refused, and peak RSS stays within memory_limit + 300 MiB."""
    n = 1 << 20
    path = str(tmp_path / "pandas-default.parquet")
    x = np.random.default_rng(0).standard_normal((n, 32), dtype=np.float32)  # 136 MB of rows
    table = pa.table(
        {
            "x": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 32),
            "label": (np.arange(n) * CLASSES // n).astype(np.int64),
        }
    )
    pq.write_table(table, path)  # pyarrow's default row group: all 1,048,576 rows
    del x, table
    assert pq.ParquetFile(path).metadata.num_row_groups == 1
    done = subprocess.run([sys.executable, "-c", _ONE_BIG_GROUP, path], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows, peak, stream_bytes = map(int, done.stdout.split())
    assert rows == n and stream_bytes > 0
    assert peak <= (64 << 20) + (300 << 20), f"peak RSS {peak / 2**20:.0f} MiB"


def _one_unit_ring(tmp_path) -> tuple[str, str]:
    """Zarr chunks (compressed: decoded whole) of which the budget's ring holds one,
    not two: 40,000 rows of 1 KiB in 8,192-row chunks (8 MiB each) at 14 MiB."""
    path = _write("zarr-8192", tmp_path, 40_000, width=256)
    return path, "14MiB"


def test_a_ring_that_holds_one_read_unit_runs_and_delivers_every_row_once(tmp_path):
    path, limit = _one_unit_ring(tmp_path)
    loader = _loader(path, limit, seed=1)
    budget = loader.budget
    assert budget.max_piece_rows <= budget.ring_rows < 2 * budget.max_piece_rows, budget.describe()
    _, rows = _epoch(loader)
    assert np.array_equal(np.sort(rows), np.arange(40_000))
    # within each unit the rows are shuffled; units come one after another (the physics)
    units = rows // 8192
    assert np.count_nonzero(np.diff(units)) <= 2 * 5, "each unit is emitted (nearly) on its own"
    assert not np.array_equal(rows, np.sort(rows))


def test_a_ring_that_holds_one_read_unit_resumes_exactly_at_every_batch_boundary(tmp_path):
    path, limit = _one_unit_ring(tmp_path)
    kw = {"seed": 3}
    full = [b["x"][:, 0].copy() for b in _loader(path, limit, **kw)]
    for k in range(len(full) + 1):
        first = _loader(path, limit, **kw)
        it = iter(first)
        for _ in range(k):
            next(it)
        state = first.state_dict()
        it.close()
        resumed = _loader(path, limit, **kw)
        resumed.load_state_dict(state)
        rest = [b["x"][:, 0] for b in resumed]
        assert len(rest) == len(full) - k, k
        assert all(np.array_equal(a, b) for a, b in zip(rest, full[k:])), k


_BIG_CHUNKS = _ONE_BIG_GROUP.replace("print(rows, hwm, loader.budget.stream_bytes)", "print(rows, hwm)")


@pytest.mark.slow
def test_zarr_chunks_of_half_the_budget_run_at_64mib_within_the_rss_bound(tmp_path):
    """65,536-row chunks of 512-byte rows (32 MiB decoded, compressed whole): the ring
    holds one at 64 MiB, and the epoch runs within memory_limit + 300 MiB."""
    n = 4 * 65536
    path = str(tmp_path / "big-chunks.zarr")
    x = np.random.default_rng(0).standard_normal((n, 128), dtype=np.float32)
    group = zarr.open_group(path, mode="w")
    group.create_array("x", data=x, chunks=(65536, 128))
    group.create_array("label", data=(np.arange(n) * CLASSES // n).astype(np.int64), chunks=(65536,))
    del x
    done = subprocess.run([sys.executable, "-c", _BIG_CHUNKS, path], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows, peak = map(int, done.stdout.split())
    assert rows == n
    assert peak <= (64 << 20) + (300 << 20), f"peak RSS {peak / 2**20:.0f} MiB"


def test_the_first_batch_of_a_large_epoch_that_fits_waits_for_one_read_unit_not_two():
    """Two whole units in the head double the first batch's wait for large units; on an
    epoch of a million rows the first 256 rows drawn from one unit do not show."""
    from streambatch.plan import _head_rows

    def head(rows: int, unit: int) -> int:
        sizes = np.full(rows // unit, unit)
        return _head_rows(sizes, np.full(sizes.size, -1), lanes=1)

    assert head(1 << 20, 65536) == 65536
    assert head(98_304, 8192) == 2 * 8192  # a short epoch: its first batches mix two units
    assert head(1 << 20, 1024) == 8192  # small units: at least 8,192 rows
