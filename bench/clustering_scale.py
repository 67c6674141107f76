"""One clustering pass (seeding + Lloyd + assignment) per k at PCL-like cluster counts:
wall time, peak RSS and FLOP counts as JSON, one line per k (issue 30, item 2).

    nice -n 19 python -m bench.clustering_scale --num_examples=1281167 \
        --num_clusters=25000,50000,100000 --backend=tf        # hours of CPU at full size

Synthetic 128-d unit vectors (bench.clustering_memory). Times taken while other work shares
the cores are not results; the FLOP counts and the bounded block size are exact. `--name`
also writes every pass to bench/results/<name>.json (what bench.imagenet_epoch fits its
scaling law to; several sizes N: `--num_examples=160000,320000,640000`, one process each).
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import json
import resource
import time

import threadpoolctl

from bench import common
from bench.clustering_memory import current_rss, peak_rss, reset_peak, synthetic_embeddings
from ifnd_tf import clustering, kmeans

MB = 1 << 20


def flops(n: int, k: int, dim: int, iterations: int, max_points_per_centroid: int) -> dict:
    """Multiply-adds x 2 of the similarity matmuls, the only O(N k dim) work of a pass."""
    sample = min(n, k * max_points_per_centroid)
    pool = min(sample, max(20_000, 20 * k))  # the seeding pool (kmeans._seeding_pool)
    return {"seeding": 2 * pool * k * dim,  # every pool row meets every seed once
            "lloyd": iterations * 2 * sample * k * dim,
            "assignment": 2 * n * k * dim}


class Stopwatch:
    """Wraps kmeans.seed_centroids (the name fit_centroids calls; clustering only re-exports
    it) so the pass's seeding time is reported on its own."""

    def __init__(self, function):
        self.function, self.seconds = function, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def one_pass(embeddings, k: int, args: argparse.Namespace, seeding: Stopwatch) -> dict:
    """Fit and assign at one k; peak RSS from a reset high-water mark (Linux)."""
    seeding.seconds = 0.0
    held, peak_was_reset = current_rss(), reset_peak()
    budget = args.memory_budget_mib * MB
    start = time.perf_counter()
    centroids = clustering.fit_centroids(embeddings, k, args.backend, seed=0,
                                         iterations=args.iterations,
                                         max_points_per_centroid=args.max_points_per_centroid,
                                         device=args.device, memory_budget=budget)
    fitted = time.perf_counter()
    clustering.assign_with_confidence(embeddings, centroids, budget)
    done = time.perf_counter()
    n, dim = embeddings.shape
    return {"num_examples": n, "dim": dim, "k": k, "backend": args.backend,
            "device": args.device, "iterations": args.iterations,
            "memory_budget_mib": args.memory_budget_mib,
            "tf_lloyd_block": clustering.block_shape(min(n, k * args.max_points_per_centroid),
                                                     k, budget),
            "assignment_block": clustering.block_shape(n, k, budget, kmeans._ASSIGN_CHUNK),
            "full_similarity_mb": n * k * 4 / MB,
            "seconds": {"seeding": seeding.seconds, "lloyd": fitted - start - seeding.seconds,
                        "assignment": done - fitted},
            "flops": flops(n, k, dim, args.iterations, args.max_points_per_centroid),
            "rss_before_mb": held / MB, "peak_rss_mb": peak_rss() / MB,
            "pass_peak_mb": (peak_rss() - held) / MB, "peak_was_reset": peak_was_reset,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_examples", default="1281167",
                        help="N, or several (comma-separated): one set of passes per N")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--num_clusters", default="25000,50000,100000")
    parser.add_argument("--backend", default="tf", choices=clustering.BACKENDS)
    parser.add_argument("--device", default="cpu", choices=clustering.DEVICES)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--max_points_per_centroid", type=int, default=256)
    parser.add_argument("--memory_budget_mib", type=int,
                        default=clustering.DEFAULT_MEMORY_BUDGET // MB)
    parser.add_argument("--true_clusters", type=int, default=1000,
                        help="centres of the synthetic cloud")
    parser.add_argument("--threads", type=int, default=0,
                        help="cap on the k-means libraries' threads (0 = their default)")
    parser.add_argument("--name", help="also write the passes to bench/results/<name>.json")
    args = parser.parse_args()
    kmeans.seed_centroids = seeding = Stopwatch(kmeans.seed_centroids)
    passes = []
    with threadpoolctl.threadpool_limits(args.threads or None):
        for n in (int(n) for n in args.num_examples.split(",")):
            embeddings = synthetic_embeddings(n, args.dim, args.true_clusters, seed=0)
            for k in (int(k) for k in args.num_clusters.split(",")):
                passes.append(one_pass(embeddings, k, args, seeding))
                print(json.dumps(passes[-1]), flush=True)
            del embeddings
    if args.name:
        common.write_json(args.name, {"passes": passes, "threads": args.threads,
                                      "true_clusters": args.true_clusters})


if __name__ == "__main__":
    main()
