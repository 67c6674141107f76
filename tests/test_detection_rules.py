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
