"""Every flag of ifnd_tf in one place, with the checks that need no data.

Checks that need the dataset (k larger than the dataset, queue vs dataset size) live in
`validate_against_data`, called once the dataset is loaded. Each failure is one line that names
the flag. `RunConfig.from_flags()` reads a pre-training run's flags once, at the entry point;
library code takes the RunConfig (or plain arguments), never FLAGS.
"""
import dataclasses
import json
import os

from absl import flags

from ifnd_tf import clustering, confidence, distribute, losses, model, pseudo_labels
from ifnd_tf.errors import ConfigError

FLAGS = flags.FLAGS

# Data
flags.DEFINE_string("dataset", "fashion_mnist",
                    "fashion_mnist (offline, Debian package) | digits | folder:/path | TFDS name.")
flags.DEFINE_string("data_dir", None, "Where the data lives (TFDS data_dir or IDX folder).")
flags.DEFINE_bool("download", False, "Let TFDS download the dataset (needs network).")
flags.DEFINE_integer("image_size", 28, "Side of the square training crops.")
flags.DEFINE_bool("verify_images", True,
                  "Image folders: decode every file once at start-up and leave out unreadable ones.")
flags.DEFINE_bool("strict_data", False, "Stop on an unreadable image instead of skipping it.")

# Model
flags.DEFINE_enum("backbone", "small", sorted(model.BACKBONES), "Encoder backbone.")
flags.DEFINE_float("width_multiplier", 1.0, "Channel width multiplier of the backbone.")
flags.DEFINE_integer("embedding_dim", 128, "Output size of the projection head.")
flags.DEFINE_bool("sync_bn", True,
                  "Normalise with BatchNorm statistics of the global batch (SyncBN); false: each "
                  "replica normalises its own batch, as MoCo's GPUs do (moving statistics are "
                  "averaged over replicas either way).")
flags.DEFINE_integer("key_bn_splits", 4,
                     "Shuffle-BN: the global key batch is shuffled across replicas and normalised "
                     "in this many groups, key_bn_splits / replicas on each replica, never "
                     "synchronised (1 = off: the key encoder's BN follows --sync_bn). A multiple "
                     "of the replicas; groups of at least 8 keys.")

