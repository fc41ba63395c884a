"""Convolution, Pooling and LRN with Caffe's geometry and numerics.

The pooling and LRN functions take plain arguments so tests can check them against a literal transcription
of Caffe's loops (tests/test_layers.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..numerics import precise_cuda_wgrad
from .base import CaffeLayer, canonical_axis, register, spatial_param
from .lrn_fused import lrn_across_channels_fused

FLT_MAX = 3.4028234663852886e38


# ------------------------------------------------------------------------------------------ Convolution


@register("Convolution")
class Convolution(CaffeLayer):
    """Caffe's ConvolutionLayer (2-D): weight (num_output, channels/group, kh, kw), bias (num_output,);
    output size floor((H + 2p - (d(k-1)+1)) / s) + 1 (``BaseConvolutionLayer::compute_output_shape``)."""

    def setup(self, bottom_shapes):
        cp = self.param.convolution_param
        shape = bottom_shapes[0]
        axis = canonical_axis(self.param, cp.axis, len(shape))
        if axis != 1 or len(shape) != 4:
            raise self.error(f"only 2-D convolution of (N, C, H, W) blobs on axis 1 is supported; bottom shape "
                             f"{shape}, axis {cp.axis}")
        if cp.HasField("kernel_h") != cp.HasField("kernel_w"):
            raise self.error("give both kernel_h and kernel_w, or kernel_size")
        if not cp.HasField("kernel_h") and len(cp.kernel_size) == 0:
            raise self.error("kernel_size (or kernel_h and kernel_w) is required")
        self.kernel = spatial_param(self.param, cp.kernel_size, cp.kernel_h, cp.kernel_w,
                                    cp.HasField("kernel_h"), 0, "kernel_size")
        self.pad = spatial_param(self.param, cp.pad, cp.pad_h, cp.pad_w,
                                 cp.HasField("pad_h") or cp.HasField("pad_w"), 0, "pad")
        self.stride = spatial_param(self.param, cp.stride, cp.stride_h, cp.stride_w,
                                    cp.HasField("stride_h") or cp.HasField("stride_w"), 1, "stride")
        self.dilation = spatial_param(self.param, cp.dilation, 0, 0, False, 1, "dilation")
        if min(self.kernel) <= 0 or min(self.stride) <= 0 or min(self.dilation) <= 0:
            raise self.error(f"kernel {self.kernel}, stride {self.stride} and dilation {self.dilation} must be > 0")
        channels = shape[1]
        self.num_output = int(cp.num_output)
        self.group = int(cp.group)
        if self.num_output <= 0:
            raise self.error("num_output must be > 0")
        if self.group <= 0 or channels % self.group or self.num_output % self.group:
            raise self.error(f"group {self.group} must divide the input channels ({channels}) and num_output "
                             f"({self.num_output})")
        self.channels = channels
        self.add_blob((self.num_output, channels // self.group) + self.kernel,
                      cp.weight_filler if cp.HasField("weight_filler") else None)
        self.bias_term = bool(cp.bias_term)
        if self.bias_term:
            self.add_blob((self.num_output,), cp.bias_filler if cp.HasField("bias_filler") else None)

    def out_shapes(self, bottom_shapes):
        out = []
        for shape in bottom_shapes:
            if len(shape) != 4 or shape[1] != self.channels:
                raise self.error(f"bottom shape {shape} does not match the layer's (N, {self.channels}, H, W)")
            hw = []
            for size, k, p, s, d in zip(shape[2:], self.kernel, self.pad, self.stride, self.dilation):
                extent = d * (k - 1) + 1
                o = (size + 2 * p - extent) // s + 1
                if o <= 0:
                    raise self.error(f"input {shape[2:]} (pad {self.pad}) is smaller than the kernel extent")
                hw.append(o)
            out.append((shape[0], self.num_output, *hw))
        return out

    def forward(self, *bottoms):
        bias = self.blobs[1] if self.bias_term else None
        conf = (self.stride, self.pad, self.dilation, self.group)
        return tuple(_ConvCaffeWgrad.apply(x, self.blobs[0], bias, *conf)
                     if x.is_cuda and precise_cuda_wgrad() and self.blobs[0].requires_grad
                     else F.conv2d(x, self.blobs[0], bias, *conf)
                     for x in bottoms)


class _ConvCaffeWgrad(torch.autograd.Function):
    """conv2d whose weight gradient is computed as Caffe computes it -- im2col, then an SGEMM against the top
    diff (``BaseConvolutionLayer::weight_cpu_gemm``) -- instead of by cuDNN: on an H100 every cuDNN
    weight-gradient algorithm (any benchmark/deterministic setting, TF32 off) put CaffeNet's grouped 5x5 conv2
    1.4e-3 (max-normalised) away from Caffe's gradient; im2col + SGEMM landed at 9e-7 there (one GEMM over the
    stacked images), and Caffe's per-image order, fed Caffe's own blobs on the CPU, gives 2.4e-7 for conv1,
    2.1e-7 for conv2 and Caffe's bits exactly for conv3-5 (tests/test_golden_g1.py). Forward and input
    gradient stay on cuDNN (they agree with Caffe to ~1e-6)."""

    @staticmethod
    def forward(ctx, x, w, b, stride, pad, dilation, groups):
        ctx.save_for_backward(x, w)
        ctx.conf = (stride, pad, dilation, groups)
        return F.conv2d(x, w, b, stride, pad, dilation, groups)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        stride, pad, dilation, groups = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if need_x:
            gx = torch.ops.aten.convolution_backward(gy, x, w, None, stride, pad, dilation, False, [0, 0], groups,
                                                     [True, False, False])[0]
        if need_w:
            gw = conv_weight_grad_im2col(x, gy, tuple(w.shape), stride, pad, dilation, groups)
        if need_b:
            gb = gy.sum(dim=(0, 2, 3))  # Caffe: the bias diff sums the top diff over num, height, width
        return gx, gw, gb, None, None, None, None


def conv_weight_grad_im2col(x, gy, w_shape, stride, pad, dilation, groups, max_elems=1 << 26):
    """dL/dW of a 2-D convolution as Caffe computes it (``BaseConvolutionLayer::weight_cpu_gemm``, called per
    image by ``ConvolutionLayer::Backward_cpu/gpu``): im2col of one image, then per group one GEMM
    ``top_diff (C_out/g x L) . col^T (L x C_in/g*kh*kw)``, accumulated over the images of the batch.

    The per-image GEMMs run as one batched GEMM over (image, group) -- every output tile of every image is
    independent work, where a single GEMM with the images stacked along K (m*L deep, only C_out/g x ckk wide)
    leaves most of a GPU idle unless the library splits K -- and the images' products are then summed. Samples
    go in chunks of at most ``max_elems`` column or partial-product entries (~256 MB at the default)."""
    n, out = x.shape[0], w_shape[0]
    cin_g, kh, kw = w_shape[1:]
    ckk, og = cin_g * kh * kw, out // groups
    length = gy.shape[2] * gy.shape[3]
    step = max(1, max_elems // max(groups * ckk * length, out * ckk))
    gw = x.new_zeros(groups, og, ckk)
    for i in range(0, n, step):
        xs, gs = x[i: i + step], gy[i: i + step]
        m = xs.shape[0]
        # (m, C*kh*kw, L) -> one (ckk, L) column buffer per (image, group): a view, no copy.
        cols = F.unfold(xs, (kh, kw), dilation=dilation, padding=pad, stride=stride).view(m * groups, ckk, length)
        top = gs.reshape(m * groups, og, length)
        part = torch.bmm(top, cols.transpose(1, 2))  # (m*g, C_out/g, ckk): each image's weight_cpu_gemm
        gw += part.view(m, groups, og, ckk).sum(0)
    return gw.view(w_shape)


# ------------------------------------------------------------------------------------------ Pooling


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool = True) -> int:
    """Caffe: ``PoolingLayer::Reshape``. Rounds up (round_mode CEIL, the default) or down, then drops a last
    window that would start inside the bottom/right padding (only checked when pad > 0)."""
    span = (size + 2 * pad - kernel) / stride  # Caffe divides in float, then ceil/floor
    out = (math.ceil(span) if ceil_mode else math.floor(span)) + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_pooled_size(size, kernel, stride, pad, ceil_mode):
    # PyTorch's pooling_output_shape, to know when its own kernels compute exactly Caffe's windows.
    if pad > kernel // 2 or size + 2 * pad < kernel:
        return None
    out = (size + 2 * pad - kernel + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_mode(size_hw, kernel, stride, pad, out_hw):
    """ceil_mode for torch's pooling if it reproduces Caffe's output size on both axes, else None."""
    for ceil_mode in (False, True):
        if all(_torch_pooled_size(n, k, s, p, ceil_mode) == o
               for n, k, s, p, o in zip(size_hw, kernel, stride, pad, out_hw)):
            return ceil_mode
    return None


def _padded_for(x, kernel, stride, pad, out_hw, value):
    # Explicit padding so that a pad-0 floor-mode pooling sees every Caffe window (sliced afterwards).
    extra = [max(0, (o - 1) * s + k - (n + 2 * p))
             for n, k, s, p, o in zip(x.shape[2:], kernel, stride, pad, out_hw)]
    return F.pad(x, (pad[1], pad[1] + extra[1], pad[0], pad[0] + extra[0]), value=value)


def max_pool(x, kernel, stride=(1, 1), pad=(0, 0), ceil_mode=True):
    """Caffe's MAX pooling (``PoolingLayer::Forward_cpu``): windows clipped to the input, output size from
    ``pooled_size``. Backward sends each gradient to the window's FIRST maximum in row-major order (Caffe's
    strict ``>`` scan); PyTorch's max_pool2d kernels scan the same way, which tests/test_layers.py checks on
    all-zero (post-ReLU) windows."""
    out_hw = [pooled_size(n, k, s, p, ceil_mode) for n, k, s, p in zip(x.shape[2:], kernel, stride, pad)]
    if min(out_hw) <= 0:
        raise ValueError(f"pooling kernel {tuple(kernel)} pad {tuple(pad)} does not fit input {tuple(x.shape[2:])}")
    mode = _torch_mode(x.shape[2:], kernel, stride, pad, out_hw)
    if mode is not None:
        return F.max_pool2d(x, kernel, stride, pad, ceil_mode=mode)
    # Padding with -FLT_MAX matches Caffe's initial value: a real input never loses a tie to padding, and a
    # window entirely in the padding yields -FLT_MAX, as Caffe's does.
    xp = _padded_for(x, kernel, stride, pad, out_hw, -FLT_MAX)
    return F.max_pool2d(xp, kernel, stride, 0)[..., : out_hw[0], : out_hw[1]]


def ave_pool_divisors(size_hw, kernel, stride, pad, out_hw) -> torch.Tensor:
    """Caffe's AVE ``pool_size`` per output: the window clipped to the *padded* input (pad counts, the
    overhang past the padding does not)."""
    axes = []
    for n, k, s, p, o in zip(size_hw, kernel, stride, pad, out_hw):
        start = torch.arange(o) * s - p
        end = torch.clamp(start + k, max=n + p)
        axes.append((end - start).to(torch.float32))
    return axes[0][:, None] * axes[1][None, :]


def ave_pool(x, kernel, stride=(1, 1), pad=(0, 0), ceil_mode=True):
    """Caffe's AVE pooling: the sum over the window clipped to the input, divided by the window clipped to the
    padded input (``PoolingLayer::Forward_cpu``); backward spreads each gradient over the clipped window
    with the same divisor (autograd of this)."""
    out_hw = [pooled_size(n, k, s, p, ceil_mode) for n, k, s, p in zip(x.shape[2:], kernel, stride, pad)]
    if min(out_hw) <= 0:
        raise ValueError(f"pooling kernel {tuple(kernel)} pad {tuple(pad)} does not fit input {tuple(x.shape[2:])}")
    mode = _torch_mode(x.shape[2:], kernel, stride, pad, out_hw)
    if mode is not None:
        # PyTorch's count_include_pad divisor is Caffe's pool_size exactly.
        return F.avg_pool2d(x, kernel, stride, pad, ceil_mode=mode, count_include_pad=True)
    xp = _padded_for(x, kernel, stride, pad, out_hw, 0.0)
    sums = F.avg_pool2d(xp, kernel, stride, 0, divisor_override=1)[..., : out_hw[0], : out_hw[1]]
    div = ave_pool_divisors(x.shape[2:], kernel, stride, pad, out_hw).to(device=x.device, dtype=x.dtype)
    return sums / div


@register("Pooling")
class Pooling(CaffeLayer):
    """Caffe's PoolingLayer, MAX and AVE (STOCHASTIC is not implemented)."""

    def setup(self, bottom_shapes):
        pp = self.param.pooling_param
        self.method = pp.DESCRIPTOR.fields_by_name["pool"].enum_type.values_by_number[pp.pool].name
        if self.method not in ("MAX", "AVE"):
            raise self.error(f"pool: {self.method} is not supported (MAX and AVE are)")
        self.global_pooling = bool(pp.global_pooling)
        has_hw = pp.HasField("kernel_h") or pp.HasField("kernel_w")
        if self.global_pooling:
            if pp.HasField("kernel_size") or has_hw:
                raise self.error("with global_pooling: true the kernel size cannot be given")
        else:
            if pp.HasField("kernel_size") == (pp.HasField("kernel_h") and pp.HasField("kernel_w")):
                raise self.error("give kernel_size, or kernel_h and kernel_w (both), not both forms")
        self._kernel = ((pp.kernel_h, pp.kernel_w) if has_hw else (pp.kernel_size, pp.kernel_size))
        self.pad = ((pp.pad_h, pp.pad_w) if pp.HasField("pad_h") or pp.HasField("pad_w") else (pp.pad, pp.pad))
        self.stride = ((pp.stride_h, pp.stride_w) if pp.HasField("stride_h") or pp.HasField("stride_w")
                       else (pp.stride, pp.stride))
        self.pad = tuple(int(v) for v in self.pad)
        self.stride = tuple(int(v) for v in self.stride)
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("with global_pooling: true only pad 0 and stride 1 are allowed")
        if min(self.stride) <= 0:
            raise self.error(f"stride {self.stride} must be > 0")
        if not self.global_pooling:
            if min(self._kernel) <= 0:
                raise self.error(f"kernel {tuple(self._kernel)} must be > 0")
            if self.pad[0] >= self._kernel[0] or self.pad[1] >= self._kernel[1]:
                raise self.error(f"pad {self.pad} must be smaller than the kernel {tuple(self._kernel)}")
        self.ceil_mode = pp.round_mode == pp.CEIL

    def kernel_for(self, shape):
        """The kernel for a bottom of ``shape`` (global pooling: the whole H x W)."""
        return tuple(int(v) for v in (shape[2:] if self.global_pooling else self._kernel))

    def out_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"input must have 4 axes (num, channels, height, width), got shape {shape}")
        k = self.kernel_for(shape)
        hw = [pooled_size(n, kk, s, p, self.ceil_mode) for n, kk, s, p in zip(shape[2:], k, self.stride, self.pad)]
        if min(hw) <= 0:
            raise self.error(f"kernel {k} with pad {self.pad} does not fit the input {shape[2:]}")
        return [(shape[0], shape[1], *hw)]

    def forward(self, x):
        k = self.kernel_for(x.shape)
        fn = max_pool if self.method == "MAX" else ave_pool
        return (fn(x, k, self.stride, self.pad, self.ceil_mode),)


