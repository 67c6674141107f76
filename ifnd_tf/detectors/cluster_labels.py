"""The paper's detector: accepted k-means labels of a hierarchy (Chen et al., ICLR 2022)."""
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from ifnd_tf import clustering
from ifnd_tf.confidence import RULES
from ifnd_tf.config import CENTER_VIEW, CLUSTER_FEATURES, QUERY_VIEW, TRAIN_KEYS
from ifnd_tf.detectors.base import FIRST_REPLICA, EpochInputs
from ifnd_tf.detectors.label_table import LabelTable
from ifnd_tf.embedding import DatasetEmbedder


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
        self.clustered(embeddings, stats)
        for level in stats:
            details[f"accepted_k{level.k}"] = level.accepted_fraction
            details[f"largest_cluster_k{level.k}"] = level.largest_cluster
            details[f"median_cluster_k{level.k}"] = level.median_cluster
            details[f"smallest_cluster_k{level.k}"] = level.smallest_cluster
        return labels

    def clustered(self, embeddings: np.ndarray, stats: list[clustering.LevelStats]) -> None:
        """After each pass: the embeddings and every level's assignment, for a subclass."""

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
