"""Integration on generated large files: for each format, a dataset of more than
3 GB on disk (12x the loader's budget) is streamed for one full shuffled epoch in
a fresh process, which checks that every row arrives exactly once, with its
columns aligned, and that peak RSS stays within memory_limit + 300 MiB. The data
lives under pytest's temporary directory and is deleted after each format."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from streambatch.writers import NpyWriter, ParquetWriter, ZarrWriter

pytestmark = [pytest.mark.large, pytest.mark.slow]

ROWS = 6_200_000  # x float32[128] + id int64 = 520 bytes a row: 3.2 GB
BLOCK = 200_000
LIMIT_MIB = 256
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, {repo!r})
    import streambatch as sb

    path, rows = sys.argv[1], int(sys.argv[2])
    seen = np.zeros(rows, dtype=bool)
    batches = 0
    with sb.Loader(path, 1024, memory_limit="{limit}MiB", seed=3) as loader:
        for batch in loader:
            ids = batch["id"]
            assert not seen[ids].any(), "a row was delivered twice"
            seen[ids] = True
            assert np.array_equal(batch["x"][:, 0], ids.astype(np.float32)), "columns came apart"
            batches += 1
    assert seen.all(), f"{{(~seen).sum()}} rows never delivered"
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print("batches", batches, "peak_kib", peak)
    """
)


def _blocks():
    for start in range(0, ROWS, BLOCK):
        n = min(BLOCK, ROWS - start)
        ids = np.arange(start, start + n, dtype=np.int64)
        x = np.zeros((n, 128), np.float32)
        x[:, 0] = ids  # exact in float32 below 2**24
        yield {"x": x, "id": ids}


def _write(fmt: str, root: str) -> str:
    specs = {"x": (np.dtype(np.float32), (128,)), "id": (np.dtype(np.int64), ())}
    if fmt == "npy":
        path, writer = os.path.join(root, "npy"), NpyWriter(os.path.join(root, "npy"), specs, ROWS)
    elif fmt == "parquet":
        path = os.path.join(root, "data.parquet")
        writer = ParquetWriter(path, specs, 8192)
    else:
        path = os.path.join(root, "data.zarr")
        writer = ZarrWriter(path, specs, ROWS, 8192)
    try:
        for block in _blocks():
            writer.write(block)
    finally:
        writer.close()
    return path


def _disk_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


@pytest.mark.parametrize("fmt", ["npy", "parquet", "zarr"])
def test_a_full_shuffled_epoch_of_3gb_is_exactly_once_within_the_memory_bound(fmt, tmp_path):
    root = str(tmp_path / fmt)
    os.makedirs(root)
    try:
        path = _write(fmt, root)
        size = _disk_bytes(path)
        assert size > 3 * 10**9, f"only {size / 1e9:.2f} GB written"
        child = CHILD.format(repo=REPO, limit=LIMIT_MIB)
        done = subprocess.run(
            [sys.executable, "-c", child, path, str(ROWS)], capture_output=True, text=True, timeout=900
        )
        assert done.returncode == 0, done.stderr[-3000:]
        words = done.stdout.split()
        peak_mib = int(words[words.index("peak_kib") + 1]) / 1024
        assert int(words[words.index("batches") + 1]) == -(-ROWS // 1024)
        assert peak_mib <= LIMIT_MIB + 300, f"{fmt}: peak RSS {peak_mib:.0f} MiB on {size / 1e9:.1f} GB"
        print(f"\n{fmt}: {size / 1e9:.2f} GB, peak RSS {peak_mib:.0f} MiB (bound {LIMIT_MIB + 300} MiB)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
