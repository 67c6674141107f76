import gzip
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import counting_reads, write_image_folder

from ifnd_tf import data, sources


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_debian_package():
    source = sources.load_source("fashion_mnist")
    assert (source.num_examples, source.num_classes) == (60_000, 10)
    assert np.bincount(source.labels).tolist() == [6000] * 10
    index, image = next(iter(source.examples))
    assert (int(index), image.shape, image.dtype) == (0, (28, 28, 1), tf.uint8)
    assert sources.load_source("fashion_mnist", "test").num_examples == 10_000


def test_idx_reader_round_trip_and_idx_folder(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 3))
    for prefix, labels in (("train", [0, 1, 2, 1, 0]),):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.array(labels))
    np.testing.assert_array_equal(sources.read_idx(str(tmp_path / "train-images-idx3-ubyte.gz")), images)
    source = sources.load_source("fashion_mnist", data_dir=str(tmp_path))
    assert (source.num_examples, source.num_classes) == (5, 3)


def test_missing_fashion_mnist_names_file_and_install_command(tmp_path):
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz.*apt-get install dataset-fashion-mnist"):
        sources.load_source("fashion_mnist", data_dir=str(tmp_path))


def test_corrupt_idx_file_is_named(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    _write_idx(path, np.zeros((4, 2, 2)))
    with gzip.open(path) as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:-3])  # truncated
    with pytest.raises(data.DataError, match=f"corrupt data file {path}"):
        sources.read_idx(str(path))
    path.write_bytes(b"not gzip at all")
    with pytest.raises(data.DataError, match=f"corrupt data file {path}"):
        sources.read_idx(str(path))


def test_digits_split_is_disjoint_and_scaled():
    train, test = sources.load_source("digits"), sources.load_source("digits", "test")
    assert (train.num_examples, test.num_examples) == (1437, 360)
    _, image = next(iter(train.examples))
    assert image.dtype == tf.uint8 and int(tf.reduce_max(image)) == 255


def test_train_pipeline_yields_indices_and_two_different_views():
    source = sources.load_source("digits")
    index, view_q, view_k = next(iter(data.train_pipeline(source, 32, 16, seed=0)))
    assert view_q.dtype == tf.float32
    assert index.shape == (32,) and index.dtype == tf.int64
    assert len(set(index.numpy().tolist())) == 32
    assert view_q.shape == view_k.shape == (32, 16, 16, 3)
    assert 0.0 <= float(tf.reduce_min(view_q)) and float(tf.reduce_max(view_q)) <= 1.0
    assert float(tf.reduce_mean(tf.abs(view_q - view_k))) > 0.01


def test_embedding_pipeline_is_every_example_once_in_order():
    source = sources.load_source("digits", "test")
    batches = list(data.embedding_pipeline(source, 100, 8))
    indices = np.concatenate([i.numpy() for i, _ in batches])
    np.testing.assert_array_equal(indices, np.arange(360))
    first = batches[0][1][0].numpy()
    _, raw = next(iter(source.examples))
    np.testing.assert_allclose(first[..., 0], raw.numpy()[..., 0] / 255.0, atol=1e-6)


def test_tfds_source_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24):
        source = sources.load_source("cifar10")
        assert (source.num_examples, source.num_classes) == (24, 10)
        assert source.labels.shape == (24,)
        index, view_q, _ = next(iter(data.train_pipeline(source, 8, 32, seed=0)))
    assert view_q.shape == (8, 32, 32, 3)
    assert set(index.numpy().tolist()) <= set(range(24))


def test_tfds_offline_fails_fast_with_hint(tmp_path):
    with pytest.raises(data.DataError, match="--dataset=cifar10.*--download"):
        sources.load_source("cifar10", data_dir=str(tmp_path))


def test_unknown_dataset_name_is_reported(tmp_path):
    with pytest.raises(data.DataError, match="--dataset=no_such_dataset"):
        sources.load_source("no_such_dataset", data_dir=str(tmp_path))


def _never_download(*args, **kwargs):
    raise AssertionError("download_and_prepare was called")


