"""What --model_dir guarantees (README, "What --model_dir guarantees"): resume from the newest
checkpoint that reads back whole, damaged ones set aside, and never a silent restart.

The state file `checkpoint` of tf.train.CheckpointManager is only a hint: it can be missing,
or name files a user deleted, and then tf.train.latest_checkpoint returns None and a run
would start again from step 0 over its own checkpoints. Here the `ckpt-<N>.index` files
themselves are the truth; each candidate is read completely (every tensor, which checks the
checksums) before the model is touched, so a truncated or garbled file never half-restores a
model. Library code: plain arguments, errors are `RunDirError` with one line naming the file.
"""
import fcntl
import json
import os
import re
import socket
import time

import tensorflow as tf

from ifnd_tf import fingerprint
from ifnd_tf.errors import RunDirError

DAMAGED = "damaged"  # sub-folder of checkpoints/ where unreadable checkpoints are moved
DATASET_FILE = "dataset.json"  # the training set's fingerprint (fingerprint.py)
LOCK_FILE = "lock"  # in the run directory: "pid <pid> host <host>" of the process writing it
_held_locks: dict[str, int] = {}  # lock file (absolute path) -> descriptor, for the process's life
_INDEX = re.compile(r"^ckpt-(\d+)\.index$")


def acquire_lock(directory: str) -> str:
    """Make directory and take its writer lock for the rest of this process's life.

    fcntl.flock on run_dir/lock: the OS drops it when the process ends, however it ends, so a
    lock file left by a dead process never blocks. A second process gets RunDirError naming the
    holder's pid and host. The lock is the first write: an unwritable directory fails here,
    before anything else. Taken again in the same process: kept if its file is still there,
    else taken anew (the directory was deleted in between). Returns the lock file's path.
    """
    path = os.path.join(directory, LOCK_FILE)
    key = os.path.abspath(path)
    if key in _held_locks:
        if _names(path, _held_locks[key]):
            return path
        os.close(_held_locks.pop(key))
    try:
        os.makedirs(directory, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunDirError(f"cannot write the run directory {directory}: {e.strerror}") from e
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _read_holder(descriptor)
        os.close(descriptor)
        raise RunDirError(f"{directory} is in use by {holder} (lock {path}); wait until it "
                          "ends, stop it, or use another --model_dir") from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"pid {os.getpid()} host {socket.gethostname()}\n".encode())
    _held_locks[key] = descriptor
    return path


def check_lock_held(directory: str) -> None:
    """Raise RunDirError if this process took directory's lock and the name `lock` no longer
    points at the file it locked (deleted, replaced, a symlink in the path moved); nothing to
    check if it never took it.

    flock locks the file, not its name: once `lock` is deleted (say, taken for a stale one), a
    second process can lock a new file of that name and both write the run directory, their
    checkpoints and metrics.csv rows interleaved. Called at every epoch end before the row is
    written and before every checkpoint save, so such a run stops with its checkpoints intact.
    """
    path = os.path.join(directory, LOCK_FILE)
    held = _held_locks.get(os.path.abspath(path))
    if held is not None and not _names(path, held):
        raise RunDirError(f"{path} was removed or replaced while this run held it; another "
                          f"process may be writing {directory}: stopped, the checkpoints "
                          "already written are kept")


def _names(path: str, descriptor: int) -> bool:
    """Whether path (now) names the open file descriptor refers to."""
    try:
        named = os.stat(path)
    except OSError:
        return False
    held = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _read_holder(descriptor: int) -> str:
    """'pid <pid> host <host>' from the lock file (the holder may be writing it just now)."""
    for _ in range(20):
        text = os.pread(descriptor, 256, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.05)
    return "another process (pid unknown)"


def checkpoint_numbers(checkpoint_dir: str) -> list[int]:
    """Numbers N of every `ckpt-N.index` in checkpoint_dir, newest (largest) first."""
    if not os.path.isdir(checkpoint_dir):
        return []
    found = (_INDEX.match(name) for name in os.listdir(checkpoint_dir))
    return sorted((int(m.group(1)) for m in found if m), reverse=True)


def holds_checkpoints(checkpoint_dir: str) -> bool:
    """Whether the directory holds a run: a checkpoint, or one set aside as damaged."""
    damaged = os.path.join(checkpoint_dir, DAMAGED)
    return bool(checkpoint_numbers(checkpoint_dir)) or (
        os.path.isdir(damaged) and bool(os.listdir(damaged)))


