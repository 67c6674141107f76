"""Inference-mode encoder outputs over a whole dataset, placed by example index.

Used by the pseudo-label pass (pseudo_labels.py), the kNN monitor (monitors.py) and the linear
probe (linear_eval.py). `SharedPass` lets two of them use one pass of the same encoder.
"""
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from ifnd_tf import distribute


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
    (docs/results.md); outputs agree to float rounding. `refresh()` re-folds the current
    weights of the source encoder (call it before each pass: training changes them).
    """

    def __init__(self, encoder: keras.Model):
        self.source = encoder
        self.model = keras.models.clone_model(encoder, clone_function=_without_batch_norm)
        # Our backbones name each conv-BN pair <name>_conv, <name>_bn (encoders._conv_bn).
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


def inference_encoder(encoder: keras.Model):
    """A callable images -> outputs in inference mode: BatchNorm folded into the convolutions
    when every BatchNorm of `encoder` follows its own convolution the way ours are named, else
    `encoder` itself (any other Keras encoder: nested models, other names)."""
    names = {layer.name for layer in encoder.layers}
    foldable = not any(hasattr(layer, "layers") for layer in encoder.layers) and all(
        layer.name.endswith("_bn") and layer.name[:-len("_bn")] + "_conv" in names
        for layer in encoder.layers if isinstance(layer, keras.layers.BatchNormalization))
    return FoldedEncoder(encoder) if foldable else _PlainEncoder(encoder)


class _PlainEncoder:
    """An encoder run in inference mode as it is (same interface as FoldedEncoder)."""

    def __init__(self, encoder: keras.Model):
        self.model = encoder

    def refresh(self) -> None:
        """Nothing to re-fold: the encoder's own weights are read."""

    def __call__(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.model(images, training=False)


class DatasetEmbedder:
    """Inference-mode encoder outputs for every (index, image) example, placed by index.

    Each batch is cut into one strided share per local replica (only the shares move to the
    replicas' devices) and gathered back with its indices from every replica of every worker,
    so the result does not depend on how many replicas ran. With several workers, give each
    its own part of the data (`data.embedding_pipeline(input_context=
    distribute.input_context(strategy))`): every worker then embeds 1/W of it and ends with the
    whole table. The parts must have the same batch sizes on every worker (the gathers are
    collectives), as embedding_pipeline's are. The dataset is iterated plainly, not as a
    distributed dataset, whose iterator took up to 7 s to drop after a standalone pass
    (docs/design.md, "Embedding pass").
    The encoder runs with its BatchNorm folded into the convolutions (FoldedEncoder,
    re-folded at every call; other encoders run as they are): the same outputs to float rounding, fewer and fused kernels.
    `output` names one encoder output (the call returns its table) or a tuple of them (the
    call returns a dict of tables from one forward pass).
    """

    def __init__(self, encoder: keras.Model, strategy: tf.distribute.Strategy,
                 dataset: tf.data.Dataset, num_examples: int,
                 output: str | tuple[str, ...] = "embedding"):
        self.strategy = strategy
        self.dataset = dataset
        self.num_examples = num_examples
        self.single = isinstance(output, str)
        outputs = (output,) if self.single else tuple(output)
        self.dims = {name: encoder.output[name].shape[-1] for name in outputs}
        self.worker = distribute.input_context(strategy)
        self.embedded_here = 0  # examples this worker embedded in the last pass
        with strategy.scope():
            self.folded = inference_encoder(encoder)
        folded = self.folded

        # Shares change size with the last, smaller batch: one more trace, not one per epoch.
        @tf.function(reduce_retracing=True)
        def embed_batch(index, images):
            def on_replica(index, images):  # int32: int64 gathers fail across workers
                values = folded(images)
                return tf.cast(index, tf.int32), tuple(values[name] for name in outputs)
            index, values = strategy.run(on_replica, args=(index, images))
            return (strategy.gather(index, axis=0),
                    tuple(strategy.gather(v, axis=0) for v in values))

        self._embed_batch = embed_batch

    def _replica_shares(self, index: tf.Tensor, images: tf.Tensor):
        """Per-replica (index, images): every L-th example of this worker's batch from the
        local replica's id (L local replicas; worker w's are numbered w·L ... w·L + L - 1)."""
        local = self.strategy.num_replicas_in_sync // self.worker.num_input_pipelines

        def share(context):
            first = context.replica_id_in_sync_group % local
            with tf.device(images.device):
                return index[first::local], images[first::local]
        return self.strategy.experimental_distribute_values_from_function(share)

    def __call__(self) -> np.ndarray | dict[str, np.ndarray]:
        num_examples = self.num_examples
        self.folded.refresh()  # training moved the weights since the last pass
        result = {name: np.zeros((num_examples, dim), np.float32)
                  for name, dim in self.dims.items()}
        seen = np.zeros(num_examples, bool)
        self.embedded_here = 0
        for index, images in self.dataset:
            self.embedded_here += int(index.shape[0])
            index, values = self._embed_batch(*self._replica_shares(index, images))
            placed = index.numpy()
            for table, batch in zip(result.values(), values):
                table[placed] = batch.numpy()
            seen[placed] = True
        if not seen.all():
            raise RuntimeError(f"embedding pass covered {seen.sum()} of {num_examples} examples")
        if self.worker.num_input_pipelines > 1:
            print(f"embedding pass: worker {self.worker.input_pipeline_id + 1} of "
                  f"{self.worker.num_input_pipelines} embedded {self.embedded_here} of "
                  f"{num_examples} examples, gathered the rest", flush=True)
        return next(iter(result.values())) if self.single else result


class SharedPass:
    """One pass of a DatasetEmbedder whose `keep` tables wait for a later reader at the same
    training step.

    The kNN monitor runs the pass at an epoch's end (`__call__`: every table, e.g. the query
    backbone's features and embeddings); the query-view clustering at the next epoch's start
    `take`s the embeddings if the model has not trained since (`step()`, the optimizer's
    iterations, unchanged), else gets None and makes its own pass (docs/design.md, "Shared
    pass"). Only the kept tables outlive the call, and `take` hands them over: the large
    backbone features are never held between callbacks.
    """

    def __init__(self, embedder: DatasetEmbedder, step: Callable[[], int],
                 keep: tuple[str, ...] = ("embedding",)):
        assert not embedder.single, "a shared pass returns named tables"
        self.embedder = embedder
        self.step = step
        self.keep = keep
        self._step: int | None = None
        self._kept: dict[str, np.ndarray] = {}

    def __call__(self) -> dict[str, np.ndarray]:
        tables = self.embedder()
        self._kept = {name: tables[name] for name in self.keep}
        self._step = int(self.step())
        return tables

    def take(self, name: str) -> np.ndarray | None:
        """The kept table of this step's pass (once), or None if there is none or it is stale."""
        fresh = self._step is not None and self._step == int(self.step())
        table = self._kept.pop(name, None) if fresh else None
        if not fresh:
            self._kept = {}  # stale: free it
        return table
