"""Faults of a real HTTP server on 127.0.0.1, read through fsspec's
``HTTPFileSystem`` (aiohttp): connections dropped in the middle of a body,
and a server that goes silent while reads are in flight.

Every test compares with the fault-free order of the same files read locally:
every row exactly once, in the same order.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

import streambatch as sb
from streambatch import RetryPolicy
from tests.conftest import ids_of, make_columns, streambatch_threads_after, write_dataset

pytest.importorskip("aiohttp")

N = 1200
#: Rows of the slow-server tests: more than the 1 MiB budget holds, so readers
#: are still fetching after the first batch.
BIG = 60_000
PATIENT = RetryPolicy(max_attempts=8, base_delay=0.001, max_delay=0.01)
#: A reader blocked on a silent server gives up after 3 x 0.3 s.
BOUNDED = RetryPolicy(max_attempts=3, base_delay=0.001, timeout=0.3)
#: A reader on a silent server would go on for 20 x 5 s, or (no timeout) until the
#: server answers: ``close()`` must not wait for it (its request is cancelled, its
#: retries see the stop).
PATIENT_TIMEOUTS = RetryPolicy(max_attempts=20, base_delay=0.001, timeout=5.0)
UNBOUNDED = RetryPolicy(max_attempts=20, base_delay=0.001, timeout=None)
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _FaultServer(ThreadingHTTPServer):
    """Serves the files under ``root`` with Range support. Fault settings:
    ``drop_every``: every n-th GET with a body of more than 16 bytes sends its
    headers (the full Content-Length) and half the body, then closes the
    connection; ``hang``: every GET from then on waits (until ``release``) before
    answering."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.lock = threading.Lock()
        self.drop_every = 0
        self.gets = 0
        self.dropped = 0
        self.hang = False
        self.hung = 0
        self.release = threading.Event()

    def url(self, relative: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{relative}"

    def fault_for(self, length: int) -> str:
        with self.lock:
            if self.hang:
                self.hung += 1
                return "hang"
            self.gets += 1
            if self.drop_every and length > 16 and self.gets % self.drop_every == 0:
                self.dropped += 1
                return "drop"
        return ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FaultServer

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = os.path.join(self.server.root, self.path.lstrip("/"))
        if not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as f:
            data = f.read()
        status, start, end = 200, 0, len(data)
        match = _RANGE.match(self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = min(len(data), int(match.group(2)) + 1) if match.group(2) else len(data)
            status = 206
        payload = data[start:end]
        fault = self.server.fault_for(len(payload)) if body else ""
        if fault == "hang":
            self.server.release.wait(30)
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(payload)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        if fault == "drop":  # the promised length, half of it sent, then the connection is gone
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(payload)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = _FaultServer(str(root))
    thread = threading.Thread(target=srv.serve_forever, name="http-fault-server", daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def _sources(server, n: int = N) -> dict[str, tuple[object, object]]:
    """``{format: (local source, http source)}``: one Parquet file (row groups of
    100 rows) and a dict of three ``.npy`` columns, of ``n`` rows each."""
    root = server.root
    pq_dir = write_dataset("parquet", root, make_columns(n), 100, 1)
    npy_dir = write_dataset("npy", root, make_columns(n), 100, 1)
    rel_pq = os.path.relpath(os.path.join(pq_dir, "part-000.parquet"), root)
    parquet = (os.path.join(root, rel_pq), server.url(rel_pq))
    columns = ("id", "x", "img")
    rel = {c: os.path.relpath(os.path.join(npy_dir, "shard-000", f"{c}.npy"), root) for c in columns}
    npy = ({c: os.path.join(root, r) for c, r in rel.items()}, {c: server.url(r) for c, r in rel.items()})
    return {"parquet": parquet, "npy": npy}


def _loader(source, **kw) -> sb.Loader:
    return sb.Loader(source, batch_size=50, memory_limit="1MiB", seed=4, num_threads=4, **kw)


@pytest.mark.parametrize("cached", [False, True], ids=["direct", "cache_dir"])
@pytest.mark.parametrize("fmt", ["parquet", "npy"])
@pytest.mark.parametrize("every", [2, 3])
def test_connections_dropped_mid_body_lose_and_duplicate_nothing(fmt, every, cached, server, tmp_path):
    local, url = _sources(server)[fmt]
    with _loader(local) as loader:
        expected = [ids_of(list(loader)) for _ in range(2)]
    server.drop_every = every
    extra = {"cache_dir": tmp_path / "cache"} if cached else {}
    if cached:
        from streambatch.sources import _cache

        _cache_block = _cache._BLOCK
        _cache._BLOCK = 8192  # many requests per download, so that some are dropped
    try:
        with _loader(url, retry=PATIENT, **extra) as loader:
            got = [ids_of(list(loader)) for _ in range(2)]
    finally:
        if cached:
            _cache._BLOCK = _cache_block
    assert server.dropped >= 3
    for g, e in zip(got, expected):
        assert np.bincount(g, minlength=N).tolist() == [1] * N
        np.testing.assert_array_equal(g, e)


def test_a_body_cut_short_that_persists_is_a_remote_read_error(server):
    _, url = _sources(server)["parquet"]
    dataset = sb.open_dataset(url, retry=PATIENT)
    server.drop_every = 1
    with (
        _loader(dataset) as loader,
        pytest.raises(sb.RemoteReadError, match=r"127\.0\.0\.1.*failed after 8 attempts"),
    ):
        list(loader)


def _block_reads_after_first_batch(server, iterator) -> np.ndarray:
    first = next(iterator)
    server.hang = True
    deadline = time.monotonic() + 10
    while server.hung == 0 and time.monotonic() < deadline:  # a reader is now waiting on the server
        time.sleep(0.01)
    assert server.hung > 0
    return first["id"]


def _close_within_2s_after_the_server_hangs(server, fmt: str, policy) -> None:
    """Read a first batch, hang the server, then ``close()`` the iterator: it must
    return within 2 s (the loader is closed too)."""
    _, url = _sources(server, BIG)[fmt]
    with _loader(url, retry=policy) as loader:
        iterator = iter(loader)
        _block_reads_after_first_batch(server, iterator)
        started = time.monotonic()
        iterator.close()
        assert time.monotonic() - started < 2


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_close_returns_within_2s_while_a_read_is_blocked(fmt, server):
    _close_within_2s_after_the_server_hangs(server, fmt, BOUNDED)
    # the blocked request is cancelled by its timeout: no thread stays
    assert not streambatch_threads_after(5)


@pytest.mark.parametrize("policy", [PATIENT_TIMEOUTS, UNBOUNDED], ids=["timeout-5s-x20", "no-timeout"])
@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_close_returns_within_2s_while_a_patient_retry_waits_on_a_silent_server(fmt, policy, server):
    """The server goes silent after the first batch; the readers' requests would be
    retried for 100 s (or wait for ever): ``close()`` cancels them and returns
    within 2 s, and within 2 s more no streambatch thread is left."""
    _close_within_2s_after_the_server_hangs(server, fmt, policy)
    assert not streambatch_threads_after(2)


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_break_returns_within_2s_while_a_read_is_blocked(fmt, server):
    local, url = _sources(server, BIG)[fmt]
    with _loader(local) as loader:
        expected_first = next(iter(loader))["id"]
    loader = _loader(url, retry=BOUNDED)
    started = None
    for batch in loader:
        np.testing.assert_array_equal(batch["id"], expected_first)
        server.hang = True
        deadline = time.monotonic() + 10
        while server.hung == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.hung > 0
        started = time.monotonic()
        break
    assert started is not None and time.monotonic() - started < 2  # the iterator was released at the break
    started = time.monotonic()
    loader.close()
    assert time.monotonic() - started < 2
