"""A generated ImageNet-layout folder: root/{train,val}/nXXXXXXXX/*.JPEG.

Random-size JPEGs (180-500 px a side by default) with smooth random content, and the oddities
real ImageNet-1k has: a few grayscale JPEGs, a few CMYK JPEGs, and one PNG named .JPEG
(n02105855_2933.JPEG). Used by the end-to-end test of flags/imagenet.cfg and by
bench/startup.py; nothing here needs TensorFlow.
"""
import os
from collections.abc import Iterator

import numpy as np
from PIL import Image

SIZE_RANGE = (180, 500)


def _pixels(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour blobs: a coarse random grid upsampled (noise would make huge files)."""
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def write_image(path: str, rng: np.random.Generator, kind: str = "rgb",
                size_range: tuple[int, int] = SIZE_RANGE) -> None:
    """One image file; kind = rgb | gray | cmyk (JPEG modes) | png (PNG bytes, any name)."""
    height, width = (int(s) for s in rng.integers(size_range[0], size_range[1] + 1, 2))
    image = Image.fromarray(_pixels(rng, height, width))
    if kind == "gray":
        image = image.convert("L")
    elif kind == "cmyk":
        image = image.convert("CMYK")
    image.save(path, format="PNG" if kind == "png" else "JPEG", quality=85)


def write_class_folder(split_dir: str, label: int, count: int, rng: np.random.Generator,
                       odd_kinds: Iterator[str] | None = None,
                       size_range: tuple[int, int] = SIZE_RANGE):
    """split_dir/n<label>/n<label>_<i>.JPEG; the first images take their kind from odd_kinds.
    Returns (kind, path) of the odd ones."""
    wnid = f"n{label:08d}"
    os.makedirs(os.path.join(split_dir, wnid), exist_ok=True)
    odd = []
    for i in range(count):
        path = os.path.join(split_dir, wnid, f"{wnid}_{i}.JPEG")
        kind = next(odd_kinds, "rgb") if odd_kinds is not None else "rgb"
        write_image(path, rng, kind, size_range)
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
