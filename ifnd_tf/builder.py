"""What a pre-training run is made of, from a RunConfig: the compiled model (encoders,
detector, optimizer), its input and its callbacks. pretrain.py runs them; bench/ and the tests
build the same model from a RunConfig without parsing flags.
"""
import dataclasses
import os

import keras
import tensorflow as tf

from ifnd_tf import (
    callbacks,
    collapse,
    config,
    data,
    detectors,
    distribute,
    embedding,
    encoders,
    keras_compat,
    model,
    monitors,
    preemption,
    pseudo_labels,
    sources,
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
    why = {"off": "--jit_compile=off", "on": keras_compat.JIT_DECLINED}.get(
        mode, "--jit_compile=auto compiles only on exactly one GPU with --deterministic=false")
    return f"train step: not XLA-compiled ({why})"


FROM_CONFIG = object()  # build_model's default: the detector the config names


def make_detector(cfg: RunConfig, labelled: bool) -> detectors.FalseNegativeDetector | None:
    """The detector the flags name (None for plain MoCo v2): the command line's one place
    that turns --ifnd, --fn_detector and --fn_oracle into an object."""
    d = cfg.detection
    if not d.ifnd:
        return None
    if d.fn_detector == config.QUANTILE:
        return detectors.NearestFraction(d.fn_quantile, count_true_labels=labelled)
    if d.fn_detector == config.TOP_K:
        top_k = d.fn_top_k or max(1, round(d.fn_quantile * cfg.moco.queue_size))
        return detectors.TopKThreshold(top_k, d.fn_threshold, count_true_labels=labelled)
    if d.fn_detector == config.LEARNED_THRESHOLD:
        return detectors.LearnedThreshold(d.fn_quantile, d.fn_threshold_lr,
                                          count_true_labels=labelled)
    if d.fn_oracle:
        return detectors.OracleLabels(d.num_clusters, d.fn_oracle_fraction, cfg.run.seed)
    clusters = (d.kmeans(), d.fn_confidence, d.fn_neighbours_k, d.fn_min_levels,
                d.cluster_features, cfg.run.seed)
    if d.fn_detector == config.SOFT_DROP:
        return detectors.SoftClusterDrop(*clusters, temperature=d.fn_drop_temperature,
                                         count_true_labels=labelled)
    return detectors.ClusterLabels(*clusters)


def build_encoders(cfg: RunConfig) -> tuple[keras.Model, keras.Model | None]:
    """Query and key encoder of the named backbone (call in scope). Ours are built twice (the
    key's BatchNorm grouped for shuffle-BN); for a keras.applications net the key is None:
    MomentumContrast copies the query encoder (encoders.key_encoder_for)."""
    e = cfg.encoder
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    key_groups = encoders.key_bn_groups(cfg.moco.key_bn_splits, replicas)
    query = encoders.build_encoder(e.backbone, cfg.data.image_size, e.width_multiplier,
                                   e.embedding_dim, e.sync_bn)
    if e.backbone not in encoders.BACKBONES:
        return query, None
    return query, encoders.build_encoder(e.backbone, cfg.data.image_size, e.width_multiplier,
                                         e.embedding_dim, e.sync_bn, bn_groups=key_groups)


def build_model(cfg: RunConfig, num_examples: int, steps_per_epoch: int, jit: bool = False,
                labelled: bool = False, encoder: keras.Model | None = None,
                detector: detectors.FalseNegativeDetector | None | object = FROM_CONFIG
                ) -> model.MomentumContrast:
    """Encoders, MoCo model and SGD with linear-scaled lr and cosine decay (call in scope).

    jit: XLA for the step (the whole step on one replica, the per-replica part on several);
    labelled: the dataset has true labels (a detector may count its hits against them);
    encoder: a user's Keras model instead of the named backbone; detector: a user's detector
    instead of the one the config names (None: plain MoCo v2).
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    query, key = build_encoders(cfg) if encoder is None else (encoder, None)
    if detector is FROM_CONFIG:
        detector = make_detector(cfg, labelled)
    moco = model.MomentumContrast(query, num_examples, detector, cfg.moco, key_encoder=key,
                                  seed=cfg.run.seed, compile_per_replica=jit and replicas > 1)
    s = cfg.schedule
    schedule = keras.optimizers.schedules.CosineDecay(
        s.learning_rate * s.batch_size / 256, decay_steps=s.epochs * steps_per_epoch)
    optimizer = keras.optimizers.SGD(schedule, momentum=s.sgd_momentum)
    if cfg.run.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    # One replica: Keras compiles the whole step; several: only the per-replica part (above).
    moco.compile(optimizer=optimizer, jit_compile=jit and replicas == 1)
    optimizer.build(moco.encoder.trainable_variables)
    return moco


def train_input(cfg: RunConfig, source: sources.Source, strategy: tf.distribute.Strategy,
                phase: preemption.Phase) -> tf.distribute.DistributedDataset:
    """The phase's stream (a function of seed and step), each worker reading, decoding and
    augmenting only its share of every global batch (data.train_pipeline). On CPUs, one
    pipeline per replica (distribute.host_input_options), untuned: both remove a thread that
    kept the end of fit waiting (docs/design.md, "Epoch boundary"). A streamed source is then
    read (not decoded) once per replica."""
    options = distribute.host_input_options(strategy)
    batch_size = cfg.schedule.batch_size

    def worker_stream(context: tf.distribute.InputContext) -> tf.data.Dataset:
        if options is None and context.num_input_pipelines > 1:
            first, share = data.worker_rows(batch_size, context)
            print(f"training input: worker {context.input_pipeline_id + 1} of "
                  f"{context.num_input_pipelines} reads examples {first}-{first + share - 1} "
                  f"of every global batch of {batch_size}", flush=True)
        return data.train_pipeline(source, batch_size, cfg.data.image_size, cfg.run.seed,
                                   start_step=phase.start_step, num_steps=phase.num_steps,
                                   input_context=context, autotune=options is None)
    return strategy.distribute_datasets_from_function(worker_stream, options)


@dataclasses.dataclass(frozen=True)
class RunParts:
    """What the callbacks of a run write to and resume from."""

    manager: tf.train.CheckpointManager
    position: preemption.RunPosition
    steps_per_epoch: int
    phase: preemption.Phase  # the first fit call of this process
    stop: preemption.StopRequest
    run_dir: str  # this worker's share of --model_dir

    @property
    def resumed_epoch(self) -> int | None:
        """The epoch this process resumes mid-way, if it does."""
        return self.phase.first_epoch if self.phase.start_step % self.steps_per_epoch else None


def make_callbacks(cfg: RunConfig, moco: model.MomentumContrast, source: sources.Source,
                   parts: RunParts) -> list:
    """The callbacks of a run, in named groups, in the order the epoch logs need: timer first
    (its epoch time includes the clustering pass), guards, the detector's refresh and the kNN
    monitor before the loggers, the saver after metrics.csv, the plotter last."""
    guards, watch = _guards(cfg, parts)
    train_views = data.embedding_pipeline(
        source, cfg.detection.embed_batch_size, cfg.data.image_size,
        input_context=distribute.input_context(moco.distribute_strategy))  # each embeds 1/W
    knn_on = bool(cfg.monitor.knn_every) and source.labels is not None
    subset = data.fixed_subset(source.num_examples, cfg.monitor.knn_max_train,
                               cfg.run.seed) if knn_on else None
    query_pass = _query_pass(moco, source, train_views) if knn_on and subset is None \
        else None
    refresh = [] if moco.detector is None else [pseudo_labels.PseudoLabelCallback(
        cfg.acceptance_schedule(), train_views, true_labels=source.labels,
        log_dir=os.path.join(parts.run_dir, "logs", "ifnd"), query_pass=query_pass,
        resumed_epoch=parts.resumed_epoch)]
    writer = tf.summary.create_file_writer(os.path.join(parts.run_dir, "logs", "diagnostics"))
    monitor = [_knn_monitor(cfg, moco, source, train_views, subset, query_pass, writer,
                            parts.run_dir)] if knn_on else []
    metrics_csv = os.path.join(parts.run_dir, "metrics.csv")
    saver = preemption.StepCheckpointer(
        parts.manager, parts.position, parts.steps_per_epoch, parts.phase.start_step,
        cfg.run.checkpoint_every_steps, parts.stop,
        hold=(lambda: watch.collapsing) if watch else (lambda: False), lock_dir=parts.run_dir)
    loggers = [callbacks.WriterLockCheck(parts.run_dir),  # before anything of the epoch
               callbacks.LearningRateLogger(),
               keras.callbacks.TensorBoard(os.path.join(parts.run_dir, "logs"),
                                           write_graph=False),
               callbacks.MetricsCsv(metrics_csv, parts.phase.first_epoch)]
    pictures = [monitors.DiagnosticsPlotter(metrics_csv, os.path.join(parts.run_dir,
                                                                     "diagnostics"), writer)]
    return [callbacks.EpochTimer(), *guards, *refresh, *monitor, *loggers, saver, *pictures]


def _guards(cfg: RunConfig, parts: RunParts) -> tuple[list, collapse.StopOnCollapse | None]:
    """NaN guard, the resumed epoch's metrics, and the collapse watch (no saves while the
    embedding looks collapsed)."""
    guards = [callbacks.StopOnNonFiniteLoss(parts.manager, parts.steps_per_epoch),
              preemption.ResumeMetrics(parts.position, parts.resumed_epoch)]
    watch = None
    if cfg.run.collapse_steps:
        watch = collapse.StopOnCollapse(parts.manager, cfg.run.collapse_spread,
                                        cfg.run.collapse_steps, parts.phase.start_step)
        guards.append(watch)
    return guards, watch


def _query_pass(moco: model.MomentumContrast, source: sources.Source,
                train_views: tf.data.Dataset) -> embedding.SharedPass | None:
    """The kNN monitor's query-encoder pass, its embeddings kept for the next clustering of a
    detector that clusters the query view: one pass of the training set per epoch, not two."""
    detector = moco.detector
    if not (isinstance(detector, detectors.ClusterLabels)
            and detector.features == config.QUERY_VIEW):
        return None
    return embedding.SharedPass(
        embedding.DatasetEmbedder(moco.encoder, moco.distribute_strategy, train_views,
                                  source.num_examples, output=("features", "embedding")),
        lambda: moco.optimizer.iterations.numpy())


def _knn_monitor(cfg: RunConfig, moco: model.MomentumContrast, source: sources.Source,
                 train_views: tf.data.Dataset, subset, query_pass, writer,
                 run_dir: str) -> monitors.KnnMonitor:
    """kNN top-1 of the test split against the train split (or a fixed subset of it)."""
    d, m = cfg.data, cfg.monitor
    worker = distribute.input_context(moco.distribute_strategy)
    try:
        test = sources.load_source(d.dataset, "test", d.data_dir, d.download, d.verify_images,
                                   d.strict_data, cfg.run.model_dir)
    except sources.DataError as e:
        raise sources.DataError(
            f"{e} (the kNN monitor needs it; --knn_every=0 turns it off)") from e
    batch = cfg.detection.embed_batch_size
    train = train_views if subset is None else data.embedding_pipeline(
        source, batch, d.image_size, subset, worker)
    return monitors.KnnMonitor(
        moco.distribute_strategy, train,
        source.labels if subset is None else source.labels[subset],
        data.embedding_pipeline(test, batch, d.image_size, input_context=worker),
        test.labels, source.num_classes, m.knn_every, m.knn_k, m.knn_temperature,
        os.path.join(run_dir, "diagnostics"), writer, cfg.run.seed, train_pass=query_pass)
