"""Inference-mode encoder outputs over a whole dataset, placed by example index.

Used by the pseudo-label pass (pseudo_labels.py), the kNN monitor (monitors.py) and the linear
probe (linear_eval.py). `SharedPass` lets two of them use one pass of the same encoder.
"""
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from ifnd_tf import distribute, model


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
    The encoder runs with its BatchNorm folded into the convolutions (model.FoldedEncoder,
    re-folded at every call): the same outputs to float rounding, fewer and fused kernels.
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
            self.folded = model.FoldedEncoder(encoder)
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
