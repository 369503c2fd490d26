#!/usr/bin/env python3
"""Benchmark streambatch against the two unavoidable costs it competes with.

Not a test. For each format (``.npy``, Parquet, Zarr) it measures, each
configuration in its own fresh subprocess (so peak RSS is per configuration),
batch 256, warm page cache:

* streambatch ``Loader``, shuffle on and off, at ``--memory-limit``;
* baseline (a): a sequential read of the same files, no shuffle
  (npy: ``np.load(mmap_mode='r')`` slices of 256 rows copied out;
  Parquet: ``ParquetFile.read_row_group`` per group, converted to NumPy;
  Zarr: ``arr[i:i+chunk]`` per chunk);
* baseline (b): an in-memory NumPy permutation (everything loaded into RAM,
  then ``x[perm[i:i+256]]`` per batch); the load time is reported separately.

and reports streambatch's shuffled rows/s divided by the slower of the two
baselines (target >= 0.8) plus the ``.npy`` shuffle score at memory_limit = 5 %
of the data (target <= 1.2). ``--budget-sweep`` measures the shuffle score as a
function of memory_limit x Parquet row-group / Zarr chunk size.

    python scripts/bench.py                 # full run (2 M rows, ~1 GB per format)
    python scripts/bench.py --budget-sweep  # score vs budget table and plot
    python scripts/bench.py --quick         # smoke run, < 1 minute
    python scripts/bench.py --peers         # vs torch, HF datasets, MosaicML Streaming, ... (bench_peers.py)

Results are cached as JSON under ``--data-dir``/results; ``docs/benchmarks.md``
is rendered from the latest full main run, full sweep and full peer run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_peers
import bench_scaling
from benchlib import (
    BATCH,
    FORMATS,
    REPO,
    ROW_BYTES,
    RSS_SLACK,
    _arrow_tensor,
    _Consumer,
    _loadavg,
    aggregate,
    code_fingerprint,
    dir_bytes,
    ensure_data,
    env_block,
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
            r = run_config({"module": "bench", **spec}, args.timeout)
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


def _r(res: dict, key: str) -> dict:
    return res["results"].get(key, {"error": "not run"})


def _rate(d: dict) -> str:
    if "error" in d:
        return "error"
    if "rows_per_s" not in d:
        return "—"
    spread = ""
    if d.get("n", 1) > 1:
        spread = f" ({d['rows_per_s_min'] / 1e6:.2f}–{d['rows_per_s_max'] / 1e6:.2f})"
    return f"{d['rows_per_s'] / 1e6:.2f} M{spread}"


def _ms(v) -> str:
    return "—" if v is None else f"{v * 1e3:,.0f} ms" if v >= 0.01 else f"{v * 1e3:.1f} ms"


def round_ratios(res: dict, f: str) -> list[float]:
    """Per round (configurations run round-robin), streambatch shuffled ÷ min(sequential, permutation)
    of the same round: pairs measurements taken close in time, so load drift cancels better."""
    raw = res.get("raw") or {}
    sb, seq, perm = (raw.get(f"{f}|{c}", []) for c in ("sb-shuffle", "sequential", "permutation"))
    out = []
    for a, b, c in zip(sb, seq, perm):
        if all("error" not in d and d.get("seconds") for d in (a, b, c)):
            out.append((a["rows"] / a["seconds"]) / min(b["rows"] / b["seconds"], c["rows"] / c["seconds"]))
    return out


def main_tables(res: dict) -> str:
    limit = res["memory_limit"]
    lim_b = res["memory_limit_bytes"]
    out = []
    out.append(
        f"{res['rows']:,} rows × (float32[128] + int64 label) = {res['data_bytes'] / 1e9:.2f} GB per format; "
        f"batch {BATCH}; Parquet row groups / Zarr chunks of {res['chunk_rows']:,} rows, uncompressed; "
        f"warm page cache; each configuration in a fresh process, {res['repeat']} run(s) each, "
        f"median rows/s with (min–max); peak RSS is the max over runs.\n"
    )
    out.append("| format | configuration | rows/s | first batch | peak RSS | CPU s | shuffle score | notes |")
    out.append("|---|---|---|---|---|---|---|---|")
    names = {
        "sb-shuffle": f"streambatch, shuffle, memory_limit {limit}",
        "sb-noshuffle": f"streambatch, no shuffle, memory_limit {limit}",
        "sequential": "baseline (a): sequential read, no shuffle",
        "permutation": "baseline (b): in-memory NumPy permutation",
        "sb-shuffle-5pct": f"streambatch, shuffle, memory_limit = 5 % ({fmt_bytes(res['data_bytes'] * 0.05)})",
    }
    imp = _r(res, "imports|-")
    for f in res["formats"]:
        for c in ("sb-shuffle", "sb-noshuffle", "sequential", "permutation", "sb-shuffle-5pct"):
            key = f"{f}|{c}"
            if key not in res["results"]:
                continue
            d = _r(res, key)
            if "error" in d:
                out.append(f"| {f} | {names[c]} | error | | | | | `{d['error'][:160]}` |")
                continue
            notes = []
            if c == "permutation":
                notes.append(f"load into RAM {d['load_s']:.2f} s (not in rows/s); first batch timed after the load")
            if c.startswith("sb"):
                notes.append(
                    f"window {d['window_pieces']} pieces of ≤ {d['piece_rows']:,} rows, "
                    f"ring {fmt_bytes(d['ring_bytes'])}"
                )
                lb = lim_b if c != "sb-shuffle-5pct" else res["data_bytes"] * 0.05
                if d["peak_rss_bytes"] > lb + RSS_SLACK:
                    notes.append(f"**peak RSS over memory_limit + 300 MiB = {fmt_bytes(lb + RSS_SLACK)}**")
            if abs(d.get("vmhwm_bytes", d["peak_rss_bytes"]) - d["peak_rss_bytes"]) > (32 << 20):
                notes.append(f"VmHWM {fmt_bytes(d['vmhwm_bytes'])}")
            if c == "sequential" and f == "npy":
                notes.append("RSS counts the mmap'd pages touched")
            if d.get("errors"):
                notes.append(f"{d['errors']} run(s) failed")
            score = f"{d['score']:.2f}" if "score" in d else "—"
            out.append(
                f"| {f} | {names[c]} | {_rate(d)} | {_ms(d.get('first_batch_s'))} | {fmt_bytes(d['peak_rss_bytes'])} "
                f"| {d['cpu_s']:.1f} | {score} | {'; '.join(notes)} |"
            )
    if "error" not in imp:
        out.append(
            "| — | imports only (python + numpy + pyarrow + zarr + streambatch) | — | — | "
            f"{fmt_bytes(imp['peak_rss_bytes'])} | | | the RSS floor |"
        )
    out.append("")
    out.append(
        "**Ratios** (same run): streambatch shuffled rows/s ÷ min(sequential read, in-memory permutation); "
        "target ≥ 0.8. "
        '"ratio" uses the medians over runs; "per-round ratios" pair each round\'s runs (taken minutes apart at most). '
        "The last column is the same ratio in rows per CPU-second (whole process for streambatch and the sequential "
        "read, iteration only for the permutation): less sensitive to other load on the machine, but it charges "
        "streambatch for its reader threads' CPU, which wall-clock rows/s does not when a core is idle.\n"
    )
    out.append(
        "| format | streambatch shuffled | sequential | in-memory perm. | min | ratio | target met "
        "| per-round ratios | no-shuffle ÷ sequential | ratio by CPU time |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for f in res["formats"]:
        sb, seq, perm, ns = (_r(res, f"{f}|{c}") for c in ("sb-shuffle", "sequential", "permutation", "sb-noshuffle"))
        if any("rows_per_s" not in d for d in (sb, seq, perm)):
            out.append(f"| {f} | {_rate(sb)} | {_rate(seq)} | {_rate(perm)} | | n/a | n/a | | | |")
            continue
        base = min(seq["rows_per_s"], perm["rows_per_s"])
        which = "seq" if seq["rows_per_s"] <= perm["rows_per_s"] else "perm"
        ratio = sb["rows_per_s"] / base
        nsr = f"{ns['rows_per_s'] / seq['rows_per_s']:.2f}" if "rows_per_s" in ns else "n/a"
        rounds = round_ratios(res, f)
        rr = ", ".join(f"{x:.2f}" for x in rounds) or "n/a"
        met = "yes" if ratio >= 0.8 else "no"
        if rounds:
            met += f" ({sum(x >= 0.8 for x in rounds)} of {len(rounds)} rounds ≥ 0.8)"
        cpu = "n/a"
        if "iter_cpu_s" in perm and sb.get("cpu_s") and seq.get("cpu_s"):
            per = lambda rows, c: rows / max(c, 1e-9)  # noqa: E731 - rows per CPU-second
            floor = min(per(seq["rows"], seq["cpu_s"]), per(perm["rows"], perm["iter_cpu_s"]))
            cpu = f"{per(sb['rows'], sb['cpu_s']) / floor:.2f}"
        out.append(
            f"| {f} | {sb['rows_per_s'] / 1e6:.2f} M | {seq['rows_per_s'] / 1e6:.2f} M "
            f"| {perm['rows_per_s'] / 1e6:.2f} M "
            f"| {base / 1e6:.2f} M ({which}) | **{ratio:.2f}** | {met} | {rr} | {nsr} | {cpu} |"
        )
    d5 = _r(res, "npy|sb-shuffle-5pct")
    if "score" in d5:
        out.append(
            f"\n`.npy` shuffle score at memory_limit = 5 % of the data ({fmt_bytes(res['data_bytes'] * 0.05)}): "
            f"**{d5['score']:.2f}** (target ≤ 1.2: {'met' if d5['score'] <= 1.2 else 'not met'})."
        )
    return "\n".join(out)


def main_reading(res: dict) -> list[str]:
    """Plain statements derived from the numbers (no adjectives the data does not support)."""
    lines = []
    lim_b = res["memory_limit_bytes"]
    for f in res["formats"]:
        sb, seq, perm = (_r(res, f"{f}|{c}") for c in ("sb-shuffle", "sequential", "permutation"))
        if any("rows_per_s" not in d for d in (sb, seq, perm)):
            err = next((d["error"] for d in (sb, seq, perm) if "error" in d), "missing")
            lines.append(f"- **{f}**: not measured ({err[:120]}).")
            continue
        base = min(seq["rows_per_s"], perm["rows_per_s"])
        ratio = sb["rows_per_s"] / base
        verdict = "meets" if ratio >= 0.8 else "misses"
        s = (
            f"- **{f}**: shuffled streambatch runs at {sb['rows_per_s'] / 1e6:.2f} M rows/s = {ratio:.2f}× the slower "
            f"baseline ({base / 1e6:.2f} M rows/s) — {verdict} the 0.8 target; "
            f"score {sb['score']:.2f} at {res['memory_limit']}; "
            f"peak RSS {fmt_bytes(sb['peak_rss_bytes'])} vs {fmt_bytes(lim_b + RSS_SLACK)} allowed "
            f"({'within' if sb['peak_rss_bytes'] <= lim_b + RSS_SLACK else 'OVER'}) while the in-memory permutation "
            f"needs {fmt_bytes(perm['peak_rss_bytes'])}."
        )
        lines.append(s)
    spread = [f"{f} {min(r):.2f}–{max(r):.2f}" for f in res["formats"] if (r := round_ratios(res, f))]
    if spread:
        load = res.get("env", {}).get("loadavg_start", "?")
        lines.append(
            f"- Noise: per-round ratios span {', '.join(spread)} (load average at start {load} on "
            f"{res.get('env', {}).get('cores', '?')} cores). Treat a ratio as meeting the target only if most "
            "rounds do."
        )
    d5 = _r(res, "npy|sb-shuffle-5pct")
    if "score" in d5:
        lines.append(
            f"- `.npy` at 5 % of the data ({fmt_bytes(res['data_bytes'] * 0.05)}) scores {d5['score']:.2f} "
            f"({'meets' if d5['score'] <= 1.2 else 'misses'} ≤ 1.2) at {d5['rows_per_s'] / 1e6:.2f} M rows/s, "
            f"peak RSS {fmt_bytes(d5['peak_rss_bytes'])}."
        )
    # end to end: the in-memory permutation must first load everything
    e2e = []
    for f in res["formats"]:
        sb, perm = _r(res, f"{f}|sb-shuffle"), _r(res, f"{f}|permutation")
        if "rows_per_s" in sb and "rows_per_s" in perm and "load_s" in perm:
            rows = perm["rows"]
            t_perm = perm["load_s"] + rows / perm["rows_per_s"]
            t_sb = rows / sb["rows_per_s"]
            e2e.append(f"{f} {t_sb:.1f} s vs {t_perm:.1f} s ({perm['load_s']:.1f} s of it loading)")
    if e2e:
        lines.append(
            "- Counting the load, one epoch takes streambatch vs the in-memory permutation: "
            + "; ".join(e2e)
            + ". The target above excludes the load, as the in-memory approach only exists when the data fits in RAM."
        )
    shuf = [(f, _r(res, f"{f}|sb-shuffle")) for f in res["formats"]]
    unit = [f"{f} {d['score']:.2f}" for f, d in shuf if f != "npy" and "score" in d]
    if unit:
        lines.append(
            f"- Parquet/Zarr at {res['memory_limit']} score " + ", ".join(unit) + f": they can only mix whole "
            f"row groups / chunks ({res['chunk_rows']:,} rows here), and the budget holds few of them "
            "(see the sweep below)."
        )
    ns = [(f, _r(res, f"{f}|sb-noshuffle"), _r(res, f"{f}|sequential")) for f in res["formats"]]
    slow = [
        f"{f} {a['rows_per_s'] / b['rows_per_s']:.2f}×"
        for f, a, b in ns
        if "rows_per_s" in a and "rows_per_s" in b and a["rows_per_s"] < 0.8 * b["rows_per_s"]
    ]
    if slow:
        lines.append(
            "- Even unshuffled, streambatch is well below a plain sequential read of the same files ("
            + ", ".join(slow)
            + " of it): the overhead is in the loader, not in the shuffle alone."
        )
    return lines


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
            r = run_config({"module": "bench", **spec}, args.timeout)
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


def _series_name(f: str, c) -> str:
    return "npy (random access)" if c is None else f"{f}, {'row group' if f == 'parquet' else 'chunk'} {c:,} rows"


def sweep_tables(res: dict) -> str:
    fr = res["fractions"]
    out = [
        "Shuffle score (1.0 = full random permutation; unshuffled ≈ 12) of one shuffled epoch, "
        f"{res['rows']:,} rows, batch {BATCH}, "
        + (
            '**label column only** (`columns=["label"]`: the budget then holds ~65× more rows than with x, so these '
            "scores are better than a real all-column load would get)"
            if res["label_only"]
            else "all columns loaded (x and label), so the budget buys the same rows as in real use"
        )
        + f". memory_limit as a share of the data ({res['data_bytes'] / 1e9:.2f} GB). "
        'Cells: score / window pieces. "too small" = the Loader refuses the budget '
        "(ValueError: memory_limit is too small for the read units).\n",
        "| source | " + " | ".join(f"{x * 100:g} % ({fmt_bytes(res['data_bytes'] * x)})" for x in fr) + " |",
        "|---|" + "---|" * len(fr),
    ]
    for f, c in res["series"]:
        cells = []
        for x in fr:
            r = res["results"].get(f"{f}|{c or '-'}|{x}", {"error": "not run"})
            if "error" in r:
                cells.append("too small" if "too small" in r["error"] else "error")
            else:
                cells.append(f"{r['score']:.2f} / {r['window_pieces']}")
        out.append(f"| {_series_name(f, c)} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("Throughput and peak RSS of the same runs (rows/s · peak RSS):\n")
    out.append("| source | " + " | ".join(f"{x * 100:g} %" for x in fr) + " |")
    out.append("|---|" + "---|" * len(fr))
    for f, c in res["series"]:
        cells = []
        for x in fr:
            r = res["results"].get(f"{f}|{c or '-'}|{x}", {"error": "not run"})
            if "error" in r:
                cells.append("—")
            else:
                flag = " **(> limit + 300 MiB)**" if r["peak_rss_bytes"] > res["data_bytes"] * x + RSS_SLACK else ""
                cells.append(f"{r['rows'] / r['seconds'] / 1e6:.2f} M · {fmt_bytes(r['peak_rss_bytes'])}{flag}")
        out.append(f"| {_series_name(f, c)} | " + " | ".join(cells) + " |")
    errs = sorted({r["error"] for r in res["results"].values() if "error" in r and "too small" not in r["error"]})
    for e in errs:
        out.append(f"\nError: `{e[:300]}`")
    return "\n".join(out)


def sweep_plot(res: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    colors = {c: f"C{i}" for i, c in enumerate(res["chunks"])}
    for f, c in res["series"]:
        kw = (
            {"color": "k", "marker": "o", "ls": "-", "lw": 2}
            if c is None
            else {
                "color": colors.get(c, "grey"),
                "marker": "s" if f == "parquet" else "^",
                "ls": "-" if f == "parquet" else "--",
                "mfc": "none" if f == "zarr" else None,
                "ms": 9 if f == "zarr" else 5,
            }
        )
        xs, ys = [], []
        for x in res["fractions"]:
            r = res["results"].get(f"{f}|{c or '-'}|{x}", {})
            if "score" in r:
                xs.append(x * 100)
                ys.append(r["score"])
        if xs:
            ax.plot(xs, ys, label=_series_name(f, c), **kw)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.axhline(1.2, color="red", lw=0.8, ls=":", label="npy target (1.2)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([x * 100 for x in res["fractions"]])
    ax.set_xticklabels([f"{x * 100:g}%" for x in res["fractions"]])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks([1, 1.2, 2, 3, 5, 8, 12])
    ax.set_yticklabels(["1", "1.2", "2", "3", "5", "8", "12"])
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("memory_limit (% of the data)")
    ax.set_ylabel("shuffle score (1 = full permutation)")
    ax.set_title(f"Shuffle score vs budget ({res['rows']:,} rows, class-sorted labels)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(png), exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def throughput_plot(res: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confs = [
        ("sb-shuffle", "streambatch shuffled"),
        ("sb-noshuffle", "streambatch unshuffled"),
        ("sequential", "sequential read"),
        ("permutation", "in-memory permutation"),
    ]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    width = 0.2
    for k, (c, label) in enumerate(confs):
        vals = [_r(res, f"{f}|{c}").get("rows_per_s", 0) / 1e6 for f in res["formats"]]
        ax.bar([i + (k - 1.5) * width for i in range(len(res["formats"]))], vals, width, label=label)
    ax.set_xticks(range(len(res["formats"])))
    ax.set_xticklabels(res["formats"])
    ax.set_ylabel("M rows/s (batch 256, warm cache)")
    ax.set_title(f"Throughput, memory_limit {res['memory_limit']}, {res['rows']:,} rows")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(png), exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


# ----------------------------------------------------------------------------- environment & docs


def load_results(data_dir: str, name: str):
    p = os.path.join(data_dir, "results", name)
    if os.path.exists(p):
        with open(p) as f:
            return json.load(f)
    return None


def main_history(data_dir: str) -> list[dict]:
    hist = os.path.join(data_dir, "results", "history")
    if not os.path.isdir(hist):
        return []
    runs = []
    for n in sorted(os.listdir(hist)):
        if n.startswith("main-") and n.endswith(".json"):
            with open(os.path.join(hist, n)) as f:
                runs.append(json.load(f))
    return runs


def history_table(runs: list[dict]) -> str:
    out = [
        "| measured | code | load avg at start | "
        + " | ".join(f"{f} ratio" for f in FORMATS)
        + " | npy score at 5 % |",
        "|---|---|---|" + "---|" * len(FORMATS) + "---|",
    ]
    for res in runs:
        cells = []
        for f in FORMATS:
            sb, seq, perm = (res["results"].get(f"{f}|{c}", {}) for c in ("sb-shuffle", "sequential", "permutation"))
            if all("rows_per_s" in d for d in (sb, seq, perm)):
                cells.append(f"{sb['rows_per_s'] / min(seq['rows_per_s'], perm['rows_per_s']):.2f}")
            else:
                cells.append("n/a")
        d5 = res["results"].get("npy|sb-shuffle-5pct", {})
        env = res["env"]
        code = env.get("code_start", env["commit"])
        if res.get("code_end") and res["code_end"] != code:
            code += f" → {res['code_end']} (changed during the run)"
        score5 = f"{d5['score']:.2f}" if "score" in d5 else "n/a"
        out.append(
            f"| {env['date']} | `{code}` | {env.get('loadavg_start', '?')} | " + " | ".join(cells) + f" | {score5} |"
        )
    return "\n".join(out)


RESULT_NAMES = ("main", "sweep", "peers", "scaling", "cold")


def render_docs(results: dict[str, dict | None], doc: str, history: list[dict] | None = None) -> None:
    """Write ``doc`` from cached results (``RESULT_NAMES`` -> result or None); writes the
    scaling plot too (the other plots are written when their run ends or by --render-only)."""
    main, sweep = results.get("main"), results.get("sweep")
    img = os.path.join(os.path.dirname(doc), "img")
    out = [
        "# Benchmarks",
        "",
        "<!-- generated by scripts/bench.py; edit the script, not this file -->",
        "",
        "How fast streambatch turns a dataset larger than its memory budget into shuffled batches, "
        "measured against the two costs it cannot avoid, **in the same run**: (a) a sequential, unshuffled read of "
        "the same files, and (b) an in-memory NumPy permutation of the same data (all rows loaded into RAM, then "
        "`x[perm[i:i+256]]` per batch). Timings on a 2-core machine are noisy: read the ratios, not the absolute "
        "figures, and re-run `scripts/bench.py` on your machine.",
        "",
        "Data: `streambatch.demo.generate` — float32[128] `x` + int64 `label`, labels sorted into 10 contiguous "
        "classes (the worst case for a windowed shuffle). Shuffle score (`streambatch.quality.ShuffleScore`): mean "
        "total-variation distance between each batch's label histogram and the global one, divided by the same for a "
        "full random permutation — 1.0 is a full shuffle, an unshuffled pass scores ≈ 12.",
        "",
        "Every configuration runs in a fresh `python` subprocess so peak RSS (`ru_maxrss`) is per configuration. "
        "Every configuration does the same per-batch work: a label histogram for the score and, on every 16th batch, "
        "a check that `x[:, 0] == label`. Baselines: npy — `np.load(mmap_mode='r')`, `np.array(x[i:i+256])`; "
        "Parquet — `ParquetFile.read_row_group(g)` for each group, the FixedSizeBinary tensor column viewed as a "
        "float32 array (zero-copy, one array per row group, not cut into 256-row batches); Zarr — `arr[i:i+chunk]` "
        "per chunk (one array per chunk). The page cache is warmed by reading every file once before measuring. "
        "rows/s covers the whole epoch from before opening the files (so `Loader` construction and the first-batch "
        'wait are included); "first batch" is the time from then to the first batch in hand (for the in-memory '
        "permutation: measured after the load, which is reported separately). Peak RSS is `ru_maxrss` of the worker "
        "process; the parent script imports neither numpy nor pyarrow, because Linux carries the parent's RSS "
        "high-water mark across `exec` into the child's `ru_maxrss` (the worker also records `VmHWM` as a check).",
        "",
        "Sections: [throughput, latency, memory](#throughput-latency-memory) · [peers](#peers) · "
        "[scaling with dataset size](#scaling-peak-rss-and-rowss-vs-dataset-size) · "
        "[cold page cache](#cold-page-cache-vs-dd) · "
        "[shuffle score vs budget](#shuffle-score-vs-budget-and-read-unit-size) · "
        "[other benchmarks](#other-benchmarks) (convert, remote storage, resume).",
        "",
    ]
    if main:
        out += [
            "## Throughput, latency, memory",
            "",
            env_block(main["env"], main["command"], main.get("loadavg_end"), main.get("code_end")),
            "",
            main_tables(main),
            "",
        ]
        out += ["![throughput](img/throughput.png)", ""] if os.path.exists(os.path.join(img, "throughput.png")) else []
        out += ["### Reading", "", *main_reading(main), ""]
        if history and len(history) > 1:
            out += [
                "### All full runs of this benchmark (ratios)",
                "",
                "The same benchmark, run repeatedly while this checkout was being changed and the machine shared; "
                "the spread is the measurement noise plus the code changes.",
                "",
                history_table(history),
                "",
            ]
    else:
        out += ["## Throughput, latency, memory", "", "_Not run yet: `python scripts/bench.py`._", ""]
    out += peers_section(results.get("peers"), img)
    out += bench_scaling.docs_sections(results.get("scaling"), results.get("cold"), img)
    if sweep:
        out += [
            "## Shuffle score vs budget and read-unit size",
            "",
            env_block(sweep["env"], sweep["command"], sweep.get("loadavg_end"), sweep.get("code_end")),
            f"- Sweep wall time: {sweep['seconds'] / 60:.1f} min",
            "",
            sweep_tables(sweep),
            "",
        ]
        out += ["![score vs budget](img/score_vs_budget.png)", ""]
        out += ["### Reading", "", *sweep_reading(sweep), ""]
    else:
        out += [
            "## Shuffle score vs budget and read-unit size",
            "",
            "_Not run yet: `python scripts/bench.py --budget-sweep`._",
            "",
        ]
    out += [
        "## Other benchmarks",
        "",
        "Measured by their own scripts; their figures live with the feature they measure:",
        "",
        "- `streambatch convert` throughput and peak RSS against a plain pyarrow rewrite, and the loader on its "
        "output: `scripts/bench_convert.py`, [convert.md → Measured](convert.md#measured).",
        "- Remote storage (simulated per-request latency through fsspec, by thread count): "
        "`scripts/bench_remote.py`, [remote.md → Measured](remote.md#measured).",
        "- Resume cost (first batch after a mid-epoch resume vs a fresh start, bytes read): "
        "`scripts/bench_resume.py`, [distributed.md](distributed.md).",
        "",
    ]
    with open(doc, "w") as f:
        f.write("\n".join(out))


def peers_section(peers: dict | None, img: str) -> list[str]:
    if not peers:
        return ["## Peers", "", "_Not run yet: `python scripts/bench.py --peers`._", ""]
    out = [
        "## Peers",
        "",
        "The same data through the loaders people use today (`scripts/bench_peers.py`; the peers are extras of "
        "the benchmark, never of the library: `pip install -r scripts/requirements-peers.txt`, and MosaicML "
        "Streaming in a virtual environment of its own that the script makes from `scripts/requirements-mosaic.txt`, "
        "because it imports torchvision and pulls a huggingface-hub that breaks `datasets`).",
        "",
        env_block(peers["env"], peers["command"], peers.get("loadavg_end"), peers.get("code_end")),
        bench_peers.versions_line(peers),
        f"- Peer run wall time: {peers['seconds'] / 60:.1f} min (with any one-off preparation)",
        "",
        bench_peers.tables(peers),
        "",
    ]
    out += ["![peers](img/peers.png)", ""] if os.path.exists(os.path.join(img, "peers.png")) else []
    return [*out, "### Reading", "", *bench_peers.reading(peers), ""]


def sweep_reading(res: dict) -> list[str]:
    lines = []
    for f, c in res["series"]:
        got = [(x, res["results"].get(f"{f}|{c or '-'}|{x}", {})) for x in res["fractions"]]
        ok = [(x, r) for x, r in got if "score" in r]
        refused = [x for x, r in got if "too small" in r.get("error", "")]
        if not ok:
            lines.append(f"- {_series_name(f, c)}: no budget in the sweep was accepted.")
            continue
        parts = ", ".join(f"{r['score']:.2f} at {x * 100:g} %" for x, r in ok)
        s = f"- {_series_name(f, c)}: {parts}"
        if refused:
            s += f"; refused at {', '.join(f'{x * 100:g} %' for x in refused)} "
            s += "(the Loader raises 'memory_limit ... is too small')"
        one = [x for x, r in ok if r.get("window_pieces") == 1]
        if one:
            s += (
                f"; **accepted at {', '.join(f'{x * 100:g} %' for x in one)} with a window of one unit, i.e. no "
                "shuffle at all**"
            )
        if c is None:
            w = [r["window_pieces"] for _, r in ok]
            s += f" (window {min(w)}–{max(w)} pieces: the piece size grows with the budget, the piece count does not)"
        lines.append(s + ".")
    lines.append(
        "- Parquet and Zarr can only mix whole row groups / chunks: with units of U rows and a budget of B rows "
        "the window holds at most ~B/U units, so large units need either a larger budget or a rewrite with "
        "`streambatch convert` (smaller units, or `--shuffle`)."
    )
    return lines


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data-dir", default="./bench-data", help="generated data and cached results (default ./bench-data)"
    )
    p.add_argument("--rows", type=int, default=None, help="rows per dataset (default 2,000,000; 200,000 with --quick)")
    p.add_argument("--chunk-rows", type=int, default=8192, help="Parquet row group / Zarr chunk rows for the main run")
    p.add_argument("--memory-limit", default="256MiB")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of npy,parquet,zarr")
    p.add_argument("--repeat", type=int, default=None, help="runs per configuration (default 3; 1 with --quick)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    p.add_argument(
        "--budget-sweep", action="store_true", help="score vs memory_limit x unit size instead of the main run"
    )
    p.add_argument("--sweep-fractions", default="0.02,0.05,0.10,0.25")
    p.add_argument("--sweep-chunks", default="1024,8192,65536")
    p.add_argument(
        "--label-only",
        action="store_true",
        help="sweep with columns=['label'] (fast but the budget buys ~65x more rows)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 200k rows, 1 run each, a reduced sweep; does not write the docs",
    )
    p.add_argument("--docs", default=os.path.join(REPO, "docs", "benchmarks.md"))
    p.add_argument(
        "--write-docs", action="store_true", help="write the docs even with --quick/--rows (not the default)"
    )
    p.add_argument("--no-docs", action="store_true", help="print only")
    p.add_argument(
        "--render-only",
        action="store_true",
        help="re-render docs/benchmarks.md and the plots from the cached full-run results; measure nothing",
    )
    p.add_argument("--peers", action="store_true", help="the peer benchmark (scripts/bench_peers.py) instead")
    p.add_argument("--peers-only", default=None, help="comma-separated subset of the peers (see bench_peers.PEERS)")
    p.add_argument(
        "--peer-seconds",
        type=float,
        default=None,
        help="cap on a peer's iteration, s (default 60; 10 with --quick; 0 = none)",
    )
    p.add_argument(
        "--scaling", action="store_true", help="peak RSS and rows/s vs dataset size (scripts/bench_scaling.py)"
    )
    p.add_argument("--scaling-sizes", default=None, help="dataset sizes in ~1 GB shards (default 1,2,4,8; 1,2 quick)")
    p.add_argument("--cold", action="store_true", help="cold page cache vs dd (needs root: empties the page cache)")
    args = p.parse_args(argv)

    command = "python scripts/bench.py" + (
        "" if argv is None and len(sys.argv) == 1 else " " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    args.formats = tuple(f for f in args.formats.split(",") if f)
    bad = set(args.formats) - set(FORMATS)
    if bad:
        p.error(f"unknown formats: {', '.join(sorted(bad))}")
    args.sweep_fractions = [float(x) for x in args.sweep_fractions.split(",")]
    args.sweep_chunks = [int(x) for x in args.sweep_chunks.split(",")]
    if args.quick:
        args.rows = args.rows or 200_000
        args.repeat = args.repeat or 1
        if args.budget_sweep and "--sweep-chunks" not in " ".join(sys.argv):
            args.sweep_chunks = [1024, 8192]
        args.timeout = min(args.timeout, 120)
        args.peer_seconds = 10 if args.peer_seconds is None else args.peer_seconds
    args.peer_seconds = 60 if args.peer_seconds is None else args.peer_seconds
    args.peers_only = [k for k in args.peers_only.split(",") if k] if args.peers_only else None
    args.scaling_sizes = [int(k) for k in (args.scaling_sizes or ("1,2" if args.quick else "1,2,4,8")).split(",")]
    args.rows = args.rows or 2_000_000
    args.repeat = args.repeat or (2 if args.scaling else 3)
    official = not args.quick and args.rows == 2_000_000
    write_docs = not args.no_docs and (official or args.write_docs)
    args.data_dir = os.path.abspath(args.data_dir)
    os.makedirs(os.path.join(args.data_dir, "results"), exist_ok=True)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.render_only:
        cached = {n: load_results(args.data_dir, f"{n}.json") for n in RESULT_NAMES}
        img = os.path.join(os.path.dirname(os.path.abspath(args.docs)), "img")
        if cached["main"]:
            throughput_plot(cached["main"], os.path.join(img, "throughput.png"))
        if cached["sweep"]:
            sweep_plot(cached["sweep"], os.path.join(img, "score_vs_budget.png"))
        if cached["peers"]:
            bench_peers.plot(cached["peers"], os.path.join(img, "peers.png"))
        render_docs(cached, args.docs, main_history(args.data_dir))
        log(f"wrote {args.docs} from {args.data_dir}/results")
        return 0

    env = run_config({"module": "benchlib", "kind": "env"}, 120)
    env["loadavg_start"] = _loadavg()
    env["code_start"] = code_fingerprint()
    log(
        f"bench: {args.rows:,} rows, data in {args.data_dir}, commit {env['commit']}"
        + (" (+ uncommitted changes in streambatch/)" if env["dirty"] else "")
    )
    t0 = time.perf_counter()
    if args.peers:
        res = bench_peers.run(args, log)
        table = bench_peers.tables(res)
        name = "peers.json"
    elif args.scaling:
        res = bench_scaling.scaling_run(args, log)
        table = bench_scaling.scaling_tables(res)
        name = "scaling.json"
    elif args.cold:
        res = bench_scaling.cold_run(args, log)
        table = bench_scaling.cold_tables(res)
        name = "cold.json"
    elif args.budget_sweep:
        res = sweep_run(args, log)
        table = sweep_tables(res)
        name = "sweep.json"
    else:
        res = main_run(args, log)
        table = main_tables(res)
        name = "main.json"
    res["env"] = env
    res["loadavg_end"] = _loadavg()
    res["code_end"] = code_fingerprint()
    if res["code_end"] != env["code_start"]:
        log(f"WARNING: streambatch/ changed during the run ({env['code_start']} -> {res['code_end']})")
    res["command"] = command
    if not official:
        name = "quick-" + name
    with open(os.path.join(args.data_dir, "results", name), "w") as f:
        json.dump(res, f, indent=1)
    if official:  # keep every full run: the docs list their ratios, as one run on a busy box can mislead
        hist = os.path.join(args.data_dir, "results", "history")
        os.makedirs(hist, exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        with open(os.path.join(hist, f"{name[:-5]}-{stamp}.json"), "w") as f:
            json.dump(res, f, indent=1)
    print()
    print(env_block(env, command))
    print()
    print(table)
    if write_docs:
        img = os.path.join(os.path.dirname(os.path.abspath(args.docs)), "img")
        if args.peers:
            bench_peers.plot(res, os.path.join(img, "peers.png"))
        elif args.budget_sweep:
            sweep_plot(res, os.path.join(img, "score_vs_budget.png"))
        elif not (args.scaling or args.cold):  # the scaling plot is drawn by render_docs
            throughput_plot(res, os.path.join(img, "throughput.png"))
        prefix = "" if official else "quick-"
        cached = {
            n: res if n == name[len(prefix) : -5] else load_results(args.data_dir, f"{prefix}{n}.json")
            for n in RESULT_NAMES
        }
        render_docs(cached, args.docs, main_history(args.data_dir) if official else None)
        log(f"wrote {args.docs}")
    log(f"bench: done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
