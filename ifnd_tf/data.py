"""The input pipelines: every example carries its dataset index (the queue and labels need it).

From a `sources.Source` (image i by its index): `train_pipeline` makes the two augmented views,
`embedding_pipeline` the un-augmented view used by the clustering pass, `labelled_pipeline`
(image, true label) batches for the linear probe and fine-tuning.
"""
import functools

import numpy as np
import tensorflow as tf

from ifnd_tf import augment
from ifnd_tf.errors import DataError
from ifnd_tf.sources import Source, decode

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BLOCK = 4096  # streamed TFDS splits: examples permuted together in each pass


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

    A function of (seed, step) only: pass p visits the examples in a permutation drawn from
    (seed, p) (`_index_stream`); the views are stateless draws seeded by (seed, p, index): per
    example for image files, per global batch (its first example) for arrays in memory, which
    are cropped a batch at a time. `start_step` skips what a resumed run already trained on;
    `num_steps` ends the stream exactly when training ends (docs/design.md, "Epoch boundary").
    `input_context`: this pipeline yields per-replica batches of its share of every global
    batch only, and reads, decodes and augments only those; the views are the same however the
    batch is split (docs/design.md, "Per-worker input"). `autotune=False`: no tf.data
    autotuning thread, which kept the iterator's destructor waiting at the end of fit.
    """
    context = input_context or tf.distribute.InputContext()
    per_replica = context.get_per_replica_batch_size(batch_size)
    first_row, share = worker_rows(batch_size, context)

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
        image = source.read(index) if raw is None else decode(raw)
        return (index, *example_views(image, image_size, _pass_seed(seed, data_pass), index))

    ds = _index_stream(source, batch_size, seed, start_step)
    if num_steps is not None:
        ds = ds.take(num_steps * batch_size)
    # This pipeline's rows are cut from the index stream before anything is read or decoded.
    if source.in_memory:  # batches never straddle passes: each pass is whole batches
        ds = ds.batch(batch_size, drop_remainder=True).map(own_batch)
        ds = ds.map(functools.partial(_batched_two_views, source, batch_size, image_size, seed),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
    else:
        if share < batch_size:
            ds = ds.batch(batch_size, drop_remainder=True).flat_map(own_rows)
        ds = ds.map(two_views, num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(share, drop_remainder=True)
    ds = ds.map(_photometric, num_parallel_calls=AUTOTUNE, deterministic=True)
    if share > per_replica:  # consecutive per-replica batches go to the local replicas in turn
        ds = ds.rebatch(per_replica, drop_remainder=True)
    # Global batches handed to a multi-worker fit as they are (pretrain passes the context
    # instead): each worker keeps its share of the same stream, after reading all of it.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.autotune.enabled = autotune
    return ds.with_options(options).prefetch(AUTOTUNE if autotune else 2)


def _batched_two_views(source: Source, batch_size: int, image_size: int, seed: int,
                       data_pass, index, first_row, batch_first_index):
    """Per batch: equal-size images in memory, draws seeded by the global batch's first
    example, each image taking its row of them (the same views however the batch is split).

    Gray images stay one channel until apply_photometric returns RGB: a third of the work.
    """
    images = augment.to_float(source.read(index))
    batch_seed = tf.random.experimental.stateless_fold_in(_pass_seed(seed, data_pass[0]),
                                                          batch_first_index)
    views = [augment.batch_views(images, image_size,
                                 tf.random.experimental.stateless_fold_in(batch_seed, v),
                                 first_row=first_row, num_rows=batch_size)
             for v in (0, 1)]
    return index, views[0], views[1]


def _pass_seed(seed: int, data_pass: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.constant(seed, tf.int64), data_pass])


def _index_stream(source: Source, batch_size: int, seed: int, start_step: int) -> tf.data.Dataset:
    """(pass, index) of every example in training order from `start_step` on: pass p is a
    permutation drawn from (seed, p), whole batches only; without random access (a stream),
    permuted within consecutive blocks of SHUFFLE_BLOCK examples, with the encoded image."""
    batches_per_pass = source.num_examples // batch_size
    first_pass, skip_batches = divmod(start_step, batches_per_pass)

    def one_pass(data_pass):
        order = tf.argsort(tf.random.stateless_uniform([source.num_examples],
                                                       _pass_seed(seed, data_pass)))
        order = tf.cast(order[:batches_per_pass * batch_size], tf.int64)
        return tf.data.Dataset.from_tensor_slices(order).map(lambda index: (data_pass, index))

    def one_stream_pass(data_pass):
        def permute(block, example):
            index, raw = example
            block_seed = tf.random.experimental.stateless_fold_in(_pass_seed(seed, data_pass),
                                                                  block)
            order = tf.argsort(tf.random.stateless_uniform(tf.shape(index), block_seed))
            return tf.data.Dataset.from_tensor_slices(
                (tf.fill(tf.shape(index), data_pass), tf.gather(index, order),
                 tf.gather(raw, order)))
        blocks = source.stream().batch(SHUFFLE_BLOCK).enumerate()
        return blocks.flat_map(permute).take(batches_per_pass * batch_size)

    ds = tf.data.Dataset.range(first_pass, tf.int64.max).flat_map(
        one_pass if source.read is not None else one_stream_pass)
    return ds.skip(skip_batches * batch_size)


def example_views(image: tf.Tensor, image_size: int, seed: tf.Tensor,
                  index: tf.Tensor) -> tuple:
    """The two views of one image (uint8 or float, any size, gray or RGB) before the
    photometric part: stateless draws from (seed, index)."""
    image = augment.to_float_rgb(image)
    example = tf.random.experimental.stateless_fold_in(seed, index)
    return tuple(augment.view_with_params(image, image_size,
                                          tf.random.experimental.stateless_fold_in(example, v))
                 for v in (0, 1))


def _photometric(index, view_q, view_k):
    return (index, augment.apply_photometric(*view_q), augment.apply_photometric(*view_k))


def two_view_batches(dataset: tf.data.Dataset, batch_size: int, image_size: int,
                     seed: int = 0) -> tf.data.Dataset:
    """Your own tf.data of (index, image) -> batches of (index, view_q, view_k), the MoCo v2
    augmentation of `MomentumContrast.train_step`. index: the example's int64 dataset index in
    [0, num_examples), which the queue and the detectors key on; image: [H, W, C] uint8 (or
    float in [0, 1]), C = 1 or 3. Shuffle and repeat `dataset` yourself; the views depend on
    (seed, epoch of the iterator, index)."""
    epoch_seed = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).map(
        lambda x: tf.stack([x, x]))

    def views(example, pair):
        index, image = example
        return (index, *example_views(image, image_size, tf.cast(pair, tf.int64), index))

    ds = tf.data.Dataset.zip(dataset, epoch_seed).map(views, num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).map(
        _photometric, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


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
