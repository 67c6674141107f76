import pytest
import tensorflow as tf

from ifnd_tf import callbacks


def test_non_finite_loss_guard_names_step_and_kept_checkpoint(tmp_path):
    checkpoint = tf.train.Checkpoint(step=tf.Variable(1))
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=2)
    manager.save(checkpoint_number=2)
    guard = callbacks.StopOnNonFiniteLoss(manager, steps_per_epoch=10)
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(3, {"loss": 1.5})
    with pytest.raises(callbacks.DivergenceError,
                       match=f"loss is inf at step 25 \\(epoch 3, batch 5\\);.*{tmp_path}/ckpt-2"):
        guard.on_train_batch_end(4, {"loss": float("inf")})


def test_metrics_csv_drops_rows_a_resumed_run_redoes(tmp_path):
    path = str(tmp_path / "metrics.csv")
    log = callbacks.MetricsCsv(path, completed_epochs=0)
    for epoch in range(3):
        log.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1), "acc": 0.5})
    callbacks.MetricsCsv(path, completed_epochs=2)  # killed after logging epoch 2, before saving
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "epoch,acc,loss", "0,0.5,1.0", "1,0.5,0.5"]


def test_metrics_csv_keeps_a_metric_that_first_appears_after_a_resume(tmp_path):
    path = str(tmp_path / "metrics.csv")
    log = callbacks.MetricsCsv(path, completed_epochs=0)
    log.on_epoch_end(0, {"loss": 2.0})
    resumed = callbacks.MetricsCsv(path, completed_epochs=1)
    resumed.on_epoch_end(1, {"loss": 1.0, "knn_top1": 0.5})
    resumed.on_epoch_end(2, {"loss": 0.5, "knn_top1": 0.75})
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "epoch,knn_top1,loss", "0,nan,2.0", "1,0.5,1.0", "2,0.75,0.5"]
    assert [row.get("knn_top1") for row in callbacks.read_metrics(path)] == [None, 0.5, 0.75]


def test_epoch_timer_adds_seconds_to_the_logs():
    timer = callbacks.EpochTimer()
    timer.on_epoch_begin(0)
    logs = {"loss": 1.0}
    timer.on_epoch_end(0, logs)
    assert logs["seconds"] >= 0.0 and logs["loss"] == 1.0


def test_read_metrics_skips_cells_without_a_number(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,knn_top1,loss,seconds\n0,0.5,6.9,30.0\n1,nan,6.5,31.5\n2,NA,,29.0\n")
    history = callbacks.read_metrics(str(path))
    assert history == [{"epoch": 1, "knn_top1": 0.5, "loss": 6.9, "seconds": 30.0},
                       {"epoch": 2, "loss": 6.5, "seconds": 31.5},
                       {"epoch": 3, "seconds": 29.0}]
    assert callbacks.read_metrics(str(tmp_path / "missing.csv")) == []


def test_read_metrics_refuses_rows_two_writers_interleaved(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,loss\n0,6.9\n1,6.5\n2,6.1\n1,6.4\n")
    with pytest.raises(callbacks.RunDirError, match=f"^{path}: line 5 has epoch 1 after epoch 2: "
                                                    "two processes wrote this run directory"):
        callbacks.read_metrics(str(path))
    path.write_text("epoch,loss\n3,6.1\n4,6.0\n")  # begun again after the file was deleted
    assert [row["epoch"] for row in callbacks.read_metrics(str(path))] == [4, 5]


def test_writer_lock_check_stops_before_the_epoch_is_logged(tmp_path):
    from ifnd_tf import run_directory

    run_directory.acquire_lock(str(tmp_path))
    check = callbacks.WriterLockCheck(str(tmp_path))
    check.on_epoch_end(0)
    (tmp_path / "lock").unlink()
    with pytest.raises(callbacks.RunDirError, match=f"^{tmp_path}/lock was removed"):
        check.on_epoch_end(1)


@pytest.mark.parametrize("text", ["epoch,loss\nx,1.0\n", "loss\n1.0\n", "epoch,loss\n0,1\n\x00\"\n"])
def test_a_damaged_metrics_csv_is_one_line_naming_it(tmp_path, text):
    path = tmp_path / "metrics.csv"
    path.write_text(text)
    for read in (lambda: callbacks.read_metrics(str(path)),
                 lambda: callbacks.MetricsCsv(str(path), completed_epochs=1)):
        with pytest.raises(callbacks.RunDirError,
                           match=f"^{path} is damaged \\(.*\\); the checkpoints are intact"):
            read()
