"""Encoders: images in [0, 1] -> {"features": backbone output, "embedding": unit head output}.

Our backbones (small, resnet18_cifar, resnet50), any `keras.applications` net by name, or any
Keras model a user brings (`with_head` adds the MoCo v2 head); the BatchNorm variants of the
key encoder (shuffle-BN in one pass) and of several replicas; the key encoder as a copy of the
query encoder with its BatchNorm swapped (`key_encoder_for`).
"""
import inspect
from collections.abc import Callable

import keras
import tensorflow as tf

from ifnd_tf.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _update_moving_statistics(layer: keras.layers.BatchNormalization, mean: tf.Tensor,
                              variance: tf.Tensor) -> None:
    """Keras' moving-average update of a BN layer's statistics, for the layers that compute
    their own batch statistics."""
    m = layer.momentum
    layer.moving_mean.assign(layer.moving_mean * m + mean * (1.0 - m))
    layer.moving_variance.assign(layer.moving_variance * m + variance * (1.0 - m))


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
        _update_moving_statistics(self, tf.reshape(tf.reduce_mean(mean, 0), [-1]),
                                  tf.reshape(tf.reduce_mean(variance, 0), [-1]))
        scale = tf.math.rsqrt(variance + self.epsilon)
        if self.scale:
            scale *= tf.cast(self.gamma, tf.float32)
        shift = -mean * scale
        if self.center:
            shift += tf.cast(self.beta, tf.float32)
        out = tf.reshape(grouped * scale + shift, tf.shape(x))
        return tf.cast(out, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "groups": self.groups}


