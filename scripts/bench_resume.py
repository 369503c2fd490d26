#!/usr/bin/env python3
"""Resume cost: first-batch latency after ``load_state_dict`` at mid-epoch vs a
fresh start, and how much data a resume reads before its first batch (it must
be about one shuffle window, not the epoch so far). Not a test.

Uses the data ``scripts/bench.py`` generates (``--data-dir``, default
./bench-data); each measurement runs in a fresh subprocess, warm page cache.

    python scripts/bench.py --quick          # once, to generate small data
    python scripts/bench_resume.py --rows 2000000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

WORKER = r"""
import json, sys, time
import streambatch as sb
import streambatch.readahead as reading

path, limit, at = sys.argv[1], sys.argv[2], float(sys.argv[3])
admitted = [0]
original = reading.PieceReads.admit
def counting_admit(self):
    before = self.admitted
    original(self)
    admitted[0] += int(self.plan.offsets[self.admitted] - self.plan.offsets[before])
reading.PieceReads.admit = counting_admit

loader = sb.Loader(path, 256, memory_limit=limit, seed=0)
state = None
if at > 0:
    k = int(len(loader) * at)
    probe = sb.Loader(path, 256, memory_limit=limit, seed=0)
    it = iter(probe)
    for _ in range(k):
        next(it)
    state = probe.state_dict()
    it.close()
    loader.load_state_dict(state)
admitted[0] = 0
t0 = time.perf_counter()
it = iter(loader)
next(it)
first = time.perf_counter() - t0
rows_read = admitted[0]
it.close()
print(json.dumps({"first_s": first, "rows_read": rows_read, "ring_rows": loader.budget.ring_rows,
                  "window_rows": loader.budget.window_pieces * loader.budget.max_piece_rows,
                  "rows": loader.dataset.num_rows}))
"""


def measure(path: str, limit: str, at: float) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", WORKER, path, limit, str(at)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="./bench-data")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument("--memory-limit", default="256MiB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    from bench import ensure_data

    print(
        "| format | fresh first batch | resumed at 50 % first batch | ratio "
        "| rows read before the first resumed batch | ring rows | window rows |"
    )
    print("|---|---|---|---|---|---|---|")
    for fmt in ("npy", "parquet", "zarr"):
        path = ensure_data(args.data_dir, fmt, args.rows, args.chunk_rows, lambda *a: None)
        fresh = [measure(path, args.memory_limit, 0.0) for _ in range(args.repeat)]
        resumed = [measure(path, args.memory_limit, 0.5) for _ in range(args.repeat)]
        f = statistics.median(r["first_s"] for r in fresh)
        r = statistics.median(x["first_s"] for x in resumed)
        last = resumed[-1]
        print(
            f"| {fmt} | {f * 1e3:.0f} ms | {r * 1e3:.0f} ms | {r / f:.2f} | {last['rows_read']:,} "
            f"({last['rows_read'] / last['rows']:.1%} of the epoch) | {last['ring_rows']:,} "
            f"| {last['window_rows']:,} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
