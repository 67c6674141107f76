import keras
import numpy as np
import tensorflow as tf

from ifnd_tf import encoders, export


def test_saved_model_and_keras_file_reproduce_the_encoder(tmp_path):
    encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=8)
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


def test_saved_model_layer_fine_tunes_with_adam(tmp_path):
    encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=8)
    path = export.export_encoder(encoder, str(tmp_path))
    backbone = export.SavedModelLayer(path, call_endpoint="features", trainable=True)
    assert all(":" not in v.name for v in backbone.weights)
    images = keras.Input((16, 16, 3))
    classifier = keras.Model(images, keras.layers.Dense(3)(backbone(images)))
    classifier.compile(optimizer=keras.optimizers.Adam(1e-2),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = tf.random.uniform([8, 16, 16, 3], seed=4)
    y = np.arange(8) % 3
    before = {v.name: v.numpy().copy() for v in backbone.trainable_weights}
    classifier.train_on_batch(x, y)  # one Adam step through the SavedModel's variables
    changed = {v.name for v in backbone.trainable_weights if not np.array_equal(before[v.name], v)}
    # Every backbone weight moved; the projection head is traced but not on the features' path.
    assert changed == {name for name in before if not name.startswith("head_")}
    assert len(changed) == len(before) - 4
    untouched = tf.saved_model.load(path)  # the files on disk did not change
    assert not np.allclose(backbone(x).numpy(), untouched.features(x).numpy())
