"""Semi-supervised fine-tuning: the whole encoder plus a linear head, on 1 % / 10 % of the labels.

    python -m ifnd_tf.finetune --flagfile=flags/fashion_mnist.cfg \
        --saved_model=runs/fashion_mnist/export/saved_model

For each --finetune_fractions value (with its --finetune_epochs): a class-balanced, seeded
labelled subset of the train split; the encoder loaded afresh from export/encoder.keras next
to --saved_model (default <--model_dir>/export/saved_model); a Dense head on the backbone
features; random resized crop + flip, SGD with momentum and no weight decay (SimCLR's
fine-tuning recipe); top-1 / top-5 on the whole test split. Writes result.json to
--eval_dir, default <run>/finetune beside the export folder.
"""
if __name__ == "__main__":  # before TensorFlow loads: fast allocator (ifnd_tf/runtime.py)
    from ifnd_tf import runtime

    runtime.prepare()

import keras
import tensorflow as tf

from ifnd_tf import cli, command_settings, data, evaluate, sources


def classifier(encoder: keras.Model, num_classes: int) -> keras.Model:
    """Backbone of `encoder` (its projection head dropped) followed by a Dense layer."""
    logits = keras.layers.Dense(num_classes, name="logits")(encoder.output["features"])
    return keras.Model(encoder.input, logits, name="finetuned")


def finetune(saved_model: str, train_source: sources.Source, test_source: sources.Source,
             strategy: tf.distribute.Strategy, fraction: float, epochs: int, batch_size: int,
             learning_rate: float, schedule: str, image_size: int, seed: int) -> dict:
    """Fine-tune a fresh copy of the exported encoder on a labelled subset; test accuracy."""
    indices = evaluate.labelled_subset(train_source.labels, fraction, seed)
    train_data = data.labelled_pipeline(train_source, batch_size, image_size, indices,
                                            train=True, seed=seed)
    test_data = data.labelled_pipeline(test_source, batch_size, image_size)
    steps = epochs * -(-len(indices) // batch_size)
    with strategy.scope():
        encoder = evaluate.load_encoder(saved_model, image_size)
        model = classifier(encoder, train_source.num_classes)
        evaluate.compile_classifier(model, evaluate.sgd(learning_rate, steps, schedule))
    model.fit(train_data, epochs=epochs, verbose=0, shuffle=False)  # shuffled by the pipeline
    metrics = model.evaluate(test_data, verbose=0, return_dict=True)
    return {"fraction": fraction, "labelled_examples": len(indices), "epochs": epochs,
            "top1": float(metrics["top1"]), "top5": float(metrics["top5"])}


def run() -> dict:
    """Fine-tune once per labelled fraction named by the flags; write result.json."""
    cfg, ev = cli.run_config_from_flags(), cli.section_from_flags(command_settings.EvalConfig)
    saved_model, eval_dir, strategy, train_source, test_source = evaluate.setup(
        "finetune", cfg, ev)
    runs = []
    for fraction, epochs in ev.finetune_plan():
        keras.utils.set_random_seed(cfg.run.seed)
        result = finetune(saved_model, train_source, test_source, strategy, fraction, epochs,
                          ev.eval_batch_size, ev.finetune_learning_rate, ev.eval_schedule,
                          cfg.data.image_size, cfg.run.seed)
        print(f"fine-tuned on {fraction:.0%} of the labels ({result['labelled_examples']} "
              f"examples, {epochs} epochs): top-1 {result['top1']:.4f}, "
              f"top-5 {result['top5']:.4f}", flush=True)
        runs.append(result)
    summary = {"saved_model": saved_model, "learning_rate": ev.finetune_learning_rate,
               "batch_size": ev.eval_batch_size, "schedule": ev.eval_schedule, "runs": runs}
    print(f"wrote {evaluate.write_result(eval_dir, summary)}", flush=True)
    return summary


main = cli.main("ifnd_tf.finetune", run)

if __name__ == "__main__":
    cli.run(main)
