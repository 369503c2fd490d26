"""The report of the peer benchmark (``bench_peers.py``): its tables, the reading beside
them in docs/benchmarks.md, the versions line and the plot. Measures nothing."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_peers import GOOD_SCORE, IN_RAM, PEERS, PREP_OF, SHORT
from benchlib import (
    BATCH,
    NUM_CLASSES,
    fmt_bytes,
)

# ----------------------------------------------------------------------------- report


def _rate(r: dict) -> float | None:
    return r["rows"] / r["seconds"] if r.get("seconds") else None


def _fmt_rate(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v / 1e6:.2f} M" if v >= 1e5 else f"{v / 1e3:.1f} k"


def _s(v) -> str:
    if v is None:
        return "—"
    return f"{v * 1e3:.1f} ms" if v < 0.01 else f"{v * 1e3:,.0f} ms" if v < 1 else f"{v:,.1f} s"


def _prep_cell(res: dict, key: str) -> str:
    kind = PREP_OF.get(key)
    if key == "numpy-perm":
        return "—"
    if kind is None:
        return "—"
    p = res["prep"].get(kind, {})
    if "error" in p:
        return "failed"
    peak = f", peak RSS {fmt_bytes(p['peak_rss_bytes'])}" if p.get("peak_rss_bytes") else ""
    return f"{p['seconds']:,.0f} s{peak} (made {p['made']})"


def versions_line(res: dict) -> str:
    v = res.get("versions", {})
    parts = [f"torch {v.get('torch') or 'not installed'}", f"datasets {v.get('datasets') or 'not installed'}"]
    if v.get("huggingface-hub"):
        parts.append(f"huggingface-hub {v['huggingface-hub']}")
    m = v.get("mosaic")
    if m and "error" not in m:
        parts.append(
            f"mosaicml-streaming {m.get('mosaicml-streaming')} in its own venv (`<data-dir>/venvs/mosaic`: "
            f"torch {m.get('torch')}, torchvision {m.get('torchvision')}, numpy {m.get('numpy')}, "
            f"Python {m.get('python')})"
        )
    else:
        parts.append("mosaicml-streaming not run")
    return "- Peers: " + ", ".join(parts)


def _runs_text(res: dict) -> str:
    n = res.get("repeat", 1)
    if n == 1:
        return "one run each"
    return (
        f"{n} runs each, round-robin; shown: the run with the median rows/s (its setup, first batch and score), "
        "the range of rows/s over the runs in brackets, and the highest peak RSS of the runs"
    )


def _range(r: dict) -> str:
    rates = r.get("rates") or []
    return f" ({_fmt_rate(min(rates))}–{_fmt_rate(max(rates))})" if len(rates) > 1 else ""


def tables(res: dict) -> str:
    out = [
        f"{res['rows']:,} rows × (float32[128] + int64 label) = {res['data_bytes'] / 1e9:.2f} GB, labels sorted in "
        f"{NUM_CLASSES} classes; batch {BATCH}; warm page cache; each peer in its own fresh process, "
        f"{_runs_text(res)}; "
        "every peer hands NumPy arrays to the same consumer (torch tensors via `.numpy()`). "
        "*Setup* = construct → ready to iterate (for the in-memory peers it includes loading the data into RAM); "
        "*first batch* = from the start of iteration to the first batch in hand; *rows/s* = rows consumed ÷ "
        f"iteration time (setup excluded). Peers still running after {res['peer_seconds']:g} s of iteration are "
        "stopped there (*partial*): rows/s is over the rows consumed and the score is taken against the full "
        "dataset's class histogram. *Peak RSS* is the peer process's `ru_maxrss`; where a DataLoader has worker "
        "processes, the peak RSS of its descendant processes (the sum of each one's `VmHWM`, read from `/proc` while "
        "they run) is shown separately — it counts the page-cache pages of a memory-mapped file in every process "
        "that touched them, "
        "and pages shared with the parent after `fork`, so it over-states what the workers add. Likewise a process "
        "that memory-maps the data counts the file pages it touched (page cache, reclaimable) in its own RSS. "
        "*Preparation* is the one-off conversion the peer needs, cached under the data dir.\n",
        "| peer | preparation | setup | first batch | rows/s | rows | peak RSS | workers' peak RSS | score | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in res["peers"]:
        label = PEERS[key][0]
        r = res["results"].get(key, {"error": "not run"})
        if "error" in r:
            what = "not installed" if r.get("not_installed") else "error"
            out.append(f"| {label} | {_prep_cell(res, key)} | | | {what} | | | | | `{r['error'][:200]}` |")
            continue
        notes = []
        if r.get("partial"):
            notes.append(f"**partial**: stopped after {res['peer_seconds']:g} s ({r['rows'] / r['total_rows']:.0%})")
        if key == "pyarrow-rowgroups":
            notes.append(
                f"whole row groups of {res['chunk_rows']:,} rows handed on (not cut into {BATCH}-row batches); "
                "setup included in first batch"
            )
        if key == "numpy-perm":
            notes.append("setup = `np.load` into RAM")
        if key == "torch-tensor":
            notes.append("setup = `np.load` into RAM")
        if key.startswith("sb-"):
            notes.append(f"memory_limit {res['memory_limit']}, window {r['window_pieces']} pieces")
        if key == "mosaic":
            block = r.get("shuffle_block_size")
            notes.append(
                f"shuffle_algo {r.get('shuffle_algo')}" + (f", block {block:,}" if block else ", default block")
            )
        if key == "hf-iterable":
            notes.append("Arrow files written by `Dataset.from_dict(...).save_to_disk`, read by `load_from_disk`")
        if (r.get("rss_file_end_bytes") or 0) > (128 << 20):
            notes.append(
                f"RSS at the end: {fmt_bytes(r['rss_anon_end_bytes'])} anonymous + "
                f"{fmt_bytes(r['rss_file_end_bytes'])} file-backed (memory-mapped data and libraries)"
            )
        vm = r.get("vmhwm_bytes")
        if vm and abs(vm - r["peak_rss_bytes"]) > (32 << 20):
            notes.append(f"VmHWM {fmt_bytes(vm)}")
        workers = (
            f"{fmt_bytes(r['workers_peak_rss_bytes'])} ({r['workers_seen']} proc.)"
            if "workers_peak_rss_bytes" in r
            else "—"
        )
        score = f"{r['score']:.2f}" if r.get("score") is not None else "— (no shuffle)"
        out.append(
            f"| {label} | {_prep_cell(res, key)} | {_s(r.get('setup_s'))} | {_s(r.get('first_batch_s'))} "
            f"| {_fmt_rate(_rate(r))}{_range(r)}{' (partial)' if r.get('partial') else ''} | {r['rows']:,} "
            f"| {fmt_bytes(r['peak_rss_bytes'])} | {workers} | {score} | {'; '.join(notes)} |"
        )
    return "\n".join(out)


def reading(res: dict) -> list[str]:
    """Statements computed from the numbers."""
    R = {k: r for k, r in res["results"].items() if "error" not in r and r.get("seconds")}
    lines = []
    name = SHORT.get
    shuffled = {k: r for k, r in R.items() if r.get("score") is not None}
    sb = {k: r for k, r in shuffled.items() if k.startswith("sb-")}
    good = {k: r for k, r in shuffled.items() if r["score"] <= GOOD_SCORE}
    sb_good = {k: r for k, r in good.items() if k.startswith("sb-")}
    if sb_good:
        best_sb = max(sb_good, key=lambda k: _rate(sb_good[k]))
        rate_sb = _rate(sb_good[best_sb])
        faster = sorted(
            (k for k, r in good.items() if not k.startswith("sb-") and _rate(r) > rate_sb),
            key=lambda k: -_rate(good[k]),
        )
        lines.append(
            f"- Fastest streambatch configuration that shuffles well (score ≤ {GOOD_SCORE}): {name(best_sb)} at "
            f"{_fmt_rate(rate_sb)} rows/s (score {sb_good[best_sb]['score']:.2f}). "
            + (
                "Well-shuffling peers faster than it: "
                + ", ".join(f"{name(k)} ({_fmt_rate(_rate(good[k]))})" for k in faster)
                + "."
                if faster
                else "No well-shuffling peer was faster."
            )
        )
        streaming = {k: r for k, r in good.items() if not k.startswith("sb-") and k not in IN_RAM}
        if streaming:
            best = max(streaming, key=lambda k: _rate(streaming[k]))
            lines.append(
                "- Among the peers that do not load the whole dataset into RAM first, the fastest that shuffles well "
                f"is {name(best)} at {_fmt_rate(_rate(streaming[best]))} rows/s "
                f"(score {streaming[best]['score']:.2f}, peak RSS {fmt_bytes(streaming[best]['peak_rss_bytes'])}); "
                f"{name(best_sb)} runs at {rate_sb / _rate(streaming[best]):.2f}× that."
            )
    inram = [k for k in IN_RAM if k in R]
    if inram and sb:
        lines.append(
            "- Memory: "
            + ", ".join(f"{name(k)} peaks at {fmt_bytes(R[k]['peak_rss_bytes'])}" for k in inram)
            + f" (the data is {fmt_bytes(res['data_bytes'])}); "
            + f"streambatch at memory_limit {res['memory_limit']} peaks at "
            + ", ".join(f"{fmt_bytes(r['peak_rss_bytes'])} ({k[3:]})" for k, r in sb.items())
            + "."
        )
    bad = [k for k, r in shuffled.items() if r["score"] > GOOD_SCORE]
    if bad:
        lines.append(
            "- Shuffle quality: "
            + ", ".join(f"{name(k)} scores {shuffled[k]['score']:.2f}" for k in bad)
            + " (1.0 = a full permutation; an unshuffled pass ≈ 12)"
            + (
                "; the others score {:.2f}–{:.2f}.".format(
                    min(r["score"] for k, r in shuffled.items() if k not in bad),
                    max(r["score"] for k, r in shuffled.items() if k not in bad),
                )
                if len(bad) < len(shuffled)
                else "."
            )
        )
    partial = [k for k, r in R.items() if r.get("partial")]
    if partial:
        lines.append(
            "- Stopped after "
            + f"{res['peer_seconds']:g} s (their rows/s and score cover only the rows consumed): "
            + ", ".join(f"{name(k)} ({R[k]['rows'] / R[k]['total_rows']:.0%} of the epoch)" for k in partial)
            + "."
        )
    w = [(k, R[k]) for k in R if "workers_peak_rss_bytes" in R[k]]
    for k, r in w:
        base = k.replace("-w2", "-w0")
        if base in R and base != k:
            lines.append(
                f"- {name(k)}: {_rate(r) / _rate(R[base]):.2f}× the rows/s of the same loader with 0 workers "
                f"(on {res.get('env', {}).get('cores', '?')} cores)."
            )
    preps = [(k, p) for k, p in res["prep"].items() if k in ("convert", "hf", "mds") and "seconds" in p]
    if preps:
        what = {"convert": "`streambatch convert --shuffle`", "hf": "the HF Arrow dataset", "mds": "MDS (`MDSWriter`)"}
        lines.append("- One-off preparation: " + ", ".join(f"{what[k]} {p['seconds']:,.0f} s" for k, p in preps) + ".")
    failed = [k for k, r in res["results"].items() if "error" in r]
    if failed:
        lines.append(
            "- Not measured: " + "; ".join(f"{name(k)} — {res['results'][k]['error'][:160]}" for k in failed) + "."
        )
    return lines


def plot(res: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"baseline": "0.55", "torch": "C1", "hf": "C2", "mosaic": "C4", "streambatch": "C0"}
    keys = [k for k in res["peers"] if (_rate(res["results"].get(k, {})) or 0) > 0]
    if not keys:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 0.42 * len(keys) + 1.6), dpi=110, sharey=True)
    ys = list(range(len(keys)))[::-1]
    for y, k in zip(ys, keys):
        r = res["results"][k]
        c = colors[PEERS[k][1]]
        hatch = "//" if r.get("partial") else None
        a1.barh(y, _rate(r), color=c, hatch=hatch, edgecolor="k" if hatch else None, lw=0.5)
        score = "no shuffle" if r.get("score") is None else f"score {r['score']:.2f}"
        a1.text(_rate(r) * 1.08, y, score, va="center", fontsize=7)
        a2.barh(y, r["peak_rss_bytes"] / 2**20, color=c)
        if r.get("workers_peak_rss_bytes"):
            a2.barh(y, r["workers_peak_rss_bytes"] / 2**20, left=r["peak_rss_bytes"] / 2**20, color=c, alpha=0.35)
    a1.set_xscale("log")
    a1.set_yticks(ys)
    a1.set_yticklabels([SHORT[k] for k in keys], fontsize=8)
    lo = min(_rate(res["results"][k]) for k in keys)
    hi = max(_rate(res["results"][k]) for k in keys)
    a1.set_xlim(lo / 2, hi * 6)
    a1.set_xlabel("rows/s (log scale; hatched = partial epoch)")
    a2.set_xlabel("peak RSS, MiB (light = DataLoader workers' sum)")
    a2.axvline(res["data_bytes"] / 2**20, color="k", ls=":", lw=0.8)
    a2.text(res["data_bytes"] / 2**20, ys[0] + 0.6, " data size", fontsize=7, va="bottom")
    for a in (a1, a2):
        a.grid(True, axis="x", alpha=0.3)
    fig.suptitle(
        f"Peers: {res['rows']:,} rows ({res['data_bytes'] / 1e9:.2f} GB), batch {BATCH}, shuffled, warm cache",
        fontsize=10,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(png), exist_ok=True)
    fig.savefig(png)
    plt.close(fig)
