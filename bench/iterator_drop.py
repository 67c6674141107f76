"""Seconds spent dropping an input iterator.

    python -m bench.iterator_drop {on,off} {distributed,plain}   # the embedding pass's
    python -m bench.iterator_drop training [--rounds=4]          # the training input's

The first is the measurement behind docs/design.md, "Embedding pass": why `DatasetEmbedder`
iterates the dataset plainly and `data.embedding_pipeline` turns autotuning off. The second
drops the demo's training input after ~30 s of use (one batch per 0.2 s, as a step would take
them), alternating `builder.train_input` (one untuned pipeline per CPU replica) with TF's
default for the same pipeline (autotuned, through a MultiDeviceIterator): the wait behind
docs/design.md, "Epoch boundary".
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import sys
import time

import tensorflow as tf

from bench import common
from ifnd_tf import builder, data, encoders, preemption, sources


def main(autotune: bool, distributed: bool) -> list[float]:
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    source = sources.load_source("fashion_mnist")
    options = tf.data.Options()
    options.autotune.enabled = autotune
    pipeline = data.embedding_pipeline(source, 1024, 28).with_options(options)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        encoder = encoders.build_encoder("small", 28, 0.5)
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


def training_drop(rounds: int, batches: int = 150, pause: float = 0.2) -> dict[str, list[float]]:
    """Seconds to drop the training input's iterator after `batches` batches, per variant."""
    cfg = common.model_config("small", 28, 256, 0.5)
    source = sources.load_source("fashion_mnist")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    phase = preemption.Phase(first_epoch=0, end_epoch=1, steps_per_epoch=batches, start_step=0)

    def tf_default():
        return strategy.distribute_datasets_from_function(
            lambda context: data.train_pipeline(source, cfg.schedule.batch_size, cfg.data.image_size, cfg.run.seed,
                                                num_steps=batches, input_context=context))

    variants = {"ours": lambda: builder.train_input(cfg, source, strategy, phase),
                "tf_default": tf_default}
    drops = {name: [] for name in variants}
    for r in range(rounds):
        for name in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            iterator = iter(variants[name]())
            for _ in range(batches):  # exactly the stream's batches, as fit takes them
                next(iterator)
                time.sleep(pause)
            start = time.perf_counter()
            del iterator
            drops[name].append(round(time.perf_counter() - start, 2))
    return drops


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "training":
        parser = argparse.ArgumentParser(prog="python -m bench.iterator_drop training")
        parser.add_argument("--rounds", type=int, default=4)
        args = parser.parse_args(sys.argv[2:])
        print(f"training input, drop seconds after 150 batches: {training_drop(args.rounds)}")
        sys.exit(0)
    if len(sys.argv) != 3 or sys.argv[1] not in ("on", "off") or \
            sys.argv[2] not in ("distributed", "plain"):
        sys.exit("usage: python -m bench.iterator_drop {on,off} {distributed,plain}")
    seconds = main(sys.argv[1] == "on", sys.argv[2] == "distributed")
    print(f"autotune {sys.argv[1]}, {sys.argv[2]}: drop seconds {seconds}")
