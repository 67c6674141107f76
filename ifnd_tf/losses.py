"""Contrastive losses with false-negative handling.

All functions are pure: they take similarities and labels and return tensors, so the
method's core can be tested against hand-computed numbers.
"""
import tensorflow as tf

ELIMINATION = "elimination"
ATTRACTION = "attraction"
FALSE_NEGATIVE_STRATEGIES = (ELIMINATION, ATTRACTION)
# How false negatives are detected (--fn_detector): shared accepted cluster labels (the paper),
# or each anchor's most similar fraction of the queue (GloFND-like, no clustering).
CLUSTERS = "clusters"
QUANTILE = "quantile"
FALSE_NEGATIVE_DETECTORS = (CLUSTERS, QUANTILE)

# Large finite stand-in for -inf: keeps logsumexp and argmax free of NaN.
_MASKED_LOGIT = -1e9


def false_negative_mask(anchor_labels: tf.Tensor, queue_labels: tf.Tensor,
                        min_levels: int = 1) -> tf.Tensor:
    """Which queue entries share an accepted pseudo-label with each anchor.

    Args:
      anchor_labels: int [levels, batch], -1 where the anchor has no accepted label.
      queue_labels: int [levels, queue], -1 where the entry has no accepted label.
      min_levels: how many hierarchy levels must agree: 1 is the paper's union (any level);
        more is a vote that trades recall for precision (docs/design.md, "Vote over the
        hierarchy").
    Returns:
      bool [batch, queue]: True where anchor and entry agree at >= min_levels levels.
      Unlabeled (-1) never matches anything, not even another -1.
    """
    same = tf.equal(anchor_labels[:, :, None], queue_labels[:, None, :])
    agree = tf.logical_and(same, tf.greater_equal(anchor_labels, 0)[:, :, None])
    if min_levels == 1:
        return tf.reduce_any(agree, axis=0)
    return tf.reduce_sum(tf.cast(agree, tf.int32), axis=0) >= min_levels


def nearest_fraction_mask(similarities: tf.Tensor, valid: tf.Tensor,
                          fraction: tf.Tensor | float) -> tf.Tensor:
    """Each anchor's `fraction` of the valid queue entries most similar to it.

    GloFND (Balmaseda et al. 2025, arXiv 2502.20612) learns a per-anchor threshold at the
    dataset-wide (1 - fraction) quantile of the anchor's similarities, by SGD, because it sees
    only mini-batch negatives; the MoCo queue is a large random sample of the dataset, so the
    quantile is read from it directly, every step (docs/design.md, "Per-anchor quantile
    detector").

    Args:
      similarities: float [batch, queue], e.g. the queue columns of the logits.
      valid: bool [queue]: entries holding a real key (not the queue's random start rows).
      fraction: scalar in [0, 1]; n = round(fraction * valid entries) per anchor.
    Returns:
      bool [batch, queue]: valid entries at or above the anchor's n-th largest valid
      similarity (ties at the threshold included); all False when n = 0.
    """
    count = tf.cast(tf.round(tf.cast(fraction, tf.float32)
                             * tf.reduce_sum(tf.cast(valid, tf.float32))), tf.int32)
    candidates = tf.where(valid[None, :], similarities, similarities.dtype.min)
    ranked = tf.sort(candidates, axis=1, direction="DESCENDING")
    threshold = tf.gather(ranked, tf.maximum(count - 1, 0), axis=1)[:, None]
    return tf.logical_and(tf.logical_and(candidates >= threshold, valid[None, :]), count > 0)


def contrastive_logits(query: tf.Tensor, key: tf.Tensor, queue: tf.Tensor,
                       temperature: float) -> tf.Tensor:
    """MoCo logits [batch, 1 + queue]: column 0 is the positive key, then the queue."""
    positive = tf.reduce_sum(query * key, axis=1, keepdims=True)
    negatives = tf.matmul(query, queue, transpose_b=True)
    return tf.concat([positive, negatives], axis=1) / temperature


def _with_positive_column(mask: tf.Tensor, positive: bool) -> tf.Tensor:
    column = tf.fill([tf.shape(mask)[0], 1], positive)
    return tf.concat([column, mask], axis=1)


def ifnd_loss(logits: tf.Tensor, fn_mask: tf.Tensor, strategy: str = ELIMINATION) -> tf.Tensor:
    """Per-anchor InfoNCE where detected false negatives are handled by `strategy`.

    Args:
      logits: [batch, 1 + queue] from `contrastive_logits`.
      fn_mask: bool [batch, queue] from `false_negative_mask`.
      strategy: "elimination" removes masked entries from the denominator;
        "attraction" treats them as extra positives and averages -log p over the positive set
        (SupCon style) with the full denominator.
    Returns:
      float [batch]; with an all-False mask both strategies equal plain InfoNCE.
    """
    if strategy == ELIMINATION:
        kept = masked_logits_for_elimination(logits, fn_mask)
        return tf.reduce_logsumexp(kept, axis=1) - logits[:, 0]
    if strategy == ATTRACTION:
        positives = tf.cast(_with_positive_column(fn_mask, True), logits.dtype)
        log_prob = logits - tf.reduce_logsumexp(logits, axis=1, keepdims=True)
        return -tf.reduce_sum(positives * log_prob, axis=1) / tf.reduce_sum(positives, axis=1)
    raise ValueError(f"--fn_strategy must be one of {FALSE_NEGATIVE_STRATEGIES}, got {strategy!r}")


def masked_logits_for_elimination(logits: tf.Tensor, fn_mask: tf.Tensor) -> tf.Tensor:
    """Logits with detected false negatives pushed to a huge negative value (out of the softmax)."""
    drop = _with_positive_column(fn_mask, False)
    return tf.where(drop, tf.constant(_MASKED_LOGIT, logits.dtype), logits)


def contrastive_accuracy(logits: tf.Tensor) -> tf.Tensor:
    """Fraction of anchors whose positive key (column 0) beats every other logit.

    A tie is a miss: argmax of equal logits is column 0, so a collapsed encoder, whose logits
    are all equal, would otherwise score 1.0.
    """
    best_other = tf.reduce_max(logits[:, 1:], axis=1)
    return tf.reduce_mean(tf.cast(logits[:, 0] > best_other, tf.float32))


def key_spread(keys: tf.Tensor) -> tf.Tensor:
    """sqrt(1 - |mean of the unit keys|^2): 0 when every key is the same vector (collapse).

    |mean|^2 is the mean cosine over all pairs of the batch (self-pairs included), so this is
    the root of the batch's total variance: about 1 for keys spread over the sphere.
    """
    centre = tf.reduce_mean(tf.cast(keys, tf.float32), axis=0)
    return tf.sqrt(tf.maximum(1.0 - tf.reduce_sum(tf.square(centre)), 0.0))


def weight_decay_loss(variables, weight_decay: float) -> tf.Tensor:
    """0.5 * weight_decay * sum of squared weights, in float32, added to the loss inside the
    tape (as simclr's tf2 code does): its gradient weight_decay * w then goes through the same
    loss scaling as the rest, so float16 training decays exactly as float32 does."""
    return 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32)))
                                          for v in variables])
