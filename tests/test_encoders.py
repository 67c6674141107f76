"""Any Keras encoder: keras.applications backbones by name (the flag) and by object (the API),
with shuffle-BN on their BatchNorm, checkpoints, resume and export."""
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, run_smoke

from ifnd_tf import encoders, model
from ifnd_tf.config import MoCoConfig
from ifnd_tf.errors import ConfigError

TINY = ["--image_size=32", "--batch_size=16", "--queue_size=64", "--key_bn_splits=2",
        "--knn_every=0", "--embed_batch_size=256"]


def _batch_norms(encoder, kind=keras.layers.BatchNormalization):
    return [layer for layer in encoders.all_layers(encoder) if isinstance(layer, kind)]


def test_any_functional_backbone_gets_the_head_and_a_grouped_key_copy(one_replica):
    with one_replica.scope():
        backbone = keras.applications.MobileNetV3Small(
            input_shape=(32, 32, 3), weights=None, include_top=False, pooling="avg")
        moco = model.MomentumContrast(backbone, num_examples=64,
                                      moco=MoCoConfig(queue_size=32, key_bn_splits=2))
    assert moco.encoder.output["embedding"].shape[-1] == 128
    assert moco.encoder.output["features"].shape[-1] == backbone.output.shape[-1]
    query_bn = _batch_norms(moco.encoder)
    key_bn = _batch_norms(moco.key_encoder, encoders.GroupedBatchNormalization)
    assert len(query_bn) == len(key_bn) > 10  # every BatchNorm swapped, none left plain
    assert {layer.groups for layer in key_bn} == {2}
    assert not _batch_norms(moco.encoder, encoders.GroupedBatchNormalization)
    for q, k in zip(moco.encoder.weights, moco.key_encoder.weights):  # momentum copy starts equal
        np.testing.assert_array_equal(q.numpy(), k.numpy())
    with one_replica.scope():
        moco.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    images = tf.random.uniform([16, 32, 32, 3], seed=1)
    data = tf.data.Dataset.from_tensors((tf.range(16, dtype=tf.int64), images, images[::-1]))
    history = moco.fit(data.repeat(2), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and history["key_spread"][0] > 0
    assert (moco.queue_ids.numpy() >= 0).sum() == 32  # two batches of 16 enqueued


def test_a_feature_map_or_dict_backbone_is_pooled_and_bad_outputs_are_named():
    images = keras.Input((16, 16, 3))
    conv = keras.layers.Conv2D(8, 3)(images)
    assert encoders.with_head(keras.Model(images, conv), 16).output["features"].shape[-1] == 8
    as_dict = keras.Model(images, {"features": keras.layers.GlobalAveragePooling2D()(conv)})
    assert encoders.with_head(as_dict, 16).output["embedding"].shape[-1] == 16
    with pytest.raises(ConfigError, match="a dict output needs a 'features' entry"):
        encoders.with_head(keras.Model(images, {"a": conv, "b": conv}))
    with pytest.raises(ConfigError, match="^encoder: expected a keras.Model"):
        encoders.with_head(lambda x: x)


def test_a_subclassed_encoder_without_a_key_copy_is_refused_in_one_line():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4)

        def call(self, x):
            return {"features": x, "embedding": self.dense(x)}

    net = Net()
    net(tf.zeros([1, 4]))
    with pytest.raises(ConfigError, match="^encoder: cannot copy Net .* for the key encoder"):
        encoders.key_encoder_for(net, 2)


