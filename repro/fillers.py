"""Caffe's fillers (include/caffe/filler.hpp) on torch tensors in Caffe's blob shapes.

``fill_(tensor, filler_param, generator=None)`` fills ``tensor`` in place the way Caffe's ``GetFiller(param)
->Fill(blob)`` does: same distribution, same fan computation, same parameter checks. The random numbers
themselves come from torch (an optional ``torch.Generator`` makes them reproducible, the analogue of the
solver's ``random_seed``), so values are equal to Caffe's in distribution, not bit for bit -- except in a
seeded run on the CPU (``repro.caffe_rng``: a :class:`~repro.caffe_rng.CaffeRNG` passed as ``generator``, or
the one ``Solver`` sets from ``random_seed``), where every filler draws from Caffe's own generator with boost's
distributions, so the weights are Caffe's bit for bit.

Random numbers are always drawn on the CPU in float32 and then copied, so a given generator seed gives the
same weights whatever device the net lives on.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import caffe_rng
from .errors import ReproError

FILLER_TYPES = ("constant", "gaussian", "uniform", "xavier", "msra", "positive_unitball", "bilinear")

# FillerParameter.VarianceNorm numbers in caffe.proto.
_FAN_IN, _FAN_OUT, _AVERAGE = 0, 1, 2


class FillerError(ReproError):
    """A FillerParameter that Caffe's filler.hpp would refuse (unknown type, sparse where unsupported...)."""


