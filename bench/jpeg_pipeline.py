"""The two-view MoCo v2 JPEG input pipeline at 224 px: ifnd_tf vs torchvision, examples/s per core.

Ours is `data.train_pipeline` on a `folder:` source; theirs is torchvision's ImageFolder +
DataLoader with MoCo v2's transforms (bench/torchvision_pipeline.py). Both read the same
generated JPEGs (bench/imagenet_like.py, random sizes), on the same cores (--cores: tf.data's
thread pool and TF's op threads = DataLoader workers; with fewer cores than the machine has,
the process and its workers are pinned to the first --cores CPUs). An example is one file made
into two augmented views, on both sides. Every round each side runs a fresh iterator over
--batches batches, timed to its last batch, alternating A B, B A, ...; one untimed round of
each warms up first (XLA compiles ours, workers start theirs). The clock starts for ours after
the pipeline and its iterator are built (tf.data does no work before the first batch is asked
for; training builds them once per run, not per epoch), for theirs at `iter(loader)` (its
persistent workers start on it). Both include their first batch's latency.

The files are read once before timing, so both read them from the page cache (a cold disk or
network file system slows both by the same reads). Generated content is smooth colour blobs
with pixel noise (--noise, default 48), so that files are near ImageNet's size (~90 kB at
400x350; ImageNet's 140 GB / 1.28M is ~110 kB) and decoding costs what dense files cost (PIL
here: 16 ms per megapixel, 8 for the smooth, 7x smaller files of --noise=0).

    pip install -r bench/requirements.txt (torchvision; see bench/README.md)
    python -m bench.jpeg_pipeline                 # 3,000 noisy JPEGs of 180-500 px, 2 cores
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

# torchvision before TensorFlow (bench/torchvision_pipeline.py)
from bench import torchvision_pipeline  # noqa: I001  (import order matters)

import argparse
import itertools
import os
import statistics
import time

import psutil  # installed with tensorflow-datasets
import tensorflow as tf

from bench import common, imagenet_like
from ifnd_tf import data, sources


def cpu_seconds() -> float:
    """User + system CPU of this process and its children (the DataLoader workers) so far."""
    total = 0.0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def timed_pass(views) -> dict:
    """Seconds and CPU-seconds to the last batch, seconds to the first, shape of a view;
    views() (called on the clock) gives each batch's first view."""
    cpu, start, first = cpu_seconds(), time.perf_counter(), None
    for view_q in views():
        first = first or time.perf_counter() - start
    return {"seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu,
            "first_batch_seconds": first, "view_shape": tuple(view_q.shape[1:])}


def ours_runner(root: str, batch: int, image_size: int, batches: int, cores: int):
    """Round r pulls batches r*batches ... of the (seed 0) stream, with a fresh iterator."""
    source = sources.load_source(f"folder:{root}", verify_images=False)
    options = tf.data.Options()
    options.threading.private_threadpool_size = cores
    rounds = itertools.count()

    def run() -> dict:
        stream = data.train_pipeline(source, batch, image_size, seed=0,
                                     start_step=next(rounds) * batches, num_steps=batches)
        iterator = iter(stream.with_options(options))  # no work until the first batch is asked
        return timed_pass(lambda: (view_q for _, view_q, _ in iterator))

    return source.num_examples, run


