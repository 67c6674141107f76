"""ifnd_tf's MoCo v2 train step vs the plain PyTorch MoCo v2 reference, images/s.

Both run in this process (one allocator: tcmalloc, ifnd_tf/runtime.py) with the same threads,
batch and architecture, alternating round by round. Ours runs with a full IFND mask (the
reference has none), so the ratio is conservative. CIFAR ResNet-18 at 32 px by default;
`--backbone=resnet50` is ResNet-50 at 224 px (`--image_size` to change it).

    pip install -r bench/requirements.txt && python -m bench.cross_framework
    python -m bench.cross_framework --backbone=resnet50       # ~1 min per round on 2 cores
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import statistics

import tensorflow as tf

from bench import common, flops

KS = (10, 20, 50)
# Per backbone: image size, batch, steps per round. ResNet-50 at 224 px is ~1 TFLOP per step
# at batch 32 (4 forward-equivalents x 8.2 GFLOP x 32): one step per framework makes a round
# of ~30-60 s on 2 cores.
DEFAULTS = {"resnet18_cifar": {"image_size": 32, "batch": 64, "steps": 2},
            "resnet50": {"image_size": 224, "batch": 32, "steps": 1}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18_cifar", choices=sorted(DEFAULTS))
    parser.add_argument("--image_size", type=int, help="default: 32 (ResNet-18), 224 (ResNet-50)")
    parser.add_argument("--batch", type=int, help="default: 64 (ResNet-18), 32 (ResNet-50)")
    parser.add_argument("--steps", type=int, help="steps per round; default: 2 (ResNet-18), "
                        "1 (ResNet-50)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--key_bn_splits", type=int, default=4)
    parser.add_argument("--jit", action="store_true", help="XLA for ours")
    parser.add_argument("--sync_bn", action="store_true", help="ours with the query encoder's "
                        "SyncBN (Keras' unfused BN); default: replica-local BN, as the reference")
    parser.add_argument("--name", help="output file; default cross_framework (ResNet-18), "
                        "cross_framework_resnet50")
    args = parser.parse_args()
    defaults = DEFAULTS[args.backbone]
    size = args.image_size or defaults["image_size"]
    batch = args.batch or defaults["batch"]
    steps = args.steps or defaults["steps"]
    name = args.name or ("cross_framework" if args.backbone == "resnet18_cifar"
                         else f"cross_framework_{args.backbone}")
    common.set_threads(args.threads)
    from bench import torch_reference  # torch after TF's thread settings

    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    cfg = common.model_config(args.backbone, size, batch, 1.0, args.key_bn_splits).replace(
        sync_bn=args.sync_bn)
    moco = common.build_moco(cfg, args.jit, strategy, common.NUM_EXAMPLES)
    macs = flops.encoder_macs(moco.encoder)
    common.fill_pseudo_labels(moco, KS)
    ours = common.step_runner(moco, common.random_batch(batch, size, common.NUM_EXAMPLES),
                              strategy)
    theirs = torch_reference.make_step(batch, size, args.threads,
                                       key_bn_splits=args.key_bn_splits, backbone=args.backbone)
    ours(1), theirs(1)  # trace, allocate
    seconds = common.alternate({"ifnd_tf (TF)": lambda: ours(steps),
                                "PyTorch reference": lambda: theirs(steps)}, args.rounds)
    rate = {n: batch * steps / statistics.median(s) for n, s in seconds.items()}
    ratio = common.median_ratio(seconds["PyTorch reference"], seconds["ifnd_tf (TF)"])
    # A MoCo step per image: query forward + backward (3 forwards) + key forward (1).
    step_flops = (1 + flops.BACKWARD_FORWARDS + 1) * flops.FLOPS_PER_MAC * macs["encoder"]
    common.print_table(
        f"{args.backbone} MoCo step at {size} px, batch {batch}, {args.threads} threads, median "
        f"of {args.rounds} alternating rounds ({step_flops / 1e9:.3g} GFLOP per image)",
        ["framework", "images/s", "GFLOP/s"],
        [*([n, r, r * step_flops / 1e9] for n, r in rate.items()),
         ["ours / theirs (paired median)", ratio, ""]])
    common.write_json(name, {"backbone": args.backbone, "image_size": size, "batch": batch,
                             "steps_per_round": steps, "rounds": args.rounds,
                             "threads": args.threads, "key_bn_splits": args.key_bn_splits,
                             "jit": args.jit, "sync_bn": args.sync_bn, "seconds": seconds, "images_per_s": rate,
                             "ratio": ratio, "encoder_macs_per_image": macs,
                             "step_flops_per_image": step_flops,
                             "torch": torch_reference.torch.__version__})


if __name__ == "__main__":
    main()
