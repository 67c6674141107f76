"""MoCo v2 against IFND on digits through the real command line (two tiny runs)."""
import json

import pytest
from conftest import run_smoke

from ifnd_tf import callbacks, compare, config


def _compare(model_dir, *extra):
    return run_smoke("ifnd_tf.compare", model_dir, "--linear_epochs=10", *extra, timeout=900)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("compare")
    result = _compare(model_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result


@pytest.mark.e2e
def test_table_has_both_runs_from_their_own_outputs(compared):
    model_dir, result = compared
    rows = json.loads((model_dir / "compare.json").read_text())
    assert list(rows) == ["MoCo v2", "MoCo v2 + IFND"]
    for name, folder in (("MoCo v2", "moco"), ("MoCo v2 + IFND", "ifnd")):
        history = callbacks.read_metrics(str(model_dir / folder / "metrics.csv"))
        probe = json.loads((model_dir / folder / "linear_eval" / "result.json").read_text())
        assert rows[name]["epochs"] == len(history) == 3
        assert rows[name]["knn_top1"] == pytest.approx(history[-1]["knn_top1"])
        assert rows[name]["linear_top1"] == pytest.approx(probe["top1"])
        assert rows[name]["train_seconds"] == pytest.approx(sum(r["seconds"] for r in history))
    assert rows["MoCo v2"]["fn_precision"] is None  # nothing is detected without IFND
    assert 0.0 < rows["MoCo v2 + IFND"]["fn_precision"] <= 1.0
    table = (model_dir / "compare.md").read_text()
    assert table in result.stdout
    assert table.splitlines()[2].startswith("| MoCo v2 | ") and "| – | – |" in table


@pytest.mark.e2e
def test_ifnd_run_has_its_diagnostics(compared):
    model_dir, _ = compared
    history = callbacks.read_metrics(str(model_dir / "ifnd" / "metrics.csv"))
    assert {"purity_k10", "purity_k20", "accepted", "fn_recall"} <= set(history[-1])
    assert history[-1]["accepted"] == 1437  # alpha = 1 at the last epoch
    for picture in ("curves.png", "features_pca.png"):
        assert (model_dir / "ifnd" / "diagnostics" / picture).stat().st_size > 10_000


@pytest.mark.e2e
def test_second_run_reads_instead_of_training(compared):
    model_dir, first = compared
    again = _compare(model_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "+ python -m" in first.stdout and "+ python -m" not in again.stdout
    assert (model_dir / "compare.md").read_text() in again.stdout


@pytest.mark.e2e
def test_failed_step_is_one_clear_line(tmp_path):
    with pytest.raises(compare.StepError) as error:
        compare.run_step("ifnd_tf.train", ["--flagfile=flags/smoke.cfg", f"--model_dir={tmp_path}",
                                           "--dataset=folder:/nonexistent"])
    assert str(error.value) == ("ifnd_tf.train failed: "
                                "ifnd_tf.train: error: --dataset=folder:/nonexistent: no such folder")


def test_format_table_marks_what_was_not_measured():
    rows = {"a": {"knn_top1": 0.81234, "linear_top1": 0.9, "fn_precision": None,
                  "fn_recall": None, "train_seconds": 12.6}}
    assert compare.format_table(rows).splitlines()[2] == "| a | 0.8123 | 0.9000 | – | – | 13 s |"


def _runs(values):
    return {seed: {"knn_top1": v, "linear_top1": None} for seed, v in enumerate(values)}


def test_paired_differences_and_verdict_on_fixed_inputs():
    moco = _runs([0.800, 0.810, 0.790])
    ifnd = _runs([0.808, 0.816, 0.800])
    paired = compare.paired_differences(moco, ifnd, "knn_top1")
    assert paired["seeds"] == [0, 1, 2]
    assert paired["diffs"] == pytest.approx([0.008, 0.006, 0.010])
    assert paired["mean"] == pytest.approx(0.008) and paired["sd"] == pytest.approx(0.002)
    assert paired["ahead"] == 3
    assert compare.verdict("IFND", "kNN", paired) == "IFND − MoCo kNN: +0.8 ± 0.2, 3/3 seeds ahead"
    assert compare.paired_differences(moco, ifnd, "linear_top1") is None  # never measured


def test_paired_differences_use_only_seeds_both_have():
    moco = _runs([0.80, 0.81])
    other = {1: {"knn_top1": 0.80}, 2: {"knn_top1": 0.90}}  # seed 2 not yet run for MoCo
    paired = compare.paired_differences(moco, other, "knn_top1")
    assert paired["seeds"] == [1] and paired["ahead"] == 0 and paired["sd"] is None
    assert compare.verdict("x", "kNN", paired) == "x − MoCo kNN: -1.0, 0/1 seeds ahead"


def test_summary_is_mean_and_sample_sd_per_variant():
    summary = compare.summarize_seeds({0: {"knn_top1": 0.80, "fn_precision": None},
                                       1: {"knn_top1": 0.84, "fn_precision": None}})
    assert summary == {"knn_top1": {"mean": pytest.approx(0.82), "sd": pytest.approx(0.02828427),
                                    "n": 2}}
    line = compare.format_summary({"moco": "MoCo v2"}, {"moco": summary}).splitlines()[2]
    assert line == "| MoCo v2 | 2 | 0.8200 ± 0.0283 | – | – | – | – |"


def test_variants_are_parsed_with_named_flag_sets():
    variants = compare.parse_variants(
        ["moco", "ifnd"], ["agree:--fn_confidence=agreement,--num_clusters=10,20"])
    assert list(variants) == ["moco", "ifnd", "agree"]
    assert variants["agree"][2] == ["--fn_confidence=agreement", "--num_clusters=10,20"]
    assert variants["ifnd"] == ("MoCo v2 + IFND", "IFND", ["--ifnd=true"])
    assert compare.plan_line(variants, ["moco", "ifnd"], [0, 2], "runs") == (
        "compare: moco, ifnd, agree (appended from --variant); seeds 0, 2; in runs")
    assert compare.plan_line(variants, ["agree", "moco", "ifnd"], [], "runs") == (
        "compare: moco, ifnd, agree; one run each; in runs")
    with pytest.raises(config.ConfigError, match="--variants: unknown variant 'nope'"):
        compare.parse_variants(["moco", "nope"], [])
    with pytest.raises(config.ConfigError, match="--variant='bad': expected name:--flag"):
        compare.parse_variants(["moco"], ["bad"])


@pytest.mark.e2e
def test_seeds_and_oracle_variant_grow_one_table(tmp_path):
    """Seed 0, then seeds 0,1: only seed 1 is trained the second time; the oracle is marked."""
    args = ("--linear_epochs=2", "--variants=moco,oracle")
    first = _compare(tmp_path, *args, "--seeds=0")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _compare(tmp_path, *args, "--seeds=0,1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.startswith(f"compare: moco, oracle; seeds 0, 1; in {tmp_path}\n")
    assert second.stdout.count("+ python -m ifnd_tf.train") == 2  # seed 1 of both variants
    assert "seed0" not in "".join(l for l in second.stdout.splitlines() if l.startswith("+ "))
    result = json.loads((tmp_path / "compare.json").read_text())
    assert set(result["runs"]["oracle"]) == {"0", "1"}
    for seed in (0, 1):
        run = tmp_path / "oracle" / f"seed{seed}"
        assert json.loads((run / "flags.json").read_text())["fn_oracle"] is True
        assert json.loads((run / "flags.json").read_text())["seed"] == seed
        history = callbacks.read_metrics(str(run / "metrics.csv"))
        assert history[-1]["oracle"] == 1.0 and history[-1]["fn_precision"] == 1.0
        assert result["runs"]["oracle"][str(seed)]["oracle"] is True
    paired = result["paired"]["oracle"]["knn_top1"]
    moco, oracle = result["runs"]["moco"], result["runs"]["oracle"]
    assert paired["diffs"] == pytest.approx(
        [oracle[s]["knn_top1"] - moco[s]["knn_top1"] for s in ("0", "1")])
    assert f"oracle − MoCo kNN: {100 * paired['mean']:+.1f} ± " in second.stdout
    assert result["summary"]["moco"]["knn_top1"]["n"] == 2
    assert (tmp_path / "compare.md").read_text().startswith("| variant | seeds |")


def test_a_run_or_probe_made_with_other_flags_is_refused_not_reused(tmp_path):
    from ifnd_tf import command_settings

    (tmp_path / "flags.json").write_text(json.dumps(config.RunConfig().flat()))
    probe = command_settings.EvalConfig(linear_epochs=10)
    compare.check_reused(str(tmp_path), config.RunConfig(), probe)  # the same: read, not refused
    with pytest.raises(config.ConfigError,
                       match=rf"^--model_dir={tmp_path} holds a run with other flags "
                             r"\(--learning_rate: 0.03 -> 0.05\)"):
        compare.check_reused(str(tmp_path), config.RunConfig().replace(learning_rate=0.05), probe)
    (tmp_path / "linear_eval").mkdir()
    (tmp_path / "linear_eval" / "result.json").write_text(json.dumps(
        {"epochs": 10, "learning_rate": 0.1, "schedule": "cosine", "batch_size": 256}))
    compare.check_reused(str(tmp_path), config.RunConfig(), probe)
    with pytest.raises(config.ConfigError, match=r"result.json was probed with other flags "
                                                 r"\(--linear_epochs: 10 -> 100\)"):
        compare.check_reused(str(tmp_path), config.RunConfig(),
                             command_settings.EvalConfig(linear_epochs=100))


def test_the_table_says_what_its_runs_were_trained_with():
    base = config.RunConfig().replace(learning_rate=0.06, num_clusters=(5, 7), seed=3)
    line = compare.trained_with(base, compare.parse_variants(["moco", "ifnd"], []))
    assert line == ("Trained with (run-defining flags not at their default): "
                    "--learning_rate=0.06 --num_clusters=5,7. "
                    "Variants: moco: --ifnd=false; ifnd: --ifnd=true.")
