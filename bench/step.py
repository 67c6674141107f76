"""Step cost of IFND: the train step with a full false-negative mask vs an empty one.

Same model, same cached batch, one process, variants alternated round by round. Also XLA
on/off, bfloat16 mixed precision on/off, writing each key into the train_keys table
(--cluster_features=train_keys) on/off, the crop size (--crop_sizes: the demo's 28 px against
24 px) and the width multiplier (--widths: 0.5, the demo's until 2026-11-28, against 0.375,
the demo's now) (separate models).

    python -m bench.step                       # small net + ResNet-18 CIFAR, IFND on/off
    python -m bench.step --variants=ifnd,jit,mixed_precision,train_keys,crop,width --backbones=small
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import argparse
import dataclasses
import math
import statistics

import tensorflow as tf

from bench import common
from ifnd_tf import config

# backbone -> (image size, width multiplier, batch): the small net at the width every recorded
# result used (the demo's until 2026-11-28, now 0.375: --variants=width); CIFAR ResNet-18.
SETUPS = {"small": (28, 0.5, 256), "resnet18_cifar": (32, 1.0, 64)}
KS = (10, 20, 50)


def _variant_models(kind: str, backbone: str, batch: int, strategy, pairs: dict) -> dict:
    """name -> (model, image size) of the models whose steps are compared by `kind`."""
    image_size, width, _ = SETUPS[backbone]
    cfg = common.model_config(backbone, image_size, batch, width)

    def build(jit=False, **changes):
        return common.build_moco(dataclasses.replace(cfg, **changes), jit, strategy,
                                 common.NUM_EXAMPLES), changes.get("image_size", image_size)

    if kind == "ifnd":
        return {"base": build()}
    if kind == "jit":
        return {"jit off": build(), "jit on": build(jit=True)}
    if kind == "train_keys":
        return {name: build(cluster_features=name) for name in config.CLUSTER_FEATURES}
    if kind == "crop":
        return {f"{size} px": build(image_size=size) for size in pairs["crop"]}
    if kind == "width":
        return {f"width {w:g}": build(width_multiplier=w) for w in pairs["width"]}
    return {"float32": build(), "mixed bfloat16": build(mixed_precision="bfloat16")}


def _runners(kind: str, backbone: str, batch: int, steps: int, strategy, pairs: dict) -> dict:
    """name -> callable timing `steps` steps; IFND toggles the label table of one model."""
    built = _variant_models(kind, backbone, batch, strategy, pairs)
    models = {name: m for name, (m, _) in built.items()}
    runs = {name: common.step_runner(m, common.random_batch(batch, size, common.NUM_EXAMPLES),
                                     strategy)
            for name, (m, size) in built.items()}
    for name, m in models.items():
        common.fill_pseudo_labels(m, KS)
        runs[name](2)  # trace / compile, warm up
    if kind != "ifnd":
        return {name: (lambda r=r: r(steps)) for name, r in runs.items()}
    moco, run = models["base"], runs["base"]

    def with_labels(fill):
        def timed():
            fill(moco)
            return run(steps)
        return timed

    return {"IFND off (empty mask)": with_labels(lambda m: m.detector.clear_pseudo_labels()),
            "IFND on (full mask)": with_labels(lambda m: common.fill_pseudo_labels(m, KS))}


def measure(kind: str, backbone: str, batch: int, steps: int, rounds: int, strategy,
            pairs: dict) -> dict:
    """Median seconds / step and images / s of each variant, and the paired ratio of the two."""
    seconds = common.alternate(_runners(kind, backbone, batch, steps, strategy, pairs), rounds)
    (name_a, a), (name_b, b) = seconds.items()
    return {"kind": kind, "backbone": backbone, "batch": batch, "steps_per_round": steps,
            "rounds": rounds, "seconds": seconds,
            "images_per_s": {n: batch * steps / statistics.median(s) for n, s in seconds.items()},
            "ratio": common.median_ratio(b, a), "ratio_of": f"{name_b} / {name_a} (time)",
            "ratio_of_medians": statistics.median(b) / statistics.median(a)}


def _pair(parser: argparse.ArgumentParser, flag: str, text: str, kind: type) -> tuple:
    """Two different positive numbers A,B from a flag's text, or one parser error naming it."""
    try:
        pair = tuple(kind(v) for v in text.split(","))
    except ValueError:
        pair = ()
    if len(pair) != 2 or not all(0 < v < math.inf for v in pair) or pair[0] == pair[1]:
        parser.error(f"{flag}: two different positive values A,B, got {text!r}")
    return pair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="small,resnet18_cifar")
    parser.add_argument("--variants", default="ifnd,jit,mixed_precision,train_keys",
                        help="ifnd, jit, mixed_precision, train_keys, crop, width (all but "
                             "ifnd: small only unless --all_backbones)")
    parser.add_argument("--crop_sizes", default="28,24",
                        help="the two image sizes of --variants=crop (A, B)")
    parser.add_argument("--widths", default="0.5,0.375",
                        help="the two width multipliers of --variants=width (A, B)")
    parser.add_argument("--all_backbones", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", default="small:8,resnet18_cifar:2",
                        help="steps per round and backbone")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="step")
    args = parser.parse_args()
    common.set_threads(args.threads)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])  # as train.py on one CPU replica
    steps = {k: int(v) for k, v in (item.split(":") for item in args.steps.split(","))}
    pairs = {"crop": _pair(parser, "--crop_sizes", args.crop_sizes, int),
             "width": _pair(parser, "--widths", args.widths, float)}
    results = []
    for backbone in args.backbones.split(","):
        for kind in args.variants.split(","):
            if kind != "ifnd" and backbone != "small" and not args.all_backbones:
                continue
            print(f"measuring {kind} on {backbone} ...", flush=True)
            results.append(measure(kind, backbone, SETUPS[backbone][2], steps[backbone],
                                   args.rounds, strategy, pairs))
    rows = [[r["backbone"], r["batch"], r["ratio_of"],
             *(f"{name}: {v:.0f}" for name, v in r["images_per_s"].items()), r["ratio"],
             r["ratio_of_medians"]]
            for r in results]
    common.print_table(f"Train step, median of {args.rounds} alternating rounds "
                       f"({args.threads} threads)",
                       ["backbone", "batch", "ratio of", "img/s A", "img/s B",
                        "time ratio (paired median)", "ratio of medians"], rows)
    common.write_json(args.name, {"results": results, "threads": args.threads})


if __name__ == "__main__":
    main()
