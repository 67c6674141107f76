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

from ifnd_tf import builder, cli, config, data, distribute, export, model, preemption, run_directory
from ifnd_tf.config import FLAGS


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


def run() -> str | None:
    """Train (or resume) and export; returns the SavedModel directory if exported."""
    f = FLAGS
    config.validate_strategy_flags()
    strategy = distribute.make_strategy(f.cpu_replicas, f.strategy, f.tpu)
    config.validate_flags(strategy.num_replicas_in_sync)
    config.validate_eval_flags()  # before anything is written into --model_dir
    cfg = config.RunConfig.from_flags()
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    if cfg.mixed_precision != "off":
        keras.mixed_precision.set_global_policy(f"mixed_{cfg.mixed_precision}")
    source = data.load_source(cfg.dataset, "train", cfg.data_dir, cfg.download,
                              verify_images=cfg.verify_images, strict=cfg.strict_data,
                              cache_dir=cfg.model_dir)
    config.validate_against_data(source.num_examples, source.labels is not None)
    run_dir = distribute.worker_dir(cfg.model_dir, strategy)
    run_directory.acquire_lock(run_dir)  # one writer per run directory, for the process's life
    run_directory.check_dataset(run_dir, cfg.dataset, source.fingerprint)
    write_flags(run_dir)
    steps = cfg.steps_per_epoch or source.num_examples // cfg.batch_size
    with strategy.scope():
        moco = builder.build_model(cfg, source.num_examples, steps,
                                   builder.use_jit(cfg.jit_compile, strategy, cfg.deterministic),
                                   labelled=source.labels is not None)
        manager, position = restore_latest(moco, run_dir, cfg.model_dir, cfg.keep_checkpoints)
    print(builder.describe_step(moco, cfg.jit_compile), flush=True)
    phases = preemption.fit_phases(int(position.step.numpy()), steps, cfg.epochs)
    with preemption.stop_on_signals() as stop:
        fit_callbacks = phases and builder.make_callbacks(cfg, moco, source, manager, position,
                                                          steps, phases[0], stop, run_dir)
        for phase in phases:
            # The data stream is a function of (seed, step): a resumed run sees the same batches.
            train_data = builder.train_input(cfg, source, strategy, phase)
            try:
                moco.fit(train_data, epochs=phase.end_epoch, initial_epoch=phase.first_epoch,
                         steps_per_epoch=phase.steps_per_epoch, callbacks=fit_callbacks,
                         verbose=cfg.verbose, shuffle=False)
            except preemption.Preempted as e:  # not an error: its own line and exit code
                print(f"ifnd_tf.train: {e}", file=sys.stderr, flush=True)
                sys.exit(preemption.PREEMPTED_EXIT_CODE)
    if not cfg.export or not distribute.is_chief(strategy):
        return None
    saved_model = export.export_encoder(moco.encoder, os.path.join(cfg.model_dir, "export"))
    print(f"exported encoder to {saved_model}", flush=True)
    return saved_model


# OSError: e.g. a full disk or an unwritable file, named in its message.
main = cli.main("ifnd_tf.train", run, expected=(OSError,))


if __name__ == "__main__":
    cli.run(main)
