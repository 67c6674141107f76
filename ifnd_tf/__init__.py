"""ifnd_tf: MoCo v2 with Incremental False Negative Detection (Chen et al., ICLR 2022).

Modules, in the order the algorithm uses them:
  data        training examples (index, view_q, view_k) and the un-augmented clustering pass
  augment     the MoCo v2 augmentation
  model       backbones, projection head and the momentum-contrast Keras model (train_step)
  losses      InfoNCE with the false-negative mask (elimination / attraction)
  clustering  k-means hierarchy, confidence, acceptance schedule, pseudo-labels
  diagnostics false-negative precision / recall against true labels
  callbacks   the per-epoch pseudo-label callback and checkpointing
  config      every absl flag and its validation
  train       the entry point: python -m ifnd_tf.train --flagfile=flags/fashion_mnist.cfg
  export      SavedModel export of the encoder
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: hide C++ info logs
