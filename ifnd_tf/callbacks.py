"""Keras callbacks: the per-epoch pseudo-label pass (the IFND part), the NaN guard, metrics.csv.

Checkpointing is preemption.StepCheckpointer."""
import math
import os
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from ifnd_tf import clustering, diagnostics

# What the pseudo-label pass clusters (--cluster_features).
CENTER_VIEW = "center_view"  # the key encoder over every un-augmented image (paper, DESIGN.md)
TRAIN_KEYS = "train_keys"  # each example's latest key from training: no extra forward pass
CLUSTER_FEATURES = (CENTER_VIEW, TRAIN_KEYS)


class DatasetEmbedder:
    """Inference-mode encoder outputs for every (index, image) example, placed by index.

    Each batch is cut into one strided share per replica where it lies (only the shares move to
    the replicas' devices) and gathered back with its indices, so the result does not depend on
    how many replicas ran. The dataset is iterated plainly, not as a distributed dataset, whose
    iterator took up to 7 s to drop after a standalone pass (BUILD_NOTES, Benchmarks 5).
    """

    def __init__(self, encoder: keras.Model, strategy: tf.distribute.Strategy,
                 dataset: tf.data.Dataset, num_examples: int, output: str = "embedding"):
        self.strategy = strategy
        self.dataset = dataset
        self.num_examples = num_examples
        self.dim = encoder.output[output].shape[-1]

        # Shares change size with the last, smaller batch: one more trace, not one per epoch.
        @tf.function(reduce_retracing=True)
        def embed_batch(index, images):
            def on_replica(index, images):  # int32: int64 gathers fail across workers
                return tf.cast(index, tf.int32), encoder(images, training=False)[output]
            index, values = strategy.run(on_replica, args=(index, images))
            return strategy.gather(index, axis=0), strategy.gather(values, axis=0)

        self._embed_batch = embed_batch

    def _replica_shares(self, index: tf.Tensor, images: tf.Tensor):
        """Per-replica (index, images): every num_replicas-th example from the replica's id."""
        def share(context):
            first, step = context.replica_id_in_sync_group, context.num_replicas_in_sync
            with tf.device(images.device):
                return index[first::step], images[first::step]
        return self.strategy.experimental_distribute_values_from_function(share)

    def __call__(self) -> np.ndarray:
        num_examples = self.num_examples
        result = np.zeros((num_examples, self.dim), np.float32)
        seen = np.zeros(num_examples, bool)
        for index, images in self.dataset:
            index, values = self._embed_batch(*self._replica_shares(index, images))
            result[index.numpy()] = values.numpy()
            seen[index.numpy()] = True
        if not seen.all():
            raise RuntimeError(f"embedding pass covered {seen.sum()} of {num_examples} examples")
        return result


