"""The checks of a run configuration (config.RunConfig.validate), section by section.

Each failure is one `ConfigError` line that names the flag (the command line's name of the
setting, also for a Python user: the names are the same). Plain functions of the sections.
"""
import json
import os

from ifnd_tf import encoders, kmeans, losses
from ifnd_tf.config import CLUSTERING_DETECTORS, CLUSTERS, LEARNED_THRESHOLD
from ifnd_tf.errors import ConfigError


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def parse_cluster_counts(values) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--num_clusters must be integers, got {values}") from e
    check(len(ks) > 0 and all(k >= 2 for k in ks), "--num_clusters: each k must be >= 2")
    return ks


def schedule(s, m, num_replicas: int) -> None:
    """The schedule and MoCo sections: sizes that must divide, ranges."""
    check(s.epochs >= 1, f"--epochs must be >= 1, got {s.epochs}")
    check(s.batch_size >= 2, f"--batch_size must be >= 2, got {s.batch_size}")
    check(s.batch_size % num_replicas == 0,
           f"--batch_size={s.batch_size} must be a multiple of the {num_replicas} replicas")
    check(m.queue_size > 0 and m.queue_size % s.batch_size == 0,
           f"--queue_size={m.queue_size} must be a positive multiple of "
           f"--batch_size={s.batch_size}")
    check(s.learning_rate > 0, f"--learning_rate must be > 0, got {s.learning_rate}")
    check(s.steps_per_epoch >= 0, f"--steps_per_epoch must be >= 0, got {s.steps_per_epoch}")
    check(m.temperature > 0, f"--temperature must be > 0, got {m.temperature}")
    check(0.0 <= m.momentum < 1.0, f"--moco_momentum must be in [0, 1), got {m.momentum}")
    check(m.fn_strategy in losses.FALSE_NEGATIVE_STRATEGIES,
           f"--fn_strategy must be one of {losses.FALSE_NEGATIVE_STRATEGIES}, "
           f"got {m.fn_strategy!r}")
    check(0.0 <= m.class_prior < 1.0, f"--class_prior must be in [0, 1), got {m.class_prior}")
    check(m.class_prior == 0 or m.fn_strategy == losses.ELIMINATION,
           f"--class_prior={m.class_prior} (the debiased loss) needs --fn_strategy=elimination")


def encoder(e, d, m, s, num_replicas: int) -> None:
    """Backbone name and input size, shuffle-BN groups against batch and replicas."""
    splits, batch = m.key_bn_splits, s.batch_size
    check(splits >= 1 and batch % splits == 0,
           f"--key_bn_splits={splits} must divide --batch_size={batch}")
    check(splits == 1 or splits % num_replicas == 0,
           f"--key_bn_splits={splits} must be 1 or a multiple of the {num_replicas} "
           f"replicas (each replica normalises key_bn_splits / replicas groups of keys)")
    check(splits == 1 or batch // splits >= encoders.MIN_KEY_BN_GROUP,
           f"--key_bn_splits={splits} makes shuffle-BN groups of {batch // splits} keys; use "
           f"groups of at least {encoders.MIN_KEY_BN_GROUP} (--batch_size / --key_bn_splits)")
    check(e.width_multiplier > 0, f"--width_multiplier must be > 0, got {e.width_multiplier}")
    check(d.image_size >= 8, f"--image_size must be >= 8, got {d.image_size}")
    encoders.check_backbone_name(e.backbone)
    stride = encoders.BACKBONE_STRIDES.get(e.backbone, encoders.KERAS_APPLICATION_STRIDE)
    check(d.image_size >= stride, f"--image_size={d.image_size} is smaller than "
                                   f"--backbone={e.backbone} takes (>= {stride}: it downsamples "
                                   f"{stride}x)")


