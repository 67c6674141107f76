import keras
import numpy as np
import pytest
import tensorflow as tf

from ifnd_tf import clustering, data, model, pseudo_labels


def _moco(num_examples=64, queue_size=8, levels=1, momentum=0.9, **kwargs):
    groups = model.key_bn_groups(kwargs.get("key_bn_splits", 1),
                                 tf.distribute.get_strategy().num_replicas_in_sync)
    encoders = [model.build_encoder("small", 16, 0.25, embedding_dim=4, bn_groups=g)
                for g in (None, groups)]
    moco = model.MomentumContrast(encoders[0], encoders[1], num_examples, queue_size=queue_size,
                                  num_levels=levels, momentum=momentum, **kwargs)
    moco.copy_query_to_key_encoder()
    return moco


def _compiled(moco, lr=0.05):
    moco.compile(optimizer=keras.optimizers.SGD(lr, momentum=0.9))
    moco.optimizer.build(moco.encoder.trainable_variables)
    return moco


@pytest.mark.parametrize("backbone, size, features", [
    ("small", 28, 32), ("resnet18_cifar", 32, 64), ("resnet50", 64, 256)])
def test_backbones_give_features_and_unit_embeddings(backbone, size, features):
    encoder = model.build_encoder(backbone, size, width_multiplier=0.125)
    out = encoder(tf.random.uniform([2, size, size, 3]))
    assert out["features"].shape == (2, features)
    np.testing.assert_allclose(tf.norm(out["embedding"], axis=1).numpy(), [1.0, 1.0], rtol=1e-5)


def test_resnet18_cifar_keeps_resolution_in_the_stem():
    encoder = model.build_encoder("resnet18_cifar", 32, width_multiplier=0.125)
    assert encoder.get_layer("stage1_block1_a_conv").output.shape[1:3] == (32, 32)
    assert encoder.get_layer("stage4_block2_b_conv").output.shape[1:3] == (4, 4)


def test_unknown_backbone_names_the_flag():
    with pytest.raises(ValueError, match="--backbone"):
        model.build_encoder("vgg", 32)


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