class PseudoLabelCallback(keras.callbacks.Callback):
    """At each epoch start after warm-up: embed, cluster, accept the top alpha, fill the table.

    With cluster_features=TRAIN_KEYS the embeddings are the model's `train_keys` (each
    example's key from its latest training step, at most an epoch old) instead of a pass over
    the centre views; until every example has one, the centre-view pass runs.

    Writes accepted labels into `model.pseudo_labels` (levels x N, -1 = none). Prints and writes
    to TensorBoard (log_dir, tags ifnd/*) alpha, the accepted fraction and cluster sizes per
    level, and the pair precision / recall of the false negatives the loss will now mask (only
    when true labels are given; they are never trained on). alpha, the number of accepted
    samples and the diagnostics (fn_precision, fn_recall, purity_k<k> per level) also join the
    epoch logs, so they show on the progress line and in diagnostics/history.json, as does
    clustering_seconds (the embedding pass and every k-means level; 0 in warm-up epochs).
    """

    def __init__(self, embedding_data: tf.data.Dataset, num_examples: int,
                 num_clusters: Sequence[int], total_epochs: int, warmup_epochs: int,
                 alpha_start: float, alpha_end: float, alpha_shape: str, backend: str,
                 seed: int, strategy: tf.distribute.Strategy, kmeans_iterations: int = 20,
                 max_points_per_centroid: int = 256, true_labels: np.ndarray | None = None,
                 log_dir: str | None = None, verbose: bool = True,
                 kmeans_threads: int | None = None, cluster_features: str = CENTER_VIEW):
        super().__init__()
        if cluster_features not in CLUSTER_FEATURES:
            raise ValueError(f"cluster_features must be one of {CLUSTER_FEATURES}, "
                             f"got {cluster_features!r}")
        self.cluster_features = cluster_features
        self.embedding_data = embedding_data
        self.num_examples = num_examples
        self.num_clusters = list(num_clusters)
        self.schedule = {"total_epochs": total_epochs, "warmup_epochs": warmup_epochs,
                             "start": alpha_start, "end": alpha_end, "shape": alpha_shape}
        self.kmeans = {"backend": backend, "iterations": kmeans_iterations,
                           "max_points_per_centroid": max_points_per_centroid,
                           "threads": kmeans_threads}
        self.seed = seed
        self.strategy = strategy
        self.embedder: DatasetEmbedder | None = None  # made once the model is set
        self.true_labels = true_labels
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.verbose = verbose
        self.epoch_logs: dict[str, float] = {}
        self.details: dict[str, float] = {}
        self.resumed_epoch: int | None = None  # resumed mid-way: its restored table is kept

    def on_epoch_begin(self, epoch, logs=None):
        alpha = clustering.acceptance_rate(epoch, **self.schedule)
        self.epoch_logs, self.details = {"alpha": alpha, "clustering_seconds": 0.0}, {}
        # Nothing accepted yet: the same keys every epoch (0 = nothing detected).
        self._log_label_diagnostics(np.full(self.model.pseudo_labels.shape, -1))
        if epoch == self.resumed_epoch:  # the table the interrupted epoch trained with
            self._log_label_diagnostics(self.model.pseudo_labels.numpy())
        elif alpha > 0:
            self._update_pseudo_labels(epoch, alpha)
        else:
            self.model.pseudo_labels.assign(tf.fill(self.model.pseudo_labels.shape, -1))
        everything = {**self.epoch_logs, **self.details}
        if self.writer is not None:
            with self.writer.as_default(step=epoch):
                for name, value in everything.items():
                    tf.summary.scalar(f"ifnd/{name}", value)
            self.writer.flush()
        if self.verbose:
            print(f"IFND epoch {epoch + 1}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in everything.items()), flush=True)

    def on_epoch_end(self, epoch, logs=None):
        """Headline numbers join the progress line and the TensorBoard callback's scalars."""
        if logs is not None:
            logs.update(self.epoch_logs)

    def _update_pseudo_labels(self, epoch: int, alpha: float) -> None:
        start = time.perf_counter()
        embeddings = self._embeddings()
        labels, stats = clustering.hierarchical_pseudo_labels(
            embeddings, self.num_clusters, alpha, seed=self.seed + 1000 * epoch, **self.kmeans)
        self.model.pseudo_labels.assign(labels)
        self.epoch_logs["clustering_seconds"] = time.perf_counter() - start
        for level in stats:
            self.details[f"accepted_k{level.k}"] = level.accepted_fraction
            self.details[f"largest_cluster_k{level.k}"] = level.largest_cluster
            self.details[f"median_cluster_k{level.k}"] = level.median_cluster
            self.details[f"smallest_cluster_k{level.k}"] = level.smallest_cluster
        self._log_label_diagnostics(labels)

    def _embeddings(self) -> np.ndarray:
        """The training keys if asked for and complete, else the centre-view pass."""
        if self.cluster_features == TRAIN_KEYS:
            keys = self.model.train_keys.numpy()
            complete = bool(np.any(keys != 0, axis=1).all())
            self.details["clustered_train_keys"] = float(complete)
            if complete:
                return keys
        if self.embedder is None:
            self.embedder = DatasetEmbedder(self.model.key_encoder, self.strategy,
                                            self.embedding_data, self.num_examples)
        return self.embedder()

    def _log_label_diagnostics(self, labels: np.ndarray) -> None:
        """Accepted samples and, given true labels, FN precision / recall and purity per level."""
        self.epoch_logs["accepted"] = diagnostics.num_accepted(labels)
        if self.true_labels is not None:
            self.epoch_logs.update(
                diagnostics.label_quality(labels, self.true_labels, self.num_clusters))


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to the epoch logs (TensorBoard, progress)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class MetricsCsv(keras.callbacks.Callback):
    """One row of epoch logs per epoch in a CSV file, kept consistent across resumes.

    Rows of epochs a resumed run will train again (killed after logging, before the checkpoint)
    are dropped first, so the file always has one row per completed epoch.
    """

    def __init__(self, path: str, completed_epochs: int):
        super().__init__()
        self.path = path
        self.columns: list[str] = []
        if os.path.exists(path):
            with open(path) as f:
                header, *rows = f.read().splitlines() or [""]
            self.columns = header.split(",")[1:]
            kept = [row for row in rows if row and int(row.split(",")[0]) < completed_epochs]
            with open(path, "w") as f:
                f.write("\n".join([header, *kept]) + "\n")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not self.columns:
            self.columns = sorted(logs)
            with open(self.path, "w") as f:
                f.write(",".join(["epoch", *self.columns]) + "\n")
        with open(self.path, "a") as f:
            f.write(",".join([str(epoch), *(repr(float(logs.get(c, "nan"))) for c in self.columns)])
                    + "\n")


class DivergenceError(RuntimeError):
    """The loss became NaN or infinite."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops at the first non-finite loss, before any checkpoint of the broken state is written.

    The checkpoint callback saves only at epoch end, so the last good checkpoint survives.
    """

    def __init__(self, manager: tf.train.CheckpointManager, steps_per_epoch: int):
        super().__init__()
        self.manager = manager
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            step = self.epoch * self.steps_per_epoch + batch + 1
            raise DivergenceError(
                f"loss is {loss} at step {step} (epoch {self.epoch + 1}, batch {batch + 1}); "
                f"stopped, last good checkpoint kept: {self.manager.latest_checkpoint or 'none yet'}")
