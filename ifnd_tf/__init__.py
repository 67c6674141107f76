"""ifnd_tf: MoCo v2 with Incremental False Negative Detection (Chen et al., ICLR 2022).

Modules, in the order the algorithm uses them:
  data          training examples (index, view_q, view_k), the un-augmented clustering pass and
                the labelled pipelines of the evaluations
  augment       the MoCo v2 augmentation
  model         backbones, projection head and the momentum-contrast Keras model (train_step)
  losses        InfoNCE with the false-negative mask (elimination / attraction)
  embedding     encoder outputs over a whole dataset, placed by index (any number of replicas)
  clustering    k-means hierarchy, confidence, acceptance schedule, pseudo-labels
  pseudo_labels the IFND step: the per-epoch callback that fills the model's pseudo-label table
  diagnostics   false-negative precision / recall, label purity, against true labels
  callbacks     run plumbing: epoch timer, lr logger, writer-lock check, metrics.csv, NaN guard
  export        SavedModel export of the encoder, and a layer to fine-tune it with any optimizer

Edge (flags, commands):
  config        every absl flag, its validation, and RunConfig (the flags of a run as a value)
  builder       model + optimizer and the callback list of a run, from a RunConfig
  cli           the one main() shape of every command: one `<program>: error: ...` line
  runtime       what a process sets up before TensorFlow loads (tcmalloc)
  errors        ConfigError, DataError, DivergenceError
  train         python -m ifnd_tf.train --flagfile=flags/fashion_mnist.cfg
  console       the console scripts (ifnd-train, ifnd-linear-eval, ifnd-finetune, ifnd-compare)

Evaluation (never changes training):
  knn           weighted kNN classification of features
  monitors      kNN monitor and diagnostics plots, as Keras callbacks
  plots         the PNG pictures (curves over epochs, PCA of features by class)
  evaluate      what the protocols share: loading the export, labelled subsets, classifier set-up
  linear_eval   python -m ifnd_tf.linear_eval: linear probe on the frozen backbone
  finetune      python -m ifnd_tf.finetune: fine-tuning on 1 % / 10 % of the labels
  compare       python -m ifnd_tf.compare: MoCo v2 against IFND, one table
"""
