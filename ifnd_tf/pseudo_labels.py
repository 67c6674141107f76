"""The IFND step: at each epoch start, cluster the embeddings and accept the confident labels.

`PseudoLabelCallback` embeds the training set (or reads the keys training wrote), runs the
k-means hierarchy, keeps the top alpha of each cluster and writes the table the loss masks with
(`MomentumContrast.set_pseudo_labels`).
"""
import time

import keras
import numpy as np
import tensorflow as tf

from ifnd_tf import clustering, confidence, diagnostics, oracle
from ifnd_tf.embedding import DatasetEmbedder, SharedPass

# What the pseudo-label pass clusters (--cluster_features).
CENTER_VIEW = "center_view"  # the key encoder over every un-augmented image (the paper)
TRAIN_KEYS = "train_keys"  # each example's latest key from training: no extra forward pass
QUERY_VIEW = "query_view"  # the query encoder over every un-augmented image: the pass the kNN
#                            monitor made at the previous epoch's end serves both
CLUSTER_FEATURES = (CENTER_VIEW, TRAIN_KEYS, QUERY_VIEW)


class PseudoLabelCallback(keras.callbacks.Callback):
    """At each epoch start after warm-up: embed, cluster, accept the top alpha, fill the table.

    With cluster_features=TRAIN_KEYS the embeddings are the model's `train_keys` (each
    example's key from its latest training step, at most an epoch old) instead of a pass over
    the centre views; until every example has one, the centre-view pass runs. With QUERY_VIEW
    the query encoder embeds the centre views: taken from `query_pass` (the SharedPass the kNN
    monitor ran at the previous epoch's end) when the model has not trained since, so only
    k-means runs (shared_pass = 1 in the logs), else by its own pass (shared_pass = 0).

    The model's strategy runs the embedding pass. Prints and writes to TensorBoard (log_dir,
    tags ifnd/*) alpha, the accepted fraction and cluster sizes per level, and the pair
    precision / recall of the false negatives the loss will now mask (only when true labels
    are given; they are never trained on). alpha, the number of accepted samples and the
    diagnostics (fn_precision, fn_recall, purity_k<k> per level) also join the epoch logs, so
    they show on the progress line and in metrics.csv, as does clustering_seconds (the
    embedding pass and every k-means level; 0 in warm-up epochs). Warm-up epochs detect
    nothing and log no detection diagnostics (metrics.csv: nan; curves.png leaves them out).

    `confidence_rule` ranks samples within a cluster (confidence.RULES). With `oracle_fraction`
    set (ablation, --fn_oracle) no clustering runs: the accepted labels are the true classes of
    a seeded class-balanced alpha * oracle_fraction of each class (ifnd_tf/oracle.py), and the
    logs carry oracle = 1. With `quantile` set (--fn_detector=quantile) no clustering runs
    either: the model masks each anchor's alpha * quantile most similar queue entries
    (fn_fraction in the logs), and fn_precision / fn_recall are the epoch's counts over the
    masked queue entries (the model's fn_correct / fn_true trackers), not over all pairs.
    """

    def __init__(self, embedding_data: tf.data.Dataset, schedule: clustering.AcceptanceSchedule,
                 kmeans: clustering.KMeansSettings, seed: int,
                 cluster_features: str = CENTER_VIEW, true_labels: np.ndarray | None = None,
                 log_dir: str | None = None, verbose: bool = True,
                 confidence_rule: str = "margin", neighbours_k: int = 10,
                 oracle_fraction: float | None = None, min_levels: int = 1,
                 query_pass: SharedPass | None = None, quantile: float | None = None):
        super().__init__()
        if confidence_rule not in confidence.RULES:
            raise ValueError(f"confidence_rule must be one of {confidence.RULES}, "
                             f"got {confidence_rule!r}")
        if oracle_fraction is not None and true_labels is None:
            raise ValueError("the oracle needs true labels")
        self.confidence = {"rule": confidence_rule, "neighbours_k": neighbours_k}
        self.oracle_fraction = oracle_fraction
        self.quantile = quantile
        self.min_levels = min_levels  # the loss's vote, for the FN diagnostics
        self.previous_assignment: np.ndarray | None = None  # for the stability rule
        if cluster_features not in CLUSTER_FEATURES:
            raise ValueError(f"cluster_features must be one of {CLUSTER_FEATURES}, "
                             f"got {cluster_features!r}")
        self.embedding_data = embedding_data
        self.schedule = schedule
        self.kmeans = kmeans
        self.seed = seed
        self.cluster_features = cluster_features
        self.embedder: DatasetEmbedder | None = None  # made once the model is set
        self.query_pass = query_pass
        self.true_labels = true_labels
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.verbose = verbose
        self.epoch_logs: dict[str, float] = {}
        self.details: dict[str, float] = {}
        self.resumed_epoch: int | None = None  # resumed mid-way: its restored table is kept

    def on_train_begin(self, logs=None):
        if self.quantile is not None and self.true_labels is not None:
            self.model.set_true_labels(self.true_labels)  # the model counts them (labelled)

    def on_epoch_begin(self, epoch, logs=None):
        alpha = self.schedule.alpha(epoch)
        self.epoch_logs, self.details = {"alpha": alpha, "clustering_seconds": 0.0}, {}
        if self.oracle_fraction is not None:
            self.epoch_logs["oracle"] = 1.0
        if self.quantile is not None:
            self.model.fn_fraction.assign(alpha * self.quantile)
            self.epoch_logs["fn_fraction"] = alpha * self.quantile
        elif epoch == self.resumed_epoch:  # the table the interrupted epoch trained with
            self._log_label_diagnostics(self.model.pseudo_labels.numpy() if alpha > 0 else None)
        elif alpha > 0:
            self._update_pseudo_labels(epoch, alpha)
        else:
            self.model.clear_pseudo_labels()
            self._log_label_diagnostics(None)
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
            if self.quantile is not None:  # the step's counts -> precision / recall
                correct, true = logs.pop("fn_correct", None), logs.pop("fn_true", None)
                if correct is not None and self.epoch_logs["fn_fraction"] > 0:
                    masked = float(logs["masked"])
                    logs["fn_precision"] = float(correct) / masked if masked else 0.0
                    logs["fn_recall"] = float(correct) / float(true) if true else 0.0

    def _update_pseudo_labels(self, epoch: int, alpha: float) -> None:
        start = time.perf_counter()
        if self.oracle_fraction is not None:
            labels = oracle.oracle_pseudo_labels(self.true_labels, len(self.kmeans.num_clusters),
                                                 alpha * self.oracle_fraction, self.seed)
            self.model.set_pseudo_labels(labels)
            self.epoch_logs["clustering_seconds"] = time.perf_counter() - start
            self._log_label_diagnostics(labels)
            return
        embeddings = self._embeddings()
        labels, stats = self.kmeans.pseudo_labels(embeddings, alpha, seed=self.seed + 1000 * epoch,
                                                  previous=self.previous_assignment,
                                                  **self.confidence)
        self.previous_assignment = np.stack([level.assignment for level in stats])
        self.model.set_pseudo_labels(labels)
        self.epoch_logs["clustering_seconds"] = time.perf_counter() - start
        for level in stats:
            self.details[f"accepted_k{level.k}"] = level.accepted_fraction
            self.details[f"largest_cluster_k{level.k}"] = level.largest_cluster
            self.details[f"median_cluster_k{level.k}"] = level.median_cluster
            self.details[f"smallest_cluster_k{level.k}"] = level.smallest_cluster
        self._log_label_diagnostics(labels)

    def _embeddings(self) -> np.ndarray:
        """The training keys if asked for and complete, else the centre-view pass (of the
        query encoder with QUERY_VIEW, of the key encoder otherwise)."""
        if self.cluster_features == QUERY_VIEW:
            shared = self.query_pass.take("embedding") if self.query_pass is not None else None
            self.epoch_logs["shared_pass"] = float(shared is not None)
            if shared is not None:
                return shared
        if self.cluster_features == TRAIN_KEYS:
            keys = self.model.train_keys.numpy()
            complete = bool(np.any(keys != 0, axis=1).all())
            self.details["clustered_train_keys"] = float(complete)
            if complete:
                return keys
        if self.embedder is None:
            encoder = (self.model.encoder if self.cluster_features == QUERY_VIEW
                       else self.model.key_encoder)
            self.embedder = DatasetEmbedder(encoder, self.model.distribute_strategy,
                                            self.embedding_data, self.model.num_examples)
        return self.embedder()

    def _log_label_diagnostics(self, labels: np.ndarray | None) -> None:
        """Accepted samples and, given true labels, FN precision / recall and purity per level.

        In warm-up (labels None) nothing is detected: the detection diagnostics are left out
        (not 0, which would draw a fake jump in curves.png and TensorBoard).
        """
        self.epoch_logs["accepted"] = 0 if labels is None else diagnostics.num_accepted(labels)
        if labels is not None and self.true_labels is not None:
            self.epoch_logs.update(
                diagnostics.label_quality(labels, self.true_labels, self.kmeans.num_clusters,
                                          self.min_levels))