# MoCo v2
flags.DEFINE_integer("epochs", 10, "Training epochs.")
flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch; 0 = one pass over the data.")
flags.DEFINE_integer("batch_size", 256, "Global batch size (all replicas).")
flags.DEFINE_float("learning_rate", 0.03, "Base SGD learning rate for batch 256 (scaled linearly).")
flags.DEFINE_float("sgd_momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 1e-4, "L2 weight decay added to the gradients.")
flags.DEFINE_float("temperature", 0.2, "InfoNCE temperature.")
flags.DEFINE_float("moco_momentum", 0.999, "EMA momentum of the key encoder.")
flags.DEFINE_integer("queue_size", 4096, "Number of negative keys; a multiple of batch_size.")

# IFND
flags.DEFINE_bool("ifnd", True, "Detect false negatives; False = plain MoCo v2.")
flags.DEFINE_enum("fn_strategy", losses.ELIMINATION, list(losses.FALSE_NEGATIVE_STRATEGIES),
                  "What to do with detected false negatives.")
flags.DEFINE_list("num_clusters", ["10", "20", "50"], "k of each hierarchy level.")
flags.DEFINE_integer("warmup_epochs", 1, "Epochs before the first clustering (alpha = 0).")
flags.DEFINE_float("alpha_start", 0.0, "Acceptance rate the schedule grows from.")
flags.DEFINE_float("alpha_end", 1.0, "Acceptance rate at the last epoch.")
flags.DEFINE_enum("alpha_shape", "linear", list(clustering.SCHEDULE_SHAPES),
                  "Shape of the acceptance-rate schedule.")
flags.DEFINE_enum("kmeans_backend", "faiss", list(clustering.BACKENDS),
                  "k-means implementation; all three run spherical k-means (unit centroids, "
                  "cosine assignment) from the same k-means++ seeds.")
flags.DEFINE_integer("kmeans_iterations", 20, "Lloyd iterations per k-means.")
flags.DEFINE_integer("kmeans_max_points_per_centroid", 256,
                     "k-means is fitted on at most k times this many samples.")
flags.DEFINE_integer("kmeans_threads", 0,
                     "Cap on numpy/faiss/sklearn threads in k-means (0 = their default). 1 was "
                     "3-4x faster on 2 cores busy with training (bench/README.md).")
flags.DEFINE_enum("cluster_features", pseudo_labels.CENTER_VIEW,
                  list(pseudo_labels.CLUSTER_FEATURES),
                  "What k-means clusters: center_view = the key encoder over every un-augmented "
                  "image at each epoch start (the paper); train_keys = each example's key from "
                  "its latest training step, no extra pass; query_view = the query encoder over "
                  "every un-augmented image, the pass the kNN monitor makes at the previous "
                  "epoch's end, so one pass serves both (docs/design.md).")
flags.DEFINE_enum("fn_confidence", "margin", list(confidence.RULES),
                  "Which samples' cluster labels are accepted first within a cluster: margin = "
                  "margin to the second centroid (the paper); agreement = cluster-mates shared "
                  "with the other hierarchy levels; stability = cluster-mates kept since the "
                  "previous epoch's pass; neighbours = fraction of the --fn_neighbours_k nearest "
                  "neighbours in the own cluster (ifnd_tf/confidence.py).")
flags.DEFINE_integer("fn_neighbours_k", 10, "k of --fn_confidence=neighbours.")
flags.DEFINE_integer("fn_min_levels", 1,
                     "A queue entry is a false negative when it shares the anchor's accepted "
                     "label at this many hierarchy levels or more: 1 = any level (the paper's "
                     "union); up to len(--num_clusters) = every level (a vote: fewer, surer).")
flags.DEFINE_enum("fn_detector", losses.CLUSTERS, list(losses.FALSE_NEGATIVE_DETECTORS),
                  "How false negatives are found: clusters = queue entries sharing an accepted "
                  "k-means label with the anchor (the paper); quantile = each anchor's "
                  "alpha * --fn_quantile most similar queue entries, read from the step's own "
                  "similarities (GloFND-like; no clustering pass; --num_clusters, --fn_confidence "
                  "and --fn_min_levels then do nothing).")
flags.DEFINE_float("fn_quantile", 0.1,
                   "--fn_detector=quantile: fraction of the queue masked per anchor at alpha = 1.")
flags.DEFINE_bool("fn_oracle", False,
                  "Ablation only: accept the TRUE labels as pseudo-labels at every level (no "
                  "clustering), for a seeded class-balanced alpha * --fn_oracle_fraction of each "
                  "class: the ceiling of removing false negatives. Needs a labelled dataset.")
flags.DEFINE_float("fn_oracle_fraction", 1.0,
                   "--fn_oracle: fraction of each class accepted when alpha reaches 1.")
flags.DEFINE_integer("embed_batch_size", 1024, "Batch size of the clustering embedding pass.")

# Runtime
flags.DEFINE_string("model_dir", "/tmp/ifnd_tf", "Checkpoints, logs, flags.json and export.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_bool("deterministic", True,
                  "TF op determinism: the same seed gives the same loss curve on CPU. Costs speed "
                  "on GPU, where some ops have no deterministic kernel (docs/design.md).")
flags.DEFINE_enum("strategy", "mirrored", list(distribute.STRATEGIES),
                  "tf.distribute engine: mirrored (local GPUs / CPUs), multi_worker (TF_CONFIG), "
                  "tpu, one_device.")
flags.DEFINE_string("tpu", None, "TPU name or grpc:// address for --strategy=tpu.")
flags.DEFINE_integer("cpu_replicas", 1,
                     "Without GPUs: split the CPU into this many logical devices (MirroredStrategy).")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "on", "off"],
                  "XLA for the train step: on needs --deterministic=false, and with several "
                  "replicas --sync_bn=false (then each replica's forward/backward is compiled, "
                  "the cross-replica ops not); auto = on for exactly one GPU with "
                  "--deterministic=false.")
flags.DEFINE_enum("mixed_precision", "off", ["off", "float16", "bfloat16"],
                  "Mixed-precision policy of the encoders.")
flags.DEFINE_integer("checkpoint_every_steps", 0,
                     "Also checkpoint every this many steps inside an epoch (0 = at epoch ends "
                     "only); SIGTERM / SIGINT always checkpoint the step they interrupt.")
flags.DEFINE_integer("keep_checkpoints", 3, "Keep the newest this many checkpoints.")
flags.DEFINE_integer("collapse_steps", 50,
                     "Stop when the embedding has collapsed for this many steps in a row "
                     "(0 = never): key spread below --collapse_spread (ifnd_tf/collapse.py).")
