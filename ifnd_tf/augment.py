"""The MoCo v2 augmentation, on float images in [0, 1], with stateless randomness.

Every random draw comes from a seed derived from (run seed, data pass, dataset index, view), so
an example's two views depend on nothing else: not on thread scheduling, not on how many
batches came before, not on whether the run was resumed from a checkpoint.

Per example (inside tf.data.map, any input size): random resized crop, and a draw of the
photometric parameters. Per batch (vectorised): flip, colour jitter (p=0.8), grayscale (p=0.2)
and, for crops of 64 px or more, Gaussian blur (p=0.5) — torchvision's MoCo v2 recipe.
"""
import math

import tensorflow as tf

CROP_SCALE = (0.2, 1.0)  # MoCo v2
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER_STRENGTH = 0.4  # brightness, contrast, saturation; hue gets a quarter of it
BLUR_MIN_IMAGE_SIZE = 64  # MoCo v2 blurs ImageNet-size crops; tiny images lose too much
BLUR_SIGMA = (0.1, 2.0)
# Columns of the per-view parameter vector.
FLIP, JITTER, BRIGHTNESS, CONTRAST, SATURATION, HUE, GRAY, BLUR, SIGMA = range(9)
NUM_PARAMS = 9


def to_float(image: tf.Tensor) -> tf.Tensor:
    """uint8 [..., H, W, C] -> float32 in [0, 1], channels kept (gray stays one channel)."""
    return tf.image.convert_image_dtype(image, tf.float32)


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """[..., H, W, 1 or 3] -> [..., H, W, 3]: the encoders take RGB."""
    return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image


def to_float_rgb(image: tf.Tensor) -> tf.Tensor:
    """uint8 [..., H, W, 1 or 3] -> float32 [..., H, W, 3] in [0, 1]."""
    return to_rgb(to_float(image))


def crop_boxes(u: tf.Tensor, height: tf.Tensor, width: tf.Tensor, scale=CROP_SCALE,
               ratio=CROP_RATIO) -> tf.Tensor:
    """Normalised boxes [B, 4] from uniforms u [B, 4]: area fraction `scale`, aspect `ratio`.

    A crop that would not fit is clipped to the image (torchvision retries instead).
    """
    height, width = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    aspect = tf.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1])
    pixels = area * height * width
    box_height = tf.minimum(tf.sqrt(pixels / aspect) / height, 1.0)
    box_width = tf.minimum(tf.sqrt(pixels * aspect) / width, 1.0)
    top = (1.0 - box_height) * u[:, 2]
    left = (1.0 - box_width) * u[:, 3]
    return tf.stack([top, left, top + box_height, left + box_width], axis=1)


