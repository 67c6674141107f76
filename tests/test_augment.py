import numpy as np
import tensorflow as tf

from ifnd_tf import augment


def test_to_float_rgb_expands_grayscale():
    image = tf.constant([[[0], [255]]], tf.uint8)
    out = augment.to_float_rgb(image)
    assert out.shape == (1, 2, 3)
    np.testing.assert_allclose(out.numpy()[0, 1], [1.0, 1.0, 1.0])


def test_random_resized_crop_size_and_content():
    # A horizontal ramp: any crop must stay inside the ramp's value range and be resized.
    ramp = tf.tile(tf.linspace(0.0, 1.0, 64)[None, :, None], [48, 1, 3])
    for _ in range(20):
        crop = augment.random_resized_crop(ramp, 16).numpy()
        assert crop.shape == (16, 16, 3)
        assert crop.min() >= 0.0 and crop.max() <= 1.0
        assert np.all(np.diff(crop[0, :, 0]) >= -1e-6)  # orientation kept, no flip here


def test_random_resized_crop_covers_the_scale_range():
    # A single bright pixel in the centre: small crops zoom in, so its area varies a lot.
    image = np.zeros((64, 64, 3), np.float32)
    image[28:36, 28:36] = 1.0
    bright = [float(tf.reduce_mean(augment.random_resized_crop(tf.constant(image), 32)))
              for _ in range(60)]
    assert max(bright) > 3 * min(b for b in bright if b > 0)


def test_center_crop_of_a_wide_image_keeps_the_middle():
    image = np.zeros((10, 30, 1), np.float32)
    image[:, 10:20] = 1.0  # the central square is all ones
    out = augment.center_crop(tf.constant(image), 10).numpy()
    np.testing.assert_allclose(out, 1.0)
    batch = augment.center_crop(tf.constant(np.stack([image, image])), 5).numpy()
    assert batch.shape == (2, 5, 5, 1)


def test_moco_augment_keeps_shape_range_and_varies():
    images = tf.random.uniform([16, 32, 32, 3], seed=0)
    layer = augment.MoCoV2Augment(32, seed=1)
    first, second = layer(images), layer(images)
    assert first.shape == images.shape
    assert float(tf.reduce_min(first)) >= 0.0 and float(tf.reduce_max(first)) <= 1.0
    assert float(tf.reduce_mean(tf.abs(first - second))) > 0.01
    assert layer.blur is None and augment.MoCoV2Augment(96).blur is not None
