import math

import numpy as np
import pytest
import tensorflow as tf

from ifnd_tf import losses

# One anchor, its key, and a queue of three entries; temperature 0.5.
QUERY = [[1.0, 0.0]]
KEY = [[0.6, 0.8]]
QUEUE = [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]
LOGITS = [1.2, 2.0, 0.0, -2.0]  # [q.k, q.queue...] / 0.5


def _lse(values):
    return math.log(sum(math.exp(v) for v in values))


def _logits():
    return losses.contrastive_logits(tf.constant(QUERY), tf.constant(KEY), tf.constant(QUEUE), 0.5)


def test_logits_are_positive_then_queue_over_temperature():
    np.testing.assert_allclose(_logits().numpy(), [LOGITS], rtol=1e-6)


@pytest.mark.parametrize("strategy", losses.FALSE_NEGATIVE_STRATEGIES)
def test_empty_mask_is_plain_infonce(strategy):
    mask = tf.zeros([1, 3], tf.bool)
    loss = losses.ifnd_loss(_logits(), mask, strategy).numpy()
    np.testing.assert_allclose(loss, [_lse(LOGITS) - 1.2], rtol=1e-6)
    reference = tf.nn.sparse_softmax_cross_entropy_with_logits([0], _logits())
    np.testing.assert_allclose(loss, reference.numpy(), rtol=1e-6)


def test_elimination_drops_masked_entry_from_denominator():
    mask = tf.constant([[True, False, False]])
    loss = losses.ifnd_loss(_logits(), mask, losses.ELIMINATION).numpy()
    np.testing.assert_allclose(loss, [_lse([1.2, 0.0, -2.0]) - 1.2], rtol=1e-6)


def test_attraction_averages_log_prob_over_positive_set():
    mask = tf.constant([[True, False, False]])
    loss = losses.ifnd_loss(_logits(), mask, losses.ATTRACTION).numpy()
    expected = -0.5 * ((1.2 - _lse(LOGITS)) + (2.0 - _lse(LOGITS)))
    np.testing.assert_allclose(loss, [expected], rtol=1e-6)


def test_elimination_of_every_negative_leaves_zero_loss():
    mask = tf.ones([1, 3], tf.bool)
    assert losses.ifnd_loss(_logits(), mask, losses.ELIMINATION).numpy()[0] == pytest.approx(0.0)


def test_unknown_strategy_names_the_flag():
    with pytest.raises(ValueError, match="--fn_strategy"):
        losses.ifnd_loss(_logits(), tf.zeros([1, 3], tf.bool), "repulsion")


def test_accuracy_counts_positive_at_column_zero():
    logits = tf.constant([[3.0, 1.0, 2.0], [0.0, 1.0, -1.0]])
    assert losses.contrastive_accuracy(logits).numpy() == pytest.approx(0.5)


def test_elimination_masking_can_make_positive_the_top_logit():
    mask = tf.constant([[True, False, False]])
    masked = losses.masked_logits_for_elimination(_logits(), mask)
    assert losses.contrastive_accuracy(_logits()).numpy() == 0.0
    assert losses.contrastive_accuracy(masked).numpy() == 1.0


def test_accuracy_counts_ties_as_misses():
    collapsed = tf.fill([4, 9], 5.0)  # every logit equal: argmax would say column 0
    assert losses.contrastive_accuracy(collapsed).numpy() == 0.0
    logits = tf.constant([[2.0, 2.0, 1.0], [2.0, 1.9, 1.0]])
    assert losses.contrastive_accuracy(logits).numpy() == pytest.approx(0.5)


def test_accuracy_counts_near_ties_within_the_margin_as_misses():
    """A collapsed encoder's positive wins by rounding and drift only: no hit."""
    near = tf.constant([[5.0, 5.0 - 2e-4, 4.0], [5.0, 4.9, 4.0]])  # logits at T = 0.2
    tie = losses.TIE_COSINE / 0.2
    assert losses.contrastive_accuracy(near).numpy() == 1.0
    assert losses.contrastive_accuracy(near, tie).numpy() == pytest.approx(0.5)


