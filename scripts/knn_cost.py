"""Seconds of one kNN-monitor evaluation on Fashion-MNIST: train features, test features, kNN.

    python -m scripts.knn_cost runs/compare/moco/export/saved_model

The cost quoted in docs/design.md, "kNN monitor".
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import sys
import time

import tensorflow as tf

from ifnd_tf import evaluate, knn, linear_eval, sources


def main(saved_model: str) -> None:
    strategy = tf.distribute.get_strategy()
    train, test = (sources.load_source("fashion_mnist", split) for split in ("train", "test"))
    encoder = evaluate.load_encoder(saved_model)
    start = time.perf_counter()
    train_features = linear_eval.backbone_features(encoder, train, strategy, 1024, 28)
    print(f"train features {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    test_features = linear_eval.backbone_features(encoder, test, strategy, 1024, 28)
    print(f"test features {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    top1 = knn.knn_top1(train_features, train.labels, test_features, test.labels, 10)
    print(f"kNN top-1 {top1:.4f} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/fashion_mnist/export/saved_model")
