import math

import numpy as np
import pytest
import tensorflow as tf
from test_detectors import _moco

from ifnd_tf import clustering, data, detectors, sources
from ifnd_tf.detectors.soft_cluster_drop import drop_probabilities, unit_centroids

E = math.e
# Two levels in two dimensions: k = 2 (the axes), k = 1 (the first axis; padded to 2 rows).
CENTROIDS = tf.constant([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.0]]])
QUEUE_KEYS = tf.constant([[1.0, 0.0], [0.0, 1.0]])
# Anchor 0: cluster 0 at both levels; anchor 1: cluster 1 at level 0 only; anchor 2: level 1.
ANCHOR_LABELS = tf.constant([[0, 1, -1], [0, -1, 0]])


def test_drop_probability_is_the_entrys_fit_to_the_anchors_cluster_averaged_over_levels():
    p = drop_probabilities(QUEUE_KEYS, CENTROIDS, ANCHOR_LABELS, (2, 1), temperature=1.0)
    near, far = E / (E + 1), 1 / (E + 1)  # softmax of cosines (1, 0) over the two centroids
    # Level 1 has one centroid: every entry fits it with probability 1.
    np.testing.assert_allclose(p.numpy(), [[(near + 1) / 2, (far + 1) / 2],
                                           [far / 2, near / 2],
                                           [1 / 2, 1 / 2]], rtol=1e-6)


def test_unit_centroids_are_the_normalised_cluster_means():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(unit_centroids(x, np.array([0, 0, 1]), 3),
                               [[2 ** -0.5, 2 ** -0.5], [0, 1], [0, 0]], rtol=1e-6)


def _detector(levels=(2, 1), temperature=1.0):
    kmeans = clustering.KMeansSettings(levels, "sklearn")
    detector = detectors.SoftClusterDrop(kmeans, temperature=temperature)
    detector.build_state(3, 2)
    detector.centroids.assign(CENTROIDS)
    detector.set_pseudo_labels(ANCHOR_LABELS)
    return detector


def test_drawn_masks_follow_the_probabilities_and_repeat_for_the_same_step():
    detector = _detector()
    ids, queue_ids = tf.constant([0, 1, 2]), tf.constant([4, 5])
    masks = []
    for _ in range(2000):
        masks.append(detector.mask(ids, queue_ids, None, queue_keys=QUEUE_KEYS).numpy())
        again = detector.mask(ids, queue_ids, None, queue_keys=QUEUE_KEYS).numpy()
        np.testing.assert_array_equal(again, masks[-1])  # a function of (seed, step)
        detector.observe(tf.zeros([1, 2]), tf.constant([0]))  # the next step draws anew
    expected = drop_probabilities(QUEUE_KEYS, CENTROIDS, ANCHOR_LABELS, (2, 1), 1.0).numpy()
    np.testing.assert_allclose(np.mean(masks, axis=0), expected, atol=0.04)
    # An empty queue slot is never dropped.
    empty = detector.mask(ids, tf.constant([4, -1]), None, queue_keys=QUEUE_KEYS).numpy()
    assert not empty[:, 1].any()


def test_a_clustering_pass_fills_the_centroids_and_the_step_drops_cluster_mates():
    source = sources.load_source("digits", "test")
    kmeans = clustering.KMeansSettings((5, 10), "sklearn")
    moco = _moco(detectors.SoftClusterDrop(kmeans, temperature=0.1, count_true_labels=True),
                 num_examples=source.num_examples, queue_size=64, embedding_dim=8)
    moco.detector.refresh(1, 1.0, detectors.EpochInputs(moco, data.embedding_pipeline(
        source, 512, 16)))
    centroids = moco.detector.centroids.numpy()
    np.testing.assert_allclose(np.linalg.norm(centroids[0, :5], axis=1), 1.0, rtol=1e-5)
    assert not centroids[0, 5:].any()  # level 0 has 5 clusters of the 10 rows
    moco.enqueue(tf.math.l2_normalize(tf.random.normal([64, 8], seed=3), 1), tf.range(64))
    index = tf.range(8, dtype=tf.int64)
    views = tf.random.uniform([2, 8, 16, 16, 3], seed=0)
    history = moco.fit(tf.data.Dataset.from_tensors((index, views[0], views[1])), epochs=1,
                       verbose=0).history
    assert 0 < history["masked"][0] < 64
    assert moco.detector.draws.numpy() == 1


def test_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature"):
        detectors.SoftClusterDrop(clustering.KMeansSettings((2,), "sklearn"), temperature=0.0)
