"""GloFND (Balmaseda et al., ICML 2025): a similarity threshold per example, learned online."""
import tensorflow as tf

from ifnd_tf.detectors.base import FIRST_REPLICA, FalseNegativeDetector


def quantile_step(threshold: tf.Tensor, similarities: tf.Tensor, valid: tf.Tensor,
                  fraction: float) -> tf.Tensor:
    """The gradient of the quantile objective at each anchor's threshold: fraction minus the
    fraction of its valid entries above it. Zero when exactly `fraction` are above: the
    threshold is then the anchor's (1 - fraction) quantile. [batch]."""
    above = tf.cast((similarities > threshold[:, None]) & valid[None, :], tf.float32)
    count = tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32)), 1.0)
    return fraction - tf.reduce_sum(above, axis=1) / count


class LearnedThreshold(FalseNegativeDetector):
    """Each example i has a threshold lambda_i; a queue entry with cosine > lambda_i to anchor i
    is a false negative. lambda_i is learned as the (1 - fraction) quantile of i's similarities
    to the dataset: at each step, the batch's anchors take one Adam step on the quantile
    objective against the queue (a random sample of the dataset), O(batch) state updated per
    step, no clustering pass. As GloFND: lambda starts at 1 (nothing masked), Adam with
    beta1 0.9, beta2 0.98 and bias correction by epoch (each example is updated once per
    epoch), lambda clipped to [-1, 1]; thresholds learn from the first epoch and mask once
    the warm-up is over (alpha > 0). The fraction is constant (GloFND has no schedule).
    """

    def __init__(self, fraction: float = 0.1, learning_rate: float = 0.05, beta1: float = 0.9,
                 beta2: float = 0.98, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        self.fraction = fraction
        self.learning_rate = learning_rate
        self.betas = (beta1, beta2)

    def build_state(self, num_examples: int, embedding_dim: int) -> None:
        super().build_state(num_examples, embedding_dim)

        def table(name, value):
            return self.add_weight(shape=(num_examples,), initializer=tf.constant_initializer(
                value), trainable=False, aggregation=FIRST_REPLICA, name=name)

        self.thresholds = table("fn_thresholds", 1.0)
        self.first_moment = table("fn_threshold_m", 0.0)
        self.second_moment = table("fn_threshold_v", 0.0)
        self.epoch = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                     aggregation=FIRST_REPLICA, name="fn_epoch")
        self.active = self.add_weight(shape=(), initializer="zeros", dtype="bool",
                                      trainable=False, aggregation=FIRST_REPLICA, name="fn_active")

    def mask(self, anchor_ids, queue_ids, similarities):
        threshold = tf.gather(tf.convert_to_tensor(self.thresholds), anchor_ids)
        above = (similarities > threshold[:, None]) & (queue_ids >= 0)[None, :]
        return above & tf.convert_to_tensor(self.active)

    def learn(self, anchor_ids, queue_ids, similarities):
        ids = tf.cast(anchor_ids, tf.int32)
        threshold, m, v = (tf.gather(tf.convert_to_tensor(t), ids) for t in
                           (self.thresholds, self.first_moment, self.second_moment))
        grad = quantile_step(threshold, similarities, queue_ids >= 0, self.fraction)
        (beta1, beta2), epochs = self.betas, tf.convert_to_tensor(self.epoch) + 1.0
        m = beta1 * m + (1.0 - beta1) * grad
        v = beta2 * v + (1.0 - beta2) * tf.square(grad)
        step = (m / (1.0 - beta1 ** epochs)) / (tf.sqrt(v / (1.0 - beta2 ** epochs)) + 1e-8)
        threshold = tf.clip_by_value(threshold - self.learning_rate * step, -1.0, 1.0)
        # Every replica writes the whole global batch (the variables keep the first's).
        replica = tf.distribute.get_replica_context()
        ids = replica.all_gather(ids, axis=0)
        for table, value in ((self.thresholds, threshold), (self.first_moment, m),
                             (self.second_moment, v)):
            table.value.scatter_update(tf.IndexedSlices(replica.all_gather(value, axis=0), ids))

    def refresh(self, epoch, alpha, inputs):
        self.epoch.assign(float(epoch))
        self.active.assign(alpha > 0)
        thresholds = self.thresholds.numpy()
        return {"fn_active": float(alpha > 0)}, {"fn_threshold_mean": float(thresholds.mean())}

    def masks_anything(self, logs: dict) -> bool:
        return logs.get("fn_active", 0.0) > 0

    def get_config(self):
        beta1, beta2 = self.betas
        return {**super().get_config(), "fraction": self.fraction,
                "learning_rate": self.learning_rate, "beta1": beta1, "beta2": beta2}
