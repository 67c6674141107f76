"""End to end: the real command line on flags/smoke.cfg, in a subprocess."""
import glob
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
from conftest import (
    ROOT,
    event_steps,
    event_tags,
    lock_holder,
    read_metrics_csv,
    restore_smoke_model,
    run_smoke,
    write_image_folder,
)

from ifnd_tf import builder, cli, preemption, run_directory

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
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-12")
    flags = json.loads((model_dir / "flags.json").read_text())
    assert flags["dataset"] == "digits" and flags["epochs"] == 3
    assert {"epoch_loss", "epoch_acc", "epoch_masked", "epoch_alpha", "epoch_fn_precision",
            "epoch_lr"} <= event_tags(model_dir / "logs" / "train")
    assert {"ifnd/alpha", "ifnd/fn_precision", "ifnd/fn_recall", "ifnd/accepted_k10",
            "ifnd/largest_cluster_k20"} <= event_tags(model_dir / "logs" / "ifnd")
    # The last epoch's events are on disk, though the process skips Python's teardown (cli.run).
    assert event_steps(model_dir / "logs" / "train")["epoch_loss"] == [0, 1, 2]
    assert event_steps(model_dir / "logs" / "diagnostics")["diagnostics/curves"] == [0, 1, 2]
    assert event_steps(model_dir / "logs" / "ifnd")["ifnd/alpha"] == [0, 1, 2]


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
    assert (moco.detector.pseudo_labels.numpy() >= 0).mean() == pytest.approx(1.0)
    reloaded = keras.models.load_model(model_dir / "export" / "encoder.keras")
    np.testing.assert_allclose(reloaded(images)["features"].numpy(),
                               loaded.features(images).numpy(), rtol=1e-4, atol=1e-5)


