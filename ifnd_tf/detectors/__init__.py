"""False-negative detection: one interface, one small class per rule, one module each.

A detector finds, at every training step, the queue entries that share the anchor's semantic
class (false negatives). It declares only what is its own:
  build_state(num_examples, dim)   its variables (checkpointed with the model), once
  refresh(epoch, alpha, inputs)    at each epoch start, eagerly: cluster, read labels, ...
  mask(anchor_ids, queue_ids, cosines)  -> bool [batch, queue], pure TF inside train_step
  observe(keys, ids)               after each step: the global batch of new keys (optional)
`MomentumContrast(encoder, num_examples, detector)` calls mask and observe; the epoch-start
callback (pseudo_labels.PseudoLabelCallback) calls refresh with the acceptance rate alpha.

  ClusterLabels    the paper: accepted k-means labels, a match at any level (min_levels: a vote)
  OracleLabels     ablation: the true classes of a growing, class-balanced fraction
  NearestFraction  each anchor's alpha * quantile most similar queue entries (GloFND-like)

Adding a detector: a new module here with its class, exported below, and its test.
"""
from ifnd_tf.detectors.base import (
    EpochInputs,
    FalseNegativeDetector,
    false_negative_mask,
    queue_lookup,
)
from ifnd_tf.detectors.cluster_labels import ClusterLabels
from ifnd_tf.detectors.label_table import LabelTable
from ifnd_tf.detectors.nearest_fraction import NearestFraction, nearest_fraction_mask
from ifnd_tf.detectors.oracle import OracleLabels, oracle_pseudo_labels

__all__ = ["ClusterLabels", "EpochInputs", "FalseNegativeDetector", "LabelTable",
           "NearestFraction", "OracleLabels", "false_negative_mask", "nearest_fraction_mask",
           "oracle_pseudo_labels", "queue_lookup"]
