"""What clustering the training keys costs in detection quality, against the centre-view pass.

    python -m bench.cluster_features_quality [--seeds=0,1] [--flagfile=flags/fashion_mnist.cfg]

Trains the flagfile's configuration once per --cluster_features mode and seed, each in its own
process (`python -m ifnd_tf.train`, kNN monitor every 8 epochs, no export), into
--runs_dir/<mode>_s<seed>; a run whose metrics.csv already has every epoch is read, not re-run.
From each metrics.csv: the last epoch's FN precision / recall and kNN top-1, the median epoch
time and the median clustering time of the IFND epochs. Quality numbers are deterministic for a
seed; the seconds are only comparable within one run of this script.
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import os
import statistics

from bench import common
from ifnd_tf import callbacks, compare, config

MODES = (config.CENTER_VIEW, config.TRAIN_KEYS)


def summarize(history: list[dict]) -> dict:
    """Last-epoch quality and median seconds of one run's metrics.csv rows."""
    last = history[-1]
    clustering = [row["clustering_seconds"] for row in history if row.get("alpha", 0) > 0]
    return {"epochs": len(history), "fn_precision": last["fn_precision"],
            "fn_recall": last["fn_recall"], "knn_top1": last["knn_top1"],
            "epoch_seconds": statistics.median(row["seconds"] for row in history),
            "clustering_seconds": statistics.median(clustering)}


def train_or_read(flagfile: str, mode: str, seed: int, epochs: int, run_dir: str) -> dict:
    """Train one mode and seed unless its metrics.csv is complete; its summary."""
    metrics_csv = os.path.join(run_dir, "metrics.csv")
    if not (os.path.exists(metrics_csv) and len(callbacks.read_metrics(metrics_csv)) == epochs):
        compare.run_step("ifnd_tf.train", [
            f"--flagfile={flagfile}", f"--model_dir={run_dir}", f"--cluster_features={mode}",
            f"--seed={seed}", f"--epochs={epochs}", f"--knn_every={epochs}", "--export=false"])
    return summarize(callbacks.read_metrics(metrics_csv))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flagfile", default="flags/fashion_mnist.cfg")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--runs_dir", default="runs/cluster_features")
    parser.add_argument("--name", default="cluster_features_quality")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {f"{mode} seed {seed}": train_or_read(
        args.flagfile, mode, seed, args.epochs, os.path.join(args.runs_dir, f"{mode}_s{seed}"))
        for seed in seeds for mode in MODES}
    columns = ("fn_precision", "fn_recall", "knn_top1", "epoch_seconds", "clustering_seconds")
    common.print_table(
        f"--cluster_features at the last of {args.epochs} epochs ({args.flagfile})",
        ["run", *columns], [[name, *(row[c] for c in columns)] for name, row in results.items()])
    common.write_json(args.name, {"flagfile": args.flagfile, "epochs": args.epochs,
                                  "results": results})


if __name__ == "__main__":
    main()
