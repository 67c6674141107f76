import dataclasses
import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_moco

import ifnd_tf
from ifnd_tf import (
    clustering,
    data,
    detectors,
    diagnostics,
    encoders,
    model,
    pseudo_labels,
    sources,
)
from ifnd_tf.config import TRAIN_KEYS, MoCoConfig


def _moco(detector, num_examples=8, queue_size=8, embedding_dim=4):
    """The small backbone, its head `embedding_dim`-d, with `detector`, compiled (SGD)."""
    encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=embedding_dim)
    moco = model.MomentumContrast(encoder, num_examples, detector,
                                  MoCoConfig(queue_size=queue_size, momentum=0.9,
                                             key_bn_splits=1))
    moco.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    moco.optimizer.build(moco.encoder.trainable_variables)
    return moco


def _cluster_labels(levels=1, **options):
    """The paper's detector over `levels` hierarchy levels (tests fill its table directly)."""
    return detectors.ClusterLabels(clustering.KMeansSettings(tuple(range(2, 2 + levels)),
                                                             "sklearn"), **options)


def _one_step_data(batch=8, size=16):
    index = tf.range(batch, dtype=tf.int64)
    views = tf.random.uniform([2, batch, size, size, 3], seed=0)
    return tf.data.Dataset.from_tensors((index, views[0], views[1]))


# --- The label-table mask (false_negative_mask) --------------------------------------------


def test_mask_matches_equal_accepted_labels_only():
    anchors = tf.constant([[0, -1, 2]])  # one level, three anchors
    queue = tf.constant([[0, -1, 2, 2]])
    expected = [[True, False, False, False],
                [False, False, False, False],  # unlabeled anchor never matches, not even -1
                [False, False, True, True]]
    np.testing.assert_array_equal(detectors.false_negative_mask(anchors, queue).numpy(), expected)


def test_unlabeled_queue_entry_never_masked():
    anchors = tf.constant([[3]])
    queue = tf.constant([[-1, -1]])
    assert not detectors.false_negative_mask(anchors, queue).numpy().any()


def test_mask_is_union_over_levels():
    anchors = tf.constant([[0], [5]])  # level 0: label 0; level 1: label 5
    queue = tf.constant([[0, 1, 1, -1],
                         [7, 5, 7, 5]])
    np.testing.assert_array_equal(detectors.false_negative_mask(anchors, queue).numpy(),
                                  [[True, True, False, True]])


def test_mask_vote_needs_that_many_agreeing_levels():
    anchors = tf.constant([[0], [5], [2]])  # three levels, one anchor
    queue = tf.constant([[0, 0, 1, 0],
                         [5, 5, 5, 7],
                         [2, 9, 9, -1]])  # entries agree at 3, 2, 1, 1 levels
    for min_levels, expected in [(1, [True] * 4), (2, [True, True, False, False]),
                                 (3, [True, False, False, False])]:
        np.testing.assert_array_equal(
            detectors.false_negative_mask(anchors, queue, min_levels).numpy(), [expected])


# --- The nearest-fraction mask ---------------------------------------------------------------


def test_nearest_fraction_mask_takes_each_anchors_most_similar_valid_entries():
    similarities = tf.constant([[0.9, 0.1, 0.5, 0.7, 0.95],
                                [0.2, 0.8, 0.3, 0.1, 0.99]])
    valid = tf.constant([True, True, True, True, False])  # the last slot holds no key yet
    half = detectors.nearest_fraction_mask(similarities, valid, 0.5)  # round(0.5 * 4) = 2 each
    np.testing.assert_array_equal(half.numpy(), [[True, False, False, True, False],
                                                 [False, True, True, False, False]])
    assert not detectors.nearest_fraction_mask(similarities, valid, 0.0).numpy().any()
    everything = detectors.nearest_fraction_mask(similarities, valid, 1.0).numpy()
    np.testing.assert_array_equal(everything, np.tile([True] * 4 + [False], (2, 1)))


def test_nearest_fraction_mask_keeps_ties_at_the_threshold():
    mask = detectors.nearest_fraction_mask(tf.constant([[0.5, 0.1, 0.5, 0.2]]),
                                           tf.constant([True] * 4), 0.25)  # n = 1, two at 0.5
    np.testing.assert_array_equal(mask.numpy(), [[True, False, True, False]])


# --- LabelTable: the pseudo-label table and the train step's vote ----------------------------


