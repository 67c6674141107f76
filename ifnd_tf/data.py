"""Training data: every example carries its dataset index (the queue and labels need it).

`load_source` turns a dataset name into a `Source` that reads image i by its index (random
access: arrays in memory, or one file per image); `train_pipeline` makes the two augmented views,
`embedding_pipeline` the un-augmented view used by the clustering pass, `labelled_pipeline`
(image, true label) batches for the linear probe and fine-tuning. True labels are kept only
for evaluation and diagnostics.
"""
import concurrent.futures
import dataclasses
import gzip
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from ifnd_tf import augment, fingerprint
from ifnd_tf.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class Source:
    """A dataset split in a fixed order: example i has dataset index i."""

    name: str
    read: Callable[[tf.Tensor], tf.Tensor]  # int64 index (or, in memory, a vector) -> uint8 image
    num_examples: int
    labels: np.ndarray | None  # true labels: diagnostics and evaluation only
    num_classes: int | None
    in_memory: bool  # equal-size images held in memory: `read` takes a batch of indices
    fingerprint: dict | None = None  # fingerprint.of_arrays / of_files: recorded with a run

    @property
    def examples(self) -> tf.data.Dataset:
        """(index, image) for every example, in index order."""
        return tf.data.Dataset.range(self.num_examples).map(
            lambda i: (i, self.read(i)), num_parallel_calls=AUTOTUNE)


def _from_arrays(name: str, images: np.ndarray, labels: np.ndarray | None) -> Source:
    """In memory: a constant tensor read with tf.gather (fits datasets up to ~2 GB)."""
    if images.ndim == 3:
        images = images[..., None]
    pixels = tf.constant(images)
    num_classes = int(labels.max()) + 1 if labels is not None else None
    return Source(name, lambda i: tf.gather(pixels, i), len(images), labels, num_classes,
                  in_memory=True, fingerprint=fingerprint.of_arrays(images))


def read_idx(path: str) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST / Fashion-MNIST format) into a uint8 array."""
    if not os.path.exists(path):
        raise DataError(f"missing data file {path}: install it with `{FASHION_MNIST_INSTALL}`")
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"corrupt data file {path}: {e}") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"corrupt data file {path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">u4", count=ndim, offset=4).astype(int)
    expected = 4 + 4 * ndim + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"corrupt data file {path}: {len(raw)} bytes, header says {expected}")
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_mnist(split: str, data_dir: str | None) -> Source:
    prefix = {"train": "train", "test": "t10k"}[split]
    folder = data_dir or FASHION_MNIST_DIR
    images = read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz")).astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"corrupt data in {folder}: {len(images)} images, {len(labels)} labels")
    return _from_arrays("fashion_mnist", images, labels)


def _digits(split: str) -> Source:
    """sklearn's 1,797 8x8 digits; every 5th image is the test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    keep = (np.arange(len(images)) % 5 == 0) == (split == "test")
    return _from_arrays("digits", images[keep], digits.target[keep].astype(np.int64))


def _tfds(name: str, split: str, data_dir: str | None, download: bool) -> Source:
    """A TFDS image dataset, read once into memory (CIFAR / STL size; ImageNet: use folder:)."""
    import tensorflow_datasets as tfds

    try:
        ds, info = tfds.load(name, split=split, data_dir=data_dir, download=download,
                             shuffle_files=False, with_info=True)
    except Exception as e:  # TFDS raises several types for missing data; all end up here
        hint = "" if download else " (pass --download to fetch it, or --data_dir where it lives)"
        raise DataError(f"--dataset={name}: TFDS could not load split {split!r}{hint}: "
                        f"{str(e).splitlines()[0]}") from e
    has_labels = "label" in info.features
    images, labels = [], []
    for example in tfds.as_numpy(ds):
        images.append(example["image"])
        labels.append(example["label"] if has_labels else -1)
    if len({image.shape for image in images}) > 1:
        raise DataError(f"--dataset={name}: images differ in size; use --dataset=folder:/path")
    source = _from_arrays(name, np.stack(images), np.asarray(labels, np.int64) if has_labels else None)
    if has_labels:
        source.num_classes = info.features["label"].num_classes
    return source