def _interrupted(model_dir, command):
    """`command` SIGTERMed once its first mid-epoch checkpoint exists: (stderr, exit code)."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    mark = model_dir / "checkpoints" / "ckpt-1.index"
    deadline = time.monotonic() + 300
    while not mark.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    return process.communicate()[1], process.returncode


@pytest.mark.e2e
def test_keras_application_trains_resumes_and_exports_from_the_command_line(tmp_path):
    flags = [*TINY, "--backbone=keras.applications.MobileNetV3Small", "--epochs=2",
             "--steps_per_epoch=3", "--checkpoint_every_steps=1"]
    stderr, code = _interrupted(tmp_path, [
        sys.executable, "-m", "ifnd_tf.train", "--flagfile=flags/smoke.cfg",
        f"--model_dir={tmp_path}", *flags])
    assert code == 75, stderr[-2000:]  # pre-empted: saved, exit 75
    result = run_smoke("ifnd_tf.train", tmp_path, *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout and "IFND epoch 2: alpha=1" in result.stdout
    loaded = tf.saved_model.load(str(tmp_path / "export" / "saved_model"))
    reloaded = keras.models.load_model(tmp_path / "export" / "encoder.keras")
    images = tf.random.uniform([3, 32, 32, 3], seed=2)
    np.testing.assert_allclose(loaded.embedding(images).numpy(),
                               reloaded(images)["embedding"].numpy(), rtol=1e-4, atol=1e-5)
    assert (tmp_path / "flags.json").read_text().count("keras.applications.MobileNetV3Small")


def test_keras_resnet50_by_name_builds_both_encoders(one_replica):
    """--backbone=keras.applications.ResNet50 (the flag's value, as the config holds it):
    the query encoder and its shuffle-BN key copy (the ResNet-50 run itself: the Python test
    below, which also resumes and exports)."""
    from ifnd_tf import builder, config

    cfg = config.RunConfig().replace(backbone="keras.applications.ResNet50", image_size=32,
                                     batch_size=16, queue_size=64, key_bn_splits=2)
    with one_replica.scope():
        query, key = builder.build_encoders(cfg.validate())
        assert key is None  # the model copies it
        moco = model.MomentumContrast(query, 64, moco=cfg.moco, key_encoder=key)
    assert query.output["features"].shape[-1] == 2048
    assert len(_batch_norms(moco.key_encoder, encoders.GroupedBatchNormalization)) == \
        len(_batch_norms(query)) == 53


def test_unknown_application_names_the_flag(tmp_path):
    result = run_smoke("ifnd_tf.train", tmp_path, "--backbone=keras.applications.NoSuchNet")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "ifnd_tf.train: error: --backbone=keras.applications.NoSuchNet: keras.applications has "
        "no 'NoSuchNet' (e.g. keras.applications.ResNet50, keras.applications.MobileNetV3Small)")


PRETRAIN_SCRIPT = """
import sys
import keras
from ifnd_tf import RunConfig, pretrain

name, model_dir = sys.argv[1], sys.argv[2]
config = RunConfig().replace(
    dataset="digits", image_size=32, batch_size=16, queue_size=64, key_bn_splits=2, epochs=2,
    steps_per_epoch=3, checkpoint_every_steps=1, num_clusters=[10], knn_every=0,
    embed_batch_size=256, kmeans_backend="sklearn", model_dir=model_dir)
backbone = getattr(keras.applications, name)(input_shape=(32, 32, 3), weights=None,
                                             include_top=False, pooling="avg")
result = pretrain(config, encoder=backbone)
print("saved", result.saved_model, result.model.encoder.output["features"].shape[-1])
"""


@pytest.mark.e2e
@pytest.mark.parametrize("name, features", [("ResNet50", 2048)])  # MobileNet: the flag, above
def test_keras_application_trains_resumes_and_exports_from_python(tmp_path, name, features):
    """pretrain(config, encoder=<a keras.applications net>): SIGTERM after the first step's
    checkpoint (Preempted), then the same call resumes there, finishes and exports."""
    command = [sys.executable, "-c", PRETRAIN_SCRIPT, name, str(tmp_path)]
    stderr, _ = _interrupted(tmp_path, command)
    assert "Preempted: stopped by SIGTERM after step" in stderr, stderr[-2000:]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == (
        f"saved {tmp_path / 'export' / 'saved_model'} {features}")
    loaded = tf.saved_model.load(str(tmp_path / "export" / "saved_model"))
    assert loaded.features(tf.zeros([1, 32, 32, 3])).shape == (1, features)


def test_local_batch_norm_trains_as_keras_batch_norm_with_the_fused_kernel():
    """--sync_bn=false: the fused kernel gives Keras' BN outputs, gradients and moving
    statistics (the biased batch variance), and serialises as itself."""
    x = tf.random.normal([4, 5, 5, 3], seed=0) * 3.0 + 1.0
    fused = encoders.LocalBatchNormalization(momentum=0.9, epsilon=1e-5)
    plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    for layer in (fused, plain):
        layer.build(x.shape)
        layer.gamma.assign([0.5, 1.0, 2.0])
        layer.beta.assign([0.1, 0.0, -0.3])
    results = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, training=True)
            loss = tf.reduce_sum(out * tf.range(3, dtype=tf.float32))
        results.append((out, *tape.gradient(loss, [x, layer.gamma, layer.beta]),
                        layer.moving_mean, layer.moving_variance))
    for got, want in zip(*results):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
    assert type(fused.from_config(fused.get_config())) is encoders.LocalBatchNormalization
    np.testing.assert_allclose(fused(x, training=False), plain(x, training=False), atol=1e-5)
