"""Peak memory of one clustering pass at ImageNet-1k scale: hierarchical_pseudo_labels on
1.28M synthetic 128-d unit vectors with the flags/imagenet100.cfg k list (faiss), the one
measured in docs/results.md; flags/imagenet.cfg's is --num_clusters=1000,2000,3000.

    nice -n 10 python -m bench.clustering_memory          # a few minutes of CPU

Peak RSS is the process high-water mark (resource.getrusage); the table separates what the
process held before the pass (TensorFlow, the embeddings) from what the pass added.
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import resource
import time

import numpy as np

from bench import common
from ifnd_tf import clustering

MB = 1 << 20


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak() -> bool:
    """Linux >= 4.0: restart the high-water mark (VmHWM) from the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """VmHWM (since reset_peak), which getrusage's ru_maxrss also reports without a reset."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def synthetic_embeddings(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around `clusters` random centres (a clustered, not uniform, cloud).

    Filled in chunks: whole-array temporaries would stay in tcmalloc's free lists and hide
    the pass's own allocations in the RSS.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), np.float32)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 65536):
        chunk = centres[rng.integers(0, clusters, min(65536, n - start))]
        chunk += rng.standard_normal(chunk.shape, np.float32)
        x[start:start + len(chunk)] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_examples", type=int, default=1_281_167)  # ImageNet-1k train
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--num_clusters", default="100,250,500,1000")
    parser.add_argument("--backend", default="faiss", choices=clustering.BACKENDS)
    parser.add_argument("--threads", type=int, default=0, help="0 = library default")
    parser.add_argument("--name", default="clustering_memory")
    args = parser.parse_args()
    ks = [int(k) for k in args.num_clusters.split(",")]

    before_data = current_rss()
    embeddings = synthetic_embeddings(args.num_examples, args.dim, 1000, seed=0)
    held = current_rss()
    generation_peak = peak_rss()
    peak_was_reset = reset_peak()  # else the generation's temporaries could be the peak
    start = time.perf_counter()
    labels, stats = clustering.hierarchical_pseudo_labels(
        embeddings, ks, alpha=1.0, backend=args.backend, seed=0, threads=args.threads or None)
    seconds = time.perf_counter() - start
    peak = peak_rss()
    rows = [("process before the embeddings (TF, faiss loaded)", before_data / MB),
            (f"+ embeddings {args.num_examples} x {args.dim} float32", (held - before_data) / MB),
            ("peak RSS during the pass (whole process)", peak / MB),
            ("pass's own peak (peak - before the pass)", (peak - held) / MB),
            ("label table [levels, N] int32", labels.nbytes / MB)]
    common.print_table(f"one clustering pass, k = {ks}, {args.backend}, {seconds:.0f} s",
                       ["what", "MB"], rows)
    common.write_json(args.name, {
        "num_examples": args.num_examples, "dim": args.dim, "num_clusters": ks,
        "backend": args.backend, "threads": args.threads, "seconds": seconds,
        "peak_was_reset": peak_was_reset, "generation_peak_mb": generation_peak / MB,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mb": {name: value for name, value in rows},
        "accepted_fraction": [level.accepted_fraction for level in stats]})


if __name__ == "__main__":
    main()
