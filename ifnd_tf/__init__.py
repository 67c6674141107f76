"""ifnd_tf: MoCo v2 with Incremental False Negative Detection (Chen et al., ICLR 2022).

The public API (docs/api.md) is `__all__`; every other name is private. Names load on first
use, so `import ifnd_tf` does not import TensorFlow (the commands set up their allocator first).

    from ifnd_tf import MomentumContrast, PseudoLabelCallback, ClusterLabels, pretrain

Modules, in the order the algorithm uses them:
  sources, data   where images come from; the two-view, embedding and labelled pipelines
  augment         the MoCo v2 augmentation
  encoders        backbones (ours, keras.applications, yours), the head, shuffle-BN
  model           MomentumContrast: the Keras model whose train_step is the MoCo v2 step
  losses          InfoNCE with the false-negative mask (elimination / attraction), debiased
  detectors       false-negative detectors: the paper's cluster labels, the oracle, quantile,
                  FNC-style top-k, HCSC-style soft drop, GloFND's learned threshold
  clustering      k-means hierarchy, confidence, acceptance schedule
  pseudo_labels   PseudoLabelCallback: alpha from the schedule, the detector's refresh
  embedding       encoder outputs over a whole dataset, placed by index
  config          RunConfig and its sections; cli defines the flags from them
  pretraining     pretrain(config): a whole run (resume, callbacks, export)
  export, knn, linear_eval, finetune, compare: export and evaluation
"""
import importlib

_PUBLIC = {
    "MomentumContrast": "model",
    "PseudoLabelCallback": "pseudo_labels",
    "FalseNegativeDetector": "detectors",
    "EpochInputs": "detectors",
    "ClusterLabels": "detectors",
    "OracleLabels": "detectors",
    "NearestFraction": "detectors",
    "TopKThreshold": "detectors",
    "SoftClusterDrop": "detectors",
    "LearnedThreshold": "detectors",
    "KMeansSettings": "clustering",
    "AcceptanceSchedule": "clustering",
    "build_encoder": "encoders",
    "with_head": "encoders",
    "RunConfig": "config",
    "DataConfig": "config",
    "EncoderConfig": "config",
    "MoCoConfig": "config",
    "ScheduleConfig": "config",
    "DetectionConfig": "config",
    "RuntimeConfig": "config",
    "MonitorConfig": "config",
    "pretrain": "pretraining",
    "Pretrained": "pretraining",
    "Preempted": "preemption",
    "Source": "sources",
    "load_source": "sources",
    "from_arrays": "sources",
    "train_pipeline": "data",
    "embedding_pipeline": "data",
    "two_view_batches": "data",
    "export_encoder": "export",
    "knn_top1": "knn",
    "linear_probe": "linear_eval",
}
__all__ = [
    "AcceptanceSchedule",
    "ClusterLabels",
    "DataConfig",
    "DetectionConfig",
    "EncoderConfig",
    "EpochInputs",
    "FalseNegativeDetector",
    "KMeansSettings",
    "LearnedThreshold",
    "MoCoConfig",
    "MomentumContrast",
    "MonitorConfig",
    "NearestFraction",
    "OracleLabels",
    "Preempted",
    "Pretrained",
    "PseudoLabelCallback",
    "RunConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "SoftClusterDrop",
    "Source",
    "TopKThreshold",
    "build_encoder",
    "embedding_pipeline",
    "export_encoder",
    "from_arrays",
    "knn_top1",
    "linear_probe",
    "load_source",
    "pretrain",
    "train_pipeline",
    "two_view_batches",
    "with_head",
]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'ifnd_tf' has no attribute {name!r}")
    module = importlib.import_module(f"ifnd_tf.{_PUBLIC[name]}")
    return getattr(module, "probe" if name == "linear_probe" else name)


def __dir__():
    return __all__
