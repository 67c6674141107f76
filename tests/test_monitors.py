import types

import numpy as np
import pytest
import tensorflow as tf
from conftest import event_tags

from ifnd_tf import data, encoders, knn, monitors, sources
from ifnd_tf.embedding import DatasetEmbedder


def test_knn_monitor_logs_the_knn_top1_of_the_query_backbone(one_replica, tmp_path):
    train, test = sources.load_source("digits", "train"), sources.load_source("digits", "test")
    with one_replica.scope():
        encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=8)
    writer = tf.summary.create_file_writer(str(tmp_path / "logs"))
    monitor = monitors.KnnMonitor(
        one_replica, data.embedding_pipeline(train, 512, 16), train.labels,
        data.embedding_pipeline(test, 512, 16), test.labels, 10, every=3, k=20,
        temperature=0.1, picture_dir=str(tmp_path / "pictures"), writer=writer)
    monitor.set_model(types.SimpleNamespace(encoder=encoder))  # only the query encoder is used
    monitor.set_params({"epochs": 5})
    logged = {}
    for epoch in range(5):
        logs = {}
        monitor.on_epoch_end(epoch, logs)
        logged[epoch] = logs.get("knn_top1")
    # Due at the first epoch, every third and the last: 1, 3, 5 (0-based 0, 2, 4).
    assert [e for e, v in logged.items() if v is not None] == [0, 2, 4]

    def features(source):
        pipeline = data.embedding_pipeline(source, 100, 16)
        return DatasetEmbedder(encoder, one_replica, pipeline, source.num_examples,
                                         output="features")()

    expected = knn.knn_top1(features(train), train.labels, features(test), test.labels, 10,
                                 k=20, temperature=0.1)
    assert logged[4] == pytest.approx(expected)
    assert logged[4] > 0.5  # random conv features already separate digits well (chance 0.1)
    assert (tmp_path / "pictures" / "features_pca.png").stat().st_size > 10_000
    assert "diagnostics/features_pca" in event_tags(tmp_path / "logs")


def test_diagnostics_plotter_skips_a_csv_of_two_writers_and_says_so_once(tmp_path, capsys):
    (tmp_path / "metrics.csv").write_text("epoch,loss\n0,6.9\n1,6.5\n0,6.8\n")
    plotter = monitors.DiagnosticsPlotter(str(tmp_path / "metrics.csv"), str(tmp_path / "p"))
    plotter.on_epoch_end(1, {})
    plotter.on_epoch_end(2, {})  # training goes on; the notice is not repeated
    assert capsys.readouterr().out == (f"curves.png not drawn: {tmp_path}/metrics.csv: line 4 "
                                       "has epoch 0 after epoch 1: two processes wrote this run "
                                       "directory; its metrics cannot be trusted\n")
    assert not (tmp_path / "p" / "curves.png").exists()


def test_diagnostics_plotter_draws_the_csv_to_png_and_tensorboard(tmp_path):
    (tmp_path / "metrics.csv").write_text(  # warm-up epoch: no detection diagnostics (nan)
        "epoch,accepted,fn_precision,fn_recall,knn_top1,purity_k10\n"
        "0,0,nan,nan,0.6,nan\n1,800,0.5,0.2,0.7,0.8\n")
    plotter = monitors.DiagnosticsPlotter(
        str(tmp_path / "metrics.csv"), str(tmp_path / "pictures"),
        tf.summary.create_file_writer(str(tmp_path / "logs")))
    plotter.on_epoch_end(1, {})
    png = (tmp_path / "pictures" / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "diagnostics/curves" in event_tags(tmp_path / "logs")
    np.testing.assert_array_equal(
        tf.image.decode_png(png).shape[:2], [700, 1000])


def test_a_picture_that_cannot_be_written_names_the_file(tmp_path):
    """A full disk (or any write error) at a diagnostics PNG: which file, and that the
    checkpoints are intact, not a bare [Errno 28]."""
    (tmp_path / "diagnostics").write_text("a file where the folder goes")
    path = tmp_path / "diagnostics" / "curves.png"
    with pytest.raises(monitors.RunDirError, match=f"^cannot write {path}: .*; the checkpoints "
                                                   "are intact"):
        monitors.save_picture(b"png", str(path), None, "diagnostics/curves", 0)
