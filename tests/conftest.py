"""Shared fixtures: datasets in every format, and guards that fail a test which
leaves a streambatch thread or an open file behind."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from streambatch.writers import NpyWriter, ParquetWriter, ZarrWriter, write_blocks

FORMATS = ("npy", "parquet", "zarr")
#: The moto S3 server's bucket and (fake) credentials.
BUCKET = "streambatch-test"
KEY, SECRET = "testing-key-id", "testing-secret-value"


def _ours() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("streambatch-")}


def _open_fds() -> set[str]:
    try:
        return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    except OSError:
        return set()


@pytest.fixture(autouse=True)
def no_leaks(tmp_path):
    """No streambatch thread and no file under the test's tmp_path stays open."""
    before = _ours()
    yield
    deadline = time.monotonic() + 5
    while _ours() - before and time.monotonic() < deadline:
        time.sleep(0.01)
    leaked = _ours() - before
    assert not leaked, f"threads left running: {[t.name for t in leaked]}"
    root = str(tmp_path)
    open_files = [p for p in _open_fds() if p.startswith(root)]
    assert not open_files, f"files left open: {open_files}"


def streambatch_threads_after(seconds: float) -> list[str]:
    """The streambatch threads still alive once they are all gone, or ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while True:
        left = [t.name for t in threading.enumerate() if t.name.startswith("streambatch-")]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.01)


def make_columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Row ``i`` has ``id == i``; ``img`` (N-d) and ``x`` encode ``i`` too, so any
    mix-up between columns is visible."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n, dtype=np.int64)
    img = (ids[:, None, None] + np.zeros((1, 3, 2), dtype=np.int64)).astype(np.int32)
    x = np.concatenate([ids[:, None].astype(np.float32), rng.standard_normal((n, 3), dtype=np.float32)], axis=1)
    return {"id": ids, "x": x, "img": img}


def write_dataset(fmt: str, root, columns: dict[str, np.ndarray], chunk_rows: int = 100, shards: int = 1) -> str:
    """Write ``columns`` in ``fmt`` under ``root`` (split into ``shards`` files)."""
    n = len(next(iter(columns.values())))
    specs = {k: (v.dtype, v.shape[1:]) for k, v in columns.items()}
    bounds = np.linspace(0, n, shards + 1).astype(int)
    root = str(root)
    target = os.path.join(root, f"ds-{fmt}")
    os.makedirs(target, exist_ok=True)
    for s, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        block = {k: v[a:b] for k, v in columns.items()}
        if fmt == "npy":
            write_blocks(NpyWriter(os.path.join(target, f"shard-{s:03d}"), specs, b - a), [block])
        elif fmt == "parquet":
            write_blocks(ParquetWriter(os.path.join(target, f"part-{s:03d}.parquet"), specs, chunk_rows), [block])
        elif fmt == "zarr":
            write_blocks(ZarrWriter(os.path.join(target, f"part-{s:03d}.zarr"), specs, b - a, chunk_rows), [block])
        else:
            raise ValueError(fmt)
    return target


@pytest.fixture(params=FORMATS)
def fmt(request) -> str:
    return request.param


@pytest.fixture
def dataset_factory(tmp_path) -> Callable[..., str]:
    counter = iter(range(10**6))

    def factory(fmt: str, n: int = 1000, chunk_rows: int = 100, shards: int = 1, seed: int = 0) -> str:
        root = tmp_path / f"d{next(counter)}"
        root.mkdir()
        return write_dataset(fmt, root, make_columns(n, seed), chunk_rows, shards)

    return factory


def collect(loader) -> list[dict[str, np.ndarray]]:
    return [batch for batch in loader]


def ids_of(batches) -> np.ndarray:
    return np.concatenate([b["id"] for b in batches]) if batches else np.zeros(0, np.int64)


def digest_tree(path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``path``."""
    found = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return found


def read_shard(shard, start: int, stop: int, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """Rows [start, stop) of ``columns`` of any shard through a fresh reader, closed after."""
    columns = list(shard.columns) if columns is None else columns
    out = {c: np.empty((stop - start, *shard.columns[c].shape), shard.columns[c].dtype) for c in columns}
    reader = shard.open_reader(columns)
    try:
        reader.read_into(start, stop, out)
    finally:
        reader.close()
    return out


_skipped: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """In CI a skipped test is a test that did not run: fail the session."""
    if os.environ.get("CI") and _skipped and exitstatus == 0:
        print(f"\n{len(_skipped)} test(s) skipped in CI, where every test must run: {_skipped[:10]}")
        session.exitstatus = 1


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """``(endpoint_url, storage_options)`` of a moto S3 server on 127.0.0.1 for the
    session, with the bucket ``BUCKET`` created."""
    s3fs = pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    fs.mkdir(BUCKET)
    try:
        yield endpoint, options
    finally:
        server.stop()