def test_key_spread_is_zero_for_identical_keys_and_one_for_opposite_pairs():
    same = tf.math.l2_normalize(tf.tile([[1.0, 2.0, 3.0]], [8, 1]), axis=1)
    assert losses.key_spread(same).numpy() == pytest.approx(0.0, abs=1e-3)
    opposite = tf.constant([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert losses.key_spread(opposite).numpy() == pytest.approx(1.0)
    half = tf.constant([[1.0, 0.0], [0.0, 1.0]])  # mean cosine 0.5 (self-pairs included)
    assert losses.key_spread(half).numpy() == pytest.approx(np.sqrt(0.5))


def test_weight_decay_loss_has_gradient_decay_times_weight():
    weights = [tf.Variable([[1.0, -2.0]]), tf.Variable([3.0])]
    with tf.GradientTape() as tape:
        value = losses.weight_decay_loss(weights, 0.1)
    np.testing.assert_allclose(value.numpy(), 0.5 * 0.1 * (1 + 4 + 9))
    grads = tape.gradient(value, weights)
    np.testing.assert_allclose(grads[0].numpy(), [[0.1, -0.2]])
    np.testing.assert_allclose(grads[1].numpy(), [0.3])


def test_accuracy_leaves_out_the_queues_random_start_rows():
    """A collapsed query beats random unit rows easily: those are no keys, no hits."""
    logits = tf.constant([[5.0, 5.0, 1.0, -2.0], [5.0, 3.0, 4.9, 4.0]])
    valid = tf.constant([True, False, False])
    assert losses.contrastive_accuracy(logits).numpy() == pytest.approx(0.5)
    assert losses.contrastive_accuracy(logits, valid=valid).numpy() == pytest.approx(0.5)
    assert losses.contrastive_accuracy(logits[1:], valid=valid).numpy() == 1.0
    assert losses.contrastive_accuracy(logits, valid=tf.zeros([3], tf.bool)).numpy() == 0.0


# Debiased loss on the example above: e^(s+/t) = e^1.2, negatives e^2, e^0, e^-2.
def _debiased(prior, mask=(False, False, False)):
    return losses.debiased_loss(_logits(), tf.constant([list(mask)]), prior, 0.5).numpy()[0]


def test_debiased_loss_takes_the_prior_share_out_of_the_negatives():
    positive, negatives = math.exp(1.2), math.exp(2) + 1 + math.exp(-2)
    estimate = (negatives - 0.1 * 3 * positive) / 0.9  # 8.365, above the floor 3 e^-2
    assert _debiased(0.1) == pytest.approx(math.log(positive + estimate) - 1.2, rel=1e-5)
    assert _debiased(0.1) < losses.ifnd_loss(_logits(), tf.zeros([1, 3], tf.bool)).numpy()[0]


def test_debiased_loss_is_floored_at_n_times_e_to_minus_one_over_t():
    # tau+ = 0.9 would make the estimate negative: the floor 3 e^(-1/0.5) holds.
    assert _debiased(0.9) == pytest.approx(math.log(math.exp(1.2) + 3 * math.exp(-2)) - 1.2,
                                           rel=1e-5)


def test_debiased_loss_counts_only_the_entries_kept():
    positive, kept = math.exp(1.2), 1 + math.exp(-2)  # the first queue entry masked
    estimate = (kept - 0.1 * 2 * positive) / 0.9
    assert _debiased(0.1, (True, False, False)) == pytest.approx(
        math.log(positive + estimate) - 1.2, rel=1e-5)
    via_strategy = losses.ifnd_loss(_logits(), tf.constant([[True, False, False]]),
                                    losses.ELIMINATION, 0.1, 0.5).numpy()[0]
    assert via_strategy == pytest.approx(_debiased(0.1, (True, False, False)))


def test_debiased_loss_needs_elimination():
    with pytest.raises(ValueError, match="elimination"):
        losses.ifnd_loss(_logits(), tf.zeros([1, 3], tf.bool), losses.ATTRACTION, 0.1, 0.5)
