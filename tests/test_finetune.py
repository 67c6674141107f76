import json
import os
import re

import keras
import pytest
from conftest import run_cli

from ifnd_tf import command_settings, config, encoders, export, finetune, sources


@pytest.fixture(scope="module")
def random_init_export(tmp_path_factory):
    keras.utils.set_random_seed(0)
    encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=8)
    return export.export_encoder(encoder, str(tmp_path_factory.mktemp("run") / "export"))


def test_finetuning_learns_from_ten_percent_of_the_labels(random_init_export, one_replica):
    train, test = sources.load_source("digits", "train"), sources.load_source("digits", "test")
    keras.utils.set_random_seed(0)
    result = finetune.finetune(random_init_export, train, test, one_replica, fraction=0.1,
                               epochs=20, batch_size=32, learning_rate=0.05, schedule="cosine",
                               image_size=16, seed=0)
    assert result["labelled_examples"] == 140  # 14 per class
    assert result["top1"] > 0.5  # measured 0.76 from random init; chance is 0.1
    assert result["top1"] <= result["top5"]


@pytest.mark.e2e
def test_cli_fine_tunes_each_fraction_and_writes_result_json(random_init_export):
    result = run_cli("ifnd_tf.finetune", "--flagfile=flags/smoke.cfg",
                     f"--saved_model={random_init_export}", "--finetune_fractions=0.01,0.1",
                     "--finetune_epochs=1,2", "--eval_batch_size=32")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = os.path.dirname(os.path.dirname(random_init_export))  # <run>/export/saved_model
    with open(os.path.join(run_dir, "finetune", "result.json")) as f:
        runs = json.load(f)["runs"]
    assert [(r["fraction"], r["labelled_examples"], r["epochs"]) for r in runs] == [
        (0.01, 10, 1), (0.1, 140, 2)]
    assert all(0.0 <= r["top1"] <= r["top5"] <= 1.0 for r in runs)
    assert "fine-tuned on 10% of the labels (140 examples, 2 epochs): top-1" in result.stdout


@pytest.mark.parametrize("fractions, epochs, message", [
    (["0.01", "0.1"], ["30"], "--finetune_epochs needs one value per --finetune_fractions value"),
    (["0.01", "1.5"], ["60", "30"], "--finetune_fractions must be in (0, 1]"),
    (["1%"], ["60"], "--finetune_fractions / --finetune_epochs must be numbers"),
])
def test_bad_finetune_flags_name_the_flag(fractions, epochs, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        command_settings.EvalConfig(finetune_fractions=tuple(fractions),
                          finetune_epochs=tuple(epochs)).validate()
