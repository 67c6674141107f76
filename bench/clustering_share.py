"""Share of the per-epoch clustering pass (embedding + every k-means level) in an epoch.

The pass is what `pseudo_labels.PseudoLabelCallback` runs at each epoch start, for both
--cluster_features: center_view = the key encoder embeds the whole training set
(`DatasetEmbedder`); train_keys = the keys training wrote into the model's table are read
back. Then `hierarchical_pseudo_labels` fits and assigns every level. The epoch's training
time is steps_per_epoch x the median time of a `fit` step on the real input pipeline, for the
model of each setting (train_keys also writes the table every step), measured in one process.

    python -m bench.clustering_share                             # Fashion-MNIST, demo model
    python -m bench.clustering_share --dataset=synthetic_cifar    # 50,000 random 32x32x3 images
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf
import threadpoolctl

from bench import common
from ifnd_tf import clustering, config, data, diagnostics, sources
from ifnd_tf.embedding import DatasetEmbedder

FEATURES = (config.CENTER_VIEW, config.TRAIN_KEYS)

# dataset -> (backbone, image size, width, batch, key_bn_splits): the demo and the CIFAR config.
SETUPS = {"fashion_mnist": ("small", 28, 0.5, 256, 4),
          "synthetic_cifar": ("resnet18_cifar", 32, 1.0, 256, 8)}
KS = (10, 20, 50)


def synthetic_source(num_examples: int, image_size: int, seed: int = 0) -> sources.Source:
    """Random uint8 RGB images in memory, 10 random labels: CIFAR's size without the download."""
    rng = np.random.default_rng(seed)
    pixels = tf.constant(rng.integers(0, 256, (num_examples, image_size, image_size, 3), np.uint8))
    return sources.Source("synthetic", lambda i: tf.gather(pixels, i), num_examples,
                       rng.integers(0, 10, num_examples), 10, in_memory=True)


class _StepClock(keras.callbacks.Callback):
    """Time at the end of every training step."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())


def fit_runner(moco, source: sources.Source, batch: int, image_size: int, steps: int,
               warmup_steps: int = 2):
    """A function running `steps` training steps through `fit` on the real augmentation
    pipeline, and the list of each call's steady seconds per step (after `warmup_steps`: the
    new pipeline's start-up is a once-per-run cost, not a per-epoch one)."""
    step_seconds: list[float] = []

    def fit(num_steps: int = steps) -> None:
        stream = data.train_pipeline(source, batch, image_size, seed=0, num_steps=num_steps)
        clock = _StepClock()
        moco.fit(stream, epochs=1, steps_per_epoch=num_steps, verbose=0, shuffle=False,
                 callbacks=[clock])
        times = clock.times[warmup_steps - 1:]
        step_seconds.append((times[-1] - times[0]) / (len(times) - 1))

    fit(warmup_steps + 2)  # trace
    step_seconds.clear()
    return fit, step_seconds


def embed_runner(moco, source: sources.Source, embed_batch: int, image_size: int, subset: int,
                 strategy):
    """The key-encoder pass over the whole set (over `subset` examples when > 0, to extrapolate).

    Returns the timed function, the fraction of the set it covers, and N embeddings for k-means
    (with a subset: its embeddings resampled to N rows with noise).
    """
    part = source if not subset else synthetic_source(subset, image_size, seed=1)
    embedder = DatasetEmbedder(moco.key_encoder, strategy,
                                         data.embedding_pipeline(part, embed_batch, image_size),
                                         part.num_examples)
    embeddings = embedder()  # traces
    if subset:
        rng = np.random.default_rng(0)
        rows = embeddings[rng.integers(0, subset, source.num_examples)]
        embeddings = rows + 0.05 * rng.normal(size=rows.shape).astype(np.float32)
    return embedder, part.num_examples / source.num_examples, embeddings


def kmeans_breakdown(embeddings: np.ndarray, ks, backend: str,
                     threads: int | None) -> dict[str, float]:
    """Seconds of the shared seeding and assignment per level (the rest is the backend's)."""
    result = {}
    rng = np.random.default_rng(0)
    with threadpoolctl.threadpool_limits(threads):
        for k in ks:
            sample = embeddings[rng.choice(len(embeddings), min(len(embeddings), 256 * k), False)]
            start = time.perf_counter()
            centroids = clustering.kmeans_plus_plus_seeds(sample, k, rng)
            result[f"seeding_k{k}"] = time.perf_counter() - start
            start = time.perf_counter()
            clustering.assign_with_confidence(embeddings, centroids)
            result[f"assign_k{k}"] = time.perf_counter() - start
    return result


