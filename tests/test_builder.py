"""The run's input as builder.train_input hands it to fit."""
import numpy as np
import pytest
from conftest import smoke_config

from ifnd_tf import builder, data, preemption


@pytest.mark.parametrize("replicas", ["one_replica", "two_replicas"])
def test_cpu_replicas_get_their_rows_of_the_global_stream_from_untuned_pipelines(
        replicas, request, monkeypatch):
    """On CPUs each replica has its own untuned pipeline (TF's MultiDeviceIterator and
    autotuning each left a thread that stalled the end of fit); together, replica by replica,
    they are the one-pipeline stream, from a resumed step on."""
    strategy = request.getfixturevalue(replicas)
    cfg = smoke_config()
    source = data.load_source("digits")
    whole = list(data.train_pipeline(source, cfg.batch_size, cfg.image_size, cfg.seed,
                                     start_step=3, num_steps=3))
    built = []
    pipeline = data.train_pipeline

    def recording(*args, **kwargs):
        built.append(kwargs)
        return pipeline(*args, **kwargs)

    monkeypatch.setattr(data, "train_pipeline", recording)
    phase = preemption.Phase(first_epoch=1, end_epoch=2, steps_per_epoch=3, start_step=3)
    distributed = list(builder.train_input(cfg, source, strategy, phase))
    assert len(built) == strategy.num_replicas_in_sync  # one pipeline per replica
    assert [kwargs["autotune"] for kwargs in built] == [False] * len(built)
    assert len(distributed) == len(whole) == 3
    for got, expected in zip(distributed, whole):
        for part, want in zip(got, expected):  # index, view_q, view_k
            local = strategy.experimental_local_results(part)
            assert len(local) == strategy.num_replicas_in_sync
            np.testing.assert_allclose(np.concatenate([t.numpy() for t in local]), want.numpy(),
                                       atol=1e-6)
