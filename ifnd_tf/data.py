"""Training data: every example carries its dataset index (the queue and labels need it).

`load_source` turns a dataset name into a `Source` of (index, uint8 image) in a fixed order;
`train_pipeline` makes the two augmented views, `embedding_pipeline` the un-augmented view used
by the clustering pass. True labels are kept only for evaluation and diagnostics.
"""
import dataclasses
import gzip
import os

import numpy as np
import tensorflow as tf

from ifnd_tf import augment

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
AUTOTUNE = tf.data.AUTOTUNE


class DataError(ValueError):
    """Missing, corrupt or unknown data; the message names the file or flag."""


@dataclasses.dataclass
class Source:
    """A dataset split in a fixed order: example i has dataset index i."""

    name: str
    examples: tf.data.Dataset  # (index int64, image uint8 [H, W, C])
    num_examples: int
    labels: np.ndarray | None  # true labels: diagnostics and evaluation only
    num_classes: int | None
    in_memory: bool


def _from_arrays(name: str, images: np.ndarray, labels: np.ndarray | None) -> Source:
    if images.ndim == 3:
        images = images[..., None]
    examples = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(images), dtype=np.int64), images))
    num_classes = int(labels.max()) + 1 if labels is not None else None
    return Source(name, examples, len(images), labels, num_classes, in_memory=True)


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
    import tensorflow_datasets as tfds

    load = {"split": split, "data_dir": data_dir, "download": download, "shuffle_files": False}
    try:
        ds, info = tfds.load(name, with_info=True, **load)
        label_only = tfds.load(name, decoders={"image": tfds.decode.SkipDecoding()}, **load)
    except Exception as e:  # TFDS raises several types for missing data; all end up here
        hint = "" if download else " (pass --download to fetch it, or --data_dir where it lives)"
        raise DataError(f"--dataset={name}: TFDS could not load split {split!r}{hint}: "
                        f"{str(e).splitlines()[0]}") from e
    labels = None
    num_classes = None
    if "label" in info.features:
        labels = np.fromiter(label_only.map(lambda ex: ex["label"]).as_numpy_iterator(), np.int64)
        num_classes = info.features["label"].num_classes
    examples = ds.enumerate().map(lambda i, ex: (i, ex["image"]))
    num_examples = len(labels) if labels is not None else info.splits[split].num_examples
    return Source(name, examples, num_examples, labels, num_classes, in_memory=False)


def _image_folder(root: str, split: str) -> Source:
    """Class sub-folders of images (ImageNet-100 layout: root/{train,val}/class/*.JPEG)."""
    split_dir = {"train": "train", "test": "val"}[split]
    if os.path.isdir(os.path.join(root, split_dir)):
        root = os.path.join(root, split_dir)
    if not os.path.isdir(root):
        raise DataError(f"--dataset=folder:{root}: no such folder")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths, labels = [], []
    for label, cls in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(root, cls))
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        paths += [os.path.join(root, cls, f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"--dataset=folder:{root}: no images in class sub-folders "
                        f"(expected {root}/<class>/<image>{IMAGE_EXTENSIONS[0]})")

    def decode(index, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return index, image

    examples = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(paths), dtype=np.int64), paths)).map(decode, num_parallel_calls=AUTOTUNE)
    return Source(f"folder:{root}", examples, len(paths), np.asarray(labels, np.int64),
                  len(classes), in_memory=False)


def load_source(dataset: str, split: str = "train", data_dir: str | None = None,
                download: bool = False) -> Source:
    """`fashion_mnist` | `digits` | `folder:/path` | any TFDS name, split train or test."""
    if split not in ("train", "test"):
        raise DataError(f"split must be train or test, got {split!r}")
    if dataset == "fashion_mnist":
        return _fashion_mnist(split, data_dir)
    if dataset == "digits":
        return _digits(split)
    if dataset.startswith("folder:"):
        return _image_folder(dataset[len("folder:"):], split)
    return _tfds(dataset, split, data_dir, download)


def train_pipeline(source: Source, batch_size: int, image_size: int, seed: int,
                   cache: bool = True, shuffle_buffer: int = 50_000) -> tf.data.Dataset:
    """Shuffled batches of (index, view_q, view_k), two independent MoCo v2 augmentations."""
    augmenter = augment.MoCoV2Augment(image_size, seed=seed)
    ds = source.examples
    if cache and not source.in_memory:
        ds = ds.cache()
    ds = ds.shuffle(min(source.num_examples, shuffle_buffer), seed=seed,
                    reshuffle_each_iteration=True)

    def two_crops(index, image):
        image = augment.to_float_rgb(image)
        return (index, augment.random_resized_crop(image, image_size),
                augment.random_resized_crop(image, image_size))

    ds = ds.map(two_crops, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(lambda i, q, k: (i, augmenter(q), augmenter(k)), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def embedding_pipeline(source: Source, batch_size: int, image_size: int) -> tf.data.Dataset:
    """Every example once, in order, un-augmented: batches of (index, image)."""
    def center(index, image):
        return index, augment.center_crop(augment.to_float_rgb(image), image_size)

    if source.in_memory:  # equal-size images: convert whole batches, far fewer ops
        ds = source.examples.batch(batch_size).map(center, num_parallel_calls=AUTOTUNE)
    else:
        ds = source.examples.map(center, num_parallel_calls=AUTOTUNE).batch(batch_size)
    return ds.prefetch(AUTOTUNE)
