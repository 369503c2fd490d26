#!/usr/bin/env python3
"""Benchmark ``streambatch convert`` (not a test).

On a class-sorted dataset of float32[128] + int64 label rows (520 B/row), stored
as one Parquet file with large row groups (as Spark or pandas write them):

1. convert throughput (MB/s of row data), unshuffled, to Parquet, against a plain
   ``pyarrow.parquet.read_table`` -> ``write_table`` of the same file in the same run;
2. ``--shuffle`` at ``--memory-limit`` (input >= 8x the limit): time and peak RSS,
   which must stay <= limit + 300 MiB;
3. the loader on the raw input vs on the converted outputs: rows/s and shuffle score;
4. ``--chunk-sweep``: loader shuffle score and rows/s on unshuffled output written
   with several ``--chunk-rows`` (how the default was chosen).

Every convert and baseline runs in its own subprocess; peak RSS is that process's
``ru_maxrss``.

    python scripts/bench_convert.py --rows 2000000 --memory-limit 128MiB
    python scripts/bench_convert.py --rows 400000 --chunk-sweep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

ROW_BYTES = 128 * 4 + 8
CLASSES = 10
RSS_SLACK = 300 << 20

_DRIVER = """
import json, resource, sys, time
t = time.perf_counter()
if sys.argv[1] == "baseline":
    import pyarrow.parquet as pq
    pq.write_table(pq.read_table(sys.argv[2]), sys.argv[3], compression="none")
    rc = 0
else:
    from streambatch.cli import main
    rc = main(sys.argv[1:])
print(json.dumps({"seconds": time.perf_counter() - t,
                  "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}), file=sys.stderr)
sys.exit(rc)
"""


def run(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", _DRIVER, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"failed: {args}\n{proc.stderr}")
    return json.loads(proc.stderr.strip().splitlines()[-1])


def make_input(path: str, rows: int, group_rows: int) -> None:
    import numpy as np

    from streambatch.writers import ParquetWriter

    writer = ParquetWriter(path, {"x": (np.float32, (128,)), "label": (np.int64, ())}, group_rows)
    step = 65536
    for a in range(0, rows, step):
        n = min(step, rows - a)
        ids = np.arange(a, a + n)
        label = (ids * CLASSES // rows).astype(np.int64)  # class-sorted
        x = np.repeat(label[:, None].astype(np.float32), 128, axis=1)
        writer.write({"x": x, "label": label})
    writer.close()


def loader_figures(path: str, shuffle: bool, memory_limit: str) -> tuple[float, float]:
    import streambatch as sb
    from streambatch.quality import ShuffleScore

    score = ShuffleScore(CLASSES)
    rows = 0
    t = time.perf_counter()
    with sb.Loader(path, batch_size=256, shuffle=shuffle, memory_limit=memory_limit, seed=0) as loader:
        for batch in loader:
            score.add(batch["label"])
            rows += len(batch["label"])
    return rows / (time.perf_counter() - t), score.score()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000, help="rows (2 M = 1.04 GB of row data)")
    p.add_argument("--memory-limit", default="128MiB", help="convert --shuffle budget")
    p.add_argument("--loader-memory", default="64MiB", help="the loader's memory_limit when reading back")
    p.add_argument("--input-group-rows", type=int, default=32768, help="row-group size of the raw input")
    p.add_argument("--chunk-sweep", action="store_true", help="only the --chunk-rows sweep")
    p.add_argument(
        "--chunks",
        type=lambda t: [int(c) for c in t.split(",")],
        default=[128, 256, 512, 1024, 2048, 8192],
        help="--chunk-rows values of the sweep",
    )
    p.add_argument("--dir", default=None)
    a = p.parse_args()

    from streambatch._units import parse_bytes

    root = a.dir or tempfile.mkdtemp(prefix="bench-convert-")
    os.makedirs(root, exist_ok=True)
    src = os.path.join(root, "input.parquet")
    data_mb = a.rows * ROW_BYTES / 1e6
    print(f"# {sys.executable} {' '.join(sys.argv)}")
    print(
        f"input: {a.rows:,} rows x {ROW_BYTES} B = {data_mb:.0f} MB, "
        f"row groups of {a.input_group_rows} rows; dir {root}"
    )
    if not os.path.exists(src):
        make_input(src, a.rows, a.input_group_rows)
    try:
        if a.chunk_sweep:
            sweep(root, src, a)
            return
        base = run(["baseline", src, os.path.join(root, "baseline.parquet")])
        plain = run(["convert", src, os.path.join(root, "plain"), "--format", "parquet", "--quiet", "--overwrite"])
        shuf = run(
            [
                "convert",
                src,
                os.path.join(root, "shuffled"),
                "--format",
                "parquet",
                "--quiet",
                "--overwrite",
                "--shuffle",
                "--seed",
                "0",
                "--memory-limit",
                a.memory_limit,
            ]
        )
        limit = parse_bytes(a.memory_limit)
        print("\n| step | seconds | MB/s | peak RSS |\n|---|---|---|---|")
        for name, r in (
            ("pyarrow read_table -> write_table (baseline)", base),
            ("streambatch convert (no shuffle, parquet)", plain),
            (f"streambatch convert --shuffle --memory-limit {a.memory_limit}", shuf),
        ):
            print(f"| {name} | {r['seconds']:.1f} | {data_mb / r['seconds']:.0f} | {r['maxrss'] / 2**20:.0f} MiB |")
        ok = shuf["maxrss"] <= limit + RSS_SLACK
        print(
            f"\ninput / memory limit = {a.rows * ROW_BYTES / limit:.1f}x; shuffle peak RSS "
            f"{shuf['maxrss'] / 2**20:.0f} MiB {'<=' if ok else '>'} limit + 300 MiB = "
            f"{(limit + RSS_SLACK) / 2**20:.0f} MiB"
        )
        print(
            f"\nloader at memory_limit={a.loader_memory}, batch 256:\n"
            "| data | loader shuffle | rows/s | score |\n|---|---|---|---|"
        )
        for name, path, shuffle in (
            ("raw input", src, True),
            ("converted, unshuffled", os.path.join(root, "plain"), True),
            ("converted --shuffle", os.path.join(root, "shuffled"), False),
            ("converted --shuffle", os.path.join(root, "shuffled"), True),
        ):
            try:
                rate, score = loader_figures(path, shuffle, a.loader_memory)
                print(f"| {name} | {shuffle} | {rate / 1e6:.2f} M | {score:.2f} |")
            except Exception as e:  # e.g. the raw row groups do not fit the loader's budget
                print(f"| {name} | {shuffle} | - | {type(e).__name__}: {str(e)[:90]} |")
    finally:
        if not a.dir:
            shutil.rmtree(root, ignore_errors=True)


def sweep(root: str, src: str, a: argparse.Namespace) -> None:
    print(f"\nloader shuffle on unshuffled convert output, memory_limit={a.loader_memory}, batch 256")
    print("| --chunk-rows | chunk bytes | convert s | loader rows/s | score |\n|---|---|---|---|---|")
    for chunk in a.chunks:
        out = os.path.join(root, f"chunk{chunk}")
        r = run(["convert", src, out, "--format", "parquet", "--quiet", "--overwrite", "--chunk-rows", str(chunk)])
        rate, score = loader_figures(out, True, a.loader_memory)
        print(f"| {chunk} | {chunk * ROW_BYTES // 1024} KiB | {r['seconds']:.1f} | {rate / 1e6:.2f} M | {score:.2f} |")


if __name__ == "__main__":
    main()
