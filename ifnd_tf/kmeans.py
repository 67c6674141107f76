"""k-means at any k in bounded memory: seeding, the Lloyd iterations of three backends
(faiss, sklearn, tf), and the nearest-centroid assignment with its margin.

Backends only fit centroids on (a sample of) the embeddings; seeding, sub-sampling and
assignment are shared, so every backend gives the same clustering from the same seeds. Every
similarity between points and centroids is computed in blocks of at most `memory_budget`
bytes (rows of points x a chunk of centroids, with a running best / top-2 over the centroid
chunks), so k = 100,000 at N = 1.28M never builds the 512 GB [N, k] matrix. Above
SEQUENTIAL_SEEDING_MAX_K, seeding reads the data once per round of seeds instead of once per
seed (`batched_kmeans_plus_plus_seeds`).
"""
import functools

import numpy as np
import tensorflow as tf
import threadpoolctl

from ifnd_tf.errors import ConfigError

BACKENDS = ("faiss", "sklearn", "tf")
DEVICES = ("cpu", "gpu", "auto")
# Bytes of one float32 similarity block [rows, centroids]: 256 MiB keeps k = 100,000 at
# N = 1.28M well inside a 16 GB GPU (the points, 655 MB, dominate).
DEFAULT_MEMORY_BUDGET = 256 << 20
# k-means++ one seed at a time up to this k: the seeds every configuration used so far gets
# (k = 10 ... 1000) stay exactly what they were; above it, batched rejection sampling.
SEQUENTIAL_SEEDING_MAX_K = 1000
# sklearn's Lloyd step is CPU-only and each of our per-iteration fits runs two passes over
# [N, k] (the step and its labels/inertia): refused above this k, faiss or tf do the same.
SKLEARN_MAX_K = 10_000
_ASSIGN_CHUNK = 8192  # numpy rows per block (the assignment's row chunk before issue 30)
_BLOCK_ROW_TARGET = 4096  # rows a block keeps before the centroids are split into chunks
# Seeds accepted per seeding round at most: its 4x proposals (2 MB at dim 128) stay in cache
# for the per-seed update; the pool is read once per round.
_SEEDING_ROUND_MAX = 1024
_PROPOSALS_PER_SEED = 4  # D² proposals drawn per seed wanted in a round
_SAME_DIRECTION = 1e-6  # squared distance below which two unit rows count as one direction


