"""Where training images come from: a `Source` reads image i by its dataset index.

`load_source` turns a dataset name into a Source: Fashion-MNIST from Debian's IDX files, sklearn's
digits, an image folder (one sub-folder per class), or any TFDS image dataset (imagenet2012 from
its archives downloaded by hand); `from_arrays` wraps images already in memory. True labels are
kept only for evaluation and diagnostics.
"""
import concurrent.futures
import dataclasses
import gzip
import json
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from ifnd_tf import fingerprint
from ifnd_tf.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
AUTOTUNE = tf.data.AUTOTUNE
IN_MEMORY_BYTES = 1 << 30  # TFDS splits of fixed-size images up to 1 GiB are held in memory
# TFDS datasets TFDS cannot fetch: the archives `download_and_prepare` reads from the manual
# folder (<data_dir>/downloads/manual, data_dir by default ~/tensorflow_datasets).
MANUAL_ARCHIVES = {"imagenet2012": ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")}
# What split "test" (evaluation, the kNN monitor) reads where TFDS's "test" has no labels
# (imagenet2012's test images carry label -1): the labelled held-out split.
HELD_OUT_SPLITS = {"imagenet2012": "validation"}


@dataclasses.dataclass
class Source:
    """A dataset split in a fixed order: example i has dataset index i."""

    name: str
    # int64 index (or, in memory, a vector) -> uint8 image; None for a stream (below)
    read: Callable[[tf.Tensor], tf.Tensor] | None
    num_examples: int
    labels: np.ndarray | None  # true labels: diagnostics and evaluation only
    num_classes: int | None
    in_memory: bool  # equal-size images held in memory: `read` takes a batch of indices
    # No random access (TFDS in TFRecord files): (index, encoded image) in index order.
    stream: Callable[[], tf.data.Dataset] | None = None
    fingerprint: dict | None = None  # fingerprint.of_arrays / of_files: recorded with a run

    @property
    def examples(self) -> tf.data.Dataset:
        """(index, image) for every example, in index order."""
        if self.read is None:
            return self.stream().map(lambda i, raw: (i, decode(raw)), num_parallel_calls=AUTOTUNE)
        return tf.data.Dataset.range(self.num_examples).map(
            lambda i: (i, self.read(i)), num_parallel_calls=AUTOTUNE)


def decode(raw: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG / PNG / GIF / BMP bytes -> uint8 [H, W, 3] (gray and CMYK JPEGs included)."""
    return tf.io.decode_image(raw, channels=3, expand_animations=False)


def from_arrays(images: np.ndarray, labels: np.ndarray | None = None,
                name: str = "arrays") -> Source:
    """Images in memory, uint8 [N, H, W] or [N, H, W, C] (C = 1 or 3), optional integer labels:
    a constant tensor read with tf.gather (fits datasets up to ~2 GB)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"{name}: images must be uint8 [N, H, W(, C)], got {images.dtype} "
                        f"{images.shape}")
    if labels is not None:
        labels = np.asarray(labels, np.int64)
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
    return from_arrays(images, labels, "fashion_mnist")


def _digits(split: str) -> Source:
    """sklearn's 1,797 8x8 digits; every 5th image is the test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    keep = (np.arange(len(images)) % 5 == 0) == (split == "test")
    return from_arrays(images[keep], digits.target[keep].astype(np.int64), "digits")


def _tfds(name: str, split: str, data_dir: str | None, download: bool,
          cache_dir: str | None) -> Source:
    """A TFDS image dataset: in memory when small (CIFAR, STL), else streamed (DESIGN: TFDS).

    Splits of fixed-size images up to IN_MEMORY_BYTES are read once into memory. Larger ones
    (imagenet2012, imagenette, imagenet_resized, ...) are never loaded whole: prepared in
    ArrayRecord format they are read by index (`tfds.data_source`), so every pass is an exact
    permutation; in TFRecord format (TFDS's default) they are read as a stream in stored order,
    the index being the position in it, shuffled within blocks (`train_pipeline`).
    """
    import tensorflow_datasets as tfds

    skip_image = {"image": tfds.decode.SkipDecoding()}
    builder = None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        split = HELD_OUT_SPLITS.get(builder.name, split) if split == "test" else split
        if download:
            _check_manual_archives(name, builder)
            builder.download_and_prepare()
        encoded = builder.as_dataset(split=split, shuffle_files=False, decoders=skip_image)
    except DataError:
        raise
    except Exception as e:  # TFDS raises several types for missing data; all end up here
        if builder is not None and builder.name in MANUAL_ARCHIVES and not builder.is_prepared():
            _check_manual_archives(name, builder)
            raise DataError(f"--dataset={name}: not prepared in {builder.data_dir_root}; pass "
                            "--download once to prepare it from the archives in "
                            f"{_manual_dir(builder)} (hours)") from e
        hint = "" if download else " (pass --download to fetch it, or --data_dir where it lives)"
        raise DataError(f"--dataset={name}: TFDS could not load split {split!r}{hint}: "
                        f"{str(e).splitlines()[0]}") from e
    info = builder.info
    if "image" not in info.features:
        raise DataError(f"--dataset={name}: no 'image' feature ({list(info.features)})")
    has_labels = "label" in info.features
    num_classes = info.features["label"].num_classes if has_labels else None
    num_examples = int(encoded.cardinality())  # TFDS asserts it from the split's metadata
    shape = info.features["image"].shape
    if None not in shape and num_examples * int(np.prod(shape)) <= IN_MEMORY_BYTES:
        images, labels = [], []
        for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
            images.append(example["image"])
            labels.append(example["label"] if has_labels else -1)
        source = from_arrays(np.stack(images),
                             np.asarray(labels, np.int64) if has_labels else None, name)
        source.num_classes = num_classes
        return source
    try:
        records = builder.as_data_source(split=split, decoders=skip_image)
    except (NotImplementedError, ValueError):  # not prepared in a random-access format
        records = None
    labels = _tfds_labels(name, split, encoded, records, num_examples, cache_dir) \
        if has_labels else None
    if records is None:
        return Source(f"{name}:{split}", None, num_examples, labels, num_classes,
                      in_memory=False,
                      stream=lambda: encoded.enumerate().map(lambda i, ex: (i, ex["image"])))

    def encoded_image(index):
        return records[int(index)]["image"]

    def read(index):
        raw = tf.numpy_function(encoded_image, [index], tf.string, stateful=False)
        return decode(tf.reshape(raw, []))

    return Source(f"{name}:{split}", read, num_examples, labels, num_classes, in_memory=False)


def _manual_dir(builder) -> str:
    """Where TFDS's download_and_prepare looks for archives downloaded by hand."""
    return os.path.join(str(builder.data_dir_root), "downloads", "manual")


def _check_manual_archives(name: str, builder) -> None:
    """One DataError line when a dataset TFDS cannot fetch is not prepared and its archives are
    not in the manual folder: never a download attempt."""
    archives = MANUAL_ARCHIVES.get(builder.name)
    if not archives or builder.is_prepared():
        return
    manual_dir = _manual_dir(builder)
    missing = [a for a in archives if not os.path.isfile(os.path.join(manual_dir, a))]
    if missing:
        raise DataError(f"--dataset={name}: no {' or '.join(missing)} in {manual_dir} (TFDS "
                        "cannot download it): put the archives from image-net.org there (the "
                        "folder follows --data_dir) and pass --download once to prepare it")


def _tfds_labels(name: str, split: str, encoded: tf.data.Dataset, records, num_examples: int,
                 cache_dir: str | None) -> np.ndarray:
    """True labels in index order, read once (a pass over every record) and kept in cache_dir."""
    cache = (os.path.join(cache_dir, f"labels_{name.replace('/', '_')}_{split}.npy")
             if cache_dir else None)
    if cache and os.path.exists(cache):
        labels = np.load(cache)
        if len(labels) == num_examples:
            return labels
    if records is not None:  # the data source's own order
        chunks = [np.asarray([records[i]["label"] for i in range(num_examples)], np.int64)]
    else:
        chunks = [b.numpy() for b in encoded.map(lambda ex: ex["label"]).batch(65536)]
    labels = np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        np.save(f"{cache}.{os.getpid()}.npy", labels)
        os.replace(f"{cache}.{os.getpid()}.npy", cache)
    return labels


LISTING_THREADS = 32  # class folders listed at once: file-system latency, not CPU, bounds it
VERIFY_CACHE_VERSION = 1


@dataclasses.dataclass
class _Listing:
    """Image files under class sub-folders, in a stable order (sorted classes, sorted names)."""

    classes: list[str]
    paths: list[str]
    labels: list[int]
    stamps: list[tuple[int, int]]  # (size, mtime_ns) of each file: what the cache compares


def _list_class(folder: str) -> list[tuple[str, int, int]]:
    with os.scandir(folder) as entries:
        files = [(e.name, e.stat()) for e in entries
                 if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()]
    return sorted((name, st.st_size, st.st_mtime_ns) for name, st in files)


def _list_class_folders(root: str) -> _Listing:
    """One thread per class folder (ImageNet: 1,000 folders of ~1,300 files)."""
    try:
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        with concurrent.futures.ThreadPoolExecutor(LISTING_THREADS) as pool:
            per_class = list(pool.map(_list_class, [os.path.join(root, c) for c in classes]))
    except OSError as e:
        raise DataError(f"--dataset=folder:{root}: cannot read {e.filename}: {e.strerror}") from e
    listing = _Listing(classes, [], [], [])
    for label, (cls, files) in enumerate(zip(classes, per_class)):
        listing.paths += [os.path.join(root, cls, name) for name, _, _ in files]
        listing.labels += [label] * len(files)
        listing.stamps += [(size, mtime) for _, size, mtime in files]
    return listing


def _decodable(paths: list[str]) -> np.ndarray:
    """True where TensorFlow decodes the file: one parallel tf.data pass, failures dropped."""
    files = tf.constant(paths or [""])

    def decodes(i):
        return i, tf.shape(decode(tf.io.read_file(files[i])))

    ds = tf.data.Dataset.range(len(paths)).map(decodes, num_parallel_calls=AUTOTUNE,
                                               deterministic=False)
    ok = np.zeros(len(paths), bool)
    for index in ds.ignore_errors().map(lambda i, _: i).batch(4096):
        ok[index.numpy()] = True
    return ok


def _read_verify_cache(path: str, root: str) -> dict[str, tuple[int, int, bool]]:
    """{file path relative to root: (size, mtime_ns, decodable)}; empty if absent or stale."""
    try:
        with gzip.open(path, "rt") as f:
            saved = json.load(f)
    except (OSError, EOFError, ValueError):
        return {}
    if saved.get("version") != VERIFY_CACHE_VERSION or saved.get("root") != root:
        return {}
    return {name: (size, mtime, bool(ok)) for name, size, mtime, ok in saved["files"]}


def _write_verify_cache(path: str, root: str, listing: _Listing, ok: np.ndarray) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files = [[os.path.relpath(p, root), size, mtime, bool(good)]
             for p, (size, mtime), good in zip(listing.paths, listing.stamps, ok)]
    temporary = f"{path}.{os.getpid()}.tmp"  # workers sharing --model_dir never see half a file
    with gzip.open(temporary, "wt") as f:
        json.dump({"version": VERIFY_CACHE_VERSION, "root": root, "files": files}, f)
    os.replace(temporary, path)


def _verify(listing: _Listing, root: str, cache: str | None) -> np.ndarray:
    """Decodable flag of every listed file; files unchanged since the cache was written
    (same size and mtime) are not decoded again."""
    known = _read_verify_cache(cache, root) if cache else {}
    ok = np.zeros(len(listing.paths), bool)
    todo = []
    for i, (path, stamp) in enumerate(zip(listing.paths, listing.stamps)):
        cached = known.get(os.path.relpath(path, root))
        if cached is not None and cached[:2] == stamp:
            ok[i] = cached[2]
        else:
            todo.append(i)
    if todo:
        ok[todo] = _decodable([listing.paths[i] for i in todo])
    reused = f", {len(ok) - len(todo)} unchanged since {cache}" if cache else ""
    print(f"checked {len(ok)} images in {root}: {len(todo)} decoded{reused}", flush=True)
    if cache and todo:
        _write_verify_cache(cache, root, listing, ok)
    return ok


def _drop_unreadable(listing: _Listing, root: str, strict: bool, cache: str | None) -> None:
    """Check every file once, so training never meets a corrupt image mid-epoch."""
    ok = _verify(listing, root, cache)
    bad = [p for p, good in zip(listing.paths, ok) if not good]
    if bad and strict:
        raise DataError(f"unreadable image {bad[0]} ({len(bad)} in {root}); "
                        "drop --strict_data to skip them")
    if bad:
        print(f"skipped {len(bad)} unreadable images in {root} (first: {bad[0]})", flush=True)
    listing.paths = [p for p, good in zip(listing.paths, ok) if good]
    listing.labels = [y for y, good in zip(listing.labels, ok) if good]


def _image_folder(root: str, split: str, verify: bool, strict: bool,
                  cache_dir: str | None = None) -> Source:
    """Class sub-folders of images (ImageNet-100 layout: root/{train,val}/class/*.JPEG)."""
    split_dir = {"train": "train", "test": "val"}[split]
    if os.path.isdir(os.path.join(root, split_dir)):
        root = os.path.join(root, split_dir)
    elif split == "test" and os.path.isdir(os.path.join(root, "train")):
        raise DataError(f"--dataset=folder:{root}: no val/ folder beside train/ (the test split "
                        "that evaluation uses)")
    if not os.path.isdir(root):
        raise DataError(f"--dataset=folder:{root}: no such folder")
    listing = _list_class_folders(root)
    if verify:
        cache = os.path.join(cache_dir, f"image_check_{split}.json.gz") if cache_dir else None
        _drop_unreadable(listing, root, strict, cache)
    paths, labels, classes = listing.paths, listing.labels, listing.classes
    if not paths:
        raise DataError(f"--dataset=folder:{root}: no readable images in class sub-folders "
                        f"(expected {root}/<class>/<image>{IMAGE_EXTENSIONS[0]})")
    empty = [c for c, n in zip(classes, np.bincount(labels, minlength=len(classes))) if n == 0]
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise DataError(f"--dataset=folder:{root}: {len(empty)} of {len(classes)} class folders "
                        f"hold no readable image: {shown}")

    files = tf.constant(paths)

    def read(index):
        return decode(tf.io.read_file(files[index]))

    return Source(f"folder:{root}", read, len(paths), np.asarray(labels, np.int64),
                  len(classes), in_memory=False, fingerprint=fingerprint.of_files(paths, root))


def load_source(dataset: str, split: str = "train", data_dir: str | None = None,
                download: bool = False, verify_images: bool = True,
                strict: bool = False, cache_dir: str | None = None) -> Source:
    """`fashion_mnist` | `digits` | `folder:/path` | any TFDS name, split train or test.

    verify_images / strict apply to image folders: unreadable files are skipped with a count,
    or stop the run when strict. cache_dir (a run's --model_dir) keeps what start-up learns
    across restarts: the image check of a folder (path, size, mtime and verdict per file: a
    restart decodes only files that changed) and the labels of a streamed TFDS split.
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be train or test, got {split!r}")
    if dataset == "fashion_mnist":
        return _fashion_mnist(split, data_dir)
    if dataset == "digits":
        return _digits(split)
    if dataset.startswith("folder:"):
        return _image_folder(dataset[len("folder:"):], split, verify_images, strict, cache_dir)
    return _tfds(dataset, split, data_dir, download, cache_dir)
