"""Exact mid-epoch resume, same world size and elastic (world size changes)."""

from __future__ import annotations

import json
from contextlib import closing

import numpy as np
import pytest

import streambatch as sb
from streambatch.state import order_params
from tests.conftest import collect, ids_of, write_dataset

LIMIT = "256KiB"


def _loader(path, **kw):
    kw.setdefault("memory_limit", LIMIT)
    kw.setdefault("seed", 11)
    return sb.Loader(path, kw.pop("batch_size", 32), **kw)


@pytest.mark.parametrize("shuffle", [True, False], ids=["shuffle", "ordered"])
def test_resume_at_every_batch_boundary_equals_the_uninterrupted_epoch(dataset_factory, fmt, shuffle):
    path = dataset_factory(fmt, n=700, chunk_rows=50, shards=2)
    reference = collect(_loader(path, shuffle=shuffle))
    states = []
    loader = _loader(path, shuffle=shuffle)
    for _ in loader:
        states.append(json.loads(json.dumps(loader.state_dict())))
    for k in [0, 1, 5, len(reference) // 2, len(reference) - 1]:
        state = states[k - 1] if k else _loader(path, shuffle=shuffle).state_dict()
        resumed = _loader(path, shuffle=shuffle, num_threads=1 + k % 3)
        resumed.load_state_dict(state)
        tail = collect(resumed)
        assert len(tail) == len(reference) - k
        for got, want in zip(tail, reference[k:]):
            for column in want:
                assert np.array_equal(got[column], want[column]), (k, column)
        # the state records the epoch: the next epoch equals a fresh run's next epoch
        fresh = _loader(path, shuffle=shuffle)
        fresh.set_epoch(1)
        assert np.array_equal(ids_of(collect(resumed)), ids_of(collect(fresh)))


def test_state_after_the_epoch_points_at_the_next_epoch(dataset_factory):
    path = dataset_factory("npy", n=300)
    loader = _loader(path)
    collect(loader)
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["history"][-1][1] == 0
    resumed = _loader(path)
    resumed.load_state_dict(state)
    fresh = _loader(path)
    fresh.set_epoch(1)
    assert np.array_equal(ids_of(collect(resumed)), ids_of(collect(fresh)))


def test_resuming_twice_is_still_exact(dataset_factory):
    path = dataset_factory("parquet", n=900, chunk_rows=40)
    reference = ids_of(collect(_loader(path)))
    got = []
    state = None
    for chunk in (5, 7, 100):
        loader = _loader(path)
        if state:
            loader.load_state_dict(state)
        it = iter(loader)
        for _ in range(chunk):
            try:
                got.append(next(it)["id"])
            except StopIteration:
                break
        state = loader.state_dict()
        it.close()
    assert np.array_equal(np.concatenate(got), reference)


def _run_world(path, world, state=None, batches=None, **kw):
    """Every rank of a world, in lockstep: ``batches`` batches each (all if None).
    Returns the ids each rank delivered and rank 0's state."""
    loaders = [_loader(path, rank=r, world_size=world, **kw) for r in range(world)]
    if state is not None:
        for loader in loaders:
            loader.load_state_dict(state)  # every rank loads rank 0's state
    iterators = [iter(loader) for loader in loaders]
    delivered = [[] for _ in range(world)]
    counts = set()
    for r, it in enumerate(iterators):
        n = 0
        for batch in it:
            delivered[r].append(batch["id"])
            n += 1
            if batches is not None and n == batches:
                break
        counts.add(n)
        it.close()
    assert len(counts) == 1, f"ranks delivered different batch counts: {counts}"
    return [ids_of_list(d) for d in delivered], loaders[0].state_dict()


def ids_of_list(arrays):
    return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)


@pytest.mark.parametrize("worlds", [(2, 3), (4, 1), (3, 2, 4), (1, 5)], ids=lambda w: "->".join(map(str, w)))
def test_elastic_resume_loses_and_repeats_no_row(dataset_factory, fmt, worlds):
    n = 1200
    path = dataset_factory(fmt, n=n, chunk_rows=50, shards=3)
    seen = []
    state = None
    divisible = True
    remaining = n
    for i, world in enumerate(worlds):
        last = i == len(worlds) - 1
        divisible &= remaining % world == 0
        delivered, state = _run_world(path, world, state, batches=None if last else 3 + i)
        remaining -= sum(len(d) for d in delivered)
        seen.extend(delivered)
    everything = np.concatenate(seen)
    assert set(everything.tolist()) == set(range(n))  # nothing lost
    if divisible:  # the rows left at each change split evenly: nothing repeated either
        assert len(everything) == n
    else:  # padding to equal shares repeats fewer rows than there are ranks
        assert len(everything) - n < max(worlds)


def test_elastic_padding_repeats_fewer_rows_than_the_world_size(dataset_factory):
    n = 1001
    path = dataset_factory("npy", n=n)
    first, state = _run_world(path, 2, batches=4, remainder="pad")
    second, _ = _run_world(path, 3, state, remainder="pad")
    everything = np.concatenate(first + second)
    assert set(everything.tolist()) == set(range(n))
    assert len(everything) - n < 3


def test_a_state_from_another_dataset_or_seed_is_refused(dataset_factory):
    a = dataset_factory("npy", n=500)
    b = dataset_factory("npy", n=501)
    state = _loader(a).state_dict()
    with pytest.raises(sb.StateMismatchError, match="dataset"):
        _loader(b).load_state_dict(state)
    with pytest.raises(sb.StateMismatchError, match="format_version"):
        _loader(a).load_state_dict({**state, "format_version": 99})
    with pytest.raises(sb.StateMismatchError, match="history"):
        _loader(a).load_state_dict({**state, "history": [[0, 1]]})


