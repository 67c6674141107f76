"""`pretrain(config)`: what `python -m ifnd_tf.train` does, callable from Python.

Train (or resume) MoCo v2 with a false-negative detector in config.run.model_dir and export the
encoder. A user's encoder, detector or data replace the named ones:

    from ifnd_tf import RunConfig, pretrain
    result = pretrain(RunConfig().replace(dataset="digits", image_size=16, epochs=3))

Re-running with the same config resumes from the newest readable checkpoint of the run dir.
"""
import dataclasses
import json
import os

import keras
import tensorflow as tf

from ifnd_tf import (
    builder,
    config,
    detectors,
    distribute,
    export,
    model,
    preemption,
    run_directory,
    sources,
    validation,
)
from ifnd_tf.config import RunConfig


@dataclasses.dataclass
class Pretrained:
    """What `pretrain` returns: the trained model, the SavedModel directory (None: not
    exported, or not the chief) and this worker's run directory."""

    model: model.MomentumContrast
    saved_model: str | None
    run_dir: str


def pretrain(cfg: RunConfig, encoder: keras.Model | None = None,
             detector: detectors.FalseNegativeDetector | None | object = builder.FROM_CONFIG,
             source: sources.Source | None = None,
             extra_record: dict | None = None) -> Pretrained:
    """Train (or resume) and export.

    encoder: a Keras model (images in [0, 1] -> features, or an encoder with the MoCo head)
    instead of cfg.encoder's backbone, copied into this call's distribution strategy (or a
    function of no arguments that builds it, called in the strategy's scope). detector:
    instead of the one cfg.detection names (None: plain MoCo v2). source: training data
    instead of cfg.data.dataset (sources.from_arrays, sources.load_source, ...). extra_record:
    more entries for flags.json (the command line's evaluation flags).
    """
    validation.validate_strategy(cfg.run.strategy)
    strategy = distribute.make_strategy(cfg.run.cpu_replicas, cfg.run.strategy, cfg.run.tpu)
    cfg.validate(strategy.num_replicas_in_sync)
    _set_up_process(cfg)
    d = cfg.data
    if source is None:
        source = sources.load_source(d.dataset, "train", d.data_dir, d.download,
                                     verify_images=d.verify_images, strict=d.strict_data,
                                     cache_dir=cfg.run.model_dir)
    cfg.validate_for_data(source.num_examples, source.labels is not None)
    run_dir = distribute.worker_dir(cfg.run.model_dir, strategy)
    run_directory.acquire_lock(run_dir)  # one writer per run directory, for the process's life
    run_directory.check_dataset(run_dir, d.dataset, source.fingerprint)
    record = {**run_record(cfg, encoder, detector), **(extra_record or {})}
    write_record(run_dir, cfg, record)
    steps = cfg.schedule.steps_per_epoch or source.num_examples // cfg.schedule.batch_size
    with strategy.scope():
        user_encoder = _in_scope(encoder)
        moco = builder.build_model(cfg, source.num_examples, steps,
                                   builder.use_jit(cfg.run.jit_compile, strategy,
                                                   cfg.run.deterministic),
                                   labelled=source.labels is not None, encoder=user_encoder,
                                   detector=detector)
        manager, position = restore_latest(moco, run_dir, cfg.run.model_dir,
                                           cfg.run.keep_checkpoints)
    print(builder.describe_step(moco, cfg.run.jit_compile), flush=True)
    fit(cfg, moco, source, strategy, steps, manager, position, run_dir)
    saved_model = None
    if cfg.run.export and distribute.is_chief(strategy):
        saved_model = export_after_training(moco, cfg.run.model_dir, int(position.step.numpy()))
    return Pretrained(moco, saved_model, run_dir)


