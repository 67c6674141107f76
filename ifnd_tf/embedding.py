"""Inference-mode encoder outputs over a whole dataset, placed by example index.

Used by the pseudo-label pass (pseudo_labels.py), the kNN monitor (monitors.py) and the linear
probe (linear_eval.py).
"""
import keras
import numpy as np
import tensorflow as tf


class DatasetEmbedder:
    """Inference-mode encoder outputs for every (index, image) example, placed by index.

    Each batch is cut into one strided share per replica where it lies (only the shares move to
    the replicas' devices) and gathered back with its indices, so the result does not depend on
    how many replicas ran. The dataset is iterated plainly, not as a distributed dataset, whose
    iterator took up to 7 s to drop after a standalone pass (docs/design.md, "Embedding pass").
    """

    def __init__(self, encoder: keras.Model, strategy: tf.distribute.Strategy,
                 dataset: tf.data.Dataset, num_examples: int, output: str = "embedding"):
        self.strategy = strategy
        self.dataset = dataset
        self.num_examples = num_examples
        self.dim = encoder.output[output].shape[-1]

        # Shares change size with the last, smaller batch: one more trace, not one per epoch.
        @tf.function(reduce_retracing=True)
        def embed_batch(index, images):
            def on_replica(index, images):  # int32: int64 gathers fail across workers
                return tf.cast(index, tf.int32), encoder(images, training=False)[output]
            index, values = strategy.run(on_replica, args=(index, images))
            return strategy.gather(index, axis=0), strategy.gather(values, axis=0)

        self._embed_batch = embed_batch

    def _replica_shares(self, index: tf.Tensor, images: tf.Tensor):
        """Per-replica (index, images): every num_replicas-th example from the replica's id."""
        def share(context):
            first, step = context.replica_id_in_sync_group, context.num_replicas_in_sync
            with tf.device(images.device):
                return index[first::step], images[first::step]
        return self.strategy.experimental_distribute_values_from_function(share)

    def __call__(self) -> np.ndarray:
        num_examples = self.num_examples
        result = np.zeros((num_examples, self.dim), np.float32)
        seen = np.zeros(num_examples, bool)
        for index, images in self.dataset:
            index, values = self._embed_batch(*self._replica_shares(index, images))
            result[index.numpy()] = values.numpy()
            seen[index.numpy()] = True
        if not seen.all():
            raise RuntimeError(f"embedding pass covered {seen.sum()} of {num_examples} examples")
        return result
