"""A generated ImageNet-layout folder: root/{train,val}/nXXXXXXXX/*.JPEG.

Random-size JPEGs (180-500 px a side by default) with smooth random content, and the oddities
real ImageNet-1k has: a few grayscale JPEGs, a few CMYK JPEGs, and one PNG named .JPEG
(n02105855_2933.JPEG). Used by the end-to-end tests of flags/imagenet*.cfg and by
bench/startup.py and bench/jpeg_pipeline.py; nothing here needs TensorFlow.
"""
import concurrent.futures
import os
import shutil
from collections.abc import Iterator

import numpy as np
from PIL import Image

SIZE_RANGE = (180, 500)


def _pixels(rng: np.random.Generator, height: int, width: int, noise: float = 0.0) -> np.ndarray:
    """Smooth colour blobs: a coarse random grid upsampled. Plus Gaussian pixel noise of std
    `noise` when asked: 48 gives ~90 kB JPEGs at 400x350 (ImageNet's average is ~110 kB) that
    take twice as long per pixel to decode as the smooth ones (7x smaller files)."""
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    pixels = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    if noise:
        pixels = np.clip(pixels + rng.normal(0.0, noise, pixels.shape), 0, 255).astype(np.uint8)
    return pixels


def write_image(path: str, rng: np.random.Generator, kind: str = "rgb",
                size_range: tuple[int, int] = SIZE_RANGE, noise: float = 0.0) -> None:
    """One image file; kind = rgb | gray | cmyk (JPEG modes) | png (PNG bytes, any name)."""
    height, width = (int(s) for s in rng.integers(size_range[0], size_range[1] + 1, 2))
    image = Image.fromarray(_pixels(rng, height, width, noise))
    if kind == "gray":
        image = image.convert("L")
    elif kind == "cmyk":
        image = image.convert("CMYK")
    image.save(path, format="PNG" if kind == "png" else "JPEG", quality=85)


def write_class_folder(split_dir: str, label: int, count: int, rng: np.random.Generator,
                       odd_kinds: Iterator[str] | None = None,
                       size_range: tuple[int, int] = SIZE_RANGE, noise: float = 0.0):
    """split_dir/n<label>/n<label>_<i>.JPEG; the first images take their kind from odd_kinds.
    Returns (kind, path) of the odd ones."""
    wnid = f"n{label:08d}"
    os.makedirs(os.path.join(split_dir, wnid), exist_ok=True)
    odd = []
    for i in range(count):
        path = os.path.join(split_dir, wnid, f"{wnid}_{i}.JPEG")
        kind = next(odd_kinds, "rgb") if odd_kinds is not None else "rgb"
        write_image(path, rng, kind, size_range, noise)
        if kind != "rgb":
            odd.append((kind, path))
    return odd


def write_imagenet_folder(root: str, num_classes: int = 4, train_per_class: int = 16,
                          val_per_class: int = 4, seed: int = 0,
                          size_range: tuple[int, int] = SIZE_RANGE,
                          odd_kinds: tuple[str, ...] = ("gray", "gray", "cmyk", "cmyk", "png"),
                          empty_train_classes: int = 0) -> dict[str, list[str]]:
    """Write the folder; returns {"gray": [...], "cmyk": [...], "png": [...]} train paths.

    The first len(odd_kinds) train images (across classes) are the odd ones. Class folders are
    named like WordNet ids (n00000000, n00000001, ...). `empty_train_classes` extra train class
    folders hold no image (for the bad-input test).
    """
    rng = np.random.default_rng(seed)
    odd: dict[str, list[str]] = {kind: [] for kind in odd_kinds}
    kinds = iter(odd_kinds)
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(num_classes):
            for kind, path in write_class_folder(os.path.join(root, split), c, per_class, rng,
                                                 kinds if split == "train" else None,
                                                 size_range):
                odd[kind].append(path)
    for c in range(num_classes, num_classes + empty_train_classes):
        os.makedirs(os.path.join(root, "train", f"n{c:08d}"), exist_ok=True)
    return odd


def _write_class(job) -> None:
    split_dir, label, count, seed, size_range, noise = job
    write_class_folder(split_dir, label, count, np.random.default_rng(seed), size_range=size_range,
                       noise=noise)


def write_train_folder(root: str, num_images: int, num_classes: int,
                       size_range: tuple[int, int] = SIZE_RANGE, noise: float = 0.0) -> str:
    """root/train/ of num_images RGB JPEGs (class c seeded by c), one process per core; kept and
    reused while a marker says it is complete for these sizes. Returns root/train."""
    split_dir = os.path.join(root, "train")
    marker = os.path.join(root, f"complete_{num_images}_{num_classes}_{size_range[0]}_"
                                f"{size_range[1]}" + (f"_noise{noise:g}" if noise else ""))
    if os.path.exists(marker):
        return split_dir
    shutil.rmtree(root, ignore_errors=True)
    per_class = num_images // num_classes
    jobs = [(split_dir, c, per_class, c, size_range, noise) for c in range(num_classes)]
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_write_class, jobs))
    open(marker, "w").close()
    return split_dir
