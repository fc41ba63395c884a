"""One ``nn.Module`` per Caffe layer type, with Caffe's numerics (see base.py for the common contract).

``build_layer(layer_param, bottom_shapes, phase) -> CaffeLayer``; ``layer.forward(*bottoms) -> tuple(tops)``,
``layer.caffe_blobs`` (learnable blobs in Caffe shapes: weight, then bias), ``layer.out_shapes(shapes)``.
"""
from . import common, inputs, loss, norm, shape, vision  # noqa: F401  (registers the layer types)
from .base import CaffeLayer, LayerError, build_layer, layer_types, phase_name
from .loss import accuracy, softmax_loss
from .vision import ave_pool, lrn_across_channels, lrn_within_channel, max_pool, pooled_size

LAYER_TYPES = layer_types()

__all__ = [
    "CaffeLayer", "LayerError", "build_layer", "layer_types", "phase_name", "LAYER_TYPES",
    "accuracy", "softmax_loss", "ave_pool", "max_pool", "pooled_size", "lrn_across_channels",
    "lrn_within_channel",
]
