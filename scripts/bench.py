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
    python scripts/bench.py --limits        # pread / gather / pipeline ceilings beside streambatch (bench_limits.py)

Results are cached as JSON under ``--data-dir``/results; ``docs/benchmarks.md``
is rendered from the latest full main run, full sweep and full peer run.

Measuring lives in ``bench_measure.py``, rendering in ``bench_render.py``;
``--quality`` runs ``bench_shuffle.py`` and renders into ``docs/shuffling.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_limits
import bench_peers
import bench_peers_report
import bench_scaling
import bench_shuffle
from bench_measure import main_run, sweep_run
from bench_render import (
    RESULT_NAMES,
    load_results,
    main_history,
    main_tables,
    render_docs,
    render_quality_doc,
    sweep_plot,
    sweep_tables,
    throughput_plot,
)
from benchlib import (
    FORMATS,
    REPO,
    _loadavg,
    code_fingerprint,
    env_block,
    run_config,
)


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
    p.add_argument(
        "--limits",
        action="store_true",
        help="the machine's read and gather limits beside streambatch (scripts/bench_limits.py); prints only",
    )
    p.add_argument("--cold", action="store_true", help="cold page cache vs dd (needs root: empties the page cache)")
    p.add_argument(
        "--quality",
        nargs="?",
        const="",
        default=None,
        metavar="BASELINE",
        help="shuffle quality vs memory_limit x layout (scripts/bench_shuffle.py) into docs/shuffling.md; "
        "BASELINE: a checkout of the previous code measured in the same run",
    )
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
    write_docs = not args.no_docs and (official or args.write_docs) and not args.limits
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
            bench_peers_report.plot(cached["peers"], os.path.join(img, "peers.png"))
        render_docs(cached, args.docs, main_history(args.data_dir))
        log(f"wrote {args.docs} from {args.data_dir}/results")
        quality = load_results(args.data_dir, "quality.json")
        if quality:
            render_quality_doc(quality, _shuffling_doc(args.docs))
            log(f"wrote {_shuffling_doc(args.docs)} from {args.data_dir}/results")
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
        table = bench_peers_report.tables(res)
        name = "peers.json"
    elif args.scaling:
        res = bench_scaling.scaling_run(args, log)
        table = bench_scaling.scaling_tables(res)
        name = "scaling.json"
    elif args.limits:
        res = bench_limits.limits_run(args, log)
        table = bench_limits.limits_tables(res)
        name = "limits.json"
    elif args.cold:
        res = bench_scaling.cold_run(args, log)
        table = bench_scaling.cold_tables(res)
        name = "cold.json"
    elif args.budget_sweep:
        res = sweep_run(args, log)
        table = sweep_tables(res)
        name = "sweep.json"
    elif args.quality is not None:
        args.baseline = os.path.abspath(args.quality) if args.quality else None
        args.layouts = None  # every layout (scripts/bench_shuffle.py --layouts picks some)
        res = bench_shuffle.run_quality(args, log)
        table = bench_shuffle.render_quality(res, env_block(env, command))
        name = "quality.json"
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
    if write_docs and args.quality is not None:  # its own page, not benchmarks.md
        render_quality_doc(res, _shuffling_doc(args.docs))
        log(f"wrote {_shuffling_doc(args.docs)}")
    elif write_docs:
        img = os.path.join(os.path.dirname(os.path.abspath(args.docs)), "img")
        if args.peers:
            bench_peers_report.plot(res, os.path.join(img, "peers.png"))
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


def _shuffling_doc(benchmarks_doc: str) -> str:
    """docs/shuffling.md beside ``--docs`` (docs/benchmarks.md)."""
    return os.path.join(os.path.dirname(os.path.abspath(benchmarks_doc)), "shuffling.md")


if __name__ == "__main__":
    sys.exit(main())
