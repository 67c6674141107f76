"""Test set-up and the helpers test modules share (no test module imports another).

tcmalloc as in the entry points; two logical CPU devices so MirroredStrategy really has two
replicas. Helpers: `run_cli` (a command on flags/smoke.cfg in a subprocess), `event_tags`
(TensorBoard event tags), `read_metrics_csv`, `smoke_config` / `small_moco` (the smoke run's
model from a RunConfig), `restore_smoke_model`, `write_image_folder`, `counting_reads` (which
examples a pipeline read), `free_ports` and `lock_holder` (a process holding a run directory's
lock).
"""
import dataclasses
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ifnd_tf import runtime


def pytest_configure(config):
    """Before TensorFlow loads: re-execute the run on tcmalloc (ifnd_tf/runtime.py), with
    pytest's output capture stopped so the new process writes to the terminal; then split the
    CPU into two logical devices."""
    capture = config.pluginmanager.getplugin("capturemanager")
    runtime.prepare(before_exec=capture.stop_global_capturing if capture else None)
    import tensorflow as tf

    from ifnd_tf import cli

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    cli.FLAGS.mark_as_parsed()  # the commands' run() read flags; tests override via flagsaver


# The modules with the longest runs, longest first (seconds in one fresh-clone run:
# docs/results.md, "How long do the demo and the tests take"). make test hands whole modules to
# its two xdist workers in collection order (--no-loadscope-reorder); the long ones first lets
# the short ones fill the gaps at the end instead of one module running alone while the other
# worker idles.
LONGEST_MODULES = ("test_train.py", "test_compare.py", "test_model.py", "test_train_imagenet.py",
                   "test_linear_eval.py", "test_runtime.py", "test_data.py")


def pytest_collection_modifyitems(config, items):
    """LONGEST_MODULES first, in that order; every other module after them, as collected."""
    def rank(item):
        name = os.path.basename(str(item.path))
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=rank)  # stable: each module's tests keep their order


# One strategy object per process: several two-device strategies in one process reuse
# collective instance keys and abort ("Collective instance 100 expected type ...").
@pytest.fixture(scope="session")
def one_replica():
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(["/cpu:0"])


@pytest.fixture(scope="session")
def two_replicas():
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def run_cli(module: str, *args, timeout: int = 600, env: dict | None = None):
    """`python -m <module> args` from the repository root, output captured."""
    return subprocess.run([sys.executable, "-m", module, *args], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def run_smoke(module: str, model_dir, *extra, timeout: int = 600):
    """`python -m <module> --flagfile=flags/smoke.cfg --model_dir=... extra`."""
    return run_cli(module, "--flagfile=flags/smoke.cfg", f"--model_dir={model_dir}", *extra,
                   timeout=timeout)


def event_steps(folder) -> dict[str, list[int]]:
    """tag (scalars and images) -> the steps it was written at, in the TensorBoard event files
    of `folder`."""
    from tensorboard.backend.event_processing import event_accumulator

    steps = {}
    for path in sorted(os.listdir(folder)):
        if path.startswith("events.out.tfevents."):
            events = event_accumulator.EventAccumulator(os.path.join(folder, path),
                                                        size_guidance={"tensors": 0})
            events.Reload()
            for tag in events.Tags()["tensors"]:
                steps.setdefault(tag, []).extend(e.step for e in events.Tensors(tag))
    return steps


def event_tags(folder) -> set[str]:
    """Every tag (scalars and images) in the TensorBoard event files of `folder`."""
    return set(event_steps(folder))


def read_metrics_csv(model_dir) -> list[dict[str, float]]:
    """Every row of <model_dir>/metrics.csv, nan cells included."""
    lines = (model_dir / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, map(float, row.split(",")))) for row in lines[1:]]


def smoke_config(**changes):
    """The RunConfig of flags/smoke.cfg (its model and IFND settings), with `changes` (flag
    names), read with the flags' own parsers."""
    from ifnd_tf import cli, config

    smoke = {}
    with open(os.path.join(ROOT, "flags", "smoke.cfg")) as f:
        for line in f:
            if line.startswith("--"):
                name, value = line[2:].strip().split("=", 1)
                smoke[name] = cli.FLAGS[name].parser.parse(value)
    return config.RunConfig.from_flat({**smoke, **changes})


def small_moco(strategy, num_examples: int, steps_per_epoch: int = 4, **changes):
    """A compiled MomentumContrast as ifnd_tf.train builds it for smoke.cfg (+ changes)."""
    from ifnd_tf import builder

    with strategy.scope():
        return builder.build_model(smoke_config(**changes), num_examples, steps_per_epoch)


def restore_smoke_model(model_dir, **changes):
    """The smoke run's model (digits: 1,437 examples) restored from model_dir's checkpoint."""
    import tensorflow as tf

    from ifnd_tf import builder

    moco = builder.build_model(smoke_config(**changes), 1437, 4)
    tf.train.Checkpoint(model=moco).restore(
        tf.train.latest_checkpoint(str(model_dir / "checkpoints"))).expect_partial()
    return moco


@pytest.fixture(scope="session")
def imagenet_folder(tmp_path_factory):
    """A small generated ImageNet-layout folder (bench/imagenet_like.py): 4 classes x 16 train
    and 4 val JPEGs of 180-500 px, two of them grayscale, two CMYK, one a PNG named .JPEG."""
    from bench import imagenet_like

    root = tmp_path_factory.mktemp("imagenet")
    odd = imagenet_like.write_imagenet_folder(str(root))
    return root, odd


def write_image_folder(root, classes=("cat", "dog"), per_class=3, size=(20, 30)):
    """root/train/<class>/<i>.png of random pixels (seeded)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for c in classes:
        os.makedirs(root / "train" / c)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            tf.io.write_file(str(root / "train" / c / f"{i}.png"), tf.io.encode_png(pixels))


def counting_reads(source):
    """(a copy of source recording every index it reads, the list of those indices)."""
    import numpy as np
    import tensorflow as tf

    reads, read = [], source.read

    def record(index):
        reads.extend(np.atleast_1d(index).tolist())
        return index

    def counted(index):
        recorded = tf.numpy_function(record, [index], tf.int64, stateful=True)
        recorded.set_shape(index.shape)
        return read(recorded)

    return dataclasses.replace(source, read=counted), reads


def free_ports(count):
    """`count` TCP ports on 127.0.0.1 that were free a moment ago (for TF_CONFIG clusters)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def lock_holder(folder):
    """A separate process that holds the writer lock of folder (run_directory.acquire_lock)
    and sleeps, once it holds it."""
    code = ("import sys, time; from ifnd_tf import run_directory; "
            "run_directory.acquire_lock(sys.argv[1]); print('held', flush=True); time.sleep(300)")
    process = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "IFND_FAST_ALLOCATOR": "0"})
    assert process.stdout.readline().strip() == "held"
    return process
