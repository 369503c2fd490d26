"""Faults during iteration on remote storage (RELIABILITY.md B2, B3, B7, B8, C5,
E1), through the fault-injecting ``flaky://`` filesystem of ``remote_fixtures``,
plus the retry policy, the error classification and credential redaction.

Every fault-injection test checks the rows themselves: the delivered ids are
exactly ``0..n-1`` once each and in the same order as without faults.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

import streambatch as sb
from streambatch.errors import CorruptInputError, ReaderError, SchemaError
from streambatch.sources._retry import (
    RetryPolicy,
    ShortReadError,
    Stopped,
    acall_with_retry,
    call_with_retry,
    is_transient,
    redact,
    run_on_loop,
    secrets_of,
    stopped_by,
)
from tests.conftest import FORMATS, ids_of, make_columns, streambatch_threads_after, write_dataset
from tests.remote_fixtures import FlakyFS, upload

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 2000
FAST = RetryPolicy(max_attempts=5, base_delay=0.001, max_delay=0.01)
SECRET = "s3cr3t-VALUE-42"
KEY = "AKIAEXAMPLEKEY99"


@pytest.fixture
def flaky():
    """A clean ``flaky://`` store with faults off; cleared again afterwards."""
    FlakyFS.reset()
    yield FlakyFS
    FlakyFS.reset()


@pytest.fixture
def flaky_dataset(tmp_path, flaky):
    """``make(fmt, n)`` writes a dataset locally, copies it to ``flaky://`` and
    returns ``(local path, flaky URL)``."""

    def make(fmt: str, n: int = N, chunk_rows: int = 100, shards: int = 2, tag: str = "d") -> tuple[str, str]:
        root = tmp_path / f"{tag}-{fmt}-{n}-{shards}"
        root.mkdir()
        local = write_dataset(fmt, root, make_columns(n), chunk_rows, shards)
        url = f"flaky://{tag}/{fmt}-{n}-{shards}"
        upload(local, FlakyFS(skip_instance_cache=True), url)
        return local, url

    return make


def _loader(source, **kw) -> sb.Loader:
    kw.setdefault("batch_size", 64)
    kw.setdefault("memory_limit", "1MiB")
    kw.setdefault("seed", 3)
    kw.setdefault("num_threads", 4)
    return sb.Loader(source, **kw)


def _epoch_ids(loader: sb.Loader, epoch: int = 0) -> np.ndarray:
    loader.set_epoch(epoch)
    return ids_of(list(loader))


def _lost_and_duplicated(ids: np.ndarray, n: int) -> tuple[int, int]:
    counts = np.bincount(ids, minlength=n)
    return int(np.sum(counts == 0)), int(np.sum(np.maximum(counts - 1, 0)))


