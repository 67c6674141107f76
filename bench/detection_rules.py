"""Offline: precision / recall of the detected false-negative pairs for every --fn_confidence
rule as a function of alpha, on one saved encoder (or saved embeddings) and the true labels.

    python -m bench.detection_rules --run_dir=runs/fashion_mnist [--alphas=0.2,0.4,0.6,0.8,1]
    python -m bench.detection_rules --embeddings=emb.npy --labels=labels.npy --num_clusters=10,20,50
    python -m bench.detection_rules --run_dir=... --halves --quantiles=0.01,0.05,0.1   # + GloFND-like

With --run_dir: its flags.json gives the dataset, image size, hierarchy and k-means settings,
and export/encoder.keras (the query encoder; training clusters the key encoder, its EMA) embeds
the train split's centre views. The hierarchy is clustered once; each rule scores it once and
each alpha only re-runs the per-cluster acceptance. Counts are exact over all pairs
(ifnd_tf.diagnostics). Offline there is no previous epoch: `stability` compares against a
second clustering of the same embeddings with another seed, so it measures agreement between
k-means restarts, a proxy for the epoch-to-epoch stability used in training.
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import itertools
import json
import os
import time

import numpy as np

from bench import common
from ifnd_tf import clustering, confidence, diagnostics, sources


def embed_run(run_dir: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train-split embeddings of a run's exported encoder, the true labels, its flags."""
    import keras
    import tensorflow as tf

    from ifnd_tf import data, embedding

    with open(os.path.join(run_dir, "flags.json")) as f:
        flags = json.load(f)
    encoder = keras.models.load_model(os.path.join(run_dir, "export", "encoder.keras"))
    source = sources.load_source(flags["dataset"], "train", flags.get("data_dir"))
    if source.labels is None:
        raise SystemExit(f"bench.detection_rules: error: {flags['dataset']} has no labels")
    pipeline = data.embedding_pipeline(source, 1024, flags["image_size"])
    embedder = embedding.DatasetEmbedder(encoder, tf.distribute.get_strategy(), pipeline,
                                         source.num_examples)
    return embedder(), source.labels, flags


def evaluate(embeddings: np.ndarray, labels: np.ndarray, ks: list[int], alphas: list[float],
             backend: str, seed: int, neighbours_k: int, threads: int | None = None,
             min_levels: tuple[int, ...] = (1,),
             rules: list[str] = confidence.RULES,
             parts: dict[str, np.ndarray] | None = None) -> list[dict]:
    """One row per (rule, vote, alpha, part): exact pair precision / recall, detected pairs,
    rule seconds. The vote is --fn_min_levels (levels that must agree; 1 = the paper's union).
    `parts` (name -> sample indices) counts only the pairs within each part, e.g. one half of
    train to choose a setting on and the other to confirm it; default: all samples."""
    parts = parts or {"all": np.arange(len(labels))}
    x = clustering.l2_normalize(embeddings)
    assigns, margins = clustering.cluster_levels(x.astype(np.float32), ks, backend, seed)
    previous, _ = clustering.cluster_levels(x.astype(np.float32), ks, backend, seed + 1)
    rows = []
    for rule in rules:
        start = time.perf_counter()
        scores = confidence.scores(rule, assigns, margins, x, previous, neighbours_k)
        seconds = time.perf_counter() - start
        for alpha in alphas:
            accepted = clustering.accept_levels(assigns, scores, margins, alpha)
            for votes, (part, members) in itertools.product(min_levels, parts.items()):
                quality = diagnostics.false_negative_quality(accepted[:, members],
                                                             labels[members], votes)
                rows.append({"rule": rule, "min_levels": votes, "alpha": alpha, "part": part,
                             "precision": quality.precision, "recall": quality.recall,
                             "detected_pairs": quality.detected_pairs, "score_seconds": seconds})
    return rows


