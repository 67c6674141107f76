"""Evaluation callbacks: they watch pre-training and never change it.

  KnnMonitor          weighted kNN top-1 of the query backbone (`knn_top1`) and a PCA picture of
                      the test features coloured by class
  DiagnosticsPlotter  the curves of metrics.csv (FN precision / recall, purity per level,
                      accepted samples, kNN top-1) as a PNG

Pictures go to <model_dir>/diagnostics/ and to TensorBoard as images.
"""
import os

import keras
import numpy as np
import tensorflow as tf

from ifnd_tf import callbacks, knn, plots
from ifnd_tf.embedding import DatasetEmbedder, SharedPass
from ifnd_tf.errors import RunDirError

PCA_POINTS = 2000  # test examples drawn in the PCA picture: enough to see classes, still legible


def save_picture(png: bytes, path: str, writer: tf.summary.SummaryWriter | None, name: str,
                 step: int) -> None:
    """Write a PNG file and log the same picture as a TensorBoard image (given a writer)."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(png)
        os.replace(path + ".tmp", path)
    except OSError as e:
        raise RunDirError(f"cannot write {path}: {e.strerror or e}; the checkpoints are intact "
                          "(free space and run the same command to resume)") from e
    if writer is not None:
        with writer.as_default(step=step):
            tf.summary.image(name, tf.image.decode_png(png, channels=4)[None])
        writer.flush()


class KnnMonitor(keras.callbacks.Callback):
    """Weighted kNN top-1 of the test split against the train split, query backbone features.

    At the first epoch, every `every` epochs and at the last one: adds `knn_top1` to the epoch
    logs (progress line, TensorBoard, metrics.csv; place it before those callbacks) and draws
    the PCA picture of the test features, coloured by true class. Given `train_pass` (a
    SharedPass of the query encoder over `train_data` with a "features" table), the train
    split's features come from it, so the query-view clustering reuses the pass.
    """

    def __init__(self, strategy: tf.distribute.Strategy, train_data: tf.data.Dataset,
                 train_labels: np.ndarray, test_data: tf.data.Dataset, test_labels: np.ndarray,
                 num_classes: int, every: int, k: int = 200, temperature: float = 0.1,
                 picture_dir: str | None = None,
                 writer: tf.summary.SummaryWriter | None = None, seed: int = 0,
                 train_pass: SharedPass | None = None):
        super().__init__()
        self.strategy = strategy
        self.train_pass = train_pass
        self.data = {"train": train_data, "test": test_data}
        self.labels = {"train": np.asarray(train_labels), "test": np.asarray(test_labels)}
        self.num_classes = num_classes
        self.every = every
        self.k = k
        self.temperature = temperature
        self.picture_dir = picture_dir
        self.writer = writer
        rng = np.random.default_rng(seed)
        self.pca_points = np.sort(rng.permutation(len(test_labels))[:PCA_POINTS])
        self.embedders: dict[str, DatasetEmbedder] = {}

    def is_due(self, epoch: int) -> bool:
        return epoch == 0 or (epoch + 1) % self.every == 0 or epoch + 1 == self.params["epochs"]

    def on_epoch_end(self, epoch, logs=None):
        if not self.is_due(epoch):
            return
        if not self.embedders:  # built once the model is known; reused every time
            self.embedders = {split: DatasetEmbedder(
                self.model.encoder, self.strategy, ds, len(self.labels[split]), output="features")
                for split, ds in self.data.items()
                if not (split == "train" and self.train_pass is not None)}
        features = {split: embedder() for split, embedder in self.embedders.items()}
        if self.train_pass is not None:
            features["train"] = self.train_pass()["features"]
        top1 = knn.knn_top1(features["train"], self.labels["train"], features["test"],
                                 self.labels["test"], self.num_classes, self.k, self.temperature)
        if logs is not None:
            logs["knn_top1"] = top1
        if self.picture_dir:
            points = plots.pca_2d(features["test"][self.pca_points])
            png = plots.scatter_png(points, self.labels["test"][self.pca_points],
                                    f"test backbone features, PCA, epoch {epoch + 1} "
                                    f"(kNN top-1 {top1:.3f})")
            save_picture(png, os.path.join(self.picture_dir, "features_pca.png"), self.writer,
                         "diagnostics/features_pca", epoch)


class DiagnosticsPlotter(keras.callbacks.Callback):
    """After each epoch, draws the curves of everything in metrics.csv so far (a resumed run's
    earlier epochs included) to <picture_dir>/curves.png and TensorBoard. Place it after the
    callback that writes metrics.csv."""

    def __init__(self, metrics_csv: str, picture_dir: str,
                 writer: tf.summary.SummaryWriter | None = None):
        super().__init__()
        self.metrics_csv = metrics_csv
        self.picture_dir = picture_dir
        self.writer = writer
        self.refused = False  # said once that metrics.csv cannot be drawn

    def on_epoch_end(self, epoch, logs=None):
        try:
            history = callbacks.read_metrics(self.metrics_csv)
        except RunDirError as e:  # rows of two writers from an earlier run: no picture, no stop
            if not self.refused:
                print(f"curves.png not drawn: {e}", flush=True)
            self.refused = True
            return
        png = plots.curves_png(history)
        save_picture(png, os.path.join(self.picture_dir, "curves.png"), self.writer,
                     "diagnostics/curves", epoch)