flags.DEFINE_float("collapse_spread", 0.05,
                   "Key spread (sqrt(1 - mean pairwise cosine) of a key batch) below which a "
                   "step counts as collapsed; spread-out unit keys have about 1.")
flags.DEFINE_bool("export", True, "Export the encoder as a SavedModel after training.")
flags.DEFINE_integer("verbose", 2, "Keras fit verbosity (2 = one line per epoch).")


# Flags that define a run: resuming from a --model_dir written with other values would mix runs.
RUN_DEFINING_FLAGS = (
    "dataset", "image_size", "backbone", "width_multiplier", "embedding_dim", "sync_bn",
    "key_bn_splits", "epochs", "steps_per_epoch", "batch_size", "learning_rate", "sgd_momentum",
    "weight_decay", "temperature", "moco_momentum", "queue_size", "ifnd", "fn_strategy",
    "num_clusters", "warmup_epochs", "alpha_start", "alpha_end", "alpha_shape", "kmeans_backend",
    "kmeans_iterations", "kmeans_max_points_per_centroid", "cluster_features", "seed",
    "mixed_precision", "fn_confidence", "fn_neighbours_k", "fn_min_levels", "fn_oracle",
    "fn_oracle_fraction", "fn_detector", "fn_quantile")


# Evaluation: the kNN monitor of ifnd_tf.train, ifnd_tf.linear_eval, ifnd_tf.finetune and
# ifnd_tf.compare (which pass the pre-training flags through, e.g. --flagfile).
flags.DEFINE_integer("knn_every", 1,
                     "kNN monitor every this many epochs and at the last epoch (0 = off): "
                     "weighted kNN top-1 of test against train backbone features.")
flags.DEFINE_integer("knn_k", 200, "Neighbours of the weighted kNN classifier.")
flags.DEFINE_integer("knn_max_train", 0,
                     "kNN monitor: compare against at most this many train examples, a fixed "
                     "seeded subset (0 = all). Memory: this x the feature size x 4 bytes, up to 3 "
                     "copies while scoring (ResNet-50, 2048-d: 100,000 -> 0.8 GB each; all of "
                     "ImageNet-1k -> 10.5 GB each).")
flags.DEFINE_float("knn_temperature", 0.1, "kNN vote weight exp(cosine similarity / this).")
flags.DEFINE_string("saved_model", None,
                    "linear_eval / finetune: a run's export/saved_model (encoder.keras next to it "
                    "is loaded); default <--model_dir>/export/saved_model.")
flags.DEFINE_string("eval_dir", None,
                    "Where linear_eval / finetune write result.json; default <run>/linear_eval or "
                    "<run>/finetune, beside the export folder.")
flags.DEFINE_integer("eval_batch_size", 256, "Batch size of the linear probe and fine-tuning.")
flags.DEFINE_enum("eval_schedule", "cosine", ["cosine", "step"],
                  "Learning-rate schedule of the probe and fine-tuning (step: x0.1 at 60%, 80%).")
flags.DEFINE_integer("linear_epochs", 100, "Epochs of the linear probe.")
flags.DEFINE_float("linear_learning_rate", 0.1, "SGD learning rate of the linear probe.")
flags.DEFINE_list("finetune_fractions", ["0.01", "0.1"],
                  "Fractions of the train split used as labelled data (class-balanced, seeded).")
flags.DEFINE_list("finetune_epochs", ["60", "30"], "Fine-tuning epochs, one per fraction.")
flags.DEFINE_float("finetune_learning_rate", 0.05, "SGD learning rate of fine-tuning.")

# ifnd_tf.compare (defined here so the train / probe steps it starts accept and ignore them).
flags.DEFINE_list("seeds", [],
                  "compare: train every variant with each of these seeds (<model_dir>/<variant>/"
                  "seed<s>) and report mean ± sd and paired differences against MoCo v2; empty = "
                  "one run per variant with --seed, in <model_dir>/<variant>.")
flags.DEFINE_list("variants", ["moco", "ifnd"],
                  "compare: the variants, in table order: moco, ifnd, oracle (--fn_oracle) or a "
                  "name defined with --variant.")
flags.DEFINE_multi_string("variant", [],
                          "compare: a named flag set, name:--flag=v,--flag2=v (repeatable); "
                          "appended to --variants unless listed there.")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def cluster_counts() -> list[int]:
    return _parse_cluster_counts(FLAGS.num_clusters)


