"""The measuring half of ``scripts/bench.py``: the workers each configuration runs in
a fresh process (streambatch, the sequential read, the in-memory permutation), the
main run and the budget sweep. ``bench_render.py`` turns their results into tables,
plots and ``docs/benchmarks.md``."""

from __future__ import annotations

import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (
    BATCH,
    ROW_BYTES,
    _arrow_tensor,
    _Consumer,
    aggregate,
    dir_bytes,
    ensure_data,
    fmt_bytes,
    run_config,
    warm,
)

# ----------------------------------------------------------------------------- data


# ----------------------------------------------------------------------------- workers
# Each worker runs in a fresh process and returns a dict; the parent adds peak RSS.


def work_streambatch(path: str, fmt: str, memory_limit: str, shuffle: bool, columns=None) -> dict:
    from streambatch import Loader

    t0 = time.perf_counter()
    consumer = _Consumer(score=True)
    with Loader(path, BATCH, shuffle=shuffle, memory_limit=memory_limit, columns=columns) as loader:
        budget = loader.budget
        for batch in loader:
            label = batch["label"]
            x = batch["x"] if "x" in batch else label[:, None]
            consumer(x, label, t0)
    seconds = time.perf_counter() - t0
    return {
        "rows": consumer.rows,
        "seconds": seconds,
        "first_batch_s": consumer.first,
        "score": consumer.scorer.score(),
        "window_pieces": budget.window_pieces,
        "piece_rows": budget.max_piece_rows,
        "ring_bytes": budget.ring_bytes,
        "threads": loader.num_threads,
    }


def work_sequential(path: str, fmt: str) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    consumer = _Consumer(score=False)
    if fmt == "npy":
        x = np.load(os.path.join(path, "x.npy"), mmap_mode="r")
        label = np.load(os.path.join(path, "label.npy"), mmap_mode="r")
        for i in range(0, len(label), BATCH):
            consumer(np.array(x[i : i + BATCH]), np.array(label[i : i + BATCH]), t0)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
        fx, fl = schema.field("x"), schema.field("label")
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g)
            consumer(_arrow_tensor(table.column("x"), fx), _arrow_tensor(table.column("label"), fl), t0)
    elif fmt == "zarr":
        import zarr

        group = zarr.open_group(path, mode="r")
        x, label = group["x"], group["label"]
        chunk = x.chunks[0]
        for i in range(0, x.shape[0], chunk):
            consumer(x[i : i + chunk], label[i : i + chunk], t0)
    else:
        raise ValueError(fmt)
    return {"rows": consumer.rows, "seconds": time.perf_counter() - t0, "first_batch_s": consumer.first}


def _load_all(path: str, fmt: str):
    import numpy as np

    if fmt == "npy":
        return np.load(os.path.join(path, "x.npy")), np.load(os.path.join(path, "label.npy"))
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        n = pf.metadata.num_rows
        schema = pf.schema_arrow
        x = np.empty((n, 128), np.float32)
        label = np.empty(n, np.int64)
        at = 0
        for g in range(pf.num_row_groups):
            table = pf.read_row_group(g)
            k = table.num_rows
            x[at : at + k] = _arrow_tensor(table.column("x"), schema.field("x"))
            label[at : at + k] = _arrow_tensor(table.column("label"), schema.field("label"))
            at += k
        return x, label
    if fmt == "zarr":
        import zarr

        group = zarr.open_group(path, mode="r")
        return group["x"][:], group["label"][:]
    raise ValueError(fmt)


def work_permutation(path: str, fmt: str) -> dict:
    import numpy as np

    t0 = time.perf_counter()
    x, label = _load_all(path, fmt)
    load_s = time.perf_counter() - t0
    consumer = _Consumer(score=True)
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    t1 = time.perf_counter()
    perm = np.random.default_rng(0).permutation(len(label))
    for i in range(0, len(label), BATCH):
        idx = perm[i : i + BATCH]
        consumer(x[idx], label[idx], t1)
    seconds = time.perf_counter() - t1
    u2 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "iter_cpu_s": (u2.ru_utime - u1.ru_utime) + (u2.ru_stime - u1.ru_stime),
        "rows": consumer.rows,
        "seconds": seconds,  # iteration only
        "load_s": load_s,
        "first_batch_s": consumer.first,  # after the load
        "score": consumer.scorer.score(),
    }


def work_imports(path: str, fmt: str) -> dict:
    """Interpreter + numpy + pyarrow + zarr + streambatch, no data: the RSS floor."""
    import numpy  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import zarr  # noqa: F401

    import streambatch  # noqa: F401

    return {"rows": 0, "seconds": 0.0, "first_batch_s": None}


