"""Pseudo-labels from a hierarchy of k-means clusterings (kmeans.py), accepted incrementally.

At each level every sample gets its nearest centroid and a confidence; the labels of each
cluster's most confident alpha fraction are accepted (`accept_top_fraction`), alpha growing
with the epochs (`AcceptanceSchedule`). The same rule for every k-means backend.
"""
import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import threadpoolctl

from ifnd_tf import confidence
from ifnd_tf.errors import ConfigError
from ifnd_tf.kmeans import (  # noqa: F401 (re-exported: the names callers know clustering by)
    BACKENDS,
    DEFAULT_MEMORY_BUDGET,
    DEVICES,
    SEQUENTIAL_SEEDING_MAX_K,
    SKLEARN_MAX_K,
    assign_with_confidence,
    batched_kmeans_plus_plus_seeds,
    block_shape,
    check_backend_k,
    faiss_uses_gpu,
    fit_centroids,
    kmeans_plus_plus_seeds,
    l2_normalize,
    nearest_two,
    seed_centroids,
)

SCHEDULE_SHAPES = ("linear", "cosine")
UNLABELED = -1


@dataclasses.dataclass(frozen=True)
class AcceptanceSchedule:
    """Fraction alpha of samples whose pseudo-label is accepted, per epoch (0-based).

    alpha is 0 during warm-up; from the first epoch after it, alpha grows from `start` towards
    `end` and reaches `end` exactly at the last epoch (the incremental part of IFND).
    """

    total_epochs: int
    warmup_epochs: int
    start: float = 0.0
    end: float = 1.0
    shape: str = "linear"

    def __post_init__(self):
        if self.shape not in SCHEDULE_SHAPES:
            raise ConfigError(f"--alpha_shape must be one of {SCHEDULE_SHAPES}, got {self.shape!r}")

    def alpha(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return 0.0
        progress = (epoch - self.warmup_epochs + 1) / max(self.total_epochs - self.warmup_epochs, 1)
        progress = min(progress, 1.0)
        if self.shape == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return self.start + (self.end - self.start) * progress


@dataclasses.dataclass(frozen=True)
class KMeansSettings:
    """The k-means hierarchy: k per level, backend, Lloyd iterations, sample cap, threads,
    faiss device and the bytes of one similarity block."""

    num_clusters: tuple[int, ...]
    backend: str = "faiss"
    iterations: int = 20
    max_points_per_centroid: int = 256
    threads: int | None = None
    device: str = "cpu"
    memory_budget: int = DEFAULT_MEMORY_BUDGET

    def __post_init__(self):
        # At startup, not after the first epoch's embedding pass.
        for k in self.num_clusters:
            check_backend_k(self.backend, k)
        faiss_uses_gpu(self.device, self.backend)

    def pseudo_labels(self, embeddings: np.ndarray, alpha: float, seed: int,
                      rule: str = "margin", previous: np.ndarray | None = None,
                      neighbours_k: int = 10) -> tuple[np.ndarray, list["LevelStats"]]:
        """`hierarchical_pseudo_labels` with these settings (and a --fn_confidence rule)."""
        return hierarchical_pseudo_labels(embeddings, self.num_clusters, alpha, self.backend, seed,
                                          self.iterations, self.max_points_per_centroid,
                                          self.threads, rule, previous, neighbours_k,
                                          device=self.device, memory_budget=self.memory_budget)


def accept_top_fraction(assign: np.ndarray, confidence: np.ndarray, alpha: float,
                        tiebreak: np.ndarray | None = None) -> np.ndarray:
    """Keep the label of the round(alpha * size) most confident members of each cluster
    (equal confidences ordered by `tiebreak`, descending, if given)."""
    keys = (-confidence, assign) if tiebreak is None else (-tiebreak, -confidence, assign)
    order = np.lexsort(keys)  # by cluster, then confidence descending
    sorted_clusters = assign[order]
    cluster_start = np.searchsorted(sorted_clusters, sorted_clusters, side="left")
    rank_in_cluster = np.arange(len(order)) - cluster_start
    sizes = np.bincount(assign)
    quota = np.floor(alpha * sizes + 0.5).astype(np.int64)
    accepted = np.empty(len(order), bool)
    accepted[order] = rank_in_cluster < quota[sorted_clusters]
    return np.where(accepted, assign, UNLABELED).astype(np.int32)


@dataclasses.dataclass
class LevelStats:
    """What one hierarchy level did, for logs."""

    k: int
    accepted_fraction: float
    smallest_cluster: int
    median_cluster: float
    largest_cluster: int
    # This pass's cluster of every sample (not logged): the next pass's `stability` rule.
    assignment: np.ndarray | None = dataclasses.field(default=None, repr=False)


def hierarchical_pseudo_labels(embeddings: np.ndarray, ks: Sequence[int], alpha: float,
                               backend: str, seed: int, iterations: int = 20,
                               max_points_per_centroid: int = 256, threads: int | None = None,
                               rule: str = "margin", previous: np.ndarray | None = None,
                               neighbours_k: int = 10, *, device: str = "cpu",
                               memory_budget: int = DEFAULT_MEMORY_BUDGET
                               ) -> tuple[np.ndarray, list[LevelStats]]:
    """Accepted pseudo-labels [levels, N] (-1 = not accepted) for each k in `ks`.

    `rule` is the confidence that ranks samples within a cluster (confidence.RULES; margin =
    the paper); `previous` [levels, N] is the last pass's assignment, for the stability rule.

    `threads` caps the BLAS / OpenMP threads of numpy, faiss and sklearn (None: their
    default): their threads wait on each other when the cores are busy with TF's, which
    made the default much slower on 2 busy cores (docs/design.md, "k-means").
    `device` places faiss (faiss_uses_gpu); `memory_budget` bounds every similarity block.
    """
    with threadpoolctl.threadpool_limits(threads):
        embeddings = l2_normalize(np.asarray(embeddings, np.float32))
        assigns, margins = cluster_levels(embeddings, ks, backend, seed, iterations,
                                          max_points_per_centroid, device=device,
                                          memory_budget=memory_budget)
        scores = confidence.scores(rule, assigns, margins, embeddings, previous, neighbours_k)
    labels = accept_levels(assigns, scores, margins, alpha)
    stats = []
    for k, assign, accepted in zip(ks, assigns, labels):
        sizes = np.bincount(assign, minlength=k)
        stats.append(LevelStats(k, float(np.mean(accepted >= 0)), int(sizes.min()),
                                float(np.median(sizes)), int(sizes.max()), assign))
    return labels, stats


def accept_levels(assigns: np.ndarray, scores: np.ndarray, margins: np.ndarray,
                  alpha: float) -> np.ndarray:
    """[levels, N] accepted labels: per level and cluster the top alpha by score, then margin."""
    return np.stack([accept_top_fraction(a, s, alpha, tiebreak=m)
                     for a, s, m in zip(assigns, scores, margins)])


def cluster_levels(embeddings: np.ndarray, ks: Sequence[int], backend: str, seed: int,
                   iterations: int = 20, max_points_per_centroid: int = 256, *,
                   device: str = "cpu", memory_budget: int = DEFAULT_MEMORY_BUDGET
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Every level's assignment and margin, [levels, N] each (unit-norm embeddings)."""
    assigns, margins = [], []
    for level, k in enumerate(ks):
        centroids = fit_centroids(embeddings, k, backend, seed + level, iterations,
                                  max_points_per_centroid, device=device,
                                  memory_budget=memory_budget)
        assign, margin = assign_with_confidence(embeddings, centroids, memory_budget)
        assigns.append(assign)
        margins.append(margin)
    return np.stack(assigns), np.stack(margins)