def _readable(path: str) -> bool:
    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return True
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
            tf.errors.PermissionDeniedError, tf.errors.UnknownError):
        return False


def _drop_unreadable(paths: list[str], labels: list[int], root: str,
                     strict: bool) -> tuple[list[str], list[int]]:
    """Decode every file once (in threads) so training never meets a corrupt image mid-epoch."""
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        readable = list(pool.map(_readable, paths))
    bad = [p for p, ok in zip(paths, readable) if not ok]
    if bad and strict:
        raise DataError(f"unreadable image {bad[0]} ({len(bad)} in {root}); "
                        "drop --strict_data to skip them")
    if bad:
        print(f"skipped {len(bad)} unreadable images in {root} (first: {bad[0]})", flush=True)
    kept = [(p, y) for p, y, ok in zip(paths, labels, readable) if ok]
    return [p for p, _ in kept], [y for _, y in kept]


def _list_class_folders(root: str) -> tuple[list[str], list[str], list[int]]:
    """Sorted class names, and image paths with their class, in a stable order."""
    try:
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        paths, labels = [], []
        for label, cls in enumerate(classes):
            files = sorted(f for f in os.listdir(os.path.join(root, cls))
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            paths += [os.path.join(root, cls, f) for f in files]
            labels += [label] * len(files)
    except OSError as e:
        raise DataError(f"--dataset=folder:{root}: cannot read {e.filename}: {e.strerror}") from e
    return classes, paths, labels


def _image_folder(root: str, split: str, verify: bool, strict: bool) -> Source:
    """Class sub-folders of images (ImageNet-100 layout: root/{train,val}/class/*.JPEG)."""
    split_dir = {"train": "train", "test": "val"}[split]
    if os.path.isdir(os.path.join(root, split_dir)):
        root = os.path.join(root, split_dir)
    elif split == "test" and os.path.isdir(os.path.join(root, "train")):
        raise DataError(f"--dataset=folder:{root}: no val/ folder beside train/ (the test split "
                        "that evaluation uses)")
    if not os.path.isdir(root):
        raise DataError(f"--dataset=folder:{root}: no such folder")
    classes, paths, labels = _list_class_folders(root)
    if verify:
        paths, labels = _drop_unreadable(paths, labels, root, strict)
    if not paths:
        raise DataError(f"--dataset=folder:{root}: no readable images in class sub-folders "
                        f"(expected {root}/<class>/<image>{IMAGE_EXTENSIONS[0]})")

    files = tf.constant(paths)

    def read(index):
        return tf.io.decode_image(tf.io.read_file(files[index]), channels=3,
                                  expand_animations=False)

    return Source(f"folder:{root}", read, len(paths), np.asarray(labels, np.int64),
                  len(classes), in_memory=False, fingerprint=fingerprint.of_files(paths, root))


def load_source(dataset: str, split: str = "train", data_dir: str | None = None,
                download: bool = False, verify_images: bool = True,
                strict: bool = False) -> Source:
    """`fashion_mnist` | `digits` | `folder:/path` | any TFDS name, split train or test.

    verify_images / strict apply to image folders: unreadable files are skipped with a count,
    or stop the run when strict.
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be train or test, got {split!r}")
    if dataset == "fashion_mnist":
        return _fashion_mnist(split, data_dir)
    if dataset == "digits":
        return _digits(split)
    if dataset.startswith("folder:"):
        return _image_folder(dataset[len("folder:"):], split, verify_images, strict)
    return _tfds(dataset, split, data_dir, download)


def train_pipeline(source: Source, batch_size: int, image_size: int, seed: int,
                   start_step: int = 0, num_steps: int | None = None) -> tf.data.Dataset:
    """Batches of (index, view_q, view_k): two independent MoCo v2 augmentations.

    The stream is a function of (seed, step) only: pass p over the data visits the examples in
    a permutation drawn from (seed, p); the views come from stateless draws seeded by (seed, p,
    index) — per example for image files, per batch (its first example) for arrays in memory,
    which are cropped a whole batch at a time.
    `start_step` skips the batches a resumed run already trained on; `num_steps` ends the stream
    exactly when training ends (tearing down an endless stream mid-flight stalled the end of
    fit: docs/design.md, "Decisions", epoch boundary).
    """
    batches_per_pass = source.num_examples // batch_size
    first_pass, skip_batches = divmod(start_step, batches_per_pass)

    def pass_seed(data_pass):
        return tf.stack([tf.constant(seed, tf.int64), data_pass])

    def one_pass(data_pass):
        order = tf.argsort(tf.random.stateless_uniform([source.num_examples], pass_seed(data_pass)))
        order = tf.cast(order[:batches_per_pass * batch_size], tf.int64)
        return tf.data.Dataset.from_tensor_slices(order).map(lambda index: (data_pass, index))

    def two_views(data_pass, index):
        """Per example: images of any size (files)."""
        image = augment.to_float_rgb(source.read(index))
        example = tf.random.experimental.stateless_fold_in(pass_seed(data_pass), index)
        views = [augment.view_with_params(image, image_size,
                                          tf.random.experimental.stateless_fold_in(example, v))
                 for v in (0, 1)]
        return index, views[0], views[1]

    def batched_two_views(data_pass, index):
        """Per batch: equal-size images in memory, draws seeded by the batch's first example.

        Gray images stay one channel until apply_photometric returns RGB: a third of the work.
        """
        images = augment.to_float(source.read(index))
        batch_seed = tf.random.experimental.stateless_fold_in(pass_seed(data_pass[0]), index[0])
        views = [augment.batch_views(images, image_size,
                                     tf.random.experimental.stateless_fold_in(batch_seed, v))
                 for v in (0, 1)]
        return index, views[0], views[1]

    def photometric(index, view_q, view_k):
        return (index, augment.apply_photometric(*view_q), augment.apply_photometric(*view_k))

    ds = tf.data.Dataset.range(first_pass, tf.int64.max).flat_map(one_pass)
    ds = ds.skip(skip_batches * batch_size)
    if num_steps is not None:
        ds = ds.take(num_steps * batch_size)
    if source.in_memory:  # batches never straddle passes: each pass is whole batches
        ds = ds.batch(batch_size, drop_remainder=True)
        ds = ds.map(batched_two_views, num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        ds = ds.map(two_views, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(photometric, num_parallel_calls=AUTOTUNE, deterministic=True)
    # Several workers: each keeps its share of every global batch of the same stream (the
    # stream starts from range(), so there are no files to shard by).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(AUTOTUNE)


def embedding_pipeline(source: Source, batch_size: int, image_size: int) -> tf.data.Dataset:
    """Every example once, in order, un-augmented: batches of (index, image)."""
    def center(index, image):
        return index, augment.center_crop(augment.to_float_rgb(image), image_size)

    if source.in_memory:  # equal-size images: read and convert whole batches, far fewer ops
        ds = tf.data.Dataset.range(source.num_examples).batch(batch_size)
        ds = ds.map(lambda i: center(i, source.read(i)), num_parallel_calls=AUTOTUNE)
    else:
        ds = source.examples.map(center, num_parallel_calls=AUTOTUNE).batch(batch_size)
    # A new iterator every pass: dropping an autotuned one sometimes stalled 1-2 s (bench/README.md,
    # "5. Fixes"). Untuned, map runs one call per core and 2 batches wait ready.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(2).with_options(options)


def labelled_pipeline(source: Source, batch_size: int, image_size: int,
                      indices: np.ndarray | None = None, train: bool = False,
                      seed: int = 0) -> tf.data.Dataset:
    """Batches of (image in [0, 1], true label), optionally only the examples in `indices`.

    Evaluation: every example once, centre crop. train=True: shuffled, random resized crop +
    horizontal flip (SimCLR's fine-tuning augmentation).
    """
    if source.labels is None:
        raise DataError(f"--dataset={source.name} has no labels to evaluate with")
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
            fold_in = tf.random.experimental.stateless_fold_in
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
    ds = tf.data.Dataset.zip(ds, seeds).map(prepare, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size).prefetch(AUTOTUNE)
