"""End to end on the paper-scale path: flags/imagenet.cfg (ImageNet-1k) and flags/imagenet100.cfg
themselves on a generated ImageNet-layout folder, only the size flags overridden. imagenet.cfg:
training, a clustering pass, a kill + resume, the kNN monitor, export; imagenet100.cfg (the same
code path, other values): one epoch with a clustering pass, to keep the module short."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_cli

pytestmark = pytest.mark.e2e
# Sizes only: ResNet-50 at 1/8 width on 32 px crops, 2 epochs of 2 steps of the whole 64 train
# images (the flagfiles' --key_bn_splits=8 needs groups of >= 8 keys), k list within them.
SMALL = ("--image_size=32", "--width_multiplier=0.125", "--epochs=2", "--steps_per_epoch=2",
         "--batch_size=64", "--queue_size=64", "--num_clusters=4,8", "--warmup_epochs=1",
         "--embed_batch_size=32")


def _args(root, model_dir, *extra, flagfile="imagenet.cfg"):
    return [f"--flagfile=flags/{flagfile}", f"--dataset=folder:{root}",
            f"--model_dir={model_dir}", *SMALL, *extra]


def _check_flagfile_kept(flagfile, saved, overridden):
    """Every setting of the flagfile that the command line did not override is the run's."""
    with open(f"{ROOT}/flags/{flagfile}") as f:
        lines = f.read().splitlines()
    values = dict(line[2:].split("=", 1) for line in lines if line.startswith("--"))
    names = {arg[2:].split("=", 1)[0] for arg in overridden} | {"dataset", "model_dir"}
    kept = {name: value for name, value in values.items() if name not in names}
    assert {"backbone", "key_bn_splits", "kmeans_backend", "temperature"} <= set(kept)
    for name, value in kept.items():
        run = saved[name]
        if isinstance(run, list):
            assert run == value.split(","), name
        elif isinstance(run, bool):
            assert run == (value == "true"), name
        elif isinstance(run, (int, float)):
            assert run == float(value), name
        else:
            assert str(run) == value, name


def test_imagenet_cfg_trains_clusters_resumes_and_exports(imagenet_folder, tmp_path):
    root, odd = imagenet_folder
    model_dir = tmp_path / "run"
    # First run: killed once epoch 1 (warm-up) is checkpointed, inside epoch 2. The kNN monitor
    # (not run-defining) runs only in the resumed run, to keep the test short.
    process = subprocess.Popen(
        [sys.executable, "-m", "ifnd_tf.train", *_args(root, model_dir, "--knn_every=0")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = model_dir / "checkpoints" / "ckpt-2.index"  # numbered by step: 2 steps per epoch
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the checkpoint state file is written after the index
    process.send_signal(signal.SIGKILL)
    output = process.communicate()[0]
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-2"), output
    assert "skipped" not in output  # grayscale, CMYK and the PNG named .JPEG all decode
    assert f"checked 64 images in {root}/train: 64 decoded" in output

    resumed = run_cli("ifnd_tf.train", *_args(root, model_dir, "--knn_max_train=40"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out = resumed.stdout
    assert f"checked 64 images in {root}/train: 0 decoded, 64 unchanged" in out  # cached
    assert f"resumed from {model_dir}/checkpoints/ckpt-2 (epoch 1, step 2)" in out, out[-3000:]
    assert "Epoch 1/2" not in out and "Epoch 2/2" in out
    # The clustering pass labelled all 64 train images, the odd ones included.
    assert "IFND epoch 2: alpha=1, clustering_seconds=" in out and "accepted=64," in out
    assert "knn_top1" in out and "exported encoder" in out

    saved = json.loads((model_dir / "flags.json").read_text())
    _check_flagfile_kept("imagenet.cfg", saved, [*SMALL, "--knn_max_train=40"])
    assert (saved["backbone"], saved["kmeans_backend"], saved["key_bn_splits"]) == \
        ("resnet50", "faiss", 8)
    encoder = tf.saved_model.load(str(model_dir / "export" / "saved_model"))
    embedding = encoder.embedding(tf.random.uniform([3, 32, 32, 3], seed=1)).numpy()
    assert embedding.shape == (3, 128)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-4)
    assert len(odd["cmyk"]) == 2 and len(odd["gray"]) == 2


def test_imagenet100_cfg_trains_and_clusters(imagenet_folder, tmp_path):
    root, _ = imagenet_folder
    model_dir = tmp_path / "run"
    # One epoch, clustered from its start (no warm-up); no monitor, no export: imagenet.cfg's
    # test above covers those on the same code path.
    light = ("--epochs=1", "--warmup_epochs=0", "--knn_every=0", "--export=false")
    result = run_cli("ifnd_tf.train", *_args(root, model_dir, *light, flagfile="imagenet100.cfg"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IFND epoch 1: alpha=1, clustering_seconds=" in result.stdout
    assert "accepted=64," in result.stdout, result.stdout[-3000:]
    saved = json.loads((model_dir / "flags.json").read_text())
    _check_flagfile_kept("imagenet100.cfg", saved, [*SMALL, *light])
    assert (saved["queue_size"], saved["num_clusters"]) == (64, ["4", "8"])


def test_empty_class_folder_is_one_clear_line(tmp_path):
    from bench import imagenet_like

    imagenet_like.write_imagenet_folder(str(tmp_path / "data"), num_classes=2, train_per_class=2,
                                        val_per_class=1, empty_train_classes=1, odd_kinds=())
    result = run_cli("ifnd_tf.train", *_args(tmp_path / "data", tmp_path / "run"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"ifnd_tf.train: error: --dataset=folder:{tmp_path}/data/train: 1 of 3 class folders "
        "hold no readable image: n00000002")
    assert not (tmp_path / "run" / "checkpoints").exists()
