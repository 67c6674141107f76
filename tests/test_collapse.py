import pytest
import tensorflow as tf

from ifnd_tf import callbacks, collapse


def _watch(tmp_path, patience):
    checkpoint = tf.train.Checkpoint(step=tf.Variable(1))
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=2)
    manager.save(checkpoint_number=7)
    return collapse.StopOnCollapse(manager, min_spread=0.05, patience=patience, start_step=5)


def test_collapse_stops_after_patience_steps_in_a_row(tmp_path):
    watch = _watch(tmp_path, patience=3)
    for spread in (0.4, 0.01, 0.02, 0.3, 0.01, 0.01):  # a streak of 2, broken, then 2 again
        watch.on_train_batch_end(0, {"key_spread": spread})
    assert watch.collapsing and watch.streak == 2
    with pytest.raises(collapse.CollapseError) as error:
        watch.on_train_batch_end(0, {"key_spread": 0.001})
    assert isinstance(error.value, callbacks.DivergenceError)  # the entry point's one line
    assert str(error.value).startswith(
        "the embedding collapsed: key spread 0.001 < 0.05 for 3 steps in a row (steps 10-12, ")
    assert f"last good checkpoint kept: {tmp_path}/ckpt-7 " in str(error.value)


def test_healthy_steps_clear_the_hold(tmp_path):
    watch = _watch(tmp_path, patience=3)
    watch.on_train_batch_end(0, {"key_spread": 0.01})
    assert watch.collapsing
    watch.on_train_batch_end(0, {"key_spread": 0.5})
    assert not watch.collapsing


def test_training_that_ends_while_collapsing_fails_however_short_the_streak(tmp_path):
    """A run shorter than --collapse_steps, or collapsing in its last steps, must not end as
    a success (and export the collapsed encoder)."""
    watch = _watch(tmp_path, patience=50)
    for spread in (0.5, 0.01, 0.02):
        watch.on_train_batch_end(0, {"key_spread": spread})
    with pytest.raises(collapse.CollapseError) as error:
        watch.on_train_end()
    assert str(error.value).startswith("training ended with the embedding collapsed: key spread "
                                       "0.02 < 0.05 for 2 steps in a row (steps 7-8, ")
    assert f"last good checkpoint kept: {tmp_path}/ckpt-7 " in str(error.value)
    watch.on_train_batch_end(0, {"key_spread": 0.5})  # recovered: ends normally
    watch.on_train_end()
