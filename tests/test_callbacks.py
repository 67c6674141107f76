import keras
import numpy as np
import pytest
import tensorflow as tf

from ifnd_tf import callbacks, data, diagnostics, model


def _digits_moco(strategy, source, levels, remember_keys=False):
    with strategy.scope():
        encoders = [model.build_encoder("small", 16, 0.25, embedding_dim=16, bn_groups=g)
                    for g in (None, model.key_bn_groups(2, strategy.num_replicas_in_sync))]
        moco = model.MomentumContrast(encoders[0], encoders[1], source.num_examples,
                                      queue_size=64, num_levels=levels, key_bn_splits=2,
                                      remember_keys=remember_keys)
        moco.copy_query_to_key_encoder()
        moco.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        moco.optimizer.build(moco.encoder.trainable_variables)
    return moco


def test_embedder_places_every_example_by_index(one_replica, two_replicas):
    source = data.load_source("digits", "test")  # 360 examples: last batch is partial
    pipeline = data.embedding_pipeline(source, 61, 16)  # odd batches: uneven replica shares
    with two_replicas.scope():
        encoder = model.build_encoder("small", 16, 0.25, embedding_dim=16)
    images = np.concatenate([x.numpy() for _, x in pipeline])
    expected = encoder(images, training=False)["embedding"].numpy()
    for strategy in (one_replica, two_replicas):
        embedder = callbacks.DatasetEmbedder(encoder, strategy, pipeline, source.num_examples)
        for _ in range(2):  # reusable, e.g. once per epoch
            np.testing.assert_allclose(embedder(), expected, rtol=1e-4, atol=1e-5)


def test_callback_fills_label_table_during_a_real_fit(one_replica):
    source = data.load_source("digits")
    moco = _digits_moco(one_replica, source, levels=2)
    callback = callbacks.PseudoLabelCallback(
        data.embedding_pipeline(source, 512, 16), source.num_examples, [10, 20], total_epochs=3,
        warmup_epochs=1, alpha_start=0.0, alpha_end=1.0, alpha_shape="linear", backend="sklearn",
        seed=0, strategy=one_replica, true_labels=source.labels, verbose=False)
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
    moco = _digits_moco(one_replica, source, levels=1)
    moco.pseudo_labels.assign(tf.zeros_like(moco.pseudo_labels))
    callback = callbacks.PseudoLabelCallback(
        data.embedding_pipeline(source, 512, 16), source.num_examples, [10], total_epochs=5,
        warmup_epochs=2, alpha_start=0.0, alpha_end=1.0, alpha_shape="linear", backend="tf",
        seed=0, strategy=one_replica, verbose=False)
    callback.set_model(moco)
    callback.on_epoch_begin(0)
    assert (moco.pseudo_labels.numpy() == -1).all()
    callback.on_epoch_begin(2)
    assert np.mean(moco.pseudo_labels.numpy() >= 0) == pytest.approx(1 / 3, abs=0.02)


def test_training_keys_are_clustered_once_every_example_has_one(one_replica):
    source = data.load_source("digits", "test")
    moco = _digits_moco(one_replica, source, levels=1, remember_keys=True)
    callback = callbacks.PseudoLabelCallback(
        data.embedding_pipeline(source, 512, 16), source.num_examples, [10], total_epochs=2,
        warmup_epochs=1, alpha_start=0.0, alpha_end=1.0, alpha_shape="linear", backend="sklearn",
        seed=0, strategy=one_replica, verbose=False, cluster_features=callbacks.TRAIN_KEYS)
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


def test_unknown_cluster_features_is_refused(one_replica):
    with pytest.raises(ValueError, match="cluster_features must be one of"):
        callbacks.PseudoLabelCallback(None, 10, [2], 2, 1, 0.0, 1.0, "linear", "tf", 0,
                                      one_replica, cluster_features="views")


def test_non_finite_loss_guard_names_step_and_kept_checkpoint(tmp_path):
    checkpoint = tf.train.Checkpoint(step=tf.Variable(1))
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=2)
    manager.save(checkpoint_number=2)
    guard = callbacks.StopOnNonFiniteLoss(manager, steps_per_epoch=10)
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(3, {"loss": 1.5})
    with pytest.raises(callbacks.DivergenceError,
                       match=f"loss is inf at step 25 \\(epoch 3, batch 5\\);.*{tmp_path}/ckpt-2"):
        guard.on_train_batch_end(4, {"loss": float("inf")})


def test_metrics_csv_drops_rows_a_resumed_run_redoes(tmp_path):
    path = str(tmp_path / "metrics.csv")
    log = callbacks.MetricsCsv(path, completed_epochs=0)
    for epoch in range(3):
        log.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "acc": 0.5})
    callbacks.MetricsCsv(path, completed_epochs=2)  # killed after logging epoch 2, before saving
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "epoch,acc,loss", "0,0.5,1.0", "1,0.5,0.5"]
