"""Pseudo-labels from a hierarchy of k-means clusterings, accepted incrementally.

k-means backends only fit centroids on (a sample of) the embeddings; assignment, the
confidence score and the per-cluster top-alpha acceptance are shared code, so every backend
produces labels by the same rule.
"""
import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
import threadpoolctl

from ifnd_tf import confidence
from ifnd_tf.errors import ConfigError

BACKENDS = ("faiss", "sklearn", "tf")
SCHEDULE_SHAPES = ("linear", "cosine")
UNLABELED = -1
_ASSIGN_CHUNK = 8192


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
    """The k-means hierarchy: k per level, backend, Lloyd iterations, sample cap, threads."""

    num_clusters: tuple[int, ...]
    backend: str = "faiss"
    iterations: int = 20
    max_points_per_centroid: int = 256
    threads: int | None = None

    def pseudo_labels(self, embeddings: np.ndarray, alpha: float, seed: int,
                      rule: str = "margin", previous: np.ndarray | None = None,
                      neighbours_k: int = 10) -> tuple[np.ndarray, list["LevelStats"]]:
        """`hierarchical_pseudo_labels` with these settings (and a --fn_confidence rule)."""
        return hierarchical_pseudo_labels(embeddings, self.num_clusters, alpha, self.backend, seed,
                                          self.iterations, self.max_points_per_centroid,
                                          self.threads, rule, previous, neighbours_k)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def kmeans_plus_plus_seeds(x: np.ndarray, k: int, rng: np.random.Generator,
                           max_points: int = 20_000) -> np.ndarray:
    """k-means++ seeding on at most max(max_points, 20k) rows of unit vectors.

    Random seeding often puts two seeds in one true cluster at small k (seen in the tests);
    k-means++ on a capped sample keeps seeding cheap at k = 1000 (docs/design.md, "k-means").
    Fewer than k distinct rows (collapsed embeddings, duplicate images) cannot give k clusters:
    ConfigError naming --num_clusters rather than a division by zero.
    """
    rows = min(x.shape[0], max(max_points, 20 * k))
    pool = x[rng.choice(x.shape[0], rows, replace=False)] if rows < x.shape[0] else x
    seeds = [pool[rng.integers(rows)]]
    nearest = np.full(rows, np.inf, np.float32)
    for _ in range(1, k):
        nearest = np.minimum(nearest, np.maximum(2.0 - 2.0 * pool @ seeds[-1], 0.0))
        total = nearest.sum()
        if not total > 0:
            raise ConfigError(
                f"--num_clusters: k={k} but the embeddings have only {len(seeds)} distinct "
                f"directions (collapsed encoder or duplicate images); use a smaller k")
        seeds.append(pool[rng.choice(rows, p=nearest / total)])
    return np.stack(seeds).astype(np.float32)


def _fit_faiss(x: np.ndarray, init: np.ndarray, iterations: int) -> np.ndarray:
    import faiss  # optional dependency, imported only when chosen

    kmeans = faiss.Kmeans(x.shape[1], init.shape[0], niter=iterations, spherical=True,
                          max_points_per_centroid=x.shape[0], verbose=False)
    kmeans.train(np.ascontiguousarray(x, dtype=np.float32), init_centroids=init)
    return kmeans.centroids


def _fit_sklearn(x: np.ndarray, init: np.ndarray, iterations: int) -> np.ndarray:
    """Spherical, as faiss and tf: one Lloyd step per fit, centroids re-normalised after each.

    sklearn's KMeans has no spherical mode; stepping it keeps its (threaded) assignment and
    update and its empty-cluster handling (re-seeded at far points).
    """
    from sklearn.cluster import KMeans

    centroids = init
    for _ in range(iterations):
        kmeans = KMeans(n_clusters=init.shape[0], init=centroids, n_init=1, max_iter=1,
                        algorithm="lloyd", tol=0.0)
        centroids = l2_normalize(kmeans.fit(x).cluster_centers_.astype(np.float32))
    return centroids


