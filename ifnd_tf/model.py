"""Encoders and the momentum-contrast model whose train_step applies the IFND mask.

The encoder maps images in [0, 1] to {"features": backbone output, "embedding": L2-normalised
head output}. `MomentumContrast` holds the query encoder, its EMA copy (the key encoder), the
queue of keys with the dataset index of each, and the pseudo-label table that
`pseudo_labels.PseudoLabelCallback` fills through `set_pseudo_labels` / `clear_pseudo_labels`.
"""
from collections.abc import Callable

import keras
import tensorflow as tf

from ifnd_tf import losses

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="ifnd_tf")
class GroupedBatchNormalization(keras.layers.BatchNormalization):
    """The key encoder's BatchNorm: in training it normalises each of `groups` equal slices of
    the replica's batch with that slice's own statistics, never synchronised across replicas:
    shuffle-BN (each replica normalises its own slice of the shuffled keys, as MoCo's GPUs do)
    in ONE forward pass (one forward per group was the ResNet-18 step's largest avoidable cost on
    CPU, docs/design.md "Shuffle-BN"). The moving statistics take the mean of the group
    statistics; `MomentumContrast` then averages them over replicas (`average_local_batch_norm`),
    outside the forward pass, so the forward has no cross-replica op and compiles per replica
    under XLA (docs/design.md "XLA"). Inference is plain BN.
    """

    def __init__(self, groups: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.groups = groups

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)  # as Keras' BN: statistics in float32
        grouped = tf.reshape(x, tf.concat([[self.groups, -1], tf.shape(x)[1:]], 0))
        axes = list(range(1, len(x.shape)))  # all but the group and channel axes
        mean, variance = tf.nn.moments(grouped, axes, keepdims=True)
        self._update_moving_statistics(tf.reshape(tf.reduce_mean(mean, 0), [-1]),
                                       tf.reshape(tf.reduce_mean(variance, 0), [-1]))
        scale = tf.math.rsqrt(variance + self.epsilon)
        if self.scale:
            scale *= tf.cast(self.gamma, tf.float32)
        shift = -mean * scale
        if self.center:
            shift += tf.cast(self.beta, tf.float32)
        out = tf.reshape(grouped * scale + shift, tf.shape(x))
        return tf.cast(out, self.compute_dtype)

    def _update_moving_statistics(self, mean: tf.Tensor, variance: tf.Tensor) -> None:
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


def average_local_batch_norm(models: list[keras.Model]) -> None:
    """Set the moving statistics of every replica-local BatchNorm of `models` (shuffle-BN
    groups, --sync_bn=false) to their mean over replicas, in one all-reduce.

    Each replica updated them with its own batch statistics; every replica starts from the same
    value, so the mean equals an update with the replicas' mean statistics, and the copies stay
    identical (the inference passes run on all replicas). Call in replica context, after the
    forward passes.
    """
    replica = tf.distribute.get_replica_context()
    if replica is None or replica.num_replicas_in_sync == 1:
        return
    variables = [v for m in models for layer in m.layers
                 if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized
                 for v in (layer.moving_mean, layer.moving_variance)]
    if variables:
        # tf.identity places each read on this replica's device: a bare variable read carries
        # none, and MultiWorkerMirroredStrategy's all-reduce then fails ("destinations can not
        # be empty").
        means = replica.all_reduce(tf.distribute.ReduceOp.MEAN,
                                   [tf.identity(v.value) for v in variables])
        for variable, mean in zip(variables, means):
            variable.assign(mean)


def batch_norm_factory(sync_bn: bool = True,
                       groups: int | None = None) -> Callable[[str], keras.layers.Layer]:
    """The BatchNorm every conv of an encoder gets: synchronised across replicas (SyncBN), or
    replica-local: plain (sync_bn=False) or, given groups, grouped (key shuffle-BN). The local
    ones' moving statistics are averaged over replicas by `average_local_batch_norm`."""
    def make(name: str) -> keras.layers.Layer:
        if groups is not None:
            return GroupedBatchNormalization(groups, momentum=0.9, epsilon=1e-5, name=name)
        return keras.layers.BatchNormalization(synchronized=sync_bn, momentum=0.9, epsilon=1e-5,
                                               name=name)
    return make


