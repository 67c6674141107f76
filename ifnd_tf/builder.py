"""What a pre-training run is made of, from a RunConfig: the compiled model, its input and the
callbacks.

train.py builds them for a run; bench/ and the tests build the same model from
`config.RunConfig.defaults(...)` without parsing flags.
"""
import os

import keras
import tensorflow as tf

from ifnd_tf import (
    callbacks,
    collapse,
    data,
    distribute,
    embedding,
    losses,
    model,
    monitors,
    preemption,
    pseudo_labels,
)
from ifnd_tf.config import RunConfig


def use_jit(mode: str, strategy: tf.distribute.Strategy, deterministic: bool) -> bool:
    """XLA for the step: `on` (validated by config: no op determinism; several replicas need
    --sync_bn=false), or `auto` = exactly one GPU without determinism (XLA was not faster on
    CPU; docs/design.md "XLA")."""
    if mode == "auto":
        return (strategy.num_replicas_in_sync == 1 and not deterministic
                and bool(tf.config.list_physical_devices("GPU")))
    return mode == "on"


# What XLA compiles with several replicas, and what not (model.MomentumContrast, docs/design.md
# "XLA"): the start-up line names both.
PER_REPLICA_COMPILED = ("train step: per-replica part XLA-compiled (key encoder EMA update, key "
                        "and query encoder forward, loss, gradients); not compiled: the "
                        "cross-replica ops (shuffle-BN gathers, BatchNorm moving-statistics mean, "
                        "gradient all-reduce + SGD apply, queue update): MirroredStrategy cannot "
                        "run them inside an XLA function")


def describe_step(moco: model.MomentumContrast, mode: str) -> str:
    """One start-up line saying what of the step really is XLA-compiled (Keras may refuse)."""
    if moco.jit_compile:
        return "train step: XLA-compiled (the whole step, one replica)"
    if moco.compiles_per_replica:
        return PER_REPLICA_COMPILED
    why = {"off": "--jit_compile=off", "on": "Keras declined to compile this model"}.get(
        mode, "--jit_compile=auto compiles only on exactly one GPU with --deterministic=false")
    return f"train step: not XLA-compiled ({why})"


