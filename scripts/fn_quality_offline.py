"""FN pair precision / recall of an exported Fashion-MNIST encoder for other k lists and alphas.

    python -m scripts.fn_quality_offline runs/compare2/ifnd

The table of docs/results.md, "Why the gain is small here" (item 2). The exported encoder is
the query encoder; training clusters the key encoder's embedding, close to it at momentum 0.99.
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import sys

import tensorflow as tf

from ifnd_tf import clustering, data, diagnostics, evaluate, sources
from ifnd_tf.embedding import DatasetEmbedder

K_LISTS = ([10], [20], [50], [100], [10, 20, 50], [50, 100, 200])
ALPHAS = (0.2, 0.5, 1.0)


def main(run_dir: str) -> None:
    source = sources.load_source("fashion_mnist", "train")
    encoder = evaluate.load_encoder(f"{run_dir}/export/saved_model")
    embeddings = DatasetEmbedder(encoder, tf.distribute.get_strategy(),
                                 data.embedding_pipeline(source, 1024, 28), source.num_examples)()
    for ks in K_LISTS:
        for alpha in ALPHAS:
            labels, _ = clustering.hierarchical_pseudo_labels(embeddings, ks, alpha, "faiss", 0)
            print(ks, alpha, diagnostics.label_quality(labels, source.labels, ks), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
