"""HCSC-style soft drop (Guo et al., CVPR 2022): a queue entry leaves the anchor's
denominator with the probability that it belongs to the anchor's cluster."""
import numpy as np
import tensorflow as tf

from ifnd_tf import clustering
from ifnd_tf.config import CENTER_VIEW
from ifnd_tf.detectors.base import FIRST_REPLICA
from ifnd_tf.detectors.cluster_labels import ClusterLabels


def drop_probabilities(queue_keys: tf.Tensor, centroids: tf.Tensor, anchor_labels: tf.Tensor,
                       levels: tuple[int, ...], temperature: float) -> tf.Tensor:
    """[batch, queue]: the mean over hierarchy levels of p(anchor's cluster | entry), a softmax
    of the entry's cosines to the level's centroids / temperature (0 at a level where the
    anchor has no accepted label).

    queue_keys [queue, dim]; centroids [levels, max k, dim], level l's first levels[l] rows;
    anchor_labels [levels, batch], -1 = none."""
    total = 0.0
    for level, k in enumerate(levels):
        logits = tf.matmul(queue_keys, centroids[level, :k], transpose_b=True) / temperature
        fit = tf.nn.softmax(logits, axis=1)  # [queue, k]
        labels = anchor_labels[level]
        own = tf.transpose(tf.gather(fit, tf.maximum(labels, 0), axis=1))  # [batch, queue]
        total += tf.where(labels[:, None] >= 0, own, 0.0)
    return total / len(levels)


def unit_centroids(embeddings: np.ndarray, assignment: np.ndarray, k: int) -> np.ndarray:
    """[k, dim]: each cluster's normalised mean (spherical k-means' centroid; 0 if empty)."""
    sums = np.zeros((k, embeddings.shape[1]), np.float64)
    np.add.at(sums, assignment, embeddings)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norms, 1e-12)).astype(np.float32)


class SoftClusterDrop(ClusterLabels):
    """The paper's clustering pass and acceptance schedule (ClusterLabels), but the mask is
    drawn: each queue entry is dropped from an anchor's denominator with probability
    p(anchor's cluster | entry), a softmax over the level's centroids of the entry's key,
    averaged over the levels where the anchor has an accepted label.

    HCSC selects negatives with probability 1 - p and gives the rest zero logits; here a
    dropped entry is masked (-inf: out of the softmax), as every detector's mask is. HCSC
    scales the softmax by each cluster's concentration (PCL's phi); one temperature here.
    The draw is a stateless function of (seed, step): a resumed run draws as an
    uninterrupted one. Cost per step: a [queue, k] product per level.
    """

    reads_queue_keys = True

    def __init__(self, kmeans: clustering.KMeansSettings, confidence: str = "margin",
                 neighbours_k: int = 10, min_levels: int = 1, features: str = CENTER_VIEW,
                 seed: int = 0, temperature: float = 0.1, **kwargs):
        super().__init__(kmeans, confidence, neighbours_k, min_levels, features, seed, **kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def build_state(self, num_examples: int, embedding_dim: int) -> None:
        super().build_state(num_examples, embedding_dim)
        self.centroids = self.add_weight(
            shape=(len(self.levels), max(self.levels), embedding_dim), initializer="zeros",
            trainable=False, aggregation=FIRST_REPLICA, name="fn_centroids")
        self.draws = self.add_weight(shape=(), initializer="zeros", dtype="int64",
                                     trainable=False, aggregation=FIRST_REPLICA, name="fn_draws")

    def clustered(self, embeddings, stats: list[clustering.LevelStats]) -> None:
        embeddings = clustering.l2_normalize(np.asarray(embeddings, np.float32))
        table = np.zeros(self.centroids.shape, np.float32)
        for level, (k, stat) in enumerate(zip(self.levels, stats)):
            table[level, :k] = unit_centroids(embeddings, stat.assignment, k)
        self.centroids.assign(table)

    def mask(self, anchor_ids, queue_ids, similarities, queue_keys=None):
        assert queue_keys is not None, "SoftClusterDrop reads the queue's keys"
        labels = tf.gather(tf.convert_to_tensor(self.pseudo_labels), anchor_ids, axis=1)
        drop = drop_probabilities(tf.cast(queue_keys, tf.float32),
                                  tf.convert_to_tensor(self.centroids), labels, self.levels,
                                  self.temperature)
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.convert_to_tensor(self.draws)])
        draw = tf.random.stateless_uniform(tf.shape(drop), seed)
        return (draw < drop) & (queue_ids >= 0)[None, :]

    def observe(self, keys, ids):
        super().observe(keys, ids)
        self.draws.assign_add(1)

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