def test_pseudo_label_table_is_written_through_its_methods():
    moco = _moco(num_examples=5, levels=2)
    moco.set_pseudo_labels([[7, 8, 9, 10, 11], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(moco.pseudo_labels.numpy()[1], [0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"shape \(1, 5\), the table is \(2, 5\)"):
        moco.set_pseudo_labels([[0, 1, 2, 3, 4]])
    moco.clear_pseudo_labels()
    assert (moco.pseudo_labels.numpy() == -1).all()


def test_queue_labels_follow_the_current_table():
    moco = _moco(num_examples=5, queue_size=4, levels=2)
    moco.enqueue(tf.zeros([2, 4]), tf.constant([3, 1]))
    moco.set_pseudo_labels([[7, 8, 9, 10, 11], [0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(moco.queue_labels().numpy(), [[10, 8, -1, -1], [3, 1, -1, -1]])
    moco.set_pseudo_labels([[-1, 5, 5, 5, 5], [0, 0, 0, 0, 0]])  # a new epoch's table
    np.testing.assert_array_equal(moco.queue_labels().numpy(), [[5, 5, -1, -1], [0, 0, -1, -1]])


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
    moco.key_encoder = keras.Model(images, {"embedding": keras.layers.GlobalAveragePooling2D()(images)})
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
    moco.set_pseudo_labels([[0, 0, 0, 0, 1, 1, 1, 1]])
    history = moco.fit(_one_step_data(), epochs=1, verbose=0)
    # each anchor shares its label with 4 of the 8 queue entries
    assert history.history["masked"][0] == pytest.approx(4.0)
    assert int(moco.queue_ptr.numpy()) == 0  # 8 new keys filled the queue of 8
    np.testing.assert_array_equal(moco.queue_ids.numpy(), np.arange(8))


@pytest.mark.parametrize("min_levels, masked", [(1, 6.0), (2, 2.0)])
def test_train_step_masks_by_the_vote_over_levels(min_levels, masked):
    moco = _compiled(_moco(num_examples=8, queue_size=8, levels=2, fn_min_levels=min_levels))
    moco.enqueue(tf.math.l2_normalize(tf.random.normal([8, 4]), 1), tf.range(8))
    # Every anchor shares level 0 with 4 entries and level 1 with 4, both levels with 2.
    moco.set_pseudo_labels([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0, 1, 1]])
    history = moco.fit(_one_step_data(), epochs=1, verbose=0)
    assert history.history["masked"][0] == pytest.approx(masked)


def test_vote_beyond_the_levels_is_refused():
    with pytest.raises(AssertionError, match="fn_min_levels=3 needs 1..2"):
        _moco(levels=2, fn_min_levels=3)


def test_elimination_of_whole_queue_gives_zero_loss_and_full_masked_accuracy():
    # Seeded: whether a random queue entry outranks some positive depended on the suite's order.
    keras.utils.set_random_seed(0)
    moco = _compiled(_moco(num_examples=64, queue_size=64))
    moco.enqueue(tf.math.l2_normalize(tf.random.normal([64, 4]), 1), tf.range(64))
    moco.set_pseudo_labels([[3] * 64])
    history = moco.fit(_one_step_data(), epochs=1, verbose=0)
    assert history.history["loss"][0] == pytest.approx(0.0, abs=1e-6)
    # Only the positive is left once every queue entry is masked; `acc` still ranks it against
    # the whole queue, as in a MoCo run.
    assert history.history["acc_without_fn"][0] == pytest.approx(1.0)
    assert history.history["acc"][0] < 1.0
    assert history.history["masked"][0] == pytest.approx(64.0)


def test_train_step_remembers_each_key_at_its_dataset_index():
    moco = _compiled(_moco(num_examples=20, queue_size=8, remember_keys=True))
    index = tf.constant([17, 3, 9, 0, 12, 5, 19, 8], tf.int64)
    views = tf.random.uniform([2, 8, 16, 16, 3], seed=1)
    moco.fit(tf.data.Dataset.from_tensors((index, views[0], views[1])), epochs=1, verbose=0)
    table = moco.train_keys.numpy()
    # The rows of this batch hold the keys it enqueued; the other rows were never written.
    np.testing.assert_array_equal(table[index.numpy()], moco.queue_keys.numpy())
    np.testing.assert_allclose(np.linalg.norm(table[index.numpy()], axis=1), 1.0, rtol=1e-5)
    assert not table[np.setdiff1d(np.arange(20), index.numpy())].any()
    assert _moco().train_keys is None  # off by default: no [N, dim] table


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
    source = data.load_source("digits")
    with two_replicas.scope():
        moco = _compiled(_moco(num_examples=source.num_examples, queue_size=64, key_bn_splits=2,
                               remember_keys=True))
    labeller = pseudo_labels.PseudoLabelCallback(
        data.embedding_pipeline(source, 256, 16), clustering.AcceptanceSchedule(2, 1),
        clustering.KMeansSettings((10,), "sklearn"), seed=0, verbose=False)
    train = data.train_pipeline(source, 32, 16, seed=0, num_steps=6)
    history = moco.fit(train, epochs=2, steps_per_epoch=3, callbacks=[labeller], verbose=0)
    assert history.history["masked"][1] > 0
    stateful = (moco.encoder.variables + moco.key_encoder.variables
                + [moco.queue_keys, moco.queue_ids, moco.queue_ptr, moco.train_keys])
    for variable in stateful:
        replicas = [v.numpy() for v in variable.value.values]
        assert len(replicas) == 2
        np.testing.assert_allclose(replicas[0], replicas[1], rtol=1e-5, atol=1e-6,
                                   err_msg=variable.path)
    assert int(moco.queue_ptr.numpy()) == (6 * 32) % 64
    # Both replicas' halves of the last two batches are in the table, at their indices.
    table, ids = moco.train_keys.numpy(), moco.queue_ids.numpy()
    np.testing.assert_array_equal(table[ids], moco.queue_keys.numpy())


def test_grouped_batch_norm_equals_separate_forwards_per_group():
    """One forward with grouped BN = the split forwards it replaces: per-group statistics,
    moving statistics updated by the mean of the groups' statistics."""
    images = tf.random.uniform([8, 16, 16, 3], seed=3)
    grouped = model.build_encoder("small", 16, 0.25, embedding_dim=4, bn_groups=4)
    split = model.build_encoder("small", 16, 0.25, embedding_dim=4)
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
    encoders = [model.build_encoder("small", 16, 0.25, embedding_dim=4) for _ in range(2)]
    with pytest.raises(AssertionError, match="built with bn_groups=2"):
        model.MomentumContrast(encoders[0], encoders[1], 64, queue_size=8, key_bn_splits=2)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_decay_only_step_is_the_same_under_float16_loss_scaling(policy, monkeypatch):
    """With the contrastive gradient zeroed, one SGD step is w <- w (1 - lr wd) in float32 and
    under float16 loss scaling alike (decay added after the scaled gradient was 2^15 x weaker)."""
    monkeypatch.setattr(model.losses, "ifnd_loss",
                        lambda logits, mask, strategy: 0.0 * tf.reduce_sum(logits, axis=1))
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
        normalised = model.GroupedBatchNormalization(
            model.key_bn_groups(splits, 2), center=False, scale=False, epsilon=0.0)(images)
        probe = keras.Model(images, {"embedding": keras.layers.GlobalAveragePooling2D()(normalised)})
        encoders = [model.build_encoder("small", 16, 0.25, embedding_dim=4) for _ in range(2)]
        moco = model.MomentumContrast(encoders[0], probe, 64, queue_size=16, key_bn_splits=splits)
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
        np.testing.assert_allclose(copies[0], copies[1], rtol=1e-5, atol=1e-6, err_msg=variable.path)


@pytest.mark.parametrize("key_bn_splits, fn_detector", [(1, "clusters"), (2, "clusters"),
                                                        (2, "quantile")])
def test_per_replica_xla_steps_match_uncompiled_steps_on_two_replicas(two_replicas, key_bn_splits,
                                                                      fn_detector):
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
            groups = model.key_bn_groups(key_bn_splits, 2)
            encoders = [model.build_encoder("small", 16, 0.25, embedding_dim=4, sync_bn=False,
                                            bn_groups=g) for g in (None, groups)]
            moco = model.MomentumContrast(encoders[0], encoders[1], 48, queue_size=32,
                                          momentum=0.9, key_bn_splits=key_bn_splits,
                                          compile_per_replica=jit, fn_detector=fn_detector)
            moco.copy_query_to_key_encoder()
            _compiled(moco)
            if fn_detector == "quantile":
                moco.fn_fraction.assign(0.25)
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


@pytest.mark.parametrize("backbone, size", [("small", 16), ("resnet18_cifar", 16), ("resnet50", 32)])
def test_folded_encoder_matches_inference_and_follows_training(backbone, size):
    keras.utils.set_random_seed(0)
    encoder = model.build_encoder(backbone, size, 0.125, embedding_dim=8)
    images = tf.random.uniform([16, size, size, 3], seed=2)
    for layer in encoder.layers:  # BN statistics far from identity, as after training
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(tf.random.normal(layer.moving_mean.shape, seed=1) * 0.3)
            layer.moving_variance.assign(tf.random.uniform(layer.moving_variance.shape, 0.5, 2.0))
            layer.gamma.assign(tf.random.uniform(layer.gamma.shape, 0.5, 1.5))
    folded = model.FoldedEncoder(encoder)
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


@pytest.mark.parametrize("fraction, masked", [(0.0, 0.0), (0.5, 2.0), (1.0, 4.0)])
def test_quantile_detector_masks_that_fraction_of_the_filled_queue(fraction, masked):
    moco = _compiled(_moco(num_examples=8, queue_size=8, fn_detector="quantile"))
    moco.enqueue(tf.math.l2_normalize(tf.random.normal([4, 4]), 1), tf.range(4))  # 4 of 8 filled
    moco.fn_fraction.assign(fraction)
    history = moco.fit(_one_step_data(batch=4), epochs=1, verbose=0)
    assert history.history["masked"][0] == pytest.approx(masked)


def test_quantile_detector_masks_each_anchors_most_similar_valid_entries():
    moco = _compiled(_moco(num_examples=16, queue_size=8, fn_detector="quantile"))
    moco.enqueue(tf.math.l2_normalize(tf.random.normal([4, 4], seed=1), 1), tf.range(4))
    moco.fn_fraction.assign(0.5)  # 2 of the 4 filled slots per anchor
    _, view_q, _ = next(iter(_one_step_data(batch=6)))
    keys = tf.math.l2_normalize(tf.random.normal([6, 4], seed=2), 1)
    queue_ids = tf.convert_to_tensor(moco.queue_ids)
    *_, logits, fn_mask = moco._query_loss_and_gradients(
        view_q, keys, tf.convert_to_tensor(moco.queue_keys), None, queue_ids >= 0)
    similarities = logits.numpy()[:, 1:]
    expected = np.zeros_like(fn_mask.numpy())
    for row, top in zip(expected, np.argsort(-similarities[:, :4], axis=1)[:, :2]):
        row[top] = True  # the two most similar of the filled slots 0-3
    np.testing.assert_array_equal(fn_mask.numpy(), expected)


def test_quantile_detector_counts_masked_entries_of_the_anchors_true_class():
    moco = _moco(num_examples=8, queue_size=5, fn_detector="quantile", count_true_labels=True)
    moco.set_true_labels([0, 0, 0, 1, 1, 1, -1, 1])
    queue_ids = tf.constant([1, 2, 3, 6, -1])  # classes 0, 0, 1, unknown; an empty slot
    fn_mask = tf.constant([[True, False, True, True, False],  # anchor 0 (class 0): 1 right of 2
                           [False, False, True, False, True],  # anchor 5 (class 1): 1 of 1
                           [True] * 5])  # anchor 6, class unknown: nothing counts
    moco._count_true_false_negatives(tf.constant([0, 5, 6]), queue_ids, fn_mask)
    correct, true = (tracker.result().numpy() for tracker in moco.fn_trackers)
    assert correct == pytest.approx((1 + 1 + 0) / 3)  # per anchor
    assert true == pytest.approx((2 + 1 + 0) / 3)


def test_quantile_detector_without_labels_counts_nothing():
    moco = _moco(num_examples=8, queue_size=8, fn_detector="quantile")
    assert moco.true_labels is None and moco.fn_trackers == []
    assert [m.name for m in moco.metrics] == ["loss", "acc", "acc_without_fn", "masked",
                                              "key_spread"]


def test_quantile_detector_epochs_log_precision_and_recall():
    moco = _compiled(_moco(num_examples=8, queue_size=8, fn_detector="quantile",
                           count_true_labels=True))
    moco.enqueue(tf.math.l2_normalize(tf.random.normal([8, 4]), 1), tf.range(8))
    callback = pseudo_labels.PseudoLabelCallback(
        None, clustering.AcceptanceSchedule(2, 1), clustering.KMeansSettings((2,)), seed=0,
        true_labels=np.zeros(8, np.int64), verbose=False, quantile=0.5)
    history = moco.fit(_one_step_data().repeat(2), epochs=2, steps_per_epoch=1, verbose=0,
                       callbacks=[callback]).history
    assert history["fn_fraction"] == [0.0, 0.5]  # warm-up, then alpha 1 * 0.5
    assert history["masked"] == [0.0, 4.0]
    assert "fn_correct" not in history and "fn_true" not in history
    # Only the second epoch detects. One class: every masked entry is a true false negative,
    # 4 of the 8 are found.
    assert history["fn_precision"] == [pytest.approx(1.0)]
    assert history["fn_recall"] == [pytest.approx(0.5)]