@keras.saving.register_keras_serializable(package="ifnd_tf")
class LocalBatchNormalization(keras.layers.BatchNormalization):
    """Replica-local BatchNorm (--sync_bn=false) that trains with TF's fused kernel
    (FusedBatchNormV3: one pass for the statistics and the output, one fused gradient), where
    Keras 3's BN runs moments and the normalisation as separate ops: the ResNet-50 query
    encoder's forward + backward took 0.7x the time at 224 px on CPU (docs/design.md, "The model
    and its step"). Moving statistics as Keras': the biased batch variance, the same momentum.
    Inference, masks and other ranks are Keras' BN."""

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or len(inputs.shape) != 4 \
                or self.axis not in (-1, 3):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        out, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, is_training=True)
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        variance = variance * (count - 1.0) / count  # the kernel's is Bessel-corrected
        _update_moving_statistics(self, mean, variance)
        return tf.cast(out, self.compute_dtype)


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of `model`, those of nested models included (a keras.applications backbone
    is one layer of its encoder), in a fixed order."""
    result = []
    for layer in model.layers:
        result.append(layer)
        if hasattr(layer, "layers"):
            result += all_layers(layer)
    return result


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
    variables = [v for m in models for layer in all_layers(m)
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
        if not sync_bn:
            return LocalBatchNormalization(momentum=0.9, epsilon=1e-5, name=name)
        return keras.layers.BatchNormalization(synchronized=True, momentum=0.9, epsilon=1e-5,
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


KERAS_APPLICATION_PREFIX = "keras.applications."
KERAS_APPLICATION_STRIDE = 32  # every keras.applications net downsamples 32x


def check_backbone_name(name: str) -> None:
    """One line naming --backbone unless it is ours or a keras.applications constructor."""
    if name in BACKBONES:
        return
    if name.startswith(KERAS_APPLICATION_PREFIX):
        attr = name[len(KERAS_APPLICATION_PREFIX):]
        if callable(getattr(keras.applications, attr, None)) and attr[:1].isupper():
            return
        raise ConfigError(f"--backbone={name}: keras.applications has no {attr!r} (e.g. "
                          f"{KERAS_APPLICATION_PREFIX}ResNet50, {KERAS_APPLICATION_PREFIX}"
                          "MobileNetV3Small)")
    raise ConfigError(f"--backbone must be one of {sorted(BACKBONES)} or "
                      f"{KERAS_APPLICATION_PREFIX}<Name>, got {name!r}")


def keras_application(name: str, image_size: int) -> keras.Model:
    """A keras.applications backbone, untrained (weights=None), without its classifier,
    average-pooled, fed images in [0, 1] normalised with the ImageNet mean and std (its own
    preprocessing, where it has one, is off: one convention for every backbone)."""
    check_backbone_name(name)
    constructor = getattr(keras.applications, name[len(KERAS_APPLICATION_PREFIX):])
    options = {"include_preprocessing": False} if "include_preprocessing" in \
        inspect.signature(constructor).parameters else {}
    net = constructor(input_shape=(image_size, image_size, 3), weights=None, include_top=False,
                      pooling="avg", **options)
    images = keras.Input((image_size, image_size, 3), name="images")
    return keras.Model(images, net(_normalize(images)), name=net.name)


def _normalize(images):
    return keras.layers.Normalization(mean=IMAGENET_MEAN, variance=[s**2 for s in IMAGENET_STD],
                                      name="normalize")(images)


def with_head(backbone: keras.Model, embedding_dim: int = 128) -> keras.Model:
    """Any Keras model mapping images to features -> an encoder with the MoCo v2 head.

    `backbone` must be functional or sequential (the key encoder is its clone) and output a
    feature vector [batch, d], a feature map [batch, h, w, d] (average-pooled here) or a dict
    holding one of these under "features" (or as its only entry). The head is
    Linear(d)-ReLU-Linear(embedding_dim), its output L2-normalised in float32.
    """
    if not isinstance(backbone, keras.Model):
        raise ConfigError(f"encoder: expected a keras.Model, got {type(backbone).__name__}")
    images = keras.Input(backbone.input_shape[1:], name="images")
    features = backbone(images)
    if isinstance(features, dict):
        if "features" not in features and len(features) != 1:
            raise ConfigError(f"encoder: a dict output needs a 'features' entry (or exactly "
                              f"one), got {sorted(features)}")
        features = features.get("features", next(iter(features.values())))
    if len(features.shape) == 4:
        features = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    if len(features.shape) != 2:
        raise ConfigError(f"encoder: its features must be [batch, d] or [batch, h, w, d], got "
                          f"{tuple(features.shape)}")
    features = keras.layers.Identity(name="features")(features)
    return _add_head(images, features, embedding_dim)


def _add_head(images, features, embedding_dim: int) -> keras.Model:
    hidden = keras.layers.Dense(features.shape[-1], activation="relu", name="head_hidden")(features)
    projected = keras.layers.Dense(embedding_dim, name="head_out")(hidden)
    embedding = keras.layers.UnitNormalization(name="embedding", dtype="float32")(projected)
    return keras.Model(images, {"features": features, "embedding": embedding}, name="encoder")


def is_encoder(model: keras.Model) -> bool:
    """Outputs {"features", "embedding"} already (ours, or `with_head`'s)."""
    outputs = getattr(model, "output", None)
    return isinstance(outputs, dict) and {"features", "embedding"} <= set(outputs)


def build_encoder(backbone: str, image_size: int, width_multiplier: float = 1.0,
                  embedding_dim: int = 128, sync_bn: bool = True,
                  bn_groups: int | None = None) -> keras.Model:
    """A named backbone + MoCo v2 head (Linear-ReLU-Linear), outputs {"features", "embedding"}.

    bn_groups builds a key encoder for shuffle-BN: its BatchNorm normalises that many slices of
    each replica's (shuffled) batch separately in training (`key_bn_groups`).
    keras.applications backbones keep their own (replica-local) BatchNorm: width_multiplier and
    sync_bn are ours only; their key encoders come from `key_encoder_for`.
    """
    if backbone.startswith(KERAS_APPLICATION_PREFIX):
        return with_head(keras_application(backbone, image_size), embedding_dim)
    check_backbone_name(backbone)
    images = keras.Input((image_size, image_size, 3), name="images")
    x = BACKBONES[backbone](_normalize(images), width_multiplier,
                           batch_norm_factory(sync_bn, bn_groups))
    features = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return _add_head(images, features, embedding_dim)


def key_encoder_for(encoder: keras.Model, bn_groups: int | None = None) -> keras.Model:
    """The key encoder: a copy of `encoder`'s architecture (weights are copied by the model),
    each BatchNormalization a GroupedBatchNormalization of `bn_groups` groups for shuffle-BN
    (None: BatchNorm layers cloned as they are)."""
    def clone(layer):
        if bn_groups is not None and isinstance(layer, keras.layers.BatchNormalization):
            config = {k: v for k, v in layer.get_config().items() if k != "synchronized"}
            return GroupedBatchNormalization(bn_groups, **config)
        return layer.__class__.from_config(layer.get_config())
    try:
        return keras.models.clone_model(encoder, clone_function=clone, recursive=True)
    except (ValueError, TypeError, NotImplementedError) as e:
        raise ConfigError(
            f"encoder: cannot copy {type(encoder).__name__} {encoder.name!r} for the key encoder "
            f"({str(e).splitlines()[0] if str(e) else type(e).__name__}): use a functional or "
            "sequential keras.Model, or pass key_encoder= with the same architecture") from e
