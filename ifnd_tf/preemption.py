"""Step-level checkpoints and pre-emption (SIGTERM / SIGINT), resumable at the exact step.

What clusters, Kubernetes and TPU VMs send before they take a machine away is SIGTERM, with a
grace period. On SIGTERM or SIGINT the run finishes the step in progress, writes a checkpoint
of that step and exits with PREEMPTED_EXIT_CODE; the same command resumes at that step, in
the middle of the epoch, exactly: the input stream is a function of (seed, step)
(data.train_pipeline(start_step=...)), the pseudo-label table, queue and optimizer are in the
checkpoint, and so are the running means of the interrupted epoch, so its metrics.csv row is
the one an uninterrupted run writes. A second signal acts as it would without this (kills).
As TF's PreemptionCheckpointHandler and Keras' BackupAndRestore(save_freq=N) do, but on one
machine: under multi_worker a signal that reaches one worker only is not coordinated.

Checkpoints are numbered by global step (ckpt-<step>), so the newest is the largest number
whatever kind it is (epoch end, every N steps, pre-emption).
"""
import contextlib
import dataclasses
import re
import signal

import keras
import tensorflow as tf

from ifnd_tf import run_directory

# EX_TEMPFAIL (sysexits.h): a temporary failure, try again. Distinct from 0 (done) and 1 (error).
PREEMPTED_EXIT_CODE = 75


def os_reason(error: Exception) -> str:
    """The first line of a write error without TF's op decoration ({{function_node ..}}, [Op:..])."""
    line = str(error).strip().splitlines()[0]
    return re.sub(r"^\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]$", "", line)


class Preempted(Exception):
    """A stop signal arrived; the state of `step` is checkpointed (not an error)."""

    def __init__(self, signal_name: str, step: int, checkpoint: str | None, saved: bool = True,
                 during: str | None = None):
        if during:  # after training: the checkpoints are complete
            where = f"{during} was finished first"
        elif saved:
            where = f"checkpoint {checkpoint} written"
        else:  # saves held (the embedding looks collapsed): nothing of this step was written
            where = (f"step {step} not saved (the embedding looked collapsed); newest checkpoint: "
                     f"{checkpoint or 'none yet'}")
        super().__init__(f"stopped by {signal_name} after step {step}; {where}; run the same "
                         "command to resume")
        self.step = step
        self.checkpoint = checkpoint


class StopRequest:
    """Set by the signal handler; read by StepCheckpointer between steps."""

    signal_name: str | None = None


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGTERM, signal.SIGINT)):
    """While inside: the first of `signals` only sets the returned request; a second acts
    as the handler before (SIGTERM ends the process, SIGINT raises KeyboardInterrupt)."""
    request = StopRequest()
    previous = {}

    def handler(signum, frame):
        request.signal_name = signal.Signals(signum).name
        signal.signal(signum, previous[signum])

    for number in signals:
        previous[number] = signal.signal(number, handler)
    try:
        yield request
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


