"""SavedModel export of the query encoder for downstream fine-tuning.

The export directory holds:
  saved_model/   tf.saved_model.load(path).features(x) / .embedding(x) / .serve(x)
                 x: float32 [batch, H, W, 3] in [0, 1]
  encoder.keras  the same encoder as a Keras model (keras.models.load_model), trainable.

To fine-tune from the SavedModel alone, use `SavedModelLayer(path, call_endpoint="features",
trainable=True)`: Keras 3.15's own `keras.layers.TFSMLayer` names its weights after the loaded
TF variables, whose names always end in ':0' (TensorFlow appends it; no export can avoid it), and
Adam-like optimizers then fail to name their slots ("'conv1_conv_kernel:0_momentum' is not a
valid scope name"); plain SGD has no slots and works with either layer (docs/design.md,
"Export").
"""
import os

import keras
import tensorflow as tf

from ifnd_tf import keras_compat


def export_encoder(encoder: keras.Model, export_dir: str) -> str:
    """Write the encoder with `features`, `embedding` and `serve` (= embedding) signatures."""
    spec = tf.TensorSpec((None, *encoder.input.shape[1:]), tf.float32, name="images")
    archive = keras.export.ExportArchive()
    archive.track(encoder)
    archive.add_endpoint("features", lambda x: encoder(x, training=False)["features"], [spec])
    archive.add_endpoint("embedding", lambda x: encoder(x, training=False)["embedding"], [spec])
    archive.add_endpoint("serve", lambda x: encoder(x, training=False)["embedding"], [spec])
    saved_model_dir = os.path.join(export_dir, "saved_model")
    archive.write_out(saved_model_dir, verbose=False)
    encoder.save(os.path.join(export_dir, "encoder.keras"))
    return saved_model_dir


# Re-exported: fine-tuning from the SavedModel alone (keras_compat.py says why it exists).
SavedModelLayer = keras_compat.SavedModelLayer
