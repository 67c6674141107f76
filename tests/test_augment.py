import numpy as np
import pytest
import tensorflow as tf

from ifnd_tf import augment


def test_to_float_rgb_expands_grayscale():
    image = tf.constant([[[0], [255]]], tf.uint8)
    out = augment.to_float_rgb(image)
    assert out.shape == (1, 2, 3)
    np.testing.assert_allclose(out.numpy()[0, 1], [1.0, 1.0, 1.0])


def _seed(i):
    return tf.constant([7, i], tf.int64)


def test_random_resized_crop_size_and_content():
    # A horizontal ramp: any crop must stay inside the ramp's value range and be resized.
    ramp = tf.tile(tf.linspace(0.0, 1.0, 64)[None, :, None], [48, 1, 3])
    for i in range(20):
        crop = augment.random_resized_crop(ramp, 16, _seed(i)).numpy()
        assert crop.shape == (16, 16, 3)
        assert crop.min() >= 0.0 and crop.max() <= 1.0
        assert np.all(np.diff(crop[0, :, 0]) >= -1e-6)  # orientation kept, no flip here


def test_random_resized_crop_covers_the_scale_range():
    # A single bright pixel in the centre: small crops zoom in, so its area varies a lot.
    image = np.zeros((64, 64, 3), np.float32)
    image[28:36, 28:36] = 1.0
    bright = [float(tf.reduce_mean(augment.random_resized_crop(tf.constant(image), 32, _seed(i))))
              for i in range(60)]
    assert max(bright) > 3 * min(b for b in bright if b > 0)


def test_center_crop_of_a_wide_image_keeps_the_middle():
    image = np.zeros((10, 30, 1), np.float32)
    image[:, 10:20] = 1.0  # the central square is all ones
    out = augment.center_crop(tf.constant(image), 10).numpy()
    np.testing.assert_allclose(out, 1.0)
    batch = augment.center_crop(tf.constant(np.stack([image, image])), 5).numpy()
    assert batch.shape == (2, 5, 5, 1)


def test_same_seed_same_view_different_seed_different_view():
    image = tf.random.uniform([40, 40, 3], seed=0)
    first = augment.view_with_params(image, 24, _seed(1))
    again = augment.view_with_params(image, 24, _seed(1))
    other = augment.view_with_params(image, 24, _seed(2))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(first[1].numpy(), other[1].numpy())


def test_photometric_param_frequencies_follow_moco_v2():
    params = np.stack([augment.sample_photometric_params(_seed(i)).numpy() for i in range(2000)])
    assert abs(params[:, augment.FLIP].mean() - 0.5) < 0.04
    assert abs(params[:, augment.JITTER].mean() - 0.8) < 0.04
    assert abs(params[:, augment.GRAY].mean() - 0.2) < 0.04
    assert params[:, augment.BRIGHTNESS].min() >= 0.6 and params[:, augment.BRIGHTNESS].max() <= 1.4
    assert np.abs(params[:, augment.HUE]).max() <= 0.1
    assert params[:, augment.SIGMA].min() >= 0.1 and params[:, augment.SIGMA].max() <= 2.0


def _params(**values):
    row = np.zeros(augment.NUM_PARAMS, np.float32)
    row[[augment.BRIGHTNESS, augment.CONTRAST, augment.SATURATION]] = 1.0  # identity jitter
    for name, value in values.items():
        row[getattr(augment, name.upper())] = value
    return tf.constant(row[None])


def test_photometric_ops_do_what_their_params_say():
    image = tf.random.uniform([1, 8, 8, 3], seed=1)
    identity = augment.apply_photometric(image, _params())
    np.testing.assert_allclose(identity.numpy(), image.numpy(), atol=1e-6)
    flipped = augment.apply_photometric(image, _params(flip=1))
    np.testing.assert_allclose(flipped.numpy(), image.numpy()[:, :, ::-1], atol=1e-6)
    darker = augment.apply_photometric(image, _params(jitter=1, brightness=0.5))
    np.testing.assert_allclose(darker.numpy(), image.numpy() * 0.5, atol=1e-5)
    gray = augment.apply_photometric(image, _params(gray=1)).numpy()
    np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-6)


