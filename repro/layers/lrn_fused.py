"""Caffe's cross-channel LRN as one autograd node with Caffe's own backward formula.

The layer in ``repro/layers/vision.py`` (``lrn_across_channels``) builds the window sum of x^2 from ``size``
shifted slices, so autograd records ~2*size elementwise nodes and keeps their inputs alive until backward:
at CaffeNet's norm1 (256 x 96 x 27 x 27 floats, 72 MB) that is ~10 saved tensors. Caffe's
``LRNLayer::CrossChannelForward_gpu`` instead keeps one ``scale_`` blob and computes the backward in closed
form (``LRNLayer::CrossChannelBackward_gpu``):

    scale   = k + alpha / size * sum_{c' in window(c)} x[c']^2
    top     = x * scale^(-beta)
    bottom' = top' * scale^(-beta)
              - (2 * alpha * beta / size) * x * sum_{c' in window(c)} top'[c'] * top[c'] / scale[c']

(the window is symmetric because Caffe only allows odd local_size, so the same window sum serves the forward
and the backward). On CUDA both window sums are one channel-axis ``avg_pool3d`` with ``divisor_override=1``
(a plain sum, as torch's own ``local_response_norm`` forms it: one kernel); on the CPU they are ``size``
shifted slices added in place, in the layer's own order and in the tensor's memory format (the CPU plan runs
channels-last, which avg_pool3d would first copy out of: 1.5x slower than the layer there, where the slices
make the fused LRN ~1.8x faster than the layer). Only ``x`` and ``scale`` are saved.

Numerically this is Caffe's float32 arithmetic with a different summation order of ``size`` terms (Caffe's
own CPU and GPU kernels already differ in that order): results agree with the layer to ~1e-7 relative
(tests/test_fast.py, which also runs the golden G1 CaffeNet through it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def channel_window_sum(x: torch.Tensor, size: int) -> torch.Tensor:
    """sum over the ``size`` channels centred on each channel (zero beyond the ends) of an N x C x H x W
    tensor; ``size`` odd."""
    pre = (size - 1) // 2
    n, c, h, w = x.shape
    if not x.is_cuda:
        # The layer's summation (lrn_across_channels): zero-pad the channel axis, add the size shifted slices
        # in order -- bit-identical to it, and no copy out of channels-last.
        padded = F.pad(x, (0, 0, 0, 0, pre, size - 1 - pre))
        s = padded[:, 0:c].clone()
        for i in range(1, size):
            s += padded[:, i: i + c]
        return s
    # (N, 1, C, H, W): pool over the channel axis only; count_include_pad with divisor 1 = zero-padded sum.
    s = F.avg_pool3d(x.reshape(n, 1, c, h, w), (size, 1, 1), stride=1, padding=(pre, 0, 0),
                     count_include_pad=True, divisor_override=1)
    return s.reshape(n, c, h, w)


class CrossChannelLRN(torch.autograd.Function):
    """``CrossChannelLRN.apply(x, size, alpha, beta, k)``: Caffe's ACROSS_CHANNELS LRN (see module doc)."""

    @staticmethod
    def forward(ctx, x, size: int, alpha: float, beta: float, k: float):
        if x.is_cuda:
            x = x.contiguous()  # the avg_pool3d window sum views it as N x 1 x C x H x W
        # Caffe: scale = k + alpha/size * window sum of x^2 (LRNFillScale); top = x * scale^-beta
        scale = channel_window_sum(x * x, size).mul_(alpha / size).add_(k)
        ctx.save_for_backward(x, scale)
        ctx.args = (size, alpha, beta)
        return x * scale.pow(-beta)

    @staticmethod
    def backward(ctx, grad_top):
        x, scale = ctx.saved_tensors
        size, alpha, beta = ctx.args
        g = grad_top.contiguous() if grad_top.is_cuda else grad_top
        scale_pow = scale.pow(-beta)
        top = x * scale_pow
        # Caffe: LRNComputeDiff: accum_ratio = window sum of top_diff * top / scale
        ratio = channel_window_sum(g * top / scale, size)
        grad_x = g * scale_pow - (2.0 * alpha * beta / size) * x * ratio
        return grad_x, None, None, None, None


def lrn_across_channels_fused(x: torch.Tensor, size: int, alpha: float, beta: float, k: float = 1.0) -> torch.Tensor:
    """Caffe's ACROSS_CHANNELS LRN of an N x C x H x W tensor (odd ``size``), one autograd node."""
    if size % 2 != 1:
        raise ValueError(f"LRN only supports odd values for local_size, got {size}")
    if x.dim() != 4:
        raise ValueError(f"LRN input must be N x C x H x W, got shape {tuple(x.shape)}")
    return CrossChannelLRN.apply(x, int(size), float(alpha), float(beta), float(k))
