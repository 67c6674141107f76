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
  NearestFraction  each anchor's alpha * quantile most similar queue entries
  TopKThreshold    FNC-style: the anchor's top-k entries that reach a cosine threshold
  SoftClusterDrop  HCSC-style: dropped with the probability of being in the anchor's cluster
  LearnedThreshold GloFND: a per-example threshold learned online as a quantile
The debiased loss (Chuang et al.) is a loss, not a mask: MoCoConfig.class_prior.

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
from ifnd_tf.detectors.learned_threshold import LearnedThreshold
from ifnd_tf.detectors.nearest_fraction import NearestFraction, nearest_fraction_mask
from ifnd_tf.detectors.oracle import OracleLabels, oracle_pseudo_labels
from ifnd_tf.detectors.soft_cluster_drop import SoftClusterDrop
from ifnd_tf.detectors.top_k_threshold import TopKThreshold

__all__ = ["ClusterLabels", "EpochInputs", "FalseNegativeDetector", "LabelTable",
           "LearnedThreshold", "NearestFraction", "OracleLabels", "SoftClusterDrop",
           "TopKThreshold", "false_negative_mask", "nearest_fraction_mask",
           "oracle_pseudo_labels", "queue_lookup"]
