"""Share of the per-epoch clustering pass (embedding + every k-means level) in an epoch.

The pass is what `callbacks.PseudoLabelCallback` runs at each epoch start: the key encoder
embeds the whole training set (`DatasetEmbedder`), then `hierarchical_pseudo_labels` fits and
assigns every level. The epoch's training time is steps_per_epoch x the median time of a
`fit` step on the real input pipeline, measured in the same process.

    python -m bench.clustering_share                             # Fashion-MNIST, demo model
    python -m bench.clustering_share --dataset=synthetic_cifar    # 50,000 random 32x32x3 images
"""
import argparse
import statistics
import time

import numpy as np
import tensorflow as tf
import threadpoolctl

from bench import common
from ifnd_tf import callbacks, clustering, data, diagnostics

# dataset -> (backbone, image size, width, batch, key_bn_splits): the demo and the CIFAR config.
SETUPS = {"fashion_mnist": ("small", 28, 0.5, 256, 4),
          "synthetic_cifar": ("resnet18_cifar", 32, 1.0, 256, 8)}
KS = (10, 20, 50)


def synthetic_source(num_examples: int, image_size: int, seed: int = 0) -> data.Source:
    """Random uint8 RGB images in memory, 10 random labels: CIFAR's size without the download."""
    rng = np.random.default_rng(seed)
    pixels = tf.constant(rng.integers(0, 256, (num_examples, image_size, image_size, 3), np.uint8))
    return data.Source("synthetic", lambda i: tf.gather(pixels, i), num_examples,
                       rng.integers(0, 10, num_examples), 10, in_memory=True)


def fit_runner(moco, source: data.Source, batch: int, image_size: int, steps: int):
    """A function timing `steps` training steps through `fit` on the real augmentation pipeline."""
    def fit(num_steps: int = steps) -> float:
        stream = data.train_pipeline(source, batch, image_size, seed=0, num_steps=num_steps)
        moco.fit(stream, epochs=1, steps_per_epoch=num_steps, verbose=0, shuffle=False)
        return 0.0

    fit(2)  # trace
    return fit


def embed_runner(moco, source: data.Source, embed_batch: int, image_size: int, subset: int,
                 strategy):
    """The key-encoder pass over the whole set (over `subset` examples when > 0, to extrapolate).

    Returns the timed function, the fraction of the set it covers, and N embeddings for k-means
    (with a subset: its embeddings resampled to N rows with noise).
    """
    part = source if not subset else synthetic_source(subset, image_size, seed=1)
    embedder = callbacks.DatasetEmbedder(moco.key_encoder, strategy,
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
    steps = args.steps or (2 if cifar else 20)
    source = synthetic_source(50_000, image_size) if cifar else data.load_source(args.dataset)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    flags = common.model_flags(backbone, image_size, batch, width, splits)
    moco = common.build_moco(flags, False, strategy, source.num_examples)
    common.fill_pseudo_labels(moco, KS)
    steps_per_epoch = source.num_examples // batch

    fit = fit_runner(moco, source, batch, image_size, steps)
    embed, fraction, embeddings = embed_runner(moco, source, args.embed_batch, image_size,
                                               subset, strategy)
    # Training and the embedding pass alternate, so load from other work hits both alike.
    timed = common.alternate({"fit": fit, "embed": embed}, args.rounds)
    step_s = [t / steps for t in timed["fit"]]
    epoch_s = statistics.median(step_s) * steps_per_epoch
    embed_s = statistics.median(timed["embed"]) / fraction
    labels, _ = clustering.hierarchical_pseudo_labels(embeddings, KS, 1.0, "faiss", 0)
    start = time.perf_counter()
    diagnostics.label_quality(labels, source.labels, list(KS))
    diagnostics_s = time.perf_counter() - start
    caps = [None if c == "default" else int(c) for c in args.kmeans_threads.split(",")]
    kmeans_s = hierarchy_seconds(embeddings, args.backends.split(","), caps, args.rounds)
    rows = [[backend, threads or "default", epoch_s, embed_s, s, embed_s + s,
             f"{100 * (embed_s + s) / epoch_s:.1f} %"]
            for (backend, threads), s in kmeans_s.items()]
    extrapolated = f", embedding extrapolated from {subset}" if subset else ""
    common.print_table(
        f"Clustering pass vs one training epoch, {args.dataset} ({source.num_examples} images, "
        f"{backbone}, batch {batch}, {steps_per_epoch} steps{extrapolated}); k-means: median "
        f"of {args.rounds} alternating rounds",
        ["backend", "k-means threads", "epoch train s", "embed s", "k-means s (k=10,20,50)",
         "pass s", "share"], rows)
    parts = {str(c or "default"): kmeans_breakdown(embeddings, KS, "faiss", c) for c in caps}
    common.print_table("Shared k-means parts inside the hierarchy (seconds)",
                       ["part", *(f"threads={c}" for c in parts)],
                       [[n, *(p[n] for p in parts.values())] for n in next(iter(parts.values()))])
    print(f"\nFN diagnostics (not part of the pass, run at the same epoch start): "
          f"{diagnostics_s:.2f} s")
    common.write_json(args.name or f"clustering_share_{args.dataset}", {
        "dataset": args.dataset, "backbone": backbone, "batch": batch,
        "steps_per_epoch": steps_per_epoch, "fit_step_seconds": step_s, "epoch_seconds": epoch_s,
        "embed_seconds": embed_s, "embed_round_seconds": timed["embed"], "embed_subset": subset, "embed_batch": args.embed_batch,
        "kmeans_seconds": {f"{b} threads={t or 'default'}": v for (b, t), v in kmeans_s.items()},
        "shared_parts": parts, "diagnostics_seconds": diagnostics_s,
        "share": {f"{b} threads={t or 'default'}": (embed_s + v) / epoch_s
                  for (b, t), v in kmeans_s.items()}})


if __name__ == "__main__":
    main()