def hierarchy_seconds(embeddings: np.ndarray, backends, thread_caps, rounds: int) -> dict:
    """Median seconds of the whole hierarchy per (backend, thread cap), alternated."""
    def variant(backend, threads):
        return lambda: clustering.hierarchical_pseudo_labels(embeddings, KS, 1.0, backend, 0,
                                                             threads=threads)

    seconds = common.alternate({(b, t): variant(b, t) for b in backends for t in thread_caps},
                               rounds)
    return {key: statistics.median(s) for key, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", choices=sorted(SETUPS))
    parser.add_argument("--backends", default=",".join(clustering.BACKENDS))
    parser.add_argument("--embed_batch", type=int, default=1024)
    parser.add_argument("--embed_subset", type=int, default=None,
                        help="embed this many examples and extrapolate (default: all for "
                             "fashion_mnist, 4096 for synthetic_cifar)")
    parser.add_argument("--steps", type=int, default=None, help="fit steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kmeans_threads", default="default,1",
                        help="thread caps of the k-means libraries to compare")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    common.set_threads(args.threads)
    backbone, image_size, width, batch, splits = SETUPS[args.dataset]
    cifar = args.dataset == "synthetic_cifar"
    subset = args.embed_subset if args.embed_subset is not None else (4096 if cifar else 0)
    steps = args.steps or (5 if cifar else 60)
    source = synthetic_source(50_000, image_size) if cifar else sources.load_source(args.dataset)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    models = {features: common.build_moco(
        common.model_config(backbone, image_size, batch, width, splits, cluster_features=features),
        False, strategy, source.num_examples) for features in FEATURES}
    for moco in models.values():
        common.fill_pseudo_labels(moco, KS)
    steps_per_epoch = source.num_examples // batch

    runners = {f: fit_runner(moco, source, batch, image_size, steps) for f, moco in models.items()}
    timed_parts = {f"fit {f}": fit for f, (fit, _) in runners.items()}
    embed, fraction, embeddings = embed_runner(models[config.CENTER_VIEW], source,
                                               args.embed_batch, image_size, subset, strategy)
    table = models[config.TRAIN_KEYS].detector.train_keys
    timed_parts |= {"embed": embed, "read train_keys": table.numpy}
    # Training and the embedding pass alternate, so load from other work hits both alike.
    timed = common.alternate(timed_parts, args.rounds)
    step_s = {f: step_seconds for f, (_, step_seconds) in runners.items()}
    epoch_s = {f: statistics.median(s) * steps_per_epoch for f, s in step_s.items()}
    features_s = {config.CENTER_VIEW: statistics.median(timed["embed"]) / fraction,
                  config.TRAIN_KEYS: statistics.median(timed["read train_keys"])}
    labels, _ = clustering.hierarchical_pseudo_labels(embeddings, KS, 1.0, "faiss", 0)
    start = time.perf_counter()
    diagnostics.label_quality(labels, source.labels, list(KS))
    diagnostics_s = time.perf_counter() - start
    caps = [None if c == "default" else int(c) for c in args.kmeans_threads.split(",")]
    kmeans_s = hierarchy_seconds(embeddings, args.backends.split(","), caps, args.rounds)
    share = {(f, b, t): (features_s[f] + s) / epoch_s[f]
             for f in FEATURES for (b, t), s in kmeans_s.items()}
    rows = [[f, backend, threads or "default", epoch_s[f], features_s[f], s, features_s[f] + s,
             f"{100 * share[f, backend, threads]:.1f} %"]
            for f in FEATURES for (backend, threads), s in kmeans_s.items()]
    extrapolated = f", embedding extrapolated from {subset}" if subset else ""
    common.print_table(
        f"Clustering pass vs one training epoch, {args.dataset} ({source.num_examples} images, "
        f"{backbone}, batch {batch}, {steps_per_epoch} steps{extrapolated}); median "
        f"of {args.rounds} alternating rounds",
        ["features", "backend", "k-means threads", "epoch train s", "features s",
         "k-means s (k=10,20,50)", "pass s", "share"], rows)
    parts = {str(c or "default"): kmeans_breakdown(embeddings, KS, "faiss", c) for c in caps}
    common.print_table("Shared k-means parts inside the hierarchy (seconds)",
                       ["part", *(f"threads={c}" for c in parts)],
                       [[n, *(p[n] for p in parts.values())] for n in next(iter(parts.values()))])
    print(f"\nFN diagnostics (not part of the pass, run at the same epoch start): "
          f"{diagnostics_s:.2f} s")
    common.write_json(args.name or f"clustering_share_{args.dataset}", {
        "dataset": args.dataset, "backbone": backbone, "batch": batch,
        "steps_per_epoch": steps_per_epoch, "fit_step_seconds": step_s, "epoch_seconds": epoch_s,
        "features_seconds": features_s, "round_seconds": timed, "embed_subset": subset,
        "embed_batch": args.embed_batch,
        "kmeans_seconds": {f"{b} threads={t or 'default'}": v for (b, t), v in kmeans_s.items()},
        "shared_parts": parts, "diagnostics_seconds": diagnostics_s,
        "share": {f"{f} {b} threads={t or 'default'}": v for (f, b, t), v in share.items()}})


if __name__ == "__main__":
    main()
