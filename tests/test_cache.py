"""The local cache of remote files (``cache_dir=``/``cache_limit=``), against
moto's S3 server on 127.0.0.1: the second epoch reads locally, processes share
one directory, damaged entries are found and fetched again, the limit holds,
and a download killed mid-way never leaves a file under an entry name."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import streambatch as sb
from streambatch.convert import convert
from streambatch.sources._cache import _MAGIC, _TRAILER, FileCache
from tests.conftest import BUCKET, ids_of, make_columns, write_dataset
from tests.remote_fixtures import FlakyFS, upload

s3fs = pytest.importorskip("s3fs")

N = 1200
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def requests(monkeypatch):
    """Every S3 API call any s3fs filesystem makes, counted by operation."""
    counts: collections.Counter[str] = collections.Counter()
    original = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        counts[method] += 1
        return await original(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    return counts


def _put(tmp_path, s3_endpoint, fmt: str, tag: str, converted: bool = False, n: int = N) -> tuple[str, str]:
    local = write_dataset(fmt, tmp_path / f"src-{tag}", make_columns(n), 100, 3)
    if converted:
        out = str(tmp_path / f"conv-{tag}")
        convert([local], out, fmt, rows_per_shard=500, chunk_rows=100)
        local = out
    url = f"s3://{BUCKET}/cache-{tag}"
    upload(local, s3fs.S3FileSystem(skip_instance_cache=True, **s3_endpoint[1]), url)
    return local, url


def _loader(source, **kw) -> sb.Loader:
    return sb.Loader(source, batch_size=50, memory_limit="1MiB", seed=4, num_threads=4, **kw)


def _epoch(loader: sb.Loader, epoch: int = 0) -> np.ndarray:
    loader.set_epoch(epoch)
    return ids_of(list(loader))


def _entries(cache_dir) -> list[str]:
    root = os.path.join(cache_dir, "v1")
    return sorted(os.path.join(root, n) for n in os.listdir(root) if n.endswith(".entry"))


def _temporaries(cache_dir) -> list[str]:
    return os.listdir(os.path.join(cache_dir, "v1", "tmp"))


def _stats(loader: sb.Loader) -> dict[str, int]:
    shard = loader.dataset.shards[0]
    location = shard._files[next(iter(shard._files))] if hasattr(shard, "_files") else shard.location
    return dict(location.cache.stats)


@pytest.mark.parametrize("converted", [False, True], ids=["plain", "manifest"])
def test_second_epoch_reads_from_the_cache(fmt, converted, tmp_path, s3_endpoint, requests):
    local, url = _put(tmp_path, s3_endpoint, fmt, f"e2-{fmt}-{converted}", converted)
    cache_dir = tmp_path / "cache"
    expected = [_epoch(_loader(local), e) for e in (0, 1)]
    with _loader(url, storage_options=s3_endpoint[1], cache_dir=cache_dir) as loader:
        first = _epoch(loader, 0)
        fetched = requests["get_object"]
        assert fetched > 0
        requests.clear()
        second = _epoch(loader, 1)
    np.testing.assert_array_equal(first, expected[0])
    np.testing.assert_array_equal(second, expected[1])
    # no request at all: a converted Parquet shard (ParquetShard.from_manifest keeps no
    # footer) reads its footer with ranged reads, which the cache serves, once per shard
    assert sum(requests.values()) == 0, dict(requests)
    entries = _entries(cache_dir)
    assert entries and not _temporaries(cache_dir)
    # a new loader (a new process would do the same) reads the data from the cache too:
    # it sends the requests of opening the dataset (headers, footers, Zarr documents), no more
    requests.clear()
    sb.open_dataset(url, storage_options=s3_endpoint[1])
    opening = requests["get_object"]
    requests.clear()
    with _loader(url, storage_options=s3_endpoint[1], cache_dir=cache_dir) as again:
        np.testing.assert_array_equal(_epoch(again, 1), expected[1])
        assert _stats(again)["downloads"] == 0
    assert requests["get_object"] <= opening + (1 if converted else 0), dict(requests)  # + the manifest


def test_entries_hold_the_bytes_and_a_sha256_trailer(tmp_path, s3_endpoint):
    local, url = _put(tmp_path, s3_endpoint, "npy", "trailer")
    cache_dir = tmp_path / "cache"
    with _loader(url, storage_options=s3_endpoint[1], cache_dir=cache_dir) as loader:
        _epoch(loader)
    import hashlib

    originals = {}
    for root, _, files in os.walk(local):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                data = f.read()
            originals[hashlib.sha256(data).digest()] = data
    entries = _entries(cache_dir)
    assert len(entries) == 9  # 3 shards x 3 columns
    for path in entries:
        with open(path, "rb") as f:
            blob = f.read()
        body, trailer = blob[:-_TRAILER], blob[-_TRAILER:]
        assert trailer[: len(_MAGIC)] == _MAGIC
        assert originals[trailer[len(_MAGIC) :]] == body


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "trailer"])
def test_a_damaged_entry_is_found_and_fetched_again(damage, tmp_path, s3_endpoint):
    local, url = _put(tmp_path, s3_endpoint, "npy", f"dmg-{damage}")
    cache_dir = tmp_path / "cache"
    expected = _epoch(_loader(local), 1)
    with _loader(url, storage_options=s3_endpoint[1], cache_dir=cache_dir) as loader:
        _epoch(loader)
    victims = _entries(cache_dir)[:3]
    for path in victims:
        if damage == "flip":  # same size, one byte changed in the data
            with open(path, "r+b") as f:
                f.seek(200)
                byte = f.read(1)
                f.seek(200)
                f.write(bytes([byte[0] ^ 0xFF]))
        elif damage == "truncate":
            os.truncate(path, os.path.getsize(path) // 2)
        elif damage == "trailer":
            with open(path, "r+b") as f:
                f.seek(-5, os.SEEK_END)
                f.write(b"\0\0\0\0\0")
        else:
            os.remove(path)
    with _loader(url, storage_options=s3_endpoint[1], cache_dir=cache_dir) as loader:
        np.testing.assert_array_equal(_epoch(loader, 1), expected)
        stats = _stats(loader)
    assert stats["downloads"] == 3
    assert stats["rejected"] == (0 if damage == "delete" else 3)
    assert len(_entries(cache_dir)) == 9 and not _temporaries(cache_dir)


def test_an_entry_damaged_while_a_loader_uses_it_is_fetched_again(tmp_path, s3_endpoint):
    """Checked entries are not hashed again by the same loader, but an entry cut
    short or removed under it is noticed on the read and downloaded again."""
    local, url = _put(tmp_path, s3_endpoint, "parquet", "under")
    cache_dir = tmp_path / "cache"
    expected = [_epoch(_loader(local), e) for e in (0, 1, 2)]
    with _loader(url, storage_options=s3_endpoint[1], cache_dir=cache_dir) as loader:
        np.testing.assert_array_equal(_epoch(loader, 0), expected[0])
        first, second = _entries(cache_dir)[:2]
        os.truncate(first, 100)
        os.remove(second)
        np.testing.assert_array_equal(_epoch(loader, 1), expected[1])
        assert _stats(loader)["downloads"] == 3 + 2
        np.testing.assert_array_equal(_epoch(loader, 2), expected[2])
        assert _stats(loader)["downloads"] == 5


def test_a_remote_file_that_differs_from_the_manifest_is_refused(tmp_path, s3_endpoint):
    """A converted dataset's shard replaced remotely by bytes of the same size:
    the manifest's size check passes, the download's sha256 does not (twice: the
    second download rules out damage in transit), and nothing is published."""
    _, url = _put(tmp_path, s3_endpoint, "npy", "tampered", converted=True)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_endpoint[1])
    target = sorted(p for p in fs.find(url) if p.endswith("/x.npy"))[0]
    data = bytearray(fs.cat_file(target))
    data[-8:] = b"\x7f" * 8
    fs.pipe_file(target, bytes(data))
    cache_dir = tmp_path / "cache"
    retry = sb.RetryPolicy(max_attempts=2, base_delay=0.001)
    loader = _loader(url, storage_options=s3_endpoint[1], cache_dir=cache_dir, retry=retry)
    with loader, pytest.raises(sb.CorruptInputError, match="sha256 differs from the manifest"):
        _epoch(loader)
    assert not _temporaries(cache_dir)
    assert all(FileCache(cache_dir)._check(p, _ident_of(p)) for p in _entries(cache_dir))


def _ident_of(path: str):
    from streambatch.sources._cache import _Identity

    size = os.path.getsize(path) - _TRAILER
    return _Identity(os.path.basename(path)[: -len(".entry")], size, None)


def test_cache_limit_holds_and_evicts_least_recently_used(tmp_path, s3_endpoint):
    local, url = _put(tmp_path, s3_endpoint, "parquet", "limit")
    sizes = sorted(os.path.getsize(os.path.join(local, n)) for n in os.listdir(local))
    limit = sizes[0] + sizes[1] + 2 * _TRAILER  # two of the three files fit
    cache_dir = tmp_path / "cache"
    expected = [_epoch(_loader(local), e) for e in (0, 1)]
    with _loader(url, storage_options=s3_endpoint[1], cache_dir=cache_dir, cache_limit=limit) as loader:
        for epoch in (0, 1):
            np.testing.assert_array_equal(_epoch(loader, epoch), expected[epoch])
            entries = _entries(cache_dir)
            assert sum(os.path.getsize(p) for p in entries) <= limit
            assert 1 <= len(entries) <= 2
    # LRU: of three entries, the least recently used goes
    cache = FileCache(tmp_path / "lru", limit=3 * 1000 + 3 * _TRAILER)
    for i, name in enumerate("abcd"):
        path = os.path.join(cache._root, f"{name}.entry")
        with open(path, "wb") as f:
            f.write(b"\0" * (1000 + _TRAILER))
        os.utime(path, (1000 + i, 1000 + i))
    os.utime(os.path.join(cache._root, "a.entry"), (2000, 2000))  # "a" used last
    cache._evict(keep="d")
    assert [os.path.basename(p) for p in _entries(tmp_path / "lru")] == ["a.entry", "c.entry", "d.entry"]


def test_a_file_larger_than_the_limit_is_read_remotely(tmp_path, s3_endpoint):
    local, url = _put(tmp_path, s3_endpoint, "parquet", "large")
    cache_dir = tmp_path / "cache"
    with _loader(url, storage_options=s3_endpoint[1], cache_dir=cache_dir, cache_limit=1000) as loader:
        np.testing.assert_array_equal(_epoch(loader), _epoch(_loader(local)))
        assert _stats(loader)["downloads"] == 0 and _stats(loader)["bypassed"] > 0
    assert _entries(cache_dir) == []


def test_cache_download_survives_transient_failures(tmp_path, monkeypatch):
    """Every 3rd request fails: each download block is retried on its own."""
    FlakyFS.reset()
    try:
        local = write_dataset("npy", tmp_path / "src", make_columns(N), 100, 3)
        upload(local, FlakyFS(skip_instance_cache=True), "flaky://c/npy")
        monkeypatch.setattr("streambatch.sources._cache._BLOCK", 4096)  # many blocks per file
        FlakyFS.configure(mode="reset", every=3)
        retry = sb.RetryPolicy(max_attempts=4, base_delay=0.001, max_delay=0.01)
        with _loader("flaky://c/npy", cache_dir=tmp_path / "cache", retry=retry) as loader:
            np.testing.assert_array_equal(_epoch(loader), _epoch(_loader(local)))
        assert FlakyFS.injected > 5
    finally:
        FlakyFS.reset()


_SHARED = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {repo!r})
    import numpy as np, streambatch as sb
    from streambatch.sources import _cache
    _cache._BLOCK = 16384  # downloads of many requests, so that the processes overlap
    loader = sb.Loader({url!r}, batch_size=50, memory_limit="1MiB", seed=4, num_threads=4,
                       storage_options={options!r}, cache_dir={cache!r})
    with loader:
        ids = np.concatenate([b["id"] for b in loader]).tolist()
        shard = loader.dataset.shards[0]
        stats = next(iter(shard._files.values())).cache.stats
    print(json.dumps({{"ids": ids, "stats": stats}}))
    """
)


