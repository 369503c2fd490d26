"""Draw docs/img/shuffle_order.png: emitted position vs source row for a full
permutation, streambatch's window shuffle at two budgets, and a plain
shuffle buffer of the same size, on the same synthetic 200k-row .npy dataset."""

from __future__ import annotations

import os
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import streambatch as sb

ROWS = 200_000


def main(out: str = "docs/img/shuffle_order.png") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        x = np.zeros((ROWS, 64), np.float32)
        np.save(os.path.join(tmp, "x.npy"), x)
        np.save(os.path.join(tmp, "row.npy"), np.arange(ROWS, dtype=np.int64))
        panels = [("full random permutation", np.random.default_rng(0).permutation(ROWS))]
        for limit in ("2MiB", "13MiB"):
            loader = sb.Loader(tmp, 256, memory_limit=limit, seed=0)
            order = np.concatenate([b["row"] for b in loader])
            window = loader.budget.window_pieces
            share = limit_share(limit, loader)
            panels.append((f"streambatch, memory_limit={limit} ({share:.0%} of data, window {window} pieces)", order))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), sharey=True)
    for ax, (title, order) in zip(axes, panels):
        ax.scatter(np.arange(ROWS)[::40], order[::40], s=0.3, alpha=0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("emitted position")
    axes[0].set_ylabel("source row")
    fig.suptitle("Where each emitted row comes from (200k rows, every 40th shown)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def limit_share(limit: str, loader: sb.Loader) -> float:
    return sb.parse_bytes(limit) / loader.dataset.nbytes


if __name__ == "__main__":
    main(*sys.argv[1:])
