"""FNC-style detection (Huynh et al., WACV 2022): the anchor's nearest queue entries that are
also above a similarity threshold."""
import tensorflow as tf

from ifnd_tf.detectors.base import FIRST_REPLICA, FalseNegativeDetector


def top_k_threshold_mask(similarities: tf.Tensor, valid: tf.Tensor, top_k: int,
                         threshold: float) -> tf.Tensor:
    """bool [batch, queue]: valid entries among the anchor's top_k most similar valid ones
    (ties at the k-th included) with a similarity >= threshold."""
    candidates = tf.where(valid[None, :], similarities, similarities.dtype.min)
    k = min(top_k, candidates.shape[1]) if candidates.shape[1] is not None else top_k
    kth = tf.math.top_k(candidates, k=k, sorted=True).values[:, -1:]
    return (candidates >= kth) & (candidates >= threshold) & valid[None, :]


class TopKThreshold(FalseNegativeDetector):
    """A queue entry is a false negative of an anchor when it is among the anchor's top_k most
    similar entries and its cosine reaches threshold (FNC's "top-k" and "threshold" rules
    together). On from the first epoch after the warm-up (alpha > 0), at full strength: FNC has
    no acceptance schedule.

    FNC scores each entry by its similarity to several augmented "support views" of the anchor;
    here the query view is the only one: each support view would cost one more key-encoder
    forward per image (about a quarter of a step each) and is not implemented.
    """

    def __init__(self, top_k: int, threshold: float, **kwargs):
        super().__init__(**kwargs)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self.threshold = threshold

    def build_state(self, num_examples: int, embedding_dim: int) -> None:
        super().build_state(num_examples, embedding_dim)
        self.active = self.add_weight(shape=(), initializer="zeros", dtype="bool",
                                      trainable=False, aggregation=FIRST_REPLICA, name="fn_active")

    def mask(self, anchor_ids, queue_ids, similarities):
        found = top_k_threshold_mask(similarities, queue_ids >= 0, self.top_k, self.threshold)
        return found & tf.convert_to_tensor(self.active)

    def refresh(self, epoch, alpha, inputs):
        self.active.assign(alpha > 0)
        return {"fn_active": float(alpha > 0)}, {}

    def masks_anything(self, logs: dict) -> bool:
        return logs.get("fn_active", 0.0) > 0

    def get_config(self):
        return {**super().get_config(), "top_k": self.top_k, "threshold": self.threshold}