def run_with_deadline(fn, seconds: float) -> float:
    """Run ``fn`` in a daemon thread; fail if it has not returned within ``seconds``."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            fn()
        except BaseException as e:
            box["error"] = e

    start = time.monotonic()
    thread = threading.Thread(target=target, daemon=True, name="test-deadline")
    thread.start()
    thread.join(seconds)
    elapsed = time.monotonic() - start
    assert not thread.is_alive(), f"did not return within {seconds} s"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return elapsed


# --------------------------------------------------------------------------- B3: exactly once under faults


@pytest.mark.parametrize("mode", ["reset", "short", "timeout"])
def test_flaky_storage_yields_every_row_exactly_once(fmt, mode, flaky, flaky_dataset):
    """1 data request in 5 fails (connection reset, short read or timeout): every
    row still arrives exactly once, in the order of the fault-free run."""
    local, url = flaky_dataset(fmt)
    expected = _epoch_ids(_loader(local))
    loader = _loader(url, retry=FAST)
    flaky.configure(mode, every=5)
    got = _epoch_ids(loader)
    injected, requests = flaky.injected, flaky.requests
    lost, duplicated = _lost_and_duplicated(got, N)
    print(f"\n{fmt}/{mode}: {requests} requests, {injected} faults injected, {lost} rows lost, {duplicated} duplicated")
    assert injected > 0 and injected >= requests // 5 - 1
    assert (lost, duplicated) == (0, 0)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_flaky_storage_unshuffled_and_batches_intact(fmt, flaky, flaky_dataset):
    """Without shuffling the rows come in file order, and every column of a row
    stays together (a retried range is rewritten in place, never shifted)."""
    _, url = flaky_dataset(fmt)
    loader = _loader(url, retry=FAST, shuffle=False)
    flaky.configure("reset", every=3)
    batches = list(loader)
    ids = ids_of(batches)
    np.testing.assert_array_equal(ids, np.arange(N))
    for b in batches:
        np.testing.assert_array_equal(b["x"][:, 0], b["id"].astype(np.float32))
        np.testing.assert_array_equal(b["img"][:, 1, 1], b["id"].astype(np.int32))
    assert flaky.injected > 0


def test_retried_read_requests_the_same_byte_range(flaky, flaky_dataset):
    """Every failed request is sent again for the same (path, start, end): the
    number of distinct ranges equals the fault-free run's."""
    _, url = flaky_dataset("npy", shards=1)
    loader = _loader(url, retry=FAST, num_threads=1)
    flaky.configure("ok")
    _epoch_ids(loader)
    clean = dict(flaky.calls)
    flaky.configure("reset", every=4)
    _epoch_ids(loader)
    assert set(flaky.calls) == set(clean)
    assert sum(flaky.calls.values()) == sum(clean.values()) + flaky.injected


# --------------------------------------------------------------------------- B3: permanent and exhausted


def test_missing_file_is_not_retried(flaky, flaky_dataset):
    _, url = flaky_dataset("parquet", shards=1)
    loader = _loader(url, retry=RetryPolicy(max_attempts=5, base_delay=0.001))
    flaky.configure("missing")
    with pytest.raises(ReaderError) as info:
        _epoch_ids(loader)
    chain = []
    e: BaseException | None = info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__
    assert any(isinstance(c, FileNotFoundError) for c in chain), chain
    assert not any(isinstance(c, sb.RemoteReadError) for c in chain)
    assert flaky.calls and max(flaky.calls.values()) == 1, "a missing file was requested again"
    assert "part-000.parquet" in str(info.value)


@pytest.mark.parametrize("fmt", ["npy", "parquet", "zarr"])
def test_exhausted_retries_raise_remote_read_error_naming_url_without_credentials(fmt, flaky, tmp_path, caplog):
    root = tmp_path / "src"
    root.mkdir()
    local = write_dataset(fmt, root, make_columns(500), 100, 1)
    url = f"flaky://bob:{SECRET}@bucket/{fmt}"
    options = {"key": KEY, "secret": SECRET}
    upload(local, FlakyFS(skip_instance_cache=True, **options), url)
    policy = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.002)
    loader = _loader(url, retry=policy, storage_options=options, num_threads=2)
    flaky.configure("always", message=f"reset while signing with {KEY}/{SECRET}")
    caplog.set_level(logging.DEBUG, logger="streambatch")
    with pytest.raises(sb.RemoteReadError) as info:
        _epoch_ids(loader)
    error = info.value
    text = str(error)
    assert "flaky://***@bucket/" in text and "failed after 3 attempts" in text
    assert "rows" in text or "row group" in text or "chunk" in text
    # the whole chain and every log record are free of credentials
    chain_text = []
    e: BaseException | None = error
    while e is not None:
        chain_text.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    everything = "\n".join(chain_text) + "\n" + "\n".join(r.getMessage() for r in caplog.records)
    assert SECRET not in everything and KEY not in everything
    assert any("retrying" in r.getMessage() for r in caplog.records)
    assert isinstance(error, ReaderError) and isinstance(error, OSError)


