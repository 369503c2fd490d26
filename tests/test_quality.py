"""The shuffle score: 1.0 for a full permutation, ~12 for an unshuffled pass over
10 sorted classes, honest on partial passes, and light enough to run inside the
process whose peak RSS a benchmark reports."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from streambatch.quality import ShuffleScore, permutation_batch_counts, shuffle_score

SORTED = np.repeat(np.arange(10), 20_000)


def batches(labels: np.ndarray, size: int = 256):
    return (labels[i : i + size] for i in range(0, len(labels), size))


def test_a_full_permutation_scores_one_and_a_sorted_pass_about_twelve():
    permuted = np.random.default_rng(3).permutation(SORTED)
    assert shuffle_score(batches(permuted)) == pytest.approx(1.0, abs=0.05)
    assert 10 < shuffle_score(batches(SORTED)) < 14


def test_a_partial_pass_is_scored_against_the_whole_dataset_when_told_its_classes():
    # the first 20 % of a buffer-shuffled sorted dataset: classes 0 and 1, well mixed
    head = np.random.default_rng(0).permutation(SORTED[:40_000])
    flattered = ShuffleScore(10)
    honest = ShuffleScore(10, expected_counts=np.bincount(SORTED))
    for labels in batches(head):
        flattered.add(labels)
        honest.add(labels)
    assert flattered.score() == pytest.approx(1.0, abs=0.1)
    assert honest.score() > 10


def test_expected_counts_must_have_one_entry_per_class():
    with pytest.raises(ValueError, match="10 entries"):
        ShuffleScore(10, expected_counts=[1, 2, 3])


def test_scoring_needs_memory_in_batches_not_rows():
    scorer = ShuffleScore(10, expected_counts=[400_000] * 10)  # 4 M rows, 15,625 batches
    label = np.zeros(256, dtype=np.int64)
    for _ in range(15_625):
        scorer.add(label)
    tracemalloc.start()
    try:
        scorer.score()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"scoring 4 M rows took {peak / 2**20:.1f} MiB (a permuted label array is 30 MiB)"


def test_simulated_permutation_batches_fill_every_slot_and_use_each_class_at_most_once():
    class_counts = np.array([5_000, 3_000, 2_000])
    sizes = np.full(30, 256)
    counts = permutation_batch_counts(class_counts, sizes, np.random.default_rng(1))
    np.testing.assert_array_equal(counts.sum(axis=1), sizes)
    assert (counts.sum(axis=0) <= class_counts).all()
    whole = permutation_batch_counts(class_counts, np.full(40, 250), np.random.default_rng(1))
    np.testing.assert_array_equal(whole.sum(axis=0), class_counts)
    with pytest.raises(ValueError, match="more than the population"):
        permutation_batch_counts(class_counts, np.full(41, 250), np.random.default_rng(1))
