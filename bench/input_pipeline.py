"""Input pipeline vs training step: examples/s of the two-view augmentation alone, and of the
train step on ready batches, alternated in one process.

An "image" here is one training example, i.e. one pair of augmented views (what one step
consumes per batch element), on both sides of the ratio.

    python -m bench.input_pipeline                  # Fashion-MNIST + synthetic CIFAR-size set
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import statistics

import tensorflow as tf

from bench import common
from bench.clustering_share import SETUPS, synthetic_source
from ifnd_tf import data, sources


def pipeline_runner(source: sources.Source, batch: int, image_size: int, batches: int, rounds: int):
    """A function pulling `batches` two-view batches from `data.train_pipeline`."""
    stream = data.train_pipeline(source, batch, image_size, seed=0,
                                 num_steps=batches * (rounds + 1))
    iterator = iter(stream)

    def run() -> float:
        for _ in range(batches):
            *_, view_k = next(iterator)
        return float(view_k[0, 0, 0, 0])

    return run


def measure(dataset: str, batches: int, steps: int, rounds: int, strategy) -> dict:
    backbone, image_size, width, batch, splits = SETUPS[dataset]
    source = (synthetic_source(50_000, image_size) if dataset == "synthetic_cifar"
              else sources.load_source(dataset))
    moco = common.build_moco(common.model_config(backbone, image_size, batch, width, splits),
                             False, strategy, source.num_examples)
    common.fill_pseudo_labels(moco, (10, 20, 50))
    step = common.step_runner(moco, common.random_batch(batch, image_size, source.num_examples),
                              strategy)
    step(2)
    pipeline = pipeline_runner(source, batch, image_size, batches, rounds)
    pipeline()  # fills the prefetch buffers: the steady state is what training sees
    seconds = common.alternate({"pipeline": pipeline, "train step": lambda: step(steps)}, rounds)
    rate = {"pipeline": batch * batches / statistics.median(seconds["pipeline"]),
            "train step": batch * steps / statistics.median(seconds["train step"])}
    return {"dataset": dataset, "backbone": backbone, "batch": batch, "seconds": seconds,
            "images_per_s": rate, "ratio": rate["pipeline"] / rate["train step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="fashion_mnist,synthetic_cifar")
    parser.add_argument("--batches", default="fashion_mnist:20,synthetic_cifar:20")
    parser.add_argument("--steps", default="fashion_mnist:8,synthetic_cifar:1")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="input_pipeline")
    args = parser.parse_args()
    common.set_threads(args.threads)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    batches = {k: int(v) for k, v in (i.split(":") for i in args.batches.split(","))}
    steps = {k: int(v) for k, v in (i.split(":") for i in args.steps.split(","))}
    results = [measure(d, batches[d], steps[d], args.rounds, strategy)
               for d in args.datasets.split(",")]
    common.print_table(
        f"Augmentation pipeline alone vs train step, examples/s, median of {args.rounds} "
        "alternating rounds",
        ["dataset", "backbone", "batch", "pipeline ex/s", "train step ex/s", "pipeline / step"],
        [[r["dataset"], r["backbone"], r["batch"], r["images_per_s"]["pipeline"],
          r["images_per_s"]["train step"], r["ratio"]] for r in results])
    common.write_json(args.name, {"results": results, "threads": args.threads})


if __name__ == "__main__":
    main()
