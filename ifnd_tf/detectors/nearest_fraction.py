"""Each anchor's most similar fraction of the queue: no clustering pass (GloFND-like)."""
import tensorflow as tf

from ifnd_tf.detectors.base import FIRST_REPLICA, FalseNegativeDetector


def nearest_fraction_mask(similarities: tf.Tensor, valid: tf.Tensor,
                          fraction: tf.Tensor | float) -> tf.Tensor:
    """Each anchor's `fraction` of the valid queue entries most similar to it.

    GloFND (Balmaseda et al. 2025) learns a per-anchor threshold at the dataset-wide
    (1 - fraction) quantile of the anchor's similarities, by SGD, because it sees only
    mini-batch negatives; the MoCo queue is a large random sample of the dataset, so the
    quantile is read from it directly, every step.

    Returns bool [batch, queue]: valid entries at or above the anchor's n-th largest valid
    similarity, n = round(fraction * valid entries) (ties included); all False when n = 0.
    """
    count = tf.cast(tf.round(tf.cast(fraction, tf.float32)
                             * tf.reduce_sum(tf.cast(valid, tf.float32))), tf.int32)
    candidates = tf.where(valid[None, :], similarities, similarities.dtype.min)
    ranked = tf.sort(candidates, axis=1, direction="DESCENDING")
    threshold = tf.gather(ranked, tf.maximum(count - 1, 0), axis=1)[:, None]
    return tf.logical_and(tf.logical_and(candidates >= threshold, valid[None, :]), count > 0)


class NearestFraction(FalseNegativeDetector):
    """Each anchor's alpha * quantile most similar valid queue entries, read from the step's
    own similarities: no clustering pass, O(batch x queue log queue) per step."""

    def __init__(self, quantile: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"quantile must be in (0, 1], got {quantile}")
        self.quantile = quantile

    def build_state(self, num_examples: int, embedding_dim: int) -> None:
        super().build_state(num_examples, embedding_dim)
        self.fraction = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                        aggregation=FIRST_REPLICA, name="fn_fraction")

    def mask(self, anchor_ids, queue_ids, similarities):
        return nearest_fraction_mask(similarities, queue_ids >= 0, self.fraction)

    def refresh(self, epoch, alpha, inputs):
        self.fraction.assign(alpha * self.quantile)
        return {"fn_fraction": alpha * self.quantile}, {}

    def masks_anything(self, logs: dict) -> bool:
        return logs.get("fn_fraction", 0.0) > 0

    def get_config(self):
        return {**super().get_config(), "quantile": self.quantile}
