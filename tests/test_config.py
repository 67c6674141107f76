import ast
import dataclasses
import glob
import os

import pytest
from absl.testing import flagsaver

from ifnd_tf import cli, command_settings, config


def _validate(num_replicas=1, **changes):
    config.RunConfig().replace(**changes).validate(num_replicas)


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
    ({"backbone": "keras.applications.NoSuchNet"}, ("--backbone=keras.applications.NoSuchNet: "
                                                   "keras.applications has no 'NoSuchNet'")),
    ({"backbone": "vgg"}, "--backbone must be one of"),
])
def test_bad_values_name_the_flag(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        _validate(**overrides)


def test_defaults_are_valid_and_batch_must_split_over_replicas():
    assert config.RunConfig().validate(1) == config.RunConfig()
    with pytest.raises(config.ConfigError, match="multiple of the 2 replicas"):
        _validate(2, batch_size=255, queue_size=255 * 4)


@pytest.mark.parametrize("overrides, message", [
    ({"deterministic": True}, "--jit_compile=on needs --deterministic=false"),
    ({"deterministic": False}, "--jit_compile=on with 2 replicas needs --sync_bn=false: SyncBN"),
    ({"deterministic": False, "sync_bn": False, "strategy": "multi_worker"},
     "with --strategy=mirrored only, got --strategy=multi_worker"),
])
def test_xla_that_cannot_compile_is_refused(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        _validate(2, jit_compile="on", **overrides)
    _validate(2, jit_compile="on", deterministic=False, sync_bn=False)  # per-replica XLA


def test_k_larger_than_dataset_is_rejected_before_training():
    cfg = config.RunConfig().replace(num_clusters=[10, 5000], batch_size=64)
    with pytest.raises(config.ConfigError, match="--num_clusters: k=\\[5000\\] larger than the dataset"):
        cfg.validate_for_data(num_examples=1437)
    cfg.validate_for_data(num_examples=6000)


def test_key_bn_splits_must_spread_evenly_over_replicas():
    with pytest.raises(config.ConfigError, match="--key_bn_splits=3 must be 1 or a multiple "
                                                 "of the 2 replicas"):
        _validate(2, batch_size=96, queue_size=96 * 4, key_bn_splits=3)


def test_run_config_is_read_once_from_the_flags():
    with flagsaver.flagsaver(num_clusters=["5", "7"], temperature=0.5, ifnd=True):
        cfg = cli.run_config_from_flags()
    assert cfg.detection.num_clusters == (5, 7) and cfg.moco.temperature == 0.5
    assert cfg.num_levels == 2
    assert cli.run_config_from_flags().moco.temperature == 0.2  # a value, not a view of FLAGS
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.moco.temperature = 1.0


def test_sections_have_defaults_on_their_fields_and_need_no_command_line():
    cfg = config.RunConfig(schedule=config.ScheduleConfig(epochs=6),
                           detection=config.DetectionConfig(ifnd=False, alpha_shape="cosine",
                                                            warmup_epochs=2))
    assert cfg.num_levels == 1 and cfg.encoder.backbone == "small"
    assert cfg.acceptance_schedule().alpha(3) == pytest.approx(0.5)
    assert cfg.detection.kmeans().threads is None  # --kmeans_threads=0: the libraries' default
    assert cfg.replace(epochs=6, ifnd=False, alpha_shape="cosine", warmup_epochs=2) == \
        config.RunConfig().replace(epochs=6, ifnd=False, alpha_shape="cosine", warmup_epochs=2)
    with pytest.raises(config.ConfigError, match="^--no_such_flag: no such setting"):
        cfg.replace(no_such_flag=1)


def test_every_field_is_one_flag_and_every_flag_one_field():
    """The flags are defined from the fields (cli.py): same names, defaults and help."""
    fields = {config.flag_name(f): f for section in cli.COMMAND_LINE_SECTIONS
              for f in config.flag_fields(section)}
    defined = {name for name, flag in cli.FLAGS.__flags.items()
               if cli.FLAGS.find_module_defining_flag(name) == cli.__name__}
    assert defined == set(fields)
    for name, field in fields.items():
        default = field.default
        expected = [str(v) for v in default] if isinstance(default, tuple) else default
        assert cli.FLAGS[name].default == expected, name
        assert field.metadata["help"] in cli.FLAGS[name].help, name  # enums: "<a|b>: help"


def test_flat_values_round_trip_and_match_the_flags():
    cfg = config.RunConfig().replace(num_clusters=(5, 7), seed=3, backbone="resnet50")
    flat = cfg.flat()
    assert flat["num_clusters"] == ["5", "7"] and flat["moco_momentum"] == 0.999
    assert config.RunConfig.from_flat(flat) == cfg
    with flagsaver.flagsaver(num_clusters=["5", "7"], seed=3, backbone="resnet50"):
        assert cli.run_config_from_flags() == cfg


def test_old_flags_json_keys_are_still_written():
    """flags.json of runs made before the config had sections used these names: a resume
    compares them one to one."""
    old = {"dataset", "image_size", "backbone", "width_multiplier", "embedding_dim", "sync_bn",
           "key_bn_splits", "epochs", "steps_per_epoch", "batch_size", "learning_rate",
           "sgd_momentum", "weight_decay", "temperature", "moco_momentum", "queue_size", "ifnd",
           "fn_strategy", "num_clusters", "warmup_epochs", "alpha_start", "alpha_end",
           "alpha_shape", "kmeans_backend", "kmeans_iterations",
           "kmeans_max_points_per_centroid", "cluster_features", "seed", "mixed_precision",
           "fn_confidence", "fn_neighbours_k", "fn_min_levels", "fn_oracle",
           "fn_oracle_fraction", "fn_detector", "fn_quantile"}
    added = {"class_prior", "fn_top_k", "fn_threshold", "fn_drop_temperature",
             "fn_threshold_lr"}
    assert set(config.RUN_DEFINING_FLAGS) == old | added
    assert old <= set(config.RunConfig().flat())


def test_a_setting_newer_than_the_run_counts_as_its_default():
    """A run made before a setting existed ran with its default: resuming it with another
    value is refused, with the default it resumes."""
    saved = config.RunConfig().flat()
    del saved["class_prior"]
    config.check_same_run(saved, config.RunConfig().flat(), "runs/old")
    with pytest.raises(config.ConfigError, match="--class_prior: 0.0 -> 0.1"):
        config.check_same_run(saved, config.RunConfig().replace(class_prior=0.1).flat(),
                              "runs/old")


def test_a_changed_run_defining_setting_is_refused_in_one_line():
    saved = config.RunConfig().flat()
    now = config.RunConfig().replace(learning_rate=0.05, kmeans_threads=1).flat()
    with pytest.raises(config.ConfigError, match=r"^--model_dir=/r holds a run with other flags "
                                                 r"\(--learning_rate: 0.03 -> 0.05\); "):
        config.check_same_run(saved, now, "/r")
    config.check_same_run(saved, config.RunConfig().replace(kmeans_threads=1).flat(), "/r")


def test_library_modules_read_no_flag():
    """Only the command line's edge (cli.py) defines or reads absl flags."""
    package = os.path.join(os.path.dirname(os.path.dirname(__file__)), "ifnd_tf")
    for path in glob.glob(os.path.join(package, "*.py")):
        if os.path.basename(path) == "cli.py":
            continue
        with open(path) as f:
            tree = ast.parse(f.read())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    and node.module == "absl" for alias in node.names}
        assert "flags" not in imported, path
        names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        names |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        assert "FLAGS" not in names, path


def test_oracle_is_refused_without_labels_or_without_ifnd():
    cfg = config.RunConfig().replace(fn_oracle=True, dataset="folder:/x", batch_size=64)
    with pytest.raises(config.ConfigError,
                       match="^--fn_oracle needs true labels and --dataset=folder:/x has none$"):
        cfg.validate_for_data(num_examples=1437, has_labels=False)
    cfg.validate_for_data(num_examples=1437, has_labels=True)
    with pytest.raises(config.ConfigError, match="--fn_oracle needs --ifnd=true"):
        _validate(fn_oracle=True, ifnd=False)
    with pytest.raises(config.ConfigError, match="--fn_oracle_fraction must be in"):
        _validate(fn_oracle_fraction=1.5)


@pytest.mark.parametrize("value", [0, 4])
def test_vote_beyond_the_hierarchy_names_the_flag(value):
    with pytest.raises(config.ConfigError,
                       match=rf"--fn_min_levels must be in \[1, 3\] .*got {value}"):
        _validate(fn_min_levels=value, num_clusters=[10, 20, 50])


@pytest.mark.parametrize("overrides, message", [
    ({"fn_quantile": 0.0}, r"^--fn_quantile must be in \(0, 1\], got 0.0$"),
    ({"fn_quantile": 1.5}, r"^--fn_quantile must be in \(0, 1\], got 1.5$"),
    ({"fn_detector": "quantile", "fn_oracle": True}, "^--fn_oracle replaces the clusters' labels"),
    ({"fn_detector": "quantile", "fn_min_levels": 2}, "^--fn_min_levels=2 is a vote over cluster"),
])
def test_quantile_detector_settings_are_checked(overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        _validate(**overrides)
    _validate(fn_detector="quantile", fn_quantile=0.05)


def test_negative_knn_max_train_names_the_flag():
    with pytest.raises(config.ConfigError, match="--knn_max_train must be >= 0, got -1"):
        _validate(knn_max_train=-1)


def test_eval_settings_are_checked():
    with pytest.raises(config.ConfigError, match="--linear_epochs must be >= 1, got 0"):
        command_settings.EvalConfig(linear_epochs=0).validate()
    with pytest.raises(config.ConfigError, match="one value per --finetune_fractions"):
        command_settings.EvalConfig(finetune_fractions=("0.1",), finetune_epochs=("1", "2")).validate()
    assert command_settings.EvalConfig().finetune_plan() == [(0.01, 60), (0.1, 30)]


def test_a_folder_with_or_without_its_trailing_slash_is_the_same_run():
    cfg = config.RunConfig().replace(dataset="folder:/data/x/")
    assert cfg.data.dataset == "folder:/data/x"
    assert config.DataConfig(dataset="folder:/data/./x//").dataset == "folder:/data/x"
    saved = config.RunConfig().replace(dataset="folder:/data/x").flat()
    saved["dataset"] = "folder:/data/x/"  # a flags.json written before paths were normalised
    config.check_same_run(saved, cfg.flat(), "/r")


def test_a_gpu_for_kmeans_that_is_not_there_is_refused_before_the_run():
    _validate(kmeans_device="auto")  # this machine: faiss-cpu, so the CPU
    with pytest.raises(config.ConfigError, match="^--kmeans_device=gpu: the installed faiss has "
                                                 "no GPU support"):
        _validate(kmeans_device="gpu")
    with pytest.raises(config.ConfigError, match="^--kmeans_device=gpu places faiss only"):
        _validate(kmeans_device="gpu", kmeans_backend="tf")
    assert config.RunConfig().detection.kmeans().device == "auto"
