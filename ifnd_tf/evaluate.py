"""What linear_eval, finetune and the kNN monitor share: the standard evaluation protocols.

Weighted kNN (InstDisc / lightly), loading the exported encoder, class-balanced labelled
subsets, labelled pipelines, the SGD set-up of the classifiers and result.json.
"""
import json
import os
import sys
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from ifnd_tf import augment, config, data, distribute

fold_in = tf.random.experimental.stateless_fold_in

STEP_BOUNDARIES = (0.6, 0.8)  # step schedule: lr x 0.1 at 60 % and 80 % of training (MoCo)


def knn_scores(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
               num_classes: int, k: int = 200, temperature: float = 0.1,
               batch_size: int = 1024) -> np.ndarray:
    """Class scores [num_test, num_classes] of the weighted kNN classifier.

    Each test sample's k nearest train samples (cosine similarity s) vote for their class with
    weight exp(s / temperature), as in InstDisc and lightly's kNN monitor. Test samples are
    processed in batches so the similarity matrix never holds all pairs at once.
    """
    train = tf.math.l2_normalize(tf.constant(train_features, tf.float32), axis=1)
    labels = tf.constant(train_labels, tf.int64)
    k = min(k, len(train_features))
    scores = []
    for start in range(0, len(test_features), batch_size):
        query = tf.math.l2_normalize(
            tf.constant(test_features[start:start + batch_size], tf.float32), axis=1)
        similarity, neighbours = tf.math.top_k(tf.matmul(query, train, transpose_b=True), k)
        votes = tf.one_hot(tf.gather(labels, neighbours), num_classes)
        scores.append(tf.reduce_sum(votes * tf.exp(similarity / temperature)[..., None], axis=1))
    return tf.concat(scores, 0).numpy()


def knn_top1(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
             test_labels: np.ndarray, num_classes: int, k: int = 200,
             temperature: float = 0.1) -> float:
    """Top-1 accuracy of the weighted kNN classifier on the test features."""
    scores = knn_scores(train_features, train_labels, test_features, num_classes, k, temperature)
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(test_labels)))


def export_dir_of(saved_model: str) -> str:
    """The export folder: it holds saved_model/ and, next to it, encoder.keras."""
    return os.path.dirname(os.path.normpath(os.path.abspath(saved_model)))


def from_flags(name: str) -> tuple[str, str, tf.distribute.Strategy, data.Source, data.Source]:
    """What an evaluation command needs, from the flags: the SavedModel path (default
    <--model_dir>/export/saved_model), the folder for result.json (default <run>/<name>,
    beside the export folder), the strategy, and the train and test splits."""
    f = config.FLAGS
    config.validate_eval_flags()
    saved_model = f.saved_model or os.path.join(f.model_dir, "export", "saved_model")
    eval_dir = f.eval_dir or os.path.join(os.path.dirname(export_dir_of(saved_model)), name)
    strategy = distribute.make_strategy(f.cpu_replicas)
    splits = [data.load_source(f.dataset, split, f.data_dir, f.download)
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
    path = os.path.join(export_dir_of(saved_model), "encoder.keras")
    if not os.path.exists(path):
        raise config.ConfigError(
            f"--saved_model={saved_model}: missing {path} (written by ifnd_tf.train's export)")
    encoder = keras.models.load_model(path)
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


def labelled_pipeline(source: data.Source, batch_size: int, image_size: int,
                      indices: np.ndarray | None = None, train: bool = False,
                      seed: int = 0) -> tf.data.Dataset:
    """Batches of (image in [0, 1], true label), optionally only the examples in `indices`.

    Evaluation: every example once, centre crop. train=True: shuffled, random resized crop +
    horizontal flip (SimCLR's fine-tuning augmentation).
    """
    if source.labels is None:
        raise data.DataError(f"--dataset={source.name} has no labels to evaluate with")
    labels = tf.constant(source.labels, tf.int64)
    ds = source.examples
    if indices is not None:
        keep = np.zeros(source.num_examples, bool)
        keep[indices] = True
        keep = tf.constant(keep)
        ds = ds.filter(lambda index, image: tf.gather(keep, index)).cache()
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(indices)))  # Keras: epoch size

    def prepare(example, seed):
        index, image = example
        image = augment.to_float_rgb(image)
        if train:
            image = augment.random_resized_crop(image, image_size, fold_in(seed, 0))
            image = tf.image.stateless_random_flip_left_right(image, fold_in(seed, 1))
        else:
            image = augment.center_crop(image, image_size)
        return image, tf.gather(labels, index)

    if train:
        size = len(indices) if indices is not None else source.num_examples
        ds = ds.shuffle(min(size, 50_000), seed=seed, reshuffle_each_iteration=True)
    # Stateless draws from a seeded stream that changes every epoch: reproducible augmentation.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip(ds, seeds).map(prepare, num_parallel_calls=data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(data.AUTOTUNE)


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


def entry_point(program: str, run: Callable[[], object]) -> Callable[[list[str]], None]:
    """The absl main of an evaluation command: warnings only, and a bad flag or missing file
    ends the program with one line that names it."""
    def main(argv):
        del argv
        logging.set_verbosity(logging.WARNING)
        try:
            run()
        except (config.ConfigError, data.DataError) as e:
            sys.exit(f"{program}: error: {e}")
    return main
