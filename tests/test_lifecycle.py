"""Threads, files and processes end when the consumer is done with a loader
(RELIABILITY.md B4-B6, E1-E2), for every format.

The autouse ``no_leaks`` guard (conftest) also fails any test here that leaves
a ``streambatch-*`` thread running or a file under ``tmp_path`` open.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from contextlib import closing

import numpy as np
import pytest

import streambatch as sb
from tests.conftest import collect, ids_of

N = 5000
BATCH = 64
LIMIT = "1MiB"  # small enough that an epoch takes many reads, so threads are busy mid-epoch
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("streambatch-")]


def _open_files_under(root) -> list[str]:
    root = str(root)
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(root):
            found.append(target)
    return found


def _wait_for_no_threads(seconds: float = 5.0) -> list[str]:
    deadline = time.monotonic() + seconds
    while _our_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return _our_threads()


def _same_batches(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


@pytest.fixture
def data(dataset_factory, fmt) -> str:
    return dataset_factory(fmt, n=N, chunk_rows=100, shards=2)


def _loader(path, **kwargs) -> sb.Loader:
    kwargs.setdefault("memory_limit", LIMIT)
    kwargs.setdefault("num_threads", 2)
    return sb.Loader(path, BATCH, **kwargs)


# --------------------------------------------------------------------------
# B4: stopping early
# --------------------------------------------------------------------------


def test_break_after_two_batches_then_close_leaves_no_thread_and_no_open_file(data, tmp_path):
    loader = _loader(data)
    iterator = iter(loader)  # held, so only close() can release it
    for k, _batch in enumerate(iterator):
        if k == 1:
            break
    assert _our_threads(), "reader threads should be running mid-epoch"
    loader.close()
    assert _our_threads() == [], "close() must join the reader threads before returning"
    assert _open_files_under(tmp_path) == []


def test_break_in_a_plain_for_loop_releases_everything(data, tmp_path):
    loader = _loader(data)
    for k, _batch in enumerate(loader):
        if k == 1:
            break
    loader.close()
    assert _our_threads() == []
    assert _open_files_under(tmp_path) == []


def test_an_iterator_dropped_without_close_stops_its_threads_when_collected(data, tmp_path):
    loader = _loader(data)
    it = iter(loader)
    next(it)
    assert _our_threads()
    del it
    gc.collect()
    assert _wait_for_no_threads(5.0) == [], "the finalizer must stop the threads within 5 s"
    assert _open_files_under(tmp_path) == []


def test_a_dropped_iterator_is_freed_by_reference_counting_alone(data, tmp_path):
    """No reference cycle holds an iterator (the loader reads its position from a
    cursor, never holds the iterator): its threads stop as soon as it is dropped."""
    import weakref

    loader = _loader(data)
    it = iter(loader)
    next(it)
    alive = weakref.ref(it)
    gc.disable()
    try:
        del it
        assert alive() is None, "something still references the dropped iterator"
    finally:
        gc.enable()
    assert _wait_for_no_threads(5.0) == []
    assert _open_files_under(tmp_path) == []
    assert loader.state_dict()["history"][-1][1] == 1


def test_an_exception_in_the_loop_body_inside_with_stops_everything(data, tmp_path):
    with pytest.raises(RuntimeError, match="raised by the loop body"), _loader(data) as loader:
        it = iter(loader)  # a live reference, as a traceback would keep
        for k, _batch in enumerate(it):
            if k == 2:
                raise RuntimeError("raised by the loop body")
    assert it is not None  # still referenced here ...
    assert _our_threads() == [], "... yet leaving the with-block stopped its threads"
    assert _open_files_under(tmp_path) == []
    with pytest.raises(StopIteration):
        next(it)


def test_close_twice_is_a_no_op(data, tmp_path):
    loader = _loader(data)
    it = iter(loader)
    next(it)
    it.close()
    it.close()
    loader.close()
    loader.close()
    assert _our_threads() == []
    assert _open_files_under(tmp_path) == []


@pytest.mark.parametrize("closer", ["iterator", "loader"])
def test_next_after_close_raises_stop_iteration(data, closer):
    loader = _loader(data)
    it = iter(loader)
    next(it)
    (it if closer == "iterator" else loader).close()
    for _ in range(2):
        with pytest.raises(StopIteration):
            next(it)
    assert _our_threads() == []


def test_next_after_close_does_not_count_the_epoch_as_finished(data):
    """Closing mid-epoch is not finishing it: the loader must still resume epoch 0
    after the 2 batches the consumer received (a StopIteration from a closed
    iterator must not advance the epoch, or a checkpoint would skip rows)."""
    loader = _loader(data)
    it = iter(loader)
    got = [next(it), next(it)]
    it.close()
    with pytest.raises(StopIteration):
        next(it)
    assert loader.epoch == 0
    rest = collect(loader)  # resumes epoch 0 where the consumer stopped
    ids = ids_of(got + rest)
    assert np.array_equal(np.sort(ids), np.arange(N)), "rows of epoch 0 were skipped or repeated"


# --------------------------------------------------------------------------
# E1: several loaders, and one loader several times
# --------------------------------------------------------------------------


def test_two_loaders_consumed_alternately_each_equal_their_solo_runs(data):
    solo_a = collect(_loader(data, seed=1))
    solo_b = collect(_loader(data, seed=2))
    assert not np.array_equal(ids_of(solo_a), ids_of(solo_b)), "different seeds must give different orders"

    a, b = _loader(data, seed=1), _loader(data, seed=2)
    mixed_a, mixed_b = [], []
    with closing(iter(a)) as ia, closing(iter(b)) as ib:
        for x, y in zip(ia, ib):
            mixed_a.append(x)
            mixed_b.append(y)
        mixed_a.extend(ia)  # zip stops one short of exhausting the second
        mixed_b.extend(ib)
    assert _same_batches(mixed_a, solo_a)
    assert _same_batches(mixed_b, solo_b)


def test_one_loader_iterated_twice_gives_two_identical_complete_epochs(data):
    loader = _loader(data, seed=3)
    epochs = []
    for _ in range(2):
        loader.set_epoch(0)
        epochs.append(collect(loader))
    for batches in epochs:
        assert np.array_equal(np.sort(ids_of(batches)), np.arange(N))
        assert len(batches) == len(loader)
    assert _same_batches(epochs[0], epochs[1])
    # without set_epoch the next pass is epoch 1: complete, but in another order
    following = collect(loader)
    assert np.array_equal(np.sort(ids_of(following)), np.arange(N))
    assert not np.array_equal(ids_of(following), ids_of(epochs[0]))


def _ring_of(iterator) -> object:
    return iterator._resources.ring


def test_the_next_epoch_reuses_the_finished_epochs_ring_and_gives_the_batches_of_a_fresh_loader(data):
    """A new ring per epoch faults its pages in again: the loader keeps the last
    finished iterator's ring for the next one, which must not change a batch."""
    loader = _loader(data, seed=5)
    first = iter(loader)
    ring = _ring_of(first)
    list(first)
    second = iter(loader)
    assert _ring_of(second) is ring or not ring.fixed  # rings with variable-length columns are not kept
    reused = list(second)
    fresh = _loader(data, seed=5)
    fresh.set_epoch(1)
    assert _same_batches(reused, collect(fresh))


