"""Exact multiply-add counts of a Keras model's convolutions and dense layers.

The convention of the published ResNet numbers (ResNet-50 at 224 px: 4.09 G multiply-adds,
torchvision's "GFLOPS" column): every Conv2D / DepthwiseConv2D / SeparableConv2D / Dense
counted as output elements x kernel fan-in; BatchNorm, activations, additions and pooling
(memory-bound, ~1 % of the multiply-adds) are left out. FLOPs = 2 x multiply-adds. Training
costs ~3 forwards (the backward pass computes the gradients of the inputs and of the weights,
each ~ one forward).
"""
import math

import keras

FLOPS_PER_MAC = 2
BACKWARD_FORWARDS = 2  # the backward pass, in forwards (input and weight gradients)


def _elements(shape) -> int:
    """Output elements per example (the batch axis left out)."""
    return math.prod(int(d) for d in shape[1:])


def layer_macs(layer: keras.layers.Layer) -> int:
    """Multiply-adds of one call of `layer` on one example (0 for layers not counted)."""
    if isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw, cin, multiplier = layer.depthwise_kernel.shape
        out = layer.output.shape
        positions = int(out[1]) * int(out[2])
        return positions * (kh * kw * cin * multiplier + cin * multiplier * int(out[3]))
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, cin, multiplier = layer.kernel.shape
        return _elements(layer.output.shape) * kh * kw  # one kh x kw filter per output channel
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw, fan_in_per_group, _ = layer.kernel.shape  # (kh, kw, cin / groups, cout)
        return _elements(layer.output.shape) * kh * kw * fan_in_per_group
    if isinstance(layer, keras.layers.Dense):
        return _elements(layer.output.shape) * int(layer.kernel.shape[0])
    return 0


def leaf_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer that is not itself a model, nested models (keras.applications) opened."""
    result = []
    for layer in model.layers:
        result += leaf_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return result


def model_macs(model: keras.Model, exclude: tuple[str, ...] = ()) -> int:
    """Multiply-adds of one forward pass of `model` on one example; layers named in `exclude`
    (e.g. the MoCo head, "head_hidden", "head_out") are left out."""
    return sum(layer_macs(layer) for layer in leaf_layers(model) if layer.name not in exclude)


HEAD_LAYERS = ("head_hidden", "head_out")  # encoders._add_head


def encoder_macs(encoder: keras.Model) -> dict[str, int]:
    """{"backbone", "head", "encoder"} multiply-adds per example of an ifnd_tf encoder."""
    total = model_macs(encoder)
    backbone = model_macs(encoder, exclude=HEAD_LAYERS)
    return {"backbone": backbone, "head": total - backbone, "encoder": total}


def trainable_parameters(model: keras.Model, exclude: tuple[str, ...] = ()) -> int:
    """Trainable weights (conv kernels, BatchNorm gamma / beta, dense kernels and biases)."""
    return sum(math.prod(w.shape) for layer in leaf_layers(model) if layer.name not in exclude
               for w in layer.trainable_weights)
