#!/usr/bin/env python3
"""Shuffled throughput when every storage request costs 20 ms (object-storage
latency), against the same files without added latency.

Not a test. The data are local files read through ``slow://``, an asynchronous
fsspec filesystem (like s3fs, gcsfs and HTTP) that sleeps ``--latency-ms``
before serving each request, so what is measured is how well the loader
overlaps requests: ``.npy`` ranges are fetched concurrently per read job
(``cat_ranges``); Parquet row groups and Zarr chunks are fetched outside the
decode slots, and ahead of the pieces admitted to the ring, as far as the
decode scratch allows (``streambatch.fetch``). Each configuration reads one
shuffled epoch (batch 256) in the same process, page cache warm; ``--repeat``
reads it several times and reports the median (the machine may be shared).
"in flight" is the mean number of requests waiting on the 20 ms latency.

    python scripts/bench_remote.py                         # 300k rows (~156 MB) per format
    python scripts/bench_remote.py --rows 50000 --formats npy   # quick look

The table printed at the end is the one in ``docs/remote.md`` ("Measured"). The
score is ``streambatch.quality``'s of the 20 ms epoch (10 classes sorted by row:
1.0 is a full permutation), beside the local epoch's.

``--moto`` measures the same table against a real S3 endpoint instead: the data
are put on a moto S3 server on 127.0.0.1 (``pip install 'moto[server]' s3fs``)
and read through s3fs, every S3 request delayed by ``--latency-ms`` on the client
(the 0 ms column has moto's own per-request cost only):

    python scripts/bench_remote.py --moto --threads 16 --repeat 3

``--cache`` measures the local cache instead (``cache_dir=``): the data are put
on a moto S3 server on 127.0.0.1 (``pip install 'moto[server]' s3fs``), every
S3 request is delayed by ``--latency-ms`` on the client, and each format reads
epoch 1 and epoch 2 without a cache, then epoch 1 (downloading into an empty
cache) and epoch 2 (from the cache):

    python scripts/bench_remote.py --cache --threads 16   # the "Local cache" table
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from typing import Any, NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import fsspec  # noqa: E402
import numpy as np  # noqa: E402
from fsspec.asyn import AsyncFileSystem  # noqa: E402
from fsspec.spec import AbstractBufferedFile  # noqa: E402

import streambatch as sb  # noqa: E402
from streambatch.quality import ShuffleScore  # noqa: E402
from streambatch.writers import NpyWriter, ParquetWriter, ZarrWriter, write_blocks  # noqa: E402

BATCH = 256
FORMATS = ("npy", "parquet", "zarr")


class SlowLocalFS(AsyncFileSystem):
    """``slow:///abs/path``: local files, each request delayed by ``latency`` s."""

    protocol = ("slow",)
    root_marker = "/"
    latency = 0.02
    requests = 0
    in_flight = 0
    #: integral of ``in_flight`` over time since ``reset_counts`` (request-seconds)
    in_flight_seconds = 0.0
    _since = 0.0

    @classmethod
    def reset_counts(cls) -> None:
        cls.requests, cls.in_flight_seconds, cls._since = 0, 0.0, time.perf_counter()

    @classmethod
    def _tick(cls, change: int) -> None:  # on the filesystem's one event loop: no lock needed
        now = time.perf_counter()
        cls.in_flight_seconds += cls.in_flight * (now - cls._since)
        cls._since, cls.in_flight = now, cls.in_flight + change

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._local = fsspec.filesystem("file")

    @classmethod
    def _strip_protocol(cls, path):
        path = path[len("slow://") :] if path.startswith("slow://") else path
        return "/" + path.lstrip("/") if path else "/"

    async def _delay(self):
        cls = type(self)
        cls.requests += 1
        if self.latency:
            cls._tick(+1)
            try:
                await asyncio.sleep(self.latency)
            finally:
                cls._tick(-1)

    async def _cat_file(self, path, start=None, end=None, **kwargs):
        await self._delay()
        path = self._strip_protocol(path)
        size = os.path.getsize(path)
        start = 0 if start is None else (start + size if start < 0 else start)
        end = size if end is None else (end + size if end < 0 else min(end, size))
        if end <= start:
            return b""
        with open(path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    async def _info(self, path, **kwargs):
        await self._delay()
        info = self._local.info(self._strip_protocol(path))
        return {**info, "name": self._strip_protocol(path)}

    async def _ls(self, path, detail=True, **kwargs):
        await self._delay()
        entries = self._local.ls(self._strip_protocol(path), detail=True)
        return entries if detail else [e["name"] for e in entries]

    def _open(self, path, mode="rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        return _SlowFile(self, self._strip_protocol(path), mode, block_size or 5 * 2**20, cache_options=cache_options)


class _SlowFile(AbstractBufferedFile):
    def _fetch_range(self, start, end):
        return self.fs.cat_file(self.path, start=start, end=end)


fsspec.register_implementation("slow", SlowLocalFS, clobber=True)


def write_data(root: str, rows: int, chunk_rows: int) -> dict[str, str]:
    """float32[128] features + int64 label (520 bytes a row) in every format."""
    specs = {"x": (np.dtype(np.float32), (128,)), "label": (np.dtype(np.int64), ())}
    rng = np.random.default_rng(0)
    paths = {}
    for fmt in FORMATS:
        target = os.path.join(root, fmt)
        if fmt == "npy":
            writer = NpyWriter(target, specs, rows)
        elif fmt == "parquet":
            os.makedirs(target, exist_ok=True)
            writer = ParquetWriter(os.path.join(target, "part-000.parquet"), specs, chunk_rows)
        else:
            os.makedirs(target, exist_ok=True)
            writer = ZarrWriter(os.path.join(target, "part-000.zarr"), specs, rows, chunk_rows)
        blocks = []
        for lo in range(0, rows, 65536):
            n = min(65536, rows - lo)
            label = np.arange(lo, lo + n, dtype=np.int64)
            x = rng.standard_normal((n, 128), dtype=np.float32)
            x[:, 0] = label
            blocks.append({"x": x, "label": label})
        write_blocks(writer, blocks)
        paths[fmt] = target
    return paths


class _Rate(NamedTuple):
    rows_per_s: float
    in_flight: float
    score: float


def epoch_rate(source: str, threads: int, memory_limit: str, **options: Any) -> _Rate:
    """One shuffled epoch: rows/s, the mean requests in flight on ``slow://`` (0
    elsewhere), and the shuffle score of its labels (10 classes sorted by row)."""
    loader = sb.Loader(source, batch_size=BATCH, memory_limit=memory_limit, seed=0, num_threads=threads, **options)
    rows_total = loader.dataset.num_rows
    scorer = ShuffleScore(10)
    SlowLocalFS.reset_counts()
    start = time.perf_counter()
    rows = 0
    for batch in loader:
        labels = batch["label"]
        rows += len(labels)
        scorer.add(labels * 10 // rows_total)
    elapsed = time.perf_counter() - start
    SlowLocalFS._tick(0)
    return _Rate(rows / elapsed, SlowLocalFS.in_flight_seconds / elapsed, scorer.score())


def median_rate(source: str, threads: int, memory_limit: str, repeat: int, **options: Any) -> _Rate:
    """``epoch_rate`` of ``repeat`` runs: the run of the median rate."""
    runs = sorted(epoch_rate(source, threads, memory_limit, **options) for _ in range(repeat))
    return runs[len(runs) // 2]


class MotoBucket:
    """A moto S3 server on 127.0.0.1 holding ``paths`` (one prefix per format), read
    through s3fs; ``delay`` seconds are added on the client before every S3 call
    while the bucket is entered, and ``requests`` counts those calls."""

    def __init__(self, paths: dict[str, str], formats: list[str]) -> None:
        import s3fs
        from moto.server import ThreadedMotoServer

        self._s3fs = s3fs
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.options = {"endpoint_url": f"http://{host}:{port}", "key": "bench", "secret": "bench-secret"}
        fs = s3fs.S3FileSystem(skip_instance_cache=True, **self.options)
        fs.mkdir("bench-remote")
        for fmt in formats:
            fs.put(paths[fmt], self.url(fmt), recursive=True)
        self.delay = 0.0
        self.requests = 0
        self._original = s3fs.S3FileSystem._call_s3

    @staticmethod
    def url(fmt: str) -> str:
        return f"s3://bench-remote/{fmt}"

    def __enter__(self) -> MotoBucket:
        bucket, original = self, self._original

        async def slow_call(fs, method, *a, **kw):
            bucket.requests += 1
            if bucket.delay:
                await asyncio.sleep(bucket.delay)
            return await original(fs, method, *a, **kw)

        self._s3fs.S3FileSystem._call_s3 = slow_call
        return self

    def __exit__(self, *exc: object) -> None:
        self._s3fs.S3FileSystem._call_s3 = self._original
        self._server.stop()


def moto_rates(paths: dict[str, str], args: argparse.Namespace) -> list[str]:
    """The main table's rows/s and scores, with moto S3 in place of ``slow://``."""
    ms = f"{args.latency_ms:g} ms"
    lines = [
        f"| format | threads | local rows/s | moto 0 ms rows/s | moto {ms} rows/s | {ms} vs 0 ms "
        f"| vs local (0 ms) | requests/epoch | score local / {ms} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with MotoBucket(paths, args.formats) as bucket:
        for fmt in args.formats:
            epoch_rate(paths[fmt], 2, args.memory_limit)  # warm the page cache
            for threads in args.threads:
                local = median_rate(paths[fmt], threads, args.memory_limit, args.repeat)
                remote = dict(storage_options=bucket.options)
                bucket.delay = 0.0
                fast = median_rate(bucket.url(fmt), threads, args.memory_limit, args.repeat, **remote)
                bucket.delay, bucket.requests = args.latency_ms / 1000, 0
                slow = median_rate(bucket.url(fmt), threads, args.memory_limit, args.repeat, **remote)
                requests = bucket.requests // args.repeat
                line = (
                    f"| {fmt} | {threads} | {local.rows_per_s:,.0f} | {fast.rows_per_s:,.0f} | {slow.rows_per_s:,.0f} "
                    f"| {slow.rows_per_s / fast.rows_per_s:.2f}x | {fast.rows_per_s / local.rows_per_s:.2f}x "
                    f"| {requests} | {local.score:.2f} / {slow.score:.2f} |"
                )
                print(line, flush=True)
                lines.append(line)
    return lines


def cache_rates(paths: dict[str, str], args: argparse.Namespace) -> list[str]:
    """Rows/s of epochs 1 and 2 from moto (``--latency-ms`` per request), without
    and with ``cache_dir``; requests per epoch."""
    import shutil

    from streambatch.sources import _cache

    lines = [
        "| format | threads | no cache: epoch 1 | no cache: epoch 2 | cache: epoch 1 (fills) "
        "| cache: epoch 2 | epoch 2 cache vs no cache | requests epoch 1 / 2 (cache) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with MotoBucket(paths, args.formats) as bucket:
        bucket.delay = args.latency_ms / 1000
        for fmt in args.formats:
            for threads in args.threads:
                settings: dict[str, Any] = dict(
                    batch_size=BATCH,
                    memory_limit=args.memory_limit,
                    seed=0,
                    num_threads=threads,
                    storage_options=bucket.options,
                )
                plain = sb.Loader(bucket.url(fmt), **settings)
                r1 = _epoch_of(plain, 0)
                r2 = _epoch_of(plain, 1)
                cache_dir = tempfile.mkdtemp(prefix="sb-bench-cache-")
                try:
                    cached = sb.Loader(bucket.url(fmt), cache_dir=cache_dir, **settings)
                    bucket.requests = 0
                    c1 = _epoch_of(cached, 0)
                    n1, bucket.requests = bucket.requests, 0
                    c2 = _epoch_of(cached, 1)
                    n2 = bucket.requests
                finally:
                    shutil.rmtree(cache_dir, ignore_errors=True)
                line = (
                    f"| {fmt} | {threads} | {r1:,.0f} | {r2:,.0f} | {c1:,.0f} | {c2:,.0f} "
                    f"| {c2 / r2:.1f}x | {n1} / {n2} |"
                )
                print(line, flush=True)
                lines.append(line)
    print(f"(cache download block {_cache._BLOCK >> 20} MiB)")
    return lines


def _epoch_of(loader: sb.Loader, epoch: int) -> float:
    loader.set_epoch(epoch)
    start = time.perf_counter()
    rows = sum(len(batch["label"]) for batch in loader)
    return rows / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--chunk-rows", type=int, default=4096, help="Parquet row group / Zarr chunk rows")
    parser.add_argument("--memory-limit", default="64MiB")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--data-dir", default=None, help="default: a temporary directory")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--cache", action="store_true", help="measure cache_dir against moto S3 instead")
    mode.add_argument("--moto", action="store_true", help="the same table against moto S3 instead of slow://")
    parser.add_argument("--repeat", type=int, default=1, help="epochs per configuration: the median is reported")
    args = parser.parse_args(argv)

    root = args.data_dir or tempfile.mkdtemp(prefix="sb-bench-remote-")
    print(f"writing {args.rows} rows per format under {root} ...", flush=True)
    paths = write_data(root, args.rows, args.chunk_rows)
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cpus, memory_limit {args.memory_limit}, "
        f"chunk/row group {args.chunk_rows} rows, latency {args.latency_ms:g} ms per request"
    )
    if args.cache or args.moto:
        print("\n" + "\n".join((cache_rates if args.cache else moto_rates)(paths, args)))
        return 0
    ms = f"{args.latency_ms:g} ms"
    lines = [
        "| format | threads | local rows/s | slow:// 0 ms rows/s "
        f"| slow:// {ms} rows/s | {ms} vs 0 ms | requests/epoch | in flight ({ms}) | score local / {ms} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for fmt in args.formats:
        path = paths[fmt]
        epoch_rate(path, 2, args.memory_limit)  # warm the page cache
        for threads in args.threads:
            local = median_rate(path, threads, args.memory_limit, args.repeat)
            SlowLocalFS.latency = 0.0
            fast = median_rate(f"slow://{path}", threads, args.memory_limit, args.repeat)
            SlowLocalFS.latency = args.latency_ms / 1000
            slow = median_rate(f"slow://{path}", threads, args.memory_limit, args.repeat)
            requests = SlowLocalFS.requests
            line = (
                f"| {fmt} | {threads} | {local.rows_per_s:,.0f} | {fast.rows_per_s:,.0f} | {slow.rows_per_s:,.0f} "
                f"| {slow.rows_per_s / fast.rows_per_s:.2f}x | {requests} | {slow.in_flight:.1f} "
                f"| {local.score:.2f} / {slow.score:.2f} |"
            )
            print(line, flush=True)
            lines.append(line)
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