WORKERS = {
    "streambatch": work_streambatch,
    "sequential": work_sequential,
    "permutation": work_permutation,
    "imports": work_imports,
}


# ----------------------------------------------------------------------------- main benchmark


def main_run(args, log) -> dict:
    from streambatch import parse_bytes

    rows = args.rows
    data_bytes = rows * ROW_BYTES
    limit = args.memory_limit
    npy5 = f"{int(data_bytes * 0.05)}B"
    paths = {f: ensure_data(args.data_dir, f, rows, args.chunk_rows, log) for f in args.formats}
    for p in paths.values():
        warm(p)
    configs = []  # (key, spec)
    configs.append((("imports", "-"), {"kind": "imports", "path": "", "fmt": "-"}))
    for f in args.formats:
        p = paths[f]
        configs.append(
            ((f, "sb-shuffle"), {"kind": "streambatch", "path": p, "fmt": f, "memory_limit": limit, "shuffle": True})
        )
        configs.append(
            ((f, "sb-noshuffle"), {"kind": "streambatch", "path": p, "fmt": f, "memory_limit": limit, "shuffle": False})
        )
        configs.append(((f, "sequential"), {"kind": "sequential", "path": p, "fmt": f}))
        configs.append(((f, "permutation"), {"kind": "permutation", "path": p, "fmt": f}))
    if "npy" in args.formats:
        configs.append(
            (
                ("npy", "sb-shuffle-5pct"),
                {"kind": "streambatch", "path": paths["npy"], "fmt": "npy", "memory_limit": npy5, "shuffle": True},
            )
        )

    runs: dict[str, list[dict]] = {}
    for rep in range(args.repeat):  # round-robin so drift hits every configuration alike
        for key, spec in configs:
            if key[0] == "imports" and rep:
                continue
            r = run_config({"module": "bench_measure", **spec}, args.timeout)
            runs.setdefault("|".join(key), []).append(r)
            desc = (
                "error: " + r["error"]
                if "error" in r
                else (
                    f"{r['rows'] / r['seconds']:,.0f} rows/s, peak {fmt_bytes(r['peak_rss_bytes'])}"
                    if r.get("seconds")
                    else f"peak {fmt_bytes(r['peak_rss_bytes'])}"
                )
            )
            log(f"  [{rep + 1}/{args.repeat}] {key[0]:8s} {key[1]:16s} {desc}")
    results = {key: aggregate(rs) for key, rs in runs.items()}
    return {
        "kind": "main",
        "rows": rows,
        "data_bytes": data_bytes,
        "chunk_rows": args.chunk_rows,
        "memory_limit": limit,
        "memory_limit_bytes": parse_bytes(limit),
        "npy5_limit": npy5,
        "repeat": args.repeat,
        "formats": list(args.formats),
        "results": results,
        "raw": runs,
        "file_bytes": {f: dir_bytes(p) for f, p in paths.items()},
    }


# ----------------------------------------------------------------------------- budget sweep
def sweep_run(args, log) -> dict:
    rows = args.rows
    data_bytes = rows * ROW_BYTES
    fractions = args.sweep_fractions
    chunks = args.sweep_chunks
    series = []  # (fmt, chunk or None)
    if "npy" in args.formats:
        series.append(("npy", None))
    for f in ("parquet", "zarr"):
        if f in args.formats:
            series += [(f, c) for c in chunks]
    results = {}
    t_start = time.perf_counter()
    for f, c in series:
        path = ensure_data(args.data_dir, f, rows, c or args.chunk_rows, log)
        warm(path)
        for frac in fractions:
            limit = f"{int(data_bytes * frac)}B"
            spec = {"kind": "streambatch", "path": path, "fmt": f, "memory_limit": limit, "shuffle": True}
            if args.label_only:
                spec["columns"] = ["label"]
            r = run_config({"module": "bench_measure", **spec}, args.timeout)
            key = f"{f}|{c or '-'}|{frac}"
            results[key] = r
            desc = (
                ("error: " + r["error"][:100])
                if "error" in r
                else (
                    f"score {r['score']:.2f}, {r['rows'] / r['seconds']:,.0f} rows/s, window {r['window_pieces']}, "
                    f"peak {fmt_bytes(r['peak_rss_bytes'])}"
                )
            )
            log(
                f"  sweep {f:8s} chunk {c or '-'!s:>6s} limit {frac * 100:4.0f}% "
                f"({fmt_bytes(data_bytes * frac)}): {desc}"
            )
    return {
        "kind": "sweep",
        "rows": rows,
        "data_bytes": data_bytes,
        "fractions": fractions,
        "chunks": chunks,
        "series": [[f, c] for f, c in series],
        "label_only": args.label_only,
        "results": results,
        "seconds": time.perf_counter() - t_start,
    }
