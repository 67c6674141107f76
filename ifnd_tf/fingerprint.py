"""A training set's identity: example count plus a hash, recorded with a run.

Every stored index (queue entries, pseudo-label table, train_keys) means "example i of this
dataset"; resuming on other data either crashed on a table shape (images added) or went on
silently with every index pointing at another image (images swapped). The fingerprint is
cheap next to loading the data: image folders hash the sorted file list with each file's size
(no pixel is read: a file rewritten with the same size is not noticed), arrays in memory hash
their bytes.
"""
import hashlib
import os
from collections.abc import Sequence

import numpy as np


def of_arrays(images: np.ndarray) -> dict:
    """Count and SHA-256 of the image array (shape, dtype and bytes)."""
    digest = hashlib.sha256(f"{images.shape}{images.dtype}".encode())
    digest.update(np.ascontiguousarray(images).data)
    return {"examples": len(images), "kind": "arrays", "sha256": digest.hexdigest()}


def of_files(paths: Sequence[str], root: str) -> dict:
    """Count, total size and SHA-256 of the file list (paths relative to root, with sizes)."""
    digest, total = hashlib.sha256(), 0
    for path in paths:
        size = os.path.getsize(path)
        total += size
        digest.update(f"{os.path.relpath(path, root)}\t{size}\n".encode())
    return {"examples": len(paths), "kind": "files", "bytes": total,
            "sha256": digest.hexdigest()}


def describe_change(recorded: dict, current: dict) -> str | None:
    """None if both fingerprints are equal, else what changed, in a few words."""
    if recorded == current:
        return None
    if recorded.get("examples") != current.get("examples"):
        return f"{recorded.get('examples')} -> {current.get('examples')} examples"
    what = {"files": "file names or sizes", "arrays": "image contents"}.get(
        current.get("kind"), "contents")
    return f"the same {current.get('examples')} examples, but their {what} differ"
