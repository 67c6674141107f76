"""The run's plumbing as Keras callbacks: epoch timer, lr logger, writer-lock check, metrics.csv
(writer and reader) and the NaN guard (checkpointing: preemption.py). The IFND pass itself is
pseudo_labels.py."""
import csv
import math
import os
import time

import keras
import tensorflow as tf

from ifnd_tf import run_directory
from ifnd_tf.errors import DivergenceError, RunDirError


class EpochTimer(keras.callbacks.Callback):
    """Adds `seconds`, the epoch's wall time, to the epoch logs.

    First in the callback list, it starts before the pseudo-label pass and stops before the
    kNN monitor: the time of training plus clustering, not of the evaluation.
    """

    def __init__(self):
        super().__init__()
        self.start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["seconds"] = time.perf_counter() - self.start


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate to the epoch logs (TensorBoard, progress)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class WriterLockCheck(keras.callbacks.Callback):
    """At each epoch end, before anything of the epoch is logged: stops the run if its writer
    lock is no longer its own (run_directory.check_lock_held), so no row of it lands in a
    directory another process may now write. Place it before the loggers."""

    def __init__(self, run_dir: str):
        super().__init__()
        self.run_dir = run_dir

    def on_epoch_end(self, epoch, logs=None):
        run_directory.check_lock_held(self.run_dir)


class MetricsCsv(keras.callbacks.Callback):
    """One row of epoch logs per epoch in a CSV file, kept consistent across resumes.

    Rows of epochs a resumed run will train again (killed after logging, before the checkpoint)
    are dropped first, so the file always has one row per completed epoch. A metric that first
    appears in a later epoch (or after a resume) gets a column: the file is rewritten with it,
    earlier rows holding nan there.
    """

    def __init__(self, path: str, completed_epochs: int):
        super().__init__()
        self.path = path
        self.columns: list[str] = []
        self.rows: list[dict[str, str]] = []
        if os.path.exists(path):
            try:
                with open(path) as f:
                    reader = csv.DictReader(f)
                    self.columns = [c for c in reader.fieldnames or [] if c != "epoch"]
                    self.rows = [row for row in reader if int(row["epoch"]) < completed_epochs]
            except (KeyError, TypeError, ValueError, csv.Error) as e:
                raise damaged(path, e, "move it aside to start a new one") from e
            self._rewrite()

    def _rewrite(self) -> None:
        with open(self.path + ".tmp", "w") as f:
            f.write(",".join(["epoch", *self.columns]) + "\n")
            f.writelines(self._line(row) for row in self.rows)
        os.replace(self.path + ".tmp", self.path)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": str(epoch), **{k: repr(float(v)) for k, v in logs.items()}}
        self.rows.append(row)
        new = sorted(set(logs) - set(self.columns))
        if new:
            self.columns = sorted([*self.columns, *new])
            self._rewrite()
            return
        with open(self.path, "a") as f:
            f.write(self._line(row))

    def _line(self, row: dict[str, str]) -> str:
        return ",".join([row["epoch"], *(row.get(c) or "nan" for c in self.columns)]) + "\n"


def read_metrics(path: str) -> list[dict[str, float]]:
    """Rows of a metrics.csv as {column: value} with a 1-based `epoch`; cells that hold no
    number (nan, NA, empty: not measured that epoch) are left out.

    One writer keeps one row per epoch, in order (MetricsCsv); rows out of order mean two
    processes wrote the run, and its numbers are refused rather than read from the wrong row.
    """
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            rows = list(csv.DictReader(f))
        return _history(path, rows)
    except RunDirError:
        raise
    except (KeyError, TypeError, ValueError, csv.Error) as e:
        raise damaged(path, e, "move it aside") from e


def damaged(path: str, error: Exception, remedy: str) -> RunDirError:
    """One line for a run-directory file that does not read back."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return RunDirError(f"{path} is damaged ({reason}); the checkpoints are intact: {remedy}")


def _history(path: str, rows: list[dict]) -> list[dict[str, float]]:
    history = []
    for row in rows:
        record = {}
        for column, cell in row.items():
            try:
                value = float(cell)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                record[column] = value
        record["epoch"] = int(record["epoch"]) + 1
        if history and record["epoch"] != history[-1]["epoch"] + 1:
            raise RunDirError(f"{path}: line {len(history) + 2} has epoch {row['epoch']} after "
                              f"epoch {history[-1]['epoch'] - 1}: two processes wrote this run "
                              "directory; its metrics cannot be trusted")
        history.append(record)
    return history


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops at the first non-finite loss, before any checkpoint of the broken state is written.

    The checkpoint callback saves only at epoch end, so the last good checkpoint survives.
    """

    def __init__(self, manager: tf.train.CheckpointManager, steps_per_epoch: int):
        super().__init__()
        self.manager = manager
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            step = self.epoch * self.steps_per_epoch + batch + 1
            raise DivergenceError(
                f"loss is {loss} at step {step} (epoch {self.epoch + 1}, batch {batch + 1}); "
                f"stopped, last good checkpoint kept: {self.manager.latest_checkpoint or 'none yet'}")
