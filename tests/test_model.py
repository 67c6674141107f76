import keras
import numpy as np
import pytest
import tensorflow as tf

from ifnd_tf import (
    clustering,
    data,
    detectors,
    embedding,
    encoders,
    errors,
    model,
    pseudo_labels,
    sources,
)
from ifnd_tf.config import TRAIN_KEYS, MoCoConfig


def _detector(levels=1, **options):
    """The paper's detector over `levels` hierarchy levels; tests fill its table directly."""
    kmeans = clustering.KMeansSettings(tuple(range(2, 2 + levels)), "sklearn")
    return detectors.ClusterLabels(kmeans, **options)


def _moco(num_examples=64, queue_size=8, levels=1, momentum=0.9, key_bn_splits=1,
          weight_decay=1e-4, detector=None, **options):
    """The small backbone with a 4-d head; detector: a ClusterLabels over `levels` levels
    (built with `options`) unless given."""
    encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=4)
    settings = MoCoConfig(queue_size=queue_size, momentum=momentum, key_bn_splits=key_bn_splits,
                          weight_decay=weight_decay)
    return model.MomentumContrast(encoder, num_examples, detector or _detector(levels, **options),
                                  settings)


def _compiled(moco, lr=0.05):
    moco.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9))
    moco.optimizer.build(moco.encoder.trainable_variables)
    return moco


@pytest.mark.parametrize("backbone, size, features", [
    ("small", 28, 32), ("resnet18_cifar", 32, 64), ("resnet50", 64, 256)])
def test_backbones_give_features_and_unit_embeddings(backbone, size, features):
    encoder = encoders.build_encoder(backbone, size, width_multiplier=0.125)
    out = encoder(tf.random.uniform([2, size, size, 3]))
    assert out["features"].shape == (2, features)
    np.testing.assert_allclose(tf.norm(out["embedding"], axis=1).numpy(), [1.0, 1.0], rtol=1e-5)


def test_resnet18_cifar_keeps_resolution_in_the_stem():
    encoder = encoders.build_encoder("resnet18_cifar", 32, width_multiplier=0.125)
    assert encoder.get_layer("stage1_block1_a_conv").output.shape[1:3] == (32, 32)
    assert encoder.get_layer("stage4_block2_b_conv").output.shape[1:3] == (4, 4)


def test_unknown_backbone_names_the_flag():
    with pytest.raises(errors.ConfigError, match="--backbone"):
        encoders.build_encoder("vgg", 32)


def test_queue_is_fifo_with_indices_and_wraps_around():
    moco = _moco(queue_size=4)
    keys = tf.reshape(tf.range(6 * 4, dtype=tf.float32), [6, 4])
    moco.enqueue(keys[:2], tf.constant([10, 11]))
    np.testing.assert_array_equal(moco.queue_ids.numpy()[:2], [10, 11])
    np.testing.assert_array_equal(moco.queue_keys.numpy()[:2], keys[:2].numpy())
    assert int(moco.queue_ptr.numpy()) == 2
    moco.enqueue(keys[2:4], tf.constant([12, 13]))
    assert int(moco.queue_ptr.numpy()) == 0  # 4 entries: wrapped
    moco.enqueue(keys[4:6], tf.constant([14, 15]))  # overwrites the two oldest
    np.testing.assert_array_equal(moco.queue_ids.numpy(), [14, 15, 12, 13])
    np.testing.assert_array_equal(moco.queue_keys.numpy()[:2], keys[4:6].numpy())


def test_enqueue_refuses_a_batch_that_does_not_divide_the_queue():
    moco = _moco(queue_size=6)
    with pytest.raises(ValueError, match="queue size 6 is not a multiple of the global batch 4"):
        moco.enqueue(tf.zeros([4, 4]), tf.range(4))
    assert (moco.queue_ids.numpy() == -1).all()  # nothing written


def test_ema_update_math():
    moco = _moco(momentum=0.9)
    for v in moco.encoder.trainable_variables:
        v.assign(tf.ones_like(v))
    for v in moco.key_encoder.trainable_variables:
        v.assign(tf.fill(v.shape, 3.0))
    moco.update_key_encoder()
    for v in moco.key_encoder.trainable_variables:
        np.testing.assert_allclose(v.numpy(), 0.9 * 3.0 + 0.1 * 1.0, rtol=1e-6)


