"""Every request goes through the retry policy: listings, ``info`` (behind
exists/isdir/size), footers, ``.npy`` headers, Zarr metadata, manifests and
data reads, through the fault-injecting ``flaky://`` filesystem.

Each test compares against the fault-free run of the same loader: every row
exactly once, in the same order.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

import streambatch as sb
from streambatch import RetryPolicy
from streambatch.convert import convert
from tests.conftest import ids_of, make_columns, write_dataset
from tests.remote_fixtures import ALL_KINDS, FlakyFS, HangFS, upload

N = 1200
FAST = RetryPolicy(max_attempts=5, base_delay=0.001, max_delay=0.01)
#: Outlasts a burst of 4 failed requests in a row.
PATIENT = RetryPolicy(max_attempts=10, base_delay=0.001, max_delay=0.01)
#: Kinds a dataset of each format asks for (npy and parquet read no Zarr documents).
KINDS = {
    "npy": {"listing", "metadata", "open", "data"},
    "parquet": {"listing", "metadata", "open", "data"},
    "zarr": {"listing", "metadata", "zarr-metadata", "data"},
}


@pytest.fixture
def flaky():
    FlakyFS.reset()
    yield FlakyFS
    FlakyFS.reset()


def _put(tmp_path, fmt: str, tag: str = "d", converted: bool = False) -> tuple[str, str]:
    """A dataset written locally (optionally through ``convert``, so it has a
    manifest) and copied to ``flaky://``: ``(local path, flaky URL)``."""
    local = write_dataset(fmt, tmp_path / f"src-{fmt}", make_columns(N), 100, 3)
    if converted:
        out = str(tmp_path / f"conv-{fmt}")
        convert([local], out, fmt, rows_per_shard=500, chunk_rows=100)
        local = out
    url = f"flaky://{tag}/{fmt}{'-conv' if converted else ''}"
    upload(local, FlakyFS(skip_instance_cache=True), url)
    return local, url


def _order(source, **kw) -> np.ndarray:
    with sb.Loader(source, batch_size=50, memory_limit="1MiB", seed=4, num_threads=4, **kw) as loader:
        return ids_of(list(loader))


def _assert_exactly_once_in_order(got: np.ndarray, expected: np.ndarray) -> None:
    counts = np.bincount(got, minlength=N)
    assert (int(np.sum(counts == 0)), int(np.sum(counts > 1))) == (0, 0), "rows lost or duplicated"
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("converted", [False, True], ids=["plain", "manifest"])
def test_first_request_of_each_kind_to_each_path_fails_once(fmt, converted, flaky, tmp_path):
    """The first listing, info, open (footer, header, manifest), Zarr document and
    data read of every path fails with a connection reset: the loader opens and
    delivers the fault-free order."""
    local, url = _put(tmp_path, fmt, converted=converted)
    expected = _order(local)
    flaky.configure("first", kinds=("all",))
    got = _order(url, retry=FAST)
    faulted = {kind for kind, count in flaky.kind_faults.items() if count}
    # a manifest dataset is not listed (the manifest names its files) but the manifest is opened
    expected_kinds = (KINDS[fmt] - {"listing"}) | {"open"} if converted else KINDS[fmt]
    assert expected_kinds <= faulted, f"kinds never faulted: {expected_kinds - faulted}"
    _assert_exactly_once_in_order(got, expected)


@pytest.mark.parametrize("mode,every,policy", [("reset", 5, FAST), ("timeout", 4, FAST), ("burst", 25, PATIENT)])
def test_one_in_n_and_bursts_on_every_kind(fmt, mode, every, policy, flaky, tmp_path):
    """1 request in 5 (or 4 timeouts, or 4 in a row out of every 25) of any kind fails."""
    local, url = _put(tmp_path, fmt)
    expected = _order(local)
    flaky.configure(mode, every=every, kinds=("all",), burst=4)
    got = _order(url, retry=policy)
    assert flaky.injected >= 3
    _assert_exactly_once_in_order(got, expected)


@pytest.mark.parametrize("kind", [k for k in ALL_KINDS if k != "data"])
def test_a_metadata_failure_that_persists_is_a_remote_read_error_naming_the_url(kind, flaky, tmp_path):
    """Never ``SourceNotFoundError: no such file or directory`` for a path that
    exists: fsspec's ``exists()`` would turn the failed ``info`` into False."""
    fmt = "zarr" if kind == "zarr-metadata" else "parquet"
    _, url = _put(tmp_path, fmt)
    flaky.configure("always", kinds=(kind,))
    with pytest.raises(sb.RemoteReadError, match=r"flaky://d/.*failed after 2 attempts") as info:
        sb.open_dataset(url, retry=RetryPolicy(max_attempts=2, base_delay=0))
    assert not isinstance(info.value, FileNotFoundError)
    asked = [n for (k, _), n in flaky.kind_calls.items() if k == kind]
    assert asked and set(asked) == {2}, "each failing request is sent exactly max_attempts times"


