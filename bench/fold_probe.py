"""Inference pass cost: the encoder with BatchNorm vs embedding.FoldedEncoder (BN folded into the
convolutions), each with and without XLA, alternating in one process.

    python -m bench.fold_probe                       # demo model: small, 28 px, width 0.5
    python -m bench.fold_probe --backbone=resnet18_cifar --image_size=32 --width=1.0
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import statistics

import keras
import numpy as np
import tensorflow as tf

from bench import common
from ifnd_tf import embedding, encoders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--image_size", type=int, default=28)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--batches", type=int, default=5, help="batches per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="fold_probe")
    args = parser.parse_args()
    common.set_threads(args.threads)
    keras.utils.set_random_seed(0)
    encoder = encoders.build_encoder(args.backbone, args.image_size, args.width, 128, bn_groups=4)
    images = tf.random.uniform([args.batch, args.image_size, args.image_size, 3])
    encoder(images[:256], training=True)  # BN statistics away from their initial values
    folded = embedding.FoldedEncoder(encoder)
    variants = {
        "BatchNorm": tf.function(lambda x: encoder(x, training=False)["embedding"]),
        "folded": tf.function(lambda x: folded(x)["embedding"]),
        "BatchNorm + XLA": tf.function(lambda x: encoder(x, training=False)["embedding"],
                                       jit_compile=True),
        "folded + XLA": tf.function(lambda x: folded(x)["embedding"], jit_compile=True)}
    reference = variants["BatchNorm"](images).numpy()
    error = {name: float(np.abs(f(images).numpy() - reference).max())
             for name, f in variants.items()}

    def timed(f):
        return lambda: [f(images).numpy() for _ in range(args.batches)]

    seconds = common.alternate({n: timed(f) for n, f in variants.items()}, args.rounds)
    images_per_s = {n: args.batch * args.batches / statistics.median(s)
                    for n, s in seconds.items()}
    speedup = {n: common.median_ratio(seconds["BatchNorm"], s) for n, s in seconds.items()}
    common.print_table(
        f"Inference, {args.backbone} {args.image_size} px width {args.width}, batch {args.batch}, "
        f"median of {args.rounds} alternating rounds", ["variant", "images/s",
                                                         "speed-up (paired)", "max |diff|"],
        [[n, images_per_s[n], speedup[n], error[n]] for n in variants])
    common.write_json(args.name, {"args": vars(args), "seconds": seconds,
                                  "images_per_s": images_per_s, "speedup": speedup,
                                  "max_abs_diff": error})


if __name__ == "__main__":
    main()