# ------------------------------------------------------------------------------------------ LRN


def lrn_across_channels(x, size: int, alpha: float, beta: float, k: float = 1.0):
    """Caffe's ``LRNLayer::CrossChannelForward``: y = x * (k + alpha/size * sum of x^2 over the ``size``
    channels centred on c, zero-padded at the ends)^(-beta). alpha is divided by size (as PyTorch's
    LocalResponseNorm does; some converters forget it)."""
    pre = (size - 1) // 2
    channels = x.shape[1]
    sq = F.pad(x * x, (0, 0, 0, 0, pre, size - 1 - pre))
    window = sq[:, 0:channels]
    for i in range(1, size):
        window = window + sq[:, i: i + channels]
    scale = k + (alpha / size) * window
    return x * scale.pow(-beta)


def lrn_within_channel(x, size: int, alpha: float, beta: float):
    """Caffe's WITHIN_CHANNEL LRN as ``LRNLayer::LayerSetUp`` composes it: split, square (Power), AVE pooling
    (kernel size, pad (size-1)/2, stride 1, so a divisor of size^2), Power (shift 1, scale alpha, power -beta;
    Caffe ignores ``k`` here) and an Eltwise PROD with the input."""
    pre = (size - 1) // 2
    pooled = ave_pool(x * x, (size, size), (1, 1), (pre, pre), True)
    return x * (1.0 + alpha * pooled).pow(-beta)