def test_the_first_info_failing_once_is_retried_not_reported_missing(flaky, tmp_path):
    _, url = _put(tmp_path, "npy")
    flaky.configure("first", kinds=("metadata",))
    ds = sb.open_dataset(f"{url}/shard-000/id.npy", retry=FAST)
    assert ds.num_rows == 400
    with pytest.raises(sb.RemoteReadError, match="metadata"):
        flaky.configure("first", kinds=("metadata",))
        sb.open_dataset(f"{url}/shard-001/id.npy", retry=RetryPolicy(max_attempts=1))


def test_a_missing_path_fails_at_once_naming_the_url(flaky, tmp_path):
    _, url = _put(tmp_path, "parquet")
    flaky.configure("reset", every=1000, kinds=("all",))
    with pytest.raises(sb.SourceNotFoundError, match=f"{url}/nope.parquet"):
        sb.open_dataset(f"{url}/nope.parquet", retry=FAST)
    assert flaky.kind_calls[("metadata", f"{url}/nope.parquet")] == 1, "a missing path was asked again"


def test_a_permission_error_is_not_retried_and_names_the_url(flaky, tmp_path, monkeypatch):
    _, url = _put(tmp_path, "npy")
    calls = []

    def forbidden(self, path, **kwargs):
        calls.append(path)
        raise PermissionError(13, "Access Denied")

    monkeypatch.setattr(FlakyFS, "info", forbidden)
    with pytest.raises(PermissionError, match=f"{url}/shard-000/id.npy.*Access Denied"):
        sb.open_dataset(f"{url}/shard-000/id.npy", retry=FAST)
    assert len(calls) == 1


def test_nested_retried_requests_do_not_multiply_attempts(flaky, tmp_path):
    """``size()`` inside a retried footer fetch is attempted once per outer
    attempt: 3 attempts in all, not 3 x 3."""
    from streambatch.sources._fs import resolve
    from streambatch.sources._retry import call_with_retry

    _, url = _put(tmp_path, "parquet")
    location = resolve(f"{url}/part-000.parquet", retry=RetryPolicy(max_attempts=3, base_delay=0))
    flaky.configure("always", kinds=("metadata",))
    with pytest.raises(sb.RemoteReadError, match="outer"):
        call_with_retry(location.size, RetryPolicy(max_attempts=3, base_delay=0), "outer")
    assert flaky.kind_faults["metadata"] == 3


# --------------------------------------------------------------------------- RetryPolicy.timeout


@pytest.fixture
def hang():
    HangFS.configure()
    yield HangFS
    HangFS.configure()


def test_timeout_validates():
    for bad in (0, -1.0, "1", True):
        with pytest.raises(ValueError, match="timeout"):
            RetryPolicy(timeout=bad)
    assert RetryPolicy(timeout=0.5).timeout == 0.5 and RetryPolicy().timeout is None


def test_a_hung_request_of_each_kind_is_cancelled_and_sent_again(fmt, hang, tmp_path):
    """On an asynchronous filesystem, the first listing, info, Zarr document and
    data request hang (30 s); ``timeout=0.3`` cancels each and sends it again: the
    loader opens and delivers the local order in a few seconds, and no hung
    request is left running."""
    local = write_dataset(fmt, tmp_path / "src", make_columns(N), 100, 3)
    expected = _order(local)
    kinds = ("listing", "metadata", "data") + (("zarr-metadata",) if fmt == "zarr" else ())
    hang.configure(kinds=kinds)
    started = time.monotonic()
    got = _order(f"hang://{local}", retry=RetryPolicy(max_attempts=3, base_delay=0.001, timeout=0.3))
    assert time.monotonic() - started < 15
    assert sorted(hang.hung) == sorted(kinds) and hang.cancelled == len(kinds)
    _assert_exactly_once_in_order(got, expected)


def test_requests_that_keep_hanging_raise_reader_timeout_error_naming_the_url(fmt, hang, tmp_path):
    local = write_dataset(fmt, tmp_path / "src", make_columns(300), 100, 1)
    dataset = sb.open_dataset(f"hang://{local}", retry=RetryPolicy(max_attempts=2, base_delay=0, timeout=0.2))
    hang.configure(always=True)
    started = time.monotonic()
    loader = sb.Loader(dataset, batch_size=50, memory_limit="1MiB", num_threads=2)
    with loader, pytest.raises(sb.ReaderTimeoutError, match=r"hang://.*failed after 2 attempts"):
        list(loader)
    assert time.monotonic() - started < 10
    assert hang.cancelled == len(hang.hung) >= 2