def theirs_runner(split_dir: str, batch: int, image_size: int, batches: int, cores: int):
    loader = torchvision_pipeline.loader(split_dir, batch, image_size, cores, batch * batches)

    def run() -> dict:
        return timed_pass(lambda: (view_q for (view_q, _), _ in loader))  # iter(loader) timed

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2,
                        help="tf.data / TF threads and DataLoader workers; pinned if < CPUs")
    parser.add_argument("--num_images", type=int, default=3000)
    parser.add_argument("--num_classes", type=int, default=30)
    parser.add_argument("--min_size", type=int, default=imagenet_like.SIZE_RANGE[0])
    parser.add_argument("--max_size", type=int, default=imagenet_like.SIZE_RANGE[1])
    parser.add_argument("--noise", type=float, default=48.0,
                        help="pixel noise std of the generated JPEGs: 48 ~ ImageNet file sizes")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=16, help="batches per round and side")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--root", default="/tmp/ifnd_jpeg_pipeline_bench")
    parser.add_argument("--name", default="jpeg_pipeline")
    args = parser.parse_args()
    if args.batch * args.batches > args.num_images:
        parser.error(f"--batch x --batches = {args.batch * args.batches} examples per round; "
                     f"--num_images={args.num_images} is fewer")
    if args.cores < os.cpu_count():
        os.sched_setaffinity(0, range(args.cores))  # DataLoader workers inherit it
    common.set_threads(args.cores)
    torchvision_pipeline.torch.set_num_threads(args.cores)

    split_dir = imagenet_like.write_train_folder(args.root, args.num_images, args.num_classes,
                                                 (args.min_size, args.max_size), args.noise)
    file_bytes = 0
    for folder, _, names in os.walk(split_dir):  # into the page cache, for both alike
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                file_bytes += len(f.read())
    num_examples, ours = ours_runner(args.root, args.batch, args.image_size, args.batches,
                                     args.cores)
    theirs = theirs_runner(split_dir, args.batch, args.image_size, args.batches, args.cores)
    print(f"{num_examples} JPEGs ({file_bytes / num_examples / 1e3:.0f} kB each) in {split_dir}; "
          f"{args.cores} cores, {args.batch * args.batches} examples per round", flush=True)

    variants = {"ifnd_tf": ours, "torchvision": theirs}
    size = args.image_size
    view_shape = {"ifnd_tf": (size, size, 3), "torchvision": (3, size, size)}
    warmup = {name: run() for name, run in variants.items()}
    for name, result in warmup.items():  # the same work on both sides
        assert result["view_shape"] == view_shape[name], (name, result["view_shape"])
    rounds = {name: [] for name in variants}
    common.alternate({name: lambda name=name: rounds[name].append(variants[name]())
                      for name in variants}, args.rounds)  # its own timing includes set-up
    seconds, cpu, first_batch = ({n: [r[key] for r in rounds[n]] for n in variants}
                                 for key in ("seconds", "cpu_seconds", "first_batch_seconds"))
    examples = args.batch * args.batches
    ratios = [b / a for a, b in zip(seconds["ifnd_tf"], seconds["torchvision"])]
    rate = {n: examples / statistics.median(s) for n, s in seconds.items()}
    per_cpu_second = {n: examples / statistics.median(c) for n, c in cpu.items()}
    rows = [[n, rate[n], rate[n] / args.cores, per_cpu_second[n],
             statistics.median(first_batch[n])] for n in variants]
    common.print_table(
        f"MoCo v2 two-view JPEG pipeline, {args.image_size} px, batch {args.batch}, "
        f"{args.cores} cores, median of {args.rounds} alternating rounds of {examples} examples",
        ["pipeline", "examples/s", "examples/s per core", "examples per CPU-s",
         "first batch s"], rows)
    print(f"\nours / torchvision, per round: {' '.join(f'{r:.3f}' for r in ratios)}; "
          f"median {statistics.median(ratios):.3f}")
    common.write_json(args.name, {
        "cores": args.cores, "batch": args.batch, "batches_per_round": args.batches,
        "examples_per_round": examples, "image_size": args.image_size,
        "num_images": num_examples, "size_range": [args.min_size, args.max_size],
        "pixel_noise": args.noise,
        "mean_file_bytes": file_bytes / num_examples, "seconds": seconds, "cpu_seconds": cpu,
        "first_batch_seconds": first_batch,
        "warmup_seconds": {n: r["seconds"] for n, r in warmup.items()},
        "examples_per_s": rate, "examples_per_s_per_core": {
            n: r / args.cores for n, r in rate.items()},
        "examples_per_cpu_second": per_cpu_second, "ratio_per_round": ratios,
        "ratio_median": statistics.median(ratios), **torchvision_pipeline.VERSIONS})


if __name__ == "__main__":
    main()
