import os
import subprocess
import sys

import pytest
import tensorflow as tf
from conftest import ROOT, lock_holder

from ifnd_tf import run_directory


def _saved_run(folder, count=3):
    """A checkpoint folder with ckpt-1..count; variable value = checkpoint number."""
    value = tf.Variable(0.0)
    checkpoint = tf.train.Checkpoint(value=value)
    manager = tf.train.CheckpointManager(checkpoint, str(folder), max_to_keep=count)
    for number in range(1, count + 1):
        value.assign(float(number))
        manager.save(checkpoint_number=number)
    return checkpoint, value


def _garble(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 8] = b"garbage!"
    path.write_bytes(bytes(data))


def test_scan_finds_checkpoints_without_the_state_file(tmp_path):
    checkpoint, value = _saved_run(tmp_path)
    (tmp_path / "checkpoint").unlink()
    assert tf.train.latest_checkpoint(str(tmp_path)) is None  # what used to restart the run
    assert run_directory.checkpoint_numbers(str(tmp_path)) == [3, 2, 1]
    value.assign(0.0)
    restored = run_directory.restore_newest(checkpoint, str(tmp_path), notice=pytest.fail)
    assert restored == str(tmp_path / "ckpt-3") and float(value.numpy()) == 3.0
    assert tf.train.latest_checkpoint(str(tmp_path)) == restored  # state file rewritten


def test_deleted_newest_falls_back_to_the_previous(tmp_path):
    checkpoint, value = _saved_run(tmp_path)
    for name in os.listdir(tmp_path):
        if name.startswith("ckpt-3."):
            os.remove(tmp_path / name)
    restored = run_directory.restore_newest(checkpoint, str(tmp_path), notice=pytest.fail)
    assert restored.endswith("ckpt-2") and float(value.numpy()) == 2.0
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=3)
    assert manager.checkpoints == [str(tmp_path / "ckpt-1"), str(tmp_path / "ckpt-2")]


@pytest.mark.parametrize("damage", ["garbled_data", "truncated_index", "truncated_data",
                                    "missing_data"])
def test_damaged_newest_is_set_aside_with_one_notice(tmp_path, damage):
    checkpoint, value = _saved_run(tmp_path)
    data_file, index = tmp_path / "ckpt-3.data-00000-of-00001", tmp_path / "ckpt-3.index"
    if damage == "garbled_data":
        _garble(data_file)
    elif damage == "missing_data":
        data_file.unlink()
    else:
        path = index if damage == "truncated_index" else data_file
        path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    notices = []
    restored = run_directory.restore_newest(checkpoint, str(tmp_path),
                                            notice=lambda line, flush: notices.append(line))
    assert restored.endswith("ckpt-2") and float(value.numpy()) == 2.0
    assert len(notices) == 1 and notices[0].startswith(f"checkpoint {tmp_path}/ckpt-3 is damaged (")
    moved = sorted(os.listdir(tmp_path / "damaged"))
    assert "ckpt-3.index" in moved and not (tmp_path / "ckpt-3.index").exists()
    assert run_directory.checkpoint_numbers(str(tmp_path)) == [2, 1]
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")


def test_worker_does_not_move_the_chiefs_files(tmp_path):
    checkpoint, _ = _saved_run(tmp_path)
    _garble(tmp_path / "ckpt-3.data-00000-of-00001")
    restored = run_directory.restore_newest(checkpoint, str(tmp_path), may_move=False,
                                            notice=lambda line, flush: None)
    assert restored.endswith("ckpt-2") and (tmp_path / "ckpt-3.index").exists()


def test_nothing_readable_is_refused_not_restarted(tmp_path):
    checkpoint, _ = _saved_run(tmp_path, count=1)
    _garble(tmp_path / "ckpt-1.data-00000-of-00001")
    with pytest.raises(run_directory.RunDirError, match="refusing to start this run over"):
        run_directory.restore_newest(checkpoint, str(tmp_path), notice=lambda line, flush: None)
    assert run_directory.holds_checkpoints(str(tmp_path))  # the damaged one still counts
    with pytest.raises(run_directory.RunDirError):  # and keeps counting on the next try
        run_directory.restore_newest(checkpoint, str(tmp_path), notice=pytest.fail)


def test_empty_folder_is_a_fresh_start(tmp_path):
    checkpoint = tf.train.Checkpoint(value=tf.Variable(1.0))
    assert run_directory.restore_newest(checkpoint, str(tmp_path / "none")) is None
    assert not run_directory.holds_checkpoints(str(tmp_path / "none"))


def test_checkpoint_of_another_model_is_named(tmp_path):
    _saved_run(tmp_path, count=1)
    other = tf.train.Checkpoint(value=tf.Variable([0.0, 0.0]))
    with pytest.raises(run_directory.RunDirError, match="ckpt-1 does not fit this model"):
        run_directory.restore_newest(other, str(tmp_path))