@pytest.mark.parametrize("size", [28, 64])  # 64: the blur too
def test_gray_images_augment_as_their_rgb_copies(size):
    gray = tf.random.uniform([64, size, size, 1], seed=6)
    params = augment.photometric_params(tf.random.stateless_uniform([64, augment.NUM_PARAMS],
                                                                    _seed(9)))
    one_channel = augment.apply_photometric(gray, params)
    three_channels = augment.apply_photometric(tf.image.grayscale_to_rgb(gray), params)
    assert one_channel.shape == (64, size, size, 3)
    # Not bit-equal: TF's RGB-to-gray weights sum to 0.9999, so the RGB path's gray is 1e-4 off.
    np.testing.assert_allclose(one_channel.numpy(), three_channels.numpy(), atol=3e-4)
    assert params[:, augment.JITTER].numpy().sum() > 40  # the jitter really ran on most


def test_blur_only_for_large_crops_and_smooths():
    noise = tf.random.uniform([2, 64, 64, 3], seed=2)
    params = tf.concat([_params(blur=1, sigma=2.0), _params(blur=0, sigma=2.0)], axis=0)
    out = augment.apply_photometric(noise, params).numpy()
    assert out[0].std() < 0.5 * noise.numpy()[0].std()  # blurred
    np.testing.assert_allclose(out[1], noise.numpy()[1], atol=1e-6)  # untouched
    small = tf.random.uniform([1, 32, 32, 3], seed=3)
    np.testing.assert_allclose(augment.apply_photometric(small, _params(blur=1, sigma=2.0)).numpy(),
                               small.numpy(), atol=1e-6)


def test_crop_boxes_stay_inside_and_cover_the_scale_range():
    u = tf.random.stateless_uniform([2000, 4], _seed(5))
    boxes = augment.crop_boxes(u, 28, 28).numpy()
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0 + 1e-6
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert areas.min() >= 0.2 - 1e-6 and areas.min() < 0.25 and areas.max() > 0.95


def test_batch_views_are_seeded_and_differ_per_image():
    images = tf.tile(tf.random.uniform([1, 20, 20, 3], seed=4), [6, 1, 1, 1])  # six copies
    crops, params = augment.batch_views(images, 12, _seed(8))
    again, _ = augment.batch_views(images, 12, _seed(8))
    assert crops.shape == (6, 12, 12, 3) and params.shape == (6, augment.NUM_PARAMS)
    np.testing.assert_array_equal(crops.numpy(), again.numpy())
    assert not np.allclose(crops[0].numpy(), crops[1].numpy())  # each copy cropped differently


def test_blur_of_an_impulse_is_the_normalised_gaussian():
    size, sigma = 64, 1.5
    radius = size // 20
    impulse = np.zeros((1, size, size, 3), np.float32)
    impulse[0, 32, 32] = 1.0
    out = augment.apply_photometric(tf.constant(impulse), _params(blur=1, sigma=sigma)).numpy()
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    taps /= taps.sum()
    window = out[0, 32 - radius:33 + radius, 32 - radius:33 + radius, 1]
    np.testing.assert_allclose(window, np.outer(taps, taps), atol=1e-6)
    np.testing.assert_allclose(out.sum(axis=(0, 1, 2)), 1.0, atol=1e-5)  # nothing else lit


def test_photometric_compiles_with_xla_and_matches_the_uncompiled_ops():
    images = tf.random.uniform([8, 64, 64, 3], seed=10)
    params = augment.photometric_params(tf.random.stateless_uniform([8, augment.NUM_PARAMS],
                                                                    _seed(11)))
    hlo = augment.apply_photometric.experimental_get_compiler_ir(images, params)(stage="hlo")
    assert "HloModule" in hlo
    compiled = augment.apply_photometric(images, params).numpy()
    np.testing.assert_array_equal(compiled, augment.apply_photometric(images, params).numpy())
    plain = augment.apply_photometric.python_function(images, params).numpy()  # eager ops
    np.testing.assert_allclose(compiled, plain, atol=1e-5)
    assert not np.allclose(compiled, images.numpy(), atol=1e-2)  # the ops really ran
