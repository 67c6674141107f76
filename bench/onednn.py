"""Train step with TensorFlow's oneDNN kernels off vs on (TF_ENABLE_ONEDNN_OPTS=0 / 1).

The switch is read once per process, so each variant runs in its own child process; the
children alternate (off, on, on, off, ...) and the table reports the median of the per-pair
ratios. ifnd_tf's entry points turn oneDNN on (ifnd_tf/runtime.py; docs/design.md, "oneDNN
on AVX2"); TensorFlow alone does so only on AVX-512/AMX-class CPUs.

    python -m bench.onednn                       # demo small net, 3 pairs
    python -m bench.onednn --backbone=resnet18_cifar --pairs=2
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

STEPS = {"small": 10, "resnet18_cifar": 2}  # steps per timed round, by bench.step's SETUPS
CHILD_ROUNDS = 4  # timed rounds per child after a warm-up; the median is its number


def child(backbone: str, threads: int) -> None:
    """Runs in a child process: prints images/s of the IFND train step as one JSON line."""
    import tensorflow as tf

    from bench import common
    from bench.step import KS, SETUPS

    common.set_threads(threads)
    size, width, batch = SETUPS[backbone]
    steps = STEPS[backbone]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    moco = common.build_moco(common.model_config(backbone, size, batch, width), False, strategy,
                             common.NUM_EXAMPLES)
    common.fill_pseudo_labels(moco, KS)
    run = common.step_runner(moco, common.random_batch(batch, size, common.NUM_EXAMPLES),
                             strategy)
    run(2)
    seconds = []
    for _ in range(CHILD_ROUNDS):
        start = time.perf_counter()
        run(steps)
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"images_per_s": batch * steps / statistics.median(seconds)}), flush=True)


def measure(backbone: str, threads: int, onednn: str) -> float:
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn}
    out = subprocess.run([sys.executable, "-m", "bench.onednn", "--child",
                          f"--backbone={backbone}", f"--threads={threads}"],
                         env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="small", choices=sorted(STEPS))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="onednn")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.backbone, args.threads)
    from bench import common

    images = {"0": [], "1": []}
    for pair in range(args.pairs):
        for setting in ("0", "1") if pair % 2 == 0 else ("1", "0"):
            images[setting].append(measure(args.backbone, args.threads, setting))
            print(f"pair {pair + 1}, oneDNN {'on' if setting == '1' else 'off'}: "
                  f"{images[setting][-1]:.0f} img/s", flush=True)
    ratio = common.median_ratio(images["1"], images["0"])
    common.print_table(f"IFND train step, {args.backbone}, oneDNN off vs on, {args.pairs} "
                       f"alternating pairs of processes ({args.threads} threads)",
                       ["oneDNN", "images/s (median)", "speed-up on/off (paired median)"],
                       [["off", statistics.median(images["0"]), 1.0],
                        ["on", statistics.median(images["1"]), ratio]])
    common.write_json(args.name, {"backbone": args.backbone, "threads": args.threads,
                                  "images_per_s": {"off": images["0"], "on": images["1"]},
                                  "ratio": ratio})


if __name__ == "__main__":
    main()
