import numpy as np
import pytest
import tensorflow as tf
from conftest import small_moco, smoke_config

from ifnd_tf import builder, detectors
from ifnd_tf.detectors.learned_threshold import quantile_step

SIMILARITIES = tf.constant([[0.9, 0.6, 0.4, 0.1]])
QUEUE_IDS = tf.constant([5, 6, 7, 8])


def test_quantile_step_is_the_fraction_minus_the_share_above():
    # Threshold 0.5: 2 of 4 valid entries above, the target 0.25 -> the gradient -0.25 (the
    # threshold must rise). An empty slot does not count.
    grad = quantile_step(tf.constant([0.5]), SIMILARITIES, tf.constant([True] * 4), 0.25)
    assert grad.numpy() == pytest.approx([-0.25])
    grad = quantile_step(tf.constant([0.5]), SIMILARITIES, tf.constant([True, True, True, False]),
                         0.25)
    assert grad.numpy() == pytest.approx([0.25 - 2 / 3])
    assert quantile_step(tf.constant([0.7]), SIMILARITIES, tf.constant([True] * 4),
                         0.25).numpy() == pytest.approx([0.0])


def test_one_adam_step_moves_only_the_batchs_thresholds():
    detector = detectors.LearnedThreshold(fraction=0.25, learning_rate=0.05)
    detector.build_state(4, 2)
    detector.thresholds.assign([1.0, 1.0, 0.5, 1.0])
    detector.refresh(0, 0.0, None)  # epoch 0: bias correction 1 - beta^1
    detector.learn(tf.constant([2]), QUEUE_IDS, SIMILARITIES)
    # grad -0.25; m = 0.1 * -0.25, v = 0.02 * 0.0625; corrected m / sqrt(v) = -1: one full
    # step of 0.05 upwards.
    np.testing.assert_allclose(detector.thresholds.numpy(), [1.0, 1.0, 0.55, 1.0], rtol=1e-5)
    np.testing.assert_allclose(detector.first_moment.numpy(), [0, 0, -0.025, 0], atol=1e-7)
    np.testing.assert_allclose(detector.second_moment.numpy(), [0, 0, 0.00125, 0], atol=1e-7)


def test_mask_is_above_the_anchors_threshold_once_active():
    detector = detectors.LearnedThreshold(fraction=0.25)
    detector.build_state(4, 2)
    detector.thresholds.assign([0.5, 0.95, 0.5, 0.5])
    ids, queue_ids = tf.constant([0, 1]), tf.constant([5, 6, 7, -1])
    similarities = tf.constant([[0.9, 0.6, 0.4, 0.99], [0.9, 0.6, 0.4, 0.99]])
    detector.refresh(0, 0.0, None)  # warm-up: learns, masks nothing
    assert not detector.mask(ids, queue_ids, similarities).numpy().any()
    detector.refresh(1, 0.5, None)
    np.testing.assert_array_equal(detector.mask(ids, queue_ids, similarities).numpy(),
                                  [[True, True, False, False], [False] * 4])


def test_every_anchor_of_the_global_batch_learns_on_every_replica(two_replicas):
    """Each replica's anchors are all-gathered: both replicas' copies of the table hold the
    whole global batch's updates (a replica-local update would leave half of them at 1)."""
    moco = small_moco(two_replicas, 16, fn_detector="learned_threshold", queue_size=16,
                      batch_size=8, key_bn_splits=1, fn_quantile=0.25)
    moco.detector.refresh(1, 1.0, None)
    index = tf.range(8, dtype=tf.int64)
    views = tf.random.uniform([2, 8, 16, 16, 3], seed=0)
    batches = tf.data.Dataset.from_tensors((index, views[0], views[1])).repeat(3)
    moco.fit(batches, epochs=1, steps_per_epoch=3, verbose=0)
    copies = [v.numpy() for v in two_replicas.experimental_local_results(
        moco.detector.thresholds.value)]
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1])
    assert (copies[0][:8] < 1.0).all() and (copies[0][8:] == 1.0).all()  # only seen examples


def test_learned_threshold_from_the_flags():
    made = builder.make_detector(smoke_config(fn_detector="learned_threshold", fn_quantile=0.2,
                                              fn_threshold_lr=0.1), True)
    assert isinstance(made, detectors.LearnedThreshold)
    assert (made.fraction, made.learning_rate, made.count_true_labels) == (0.2, 0.1, True)
