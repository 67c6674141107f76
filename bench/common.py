"""Shared benchmark plumbing: model building from a RunConfig, alternating timing, table + JSON.

Variants are timed in alternating rounds in one process so that load from other work on the
machine hits all of them alike; only ratios of medians from one run are meant to be compared.
"""
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from ifnd_tf import builder, config

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
NUM_EXAMPLES = 50_000  # size of the index space of synthetic batches (CIFAR-size)


def set_threads(threads: int) -> None:
    """Same thread count for every framework compared (before any TF op runs)."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def model_config(backbone: str, image_size: int, batch_size: int, width: float = 1.0,
                 key_bn_splits: int = 4, mixed_precision: str = "off",
                 cluster_features: str = config.CENTER_VIEW) -> config.RunConfig:
    """The run config of a benchmarked model (demo / CIFAR values otherwise)."""
    return config.RunConfig().replace(
        backbone=backbone, image_size=image_size, batch_size=batch_size, width_multiplier=width,
        key_bn_splits=key_bn_splits, queue_size=4096, num_clusters=(10, 20, 50),
        moco_momentum=0.99, learning_rate=0.06, weight_decay=5e-4, epochs=10,
        mixed_precision=mixed_precision, cluster_features=cluster_features)


def build_moco(cfg: config.RunConfig, jit: bool, strategy: tf.distribute.Strategy,
               num_examples: int, steps_per_epoch: int = 100):
    """A compiled MomentumContrast as `ifnd_tf.train` builds it, under its precision policy."""
    import keras

    policy = keras.mixed_precision.global_policy()
    if cfg.run.mixed_precision != "off":
        keras.mixed_precision.set_global_policy(f"mixed_{cfg.run.mixed_precision}")
    try:
        with strategy.scope():
            return builder.build_model(cfg, num_examples, steps_per_epoch, jit)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def random_batch(batch_size: int, image_size: int, num_examples: int, seed: int = 0):
    """(index, view_q, view_k) of random images in [0, 1]: a ready batch, no input cost."""
    rng = np.random.default_rng(seed)
    index = rng.choice(num_examples, batch_size, replace=False).astype(np.int64)
    views = rng.random((2, batch_size, image_size, image_size, 3), np.float32)
    return tf.constant(index), tf.constant(views[0]), tf.constant(views[1])


def step_runner(moco, batch, strategy: tf.distribute.Strategy) -> Callable[[int], float]:
    """A function running n Keras train steps (the function `fit` runs) on one cached batch."""
    moco.make_train_function()
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(dataset))

    def run(steps: int) -> float:
        outputs = None
        for _ in range(steps):
            outputs = moco.train_function(iterator)
        if hasattr(outputs, "get_value"):  # an Optional unless Keras already unwrapped it
            outputs = outputs.get_value()
        return float(outputs["loss"])  # waits for the last step

    return run


def fill_pseudo_labels(moco, ks: Sequence[int], seed: int = 0) -> None:
    """Every example labelled at every level (alpha = 1): the largest realistic mask."""
    rng = np.random.default_rng(seed)
    levels, n = moco.detector.pseudo_labels.shape
    moco.detector.set_pseudo_labels(np.stack([rng.integers(0, ks[i], n)
                                              for i in range(levels)]))


def alternate(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Seconds of each variant's callable, run in alternating order for `rounds` rounds.

    The order flips every round (A B, B A, ...) so drift in machine load does not favour one.
    """
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            variants[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the per-round ratios (paired: both were timed in the same round)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    """A Markdown table, so the output can be pasted into bench/README.md as it is."""
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    print(f"\n{title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(cell(v) for v in row) + " |")


def cpu_info() -> dict:
    """CPU model and the vector extensions that decide TF's kernels (AVX2 vs AVX-512 / AMX are
    ~6x apart per step): every result names the CPU kind it was measured on."""
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    vector = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
              if f in flags]
    return {"model": model, "vector_flags": vector,
            "kind": "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "other")}


def allocator() -> str:
    """The malloc this process runs on (ifnd_tf/runtime.py preloads tcmalloc)."""
    from ifnd_tf import runtime

    return runtime.loaded_allocator() or "system (glibc)"


def write_json(name: str, payload: dict) -> str:
    """bench/results/<name>.json with the command and the machine, for the notes."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    main = sys.modules["__main__"]
    module = main.__spec__.name if main.__spec__ else sys.argv[0]
    meta = {"command": " ".join(["python -m", module, *sys.argv[1:]]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "tensorflow": tf.__version__,
                        "cpu": cpu_info(), "allocator": allocator()}}
    with open(path, "w") as f:
        json.dump({**meta, **payload}, f, indent=2, sort_keys=True)
    cpu = meta["machine"]["cpu"]
    print(f"\nCPU: {cpu['model']} ({cpu['kind']}: {' '.join(cpu['vector_flags'])}); "
          f"allocator: {meta['machine']['allocator']}")
    print(f"wrote {path}")
    return path
