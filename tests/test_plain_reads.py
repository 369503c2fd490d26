"""Read jobs over plain-row shards (local ``.npy``): all of a job's pieces in one
call per column, whatever shards they come from, with exactly the bytes the
shard-by-shard reads give.

The specification: an epoch read through :class:`streambatch.plain_reads.PlainRowReads`
is batch for batch the epoch read through each shard's ``read_many`` (the path every
other format takes), for many shards, a ring the pieces wrap around, and narrow
columns held in memory; a file cut short is named; and a job costs one read call
per file-backed column however many shards it spans.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import streambatch as sb
from streambatch import plain_reads
from streambatch.errors import CorruptInputError
from streambatch.plain_reads import PlainRowReads
from streambatch.plan import EpochPlan
from streambatch.ring import RowRing
from streambatch.sources._base import FileRows, MemoryRows
from streambatch.sources._npy import _NpyReader

ROWS = 6_000
WIDE = 64  # float32 values per row: 256 bytes, so the ring holds a fraction of the data


def _write_shards(root: Path, shards: int) -> list[str]:
    """``shards`` directories of ``id`` (narrow: held in memory when shuffled) and
    ``x`` (wide, encoding the id), rows split unevenly."""
    ids = np.arange(ROWS, dtype=np.int64)
    x = ids[:, None].astype(np.float32) + np.linspace(0, 0.5, WIDE, dtype=np.float32)
    cuts = np.sort(np.random.default_rng(shards).choice(np.arange(1, ROWS), shards - 1, replace=False))
    paths = []
    for i, (a, b) in enumerate(zip([0, *cuts.tolist()], [*cuts.tolist(), ROWS])):
        path = root / f"part-{i}"
        path.mkdir()
        np.save(path / "id.npy", ids[a:b])
        np.save(path / "x.npy", x[a:b])
        paths.append(str(path))
    return paths


def _epoch(paths: list[str], limit: int, **options) -> list[dict[str, np.ndarray]]:
    loader = sb.Loader(paths, 50, seed=11, memory_limit=limit, drop_last=False, **options)
    budget = loader.budget
    assert budget.ring_rows < ROWS, "the ring must hold a fraction of the rows (pieces wrap around it)"
    return [{k: v.copy() for k, v in batch.items()} for batch in loader]


def _assert_same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for one, other in zip(a, b):
        assert one.keys() == other.keys()
        for name in one:
            np.testing.assert_array_equal(one[name], other[name])


@pytest.mark.parametrize("shards", [1, 3, 8])
@pytest.mark.parametrize("threads", [1, 3])
def test_an_epoch_read_as_plain_rows_equals_the_epoch_read_shard_by_shard(tmp_path, monkeypatch, shards, threads):
    paths = _write_shards(tmp_path, shards)
    limit = 100 * ROWS  # the id column (8 bytes a row) is held in memory, x wraps around the ring
    assert sb.Loader(paths, 50, seed=11, memory_limit=limit).budget.resident_columns == ("id",)
    plain = _epoch(paths, limit, num_threads=threads)
    ids = np.concatenate([b["id"] for b in plain])
    assert sorted(ids.tolist()) == list(range(ROWS))
    for batch in plain:  # each row's x is its own id's
        np.testing.assert_array_equal(batch["x"][:, 0], batch["id"].astype(np.float32))
    monkeypatch.setattr(_NpyReader, "plain_rows", lambda self: None)  # every job through read_many
    _assert_same(plain, _epoch(paths, limit, num_threads=threads))


def test_a_shard_cut_short_after_opening_is_named_with_the_byte_it_ended_at(tmp_path):
    paths = _write_shards(tmp_path, 4)
    loader = sb.Loader(paths, 50, seed=11, memory_limit=100 * ROWS)
    victim = Path(paths[2]) / "x.npy"
    os.truncate(victim, os.path.getsize(victim) - 40 * WIDE * 4)
    with pytest.raises(CorruptInputError, match=rf"{victim}: file ended at byte \d+, \d+ bytes short"):
        for _ in loader:
            pass


def test_a_job_is_one_read_call_per_file_column_however_many_shards_it_spans(tmp_path, monkeypatch):
    paths = _write_shards(tmp_path, 8)
    calls, jobs, spans = [], [], []
    real_pread, real_read = plain_reads.native.pread_ranges, PlainRowReads.read

    def counting_pread(*args, **kwargs):
        calls.append(1)
        return real_pread(*args, **kwargs)

    def counting_read(self, pieces):
        jobs.append(1)
        spans.append(np.unique(self._plan.shard[pieces]).size)
        return real_read(self, pieces)

    # the module's own reference only: loading id into memory reads through the same function
    monkeypatch.setattr(plain_reads, "native", SimpleNamespace(pread_ranges=counting_pread))
    monkeypatch.setattr(PlainRowReads, "read", counting_read)
    batches = _epoch(paths, 100 * ROWS)
    assert sum(len(b["id"]) for b in batches) == ROWS
    assert jobs and max(spans) > 1  # jobs do span several shards
    assert len(calls) == len(jobs)  # x only: id is in memory


class _Reader:
    def __init__(self, layout):
        self.layout = layout

    def plain_rows(self):
        return self.layout


class _Cache:
    """Hands out fixed readers and counts what is still acquired."""

    def __init__(self, readers):
        self.readers, self.held = readers, 0

    def acquire(self, index):
        self.held += 1
        return self.readers[index]

    def release(self, index):
        self.held -= 1


def _plan(shard, start, stop) -> EpochPlan:
    shard, start, stop = (np.array(v, np.int64) for v in (shard, start, stop))
    offsets = np.concatenate([[0], np.cumsum(stop - start)])
    n = shard.size
    return EpochPlan(shard, start, stop, np.full(n, -1), offsets, np.zeros(n), np.ones(n), 0, True)


def test_columns_mixing_files_and_memory_across_shards_land_in_their_wrapped_slots(tmp_path):
    """Shard 0 holds ``v`` in a file, shard 1 in memory; the second piece wraps
    around a ring of 10 rows."""
    values = [np.arange(100, dtype=np.int32) * 10, np.arange(100, dtype=np.int32) * 10 + 1]
    np.save(tmp_path / "v.npy", values[0])
    header = os.path.getsize(tmp_path / "v.npy") - values[0].nbytes
    fd = os.open(tmp_path / "v.npy", os.O_RDONLY)
    try:
        readers = [
            _Reader({"v": FileRows(fd, header, 4, str(tmp_path / "v.npy"))}),
            _Reader({"v": MemoryRows(values[1])}),
        ]
        cache = _Cache(readers)
        plan = _plan([0, 1, 0], [5, 20, 50], [9, 27, 52])  # positions 0:4, 4:11 (wraps), 11:13
        ring = RowRing(_kinds(), 10)
        slots = ring.arrays()["v"]
        slots[:] = -1
        reads = PlainRowReads(plan, None, ring, cache, 8)  # type: ignore[arg-type]
        assert reads.read(np.array([1, 2]))  # piece 0 is emitted: its slots are free
        assert cache.held == 0
        expected = np.full(10, -1)
        expected[4:10] = values[1][20:26]
        expected[0] = values[1][26]  # position 10 is slot 0
        expected[1:3] = values[0][50:52]  # read from the file
        np.testing.assert_array_equal(slots, expected)
    finally:
        os.close(fd)


def test_a_job_touching_a_shard_without_plain_rows_reads_nothing_and_says_so(tmp_path):
    readers = [_Reader({"v": MemoryRows(np.arange(10, dtype=np.int32))}), _Reader(None)]
    cache = _Cache(readers)
    ring = RowRing(_kinds(), 10)
    ring.arrays()["v"][:] = -1
    reads = PlainRowReads(_plan([0, 1], [0, 0], [3, 3]), None, ring, cache, 8)  # type: ignore[arg-type]
    assert not reads.read(np.array([0, 1]))
    assert cache.held == 0
    assert (ring.arrays()["v"] == -1).all()


def _kinds():
    from streambatch.columns import FixedKind
    from streambatch.sources import ColumnSpec

    return {"v": FixedKind("v", ColumnSpec(np.dtype(np.int32), ()), 4)}


def test_a_failed_read_is_a_reader_error_naming_the_column_and_shard(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)  # a directory: pread fails with EISDIR
    try:
        cache = _Cache([_Reader({"v": FileRows(fd, 0, 4, str(tmp_path / "v.npy"))})])
        dataset = SimpleNamespace(shards=[SimpleNamespace(path=str(tmp_path / "shard-0"))])
        reads = PlainRowReads(_plan([0], [0], [3]), dataset, RowRing(_kinds(), 10), cache, 8)  # type: ignore[arg-type]
        with pytest.raises(sb.ReaderError, match=r"reading column 'v' of .*shard-0 failed: .*Is a directory"):
            reads.read(np.array([0]))
        assert cache.held == 0
    finally:
        os.close(fd)