def random_resized_crop(image: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """One image [H, W, C] of any size, randomly cropped and resized to size²."""
    shape = tf.shape(image)
    box = crop_boxes(tf.random.stateless_uniform([1, 4], seed), shape[0], shape[1])
    return tf.image.crop_and_resize(image[None], box, [0], [size, size])[0]


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Central square crop of the shorter side, resized to size² (the un-augmented view).

    Works on one image [H, W, C] or a batch [B, H, W, C].
    """
    shape = tf.shape(image)
    side = tf.minimum(shape[-3], shape[-2])
    image = tf.image.resize_with_crop_or_pad(image, side, side)
    return tf.image.resize(image, [size, size])


def photometric_params(u: tf.Tensor, strength: float = JITTER_STRENGTH) -> tf.Tensor:
    """Per-view draws [B, NUM_PARAMS] from uniforms u [B, NUM_PARAMS]: flip, jitter on/off and
    factors, grayscale, blur and its sigma."""
    coins = tf.cast(u < [0.5, 0.8, 0.0, 0.0, 0.0, 0.0, 0.2, 0.5, 0.0], tf.float32)
    factors = 1.0 + strength * (2.0 * u - 1.0)
    hue_shift = strength / 4 * (2.0 * u[:, HUE] - 1.0)
    sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[:, SIGMA]
    return tf.stack([coins[:, FLIP], coins[:, JITTER], factors[:, BRIGHTNESS],
                     factors[:, CONTRAST], factors[:, SATURATION], hue_shift, coins[:, GRAY],
                     coins[:, BLUR], sigma], axis=1)


def sample_photometric_params(seed: tf.Tensor) -> tf.Tensor:
    """One view's photometric draws [NUM_PARAMS]."""
    return photometric_params(tf.random.stateless_uniform([1, NUM_PARAMS], seed))[0]


def batch_views(images: tf.Tensor, size: int, seed: tf.Tensor, first_row=0,
                num_rows=None) -> tuple[tf.Tensor, tf.Tensor]:
    """Random resized crops of a batch of equal-size images and their photometric draws.

    One crop_and_resize for the whole batch: far fewer ops than cropping image by image. The
    images are rows first_row... of a batch of num_rows (default: all of it) drawn from one
    seed, so a batch split across workers gets the draws the whole batch would.
    """
    batch = tf.shape(images)[0]
    num_rows = batch if num_rows is None else num_rows
    u = tf.random.stateless_uniform(tf.stack([num_rows, 4 + NUM_PARAMS]), seed)
    first_row = tf.cast(first_row, batch.dtype)
    u = u[first_row:first_row + batch]
    boxes = crop_boxes(u[:, :4], tf.shape(images)[1], tf.shape(images)[2])
    crops = tf.image.crop_and_resize(images, boxes, tf.range(batch), [size, size])
    return crops, photometric_params(u[:, 4:])


def view_with_params(image: tf.Tensor, size: int, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A random resized crop of one float image and the photometric draws for it."""
    crop_seed = tf.random.experimental.stateless_fold_in(seed, 0)
    params_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    return random_resized_crop(image, size, crop_seed), sample_photometric_params(params_seed)


def _per_image(values: tf.Tensor) -> tf.Tensor:
    return values[:, None, None, None]


def _gray(images: tf.Tensor) -> tf.Tensor:
    return images if images.shape[-1] == 1 else tf.image.rgb_to_grayscale(images)


def _color_jitter(images: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
    """torchvision ColorJitter semantics (multiplicative factors, hue shift), fixed order.

    Saturation and hue leave gray pixels as they are, so one-channel images skip them.
    """
    x = tf.clip_by_value(images * _per_image(params[:, BRIGHTNESS]), 0.0, 1.0)
    mean = tf.reduce_mean(_gray(x), axis=[1, 2, 3], keepdims=True)
    x = tf.clip_by_value((x - mean) * _per_image(params[:, CONTRAST]) + mean, 0.0, 1.0)
    if x.shape[-1] == 1:
        return x
    gray = _gray(x)
    x = tf.clip_by_value((x - gray) * _per_image(params[:, SATURATION]) + gray, 0.0, 1.0)
    hsv = tf.image.rgb_to_hsv(x)
    hue = tf.math.floormod(hsv[..., 0] + params[:, HUE, None, None], 1.0)
    return tf.image.hsv_to_rgb(tf.stack([hue, hsv[..., 1], hsv[..., 2]], axis=-1))


def _gaussian_blur(images: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """Separable blur with one sigma per image, kernel ~10% of the side, reflect padding.

    A weighted sum of shifted copies, which XLA fuses into one pass per direction: 2.3x less CPU
    than a depthwise conv with the batch folded into channels (that conv ran 30x slower under
    XLA; docs/design.md, "Input pipeline on JPEG files").
    """
    _, height, width, _ = images.shape
    radius = height // 20
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-(offsets[None, :] ** 2) / (2.0 * sigma[:, None] ** 2))
    weights = weights / tf.reduce_sum(weights, axis=1, keepdims=True)  # [B, K]
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    taps = range(2 * radius + 1)
    rows = tf.add_n([padded[:, k:k + height] * _per_image(weights[:, k]) for k in taps])
    return tf.add_n([rows[:, :, k:k + width] * _per_image(weights[:, k]) for k in taps])


@tf.function(jit_compile=True)
def apply_photometric(images: tf.Tensor, params: tf.Tensor) -> tf.Tensor:
    """Flip, jitter, grayscale and (large crops only) blur a batch [B, H, W, 1 or 3] by its
    params; RGB out. A gray batch gives what its RGB copy would, with a third of the work and
    no colour steps (they leave gray pixels unchanged).

    XLA-compiled (once per batch shape in a process): it fuses the ~40 element-wise passes over
    the batch into a few, 4.4x less CPU at 224 px (docs/design.md, "Input pipeline on JPEG
    files"). Deterministic like the rest: no reductions across threads.
    """
    images = tf.where(_per_image(params[:, FLIP]) > 0, tf.reverse(images, axis=[2]), images)
    images = tf.where(_per_image(params[:, JITTER]) > 0, _color_jitter(images, params), images)
    if images.shape[-1] == 3:
        gray = tf.image.grayscale_to_rgb(_gray(images))
        images = tf.where(_per_image(params[:, GRAY]) > 0, gray, images)
    if images.shape[1] >= BLUR_MIN_IMAGE_SIZE:
        blurred = _gaussian_blur(images, params[:, SIGMA])
        images = tf.where(_per_image(params[:, BLUR]) > 0, blurred, images)
    return to_rgb(tf.clip_by_value(images, 0.0, 1.0))