def test_an_epoch_stopped_early_hands_its_ring_on_and_two_live_iterators_never_share_one(data):
    loader = _loader(data, seed=5)
    stopped = iter(loader)
    next(stopped)
    stopped.close()
    a = iter(loader)
    b = iter(loader)  # a is live: b cannot have its ring
    assert _ring_of(a) is not _ring_of(b)
    a.close()
    b.close()


def test_close_frees_the_kept_ring(data):
    loader = _loader(data, seed=5)
    first = iter(loader)
    ring = _ring_of(first)
    list(first)
    loader.close()
    assert _ring_of(iter(loader)) is not ring


def test_a_ring_a_thread_may_still_write_is_not_kept(data, monkeypatch):
    from streambatch.pool import ReaderPool

    monkeypatch.setattr(ReaderPool, "ended", property(lambda self: False))  # a read blocked past the join
    loader = _loader(data, seed=5)
    first = iter(loader)
    ring = _ring_of(first)
    list(first)
    assert _ring_of(iter(loader)) is not ring


# --------------------------------------------------------------------------
# E2: fork while reader threads are alive
# --------------------------------------------------------------------------


def test_a_forked_child_iterates_afresh_while_the_parent_is_mid_epoch(data):
    loader = _loader(data)
    parent = iter(loader)
    head = [next(parent), next(parent)]
    assert _our_threads(), "the parent must be mid-epoch with threads alive when it forks"

    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()

    def child() -> None:
        try:
            next(parent)
        except RuntimeError as error:
            results.put(("parent iterator", "RuntimeError", str(error)))
        except BaseException as error:
            results.put(("parent iterator", type(error).__name__, str(error)))
        else:
            results.put(("parent iterator", "no error", ""))
        loader.set_epoch(0)
        ids = ids_of(collect(loader))
        results.put(("fresh iterator", int(ids.size), bool(np.array_equal(np.sort(ids), np.arange(N)))))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        process = ctx.Process(target=child)
        process.start()
    process.join(30)
    if process.is_alive():
        process.kill()
        process.join()
        parent.close()
        pytest.fail("the forked child hung")
    assert process.exitcode == 0

    first = results.get(timeout=5)
    second = results.get(timeout=5)
    reported = {first[0]: first[1:], second[0]: second[1:]}
    kind, message = reported["parent iterator"]
    assert kind == "RuntimeError", f"using the parent's iterator in the child gave {kind}: {message}"
    assert "fork" in message or "process" in message, message
    assert reported["fresh iterator"] == (N, True)

    # the parent is undisturbed: it finishes its epoch with every row exactly once
    rest = list(parent)
    assert np.array_equal(np.sort(ids_of(head + rest)), np.arange(N))


# --------------------------------------------------------------------------
# B6: Ctrl-C
# --------------------------------------------------------------------------

_SIGINT_SCRIPT = textwrap.dedent(
    """
    import sys, tempfile
    import streambatch as sb
    from tests.conftest import make_columns, write_dataset

    fmt = sys.argv[1]
    root = tempfile.mkdtemp(prefix="streambatch-sigint-")
    path = write_dataset(fmt, root, make_columns(20000), chunk_rows=200, shards=2)
    loader = sb.Loader(path, 32, memory_limit="1MiB", num_threads=2)
    print("ready", flush=True)
    rows = 0
    for epoch in range(100000):
        for batch in loader:
            rows += len(batch["id"])
    print("finished without interruption", rows, flush=True)
    """
)


def test_sigint_while_iterating_ends_the_process_with_keyboard_interrupt(fmt):
    process = subprocess.Popen(
        [sys.executable, "-c", _SIGINT_SCRIPT, fmt],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        if line.strip() != "ready":
            process.kill()
            pytest.fail(f"the child did not start: {line!r}\n{process.communicate()[1][-3000:]}")
        time.sleep(0.5)  # well inside the epoch loop
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the process hung after SIGINT; stderr:\n{err[-3000:]}")
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    seconds = time.monotonic() - started
    assert process.returncode != 0, out
    assert "KeyboardInterrupt" in err, err[-3000:]
    assert "Fatal Python error" not in err, err[-3000:]
    assert seconds < 10, f"exiting took {seconds:.1f} s after SIGINT"