@register("LRN")
class LRN(CaffeLayer):
    """Caffe's LRNLayer, ACROSS_CHANNELS and WITHIN_CHANNEL."""

    def setup(self, bottom_shapes):
        lp = self.param.lrn_param
        self.size = int(lp.local_size)
        if self.size % 2 != 1:
            raise self.error(f"LRN only supports odd values for local_size, got {self.size}")
        self.alpha, self.beta, self.k = float(lp.alpha), float(lp.beta), float(lp.k)
        self.within = lp.norm_region == lp.WITHIN_CHANNEL

    def out_shapes(self, bottom_shapes):
        shape = bottom_shapes[0]
        if len(shape) != 4:
            raise self.error(f"input must have 4 axes (num, channels, height, width), got shape {shape}")
        return [shape]

    def forward(self, x):
        if self.within:
            return (lrn_within_channel(x, self.size, self.alpha, self.beta),)
        if not x.is_cuda and x.requires_grad and torch.is_grad_enabled():
            # Training on the CPU: one autograd node with Caffe's closed-form backward
            # (LRNLayer::CrossChannelBackward_cpu), saving x and scale only. Its forward is these same ops in
            # the same order (bit-identical); its backward is within ~1e-7 of autograd through them, and ~1.8x
            # faster at the small net's shapes (tests/test_fast.py). On CUDA, the engine's NetPlan fuses instead.
            return (lrn_across_channels_fused(x, self.size, self.alpha, self.beta, self.k),)
        return (lrn_across_channels(x, self.size, self.alpha, self.beta, self.k),)