def neighbour_quantiles(embeddings: np.ndarray, labels: np.ndarray, quantiles: list[float],
                        coarsest: np.ndarray, parts: dict[str, np.ndarray], anchors: int,
                        seed: int) -> list[dict]:
    """Per-anchor similarity thresholds, as GloFND (Balmaseda et al. 2025, arXiv 2502.20612):
    (i, j) is detected when j is among the fraction q of i's part most cosine-similar to i.
    GloFND learns each anchor's threshold by SGD because it sees only mini-batch negatives;
    offline the whole part is at hand, so the threshold is read exactly. The detected set is
    not symmetric, so pairs are counted per anchor, for `anchors` anchors sampled from each
    part (all their pairs in the part); "within_cluster" rows also require i and j to share a
    cluster of `coarsest` (the hierarchy's coarsest level, clustered on all samples)."""
    x = clustering.l2_normalize(embeddings)
    rng = np.random.default_rng(seed)
    rows = []
    for part, members in parts.items():
        chosen = np.sort(rng.choice(len(members), min(anchors, len(members)), replace=False))
        counts = {(q, w): [0, 0] for q in quantiles for w in (False, True)}  # detected, correct
        true_pairs = 0
        for lo in range(0, len(chosen), 500):
            at = chosen[lo:lo + 500]  # positions within the part
            sims = x[members[at]] @ x[members].T
            sims[np.arange(len(at)), at] = -np.inf  # not itself
            same = labels[members[at]][:, None] == labels[members][None, :]
            same[np.arange(len(at)), at] = False
            mates = coarsest[members[at]][:, None] == coarsest[members][None, :]
            true_pairs += int(same.sum())
            ordered = -np.sort(-sims, axis=1)
            for q in quantiles:
                n = max(1, round(q * (len(members) - 1)))
                detected = sims >= ordered[:, n - 1:n]
                for within in (False, True):
                    found = detected & mates if within else detected
                    counts[q, within][0] += int(found.sum())
                    counts[q, within][1] += int((found & same).sum())
        for (q, within), (detected, correct) in counts.items():
            rows.append({"rule": "neighbour_quantile", "quantile": q, "within_cluster": within,
                         "part": part, "anchors": len(chosen),
                         "precision": correct / detected if detected else 0.0,
                         "recall": correct / true_pairs if true_pairs else 0.0,
                         "detected_pairs": detected})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run_dir", help="a run with flags.json and export/encoder.keras")
    parser.add_argument("--embeddings", help=".npy [N, dim] instead of --run_dir")
    parser.add_argument("--labels", help=".npy [N] true labels, with --embeddings")
    parser.add_argument("--num_clusters", help="k per level (default: the run's flags)")
    parser.add_argument("--alphas", default="0.2,0.4,0.6,0.8,1.0")
    parser.add_argument("--kmeans_backend", default=None)
    parser.add_argument("--neighbours_k", type=int, default=10)
    parser.add_argument("--min_levels", default="1",
                        help="votes to score, e.g. 1,2,3 (--fn_min_levels; 1 = the union)")
    parser.add_argument("--rules", default=",".join(confidence.RULES))
    parser.add_argument("--halves", action="store_true",
                        help="count pairs within two seeded halves of train, A (to choose a "
                             "setting on) and B (to confirm it), instead of all samples")
    parser.add_argument("--quantiles", default="",
                        help="also per-anchor top fractions, e.g. 0.01,0.05,0.1 (GloFND-like "
                             "thresholds; neighbour_quantiles)")
    parser.add_argument("--quantile_anchors", type=int, default=3000,
                        help="anchors sampled per part for --quantiles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="detection_rules")
    args = parser.parse_args()
    if args.run_dir:
        embeddings, labels, flags = embed_run(args.run_dir)
    elif args.embeddings and args.labels:
        embeddings, labels, flags = np.load(args.embeddings), np.load(args.labels), {}
    else:
        parser.error("give --run_dir, or --embeddings and --labels")
    ks = [int(k) for k in (args.num_clusters.split(",") if args.num_clusters
                           else flags.get("num_clusters", ["10", "20", "50"]))]
    backend = args.kmeans_backend or flags.get("kmeans_backend", "faiss")
    alphas = [float(a) for a in args.alphas.split(",")]
    votes = tuple(int(v) for v in args.min_levels.split(","))
    parts = None
    if args.halves:
        order = np.random.default_rng(args.seed).permutation(len(labels))
        parts = {"A": np.sort(order[::2]), "B": np.sort(order[1::2])}
    rows = evaluate(embeddings, labels, ks, alphas, backend, args.seed, args.neighbours_k,
                    min_levels=votes, rules=args.rules.split(","), parts=parts)
    columns = ("rule", "min_levels", "alpha", "part", "precision", "recall", "detected_pairs", "score_seconds")
    common.print_table(f"Detected false-negative pairs, {len(labels)} samples, k = {ks} "
                       f"({args.run_dir or args.embeddings})", columns,
                       [[row[c] for c in columns] for row in rows])
    quantile_rows = []
    if args.quantiles:
        x = clustering.l2_normalize(embeddings)
        coarsest = clustering.cluster_levels(x.astype(np.float32), [min(ks)], backend,
                                             args.seed)[0][0]
        quantile_rows = neighbour_quantiles(
            embeddings, labels, [float(q) for q in args.quantiles.split(",")], coarsest,
            parts or {"all": np.arange(len(labels))}, args.quantile_anchors, args.seed)
        columns = ("quantile", "within_cluster", "part", "anchors", "precision", "recall",
                   "detected_pairs")
        common.print_table(f"Per-anchor top fractions (GloFND-like), k = {min(ks)} for "
                           f"within_cluster", columns,
                           [[row[c] for c in columns] for row in quantile_rows])
    common.write_json(args.name, {"run_dir": args.run_dir, "num_clusters": ks,
                                  "backend": backend, "rows": rows,
                                  "quantile_rows": quantile_rows})


if __name__ == "__main__":
    main()