def _parse_cluster_counts(values) -> list[int]:
    try:
        ks = [int(k) for k in values]
    except ValueError as e:
        raise ConfigError(f"--num_clusters must be integers, got {values}") from e
    _check(len(ks) > 0 and all(k >= 2 for k in ks), "--num_clusters: each k must be >= 2")
    return ks


def validate_strategy_flags() -> None:
    """Before the strategy is made: multi_worker needs TF_CONFIG (without it TF builds a
    one-worker strategy that failed at the first batch, after flags.json and logs/ were written)."""
    if FLAGS.strategy != "multi_worker":
        return
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster")
    except (ValueError, AttributeError):
        cluster = None
    _check(bool(cluster), "--strategy=multi_worker needs the TF_CONFIG environment variable with "
                          "the cluster and this worker's task (README, several machines); on one "
                          "machine use --strategy=mirrored")


def validate_flags(num_replicas: int) -> None:
    """Static checks of the flag values, before any data is read."""
    f = FLAGS
    _check(f.epochs >= 1, f"--epochs must be >= 1, got {f.epochs}")
    _check(f.batch_size >= 2, f"--batch_size must be >= 2, got {f.batch_size}")
    _check(f.batch_size % num_replicas == 0,
           f"--batch_size={f.batch_size} must be a multiple of the {num_replicas} replicas")
    _check(f.queue_size > 0 and f.queue_size % f.batch_size == 0,
           f"--queue_size={f.queue_size} must be a positive multiple of --batch_size={f.batch_size}")
    _check(f.key_bn_splits >= 1 and f.batch_size % f.key_bn_splits == 0,
           f"--key_bn_splits={f.key_bn_splits} must divide --batch_size={f.batch_size}")
    _check(f.key_bn_splits == 1 or f.key_bn_splits % num_replicas == 0,
           f"--key_bn_splits={f.key_bn_splits} must be 1 or a multiple of the {num_replicas} "
           f"replicas (each replica normalises key_bn_splits / replicas groups of keys)")
    _check(f.key_bn_splits == 1 or f.batch_size // f.key_bn_splits >= model.MIN_KEY_BN_GROUP,
           f"--key_bn_splits={f.key_bn_splits} makes shuffle-BN groups of "
           f"{f.batch_size // f.key_bn_splits} keys; use groups of at least "
           f"{model.MIN_KEY_BN_GROUP} (--batch_size / --key_bn_splits)")
    _check(0.0 <= f.alpha_start <= 1.0, f"--alpha_start must be in [0, 1], got {f.alpha_start}")
    _check(0.0 <= f.alpha_end <= 1.0, f"--alpha_end must be in [0, 1], got {f.alpha_end}")
    # IFND's acceptance only grows (docs/design.md, "Schedule").
    _check(f.alpha_end >= f.alpha_start,
           f"--alpha_end={f.alpha_end} is below --alpha_start={f.alpha_start}: the acceptance "
           "rate must not decrease (equal values give a constant rate)")
    _check(0 <= f.warmup_epochs < f.epochs or not f.ifnd,
           f"--warmup_epochs={f.warmup_epochs} must be in [0, --epochs={f.epochs})")
    _check(f.temperature > 0, f"--temperature must be > 0, got {f.temperature}")
    _check(0.0 <= f.moco_momentum < 1.0, f"--moco_momentum must be in [0, 1), got {f.moco_momentum}")
    _check(f.learning_rate > 0, f"--learning_rate must be > 0, got {f.learning_rate}")
    _check(f.width_multiplier > 0, f"--width_multiplier must be > 0, got {f.width_multiplier}")
    _check(f.image_size >= 8, f"--image_size must be >= 8, got {f.image_size}")
    stride = model.BACKBONE_STRIDES[f.backbone]
    _check(f.image_size >= stride, f"--image_size={f.image_size} is smaller than "
                                   f"--backbone={f.backbone} takes (>= {stride}: it downsamples "
                                   f"{stride}x)")
    _check(f.steps_per_epoch >= 0, f"--steps_per_epoch must be >= 0, got {f.steps_per_epoch}")
    _check(f.cpu_replicas >= 1, f"--cpu_replicas must be >= 1, got {f.cpu_replicas}")
    _check(f.checkpoint_every_steps >= 0,
           f"--checkpoint_every_steps must be >= 0, got {f.checkpoint_every_steps}")
    _check(f.collapse_steps >= 0, f"--collapse_steps must be >= 0, got {f.collapse_steps}")
    _check(0 <= f.collapse_spread < 1, f"--collapse_spread must be in [0, 1), got {f.collapse_spread}")
    _check(f.keep_checkpoints >= 1, f"--keep_checkpoints must be >= 1, got {f.keep_checkpoints}")
    # XLA (docs/design.md "XLA"): Keras silently drops jit_compile under op determinism; with
    # several replicas only the per-replica part is compiled, which must hold no cross-replica op.
    _check(f.jit_compile != "on" or not f.deterministic,
           "--jit_compile=on needs --deterministic=false: XLA-compiled ops are not covered by TF "
           "op determinism (Keras does not compile a step under it)")
    if f.jit_compile == "on" and num_replicas > 1:
        _check(f.strategy == "mirrored",
               f"--jit_compile=on with {num_replicas} replicas is supported (and tested) with "
               f"--strategy=mirrored only, got --strategy={f.strategy}")
        _check(not f.sync_bn,
               f"--jit_compile=on with {num_replicas} replicas needs --sync_bn=false: SyncBN "
               "all-reduces inside the encoder's forward pass, and MirroredStrategy cannot run a "
               "cross-replica op inside the per-replica XLA function")
    _check(f.fn_neighbours_k >= 1, f"--fn_neighbours_k must be >= 1, got {f.fn_neighbours_k}")
    _check(0.0 <= f.fn_oracle_fraction <= 1.0,
           f"--fn_oracle_fraction must be in [0, 1], got {f.fn_oracle_fraction}")
    _check(not f.fn_oracle or f.ifnd, "--fn_oracle needs --ifnd=true (it replaces the detector)")
    _check(0.0 < f.fn_quantile <= 1.0, f"--fn_quantile must be in (0, 1], got {f.fn_quantile}")
    _check(not (f.fn_oracle and f.fn_detector == losses.QUANTILE),
           "--fn_oracle replaces the clusters' labels; it needs --fn_detector=clusters")
    _check(f.fn_min_levels == 1 or f.fn_detector == losses.CLUSTERS,
           f"--fn_min_levels={f.fn_min_levels} is a vote over cluster levels; it needs "
           "--fn_detector=clusters")
    if f.ifnd:
        levels = len(cluster_counts())
        _check(1 <= f.fn_min_levels <= levels,
               f"--fn_min_levels must be in [1, {levels}] (the levels of --num_clusters), "
               f"got {f.fn_min_levels}")


