"""False-negative detection: one interface, one small class per rule.

A detector finds, at every training step, the queue entries that share the anchor's semantic
class (false negatives). It declares only what is its own:
  build_state(num_examples, dim)   its variables (checkpointed with the model), once
  refresh(epoch, alpha, inputs)    at each epoch start, eagerly: cluster, read labels, ...
  mask(anchor_ids, queue_ids, cosines)  -> bool [batch, queue], pure TF inside train_step
  observe(keys, ids)               after each step: the global batch of new keys (optional)
`MomentumContrast(encoder, num_examples, detector)` calls mask and observe; the epoch-start
callback (pseudo_labels.PseudoLabelCallback) calls refresh with the acceptance rate alpha.

  ClusterLabels    the paper: accepted k-means labels, a match at any level (min_levels: a vote)
  OracleLabels     ablation: the true classes of a growing, class-balanced fraction
  NearestFraction  each anchor's alpha * quantile most similar queue entries (GloFND-like)
"""
import dataclasses
import time

import keras
import numpy as np
import tensorflow as tf

from ifnd_tf import clustering, diagnostics
from ifnd_tf.confidence import RULES
from ifnd_tf.config import CENTER_VIEW, CLUSTER_FEATURES, QUERY_VIEW, TRAIN_KEYS
from ifnd_tf.embedding import DatasetEmbedder, SharedPass

FIRST_REPLICA = "only_first_replica"  # every replica computes the same update


def false_negative_mask(anchor_labels: tf.Tensor, queue_labels: tf.Tensor,
                        min_levels: int = 1) -> tf.Tensor:
    """Which queue entries share an accepted pseudo-label with each anchor.

    Args:
      anchor_labels: int [levels, batch], -1 where the anchor has no accepted label.
      queue_labels: int [levels, queue], -1 where the entry has no accepted label.
      min_levels: how many hierarchy levels must agree: 1 is the paper's union (any level);
        more is a vote that trades recall for precision.
    Returns:
      bool [batch, queue]: True where anchor and entry agree at >= min_levels levels.
      Unlabeled (-1) never matches anything, not even another -1.
    """
    same = tf.equal(anchor_labels[:, :, None], queue_labels[:, None, :])
    agree = tf.logical_and(same, tf.greater_equal(anchor_labels, 0)[:, :, None])
    if min_levels == 1:
        return tf.reduce_any(agree, axis=0)
    return tf.reduce_sum(tf.cast(agree, tf.int32), axis=0) >= min_levels


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


def queue_lookup(table: tf.Tensor, queue_ids: tf.Tensor) -> tf.Tensor:
    """Each queue entry's value in a per-example table [..., num_examples] (-1: empty slot)."""
    looked_up = tf.gather(table, tf.maximum(queue_ids, 0), axis=-1)
    return tf.where(queue_ids >= 0, looked_up, -1)


@dataclasses.dataclass
class EpochInputs:
    """What a detector may read at an epoch start (PseudoLabelCallback fills it).

    model: the MomentumContrast (its encoders, strategy, num_examples); embedding_data: batches
    of (index, un-augmented image), every example once; true_labels: for diagnostics and the
    oracle only (None if unlabelled); query_pass: the kNN monitor's query-encoder pass, if any;
    resumed: this epoch resumes mid-way, so state restored from the checkpoint is kept.
    """

    model: keras.Model
    embedding_data: tf.data.Dataset | None = None
    true_labels: np.ndarray | None = None
    query_pass: SharedPass | None = None
    resumed: bool = False