def fill_(tensor: torch.Tensor, filler, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``tensor`` (a Caffe blob shape) in place according to ``filler`` (a caffe_pb2.FillerParameter,
    or None for Caffe's default: constant 0). Returns ``tensor``."""
    ftype = _field(filler, "type", "constant")
    if ftype not in _FILL:
        raise FillerError(f"unknown filler type {ftype!r}; Caffe knows {', '.join(FILLER_TYPES)}")
    if tensor.numel() == 0:
        # Caffe: CHECK(blob->count()) in every filler.
        raise FillerError(f"cannot fill an empty blob of shape {tuple(tensor.shape)}")
    sparse = int(_field(filler, "sparse", -1))
    if ftype != "gaussian" and sparse != -1:
        raise FillerError(f"filler {ftype!r}: sparsity not supported by this filler (sparse: {sparse})")
    if generator is None:
        generator = caffe_rng.current()   # a seeded run: Caffe's caffe_rng() (None otherwise: torch's stream)
    values = _FILL[ftype](tuple(tensor.shape), filler, generator)
    with torch.no_grad():
        tensor.copy_(values)
    return tensor


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Caffe's XavierFiller/MSRAFiller fans: fan_in = count / shape(0), fan_out = count / shape(1) (or count
    for a 1-D blob), integer divisions as in C++. A conv weight (out, in/group, kh, kw) has fan_in
    in/group*kh*kw and fan_out out*kh*kw; an InnerProduct weight (out, in) has fan_in in and fan_out out."""
    count = math.prod(shape)
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


# ------------------------------------------------------------------------------------------------ fillers


def _constant(shape, filler, gen):
    # Caffe: ConstantFiller, value defaults to 0.
    return torch.full(shape, float(_field(filler, "value", 0.0)), dtype=torch.float32)


def _uniform(shape, filler, gen):
    # Caffe: UniformFiller, U(min, max) with min 0, max 1 by default.
    lo, hi = float(_field(filler, "min", 0.0)), float(_field(filler, "max", 1.0))
    return _rand_uniform(shape, lo, hi, gen)


def _gaussian(shape, filler, gen):
    # Caffe: GaussianFiller, N(mean, std^2), then with `sparse` >= 0 each weight is kept with probability
    # sparse / shape(0) ("mean number of non-zero input weights per output") and zeroed otherwise.
    mean, std = float(_field(filler, "mean", 0.0)), float(_field(filler, "std", 1.0))
    sparse = int(_field(filler, "sparse", -1))
    if sparse < -1:
        raise FillerError(f"filler 'gaussian': sparse must be >= -1, got {sparse}")
    if isinstance(gen, caffe_rng.CaffeRNG):
        # caffe_rng_gaussian(count, mean, std), then caffe_rng_bernoulli<float>(count, sparse / num_outputs)
        values = gen.main.gaussian(math.prod(shape), mean, std)
        if sparse >= 0:
            p = np.float32(sparse) / np.float32(shape[0])
            values = values * gen.main.bernoulli(values.size, p, real=np.float32).astype(np.float32)
        return torch.from_numpy(values.reshape(shape))
    values = torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean
    if sparse >= 0:
        p = _f32(sparse / shape[0])
        keep = torch.rand(shape, generator=gen, dtype=torch.float32) < p
        values = values * keep
    return values


def _positive_unitball(shape, filler, gen):
    # Caffe: PositiveUnitballFiller, U(0, 1) then every one of the shape(0) rows divided by its sum.
    values = _rand_uniform(shape, 0.0, 1.0, gen)
    rows = values.reshape(shape[0], -1)
    if isinstance(gen, caffe_rng.CaffeRNG):
        # Caffe sums each row in a float loop, left to right (a cumulative sum's last term), then divides.
        sums = np.cumsum(rows.numpy(), axis=1, dtype=np.float32)[:, -1:]
        return torch.from_numpy(rows.numpy() / sums).reshape(shape)
    return (rows / rows.sum(dim=1, keepdim=True)).reshape(shape)


def _xavier(shape, filler, gen):
    # Caffe: XavierFiller, U(-a, a) with a = sqrt(3 / n), n chosen by variance_norm.
    scale = math.sqrt(3.0 / _fan(shape, filler))
    if isinstance(gen, caffe_rng.CaffeRNG):
        scale = float(np.sqrt(np.float32(3) / _fan32(shape, filler)))   # Caffe: sqrt(Dtype(3) / n) in float
    return _rand_uniform(shape, -scale, scale, gen)


def _msra(shape, filler, gen):
    # Caffe: MSRAFiller, N(0, 2 / n), n chosen by variance_norm.
    std = math.sqrt(2.0 / _fan(shape, filler))
    if isinstance(gen, caffe_rng.CaffeRNG):
        std = np.sqrt(np.float32(2) / _fan32(shape, filler))   # Caffe: sqrt(Dtype(2) / n) in float
        return torch.from_numpy(gen.main.gaussian(math.prod(shape), 0.0, std).reshape(shape))
    return torch.randn(shape, generator=gen, dtype=torch.float32) * std


def _bilinear(shape, filler, gen):
    # Caffe: BilinearFiller, the bilinear-upsampling kernel for a Deconvolution weight (.., .., kh, kw);
    # BVLC master's centre c = (k - 1) / (2 f) (older releases used (2f - 1 - f % 2) / (2f)).
    if len(shape) != 4 or shape[2] != shape[3]:
        raise FillerError(f"filler 'bilinear' needs a 4-D blob with square kernels, got shape {shape}")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (k - 1) / (2.0 * f)
    x = torch.arange(k, dtype=torch.float64)
    w = 1 - torch.abs(x / f - c)
    kernel = (w[:, None] * w[None, :]).to(torch.float32)
    return kernel.expand(shape).clone()


_FILL = {
    "constant": _constant,
    "uniform": _uniform,
    "gaussian": _gaussian,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}


# ------------------------------------------------------------------------------------------------ helpers


def _fan(shape, filler) -> float:
    fan_in, fan_out = fans(shape)
    norm = _field(filler, "variance_norm", _FAN_IN)
    if norm == _AVERAGE:
        return (fan_in + fan_out) / 2.0
    if norm == _FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _fan32(shape, filler) -> np.float32:
    # Caffe's n in Dtype: fan_in, fan_out, or (fan_in + fan_out) / Dtype(2)
    fan_in, fan_out = fans(shape)
    norm = _field(filler, "variance_norm", _FAN_IN)
    if norm == _AVERAGE:
        return (np.float32(fan_in) + np.float32(fan_out)) / np.float32(2)
    return np.float32(fan_out if norm == _FAN_OUT else fan_in)


def _rand_uniform(shape, lo, hi, gen):
    if hi < lo:
        # Caffe: caffe_rng_uniform CHECK_LE(a, b).
        raise FillerError(f"uniform filler needs min <= max, got min {lo}, max {hi}")
    if isinstance(gen, caffe_rng.CaffeRNG):
        return torch.from_numpy(gen.main.uniform(math.prod(shape), lo, hi).reshape(shape))
    return torch.rand(shape, generator=gen, dtype=torch.float32) * (hi - lo) + lo


def _f32(x: float) -> float:
    # Caffe computes filler constants in Dtype (float32).
    return float(torch.tensor(x, dtype=torch.float32))


def _field(msg, name, default):
    """A FillerParameter field, or Caffe's default when the message is absent (None)."""
    if msg is None:
        return default
    return getattr(msg, name)
