"""Oracle pseudo-labels: the true classes in place of the clusters, for ablation only.

The paper's Figure 1 experiment: how much removing the false negatives can give at a given
budget. Every hierarchy level gets the true class, so the detected pairs are exactly the
same-class pairs among the accepted samples (precision 1). The accepted samples are a seeded,
class-balanced random fraction that only grows with the fraction (one fixed priority per
sample), so the incremental schedule accepts a superset each epoch like IFND does.
"""
import numpy as np

from ifnd_tf import clustering


def oracle_pseudo_labels(true_labels: np.ndarray, num_levels: int, fraction: float,
                         seed: int) -> np.ndarray:
    """[num_levels, N] labels: the true class for round(fraction * class size) samples of each
    class (seeded), UNLABELED for the rest."""
    true_labels = np.asarray(true_labels, np.int64)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"oracle fraction must be in [0, 1], got {fraction}")
    # The per-class top-fraction rule of IFND, with a fixed random priority as the confidence.
    priority = np.random.default_rng(seed).random(len(true_labels))
    labels = clustering.accept_top_fraction(true_labels, priority, fraction)
    return np.tile(labels, (num_levels, 1))
