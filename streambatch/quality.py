"""The shuffle-quality score used by the demo, the benchmarks and the docs.

On labels sorted into contiguous classes, the score is the mean over batches of
the total-variation distance between a batch's label histogram and the global
one, divided by the same mean for a full random permutation of the labels:
1.0 is as good as a full shuffle; an unshuffled pass over 10 sorted classes
scores about 12 at batch 256.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["ShuffleScore", "mean_tv_distance", "shuffle_score"]


def mean_tv_distance(batches: Iterable[np.ndarray], num_classes: int, global_hist: np.ndarray) -> float:
    """Mean total-variation distance of each batch's label histogram to ``global_hist``."""
    total, count = 0.0, 0
    for labels in batches:
        hist = np.bincount(labels, minlength=num_classes) / len(labels)
        total += 0.5 * float(np.abs(hist - global_hist).sum())
        count += 1
    return total / max(count, 1)


class ShuffleScore:
    """Accumulates batches of labels, then scores them against a full permutation."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._tv_sum = 0.0
        self._batches = 0
        self._sizes: list[int] = []
        self._hist = np.zeros(num_classes, dtype=np.int64)
        self._per_batch: list[np.ndarray] = []

    def add(self, labels: np.ndarray) -> None:
        counts = np.bincount(np.asarray(labels).reshape(-1), minlength=self.num_classes)
        self._per_batch.append(counts)
        self._hist += counts

    def score(self, seed: int = 12345) -> float:
        counts = np.stack(self._per_batch)
        sizes = counts.sum(axis=1)
        global_hist = self._hist / self._hist.sum()
        tv = 0.5 * np.abs(counts / sizes[:, None] - global_hist).sum(axis=1)
        observed = float(tv.mean())
        labels = np.repeat(np.arange(self.num_classes), self._hist)
        permuted = np.random.default_rng(seed).permutation(labels)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        reference = mean_tv_distance(
            (permuted[a:b] for a, b in zip(bounds[:-1], bounds[1:])), self.num_classes, global_hist
        )
        return observed / reference


def shuffle_score(label_batches: Iterable[np.ndarray], num_classes: int = 10) -> float:
    """Score a pass given the label array of every batch, in order."""
    scorer = ShuffleScore(num_classes)
    for labels in label_batches:
        scorer.add(labels)
    return scorer.score()
