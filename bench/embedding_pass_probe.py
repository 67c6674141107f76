"""Seconds of the embedding pass alone (model on pipeline batches), by batch size and XLA.

    python -m bench.embedding_pass_probe

The probe behind docs/results.md, "What does the clustering pass cost": nothing in the pass
itself was worth 2x.
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import time

import tensorflow as tf

from ifnd_tf import data, encoders, sources


def main() -> None:
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    source = sources.load_source("fashion_mnist")
    encoder = encoders.build_encoder("small", 28, 0.5)
    for batch in (256, 1024, 4096):
        pipeline = data.embedding_pipeline(source, batch, 28)
        for jit in (False, True):
            embed = tf.function(lambda x: encoder(x, training=False)["embedding"],
                                jit_compile=jit, reduce_retracing=True)
            times = []
            for _ in range(3):
                start = time.perf_counter()
                for _, images in pipeline:
                    embed(images).numpy()
                times.append(time.perf_counter() - start)
            print(f"batch {batch} jit {jit}: {min(times[1:]):.2f}s", flush=True)


if __name__ == "__main__":
    main()
