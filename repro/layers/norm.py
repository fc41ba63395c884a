"""BatchNorm, Scale and Bias: enough for the VGG/ResNet/GoogLeNet-style prototxts of Caffe's model zoo."""
from __future__ import annotations

import torch

from .base import CaffeLayer, canonical_axis, register


@register("BatchNorm")
class BatchNorm(CaffeLayer):
    """Caffe's BatchNormLayer: normalisation only (an affine Scale layer usually follows). Three blobs:
    running mean sum, running variance sum (C,) and the scale factor (1,); the statistics are mean/factor
    and var/factor. They are not learned (Caffe forces their lr_mult to 0): requires_grad is False and a
    TRAIN-phase forward updates them in place, as ``BatchNormLayer::Forward_cpu`` does."""

    def setup(self, bottom_shapes):
        bp = self.param.batch_norm_param
        shape = bottom_shapes[0]
        self.use_global_stats = (bool(bp.use_global_stats) if bp.HasField("use_global_stats")
                                 else self.phase == "TEST")
        self.fraction = float(bp.moving_average_fraction)
        self.eps = float(bp.eps)
        self.channels = 1 if len(shape) == 1 else shape[1]
        for s in ((self.channels,), (self.channels,), (1,)):
            self.add_blob(s).requires_grad_(False)
        for i, spec in enumerate(self.param.param):
            if spec.HasField("lr_mult") and spec.lr_mult != 0:
                raise self.error(f"param {i}: cannot configure batch normalization statistics as layer "
                                 f"parameters (lr_mult must be 0)")

    def out_shapes(self, bottom_shapes):
        return [bottom_shapes[0]]

    def forward(self, x):
        dims = [0] + list(range(2, x.dim()))
        view = (1, self.channels) + (1,) * (x.dim() - 2)
        mean_sum, var_sum, factor = self.blobs
        if self.use_global_stats:
            f = factor.detach()[0]
            scale = torch.where(f == 0, torch.zeros_like(f), 1.0 / f)
            mean, var = mean_sum.detach() * scale, var_sum.detach() * scale
        else:
            mean = x.mean(dim=dims)
            var = ((x - mean.reshape(view)) ** 2).mean(dim=dims)
            with torch.no_grad():
                m = x.numel() // self.channels
                correction = m / (m - 1) if m > 1 else 1.0
                factor.mul_(self.fraction).add_(1.0)
                mean_sum.mul_(self.fraction).add_(mean.detach())
                var_sum.mul_(self.fraction).add_(var.detach() * correction)
        return ((x - mean.reshape(view)) / torch.sqrt(var.reshape(view) + self.eps),)


def _affine_shape(layer, bottom, axis, num_axes):
    start = canonical_axis(layer.param, axis, len(bottom)) if len(bottom) else 0
    if num_axes < -1:
        raise layer.error(f"num_axes must be >= -1, got {num_axes}")
    end = len(bottom) if num_axes == -1 else start + num_axes
    if end > len(bottom):
        raise layer.error(f"axis {axis} + num_axes {num_axes} exceeds the bottom's {len(bottom)} axes")
    return start, tuple(bottom[start:end])


def _broadcast(t, start, x_dim):
    return t.reshape((1,) * start + tuple(t.shape) + (1,) * (x_dim - start - t.dim()))


class _Affine(CaffeLayer):
    min_bottoms, max_bottoms = 1, 2

    def out_shapes(self, bottom_shapes):
        x = bottom_shapes[0]
        if tuple(x[self.start: self.start + len(self.pshape)]) != self.pshape:
            raise self.error(f"bottom shape {x} does not have {self.pshape} from axis {self.start}")
        return [x]


@register("Scale")
class Scale(_Affine):
    """Caffe's ScaleLayer: x * scale (+ bias), the scale learned (default filler constant 1) or taken from
    a second bottom, broadcast over the axes outside [axis, axis + num_axes)."""

    def setup(self, bottom_shapes):
        sp = self.param.scale_param
        if len(bottom_shapes) == 2:
            axis_src = bottom_shapes[1]
            self.start = canonical_axis(self.param, sp.axis, len(bottom_shapes[0]))
            self.pshape = tuple(axis_src)
        else:
            self.start, self.pshape = _affine_shape(self, bottom_shapes[0], sp.axis, sp.num_axes)
            filler = sp.filler if sp.HasField("filler") else _constant_one(self.param)
            self.add_blob(self.pshape, filler)
        self.bias_term = bool(sp.bias_term)
        if self.bias_term:
            self.add_blob(self.pshape, sp.bias_filler if sp.HasField("bias_filler") else None)
        self.learned_scale = len(bottom_shapes) == 1

    def forward(self, x, *scale_bottom):
        scale = self.blobs[0] if self.learned_scale else scale_bottom[0]
        y = x * _broadcast(scale, self.start, x.dim())
        if self.bias_term:
            y = y + _broadcast(self.blobs[-1], self.start, x.dim())
        return (y,)


@register("Bias")
class Bias(_Affine):
    """Caffe's BiasLayer: x + bias, learned (default filler constant 0) or from a second bottom."""

    def setup(self, bottom_shapes):
        bp = self.param.bias_param
        if len(bottom_shapes) == 2:
            self.start = canonical_axis(self.param, bp.axis, len(bottom_shapes[0]))
            self.pshape = tuple(bottom_shapes[1])
        else:
            self.start, self.pshape = _affine_shape(self, bottom_shapes[0], bp.axis, bp.num_axes)
            self.add_blob(self.pshape, bp.filler if bp.HasField("filler") else None)
        self.learned = len(bottom_shapes) == 1

    def forward(self, x, *bias_bottom):
        bias = self.blobs[0] if self.learned else bias_bottom[0]
        return (x + _broadcast(bias, self.start, x.dim()),)


def _constant_one(layer_param):
    # Caffe: ScaleLayer::LayerSetUp uses a constant 1 filler when none is given.
    filler = type(layer_param.scale_param.filler)()
    filler.type = "constant"
    filler.value = 1.0
    return filler
