import keras
import numpy as np
import tensorflow as tf

from ifnd_tf import export, model


def test_saved_model_and_keras_file_reproduce_the_encoder(tmp_path):
    encoder = model.build_encoder("small", 16, 0.25, embedding_dim=8)
    encoder(tf.random.uniform([4, 16, 16, 3]), training=True)  # move BN statistics off init
    images = tf.random.uniform([3, 16, 16, 3], seed=2)
    expected = encoder(images, training=False)
    path = export.export_encoder(encoder, str(tmp_path))

    loaded = tf.saved_model.load(path)
    np.testing.assert_allclose(loaded.features(images).numpy(), expected["features"].numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.embedding(images).numpy(), expected["embedding"].numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.serve(images).numpy(), expected["embedding"].numpy(),
                               rtol=1e-5, atol=1e-6)
    assert loaded.features(tf.zeros([7, 16, 16, 3])).shape == (7, 64)  # any batch size

    reloaded = keras.models.load_model(tmp_path / "encoder.keras")
    np.testing.assert_allclose(reloaded(images)["embedding"].numpy(),
                               expected["embedding"].numpy(), rtol=1e-5, atol=1e-6)
    assert len(reloaded.trainable_variables) == len(encoder.trainable_variables)
