"""The detector interface, and what every detector shares: the step's true-label counts."""
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from ifnd_tf.embedding import SharedPass

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
    A detector that needs the queue's keys themselves (not only their cosines to the anchors)
    sets reads_queue_keys: its mask then gets them as queue_keys=.
    """

    reads_queue_keys = False

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

    def learn(self, anchor_ids: tf.Tensor, queue_ids: tf.Tensor,
              similarities: tf.Tensor) -> None:
        """After each step's loss, in replica context: this replica's anchors and their
        cosines to the queue, for a detector that learns per step (cross-replica ops allowed)."""

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
