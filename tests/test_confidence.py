import numpy as np
import pytest

from ifnd_tf import clustering, confidence


def test_shared_membership_hand_computed():
    assign = np.array([0, 0, 0, 1, 1])
    other = np.array([5, 5, 7, 7, 7])
    np.testing.assert_allclose(confidence.shared_membership(assign, other),
                               [2 / 3, 2 / 3, 1 / 3, 1, 1])


def test_agreement_ranks_the_sample_the_other_levels_split_off_last():
    # Level 0 puts 0..3 together; levels 1 and 2 both move sample 3 to the other group.
    assigns = np.array([[0, 0, 0, 0, 1, 1, 1, 1],
                        [0, 0, 0, 1, 1, 1, 1, 1],
                        [2, 2, 2, 3, 3, 3, 3, 3]])
    scores = confidence.agreement(assigns)
    assert scores.shape == assigns.shape
    np.testing.assert_allclose(scores[0, :4], [0.75, 0.75, 0.75, 0.25])
    assert np.argmin(scores[0, :4]) == 3
    np.testing.assert_allclose(scores[1], scores[2])  # levels 1 and 2 are one partition
    np.testing.assert_array_equal(confidence.agreement(assigns[:1]), np.ones((1, 8)))


def test_stability_ranks_the_sample_that_changed_company_last():
    previous = np.array([[0, 0, 0, 1, 1, 1]])
    current = np.array([[4, 4, 4, 4, 9, 9]])  # sample 3 joined 0..2; ids need not match
    scores = confidence.stability(current, previous)
    np.testing.assert_allclose(scores[0], [0.75, 0.75, 0.75, 0.25, 1, 1])


def test_nearest_neighbours_match_brute_force():
    x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.sort(np.argsort(-sims, axis=1)[:, :5], axis=1)
    for found in (confidence.nearest_neighbours(x, 5),  # faiss
                  confidence._nearest_neighbours_numpy(unit, 5)):  # without faiss
        np.testing.assert_array_equal(np.sort(found, axis=1), expected)


def _two_groups_with_a_stray(rng):
    """Two tight groups in 2-D at angles 0 and pi/2; sample 0 lies in group B but is labelled A."""
    angles = np.concatenate([[np.pi / 2], rng.normal(0, 0.05, 20), np.pi / 2 + rng.normal(0, 0.05, 20)])
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    assign = np.array([0] + [0] * 20 + [1] * 20)
    return points, assign


def test_neighbour_consistency_ranks_the_stray_last():
    points, assign = _two_groups_with_a_stray(np.random.default_rng(1))
    scores = confidence.neighbour_consistency(assign[None], confidence.nearest_neighbours(points, 5))
    assert scores[0, 0] == 0.0  # all its neighbours are in group B
    assert np.all(scores[0, 1:] >= 0.8)
    labels = clustering.accept_top_fraction(assign, scores[0], 20 / 21)  # all but one of A
    assert labels[0] == clustering.UNLABELED and np.all(labels[1:21] == 0)


def test_ties_are_broken_by_margin():
    assign = np.zeros(4, np.int64)
    tied = np.array([0.5, 0.5, 0.5, 0.1])
    labels = clustering.accept_top_fraction(assign, tied, 0.5, tiebreak=np.array([0.1, 0.9, 0.5, 1]))
    np.testing.assert_array_equal(labels, [-1, 0, 0, -1])


@pytest.mark.parametrize("rule", confidence.RULES)
def test_every_rule_accepts_alpha_of_each_cluster(rule):
    rng = np.random.default_rng(2)
    points = np.concatenate([c + rng.normal(size=(60, 8)) for c in 6 * np.eye(8)[:4]])
    previous = np.repeat(np.arange(4), 60)[None].repeat(2, axis=0)
    labels, stats = clustering.hierarchical_pseudo_labels(
        points.astype(np.float32), [4, 8], 0.5, "sklearn", seed=0, rule=rule, previous=previous)
    assert labels.shape == (2, 240)
    assert [s.accepted_fraction for s in stats] == pytest.approx([0.5, 0.5], abs=0.02)
    assert all(s.assignment.shape == (240,) for s in stats)


def test_margin_rule_is_the_default_and_stability_falls_back_to_it():
    points = np.random.default_rng(3).normal(size=(200, 8)).astype(np.float32)
    default = clustering.hierarchical_pseudo_labels(points, [5, 10], 0.4, "sklearn", seed=1)[0]
    first_pass = clustering.hierarchical_pseudo_labels(points, [5, 10], 0.4, "sklearn", seed=1,
                                                       rule="stability")[0]
    np.testing.assert_array_equal(default, first_pass)


def test_unknown_rule_names_the_flag():
    with pytest.raises(ValueError, match="--fn_confidence must be one of"):
        confidence.scores("vote", np.zeros((1, 3), np.int64), np.zeros((1, 3)), np.eye(3))
