"""Strategy choice, chief/worker directories, and a real two-worker run on 127.0.0.1."""
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, free_ports, read_metrics_csv, restore_smoke_model

from ifnd_tf import distribute


def _fake_strategy(task_type, task_id, cluster):
    resolver = types.SimpleNamespace(task_type=task_type, task_id=task_id,
                                     cluster_spec=lambda: tf.train.ClusterSpec(cluster))
    return types.SimpleNamespace(cluster_resolver=resolver)


@pytest.mark.parametrize("task_type, task_id, cluster, chief", [
    ("worker", 0, {"worker": ["a:1", "b:1"]}, True),
    ("worker", 1, {"worker": ["a:1", "b:1"]}, False),
    ("chief", 0, {"chief": ["c:1"], "worker": ["a:1"]}, True),
    ("worker", 0, {"chief": ["c:1"], "worker": ["a:1"]}, False),
])
def test_chief_owns_model_dir_and_workers_write_beside_it(task_type, task_id, cluster, chief):
    strategy = _fake_strategy(task_type, task_id, cluster)
    assert distribute.is_chief(strategy) == chief
    expected = "/runs/x" if chief else f"/runs/x/worker_{task_id}"
    assert distribute.worker_dir("/runs/x", strategy) == expected


def test_single_machine_strategies(one_replica):
    assert distribute.is_chief(one_replica)
    assert distribute.worker_dir("/runs/x", one_replica) == "/runs/x"
    assert isinstance(distribute.make_strategy(kind="one_device"), tf.distribute.OneDeviceStrategy)
    assert distribute.host_input_options(tf.distribute.OneDeviceStrategy("/cpu:0")) is None
    options = distribute.host_input_options(one_replica)
    assert options.experimental_replication_mode == tf.distribute.InputReplicationMode.PER_REPLICA
    assert not options.experimental_fetch_to_device


@pytest.mark.e2e
def test_two_workers_train_to_identical_weights_and_labels(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        command = [sys.executable, "-m", "ifnd_tf.train", "--flagfile=flags/smoke.cfg",
                   f"--model_dir={tmp_path}", "--strategy=multi_worker", "--epochs=2", "--steps_per_epoch=3",
                   "--knn_every=0", "--export=false"]
        processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=400)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    assert "IFND epoch 2: alpha=1" in outputs[0] and "IFND epoch 2: alpha=1" in outputs[1]
    for index, output in enumerate(outputs):  # each read only its share (tests/test_data.py)
        first = 32 * index
        assert (f"training input: worker {index + 1} of 2 reads examples {first}-{first + 31} "
                "of every global batch of 64") in output
        # 1437 examples padded to 1438: 719 each, counted as they were embedded.
        assert (f"embedding pass: worker {index + 1} of 2 embedded 719 of 1437 examples, "
                "gathered the rest") in output

    chief, worker = restore_smoke_model(tmp_path), restore_smoke_model(tmp_path / "worker_1")
    np.testing.assert_array_equal(chief.detector.pseudo_labels.numpy(),
                                  worker.detector.pseudo_labels.numpy())
    assert (chief.detector.pseudo_labels.numpy() >= 0).all()
    np.testing.assert_array_equal(chief.queue_ids.numpy(), worker.queue_ids.numpy())
    for a, b in zip(chief.encoder.weights + chief.key_encoder.weights,
                    worker.encoder.weights + worker.key_encoder.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    # --batch_size is global: 6 steps of 64 keys (32 per worker) moved the pointer to 384 % 256.
    assert int(chief.queue_ptr.numpy()) == 128
    assert [row["loss"] for row in read_metrics_csv(tmp_path)] == \
        [row["loss"] for row in read_metrics_csv(tmp_path / "worker_1")]
