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
import json
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
IN_MEMORY_BYTES = 1 << 30  # TFDS splits of fixed-size images up to 1 GiB are held in memory
SHUFFLE_BLOCK = 4096  # streamed TFDS splits: examples permuted together in each pass


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
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if download:
            builder.download_and_prepare()
        encoded = builder.as_dataset(split=split, shuffle_files=False, decoders=skip_image)
    except Exception as e:  # TFDS raises several types for missing data; all end up here
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
        source = _from_arrays(name, np.stack(images),
                              np.asarray(labels, np.int64) if has_labels else None)
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


def worker_rows(batch_size: int, context: tf.distribute.InputContext) -> tuple[int, int]:
    """(first row, number of rows) of every global batch that this input pipeline reads: its
    local replicas' consecutive per-replica slices."""
    per_replica = context.get_per_replica_batch_size(batch_size)
    local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
    share = local_replicas * per_replica
    return context.input_pipeline_id * share, share


def train_pipeline(source: Source, batch_size: int, image_size: int, seed: int,
                   start_step: int = 0, num_steps: int | None = None,
                   input_context: tf.distribute.InputContext | None = None,
                   autotune: bool = True) -> tf.data.Dataset:
    """Batches of (index, view_q, view_k): two independent MoCo v2 augmentations.

    The stream is a function of (seed, step) only: pass p over the data visits the examples in
    a permutation drawn from (seed, p) (a source without random access, a streamed TFDS split:
    permuted within consecutive blocks of SHUFFLE_BLOCK examples); the views come from stateless
    draws seeded by (seed, p, index) — per example for image files, per global batch (its first
    example) for arrays in memory, which are cropped a whole batch at a time.
    `start_step` skips the batches a resumed run already trained on; `num_steps` ends the stream
    exactly when training ends (tearing down an endless stream mid-flight stalled the end of
    fit: docs/design.md, "Epoch boundary").

    `input_context` (from `strategy.distribute_datasets_from_function`): this input pipeline
    (worker) yields per-replica batches of its share of every global batch only — global
    replica r gets rows r·b ... (r+1)·b - 1, b = batch_size / replicas — and reads, decodes and
    augments only those (a stream's encoded records are all read, only the share decoded).
    Without it: whole global batches. The views are the same either way (docs/design.md,
    "Per-worker input").

    `autotune=False` turns tf.data's autotuning off (maps run one call per core, 2 batches wait
    ready): its optimisation thread kept this iterator's destructor waiting up to ~35 s at the
    end of `fit` (docs/design.md, "Epoch boundary").
    """
    context = input_context or tf.distribute.InputContext()
    per_replica = context.get_per_replica_batch_size(batch_size)
    first_row, share = worker_rows(batch_size, context)
    batches_per_pass = source.num_examples // batch_size
    first_pass, skip_batches = divmod(start_step, batches_per_pass)

    def pass_seed(data_pass):
        return tf.stack([tf.constant(seed, tf.int64), data_pass])

    def one_pass(data_pass):
        order = tf.argsort(tf.random.stateless_uniform([source.num_examples], pass_seed(data_pass)))
        order = tf.cast(order[:batches_per_pass * batch_size], tf.int64)
        return tf.data.Dataset.from_tensor_slices(order).map(lambda index: (data_pass, index))

    def one_stream_pass(data_pass):
        """No random access: the stream permuted within blocks of SHUFFLE_BLOCK examples."""
        def permute(block, example):
            index, raw = example
            block_seed = tf.random.experimental.stateless_fold_in(pass_seed(data_pass), block)
            order = tf.argsort(tf.random.stateless_uniform(tf.shape(index), block_seed))
            return tf.data.Dataset.from_tensor_slices(
                (tf.fill(tf.shape(index), data_pass), tf.gather(index, order),
                 tf.gather(raw, order)))
        blocks = source.stream().batch(SHUFFLE_BLOCK).enumerate()
        return blocks.flat_map(permute).take(batches_per_pass * batch_size)

    def own_rows(*batch):
        """This pipeline's rows of one global batch (still undecoded), one example each."""
        return tf.data.Dataset.from_tensor_slices(
            tuple(t[first_row:first_row + share] for t in batch))

    def own_batch(data_pass, index):
        """This pipeline's rows of one global batch of indices, their first row in it and the
        global batch's first index (the views' seed)."""
        return (data_pass[first_row:first_row + share], index[first_row:first_row + share],
                first_row, index[0])

    def two_views(data_pass, index, raw=None):
        """Per example: images of any size (files, TFDS records)."""
        image = augment.to_float_rgb(source.read(index) if raw is None else decode(raw))
        example = tf.random.experimental.stateless_fold_in(pass_seed(data_pass), index)
        views = [augment.view_with_params(image, image_size,
                                          tf.random.experimental.stateless_fold_in(example, v))
                 for v in (0, 1)]
        return index, views[0], views[1]

    def batched_two_views(data_pass, index, first_row, batch_first_index):
        """Per batch: equal-size images in memory, draws seeded by the global batch's first
        example, each image taking its row of them (the same views however the batch is split).

        Gray images stay one channel until apply_photometric returns RGB: a third of the work.
        """
        images = augment.to_float(source.read(index))
        batch_seed = tf.random.experimental.stateless_fold_in(pass_seed(data_pass[0]),
                                                              batch_first_index)
        views = [augment.batch_views(images, image_size,
                                     tf.random.experimental.stateless_fold_in(batch_seed, v),
                                     first_row=first_row, num_rows=batch_size)
                 for v in (0, 1)]
        return index, views[0], views[1]

    def photometric(index, view_q, view_k):
        return (index, augment.apply_photometric(*view_q), augment.apply_photometric(*view_k))

    ds = tf.data.Dataset.range(first_pass, tf.int64.max).flat_map(
        one_pass if source.read is not None else one_stream_pass)
    ds = ds.skip(skip_batches * batch_size)
    if num_steps is not None:
        ds = ds.take(num_steps * batch_size)
    # This pipeline's rows are cut from the index stream before anything is read or decoded.
    if source.in_memory:  # batches never straddle passes: each pass is whole batches
        ds = ds.batch(batch_size, drop_remainder=True).map(own_batch)
        ds = ds.map(batched_two_views, num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        if share < batch_size:
            ds = ds.batch(batch_size, drop_remainder=True).flat_map(own_rows)
        ds = ds.map(two_views, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(share, drop_remainder=True)
    ds = ds.map(photometric, num_parallel_calls=AUTOTUNE, deterministic=True)
    if share > per_replica:  # consecutive per-replica batches go to the local replicas in turn
        ds = ds.rebatch(per_replica, drop_remainder=True)
    # Global batches handed to a multi-worker fit as they are (train.py passes the context
    # instead): each worker keeps its share of the same stream, after reading all of it.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.autotune.enabled = autotune
    return ds.with_options(options).prefetch(AUTOTUNE if autotune else 2)


def fixed_subset(num_examples: int, size: int, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of `size` examples; None when size is 0 or
    covers the dataset (use everything)."""
    if size <= 0 or size >= num_examples:
        return None
    return np.sort(np.random.default_rng(seed).choice(num_examples, size, replace=False))


def embedding_pipeline(source: Source, batch_size: int, image_size: int,
                       indices: np.ndarray | None = None,
                       input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Every example once, in order, un-augmented: batches of (index, image).

    With `indices` (sorted, unique), only those examples: batches of (position in `indices`,
    image), e.g. the kNN monitor's fixed train subset.

    With `input_context` of W pipelines (workers; `distribute.input_context`), pipeline w reads
    only positions w, w+W, ... of the range padded to a multiple of W (a padding position p
    repeats position p - N, a real example), in batches of ceil(batch_size / W): every worker
    yields as many batches of the same sizes, so their gathers match (embedding.DatasetEmbedder).
    """
    def center(index, image):
        return index, augment.center_crop(augment.to_float_rgb(image), image_size)

    context = input_context or tf.distribute.InputContext()
    shards, shard = context.num_input_pipelines, context.input_pipeline_id
    count = source.num_examples if indices is None else len(indices)
    if count < shards:
        raise DataError(f"{source.name}: {count} examples to embed, fewer than the "
                        f"{shards} workers")
    batch_size = -(-batch_size // shards)
    padded = -(-count // shards) * shards
    if source.read is None:  # a stream: read it all, decode only this worker's examples
        chosen = np.arange(shard, padded, shards) % count
        keep = np.zeros(source.num_examples, bool)
        keep[chosen if indices is None else np.asarray(indices)[chosen]] = True
        examples = source.stream()
        if not keep.all():
            examples = examples.filter(lambda i, _: tf.gather(tf.constant(keep), i))
        if indices is None:
            ds = examples.map(lambda i, raw: center(i, decode(raw)), num_parallel_calls=AUTOTUNE)
        else:
            position_of = np.full(source.num_examples, -1, np.int64)
            position_of[indices] = np.arange(count)
            ds = examples.map(lambda i, raw: center(tf.gather(tf.constant(position_of), i),
                                                    decode(raw)), num_parallel_calls=AUTOTUNE)
        ds = ds.batch(batch_size)
    else:
        chosen = None if indices is None else tf.constant(np.asarray(indices, np.int64))

        def read_centered(position):  # one position or a batch of them
            position = position % count
            index = position if chosen is None else tf.gather(chosen, position)
            return center(position, source.read(index))

        positions = tf.data.Dataset.range(shard, padded, shards)
        if source.in_memory:  # equal-size images: read and convert whole batches, far fewer ops
            ds = positions.batch(batch_size).map(read_centered, num_parallel_calls=AUTOTUNE)
        else:
            ds = positions.map(read_centered, num_parallel_calls=AUTOTUNE).batch(batch_size)
    # A new iterator every pass: dropping an autotuned one sometimes stalled 1-2 s (docs/design.md,
    # "Embedding pass"). Untuned, map runs one call per core and 2 batches wait ready.
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