def _fit_tf(x: np.ndarray, init: np.ndarray, iterations: int) -> np.ndarray:
    """Spherical Lloyd iterations as matmuls: runs on a GPU with no extra dependency.

    An empty cluster is re-seeded at the point farthest from its own centroid (the worst fit;
    several empty clusters take the next farthest ones), as faiss and sklearn re-seed theirs.
    """
    k = init.shape[0]
    points = tf.constant(x, tf.float32)
    centroids = tf.constant(init, tf.float32)
    for _ in range(iterations):
        similarity = tf.matmul(points, centroids, transpose_b=True)
        assign = tf.argmax(similarity, axis=1)
        sums = tf.math.unsorted_segment_sum(points, assign, k)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(assign, tf.float32), assign, k)
        centroids = tf.math.l2_normalize(sums, axis=1)
        empty = tf.where(counts == 0)[:, 0]
        if tf.size(empty) > 0:
            fit = tf.reduce_max(similarity, axis=1)
            farthest = tf.math.top_k(-fit, tf.size(empty)).indices
            centroids = tf.tensor_scatter_nd_update(centroids, empty[:, None],
                                                    tf.gather(points, farthest))
    return centroids.numpy()


_FITTERS = {"faiss": _fit_faiss, "sklearn": _fit_sklearn, "tf": _fit_tf}


def fit_centroids(embeddings: np.ndarray, k: int, backend: str, seed: int, iterations: int = 20,
                  max_points_per_centroid: int = 256) -> np.ndarray:
    """k L2-normalised centroids fitted on at most k * max_points_per_centroid samples.

    Seeding and sub-sampling are shared, so backends differ only in their Lloyd iterations.
    """
    n = embeddings.shape[0]
    if not 1 < k <= n:
        raise ConfigError(f"--num_clusters: k={k} must be in [2, number of samples={n}]")
    if backend not in _FITTERS:
        raise ConfigError(f"--kmeans_backend must be one of {BACKENDS}, got {backend!r}")
    rng = np.random.default_rng(seed)
    sample_size = min(n, k * max_points_per_centroid)
    sample = embeddings
    if sample_size < n:
        sample = embeddings[rng.choice(n, sample_size, replace=False)]
    init = kmeans_plus_plus_seeds(sample, k, rng)
    return l2_normalize(_FITTERS[backend](sample, init, iterations))


def assign_with_confidence(embeddings: np.ndarray,
                           centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by cosine, and the margin cos(own) - cos(nearest other) as confidence."""
    assign = np.empty(embeddings.shape[0], np.int64)
    margin = np.empty(embeddings.shape[0], np.float32)
    for lo in range(0, embeddings.shape[0], _ASSIGN_CHUNK):
        sims = embeddings[lo:lo + _ASSIGN_CHUNK] @ centroids.T
        top2 = np.argpartition(-sims, 1, axis=1)[:, :2]
        top2_sims = np.take_along_axis(sims, top2, axis=1)
        first = np.argmax(top2_sims, axis=1)
        assign[lo:lo + _ASSIGN_CHUNK] = top2[np.arange(len(top2)), first]
        margin[lo:lo + _ASSIGN_CHUNK] = np.abs(top2_sims[:, 0] - top2_sims[:, 1])
    return assign, margin


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
                               neighbours_k: int = 10) -> tuple[np.ndarray, list[LevelStats]]:
    """Accepted pseudo-labels [levels, N] (-1 = not accepted) for each k in `ks`.

    `rule` is the confidence that ranks samples within a cluster (confidence.RULES; margin =
    the paper); `previous` [levels, N] is the last pass's assignment, for the stability rule.

    `threads` caps the BLAS / OpenMP threads of numpy, faiss and sklearn (None: their
    default): their threads wait on each other when the cores are busy with TF's, which
    made the default much slower on 2 busy cores (docs/design.md, "k-means").
    """
    with threadpoolctl.threadpool_limits(threads):
        embeddings = l2_normalize(np.asarray(embeddings, np.float32))
        assigns, margins = cluster_levels(embeddings, ks, backend, seed, iterations,
                                          max_points_per_centroid)
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
                   iterations: int = 20, max_points_per_centroid: int = 256
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Every level's assignment and margin, [levels, N] each (unit-norm embeddings)."""
    assigns, margins = [], []
    for level, k in enumerate(ks):
        centroids = fit_centroids(embeddings, k, backend, seed + level, iterations,
                                  max_points_per_centroid)
        assign, margin = assign_with_confidence(embeddings, centroids)
        assigns.append(assign)
        margins.append(margin)
    return np.stack(assigns), np.stack(margins)
