import collections
import itertools

import faiss
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from ifnd_tf import clustering, kmeans


def _separated_blobs(num_clusters=5, per_cluster=200, dim=16, seed=0):
    """Blobs around orthogonal directions: well separated after L2 normalisation too."""
    rng = np.random.default_rng(seed)
    centers = 8.0 * np.eye(dim)[rng.permutation(dim)[:num_clusters]]
    points = np.concatenate([c + rng.normal(size=(per_cluster, dim)) for c in centers])
    return points.astype(np.float32), np.repeat(np.arange(num_clusters), per_cluster)


@pytest.mark.parametrize("backend", clustering.BACKENDS)
def test_each_backend_recovers_separated_clusters(backend):
    points, truth = _separated_blobs()
    labels, stats = clustering.hierarchical_pseudo_labels(points, [5], 1.0, backend, seed=0)
    assert adjusted_rand_score(truth, labels[0]) == pytest.approx(1.0)
    assert stats[0].accepted_fraction == 1.0
    assert stats[0].smallest_cluster == stats[0].largest_cluster == 200


def test_backends_agree_on_easy_data():
    points, _ = _separated_blobs(seed=3)
    results = [clustering.hierarchical_pseudo_labels(points, [5], 1.0, b, seed=1)[0][0]
               for b in clustering.BACKENDS]
    for other in results[1:]:
        assert adjusted_rand_score(results[0], other) == pytest.approx(1.0)


@pytest.mark.parametrize("backend", clustering.BACKENDS)
def test_same_seed_same_labels(backend):
    points, _ = _separated_blobs(num_clusters=8, per_cluster=50, seed=5)
    points += np.random.default_rng(9).normal(size=points.shape).astype(np.float32) * 4
    first = clustering.hierarchical_pseudo_labels(points, [8, 16], 0.5, backend, seed=7)[0]
    second = clustering.hierarchical_pseudo_labels(points, [8, 16], 0.5, backend, seed=7)[0]
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("epoch, expected", [(0, 0.0), (1, 0.0), (2, 0.25), (4, 0.75), (5, 1.0)])
def test_linear_schedule_reaches_end_at_last_epoch(epoch, expected):
    # 6 epochs, 2 warm-up: alpha = 0, 0 then four linear steps from 0 towards 1.
    schedule = clustering.AcceptanceSchedule(6, 2, 0.0, 1.0, "linear")
    assert schedule.alpha(epoch) == pytest.approx(expected)


def test_schedule_start_value_and_cosine_shape():
    assert clustering.AcceptanceSchedule(6, 2, 0.2, 1.0).alpha(2) == pytest.approx(0.4)
    # cosine at progress 0.5 is halfway; at progress 0.25 below linear.
    cosine = clustering.AcceptanceSchedule(6, 2, 0.0, 1.0, "cosine")
    assert cosine.alpha(3) == pytest.approx(0.5)
    assert cosine.alpha(2) == pytest.approx(0.5 * (1 - np.cos(np.pi / 4)))
    with pytest.raises(ValueError, match="--alpha_shape"):
        clustering.AcceptanceSchedule(6, 2, shape="step")


def test_top_alpha_is_per_cluster_by_confidence():
    assign = np.array([0, 0, 0, 0, 1, 1])
    confidence = np.array([0.1, 0.9, 0.5, 0.3, 0.2, 0.8])
    accepted = clustering.accept_top_fraction(assign, confidence, 0.5)
    # cluster 0 keeps its 2 most confident (0.9, 0.5), cluster 1 its best one (0.8).
    np.testing.assert_array_equal(accepted, [-1, 0, 0, -1, -1, 1])
    assert (clustering.accept_top_fraction(assign, confidence, 0.0) == -1).all()
    np.testing.assert_array_equal(clustering.accept_top_fraction(assign, confidence, 1.0), assign)


def test_confidence_is_margin_between_two_nearest_centroids():
    centroids = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    points = np.array([[0.8, 0.6], [0.6, 0.8], [1.0, 0.0]], np.float32)
    assign, margin = clustering.assign_with_confidence(points, centroids)
    np.testing.assert_array_equal(assign, [0, 1, 0])
    np.testing.assert_allclose(margin, [0.2, 0.2, 1.0], rtol=1e-6)


def test_accepted_fraction_follows_alpha_at_every_level():
    points, _ = _separated_blobs(num_clusters=4, per_cluster=100)
    labels, stats = clustering.hierarchical_pseudo_labels(points, [4, 8], 0.3, "sklearn", seed=0)
    assert labels.shape == (2, 400)
    for level, s in zip(labels, stats):
        assert abs(np.mean(level >= 0) - 0.3) < 0.02
        assert s.accepted_fraction == pytest.approx(np.mean(level >= 0))