def read_problem(prefix: str) -> str | None:
    """None if every tensor of the checkpoint at prefix reads back, else the first error line."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as e:  # noqa: BLE001 -- any failure to read (DataLoss, OutOfRange, ...) is damage
        lines = str(e).strip().splitlines()
        return f"{type(e).__name__}: {lines[0] if lines else ''}"
    return None


def set_aside(checkpoint_dir: str, number: int) -> str:
    """Move every file of ckpt-<number> into checkpoints/damaged/ (renamed, never deleted)."""
    target = os.path.join(checkpoint_dir, DAMAGED)
    os.makedirs(target, exist_ok=True)
    prefix = f"ckpt-{number}."
    for name in sorted(os.listdir(checkpoint_dir)):
        if name.startswith(prefix):
            destination, copy = os.path.join(target, name), 1
            while os.path.exists(destination):  # the same number damaged twice: keep both
                destination, copy = os.path.join(target, f"{name}.{copy}"), copy + 1
            os.replace(os.path.join(checkpoint_dir, name), destination)
    return target


def _rewrite_state_file(checkpoint_dir: str, numbers: list[int]) -> None:
    """The manager's state file (text proto, relative paths) names what is really there.

    With the index files' times as timestamps: CheckpointManager only counts (and deletes, to
    keep max_to_keep) the checkpoints stamped after last_preserved_timestamp.
    """
    numbers = sorted(numbers)
    stamps = [os.path.getmtime(os.path.join(checkpoint_dir, f"ckpt-{n}.index")) for n in numbers]
    lines = [f'model_checkpoint_path: "ckpt-{numbers[-1]}"']
    lines += [f'all_model_checkpoint_paths: "ckpt-{n}"' for n in numbers]
    lines += [f"all_model_checkpoint_timestamps: {t!r}" for t in stamps]
    lines.append(f"last_preserved_timestamp: {min(stamps) - 1.0!r}")
    path = os.path.join(checkpoint_dir, "checkpoint")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def restore_newest(checkpoint: tf.train.Checkpoint, checkpoint_dir: str, may_move: bool = True,
                   notice=print) -> str | None:
    """Restore the newest checkpoint that reads back whole; returns its prefix, None if none.

    Damaged ones (unreadable or failing their checksum) are moved to checkpoints/damaged/ with
    one notice line each (only when may_move: the process that owns the directory), and the
    next older is tried. If the directory holds checkpoints but none is usable, RunDirError:
    a run is never restarted from scratch over its own checkpoints.
    """
    numbers = checkpoint_numbers(checkpoint_dir)
    usable = []
    for number in numbers:
        prefix = os.path.join(checkpoint_dir, f"ckpt-{number}")
        problem = read_problem(prefix)
        if problem is None:
            usable = [n for n in numbers if n <= number]
            break
        where = set_aside(checkpoint_dir, number) if may_move else "left in place"
        notice(f"checkpoint {prefix} is damaged ({problem}); moved to {where}, trying the "
               "previous one", flush=True)
    if not usable:
        if holds_checkpoints(checkpoint_dir):
            raise RunDirError(
                f"no checkpoint in {checkpoint_dir} can be read (damaged ones are in "
                f"{os.path.join(checkpoint_dir, DAMAGED)}); refusing to start this run over: "
                "remove the folder or use a new --model_dir")
        return None
    prefix = os.path.join(checkpoint_dir, f"ckpt-{usable[0]}")
    if may_move:
        _rewrite_state_file(checkpoint_dir, usable)
    try:
        checkpoint.restore(prefix).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise RunDirError(f"checkpoint {prefix} does not fit this model ({str(e).splitlines()[0]}); "
                          "it was written with other flags or data, or by an ifnd_tf older than "
                          "the detector interface (its detector state is model/detector/ now): "
                          "use a new --model_dir") from e
    return prefix


def read_record(path: str, what: str) -> dict:
    """A run's JSON record (flags.json, dataset.json) that its checkpoints were made with:
    missing or unreadable, the run refuses to go on (one line) rather than skip its check."""
    try:
        with open(path) as f:
            record = json.load(f)
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing but the run has checkpoints: without the {what} "
                          "they were made with, a resume cannot be checked; restore the file "
                          "or use a new --model_dir") from None
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} is damaged ({str(e).splitlines()[0]}); the checkpoints are "
                          "intact: restore the file or use a new --model_dir") from e
    if not isinstance(record, dict):
        raise RunDirError(f"{path} is damaged (not a JSON object); the checkpoints are intact: "
                          "restore the file or use a new --model_dir")
    return record


def check_dataset(directory: str, dataset: str, current: dict | None) -> None:
    """Record the training set's fingerprint in directory/dataset.json; once the directory
    holds checkpoints, refuse (RunDirError, saying what changed) to go on with other data."""
    if current is None:
        return
    path = os.path.join(directory, DATASET_FILE)
    if holds_checkpoints(os.path.join(directory, "checkpoints")):
        change = fingerprint.describe_change(read_record(path, "data fingerprint"), current)
        if change:
            raise RunDirError(f"--dataset={dataset} is not the data this run was trained on "
                              f"({change}; recorded in {path}): put the data back, or use a "
                              "new --model_dir")
    with open(path + ".tmp", "w") as f:
        json.dump(current, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