def check_backend_k(backend: str, k: int) -> None:
    """ConfigError for an unknown backend, or sklearn above SKLEARN_MAX_K (faiss, tf scale)."""
    if backend not in BACKENDS:
        raise ConfigError(f"--kmeans_backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "sklearn" and k > SKLEARN_MAX_K:
        raise ConfigError(f"--kmeans_backend=sklearn is CPU-only and runs 2 passes per iteration:"
                          f" k={k} > {SKLEARN_MAX_K}, use --kmeans_backend=faiss or tf")


def faiss_uses_gpu(device: str, backend: str) -> bool:
    """Whether faiss runs on a GPU: "gpu" demands one, "auto" takes one when faiss sees it.

    Only faiss is placed by this setting: the tf backend runs where TensorFlow places it and
    sklearn has no GPU, so "gpu" with them is refused rather than silently ignored.
    """
    if device not in DEVICES:
        raise ConfigError(f"--kmeans_device must be one of {DEVICES}, got {device!r}")
    if device == "cpu" or (backend != "faiss" and device == "auto"):
        return False
    if backend != "faiss":
        where = "runs where TensorFlow places it" if backend == "tf" else "is CPU-only"
        raise ConfigError(f"--kmeans_device=gpu places faiss only; --kmeans_backend={backend} "
                          f"{where}")
    import faiss  # optional dependency, imported only when chosen

    supported = hasattr(faiss, "StandardGpuResources")
    visible = supported and faiss.get_num_gpus() > 0
    if device == "auto" or visible:
        return visible
    if not supported:
        raise ConfigError("--kmeans_device=gpu: the installed faiss has no GPU support "
                          "(pip install faiss-gpu-cu12 in place of faiss-cpu)")
    raise ConfigError("--kmeans_device=gpu: faiss has GPU support but sees no GPU "
                      "(CUDA_VISIBLE_DEVICES, driver)")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def block_shape(rows: int, cols: int, memory_budget: int,
                max_rows: int | None = None) -> tuple[int, int]:
    """[rows, cols] of one float32 similarity block within `memory_budget` bytes.

    Whole rows of centroids while a block still holds _BLOCK_ROW_TARGET points (one pass over
    the centroids per row chunk, as before issue 30); beyond that the centroids are chunked.
    """
    if memory_budget < 4:
        raise ValueError(f"memory_budget must be at least 4 bytes, got {memory_budget}")
    elements = memory_budget // 4
    block_cols = min(cols, max(1, elements // min(rows, _BLOCK_ROW_TARGET)))
    block_rows = min(rows, max(1, elements // block_cols), max_rows or rows)
    return block_rows, block_cols


def _np_block(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """One similarity block: every numpy point-centroid product goes through here."""
    return points @ centroids.T


def _tf_block(points: tf.Tensor, centroids: tf.Tensor) -> tf.Tensor:
    """One similarity block of the tf backend (the only [rows, cols] tensor it builds)."""
    return tf.matmul(points, centroids, transpose_b=True)


def _merge_top_two(sims, offset, best, arg, second):
    """Running top-2 per row: a block's best two merged into those of earlier blocks.

    Overwrites `sims` (its best becomes -inf) instead of sorting a copy: the block is the
    only [rows, cols] array.
    """
    rows = np.arange(len(sims))
    top = np.argmax(sims, axis=1)
    top_sims = sims[rows, top]
    sims[rows, top] = -np.inf
    runner_up = sims.max(axis=1)  # -inf for a one-column block
    better = top_sims > best  # ties keep the earlier (lower-index) centroid
    return (np.where(better, top_sims, best), np.where(better, top + offset, arg),
            np.where(better, np.maximum(best, runner_up), np.maximum(second, top_sims)))


def nearest_two(points: np.ndarray, centroids: np.ndarray,
                memory_budget: int = DEFAULT_MEMORY_BUDGET
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per point: nearest centroid, its cosine and the second best cosine, in bounded blocks."""
    n, k = len(points), len(centroids)
    rows, cols = block_shape(n, k, memory_budget, max_rows=_ASSIGN_CHUNK)
    assign = np.empty(n, np.int64)
    best = np.empty(n, np.float32)
    second = np.empty(n, np.float32)
    for lo in range(0, n, rows):
        chunk = points[lo:lo + rows]
        top = (np.full(len(chunk), -np.inf, np.float32), np.zeros(len(chunk), np.int64),
               np.full(len(chunk), -np.inf, np.float32))
        for c0 in range(0, k, cols):
            top = _merge_top_two(_np_block(chunk, centroids[c0:c0 + cols]), c0, *top)
        best[lo:lo + rows], assign[lo:lo + rows], second[lo:lo + rows] = top
    return assign, best, second


def _too_few_directions(k: int, found: int) -> ConfigError:
    return ConfigError(
        f"--num_clusters: k={k} but the embeddings have only {found} distinct "
        f"directions (collapsed encoder or duplicate images); use a smaller k")


def _seeding_pool(x: np.ndarray, k: int, rng: np.random.Generator,
                  max_points: int) -> np.ndarray:
    rows = min(x.shape[0], max(max_points, 20 * k))
    return x[rng.choice(x.shape[0], rows, replace=False)] if rows < x.shape[0] else x


def kmeans_plus_plus_seeds(x: np.ndarray, k: int, rng: np.random.Generator,
                           max_points: int = 20_000) -> np.ndarray:
    """k-means++ seeding on at most max(max_points, 20k) rows of unit vectors.

    Random seeding often puts two seeds in one true cluster at small k (seen in the tests);
    k-means++ on a capped sample keeps seeding cheap at k = 1000 (docs/design.md, "k-means").
    Fewer than k distinct rows (collapsed embeddings, duplicate images) cannot give k clusters:
    ConfigError naming --num_clusters rather than a division by zero.
    One mat-vec over the pool per seed: k * 20k rows, so only up to SEQUENTIAL_SEEDING_MAX_K.
    """
    pool = _seeding_pool(x, k, rng, max_points)
    rows = len(pool)
    seeds = [pool[rng.integers(rows)]]
    nearest = np.full(rows, np.inf, np.float32)
    for _ in range(1, k):
        nearest = np.minimum(nearest, np.maximum(2.0 - 2.0 * pool @ seeds[-1], 0.0))
        total = nearest.sum()
        if not total > 0:
            raise _too_few_directions(k, len(seeds))
        seeds.append(pool[rng.choice(rows, p=nearest / total)])
    return np.stack(seeds).astype(np.float32)


def _squared_distance(sims: np.ndarray) -> np.ndarray:
    """2 - 2 cos of unit rows; rounding-level distances are 0, so a seed is never repeated."""
    d2 = np.maximum(2.0 - 2.0 * sims, 0.0)
    d2[d2 < _SAME_DIRECTION] = 0.0
    return d2


def batched_kmeans_plus_plus_seeds(x: np.ndarray, k: int, rng: np.random.Generator,
                                   max_points: int = 20_000,
                                   memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """k-means++ seeds (same distribution, other draws) reading the pool once per round.

    The sequential loop reads the whole pool once per seed (k * 20k rows: 1.28M rows 100,000
    times at k = 100,000). Here a round of up to min(seeds so far, _SEEDING_ROUND_MAX) seeds
    costs one blocked matmul of the pool against them; the per-seed work touches only the
    round's proposals (`_seeding_round`). Same pool and ConfigError as kmeans_plus_plus_seeds.
    """
    pool = _seeding_pool(x, k, rng, max_points)
    rounds = [pool[rng.integers(len(pool))][None]]
    nearest = _squared_distance(nearest_two(pool, rounds[0], memory_budget)[1])
    found = 1
    while found < k:
        wanted = min(k - found, found, _SEEDING_ROUND_MAX)
        rounds.append(_seeding_round(pool, nearest, wanted, rng, k, found))
        found += len(rounds[-1])
        nearest = np.minimum(nearest,
                             _squared_distance(nearest_two(pool, rounds[-1], memory_budget)[1]))
    return np.concatenate(rounds).astype(np.float32)


@functools.cache
def _blas_threads() -> threadpoolctl.ThreadpoolController:
    """Found once: threadpool_limits() scans the loaded libraries on every call."""
    return threadpoolctl.ThreadpoolController()


def _seeding_round(pool: np.ndarray, nearest: np.ndarray, wanted: int,
                   rng: np.random.Generator, k: int, found: int) -> np.ndarray:
    """Up to `wanted` exact k-means++ draws by rejection sampling from stale distances.

    Proposals are drawn from D² to the seeds before this round (`nearest`); one is accepted
    with probability D²(now) / D²(round start), "now" counting the seeds accepted in this
    round. The target never exceeds the proposal, so each accepted row is distributed exactly
    as the sequential loop's next seed. The first proposal is always accepted.
    """
    cdf = np.cumsum(nearest, dtype=np.float64)
    if not cdf[-1] > 0:
        raise _too_few_directions(k, found)
    draws = rng.random(_PROPOSALS_PER_SEED * wanted) * cdf[-1]
    proposed = np.minimum(np.searchsorted(cdf, draws, side="right"), len(pool) - 1)
    points = pool[proposed]
    start = nearest[proposed].astype(np.float64)
    now = start.copy()
    thresholds = rng.random(len(proposed)) * start  # accept i while thresholds[i] < now[i]
    accepted = []
    with _blas_threads().limit(limits=1, user_api="blas"):  # tiny mat-vecs: no thread waits
        for i in range(len(proposed)):
            if thresholds[i] < now[i]:
                accepted.append(i)
                if len(accepted) == wanted:
                    break  # only later proposals can still be accepted:
                later = _squared_distance(points[i + 1:] @ points[i])
                now[i + 1:] = np.minimum(now[i + 1:], later)
    return points[accepted]


def seed_centroids(x: np.ndarray, k: int, rng: np.random.Generator,
                   memory_budget: int = DEFAULT_MEMORY_BUDGET,
                   sequential_max_k: int = SEQUENTIAL_SEEDING_MAX_K) -> np.ndarray:
    """k-means++ seeds: the sequential loop up to `sequential_max_k`, batched above it."""
    if k <= sequential_max_k:
        return kmeans_plus_plus_seeds(x, k, rng)
    return batched_kmeans_plus_plus_seeds(x, k, rng, memory_budget=memory_budget)


def _fit_faiss(x: np.ndarray, init: np.ndarray, iterations: int, gpu: bool = False) -> np.ndarray:
    """faiss's Lloyd; its search is blocked internally, so memory stays O(N + k) at any k."""
    import faiss  # optional dependency, imported only when chosen

    kmeans = faiss.Kmeans(x.shape[1], init.shape[0], niter=iterations, spherical=True,
                          max_points_per_centroid=x.shape[0], verbose=False, gpu=gpu)
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


def _tf_nearest(points: tf.Tensor, centroids: tf.Tensor,
                memory_budget: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Nearest centroid and its cosine per point, block by block (running max over chunks)."""
    n, k = int(points.shape[0]), int(centroids.shape[0])
    rows, cols = block_shape(n, k, memory_budget)
    assigns, bests = [], []
    for lo in range(0, n, rows):
        chunk = points[lo:lo + rows]
        best = arg = None
        for c0 in range(0, k, cols):
            sims = _tf_block(chunk, centroids[c0:c0 + cols])
            block_best, block_arg = tf.reduce_max(sims, axis=1), tf.argmax(sims, axis=1) + c0
            del sims  # before the next block: one [rows, cols] tensor at a time
            if best is None:
                best, arg = block_best, block_arg
            else:  # ties keep the earlier centroid, as one argmax over all of them would
                better = block_best > best
                best, arg = tf.where(better, block_best, best), tf.where(better, block_arg, arg)
        assigns.append(arg)
        bests.append(best)
    return tf.concat(assigns, axis=0), tf.concat(bests, axis=0)


def _fit_tf(x: np.ndarray, init: np.ndarray, iterations: int,
            memory_budget: int = DEFAULT_MEMORY_BUDGET) -> np.ndarray:
    """Spherical Lloyd iterations as blocked matmuls: runs on a GPU with no extra dependency.

    An empty cluster is re-seeded at the point farthest from its own centroid (the worst fit;
    several empty clusters take the next farthest ones), as faiss and sklearn re-seed theirs.
    """
    k = init.shape[0]
    points = tf.constant(x, tf.float32)
    centroids = tf.constant(init, tf.float32)
    for _ in range(iterations):
        assign, fit = _tf_nearest(points, centroids, memory_budget)
        sums = tf.math.unsorted_segment_sum(points, assign, k)
        counts = tf.math.unsorted_segment_sum(tf.ones_like(assign, tf.float32), assign, k)
        centroids = tf.math.l2_normalize(sums, axis=1)
        empty = tf.where(counts == 0)[:, 0]
        if tf.size(empty) > 0:
            farthest = tf.math.top_k(-fit, tf.size(empty)).indices
            centroids = tf.tensor_scatter_nd_update(centroids, empty[:, None],
                                                    tf.gather(points, farthest))
    return centroids.numpy()


def fit_centroids(embeddings: np.ndarray, k: int, backend: str, seed: int, iterations: int = 20,
                  max_points_per_centroid: int = 256, *, device: str = "cpu",
                  memory_budget: int = DEFAULT_MEMORY_BUDGET,
                  sequential_seeding_max_k: int = SEQUENTIAL_SEEDING_MAX_K) -> np.ndarray:
    """k L2-normalised centroids fitted on at most k * max_points_per_centroid samples.

    Seeding and sub-sampling are shared, so backends differ only in their Lloyd iterations.
    """
    n = embeddings.shape[0]
    if not 1 < k <= n:
        raise ConfigError(f"--num_clusters: k={k} must be in [2, number of samples={n}]")
    check_backend_k(backend, k)
    gpu = faiss_uses_gpu(device, backend)
    rng = np.random.default_rng(seed)
    sample_size = min(n, k * max_points_per_centroid)
    sample = embeddings
    if sample_size < n:
        sample = embeddings[rng.choice(n, sample_size, replace=False)]
    init = seed_centroids(sample, k, rng, memory_budget, sequential_seeding_max_k)
    if backend == "faiss":
        fitted = _fit_faiss(sample, init, iterations, gpu)
    elif backend == "tf":
        fitted = _fit_tf(sample, init, iterations, memory_budget)
    else:
        fitted = _fit_sklearn(sample, init, iterations)
    return l2_normalize(fitted)


def assign_with_confidence(embeddings: np.ndarray, centroids: np.ndarray,
                           memory_budget: int = DEFAULT_MEMORY_BUDGET
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid by cosine, and the margin cos(own) - cos(nearest other) as confidence."""
    assign, best, second = nearest_two(embeddings, centroids, memory_budget)
    return assign, best - second
