import dataclasses

import pytest
from absl.testing import flagsaver

from ifnd_tf import config


@pytest.mark.parametrize("overrides, message", [
    ({"queue_size": 100, "batch_size": 64}, "--queue_size=100 must be a positive multiple of --batch_size=64"),
    ({"alpha_end": 1.5}, "--alpha_end must be in \\[0, 1\\]"),
    ({"alpha_start": -0.1}, "--alpha_start must be in \\[0, 1\\]"),
    ({"warmup_epochs": 10, "epochs": 10}, "--warmup_epochs=10 must be in \\[0, --epochs=10\\)"),
    ({"key_bn_splits": 3, "batch_size": 64, "queue_size": 128}, "--key_bn_splits=3 must divide"),
    ({"key_bn_splits": 16, "batch_size": 64, "queue_size": 128}, "groups of 4 keys"),
    ({"num_clusters": ["10", "x"]}, "--num_clusters must be integers"),
    ({"num_clusters": ["1"]}, "--num_clusters: each k must be >= 2"),
    ({"temperature": 0.0}, "--temperature must be > 0"),
    ({"moco_momentum": 1.0}, "--moco_momentum must be in \\[0, 1\\)"),
    ({"backbone": "resnet50", "image_size": 16},
     "--image_size=16 is smaller than --backbone=resnet50 takes \\(>= 32: it downsamples 32x\\)"),
])
def test_bad_flag_values_name_the_flag(overrides, message):
    with flagsaver.flagsaver(**overrides), pytest.raises(config.ConfigError, match=message):
        config.validate_flags(num_replicas=1)


def test_defaults_are_valid_and_batch_must_split_over_replicas():
    config.validate_flags(num_replicas=1)
    with flagsaver.flagsaver(batch_size=255, queue_size=255 * 4), \
            pytest.raises(config.ConfigError, match="multiple of the 2 replicas"):
        config.validate_flags(num_replicas=2)


@pytest.mark.parametrize("overrides, message", [
    ({"deterministic": True}, "--jit_compile=on needs --deterministic=false"),
    ({"deterministic": False}, "--jit_compile=on with 2 replicas needs --sync_bn=false: SyncBN"),
    ({"deterministic": False, "sync_bn": False, "strategy": "multi_worker"},
     "with --strategy=mirrored only, got --strategy=multi_worker"),
])
def test_xla_that_cannot_compile_is_refused(overrides, message):
    with flagsaver.flagsaver(jit_compile="on", **overrides), \
            pytest.raises(config.ConfigError, match=message):
        config.validate_flags(num_replicas=2)
    with flagsaver.flagsaver(jit_compile="on", deterministic=False, sync_bn=False):
        config.validate_flags(num_replicas=2)  # per-replica XLA on two mirrored replicas


def test_k_larger_than_dataset_is_rejected_before_training():
    with flagsaver.flagsaver(num_clusters=["10", "5000"], batch_size=64):
        with pytest.raises(config.ConfigError, match="--num_clusters: k=\\[5000\\] larger than the dataset"):
            config.validate_against_data(num_examples=1437)
        config.validate_against_data(num_examples=6000)


def test_key_bn_splits_must_spread_evenly_over_replicas():
    with flagsaver.flagsaver(batch_size=96, queue_size=96 * 4, key_bn_splits=3), \
            pytest.raises(config.ConfigError, match="--key_bn_splits=3 must be 1 or a multiple "
                                                     "of the 2 replicas"):
        config.validate_flags(num_replicas=2)


def test_run_config_is_read_once_from_the_flags():
    with flagsaver.flagsaver(num_clusters=["5", "7"], temperature=0.5, ifnd=True):
        cfg = config.RunConfig.from_flags()
    assert cfg.num_clusters == (5, 7) and cfg.temperature == 0.5 and cfg.num_levels == 2
    assert config.RunConfig.from_flags().temperature == 0.2  # a value, not a view of FLAGS
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.temperature = 1.0


def test_run_config_defaults_with_changes_need_no_command_line():
    cfg = config.RunConfig.defaults(ifnd=False, alpha_shape="cosine", epochs=6, warmup_epochs=2)
    assert cfg.num_levels == 1 and cfg.backbone == config.FLAGS["backbone"].default
    assert cfg.acceptance_schedule().alpha(3) == pytest.approx(0.5)
    assert cfg.kmeans().threads is None  # --kmeans_threads=0: the libraries' default


def test_oracle_is_refused_without_labels_or_without_ifnd():
    with flagsaver.flagsaver(fn_oracle=True, dataset="folder:/x", batch_size=64):
        with pytest.raises(config.ConfigError,
                           match="^--fn_oracle needs true labels and --dataset=folder:/x has none$"):
            config.validate_against_data(num_examples=1437, has_labels=False)
        config.validate_against_data(num_examples=1437, has_labels=True)
    with flagsaver.flagsaver(fn_oracle=True, ifnd=False), \
            pytest.raises(config.ConfigError, match="--fn_oracle needs --ifnd=true"):
        config.validate_flags(num_replicas=1)
    with flagsaver.flagsaver(fn_oracle_fraction=1.5), \
            pytest.raises(config.ConfigError, match="--fn_oracle_fraction must be in"):
        config.validate_flags(num_replicas=1)


@pytest.mark.parametrize("value", [0, 4])
def test_vote_beyond_the_hierarchy_names_the_flag(value):
    with flagsaver.flagsaver(fn_min_levels=value, num_clusters=["10", "20", "50"]), \
            pytest.raises(config.ConfigError,
                          match=rf"--fn_min_levels must be in \[1, 3\] .*got {value}"):
        config.validate_flags(num_replicas=1)


@pytest.mark.parametrize("overrides, message", [
    ({"fn_quantile": 0.0}, r"^--fn_quantile must be in \(0, 1\], got 0.0$"),
    ({"fn_quantile": 1.5}, r"^--fn_quantile must be in \(0, 1\], got 1.5$"),
    ({"fn_detector": "quantile", "fn_oracle": True}, "^--fn_oracle replaces the clusters' labels"),
    ({"fn_detector": "quantile", "fn_min_levels": 2}, "^--fn_min_levels=2 is a vote over cluster"),
])
def test_quantile_detector_flags_are_checked(overrides, message):
    with flagsaver.flagsaver(**overrides), pytest.raises(config.ConfigError, match=message):
        config.validate_flags(num_replicas=1)
    with flagsaver.flagsaver(fn_detector="quantile", fn_quantile=0.05):
        config.validate_flags(num_replicas=1)


def test_detection_flags_define_the_run():
    assert {"fn_oracle", "fn_oracle_fraction", "fn_confidence", "fn_neighbours_k",
            "fn_min_levels", "fn_detector", "fn_quantile"} <= set(
        config.RUN_DEFINING_FLAGS)


def test_negative_knn_max_train_names_the_flag():
    with flagsaver.flagsaver(knn_max_train=-1), \
            pytest.raises(config.ConfigError, match="--knn_max_train must be >= 0, got -1"):
        config.validate_eval_flags()
