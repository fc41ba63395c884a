"""InnerProduct, Dropout and the element-wise neuron layers (ReLU, Sigmoid, TanH, AbsVal, Power)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import caffe_rng
from .base import CaffeLayer, canonical_axis, count, register


@register("InnerProduct")
class InnerProduct(CaffeLayer):
    """Caffe's InnerProductLayer: the bottom flattened from ``axis`` on (C-major: C, then H, then W) times
    the weight (num_output, K) (``transpose: true`` stores it (K, num_output)), plus bias (num_output,)."""

    def setup(self, bottom_shapes):
        ip = self.param.inner_product_param
        shape = bottom_shapes[0]
        self.axis = canonical_axis(self.param, ip.axis, len(shape))
        self.num_output = int(ip.num_output)
        if self.num_output <= 0:
            raise self.error("num_output must be > 0")
        self.k = count(shape, self.axis)
        self.transpose = bool(ip.transpose)
        wshape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        self.add_blob(wshape, ip.weight_filler if ip.HasField("weight_filler") else None)
        self.bias_term = bool(ip.bias_term)
        if self.bias_term:
            self.add_blob((self.num_output,), ip.bias_filler if ip.HasField("bias_filler") else None)

    def out_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) <= self.axis or count(shape, self.axis) != self.k:
            raise self.error(f"bottom shape {shape} flattens to {count(shape, self.axis)} inputs from axis "
                             f"{self.axis}; the weights expect {self.k}")
        return [tuple(shape[: self.axis]) + (self.num_output,)]

    def forward(self, x):
        if x.dim() <= self.axis or count(x.shape, self.axis) != self.k:
            raise self.error(f"bottom shape {tuple(x.shape)} does not flatten to {self.k} inputs from axis "
                             f"{self.axis}")
        lead = tuple(x.shape[: self.axis])
        flat = x.reshape(count(lead), self.k)
        w = self.blobs[0].t() if self.transpose else self.blobs[0]
        y = F.linear(flat, w, self.blobs[1] if self.bias_term else None)
        return (y.reshape(*lead, self.num_output),)


@register("Dropout")
class Dropout(CaffeLayer):
    """Caffe's DropoutLayer: in TRAIN each unit is kept with probability 1 - dropout_ratio and scaled by
    1 / (1 - dropout_ratio); in TEST it is the identity. Follows the net's phase; a TRAIN net put in
    ``eval()`` mode also stops dropping (a convenience Caffe has no equivalent of)."""

    def setup(self, bottom_shapes):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")

    def out_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        if self.phase == "TRAIN" and self.training and self.ratio > 0:
            rng = caffe_rng.current()
            if rng is not None and x.device.type == "cpu":
                # A seeded CPU run: Caffe's DropoutLayer::Forward_cpu draws its uint mask with
                # caffe_rng_bernoulli(count, 1. - threshold_) -- a double p -- and multiplies by the float scale_.
                ratio = np.float32(self.ratio)
                mask = rng.main.bernoulli(x.numel(), 1.0 - float(ratio), real=np.float64)
                scale = np.float32(1.0 / (1.0 - float(ratio)))
                return (x * torch.from_numpy(mask.astype(np.float32)).reshape(x.shape) * float(scale),)
            # F.dropout keeps with probability 1 - p and multiplies by 1 / (1 - p), Caffe's scale_.
            return (F.dropout(x, self.ratio, training=True),)
        return (x,)


class _Neuron(CaffeLayer):
    """An element-wise layer (Caffe's NeuronLayer): one bottom, one top of the same shape."""

    def out_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]


@register("ReLU")
class ReLU(_Neuron):
    """Caffe's ReLULayer: max(x, 0) + negative_slope * min(x, 0). Backward uses the mask x > 0 (slope
    where x <= 0), which is what F.relu / F.leaky_relu do, also when run in place on the top."""

    def setup(self, bottom_shapes):
        self.slope = float(self.param.relu_param.negative_slope)

    def forward(self, x):
        if self.slope == 0.0:
            return (F.relu(x),)
        return (F.leaky_relu(x, self.slope),)


@register("Sigmoid")
class Sigmoid(_Neuron):
    def forward(self, x):
        return (torch.sigmoid(x),)


@register("TanH")
class TanH(_Neuron):
    def forward(self, x):
        return (torch.tanh(x),)


@register("AbsVal")
class AbsVal(_Neuron):
    def forward(self, x):
        return (torch.abs(x),)


@register("Power")
class Power(_Neuron):
    """Caffe's PowerLayer: (shift + scale * x) ^ power."""

    def setup(self, bottom_shapes):
        pp = self.param.power_param
        self.power, self.scale, self.shift = float(pp.power), float(pp.scale), float(pp.shift)

    def forward(self, x):
        base = x * self.scale + self.shift if (self.scale != 1.0 or self.shift != 0.0) else x
        return (base if self.power == 1.0 else base.pow(self.power),)
