"""The IFND step of every epoch: alpha from the schedule, then the detector's refresh.

`PseudoLabelCallback` is the Keras callback of the design card: at each epoch start it sets the
acceptance rate alpha and lets the model's detector refresh its state (ClusterLabels: embed,
run the k-means hierarchy, accept the most confident alpha of each cluster; detectors.py).
"""
import keras
import numpy as np
import tensorflow as tf

from ifnd_tf import clustering
from ifnd_tf.detectors import EpochInputs
from ifnd_tf.embedding import SharedPass


class PseudoLabelCallback(keras.callbacks.Callback):
    """At each epoch start: alpha = schedule.alpha(epoch), `model.detector.refresh(...)`, log.

    Args:
      schedule: the acceptance rate per epoch (0 in warm-up, growing to alpha_end).
      embedding_data: batches of (index, un-augmented image), every example once: what a
        detector that clusters embeds (data.embedding_pipeline).
      true_labels: diagnostics and the oracle only (never trained on); None if unlabelled.
      log_dir: TensorBoard folder for the ifnd/* scalars (None: none written).
      query_pass: the kNN monitor's query-encoder pass, which query_view clustering reuses.
      resumed_epoch: the epoch a run resumes mid-way: the detector keeps its restored state.

    alpha, clustering_seconds (0 when nothing was clustered) and the detector's epoch logs
    (accepted, fn_precision / fn_recall / purity_k<k> against true labels, ...) join the epoch
    logs: the progress line, metrics.csv and TensorBoard. The detector's details (cluster sizes
    per level, ...) are printed and written to TensorBoard only. Warm-up epochs detect nothing
    and log no detection diagnostics (metrics.csv: nan).
    """

    def __init__(self, schedule: clustering.AcceptanceSchedule,
                 embedding_data: tf.data.Dataset | None = None,
                 true_labels: np.ndarray | None = None, log_dir: str | None = None,
                 query_pass: SharedPass | None = None, resumed_epoch: int | None = None,
                 verbose: bool = True):
        super().__init__()
        self.schedule = schedule
        self.embedding_data = embedding_data
        self.true_labels = true_labels
        self.query_pass = query_pass
        self.resumed_epoch = resumed_epoch
        self.writer = tf.summary.create_file_writer(log_dir) if log_dir else None
        self.verbose = verbose
        self.epoch_logs: dict[str, float] = {}

    @property
    def detector(self):
        detector = self.model.detector
        assert detector is not None, "PseudoLabelCallback needs a model with a detector"
        return detector

    def on_train_begin(self, logs=None):
        if self.detector.count_true_labels and self.true_labels is not None:
            self.detector.set_true_labels(self.true_labels)  # the step counts them

    def on_epoch_begin(self, epoch, logs=None):
        alpha = self.schedule.alpha(epoch)
        inputs = EpochInputs(self.model, self.embedding_data, self.true_labels, self.query_pass,
                             resumed=epoch == self.resumed_epoch)
        own_logs, details = self.detector.refresh(epoch, alpha, inputs)
        self.epoch_logs = {"alpha": alpha, "clustering_seconds": 0.0}
        self.epoch_logs.update(own_logs)
        everything = {**self.epoch_logs, **details}
        if self.writer is not None:
            with self.writer.as_default(step=epoch):
                for name, value in everything.items():
                    tf.summary.scalar(f"ifnd/{name}", value)
            self.writer.flush()
        if self.verbose:
            print(f"IFND epoch {epoch + 1}: " + ", ".join(
                f"{k}={v:.4g}" for k, v in everything.items()), flush=True)

    def on_epoch_end(self, epoch, logs=None):
        """Headline numbers join the progress line and the TensorBoard callback's scalars."""
        if logs is not None:
            logs.update(self.epoch_logs)
            self.detector.end_epoch(logs)