def _conv_bn(x, filters: int, kernel: int, stride: int, norm, name: str, relu=True):
    x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                            kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = norm(f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _basic_block(x, filters: int, stride: int, norm, name: str):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, 1, stride, norm, f"{name}_proj", relu=False)
    x = _conv_bn(x, filters, 3, stride, norm, f"{name}_a")
    x = _conv_bn(x, filters, 3, 1, norm, f"{name}_b", relu=False)
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([x, shortcut]))


def _bottleneck_block(x, filters: int, stride: int, norm, name: str):
    shortcut = x
    if stride != 1 or x.shape[-1] != 4 * filters:
        shortcut = _conv_bn(x, 4 * filters, 1, stride, norm, f"{name}_proj", relu=False)
    x = _conv_bn(x, filters, 1, 1, norm, f"{name}_a")
    x = _conv_bn(x, filters, 3, stride, norm, f"{name}_b")
    x = _conv_bn(x, 4 * filters, 1, 1, norm, f"{name}_c", relu=False)
    return keras.layers.ReLU(name=f"{name}_out")(keras.layers.Add(name=f"{name}_add")([x, shortcut]))


def _resnet(x, block: Callable, blocks_per_stage: tuple, width: float, norm):
    for stage, num_blocks in enumerate(blocks_per_stage):
        filters = max(int(64 * width * 2**stage), 8)
        for b in range(num_blocks):
            stride = 2 if (stage > 0 and b == 0) else 1
            x = block(x, filters, stride, norm, f"stage{stage + 1}_block{b + 1}")
    return x


def small_convnet(x, width: float, norm):
    """Four conv-BN-ReLU layers: the fast backbone for CPU demos and tests."""
    for i, filters in enumerate((32, 64, 128, 256)):
        x = _conv_bn(x, max(int(filters * width), 8), 3, 1 if i == 0 else 2, norm, f"conv{i + 1}")
    return x


def resnet18_cifar(x, width: float, norm):
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool (small images: CIFAR, STL)."""
    x = _conv_bn(x, max(int(64 * width), 8), 3, 1, norm, "stem")
    return _resnet(x, _basic_block, (2, 2, 2, 2), width, norm)


def resnet50(x, width: float, norm):
    """ResNet-50 with the ImageNet 7x7 stride-2 stem and max-pool."""
    x = _conv_bn(x, max(int(64 * width), 8), 7, 2, norm, "stem")
    x = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
    return _resnet(x, _bottleneck_block, (3, 4, 6, 3), width, norm)


MIN_KEY_BN_GROUP = 8  # images per shuffle-BN group: fewer make BN statistics mostly noise


def key_bn_groups(key_bn_splits: int, num_replicas: int) -> int | None:
    """BatchNorm groups per replica of the key encoder: the global key batch is normalised in
    key_bn_splits groups, key_bn_splits / num_replicas on each replica (None: no shuffle-BN)."""
    if key_bn_splits == 1:
        return None
    assert key_bn_splits % num_replicas == 0, (
        f"key_bn_splits={key_bn_splits} must be a multiple of the {num_replicas} replicas")
    return key_bn_splits // num_replicas


BACKBONES = {"small": small_convnet, "resnet18_cifar": resnet18_cifar, "resnet50": resnet50}
# Total downsampling of each backbone: a smaller input leaves the last stages convolving
# padding (a 1x1 map from the middle of the network on), so it is refused.
BACKBONE_STRIDES = {"small": 8, "resnet18_cifar": 8, "resnet50": 32}


def build_encoder(backbone: str, image_size: int, width_multiplier: float = 1.0,
                  embedding_dim: int = 128, sync_bn: bool = True,
                  bn_groups: int | None = None) -> keras.Model:
    """Backbone + MoCo v2 head (Linear-ReLU-Linear), outputs {"features", "embedding"}.

    bn_groups builds a key encoder for shuffle-BN: its BatchNorm normalises that many slices of
    each replica's (shuffled) batch separately in training (`key_bn_groups`).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"--backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    images = keras.Input((image_size, image_size, 3), name="images")
    x = keras.layers.Normalization(mean=IMAGENET_MEAN, variance=[s**2 for s in IMAGENET_STD],
                                   name="normalize")(images)
    x = BACKBONES[backbone](x, width_multiplier, batch_norm_factory(sync_bn, bn_groups))
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    hidden = keras.layers.Dense(features.shape[-1], activation="relu", name="head_hidden")(features)
    projected = keras.layers.Dense(embedding_dim, name="head_out")(hidden)
    embedding = keras.layers.UnitNormalization(name="embedding", dtype="float32")(projected)
    return keras.Model(images, {"features": features, "embedding": embedding}, name="encoder")


