import numpy as np

from ifnd_tf import knn


def _blobs(num_per_class, num_classes, dim, seed, spread=0.05):
    """Points around orthogonal class directions: linearly and kNN separable."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), num_per_class)
    centres = np.eye(dim)[:num_classes]
    points = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return points.astype(np.float32), labels


def test_knn_on_separable_embeddings_is_perfect():
    train, train_labels = _blobs(100, 10, 32, seed=0)
    test, test_labels = _blobs(30, 10, 32, seed=1)
    assert knn.knn_top1(train, train_labels, test, test_labels, 10) == 1.0


def test_knn_on_shuffled_labels_is_chance():
    train, train_labels = _blobs(100, 10, 32, seed=0)
    test, test_labels = _blobs(100, 10, 32, seed=1)
    shuffled = np.random.default_rng(2).permutation(train_labels)
    top1 = knn.knn_top1(train, shuffled, test, test_labels, 10)
    assert abs(top1 - 0.1) < 0.05  # 1,000 test points: chance 0.1, std ~0.01


def test_knn_weights_votes_by_similarity():
    # Two neighbours of class 0 at cosine 0.6 lose to one of class 1 at cosine 1.0 when the
    # temperature is small (e^(1/0.1) > 2 e^(0.6/0.1)); plain majority would pick class 0.
    train = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]], np.float32)
    labels = np.array([1, 0, 0])
    test = np.array([[1.0, 0.0]], np.float32)
    scores = knn.knn_scores(train, labels, test, 2, k=3, temperature=0.1)
    np.testing.assert_allclose(scores[0], [2 * np.exp(6.0), np.exp(10.0)], rtol=1e-4)
    assert knn.knn_top1(train, labels, test, np.array([0]), 2, k=3, temperature=10.0) == 1.0


def test_knn_batches_and_large_k_agree_with_one_pass():
    train, train_labels = _blobs(20, 5, 8, seed=0, spread=0.8)
    test, _ = _blobs(30, 5, 8, seed=1, spread=0.8)
    one_pass = knn.knn_scores(train, train_labels, test, 5, k=500, batch_size=1000)
    batched = knn.knn_scores(train, train_labels, test, 5, k=500, batch_size=7)
    np.testing.assert_allclose(batched, one_pass, rtol=1e-5)  # k capped at the 100 train points