def detection(d, s) -> None:
    """The detection section: schedule ranges, cluster counts, detector combinations."""
    check(0.0 <= d.alpha_start <= 1.0, f"--alpha_start must be in [0, 1], got {d.alpha_start}")
    check(0.0 <= d.alpha_end <= 1.0, f"--alpha_end must be in [0, 1], got {d.alpha_end}")
    check(d.alpha_end >= d.alpha_start,  # IFND's acceptance only grows
           f"--alpha_end={d.alpha_end} is below --alpha_start={d.alpha_start}: the acceptance "
           "rate must not decrease (equal values give a constant rate)")
    check(0 <= d.warmup_epochs < s.epochs or not d.ifnd,
           f"--warmup_epochs={d.warmup_epochs} must be in [0, --epochs={s.epochs})")
    parse_cluster_counts(d.num_clusters)
    check(d.fn_neighbours_k >= 1, f"--fn_neighbours_k must be >= 1, got {d.fn_neighbours_k}")
    check(0.0 <= d.fn_oracle_fraction <= 1.0,
           f"--fn_oracle_fraction must be in [0, 1], got {d.fn_oracle_fraction}")
    check(not d.fn_oracle or d.ifnd, "--fn_oracle needs --ifnd=true (it replaces the detector)")
    check(0.0 < d.fn_quantile <= 1.0, f"--fn_quantile must be in (0, 1], got {d.fn_quantile}")
    check(d.fn_top_k >= 0, f"--fn_top_k must be >= 0, got {d.fn_top_k}")
    check(d.fn_drop_temperature > 0,
           f"--fn_drop_temperature must be > 0, got {d.fn_drop_temperature}")
    check(d.fn_threshold_lr > 0, f"--fn_threshold_lr must be > 0, got {d.fn_threshold_lr}")
    check(d.fn_quantile < 1.0 or d.fn_detector != LEARNED_THRESHOLD,
           "--fn_detector=learned_threshold needs --fn_quantile below 1")
    check(not (d.fn_oracle and d.fn_detector != CLUSTERS),
           "--fn_oracle replaces the clusters' labels; it needs --fn_detector=clusters")
    check(d.fn_min_levels == 1 or d.fn_detector == CLUSTERS,
           f"--fn_min_levels={d.fn_min_levels} is a vote over cluster levels; it needs "
           "--fn_detector=clusters")
    if d.ifnd and d.fn_detector in CLUSTERING_DETECTORS and not d.fn_oracle:
        kmeans.faiss_uses_gpu(d.kmeans_device, d.kmeans_backend)  # a GPU asked for and absent
        for k in d.num_clusters:
            kmeans.check_backend_k(d.kmeans_backend, k)
    if d.ifnd:
        levels = len(d.num_clusters)
        check(1 <= d.fn_min_levels <= levels,
               f"--fn_min_levels must be in [1, {levels}] (the levels of --num_clusters), "
               f"got {d.fn_min_levels}")


def runtime(r, e, num_replicas: int) -> None:
    """Checkpoints, guards, and XLA combinations that cannot compile."""
    check(r.cpu_replicas >= 1, f"--cpu_replicas must be >= 1, got {r.cpu_replicas}")
    check(r.checkpoint_every_steps >= 0,
           f"--checkpoint_every_steps must be >= 0, got {r.checkpoint_every_steps}")
    check(r.collapse_steps >= 0, f"--collapse_steps must be >= 0, got {r.collapse_steps}")
    check(0 <= r.collapse_spread < 1,
           f"--collapse_spread must be in [0, 1), got {r.collapse_spread}")
    check(r.keep_checkpoints >= 1, f"--keep_checkpoints must be >= 1, got {r.keep_checkpoints}")
    # XLA (docs/design.md "XLA"): Keras silently drops jit_compile under op determinism; with
    # several replicas only the per-replica part is compiled, which must hold no cross-replica op.
    check(r.jit_compile != "on" or not r.deterministic,
           "--jit_compile=on needs --deterministic=false: XLA-compiled ops are not covered by TF "
           "op determinism (Keras does not compile a step under it)")
    if r.jit_compile == "on" and num_replicas > 1:
        check(r.strategy == "mirrored",
               f"--jit_compile=on with {num_replicas} replicas is supported (and tested) with "
               f"--strategy=mirrored only, got --strategy={r.strategy}")
        check(not e.sync_bn,
               f"--jit_compile=on with {num_replicas} replicas needs --sync_bn=false: SyncBN "
               "all-reduces inside the encoder's forward pass, and MirroredStrategy cannot run a "
               "cross-replica op inside the per-replica XLA function")


def monitor(m) -> None:
    """The kNN monitor's settings."""
    check(m.knn_every >= 0, f"--knn_every must be >= 0, got {m.knn_every}")
    check(m.knn_k >= 1, f"--knn_k must be >= 1, got {m.knn_k}")
    check(m.knn_max_train >= 0, f"--knn_max_train must be >= 0, got {m.knn_max_train}")
    check(m.knn_temperature > 0, f"--knn_temperature must be > 0, got {m.knn_temperature}")


def validate_strategy(kind: str) -> None:
    """Before the strategy is made: multi_worker needs TF_CONFIG (without it TF builds a
    one-worker strategy that failed at the first batch, after flags.json and logs/ were written)."""
    if kind != "multi_worker":
        return
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster")
    except (ValueError, AttributeError):
        cluster = None
    check(bool(cluster), "--strategy=multi_worker needs the TF_CONFIG environment variable with "
                          "the cluster and this worker's task (README, several machines); on one "
                          "machine use --strategy=mirrored")
