"""Linear probe: a linear classifier on the frozen backbone's features (the standard protocol).

    python -m ifnd_tf.linear_eval --flagfile=flags/fashion_mnist.cfg \
        --saved_model=runs/fashion_mnist/export/saved_model

Loads export/encoder.keras next to --saved_model (default <--model_dir>/export/saved_model)
and takes dataset, image size and data location from the flags. Because the backbone is
frozen, its inference-mode features are computed once for the centre crop and for its
horizontal flip; every epoch picks one of the two per example at random, which is the
flip-only train augmentation at a fraction of the cost. Features are standardised with
train-set statistics (BatchNorm without affine, as MAE's probe does; still a linear
map of the features), then SGD trains a Dense layer. Writes result.json (top-1 / top-5 on the
test split) to --eval_dir, default <run>/linear_eval beside the export folder.
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import keras
import numpy as np
import tensorflow as tf

from ifnd_tf import cli, command_settings, data, evaluate, sources
from ifnd_tf.embedding import DatasetEmbedder


def backbone_features(encoder: keras.Model, source: sources.Source,
                      strategy: tf.distribute.Strategy, batch_size: int, image_size: int,
                      flip: bool = False) -> np.ndarray:
    """Inference-mode backbone features [N, D] of the centre crop (or its mirror image)."""
    pipeline = data.embedding_pipeline(source, batch_size, image_size)
    if flip:
        pipeline = pipeline.map(lambda index, images: (index, tf.image.flip_left_right(images)))
    embedder = DatasetEmbedder(encoder, strategy, pipeline, source.num_examples,
                                         output="features")
    return embedder()


def train_linear(plain: np.ndarray, flipped: np.ndarray, labels: np.ndarray, num_classes: int,
                 epochs: int, batch_size: int, learning_rate: float, schedule: str,
                 seed: int) -> keras.Model:
    """Standardise + Dense on the features; each example is seen plain or flipped at random."""
    normalize = keras.layers.Normalization()
    normalize.adapt(np.concatenate([plain, flipped]))
    classifier = keras.Sequential([keras.Input(plain.shape[1:]), normalize,
                                   keras.layers.Dense(num_classes)], name="linear_probe")
    steps = epochs * -(-len(labels) // batch_size)
    evaluate.compile_classifier(classifier, evaluate.sgd(learning_rate, steps, schedule))

    def pick_view(plain, flipped, label):
        use_flip = tf.random.uniform([tf.shape(plain)[0], 1], seed=seed) < 0.5
        return tf.where(use_flip, flipped, plain), label

    ds = tf.data.Dataset.from_tensor_slices((plain, flipped, labels))
    ds = ds.shuffle(len(labels), seed=seed).batch(batch_size).map(pick_view)
    classifier.fit(ds.prefetch(data.AUTOTUNE), epochs=epochs, verbose=0, shuffle=False)
    return classifier


def weights_equal(before: list[np.ndarray], model: keras.Model) -> bool:
    """Whether every weight (BatchNorm statistics included) still equals `before`."""
    after = model.get_weights()
    return len(before) == len(after) and all(np.array_equal(b, a) for b, a in zip(before, after))


def probe(encoder: keras.Model, train_source: sources.Source, test_source: sources.Source,
          strategy: tf.distribute.Strategy, epochs: int, batch_size: int, learning_rate: float,
          schedule: str, image_size: int, embed_batch_size: int, seed: int) -> dict:
    """Train the linear probe and measure it on the test split; the backbone must not change."""
    before = encoder.get_weights()
    features = {flip: backbone_features(encoder, train_source, strategy, embed_batch_size,
                                        image_size, flip) for flip in (False, True)}
    test_features = backbone_features(encoder, test_source, strategy, embed_batch_size, image_size)
    classifier = train_linear(features[False], features[True], train_source.labels,
                              train_source.num_classes, epochs, batch_size, learning_rate,
                              schedule, seed)
    if not weights_equal(before, encoder):
        raise RuntimeError("the linear probe changed the backbone weights")
    metrics = classifier.evaluate(test_features, test_source.labels, batch_size=1024,
                                  verbose=0, return_dict=True)
    return {"top1": float(metrics["top1"]), "top5": float(metrics["top5"]),
            "backbone_unchanged": True, "epochs": epochs, "batch_size": batch_size,
            "learning_rate": learning_rate, "schedule": schedule,
            "train_examples": train_source.num_examples,
            "test_examples": test_source.num_examples}


def run() -> dict:
    """Load the encoder and data named by the flags, probe, write result.json."""
    cfg, ev = cli.run_config_from_flags(), cli.section_from_flags(command_settings.EvalConfig)
    saved_model, eval_dir, strategy, train_source, test_source = evaluate.setup(
        "linear_eval", cfg, ev)
    keras.utils.set_random_seed(cfg.run.seed)
    image_size = cfg.data.image_size
    with strategy.scope():
        encoder = evaluate.load_encoder(saved_model, image_size)
    result = probe(encoder, train_source, test_source, strategy, ev.linear_epochs,
                   ev.eval_batch_size, ev.linear_learning_rate, ev.eval_schedule, image_size,
                   cfg.detection.embed_batch_size, cfg.run.seed)
    result["saved_model"] = saved_model
    path = evaluate.write_result(eval_dir, result)
    print(f"linear probe: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f} "
          f"(backbone unchanged) -> {path}", flush=True)
    return result


main = cli.main("ifnd_tf.linear_eval", run)

if __name__ == "__main__":
    cli.run(main)