def test_k_larger_than_dataset_names_the_flag():
    points, _ = _separated_blobs(num_clusters=2, per_cluster=5)
    with pytest.raises(ValueError, match="--num_clusters: k=11"):
        clustering.hierarchical_pseudo_labels(points, [11], 0.5, "sklearn", seed=0)


def test_subsampling_caps_the_training_set():
    points, truth = _separated_blobs(num_clusters=4, per_cluster=500)
    centroids = clustering.fit_centroids(points, 4, "tf", seed=0, max_points_per_centroid=20)
    assign, _ = clustering.assign_with_confidence(clustering.l2_normalize(points), centroids)
    assert adjusted_rand_score(truth, assign) == pytest.approx(1.0)


@pytest.mark.parametrize("backend", clustering.BACKENDS)
def test_fewer_distinct_points_than_k_names_the_flag(backend):
    # Collapsed embeddings: 3 distinct directions cannot make 5 clusters (was a division by 0).
    points = np.repeat(np.eye(8, dtype=np.float32)[:3], 40, axis=0)
    with pytest.raises(clustering.ConfigError, match="--num_clusters: k=5 .* only 3 distinct"):
        clustering.hierarchical_pseudo_labels(points, [5], 1.0, backend, seed=0)


def test_sklearn_backend_is_spherical_like_faiss_and_tf():
    # Points at very different norms along two directions: Euclidean k-means on the raw
    # points would split by norm; spherical k-means (all backends) splits by direction.
    rng = np.random.default_rng(0)
    directions = np.repeat(np.eye(4, dtype=np.float32)[:2], 100, axis=0)
    norms = np.tile(np.r_[np.full(50, 0.1), np.full(50, 10.0)], 2)[:, None].astype(np.float32)
    points = directions * norms + 0.02 * rng.normal(size=directions.shape).astype(np.float32)
    for backend in clustering.BACKENDS:
        centroids = clustering.fit_centroids(points, 2, backend, seed=0)
        np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    # The same seeds and the same spherical Lloyd steps: sklearn and tf land on one answer.
    unit = clustering.l2_normalize(points)
    unit += 0.3 * rng.normal(size=unit.shape).astype(np.float32)
    unit = clustering.l2_normalize(unit)
    np.testing.assert_allclose(clustering.fit_centroids(unit, 2, "sklearn", seed=3, iterations=5),
                               clustering.fit_centroids(unit, 2, "tf", seed=3, iterations=5),
                               atol=1e-4)


def test_tf_backend_reseeds_an_empty_cluster_at_the_worst_fit_point():
    # Two seeds on the same point: one cluster gets every point, the other none. The empty
    # one moves to the point farthest from its centroid instead of staying where it was.
    points = clustering.l2_normalize(np.array(
        [[1.0, 0.0], [0.99, 0.1], [0.98, -0.1], [0.0, 1.0]], np.float32))
    init = np.stack([points[0], points[0]])
    centroids = kmeans._fit_tf(points, init, iterations=1)
    np.testing.assert_allclose(centroids[1], points[3], atol=1e-6)
    assert not np.allclose(centroids[0], centroids[1])
    final = kmeans._fit_tf(points, init, iterations=3)
    assign, _ = clustering.assign_with_confidence(points, final)
    np.testing.assert_array_equal(assign, [0, 0, 0, 1])


# --- issue 30: clustering that scales with k -------------------------------------------------

def _frozen_kmeans_plus_plus(x, k, rng, max_points=20_000):
    """kmeans_plus_plus_seeds as it was before issue 30: the small-k reference."""
    rows = min(x.shape[0], max(max_points, 20 * k))
    pool = x[rng.choice(x.shape[0], rows, replace=False)] if rows < x.shape[0] else x
    seeds = [pool[rng.integers(rows)]]
    nearest = np.full(rows, np.inf, np.float32)
    for _ in range(1, k):
        nearest = np.minimum(nearest, np.maximum(2.0 - 2.0 * pool @ seeds[-1], 0.0))
        total = nearest.sum()
        seeds.append(pool[rng.choice(rows, p=nearest / total)])
    return np.stack(seeds).astype(np.float32)


def _unit_rows(n, dim, seed):
    rng = np.random.default_rng(seed)
    return clustering.l2_normalize(rng.normal(size=(n, dim)).astype(np.float32))