def validate_against_data(num_examples: int, has_labels: bool = True) -> None:
    """Checks that need the dataset size (and whether it has labels)."""
    f = FLAGS
    _check(has_labels or not f.fn_oracle,
           f"--fn_oracle needs true labels and --dataset={f.dataset} has none")
    _check(num_examples >= f.batch_size,
           f"--batch_size={f.batch_size} is larger than the dataset ({num_examples} examples)")
    if f.ifnd and f.fn_detector == losses.CLUSTERS:
        too_big = [k for k in cluster_counts() if k > num_examples]
        _check(not too_big, f"--num_clusters: k={too_big} larger than the dataset "
                            f"({num_examples} examples)")


def check_same_run(saved: dict) -> None:
    """Refuse to resume a run whose run-defining flags differ from the current ones."""
    changed = [f"--{name}: {saved[name]!r} -> {FLAGS[name].value!r}" for name in RUN_DEFINING_FLAGS
               if name in saved and saved[name] != FLAGS[name].value]
    _check(not changed, f"--model_dir={FLAGS.model_dir} holds a run with other flags "
                        f"({'; '.join(changed)}); use a new --model_dir or the same flags")


def validate_eval_flags() -> None:
    """Checks of the evaluation flags (kNN monitor, linear_eval, finetune)."""
    f = FLAGS
    _check(f.knn_every >= 0, f"--knn_every must be >= 0, got {f.knn_every}")
    _check(f.knn_k >= 1, f"--knn_k must be >= 1, got {f.knn_k}")
    _check(f.knn_max_train >= 0, f"--knn_max_train must be >= 0, got {f.knn_max_train}")
    _check(f.knn_temperature > 0, f"--knn_temperature must be > 0, got {f.knn_temperature}")
    _check(f.eval_batch_size >= 1, f"--eval_batch_size must be >= 1, got {f.eval_batch_size}")
    _check(f.linear_epochs >= 1, f"--linear_epochs must be >= 1, got {f.linear_epochs}")
    _check(f.linear_learning_rate > 0,
           f"--linear_learning_rate must be > 0, got {f.linear_learning_rate}")
    _check(f.finetune_learning_rate > 0,
           f"--finetune_learning_rate must be > 0, got {f.finetune_learning_rate}")
    finetune_plan()


