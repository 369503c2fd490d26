"""Peak memory stays within ``memory_limit`` + 300 MiB however large the data
(RELIABILITY.md B7; the contract in ``streambatch.budget``).

Each format gets a ~620 MB dataset, about 10x the 64 MiB ``memory_limit``
(Arrow IPC, with a ragged column too, ~890 MB), written block by block in this
(parent) process. A fresh child process then
streams one full shuffled epoch, checks that every row arrived exactly once,
and reports its peak RSS together with its RSS right after the imports (the
baseline the 300 MiB allowance is meant to cover).

The peak is ``VmHWM`` from ``/proc/self/status``, the high-water mark of the
child's own address space. ``ru_maxrss`` is reported too but not asserted on:
on Linux it survives ``exec`` and the child starts with the *parent's* peak
(subprocess spawns with vfork, so the pytest process that just wrote 600 MB
leaks its own high-water mark into the child's ``ru_maxrss``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from streambatch.writers import NpyWriter, ParquetWriter, ZarrWriter

pytestmark = pytest.mark.slow

MiB = 1 << 20
LIMIT = "64MiB"
LIMIT_BYTES = 64 * MiB
ALLOWANCE = 300 * MiB
WIDTH = 128  # x: float32[128] -> 512 B/row, + label int64 -> 520 B/row
ROWS = 1_200_000  # ~624 MB, ~10x the memory_limit
UNIT_ROWS = 8192  # Parquet row group / Zarr chunk
BLOCK_ROWS = 8 * UNIT_ROWS
LABELS = 1000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = {"x": (np.dtype(np.float32), (WIDTH,)), "label": (np.dtype(np.int64), ())}


def _blocks(n: int):
    """Rows in blocks: ``x[:, 0]`` is the row id, the rest noise; ``label = id % LABELS``."""
    rng = np.random.default_rng(0)
    for start in range(0, n, BLOCK_ROWS):
        stop = min(n, start + BLOCK_ROWS)
        ids = np.arange(start, stop, dtype=np.int64)
        x = rng.standard_normal((stop - start, WIDTH), dtype=np.float32)
        x[:, 0] = ids
        yield {"x": x, "label": ids % LABELS}


def _write(fmt: str, root, n: int) -> str:
    root = str(root)
    if fmt in ("arrow", "arrow-stream"):
        return _write_arrow(os.path.join(root, "data.arrow"), n, stream=fmt == "arrow-stream")
    if fmt == "npy":
        path, writer = os.path.join(root, "npy"), NpyWriter(os.path.join(root, "npy"), SPECS, n)
    elif fmt == "parquet":
        path = os.path.join(root, "data.parquet")
        writer = ParquetWriter(path, SPECS, row_group_rows=UNIT_ROWS)
    elif fmt == "zarr":
        path = os.path.join(root, "data.zarr")
        writer = ZarrWriter(path, SPECS, n, chunk_rows=UNIT_ROWS)
    else:
        raise ValueError(fmt)
    try:
        for block in _blocks(n):
            writer.write(block)
    finally:
        writer.close()
    return path


def _write_arrow(path: str, n: int, stream: bool) -> str:
    """An uncompressed Arrow IPC file (or stream) of ``x`` as ``fixed_size_list<float>[128]``,
    ``label`` and a ragged ``tokens`` column (``list<int32>``, 0-127 values a row, ~250 B):
    ~930 MB for ``ROWS`` rows, ~15x the memory_limit, in record batches of ``UNIT_ROWS``."""
    import pyarrow as pa

    schema = pa.schema([("x", pa.list_(pa.float32(), WIDTH)), ("label", pa.int64()), ("tokens", pa.list_(pa.int32()))])
    with pa.OSFile(path, "wb") as sink:
        writer = pa.ipc.new_stream(sink, schema) if stream else pa.ipc.new_file(sink, schema)
        with writer:
            for block in _blocks(n):
                ids = block["x"][:, 0].astype(np.int64)
                for lo in range(0, len(ids), UNIT_ROWS):
                    part = slice(lo, lo + UNIT_ROWS)
                    lengths = ids[part] % 128
                    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
                    values = np.arange(int(offsets[-1]), dtype=np.int32)
                    writer.write_batch(
                        pa.record_batch(
                            [
                                pa.FixedSizeListArray.from_arrays(pa.array(block["x"][part].reshape(-1)), WIDTH),
                                pa.array(block["label"][part]),
                                pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                            ],
                            schema=schema,
                        )
                    )
    return path


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """One dataset per (format, rows), written on first use and shared by the module."""
    made: dict[tuple[str, int], str] = {}

    def get(fmt: str, n: int = ROWS) -> str:
        if (fmt, n) not in made:
            made[(fmt, n)] = _write(fmt, tmp_path_factory.mktemp(f"{fmt}-{n}"), n)
        return made[(fmt, n)]

    return get


_CHILD = textwrap.dedent(
    """
    import json, resource, sys

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])  # KiB

    import numpy as np
    import pyarrow, zarr
    import streambatch as sb
    baseline = status("VmRSS")

    path, limit, n, labels = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    seen = np.zeros(n, np.uint8)
    counts = np.zeros(labels, np.int64)
    batches = 0
    with sb.Loader(path, 256, memory_limit=limit, seed=1) as loader:
        for batch in loader:
            ids = batch["x"][:, 0].astype(np.int64)
            assert np.array_equal(batch["label"], ids % labels), "columns are not row-aligned"
            seen[ids] += 1
            counts += np.bincount(batch["label"], minlength=labels)
            batches += 1
        expected_batches = len(loader)
    assert batches == expected_batches, (batches, expected_batches)
    missing, repeated = int((seen == 0).sum()), int((seen > 1).sum())
    assert missing == 0 and repeated == 0, f"{missing} rows missing, {repeated} repeated"
    assert (counts == n // labels).all(), f"label counts off: {counts.min()}..{counts.max()}"
    print(json.dumps({
        "baseline_kib": baseline,
        "peak_kib": status("VmHWM"),
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "rows": int(seen.sum()),
    }))
    """
)


def _stream_in_fresh_process(path: str, n: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, path, LIMIT, str(n), str(LABELS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"the child failed (rc={result.returncode}):\n{result.stderr[-4000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["rows"] == n
    return report


def _describe(fmt: str, report: dict) -> str:
    return (
        f"{fmt}: peak RSS {report['peak_kib'] / 1024:.0f} MiB, baseline after imports "
        f"{report['baseline_kib'] / 1024:.0f} MiB (ru_maxrss {report['ru_maxrss_kib'] / 1024:.0f} MiB), "
        f"bound {LIMIT} + 300 MiB = {(LIMIT_BYTES + ALLOWANCE) / MiB:.0f} MiB"
    )


@pytest.mark.parametrize("fmt", ["npy", "parquet", "zarr"])
def test_one_shuffled_epoch_of_10x_the_memory_limit_stays_within_the_bound(datasets, fmt):
    path = datasets(fmt)
    report = _stream_in_fresh_process(path, ROWS)
    print(_describe(fmt, report))
    assert report["peak_kib"] * 1024 <= LIMIT_BYTES + ALLOWANCE, _describe(fmt, report)


@pytest.mark.parametrize("fmt", ["arrow", "arrow-stream"])
def test_an_arrow_ipc_epoch_of_15x_the_memory_limit_stays_within_the_bound(datasets, fmt):
    """Positional reads, not a memory map: a map's touched pages count in RSS until it is
    closed, so an epoch over a mapped file peaked at about the file's size."""
    path = datasets(fmt)
    report = _stream_in_fresh_process(path, ROWS)
    print(_describe(fmt, report), f"file {os.path.getsize(path) / MiB:.0f} MiB")
    assert os.path.getsize(path) > 10 * LIMIT_BYTES
    assert report["peak_kib"] * 1024 <= LIMIT_BYTES + ALLOWANCE, _describe(fmt, report)


def test_npy_peak_memory_does_not_grow_with_the_dataset(datasets):
    small = _stream_in_fresh_process(datasets("npy", ROWS // 2), ROWS // 2)
    large = _stream_in_fresh_process(datasets("npy", ROWS), ROWS)
    growth = (large["peak_kib"] - small["peak_kib"]) / 1024
    message = f"300 MB -> {_describe('npy', small)}; 600 MB -> {_describe('npy', large)}; growth {growth:.1f} MiB"
    print(message)
    assert abs(growth) < 40, message


def _sparse_npy_dataset(root, rows: int, width: int) -> str:
    """A ``.npy`` dataset of ``rows`` rows that takes no disk space (sparse files of zeros)."""
    os.makedirs(root, exist_ok=True)
    for name, descr, shape in (("x", "<f4", (rows, width)), ("label", "<i8", (rows,))):
        with open(os.path.join(root, f"{name}.npy"), "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
            f.truncate(f.tell() + int(np.prod(shape)) * np.dtype(descr).itemsize)
    return str(root)


def test_the_epoch_plan_stays_inside_the_budget_on_a_dataset_ten_thousand_times_larger(tmp_path):
    """The plan is the one part that grows with the dataset (~160 B per piece): on 40 M
    rows (20 GB, sparse on disk) at 16 MiB, pieces grow so that it keeps to a quarter of the
    budget, and everything the loader allocates (tracemalloc: numpy and Python) fits."""
    import tracemalloc

    import streambatch as sb

    path = _sparse_npy_dataset(tmp_path / "huge", 40_000_000, WIDTH)
    tracemalloc.start()
    try:
        with pytest.warns(sb.PoorShuffleWarning), sb.Loader(path, 64, memory_limit="16MiB", num_threads=2) as loader:
            it = iter(loader)
            for _ in range(20):
                next(it)
            peak = tracemalloc.get_traced_memory()[1]
            it.close()
    finally:
        tracemalloc.stop()
    b = loader.budget
    assert 0 < b.plan_bytes <= b.memory_limit // 4
    parts = b.ring_bytes + b.scratch_bytes + b.fetch_bytes + b.batch_bytes
    parts += b.resident_bytes + b.plan_bytes + b.stream_bytes
    assert parts <= b.memory_limit
    assert peak <= b.memory_limit, f"traced allocations peaked at {peak / MiB:.1f} MiB, over the 16 MiB budget"


def test_a_budget_too_small_for_the_plan_of_a_huge_dataset_is_refused_with_what_it_needs(tmp_path):
    import streambatch as sb

    path = _sparse_npy_dataset(tmp_path / "huge", 40_000_000, WIDTH)
    with pytest.raises(sb.BudgetError, match=r"40,000,000 rows: its epoch plan .* use memory_limit >= \d"):
        sb.Loader(path, 64, memory_limit="2MiB")
