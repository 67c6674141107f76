"""Pre-train an encoder with MoCo v2 + IFND.

    python -m ifnd_tf.train --flagfile=flags/fashion_mnist.cfg --model_dir=/tmp/run

Re-running the same command resumes from the last completed epoch in --model_dir.
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import json
import os
import sys

import keras
import tensorflow as tf
from absl import app, logging

from ifnd_tf import (
    callbacks,
    collapse,
    config,
    data,
    distribute,
    export,
    model,
    monitors,
    preemption,
    run_directory,
)
from ifnd_tf.config import FLAGS


def use_jit(mode: str, strategy: tf.distribute.Strategy, deterministic: bool) -> bool:
    """XLA for the step: `on` (validated: one replica, no op determinism), or `auto` = exactly
    one GPU without determinism (XLA was not faster on CPU; docs/design.md "XLA")."""
    if mode == "auto":
        return (strategy.num_replicas_in_sync == 1 and not deterministic
                and bool(tf.config.list_physical_devices("GPU")))
    return mode == "on"


def describe_step(moco: model.MomentumContrast, mode: str) -> str:
    """One start-up line saying whether the step really is XLA-compiled (Keras may refuse)."""
    if moco.jit_compile:
        return "train step: XLA-compiled"
    why = {"off": "--jit_compile=off", "on": "Keras declined to compile this model"}.get(
        mode, "--jit_compile=auto compiles only on exactly one GPU with --deterministic=false")
    return f"train step: not XLA-compiled ({why})"


def build_model(num_examples: int, steps_per_epoch: int, jit: bool) -> model.MomentumContrast:
    """Encoders, MoCo model and SGD with linear-scaled lr and cosine decay (call in scope)."""
    f = FLAGS
    key_groups = model.key_bn_groups(f.key_bn_splits,
                                     tf.distribute.get_strategy().num_replicas_in_sync)
    encoders = [model.build_encoder(f.backbone, f.image_size, f.width_multiplier,
                                    f.embedding_dim, f.sync_bn, bn_groups=groups)
                for groups in (None, key_groups)]  # query, key (shuffle-BN groups)
    moco = model.MomentumContrast(
        encoders[0], encoders[1], num_examples, queue_size=f.queue_size,
        num_levels=len(config.cluster_counts()) if f.ifnd else 1, temperature=f.temperature,
        momentum=f.moco_momentum, fn_strategy=f.fn_strategy, key_bn_splits=f.key_bn_splits,
        weight_decay=f.weight_decay, seed=f.seed,
        remember_keys=f.ifnd and f.cluster_features == callbacks.TRAIN_KEYS)
    moco.copy_query_to_key_encoder()
    schedule = keras.optimizers.schedules.CosineDecay(
        f.learning_rate * f.batch_size / 256, decay_steps=f.epochs * steps_per_epoch)
    optimizer = keras.optimizers.SGD(schedule, momentum=f.sgd_momentum)
    if f.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    moco.compile(optimizer=optimizer, jit_compile=jit)
    optimizer.build(moco.encoder.trainable_variables)
    return moco


def restore_latest(moco: model.MomentumContrast, run_dir: str, chief_dir: str):
    """Checkpoint manager writing into run_dir, and the run's position (auto-resume).

    Every worker resumes from the chief's newest readable checkpoint, so all start from one
    state; only the chief moves damaged checkpoints aside (run_directory.restore_newest).
    """
    position = preemption.RunPosition(moco.metrics)
    checkpoint = tf.train.Checkpoint(model=moco, optimizer=moco.optimizer,
                                     **position.checkpoint_items())
    latest = run_directory.restore_newest(checkpoint, os.path.join(chief_dir, "checkpoints"),
                                          may_move=run_dir == chief_dir)
    # After the scan, which rewrites the state file the manager reads to name what is there.
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(run_dir, "checkpoints"),
                                         max_to_keep=FLAGS.keep_checkpoints)
    if latest:
        print(f"resumed from {latest} (epoch {int(position.epoch.numpy())}, "
              f"step {int(position.step.numpy())})", flush=True)
    return manager, position


def write_flags(model_dir: str) -> None:
    """flags.json of the run; a --model_dir that already holds a run must match it."""
    path = os.path.join(model_dir, "flags.json")
    if os.path.exists(path) and run_directory.holds_checkpoints(os.path.join(model_dir, "checkpoints")):
        with open(path) as f:
            config.check_same_run(json.load(f))
    values = {flag.name: flag.value for flag in FLAGS.get_flags_for_module(config.__name__)}
    with open(path + ".tmp", "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def make_callbacks(moco, strategy, source, manager, position, steps: int,
                   phase: preemption.Phase, stop: preemption.StopRequest, run_dir: str) -> list:
    """Callbacks writing into run_dir (this worker's share of --model_dir), for the fit
    calls from `phase` (the first) on."""
    f = FLAGS
    initial_epoch = phase.first_epoch
    resumed_epoch = initial_epoch if phase.start_step % steps else None  # resumed mid-epoch
    saver = preemption.StepCheckpointer(manager, position, steps, phase.start_step,
                                        f.checkpoint_every_steps, stop)
    result = [callbacks.StopOnNonFiniteLoss(manager, steps),
              preemption.ResumeMetrics(position, resumed_epoch)]
    if f.collapse_steps:  # with the NaN guard, before the saver; no saves while collapsing
        watch = collapse.StopOnCollapse(manager, f.collapse_spread, f.collapse_steps,
                                        phase.start_step)
        result.append(watch)
        saver.hold = lambda: watch.collapsing
    result.insert(0, monitors.EpochTimer())  # first: the epoch time includes the clustering pass
    pictures = os.path.join(run_dir, "diagnostics")
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "logs", "diagnostics"))
    if f.ifnd:
        result.append(callbacks.PseudoLabelCallback(
            data.embedding_pipeline(source, f.embed_batch_size, f.image_size),
            source.num_examples, config.cluster_counts(), f.epochs, f.warmup_epochs,
            f.alpha_start, f.alpha_end, f.alpha_shape, f.kmeans_backend, f.seed, strategy,
            f.kmeans_iterations, f.kmeans_max_points_per_centroid, true_labels=source.labels,
            log_dir=os.path.join(run_dir, "logs", "ifnd"),
            kmeans_threads=f.kmeans_threads or None, cluster_features=f.cluster_features))
        result[-1].resumed_epoch = resumed_epoch  # its restored label table is kept
    if f.knn_every and source.labels is not None:  # before the loggers: knn_top1 joins the logs
        try:
            test = data.load_source(f.dataset, "test", f.data_dir, f.download)
        except data.DataError as e:
            raise data.DataError(f"{e} (the kNN monitor needs it; --knn_every=0 turns it off)") from e
        result.append(monitors.KnnMonitor(
            strategy, data.embedding_pipeline(source, f.embed_batch_size, f.image_size),
            source.labels, data.embedding_pipeline(test, f.embed_batch_size, f.image_size),
            test.labels, source.num_classes, f.knn_every, f.knn_k, f.knn_temperature, pictures,
            writer, f.seed))
    result += [callbacks.LearningRateLogger(),
               keras.callbacks.TensorBoard(os.path.join(run_dir, "logs"), write_graph=False),
               callbacks.MetricsCsv(os.path.join(run_dir, "metrics.csv"), initial_epoch),
               saver]
    result.append(monitors.DiagnosticsPlotter(os.path.join(run_dir, "metrics.csv"), pictures,
                                              writer))  # after metrics.csv has this epoch's row
    return result


def run() -> str | None:
    """Train (or resume) and export; returns the SavedModel directory if exported."""
    f = FLAGS
    config.validate_strategy_flags()
    strategy = distribute.make_strategy(f.cpu_replicas, f.strategy, f.tpu)
    config.validate_flags(strategy.num_replicas_in_sync)
    config.validate_eval_flags()  # before anything is written into --model_dir
    keras.utils.set_random_seed(f.seed)
    if f.deterministic:
        tf.config.experimental.enable_op_determinism()
    if f.mixed_precision != "off":
        keras.mixed_precision.set_global_policy(f"mixed_{f.mixed_precision}")
    source = data.load_source(f.dataset, "train", f.data_dir, f.download,
                              verify_images=f.verify_images, strict=f.strict_data)
    config.validate_against_data(source.num_examples)
    run_dir = distribute.worker_dir(f.model_dir, strategy)
    run_directory.acquire_lock(run_dir)  # one writer per run directory, for the process's life
    run_directory.check_dataset(run_dir, f.dataset, source.fingerprint)
    write_flags(run_dir)
    steps = f.steps_per_epoch or source.num_examples // f.batch_size
    with strategy.scope():
        moco = build_model(source.num_examples, steps,
                           use_jit(f.jit_compile, strategy, f.deterministic))
        manager, position = restore_latest(moco, run_dir, f.model_dir)
    print(describe_step(moco, f.jit_compile), flush=True)
    phases = preemption.fit_phases(int(position.step.numpy()), steps, f.epochs)
    with preemption.stop_on_signals() as stop:
        fit_callbacks = phases and make_callbacks(moco, strategy, source, manager, position,
                                                  steps, phases[0], stop, run_dir)
        for phase in phases:
            # The data stream is a function of (seed, step): a resumed run sees the same batches.
            train_data = data.train_pipeline(source, f.batch_size, f.image_size, f.seed,
                                             start_step=phase.start_step,
                                             num_steps=phase.num_steps)
            moco.fit(train_data, epochs=phase.end_epoch, initial_epoch=phase.first_epoch,
                     steps_per_epoch=phase.steps_per_epoch, callbacks=fit_callbacks,
                     verbose=f.verbose, shuffle=False)
    if not f.export or not distribute.is_chief(strategy):
        return None
    saved_model = export.export_encoder(moco.encoder, os.path.join(f.model_dir, "export"))
    print(f"exported encoder to {saved_model}", flush=True)
    return saved_model


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    try:
        run()
    except (config.ConfigError, data.DataError, callbacks.DivergenceError,
            run_directory.RunDirError, OSError) as e:  # OSError: e.g. a full disk, names the file
        sys.exit(f"ifnd_tf.train: error: {e}")
    except preemption.Preempted as e:
        print(f"ifnd_tf.train: {e}", file=sys.stderr, flush=True)
        sys.exit(preemption.PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    app.run(main)
