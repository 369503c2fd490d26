"""The PyTorch adapter (streambatch.torch): DataLoader workers, zero-copy tensors,
pin_memory, set_epoch, resume (StatefulDataLoader and the plain path) and a real
two-process torchrun job.

CI installs torch (the ``torch-test`` extra); these tests are not skipped there."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import streambatch as sb

if os.environ.get("CI") or os.environ.get("STREAMBATCH_REQUIRE_TORCH"):
    import torch  # CI installs the torch-test extra: a missing torch fails there, never skips
else:
    torch = pytest.importorskip("torch")

from torch.utils.data import DataLoader

import streambatch.torch as sbt
from tests.conftest import collect, ids_of

REPO = Path(__file__).resolve().parents[1]
LIMIT = "256KiB"
KW = {"memory_limit": LIMIT, "seed": 3, "num_threads": 2}


def _adapter(path, batch_size=32, **kw):
    return sbt.StreambatchIterable(path, batch_size, **{**KW, **kw})


def _dataloader(adapter, workers, context=None, **kw):
    if workers == 0:
        return DataLoader(adapter, batch_size=None, num_workers=0, **kw)
    return DataLoader(adapter, batch_size=None, num_workers=workers, multiprocessing_context=context, **kw)


def _expected(path, batch_size, workers, rank=0, world=1, epoch=0, **kw):
    """What a DataLoader with ``workers`` workers on ``rank`` must yield: worker w's
    batches are those of Loader sub-rank rank*W + w of world*W, interleaved round-robin."""
    w = max(1, workers)
    streams = []
    for worker in range(w):
        loader = sb.Loader(path, batch_size, rank=rank * w + worker, world_size=world * w, **{**KW, **kw})
        loader.set_epoch(epoch)
        streams.append(collect(loader))
    counts = {len(s) for s in streams}
    assert len(counts) == 1, f"workers would yield different batch counts: {counts}"
    return [streams[i % w][i // w] for i in range(w * counts.pop())]


def _same(got, want):
    assert len(got) == len(want)
    for g, b in zip(got, want):
        assert set(g) == set(b)
        for column in b:
            assert isinstance(g[column], torch.Tensor)
            assert np.array_equal(g[column].numpy(), b[column]), column


def _ids(batches):
    return np.concatenate([b["id"].numpy() for b in batches]) if batches else np.zeros(0, np.int64)


def test_import_streambatch_does_not_import_torch():
    code = "import streambatch, sys; assert 'torch' not in sys.modules, 'streambatch imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


WORKER_SETUPS = [
    pytest.param(0, None, id="in-process"),
    pytest.param(2, "fork", id="2-workers-fork"),
    pytest.param(2, "spawn", id="2-workers-spawn", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("workers", "context"), WORKER_SETUPS)
def test_dataloader_covers_the_epoch_exactly_once(dataset_factory, workers, context):
    n, batch_size = 1280, 32  # divisible by batch_size * workers: remainder="drop" loses nothing
    path = dataset_factory("npy", n=n, chunk_rows=64, shards=2)
    adapter = _adapter(path, batch_size, remainder="drop", drop_last=True)
    batches = list(_dataloader(adapter, workers, context))
    assert len(batches) == n // batch_size
    for batch in batches:
        assert batch["id"].dtype == torch.int64 and batch["id"].shape == (batch_size,)
        assert batch["x"].dtype == torch.float32 and batch["x"].shape == (batch_size, 4)
        assert batch["img"].dtype == torch.int32 and batch["img"].shape == (batch_size, 3, 2)
        assert torch.equal(batch["img"][:, 2, 1].long(), batch["id"])
    ids = _ids(batches)
    assert np.array_equal(np.sort(ids), np.arange(n))
    # worker w is sub-rank w of a world of W; the DataLoader interleaves them round-robin
    _same(batches, _expected(path, batch_size, workers, remainder="drop", drop_last=True))


def test_ranks_times_workers_are_disjoint_complete_and_equal(dataset_factory):
    n, world, workers = 1000, 2, 2  # 1000 rows over 4 sub-ranks, padded ("pad" default), partial last batches
    path = dataset_factory("parquet", n=n, chunk_rows=300)  # 4 row groups, 4 sub-ranks: units are cut
    per_rank = []
    for rank in range(world):
        adapter = _adapter(path, 64, rank=rank, world_size=world)
        batches = list(_dataloader(adapter, workers, "fork"))
        _same(batches, _expected(path, 64, workers, rank=rank, world=world))
        per_rank.append(batches)
    assert len({len(b) for b in per_rank}) == 1, "ranks got different batch counts"
    everything = np.concatenate([_ids(b) for b in per_rank])
    assert set(everything.tolist()) == set(range(n))
    assert len(everything) == 4 * 250


def test_rank_and_world_size_come_from_the_environment(dataset_factory, monkeypatch):
    path = dataset_factory("npy", n=200)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    adapter = _adapter(path)
    assert (adapter.rank, adapter.world_size) == (1, 2)
    monkeypatch.setenv("RANK", "0")  # resolved at construction: workers inherit the values
    assert pickle.loads(pickle.dumps(adapter)).rank == 1
    with pytest.raises(ValueError, match="rank"):
        _adapter(path, rank=2, world_size=2)


def test_as_tensors_does_not_copy():
    batch = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(2)}
    tensors = sbt.as_tensors(batch)
    for name, array in batch.items():
        assert tensors[name].data_ptr() == array.ctypes.data
        assert np.shares_memory(tensors[name].numpy(), array)
    batch["a"][0, 0] = 42
    assert tensors["a"][0, 0].item() == 42


def test_big_endian_and_datetime_columns_become_tensors_and_other_dtypes_are_named(tmp_path):
    x = np.arange(10, dtype=">f4").reshape(5, 2)
    t = np.array(["2024-01-01T00:00:00.001", "1970-01-01T00:00:00.002"] * 2 + ["1970-01-01"], "datetime64[ms]")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "t.npy", t)
    adapter = sbt.StreambatchIterable(str(tmp_path), batch_size=5, shuffle=False)
    (batch,) = list(adapter)
    assert batch["x"].dtype == torch.float32 and batch["x"].tolist() == x.astype("<f4").tolist()
    assert batch["t"].dtype == torch.int64 and batch["t"].tolist() == t.view(np.int64).tolist()
    assert batch["t"][1].item() == 2  # milliseconds since 1970: the column's unit
    with pytest.raises(TypeError, match=r"column 'name' has dtype <U3, which torch cannot hold"):
        sbt.as_tensors({"name": np.array(["abc"])})


@pytest.mark.parametrize("workers", [0, 2])
def test_a_cast_column_arrives_as_a_tensor_of_the_delivered_dtype(tmp_path, workers):
    import decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "prices.parquet")
    price = pa.array([decimal.Decimal(f"{i}.25") for i in range(64)], pa.decimal128(10, 2))
    ts = pa.array(np.arange(64) * 60, pa.timestamp("s", tz="Europe/Paris"))
    pq.write_table(pa.table({"id": np.arange(64), "price": price, "ts": ts}), path, row_group_size=16)
    cast = {"price": "float32", "ts": "datetime64[s]"}
    adapter = _adapter(path, 16, shuffle=False, cast=cast)
    batches = list(_dataloader(adapter, workers, "fork" if workers else None))
    assert {b["price"].dtype for b in batches} == {torch.float32} and {b["ts"].dtype for b in batches} == {torch.int64}
    ids = torch.cat([b["id"] for b in batches])
    order = torch.argsort(ids)
    assert torch.cat([b["price"] for b in batches])[order].tolist() == [i + 0.25 for i in range(64)]
    assert torch.cat([b["ts"] for b in batches])[order].tolist() == [i * 60 for i in range(64)]  # UTC seconds


def test_in_process_tensors_share_the_loaders_arrays(dataset_factory, monkeypatch):
    path = dataset_factory("npy", n=300)
    seen = []
    real = sbt.as_tensors

    def spy(batch):
        tensors = real(batch)
        seen.append((batch, tensors))
        return tensors

    monkeypatch.setattr(sbt, "as_tensors", spy)
    delivered = list(_dataloader(_adapter(path, 50), 0))
    assert len(delivered) == len(seen) == 6
    for got, (arrays, _) in zip(delivered, seen):
        for name, array in arrays.items():  # the DataLoader hands out the very same memory
            assert got[name].data_ptr() == array.ctypes.data
            assert np.shares_memory(got[name].numpy(), array)


@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")
@pytest.mark.parametrize("workers", [0, 2])
def test_pin_memory_runs(dataset_factory, workers):
    path = dataset_factory("zarr", n=400, chunk_rows=50)
    adapter = _adapter(path, 40)
    batches = list(_dataloader(adapter, workers, "fork", pin_memory=True))
    assert np.array_equal(np.sort(_ids(batches)), np.arange(400))
    if torch.cuda.is_available():
        assert all(b["x"].is_pinned() for b in batches)


def test_set_epoch_reaches_the_workers(dataset_factory):
    path = dataset_factory("npy", n=640, chunk_rows=32)
    adapter = _adapter(path)
    loader = _dataloader(adapter, 2, "fork")
    epoch0 = list(loader)
    again0 = list(loader)  # without set_epoch, fresh workers repeat the adapter's epoch
    adapter.set_epoch(1)
    epoch1 = list(loader)
    assert np.array_equal(_ids(epoch0), _ids(again0))
    assert not np.array_equal(_ids(epoch0), _ids(epoch1))
    _same(epoch1, _expected(path, 32, 2, epoch=1))
    # in-process, the adapter follows its Loader: a finished epoch moves to the next
    inproc = _adapter(path)
    list(_dataloader(inproc, 0))
    assert inproc.epoch == 1


def test_persistent_workers_move_to_the_next_epoch_by_themselves(dataset_factory):
    path = dataset_factory("npy", n=640, chunk_rows=32)
    loader = DataLoader(
        _adapter(path), batch_size=None, num_workers=2, persistent_workers=True, multiprocessing_context="fork"
    )
    epoch0, epoch1 = list(loader), list(loader)
    _same(epoch0, _expected(path, 32, 2, epoch=0))
    _same(epoch1, _expected(path, 32, 2, epoch=1))
    del loader


def test_the_adapter_pickles_small_without_a_loader(dataset_factory):
    path = dataset_factory("npy", n=300)
    adapter = _adapter(path)
    list(_dataloader(adapter, 0))
    blob = pickle.dumps(adapter)
    assert len(blob) < 2000
    clone = pickle.loads(blob)
    assert clone._loader is None and clone._probe is None and clone.epoch == 1
    fresh = _adapter(path)
    fresh.set_epoch(1)
    assert np.array_equal(_ids(list(_dataloader(clone, 0))), _ids(list(_dataloader(fresh, 0))))


# -- resume: the plain path (no torchdata) -------------------------------------


def _take(iterator, k):
    return [next(iterator) for _ in range(k)]


@pytest.mark.parametrize(("workers", "k"), [(0, 0), (0, 7), (2, 5), (2, 11)])
def test_plain_resume_continues_exactly(dataset_factory, workers, k):
    path = dataset_factory("parquet", n=900, chunk_rows=40, shards=2)
    reference = list(_dataloader(_adapter(path, 30), workers, "fork"))
    adapter = _adapter(path, 30)
    iterator = iter(_dataloader(adapter, workers, "fork"))
    head = _take(iterator, k)
    state = json.loads(json.dumps(adapter.state_at(k, workers)))
    del iterator
    resumed = _adapter(path, 30)
    resumed.load_state_dict(state)
    tail = list(_dataloader(resumed, workers, "fork"))
    got = head + tail
    assert len(got) == len(reference)
    for g, want in zip(got, reference):
        for column in want:
            assert torch.equal(g[column], want[column]), column
    # resuming twice: the state counts from the loaded one
    if k and len(tail) > 3:
        again = _adapter(path, 30)
        again.load_state_dict(state)
        it = iter(_dataloader(again, workers, "fork"))
        middle = _take(it, 3)
        del it
        state2 = again.state_at(3, workers)
        assert state2["batches"] == k + 3
        third = _adapter(path, 30)
        third.load_state_dict(state2)
        assert np.array_equal(_ids(head + middle + list(_dataloader(third, workers, "fork"))), _ids(reference))


def test_plain_resume_is_elastic_across_ranks_and_workers(dataset_factory):
    n = 1200
    path = dataset_factory("npy", n=n, chunk_rows=50, shards=3)
    # 2 ranks x 2 workers deliver 6 batches each (a multiple of num_workers) ...
    first, state = [], None
    for rank in range(2):
        adapter = _adapter(path, 25, rank=rank, world_size=2)
        iterator = iter(_dataloader(adapter, 2, "fork"))
        first.append(_take(iterator, 6))
        del iterator
        if rank == 0:
            state = json.loads(json.dumps(adapter.state_at(6, 2)))
    # ... then 3 ranks x 1 worker load rank 0's state and finish the epoch
    second = []
    for rank in range(3):
        adapter = _adapter(path, 25, rank=rank, world_size=3)
        adapter.load_state_dict(state)
        second.append(list(_dataloader(adapter, 0)))
    assert len({len(s) for s in second}) == 1
    everything = np.concatenate([_ids(b) for b in first + second])
    assert len(everything) == n and set(everything.tolist()) == set(range(n))


def test_plain_resume_with_other_workers_needs_a_multiple_of_num_workers(dataset_factory):
    path = dataset_factory("npy", n=600)
    adapter = _adapter(path)
    state = adapter.state_at(3, 2)  # workers 0 and 1 delivered 2 and 1 batches: not in lockstep
    other = _adapter(path)
    other.load_state_dict(state)
    with pytest.raises(sb.StateMismatchError, match="multiple of num_workers"):
        list(_dataloader(other, 0))


def test_a_plain_loader_state_resumes_through_the_adapter(dataset_factory):
    path = dataset_factory("zarr", n=700, chunk_rows=50)
    loader = sb.Loader(path, 32, **KW)
    iterator = iter(loader)
    head = [next(iterator) for _ in range(5)]
    iterator.close()
    adapter = _adapter(path)
    adapter.load_state_dict(loader.state_dict())
    tail = list(_dataloader(adapter, 0))
    assert np.array_equal(np.concatenate([ids_of(head), _ids(tail)]), ids_of(collect(sb.Loader(path, 32, **KW))))


def test_a_mismatched_state_is_refused(dataset_factory):
    a = dataset_factory("npy", n=500)
    b = dataset_factory("npy", n=501)
    state = _adapter(a).state_at(0, 2)
    other = _adapter(b)
    other.load_state_dict(state)
    with pytest.raises(sb.StateMismatchError, match="dataset"):
        list(_dataloader(other, 0))
    with pytest.raises(sb.StateMismatchError, match=r"not a streambatch\.torch state"):
        _adapter(a).load_state_dict({"kind": "something else"})


# -- resume: torchdata's StatefulDataLoader --------------------------------------


@pytest.mark.filterwarnings("ignore:'set_vital' is deprecated:UserWarning")
@pytest.mark.parametrize(("workers", "k"), [(0, 4), (2, 5), (2, 8)])
def test_stateful_dataloader_resumes_exactly(dataset_factory, workers, k):
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    path = dataset_factory("npy", n=900, chunk_rows=40, shards=2)

    def make(adapter):
        if workers == 0:
            return stateful.StatefulDataLoader(adapter, batch_size=None, num_workers=0)
        return stateful.StatefulDataLoader(
            adapter, batch_size=None, num_workers=workers, multiprocessing_context="fork"
        )

    reference = list(make(_adapter(path, 30)))
    data = make(_adapter(path, 30))
    iterator = iter(data)
    head = _take(iterator, k)
    state = data.state_dict()
    del iterator
    resumed = make(_adapter(path, 30))
    resumed.load_state_dict(state)
    tail = list(resumed)
    assert np.array_equal(_ids(head + tail), _ids(reference))
    assert len(head + tail) == len(reference)


def test_a_worker_state_cannot_change_the_world_size(dataset_factory):
    path = dataset_factory("npy", n=600)
    adapter = _adapter(path, rank=0, world_size=1)
    with pytest.raises(RuntimeError, match="state_at"):
        adapter.state_dict()  # nothing iterated in this process: no progress to report
    iterator = iter(_dataloader(adapter, 0))
    head = [next(iterator)]
    state = adapter.state_dict()
    del iterator
    assert state["kind"] == "streambatch.torch/worker"
    tails = []
    for rank in range(2):  # one stream per rank (num_workers=0): the Loader re-splits the rest
        elastic = _adapter(path, rank=rank, world_size=2)
        elastic.load_state_dict(state)
        tails.append(list(_dataloader(elastic, 0)))
    everything = np.concatenate([_ids(head), *map(_ids, tails)])
    assert len(everything) == 600 and set(everything.tolist()) == set(range(600))
    multi = {**state, "num_workers": 2}
    refused = _adapter(path, rank=0, world_size=2)
    refused.load_state_dict(multi)
    with pytest.raises(sb.StateMismatchError, match="lockstep"):
        list(_dataloader(refused, 0))


# -- a real two-process job --------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_ranks_get_disjoint_complete_equal_shares(dataset_factory):
    n = 1280
    path = dataset_factory("npy", n=n, chunk_rows=64, shards=2)
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    command = [torchrun] if torchrun else [sys.executable, "-m", "torch.distributed.run"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run(
        [*command, "--nproc_per_node=2", "--standalone", str(REPO / "tests" / "torchrun_script.py"), path, str(n)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=REPO,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    for rank in range(2):
        assert f"TORCHRUN-OK rank={rank} world=2 rows=640 batches=20" in result.stdout, output[-4000:]
