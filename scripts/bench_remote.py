#!/usr/bin/env python3
"""Shuffled throughput when every storage request costs 20 ms (object-storage
latency), against the same files without added latency.

Not a test. The data are local files read through ``slow://``, an asynchronous
fsspec filesystem (like s3fs, gcsfs and HTTP) that sleeps ``--latency-ms``
before serving each request, so what is measured is how well the loader
overlaps requests: ``.npy`` ranges are fetched concurrently per read job
(``cat_ranges``), a Parquet row group is one request per pool thread, and zarr
fetches the chunks of a read concurrently. Each configuration reads one
shuffled epoch (batch 256) in the same process, page cache warm.

    python scripts/bench_remote.py                         # 300k rows (~156 MB) per format
    python scripts/bench_remote.py --rows 50000 --formats npy   # quick look

The table printed at the end is the one in ``docs/remote.md`` ("Measured").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import fsspec  # noqa: E402
import numpy as np  # noqa: E402
from fsspec.asyn import AsyncFileSystem  # noqa: E402
from fsspec.spec import AbstractBufferedFile  # noqa: E402

import streambatch as sb  # noqa: E402
from streambatch.writers import NpyWriter, ParquetWriter, ZarrWriter, write_blocks  # noqa: E402

BATCH = 256
FORMATS = ("npy", "parquet", "zarr")


class SlowLocalFS(AsyncFileSystem):
    """``slow:///abs/path``: local files, each request delayed by ``latency`` s."""

    protocol = ("slow",)
    root_marker = "/"
    latency = 0.02
    requests = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._local = fsspec.filesystem("file")

    @classmethod
    def _strip_protocol(cls, path):
        path = path[len("slow://") :] if path.startswith("slow://") else path
        return "/" + path.lstrip("/") if path else "/"

    async def _delay(self):
        type(self).requests += 1
        if self.latency:
            await asyncio.sleep(self.latency)

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


def epoch_rate(source: str, threads: int, memory_limit: str) -> tuple[float, int]:
    loader = sb.Loader(source, batch_size=BATCH, memory_limit=memory_limit, seed=0, num_threads=threads)
    start = time.perf_counter()
    rows = 0
    for batch in loader:
        rows += len(batch["label"])
    elapsed = time.perf_counter() - start
    return rows / elapsed, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--chunk-rows", type=int, default=4096, help="Parquet row group / Zarr chunk rows")
    parser.add_argument("--memory-limit", default="64MiB")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--data-dir", default=None, help="default: a temporary directory")
    args = parser.parse_args(argv)

    root = args.data_dir or tempfile.mkdtemp(prefix="sb-bench-remote-")
    print(f"writing {args.rows} rows per format under {root} ...", flush=True)
    paths = write_data(root, args.rows, args.chunk_rows)
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cpus, memory_limit {args.memory_limit}, "
        f"chunk/row group {args.chunk_rows} rows, latency {args.latency_ms:g} ms per request"
    )
    ms = f"{args.latency_ms:g} ms"
    lines = [
        "| format | threads | local rows/s | slow:// 0 ms rows/s "
        f"| slow:// {ms} rows/s | {ms} vs 0 ms | requests/epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for fmt in args.formats:
        path = paths[fmt]
        epoch_rate(path, 2, args.memory_limit)  # warm the page cache
        for threads in args.threads:
            local, _ = epoch_rate(path, threads, args.memory_limit)
            SlowLocalFS.latency = 0.0
            fast, _ = epoch_rate(f"slow://{path}", threads, args.memory_limit)
            SlowLocalFS.latency = args.latency_ms / 1000
            SlowLocalFS.requests = 0
            slow, _ = epoch_rate(f"slow://{path}", threads, args.memory_limit)
            requests = SlowLocalFS.requests
            line = f"| {fmt} | {threads} | {local:,.0f} | {fast:,.0f} | {slow:,.0f} | {slow / fast:.2f}x | {requests} |"
            print(line, flush=True)
            lines.append(line)
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
