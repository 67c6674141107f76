"""Ablation: the true classes as pseudo-labels, the ceiling of removing false negatives."""
import numpy as np

from ifnd_tf import clustering
from ifnd_tf.detectors.label_table import LabelTable


class OracleLabels(LabelTable):
    """Ablation: the true class as the label at every level, for a seeded, class-balanced
    alpha * fraction of each class (precision 1: the ceiling of removing false negatives).
    The accepted samples only grow with alpha (one fixed random priority per sample), as
    IFND's do. levels: the hierarchy's k per level, naming the table's rows in the logs."""

    def __init__(self, levels: tuple[int, ...], fraction: float = 1.0, seed: int = 0, **kwargs):
        super().__init__(levels, **kwargs)
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"oracle fraction must be in [0, 1], got {fraction}")
        self.fraction = fraction
        self.seed = seed

    def _prefix_logs(self) -> dict:
        return {"oracle": 1.0}

    def make_labels(self, epoch, alpha, inputs, logs, details):
        if inputs.true_labels is None:
            raise ValueError("the oracle needs true labels")
        return oracle_pseudo_labels(inputs.true_labels, len(self.levels), alpha * self.fraction,
                                    self.seed)

    def get_config(self):
        return {**super().get_config(), "fraction": self.fraction, "seed": self.seed}


def oracle_pseudo_labels(true_labels: np.ndarray, num_levels: int, fraction: float,
                         seed: int) -> np.ndarray:
    """[num_levels, N] labels: the true class for round(fraction * class size) samples of each
    class (seeded: IFND's per-class top-fraction rule with a fixed random priority), -1 else."""
    true_labels = np.asarray(true_labels, np.int64)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"oracle fraction must be in [0, 1], got {fraction}")
    priority = np.random.default_rng(seed).random(len(true_labels))
    labels = clustering.accept_top_fraction(true_labels, priority, fraction)
    return np.tile(labels, (num_levels, 1))