def test_imagenet2012_without_its_archives_is_one_line_and_no_download(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", _never_download)
    manual = tmp_path / "downloads" / "manual"
    for download in (False, True):
        with pytest.raises(data.DataError) as error:
            sources.load_source("imagenet2012", data_dir=str(tmp_path), download=download)
        assert str(error.value) == (
            f"--dataset=imagenet2012: no ILSVRC2012_img_train.tar or ILSVRC2012_img_val.tar in "
            f"{manual} (TFDS cannot download it): put the archives from image-net.org there (the "
            "folder follows --data_dir) and pass --download once to prepare it")
    manual.mkdir(parents=True)
    (manual / "ILSVRC2012_img_train.tar").write_bytes(b"")
    with pytest.raises(data.DataError, match=r"no ILSVRC2012_img_val\.tar in "):
        sources.load_source("imagenet2012", "test", data_dir=str(tmp_path))
    (manual / "ILSVRC2012_img_val.tar").write_bytes(b"")
    with pytest.raises(data.DataError, match=f"^--dataset=imagenet2012: not prepared in "
                                             f"{tmp_path}; pass --download once to prepare it "
                                             f"from the archives in {manual} "):
        sources.load_source("imagenet2012", data_dir=str(tmp_path))


def test_imagenet2012_is_evaluated_on_its_labelled_validation_split():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):  # TFDS's "test" split has label -1
        source = sources.load_source("imagenet2012", "test")
    assert (source.name, source.num_examples, source.num_classes) == \
        ("imagenet2012:validation", 6, 1000)
    assert source.labels.min() >= 0


def test_image_folder_in_imagenet_layout(tmp_path):
    write_image_folder(tmp_path)
    source = sources.load_source(f"folder:{tmp_path}")
    assert (source.num_examples, source.num_classes) == (6, 2)
    np.testing.assert_array_equal(source.labels, [0, 0, 0, 1, 1, 1])
    _index, view_q, _view_k = next(iter(data.train_pipeline(source, 4, 16, seed=0)))
    assert view_q.shape == (4, 16, 16, 3)
    _, images = next(iter(data.embedding_pipeline(source, 6, 16)))
    assert images.shape == (6, 16, 16, 3)


def test_folder_without_val_names_it_for_the_test_split(tmp_path):
    write_image_folder(tmp_path)
    with pytest.raises(data.DataError) as error:
        sources.load_source(f"folder:{tmp_path}", "test")
    assert str(error.value) == (f"--dataset=folder:{tmp_path}: no val/ folder beside train/ "
                                "(the test split that evaluation uses)")


def test_empty_image_folder_is_a_clear_error(tmp_path):
    os.makedirs(tmp_path / "train" / "cat")
    with pytest.raises(data.DataError, match="no readable images in class sub-folders"):
        sources.load_source(f"folder:{tmp_path}")
    with pytest.raises(data.DataError, match="no such folder"):
        sources.load_source(f"folder:{tmp_path}/missing")


def _batches(pipeline):
    return [tuple(t.numpy() for t in batch) for batch in pipeline]


def test_train_stream_is_a_function_of_seed_and_step():
    source = sources.load_source("digits")  # 1437 examples: 22 batches of 64 per pass
    full = _batches(data.train_pipeline(source, 64, 16, seed=3, num_steps=30))
    resumed = _batches(data.train_pipeline(source, 64, 16, seed=3, start_step=20, num_steps=10))
    assert len(full) == 30 and len(resumed) == 10
    for a, b in zip(full[20:], resumed):  # crosses the pass boundary at step 22
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    other_seed = _batches(data.train_pipeline(source, 64, 16, seed=4, num_steps=1))
    assert not np.array_equal(other_seed[0][0], full[0][0])


def test_each_pass_is_a_new_permutation_without_repeats():
    source = sources.load_source("digits")
    batches = _batches(data.train_pipeline(source, 64, 16, seed=0, num_steps=44))
    first = np.concatenate([b[0] for b in batches[:22]])
    second = np.concatenate([b[0] for b in batches[22:]])
    assert len(set(first)) == len(first) == 22 * 64  # no index twice within a pass
    assert not np.array_equal(first, second)