@pytest.mark.parametrize("n, k", [(60_000, 10), (60_000, 50), (25_000, 1000)])
def test_small_k_seeds_are_unchanged(n, k):
    # k <= SEQUENTIAL_SEEDING_MAX_K: the seeds (so the demo's numbers) are bit-identical.
    assert k <= clustering.SEQUENTIAL_SEEDING_MAX_K
    x = _unit_rows(n, 8, seed=k)
    expected = _frozen_kmeans_plus_plus(x, k, np.random.default_rng(4))
    np.testing.assert_array_equal(clustering.seed_centroids(x, k, np.random.default_rng(4)),
                                  expected)
    np.testing.assert_array_equal(
        clustering.kmeans_plus_plus_seeds(x, k, np.random.default_rng(4)), expected)


class _BlockRecorder:
    """Wraps a block function and keeps the largest block it built, in bytes."""

    def __init__(self, block):
        self.block, self.largest, self.calls = block, 0, 0

    def __call__(self, points, centroids):
        sims = self.block(points, centroids)
        self.largest = max(self.largest, int(np.prod(sims.shape)) * 4)
        self.calls += 1
        return sims


def test_every_similarity_block_stays_within_the_budget(monkeypatch):
    budget, (n, k) = 64 << 10, (2000, 300)
    assert n * k * 4 > 30 * budget  # the full matrix would not fit
    tf_blocks = _BlockRecorder(kmeans._tf_block)
    np_blocks = _BlockRecorder(kmeans._np_block)
    monkeypatch.setattr(kmeans, "_tf_block", tf_blocks)
    monkeypatch.setattr(kmeans, "_np_block", np_blocks)
    x = _unit_rows(n, 16, seed=1)
    centroids = clustering.fit_centroids(x, k, "tf", seed=0, iterations=2, memory_budget=budget,
                                         sequential_seeding_max_k=100)  # batched seeding too
    assign, margin = clustering.assign_with_confidence(x, centroids, memory_budget=budget)
    assert 0 < tf_blocks.largest <= budget and 0 < np_blocks.largest <= budget
    assert tf_blocks.calls > 2 * 2 and np_blocks.calls > 1  # chunked over centroids
    # The same answer as unbounded blocks.
    monkeypatch.undo()
    unbounded = clustering.fit_centroids(x, k, "tf", seed=0, iterations=2,
                                         sequential_seeding_max_k=100)
    np.testing.assert_allclose(centroids, unbounded, atol=1e-5)
    expected_assign, expected_margin = clustering.assign_with_confidence(x, unbounded)
    np.testing.assert_array_equal(assign, expected_assign)
    np.testing.assert_allclose(margin, expected_margin, atol=1e-5)


def test_block_shape_at_imagenet_scale_fits_the_default_budget():
    n, k = 1_281_167, 100_000
    rows, cols = clustering.block_shape(n, k, clustering.DEFAULT_MEMORY_BUDGET)
    assert rows * cols * 4 <= clustering.DEFAULT_MEMORY_BUDGET < n * k * 4
    # Small k: one block of whole centroid rows, as before the budget existed.
    assert clustering.block_shape(60_000, 50, clustering.DEFAULT_MEMORY_BUDGET) == (60_000, 50)


def test_backends_agree_at_k_10000():
    # 10,000 tight clusters of 3 points in 16-d; batched seeding (k > 1000), 3 Lloyd steps.
    k, rng = 10_000, np.random.default_rng(0)
    centres = clustering.l2_normalize(rng.normal(size=(k, 16)).astype(np.float32))
    points = np.repeat(centres, 3, axis=0) + 0.01 * rng.normal(size=(3 * k, 16)).astype(np.float32)
    points = clustering.l2_normalize(points)
    labels = {}
    for backend in clustering.BACKENDS:
        centroids = clustering.fit_centroids(points, k, backend, seed=0, iterations=3)
        labels[backend] = clustering.assign_with_confidence(points, centroids)[0]
    assert adjusted_rand_score(np.repeat(np.arange(k), 3), labels["tf"]) > 0.95
    assert adjusted_rand_score(labels["tf"], labels["faiss"]) == pytest.approx(1.0)
    # sklearn's Euclidean distance formula breaks a near-tie or two the other way.
    assert adjusted_rand_score(labels["tf"], labels["sklearn"]) > 0.999