class _Passthrough(keras.layers.Layer):
    """Stands where a BatchNorm was once it is folded into the convolution before it."""

    def call(self, inputs, training=None, mask=None):
        return inputs


def _without_batch_norm(layer: keras.layers.Layer) -> keras.layers.Layer:
    if isinstance(layer, keras.layers.BatchNormalization):
        return _Passthrough(name=layer.name)
    config = layer.get_config()
    if isinstance(layer, keras.layers.Conv2D):
        config["use_bias"] = True
    return layer.__class__.from_config(config)


class FoldedEncoder:
    """An inference-only copy of an encoder with each BatchNorm folded into its convolution.

    Inference BN is an affine map per channel, so conv -> BN equals one conv with scaled
    kernel and a bias; TF then runs conv + bias + ReLU as one fused kernel. The embedding passes
    (clustering, kNN monitor, probes) ran 1.19x faster on an idle 2-core AVX2 CPU
    (docs/results.md, "What do tcmalloc, oneDNN and folded BatchNorm give on CPU"); outputs
    agree to float rounding. `refresh()` re-folds the current weights of the source encoder
    (call it before each pass: training changes them).
    """

    def __init__(self, encoder: keras.Model):
        self.source = encoder
        self.model = keras.models.clone_model(encoder, clone_function=_without_batch_norm)
        # Our backbones name each conv-BN pair <name>_conv, <name>_bn (model._conv_bn).
        names = {layer.name for layer in encoder.layers}
        self._batch_norm_after = {
            layer.name: encoder.get_layer(layer.name[:-len("_conv")] + "_bn")
            for layer in encoder.layers if isinstance(layer, keras.layers.Conv2D)
            and layer.name.endswith("_conv") and layer.name[:-len("_conv")] + "_bn" in names}
        self.refresh()

    def refresh(self) -> None:
        for layer in self.model.layers:
            source = self.source.get_layer(layer.name)
            if isinstance(layer, keras.layers.Conv2D):
                bn = self._batch_norm_after.get(layer.name)
                if bn is None:  # a convolution with no BatchNorm of its own: copied as it is
                    layer.kernel.assign(source.kernel)
                    layer.bias.assign(source.bias if source.use_bias else tf.zeros_like(layer.bias))
                    continue
                scale = bn.gamma * tf.math.rsqrt(bn.moving_variance + bn.epsilon)
                layer.kernel.assign(source.kernel * scale)
                layer.bias.assign(bn.beta - bn.moving_mean * scale)
            elif layer.weights and not isinstance(layer, _Passthrough):
                for target, value in zip(layer.weights, source.weights):
                    target.assign(value)

    def __call__(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.model(images, training=False)


def _random_unit_rows(shape, dtype=None):
    return tf.math.l2_normalize(tf.random.normal(shape, dtype=dtype or "float32"), axis=1)


class MomentumContrast(keras.Model):
    """MoCo v2 with Incremental False Negative Detection.

    train_step: EMA-update the key encoder, embed both views, mask queue entries whose accepted
    pseudo-label matches the anchor's (fn_detector="clusters", the paper) or, with
    fn_detector="quantile", the anchor's `fn_fraction` most similar valid queue entries
    (losses.nearest_fraction_mask), take one SGD step on the query encoder, enqueue the keys
    with their dataset indices. With count_true_labels (diagnostics only: the loss never reads
    them; `set_true_labels` fills them), the quantile detector also counts how many masked
    entries share the anchor's true class.

    compile_per_replica: XLA-compile each replica's EMA update, key and query forward, loss and
    gradients (three compiled functions); the cross-replica ops between them (shuffle-BN
    gathers, the BatchNorm statistics mean, the gradient all-reduce and SGD apply, the queue
    update) stay outside. For several replicas; one replica compiles the whole step instead.
    """

    def __init__(self, encoder: keras.Model, key_encoder: keras.Model, num_examples: int,
                 queue_size: int = 4096, num_levels: int = 1, temperature: float = 0.2,
                 momentum: float = 0.999, fn_strategy: str = losses.ELIMINATION,
                 fn_min_levels: int = 1, key_bn_splits: int = 1, weight_decay: float = 1e-4,
                 seed: int = 0, remember_keys: bool = False, compile_per_replica: bool = False,
                 fn_detector: str = losses.CLUSTERS, count_true_labels: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.key_encoder = key_encoder
        self.temperature = temperature
        self.momentum = momentum
        self.fn_strategy = fn_strategy
        assert 1 <= fn_min_levels <= num_levels, (
            f"fn_min_levels={fn_min_levels} needs 1..{num_levels} hierarchy levels")
        self.fn_min_levels = fn_min_levels
        assert fn_detector in losses.FALSE_NEGATIVE_DETECTORS, fn_detector
        self.fn_detector = fn_detector
        self.key_bn_splits = key_bn_splits
        groups = {layer.groups for layer in key_encoder.layers
                  if isinstance(layer, GroupedBatchNormalization)}
        expected = key_bn_groups(key_bn_splits, tf.distribute.get_strategy().num_replicas_in_sync)
        assert groups == ({expected} if expected else set()), (
            f"key_bn_splits={key_bn_splits} needs a key encoder built with bn_groups={expected}, "
            f"got BatchNorm groups {sorted(groups) or None}")
        self.weight_decay = weight_decay
        self.seed = seed
        self.num_examples = num_examples
        dim = encoder.output["embedding"].shape[-1]
        first = "only_first_replica"  # every replica computes the same update
        self.queue_keys = self.add_weight(shape=(queue_size, dim), initializer=_random_unit_rows,
                                          trainable=False, aggregation=first, name="queue_keys")
        self.queue_ids = self.add_weight(shape=(queue_size,), initializer=keras.initializers.Constant(-1),
                                         dtype="int32", trainable=False, aggregation=first,
                                         name="queue_ids")
        self.queue_ptr = self.add_weight(shape=(), initializer="zeros", dtype="int32",
                                         trainable=False, aggregation=first, name="queue_ptr")
        self.pseudo_labels = self.add_weight(
            shape=(num_levels, num_examples), initializer=keras.initializers.Constant(-1),
            dtype="int32", trainable=False, aggregation=first, name="pseudo_labels")
        # Each example's latest training key, by dataset index (zero row = not seen yet): the
        # clustering pass can cluster these instead of embedding the whole set again.
        self.train_keys = self.add_weight(
            shape=(num_examples, dim), initializer="zeros", trainable=False, aggregation=first,
            name="train_keys") if remember_keys else None
        quantile = fn_detector == losses.QUANTILE
        # The quantile detector's state: the fraction of the queue it masks (set each epoch by
        # pseudo_labels.PseudoLabelCallback) and the true labels its diagnostics count against.
        self.fn_fraction = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                           aggregation=first, name="fn_fraction") if quantile else None
        self.true_labels = self.add_weight(
            shape=(num_examples,), initializer=keras.initializers.Constant(-1), dtype="int32",
            trainable=False, aggregation=first,
            name="true_labels") if quantile and count_true_labels else None
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="acc")
        # Under elimination the loss never sees the masked entries; top-1 among what it sees.
        self.accuracy_without_fn_tracker = keras.metrics.Mean(name="acc_without_fn")
        self.masked_tracker = keras.metrics.Mean(name="masked")
        self.spread_tracker = keras.metrics.Mean(name="key_spread")  # collapse watch
        # Quantile detector, per anchor: masked entries of its true class; queue entries of it.
        self.fn_trackers = [keras.metrics.Mean(name="fn_correct"),
                            keras.metrics.Mean(name="fn_true")] if self.true_labels is not None else []
        # The per-replica computation, XLA-compiled on request (docs/design.md "XLA"): it holds
        # no cross-replica op, which MirroredStrategy cannot run inside a compiled function.
        self.compiles_per_replica = compile_per_replica
        per_replica = (lambda f: tf.function(f, jit_compile=True)) if compile_per_replica else (
            lambda f: f)
        self._ema_update = per_replica(self.update_key_encoder)
        self._key_forward = per_replica(self._key_embeddings)
        self._query_step = per_replica(self._query_loss_and_gradients)
        self.built = True  # both encoders are built functional models; no symbolic build needed

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker, self.accuracy_without_fn_tracker,
                self.masked_tracker, self.spread_tracker, *self.fn_trackers]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skip Keras' symbolic build: encoders, optimizer and metrics are built already.

        Keras (3.15, TF trainer) would pull one batch, average it across replicas and restart
        the input pipeline; under MultiWorkerMirroredStrategy that average fails on the int64
        index tensors ("Attempt to convert a value (PerReplica...) to a Tensor").
        """

    def call(self, images, training=False):
        return self.encoder(images, training=training)["embedding"]

    def copy_query_to_key_encoder(self) -> None:
        """Start the key encoder as an exact copy of the query encoder (MoCo init)."""
        self.key_encoder.set_weights(self.encoder.get_weights())

    def update_key_encoder(self) -> None:
        """key <- m * key + (1 - m) * query, trainable weights only (BN statistics are the key's own)."""
        m = self.momentum
        for key_var, query_var in zip(self.key_encoder.trainable_variables,
                                      self.encoder.trainable_variables):
            key_var.assign(m * key_var + (1.0 - m) * tf.cast(query_var, key_var.dtype))

    def momentum_keys(self, images: tf.Tensor, step: tf.Tensor | int = 0) -> tf.Tensor:
        """Key embeddings of this replica's images, BN in training mode, no gradient.

        With key_bn_splits > 1 (shuffle-BN, as MoCo's batch_shuffle_ddp): the global key batch
        is gathered and permuted, each replica embeds its slice of the permutation with local
        BN in key_bn_splits / replicas groups, and the keys are gathered and un-permuted. A
        query and its key thus never share BN statistics: no BN shortcut. The permutation is a
        stateless function of (seed, step), the same on every replica, so a resumed run
        shuffles as an uninterrupted one.
        """
        if self.key_bn_splits == 1:
            return tf.stop_gradient(self._key_forward(images))
        replica = tf.distribute.get_replica_context()
        several = replica.num_replicas_in_sync > 1
        # tf.identity places the input on this replica's device: an all_gather of the input
        # tensor itself failed under MultiWorkerMirroredStrategy ("destinations can not be
        # empty"; the iterator's tensors carry no device there).
        everything = replica.all_gather(tf.identity(images), axis=0) if several else images
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
        order = tf.argsort(tf.random.stateless_uniform([tf.shape(everything)[0]], seed))
        local = tf.shape(images)[0]
        first = tf.cast(replica.replica_id_in_sync_group, tf.int32) * local
        shuffled = self._key_forward(tf.gather(everything, order[first:first + local]))
        if several:
            shuffled = replica.all_gather(shuffled, axis=0)
        keys = tf.gather(shuffled, tf.math.invert_permutation(order))[first:first + local]
        return tf.stop_gradient(keys)

    def _key_embeddings(self, images: tf.Tensor) -> tf.Tensor:
        """The key encoder's float32 embeddings, BN in training mode (replica-local)."""
        return tf.cast(self.key_encoder(images, training=True)["embedding"], tf.float32)

    def _query_loss_and_gradients(self, view_q: tf.Tensor, keys: tf.Tensor,
                                  queue_keys: tf.Tensor, fn_mask: tf.Tensor, queue_valid: tf.Tensor):
        """(gradients of the query encoder's weights, this replica's mean loss, logits, the
        false-negative mask used: `fn_mask`, or (None given) the quantile detector's from these
        logits)."""
        variables = self.encoder.trainable_variables
        with tf.GradientTape() as tape:
            query = tf.cast(self.encoder(view_q, training=True)["embedding"], tf.float32)
            logits = losses.contrastive_logits(query, keys, queue_keys, self.temperature)
            if self.fn_detector == losses.QUANTILE:
                fn_mask = losses.nearest_fraction_mask(tf.stop_gradient(logits[:, 1:]),
                                                       queue_valid, self.fn_fraction)
            loss = tf.reduce_mean(losses.ifnd_loss(logits, fn_mask, self.fn_strategy))
            total = loss + losses.weight_decay_loss(variables, self.weight_decay)
            # Gradients are summed over replicas: scale so the step matches one big batch.
            scaled = self.optimizer.scale_loss(
                total / self.distribute_strategy.num_replicas_in_sync)
        return tape.gradient(scaled, variables), loss, logits, fn_mask

    def set_true_labels(self, labels) -> None:
        """The true class of every example (-1 = unknown), for the quantile detector's
        precision / recall only: the loss never reads it."""
        assert self.true_labels is not None, "built without count_true_labels"
        self.true_labels.assign(tf.convert_to_tensor(labels, tf.int32))

    def set_pseudo_labels(self, labels) -> None:
        """Replace the table [levels, num_examples] (-1 = no accepted label) the loss masks with."""
        labels = tf.convert_to_tensor(labels, tf.int32)
        if labels.shape != self.pseudo_labels.shape:
            raise ValueError(f"pseudo-labels of shape {labels.shape}, the table is "
                             f"{self.pseudo_labels.shape}")
        self.pseudo_labels.assign(labels)

    def clear_pseudo_labels(self) -> None:
        """No accepted labels: nothing is masked (warm-up, plain MoCo)."""
        self.pseudo_labels.assign(tf.fill(self.pseudo_labels.shape, -1))

    def queue_labels(self) -> tf.Tensor:
        """Current pseudo-labels [levels, queue] of the queue entries (-1 for empty slots)."""
        return self._queue_lookup(self.pseudo_labels, tf.convert_to_tensor(self.queue_ids))

    @staticmethod
    def _queue_lookup(table: tf.Tensor, queue_ids: tf.Tensor) -> tf.Tensor:
        """Each queue entry's value in a per-example table [..., num_examples] (-1 for empty
        slots)."""
        looked_up = tf.gather(table, tf.maximum(queue_ids, 0), axis=-1)
        return tf.where(queue_ids >= 0, looked_up, -1)

    def enqueue(self, keys: tf.Tensor, ids: tf.Tensor) -> None:
        """Replace the oldest entries (FIFO, wrapping) with the global batch of keys.

        The slice never wraps inside one batch, so the queue size must be a multiple of the
        global batch (config checks --queue_size; this guards every other caller).
        """
        queue_size, batch = self.queue_ids.shape[0], keys.shape[0]
        if batch is not None and queue_size % batch:
            raise ValueError(
                f"queue size {queue_size} is not a multiple of the global batch {batch}")
        if batch is None:
            tf.debugging.assert_equal(queue_size % tf.shape(keys)[0], 0,
                                      message="queue size is not a multiple of the global batch")
        ptr = tf.convert_to_tensor(self.queue_ptr)
        self.queue_keys.assign(keras.ops.slice_update(self.queue_keys, [ptr, 0], keys))
        self.queue_ids.assign(keras.ops.slice_update(self.queue_ids, [ptr], tf.cast(ids, tf.int32)))
        self.queue_ptr.assign((ptr + tf.shape(keys)[0]) % self.queue_ids.shape[0])

    def remember(self, keys: tf.Tensor, ids: tf.Tensor) -> None:
        """Write the global batch of keys into `train_keys` at their dataset indices."""
        # A row scatter: assigning a whole updated copy would move the [N, dim] table every step.
        self.train_keys.value.scatter_update(tf.IndexedSlices(keys, tf.cast(ids, tf.int32)))

    def _count_true_false_negatives(self, index: tf.Tensor, queue_ids: tf.Tensor,
                                    fn_mask: tf.Tensor) -> None:
        """Per anchor: masked entries of its true class, valid entries of its true class (the
        epoch means give precision = fn_correct / masked and recall = fn_correct / fn_true)."""
        table = tf.convert_to_tensor(self.true_labels)
        same = losses.false_negative_mask(tf.gather(table, index)[None],  # same known class
                                          self._queue_lookup(table, queue_ids)[None])
        correct, true = self.fn_trackers
        correct.update_state(tf.reduce_sum(tf.cast(tf.logical_and(same, fn_mask), tf.float32), 1))
        true.update_state(tf.reduce_sum(tf.cast(same, tf.float32), 1))

    def train_step(self, data):
        index, view_q, view_k = data
        replica = tf.distribute.get_replica_context()
        self._ema_update()
        keys = self.momentum_keys(view_k, self.optimizer.iterations)
        queue_ids = tf.convert_to_tensor(self.queue_ids)
        if self.fn_detector == losses.CLUSTERS:
            fn_mask = losses.false_negative_mask(tf.gather(self.pseudo_labels, index, axis=1),
                                                 self.queue_labels(), self.fn_min_levels)
        else:
            fn_mask = None  # the quantile detector masks from the step's own similarities
        grads, loss, logits, fn_mask = self._query_step(
            view_q, keys, tf.convert_to_tensor(self.queue_keys), fn_mask, queue_ids >= 0)
        if self.fn_trackers:
            self._count_true_false_negatives(index, queue_ids, fn_mask)
        average_local_batch_norm([self.encoder, self.key_encoder])
        self.optimizer.apply_gradients(zip(grads, self.encoder.trainable_variables))
        # int32: an int64 all_gather fails under MultiWorkerMirroredStrategy.
        ids = replica.all_gather(tf.cast(index, tf.int32), axis=0)
        all_keys = replica.all_gather(keys, axis=0)
        self.enqueue(all_keys, ids)
        if self.train_keys is not None:
            self.remember(all_keys, ids)

        self.loss_tracker.update_state(loss)
        # acc: unmasked, comparable with a MoCo run's; acc_without_fn: detected FNs removed.
        self.accuracy_tracker.update_state(losses.contrastive_accuracy(logits))
        self.accuracy_without_fn_tracker.update_state(losses.contrastive_accuracy(
            losses.masked_logits_for_elimination(logits, fn_mask)))
        self.masked_tracker.update_state(tf.reduce_mean(tf.reduce_sum(tf.cast(fn_mask, tf.float32), 1)))
        spread = losses.key_spread(all_keys)
        self.spread_tracker.update_state(spread)
        results = {m.name: m.result() for m in self.metrics}
        # Batch callbacks (collapse.StopOnCollapse) see this step's spread; the epoch logs are
        # the trackers' means (Keras takes them when the keys match the metric names).
        results["key_spread"] = spread
        if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3.15 averages results across workers with reduce(..., axis=0), which needs
            # an axis to reduce; a length-1 axis gives back the scalar.
            results = {name: value[None] for name, value in results.items()}
        return results