def test_unreadable_images_are_skipped_with_a_count_or_stop_when_strict(tmp_path, capsys):
    write_image_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "9.png"
    bad.write_bytes(b"\x89PNG truncated")
    source = sources.load_source(f"folder:{tmp_path}")
    assert source.num_examples == 6
    assert f"skipped 1 unreadable images in {tmp_path}/train (first: {bad})" in capsys.readouterr().out
    with pytest.raises(data.DataError, match=f"unreadable image {bad} .*--strict_data"):
        sources.load_source(f"folder:{tmp_path}", strict=True)


def test_labelled_pipeline_keeps_only_the_subset_with_true_labels():
    source = sources.load_source("digits", "test")
    indices = np.sort(np.random.default_rng(0).choice(source.num_examples, 36, replace=False))
    batches = list(data.labelled_pipeline(source, 16, 12, indices, train=True, seed=0))
    labels = np.concatenate([y.numpy() for _, y in batches])
    images = np.concatenate([x.numpy() for x, _ in batches])
    assert images.shape == (len(indices), 12, 12, 3)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert sorted(labels) == sorted(source.labels[indices])  # shuffled, same examples
    evaluation = data.labelled_pipeline(source, 100, 12)
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in evaluation]),
                                  source.labels)  # every example once, in order


