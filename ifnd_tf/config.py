"""The configuration of a run as one designed value: `RunConfig`, made of sections.

Every setting is a field with its default and its help text; the command line's absl flags are
defined from these fields in one place (cli.py), so a flag and its field cannot drift. Nothing
here reads a flag: build a config in Python (`RunConfig()`, `RunConfig.from_flat(...)`,
`config.replace(epochs=20)`) and call `validate()`. Each failure is one `ConfigError` line
naming the flag. Checks that need the dataset (k larger than it, ...) are `validate_for_data`.
"""
import dataclasses
import os
from typing import Any

from ifnd_tf import clustering, confidence, losses
from ifnd_tf.errors import ConfigError

ELIMINATION, ATTRACTION = losses.ELIMINATION, losses.ATTRACTION
# What --fn_detector names (detectors.py holds the detectors themselves).
CLUSTERS, QUANTILE = "clusters", "quantile"
TOP_K, SOFT_DROP, LEARNED_THRESHOLD = "top_k", "soft_drop", "learned_threshold"
DETECTORS = (CLUSTERS, QUANTILE, TOP_K, SOFT_DROP, LEARNED_THRESHOLD)
CLUSTERING_DETECTORS = (CLUSTERS, SOFT_DROP)  # these run the k-means hierarchy
# What the clustering pass embeds (--cluster_features; detectors.ClusterLabels).
CENTER_VIEW, TRAIN_KEYS, QUERY_VIEW = "center_view", "train_keys", "query_view"
CLUSTER_FEATURES = (CENTER_VIEW, TRAIN_KEYS, QUERY_VIEW)


def setting(default: Any, help: str, *, choices: tuple = (), defines_run: bool = False,
            flag: str | None = None, multi: bool = False):
    """A config field: its default, the help of its flag, the allowed values (an enum flag);
    defines_run: a resumed run must have the same value (`check_same_run`); flag: the flag's
    name when it is not the field's."""
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": tuple(choices), "defines_run": defines_run, "flag": flag,
        "multi": multi})


def normalize_dataset(dataset: str) -> str:
    """folder:<path> with the path normalised (no trailing slash, no ./ or //); other names as
    they are."""
    if dataset.startswith("folder:") and len(dataset) > len("folder:"):
        return "folder:" + os.path.normpath(dataset[len("folder:"):])
    return dataset


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which images, at which size."""

    dataset: str = setting("fashion_mnist", "fashion_mnist (offline, Debian package) | digits | "
                           "folder:/path | TFDS name.", defines_run=True)
    data_dir: str | None = setting(None, "Where the data lives (TFDS data_dir or IDX folder).")
    download: bool = setting(False, "Let TFDS download and prepare the dataset (needs network); "
                             "imagenet2012: prepare it from ILSVRC2012_img_{train,val}.tar in "
                             "<data_dir>/downloads/manual.")
    image_size: int = setting(28, "Side of the square training crops.", defines_run=True)
    verify_images: bool = setting(True, "Image folders: decode every file once at start-up and "
                                  "leave out unreadable ones.")
    strict_data: bool = setting(False, "Stop on an unreadable image instead of skipping it.")

    def __post_init__(self):
        # One folder, one name: folder:/data/x/ and folder:/data/x are the same run's data.
        object.__setattr__(self, "dataset", normalize_dataset(self.dataset))


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The query encoder: backbone + MoCo v2 head (the key encoder is its momentum copy)."""

    backbone: str = setting("small", "Encoder backbone: small | resnet18_cifar | resnet50 | "
                            "keras.applications.<Name> (e.g. keras.applications.ResNet50, built "
                            "with weights=None, include_top=False, average-pooled).",
                            defines_run=True)
    width_multiplier: float = setting(1.0, "Channel width multiplier of the backbone (our "
                                      "backbones only).", defines_run=True)
    embedding_dim: int = setting(128, "Output size of the projection head.", defines_run=True)
    sync_bn: bool = setting(True, "Normalise with BatchNorm statistics of the global batch "
                            "(SyncBN); false: each replica normalises its own batch, as MoCo's "
                            "GPUs do (moving statistics are averaged over replicas either way).",
                            defines_run=True)


