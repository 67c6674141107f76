"""End to end: the real command line on flags/smoke.cfg, in a subprocess."""
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, event_tags, read_metrics_csv, restore_smoke_model, run_smoke

pytestmark = pytest.mark.e2e


def _train(model_dir, *extra):
    return run_smoke("ifnd_tf.train", model_dir, *extra)


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
            "epoch_lr"} <= event_tags(model_dir / "logs" / "train")
    assert {"ifnd/alpha", "ifnd/fn_precision", "ifnd/fn_recall", "ifnd/accepted_k10",
            "ifnd/largest_cluster_k20"} <= event_tags(model_dir / "logs" / "ifnd")


def test_warmup_logs_no_detection_and_acc_is_unmasked(smoke_run):
    model_dir, _ = smoke_run
    rows = read_metrics_csv(model_dir)
    # Warm-up detects nothing: no FN precision / recall / purity (nan), not a fake 0.
    assert all(np.isnan(rows[0][k]) for k in ("fn_precision", "fn_recall", "purity_k10"))
    assert all(np.isfinite(row["fn_precision"]) for row in rows[1:])
    assert rows[0]["accepted"] == 0.0
    # acc ranks the positive against every negative (comparable with plain MoCo);
    # acc_without_fn leaves out the detected false negatives, so it can only be higher.
    assert rows[0]["acc"] == rows[0]["acc_without_fn"]  # nothing masked in warm-up
    assert rows[2]["masked"] > 0 and all(r["acc_without_fn"] >= r["acc"] for r in rows)


def test_saved_model_matches_the_trained_encoder(smoke_run):
    model_dir, _ = smoke_run
    moco = restore_smoke_model(model_dir)
    encoder = moco.encoder
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


def test_rerun_of_a_finished_run_only_exports(smoke_run):
    model_dir, _ = smoke_run
    rerun = _train(model_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from" in rerun.stdout and "(epoch 3)" in rerun.stdout
    assert "Epoch " not in rerun.stdout and "exported encoder" in rerun.stdout


def test_model_dir_with_other_flags_is_refused(smoke_run):
    model_dir, _ = smoke_run
    before = sorted(os.listdir(model_dir / "checkpoints"))
    result = _train(model_dir, "--epochs=4", "--temperature=0.1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"ifnd_tf.train: error: --model_dir={model_dir} holds a run with other flags "
        "(--epochs: 3 -> 4; --temperature: 0.2 -> 0.1); use a new --model_dir or the same flags")
    assert sorted(os.listdir(model_dir / "checkpoints")) == before
    assert json.loads((model_dir / "flags.json").read_text())["epochs"] == 3


def test_sigkill_mid_epoch_then_rerun_continues_exactly(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    longer = ("--steps_per_epoch=40", "--export=false")
    command = [sys.executable, "-m", "ifnd_tf.train", "--flagfile=flags/smoke.cfg",
               f"--model_dir={killed}", *longer]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    first = killed / "checkpoints" / "ckpt-1.index"
    deadline = time.monotonic() + 300
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    latest = tf.train.latest_checkpoint(str(killed / "checkpoints"))
    assert latest.endswith(("ckpt-1", "ckpt-2")), latest  # died before the run finished

    resumed = _train(killed, *longer)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {latest}" in resumed.stdout
    uninterrupted = _train(clean, *longer)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    got, want = read_metrics_csv(killed), read_metrics_csv(clean)
    assert [row["epoch"] for row in got] == [0.0, 1.0, 2.0]
    for a, b in zip(got, want):
        for key in ("loss", "acc", "masked", "alpha", "fn_precision"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5, nan_ok=True), (key, a, b)
    a, b = restore_smoke_model(killed), restore_smoke_model(clean)
    np.testing.assert_array_equal(a.queue_ids.numpy(), b.queue_ids.numpy())
    np.testing.assert_array_equal(a.pseudo_labels.numpy(), b.pseudo_labels.numpy())
    np.testing.assert_allclose(a.queue_keys.numpy(), b.queue_keys.numpy(), atol=1e-4)
    for x, y in zip(a.encoder.weights, b.encoder.weights):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-3, atol=1e-5)


def test_train_keys_run_clusters_the_keys_training_wrote(tmp_path):
    # 22 steps of 64 per epoch: one pass leaves 29 of the 1,437 digits without a key.
    result = _train(tmp_path, "--cluster_features=train_keys", "--steps_per_epoch=0",
                    "--epochs=4", "--knn_every=0", "--export=false")
    assert result.returncode == 0, result.stderr[-3000:]
    ifnd_lines = {line.split(":")[0]: line for line in result.stdout.splitlines()
                  if line.startswith("IFND epoch")}
    assert "clustered_train_keys=0," in ifnd_lines["IFND epoch 2"]  # centre-view pass instead
    assert "clustered_train_keys=1," in ifnd_lines["IFND epoch 4"]
    restored = restore_smoke_model(tmp_path, cluster_features="train_keys")  # checkpointed
    table = restored.train_keys.numpy()
    np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, rtol=1e-4)


def test_same_seed_same_loss_curve(smoke_run, tmp_path):
    model_dir, _ = smoke_run
    again = _train(tmp_path, "--export=false")
    assert again.returncode == 0, again.stderr[-3000:]
    learned = ("loss", "acc", "masked", "alpha", "fn_precision", "fn_recall")
    curves = [[[row[k] for k in learned] for row in read_metrics_csv(d)]
              for d in (tmp_path, model_dir)]
    np.testing.assert_array_equal(*curves)
    other = _train(tmp_path / "other", "--export=false", "--seed=1")
    assert read_metrics_csv(tmp_path / "other")[0]["loss"] != read_metrics_csv(model_dir)[0]["loss"]
    assert other.returncode == 0


def test_nan_loss_stops_with_the_step_and_writes_no_checkpoint(tmp_path):
    result = _train(tmp_path, "--learning_rate=1e30")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ifnd_tf.train: error: loss is nan at step ")
    assert "last good checkpoint kept: none yet" in last
    assert not (tmp_path / "checkpoints").exists()


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


def test_attraction_bfloat16_and_xla_run_and_really_compile(tmp_path):
    """XLA proven by its own dump of the compiled modules, not by an accepted flag."""
    dump = tmp_path / "xla_dump"
    command = [sys.executable, "-m", "ifnd_tf.train", "--flagfile=flags/smoke.cfg",
               f"--model_dir={tmp_path / 'run'}", "--fn_strategy=attraction",
               "--mixed_precision=bfloat16", "--jit_compile=on", "--deterministic=false",
               "--epochs=2", "--export=false"]
    result = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "XLA_FLAGS": f"--xla_dump_to={dump}"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train step: XLA-compiled" in result.stdout
    assert any("multi_step_on_iterator" in name or "one_step_on_data" in name
               for name in os.listdir(dump)), sorted(os.listdir(dump))[:10]
    last = result.stdout.splitlines()[-1]
    assert "alpha: 1.0000" in last and "masked: 0.0000e+00" not in last


@pytest.mark.parametrize("extra, message", [
    (["--jit_compile=on"], "--jit_compile=on needs --deterministic=false"),
    (["--jit_compile=on", "--deterministic=false", "--cpu_replicas=2"],
     "--jit_compile=on needs one replica, got 2"),
])
def test_xla_that_cannot_run_is_refused_in_one_line(tmp_path, extra, message):
    result = _train(tmp_path, *extra)
    assert result.returncode != 0 and message in result.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "flags.json")


def test_start_up_says_the_step_is_not_compiled(smoke_run):
    _, result = smoke_run
    assert "train step: not XLA-compiled (--jit_compile=auto" in result.stdout
