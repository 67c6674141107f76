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
    assert clustering.acceptance_rate(epoch, 6, 2, 0.0, 1.0, "linear") == pytest.approx(expected)


def test_schedule_start_value_and_cosine_shape():
    assert clustering.acceptance_rate(2, 6, 2, 0.2, 1.0, "linear") == pytest.approx(0.4)
    # cosine at progress 0.5 is halfway; at progress 0.25 below linear.
    assert clustering.acceptance_rate(3, 6, 2, 0.0, 1.0, "cosine") == pytest.approx(0.5)
    assert clustering.acceptance_rate(2, 6, 2, 0.0, 1.0, "cosine") == pytest.approx(
        0.5 * (1 - np.cos(np.pi / 4)))
    with pytest.raises(ValueError, match="--alpha_shape"):
        clustering.acceptance_rate(3, 6, 2, shape="step")


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
    assign, _ = clustering.assign_with_confidence(clustering._l2_normalize(points), centroids)
    assert adjusted_rand_score(truth, assign) == pytest.approx(1.0)
