"""Workarounds for Keras 3.15 on the TensorFlow backend, in one place.

Each says what fails without it; when Keras fixes one, delete it here and its one caller.
"""
import keras
import tensorflow as tf


class NoSymbolicBuild:
    """Mixin for a Model whose variables exist before fit: skip Keras' symbolic build.

    Keras would pull one batch, average it across replicas and restart the input pipeline;
    under MultiWorkerMirroredStrategy that average fails on the int64 index tensors ("Attempt
    to convert a value (PerReplica...) to a Tensor").
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Encoders, optimizer and metrics are built already."""


def step_results(results: dict, strategy: tf.distribute.Strategy) -> dict:
    """train_step's results as Keras can reduce them: under MultiWorkerMirroredStrategy Keras
    averages results across workers with reduce(..., axis=0), which needs an axis to reduce;
    a length-1 axis gives back the scalar."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return {name: value[None] for name, value in results.items()}
    return results


@keras.saving.register_keras_serializable(package="ifnd_tf")
class SavedModelLayer(keras.layers.TFSMLayer):
    """keras.layers.TFSMLayer whose weights have valid Keras names (no ':0'), so any optimizer
    can fine-tune through it. Arguments as TFSMLayer's.

    TFSMLayer names its weights after the loaded TF variables, whose names always end in ':0',
    and Adam-like optimizers then fail to name their slots ("'conv1_conv_kernel:0_momentum' is
    not a valid scope name"); plain SGD has no slots and works with either layer.
    """

    def _add_existing_weight(self, weight):
        variable = keras.Variable(initializer=weight, trainable=weight.trainable,
                                  dtype=weight.dtype, shape=weight.shape,
                                  name=weight.name.split(":")[0].replace("/", "_"))
        self._track_variable(variable)


# Keras 3.15 turns jit_compile off by itself whenever TF op determinism is on (a UserWarning
# only): config.py refuses --jit_compile=on with --deterministic, builder.describe_step says
# what really compiled.
JIT_DECLINED = "Keras declined to compile this model"