class FalseNegativeDetector(keras.layers.Layer):
    """The interface (see the module docstring). A Keras layer so that its variables are
    tracked and checkpointed with the model; it is never called on inputs.

    count_true_labels: count, at each step, the masked entries of the anchor's true class
    (fn_precision / fn_recall of the epoch in the logs); needs labelled data.
    """

    def __init__(self, count_true_labels: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.count_true_labels = count_true_labels
        self.true_labels = None
        self.step_metrics: list[keras.metrics.Metric] = []

    def get_config(self):
        return {**super().get_config(), "count_true_labels": self.count_true_labels}

    def build_state(self, num_examples: int, embedding_dim: int) -> None:
        """Create the detector's variables (the model calls this in its strategy scope)."""
        self.num_examples = num_examples
        if self.count_true_labels:
            self.true_labels = self.add_weight(
                shape=(num_examples,), initializer=keras.initializers.Constant(-1),
                dtype="int32", trainable=False, aggregation=FIRST_REPLICA, name="true_labels")
            # Per anchor: masked entries of its true class; queue entries of it.
            self.step_metrics = [keras.metrics.Mean(name="fn_correct"),
                                 keras.metrics.Mean(name="fn_true")]
        self.built = True

    def mask(self, anchor_ids: tf.Tensor, queue_ids: tf.Tensor,
             similarities: tf.Tensor) -> tf.Tensor:
        """bool [batch, queue]: the false negatives of each anchor. queue_ids are -1 for empty
        slots; similarities are the step's query-queue cosines (no gradient)."""
        raise NotImplementedError

    def refresh(self, epoch: int, alpha: float, inputs: EpochInputs) -> tuple[dict, dict]:
        """At an epoch start: update the state. Returns (epoch logs: the progress line and
        metrics.csv; details: the printed line and TensorBoard only)."""
        return {}, {}

    def observe(self, keys: tf.Tensor, ids: tf.Tensor) -> None:
        """After each step, in replica context: the global batch of keys and their ids."""

    def set_true_labels(self, labels) -> None:
        """The true class of every example (-1 = unknown), for the step counts only."""
        assert self.true_labels is not None, "built without count_true_labels"
        self.true_labels.assign(tf.convert_to_tensor(labels, tf.int32))

    def count(self, anchor_ids: tf.Tensor, queue_ids: tf.Tensor, mask: tf.Tensor) -> None:
        """Update the step counts: precision = fn_correct / masked, recall = fn_correct /
        fn_true over the epoch."""
        if self.true_labels is None:
            return
        table = tf.convert_to_tensor(self.true_labels)
        same = false_negative_mask(tf.gather(table, anchor_ids)[None],  # same known class
                                   queue_lookup(table, queue_ids)[None])
        correct, true = self.step_metrics
        correct.update_state(tf.reduce_sum(tf.cast(tf.logical_and(same, mask), tf.float32), 1))
        true.update_state(tf.reduce_sum(tf.cast(same, tf.float32), 1))

    def end_epoch(self, logs: dict) -> None:
        """Turn the epoch's step counts in `logs` into fn_precision / fn_recall."""
        correct, true = logs.pop("fn_correct", None), logs.pop("fn_true", None)
        if correct is not None and self.masks_anything(logs):
            masked = float(logs["masked"])
            logs["fn_precision"] = float(correct) / masked if masked else 0.0
            logs["fn_recall"] = float(correct) / float(true) if true else 0.0

    def masks_anything(self, logs: dict) -> bool:
        """Whether this epoch's rule could mask at all (else no precision is logged)."""
        return True


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
        elif alpha > 0:
            start = time.perf_counter()
            labels = self.make_labels(epoch, alpha, inputs, logs, details)
            self.set_pseudo_labels(labels)
            logs["clustering_seconds"] = time.perf_counter() - start
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


class ClusterLabels(LabelTable):
    """The paper's detector: at each epoch start, embed the training set, run k-means at every
    k of the hierarchy, accept the labels of each cluster's most confident alpha fraction.

    confidence: how samples are ranked within a cluster (confidence.RULES; margin = the paper);
    features: what is clustered (config.CLUSTER_FEATURES): the key encoder's centre views (the
    paper), the keys training wrote (train_keys: no extra pass once every example has one), or
    the query encoder's centre views, taken from the kNN monitor's pass when the model has not
    trained since (query_view); seed: k-means seeds are seed + 1000 * epoch.
    """

    def __init__(self, kmeans: clustering.KMeansSettings, confidence: str = "margin",
                 neighbours_k: int = 10, min_levels: int = 1, features: str = CENTER_VIEW,
                 seed: int = 0, **kwargs):
        super().__init__(tuple(kmeans.num_clusters), min_levels, **kwargs)
        if features not in CLUSTER_FEATURES:
            raise ValueError(f"features must be one of {CLUSTER_FEATURES}, got {features!r}")
        if confidence not in RULES:
            raise ValueError(f"confidence must be one of {RULES}, got {confidence!r}")
        self.kmeans = kmeans
        self.confidence = {"rule": confidence, "neighbours_k": neighbours_k}
        self.features = features
        self.seed = seed
        self.embedder: DatasetEmbedder | None = None  # made at the first pass

    def build_state(self, num_examples: int, embedding_dim: int) -> None:
        super().build_state(num_examples, embedding_dim)
        # Each example's latest training key, by dataset index (zero row = not seen yet).
        self.train_keys = self.add_weight(
            shape=(num_examples, embedding_dim), initializer="zeros", trainable=False,
            aggregation=FIRST_REPLICA, name="train_keys") if self.features == TRAIN_KEYS else None
        # The last pass's assignment [levels, N] (-1: none yet), for the stability rule.
        self.previous_assignment = self.add_weight(
            shape=(len(self.levels), num_examples), initializer=keras.initializers.Constant(-1),
            dtype="int32", trainable=False, aggregation=FIRST_REPLICA,
            name="previous_assignment") if self.confidence["rule"] == "stability" else None

    def observe(self, keys, ids):
        if self.train_keys is not None:
            # A row scatter: assigning a whole updated copy would move the [N, dim] table.
            self.train_keys.value.scatter_update(tf.IndexedSlices(keys, tf.cast(ids, tf.int32)))

    def make_labels(self, epoch, alpha, inputs, logs, details):
        embeddings = self._embeddings(inputs, logs, details)
        previous = None
        if self.previous_assignment is not None:
            stored = self.previous_assignment.numpy()
            previous = stored if (stored >= 0).all() else None
        labels, stats = self.kmeans.pseudo_labels(embeddings, alpha, seed=self.seed + 1000 * epoch,
                                                  previous=previous, **self.confidence)
        if self.previous_assignment is not None:
            self.previous_assignment.assign(np.stack([level.assignment for level in stats]))
        for level in stats:
            details[f"accepted_k{level.k}"] = level.accepted_fraction
            details[f"largest_cluster_k{level.k}"] = level.largest_cluster
            details[f"median_cluster_k{level.k}"] = level.median_cluster
            details[f"smallest_cluster_k{level.k}"] = level.smallest_cluster
        return labels

    def _embeddings(self, inputs: EpochInputs, logs: dict, details: dict) -> np.ndarray:
        """The training keys if asked for and complete, else the centre-view pass (of the
        query encoder with query_view, of the key encoder otherwise)."""
        if self.features == QUERY_VIEW:
            shared = inputs.query_pass.take("embedding") if inputs.query_pass else None
            logs["shared_pass"] = float(shared is not None)
            if shared is not None:
                return shared
        if self.features == TRAIN_KEYS:
            keys = self.train_keys.numpy()
            complete = bool(np.any(keys != 0, axis=1).all())
            details["clustered_train_keys"] = float(complete)
            if complete:
                return keys
        if self.embedder is None:
            model = inputs.model
            encoder = model.encoder if self.features == QUERY_VIEW else model.key_encoder
            self.embedder = DatasetEmbedder(encoder, model.distribute_strategy,
                                            inputs.embedding_data, model.num_examples)
        return self.embedder()

    def get_config(self):
        config = {**super().get_config(), "kmeans": dataclasses.asdict(self.kmeans),
                  "confidence": self.confidence["rule"],
                  "neighbours_k": self.confidence["neighbours_k"], "features": self.features,
                  "seed": self.seed}
        del config["levels"]  # the k-means hierarchy's
        return config

    @classmethod
    def from_config(cls, config):
        kmeans = dict(config.pop("kmeans"))
        kmeans["num_clusters"] = tuple(kmeans["num_clusters"])
        return cls(clustering.KMeansSettings(**kmeans), **config)


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
