"""Seconds spent dropping the embedding pass's iterator: autotuning on / off, plain / distributed.

    python -m bench.iterator_drop {on,off} {distributed,plain}

The measurement behind bench/README.md, "5. Fixes" (item 2): why `DatasetEmbedder` iterates
the dataset plainly and `data.embedding_pipeline` turns autotuning off.
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import sys
import time

import tensorflow as tf

from ifnd_tf import data, model


def main(autotune: bool, distributed: bool) -> list[float]:
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    source = data.load_source("fashion_mnist")
    options = tf.data.Options()
    options.autotune.enabled = autotune
    pipeline = data.embedding_pipeline(source, 1024, 28).with_options(options)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        encoder = model.build_encoder("small", 28, 0.5)
    batches = strategy.experimental_distribute_dataset(pipeline) if distributed else pipeline
    step = tf.function(
        lambda x: strategy.run(lambda y: encoder(y, training=False)["embedding"], (x,)))
    drops = []
    for _ in range(6):
        iterator = iter(batches)
        for _, images in iterator:
            step(images)
        start = time.perf_counter()
        del iterator
        drops.append(round(time.perf_counter() - start, 2))
    return drops


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("on", "off") or \
            sys.argv[2] not in ("distributed", "plain"):
        sys.exit("usage: python -m bench.iterator_drop {on,off} {distributed,plain}")
    seconds = main(sys.argv[1] == "on", sys.argv[2] == "distributed")
    print(f"autotune {sys.argv[1]}, {sys.argv[2]}: drop seconds {seconds}")
