"""Step cost of each false-negative method against plain MoCo v2, on the demo's model.

One process, one cached batch, every method's model built by `ifnd_tf.builder` from the demo
settings plus the method's flags (compare's variants), each detector in its largest-mask state
(alpha = 1: every example labelled at 3 levels, thresholds active, HCSC's centroids set), the
methods timed alternating round by round (order reversed every other round); the table gives
each one's paired median time ratio to MoCo v2's step. The clustering pass is not in a step:
compare's runs log it per epoch (clustering_seconds).

    python -m bench.methods_step [--rounds=5] [--steps=8]
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse

import numpy as np
import tensorflow as tf

from bench import common
from ifnd_tf import cli, compare

KS = (10, 20, 50)
DEMO = {"backbone": "small", "image_size": 28, "batch_size": 256, "width_multiplier": 0.375}


def _largest_mask(moco) -> None:
    """The detector's alpha = 1 state, without a clustering pass or a training epoch."""
    detector = moco.detector
    if detector is None:
        return
    if hasattr(detector, "pseudo_labels"):  # a label table: every example labelled
        common.fill_pseudo_labels(moco, KS)
    else:  # a rule on the step's similarities: switched on, as after the warm-up
        detector.refresh(1, 1.0, None)
    if hasattr(detector, "centroids"):
        rng = np.random.default_rng(0)
        table = rng.normal(size=detector.centroids.shape).astype(np.float32)
        detector.centroids.assign(table / np.linalg.norm(table, axis=-1, keepdims=True))
    if hasattr(detector, "thresholds"):
        detector.thresholds.assign(np.full(detector.thresholds.shape, 0.3, np.float32))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="moco,debiased,ifnd,fnc,hcsc,glofnd")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="methods_step")
    args = parser.parse_args()
    common.set_threads(args.threads)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    base = common.model_config("small", DEMO["image_size"], DEMO["batch_size"],
                               DEMO["width_multiplier"])
    runs = {}
    for key in args.variants.split(","):
        name, _, flags = compare.BUILTIN_VARIANTS[key]
        moco = common.build_moco(base.replace(**cli.parse_flag_args(flags)), False, strategy,
                                 common.NUM_EXAMPLES)
        _largest_mask(moco)
        run = common.step_runner(moco, common.random_batch(DEMO["batch_size"],
                                                           DEMO["image_size"],
                                                           common.NUM_EXAMPLES), strategy)
        run(2)  # trace, warm up
        runs[name] = lambda run=run: run(args.steps)
    seconds = common.alternate(runs, args.rounds)
    reference = seconds[compare.BUILTIN_VARIANTS["moco"][0]]
    rows = [[name, DEMO["batch_size"] * args.steps / float(np.median(s)),
             common.median_ratio(s, reference)] for name, s in seconds.items()]
    common.print_table(f"Demo step (small net, width 0.375, batch 256), median of {args.rounds} "
                       f"alternating rounds of {args.steps} steps, {args.threads} threads",
                       ["method", "images/s", "time / MoCo v2's (paired median)"], rows)
    common.write_json(args.name, {"seconds": seconds, "rounds": args.rounds,
                                  "steps_per_round": args.steps, "threads": args.threads,
                                  "ratios": {r[0]: r[2] for r in rows}})


if __name__ == "__main__":
    main()
