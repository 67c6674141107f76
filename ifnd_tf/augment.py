"""The MoCo v2 augmentation, on float images in [0, 1].

Per example (inside tf.data.map, handles any input size): random resized crop.
Per batch (vectorised Keras 3 layers): flip, colour jitter (p=0.8), grayscale (p=0.2) and,
for large images, Gaussian blur (p=0.5). keras-cv is not used (see BUILD_NOTES.md).
"""
import math

import keras
import tensorflow as tf

CROP_SCALE = (0.2, 1.0)  # MoCo v2
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
BLUR_MIN_IMAGE_SIZE = 64  # MoCo v2 blurs ImageNet-size crops; tiny images lose too much


def to_float_rgb(image: tf.Tensor) -> tf.Tensor:
    """uint8 [..., H, W, 1 or 3] -> float32 [..., H, W, 3] in [0, 1]."""
    image = tf.image.convert_image_dtype(image, tf.float32)
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return image


def random_resized_crop(image: tf.Tensor, size: int, scale=CROP_SCALE,
                        ratio=CROP_RATIO) -> tf.Tensor:
    """Crop a random area fraction `scale` and aspect `ratio` of one image, resize to size²."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    area = tf.random.uniform([], *scale)
    log_ratio = tf.random.uniform([], math.log(ratio[0]), math.log(ratio[1]))
    aspect = tf.exp(log_ratio)
    pixels = area * shape[0] * shape[1]
    height = tf.minimum(tf.sqrt(pixels / aspect) / shape[0], 1.0)
    width = tf.minimum(tf.sqrt(pixels * aspect) / shape[1], 1.0)
    top = tf.random.uniform([], 0.0, 1.0 - height + 1e-7)
    left = tf.random.uniform([], 0.0, 1.0 - width + 1e-7)
    box = tf.stack([top, left, top + height, left + width])[None]
    crop = tf.image.crop_and_resize(image[None], box, [0], [size, size])
    return crop[0]


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Central square crop of the shorter side, resized to size² (the un-augmented view).

    Works on one image [H, W, C] or a batch [B, H, W, C].
    """
    shape = tf.shape(image)
    side = tf.minimum(shape[-3], shape[-2])
    image = tf.image.resize_with_crop_or_pad(image, side, side)
    return tf.image.resize(image, [size, size])


class MoCoV2Augment(keras.layers.Layer):
    """Batch-level photometric augmentation of MoCo v2 on [0, 1] images."""

    def __init__(self, image_size: int, jitter_strength: float = 0.4, seed: int | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.flip = keras.layers.RandomFlip("horizontal", seed=seed)
        self.jitter = keras.layers.RandomColorJitter(
            value_range=(0, 1), brightness_factor=jitter_strength,
            contrast_factor=jitter_strength, saturation_factor=jitter_strength,
            hue_factor=jitter_strength / 4, seed=seed)
        self.grayscale = keras.layers.RandomGrayscale(factor=0.2, seed=seed)
        self.blur = None
        if image_size >= BLUR_MIN_IMAGE_SIZE:
            kernel = 2 * (image_size // 20) + 1  # ~10% of the image side, odd
            self.blur = keras.layers.RandomGaussianBlur(
                factor=(0.5, 0.5), kernel_size=kernel, sigma=(0.1, 2.0), value_range=(0, 1),
                seed=seed)

    def call(self, images: tf.Tensor) -> tf.Tensor:
        images = self.flip(images)
        apply_jitter = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < 0.8
        images = tf.where(apply_jitter, self.jitter(images), images)
        images = self.grayscale(images)
        if self.blur is not None:
            images = self.blur(images)
        return tf.clip_by_value(images, 0.0, 1.0)
