"""Scaling and cold-cache benchmarks, run through ``scripts/bench.py``.

``--scaling``: one shuffled epoch of datasets of 1, 2, 4 and 8 GB per format at one
fixed ``memory_limit``, each in a fresh process. Peak RSS must stay flat as the data
grows (the memory contract); rows/s should too. The hand-written in-memory NumPy
permutation runs on the same ``.npy`` shards as the contrast: its RSS grows with
the data. Datasets are 1, 2, 4 and 8 shards, each a byte-for-byte copy of the
standard 2 M-row (~1 GB) dataset in its own files (own inodes, so every byte is
read and cached separately; the class-sorted labels repeat per shard).

``--cold``: the same 2 M-row datasets read with an empty page cache (``echo 3 >
/proc/sys/vm/drop_caches`` before every configuration; needs root and refuses to
run otherwise) against ``dd bs=16M`` of the same files: how close a shuffled epoch
gets to the speed of a plain sequential read of the disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import benchlib
from benchlib import (
    BATCH,
    ROW_BYTES,
    RSS_SLACK,
    aggregate,
    dir_bytes,
    ensure_data,
    env_block,
    files_under,
    fmt_bytes,
    run_config,
)

SIZES = (1, 2, 4, 8)  # shards of ~1 GB
BASE_ROWS = 2_000_000


# ----------------------------------------------------------------------------- data
def warm(paths: list[str]) -> None:
    """Read every file again: other runs (or another format's data) may have evicted them."""
    for p in paths:
        benchlib.warm(p, again=True)


def scaling_shards(data_dir: str, fmt: str, count: int, log) -> list[str]:
    """``count`` copies of the standard dataset, each in its own directory; made once."""
    base = ensure_data(data_dir, fmt, BASE_ROWS, 8192, log)
    benchlib.warm(base)
    leaf = os.path.basename(base)
    shards = []
    for i in range(count):
        parent = os.path.join(data_dir, "scaling", fmt, f"shard-{i}")
        target = os.path.join(parent, leaf)
        marker = os.path.join(parent, ".done")
        if not os.path.exists(marker):
            shutil.rmtree(parent, ignore_errors=True)
            os.makedirs(parent)
            t0 = time.perf_counter()
            (shutil.copytree if os.path.isdir(base) else shutil.copyfile)(base, target)
            with open(marker, "w") as f:
                f.write(base + "\n")
            log(f"  copied {fmt} shard {i} in {time.perf_counter() - t0:.1f} s")
        shards.append(target)
    return shards


# ----------------------------------------------------------------------------- workers (fresh processes)
def _npy_header(path: str):

    with open(path, "rb") as f:
        return _skip_header(f)[::2]


def _skip_header(f):
    """(shape, fortran_order, dtype) of an open ``.npy`` file, leaving it at the data."""
    import numpy as np

    fmt = np.lib.format
    major, _ = fmt.read_magic(f)
    return fmt.read_array_header_1_0(f) if major == 1 else fmt.read_array_header_2_0(f)


def _read_npy_into(path: str, out) -> None:
    """Read a C-order ``.npy`` file straight into ``out`` (no memory map: its pages would count as RSS)."""
    import numpy as np

    with open(path, "rb", buffering=0) as f:
        _skip_header(f)
        view = memoryview(out.reshape(-1).view(np.uint8))
        got = 0
        while got < len(view):
            k = f.readinto(view[got:])
            if not k:
                raise EOFError(f"{path}: {got} of {len(view)} bytes")
            got += k


def work_permutation_shards(paths: list[str]) -> dict:
    """In-memory NumPy permutation over ``.npy`` shards: load them all into one
    preallocated array pair, then ``x[perm[i:i+256]]`` per batch."""
    import numpy as np
    from benchlib import _Consumer

    t0 = time.perf_counter()
    heads = [_npy_header(os.path.join(p, "x.npy")) for p in paths]
    n = sum(shape[0] for shape, _ in heads)
    x = np.empty((n, *heads[0][0][1:]), heads[0][1])
    label = np.empty(n, np.int64)
    at = 0
    for p, (shape, _) in zip(paths, heads):
        _read_npy_into(os.path.join(p, "x.npy"), x[at : at + shape[0]])
        _read_npy_into(os.path.join(p, "label.npy"), label[at : at + shape[0]])
        at += shape[0]
    load_s = time.perf_counter() - t0
    consumer = _Consumer(score=True)
    t1 = time.perf_counter()
    perm = np.random.default_rng(0).permutation(n)
    for i in range(0, n, BATCH):
        idx = perm[i : i + BATCH]
        consumer(x[idx], label[idx], t1)
    return {
        "rows": consumer.rows,
        "seconds": time.perf_counter() - t1,
        "load_s": load_s,
        "first_batch_s": consumer.first,
        "score": consumer.scorer.score(),
    }


def work_dd(paths: list[str]) -> dict:
    """``dd if=FILE of=/dev/null bs=16M`` over every file of the dataset, in order."""
    files = [f for p in paths for f in files_under(p)]
    total = sum(os.path.getsize(f) for f in files)
    t0 = time.perf_counter()
    for f in files:
        subprocess.run(["dd", f"if={f}", "of=/dev/null", "bs=16M", "status=none"], check=True)
    return {"rows": 0, "bytes": total, "seconds": time.perf_counter() - t0, "first_batch_s": None}


WORKERS = {"permutation_shards": work_permutation_shards, "dd": work_dd}


def _streambatch_spec(paths: list[str], fmt: str, limit: str, shuffle: bool = True) -> dict:
    return {
        "module": "bench_measure",
        "kind": "streambatch",
        "path": paths,
        "fmt": fmt,
        "memory_limit": limit,
        "shuffle": shuffle,
    }


# ----------------------------------------------------------------------------- --scaling
def scaling_run(args, log) -> dict:
    from streambatch import parse_bytes

    sizes = args.scaling_sizes
    limit = args.memory_limit
    shards = {f: scaling_shards(args.data_dir, f, max(sizes), log) for f in args.formats}
    series = [(f, "streambatch") for f in args.formats]
    if "npy" in args.formats:
        series.append(("npy", "permutation"))
    runs: dict[str, list[dict]] = {}
    for rep in range(args.repeat):
        for f, kind in series:
            for k in sizes:
                paths = shards[f][:k]
                warm(paths)
                if kind == "streambatch":
                    spec = _streambatch_spec(paths, f, limit)
                else:
                    spec = {"module": "bench_scaling", "kind": "permutation_shards", "paths": paths}
                r = run_config(spec, args.timeout)
                runs.setdefault(f"{f}|{kind}|{k}", []).append(r)
                desc = r.get("error") or (
                    f"{r['rows'] / r['seconds'] / 1e6:.2f} M rows/s, peak {fmt_bytes(r['peak_rss_bytes'])}"
                )
                log(f"  [{rep + 1}/{args.repeat}] {f:8s} {kind:12s} {k} shard(s): {desc}")
    return {
        "kind": "scaling",
        "sizes": list(sizes),
        "shard_bytes": {f: dir_bytes(s[0]) for f, s in shards.items()},
        "shard_rows": BASE_ROWS,
        "memory_limit": limit,
        "memory_limit_bytes": parse_bytes(limit),
        "repeat": args.repeat,
        "series": series,
        "results": {key: aggregate(rs) for key, rs in runs.items()},
        "raw": runs,
    }


def _series_label(f: str, kind: str) -> str:
    return f"streambatch {f}" if kind == "streambatch" else "in-memory NumPy permutation (npy)"


def scaling_tables(res: dict) -> str:
    sizes = res["sizes"]
    bound = res["memory_limit_bytes"] + RSS_SLACK
    gb = {k: k * BASE_ROWS * ROW_BYTES / 1e9 for k in sizes}
    out = [
        f"Fixed memory_limit {res['memory_limit']} (documented bound: limit + 300 MiB = {fmt_bytes(bound)}); "
        f"batch {BATCH}; {res['repeat']} run(s) per cell, median rows/s, max peak RSS; warm page cache.\n",
        "| series | "
        + " | ".join(f"{gb[k]:.1f} GB ({k * BASE_ROWS / 1e6:g} M rows)" for k in sizes)
        + " | RSS spread |",
        "|---|" + "---|" * (len(sizes) + 1),
    ]
    for f, kind in res["series"]:
        cells, rss = [], []
        for k in sizes:
            r = res["results"].get(f"{f}|{kind}|{k}", {"error": "not run"})
            if "error" in r:
                cells.append("error")
                continue
            rss.append(r["peak_rss_bytes"])
            flag = " **(over bound)**" if kind == "streambatch" and r["peak_rss_bytes"] > bound else ""
            score = f" · score {r['score']:.2f}" if "score" in r else ""
            cells.append(f"{r['rows_per_s'] / 1e6:.2f} M rows/s · {fmt_bytes(r['peak_rss_bytes'])}{flag}{score}")
        spread = f"{(max(rss) - min(rss)) / 2**20:,.0f} MiB" if rss else "—"
        out.append(f"| {_series_label(f, kind)} | " + " | ".join(cells) + f" | {spread} |")
    return "\n".join(out)


def scaling_reading(res: dict) -> list[str]:
    lines = []
    sizes = res["sizes"]
    bound = res["memory_limit_bytes"] + RSS_SLACK
    for f, kind in res["series"]:
        shard_gb = res["shard_bytes"][f] / 1e9
        rs = [res["results"].get(f"{f}|{kind}|{k}", {}) for k in sizes]
        if not all("rows_per_s" in r for r in rs):
            lines.append(f"- {_series_label(f, kind)}: not every size ran (see the table).")
            continue
        rss = [r["peak_rss_bytes"] for r in rs]
        rate = [r["rows_per_s"] for r in rs]
        s = (
            f"- {_series_label(f, kind)}: peak RSS {fmt_bytes(min(rss))}–{fmt_bytes(max(rss))} from "
            f"{sizes[0] * shard_gb:.1f} to {sizes[-1] * shard_gb:.1f} GB on disk "
            f"({(max(rss) - min(rss)) / 2**20:,.0f} MiB apart); "
            f"rows/s {min(rate) / 1e6:.2f}–{max(rate) / 1e6:.2f} M ({rate[-1] / rate[0]:.2f}× at the largest size "
            "vs the smallest)"
        )
        if kind == "streambatch":
            s += "; within the bound at every size" if max(rss) <= bound else "; **over the bound at some size**"
        lines.append(s + ".")
    return lines


def scaling_plot(res: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = res["sizes"]
    gb = [k * BASE_ROWS * ROW_BYTES / 1e9 for k in sizes]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2), dpi=110)
    for i, (f, kind) in enumerate(res["series"]):
        rs = [res["results"].get(f"{f}|{kind}|{k}", {}) for k in sizes]
        pts = [(g, r) for g, r in zip(gb, rs) if "rows_per_s" in r]
        if not pts:
            continue
        style = (
            {"marker": "o", "color": f"C{i}"} if kind == "streambatch" else {"marker": "x", "color": "k", "ls": "--"}
        )
        label = _series_label(f, kind)
        a1.plot([g for g, _ in pts], [r["peak_rss_bytes"] / 2**30 for _, r in pts], label=label, **style)
        a2.plot([g for g, _ in pts], [r["rows_per_s"] / 1e6 for _, r in pts], label=label, **style)
    bound = (res["memory_limit_bytes"] + RSS_SLACK) / 2**30
    a1.axhline(bound, color="red", lw=0.8, ls=":", label=f"bound: memory_limit {res['memory_limit']} + 300 MiB")
    a1.legend(fontsize=7)
    for ax, ylabel, title in (
        (a1, "peak RSS (GiB)", "Peak RSS vs dataset size"),
        (a2, "M rows/s (shuffled epoch)", "Throughput vs dataset size"),
    ):
        ax.set_xlabel("dataset size (GB)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        ax.set_xticks(gb, [f"{g:.1f}" for g in gb])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(png), exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


# ----------------------------------------------------------------------------- --cold
def drop_caches() -> None:
    """Empty the page cache; raises PermissionError with what is needed when refused."""
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        raise PermissionError(
            f"--cold needs to write /proc/sys/vm/drop_caches (root, not in a read-only container): {exc}"
        ) from exc


def cold_run(args, log) -> dict:
    drop_caches()  # fail early, before generating anything
    paths = {f: ensure_data(args.data_dir, f, BASE_ROWS, 8192, log) for f in args.formats}
    configs = []
    for f in args.formats:
        configs.append((f"{f}|dd", {"module": "bench_scaling", "kind": "dd", "paths": [paths[f]]}))
        configs.append((f"{f}|sb-shuffle", _streambatch_spec([paths[f]], f, args.memory_limit)))
        configs.append((f"{f}|sb-noshuffle", _streambatch_spec([paths[f]], f, args.memory_limit, shuffle=False)))
    runs: dict[str, list[dict]] = {}
    for rep in range(args.repeat):
        for key, spec in configs:
            drop_caches()
            r = run_config(spec, args.timeout)
            runs.setdefault(key, []).append(r)
            f = key.split("|")[0]
            if "error" not in r and r.get("rows"):
                r["bytes_per_s_file"] = dir_bytes(paths[f]) / r["seconds"]
            desc = r.get("error") or (
                f"{r['bytes'] / r['seconds'] / 1e9:.2f} GB/s"
                if r.get("bytes")
                else f"{r['rows'] / r['seconds'] / 1e6:.2f} M rows/s = {r['bytes_per_s_file'] / 1e9:.2f} GB/s of file"
            )
            log(f"  [{rep + 1}/{args.repeat}] cold {key:20s} {desc}")
    return {
        "kind": "cold",
        "rows": BASE_ROWS,
        "memory_limit": args.memory_limit,
        "repeat": args.repeat,
        "formats": list(args.formats),
        "file_bytes": {f: dir_bytes(p) for f, p in paths.items()},
        "results": {key: aggregate(rs) for key, rs in runs.items()},
        "raw": runs,
    }


def cold_tables(res: dict) -> str:
    out = [
        f"Page cache emptied (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every configuration; "
        f"{res['rows']:,} rows per format, memory_limit {res['memory_limit']}, batch {BATCH}, "
        f"{res['repeat']} run(s) each, medians. GB/s counts the dataset's file bytes over the whole epoch.\n",
        "| format | file size | `dd bs=16M` | streambatch, shuffle | ÷ dd | streambatch, no shuffle | ÷ dd | "
        "peak RSS (shuffle) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in res["formats"]:
        dd = res["results"].get(f"{f}|dd", {})
        sh = res["results"].get(f"{f}|sb-shuffle", {})
        ns = res["results"].get(f"{f}|sb-noshuffle", {})
        ddr = dd.get("bytes_per_s")

        def cell(r, ddr=ddr):
            if "bytes_per_s_file" not in r:
                return ["error: " + r.get("error", "not run")[:80], "—"]
            ratio = f"{r['bytes_per_s_file'] / ddr:.2f}" if ddr else "—"
            return [f"{r['bytes_per_s_file'] / 1e9:.2f} GB/s ({r['rows_per_s'] / 1e6:.2f} M rows/s)", ratio]

        out.append(
            f"| {f} | {res['file_bytes'][f] / 1e9:.2f} GB | "
            + (f"{ddr / 1e9:.2f} GB/s" if ddr else "error")
            + " | "
            + " | ".join(cell(sh) + cell(ns))
            + f" | {fmt_bytes(sh['peak_rss_bytes']) if 'peak_rss_bytes' in sh else '—'} |"
        )
    return "\n".join(out)


def cold_reading(res: dict) -> list[str]:
    lines = []
    for f in res["formats"]:
        dd = res["results"].get(f"{f}|dd", {}).get("bytes_per_s")
        sh = res["results"].get(f"{f}|sb-shuffle", {}).get("bytes_per_s_file")
        ns = res["results"].get(f"{f}|sb-noshuffle", {}).get("bytes_per_s_file")
        if not (dd and sh and ns):
            lines.append(f"- {f}: not every configuration ran (see the table).")
            continue
        lines.append(
            f"- {f}: a shuffled epoch from a cold cache reads the files at {sh / dd:.2f}× the speed of `dd`, "
            f"an unshuffled one at {ns / dd:.2f}×."
        )
    beats = [
        f
        for f in res["formats"]
        if res["results"].get(f"{f}|sb-noshuffle", {}).get("bytes_per_s_file", 0)
        > res["results"].get(f"{f}|dd", {}).get("bytes_per_s", float("inf"))
    ]
    lines.append(
        "- `dd` is one sequential stream; streambatch keeps several reads in flight (one per reader thread)"
        + (f", which is how an unshuffled epoch beats it here ({', '.join(beats)})" if beats else "")
        + ". A shuffled epoch reads the same bytes in pieces spread over the window (tens of KB for `.npy`, "
        "whole row groups / chunks for Parquet and Zarr), so from a cold cache it pays for seeks as well as bytes."
    )
    return lines


# ----------------------------------------------------------------------------- docs sections
def docs_sections(scaling: dict | None, cold: dict | None, img: str) -> list[str]:
    """The Markdown of the scaling and cold-cache sections of docs/benchmarks.md; writes their plot."""
    out = ["## Scaling: peak RSS and rows/s vs dataset size", ""]
    if scaling:
        scaling_plot(scaling, os.path.join(img, "scaling.png"))
        out += [
            env_block(scaling["env"], scaling["command"], scaling.get("loadavg_end"), scaling.get("code_end")),
            "",
            scaling_tables(scaling),
            "",
            "![peak RSS and rows/s vs dataset size](img/scaling.png)",
            "",
            "### Reading",
            "",
            *scaling_reading(scaling),
            "",
        ]
    else:
        out += ["_Not run yet: `python scripts/bench.py --scaling`._", ""]
    out += ["## Cold page cache vs `dd`", ""]
    if cold:
        out += [
            env_block(cold["env"], cold["command"], cold.get("loadavg_end"), cold.get("code_end")),
            "",
            cold_tables(cold),
            "",
            "### Reading",
            "",
            *cold_reading(cold),
            "",
        ]
    else:
        out += ["_Not run yet: `python scripts/bench.py --cold` (as root: it empties the page cache)._", ""]
    return out
