import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from ifnd_tf import clustering


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
    centroids = clustering._fit_tf(points, init, iterations=1)
    np.testing.assert_allclose(centroids[1], points[3], atol=1e-6)
    assert not np.allclose(centroids[0], centroids[1])
    final = clustering._fit_tf(points, init, iterations=3)
    assign, _ = clustering.assign_with_confidence(points, final)
    np.testing.assert_array_equal(assign, [0, 0, 0, 1])
