"""MoCo v2 against IFND on digits through the real command line (two tiny runs)."""
import json

import pytest
from conftest import run_smoke

from ifnd_tf import callbacks, compare


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
