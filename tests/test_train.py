"""End to end: the real command line on flags/smoke.cfg, in a subprocess."""
import glob
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(model_dir, *extra):
    command = [sys.executable, "-m", "ifnd_tf.train", "--flagfile=flags/smoke.cfg",
               f"--model_dir={model_dir}", *extra]
    return subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _scalar_tags(folder):
    tags = set()
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        events = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        events.Reload()
        tags |= set(events.Tags()["tensors"])
    return tags


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("smoke")
    result = _train(model_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result


def test_smoke_run_prints_ifnd_progress(smoke_run):
    _, result = smoke_run
    assert "IFND epoch 1: alpha=0" in result.stdout
    assert "IFND epoch 3: alpha=1" in result.stdout
    assert "fn_precision=" in result.stdout


def test_smoke_run_writes_checkpoints_flags_and_tensorboard(smoke_run):
    model_dir, _ = smoke_run
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-3")
    flags = json.loads((model_dir / "flags.json").read_text())
    assert flags["dataset"] == "digits" and flags["epochs"] == 3
    assert {"epoch_loss", "epoch_acc", "epoch_masked", "epoch_alpha", "epoch_fn_precision",
            "epoch_lr"} <= _scalar_tags(model_dir / "logs" / "train")
    assert {"ifnd/alpha", "ifnd/fn_precision", "ifnd/fn_recall", "ifnd/accepted_k10",
            "ifnd/largest_cluster_k20"} <= _scalar_tags(model_dir / "logs" / "ifnd")


def test_saved_model_matches_the_trained_encoder(smoke_run):
    model_dir, _ = smoke_run
    from ifnd_tf import model

    encoder = model.build_encoder("small", 16, 0.25, embedding_dim=32)
    moco = model.MomentumContrast(encoder, model.build_encoder("small", 16, 0.25, embedding_dim=32),
                                  num_examples=1437, queue_size=256, num_levels=2)
    checkpoint = tf.train.Checkpoint(model=moco)
    checkpoint.restore(tf.train.latest_checkpoint(str(model_dir / "checkpoints"))).expect_partial()
    images = tf.random.uniform([5, 16, 16, 3], seed=3)
    loaded = tf.saved_model.load(str(model_dir / "export" / "saved_model"))
    np.testing.assert_allclose(loaded.embedding(images).numpy(),
                               encoder(images, training=False)["embedding"].numpy(),
                               rtol=1e-4, atol=1e-5)
    # The checkpoint carries the IFND state too: a full queue and the last epoch's labels.
    assert (moco.queue_ids.numpy() >= 0).all()
    assert (moco.pseudo_labels.numpy() >= 0).mean() == pytest.approx(1.0)
    reloaded = keras.models.load_model(model_dir / "export" / "encoder.keras")
    np.testing.assert_allclose(reloaded(images)["features"].numpy(),
                               loaded.features(images).numpy(), rtol=1e-4, atol=1e-5)


def test_rerun_resumes_from_last_epoch(smoke_run, tmp_path):
    model_dir, _ = smoke_run
    resumed = _train(model_dir, "--epochs=4", "--export=false")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout and "(epoch 3)" in resumed.stdout
    assert "Epoch 1/4" not in resumed.stdout and "Epoch 4/4" in resumed.stdout
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-4")


def test_two_replica_run(tmp_path):
    result = _train(tmp_path, "--cpu_replicas=2", "--epochs=2", "--export=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IFND epoch 2: alpha=1" in result.stdout


@pytest.mark.parametrize("flag, message", [
    ("--queue_size=100", "--queue_size=100 must be a positive multiple of --batch_size=64"),
    ("--num_clusters=10,5000", "--num_clusters: k=[5000] larger than the dataset (1437 examples)"),
    ("--dataset=folder:/nonexistent", "--dataset=folder:/nonexistent: no such folder"),
])
def test_bad_input_is_one_clear_line(tmp_path, flag, message):
    result = _train(tmp_path, flag)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"ifnd_tf.train: error: {message}"
    assert not (tmp_path / "checkpoints").exists()


def test_missing_fashion_mnist_tells_how_to_install(tmp_path):
    result = _train(tmp_path, "--dataset=fashion_mnist", f"--data_dir={tmp_path}")
    assert result.returncode != 0
    assert "apt-get install dataset-fashion-mnist" in result.stderr.strip().splitlines()[-1]


def test_plain_moco_baseline_masks_nothing(tmp_path):
    result = _train(tmp_path, "--ifnd=false", "--epochs=2", "--export=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IFND epoch" not in result.stdout
    assert "masked: 0.0000e+00" in result.stdout.splitlines()[-1]


def test_attraction_bfloat16_and_xla_run(tmp_path):
    result = _train(tmp_path, "--fn_strategy=attraction", "--mixed_precision=bfloat16",
                    "--jit_compile=on", "--epochs=2", "--export=false")
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.splitlines()[-1]
    assert "alpha: 1.0000" in last and "masked: 0.0000e+00" not in last