def test_exhausted_timeouts_raise_reader_timeout_error():
    """The retry layer's verdict on a read that keeps timing out. (Through the
    loader this is not tested yet: ``reading._result`` takes a job's
    ``TimeoutError`` for its own poll timeout and waits forever; reported.)"""
    calls = []

    def fn():
        calls.append(1)
        raise TimeoutError("read timed out")

    with pytest.raises(sb.ReaderTimeoutError, match="s3://b/k row group 3: failed after 2 attempts") as info:
        call_with_retry(fn, RetryPolicy(max_attempts=2), "s3://b/k row group 3", sleep=lambda s: None)
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, sb.RemoteReadError)
    assert isinstance(info.value.__cause__, TimeoutError) and len(calls) == 2


def test_retry_policy_none_disables_nothing_and_max_attempts_1_disables_retries(flaky, flaky_dataset):
    _, url = flaky_dataset("npy", n=500, shards=1)
    loader = _loader(url, retry=RetryPolicy(max_attempts=1))
    flaky.configure("reset", every=1)
    with pytest.raises(sb.RemoteReadError, match="after 1 attempt"):
        _epoch_ids(loader)
    assert max(flaky.calls.values()) == 1


# --------------------------------------------------------------------------- the policy and the classifier


def test_call_with_retry_counts_attempts_and_backs_off():
    calls, sleeps = [], []

    def fn():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError(errno.ECONNRESET, "reset")
        return "ok"

    policy = RetryPolicy(max_attempts=5, base_delay=0.1, max_delay=0.25, jitter=False)
    assert call_with_retry(fn, policy, "x", sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and sleeps == [0.1, 0.2]
    assert [policy.delay(k) for k in range(1, 6)] == [0.1, 0.2, 0.25, 0.25, 0.25]
    jittered = RetryPolicy(base_delay=1.0, max_delay=10.0)
    assert all(0.5 * 2 ** (k - 1) <= jittered.delay(k) <= 2 ** (k - 1) for k in range(1, 4))


def test_a_stopped_retry_loop_sends_no_new_attempt_and_its_wait_ends_at_once():
    """Once the pool's stop event is set, the wait between attempts ends (here it
    would have been 10 s) and no attempt follows: ``Stopped``."""
    stop = threading.Event()
    calls = []

    def fn():
        calls.append(1)
        raise ConnectionResetError(errno.ECONNRESET, "reset")

    policy = RetryPolicy(max_attempts=5, base_delay=10.0, jitter=False)
    timer = threading.Timer(0.2, stop.set)
    timer.start()
    started = time.monotonic()
    with stopped_by(stop), pytest.raises(Stopped):
        call_with_retry(fn, policy, "x")
    assert time.monotonic() - started < 1.0 and calls == [1]
    with stopped_by(stop), pytest.raises(Stopped):  # already stopped: not even a first attempt
        call_with_retry(fn, policy, "x")
    assert calls == [1]
    call_with_retry(lambda: calls.append(2), policy, "x")  # outside the block the event does not apply
    assert calls == [1, 2]


def test_a_stopped_async_retry_and_a_request_on_a_loop_are_cancelled():
    """``acall_with_retry`` (zarr's store) stops like ``call_with_retry``, and a request
    waited for with ``run_on_loop`` is cancelled on its loop when the stop is set."""
    import asyncio

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cancelled = []

    async def silent():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    async def failing():
        raise ConnectionResetError(errno.ECONNRESET, "reset")

    try:
        stop = threading.Event()
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        with stopped_by(stop), pytest.raises(Stopped):
            run_on_loop(silent(), loop)
        assert time.monotonic() - started < 1.0
        deadline = time.monotonic() + 2
        while not cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cancelled == [1]
        policy = RetryPolicy(max_attempts=5, base_delay=10.0, jitter=False)
        with stopped_by(stop), pytest.raises(Stopped):  # stopped: no attempt is sent
            run_on_loop(acall_with_retry(failing, policy, "x"), loop)
        with pytest.raises(TimeoutError):
            run_on_loop(silent(), loop, timeout=0.05)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_call_with_retry_exhausted_chains_the_last_cause():
    causes = []

    def fn():
        causes.append(ConnectionResetError(errno.ECONNRESET, f"reset #{len(causes)}"))
        raise causes[-1]

    with pytest.raises(sb.RemoteReadError, match="s3://b/k rows 0:10: failed after 4 attempts") as info:
        call_with_retry(fn, RetryPolicy(max_attempts=4), "s3://b/k rows 0:10", sleep=lambda s: None)
    assert info.value.__cause__ is causes[-1] and len(causes) == 4


@pytest.mark.parametrize(
    "error",
    [FileNotFoundError("k"), PermissionError("k"), CorruptInputError("bad"), SchemaError("bad"), ValueError("x")],
)
def test_permanent_errors_fail_at_once(error):
    calls = []

    def fn():
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        call_with_retry(fn, RetryPolicy(max_attempts=5), "x", sleep=lambda s: None)
    assert len(calls) == 1


def _fake(module: str, name: str, base: type = Exception, **attrs):
    cls = type(name, (base,), {"__module__": module})
    error = cls("fake")
    for k, v in attrs.items():
        setattr(error, k, v)
    return error


def _boto(code: str, status: int):
    return _fake(
        "botocore.exceptions",
        "ClientError",
        response={"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
    )


def _wrapped(cause: BaseException) -> OSError:
    """What s3fs makes of a botocore error it does not map to a built-in."""
    error = OSError(errno.EIO, "an error occurred")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (ConnectionResetError(), True),
        (ConnectionRefusedError(), True),
        (BrokenPipeError(), True),
        (TimeoutError(), True),
        (OSError(errno.ECONNRESET, "x"), True),
        (OSError(errno.ETIMEDOUT, "x"), True),
        (OSError(errno.EPIPE, "x"), True),
        (OSError(errno.EIO, "x"), False),
        (ShortReadError("short"), True),
        (FileNotFoundError(), False),
        (PermissionError(), False),
        (sb.SourceNotFoundError("x"), False),
        (CorruptInputError("x"), False),
        (sb.RemoteReadError("exhausted"), False),
        (_boto("SlowDown", 503), True),
        (_boto("InternalError", 500), True),
        (_boto("Throttling", 400), True),
        (_boto("TooManyRequestsException", 429), True),
        (_boto("NoSuchKey", 404), False),
        (_boto("AccessDenied", 403), False),
        (_wrapped(_boto("ServiceUnavailable", 503)), True),
        (_wrapped(_boto("InvalidRange", 416)), False),
        (_fake("aiohttp.client_exceptions", "ClientResponseError", status=502), True),
        (_fake("aiohttp.client_exceptions", "ClientResponseError", status=429), True),
        (_fake("aiohttp.client_exceptions", "ClientResponseError", status=404), False),
        (_fake("aiohttp.client_exceptions", "ServerDisconnectedError"), True),
        (_fake("aiohttp.client_exceptions", "ClientPayloadError"), True),
        (_fake("botocore.exceptions", "ReadTimeoutError"), True),
        (_fake("botocore.exceptions", "EndpointConnectionError"), True),
        (ValueError("x"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_is_transient(error, transient):
    assert is_transient(error) is transient


def test_botocore_and_aiohttp_are_not_imported_by_streambatch():
    code = (
        "import sys, streambatch, streambatch.sources._retry; "
        "print(any(m.split('.')[0] in ('botocore', 'aiohttp', 's3fs') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_retry_policy_validates(bad):
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=bad)


def test_retry_must_be_a_policy(flaky_dataset):
    local, _ = flaky_dataset("npy", n=100, shards=1)
    with pytest.raises(TypeError, match="RetryPolicy"):
        sb.open_dataset(local, retry=3)


def test_open_dataset_stores_the_policy_on_every_shard_without_mutating_a_given_dataset(flaky_dataset):
    local, _ = flaky_dataset("parquet", n=300, shards=3)
    plain = sb.open_dataset(local)
    policy = RetryPolicy(max_attempts=2)
    derived = sb.open_dataset(plain, retry=policy)
    assert all(s.retry is policy for s in derived.shards)
    assert all(s.retry is None for s in plain.shards)
    assert derived.fingerprint() == plain.fingerprint()


# --------------------------------------------------------------------------- redaction


def test_redact_removes_url_userinfo_and_secrets():
    text = f"GET https://bob:{SECRET}@host/x.npy failed; s3://k:s@b/p; key={KEY}"
    clean = redact(text, secrets_of({"key": KEY, "secret": SECRET, "endpoint_url": "http://127.0.0.1:5000"}))
    assert SECRET not in clean and KEY not in clean and "k:s@" not in clean
    assert "https://***@host/x.npy" in clean and "s3://***@b/p" in clean


def test_secrets_of_finds_nested_credentials_only():
    options = {
        "key": KEY,
        "secret": SECRET,
        "token": "tok-123",
        "endpoint_url": "http://127.0.0.1:9000",
        "client_kwargs": {"aws_session_token": "sess-456", "region_name": "us-east-1"},
        "anon": False,
    }
    found = set(secrets_of(options))
    assert found == {KEY, SECRET, "tok-123", "sess-456"}


def test_urls_in_messages_hide_credentials(flaky):
    with pytest.raises(sb.SourceNotFoundError) as info:
        sb.open_dataset(f"flaky://bob:{SECRET}@bucket/none.npy", storage_options={"secret": SECRET})
    assert SECRET not in str(info.value) and "***@bucket" in str(info.value)


# --------------------------------------------------------------------------- B2: slow storage


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_close_returns_quickly_while_reads_are_slow(fmt, flaky, flaky_dataset):
    """Every data request sleeps 0.3 s; ``close()`` from the consumer after the
    first batch returns within 2 s and leaves no thread (guard in conftest)."""
    _, url = flaky_dataset(fmt, n=4000, shards=2)
    loader = _loader(url, retry=FAST, num_threads=4)
    flaky.configure("sleep", delay=0.3)
    iterator = iter(loader)
    first = next(iterator)
    assert len(first["id"]) == 64
    elapsed = run_with_deadline(iterator.close, 2.0)
    print(f"\nclose() with 0.3 s reads in flight took {elapsed:.2f} s")
    assert not [name for name in streambatch_threads_after(2.0) if name.startswith("streambatch-reader")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_close_returns_quickly_while_readers_wait_between_retries(fmt, flaky, flaky_dataset):
    """After the first batch every data request fails and the policy waits 15-30 s
    before each new attempt: ``close()`` ends those waits (the retries see the
    pool's stop event), returns within 2 s, and no reader thread outlives it."""
    _, url = flaky_dataset(fmt, n=60_000, shards=2)  # 2.9 MB: more than the budget holds
    loader = _loader(url, retry=RetryPolicy(max_attempts=5, base_delay=30.0, max_delay=30.0), num_threads=4)
    iterator = iter(loader)
    next(iterator)
    flaky.configure("always")
    deadline = time.monotonic() + 0.5
    while flaky.injected == 0 and time.monotonic() < deadline:  # reads in flight, or fetched ahead, fail
        time.sleep(0.01)
    for _ in range(100):  # or else: batches already read, whose slots go to new reads, which fail
        if flaky.injected:
            break
        next(iterator)
        time.sleep(0.01)
    assert flaky.injected > 0  # a reader is now waiting to retry
    elapsed = run_with_deadline(iterator.close, 2.0)
    print(f"\nclose() with readers waiting between retries took {elapsed:.2f} s")
    assert not streambatch_threads_after(2.0)


def test_break_during_slow_reads_with_loader_close(flaky, flaky_dataset):
    _, url = flaky_dataset("npy", n=4000, shards=2)
    loader = _loader(url, retry=FAST)
    flaky.configure("sleep", delay=0.3)
    for _ in loader:
        break
    run_with_deadline(loader.close, 2.0)


@pytest.mark.parametrize("closer", ["iterator", "loader"])
@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_close_from_another_thread_wakes_a_next_blocked_on_slow_reads(fmt, closer, flaky, flaky_dataset):
    """A watchdog closes the iterator (or the loader) while the training thread
    is blocked in ``next()`` on reads that take 0.5 s each: that ``next()`` raises
    ``StopIteration`` within 2 s instead of waiting for ever, the epoch is not
    counted as finished (a resume must still deliver the rest of epoch 0), and
    no streambatch thread is left."""
    _, url = flaky_dataset(fmt, n=4000, shards=2)
    loader = _loader(url, retry=FAST)
    flaky.configure("sleep", delay=0.5)  # before iter(): the data fit the budget, all of it is read at once
    iterator = iter(loader)
    outcome: dict[str, object] = {}

    def consume() -> None:
        try:
            while True:
                next(iterator)
                outcome["batches"] = int(outcome.get("batches", 0)) + 1
        except BaseException as e:  # StopIteration expected
            outcome["error"] = e
            outcome["at"] = time.monotonic()

    consumer = threading.Thread(target=consume, name="test-consumer", daemon=True)
    consumer.start()
    time.sleep(0.2)  # every read takes 0.5 s: next() is waiting for the first batch
    assert consumer.is_alive() and "error" not in outcome, outcome
    closed_at = time.monotonic()
    (iterator if closer == "iterator" else loader).close()
    consumer.join(2.0)
    assert not consumer.is_alive(), "next() still blocked 2 s after close() on another thread"
    assert isinstance(outcome["error"], StopIteration), outcome["error"]
    assert float(outcome["at"]) - closed_at < 2.0  # type: ignore[arg-type]
    assert loader.epoch == 0  # closed, not finished
    assert not streambatch_threads_after(2.0)


# --------------------------------------------------------------------------- C5: timing never changes the order


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_read_delays_do_not_change_the_order(fmt, flaky, flaky_dataset):
    local, url = flaky_dataset(fmt, n=1500, shards=3)
    reference = {e: _epoch_ids(_loader(local, num_threads=1), e) for e in (0, 1)}
    assert not np.array_equal(reference[0], reference[1])
    for threads in (1, 2, 4):
        flaky.configure("random_sleep", delay=0.01, seed=threads)
        loader = _loader(url, num_threads=threads)
        for epoch in (0, 1):
            np.testing.assert_array_equal(_epoch_ids(loader, epoch), reference[epoch], err_msg=f"{threads} threads")


# --------------------------------------------------------------------------- E1: two loaders on remote storage at once


def test_two_remote_loaders_at_once_equal_their_solo_runs(flaky, flaky_dataset):
    _, url_a = flaky_dataset("npy", n=1200, shards=2, tag="a")
    _, url_b = flaky_dataset("parquet", n=900, shards=3, tag="b")
    solo_a = ids_of(list(_loader(url_a, seed=1)))
    solo_b = ids_of(list(_loader(url_b, seed=2)))
    flaky.configure("reset", every=7)
    a, b = _loader(url_a, seed=1, retry=FAST), _loader(url_b, seed=2, retry=FAST)
    got: dict[int, list[np.ndarray]] = {0: [], 1: []}
    live = {0: iter(a), 1: iter(b)}
    while live:  # alternate one batch each until both are done
        for k in list(live):
            batch = next(live[k], None)
            if batch is None:
                del live[k]
            else:
                got[k].append(batch["id"])
    got_a, got_b = got[0], got[1]
    np.testing.assert_array_equal(np.concatenate(got_a), solo_a)
    np.testing.assert_array_equal(np.concatenate(got_b), solo_b)


# --------------------------------------------------------------------------- B7: memory flat over 20 epochs


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_twenty_epochs_do_not_grow_memory(fmt, flaky, flaky_dataset):
    """After 3 warm-up epochs, 17 more (on flaky storage, with retries) grow
    neither the Python heap, nor Arrow's pool, nor RSS, nor open descriptors."""
    _, url = flaky_dataset(fmt, n=3000, shards=3)
    loader = _loader(url, retry=FAST, memory_limit="2MiB")
    flaky.configure("reset", every=5)
    for _ in range(3):
        assert len(ids_of(list(loader))) == 3000
    gc.collect()
    tracemalloc.start()
    try:
        heap0, arrow0, rss0 = tracemalloc.get_traced_memory()[0], pa.total_allocated_bytes(), _rss_bytes()
        fds0 = len(os.listdir("/proc/self/fd"))
        for _ in range(17):
            ids = ids_of(list(loader))
            assert _lost_and_duplicated(ids, 3000) == (0, 0)
        gc.collect()
        heap1, arrow1, rss1 = tracemalloc.get_traced_memory()[0], pa.total_allocated_bytes(), _rss_bytes()
        fds1 = len(os.listdir("/proc/self/fd"))
    finally:
        tracemalloc.stop()
    print(
        f"\n{fmt}: heap +{(heap1 - heap0) / 1e3:.0f} kB, arrow +{(arrow1 - arrow0) / 1e3:.0f} kB, "
        f"rss +{(rss1 - rss0) / 1e6:.1f} MB, fds {fds0}->{fds1}"
    )
    assert heap1 - heap0 < 1 << 20
    assert arrow1 - arrow0 < 1 << 20
    assert rss1 - rss0 < 32 << 20
    assert fds1 <= fds0


# --------------------------------------------------------------------------- B8: file-descriptor limit

_FD_PROBE = textwrap.dedent(
    """
    import resource, sys, numpy as np
    sys.path.insert(0, {repo!r})
    resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))
    import streambatch as sb
    from streambatch.sources import _handles
    max_open = {max_open!r}
    if max_open is not None:  # what the loader's ReaderCache keeps open at most
        _handles.ReaderCache.__init__.__defaults__ = (max_open,)
    paths = sys.argv[1:]
    loader = sb.Loader(paths, batch_size=50, memory_limit="4MiB", seed=0, num_threads=4)
    for epoch in range(2):
        ids = np.concatenate([b["id"] for b in loader])
        assert np.array_equal(np.sort(ids), np.arange(len(ids))), "rows lost or duplicated"
    print("rows", len(ids))
    """
)


def _many_npy_shards(root, count: int, rows: int, columns: int) -> list[str]:
    paths = []
    for s in range(count):
        d = root / f"s{s:04d}"
        d.mkdir()
        ids = np.arange(s * rows, (s + 1) * rows, dtype=np.int64)
        np.save(d / "id.npy", ids)
        for c in range(1, columns):
            np.save(d / f"c{c}.npy", ids.astype(np.float32))
        paths.append(str(d))
    return paths


def _run_fd_probe(tmp_path, columns: int, max_open: int | None) -> subprocess.CompletedProcess[str]:
    paths = _many_npy_shards(tmp_path, 200, 20, columns)
    probe = _FD_PROBE.format(repo=REPO, limit=64, max_open=max_open)
    return subprocess.run([sys.executable, "-c", probe, *paths], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("columns", [1, 3])
def test_200_npy_shards_under_rlimit_nofile_64(tmp_path, columns):
    """200 shards under ``RLIMIT_NOFILE=64`` (subprocess): the loader sizes its LRU
    of open readers from the limit (descriptors per reader = columns or threads),
    so the run completes with every row exactly once."""
    out = _run_fd_probe(tmp_path, columns, max_open=None)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rows 4000" in out.stdout
