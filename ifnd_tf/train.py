"""Pre-train an encoder with MoCo v2 + IFND.

    python -m ifnd_tf.train --flagfile=flags/fashion_mnist.cfg --model_dir=/tmp/run

Re-running the same command resumes from the last completed epoch in --model_dir.
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import json
import os

import keras
import tensorflow as tf
from absl import app

from ifnd_tf import builder, cli, config, data, distribute, export, model
from ifnd_tf.config import FLAGS


def restore_latest(moco: model.MomentumContrast, run_dir: str, chief_dir: str):
    """Checkpoint manager writing into run_dir, and the epoch counter (auto-resume).

    Every worker resumes from the chief's latest checkpoint, so all start from one state.
    """
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    checkpoint = tf.train.Checkpoint(model=moco, optimizer=moco.optimizer, epoch=epoch)
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(run_dir, "checkpoints"),
                                         max_to_keep=3)
    latest = tf.train.latest_checkpoint(os.path.join(chief_dir, "checkpoints"))
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        print(f"resumed from {latest} (epoch {int(epoch.numpy())})", flush=True)
    return manager, epoch


def write_flags(model_dir: str) -> None:
    """flags.json of the run; a --model_dir that already holds a run must match it."""
    path = os.path.join(model_dir, "flags.json")
    if os.path.exists(path) and tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")):
        with open(path) as f:
            config.check_same_run(json.load(f))
    values = {flag.name: flag.value for flag in FLAGS.get_flags_for_module(config.__name__)}
    with open(path + ".tmp", "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def run() -> str | None:
    """Train (or resume) and export; returns the SavedModel directory if exported."""
    f = FLAGS
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
    os.makedirs(run_dir, exist_ok=True)
    write_flags(run_dir)
    steps = cfg.steps_per_epoch or source.num_examples // cfg.batch_size
    with strategy.scope():
        moco = builder.build_model(cfg, source.num_examples, steps,
                                   builder.use_jit(cfg.jit_compile, strategy, cfg.deterministic))
        manager, epoch_counter = restore_latest(moco, run_dir, cfg.model_dir)
    initial_epoch = int(epoch_counter.numpy())
    print(builder.describe_step(moco, cfg.jit_compile), flush=True)
    if initial_epoch < cfg.epochs:
        # The data stream is a function of (seed, step): a resumed run sees the same batches.
        train_data = data.train_pipeline(
            source, cfg.batch_size, cfg.image_size, cfg.seed, start_step=initial_epoch * steps,
            num_steps=(cfg.epochs - initial_epoch) * steps)
        moco.fit(train_data, epochs=cfg.epochs, initial_epoch=initial_epoch,
                 steps_per_epoch=steps,
                 callbacks=builder.make_callbacks(cfg, moco, source, manager, epoch_counter,
                                                  steps, initial_epoch, run_dir),
                 verbose=cfg.verbose, shuffle=False)
    if not cfg.export or not distribute.is_chief(strategy):
        return None
    saved_model = export.export_encoder(moco.encoder, os.path.join(cfg.model_dir, "export"))
    print(f"exported encoder to {saved_model}", flush=True)
    return saved_model


main = cli.main("ifnd_tf.train", run)


if __name__ == "__main__":
    app.run(main)
