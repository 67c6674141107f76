"""What linear_eval and finetune share: the standard evaluation protocols.

Loading the exported encoder, class-balanced labelled subsets, the SGD set-up of the
classifiers and result.json (weighted kNN: knn.py; labelled pipelines: data.py). No flags: the commands pass values.
"""
import json
import os

import keras
import numpy as np
import tensorflow as tf

from ifnd_tf import command_settings, config, distribute, sources

STEP_BOUNDARIES = (0.6, 0.8)  # step schedule: lr x 0.1 at 60 % and 80 % of training (MoCo)


def export_dir_of(saved_model: str) -> str:
    """The export folder: it holds saved_model/ and, next to it, encoder.keras."""
    return os.path.dirname(os.path.normpath(os.path.abspath(saved_model)))


def setup(name: str, cfg: config.RunConfig, ev: command_settings.EvalConfig
          ) -> tuple[str, str, tf.distribute.Strategy, sources.Source, sources.Source]:
    """What an evaluation command needs: the SavedModel path (default
    <model_dir>/export/saved_model), the folder for result.json (default <run>/<name>, beside
    the export folder), the strategy, and the train and test splits."""
    ev.validate()
    saved_model = ev.saved_model or os.path.join(cfg.run.model_dir, "export", "saved_model")
    eval_dir = ev.eval_dir or os.path.join(os.path.dirname(export_dir_of(saved_model)), name)
    strategy = distribute.make_strategy(cfg.run.cpu_replicas)
    d = cfg.data
    splits = [sources.load_source(d.dataset, split, d.data_dir, d.download)
              for split in ("train", "test")]
    return saved_model, eval_dir, strategy, *splits


def load_encoder(saved_model: str, image_size: int | None = None) -> keras.Model:
    """The trainable Keras encoder exported next to `saved_model` (export/encoder.keras).

    The SavedModel itself only has inference signatures; fine-tuning and the weight check of
    the probe need the Keras model written beside it by the same export. The SavedModel must
    exist (a mistyped path must not evaluate whatever encoder lies beside it), and given
    image_size, the encoder must take images of that size.
    """
    if not os.path.isdir(saved_model):
        raise config.ConfigError(f"--saved_model={saved_model}: no such directory (expected a "
                                 "run's export/saved_model)")
    if not os.path.exists(os.path.join(saved_model, "saved_model.pb")):
        raise config.ConfigError(f"--saved_model={saved_model}: not a SavedModel (no "
                                 "saved_model.pb); expected a run's export/saved_model")
    path = os.path.join(export_dir_of(saved_model), "encoder.keras")
    if not os.path.exists(path):
        raise config.ConfigError(
            f"--saved_model={saved_model}: missing {path} (written by ifnd_tf.train's export)")
    try:
        encoder = keras.models.load_model(path)
    except Exception as e:  # Keras raises many types for a damaged archive (zip, JSON, h5)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise config.ConfigError(f"--saved_model={saved_model}: {path} does not load "
                                 f"({reason}); export again with ifnd_tf.train (its "
                                 "checkpoints) or pass another run's export") from e
    trained_size = encoder.input.shape[1]
    if image_size is not None and trained_size != image_size:
        raise config.ConfigError(
            f"--image_size={image_size}, but the encoder in {path} was trained on "
            f"{trained_size}x{trained_size} images: pass the pre-training flags (--flagfile)")
    return encoder


def labelled_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced random subset of about `fraction` of the examples.

    Every class gets round(fraction * N / num_classes) examples (at least 1; all of a class
    that has fewer), drawn with `seed`, so the 1 % / 10 % subsets are reproducible.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels)
    per_class = max(1, round(fraction * len(labels) / len(classes)))
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(chosen))


def lr_schedule(learning_rate: float, total_steps: int,
                schedule: str) -> keras.optimizers.schedules.LearningRateSchedule:
    """Cosine decay to 0, or step: x0.1 after 60 % and again after 80 % of the steps (MoCo)."""
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=total_steps)
    if schedule == "step":
        return keras.optimizers.schedules.PiecewiseConstantDecay(
            [int(b * total_steps) for b in STEP_BOUNDARIES],
            [learning_rate, learning_rate * 0.1, learning_rate * 0.01])
    raise ValueError(f"schedule must be cosine or step, got {schedule!r}")


def sgd(learning_rate: float, total_steps: int, schedule: str) -> keras.optimizers.SGD:
    """SGD with momentum 0.9 on `lr_schedule`; no weight decay (MoCo probe, SimCLR fine-tune)."""
    return keras.optimizers.SGD(lr_schedule(learning_rate, total_steps, schedule), momentum=0.9)


def compile_classifier(classifier: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    """Cross-entropy on logits; top-1 and top-5 accuracy."""
    classifier.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")])


def write_result(eval_dir: str, result: dict) -> str:
    """Write result.json in eval_dir; returns its path."""
    os.makedirs(eval_dir, exist_ok=True)
    path = os.path.join(eval_dir, "result.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    return path