def build_model(cfg: RunConfig, num_examples: int, steps_per_epoch: int,
                jit: bool = False, labelled: bool = False) -> model.MomentumContrast:
    """Encoders, MoCo model and SGD with linear-scaled lr and cosine decay (call in scope);
    jit: XLA for the step (the whole step on one replica, the per-replica part on several);
    labelled: the dataset has true labels (the quantile detector's diagnostics count them)."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    key_groups = model.key_bn_groups(cfg.key_bn_splits, replicas)
    encoders = [model.build_encoder(cfg.backbone, cfg.image_size, cfg.width_multiplier,
                                    cfg.embedding_dim, cfg.sync_bn, bn_groups=groups)
                for groups in (None, key_groups)]  # query, key (shuffle-BN groups)
    moco = model.MomentumContrast(
        encoders[0], encoders[1], num_examples, queue_size=cfg.queue_size,
        num_levels=cfg.num_levels, temperature=cfg.temperature, momentum=cfg.moco_momentum,
        fn_strategy=cfg.fn_strategy, fn_min_levels=cfg.fn_min_levels if cfg.ifnd else 1,
        key_bn_splits=cfg.key_bn_splits,
        weight_decay=cfg.weight_decay, seed=cfg.seed,
        remember_keys=cfg.detects_by_clusters and cfg.cluster_features == pseudo_labels.TRAIN_KEYS,
        compile_per_replica=jit and replicas > 1,
        fn_detector=cfg.fn_detector if cfg.ifnd else losses.CLUSTERS, count_true_labels=labelled)
    moco.copy_query_to_key_encoder()
    schedule = keras.optimizers.schedules.CosineDecay(
        cfg.learning_rate * cfg.batch_size / 256, decay_steps=cfg.epochs * steps_per_epoch)
    optimizer = keras.optimizers.SGD(schedule, momentum=cfg.sgd_momentum)
    if cfg.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    # One replica: Keras compiles the whole step; several: only the per-replica part (above).
    moco.compile(optimizer=optimizer, jit_compile=jit and replicas == 1)
    optimizer.build(moco.encoder.trainable_variables)
    return moco


def train_input(cfg: RunConfig, source: data.Source, strategy: tf.distribute.Strategy,
                phase: preemption.Phase) -> tf.distribute.DistributedDataset:
    """The phase's stream (a function of seed and step), each worker reading, decoding and
    augmenting only its share of every global batch (data.train_pipeline). On CPUs, one
    pipeline per replica (distribute.host_input_options), untuned: both remove a thread that
    kept the end of fit waiting (docs/design.md, "Epoch boundary"). A streamed source is then
    read (not decoded) once per replica."""
    options = distribute.host_input_options(strategy)

    def worker_stream(context: tf.distribute.InputContext) -> tf.data.Dataset:
        if options is None and context.num_input_pipelines > 1:
            first, share = data.worker_rows(cfg.batch_size, context)
            print(f"training input: worker {context.input_pipeline_id + 1} of "
                  f"{context.num_input_pipelines} reads examples {first}-{first + share - 1} "
                  f"of every global batch of {cfg.batch_size}", flush=True)
        return data.train_pipeline(source, cfg.batch_size, cfg.image_size, cfg.seed,
                                   start_step=phase.start_step, num_steps=phase.num_steps,
                                   input_context=context, autotune=options is None)
    return strategy.distribute_datasets_from_function(worker_stream, options)


def make_callbacks(cfg: RunConfig, moco: model.MomentumContrast, source: data.Source,
                   manager: tf.train.CheckpointManager, position: preemption.RunPosition,
                   steps: int, phase: preemption.Phase, stop: preemption.StopRequest,
                   run_dir: str) -> list:
    """Callbacks writing into run_dir (this worker's share of --model_dir), for the fit calls
    from `phase` (the first) on, in the order the epoch logs need: timer first, guards before
    the saver, pseudo-labels and kNN before the loggers, saver after metrics.csv, plotter last."""
    initial_epoch = phase.first_epoch
    resumed_epoch = initial_epoch if phase.start_step % steps else None  # resumed mid-epoch
    saver = preemption.StepCheckpointer(manager, position, steps, phase.start_step,
                                        cfg.checkpoint_every_steps, stop, lock_dir=run_dir)
    result = [callbacks.EpochTimer(),  # first: the epoch time includes the clustering pass
              callbacks.StopOnNonFiniteLoss(manager, steps),
              preemption.ResumeMetrics(position, resumed_epoch)]
    if cfg.collapse_steps:  # no saves while the embedding looks collapsed
        watch = collapse.StopOnCollapse(manager, cfg.collapse_spread, cfg.collapse_steps,
                                        phase.start_step)
        result.append(watch)
        saver.hold = lambda: watch.collapsing
    pictures = os.path.join(run_dir, "diagnostics")
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "logs", "diagnostics"))
    worker = distribute.input_context(moco.distribute_strategy)  # each embeds 1/W, then gathers
    train_views = data.embedding_pipeline(source, cfg.embed_batch_size, cfg.image_size,
                                          input_context=worker)
    knn_on = bool(cfg.knn_every) and source.labels is not None
    subset = data.fixed_subset(source.num_examples, cfg.knn_max_train, cfg.seed) if knn_on else None
    query_pass = None  # the kNN monitor's query-encoder pass, its embeddings kept for the clustering
    clusters = cfg.detects_by_clusters
    if clusters and cfg.cluster_features == pseudo_labels.QUERY_VIEW and knn_on and subset is None:
        query_pass = embedding.SharedPass(
            embedding.DatasetEmbedder(moco.encoder, moco.distribute_strategy, train_views,
                                      source.num_examples, output=("features", "embedding")),
            lambda: moco.optimizer.iterations.numpy())
    if cfg.ifnd:
        result.append(pseudo_labels.PseudoLabelCallback(
            train_views, cfg.acceptance_schedule(), cfg.kmeans(), cfg.seed, cfg.cluster_features,
            true_labels=source.labels, log_dir=os.path.join(run_dir, "logs", "ifnd"),
            confidence_rule=cfg.fn_confidence, neighbours_k=cfg.fn_neighbours_k,
            oracle_fraction=cfg.fn_oracle_fraction if cfg.fn_oracle else None,
            min_levels=cfg.fn_min_levels, query_pass=query_pass,
            quantile=None if clusters else cfg.fn_quantile))
        result[-1].resumed_epoch = resumed_epoch  # its restored label table is kept
    if knn_on:  # before the loggers: knn_top1 joins the logs
        try:
            test = data.load_source(cfg.dataset, "test", cfg.data_dir, cfg.download,
                                    cfg.verify_images, cfg.strict_data, cfg.model_dir)
        except data.DataError as e:
            raise data.DataError(
                f"{e} (the kNN monitor needs it; --knn_every=0 turns it off)") from e
        result.append(monitors.KnnMonitor(
            moco.distribute_strategy,
            train_views if subset is None else data.embedding_pipeline(
                source, cfg.embed_batch_size, cfg.image_size, subset, worker),
            source.labels if subset is None else source.labels[subset],
            data.embedding_pipeline(test, cfg.embed_batch_size, cfg.image_size,
                                    input_context=worker),
            test.labels, source.num_classes, cfg.knn_every, cfg.knn_k, cfg.knn_temperature,
            pictures, writer, cfg.seed, train_pass=query_pass))
    metrics_csv = os.path.join(run_dir, "metrics.csv")
    result += [callbacks.WriterLockCheck(run_dir),  # before anything of the epoch is written
               callbacks.LearningRateLogger(),
               keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False),
               callbacks.MetricsCsv(metrics_csv, initial_epoch),
               saver,
               monitors.DiagnosticsPlotter(metrics_csv, pictures, writer)]  # after metrics.csv
    return result