def test_rerun_of_a_finished_run_only_exports(smoke_run):
    model_dir, _ = smoke_run
    rerun = _train(model_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from" in rerun.stdout and "(epoch 3, step 12)" in rerun.stdout
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


LONGER = ("--steps_per_epoch=40", "--export=false")  # 40 steps of ~0.3 s: time to interrupt


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run the interrupted ones must reproduce."""
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    result = _train(model_dir, *LONGER)
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


def _interrupt(model_dir, appears: str, sig, *extra, length=LONGER):
    """Start a LONGER run, send `sig` once checkpoints/<appears> exists; the finished process."""
    command = [sys.executable, "-m", "ifnd_tf.train", "--flagfile=flags/smoke.cfg",
               f"--model_dir={model_dir}", *length, *extra]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    mark = model_dir / "checkpoints" / appears
    deadline = time.monotonic() + 300
    while not mark.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(sig)
    process.stderr_text = process.communicate()[1]
    return process


def _assert_same_run(got_dir, want_dir, **changes):
    got, want = read_metrics_csv(got_dir), read_metrics_csv(want_dir)
    assert [row["epoch"] for row in got] == [0.0, 1.0, 2.0]
    assert list(got[0]) == list(want[0])  # the same columns, in the same order
    # The resumed epoch's row says what its clustering cost, not 0 (it was not redone).
    assert [row["clustering_seconds"] > 0 for row in got] == \
        [row["clustering_seconds"] > 0 for row in want], got
    for a, b in zip(got, want):
        for key in ("loss", "acc", "masked", "alpha", "fn_precision"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5, nan_ok=True), (key, a, b)
    a, b = restore_smoke_model(got_dir, **changes), restore_smoke_model(want_dir, **changes)
    np.testing.assert_array_equal(a.queue_ids.numpy(), b.queue_ids.numpy())
    for x, y in zip(a.detector.weights, b.detector.weights):  # label table, keys, fraction...
        if "last_refresh" not in x.path:  # a wall time
            np.testing.assert_allclose(x.numpy(), y.numpy(), atol=1e-5, err_msg=x.path)
    np.testing.assert_allclose(a.queue_keys.numpy(), b.queue_keys.numpy(), atol=1e-4)
    for x, y in zip(a.encoder.weights, b.encoder.weights):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-3, atol=1e-5)


def test_sigkill_mid_epoch_then_rerun_continues_exactly(tmp_path, uninterrupted):
    killed = tmp_path / "killed"
    # SIGKILL right after the first epoch's checkpoint: into epoch 2 (or its clustering pass).
    process = _interrupt(killed, "ckpt-40.index", signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    # The newest checkpoint on disk, as the rerun scans for it: the kill can land after a
    # checkpoint's files and before TF's state file names it (tf.train.latest_checkpoint: None).
    newest = max(run_directory.checkpoint_numbers(str(killed / "checkpoints")))
    assert newest in (40, 80), newest  # died before the run finished
    latest = str(killed / "checkpoints" / f"ckpt-{newest}")

    resumed = _train(killed, *LONGER)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {latest}" in resumed.stdout
    _assert_same_run(killed, uninterrupted)


@pytest.mark.parametrize("settings", [
    ("--fn_confidence=stability", "--cluster_features=train_keys"),
    ("--fn_confidence=agreement", "--cluster_features=query_view"),
    ("--fn_confidence=neighbours", "--fn_detector=soft_drop"), ("--fn_detector=quantile",),
    ("--fn_oracle=true",), ("--fn_detector=learned_threshold",),
    ("--fn_detector=top_k", "--class_prior=0.1")])
def test_every_detection_setting_resumes_exactly(tmp_path, settings):
    """Killed after the first epoch's checkpoint (in epoch 2's refresh or steps), the rerun
    ends where an uninterrupted run does: every piece of detector state is checkpointed (each
    --fn_confidence, --fn_detector and --cluster_features value, the debiased loss;
    center_view: the tests above)."""
    query_view = "--cluster_features=query_view" in settings  # needs the kNN monitor's pass
    short = ("--export=false", *settings, *(() if query_view else ("--knn_every=0",)))
    want = tmp_path / "uninterrupted"
    assert _train(want, *short).returncode == 0
    killed = tmp_path / "killed"
    process = _interrupt(killed, "ckpt-4.index", signal.SIGKILL, length=short)
    assert process.returncode == -signal.SIGKILL, "finished before the kill: no resume tested"
    resumed = _train(killed, *short)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    _assert_same_run(killed, want, **cli.parse_flag_args(list(settings)))


def test_sigterm_checkpoints_the_step_and_resumes_mid_epoch_exactly(tmp_path, uninterrupted):
    stopped = tmp_path / "stopped"
    # Every 10 steps too; SIGTERM once step 50 is saved: stops at most a few steps later, in epoch 2.
    process = _interrupt(stopped, "ckpt-50.index", signal.SIGTERM, "--checkpoint_every_steps=10")
    assert process.returncode == preemption.PREEMPTED_EXIT_CODE == 75, process.stderr_text[-3000:]
    last = process.stderr_text.strip().splitlines()[-1]
    step = int(last.split("after step ")[1].split(";")[0])
    assert 50 <= step < 80, last
    assert last == (f"ifnd_tf.train: stopped by SIGTERM after step {step}; checkpoint "
                    f"{stopped}/checkpoints/ckpt-{step} written; run the same command to resume")
    assert [row["epoch"] for row in read_metrics_csv(stopped)] == [0.0]  # epoch 2 was not finished

    resumed = _train(stopped, *LONGER)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {stopped}/checkpoints/ckpt-{step} (epoch 1, step {step})" in \
        resumed.stdout
    resumed_line = next(line for line in resumed.stdout.splitlines()
                        if line.startswith("IFND epoch 2: alpha=0.5, clustering_seconds="))
    assert "clustering_seconds=0," not in resumed_line  # the interrupted epoch's own cost
    _assert_same_run(stopped, uninterrupted)


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
    table = restored.detector.train_keys.numpy()
    np.testing.assert_allclose(np.linalg.norm(table, axis=1), 1.0, rtol=1e-4)


def test_quantile_detector_run_masks_its_fraction_without_clustering(tmp_path):
    result = _train(tmp_path, "--fn_detector=quantile", "--fn_quantile=0.25", "--knn_every=0",
                    "--export=false")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics_csv(tmp_path)
    assert [row["fn_fraction"] for row in rows] == [0.0, 0.125, 0.25]  # alpha 0, 0.5, 1
    assert all(row["clustering_seconds"] == 0 and "accepted" not in row for row in rows)
    # The queue of 256 is full from the second epoch (4 steps of 64 per epoch).
    assert [row["masked"] for row in rows] == [0.0, 32.0, 64.0]
    assert np.isnan(rows[0]["fn_precision"])  # warm-up detects nothing
    for row in rows[1:]:
        assert 0 < row["fn_precision"] <= 1 and 0 < row["fn_recall"] <= 1


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
    ("--alpha_start=0.8", ("--alpha_end=0.0 is below --alpha_start=0.8: the acceptance rate "
                           "must not decrease (equal values give a constant rate)")),
    ("--strategy=multi_worker", ("--strategy=multi_worker needs the TF_CONFIG environment "
                                 "variable with the cluster and this worker's task (README, "
                                 "several machines); on one machine use --strategy=mirrored")),
])


def test_bad_input_is_one_clear_line(tmp_path, flag, message):
    extra = ("--alpha_end=0",) if flag.startswith("--alpha") else ()
    result = _train(tmp_path / "run", flag, *extra)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"ifnd_tf.train: error: {message}"
    assert not (tmp_path / "run").exists()  # nothing written


def test_missing_fashion_mnist_tells_how_to_install(tmp_path):
    result = _train(tmp_path, "--dataset=fashion_mnist", f"--data_dir={tmp_path}")
    assert result.returncode != 0
    assert "apt-get install dataset-fashion-mnist" in result.stderr.strip().splitlines()[-1]


def test_plain_moco_baseline_masks_nothing(tmp_path):
    result = _train(tmp_path, "--ifnd=false", "--epochs=2", "--export=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IFND epoch" not in result.stdout
    assert "masked: 0.0000e+00" in result.stdout.splitlines()[-1]


def _xla_run(tmp_path, *extra):
    """A 2-epoch --jit_compile=on run with XLA dumping what it compiles: (the finished process,
    {name of a compiled function: how many modules XLA compiled for it})."""
    dump = tmp_path / "xla_dump"
    command = [sys.executable, "-m", "ifnd_tf.train", "--flagfile=flags/smoke.cfg",
               f"--model_dir={tmp_path / 'run'}", "--jit_compile=on", "--deterministic=false",
               "--epochs=2", "--export=false", *extra]
    result = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "XLA_FLAGS": f"--xla_dump_to={dump}"})
    assert result.returncode == 0, result.stderr[-3000:]
    modules = {name.split(".")[1] for name in os.listdir(dump)}  # module_0007.<name>_<id>__.…
    counts = {}
    for module in modules:
        function = module.rstrip("_").rsplit("_", 1)[0].removeprefix("a_inference_")
        counts[function] = counts.get(function, 0) + 1
    return result, counts


def test_attraction_bfloat16_and_xla_run_and_really_compile(tmp_path):
    """XLA proven by its own dump of the compiled modules, not by an accepted flag."""
    result, compiled = _xla_run(tmp_path, "--fn_strategy=attraction", "--mixed_precision=bfloat16")
    assert "train step: XLA-compiled (the whole step, one replica)" in result.stdout
    assert any("multi_step_on_iterator" in name or "one_step_on_data" in name
               for name in compiled), sorted(compiled)
    last = result.stdout.splitlines()[-1]
    assert "alpha: 1.0000" in last and "masked: 0.0000e+00" not in last


def test_two_replica_xla_compiles_each_replica_s_forward_and_backward(tmp_path):
    """Two logical CPUs: XLA compiles the EMA update, the key forward and the query
    forward/backward once per replica (its dump); the cross-replica ops stay outside."""
    result, compiled = _xla_run(tmp_path, "--cpu_replicas=2", "--sync_bn=false")
    assert builder.PER_REPLICA_COMPILED in result.stdout.splitlines()
    for function in ("update_key_encoder", "_key_embeddings", "_query_loss_and_gradients"):
        assert compiled.get(function) == 2, sorted(compiled)  # one module per replica device
    assert not any("step_on" in name for name in compiled)  # Keras' whole step is not compiled
    assert "IFND epoch 2: alpha=1" in result.stdout
    assert "masked: 0.0000e+00" not in result.stdout.splitlines()[-1]


def _copy_run(smoke_run, tmp_path):
    """A copy of the finished smoke run (3 epochs, checkpoints 1..3), to damage."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(smoke_run[0], copy)
    return copy


