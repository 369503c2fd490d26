"""Property tests (hypothesis) of the loader's contracts, written against the public
API only (``sb.Loader``, ``state_dict``/``load_state_dict``, ``len``), so they hold
whatever the plan, shuffle and budget look like inside.

For small random datasets (``.npy`` and Parquet, a few hundred rows, random row-group
sizes, 1-3 shards) and any batch size, shuffle, ``drop_last``, ``remainder`` and world
size of 1-4:

* the ranks together deliver every row exactly once (``drop``: ``N // W * W`` rows, none
  twice; ``pad``: every row, the only repeats being the padding);
* every rank yields the same number of batches, and ``len(loader)`` says how many;
* resuming after any ``k`` batches yields exactly the rest of the uninterrupted epoch;
* resuming with another world size loses and repeats nothing beyond the padding;
* the batches do not depend on ``num_threads``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st

import streambatch as sb
from tests.conftest import write_dataset

pytestmark = pytest.mark.filterwarnings("ignore::streambatch.PoorShuffleWarning")

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _columns(n: int, width: int) -> dict[str, np.ndarray]:
    """``id == row``, and ``x[:, 0] == id``: wide rows make ``.npy`` pieces of a few dozen
    rows, so even a few hundred rows span several pieces and windows."""
    ids = np.arange(n, dtype=np.int64)
    x = np.random.default_rng(n).standard_normal((n, width), dtype=np.float32)
    x[:, 0] = ids
    return {"id": ids, "x": x}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """``make(fmt, n, chunk_rows, shards, width) -> path``, each dataset written once per module."""
    root = tmp_path_factory.mktemp("properties")
    made: dict[tuple, str] = {}

    def make(fmt: str, n: int, chunk_rows: int, shards: int, width: int) -> str:
        key = (fmt, n, chunk_rows if fmt == "parquet" else 0, shards, width)
        if key not in made:
            where = root / "-".join(map(str, key))
            where.mkdir()
            made[key] = write_dataset(fmt, where, _columns(n, width), chunk_rows, shards)
        return made[key]

    return make


@st.composite
def configs(draw, max_world: int = 4):
    """A dataset and the Loader options to read it with."""
    fmt = draw(st.sampled_from(["npy", "parquet"]))
    shards = draw(st.integers(1, 3))
    n = draw(st.integers(shards, 400))
    return {
        "data": (fmt, n, draw(st.integers(1, 120)), shards, draw(st.sampled_from([4, 32, 64]))),
        "batch_size": draw(st.integers(1, 70)),
        "shuffle": draw(st.booleans()),
        "drop_last": draw(st.booleans()),
        "remainder": draw(st.sampled_from(["pad", "drop"])),
        "seed": draw(st.integers(0, 2**32 - 1)),
        "memory_limit": draw(st.sampled_from(["96KiB", "256KiB", "1MiB"])),
        "world_size": draw(st.integers(1, max_world)),
    }


def _loader(datasets, config, **overrides) -> sb.Loader:
    options = {k: v for k, v in config.items() if k != "data"}
    options.update(overrides)
    options.setdefault("rank", 0)
    options.setdefault("num_threads", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sb.PoorShuffleWarning)
        try:
            return sb.Loader(datasets(*config["data"]), **options)
        except sb.BudgetError:  # memory_limit too small for these rows and batches: not a case
            reject()


def _ids(batch: dict[str, np.ndarray]) -> np.ndarray:
    # every column of a row holds its id: a row torn between columns shows here
    assert np.array_equal(batch["x"][:, 0], batch["id"].astype(np.float32))
    return batch["id"]


def _epoch(loader: sb.Loader) -> list[np.ndarray]:
    with loader:
        return [_ids(b) for b in loader]


def _first(loader: sb.Loader, k: int) -> tuple[list[np.ndarray], dict]:
    """The first ``k`` batches and the state after them (the iterator closed, not exhausted)."""
    it = iter(loader)
    try:
        got = [_ids(next(it)) for _ in range(k)]
    finally:
        it.close()
    return got, loader.state_dict()


def _all_ranks(datasets, config, world: int) -> list[list[np.ndarray]]:
    return [_epoch(_loader(datasets, config, rank=r, world_size=world)) for r in range(world)]


@SETTINGS
@given(config=configs())
def test_the_ranks_deliver_every_row_once_and_the_same_number_of_batches(datasets, config):
    n, world, batch = config["data"][1], config["world_size"], config["batch_size"]
    per_rank = _all_ranks(datasets, config, world)
    counts = {len(batches) for batches in per_rank}
    assert len(counts) == 1, f"ranks yield different numbers of batches: {[len(b) for b in per_rank]}"
    assert counts == {len(_loader(datasets, config, world_size=world))}
    share = n // world if config["remainder"] == "drop" else -(-n // world)
    for batches in per_rank:
        sizes = [len(b) for b in batches]
        assert all(s == batch for s in sizes[:-1])
        assert sum(sizes) == (share // batch * batch if config["drop_last"] else share)
    rows = np.concatenate([b for batches in per_rank for b in batches] or [np.zeros(0, np.int64)])
    assert rows.min(initial=0) >= 0 and rows.max(initial=0) < n
    repeats = len(rows) - len(np.unique(rows))
    padding = share * world - n
    if config["remainder"] == "drop":
        assert repeats == 0
        if not config["drop_last"]:
            assert len(rows) == n // world * world
    else:
        assert repeats <= padding
        if not config["drop_last"]:
            assert set(rows.tolist()) == set(range(n)) and repeats == padding


#: found by this test on main at 6c37b66 (still failing at 73510ef): resuming .npy after one batch, when the ring holds
#: 76 rows (pieces of 20) and batches are 57 rows, fails with "internal error: piece 5 cannot
#: be admitted (ring of 76 rows full)" (shuffle off or on; batch sizes 50 or 60 pass)
_RING_FULL_ON_RESUME = {
    "data": ("npy", 117, 1, 1, 64),
    "batch_size": 57,
    "shuffle": False,
    "drop_last": False,
    "remainder": "pad",
    "seed": 0,
    "memory_limit": "96KiB",
    "world_size": 1,
}


@SETTINGS
@given(config=configs(), rank=st.integers(0, 3), at=st.floats(0, 1))
@example(config=_RING_FULL_ON_RESUME, rank=0, at=0.34)  # k = 1 of 3 batches
def test_resuming_after_k_batches_yields_exactly_the_rest_of_the_epoch(datasets, config, rank, at):
    world = config["world_size"]
    rank %= world
    reference = _epoch(_loader(datasets, config, rank=rank, world_size=world))
    k = round(at * len(reference))  # 0, the end and everything between
    first, state = _first(_loader(datasets, config, rank=rank, world_size=world), k)
    assert all(np.array_equal(a, b) for a, b in zip(first, reference[:k]))
    resumed = _loader(datasets, config, rank=rank, world_size=world, num_threads=1 + k % 3)
    resumed.load_state_dict(state)
    rest = _epoch(resumed)
    assert len(rest) == len(reference) - k
    assert all(np.array_equal(a, b) for a, b in zip(rest, reference[k:]))


@SETTINGS
@given(config=configs(), new_world=st.integers(1, 4), data=st.data())
def test_resuming_with_another_world_size_loses_and_repeats_only_padding(datasets, config, new_world, data):
    config = {**config, "drop_last": False}
    n, world = config["data"][1], config["world_size"]
    batches = len(_loader(datasets, config, world_size=world))
    k = data.draw(st.integers(0, batches), label="k")
    before, states = [], []
    for r in range(world):  # ranks run in lockstep: each delivers k batches, then the job stops
        got, state = _first(_loader(datasets, config, rank=r, world_size=world), k)
        before += got
        states.append(state)
    assert all({**s, "rank": 0} == {**states[0], "rank": 0} for s in states)  # rank 0's describes the job
    after = []
    for r in range(new_world):
        resumed = _loader(datasets, config, rank=r, world_size=new_world)
        resumed.load_state_dict(states[0])
        after += _epoch(resumed)
    rows = np.concatenate(before + after or [np.zeros(0, np.int64)])
    repeats = len(rows) - len(np.unique(rows))
    slack = (world - 1) + (new_world - 1)  # each split pads or drops fewer rows than its world has ranks
    if config["remainder"] == "pad":
        assert set(rows.tolist()) == set(range(n))
        assert repeats <= slack
    else:
        assert repeats == 0
        assert n - len(rows) <= slack


@SETTINGS
@given(config=configs())
def test_the_batches_do_not_depend_on_the_thread_count(datasets, config):
    one = _epoch(_loader(datasets, config, num_threads=1))
    three = _epoch(_loader(datasets, config, num_threads=3))
    assert len(one) == len(three)
    assert all(np.array_equal(a, b) for a, b in zip(one, three))
