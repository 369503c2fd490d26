"""Shuffle quality vs memory_limit x layout (`python scripts/bench.py --quality`).

One class-sorted dataset (default 2,000,000 rows x (float32[128] + int64 label),
1.04 GB) in the layouts common writers produce: `.npy`; Parquet with 8k, 64k and
1M-row groups as FixedSizeBinary (streambatch's tensor layout) and as
FixedSizeList (what pyarrow/polars write for a fixed-length list); Zarr with 8k
and 64k-row chunks (zarr's default zstd). For each memory_limit (a fraction of
the data) one shuffled epoch runs in a fresh process: the shuffle score (1.0 = a
full permutation), rows/s, first-batch latency and peak RSS, with the same
configuration run on a baseline checkout (`--baseline DIR`, e.g. a worktree of
the previous main) in the same run, round-robin.

Beside each cell, the **bound**: the score of the same plan machinery with
only the physics charged — a compressed unit (Zarr chunk) must be held whole
while it is read; a streamed Parquet row group costs one decoded page (1 MiB)
while open; nothing else (batches, plan, read-ahead) costs memory — simulated
on row positions, no data read.
"""

from __future__ import annotations

import json
import os
import sys
import time

from benchlib import BATCH, NUM_CLASSES, REPO, _Consumer, run_config

__all__ = ["LAYOUTS", "FRACTIONS", "run_quality", "render_quality"]

LAYOUTS = ("npy", "pq-fsb-8k", "pq-fsb-64k", "pq-fsb-1M", "pq-fsl-64k", "pq-fsl-1M", "zarr-8k", "zarr-64k")
FRACTIONS = (0.01, 0.05, 0.25, 1.0, 2.0)
_UNIT_ROWS = {"8k": 8192, "64k": 65536, "1M": 1 << 20}
WIDTH = 128


def _unit_rows(layout: str) -> int | None:
    return _UNIT_ROWS.get(layout.rsplit("-", 1)[-1]) if layout != "npy" else None


def layout_path(data_dir: str, layout: str, rows: int) -> str:
    leaf = {"npy": "npy"}.get(layout, layout + (".zarr" if layout.startswith("zarr") else ".parquet"))
    return os.path.join(os.path.abspath(data_dir), "quality", f"rows{rows}", leaf)


