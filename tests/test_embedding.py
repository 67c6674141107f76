import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, free_ports

from ifnd_tf import data, encoders, sources
from ifnd_tf.embedding import DatasetEmbedder, SharedPass


def test_embedder_places_every_example_by_index(one_replica, two_replicas):
    source = sources.load_source("digits", "test")  # 360 examples: last batch is partial
    pipeline = data.embedding_pipeline(source, 61, 16)  # odd batches: uneven replica shares
    with two_replicas.scope():
        encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=16)
    images = np.concatenate([x.numpy() for _, x in pipeline])
    expected = encoder(images, training=False)["embedding"].numpy()
    for strategy in (one_replica, two_replicas):
        embedder = DatasetEmbedder(encoder, strategy, pipeline, source.num_examples)
        for _ in range(2):  # reusable, e.g. once per epoch
            np.testing.assert_allclose(embedder(), expected, rtol=1e-4, atol=1e-5)


# One worker of a two-worker cluster: embeds its share of digits' train split (1,437 examples,
# batches of 101 = 51 per worker) and saves the gathered table, the indices it read and the
# encoder's weights.
WORKER = """
import json, sys
sys.path.insert(0, "tests")
import numpy as np, tensorflow as tf
from conftest import counting_reads
from ifnd_tf import data, distribute, encoders, sources
from ifnd_tf.embedding import DatasetEmbedder

strategy = tf.distribute.MultiWorkerMirroredStrategy()
source, reads = counting_reads(sources.load_source("digits"))
with strategy.scope():
    encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=16)
pipeline = data.embedding_pipeline(source, 101, 16,
                                   input_context=distribute.input_context(strategy))
table = DatasetEmbedder(encoder, strategy, pipeline, source.num_examples)()
first_pass_reads = list(reads)
both = DatasetEmbedder(encoder, strategy, pipeline, source.num_examples,
                       output=("features", "embedding"))()  # one pass, two gathered tables
out = sys.argv[1]
np.save(out + ".npy", table)
np.save(out + ".both.npy", np.concatenate([both["features"], both["embedding"]], axis=1))
encoder.save_weights(out + ".weights.h5")
with open(out + ".json", "w") as f:
    json.dump(first_pass_reads, f)
"""


@pytest.mark.e2e
def test_two_workers_each_embed_half_and_both_hold_the_single_worker_table(tmp_path,
                                                                            one_replica):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / f"worker{index}")], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for index, (process, output) in enumerate(zip(processes, outputs)):
        assert process.returncode == 0, output[-3000:]
        # 1,437 padded to 1,438: worker 1's last position, 1,437, repeats example 0.
        assert "embedded 719 of 1437 examples" in output
        with open(tmp_path / f"worker{index}.json") as f:
            reads = json.load(f)
        assert sorted(reads) == sorted(np.arange(index, 1438, 2) % 1437)
    tables = [np.load(tmp_path / f"worker{index}.npy") for index in range(2)]
    np.testing.assert_array_equal(tables[0], tables[1])
    both = [np.load(tmp_path / f"worker{index}.both.npy") for index in range(2)]
    np.testing.assert_array_equal(both[0], both[1])
    np.testing.assert_allclose(both[0][:, -16:], tables[0], atol=1e-6)  # the same embeddings
    with one_replica.scope():
        encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=16)
    encoder.load_weights(tmp_path / "worker0.weights.h5")
    source = sources.load_source("digits")
    single = DatasetEmbedder(encoder, one_replica, data.embedding_pipeline(source, 101, 16),
                             source.num_examples)()
    np.testing.assert_allclose(tables[0], single, rtol=1e-4, atol=1e-5)


def test_one_pass_gives_several_outputs_and_a_shared_pass_reembeds_after_training(one_replica):
    source = sources.load_source("digits", "test")
    with one_replica.scope():
        encoder = encoders.build_encoder("small", 16, 0.25, embedding_dim=8)
    pipeline = data.embedding_pipeline(source, 256, 16)
    both = DatasetEmbedder(encoder, one_replica, pipeline, source.num_examples,
                           output=("features", "embedding"))
    tables = both()
    assert set(tables) == {"features", "embedding"}
    for name, table in tables.items():
        alone = DatasetEmbedder(encoder, one_replica, pipeline, source.num_examples, output=name)()
        np.testing.assert_allclose(table, alone, atol=1e-6)
    step = [0]
    shared = SharedPass(both, lambda: step[0])
    assert shared.take("embedding") is None  # nothing embedded yet
    tables = shared()  # the monitor's pass: every table; only the embeddings are kept
    kept = shared.take("embedding")
    assert kept is tables["embedding"] and shared.take("embedding") is None  # handed over once
    assert shared.take("features") is None  # never kept: large at scale
    shared()
    step[0] = 1  # trained since the pass: stale, not handed over
    assert shared.take("embedding") is None
    step[0] = 0
    assert shared.take("embedding") is None  # and it was freed
