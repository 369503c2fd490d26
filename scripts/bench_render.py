"""The rendering half of ``scripts/bench.py``: tables, plots, the run history and
``docs/benchmarks.md`` from the results ``bench_measure.py`` (and the peer, scaling
and cold runs) produce. Measures nothing."""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_peers_report
import bench_scaling
from benchlib import (
    BATCH,
    FORMATS,
    RSS_SLACK,
    env_block,
    fmt_bytes,
)

# ----------------------------------------------------------------------------- data


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
            f"- Parquet/Zarr at {res['memory_limit']} score " + ", ".join(unit) + ": Parquet row groups "
            f"({res['chunk_rows']:,} rows here) are streamed in slices, as many at once as the budget holds "
            "streams; Zarr chunks are decoded whole, so the window holds the budget's worth of them "
            "(docs/shuffling.md)."
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
#: docs/shuffling.md holds the ``--quality`` table between these lines
QUALITY_START, QUALITY_END = "<!-- quality:start -->", "<!-- quality:end -->"


def render_quality_doc(res: dict, doc: str) -> None:
    """Put the ``--quality`` table of ``res`` into ``doc`` between the quality markers
    (appended as a new section the first time); the rest of the page is left as it is."""
    import bench_shuffle

    env_text = env_block(res["env"], res["command"], res.get("loadavg_end"), res.get("code_end"))
    block = (
        f"{QUALITY_START}\n<!-- generated by scripts/bench.py --quality; edit the script, not this block -->\n\n"
        f"{bench_shuffle.render_quality(res, env_text).rstrip()}\n\n{QUALITY_END}"
    )
    with open(doc) as f:
        text = f.read()
    start, end = text.find(QUALITY_START), text.find(QUALITY_END)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(QUALITY_END) :]
    else:
        text = text.rstrip("\n") + "\n\n## Measured: score vs memory_limit x layout\n\n" + block + "\n"
    with open(doc, "w") as f:
        f.write(text)


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
        "- The machine's read and gather limits beside streambatch: `python scripts/bench.py --limits` "
        "(`scripts/bench_limits.py`); the same rows in 1-8 shards: `scripts/bench_shards.py`; both below.",
        "",
    ]
    out += _hand_sections(doc)
    with open(doc, "w") as f:
        f.write("\n".join(out))


_HAND_MARKER = "<!-- measured by "


def _hand_sections(doc: str) -> list[str]:
    """The sections of ``doc`` pasted by hand (each opens with a ``<!-- measured by ...``
    comment under its heading), kept as they are when the rest is rendered again."""
    try:
        with open(doc) as f:
            lines = f.read().split("\n")
    except OSError:
        return []
    first = next((i for i, line in enumerate(lines) if line.startswith(_HAND_MARKER)), None)
    if first is None:
        return []
    heading = max((i for i in range(first) if lines[i].startswith("## ")), default=first)
    return lines[heading:]


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
        bench_peers_report.versions_line(peers),
        f"- Peer run wall time: {peers['seconds'] / 60:.1f} min (with any one-off preparation)",
        "",
        bench_peers_report.tables(peers),
        "",
    ]
    out += ["![peers](img/peers.png)", ""] if os.path.exists(os.path.join(img, "peers.png")) else []
    return [*out, "### Reading", "", *bench_peers_report.reading(peers), ""]


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
        "- Zarr chunks are decoded whole: with chunks of U rows and a budget of B rows the window holds at most "
        "~B/U of them. Parquet row groups are streamed, so the window mixes as many row groups as the budget "
        "holds open streams (docs/shuffling.md). Either way a rewrite with `streambatch convert --shuffle` "
        "(small units, globally permuted) scores ~1.0 at any budget."
    )
    return lines
