import shutil

import numpy as np
import pytest
import tensorflow as tf

from ifnd_tf import config, encoders, evaluate, export


@pytest.mark.parametrize("fraction, per_class", [(0.01, 60), (0.1, 600)])
def test_labelled_subset_is_class_balanced_and_seeded(fraction, per_class):
    labels = np.random.default_rng(0).integers(0, 10, size=60_000)  # ~6,000 per class
    subset = evaluate.labelled_subset(labels, fraction, seed=3)
    assert len(subset) == len(np.unique(subset)) == 10 * per_class
    np.testing.assert_array_equal(np.bincount(labels[subset]), [per_class] * 10)
    np.testing.assert_array_equal(subset, evaluate.labelled_subset(labels, fraction, seed=3))
    assert not np.array_equal(subset, evaluate.labelled_subset(labels, fraction, seed=4))


def test_labelled_subset_takes_all_of_a_small_class():
    labels = np.array([0] * 100 + [1] * 3)
    subset = evaluate.labelled_subset(labels, 0.2, seed=0)  # 10 per class asked
    assert np.bincount(labels[subset]).tolist() == [10, 3]


@pytest.mark.parametrize("schedule, steps, expected", [
    ("cosine", (0, 50, 100), [1.0, 0.5, 0.0]),
    ("step", (0, 70, 90), [1.0, 0.1, 0.01]),  # x0.1 after 60 % and after 80 % of 100 steps
])
def test_learning_rate_schedules(schedule, steps, expected):
    rate = evaluate.lr_schedule(1.0, 100, schedule)
    rates = [float(rate(step)) for step in steps]
    np.testing.assert_allclose(rates, expected, atol=1e-6)


def test_load_encoder_reads_the_keras_file_next_to_the_saved_model(tmp_path):
    encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=8)
    saved_model = export.export_encoder(encoder, str(tmp_path / "export"))
    loaded = evaluate.load_encoder(saved_model + "/")
    images = tf.random.uniform([2, 16, 16, 3], seed=1)
    np.testing.assert_allclose(loaded(images)["features"].numpy(),
                               encoder(images, training=False)["features"].numpy(), rtol=1e-5)
    elsewhere = tmp_path / "elsewhere" / "saved_model"
    with pytest.raises(config.ConfigError, match=f"^--saved_model={elsewhere}: no such directory"):
        evaluate.load_encoder(str(elsewhere))  # not the encoder.keras of another path
    elsewhere.mkdir(parents=True)  # a folder beside an encoder.keras is not a SavedModel
    (tmp_path / "elsewhere" / "encoder.keras").write_bytes(
        (tmp_path / "export" / "encoder.keras").read_bytes())
    with pytest.raises(config.ConfigError, match=f"^--saved_model={elsewhere}: not a SavedModel "
                                                 r"\(no saved_model.pb\)"):
        evaluate.load_encoder(str(elsewhere))
    shutil.rmtree(elsewhere.parent)
    shutil.copytree(saved_model, elsewhere)
    with pytest.raises(config.ConfigError, match="--saved_model=.*missing .*encoder.keras"):
        evaluate.load_encoder(str(elsewhere))
    (tmp_path / "elsewhere" / "encoder.keras").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(config.ConfigError, match=r"encoder.keras does not load \(.*\); export "
                                                 "again with ifnd_tf.train"):
        evaluate.load_encoder(str(elsewhere))
    with pytest.raises(config.ConfigError) as error:
        evaluate.load_encoder(saved_model, image_size=28)
    assert str(error.value) == (
        f"--image_size=28, but the encoder in {tmp_path}/export/encoder.keras was trained on "
        "16x16 images: pass the pre-training flags (--flagfile)")