def work_generate(data_dir: str, rows: int) -> dict:
    """Every layout of one class-sorted dataset; x[:, 0] == label (the consumer checks it)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zarr

    label = (np.arange(rows, dtype=np.int64) * NUM_CLASSES) // rows
    x = np.random.default_rng(0).standard_normal((rows, WIDTH), dtype=np.float32)
    x[:, 0] = label
    made = {}
    for layout in LAYOUTS:
        path = layout_path(data_dir, layout, rows)
        if os.path.exists(path + ".done"):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if layout == "npy":
            os.makedirs(path, exist_ok=True)
            np.save(os.path.join(path, "x.npy"), x)
            np.save(os.path.join(path, "label.npy"), label)
        elif layout.startswith("pq"):
            if "fsb" in layout:
                field = pa.field("x", pa.binary(WIDTH * 4), metadata={"dtype": "<f4", "shape": f"[{WIDTH}]"})
                column = pa.FixedSizeBinaryArray.from_buffers(pa.binary(WIDTH * 4), rows, [None, pa.py_buffer(x)])
            else:
                field = pa.field("x", pa.list_(pa.float32(), WIDTH))
                column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), WIDTH)
            table = pa.table([column, pa.array(label)], schema=pa.schema([field, pa.field("label", pa.int64())]))
            pq.write_table(table, path, row_group_size=_unit_rows(layout))  # pyarrow's defaults: snappy, 1 MiB pages
        else:
            chunk = _unit_rows(layout)
            with zarr.config.set({"array.write_empty_chunks": True}):  # see the note in docs/shuffling.md
                group = zarr.open_group(path, mode="w")
                group.create_array("x", data=x, chunks=(chunk, WIDTH))
                group.create_array("label", data=label, chunks=(chunk,))
        open(path + ".done", "w").close()
        made[layout] = path
    return {"made": sorted(made)}


def work_epoch(path: str, memory_limit: int) -> dict:
    """One shuffled epoch of ``path`` under ``memory_limit`` (a fresh process per call)."""
    import warnings

    import streambatch as sb

    warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    try:
        loader = sb.Loader(path, BATCH, memory_limit=memory_limit, seed=0)
    except sb.BudgetError as e:
        return {"budget_error": str(e)}
    consumer = _Consumer(score=True)
    for batch in loader:
        consumer(batch["x"], batch["label"], t0)
    seconds = time.perf_counter() - t0
    b = loader.budget
    return {
        "rows": consumer.rows,
        "seconds": seconds,
        "first_batch_s": consumer.first,
        "score": consumer.score(),
        "window_pieces": b.window_pieces,
        "lanes": getattr(b, "lanes", 1),
        "fits": bool(getattr(b, "fits", False)),
    }


def work_bound(rows: int, layout: str, memory_limit: int) -> dict:
    """The physics-only score (see the module docstring), on positions only."""
    import numpy as np

    from streambatch import plan as P
    from streambatch.quality import ShuffleScore

    row_bytes = WIDTH * 4 + 8
    unit = _unit_rows(layout)
    window_rows = memory_limit // row_bytes
    piece = max(1, (16 << 10) // row_bytes)
    rng = np.random.default_rng(0)
    if unit is None:  # random access: pieces of 16 KiB, a window of all the budget
        bounds = np.arange(0, rows + piece, piece).clip(max=rows)
    else:
        bounds = np.arange(0, rows + unit, unit).clip(max=rows)
    bounds = np.unique(bounds)
    start, stop = bounds[:-1], bounds[1:]
    order = rng.permutation(start.size)
    start, stop = start[order], stop[order]
    streamable = layout.startswith("pq")
    if streamable:  # one decoded page (1 MiB) per open stream; slices of 16 KiB
        lanes = max(1, min(start.size, memory_limit // (1 << 20)))
        window_rows = max(piece, window_rows - lanes * ((1 << 20) // row_bytes))
    else:
        lanes = 1
    shard = np.zeros(start.size, dtype=np.int32)
    sizes_in = stop - start
    slice_rows = max(piece, min(window_rows, rows) // (16 * lanes)) if streamable else piece
    _, p_start, p_stop, stream = P._pieces(shard, start, stop, np.array([streamable]), slice_rows, lanes)
    sizes = p_stop - p_start
    largest = int(sizes_in.max()) if not streamable else int(sizes.max())
    window = max(1, window_rows // max(largest, 1))
    load, end = P.ticks(sizes, stream >= 0, window, True, max(1024, 2 * int(sizes_in.max())))
    positions = np.repeat(np.arange(sizes.size), sizes)
    keys = load[positions] + (end - load)[positions] * rng.random(int(sizes.sum()))
    within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    row_of = np.repeat(p_start, sizes) + within
    labels = (row_of[np.argsort(keys, kind="stable")] * NUM_CLASSES) // rows
    scorer = ShuffleScore(NUM_CLASSES)
    for k in range(0, labels.size, BATCH):
        scorer.add(labels[k : k + BATCH])
    return {"bound": scorer.score(), "bound_window": int(window), "bound_lanes": int(lanes)}


WORKERS = {"generate": work_generate, "epoch": work_epoch, "bound": work_bound}


def run_quality(args, log) -> dict:
    """Generate the layouts, then every (layout, fraction) cell for the code under test
    and the baseline, round-robin so both see the same machine load."""
    rows = args.rows
    t0 = time.perf_counter()
    r = run_config({"module": "bench_shuffle", "kind": "generate", "data_dir": args.data_dir, "rows": rows}, 7200)
    if "error" in r:
        raise RuntimeError(f"generating the quality layouts failed: {r['error']}")
    log(f"  layouts ready in {time.perf_counter() - t0:.0f} s")
    data_bytes = rows * (WIDTH * 4 + 8)
    layouts = args.layouts or LAYOUTS
    fractions = args.fractions or FRACTIONS
    cells = {}
    for layout in layouts:
        path = layout_path(args.data_dir, layout, rows)
        for fraction in fractions:
            limit = int(data_bytes * fraction)
            spec = {"module": "bench_shuffle", "kind": "epoch", "path": path, "memory_limit": limit}
            cell = {"fraction": fraction, "memory_limit": limit, "rounds": []}
            for _ in range(args.rounds):  # new and baseline alternate: both see the same load
                pair = {"new": run_config(dict(spec), args.timeout)}
                if args.baseline:
                    pair["baseline"] = run_config(dict(spec), args.timeout, code=args.baseline)
                cell["rounds"].append(pair)
            for key in ("new", "baseline"):
                runs = [r[key] for r in cell["rounds"] if key in r]
                if runs:
                    cell[key] = _median_run(runs)
            bound = run_config(
                {"module": "bench_shuffle", "kind": "bound", "rows": rows, "layout": layout, "memory_limit": limit},
                args.timeout,
            )
            cell.update({k: v for k, v in bound.items() if k.startswith("bound")})
            cells[f"{layout}@{fraction}"] = cell
            log(
                f"  {layout} {fraction:>5.0%}: {_brief(cell['new'])}"
                + (f" | baseline {_brief(cell['baseline'])}" if args.baseline else "")
                + (f" | bound {cell['bound']:.2f}" if "bound" in cell else "")
            )
    return {
        "rows": rows,
        "data_bytes": data_bytes,
        "cells": cells,
        "layouts": list(layouts),
        "fractions": list(fractions),
        "rounds": args.rounds,
    }


def _median_run(runs: list[dict]) -> dict:
    """The run with the median rows/s (scores are the same in every round)."""
    ok = [r for r in runs if "rows" in r]
    if not ok:
        return runs[0]
    ok.sort(key=lambda r: r["rows"] / r["seconds"])
    return ok[len(ok) // 2]


def round_ratios(cell: dict) -> list[float]:
    """new / baseline rows/s of each round, where both ran."""
    return [
        (r["new"]["rows"] / r["new"]["seconds"]) / (r["baseline"]["rows"] / r["baseline"]["seconds"])
        for r in cell.get("rounds", [])
        if "rows" in r.get("new", {}) and "rows" in r.get("baseline", {})
    ]


def plot_quality(res: dict, path: str) -> None:
    """Score vs memory_limit per layout (solid), its bound (dashed), the previous loader (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for k, layout in enumerate(res["layouts"]):
        color = f"C{k}"
        xs, ys, bs, old_x, old_y = [], [], [], [], []
        for f in res["fractions"]:
            c = res["cells"][f"{layout}@{f}"]
            if "score" in c["new"]:
                xs.append(f * 100)
                ys.append(c["new"]["score"])
                bs.append(c.get("bound"))
            if "score" in c.get("baseline", {}):
                old_x.append(f * 100)
                old_y.append(c["baseline"]["score"])
        ax.plot(xs, ys, "o-", color=color, label=layout)
        ax.plot(xs, bs, "--", color=color, alpha=0.6)
        if old_x:
            ax.plot(old_x, old_y, ":", color=color, alpha=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("memory_limit, % of the data (1.04 GB)")
    ax.set_ylabel("shuffle score (1.0 = full permutation)")
    ax.set_title(
        "Shuffle quality vs memory: measured (solid), physics bound (dashed), previous loader (dotted)", fontsize=9
    )
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _brief(r: dict) -> str:
    if "budget_error" in r:
        return "BudgetError"
    if "error" in r:
        return f"error: {r['error'][:80]}"
    fits = " (fits)" if r.get("fits") else ""
    return (
        f"score {r['score']:.2f}{fits}, {r['rows'] / r['seconds'] / 1e6:.2f} M rows/s, "
        f"first {r['first_batch_s'] * 1000:.0f} ms, peak {r['peak_rss_bytes'] / 2**20:.0f} MiB"
    )


def _cell(r: dict | None) -> str:
    if r is None:
        return "—"
    if "budget_error" in r:
        return "BudgetError"
    if "error" in r:
        return "error"
    return f"{r['score']:.2f}"


def render_quality(res: dict, env_text: str) -> str:
    """The markdown section for docs/shuffling.md: score (bound) per layout x budget,
    then rows/s, first batch and peak RSS beside the baseline."""
    fractions = res.get("fractions", FRACTIONS)
    head = "| layout | " + " | ".join(f"{f:.0%} of data" for f in fractions) + " |"
    sep = "|---" * (len(fractions) + 1) + "|"
    lines = [
        "Score (1.0 = a full permutation) of one shuffled epoch; in brackets the physics-only bound, "
        "then the previous loader's score measured in the same run.",
        "",
        head,
        sep,
    ]
    for layout in res["layouts"]:
        row = []
        for f in fractions:
            c = res["cells"][f"{layout}@{f}"]
            text = _cell(c["new"])
            if c["new"].get("fits"):
                text += "F"
            if "bound" in c:
                text += f" ({c['bound']:.2f})"
            if "baseline" in c:
                text += f" / was {_cell(c['baseline'])}"
            row.append(text)
        lines.append(f"| {layout} | " + " | ".join(row) + " |")
    lines += ["", "F: the data fits the budget (a full permutation after the first batches).", ""]
    lines += [
        "Rows/s (M), first batch (ms) and peak RSS (MiB), new / previous loader, same run:",
        "",
        head,
        sep,
    ]
    for layout in res["layouts"]:
        row = []
        for f in fractions:
            c = res["cells"][f"{layout}@{f}"]
            parts = []
            for key in ("new", "baseline"):
                r = c.get(key)
                if r is None:
                    continue
                if "rows" not in r:
                    parts.append("—")
                else:
                    parts.append(
                        f"{r['rows'] / r['seconds'] / 1e6:.2f} M, {r['first_batch_s'] * 1000:.0f} ms, "
                        f"{r['peak_rss_bytes'] / 2**20:.0f} MiB"
                    )
            row.append(" / ".join(parts))
        lines.append(f"| {layout} | " + " | ".join(row) + " |")
    if res.get("rounds", 1) > 1:
        lines += ["", f"Rows/s new ÷ previous loader, per round ({res['rounds']} rounds, alternating):", "", head, sep]
        for layout in res["layouts"]:
            row = []
            for f in fractions:
                ratios = round_ratios(res["cells"][f"{layout}@{f}"])
                row.append(" ".join(f"{x:.2f}" for x in ratios) or "—")
            lines.append(f"| {layout} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n\n" + env_text + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--data-dir", default=os.path.join(REPO, "bench-data"))
    p.add_argument("--baseline", default=None, help="a checkout of the code to compare with (e.g. a git worktree)")
    p.add_argument("--layouts", default=None, help=f"comma-separated subset of {','.join(LAYOUTS)}")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument(
        "--fractions",
        default=None,
        help=f"comma-separated memory_limit fractions of the data (default {','.join(str(f) for f in FRACTIONS)})",
    )
    p.add_argument("--rounds", type=int, default=1, help="runs per cell, new and baseline alternating (default 1)")
    p.add_argument("--plot", default=None, help="write the score plot here (PNG; needs matplotlib)")
    p.add_argument("--json", default=None, help="write the raw results here")
    args = p.parse_args(argv)
    args.layouts = [s for s in args.layouts.split(",") if s] if args.layouts else None
    args.fractions = [float(f) for f in args.fractions.split(",") if f] if args.fractions else None
    res = run_quality(args, lambda m: print(m, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if args.plot:
        plot_quality(res, args.plot)
    env = run_config({"module": "benchlib", "kind": "env"}, 120)
    from benchlib import env_block

    print(render_quality(res, env_block(env, "python scripts/bench_shuffle.py " + " ".join(sys.argv[1:]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
