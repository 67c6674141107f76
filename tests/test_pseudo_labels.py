import numpy as np
import pytest
from conftest import small_moco

from ifnd_tf import clustering, data, diagnostics, pseudo_labels, sources


def _digits_moco(strategy, source, num_clusters, **changes):
    """smoke.cfg's model with a 64-key queue and 16-d embeddings; its detector is the one the
    flag changes name (ClusterLabels by default, the k-means settings of smoke.cfg)."""
    return small_moco(strategy, source.num_examples, num_clusters=num_clusters, queue_size=64,
                      embedding_dim=16, **changes)


def _two_epochs_on_digits(moco, source):
    """Two 3-step epochs of a 3-epoch run (1 warm-up epoch, k = 10, 20): history, label table."""
    callback = pseudo_labels.PseudoLabelCallback(
        clustering.AcceptanceSchedule(3, 1), data.embedding_pipeline(source, 512, 16),
        true_labels=source.labels, verbose=False)
    train = data.train_pipeline(source, 64, 16, seed=0).repeat()
    history = moco.fit(train, epochs=2, steps_per_epoch=3, callbacks=[callback], verbose=0)
    return history, moco.detector.pseudo_labels.numpy()


def test_callback_fills_label_table_during_a_real_fit(one_replica):
    source = sources.load_source("digits")
    moco = _digits_moco(one_replica, source, (10, 20))
    history, table = _two_epochs_on_digits(moco, source)
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
    source = sources.load_source("digits", "test")
    moco = _digits_moco(one_replica, source, (10,), kmeans_backend="tf")
    moco.detector.set_pseudo_labels(np.zeros(moco.detector.pseudo_labels.shape, np.int32))
    callback = pseudo_labels.PseudoLabelCallback(
        clustering.AcceptanceSchedule(5, 2), data.embedding_pipeline(source, 512, 16),
        true_labels=source.labels, verbose=False)
    callback.set_model(moco)
    callback.on_epoch_begin(0)
    assert (moco.detector.pseudo_labels.numpy() == -1).all()
    # Nothing detected yet: no FN precision / recall / purity in the logs (not a fake 0).
    assert callback.epoch_logs == {"alpha": 0.0, "clustering_seconds": 0.0, "accepted": 0}
    callback.on_epoch_begin(2)
    assert np.mean(moco.detector.pseudo_labels.numpy() >= 0) == pytest.approx(1 / 3, abs=0.02)


def test_oracle_fills_the_table_with_true_classes_during_a_real_fit(one_replica):
    source = sources.load_source("digits")
    moco = _digits_moco(one_replica, source, (10, 20), fn_oracle=True, fn_oracle_fraction=0.8)
    history, table = _two_epochs_on_digits(moco, source)
    assert history.history["oracle"] == [1.0, 1.0]
    assert history.history["fn_precision"][-1] == 1.0
    assert np.mean(table >= 0) == pytest.approx(0.5 * 0.8, abs=0.01)  # alpha x fraction
    np.testing.assert_array_equal(table[0][table[0] >= 0], source.labels[table[0] >= 0])
    assert history.history["masked"][1] > 0.0
    # The oracle refuses to run without true labels (at its first refresh after warm-up).
    blind = pseudo_labels.PseudoLabelCallback(clustering.AcceptanceSchedule(3, 1), verbose=False)
    blind.set_model(moco)
    with pytest.raises(ValueError, match="the oracle needs true labels"):
        blind.on_epoch_begin(1)


def test_stability_rule_uses_the_previous_pass(one_replica, monkeypatch):
    source = sources.load_source("digits", "test")
    moco = _digits_moco(one_replica, source, (5, 10), fn_confidence="stability")
    seen, made = [], []  # the previous assignment each k-means pass got; the one it made
    pseudo_labels_of = clustering.KMeansSettings.pseudo_labels

    def spy(self, embeddings, alpha, seed, rule="margin", previous=None, neighbours_k=10):
        seen.append(None if previous is None else previous.copy())
        labels, stats = pseudo_labels_of(self, embeddings, alpha, seed, rule, previous,
                                         neighbours_k)
        made.append(np.stack([level.assignment for level in stats]))
        return labels, stats

    monkeypatch.setattr(clustering.KMeansSettings, "pseudo_labels", spy)
    callback = pseudo_labels.PseudoLabelCallback(
        clustering.AcceptanceSchedule(4, 0), data.embedding_pipeline(source, 512, 16),
        verbose=False)
    callback.set_model(moco)
    callback.on_epoch_begin(0)
    first = moco.detector.previous_assignment.numpy()
    assert first.shape == (2, source.num_examples)
    assert seen == [None]  # no previous pass yet
    np.testing.assert_array_equal(first, made[0])
    callback.on_epoch_begin(1)
    np.testing.assert_array_equal(seen[1], first)  # the second pass ranks by the first
    np.testing.assert_array_equal(moco.detector.previous_assignment.numpy(), made[1])
    assert np.mean(moco.detector.pseudo_labels.numpy() >= 0) == pytest.approx(0.5, abs=0.03)
