"""ifnd_tf's CIFAR ResNet-18 train step vs the plain PyTorch MoCo v2 reference, images/s.

Both run in this process with the same threads, batch and architecture, alternating round by
round. Ours runs with a full IFND mask (the reference has none), so the ratio is conservative.

    pip install -r bench/requirements.txt && python -m bench.cross_framework
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import statistics

import tensorflow as tf

from bench import common

KS = (10, 20, 50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--key_bn_splits", type=int, default=4)
    parser.add_argument("--jit", action="store_true", help="XLA for ours")
    parser.add_argument("--name", default="cross_framework")
    args = parser.parse_args()
    common.set_threads(args.threads)
    from bench import torch_reference  # torch after TF's thread settings

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    cfg = common.model_config("resnet18_cifar", 32, args.batch, 1.0, args.key_bn_splits)
    moco = common.build_moco(cfg, args.jit, strategy, common.NUM_EXAMPLES)
    common.fill_pseudo_labels(moco, KS)
    ours = common.step_runner(moco, common.random_batch(args.batch, 32, common.NUM_EXAMPLES),
                              strategy)
    theirs = torch_reference.make_step(args.batch, 32, args.threads,
                                       key_bn_splits=args.key_bn_splits)
    ours(1), theirs(1)  # trace, allocate
    seconds = common.alternate({"ifnd_tf (TF)": lambda: ours(args.steps),
                                "PyTorch reference": lambda: theirs(args.steps)}, args.rounds)
    rate = {n: args.batch * args.steps / statistics.median(s) for n, s in seconds.items()}
    ratio = common.median_ratio(seconds["PyTorch reference"], seconds["ifnd_tf (TF)"])
    common.print_table(
        f"CIFAR ResNet-18 MoCo step, batch {args.batch}, {args.threads} threads, median of "
        f"{args.rounds} alternating rounds", ["framework", "images/s"],
        [*([n, r] for n, r in rate.items()), ["ours / theirs (paired median)", ratio]])
    common.write_json(args.name, {"batch": args.batch, "threads": args.threads, "jit": args.jit,
                                  "seconds": seconds, "images_per_s": rate, "ratio": ratio,
                                  "torch": torch_reference.torch.__version__})


if __name__ == "__main__":
    main()
