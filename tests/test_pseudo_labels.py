import numpy as np
import pytest
from conftest import small_moco

from ifnd_tf import clustering, data, diagnostics, pseudo_labels


def _digits_moco(strategy, source, num_clusters, **changes):
    """smoke.cfg's model with a 64-key queue and 16-d embeddings."""
    return small_moco(strategy, source.num_examples, num_clusters=num_clusters, queue_size=64,
                      embedding_dim=16, **changes)


def test_callback_fills_label_table_during_a_real_fit(one_replica):
    source = data.load_source("digits")
    moco = _digits_moco(one_replica, source, (10, 20))
    callback = pseudo_labels.PseudoLabelCallback(
        data.embedding_pipeline(source, 512, 16), clustering.AcceptanceSchedule(3, 1),
        clustering.KMeansSettings((10, 20), "sklearn"), seed=0, true_labels=source.labels,
        verbose=False)
    train = data.train_pipeline(source, 64, 16, seed=0).repeat()
    history = moco.fit(train, epochs=2, steps_per_epoch=3, callbacks=[callback], verbose=0)

    table = moco.pseudo_labels.numpy()
    assert history.history["alpha"] == pytest.approx([0.0, 0.5])
    warmup_seconds, ifnd_seconds = history.history["clustering_seconds"]
    assert warmup_seconds == 0.0 and ifnd_seconds > 0.0  # the pass ran in epoch 2 only
    assert table.shape == (2, source.num_examples)
    for level, k in zip(table, (10, 20)):
        assert abs(np.mean(level >= 0) - 0.5) < 0.02  # top half of each cluster accepted
        assert set(np.unique(level[level >= 0])) <= set(range(k))
    # The logged precision / recall are those of the table the loss now uses.
    quality = diagnostics.false_negative_quality(table, source.labels)
    assert history.history["fn_precision"][-1] == pytest.approx(quality.precision)
    assert history.history["fn_recall"][-1] == pytest.approx(quality.recall)
    assert 0.0 < quality.precision <= 1.0
    assert history.history["masked"][1] > 0.0  # the train step saw the new labels


def test_warmup_epoch_clears_the_table(one_replica):
    source = data.load_source("digits", "test")
    moco = _digits_moco(one_replica, source, (10,))
    moco.set_pseudo_labels(np.zeros(moco.pseudo_labels.shape, np.int32))
    callback = pseudo_labels.PseudoLabelCallback(
        data.embedding_pipeline(source, 512, 16), clustering.AcceptanceSchedule(5, 2),
        clustering.KMeansSettings((10,), "tf"), seed=0, true_labels=source.labels, verbose=False)
    callback.set_model(moco)
    callback.on_epoch_begin(0)
    assert (moco.pseudo_labels.numpy() == -1).all()
    # Nothing detected yet: no FN precision / recall / purity in the logs (not a fake 0).
    assert callback.epoch_logs == {"alpha": 0.0, "clustering_seconds": 0.0, "accepted": 0}
    callback.on_epoch_begin(2)
    assert np.mean(moco.pseudo_labels.numpy() >= 0) == pytest.approx(1 / 3, abs=0.02)


def test_training_keys_are_clustered_once_every_example_has_one(one_replica):
    source = data.load_source("digits", "test")
    moco = _digits_moco(one_replica, source, (10,), cluster_features=pseudo_labels.TRAIN_KEYS)
    callback = pseudo_labels.PseudoLabelCallback(
        data.embedding_pipeline(source, 512, 16), clustering.AcceptanceSchedule(2, 1),
        clustering.KMeansSettings((10,), "sklearn"), seed=0,
        cluster_features=pseudo_labels.TRAIN_KEYS, verbose=False)
    callback.set_model(moco)
    # One example without a key yet: the centre-view pass runs instead.
    groups = np.arange(source.num_examples) % 10
    centres = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 16)))[0][:10]
    noise = 0.05 * np.random.default_rng(1).normal(size=(source.num_examples, 16))
    keys = centres[groups] + noise
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    moco.train_keys.assign(np.where(np.arange(source.num_examples)[:, None] == 7, 0, keys))
    callback.on_epoch_begin(1)
    assert callback.details["clustered_train_keys"] == 0.0
    assert (moco.pseudo_labels.numpy() >= 0).all()
    # Complete: the table is what gets clustered, so its ten groups come back exactly.
    moco.train_keys.assign(keys)
    callback.on_epoch_begin(1)
    assert callback.details["clustered_train_keys"] == 1.0
    labels = moco.pseudo_labels.numpy()[0]
    assert all(len(np.unique(labels[groups == g])) == 1 for g in range(10))
    assert len(np.unique(labels)) == 10


def test_unknown_cluster_features_is_refused():
    with pytest.raises(ValueError, match="cluster_features must be one of"):
        pseudo_labels.PseudoLabelCallback(None, clustering.AcceptanceSchedule(2, 1),
                                          clustering.KMeansSettings((2,)), 0,
                                          cluster_features="views")
