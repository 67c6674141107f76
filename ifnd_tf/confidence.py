"""Confidence rules: which samples' cluster labels to trust first (--fn_confidence).

Each rule scores every sample at every hierarchy level; the per-cluster top-alpha acceptance
(clustering.accept_top_fraction) is the same for all rules. `margin` is the paper's rule; the
others ask whether a sample's cluster-mates are corroborated by another view of the data
(docs/design.md, "Confidence rules"):

  margin      cos(own centroid) - cos(nearest other centroid)            (the paper)
  agreement   the fraction of a sample's cluster-mates that share its cluster at the other
              hierarchy levels (mean over those levels)
  stability   the fraction of its cluster-mates that were its cluster-mates at the previous
              clustering pass (the previous epoch); margin on the first pass
  neighbours  the fraction of its k nearest neighbours (cosine) in its own cluster

Ties (samples in one cell of two partitions share a co-membership score) are broken by margin.
All functions are pure numpy on one machine's arrays; costs are O(N * levels) except
`neighbours`, an exact chunked k-NN search, O(N^2 * dim).
"""
import numpy as np

RULES = ("margin", "agreement", "stability", "neighbours")
_CHUNK = 4096


def shared_membership(assign: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per sample i: |C(i) ∩ C'(i)| / |C(i)|, the fraction of i's cluster in `assign` (itself
    included) that shares i's cluster in `other` — exact, from the contingency table."""
    assign = np.asarray(assign, np.int64)
    other = np.asarray(other, np.int64)
    cell = assign * (other.max() + 1) + other  # one id per (cluster, other cluster) cell
    _, cells, cell_sizes = np.unique(cell, return_inverse=True, return_counts=True)
    return (cell_sizes[cells] / np.bincount(assign)[assign]).astype(np.float32)


def agreement(assigns: np.ndarray) -> np.ndarray:
    """[levels, N]: mean over the other levels of shared_membership (1 with a single level)."""
    levels = len(assigns)
    if levels == 1:
        return np.ones(assigns.shape, np.float32)
    return np.stack([np.mean([shared_membership(assigns[l], assigns[m])
                              for m in range(levels) if m != l], axis=0)
                     for l in range(levels)])


def stability(assigns: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """[levels, N]: shared_membership between each level and the same level of the previous pass."""
    return np.stack([shared_membership(a, p) for a, p in zip(assigns, previous)])


def nearest_neighbours(embeddings: np.ndarray, k: int) -> np.ndarray:
    """[N, k] indices of each row's k most cosine-similar other rows (exact; faiss's flat
    inner-product search when installed, else chunked numpy)."""
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    x = np.ascontiguousarray(x, np.float32)
    k = min(k, len(x) - 1)
    try:
        import faiss  # optional dependency (requirements.txt), as for k-means
    except ImportError:
        return _nearest_neighbours_numpy(x, k)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, found = index.search(x, k + 1)
    # Drop each row itself (or, among exact duplicates, one row standing for it).
    keep = found != np.arange(len(x))[:, None]
    keep[keep.all(axis=1), -1] = False
    return found[keep].reshape(len(x), k)


def _nearest_neighbours_numpy(x: np.ndarray, k: int) -> np.ndarray:
    result = np.empty((len(x), k), np.int64)
    for lo in range(0, len(x), _CHUNK):
        sims = x[lo:lo + _CHUNK] @ x.T
        sims[np.arange(len(sims)), np.arange(lo, lo + len(sims))] = -np.inf  # not itself
        result[lo:lo + _CHUNK] = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return result


def neighbour_consistency(assigns: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """[levels, N]: the fraction of each sample's neighbours in its own cluster, per level."""
    assigns = np.asarray(assigns)
    return np.mean(assigns[:, neighbours] == assigns[:, :, None], axis=2, dtype=np.float32)


def scores(rule: str, assigns: np.ndarray, margins: np.ndarray, embeddings: np.ndarray,
           previous: np.ndarray | None = None, neighbours_k: int = 10) -> np.ndarray:
    """[levels, N] confidence of `rule` given every level's assignment and margin."""
    if rule == "margin" or (rule == "stability" and previous is None):
        return margins
    if rule == "agreement":
        return agreement(assigns)
    if rule == "stability":
        return stability(assigns, previous)
    if rule == "neighbours":
        return neighbour_consistency(assigns, nearest_neighbours(embeddings, neighbours_k))
    raise ValueError(f"--fn_confidence must be one of {RULES}, got {rule!r}")