def test_pseudo_label_table_is_written_through_its_methods():
    moco = _moco(_cluster_labels(levels=2), num_examples=5)
    detector = moco.detector
    detector.set_pseudo_labels([[7, 8, 9, 10, 11], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(detector.pseudo_labels.numpy()[1], [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"shape \(1, 5\), the table is \(2, 5\)"):
        detector.set_pseudo_labels([[0, 1, 2, 3, 4]])
    detector.clear_pseudo_labels()
    assert (detector.pseudo_labels.numpy() == -1).all()


def test_queue_labels_follow_the_current_table():
    moco = _moco(_cluster_labels(levels=2), num_examples=5, queue_size=4)
    moco.enqueue(tf.zeros([2, 4]), tf.constant([3, 1]))
    detector = moco.detector
    detector.set_pseudo_labels([[7, 8, 9, 10, 11], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(detector.queue_labels(moco.queue_ids).numpy(),
                                  [[10, 8, -1, -1], [3, 1, -1, -1]])
    detector.set_pseudo_labels([[-1, 5, 5, 5, 5], [0, 0, 0, 0, 0]])  # a new epoch's table
    np.testing.assert_array_equal(detector.queue_labels(moco.queue_ids).numpy(),
                                  [[5, 5, -1, -1], [0, 0, -1, -1]])


@pytest.mark.parametrize("min_levels, masked", [(1, 6.0), (2, 2.0)])
def test_train_step_masks_by_the_vote_over_levels(min_levels, masked):
    moco = _moco(_cluster_labels(levels=2, min_levels=min_levels))
    moco.enqueue(tf.math.l2_normalize(tf.random.normal([8, 4]), 1), tf.range(8))
    # Every anchor shares level 0 with 4 entries and level 1 with 4, both levels with 2.
    moco.detector.set_pseudo_labels([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 1, 1]])
    history = moco.fit(_one_step_data(), epochs=1, verbose=0)
    assert history.history["masked"][0] == pytest.approx(masked)


def test_vote_beyond_the_levels_is_refused():
    with pytest.raises(AssertionError, match="min_levels=3 needs 1..2"):
        _cluster_labels(levels=2, min_levels=3)


# --- ClusterLabels: what it clusters, what it keeps ------------------------------------------


def test_unknown_cluster_features_is_refused():
    with pytest.raises(ValueError, match="features must be one of"):
        detectors.ClusterLabels(clustering.KMeansSettings((2,)), features="views")


def test_train_step_remembers_each_key_at_its_dataset_index():
    moco = _moco(_cluster_labels(features=TRAIN_KEYS), num_examples=20)
    index = tf.constant([17, 3, 9, 0, 12, 5, 19, 8], tf.int64)
    views = tf.random.uniform([2, 8, 16, 16, 3], seed=1)
    moco.fit(tf.data.Dataset.from_tensors((index, views[0], views[1])), epochs=1, verbose=0)
    table = moco.detector.train_keys.numpy()
    # The rows of this batch hold the keys it enqueued; the other rows were never written.
    np.testing.assert_array_equal(table[index.numpy()], moco.queue_keys.numpy())
    np.testing.assert_allclose(np.linalg.norm(table[index.numpy()], axis=1), 1.0, rtol=1e-5)
    assert not table[np.setdiff1d(np.arange(20), index.numpy())].any()
    # Off by default (center_view features): no [N, dim] table.
    assert _moco(_cluster_labels()).detector.train_keys is None


def test_training_keys_are_clustered_once_every_example_has_one(one_replica):
    source = sources.load_source("digits", "test")
    moco = small_moco(one_replica, source.num_examples, num_clusters=(10,), queue_size=64,
                      embedding_dim=16, cluster_features=TRAIN_KEYS)
    detector = moco.detector
    inputs = detectors.EpochInputs(moco, data.embedding_pipeline(source, 512, 16))
    # One example without a key yet: the centre-view pass runs instead.
    groups = np.arange(source.num_examples) % 10
    centres = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 16)))[0][:10]
    noise = 0.05 * np.random.default_rng(1).normal(size=(source.num_examples, 16))
    keys = centres[groups] + noise
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    detector.train_keys.assign(np.where(np.arange(source.num_examples)[:, None] == 7, 0, keys))
    _, details = detector.refresh(1, 1.0, inputs)
    assert details["clustered_train_keys"] == 0.0
    assert (detector.pseudo_labels.numpy() >= 0).all()
    # Complete: the table is what gets clustered, so its ten groups come back exactly.
    detector.train_keys.assign(keys)
    _, details = detector.refresh(1, 1.0, inputs)
    assert details["clustered_train_keys"] == 1.0
    labels = detector.pseudo_labels.numpy()[0]
    assert all(len(np.unique(labels[groups == g])) == 1 for g in range(10))
    assert len(np.unique(labels)) == 10


def test_stability_rule_keeps_the_previous_assignment_in_the_checkpoint(tmp_path):
    """confidence="stability": the last pass's assignment is a variable, set by a refresh and
    restored with the model, so a resumed run ranks its next pass by it."""
    source = sources.load_source("digits", "test")
    embed = data.embedding_pipeline(source, 512, 16)

    def stable_moco():
        kmeans = clustering.KMeansSettings((5, 10), "sklearn")
        return _moco(detectors.ClusterLabels(kmeans, confidence="stability"),
                     num_examples=source.num_examples, embedding_dim=8)

    moco = stable_moco()
    assert (moco.detector.previous_assignment.numpy() == -1).all()  # no pass yet
    moco.detector.refresh(0, 0.5, detectors.EpochInputs(moco, embed))
    assignment = moco.detector.previous_assignment.numpy()
    assert assignment.shape == (2, source.num_examples)
    assert (assignment >= 0).all() and assignment[0].max() == 4 and assignment[1].max() == 9
    # Each accepted label is its sample's cluster in that pass.
    table = moco.detector.pseudo_labels.numpy()
    np.testing.assert_array_equal(table[table >= 0], assignment[table >= 0])
    path = tf.train.Checkpoint(model=moco).save(str(tmp_path / "ckpt"))
    restored = stable_moco()
    assert (restored.detector.previous_assignment.numpy() == -1).all()
    tf.train.Checkpoint(model=restored).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(restored.detector.previous_assignment.numpy(), assignment)


# --- OracleLabels ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_labels():
    return sources.load_source("digits").labels


def test_oracle_pairs_are_all_true_false_negatives(digits_labels):
    labels = detectors.oracle_pseudo_labels(digits_labels, num_levels=3, fraction=0.5, seed=0)
    quality = diagnostics.false_negative_quality(labels, digits_labels)
    assert quality.precision == 1.0
    assert 0.2 < quality.recall < 0.3  # about 0.5^2 of the same-class pairs
    assert np.all(labels == labels[0])  # every level carries the true class
    full = diagnostics.false_negative_quality(
        detectors.oracle_pseudo_labels(digits_labels, 2, 1.0, seed=0), digits_labels)
    assert (full.precision, full.recall) == (1.0, 1.0)


def test_oracle_fraction_is_class_balanced_seeded_and_grows_as_a_superset(digits_labels):
    half = detectors.oracle_pseudo_labels(digits_labels, 1, 0.5, seed=3)[0]
    quarter = detectors.oracle_pseudo_labels(digits_labels, 1, 0.25, seed=3)[0]
    sizes = np.bincount(digits_labels)
    np.testing.assert_array_equal(np.bincount(digits_labels[half >= 0], minlength=10),
                                  np.floor(0.5 * sizes + 0.5))
    assert np.all(half[quarter >= 0] >= 0)  # a larger fraction keeps the earlier ones
    np.testing.assert_array_equal(half,
                                  detectors.oracle_pseudo_labels(digits_labels, 1, 0.5, 3)[0])
    assert not np.array_equal(half, detectors.oracle_pseudo_labels(digits_labels, 1, 0.5, 4)[0])
    assert np.all(detectors.oracle_pseudo_labels(digits_labels, 1, 0.0, 3) == -1)


# --- NearestFraction (the quantile detector) -------------------------------------------------


@pytest.mark.parametrize("fraction, masked", [(0.0, 0.0), (0.5, 2.0), (1.0, 4.0)])
def test_quantile_detector_masks_that_fraction_of_the_filled_queue(fraction, masked):
    moco = _moco(detectors.NearestFraction())
    moco.enqueue(tf.math.l2_normalize(tf.random.normal([4, 4]), 1), tf.range(4))  # 4 of 8 filled
    moco.detector.fraction.assign(fraction)
    history = moco.fit(_one_step_data(batch=4), epochs=1, verbose=0)
    assert history.history["masked"][0] == pytest.approx(masked)


def test_quantile_detector_masks_each_anchors_most_similar_valid_entries():
    moco = _moco(detectors.NearestFraction(), num_examples=16)
    moco.enqueue(tf.math.l2_normalize(tf.random.normal([4, 4], seed=1), 1), tf.range(4))
    moco.detector.fraction.assign(0.5)  # 2 of the 4 filled slots per anchor
    _, view_q, _ = next(iter(_one_step_data(batch=6)))
    keys = tf.math.l2_normalize(tf.random.normal([6, 4], seed=2), 1)
    *_, logits, fn_mask = moco._query_loss_and_gradients(
        tf.range(6, dtype=tf.int64), view_q, keys, tf.convert_to_tensor(moco.queue_keys),
        tf.convert_to_tensor(moco.queue_ids))
    similarities = logits.numpy()[:, 1:]
    expected = np.zeros_like(fn_mask.numpy())
    for row, top in zip(expected, np.argsort(-similarities[:, :4], axis=1)[:, :2]):
        row[top] = True  # the two most similar of the filled slots 0-3
    np.testing.assert_array_equal(fn_mask.numpy(), expected)


def test_quantile_detector_counts_masked_entries_of_the_anchors_true_class():
    detector = detectors.NearestFraction(count_true_labels=True)
    detector.build_state(8, 4)
    detector.set_true_labels([0, 0, 0, 1, 1, 1, -1, 1])
    queue_ids = tf.constant([1, 2, 3, 6, -1])  # classes 0, 0, 1, unknown; an empty slot
    fn_mask = tf.constant([[True, False, True, True, False],  # anchor 0 (class 0): 1 right of 2
                           [False, False, True, False, True],  # anchor 5 (class 1): 1 of 1
                           [True] * 5])  # anchor 6, class unknown: nothing counts
    detector.count(tf.constant([0, 5, 6]), queue_ids, fn_mask)
    correct, true = (tracker.result().numpy() for tracker in detector.step_metrics)
    assert correct == pytest.approx((1 + 1 + 0) / 3)  # per anchor
    assert true == pytest.approx((2 + 1 + 0) / 3)


def test_quantile_detector_without_labels_counts_nothing():
    moco = _moco(detectors.NearestFraction())
    assert moco.detector.true_labels is None and moco.detector.step_metrics == []
    assert [m.name for m in moco.metrics] == ["loss", "acc", "acc_without_fn", "masked",
                                              "key_spread"]
    counting = _moco(detectors.NearestFraction(count_true_labels=True))
    assert [m.name for m in counting.metrics][-2:] == ["fn_correct", "fn_true"]


def test_quantile_detector_epochs_log_precision_and_recall():
    moco = _moco(detectors.NearestFraction(0.5, count_true_labels=True))
    moco.enqueue(tf.math.l2_normalize(tf.random.normal([8, 4]), 1), tf.range(8))
    callback = pseudo_labels.PseudoLabelCallback(
        clustering.AcceptanceSchedule(2, 1), true_labels=np.zeros(8, np.int64), verbose=False)
    history = moco.fit(_one_step_data().repeat(2), epochs=2, steps_per_epoch=1, verbose=0,
                       callbacks=[callback]).history
    assert history["fn_fraction"] == [0.0, 0.5]  # warm-up, then alpha 1 * 0.5
    assert history["masked"] == [0.0, 4.0]
    assert "fn_correct" not in history and "fn_true" not in history
    # Only the second epoch detects. One class: every masked entry is a true false negative,
    # 4 of the 8 are found.
    assert history["fn_precision"] == [pytest.approx(1.0)]
    assert history["fn_recall"] == [pytest.approx(0.5)]


# --- Configs of the built-in detectors -------------------------------------------------------

KMEANS = clustering.KMeansSettings((5, 10), "sklearn", 7, 100, 2)
# Each built-in detector with every one of its own arguments away from its default.
BUILT_IN = {
    "cluster_labels": (detectors.ClusterLabels, {
        "kmeans": KMEANS, "confidence": "neighbours", "neighbours_k": 5, "min_levels": 2,
        "features": TRAIN_KEYS, "seed": 3}),
    "oracle_labels": (detectors.OracleLabels, {"levels": (10, 20), "fraction": 0.8, "seed": 4}),
    "nearest_fraction": (detectors.NearestFraction, {"quantile": 0.3}),
    "top_k_threshold": (detectors.TopKThreshold, {"top_k": 7, "threshold": 0.6}),
    "learned_threshold": (detectors.LearnedThreshold, {"fraction": 0.2, "learning_rate": 0.1,
                                                       "beta1": 0.8, "beta2": 0.9}),
    "soft_cluster_drop": (detectors.SoftClusterDrop, {
        "kmeans": KMEANS, "confidence": "agreement", "neighbours_k": 5, "min_levels": 2,
        "features": TRAIN_KEYS, "seed": 3, "temperature": 0.2}),
}


def _config_value(value):
    """A config entry as plain data (a dataclass such as KMeansSettings may be stored as its
    dict)."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _missing_arguments(detector, arguments: dict) -> dict:
    """The arguments get_config does not hold under their parameter name with their value."""
    config = detector.get_config()
    return {name: (value, config.get(name, "<absent>")) for name, value in arguments.items()
            if _config_value(config.get(name)) != _config_value(value)}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_get_config_holds_the_constructor_arguments(name):
    cls, arguments = BUILT_IN[name]
    own = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    assert own <= set(arguments)  # the table above sets every argument of the constructor
    detector = cls(**arguments)
    assert _missing_arguments(detector, arguments) == {}
    # The config rebuilds the same detector (Keras' from_config: cls(**config)).
    assert cls.from_config(detector.get_config()).get_config() == detector.get_config()


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_get_config_holds_count_true_labels(name):
    cls, arguments = BUILT_IN[name]
    detector = cls(**arguments, count_true_labels=True)
    assert _missing_arguments(detector, {"count_true_labels": True}) == {}


# --- A detector of one's own, through the public API -----------------------------------------


class RandomFraction(ifnd_tf.FalseNegativeDetector):
    """Masks a seeded random alpha * rate of each anchor's valid queue entries (exactly
    round(fraction * valid) of them): a rule the package does not know."""

    def __init__(self, rate: float = 0.25, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.seed = seed

    def build_state(self, num_examples, embedding_dim):
        super().build_state(num_examples, embedding_dim)
        self.fraction = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                        aggregation="only_first_replica",
                                        name="random_fraction")

    def refresh(self, epoch, alpha, inputs):
        self.fraction.assign(alpha * self.rate)
        return {"random_fraction": alpha * self.rate}, {}

    def mask(self, anchor_ids, queue_ids, similarities):
        valid = queue_ids >= 0
        seed = tf.stack([tf.constant(self.seed, tf.int64),
                         tf.reduce_sum(tf.cast(anchor_ids, tf.int64))])
        scores = tf.where(valid[None, :], tf.random.stateless_uniform(tf.shape(similarities),
                                                                       seed), -1.0)
        count = tf.cast(tf.round(tf.convert_to_tensor(self.fraction)
                                 * tf.reduce_sum(tf.cast(valid, tf.float32))), tf.int32)
        rank = tf.argsort(tf.argsort(scores, axis=1, direction="DESCENDING"), axis=1)
        return tf.logical_and(rank < count, valid[None, :])

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def _user_moco(num_examples):
    encoder = ifnd_tf.build_encoder("small", 16, 0.25, embedding_dim=16)
    moco = ifnd_tf.MomentumContrast(encoder, num_examples, RandomFraction(),
                                    ifnd_tf.MoCoConfig(queue_size=256, momentum=0.99,
                                                       key_bn_splits=2))
    moco.compile(optimizer=keras.optimizers.SGD(0.03, momentum=0.9))
    moco.optimizer.build(moco.encoder.trainable_variables)
    return moco


def test_a_new_detector_trains_through_the_public_api_and_is_checkpointed(tmp_path):
    source = ifnd_tf.load_source("digits")
    moco = _user_moco(source.num_examples)
    callback = ifnd_tf.PseudoLabelCallback(ifnd_tf.AcceptanceSchedule(2, 1),
                                           ifnd_tf.embedding_pipeline(source, 512, 16),
                                           true_labels=source.labels, verbose=False)
    train = ifnd_tf.train_pipeline(source, 64, 16, seed=0, num_steps=6)
    history = moco.fit(train, epochs=2, steps_per_epoch=3, callbacks=[callback],
                       verbose=0).history
    assert history["random_fraction"] == [0.0, 0.25]  # warm-up, then alpha 1 * rate
    # Warm-up masks nothing. Epoch 2's steps see 192, 256, 256 filled slots of the queue (64
    # keys a step from empty): a quarter of them are masked for every anchor.
    assert history["masked"][0] == 0.0
    assert history["masked"][1] == pytest.approx((48 + 64 + 64) / 3)
    assert np.isfinite(history["loss"]).all()
    # The detector's own state is checkpointed with the model.
    path = tf.train.Checkpoint(model=moco).save(str(tmp_path / "ckpt"))
    restored = _user_moco(source.num_examples)
    assert float(restored.detector.fraction.numpy()) == 0.0
    tf.train.Checkpoint(model=restored).restore(path).assert_existing_objects_matched()
    assert float(restored.detector.fraction.numpy()) == pytest.approx(0.25)
    np.testing.assert_array_equal(restored.queue_ids.numpy(), moco.queue_ids.numpy())
