"""Detection by a table of pseudo-labels: the base of ClusterLabels and OracleLabels."""
import time

import keras
import numpy as np
import tensorflow as tf

from ifnd_tf import diagnostics
from ifnd_tf.detectors.base import (
    FIRST_REPLICA,
    EpochInputs,
    FalseNegativeDetector,
    false_negative_mask,
    queue_lookup,
)


class LabelTable(FalseNegativeDetector):
    """Pseudo-labels [levels, num_examples] (-1 = none accepted): an anchor and a queue entry
    sharing a label at >= min_levels levels are a false negative. Subclasses fill the table."""

    def __init__(self, levels: tuple[int, ...], min_levels: int = 1, **kwargs):
        super().__init__(**kwargs)
        assert 1 <= min_levels <= len(levels), (
            f"min_levels={min_levels} needs 1..{len(levels)} hierarchy levels")
        self.levels = tuple(levels)
        self.min_levels = min_levels

    def build_state(self, num_examples: int, embedding_dim: int) -> None:
        super().build_state(num_examples, embedding_dim)
        self.pseudo_labels = self.add_weight(
            shape=(len(self.levels), num_examples), initializer=keras.initializers.Constant(-1),
            dtype="int32", trainable=False, aggregation=FIRST_REPLICA, name="pseudo_labels")
        # The last refresh's own numbers [clustering_seconds, shared_pass (-1: none)]: a
        # resumed epoch logs what the epoch it resumes measured, not a 0.
        self.last_refresh = self.add_weight(
            shape=(2,), initializer=keras.initializers.Constant([0.0, -1.0]), trainable=False,
            aggregation=FIRST_REPLICA, name="last_refresh")

    def mask(self, anchor_ids, queue_ids, similarities):
        return false_negative_mask(tf.gather(self.pseudo_labels, anchor_ids, axis=1),
                                   self.queue_labels(queue_ids), self.min_levels)

    def queue_labels(self, queue_ids: tf.Tensor) -> tf.Tensor:
        """Current pseudo-labels [levels, queue] of the queue entries (-1 for empty slots)."""
        return queue_lookup(self.pseudo_labels, tf.convert_to_tensor(queue_ids))

    def set_pseudo_labels(self, labels) -> None:
        """Replace the table [levels, num_examples] the mask reads."""
        labels = tf.convert_to_tensor(labels, tf.int32)
        if labels.shape != self.pseudo_labels.shape:
            raise ValueError(f"pseudo-labels of shape {labels.shape}, the table is "
                             f"{self.pseudo_labels.shape}")
        self.pseudo_labels.assign(labels)

    def clear_pseudo_labels(self) -> None:
        """No accepted labels: nothing is masked (warm-up)."""
        self.pseudo_labels.assign(tf.fill(self.pseudo_labels.shape, -1))

    def refresh(self, epoch, alpha, inputs):
        logs, details = self._prefix_logs(), {}
        if inputs.resumed:  # the table the interrupted epoch trained with
            labels = self.pseudo_labels.numpy() if alpha > 0 else None
            if labels is not None:
                seconds, shared = (float(v) for v in self.last_refresh.numpy())
                logs.update({"shared_pass": shared} if shared >= 0 else {})
                logs["clustering_seconds"] = seconds
        elif alpha > 0:
            start = time.perf_counter()
            labels = self.make_labels(epoch, alpha, inputs, logs, details)
            self.set_pseudo_labels(labels)
            logs["clustering_seconds"] = time.perf_counter() - start
            self.last_refresh.assign([logs["clustering_seconds"], logs.get("shared_pass", -1.0)])
        else:
            self.clear_pseudo_labels()
            labels = None
        logs.update(self.label_diagnostics(labels, inputs.true_labels))
        return logs, details

    def _prefix_logs(self) -> dict:
        return {}

    def make_labels(self, epoch: int, alpha: float, inputs: EpochInputs, logs: dict,
                    details: dict) -> np.ndarray:
        """This epoch's table [levels, num_examples]; may add to logs and details."""
        raise NotImplementedError

    def label_diagnostics(self, labels: np.ndarray | None, true_labels) -> dict:
        """Accepted samples and, given true labels, FN pair precision / recall and purity per
        level. In warm-up (labels None) the detection diagnostics are left out (not 0, which
        would draw a fake jump in curves.png and TensorBoard)."""
        logs = {"accepted": 0 if labels is None else diagnostics.num_accepted(labels)}
        if labels is not None and true_labels is not None:
            logs.update(diagnostics.label_quality(labels, true_labels, self.levels,
                                                  self.min_levels))
        return logs

    def get_config(self):
        return {**super().get_config(), "levels": self.levels, "min_levels": self.min_levels}