def test_second_writer_is_refused_naming_pid_and_host(tmp_path):
    import signal
    import socket

    process = lock_holder(tmp_path)
    try:
        with pytest.raises(run_directory.RunDirError) as error:
            run_directory.acquire_lock(str(tmp_path))
        assert str(error.value).startswith(
            f"{tmp_path} is in use by pid {process.pid} host {socket.gethostname()} (lock ")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # The holder died without any clean-up: its lock file stays, and does not block.
    assert (tmp_path / "lock").read_text().startswith(f"pid {process.pid} ")
    run_directory.acquire_lock(str(tmp_path))
    assert (tmp_path / "lock").read_text().startswith(f"pid {os.getpid()} ")
    run_directory.acquire_lock(str(tmp_path))  # this process already holds it: fine


def test_removed_or_replaced_lock_file_is_noticed(tmp_path):
    held, other = tmp_path / "held", tmp_path / "other"
    run_directory.check_lock_held(str(other))  # never taken here: nothing to check
    run_directory.acquire_lock(str(held))
    run_directory.check_lock_held(str(held))  # intact
    (held / "lock").unlink()
    message = (f"^{held}/lock was removed or replaced while this run held it; another process "
               f"may be writing {held}: stopped, the checkpoints already written are kept$")
    with pytest.raises(run_directory.RunDirError, match=message):
        run_directory.check_lock_held(str(held))
    # A second writer can now lock a new file of that name: replaced is as bad as removed.
    process = lock_holder(held)
    try:
        with pytest.raises(run_directory.RunDirError, match=message):
            run_directory.check_lock_held(str(held))
    finally:
        process.kill()
        process.wait()


def test_lock_check_follows_the_name_the_run_was_given(tmp_path):
    first, second, link = tmp_path / "first", tmp_path / "second", tmp_path / "run"
    first.mkdir()
    second.mkdir()
    link.symlink_to(first)
    run_directory.acquire_lock(str(link))
    run_directory.check_lock_held(str(link))
    link.unlink()
    link.symlink_to(second)  # --model_dir now names another folder, unlocked
    with pytest.raises(run_directory.RunDirError, match=f"^{link}/lock was removed or replaced"):
        run_directory.check_lock_held(str(link))


def test_lock_taken_again_after_its_directory_was_deleted(tmp_path):
    import shutil

    run_directory.acquire_lock(str(tmp_path / "run"))
    shutil.rmtree(tmp_path / "run")
    run_directory.acquire_lock(str(tmp_path / "run"))  # a new file: locked anew, no false alarm
    run_directory.check_lock_held(str(tmp_path / "run"))
    code = "import sys; from ifnd_tf import run_directory; run_directory.acquire_lock(sys.argv[1])"
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], check=False,
                           cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "IFND_FAST_ALLOCATOR": "0"})
    assert other.returncode == 1 and f"is in use by pid {os.getpid()} " in other.stderr


def test_unwritable_run_directory_is_one_line():
    with pytest.raises(run_directory.RunDirError,
                       match=r"^cannot write the run directory /sys/ifnd_run: "):
        run_directory.acquire_lock("/sys/ifnd_run")


def test_dataset_check_refuses_other_data_only_once_checkpointed(tmp_path):
    first = {"examples": 10, "kind": "arrays", "sha256": "a"}
    other = {"examples": 11, "kind": "arrays", "sha256": "b"}
    run_directory.check_dataset(str(tmp_path), "digits", first)
    run_directory.check_dataset(str(tmp_path), "digits", other)  # no checkpoint yet: recorded
    _saved_run(tmp_path / "checkpoints", count=1)
    run_directory.check_dataset(str(tmp_path), "digits", other)  # the same data: fine
    with pytest.raises(run_directory.RunDirError) as error:
        run_directory.check_dataset(str(tmp_path), "digits", first)
    assert str(error.value) == (
        "--dataset=digits is not the data this run was trained on (11 -> 10 examples; recorded "
        f"in {tmp_path}/dataset.json): put the data back, or use a new --model_dir")


@pytest.mark.parametrize("damage", ["missing", "not json", "not an object"])
def test_a_lost_or_damaged_record_refuses_the_resume_in_one_line(tmp_path, damage):
    """Deleting dataset.json (or flags.json, read the same way) must not switch its check off
    once the run has checkpoints; a damaged one is a line, not a traceback."""
    record = {"examples": 10, "kind": "arrays", "sha256": "a"}
    run_directory.check_dataset(str(tmp_path), "digits", record)
    _saved_run(tmp_path / "checkpoints", count=1)
    path = tmp_path / "dataset.json"
    if damage == "missing":
        path.unlink()
        message = (f"^{path} is missing but the run has checkpoints: without the data "
                   "fingerprint they were made with, a resume cannot be checked; ")
    else:
        path.write_text("{\"examples\": 1" if damage == "not json" else "[1, 2]")
        message = f"^{path} is damaged \\(.*\\); the checkpoints are intact: restore the file"
    with pytest.raises(run_directory.RunDirError, match=message):
        run_directory.check_dataset(str(tmp_path), "digits", {**record, "sha256": "b"})
    assert os.listdir(tmp_path / "checkpoints")  # nothing lost
