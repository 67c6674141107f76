"""Contrastive losses with false-negative handling (the mask comes from detectors.py).

All functions are pure: they take logits and masks and return tensors, so the method's core
can be tested against hand-computed numbers.
"""
import tensorflow as tf

ELIMINATION = "elimination"
ATTRACTION = "attraction"
FALSE_NEGATIVE_STRATEGIES = (ELIMINATION, ATTRACTION)
# Large finite stand-in for -inf: keeps logsumexp and argmax free of NaN.
_MASKED_LOGIT = -1e9


def similarities(query: tf.Tensor, key: tf.Tensor,
                 queue: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Cosines of unit vectors: (query-key [batch, 1], query-queue [batch, queue])."""
    positive = tf.reduce_sum(query * key, axis=1, keepdims=True)
    return positive, tf.matmul(query, queue, transpose_b=True)


def logits_from(positive: tf.Tensor, negatives: tf.Tensor, temperature: float) -> tf.Tensor:
    """MoCo logits [batch, 1 + queue]: column 0 is the positive key, then the queue."""
    return tf.concat([positive, negatives], axis=1) / temperature


def contrastive_logits(query: tf.Tensor, key: tf.Tensor, queue: tf.Tensor,
                       temperature: float) -> tf.Tensor:
    """MoCo logits [batch, 1 + queue] of unit query, key and queue vectors."""
    return logits_from(*similarities(query, key, queue), temperature)


def _with_positive_column(mask: tf.Tensor, positive: bool) -> tf.Tensor:
    column = tf.fill([tf.shape(mask)[0], 1], positive)
    return tf.concat([column, mask], axis=1)


def ifnd_loss(logits: tf.Tensor, fn_mask: tf.Tensor, strategy: str = ELIMINATION,
              class_prior: float = 0.0, temperature: float | None = None) -> tf.Tensor:
    """Per-anchor InfoNCE where detected false negatives are handled by `strategy`.

    Args:
      logits: [batch, 1 + queue] from `contrastive_logits`.
      fn_mask: bool [batch, queue] from a detector (detectors.py).
      strategy: "elimination" removes masked entries from the denominator;
        "attraction" treats them as extra positives and averages -log p over the positive set
        (SupCon style) with the full denominator.
      class_prior, temperature: a class prior > 0 makes the elimination loss the debiased one
        (`debiased_loss`) over the entries kept.
    Returns:
      float [batch]; with an all-False mask both strategies equal plain InfoNCE.
    """
    if strategy == ELIMINATION and class_prior > 0:
        assert temperature is not None, "the debiased loss needs the temperature"
        return debiased_loss(logits, fn_mask, class_prior, temperature)
    if strategy == ELIMINATION:
        kept = masked_logits_for_elimination(logits, fn_mask)
        return tf.reduce_logsumexp(kept, axis=1) - logits[:, 0]
    if class_prior > 0:
        raise ValueError("the debiased loss (a class prior > 0) needs the elimination strategy")
    if strategy == ATTRACTION:
        positives = tf.cast(_with_positive_column(fn_mask, True), logits.dtype)
        log_prob = logits - tf.reduce_logsumexp(logits, axis=1, keepdims=True)
        return -tf.reduce_sum(positives * log_prob, axis=1) / tf.reduce_sum(positives, axis=1)
    raise ValueError(f"--fn_strategy must be one of {FALSE_NEGATIVE_STRATEGIES}, got {strategy!r}")


def debiased_loss(logits: tf.Tensor, fn_mask: tf.Tensor, class_prior: float,
                  temperature: float) -> tf.Tensor:
    """Debiased contrastive loss (Chuang et al., NeurIPS 2020), per anchor, over the queue
    entries not masked.

    Some negatives share the anchor's class with probability tau+ = class_prior; their share
    of the negative term is taken out in expectation (estimated by the positive), floored at
    its theoretical minimum n * e^(-1/t):
        Ng = max((sum_j e^(s_j/t) - tau+ * n * e^(s+/t)) / (1 - tau+), n * e^(-1/t))
        loss = -log(e^(s+/t) / (e^(s+/t) + Ng))
    with n the entries kept. Computed shifted by the largest possible logit 1/t (cosines <= 1),
    so float32 holds it at any temperature and queue size.
    """
    assert 0.0 < class_prior < 1.0, f"class prior must be in (0, 1), got {class_prior}"
    shift = 1.0 / temperature
    kept = tf.logical_not(fn_mask)
    n = tf.reduce_sum(tf.cast(kept, logits.dtype), axis=1)
    positive = tf.exp(logits[:, 0] - shift)
    negatives = tf.reduce_sum(tf.where(kept, tf.exp(logits[:, 1:] - shift), 0.0), axis=1)
    estimate = (negatives - class_prior * n * positive) / (1.0 - class_prior)
    floor = n * tf.exp(tf.constant(-1.0 / temperature - shift, logits.dtype))
    return tf.math.log(positive + tf.maximum(estimate, floor)) - (logits[:, 0] - shift)


def masked_logits_for_elimination(logits: tf.Tensor, fn_mask: tf.Tensor) -> tf.Tensor:
    """Logits with detected false negatives pushed to a huge negative value (out of the softmax)."""
    drop = _with_positive_column(fn_mask, False)
    return tf.where(drop, tf.constant(_MASKED_LOGIT, logits.dtype), logits)


# A positive must beat every other key by more than this cosine to count as found: a collapsed
# encoder's keys differ by rounding and drift (~1e-5 .. 1e-4), which must not read as hits.
TIE_COSINE = 1e-3


def contrastive_accuracy(logits: tf.Tensor, margin: float = 0.0,
                         valid: tf.Tensor | None = None) -> tf.Tensor:
    """Fraction of anchors whose positive key (column 0) beats every other valid logit by more
    than `margin` (in logits: TIE_COSINE / temperature in the step).

    A tie or near-tie is a miss: a collapsed encoder, whose logits are all (nearly) equal,
    would otherwise score 1.0. `valid` (bool [queue]) leaves out the queue's random start rows,
    which are no keys: a collapsed positive beats them easily. With no valid entry, a miss.
    """
    others = logits[:, 1:]
    if valid is not None:
        others = tf.where(valid[None, :], others, others.dtype.min)
    found = logits[:, 0] > tf.reduce_max(others, axis=1) + margin
    if valid is not None:
        found = tf.logical_and(found, tf.reduce_any(valid))
    return tf.reduce_mean(tf.cast(found, tf.float32))


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