def test_processes_sharing_a_cache_directory(tmp_path, s3_endpoint):
    local, url = _put(tmp_path, s3_endpoint, "npy", "shared", n=6000)
    cache_dir = str(tmp_path / "cache")
    script = _SHARED.format(repo=REPO, url=url, options=s3_endpoint[1], cache=cache_dir)
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    expected = _epoch(_loader(local)).tolist()
    downloads = 0
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        result = json.loads(out.strip().splitlines()[-1])
        assert result["ids"] == expected
        downloads += result["stats"]["downloads"]
    assert downloads == 9  # each file downloaded once on the host: the others waited for it
    assert len(_entries(cache_dir)) == 9 and not _temporaries(cache_dir)


_KILLED = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    import streambatch as sb
    from streambatch.sources import _cache, _fs
    _cache._BLOCK = 4096
    slow = _fs.FileSystemPath.remote_cat_file
    def remote_cat_file(self, start, end):
        time.sleep(0.02)
        return slow(self, start, end)
    _fs.FileSystemPath.remote_cat_file = remote_cat_file
    loader = sb.Loader({url!r}, batch_size=50, memory_limit="1MiB", seed=4, num_threads=2,
                       storage_options={options!r}, cache_dir={cache!r})
    for batch in loader:
        pass
    """
)


def test_a_download_killed_midway_leaves_no_entry(tmp_path, s3_endpoint):
    local, url = _put(tmp_path, s3_endpoint, "npy", "killed", n=6000)
    cache_dir = str(tmp_path / "cache")
    script = _KILLED.format(repo=REPO, url=url, options=s3_endpoint[1], cache=cache_dir)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        tmp = os.path.join(cache_dir, "v1", "tmp")
        while time.monotonic() < deadline and proc.poll() is None:
            parts = os.listdir(tmp) if os.path.isdir(tmp) else []
            if parts and all(os.path.getsize(os.path.join(tmp, p)) > 8192 for p in parts):
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    orphans = _temporaries(cache_dir)
    assert orphans  # killed mid-download: its temporary file is left, under a temporary name
    checker = FileCache(cache_dir)
    for path in _entries(cache_dir):  # whatever was published is whole and checks
        assert checker._check(path, _ident_of(path)), path
    with _loader(url, storage_options=s3_endpoint[1], cache_dir=cache_dir) as loader:
        np.testing.assert_array_equal(_epoch(loader), _epoch(_loader(local)))
    assert len(_entries(cache_dir)) == 9
    assert not _temporaries(cache_dir)  # the dead process's temporary file was removed


def test_local_sources_are_not_cached(tmp_path, fmt):
    local = write_dataset(fmt, tmp_path / "src", make_columns(300), 100, 2)
    with _loader(local, cache_dir=tmp_path / "cache") as loader:
        np.testing.assert_array_equal(_epoch(loader), _epoch(_loader(local)))
    assert _entries(tmp_path / "cache") == []


def test_cache_parameters_are_validated(tmp_path):
    local = write_dataset("npy", tmp_path / "src", make_columns(300), 100, 1)
    with pytest.raises(ValueError, match="cache_limit needs cache_dir"):
        sb.open_dataset(local, cache_limit="1GiB")
    with pytest.raises(ValueError, match="cache_limit must be positive"):
        sb.open_dataset(local, cache_dir=tmp_path / "c", cache_limit=0)
    with pytest.raises(ValueError, match="cache_limit must be a byte count"):
        sb.open_dataset(local, cache_dir=tmp_path / "c", cache_limit="lots")
    with pytest.raises(TypeError, match="cache_dir must be a path"):
        sb.open_dataset(local, cache_dir=3)
    with pytest.raises(ValueError, match="not to an opened Dataset"):
        sb.open_dataset(sb.open_dataset(local), cache_dir=tmp_path / "c")
    assert sb.Loader(local, batch_size=10, cache_dir=tmp_path / "c", cache_limit="1MiB").dataset.num_rows == 300


def test_streamed_row_groups_are_read_from_the_cache(tmp_path, s3_endpoint, requests):
    """Row groups too large for the budget's pieces are streamed through a file
    object; with ``cache_dir`` that file is the local copy (before, fsspec's file
    over S3, every epoch): epoch 2 sends no request, and the batches equal local."""
    n = 400_000  # two 200,000-row groups (9.6 MB each): streamed at 16 MiB
    local = write_dataset("parquet", tmp_path / "src-stream", make_columns(n), 200_000, 1)
    url = f"s3://{BUCKET}/cache-stream"
    upload(local, s3fs.S3FileSystem(skip_instance_cache=True, **s3_endpoint[1]), url)

    def loader(source, **kw) -> sb.Loader:
        return sb.Loader(source, batch_size=500, memory_limit="16MiB", seed=4, num_threads=4, **kw)

    expected = [_epoch(loader(local), e) for e in (0, 1)]
    with loader(url, storage_options=s3_endpoint[1], cache_dir=tmp_path / "cache") as cached:
        assert cached.budget.stream_bytes > 0 and cached.budget.streamed_units == 2
        np.testing.assert_array_equal(_epoch(cached, 0), expected[0])
        assert _stats(cached)["downloads"] == 1
        requests.clear()
        np.testing.assert_array_equal(_epoch(cached, 1), expected[1])
    assert sum(requests.values()) == 0, dict(requests)
    assert len(_entries(tmp_path / "cache")) == 1 and not _temporaries(tmp_path / "cache")


def test_a_converted_parquet_footer_is_fetched_once_without_a_cache(tmp_path, s3_endpoint, requests):
    """A converted dataset's Parquet shards carry no footer (the manifest describes
    them): it is read once per shard, not once per epoch, so epoch 2 sends only
    the row groups' ranged GETs: no HEAD, no footer GET."""
    local, url = _put(tmp_path, s3_endpoint, "parquet", "footer-once", converted=True)
    expected = [_epoch(_loader(local), e) for e in (0, 1)]
    with _loader(url, storage_options=s3_endpoint[1]) as loader:
        np.testing.assert_array_equal(_epoch(loader, 0), expected[0])
        requests.clear()
        np.testing.assert_array_equal(_epoch(loader, 1), expected[1])
        groups = sum(s.num_row_groups for s in loader.dataset.shards)
    assert requests["head_object"] == 0 and set(requests) == {"get_object"}, dict(requests)
    assert requests["get_object"] == groups, (dict(requests), groups)
