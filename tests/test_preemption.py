import os
import signal

import keras
import pytest
import tensorflow as tf

from ifnd_tf import preemption, run_directory
from ifnd_tf.preemption import Phase


def test_fit_phases_finish_the_interrupted_epoch_first():
    assert preemption.fit_phases(0, 10, 3) == [Phase(0, 3, 10, 0)]
    assert preemption.fit_phases(20, 10, 3) == [Phase(2, 3, 10, 20)]
    assert preemption.fit_phases(13, 10, 3) == [Phase(1, 2, 7, 13), Phase(2, 3, 10, 20)]
    assert preemption.fit_phases(27, 10, 3) == [Phase(2, 3, 3, 27)]
    assert preemption.fit_phases(30, 10, 3) == []
    assert Phase(1, 2, 7, 13).num_steps == 7 and Phase(2, 3, 10, 20).num_steps == 10


def test_first_signal_is_a_request_the_second_acts_as_before():
    # Python's own SIGINT handler as "before" (earlier tests in the suite may have left another).
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        with preemption.stop_on_signals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signal_name == "SIGINT"  # no KeyboardInterrupt
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    finally:
        signal.signal(signal.SIGINT, outer)


def _checkpointer(tmp_path, every_steps, start_step=0, hold=lambda: False, lock_dir=None):
    mean = keras.metrics.Mean(name="loss")
    position = preemption.RunPosition([mean])
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(**position.checkpoint_items()), str(tmp_path), max_to_keep=100)
    stop = preemption.StopRequest()
    saver = preemption.StepCheckpointer(manager, position, steps_per_epoch=10,
                                        start_step=start_step, every_steps=every_steps,
                                        stop=stop, hold=hold, lock_dir=lock_dir)
    return saver, stop, mean, position


def _saved(tmp_path):
    return sorted(int(p.name[5:-6]) for p in tmp_path.glob("ckpt-*.index"))


def test_saves_every_n_steps_and_at_epoch_ends_numbered_by_step(tmp_path):
    saver, _, _, _ = _checkpointer(tmp_path, every_steps=4, start_step=3)
    for epoch in (0, 1):
        for batch in range(7 if epoch == 0 else 10):
            saver.on_train_batch_end(batch)
        saver.on_epoch_end(epoch)
    assert _saved(tmp_path) == [4, 8, 10, 12, 16, 20]  # step 20 once, at the epoch end


def test_stop_request_saves_the_step_and_raises(tmp_path):
    saver, stop, mean, position = _checkpointer(tmp_path, every_steps=0)
    mean.update_state(2.0)
    mean.update_state(4.0)
    saver.on_train_batch_end(0)
    stop.signal_name = "SIGTERM"
    with pytest.raises(preemption.Preempted, match="stopped by SIGTERM after step 2; checkpoint "
                                                   f"{tmp_path}/ckpt-2 written"):
        saver.on_train_batch_end(1)
    assert _saved(tmp_path) == [2] and int(position.step.numpy()) == 2
    mean.reset_state()
    position.restore_metrics()  # what the resumed epoch starts from
    assert float(mean.result()) == 3.0 and float(mean.count.numpy()) == 2.0


def test_hold_skips_saves(tmp_path):
    saver, _, _, _ = _checkpointer(tmp_path, every_steps=1, hold=lambda: True)
    saver.on_train_batch_end(0)
    saver.on_epoch_end(0)
    assert _saved(tmp_path) == []


def test_a_run_whose_lock_file_was_removed_stops_before_the_next_save(tmp_path):
    run_directory.acquire_lock(str(tmp_path))
    saver, _, _, _ = _checkpointer(tmp_path, every_steps=0, lock_dir=str(tmp_path))
    saver.on_epoch_end(0)
    (tmp_path / "lock").unlink()  # e.g. taken for a stale lock: a second run could start now
    with pytest.raises(run_directory.RunDirError, match=f"^{tmp_path}/lock was removed"):
        saver.on_epoch_end(1)
    assert _saved(tmp_path) == [0]  # the checkpoint written before is kept


def test_a_stop_while_saves_are_held_says_the_step_was_not_saved(tmp_path):
    """The embedding looks collapsed, so nothing is written: the line must not say it was."""
    held = [False]
    saver, stop, _, _ = _checkpointer(tmp_path, every_steps=1, hold=lambda: held[0])
    saver.on_train_batch_end(0)  # step 1 saved
    held[0] = True
    stop.signal_name = "SIGTERM"
    with pytest.raises(preemption.Preempted) as error:
        saver.on_train_batch_end(1)
    assert str(error.value) == ("stopped by SIGTERM after step 2; step 2 not saved (the "
                                "embedding looked collapsed); newest checkpoint: "
                                f"{tmp_path}/ckpt-1; run the same command to resume")
    assert _saved(tmp_path) == [1]
