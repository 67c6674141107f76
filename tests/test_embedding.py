import numpy as np

from ifnd_tf import data, model
from ifnd_tf.embedding import DatasetEmbedder


def test_embedder_places_every_example_by_index(one_replica, two_replicas):
    source = data.load_source("digits", "test")  # 360 examples: last batch is partial
    pipeline = data.embedding_pipeline(source, 61, 16)  # odd batches: uneven replica shares
    with two_replicas.scope():
        encoder = model.build_encoder("small", 16, 0.25, embedding_dim=16)
    images = np.concatenate([x.numpy() for _, x in pipeline])
    expected = encoder(images, training=False)["embedding"].numpy()
    for strategy in (one_replica, two_replicas):
        embedder = DatasetEmbedder(encoder, strategy, pipeline, source.num_examples)
        for _ in range(2):  # reusable, e.g. once per epoch
            np.testing.assert_allclose(embedder(), expected, rtol=1e-4, atol=1e-5)
