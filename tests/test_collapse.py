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
