import numpy as np
import pytest

from ifnd_tf import data, diagnostics, oracle


@pytest.fixture(scope="module")
def digits_labels():
    return data.load_source("digits").labels


def test_oracle_pairs_are_all_true_false_negatives(digits_labels):
    labels = oracle.oracle_pseudo_labels(digits_labels, num_levels=3, fraction=0.5, seed=0)
    quality = diagnostics.false_negative_quality(labels, digits_labels)
    assert quality.precision == 1.0
    assert 0.2 < quality.recall < 0.3  # about 0.5^2 of the same-class pairs
    assert np.all(labels == labels[0])  # every level carries the true class
    full = diagnostics.false_negative_quality(
        oracle.oracle_pseudo_labels(digits_labels, 2, 1.0, seed=0), digits_labels)
    assert (full.precision, full.recall) == (1.0, 1.0)


def test_fraction_is_class_balanced_seeded_and_grows_as_a_superset(digits_labels):
    half = oracle.oracle_pseudo_labels(digits_labels, 1, 0.5, seed=3)[0]
    quarter = oracle.oracle_pseudo_labels(digits_labels, 1, 0.25, seed=3)[0]
    sizes = np.bincount(digits_labels)
    np.testing.assert_array_equal(np.bincount(digits_labels[half >= 0], minlength=10),
                                  np.floor(0.5 * sizes + 0.5))
    assert np.all(half[quarter >= 0] >= 0)  # a larger fraction keeps the earlier ones
    np.testing.assert_array_equal(half, oracle.oracle_pseudo_labels(digits_labels, 1, 0.5, 3)[0])
    assert not np.array_equal(half, oracle.oracle_pseudo_labels(digits_labels, 1, 0.5, 4)[0])
    assert np.all(oracle.oracle_pseudo_labels(digits_labels, 1, 0.0, 3) == -1)
