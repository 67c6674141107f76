import itertools

import numpy as np
import pytest

from ifnd_tf import diagnostics


def _brute_force(pseudo, truth, min_levels=1):
    detected = correct = true_pairs = 0
    for i, j in itertools.combinations(range(len(truth)), 2):
        hit = sum(level[i] >= 0 and level[i] == level[j] for level in pseudo) >= min_levels
        same = truth[i] == truth[j]
        detected += hit
        correct += hit and same
        true_pairs += same
    return detected, correct, true_pairs


def test_hand_computed_example():
    # classes: a a a b b ; one level of pseudo-labels, sample 4 unaccepted.
    truth = np.array([0, 0, 0, 1, 1])
    pseudo = np.array([[0, 0, 1, 1, -1]])
    q = diagnostics.false_negative_quality(pseudo, truth)
    # detected pairs: (0,1) correct, (2,3) wrong -> precision 1/2; true pairs: 3 + 1 = 4.
    assert (q.detected_pairs, q.true_pairs) == (2, 4)
    assert q.precision == pytest.approx(0.5)
    assert q.recall == pytest.approx(0.25)


@pytest.mark.parametrize("min_levels", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", range(5))
def test_vote_over_levels_matches_brute_force(seed, min_levels):
    rng = np.random.default_rng(seed)
    pseudo = rng.choice([-1, 0, 1, 2], p=[0.1, 0.4, 0.4, 0.1], size=(4, 40))
    truth = rng.integers(0, 3, size=40)
    detected, correct, true_pairs = _brute_force(pseudo, truth, min_levels)
    assert detected > 0  # the draw leaves pairs to count at every vote
    q = diagnostics.false_negative_quality(pseudo, truth, min_levels)
    assert (q.detected_pairs, q.true_pairs) == (detected, true_pairs)
    assert q.precision == pytest.approx(correct / detected)
    assert q.recall == pytest.approx(correct / true_pairs)


@pytest.mark.parametrize("scale", [1, 2**21])  # 2**21: the 4 levels + truth overflow one
def test_large_label_values_count_the_same(scale):  # int64 code, rows are compared instead
    rng = np.random.default_rng(7)
    pseudo = rng.choice([-1, 0, 1, 2], p=[0.1, 0.4, 0.4, 0.1], size=(4, 40))
    truth = rng.integers(0, 3, size=40)
    detected, correct, true_pairs = _brute_force(pseudo, truth, 2)
    big = np.where(pseudo >= 0, pseudo * scale, -1)
    q = diagnostics.false_negative_quality(big, truth * scale, 2)
    assert (q.detected_pairs, q.true_pairs) == (detected, true_pairs)
    assert q.precision == pytest.approx(correct / detected)


def test_nothing_accepted_gives_zero_not_nan():
    q = diagnostics.false_negative_quality(np.full((2, 6), -1), np.zeros(6, int))
    assert (q.precision, q.recall, q.detected_pairs) == (0.0, 0.0, 0)


def test_purity_and_accepted_count_hand_computed():
    truth = np.array([0, 0, 1, 1, 1, 0])
    level = np.array([0, 0, 0, 1, 1, -1])  # cluster 0 = {0, 0, 1}: majority 2 of 3; cluster 1 = {1, 1}
    assert diagnostics.accepted_purity(level, truth) == pytest.approx(4 / 5)
    assert diagnostics.accepted_purity(np.zeros(6, int), truth) == pytest.approx(3 / 6)
    assert diagnostics.accepted_purity(np.full(6, -1), truth) == 0.0
    # Accepted at any level: sample 5 only at the second level, sample 4 at none.
    assert diagnostics.num_accepted(np.array([[0, 0, 1, 1, -1, -1], [0, 0, 1, 1, -1, 2]])) == 5


def test_label_quality_gives_every_per_epoch_number():
    truth = np.array([0, 0, 0, 1, 1])
    pseudo = np.array([[0, 0, 1, 1, -1], [0, 0, 0, 0, 0]])
    quality = diagnostics.label_quality(pseudo, truth, [2, 1])
    # Union of levels: level 1 puts everything together, so all 10 pairs are detected.
    assert quality == pytest.approx({"fn_precision": 4 / 10, "fn_recall": 1.0,
                                     "purity_k2": 3 / 4, "purity_k1": 3 / 5})
