"""Linear-probe top-1 on digits of smoke.cfg's encoder at random initialisation, seeds 0-2.

    python -m scripts.random_init_probe

The baseline of docs/results.md, "Does the pre-trained backbone beat a random one" (and of
tests/test_linear_eval.py).
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import keras
import tensorflow as tf

from ifnd_tf import encoders, linear_eval, sources


def main() -> None:
    train, test = sources.load_source("digits", "train"), sources.load_source("digits", "test")
    for seed in range(3):
        keras.utils.set_random_seed(seed)
        encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=32)
        result = linear_eval.probe(encoder, train, test, tf.distribute.get_strategy(), 100, 256,
                                   0.1, "cosine", 16, 512, 0)
        print(seed, result["top1"], flush=True)


if __name__ == "__main__":
    main()