@dataclasses.dataclass(frozen=True)
class MoCoConfig:
    """What MomentumContrast's step needs besides its encoders and detector."""

    queue_size: int = setting(4096, "Number of negative keys; a multiple of batch_size.",
                              defines_run=True)
    temperature: float = setting(0.2, "InfoNCE temperature.", defines_run=True)
    momentum: float = setting(0.999, "EMA momentum of the key encoder.", defines_run=True,
                              flag="moco_momentum")
    weight_decay: float = setting(1e-4, "L2 weight decay added to the loss.", defines_run=True)
    key_bn_splits: int = setting(4, "Shuffle-BN: the global key batch is shuffled across "
                                 "replicas and normalised in this many groups, key_bn_splits / "
                                 "replicas on each replica, never synchronised (1 = off: the key "
                                 "encoder's BN follows --sync_bn). A multiple of the replicas; "
                                 "groups of at least 8 keys.", defines_run=True)
    fn_strategy: str = setting(ELIMINATION, "What to do with detected false negatives: "
                               "elimination drops them from the denominator, attraction makes "
                               "them positives.", choices=losses.FALSE_NEGATIVE_STRATEGIES,
                               defines_run=True)
    class_prior: float = setting(0.0, "Debiased contrastive loss (Chuang et al. 2020): tau+, the "
                                 "chance that a negative is of the anchor's class (0.1 on a "
                                 "balanced 10-class set); 0 = plain InfoNCE. With elimination "
                                 "only; combines with any detector.", defines_run=True)


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """How long and how fast: epochs, batch, SGD."""

    epochs: int = setting(10, "Training epochs.", defines_run=True)
    steps_per_epoch: int = setting(0, "Steps per epoch; 0 = one pass over the data.",
                                   defines_run=True)
    batch_size: int = setting(256, "Global batch size (all replicas).", defines_run=True)
    learning_rate: float = setting(0.03, "Base SGD learning rate for batch 256 (scaled "
                                   "linearly), cosine decay.", defines_run=True)
    sgd_momentum: float = setting(0.9, "SGD momentum.", defines_run=True)


