"""A false-negative rule of your own, plugged into a whole run (resume, logs, export).

    python -m examples.custom_detector --model_dir=/tmp/custom_detector   (from the repo root)

`SimilarAbove` calls a queue entry a false negative of an anchor when their cosine similarity
is above a threshold that falls from 1 (nothing detected) to `lowest` as the acceptance rate
alpha grows. A detector declares only its own state (`build_state`), what it does at an epoch
start (`refresh`) and its mask inside the train step (`mask`); its variables are checkpointed
with the model, so a resumed run continues with the same threshold.
"""
import argparse

import tensorflow as tf

from ifnd_tf import FalseNegativeDetector, RunConfig, pretrain


class SimilarAbove(FalseNegativeDetector):
    def __init__(self, lowest: float = 0.8, **kwargs):
        super().__init__(**kwargs)
        self.lowest = lowest

    def build_state(self, num_examples, embedding_dim):
        super().build_state(num_examples, embedding_dim)
        self.threshold = self.add_weight(shape=(), initializer="ones", trainable=False,
                                         aggregation="only_first_replica", name="threshold")

    def refresh(self, epoch, alpha, inputs):
        self.threshold.assign(1.0 - alpha * (1.0 - self.lowest))
        return {"threshold": float(self.threshold.numpy())}, {}  # joins the epoch logs

    def mask(self, anchor_ids, queue_ids, cosines):
        return tf.logical_and(cosines > self.threshold, queue_ids[None, :] >= 0)

    def get_config(self):
        return {**super().get_config(), "lowest": self.lowest}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", default="/tmp/custom_detector")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    config = RunConfig().replace(
        dataset="digits", image_size=16, width_multiplier=0.25, embedding_dim=32,
        epochs=args.epochs, steps_per_epoch=8, batch_size=64, queue_size=512, key_bn_splits=2,
        warmup_epochs=1, moco_momentum=0.99, model_dir=args.model_dir)
    result = pretrain(config, detector=SimilarAbove(lowest=0.8))
    print(f"exported to {result.saved_model}")
