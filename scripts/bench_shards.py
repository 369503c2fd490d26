"""The same rows in 1, 2, 4 and 8 ``.npy`` shards: does a shuffled epoch slow down
when its rows come from many files?

The standard 2 M-row dataset (float32[128] + int64 label, ~1 GB; ``benchlib.ensure_data``)
is split into k shards of consecutive rows (made once, under ``--data``). Each
configuration runs in a fresh process (``benchlib.run_config``): ``--epochs``
shuffled epochs of one ``Loader`` (batch 256) at ``memory_limit`` = a fraction
of the data, timing each epoch (rows/s, and rows per CPU-second of the process)
and reporting the process's peak RSS. Rounds interleave every shard count (and
``--baseline``, another checkout's ``streambatch/``, measured in the same rounds),
so each k is compared with 1 shard of the same round: the table shows the
median rate and the per-round ratios to 1 shard.

    python scripts/bench_shards.py --data bench-data --baseline /tmp/sb-base

Prints a markdown table (docs/benchmarks.md, "Shards of the same rows").
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import cpu_times, ensure_data, env_block, fmt_bytes, run_config, steal_share

ROWS = 2_000_000
BATCH = 256
ROW_BYTES = 128 * 4 + 8


def work_split(source: str, target: str, shards: int) -> dict:
    """``source`` (a directory of ``.npy`` columns) as ``shards`` directories of consecutive rows."""
    import numpy as np

    columns = {name[:-4]: np.load(os.path.join(source, name), mmap_mode="r") for name in os.listdir(source)}
    rows = len(next(iter(columns.values())))
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        part = os.path.join(target, f"part-{i}")
        os.makedirs(part, exist_ok=True)
        for name, values in columns.items():
            np.save(os.path.join(part, f"{name}.npy"), values[lo:hi])
    return {}


def work_epochs(paths: list[str], memory_limit: int, epochs: int) -> dict:
    import streambatch as sb

    loader = sb.Loader(paths, BATCH, memory_limit=memory_limit, seed=0)
    rates, per_cpu = [], []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        c0, t0 = os.times(), time.perf_counter()
        rows = sum(len(batch["label"]) for batch in loader)
        seconds, c1 = time.perf_counter() - t0, os.times()
        cpu = (c1.user - c0.user) + (c1.system - c0.system)
        rates.append(rows / seconds)
        per_cpu.append(rows / cpu)
    return {"rates": rates, "rows_per_cpu_s": per_cpu}


WORKERS = {"split": work_split, "epochs": work_epochs}


def shard_paths(data: str, base: str, shards: int, log) -> list[str]:
    if shards == 1:
        return [base]
    target = os.path.join(os.path.abspath(data), "shards", f"rows{ROWS}", f"n{shards}")
    marker = os.path.join(target, ".done")
    if not os.path.exists(marker):
        shutil.rmtree(target, ignore_errors=True)
        log(f"splitting into {shards} shards under {target}")
        spec = {"module": "bench_shards", "kind": "split", "source": base, "target": target, "shards": shards}
        result = run_config(spec, 900)
        if "error" in result:
            raise SystemExit(f"split failed: {result['error']}")
        open(marker, "w").close()
    return [os.path.join(target, f"part-{i}") for i in range(shards)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="bench-data", help="where the datasets are made (once)")
    p.add_argument("--baseline", default=None, help="a checkout whose streambatch/ is measured in the same rounds")
    p.add_argument("--shards", default="1,2,4,8")
    p.add_argument("--fractions", default="0.25,2", help="memory_limit as fractions of the data's bytes")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="epochs per process (the first pays the files' opening)")
    args = p.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    counts = [int(k) for k in args.shards.split(",")]
    fractions = [float(f) for f in args.fractions.split(",")]
    base = ensure_data(args.data, "npy", ROWS, 8192, log)
    paths = {k: shard_paths(args.data, base, k, log) for k in counts}
    codes = {"this": None} | ({"baseline": os.path.abspath(args.baseline)} if args.baseline else {})
    results: dict[tuple[str, float, int], list[dict]] = {}
    counters = cpu_times()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for round_ in range(args.rounds):
        for fraction in fractions:
            for k in counts:
                for name, code in codes.items():
                    spec = {
                        "module": "bench_shards",
                        "kind": "epochs",
                        "paths": paths[k],
                        "memory_limit": int(fraction * ROWS * ROW_BYTES),
                        "epochs": args.epochs,
                    }
                    result = run_config(spec, 900, code=code)
                    if "error" in result:
                        raise SystemExit(f"{name} {k} shards at {fraction}: {result['error']}")
                    results.setdefault((name, fraction, k), []).append(result)
                    rates = " ".join(f"{r / 1e6:.2f}" for r in result["rates"])
                    log(f"round {round_ + 1} {name} {fraction:g} x data, {k} shards: {rates} M rows/s")

    lines = [
        "| memory_limit | shards | code | rows/s (median) | × 1 shard, per round | rows per CPU-s | peak RSS |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    for fraction in fractions:
        for k in counts:
            for name in codes:
                runs = results[(name, fraction, k)]
                ones = results[(name, fraction, counts[0])]
                medians = [statistics.median(r["rates"]) for r in runs]
                ratios = [m / statistics.median(o["rates"]) for m, o in zip(medians, ones)]
                per_cpu = statistics.median(x for r in runs for x in r["rows_per_cpu_s"])
                rss = max(r.get("vmhwm_bytes", r["peak_rss_bytes"]) for r in runs)
                lines.append(
                    f"| {fraction:g} × data | {k} | {name} | {statistics.median(medians) / 1e6:.2f} M | "
                    f"{' '.join(f'{x:.2f}' for x in ratios)} | {per_cpu / 1e6:.2f} M | {fmt_bytes(rss)} |"
                )
    print("\n".join(lines))
    command = "python scripts/bench_shards.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print()
    stolen = steal_share(counters, cpu_times())
    env = run_config({"module": "benchlib", "kind": "env"}, 120)
    print(env_block(env, command) + f"\n- Started {started}; CPU time stolen by the hypervisor: {stolen}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