class RunPosition:
    """Where the run is, checkpointed with the model: completed epochs, global step, and the
    metric accumulators (e.g. total and count of each Mean) of the epoch in progress."""

    def __init__(self, metrics: list):
        self.metrics = metrics
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        size = sum(int(tf.size(v)) for v in self._accumulators())
        self.epoch_metrics = tf.Variable(tf.zeros([size]), trainable=False, name="epoch_metrics")

    def _accumulators(self) -> list:
        return [v for metric in self.metrics for v in metric.variables]

    def checkpoint_items(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "epoch_metrics": self.epoch_metrics}

    def record(self, step: int, steps_per_epoch: int) -> None:
        """Before a save: this step, and the metric accumulators (summed over replicas)."""
        self.step.assign(step)
        self.epoch.assign(step // steps_per_epoch)
        values = [tf.reshape(tf.cast(keras.ops.convert_to_tensor(v), tf.float32), [-1])
                  for v in self._accumulators()]
        self.epoch_metrics.assign(tf.concat(values, 0))

    def restore_metrics(self) -> None:
        """After Keras reset the metrics at the resumed epoch's start: the saved accumulators."""
        offset = 0
        for v in self._accumulators():
            size = int(tf.size(v))
            v.assign(tf.cast(tf.reshape(self.epoch_metrics[offset:offset + size], v.shape),
                             v.dtype))
            offset += size


@dataclasses.dataclass(frozen=True)
class Phase:
    """One model.fit call: epochs [first_epoch, end_epoch) of steps_per_epoch steps each,
    fed by the input stream from start_step."""

    first_epoch: int
    end_epoch: int
    steps_per_epoch: int
    start_step: int

    @property
    def num_steps(self) -> int:
        return (self.end_epoch - self.first_epoch) * self.steps_per_epoch


def fit_phases(step: int, steps_per_epoch: int, epochs: int) -> list[Phase]:
    """The fit calls that take a run from global `step` to the end: the rest of an
    interrupted epoch (Keras cannot start an epoch part-way), then whole epochs."""
    epoch, done = divmod(step, steps_per_epoch)
    phases = []
    if done and epoch < epochs:
        phases.append(Phase(epoch, epoch + 1, steps_per_epoch - done, step))
        epoch += 1
    if epoch < epochs:
        phases.append(Phase(epoch, epochs, steps_per_epoch, epoch * steps_per_epoch))
    return phases


class ResumeMetrics(keras.callbacks.Callback):
    """At the start of an epoch resumed mid-way, put back its metric accumulators."""

    def __init__(self, position: RunPosition, resumed_epoch: int | None):
        super().__init__()
        self.position = position
        self.resumed_epoch = resumed_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.resumed_epoch:
            self.position.restore_metrics()


class StepCheckpointer(keras.callbacks.Callback):
    """Saves at every epoch end, every `every_steps` steps (0 = never mid-epoch), and after
    the step during which a stop was requested, then raises Preempted.

    Put it after the callbacks that log an epoch (metrics.csv): a run killed between the row
    and the save redoes the epoch, and MetricsCsv drops the row. `hold()` true (e.g. while the
    embedding looks collapsed) skips saves, so the last good checkpoint stays the newest.
    Before each save it checks this process still holds `lock_dir`'s writer lock.
    """

    def __init__(self, manager: tf.train.CheckpointManager, position: RunPosition,
                 steps_per_epoch: int, start_step: int, every_steps: int, stop: StopRequest,
                 hold=lambda: False, lock_dir: str | None = None):
        super().__init__()
        self.lock_dir = lock_dir
        self.manager = manager
        self.position = position
        self.steps_per_epoch = steps_per_epoch
        self.step = start_step
        self.every_steps = every_steps
        self.stop = stop
        self.hold = hold

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.steps_per_epoch == 0:
            return  # the epoch's last step: saved in on_epoch_end, after the epoch is logged
        if self.stop.signal_name or (self.every_steps and self.step % self.every_steps == 0):
            self._save()
        self._stop_if_requested()

    def on_epoch_end(self, epoch, logs=None):
        self._save()
        self._stop_if_requested()

    def _save(self) -> None:
        if self.lock_dir is not None:
            run_directory.check_lock_held(self.lock_dir)  # never two writers of one run
        if self.hold():
            return
        self.position.record(self.step, self.steps_per_epoch)
        try:
            self.manager.save(checkpoint_number=self.step)
        except (tf.errors.OpError, OSError) as e:  # full disk, quota, read-only, ...
            # The state file still names the previous checkpoint; resume scans verify files.
            raise run_directory.RunDirError(
                f"cannot write checkpoint {self.manager.directory}/ckpt-{self.step}: "
                f"{os_reason(e)}; the previous checkpoints are kept") from e

    def _stop_if_requested(self) -> None:
        if self.stop.signal_name:
            raise Preempted(self.stop.signal_name, self.step, self.manager.latest_checkpoint,
                            saved=not self.hold())