@pytest.mark.parametrize("splits", [1, 2])
def test_key_encoder_gets_no_gradient(splits):
    moco = _moco(key_bn_splits=splits)
    images = tf.random.uniform([4, 16, 16, 3])
    with tf.GradientTape() as tape:
        keys = moco.momentum_keys(images)
        loss = tf.reduce_sum(keys)
    grads = tape.gradient(loss, moco.key_encoder.trainable_variables)
    assert all(g is None for g in grads)
    assert keys.shape == (4, 4)


def test_split_bn_keeps_each_key_with_its_own_image():
    """Shuffle-BN must un-shuffle: key i is computed from image i."""
    moco = _moco(key_bn_splits=4)
    images = keras.Input((16, 16, 3))
    moco.key_encoder = keras.Model(images,
                                   {"embedding": keras.layers.GlobalAveragePooling2D()(images)})
    batch = tf.random.uniform([8, 16, 16, 3], seed=1)
    np.testing.assert_allclose(moco.momentum_keys(batch).numpy(),
                               tf.reduce_mean(batch, axis=[1, 2]).numpy(), rtol=1e-6)


def _one_step_data(batch=8, size=16):
    index = tf.range(batch, dtype=tf.int64)
    views = tf.random.uniform([2, batch, size, size, 3], seed=0)
    return tf.data.Dataset.from_tensors((index, views[0], views[1]))


def test_train_step_masks_entries_with_the_anchor_label():
    moco = _compiled(_moco(num_examples=8, queue_size=8))
    moco.enqueue(tf.math.l2_normalize(tf.random.normal([8, 4]), 1), tf.range(8))
    moco.detector.set_pseudo_labels([[0, 0, 0, 0, 1, 1, 1, 1]])
    history = moco.fit(_one_step_data(), epochs=1, verbose=0)
    # each anchor shares its label with 4 of the 8 queue entries
    assert history.history["masked"][0] == pytest.approx(4.0)
    assert int(moco.queue_ptr.numpy()) == 0  # 8 new keys filled the queue of 8
    np.testing.assert_array_equal(moco.queue_ids.numpy(), np.arange(8))


