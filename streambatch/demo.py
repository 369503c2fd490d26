"""``streambatch demo``: generate a class-sorted example dataset larger than the
loader's budget in each format, stream one shuffled epoch of each in a fresh
process, and report rows/s, first-batch latency, peak RSS and shuffle quality."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ._units import format_bytes, parse_bytes

__all__ = ["EpochReport", "generate", "measure_epoch", "run_demo"]

FORMATS = ("npy", "parquet", "zarr")
FEATURES = 128
NUM_CLASSES = 10
BLOCK_ROWS = 65536


@dataclass(frozen=True)
class EpochReport:
    format: str
    rows: int
    seconds: float
    first_batch_s: float
    peak_rss_bytes: int
    score: float

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def example_blocks(rows: int, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Rows of ``x`` (float32[128]) and ``label`` (int64) with labels sorted into
    10 contiguous classes: the worst case for a shuffle, and easy to score."""
    rng = np.random.default_rng(seed)
    for start in range(0, rows, BLOCK_ROWS):
        n = min(BLOCK_ROWS, rows - start)
        label = (np.arange(start, start + n, dtype=np.int64) * NUM_CLASSES) // rows
        x = rng.standard_normal((n, FEATURES), dtype=np.float32)
        x[:, 0] = label  # lets tests check that x and label stay aligned
        yield {"x": x, "label": label}


def generate(fmt: str, path: str, rows: int, chunk_rows: int = 8192) -> str:
    """Write the example dataset in ``fmt`` under ``path``; returns the dataset path."""
    from .writers import NpyWriter, ParquetWriter, ZarrWriter, write_blocks

    columns: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
        "x": (np.dtype(np.float32), (FEATURES,)),
        "label": (np.dtype(np.int64), ()),
    }
    if fmt == "npy":
        target = os.path.join(path, "npy")
        write_blocks(NpyWriter(target, columns, rows), example_blocks(rows))
    elif fmt == "parquet":
        target = os.path.join(path, "data.parquet")
        write_blocks(ParquetWriter(target, columns, chunk_rows), example_blocks(rows))
    elif fmt == "zarr":
        target = os.path.join(path, "data.zarr")
        write_blocks(ZarrWriter(target, columns, rows, chunk_rows), example_blocks(rows))
    else:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return target


def measure_epoch(path: str, fmt: str, batch_size: int, memory_limit: str, shuffle: bool = True) -> EpochReport:
    """Stream one epoch of ``path`` in this process (run it in a fresh one: peak
    RSS is per process)."""
    from .loader import Loader
    from .quality import ShuffleScore

    scorer = ShuffleScore(NUM_CLASSES)
    start = time.perf_counter()
    rows = 0
    first = 0.0
    with Loader(path, batch_size, shuffle=shuffle, memory_limit=memory_limit) as loader:
        for batch in loader:
            if rows == 0:
                first = time.perf_counter() - start
            labels = batch["label"]
            if not np.array_equal(batch["x"][:, 0], labels):
                raise AssertionError("x and label came apart")
            scorer.add(labels)
            rows += len(labels)
    seconds = time.perf_counter() - start
    return EpochReport(fmt, rows, seconds, first, peak_rss_bytes(), scorer.score())


def peak_rss_bytes() -> int:
    """This process's peak RSS: ``VmHWM`` where Linux has it, since ``ru_maxrss``
    of a child process starts at its parent's peak (it survives fork and exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_in_subprocess(path: str, fmt: str, batch_size: int, memory_limit: str, shuffle: bool = True) -> EpochReport:
    code = (
        "import json, dataclasses, sys; from streambatch.demo import measure_epoch; "
        f"r = measure_epoch({path!r}, {fmt!r}, {batch_size}, {memory_limit!r}, {shuffle}); "
        "print(json.dumps(dataclasses.asdict(r)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {fmt} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return EpochReport(**json.loads(done.stdout.strip().splitlines()[-1]))


def run_demo(
    rows: int = 2_000_000,
    directory: str | None = None,
    memory_limit: str = "256MiB",
    batch_size: int = 256,
    formats: tuple[str, ...] = FORMATS,
    chunk_rows: int = 8192,
    out=sys.stdout,
    convert_too: bool = True,
) -> list[EpochReport]:
    """Generate, stream and report; the data is deleted afterwards unless ``directory`` was given."""
    budget = parse_bytes(memory_limit)
    row_bytes = FEATURES * 4 + 8
    owned = directory is None
    root = tempfile.mkdtemp(prefix="streambatch-demo-") if directory is None else os.path.abspath(directory)
    os.makedirs(root, exist_ok=True)
    reports = []
    try:
        print(
            f"streambatch demo: {rows:,} rows x (float32[{FEATURES}] + int64 label) = "
            f"{format_bytes(rows * row_bytes)} per format, memory_limit {memory_limit} "
            f"({rows * row_bytes / budget:.1f}x the budget), batch {batch_size}, labels sorted in "
            f"{NUM_CLASSES} classes; data in {root}",
            file=out,
            flush=True,
        )
        for fmt in formats:
            t0 = time.perf_counter()
            path = generate(fmt, root, rows, chunk_rows)
            print(f"  wrote {fmt:8s} in {time.perf_counter() - t0:5.1f} s", file=out, flush=True)
            reports.append(measure_in_subprocess(path, fmt, batch_size, memory_limit))
            if fmt == "parquet" and convert_too:
                from .convert import convert

                t0 = time.perf_counter()
                shuffled = os.path.join(root, "parquet-shuffled")
                convert(
                    [path],
                    shuffled,
                    shard_format="parquet",
                    shuffle=True,
                    seed=0,
                    memory_limit=memory_limit,
                    progress=False,
                )
                print(
                    f"  converted parquet with `convert --shuffle` in {time.perf_counter() - t0:5.1f} s",
                    file=out,
                    flush=True,
                )
                reports.append(
                    measure_in_subprocess(shuffled, "parquet, converted --shuffle", batch_size, memory_limit)
                )
        print(f"\n{'format':29s} {'rows/s':>12s} {'first batch':>12s} {'peak RSS':>10s} {'score':>6s}", file=out)
        for r in reports:
            print(
                f"{r.format:29s} {r.rows_per_s:12,.0f} {r.first_batch_s * 1e3:9.1f} ms "
                f"{r.peak_rss_bytes / 2**20:6.0f} MiB {r.score:6.2f}",
                file=out,
            )
        print(
            "\nscore: 1.0 = as well mixed as a full random permutation; ~12 = unshuffled. "
            f"Peak RSS includes the interpreter; the contract is <= memory_limit + 300 MiB "
            f"= {(budget + (300 << 20)) / 2**20:.0f} MiB. Parquet row groups are streamed in slices, many at "
            f"once; Zarr chunks ({chunk_rows} rows here) are decoded whole, so the window holds "
            "budget / chunk of them. Data that fits the budget is fully permuted; "
            "`streambatch convert --shuffle` rewrites the rest to score ~1.0 (docs/shuffling.md).",
            file=out,
        )
    finally:
        if owned:
            shutil.rmtree(root, ignore_errors=True)
    return reports