def test_batched_seeds_are_distinct_unit_rows_and_deterministic():
    x = _unit_rows(6000, 8, seed=2)
    x[3000:] = x[:3000]  # duplicated images: a direction is still seeded at most once
    seeds = clustering.batched_kmeans_plus_plus_seeds(x, 1500, np.random.default_rng(3))
    assert seeds.shape == (1500, 8) and seeds.dtype == np.float32
    assert len(np.unique(seeds, axis=0)) == 1500
    np.testing.assert_allclose(np.linalg.norm(seeds, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(
        seeds, clustering.batched_kmeans_plus_plus_seeds(x, 1500, np.random.default_rng(3)))


def test_batched_seeds_follow_the_kmeans_plus_plus_distribution():
    # 5 points, k = 4: the exact probability of every ordered seed sequence, by enumeration,
    # against the batched sampler's frequencies (its second round uses rejection).
    x = clustering.l2_normalize(np.array([[1, 0], [1, 0.2], [0, 1], [-1, 0.1], [-0.3, -1]],
                                         np.float32))
    d2 = np.maximum(2 - 2 * x @ x.T, 0)

    def probability(sequence):
        p, nearest = 1 / len(x), d2[sequence[0]]
        for index in sequence[1:]:
            p *= nearest[index] / nearest.sum()
            nearest = np.minimum(nearest, d2[index])
        return p

    exact = {s: probability(s) for s in itertools.permutations(range(5), 4)}
    trials, rng = 3000, np.random.default_rng(0)
    counts = collections.Counter()
    for _ in range(trials):
        seeds = clustering.batched_kmeans_plus_plus_seeds(x, 4, rng)
        counts[tuple(int(np.argmax(x @ s)) for s in seeds)] += 1
    for sequence, p in exact.items():
        assert abs(counts[sequence] / trials - p) < 4 * np.sqrt(p * (1 - p) / trials) + 1e-3


def test_batched_seeding_recovers_separated_clusters(monkeypatch):
    # 40 tight clusters around orthogonal directions, k = 40 through the batched path. Like
    # the sequential loop, k-means++ can miss a cluster when clusters are wide (both recovered
    # all 40 for 19 and 18 of 20 seeds at this noise, 8 of 20 at 3x it).
    monkeypatch.setattr(kmeans, "kmeans_plus_plus_seeds", None)  # not the sequential loop
    rng = np.random.default_rng(1)
    centres = 8.0 * np.eye(64, dtype=np.float32)[:40]
    points = np.repeat(centres, 50, axis=0) + 0.03 * rng.normal(size=(2000, 64)).astype(np.float32)
    points, truth = clustering.l2_normalize(points), np.repeat(np.arange(40), 50)
    for backend in ("tf", "faiss"):
        centroids = clustering.fit_centroids(points, 40, backend, seed=0, iterations=5,
                                             sequential_seeding_max_k=2)
        assign, _ = clustering.assign_with_confidence(points, centroids)
        assert adjusted_rand_score(truth, assign) == pytest.approx(1.0)


def test_batched_seeding_names_the_flag_on_too_few_directions():
    points = np.repeat(np.eye(8, dtype=np.float32)[:3], 40, axis=0)
    with pytest.raises(clustering.ConfigError, match="--num_clusters: k=5 .* only 3 distinct"):
        clustering.fit_centroids(points, 5, "tf", seed=0, sequential_seeding_max_k=2)


def test_sklearn_is_refused_at_large_k_naming_the_flag():
    k = clustering.SKLEARN_MAX_K + 1
    with pytest.raises(clustering.ConfigError, match="--kmeans_backend=sklearn .* k=10001"):
        clustering.KMeansSettings((100, k), "sklearn")
    clustering.KMeansSettings((100, k), "faiss")
    clustering.KMeansSettings((100, k), "tf")


@pytest.mark.skipif(hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0,
                    reason="this faiss sees a GPU")
def test_kmeans_device_without_a_gpu():
    with pytest.raises(clustering.ConfigError) as refused:
        clustering.KMeansSettings((10,), "faiss", device="gpu")
    assert str(refused.value).startswith("--kmeans_device=gpu: the installed faiss has no GPU")
    assert "\n" not in str(refused.value)
    assert not clustering.faiss_uses_gpu("auto", "faiss")
    assert not clustering.faiss_uses_gpu("cpu", "faiss")
    settings = clustering.KMeansSettings((5,), "faiss", device="auto")
    points, truth = _separated_blobs()
    labels, _ = settings.pseudo_labels(points, 1.0, seed=0)
    assert adjusted_rand_score(truth, labels[0]) == pytest.approx(1.0)


def test_kmeans_device_values_are_checked():
    with pytest.raises(clustering.ConfigError, match="--kmeans_device must be one of"):
        clustering.KMeansSettings((10,), "faiss", device="tpu")
    with pytest.raises(clustering.ConfigError, match="--kmeans_device=gpu places faiss only"):
        clustering.KMeansSettings((10,), "sklearn", device="gpu")
    assert not clustering.faiss_uses_gpu("auto", "tf")