@dataclasses.dataclass(frozen=True)
class DetectionConfig:
    """Which false-negative detector the command line builds, and its schedule (builder.py)."""

    ifnd: bool = setting(True, "Detect false negatives; False = plain MoCo v2.", defines_run=True)
    fn_detector: str = setting(CLUSTERS, "How false negatives are found: clusters = queue "
                               "entries sharing an accepted k-means label with the anchor (the "
                               "paper); quantile = each anchor's alpha * --fn_quantile most "
                               "similar queue entries, read from the step's own similarities; "
                               "top_k = FNC-style: among the --fn_top_k most similar and above "
                               "--fn_threshold; soft_drop = HCSC-style: dropped with the "
                               "probability that the entry belongs to the anchor's cluster; "
                               "learned_threshold = GloFND: a threshold per anchor learned "
                               "online as the 1 - --fn_quantile quantile of its similarities.",
                               choices=DETECTORS, defines_run=True)
    num_clusters: tuple[int, ...] = setting((10, 20, 50), "k of each hierarchy level.",
                                            defines_run=True)
    warmup_epochs: int = setting(1, "Epochs before the first clustering (alpha = 0).",
                                 defines_run=True)
    alpha_start: float = setting(0.0, "Acceptance rate the schedule grows from.",
                                 defines_run=True)
    alpha_end: float = setting(1.0, "Acceptance rate at the last epoch.", defines_run=True)
    alpha_shape: str = setting("linear", "Shape of the acceptance-rate schedule.",
                               choices=clustering.SCHEDULE_SHAPES, defines_run=True)
    kmeans_backend: str = setting("faiss", "k-means implementation; all three run spherical "
                                  "k-means (unit centroids, cosine assignment) from the same "
                                  "k-means++ seeds.", choices=clustering.BACKENDS,
                                  defines_run=True)
    kmeans_device: str = setting("auto", "Where faiss runs k-means: auto = a GPU when the "
                                 "installed faiss sees one (faiss-gpu-cu12 in place of "
                                 "faiss-cpu), else the CPU; gpu = refuse to run without one.",
                                 choices=clustering.DEVICES)
    kmeans_iterations: int = setting(20, "Lloyd iterations per k-means.", defines_run=True)
    kmeans_max_points_per_centroid: int = setting(256, "k-means is fitted on at most k times "
                                                  "this many samples.", defines_run=True)
    kmeans_threads: int = setting(0, "Cap on numpy/faiss/sklearn threads in k-means (0 = their "
                                  "default). 1 was 3-4x faster on 2 cores busy with training.")
    cluster_features: str = setting(CENTER_VIEW, "What k-means clusters: center_view = the key "
                                    "encoder over every un-augmented image at each epoch start "
                                    "(the paper); train_keys = each example's key from its "
                                    "latest training step, no extra pass; query_view = the "
                                    "query encoder's pass that the kNN monitor makes at the "
                                    "previous epoch's end, so one pass serves both.",
                                    choices=CLUSTER_FEATURES, defines_run=True)
    fn_confidence: str = setting("margin", "Which samples' cluster labels are accepted first "
                                 "within a cluster: margin = margin to the second centroid (the "
                                 "paper); agreement = cluster-mates shared with the other "
                                 "levels; stability = cluster-mates kept since the previous "
                                 "pass; neighbours = fraction of the --fn_neighbours_k nearest "
                                 "neighbours in the own cluster.", choices=confidence.RULES,
                                 defines_run=True)
    fn_neighbours_k: int = setting(10, "k of --fn_confidence=neighbours.", defines_run=True)
    fn_min_levels: int = setting(1, "A queue entry is a false negative when it shares the "
                                 "anchor's accepted label at this many hierarchy levels or "
                                 "more: 1 = any level (the paper's union); more = a vote.",
                                 defines_run=True)
    fn_oracle: bool = setting(False, "Ablation only: accept the TRUE labels at every level (no "
                              "clustering), for a seeded class-balanced alpha * "
                              "--fn_oracle_fraction of each class. Needs a labelled dataset.",
                              defines_run=True)
    fn_oracle_fraction: float = setting(1.0, "--fn_oracle: fraction of each class accepted when "
                                        "alpha reaches 1.", defines_run=True)
    fn_quantile: float = setting(0.1, "--fn_detector=quantile: fraction of the queue masked per "
                                 "anchor at alpha = 1; learned_threshold: the fraction its "
                                 "thresholds aim at.", defines_run=True)
    fn_top_k: int = setting(0, "--fn_detector=top_k: k (0 = --fn_quantile of the queue).",
                            defines_run=True)
    fn_threshold: float = setting(0.5, "--fn_detector=top_k: the cosine an entry must reach.",
                                  defines_run=True)
    fn_drop_temperature: float = setting(0.1, "--fn_detector=soft_drop: temperature of the "
                                         "softmax over centroids that gives the drop "
                                         "probability.", defines_run=True)
    fn_threshold_lr: float = setting(0.05, "--fn_detector=learned_threshold: Adam step size of "
                                     "the per-anchor thresholds (GloFND's default).",
                                     defines_run=True)
    embed_batch_size: int = setting(1024, "Batch size of the clustering embedding pass.")

    def acceptance_schedule(self, epochs: int) -> clustering.AcceptanceSchedule:
        return clustering.AcceptanceSchedule(epochs, self.warmup_epochs, self.alpha_start,
                                             self.alpha_end, self.alpha_shape)

    def kmeans(self) -> clustering.KMeansSettings:
        return clustering.KMeansSettings(self.num_clusters, self.kmeans_backend,
                                         self.kmeans_iterations,
                                         self.kmeans_max_points_per_centroid,
                                         self.kmeans_threads or None, self.kmeans_device)


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the run executes: directory, seed, devices, checkpoints, guards."""

    model_dir: str = setting("/tmp/ifnd_tf", "Checkpoints, logs, flags.json and export.")
    seed: int = setting(0, "Random seed.", defines_run=True)
    deterministic: bool = setting(True, "TF op determinism: the same seed gives the same loss "
                                  "curve on CPU. Costs speed on GPU.")
    strategy: str = setting("mirrored", "tf.distribute engine: mirrored (local GPUs / CPUs), "
                            "multi_worker (TF_CONFIG), tpu, one_device.",
                            choices=("mirrored", "multi_worker", "tpu", "one_device"))
    tpu: str | None = setting(None, "TPU name or grpc:// address for --strategy=tpu.")
    cpu_replicas: int = setting(1, "Without GPUs: split the CPU into this many logical devices "
                                "(MirroredStrategy).")
    jit_compile: str = setting("auto", "XLA for the train step: on needs --deterministic=false, "
                               "and with several replicas --sync_bn=false; auto = on for exactly "
                               "one GPU with --deterministic=false.", choices=("auto", "on", "off"))
    mixed_precision: str = setting("off", "Mixed-precision policy of the encoders.",
                                   choices=("off", "float16", "bfloat16"), defines_run=True)
    checkpoint_every_steps: int = setting(0, "Also checkpoint every this many steps inside an "
                                          "epoch (0 = at epoch ends only); SIGTERM / SIGINT "
                                          "always checkpoint the step they interrupt.")
    keep_checkpoints: int = setting(3, "Keep the newest this many checkpoints.")
    collapse_steps: int = setting(50, "Stop when the embedding has collapsed for this many "
                                  "steps in a row (0 = never): key spread below "
                                  "--collapse_spread.")
    collapse_spread: float = setting(0.05, "Key spread (sqrt(1 - mean pairwise cosine) of a key "
                                     "batch) below which a step counts as collapsed; spread-out "
                                     "unit keys have about 1.")
    export: bool = setting(True, "Export the encoder as a SavedModel after training.")
    verbose: int = setting(2, "Keras fit verbosity (2 = one line per epoch).")


@dataclasses.dataclass(frozen=True)
class MonitorConfig:
    """The kNN monitor of a pre-training run (evaluation only: never changes training)."""

    knn_every: int = setting(1, "kNN monitor every this many epochs and at the last epoch "
                             "(0 = off): weighted kNN top-1 of test against train backbone "
                             "features.")
    knn_k: int = setting(200, "Neighbours of the weighted kNN classifier.")
    knn_temperature: float = setting(0.1, "kNN vote weight exp(cosine similarity / this).")
    knn_max_train: int = setting(0, "kNN monitor: compare against at most this many train "
                                 "examples, a fixed seeded subset (0 = all). Memory: this x the "
                                 "feature size x 4 bytes, up to 3 copies while scoring.")


SECTIONS = {"data": DataConfig, "encoder": EncoderConfig, "schedule": ScheduleConfig,
            "moco": MoCoConfig, "detection": DetectionConfig, "run": RuntimeConfig,
            "monitor": MonitorConfig}


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or field.name


def flag_fields(section_type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(section_type) if "help" in f.metadata]


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A pre-training run: `python -m ifnd_tf.train` builds one from its flags, a Python user
    directly, e.g. `RunConfig(schedule=ScheduleConfig(epochs=20))` or
    `RunConfig().replace(epochs=20, dataset="digits")` (flag names)."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    moco: MoCoConfig = dataclasses.field(default_factory=MoCoConfig)
    detection: DetectionConfig = dataclasses.field(default_factory=DetectionConfig)
    run: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    monitor: MonitorConfig = dataclasses.field(default_factory=MonitorConfig)

    def flat(self) -> dict[str, Any]:
        """{flag name: value} of every setting (lists as absl has them: strings): flags.json."""
        return {flag_name(f): _as_flag_value(getattr(getattr(self, name), f.name))
                for name, section in SECTIONS.items() for f in flag_fields(section)}

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> "RunConfig":
        """The defaults with `values` ({flag name: value}, e.g. absl's or flags.json's)."""
        return cls().replace(**values)

    def replace(self, **changes) -> "RunConfig":
        """A copy with settings changed by flag name; unknown names are a ConfigError."""
        sections = {name: {} for name in SECTIONS}
        owner = {flag_name(f): (name, f) for name, section in SECTIONS.items()
                 for f in flag_fields(section)}
        for key, value in changes.items():
            if key not in owner:
                raise ConfigError(f"--{key}: no such setting of a pre-training run")
            name, field = owner[key]
            sections[name][field.name] = parse_setting(key, field, value)
        return dataclasses.replace(self, **{name: dataclasses.replace(getattr(self, name), **c)
                                            for name, c in sections.items() if c})

    @property
    def num_levels(self) -> int:
        """Hierarchy levels of the pseudo-label table (1 for plain MoCo and the quantile)."""
        return len(self.detection.num_clusters) if self.detection.ifnd else 1

    def acceptance_schedule(self) -> clustering.AcceptanceSchedule:
        return self.detection.acceptance_schedule(self.schedule.epochs)

    def validate(self, num_replicas: int = 1) -> "RunConfig":
        """Static checks, before any data is read; returns self."""
        from ifnd_tf import validation  # it reads this module's names
        validation.schedule(self.schedule, self.moco, num_replicas)
        validation.encoder(self.encoder, self.data, self.moco, self.schedule, num_replicas)
        validation.detection(self.detection, self.schedule)
        validation.runtime(self.run, self.encoder, num_replicas)
        validation.monitor(self.monitor)
        return self

    def validate_for_data(self, num_examples: int, has_labels: bool = True) -> None:
        """Checks that need the dataset size (and whether it has labels)."""
        d = self.detection
        _check(has_labels or not (d.ifnd and d.fn_oracle),
               f"--fn_oracle needs true labels and --dataset={self.data.dataset} has none")
        _check(num_examples >= self.schedule.batch_size,
               f"--batch_size={self.schedule.batch_size} is larger than the dataset "
               f"({num_examples} examples)")
        if d.ifnd and d.fn_detector in CLUSTERING_DETECTORS:
            too_big = [k for k in d.num_clusters if k > num_examples]
            _check(not too_big, f"--num_clusters: k={too_big} larger than the dataset "
                                f"({num_examples} examples)")


def _as_flag_value(value):
    return [str(v) for v in value] if isinstance(value, tuple) else value


def parse_setting(key: str, field: dataclasses.Field, value):
    """A value as the field holds it: lists of numbers from strings (flags, flags.json)."""
    from ifnd_tf import validation
    if isinstance(field.default, tuple) and not field.metadata.get("multi"):
        return validation.parse_cluster_counts(value) if key == "num_clusters" else tuple(value)
    if field.metadata.get("multi"):
        return tuple(value)
    return value


RUN_DEFINING_FLAGS = tuple(flag_name(f) for section in SECTIONS.values()
                           for f in flag_fields(section) if f.metadata["defines_run"])


def check_same_run(saved: dict, now: dict, model_dir: str) -> None:
    """Refuse to resume a run whose run-defining settings (flags.json) differ from `now`
    (both {flag name: value}, as RunConfig.flat gives them)."""
    if isinstance(saved.get("dataset"), str):
        saved = {**saved, "dataset": normalize_dataset(saved["dataset"])}
    # A setting newer than the run: the run was made with its default.
    saved = {**RunConfig().flat(), **saved}
    changed = [f"--{name}: {saved[name]!r} -> {now[name]!r}" for name in RUN_DEFINING_FLAGS
               if name in now and saved[name] != now[name]]
    _check(not changed, f"--model_dir={model_dir} holds a run with other flags "
                        f"({'; '.join(changed)}); use a new --model_dir or the same flags")
