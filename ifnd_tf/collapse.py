"""Stop a run whose embedding has collapsed, as StopOnNonFiniteLoss does for NaN.

A collapsed encoder maps every image to the same vector; the loss stays finite (about
log(1 + queue)), so nothing else stops it and the run looked like a success (issue 15: with
--learning_rate=30 every exported embedding was identical). The model reports each step's
`key_spread` (losses.key_spread of the global key batch: 0 = all keys equal); after
`patience` steps in a row below `min_spread` the run stops with one line, and while such a
streak lasts no checkpoint is written (preemption.StepCheckpointer's hold), so the newest
checkpoint is the last good one.
"""
import keras
import tensorflow as tf

from ifnd_tf.errors import DivergenceError


class CollapseError(DivergenceError):
    """Every key of the batch has been (nearly) the same vector for many steps."""


class StopOnCollapse(keras.callbacks.Callback):
    """Counts steps in a row with key_spread < min_spread; raises CollapseError at patience."""

    def __init__(self, manager: tf.train.CheckpointManager, min_spread: float, patience: int,
                 start_step: int = 0):
        super().__init__()
        self.manager = manager
        self.min_spread = min_spread
        self.patience = patience
        self.step = start_step
        self.streak = 0
        self.spread = 1.0

    @property
    def collapsing(self) -> bool:
        """True while the latest steps were below min_spread (checkpoints are held back)."""
        return self.streak > 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        self.spread = float((logs or {}).get("key_spread", 1.0))
        self.streak = self.streak + 1 if self.spread < self.min_spread else 0
        if self.streak >= self.patience:
            raise self._error("the embedding collapsed")

    def on_train_end(self, logs=None):
        """A run (or a fit call) that ends on collapsed steps ends as a collapsed run: it
        must not export the collapsed encoder and exit 0, however short the streak."""
        if self.streak:
            raise self._error("training ended with the embedding collapsed")

    def _error(self, what: str) -> CollapseError:
        return CollapseError(
            f"{what}: key spread {self.spread:.3g} < {self.min_spread} for {self.streak} steps "
            f"in a row (steps {self.step - self.streak + 1}-{self.step}, every key nearly the "
            "same vector); stopped, last good checkpoint kept: "
            f"{self.manager.latest_checkpoint or 'none yet'} (lower --learning_rate; "
            "--collapse_steps=0 turns this check off)")
