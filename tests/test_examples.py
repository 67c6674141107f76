"""The runnable examples (examples/), on their tiny data, as a user runs them."""
import json

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_cli

pytestmark = pytest.mark.e2e


def test_own_encoder_and_own_tf_data_train_ifnd_and_export(tmp_path):
    result = run_cli("examples.own_encoder", f"--out={tmp_path}", "--epochs=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "IFND epoch 2: alpha=1," in result.stdout  # one warm-up epoch, then all accepted
    masked = float(result.stdout.split("masked per anchor, last epoch: ")[1].split(";")[0])
    assert masked > 1  # the detector's mask reached the loss
    loaded = tf.saved_model.load(str(tmp_path / "export" / "saved_model"))
    embedding = loaded.embedding(tf.random.uniform([2, 16, 16, 3], seed=0)).numpy()
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), [1.0, 1.0], rtol=1e-5)


def test_custom_detector_runs_resumes_and_is_recorded(tmp_path):
    result = run_cli("examples.custom_detector", f"--model_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("IFND epoch")]
    assert [line.split("threshold=")[1] for line in lines] == ["1", "0.9", "0.8"]
    assert json.loads((tmp_path / "flags.json").read_text())["fn_detector"] == \
        "custom:SimilarAbove"
    again = run_cli("examples.custom_detector", f"--model_dir={tmp_path}")  # finished: exports
    assert again.returncode == 0 and "resumed from" in again.stdout
    assert "Epoch 1/" not in again.stdout