def finetune_plan() -> list[tuple[float, int]]:
    """(labelled fraction, epochs) pairs from --finetune_fractions and --finetune_epochs."""
    f = FLAGS
    try:
        fractions = [float(x) for x in f.finetune_fractions]
        epochs = [int(x) for x in f.finetune_epochs]
    except ValueError as e:
        raise ConfigError(f"--finetune_fractions / --finetune_epochs must be numbers: {e}") from e
    _check(len(fractions) == len(epochs) > 0,
           f"--finetune_epochs needs one value per --finetune_fractions value, got "
           f"{f.finetune_epochs} for {f.finetune_fractions}")
    _check(all(0 < x <= 1 for x in fractions),
           f"--finetune_fractions must be in (0, 1], got {f.finetune_fractions}")
    _check(all(e >= 1 for e in epochs), f"--finetune_epochs must be >= 1, got {f.finetune_epochs}")
    return list(zip(fractions, epochs))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The flags of a pre-training run as one value: read once by train.py (`from_flags`), or
    made from the flag defaults with changes (`defaults(**changes)`) by bench/ and tests."""

    dataset: str
    data_dir: str | None
    download: bool
    image_size: int
    verify_images: bool
    strict_data: bool
    backbone: str
    width_multiplier: float
    embedding_dim: int
    sync_bn: bool
    key_bn_splits: int
    epochs: int
    steps_per_epoch: int
    batch_size: int
    learning_rate: float
    sgd_momentum: float
    weight_decay: float
    temperature: float
    moco_momentum: float
    queue_size: int
    ifnd: bool
    fn_strategy: str
    num_clusters: tuple[int, ...]
    warmup_epochs: int
    alpha_start: float
    alpha_end: float
    alpha_shape: str
    kmeans_backend: str
    kmeans_iterations: int
    kmeans_max_points_per_centroid: int
    kmeans_threads: int
    cluster_features: str
    fn_confidence: str
    fn_neighbours_k: int
    fn_min_levels: int
    fn_oracle: bool
    fn_oracle_fraction: float
    fn_detector: str
    fn_quantile: float
    embed_batch_size: int
    model_dir: str
    seed: int
    deterministic: bool
    strategy: str
    tpu: str | None
    cpu_replicas: int
    jit_compile: str
    mixed_precision: str
    export: bool
    verbose: int
    checkpoint_every_steps: int
    keep_checkpoints: int
    collapse_steps: int
    collapse_spread: float
    knn_every: int
    knn_k: int
    knn_temperature: float
    knn_max_train: int

    @classmethod
    def from_flags(cls) -> "RunConfig":
        """The parsed flags (validate_flags first: num_clusters is parsed here)."""
        return cls._make({name: FLAGS[name].value for name in cls._names()})

    @classmethod
    def defaults(cls, **changes) -> "RunConfig":
        """The flag defaults with `changes`, without parsing a command line."""
        return dataclasses.replace(
            cls._make({name: FLAGS[name].default for name in cls._names()}), **changes)

    @classmethod
    def _names(cls) -> list[str]:
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def _make(cls, values: dict) -> "RunConfig":
        ks = tuple(_parse_cluster_counts(values["num_clusters"]))
        return cls(**{**values, "num_clusters": ks})

    @property
    def detects_by_clusters(self) -> bool:
        """IFND with the paper's detector: a clustering pass and a pseudo-label table."""
        return self.ifnd and self.fn_detector == losses.CLUSTERS

    @property
    def num_levels(self) -> int:
        """Rows of the pseudo-label table: one per hierarchy level (1 for plain MoCo)."""
        return len(self.num_clusters) if self.ifnd else 1

    def acceptance_schedule(self) -> clustering.AcceptanceSchedule:
        return clustering.AcceptanceSchedule(self.epochs, self.warmup_epochs, self.alpha_start,
                                             self.alpha_end, self.alpha_shape)

    def kmeans(self) -> clustering.KMeansSettings:
        return clustering.KMeansSettings(self.num_clusters, self.kmeans_backend,
                                         self.kmeans_iterations,
                                         self.kmeans_max_points_per_centroid,
                                         self.kmeans_threads or None)
