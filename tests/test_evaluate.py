import numpy as np
import pytest
import tensorflow as tf

from ifnd_tf import config, data, evaluate, export, model


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
    assert evaluate.knn_top1(train, train_labels, test, test_labels, 10) == 1.0


def test_knn_on_shuffled_labels_is_chance():
    train, train_labels = _blobs(100, 10, 32, seed=0)
    test, test_labels = _blobs(100, 10, 32, seed=1)
    shuffled = np.random.default_rng(2).permutation(train_labels)
    top1 = evaluate.knn_top1(train, shuffled, test, test_labels, 10)
    assert abs(top1 - 0.1) < 0.05  # 1,000 test points: chance 0.1, std ~0.01


def test_knn_weights_votes_by_similarity():
    # Two neighbours of class 0 at cosine 0.6 lose to one of class 1 at cosine 1.0 when the
    # temperature is small (e^(1/0.1) > 2 e^(0.6/0.1)); plain majority would pick class 0.
    train = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]], np.float32)
    labels = np.array([1, 0, 0])
    test = np.array([[1.0, 0.0]], np.float32)
    scores = evaluate.knn_scores(train, labels, test, 2, k=3, temperature=0.1)
    np.testing.assert_allclose(scores[0], [2 * np.exp(6.0), np.exp(10.0)], rtol=1e-4)
    assert evaluate.knn_top1(train, labels, test, np.array([0]), 2, k=3, temperature=10.0) == 1.0


def test_knn_batches_and_large_k_agree_with_one_pass():
    train, train_labels = _blobs(20, 5, 8, seed=0, spread=0.8)
    test, _ = _blobs(30, 5, 8, seed=1, spread=0.8)
    one_pass = evaluate.knn_scores(train, train_labels, test, 5, k=500, batch_size=1000)
    batched = evaluate.knn_scores(train, train_labels, test, 5, k=500, batch_size=7)
    np.testing.assert_allclose(batched, one_pass, rtol=1e-5)  # k capped at the 100 train points


@pytest.mark.parametrize("fraction, per_class", [(0.01, 60), (0.1, 600)])
def test_labelled_subset_is_class_balanced_and_seeded(fraction, per_class):
    labels = np.random.default_rng(0).integers(0, 10, size=60_000)  # ~6,000 per class
    subset = evaluate.labelled_subset(labels, fraction, seed=3)
    assert len(subset) == len(np.unique(subset)) == 10 * per_class
    np.testing.assert_array_equal(np.bincount(labels[subset]), [per_class] * 10)
    np.testing.assert_array_equal(subset, evaluate.labelled_subset(labels, fraction, seed=3))
    assert not np.array_equal(subset, evaluate.labelled_subset(labels, fraction, seed=4))


def test_labelled_subset_takes_all_of_a_small_class():
    labels = np.array([0] * 100 + [1] * 3)
    subset = evaluate.labelled_subset(labels, 0.2, seed=0)  # 10 per class asked
    assert np.bincount(labels[subset]).tolist() == [10, 3]


def test_labelled_pipeline_keeps_only_the_subset_with_true_labels():
    source = data.load_source("digits", "test")
    indices = evaluate.labelled_subset(source.labels, 0.1, seed=0)
    batches = list(evaluate.labelled_pipeline(source, 16, 12, indices, train=True, seed=0))
    labels = np.concatenate([y.numpy() for _, y in batches])
    images = np.concatenate([x.numpy() for x, _ in batches])
    assert images.shape == (len(indices), 12, 12, 3)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert sorted(labels) == sorted(source.labels[indices])  # shuffled, same examples
    evaluation = evaluate.labelled_pipeline(source, 100, 12)
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in evaluation]),
                                  source.labels)  # every example once, in order


@pytest.mark.parametrize("schedule, steps, expected", [
    ("cosine", (0, 50, 100), [1.0, 0.5, 0.0]),
    ("step", (0, 70, 90), [1.0, 0.1, 0.01]),  # x0.1 after 60 % and after 80 % of 100 steps
])
def test_learning_rate_schedules(schedule, steps, expected):
    rate = evaluate.lr_schedule(1.0, 100, schedule)
    rates = [float(rate(step)) for step in steps]
    np.testing.assert_allclose(rates, expected, atol=1e-6)


def test_load_encoder_reads_the_keras_file_next_to_the_saved_model(tmp_path):
    encoder = model.build_encoder("small", 16, 0.25, embedding_dim=8)
    saved_model = export.export_encoder(encoder, str(tmp_path / "export"))
    loaded = evaluate.load_encoder(saved_model + "/")
    images = tf.random.uniform([2, 16, 16, 3], seed=1)
    np.testing.assert_allclose(loaded(images)["features"].numpy(),
                               encoder(images, training=False)["features"].numpy(), rtol=1e-5)
    elsewhere = tmp_path / "elsewhere" / "saved_model"
    with pytest.raises(config.ConfigError, match=f"^--saved_model={elsewhere}: no such directory"):
        evaluate.load_encoder(str(elsewhere))  # not the encoder.keras of another path
    elsewhere.mkdir(parents=True)
    with pytest.raises(config.ConfigError, match="--saved_model=.*missing .*encoder.keras"):
        evaluate.load_encoder(str(elsewhere))
    with pytest.raises(config.ConfigError) as error:
        evaluate.load_encoder(saved_model, image_size=28)
    assert str(error.value) == (
        f"--image_size=28, but the encoder in {tmp_path}/export/encoder.keras was trained on "
        "16x16 images: pass the pre-training flags (--flagfile)")
