"""The run's input as builder.train_input hands it to fit."""
import numpy as np
import pytest
from conftest import smoke_config

from ifnd_tf import builder, data, preemption, sources


@pytest.mark.parametrize("replicas", ["one_replica", "two_replicas"])
def test_cpu_replicas_get_their_rows_of_the_global_stream_from_untuned_pipelines(
        replicas, request, monkeypatch):
    """On CPUs each replica has its own untuned pipeline (TF's MultiDeviceIterator and
    autotuning each left a thread that stalled the end of fit); together, replica by replica,
    they are the one-pipeline stream, from a resumed step on."""
    strategy = request.getfixturevalue(replicas)
    cfg = smoke_config()
    source = sources.load_source("digits")
    whole = list(data.train_pipeline(source, cfg.schedule.batch_size, cfg.data.image_size, cfg.run.seed,
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


@pytest.mark.parametrize("features, shared", [("query_view", True), ("center_view", False)])
def test_query_view_clustering_reuses_the_knn_monitors_pass(features, shared, one_replica,
                                                            tmp_path):
    """With --cluster_features=query_view the kNN monitor's query-encoder pass at an epoch's
    end is the one the next epoch's clustering uses: one pass, not two, and the labels are
    those of the query encoder's centre views."""
    import tensorflow as tf
    from conftest import small_moco

    from ifnd_tf import embedding, monitors, pseudo_labels

    source = sources.load_source("digits")
    cfg = smoke_config(cluster_features=features, knn_every=1, knn_k=20)
    moco = small_moco(one_replica, source.num_examples, cluster_features=features)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=moco), str(tmp_path / "ck"), 1)
    phase = preemption.fit_phases(0, 4, cfg.schedule.epochs)[0]
    made = builder.make_callbacks(cfg, moco, source, builder.RunParts(
        manager, preemption.RunPosition(moco.metrics), 4, phase, preemption.StopRequest(),
        str(tmp_path)))
    kinds = [type(c).__name__ for c in made]  # the lock is checked before the epoch is logged
    assert kinds.index("WriterLockCheck") < kinds.index("MetricsCsv") < kinds.index(
        "StepCheckpointer")
    assert next(c for c in made if isinstance(c, preemption.StepCheckpointer)).lock_dir == \
        str(tmp_path)
    monitor = next(c for c in made if isinstance(c, monitors.KnnMonitor))
    labeller = next(c for c in made if isinstance(c, pseudo_labels.PseudoLabelCallback))
    assert (monitor.train_pass is not None) == shared
    assert monitor.train_pass is labeller.query_pass
    for callback in (monitor, labeller):
        callback.set_model(moco)
        callback.set_params({"epochs": cfg.schedule.epochs})
    passes = []
    if shared:
        inner = monitor.train_pass.embedder
        monitor.train_pass.embedder = lambda: passes.append(1) or inner()
    head = moco.encoder.get_layer("head_out")  # the query encoder now differs from the key's
    head.bias.assign(head.bias + np.random.default_rng(0).normal(size=head.bias.shape))
    moco.optimizer.iterations.assign(4)  # as after the first epoch's steps
    logs = {}
    monitor.on_epoch_end(0, logs)
    labeller.on_epoch_begin(1)
    assert logs["knn_top1"] > 0.3

    def clustered(encoder, epoch):
        table = embedding.DatasetEmbedder(encoder, one_replica, data.embedding_pipeline(
            source, cfg.detection.embed_batch_size, cfg.data.image_size), source.num_examples)()
        return cfg.detection.kmeans().pseudo_labels(
            table, cfg.acceptance_schedule().alpha(epoch), seed=cfg.run.seed + 1000 * epoch)[0]

    used = moco.encoder if shared else moco.key_encoder
    np.testing.assert_array_equal(moco.detector.pseudo_labels.numpy(), clustered(used, 1))
    other = moco.key_encoder if shared else moco.encoder
    assert (moco.detector.pseudo_labels.numpy() != clustered(other, 1)).any()
    if not shared:
        assert "shared_pass" not in labeller.epoch_logs
        return
    assert passes == [1] and labeller.epoch_logs["shared_pass"] == 1.0
    moco.optimizer.iterations.assign(8)  # trained since, no monitor: the clustering's own pass
    labeller.on_epoch_begin(2)
    assert passes == [1] and labeller.epoch_logs["shared_pass"] == 0.0
    np.testing.assert_array_equal(moco.detector.pseudo_labels.numpy(), clustered(moco.encoder, 2))
