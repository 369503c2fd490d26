"""Variable-length columns: a tokenised-text dataset read as ragged ``list<int32>``
(Parquet and Arrow IPC) beside the same rows as fixed-width ``.npy``, and the
fixed-width ``.npy`` epoch of the standard dataset with this code and a baseline
checkout, in the same run.

Every configuration runs in a fresh process (``benchlib.run_config``); rows/s is
one shuffled epoch, peak RSS is the process's ``VmHWM``. Results are printed as a
markdown table (the one in docs/benchmarks.md, "Variable-length columns").

    python scripts/bench_ragged.py --data /tmp/sb-bench --baseline /tmp/sb-base

``--baseline`` is a directory holding another checkout's ``streambatch/`` package
(e.g. ``git archive main | tar -x -C /tmp/sb-base``); without it the fixed-width
before/after rows are skipped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import RSS_SLACK, ensure_data, env_block, environment, fmt_bytes, run_config

ROWS = 200_000
MAX_LEN = 1000  # lengths uniform in [1, 1000): mean ~500 tokens; the fixed-width copy pads to 1000
VOCAB = 50_000
BATCH = 256
ROW_GROUP = 4096


def _paths(data: str) -> dict[str, str]:
    root = os.path.join(os.path.abspath(data), f"tokens-{ROWS}")
    return {
        "root": root,
        "parquet": os.path.join(root, "tokens.parquet"),
        "arrow": os.path.join(root, "tokens.arrow"),
        "npy": os.path.join(root, "npy"),
    }


# --------------------------------------------------------------------------- workers (fresh processes)


def work_generate_tokens(data: str) -> dict:
    """The tokenised dataset, three ways: Parquet and Arrow IPC ``list<int32>`` (ragged)
    and ``.npy`` ``int32[ROWS, MAX_LEN]`` padded with 0 plus ``length``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    paths = _paths(data)
    os.makedirs(paths["npy"], exist_ok=True)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, MAX_LEN, ROWS)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = rng.integers(0, VOCAB, int(offsets[-1]), dtype=np.int32)
    ids = np.arange(ROWS, dtype=np.int64)
    table = pa.table({"id": ids, "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))})
    pq.write_table(table, paths["parquet"], row_group_size=ROW_GROUP)
    feather.write_feather(table, paths["arrow"], compression="uncompressed", chunksize=ROW_GROUP)
    np.save(os.path.join(paths["npy"], "id.npy"), ids)
    np.save(os.path.join(paths["npy"], "length.npy"), lengths.astype(np.int64))
    fixed = np.lib.format.open_memmap(os.path.join(paths["npy"], "tokens.npy"), "w+", np.int32, (ROWS, MAX_LEN))
    for lo in range(0, ROWS, 10_000):
        hi = min(ROWS, lo + 10_000)
        block = np.zeros((hi - lo, MAX_LEN), np.int32)
        for k in range(lo, hi):
            block[k - lo, : lengths[k]] = values[offsets[k] : offsets[k + 1]]
        fixed[lo:hi] = block
    fixed.flush()
    del fixed
    return {"values_bytes": int(values.nbytes)}


def work_epoch(path: str, memory_limit: str, pad: dict | None = None, threads: int | None = None) -> dict:
    """One shuffled epoch; every 16th batch its token values are summed (the same
    consumer work in every configuration)."""
    import numpy as np

    import streambatch as sb

    kw = {"pad": {k: tuple(v) for k, v in pad.items()}} if pad else {}
    loader = sb.Loader(path, batch_size=BATCH, memory_limit=memory_limit, seed=0, num_threads=threads, **kw)
    rows = 0
    checksum = 0
    t0 = time.perf_counter()
    for i, batch in enumerate(loader):
        rows += len(next(iter(batch.values())))
        if i % 16 == 0:
            col = batch.get("tokens", batch.get("x"))
            values = col if isinstance(col, np.ndarray) else col.values  # a Ragged (not in a baseline checkout)
            checksum += int(values.sum() % 1000)
    seconds = time.perf_counter() - t0
    loader.close()
    return {"rows": rows, "seconds": seconds, "checksum": checksum, "code": os.path.dirname(sb.__file__)}


def work_generate_embeddings(data: str, rows: int) -> dict:
    """An embedding dataset as pandas writes it (`df.to_parquet`, one ndarray per row:
    ``list<float>`` of constant length, pandas' defaults), beside the same rows as ``.npy``."""
    import numpy as np
    import pandas as pd

    root = os.path.join(os.path.abspath(data), f"embeddings-{rows}")
    os.makedirs(os.path.join(root, "npy"), exist_ok=True)
    x = np.random.default_rng(0).standard_normal((rows, 128), dtype=np.float32)
    label = (np.arange(rows, dtype=np.int64) * 10) // rows
    pd.DataFrame({"x": list(x), "label": label}).to_parquet(os.path.join(root, "pandas.parquet"))
    np.save(os.path.join(root, "npy", "x.npy"), x)
    np.save(os.path.join(root, "npy", "label.npy"), label)
    return {"root": root}


WORKERS = {
    "generate_tokens": work_generate_tokens,
    "generate_embeddings": work_generate_embeddings,
    "epoch": work_epoch,
}


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/tmp/sb-bench", help="where generated data lives (reused)")
    parser.add_argument("--memory-limit", default="256MiB")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each configuration (median reported)")
    parser.add_argument("--baseline", help="a checkout whose streambatch is the fixed-width 'before'")
    parser.add_argument("--npy-rows", type=int, default=2_000_000, help="rows of the standard float32[128] .npy set")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--fixed-only", action="store_true", help="only the fixed-width .npy before/after rows")
    parser.add_argument(
        "--embeddings",
        type=int,
        default=0,
        metavar="ROWS",
        help="instead: an embedding dataset written by pandas (list<float>[128]) beside .npy",
    )
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    env = environment()
    paths = _paths(args.data)
    marker = os.path.join(paths["root"], ".done")
    if args.embeddings:
        r = run_config(
            {"module": "bench_ragged", "kind": "generate_embeddings", "data": args.data, "rows": args.embeddings},
            args.timeout,
        )
        if "error" in r:
            raise SystemExit(f"generate failed: {r['error']}")
        configs = [
            (
                "`list<float>[128]` embeddings written by pandas `to_parquet` (defaults)",
                os.path.join(r["root"], "pandas.parquet"),
                None,
                None,
            ),
            ("the same rows as `.npy` `float32[128]`", os.path.join(r["root"], "npy"), None, None),
        ]
    elif not os.path.exists(marker):
        log("generating the tokenised dataset ...")
        r = run_config({"module": "bench_ragged", "kind": "generate_tokens", "data": args.data}, args.timeout)
        if "error" in r:
            raise SystemExit(f"generate failed: {r['error']}")
        with open(marker, "w") as f:
            f.write("ok\n")
    if not args.embeddings:
        configs = [
            ("ragged `list<int32>` Parquet → `Ragged`", paths["parquet"], None, None),
            ("ragged `list<int32>` Parquet, `pad=(1000, 0)`", paths["parquet"], {"tokens": [MAX_LEN, 0]}, None),
            ("ragged `list<int32>` Arrow IPC (positional reads) → `Ragged`", paths["arrow"], None, None),
            ("fixed `int32[1000]` `.npy` (the same rows, padded)", paths["npy"], None, None),
        ]
    if args.fixed_only:
        configs = []
    if args.baseline:
        npy = ensure_data(args.data, "npy", args.npy_rows, 65536, log)
        configs += [
            (f"fixed `float32[128]` `.npy`, {args.npy_rows:,} rows — this branch", npy, None, None),
            (f"fixed `float32[128]` `.npy`, {args.npy_rows:,} rows — baseline", npy, None, args.baseline),
        ]
    results: dict[str, list[dict]] = {name: [] for name, *_ in configs}
    for rep in range(args.repeats):  # interleaved, so drift on the machine hits every configuration alike
        for name, path, pad, code in configs:
            spec = {"module": "bench_ragged", "kind": "epoch", "path": path, "memory_limit": args.memory_limit}
            if pad:
                spec["pad"] = pad
            r = run_config(spec, args.timeout, code=code)
            if "error" in r:
                raise SystemExit(f"{name}: {r['error']}")
            log(
                f"  [{rep + 1}/{args.repeats}] {name}: {r['rows'] / r['seconds']:,.0f} rows/s, "
                f"VmHWM {fmt_bytes(r['vmhwm_bytes'])}"
            )
            results[name].append(r)
    limit = _parse(args.memory_limit)
    print(
        f"memory_limit {args.memory_limit}, batch {BATCH}, shuffled, {args.repeats} fresh processes each "
        f"(median; peak RSS is the largest VmHWM; contract: <= {fmt_bytes(limit + RSS_SLACK)})\n"
    )
    print("| configuration | rows | rows/s | MB/s of values | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    for name, path, _, _ in configs:
        rs = results[name]
        rate = statistics.median(r["rows"] / r["seconds"] for r in rs)
        per_row = _bytes_per_row(path)
        print(
            f"| {name} | {rs[0]['rows']:,} | {rate:,.0f} | {rate * per_row / 1e6:,.0f} | "
            f"{fmt_bytes(max(r['vmhwm_bytes'] for r in rs))} |"
        )
    print()
    print(env_block(env, "python scripts/bench_ragged.py " + " ".join(argv if argv is not None else sys.argv[1:])))
    return 0


def _bytes_per_row(path: str) -> float:
    """Bytes of token values (or the float32[128] row) per row, for MB/s."""
    if "tokens-" in path and path.endswith("npy"):
        return MAX_LEN * 4
    if "tokens-" in path:
        return MAX_LEN / 2 * 4  # mean length ~500
    return 128 * 4 + 8


def _parse(text: str) -> int:
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


if __name__ == "__main__":
    raise SystemExit(main())
