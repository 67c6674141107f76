"""How good are the detected false negatives? Measured against true labels, never trained on.

Per epoch: pair precision / recall of the detected false negatives, the purity of the accepted
pseudo-labels at each hierarchy level, and how many samples hold an accepted label.

A pair of distinct samples (i, j) is *detected* when they share an accepted pseudo-label at
`min_levels` hierarchy levels or more (exactly the rule the loss uses; 1 = any level), and is
a *true* false negative when they share a true class. Counts are exact, over all N(N-1)/2
pairs, via inclusion-exclusion over levels, in O(N * 2^levels).
"""
import dataclasses
import itertools
import math

import numpy as np


@dataclasses.dataclass
class FalseNegativeQuality:
    """Pair-level precision and recall of detected false negatives."""

    precision: float
    recall: float
    detected_pairs: int
    true_pairs: int


def _pairs_sharing_all(columns: list[np.ndarray]) -> int:
    """Number of unordered pairs that agree on every column (rows with any -1 excluded)."""
    keys = np.stack(columns, axis=1)
    keys = keys[np.all(keys >= 0, axis=1)]
    if len(keys) < 2:
        return 0
    sizes = keys.max(axis=0) + 1
    if math.prod(int(n) for n in sizes) < 2**62:  # one int64 code per row: a 1-D sort, ~10x
        keys = np.ravel_multi_index(keys.T, sizes)  # faster than np.unique(axis=0)'s row sort
    _, counts = np.unique(keys, axis=0, return_counts=True)
    return int(np.sum(counts * (counts - 1) // 2))


def _pairs_sharing_levels(pseudo_labels: np.ndarray, extra: list[np.ndarray],
                          min_levels: int = 1) -> int:
    """Pairs sharing the label at >= min_levels levels, each pair also sharing `extra`.

    Inclusion-exclusion: with S_j the pairs sharing all levels of a j-subset, summed over the
    j-subsets, #(>= m levels) = sum_{j >= m} (-1)^(j-m) C(j-1, m-1) S_j (m = 1: the union).
    """
    total = 0
    levels = range(pseudo_labels.shape[0])
    for size in range(min_levels, pseudo_labels.shape[0] + 1):
        weight = (-1) ** (size - min_levels) * math.comb(size - 1, min_levels - 1)
        for subset in itertools.combinations(levels, size):
            total += weight * _pairs_sharing_all([pseudo_labels[l] for l in subset] + extra)
    return total


def false_negative_quality(pseudo_labels: np.ndarray, true_labels: np.ndarray,
                           min_levels: int = 1) -> FalseNegativeQuality:
    """Precision / recall of the pairs the loss would treat as false negatives.

    Args:
      pseudo_labels: int [levels, N], -1 = no accepted label.
      true_labels: int [N].
      min_levels: the loss's vote (losses.false_negative_mask).
    """
    pseudo_labels = np.atleast_2d(np.asarray(pseudo_labels, np.int64))
    true_labels = np.asarray(true_labels, np.int64)
    detected = _pairs_sharing_levels(pseudo_labels, [], min_levels)
    correct = _pairs_sharing_levels(pseudo_labels, [true_labels], min_levels)
    true_pairs = _pairs_sharing_all([true_labels])
    precision = correct / detected if detected else 0.0
    recall = correct / true_pairs if true_pairs else 0.0
    return FalseNegativeQuality(precision, recall, detected, true_pairs)


def accepted_purity(labels: np.ndarray, true_labels: np.ndarray) -> float:
    """Purity of one level's accepted labels: the fraction of accepted samples whose true class
    is the most frequent true class of their cluster (0 when nothing is accepted)."""
    labels = np.asarray(labels, np.int64)
    accepted = labels >= 0
    if not accepted.any():
        return 0.0
    _, cluster = np.unique(labels[accepted], return_inverse=True)
    _, truth = np.unique(np.asarray(true_labels)[accepted], return_inverse=True)
    table = np.zeros((cluster.max() + 1, truth.max() + 1), np.int64)
    np.add.at(table, (cluster, truth), 1)
    return float(table.max(axis=1).sum() / accepted.sum())


def num_accepted(pseudo_labels: np.ndarray) -> int:
    """Samples with an accepted label at one level or more (those whose false negatives count)."""
    return int(np.any(np.atleast_2d(pseudo_labels) >= 0, axis=0).sum())


def label_quality(pseudo_labels: np.ndarray, true_labels: np.ndarray,
                  num_clusters: list[int], min_levels: int = 1) -> dict[str, float]:
    """The per-epoch diagnostics as log entries: fn_precision, fn_recall, purity_k<k> per level."""
    pseudo_labels = np.atleast_2d(pseudo_labels)
    quality = false_negative_quality(pseudo_labels, true_labels, min_levels)
    result = {"fn_precision": quality.precision, "fn_recall": quality.recall}
    for k, level in zip(num_clusters, pseudo_labels):
        result[f"purity_k{k}"] = accepted_purity(level, true_labels)
    return result