def test_image_check_is_cached_and_only_changed_files_are_decoded_again(tmp_path, monkeypatch,
                                                                        capsys):
    write_image_folder(tmp_path)
    run = str(tmp_path / "run")
    cache = os.path.join(run, "image_check_train.json.gz")
    decoded = []
    real = sources._decodable
    monkeypatch.setattr(sources, "_decodable", lambda paths: decoded.append(paths) or real(paths))

    first = sources.load_source(f"folder:{tmp_path}", cache_dir=run)
    assert [len(p) for p in decoded] == [6] and os.path.exists(cache)
    again = sources.load_source(f"folder:{tmp_path}", cache_dir=run)
    assert [len(p) for p in decoded] == [6]  # nothing decoded on the restart
    assert "6 images in" in capsys.readouterr().out
    np.testing.assert_array_equal(again.labels, first.labels)

    changed = tmp_path / "train" / "dog" / "1.png"
    changed.write_bytes(b"\x89PNG now corrupt")  # other size and mtime: checked again
    source = sources.load_source(f"folder:{tmp_path}", cache_dir=run)
    assert decoded[-1] == [str(changed)] and source.num_examples == 5
    # The cached verdict "unreadable" holds without decoding, strict or not.
    assert sources.load_source(f"folder:{tmp_path}", cache_dir=run).num_examples == 5
    with pytest.raises(data.DataError, match=f"unreadable image {changed}"):
        sources.load_source(f"folder:{tmp_path}", strict=True, cache_dir=run)
    assert len(decoded) == 2

    # Same size, new mtime (a file rewritten in place) is decoded again too.
    same_size = tmp_path / "train" / "cat" / "0.png"
    stat = same_size.stat()
    os.utime(same_size, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    sources.load_source(f"folder:{tmp_path}", cache_dir=run)
    assert decoded[-1] == [str(same_size)]


def test_corrupt_or_foreign_image_check_cache_is_ignored(tmp_path):
    write_image_folder(tmp_path)
    cache = tmp_path / "image_check_train.json.gz"
    cache.write_bytes(b"not gzip")
    assert sources.load_source(f"folder:{tmp_path}", cache_dir=str(tmp_path)).num_examples == 6
    other = tmp_path / "other"
    write_image_folder(other, classes=("a",), per_class=2)
    # A cache written for another root decodes everything and is replaced.
    assert sources.load_source(f"folder:{other}", cache_dir=str(tmp_path)).num_examples == 2


def _no_random_access(*args, **kwargs):
    raise NotImplementedError("TFRecord format")


@pytest.mark.parametrize("random_access", [True, False], ids=["array_record", "tfrecord"])
def test_large_tfds_split_is_read_by_index_or_streamed_never_loaded_whole(
        random_access, monkeypatch, tmp_path):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(sources, "IN_MEMORY_BYTES", 0)  # imagenette's sizes vary: never in memory
    monkeypatch.setattr(data, "SHUFFLE_BLOCK", 8)
    with tfds.testing.mock_data(num_examples=20):
        if not random_access:
            monkeypatch.setattr(tfds.core.DatasetBuilder, "as_data_source", _no_random_access)
        source = sources.load_source("imagenette/160px", cache_dir=str(tmp_path))
        assert not source.in_memory and (source.read is None) == (not random_access)
        assert (source.num_examples, source.num_classes) == (20, 10)
        examples = [(int(i), image.numpy()) for i, image in source.examples]
        assert [i for i, _ in examples] == list(range(20))
        assert all(image.ndim == 3 and image.shape[-1] == 3 for _, image in examples)
        batches = _batches(data.train_pipeline(source, 4, 16, seed=0, num_steps=10))
        resumed = _batches(data.train_pipeline(source, 4, 16, seed=0, start_step=7,
                                               num_steps=3))
        embedded = list(data.embedding_pipeline(source, 8, 16))
    indices = np.concatenate([b[0] for b in batches])
    assert sorted(indices[:20].tolist()) == list(range(20))  # pass 1: each example once
    assert not np.array_equal(indices[:20], indices[20:40])  # pass 2: another order
    if not random_access:  # permuted within blocks of 8 consecutive examples only
        assert sorted(indices[:8].tolist()) == list(range(8))
    for a, b in zip(batches[7:], resumed):  # resume = the same batches, views included
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert np.concatenate([i.numpy() for i, _ in embedded]).tolist() == list(range(20))
    assert len(source.labels) == 20 and set(source.labels) <= set(range(10))
    assert os.path.exists(tmp_path / "labels_imagenette_160px_train.npy")


def test_class_folders_without_images_are_named(tmp_path):
    write_image_folder(tmp_path)
    os.makedirs(tmp_path / "train" / "emu")
    (tmp_path / "train" / "owl").mkdir()
    (tmp_path / "train" / "owl" / "0.png").write_bytes(b"unreadable")
    with pytest.raises(data.DataError, match=f"folder:{tmp_path}/train: 2 of 4 class folders "
                                             "hold no readable image: emu, owl$"):
        sources.load_source(f"folder:{tmp_path}")




def test_fixed_subset_is_seeded_sorted_and_none_when_it_covers_everything():
    subset = data.fixed_subset(100, 10, seed=3)
    assert len(set(subset.tolist())) == 10 and list(subset) == sorted(subset)
    np.testing.assert_array_equal(subset, data.fixed_subset(100, 10, seed=3))
    assert data.fixed_subset(100, 0, seed=3) is None and data.fixed_subset(100, 100, 3) is None


def _embedded(pipeline):
    batches = list(pipeline)
    return (np.concatenate([i.numpy() for i, _ in batches]),
            np.concatenate([x.numpy() for _, x in batches]))


def _source(kind, folder, monkeypatch, num_examples):
    """digits' test split in memory, an image folder, or a streamed TFDS split (TFRecord)."""
    import tensorflow_datasets as tfds

    if kind == "in_memory":
        return sources.load_source("digits", "test")
    if kind == "files":
        write_image_folder(folder, per_class=num_examples // 2)
        return sources.load_source(f"folder:{folder}")
    monkeypatch.setattr(sources, "IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_data_source", _no_random_access)
    with tfds.testing.mock_data(num_examples=num_examples):
        return sources.load_source("imagenette/160px")


@pytest.mark.parametrize("kind", ["in_memory", "files", "stream"])
def test_embedding_pipeline_of_a_subset_yields_positions_and_those_images(kind, tmp_path,
                                                                          monkeypatch):
    source = _source(kind, tmp_path, monkeypatch, num_examples=10 if kind == "files" else 12)
    subset = np.array([1, 4, 5, 8])
    positions, images = _embedded(data.embedding_pipeline(source, 3, 8, subset))
    _, everything = _embedded(data.embedding_pipeline(source, 3, 8))
    np.testing.assert_array_equal(positions, np.arange(4))
    np.testing.assert_allclose(images, everything[subset], atol=1e-6)


@pytest.mark.parametrize("local_replicas", [1, 2])
@pytest.mark.parametrize("kind", ["in_memory", "files", "stream"])
def test_each_worker_reads_only_its_rows_and_together_they_make_the_global_batch(
        kind, local_replicas, tmp_path, monkeypatch):
    """Two input pipelines (workers) of `local_replicas` replicas each: per step, the
    per-replica batches of worker 0 then worker 1 are the one-pipeline global batch, views
    included, and a worker reads no other example. Steps 1-3 of 16 examples in batches of 8
    cross a pass boundary."""
    source = _source(kind, tmp_path, monkeypatch, num_examples=16)
    whole = _batches(data.train_pipeline(source, 8, 16, seed=0, start_step=1, num_steps=3))
    parts, reads = [], []
    for worker in range(2):
        counted, read = counting_reads(source) if source.read is not None else (source, None)
        context = tf.distribute.InputContext(2, worker, 2 * local_replicas)
        parts.append(_batches(data.train_pipeline(counted, 8, 16, seed=0, start_step=1,
                                                  num_steps=3, input_context=context)))
        reads.append(read)
        assert len(parts[-1]) == 3 * local_replicas
        assert all(len(batch[0]) == 8 // (2 * local_replicas) for batch in parts[-1])
    for step, batch in enumerate(whole):
        replicas = [b for part in parts for b in part[step * local_replicas:][:local_replicas]]
        np.testing.assert_array_equal(np.concatenate([b[0] for b in replicas]), batch[0])
        for view in (1, 2):
            np.testing.assert_allclose(np.concatenate([b[view] for b in replicas]), batch[view],
                                       atol=1e-6)
    for part, read in zip(parts, reads):
        if read is not None:  # random access: exactly its own rows were read
            assert sorted(read) == sorted(np.concatenate([b[0] for b in part]).tolist())


@pytest.mark.parametrize("kind", ["in_memory", "files", "stream"])
def test_embedding_workers_read_a_padded_strided_share_in_equal_batches(kind, tmp_path,
                                                                        monkeypatch):
    """7 workers, batch 14 (2 per worker): worker w reads positions w, w+7, ... of the range
    padded to a multiple of 7, a padding position p repeating p - N (10 examples: 10-13 repeat
    0-3; digits: 360-363 repeat 0-3), in batches of the same sizes on every worker (the gathers
    match)."""
    source = _source(kind, tmp_path, monkeypatch, num_examples=10)
    count = source.num_examples
    _, everything = _embedded(data.embedding_pipeline(source, 14, 8))
    covered = set()
    sizes = []
    for worker in range(7):
        expected = (np.arange(worker, -(-count // 7) * 7, 7) % count).tolist()
        counted, read = counting_reads(source) if source.read is not None else (source, None)
        batches = list(data.embedding_pipeline(
            counted, 14, 8, input_context=tf.distribute.InputContext(7, worker)))
        sizes.append([len(index) for index, _ in batches])
        index, images = _embedded(batches)
        assert sorted(index.tolist()) == sorted(expected)  # a stream keeps its stored order
        np.testing.assert_allclose(images, everything[index], atol=1e-6)
        if read is not None:
            assert sorted(read) == sorted(expected)
        covered |= set(index.tolist())
    assert covered == set(range(count))
    assert all(s == sizes[0] for s in sizes) and sizes[0][0] == 2


def test_untuned_pipeline_says_so_in_its_options():
    source = sources.load_source("digits")
    assert data.train_pipeline(source, 8, 16, 0, num_steps=1).options().autotune.enabled
    assert not data.train_pipeline(source, 8, 16, 0, num_steps=1,
                                   autotune=False).options().autotune.enabled
