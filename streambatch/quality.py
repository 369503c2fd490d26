"""The shuffle-quality score used by the demo, the benchmarks and the docs.

On labels sorted into contiguous classes, the score is the mean over batches of
the total-variation distance between a batch's label histogram and the global
one, divided by the same mean for a full random permutation of the labels:
1.0 is as good as a full shuffle; an unshuffled pass over 10 sorted classes
scores about 12 at batch 256.

Memory is O(batches × classes), never O(rows): the score is measured inside the
same process as the loader whose peak RSS the benchmarks report, on datasets of
many GB.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["ShuffleScore", "shuffle_score"]


def _mean_tv(counts: np.ndarray, global_hist: np.ndarray) -> float:
    sizes = counts.sum(axis=1, keepdims=True)
    return float((0.5 * np.abs(counts / sizes - global_hist).sum(axis=1)).mean())


def permutation_batch_counts(class_counts: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-batch class counts of the first ``len(sizes)`` batches (of those sizes) of a
    uniformly random permutation of a population with ``class_counts`` — drawn exactly,
    class by class (multivariate hypergeometric over the batches' free slots), without
    materialising the population."""
    class_counts = np.asarray(class_counts, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    population = int(class_counts.sum())
    if int(sizes.sum()) > population:
        raise ValueError(f"the batches hold {int(sizes.sum())} rows, more than the population's {population}")
    # The rows past the batches form one more "batch" that takes the rest of each class.
    free = np.append(sizes, population - int(sizes.sum()))
    counts = np.empty((len(sizes), len(class_counts)), dtype=np.int64)
    for c, n in enumerate(class_counts.tolist()):
        drawn = rng.multivariate_hypergeometric(free, n, method="marginals")
        counts[:, c] = drawn[:-1]
        free -= drawn
    return counts


class ShuffleScore:
    """Accumulates batches of labels, then scores them against a full permutation.

    ``expected_counts`` (the whole dataset's class histogram) scores a partial pass
    against the whole dataset: a loader that has only seen the first classes of
    sorted data is not flattered by the histogram of what it has seen. Without it
    the batches seen are taken to be the whole dataset."""

    def __init__(self, num_classes: int, expected_counts: Sequence[int] | None = None) -> None:
        self.num_classes = num_classes
        self.expected = None if expected_counts is None else np.asarray(expected_counts, dtype=np.int64)
        if self.expected is not None and self.expected.shape != (num_classes,):
            raise ValueError(f"expected_counts must have {num_classes} entries, got {self.expected.shape}")
        self._counts = np.zeros((1024, num_classes), dtype=np.int64)
        self._batches = 0

    def add(self, labels: np.ndarray) -> None:
        if self._batches == len(self._counts):
            self._counts = np.concatenate([self._counts, np.zeros_like(self._counts)])
        self._counts[self._batches] = np.bincount(np.asarray(labels).reshape(-1), minlength=self.num_classes)
        self._batches += 1

    def score(self, seed: int = 12345) -> float:
        counts = self._counts[: self._batches]
        if not len(counts):
            raise ValueError("no batches to score")
        population = counts.sum(axis=0) if self.expected is None else self.expected
        global_hist = population / population.sum()
        reference = permutation_batch_counts(population, counts.sum(axis=1), np.random.default_rng(seed))
        return _mean_tv(counts, global_hist) / _mean_tv(reference, global_hist)


def shuffle_score(label_batches: Iterable[np.ndarray], num_classes: int = 10) -> float:
    """Score a pass given the label array of every batch, in order."""
    scorer = ShuffleScore(num_classes)
    for labels in label_batches:
        scorer.add(labels)
    return scorer.score()