def export_after_training(moco: model.MomentumContrast, model_dir: str, step: int) -> str:
    """The export, with the run's guarantees: a stop signal during it ends the run as a
    pre-emption (after the export, exit 75 from the command), and a write error is one line
    that says the checkpoints are intact."""
    export_dir = os.path.join(model_dir, "export")
    with preemption.stop_on_signals() as stop:
        try:
            saved_model = export.export_encoder(moco.encoder, export_dir)
        except (OSError, tf.errors.OpError) as e:
            raise run_directory.RunDirError(
                f"cannot write the export to {export_dir}: {preemption.os_reason(e)}; the "
                "checkpoints are intact: free space and run the same command to export") from e
    if stop.signal_name:
        raise preemption.Preempted(stop.signal_name, step, None, during="the export")
    print(f"exported encoder to {saved_model}", flush=True)
    return saved_model


def _in_scope(encoder) -> keras.Model | None:
    """The user's encoder with its variables in the current strategy's scope: a function is
    called there; a model built before is copied there (architecture and weights)."""
    if encoder is None or not isinstance(encoder, keras.Model):
        return encoder() if encoder is not None else None
    try:
        copy = keras.models.clone_model(encoder)
    except (ValueError, TypeError, NotImplementedError) as e:
        raise config.ConfigError(
            f"encoder: cannot copy {type(encoder).__name__} {encoder.name!r} into the run's "
            "distribution strategy; pass a function of no arguments that builds it") from e
    copy.set_weights(encoder.get_weights())
    return copy


def _set_up_process(cfg: RunConfig) -> None:
    """Seeds, op determinism and the mixed-precision policy: process-wide settings."""
    keras.utils.set_random_seed(cfg.run.seed)
    if cfg.run.deterministic:
        tf.config.experimental.enable_op_determinism()
    if cfg.run.mixed_precision != "off":
        keras.mixed_precision.set_global_policy(f"mixed_{cfg.run.mixed_precision}")


def fit(cfg: RunConfig, moco: model.MomentumContrast, source: sources.Source,
        strategy: tf.distribute.Strategy, steps: int, manager: tf.train.CheckpointManager,
        position: preemption.RunPosition, run_dir: str) -> None:
    """The fit calls from the restored position to the last epoch (one per phase: a resumed
    partial epoch, then the rest). SIGTERM / SIGINT save and raise preemption.Preempted."""
    phases = preemption.fit_phases(int(position.step.numpy()), steps, cfg.schedule.epochs)
    if not phases:
        return
    with preemption.stop_on_signals() as stop:
        parts = builder.RunParts(manager, position, steps, phases[0], stop, run_dir)
        fit_callbacks = builder.make_callbacks(cfg, moco, source, parts)
        for phase in phases:
            # The data stream is a function of (seed, step): a resumed run sees the same batches.
            moco.fit(builder.train_input(cfg, source, strategy, phase), epochs=phase.end_epoch,
                     initial_epoch=phase.first_epoch, steps_per_epoch=phase.steps_per_epoch,
                     callbacks=fit_callbacks, verbose=cfg.run.verbose, shuffle=False)


def restore_latest(moco: model.MomentumContrast, run_dir: str, chief_dir: str,
                   keep_checkpoints: int = 3):
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
                                         max_to_keep=keep_checkpoints)
    if latest:
        print(f"resumed from {latest} (epoch {int(position.epoch.numpy())}, "
              f"step {int(position.step.numpy())})", flush=True)
    return manager, position


def run_record(cfg: RunConfig, encoder, detector) -> dict:
    """flags.json's content: every setting by flag name, a user's encoder or detector named
    in place of the backbone or detector the config names (so a resume with another one is
    refused like a changed flag)."""
    record = cfg.flat()
    if encoder is not None:
        record["backbone"] = f"custom:{getattr(encoder, 'name', type(encoder).__name__)}"
    if detector is not builder.FROM_CONFIG:
        record["fn_detector"] = "none" if detector is None else \
            f"custom:{type(detector).__name__}"
        record["ifnd"] = detector is not None
    return record


def write_record(run_dir: str, cfg: RunConfig, record: dict) -> None:
    """flags.json of the run; a run directory that already holds a run must match it (and
    must still have it: a deleted record would turn the resume check off)."""
    path = os.path.join(run_dir, "flags.json")
    if run_directory.holds_checkpoints(os.path.join(run_dir, "checkpoints")):
        config.check_same_run(run_directory.read_record(path, "flags"), record,
                              cfg.run.model_dir)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)
