"""The run's input as builder.train_input hands it to fit."""
import numpy as np
import pytest
import tensorflow as tf
from conftest import smoke_config

from ifnd_tf import builder, data, distribute, preemption


@pytest.mark.parametrize("replicas", ["one_replica", "two_replicas"])
def test_cpu_replicas_get_their_rows_of_the_global_stream_from_untuned_pipelines(replicas,
                                                                                   request):
    """On CPUs each replica has its own untuned pipeline (no MultiDeviceIterator, whose drop
    stalled the end of fit); together, replica by replica, they are the one-pipeline stream."""
    strategy = request.getfixturevalue(replicas)
    options = distribute.host_input_options(strategy)
    assert options.experimental_replication_mode == tf.distribute.InputReplicationMode.PER_REPLICA
    assert not options.experimental_fetch_to_device
    cfg = smoke_config()
    source = data.load_source("digits")
    phase = preemption.Phase(first_epoch=1, end_epoch=2, steps_per_epoch=3, start_step=3)
    whole = list(data.train_pipeline(source, cfg.batch_size, cfg.image_size, cfg.seed,
                                     start_step=3, num_steps=3))
    distributed = list(builder.train_input(cfg, source, strategy, phase))
    assert len(distributed) == len(whole) == 3
    for got, expected in zip(distributed, whole):
        for part, want in zip(got, expected):  # index, view_q, view_k
            local = strategy.experimental_local_results(part)
            assert len(local) == strategy.num_replicas_in_sync
            np.testing.assert_allclose(np.concatenate([t.numpy() for t in local]), want.numpy(),
                                       atol=1e-6)


def test_untuned_pipeline_says_so_in_its_options():
    source = data.load_source("digits")
    assert data.train_pipeline(source, 8, 16, 0, num_steps=1).options().autotune.enabled
    assert not data.train_pipeline(source, 8, 16, 0, num_steps=1,
                                   autotune=False).options().autotune.enabled
