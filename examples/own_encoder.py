"""Your own Keras encoder and your own tf.data of images, trained with MoCo v2 + IFND.

    python -m examples.own_encoder --out=/tmp/own_encoder --epochs=4   (from the repository root)

Any functional Keras model mapping images in [0, 1] to features works as the encoder (here a
tiny convnet; `keras.applications.MobileNetV3Small(weights=None, include_top=False,
pooling="avg", input_shape=...)` too): MomentumContrast adds the MoCo v2 head and builds the key
encoder as its momentum copy. The data is any tf.data of (dataset index, image).
"""
import argparse
import os

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

from ifnd_tf import (
                     AcceptanceSchedule,
                     ClusterLabels,
                     KMeansSettings,
                     MoCoConfig,
                     MomentumContrast,
                     PseudoLabelCallback,
                     export_encoder,
                     two_view_batches,
)

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="/tmp/own_encoder")
parser.add_argument("--epochs", type=int, default=4)
args = parser.parse_args()
keras.utils.set_random_seed(0)

# 1. Your images (uint8 [N, H, W, C]), each paired with its index: the queue and the
#    detector key on it. Two augmented views per image for training, the plain image for
#    the per-epoch clustering pass.
images = (load_digits().images * 255 / 16).astype(np.uint8)[..., None]  # 1,797 8x8 digits
images = tf.image.resize(images, (16, 16)).numpy().astype(np.uint8)
indexed = tf.data.Dataset.from_tensor_slices((np.arange(len(images)), images))
train = two_view_batches(indexed.shuffle(len(images), seed=0), batch_size=64, image_size=16)
plain = indexed.batch(256).map(lambda i, x: (i, tf.image.grayscale_to_rgb(tf.cast(x, "float32")
                                                                          / 255)))

# 2. Your encoder: images in [0, 1] -> a feature map or vector.
encoder = keras.Sequential([keras.Input((16, 16, 3)),
                            keras.layers.Conv2D(16, 3, 2, activation="relu"),
                            keras.layers.BatchNormalization(),
                            keras.layers.Conv2D(32, 3, 2, activation="relu"),
                            keras.layers.GlobalAveragePooling2D()])

# 3. MoCo v2 with the paper's detector: k-means at k = 10 and 20, labels of the most
#    confident alpha of each cluster accepted; alpha grows after one warm-up epoch.
moco = MomentumContrast(encoder, num_examples=len(images),
                        detector=ClusterLabels(KMeansSettings((10, 20), backend="sklearn")),
                        moco=MoCoConfig(queue_size=512, momentum=0.99, key_bn_splits=1))
moco.compile(optimizer=keras.optimizers.SGD(0.06, momentum=0.9))
schedule = AcceptanceSchedule(total_epochs=args.epochs, warmup_epochs=1)
history = moco.fit(train.repeat(), epochs=args.epochs, steps_per_epoch=len(images) // 64,
                   callbacks=[PseudoLabelCallback(schedule, plain)], verbose=2)

# 4. The trained query encoder (backbone + head) as a SavedModel for fine-tuning.
saved_model = export_encoder(moco.encoder, os.path.join(args.out, "export"))
print(f"masked per anchor, last epoch: {history.history['masked'][-1]:.1f}; "
      f"exported to {saved_model}")
