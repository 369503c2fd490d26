"""Reading from a real S3 endpoint (moto's standalone server on 127.0.0.1, read
through s3fs with ``storage_options``), over HTTP(S) URLs, and through the other
fsspec protocols: every format loads and equals the local result.

Skipped when s3fs or moto[server] is missing (both are in the ``test`` extra).
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np
import pytest

import streambatch as sb
from tests.conftest import BUCKET, FORMATS, KEY, SECRET, make_columns, write_dataset

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

N = 1500


@pytest.fixture(scope="session")
def s3_datasets(s3_endpoint, tmp_path_factory):
    """Every format written locally (2 shards, 100-row chunks) and uploaded with
    ``put(recursive=True)``: ``{fmt: (local path, s3 URL)}``."""
    _, options = s3_endpoint
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    root = tmp_path_factory.mktemp("s3src")
    found = {}
    for fmt in FORMATS:
        local = write_dataset(fmt, root, make_columns(N), 100, 2)
        fs.put(local, f"{BUCKET}/{fmt}", recursive=True)
        found[fmt] = (local, f"s3://{BUCKET}/{fmt}")
    fs.invalidate_cache()
    return found


def _batches(source, **kw) -> list[dict[str, np.ndarray]]:
    kw.setdefault("batch_size", 100)
    kw.setdefault("memory_limit", "1MiB")
    kw.setdefault("seed", 5)
    kw.setdefault("num_threads", 4)
    with sb.Loader(source, **kw) as loader:
        return list(loader)


def _assert_same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("shuffle", [True, False])
def test_s3_equals_local(fmt, shuffle, s3_datasets, s3_endpoint):
    local, url = s3_datasets[fmt]
    _, options = s3_endpoint
    expected = _batches(local, shuffle=shuffle)
    got = _batches(url, shuffle=shuffle, storage_options=options)
    _assert_same(got, expected)
    ids = np.concatenate([b["id"] for b in got])
    np.testing.assert_array_equal(np.sort(ids), np.arange(N))


def test_s3_metadata_matches_local(fmt, s3_datasets, s3_endpoint):
    local, url = s3_datasets[fmt]
    remote = sb.open_dataset(url, storage_options=s3_endpoint[1])
    here = sb.open_dataset(local)
    assert remote.num_rows == here.num_rows == N
    assert remote.columns == here.columns
    assert all(s.path.startswith(f"s3://{BUCKET}/{fmt}") for s in remote.shards)


def test_s3_single_files_and_column_dict(s3_datasets, s3_endpoint):
    _, options = s3_endpoint
    local_pq, url_pq = s3_datasets["parquet"]
    _assert_same(
        _batches(f"{url_pq}/part-001.parquet", storage_options=options),
        _batches(f"{local_pq}/part-001.parquet"),
    )
    local_npy, url_npy = s3_datasets["npy"]
    source = {"id": f"{url_npy}/shard-000/id.npy", "x": f"{url_npy}/shard-000/x.npy"}
    local_source = {"id": f"{local_npy}/shard-000/id.npy", "x": f"{local_npy}/shard-000/x.npy"}
    _assert_same(_batches(source, storage_options=options), _batches(local_source))


def test_s3_glob(s3_datasets, s3_endpoint):
    local, url = s3_datasets["parquet"]
    _assert_same(_batches(f"{url}/part-*.parquet", storage_options=s3_endpoint[1]), _batches(f"{local}/part-*.parquet"))


def test_s3_missing_object_is_not_found_without_credentials(s3_endpoint):
    _, options = s3_endpoint
    with pytest.raises(sb.SourceNotFoundError) as info:
        sb.open_dataset(f"s3://{BUCKET}/no/such.parquet", storage_options=options)
    assert f"s3://{BUCKET}/no/such.parquet" in str(info.value)
    assert SECRET not in str(info.value) and KEY not in str(info.value)


def test_https_read_only_urls(s3_datasets, s3_endpoint):
    """Plain HTTP range reads (fsspec's HTTPFileSystem) of objects served by the
    same endpoint: single-file sources, no listing needed."""
    pytest.importorskip("aiohttp")
    endpoint, options = s3_endpoint
    local_pq, _ = s3_datasets["parquet"]
    local_npy, _ = s3_datasets["npy"]
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    for key in ["parquet/part-000.parquet", "npy/shard-001/id.npy", "npy/shard-001/img.npy"]:
        fs.chmod(f"{BUCKET}/{key}", acl="public-read")  # anonymous HTTP GETs are allowed
    base = f"{endpoint}/{BUCKET}"
    _assert_same(_batches(f"{base}/parquet/part-000.parquet"), _batches(f"{local_pq}/part-000.parquet"))
    source = {c: f"{base}/npy/shard-001/{c}.npy" for c in ("id", "img")}
    _assert_same(_batches(source), _batches({c: f"{local_npy}/shard-001/{c}.npy" for c in ("id", "img")}))


def test_https_missing_file_hides_url_credentials(s3_endpoint):
    pytest.importorskip("aiohttp")
    endpoint, _ = s3_endpoint
    url = endpoint.replace("http://", f"http://bob:{SECRET}@") + f"/{BUCKET}/missing.npy"
    with pytest.raises((sb.SourceNotFoundError, OSError)) as info:
        sb.open_dataset(url)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("protocol", ["memory", "file"])
def test_other_fsspec_protocols_equal_local(fmt, protocol, tmp_path):
    import fsspec

    from tests.remote_fixtures import upload

    local = write_dataset(fmt, tmp_path, make_columns(600), 100, 2)
    if protocol == "file":
        url = f"file://{local}"
    else:
        url = f"memory://sb-{fmt}-{tmp_path.name}"
        upload(local, fsspec.filesystem("memory"), url)
    try:
        _assert_same(_batches(url), _batches(local))
    finally:
        if protocol == "memory":
            fsspec.filesystem("memory").rm(url, recursive=True)


class FirstFailS3(s3fs.S3FileSystem):
    """s3fs whose first ``info``, listing, open and ranged read of each path fails
    with a connection reset, as a flaky network would, before reaching moto."""

    protocol = ("firstfails3",)
    seen: ClassVar[set] = set()
    faults: ClassVar[list] = []

    def _first(self, kind, path):
        key = (kind, self._strip_protocol(path).rstrip("/"))
        if key not in FirstFailS3.seen:
            FirstFailS3.seen.add(key)
            FirstFailS3.faults.append(key)
            raise ConnectionResetError(104, f"{kind}: connection reset by peer")

    async def _info(self, path, **kwargs):
        self._first("info", path)
        return await super()._info(path, **kwargs)

    async def _ls(self, path, detail=True, **kwargs):
        self._first("ls", path)
        return await super()._ls(path, detail=detail, **kwargs)

    async def _cat_file(self, path, start=None, end=None, **kwargs):
        self._first("cat", path)
        return await super()._cat_file(path, start=start, end=end, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            self._first("open", path)
        return super()._open(path, mode, **kwargs)


def test_s3_first_request_of_each_kind_fails_once(fmt, s3_datasets, s3_endpoint):
    """Against moto: the first request of every kind to every object fails; the
    loader opens and delivers exactly the local order."""
    import fsspec

    fsspec.register_implementation("firstfails3", FirstFailS3, clobber=True)
    FirstFailS3.seen, FirstFailS3.faults = set(), []
    local, url = s3_datasets[fmt]
    options = {**s3_endpoint[1], "skip_instance_cache": True}
    policy = sb.RetryPolicy(max_attempts=3, base_delay=0.001)
    got = _batches(url.replace("s3://", "firstfails3://"), storage_options=options, retry=policy)
    _assert_same(got, _batches(local))
    kinds = {kind for kind, _ in FirstFailS3.faults}
    assert {"info", "ls", "cat"} <= kinds, kinds
    assert fmt == "zarr" or "open" in kinds, kinds  # footers and .npy headers


def test_a_streamed_row_group_on_s3_holds_no_read_ahead_block(s3_endpoint, tmp_path, monkeypatch):
    """Row groups larger than the budget's pieces are streamed through a file object.
    On s3fs that file read ahead in 50 MiB blocks by default (held per open stream,
    outside the budget, and fetched again each time the stream moved to another
    column: 266 MB requested for a 58 MB file, peak RSS 583 MiB at 128 MiB): now
    every byte is requested about once, in page-sized requests."""
    _, options = s3_endpoint
    local = write_dataset("parquet", tmp_path, make_columns(400_000), 200_000, 1)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.put(local, f"{BUCKET}/streamed", recursive=True)
    sizes: list[int] = []
    original = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        if method == "get_object" and "Range" in kwargs:
            lo, hi = kwargs["Range"].split("=")[1].split("-")
            sizes.append(int(hi) - int(lo) + 1)
        return await original(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    kw = dict(batch_size=500, memory_limit="16MiB", num_threads=4, seed=5)
    with sb.Loader(f"s3://{BUCKET}/streamed", storage_options=options, **kw) as loader:
        assert loader.budget.stream_bytes > 0
        got = list(loader)
    _assert_same(got, _batches(local, **kw))
    file_size = os.path.getsize(os.path.join(local, "part-000.parquet"))
    assert sum(sizes) <= 1.05 * file_size, (sum(sizes), file_size)
    assert max(sizes) <= 4 << 20, max(sizes)