def test_lost_state_file_and_newest_checkpoint_resume_from_the_previous(smoke_run, tmp_path):
    run = _copy_run(smoke_run, tmp_path)
    checkpoints = run / "checkpoints"
    numbers = sorted(int(p.name[5:-6]) for p in checkpoints.glob("ckpt-*.index"))
    newest, previous = numbers[-1], numbers[-2]
    for path in checkpoints.glob(f"ckpt-{newest}.*"):
        path.unlink()
    (checkpoints / "checkpoint").unlink()
    other = _train(run, "--learning_rate=0.5")  # the flags check still sees the run
    assert other.returncode != 0 and "--learning_rate: 0.03 -> 0.5" in other.stderr
    result = _train(run, "--knn_every=0", "--export=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {checkpoints}/ckpt-{previous} (epoch 2, step 8)" in result.stdout
    assert "Epoch 1/3" not in result.stdout and "Epoch 3/3" in result.stdout
    assert [row["epoch"] for row in read_metrics_csv(run)] == [0.0, 1.0, 2.0]


def test_damaged_newest_checkpoint_is_set_aside_and_the_run_continues(smoke_run, tmp_path):
    run = _copy_run(smoke_run, tmp_path)
    checkpoints = run / "checkpoints"
    newest = tf.train.latest_checkpoint(str(checkpoints))
    data_file = glob.glob(newest + ".data-*")[0]
    with open(data_file, "r+b") as f:  # garble the middle of the data file
        f.seek(os.path.getsize(data_file) // 2)
        f.write(b"\0garbage\0" * 8)
    result = _train(run, "--knn_every=0", "--export=false")
    assert result.returncode == 0, result.stderr[-3000:]
    notices = [line for line in result.stdout.splitlines() if "is damaged" in line]
    assert len(notices) == 1 and notices[0].startswith(f"checkpoint {newest} is damaged (")
    assert "Checksum does not match" in notices[0] and str(checkpoints / "damaged") in notices[0]
    assert os.path.exists(checkpoints / "damaged" / os.path.basename(data_file))
    assert "(epoch 2, step 8)" in result.stdout and "Epoch 3/3" in result.stdout
    assert tf.train.latest_checkpoint(str(checkpoints)) == newest  # written again, whole


def test_second_process_on_a_model_dir_is_refused_before_writing(tmp_path):
    holder = lock_holder(tmp_path)
    try:
        result = _train(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ifnd_tf.train: error: {tmp_path} is in use by pid {holder.pid} host ")
    assert sorted(os.listdir(tmp_path)) == ["lock"]  # no flags.json, logs or checkpoints


def test_read_only_model_dir_is_one_line(tmp_path):
    result = _train("/sys/ifnd_run")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(
        "ifnd_tf.train: error: cannot write the run directory /sys/ifnd_run: ")


def test_collapsed_embedding_stops_with_the_last_good_checkpoint(tmp_path):
    # lr 30: the keys collapse within a few steps while the loss stays finite (about 5.5).
    result = _train(tmp_path, "--learning_rate=30", "--collapse_steps=4",
                    "--checkpoint_every_steps=1", "--knn_every=0")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ifnd_tf.train: error: the embedding collapsed: key spread "), last
    first_bad = int(last.split("(steps ")[1].split("-")[0])
    kept = f"{tmp_path}/checkpoints/ckpt-{first_bad - 1}"
    assert f"last good checkpoint kept: {kept} " in last
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == kept  # none after it
    assert not (tmp_path / "export").exists()


def test_a_run_that_ends_collapsed_fails_and_exports_nothing(tmp_path):
    """12 steps, fewer than --collapse_steps (50): it must still not end as a success."""
    result = _train(tmp_path, "--learning_rate=1e3", "--knn_every=0")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ifnd_tf.train: error: training ended with the embedding collapsed: "
                           "key spread "), last
    assert not (tmp_path / "export").exists()
    rows = read_metrics_csv(tmp_path)
    assert all(row["acc"] < 1.0 for row in rows), rows  # a collapsed batch scores no hits


def test_resume_on_changed_data_is_refused_saying_what_changed(tmp_path):
    images, run = tmp_path / "images", tmp_path / "run"
    write_image_folder(images, classes=("a", "b", "c", "d"), per_class=20, size=(16, 16))
    folder = (f"--dataset=folder:{images}", "--num_clusters=2,3", "--epochs=2", "--knn_every=0",
              "--export=false")
    first = _train(run, *folder)
    assert first.returncode == 0, first.stderr[-3000:]
    extra = images / "train" / "a" / "extra.png"
    extra.write_bytes((images / "train" / "a" / "0.png").read_bytes())
    added = _train(run, *folder)
    assert added.returncode != 0
    assert added.stderr.strip().splitlines()[-1] == (
        f"ifnd_tf.train: error: --dataset=folder:{images} is not the data this run was trained "
        f"on (80 -> 81 examples; recorded in {run}/dataset.json): put the data back, or use a "
        "new --model_dir")
    extra.unlink()
    (images / "train" / "b" / "3.png").rename(images / "train" / "b" / "renamed.png")
    swapped = _train(run, *folder)
    assert swapped.returncode != 0
    assert "(the same 80 examples, but their file names or sizes differ;" in swapped.stderr
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-8")  # untouched


def test_full_disk_at_a_checkpoint_is_one_line_and_leaves_no_latest(tmp_path):
    import resource

    def small_files_only():  # a write past 200 kB fails (EFBIG) like a full disk (ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    command = [sys.executable, "-m", "ifnd_tf.train", "--flagfile=flags/smoke.cfg",
               f"--model_dir={tmp_path}", "--knn_every=0"]
    result = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True,
                            timeout=600, preexec_fn=small_files_only)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ifnd_tf.train: error: cannot write checkpoint {tmp_path}/checkpoints/"
                           "ckpt-4: "), last
    assert last.endswith("File too large; the previous checkpoints are kept"), last
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) is None
    assert not glob.glob(str(tmp_path / "checkpoints" / "*.index"))


@pytest.mark.parametrize("extra, message", [
    (["--jit_compile=on"], "--jit_compile=on needs --deterministic=false"),
    (["--jit_compile=on", "--deterministic=false", "--cpu_replicas=2"],
     "--jit_compile=on with 2 replicas needs --sync_bn=false"),
])


def test_xla_that_cannot_run_is_refused_in_one_line(tmp_path, extra, message):
    result = _train(tmp_path, *extra)
    assert result.returncode != 0 and message in result.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / "flags.json")


def test_start_up_says_the_step_is_not_compiled(smoke_run):
    _, result = smoke_run
    assert "train step: not XLA-compiled (--jit_compile=auto" in result.stdout
