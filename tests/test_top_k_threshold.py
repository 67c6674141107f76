import numpy as np
import pytest
import tensorflow as tf
from conftest import smoke_config

from ifnd_tf import builder, detectors
from ifnd_tf.detectors.top_k_threshold import top_k_threshold_mask

# Two anchors, a queue of five slots, the last one empty.
SIMILARITIES = tf.constant([[0.9, 0.8, 0.6, 0.3, 0.95],
                            [0.5, 0.6, 0.4, 0.2, 0.99]])
VALID = tf.constant([True, True, True, True, False])


def test_top_k_threshold_needs_both_the_rank_and_the_cosine():
    mask = top_k_threshold_mask(SIMILARITIES, VALID, top_k=2, threshold=0.7).numpy()
    # Anchor 0: its top 2 valid entries are 0.9 and 0.8, both above 0.7 (the empty slot's 0.95
    # does not count). Anchor 1: its top 2 (0.6, 0.5) are below the threshold.
    np.testing.assert_array_equal(mask, [[True, True, False, False, False], [False] * 5])
    mask = top_k_threshold_mask(SIMILARITIES, VALID, top_k=2, threshold=0.85).numpy()
    np.testing.assert_array_equal(mask[0], [True, False, False, False, False])
    mask = top_k_threshold_mask(SIMILARITIES, VALID, top_k=3, threshold=0.0).numpy()
    np.testing.assert_array_equal(mask, [[True, True, True, False, False],
                                         [True, True, True, False, False]])


def test_top_k_threshold_masks_only_after_the_warm_up():
    detector = detectors.TopKThreshold(top_k=2, threshold=0.7)
    detector.build_state(8, 4)
    ids, queue_ids = tf.constant([0, 1]), tf.constant([3, 4, 5, 6, -1])
    logs, _ = detector.refresh(0, 0.0, None)
    assert logs == {"fn_active": 0.0} and not detector.mask(ids, queue_ids, SIMILARITIES).numpy().any()
    detector.refresh(1, 0.2, None)
    assert detector.mask(ids, queue_ids, SIMILARITIES).numpy().sum() == 2


def test_top_k_defaults_to_the_quantile_of_the_queue():
    made = builder.make_detector(smoke_config(fn_detector="top_k", fn_quantile=0.25), True)
    assert isinstance(made, detectors.TopKThreshold)
    assert made.top_k == smoke_config().moco.queue_size // 4 and made.threshold == 0.5
    assert builder.make_detector(smoke_config(fn_detector="top_k", fn_top_k=7), True).top_k == 7


def test_top_k_is_refused_below_one():
    with pytest.raises(ValueError, match="top_k"):
        detectors.TopKThreshold(top_k=0, threshold=0.5)