def test_elimination_of_whole_queue_gives_zero_loss_and_full_masked_accuracy():
    # Seeded: whether a random queue entry outranks some positive depended on the suite's order.
    keras.utils.set_random_seed(0)
    moco = _compiled(_moco(num_examples=64, queue_size=64))
    moco.enqueue(tf.math.l2_normalize(tf.random.normal([64, 4]), 1), tf.range(64))
    moco.detector.set_pseudo_labels([[3] * 64])
    history = moco.fit(_one_step_data(), epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(0.0, abs=1e-6)
    # Only the positive is left once every queue entry is masked; `acc` still ranks it against
    # the whole queue, as in a MoCo run.
    assert history.history["acc_without_fn"][0] == pytest.approx(1.0)
    assert history.history["acc"][0] < 1.0
    assert history.history["masked"][0] == pytest.approx(64.0)


def test_train_step_moves_query_encoder_and_ema_follows():
    moco = _compiled(_moco(num_examples=8, queue_size=8, momentum=0.5))
    before_query = [v.numpy().copy() for v in moco.encoder.trainable_variables]
    before_key = [v.numpy().copy() for v in moco.key_encoder.trainable_variables]
    moco.fit(_one_step_data(), epochs=1, verbose=0)
    after_query = [v.numpy() for v in moco.encoder.trainable_variables]
    changed = [not np.allclose(a, b) for a, b in zip(before_query, after_query)]
    assert sum(changed) > len(changed) // 2
    # MoCo order: EMA with the query weights from before this step's gradient update.
    for key_before, query_before, key_now in zip(before_key, before_query,
                                                 moco.key_encoder.trainable_variables):
        np.testing.assert_allclose(key_now.numpy(), 0.5 * key_before + 0.5 * query_before,
                                   rtol=1e-5, atol=1e-7)


def test_two_replicas_stay_identical(two_replicas):
    """A real fit with the clustering pass between epochs, as in training."""
    source = sources.load_source("digits")
    with two_replicas.scope():
        detector = detectors.ClusterLabels(clustering.KMeansSettings((10,), "sklearn"), seed=0,
                                           features=TRAIN_KEYS)
        moco = _compiled(_moco(num_examples=source.num_examples, queue_size=64, key_bn_splits=2,
                               detector=detector))
    labeller = pseudo_labels.PseudoLabelCallback(
        clustering.AcceptanceSchedule(2, 1), data.embedding_pipeline(source, 256, 16),
        verbose=False)
    train = data.train_pipeline(source, 32, 16, seed=0, num_steps=6)
    history = moco.fit(train, epochs=2, steps_per_epoch=3, callbacks=[labeller], verbose=0)
    assert history.history["masked"][1] > 0
    stateful = (moco.encoder.variables + moco.key_encoder.variables
                + [moco.queue_keys, moco.queue_ids, moco.queue_ptr, detector.train_keys,
                   detector.pseudo_labels])
    for variable in stateful:
        replicas = [v.numpy() for v in variable.value.values]
        assert len(replicas) == 2
        np.testing.assert_allclose(replicas[0], replicas[1], rtol=1e-5, atol=1e-6,
                                   err_msg=variable.path)
    assert int(moco.queue_ptr.numpy()) == (6 * 32) % 64
    # Both replicas' halves of the last two batches are in the table, at their indices.
    table, ids = detector.train_keys.numpy(), moco.queue_ids.numpy()
    np.testing.assert_array_equal(table[ids], moco.queue_keys.numpy())


def test_grouped_batch_norm_equals_separate_forwards_per_group():
    """One forward with grouped BN = the split forwards it replaces: per-group statistics,
    moving statistics updated by the mean of the groups' statistics."""
    images = tf.random.uniform([8, 16, 16, 3], seed=3)
    grouped = encoders.build_encoder("small", 16, 0.25, embedding_dim=4, bn_groups=4)
    split = encoders.build_encoder("small", 16, 0.25, embedding_dim=4)
    split.set_weights(grouped.get_weights())
    out = grouped(images, training=True)["embedding"].numpy()
    parts = [split(g, training=True)["embedding"].numpy() for g in tf.split(images, 4)]
    np.testing.assert_allclose(out, np.concatenate(parts), atol=2e-5)
    # Moving statistics: one update with the groups' mean statistics (momentum 0.9).
    layer = grouped.get_layer("conv1_bn")
    first = split.get_layer("conv1_conv")(split.get_layer("normalize")(images)).numpy()
    mean = first.reshape(4, 2, 16, 16, -1).mean(axis=(1, 2, 3)).mean(0)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, atol=1e-5)
    # Inference ignores the groups.
    np.testing.assert_allclose(grouped(images[:3])["embedding"].numpy(),
                               grouped(images)["embedding"].numpy()[:3], atol=1e-5)


def test_momentum_contrast_refuses_a_key_encoder_without_matching_groups():
    query, key = (encoders.build_encoder("small", 16, 0.25, embedding_dim=4) for _ in range(2))
    with pytest.raises(AssertionError, match="built with bn_groups=2"):
        model.MomentumContrast(query, 64, moco=MoCoConfig(queue_size=8, key_bn_splits=2),
                               key_encoder=key)


