"""ifnd_tf: MoCo v2 with Incremental False Negative Detection (Chen et al., ICLR 2022).

Modules, in the order the algorithm uses them:
  data        training examples (index, view_q, view_k) and the un-augmented clustering pass
  augment     the MoCo v2 augmentation
  model       backbones, projection head and the momentum-contrast Keras model (train_step)
  losses      InfoNCE with the false-negative mask (elimination / attraction)
  clustering  k-means hierarchy, confidence, acceptance schedule, pseudo-labels
  diagnostics false-negative precision / recall, label purity, against true labels
  callbacks   the per-epoch pseudo-label callback and checkpointing
  config      every absl flag and its validation
  train       the entry point: python -m ifnd_tf.train --flagfile=flags/fashion_mnist.cfg
  export      SavedModel export of the encoder

Evaluation (never changes training):
  monitors    kNN monitor, epoch timer and diagnostics plots, as Keras callbacks
  plots       the PNG pictures (curves over epochs, PCA of features by class)
  evaluate    what the protocols share: weighted kNN, labelled subsets, classifier set-up
  linear_eval python -m ifnd_tf.linear_eval: linear probe on the frozen backbone
  finetune    python -m ifnd_tf.finetune: fine-tuning on 1 % / 10 % of the labels
  compare     python -m ifnd_tf.compare: MoCo v2 against IFND, one table
"""
