"""bench/detection_rules.py's evaluation on blobs with known classes."""
import numpy as np

from bench import detection_rules
from ifnd_tf import confidence


def test_every_rule_and_alpha_gets_exact_pair_counts():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(4), 50)
    points = (5 * np.eye(8)[truth] + rng.normal(size=(200, 8))).astype(np.float32)
    rows = detection_rules.evaluate(points, truth, [4, 8], [0.5, 1.0], "sklearn", seed=0,
                                    neighbours_k=5)
    assert [(r["rule"], r["alpha"]) for r in rows] == [
        (rule, alpha) for rule in confidence.RULES for alpha in (0.5, 1.0)]
    for rule in confidence.RULES:
        half, full = (r for r in rows if r["rule"] == rule)
        assert full["precision"] > 0.9  # well-separated classes are recovered
        assert full["recall"] > half["recall"] > 0.0  # more accepted, more pairs found
        assert full["detected_pairs"] > half["detected_pairs"]


def test_a_stricter_vote_detects_a_subset_of_the_pairs():
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(4), 50)
    points = (2 * np.eye(8)[truth] + rng.normal(size=(200, 8))).astype(np.float32)
    rows = detection_rules.evaluate(points, truth, [4, 8, 16], [1.0], "sklearn", seed=0,
                                    neighbours_k=5, min_levels=(1, 2, 3), rules=["margin"])
    detected = [r["detected_pairs"] for r in rows]
    assert [r["min_levels"] for r in rows] == [1, 2, 3]
    assert detected[0] > detected[1] > detected[2] > 0


def test_parts_count_only_the_pairs_within_each_part():
    truth = np.repeat(np.arange(2), 4)
    points = (5 * np.eye(2)[truth]).astype(np.float32)  # two exact clusters = the classes
    parts = {"A": np.array([0, 1, 4]), "B": np.array([2, 3, 5, 6, 7])}
    rows = detection_rules.evaluate(points, truth, [2], [1.0], "sklearn", seed=0, neighbours_k=1,
                                    rules=["margin"], parts=parts)
    assert [(r["part"], r["detected_pairs"]) for r in rows] == [("A", 1), ("B", 1 + 3)]
    assert all(r["precision"] == 1.0 and r["recall"] == 1.0 for r in rows)


def test_neighbour_quantiles_count_each_anchors_nearest_fraction():
    # Points on the unit circle at these angles (degrees, no ties in any anchor's order):
    # class 0 = points 0-3, class 1 = points 4-7, but point 3 lies nearer class 1 and point 7
    # nearer class 0. One part = all 8 points, every point an anchor.
    angles = np.deg2rad([0, 5, 11, 58, 90, 85, 79, 32])
    points = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    coarsest = np.array([0, 0, 0, 1, 1, 1, 1, 0])  # clusters that follow the angles
    rows = detection_rules.neighbour_quantiles(points, truth, [1 / 7, 3 / 7], coarsest,
                                               {"all": np.arange(8)}, anchors=8, seed=0)
    by = {(r["quantile"], r["within_cluster"]): r for r in rows}
    # Nearest neighbour: 0->1, 1->0, 2->1, 3->6 (wrong), 4->5, 5->4, 6->5, 7->2 (wrong).
    nearest = by[1 / 7, False]
    assert nearest["detected_pairs"] == 8 and nearest["anchors"] == 8
    assert nearest["precision"] == 6 / 8
    assert nearest["recall"] == 6 / 24  # each anchor has 3 true mates
    # Three nearest: 0: 1 2 7x; 1: 0 2 7x; 2: 1 0 7x; 3: 6x 7x 5x; 4: 5 6 3x; 5: 4 6 3x;
    # 6: 5 4 3x; 7: 2x 3x 1x -> 12 of 24 right.
    three = by[3 / 7, False]
    assert three["detected_pairs"] == 24 and three["precision"] == 12 / 24
    # Within the clusters {0, 1, 2, 7} / {3, 4, 5, 6}: anchor 3 loses 7, anchor 7 loses 3.
    within = by[3 / 7, True]
    assert within["detected_pairs"] == 22 and within["precision"] == 12 / 22
    assert within["recall"] == three["recall"] == 12 / 24