def test_key_encoder_starts_as_a_copy_of_the_query_encoder():
    """The constructor copies the query weights into the key encoder (MoCo init), also into
    a key encoder it is given."""
    query, key = (encoders.build_encoder("small", 16, 0.25, embedding_dim=4) for _ in range(2))
    assert not all(np.array_equal(a, b) for a, b in zip(query.get_weights(), key.get_weights()))
    moco = model.MomentumContrast(query, 64, moco=MoCoConfig(queue_size=8, key_bn_splits=1),
                                  key_encoder=key)
    assert moco.key_encoder is key
    for a, b in zip(query.get_weights(), key.get_weights()):
        np.testing.assert_array_equal(a, b)
    default = _moco(key_bn_splits=2)  # the default key encoder: a grouped-BN clone
    for a, b in zip(default.encoder.get_weights(), default.key_encoder.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_decay_only_step_is_the_same_under_float16_loss_scaling(policy, monkeypatch):
    """With the contrastive gradient zeroed, one SGD step is w <- w (1 - lr wd) in float32 and
    under float16 loss scaling alike (decay added after the scaled gradient was 2^15 x weaker)."""
    monkeypatch.setattr(model.losses, "ifnd_loss",
                        lambda logits, mask, *strategy: 0.0 * tf.reduce_sum(logits, axis=1))
    keras.mixed_precision.set_global_policy(policy)
    try:
        moco = _moco(weight_decay=0.01)
        optimizer = keras.optimizers.SGD(0.1)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        moco.compile(optimizer=optimizer)
        optimizer.build(moco.encoder.trainable_variables)
        before = [v.numpy() for v in moco.encoder.trainable_variables]
        moco.fit(_one_step_data(), epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for b, v in zip(before, moco.encoder.trainable_variables):
        np.testing.assert_allclose(v.numpy(), b * (1 - 0.1 * 0.01), rtol=1e-5, atol=1e-7,
                                   err_msg=v.path)


def test_shuffle_bn_across_two_replicas_normalises_the_permuted_global_batch(two_replicas):
    """Each replica normalises its slice of the (seed, step) permutation of the global key batch
    in key_bn_splits / replicas local groups; keys come back in their images' order."""
    batch, splits, step = 16, 4, 3
    with two_replicas.scope():
        images = keras.Input((4, 4, 1))
        normalised = encoders.GroupedBatchNormalization(
            encoders.key_bn_groups(splits, 2), center=False, scale=False, epsilon=0.0)(images)
        probe = keras.Model(images,
                            {"embedding": keras.layers.GlobalAveragePooling2D()(normalised)})
        moco = model.MomentumContrast(encoders.build_encoder("small", 16, 0.25, embedding_dim=4),
                                      64, moco=MoCoConfig(queue_size=16, key_bn_splits=splits))
        # The probe replaces the key encoder after construction: the constructor copies the
        # query weights into the key encoder, which needs the same architecture.
        moco.key_encoder = probe
    values = np.random.default_rng(0).permutation(batch).astype(np.float32)  # image i is constant
    pixels = tf.constant(np.broadcast_to(values[:, None, None, None], (batch, 4, 4, 1)).copy())
    shares = two_replicas.experimental_distribute_values_from_function(
        lambda ctx: pixels[ctx.replica_id_in_sync_group * 8:][:8])
    keys = two_replicas.gather(two_replicas.run(moco.momentum_keys, args=(shares, step)), 0)
    order = tf.argsort(tf.random.stateless_uniform([batch], tf.constant([0, step], tf.int64)))
    groups = np.split(order.numpy(), splits)
    expected = np.zeros(batch, np.float32)
    for group in groups:
        expected[group] = (values[group] - values[group].mean()) / values[group].std()
    np.testing.assert_allclose(keys.numpy()[:, 0], expected, rtol=1e-4, atol=1e-4)
    # The permutation mixes replicas: some group holds keys of both replicas' query slices.
    assert any(len({int(i) // 8 for i in group}) == 2 for group in groups)


def test_xla_compiled_steps_match_uncompiled_steps():
    """Three steps of the same data under XLA and without: same loss and weights (tolerance)."""
    from tensorflow.python.framework.config import is_op_determinism_enabled

    assert not is_op_determinism_enabled()  # Keras would skip XLA (as it says in trainer.py)
    models = []
    for jit in (False, True):
        moco = _moco(num_examples=8, queue_size=8, key_bn_splits=1)
        moco.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=jit)
        moco.optimizer.build(moco.encoder.trainable_variables)
        if models:
            moco.set_weights(models[0].get_weights())
        models.append(moco)
    batch = next(iter(_one_step_data()))  # the same three batches for both
    data = tf.data.Dataset.from_tensors(batch).repeat(3)
    histories = [m.fit(data, epochs=1, verbose=0).history for m in models]
    assert models[1].jit_compile and not models[0].jit_compile
    np.testing.assert_allclose(histories[1]["loss"], histories[0]["loss"], rtol=1e-4)
    for a, b in zip(models[0].encoder.get_weights(), models[1].encoder.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)


def _replica_copies_agree(variables):
    for variable in variables:
        copies = [v.numpy() for v in variable.value.values]
        assert len(copies) == 2
        np.testing.assert_allclose(copies[0], copies[1], rtol=1e-5, atol=1e-6,
                                   err_msg=variable.path)


@pytest.mark.parametrize("key_bn_splits, fn_detector", [(1, "clusters"), (2, "clusters"),
                                                        (2, "quantile")])
def test_per_replica_xla_steps_match_uncompiled_steps_on_two_replicas(two_replicas,
                                                                      key_bn_splits, fn_detector):
    """Three steps on two replicas with the per-replica part XLA-compiled and without: same
    losses and weights (tolerance); replica-local BN (--sync_bn=false, shuffle-BN groups) keeps
    identical moving statistics on both replicas; the quantile detector masks the same number of
    entries inside the compiled query step. Compilation itself is proven by XLA's dump in
    tests/test_train.py."""
    from tensorflow.python.framework.config import is_op_determinism_enabled

    assert not is_op_determinism_enabled()  # as --deterministic=false
    rng = np.random.default_rng(0)
    index = np.arange(48, dtype=np.int64).reshape(3, 16)
    views = rng.random((2, 3, 16, 16, 16, 3), np.float32)
    data = tf.data.Dataset.from_tensor_slices((index, views[0], views[1]))
    models = []
    for jit in (False, True):
        with two_replicas.scope():
            groups = encoders.key_bn_groups(key_bn_splits, 2)
            query, key = (encoders.build_encoder("small", 16, 0.25, embedding_dim=4,
                                                 sync_bn=False, bn_groups=g)
                          for g in (None, groups))
            detector = (detectors.NearestFraction() if fn_detector == "quantile"
                        else _detector())
            moco = model.MomentumContrast(
                query, 48, detector,
                MoCoConfig(queue_size=32, momentum=0.9, key_bn_splits=key_bn_splits),
                key_encoder=key, compile_per_replica=jit)
            _compiled(moco)
            if fn_detector == "quantile":
                moco.detector.fraction.assign(0.25)
            if models:
                moco.set_weights(models[0].get_weights())
        models.append(moco)
    histories = [m.fit(data, epochs=1, verbose=0).history for m in models]
    assert models[1].compiles_per_replica and not models[1].jit_compile
    np.testing.assert_allclose(histories[1]["loss"], histories[0]["loss"], rtol=1e-4)
    assert histories[1]["masked"] == histories[0]["masked"]
    if fn_detector == "quantile":  # none at step 1 (empty queue), 1/4 of 16 then of 32
        assert histories[0]["masked"][0] == pytest.approx((0 + 4 + 8) / 3)
    for a, b in zip(models[0].get_weights(), models[1].get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)
    for m in models:
        _replica_copies_agree(m.encoder.variables + m.key_encoder.variables + [m.queue_keys])
    moving = models[1].encoder.get_layer("conv1_bn").moving_mean.numpy()
    assert np.abs(moving).max() > 0  # the statistics moved (the check above is not vacuous)


@pytest.mark.parametrize("backbone, size",
                         [("small", 16), ("resnet18_cifar", 16), ("resnet50", 32)])
def test_folded_encoder_matches_inference_and_follows_training(backbone, size):
    keras.utils.set_random_seed(0)
    encoder = encoders.build_encoder(backbone, size, 0.125, embedding_dim=8)
    images = tf.random.uniform([16, size, size, 3], seed=2)
    for layer in encoder.layers:  # BN statistics far from identity, as after training
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(tf.random.normal(layer.moving_mean.shape, seed=1) * 0.3)
            layer.moving_variance.assign(tf.random.uniform(layer.moving_variance.shape, 0.5, 2.0))
            layer.gamma.assign(tf.random.uniform(layer.gamma.shape, 0.5, 1.5))
    folded = embedding.FoldedEncoder(encoder)
    assert not any(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in folded.model.layers)
    for _ in range(2):
        expected = encoder(images, training=False)
        actual = folded(images)
        for output in ("features", "embedding"):  # float rounding, relative to the outputs
            scale = float(np.abs(expected[output].numpy()).max())
            np.testing.assert_allclose(actual[output].numpy(), expected[output].numpy(),
                                       rtol=1e-4, atol=1e-4 * scale)
        encoder(images, training=True)  # moves the BN statistics: refresh must follow
        for v in encoder.trainable_variables:
            v.assign(v * 1.01)
        folded.refresh()