@pytest.mark.filterwarnings("ignore::streambatch.PoorShuffleWarning")  # a ring of one unit, on purpose
def test_a_resume_whose_first_batch_meets_an_empty_segment(tmp_path):
    """Found by test_properties: resuming an ``.npy`` epoch reads its first batch
    straight from the files, segment by segment, and a segment may hold no row;
    that read of no rows raised ``ValueError: need at least one array to
    concatenate``. A world of 2 stopped after one batch, resumed as a world of 1."""
    n = 169
    x = np.zeros((n, 64), np.float32)
    x[:, 0] = np.arange(n)
    path = write_dataset("npy", tmp_path, {"id": np.arange(n, dtype=np.int64), "x": x}, 1, 1)
    options = dict(batch_size=43, seed=142894, memory_limit="96KiB", num_threads=2)
    before, states = [], []
    for rank in range(2):
        loader = sb.Loader(path, rank=rank, world_size=2, **options)
        with closing(iter(loader)) as it:
            before.append(next(it)["id"])
        states.append(loader.state_dict())
    state = states[0]
    resumed = sb.Loader(path, rank=0, world_size=1, **options)
    resumed.load_state_dict(state)
    rows = np.concatenate(before + [b["id"] for b in resumed])
    assert np.array_equal(np.unique(rows), np.arange(n))
    assert rows.size == n + 1  # 169 rows padded to 2 x 85, as the uninterrupted job


def test_len_after_an_elastic_resume_counts_this_worlds_batches(dataset_factory):
    path = dataset_factory("npy", n=1000)
    _, state = _run_world(path, 2, batches=4, batch_size=10)
    resumed = _loader(path, rank=0, world_size=3, batch_size=10)
    resumed.load_state_dict(state)
    assert len(resumed) == sum(1 for _ in resumed) == 31  # ceil((1000 - 2*4*10) / 3) = 307 rows in batches of 10


def test_set_epoch_during_a_live_iteration_is_not_undone(dataset_factory):
    path = dataset_factory("npy", n=500)
    loader = _loader(path)
    it = iter(loader)
    next(it)
    loader.set_epoch(5)
    next(it)
    assert loader.epoch == 5 and loader.state_dict()["history"][-1][1] == 0
    it.close()


def test_only_the_newest_iterator_moves_the_state(dataset_factory):
    """state_dict() follows the consumer of the newest iterator: a newer iter(),
    load_state_dict and set_epoch each detach the older iterators, which still run."""
    path = dataset_factory("npy", n=500)
    loader = _loader(path)
    fresh = loader.state_dict()
    old = iter(loader)
    next(old), next(old)
    new = iter(loader)  # starts where the consumer of `old` stopped
    next(old)
    assert loader.state_dict()["history"][-1][1] == 2
    next(new)
    assert loader.state_dict()["history"][-1][1] == 3
    loader.load_state_dict(fresh)
    next(new)
    assert loader.state_dict()["history"][-1][1] == 0
    loader.set_epoch(2)
    assert loader.epoch == 2
    assert len(list(new)) > 0 and loader.epoch == 2  # finishing a detached iterator's epoch changes nothing
    old.close()


def test_the_state_outlives_the_iterator_that_delivered_it(dataset_factory):
    """A plain for loop left with break drops its iterator; the position it reached stays."""
    import gc

    path = dataset_factory("npy", n=500)
    loader = _loader(path)
    reference = ids_of(collect(_loader(path)))
    head = []
    for k, batch in enumerate(loader):
        head.append(batch)
        if k == 2:
            break
    gc.collect()
    assert loader.state_dict()["history"][-1][1] == 3
    assert np.array_equal(ids_of(head + collect(loader)), reference)
    assert loader.epoch == 1


def test_the_state_keeps_what_decides_the_order_in_one_sub_dict(dataset_factory):
    path = dataset_factory("npy", n=500)
    loader = _loader(path)
    state = loader.state_dict()
    assert state["format_version"] == 3
    assert set(state) == {"format_version", "epoch", "history", "rank", "order"}
    assert state["order"] == order_params(loader)  # the one list, used by the check too
    assert {"dataset", "batch_size", "drop_last", "shuffle", "seed", "remainder"} <= set(state["order"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": 12}, r"seed: saved 11, loader has 12"),
        ({"batch_size": 16}, r"batch_size: saved 32, loader has 16"),
        ({"memory_limit": "4MiB"}, r"follow from memory_limit"),
    ],
)
def test_a_state_names_the_order_field_that_differs(dataset_factory, change, message):
    path = dataset_factory("npy", n=5000)
    state = _loader(path).state_dict()
    with pytest.raises(sb.StateMismatchError, match=message):
        _loader(path, **change).load_state_dict(state)


@pytest.mark.parametrize("version", [1, 2])
def test_a_flat_state_of_format_1_or_2_still_resumes(dataset_factory, version):
    path = dataset_factory("npy", n=700, shards=2)
    loader = _loader(path)
    it = iter(loader)
    for _ in range(3):
        next(it)
    it.close()
    state = loader.state_dict()
    flat = {
        "format_version": version,
        "epoch": state["epoch"],
        "history": state["history"],
        "rank": state["rank"],
        **state["order"],
    }
    a, b = _loader(path), _loader(path)
    a.load_state_dict(state)
    b.load_state_dict(flat)
    assert np.array_equal(ids_of(collect(a)), ids_of(collect(b)))


def test_a_state_lacking_an_order_field_names_it(dataset_factory):
    path = dataset_factory("npy", n=500)
    state = _loader(path).state_dict()
    order = dict(state["order"])
    order.pop("seed")
    with pytest.raises(sb.StateMismatchError, match=r"seed: saved '<absent>', loader has 11"):
        _loader(path).load_state_dict({**state, "order": order})
