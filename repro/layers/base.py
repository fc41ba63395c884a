"""The common shape of every Caffe layer module, the type registry and ``build_layer``.

A layer is built the way Caffe's ``Layer::SetUp`` builds it: from its ``LayerParameter``, the shapes of its
bottom blobs and the phase. It owns its learnable blobs (``.blobs``, an ``nn.ParameterList`` in Caffe's
shapes and order: weight then bias), fills them with the layer's fillers, and computes its top blobs from
its bottoms in ``forward(*bottoms) -> tuple(tops)``. Gradients come from autograd; where Caffe's backward is
not the derivative of its forward (SoftmaxWithLoss's FLT_MIN cap, MAX-pool ties) the layer says so and
makes autograd follow Caffe.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import ReproError
from ..fillers import fill_

Shape = tuple[int, ...]

_REGISTRY: dict[str, type["CaffeLayer"]] = {}

# Caffe's Blob::Reshape: CHECK_LE(count_, INT_MAX) << "blob size exceeds INT_MAX". Checked when a layer is
# built, before anything is allocated, so an absurd size (num_output: 2000000000) is an error naming the layer
# and the bytes instead of an allocator failure terabytes later.
MAX_BLOB_COUNT = 2**31 - 1


class LayerError(ReproError):
    """A layer definition Caffe would refuse at SetUp (names the layer, its type and what was expected)."""

    def __init__(self, layer, message: str):
        name = getattr(layer, "name", layer)
        ltype = getattr(layer, "type", "")
        where = f"layer {name!r}" + (f" ({ltype})" if ltype else "")
        super().__init__(f"{where}: {message}")


def register(*type_names: str):
    """Class decorator: make a CaffeLayer subclass the implementation of Caffe type(s) ``type_names``."""

    def deco(cls):
        for t in type_names:
            _REGISTRY[t] = cls
        cls.type_names = type_names
        return cls

    return deco


def layer_types() -> tuple[str, ...]:
    """The Caffe layer types ``build_layer`` knows, sorted."""
    return tuple(sorted(_REGISTRY))


def phase_name(phase) -> str:
    """'TRAIN' or 'TEST' from a string (any case) or caffe_pb2's Phase numbers (TRAIN = 0, TEST = 1)."""
    if isinstance(phase, str) and phase.upper() in ("TRAIN", "TEST"):
        return phase.upper()
    if phase in (0, 1) and not isinstance(phase, bool):
        return ("TRAIN", "TEST")[phase]
    raise ValueError(f"phase must be 'TRAIN' or 'TEST' (or caffe_pb2.TRAIN/TEST), got {phase!r}")


def build_layer(layer_param, bottom_shapes: Sequence[Sequence[int]], phase="TRAIN", generator=None,
                top_shapes=None):
    """Caffe's ``LayerRegistry::CreateLayer`` + ``Layer::SetUp``: the module for one LayerParameter, its
    learnable blobs created in Caffe's shapes and filled with the layer's fillers (``generator``: an optional
    CPU torch.Generator). ``top_shapes`` overrides the shapes a net-input layer (Input, Data, ...) declares
    (a Data layer without crop_size only learns its image size from the data)."""
    cls = _REGISTRY.get(layer_param.type)
    if cls is None:
        raise LayerError(layer_param, f"unknown layer type {layer_param.type!r}; supported: "
                         f"{', '.join(layer_types())}")
    shapes = [tuple(int(d) for d in s) for s in bottom_shapes]
    cls.check_counts(layer_param, len(shapes), len(layer_param.top))
    if getattr(cls, "is_input", False):
        layer = cls(layer_param, shapes, phase_name(phase), top_shapes=top_shapes)
    elif top_shapes is not None:
        raise LayerError(layer_param, "top shapes can only be given for net-input layers")
    else:
        layer = cls(layer_param, shapes, phase_name(phase))
    layer.fill_blobs_(generator)
    return layer


class CaffeLayer(nn.Module):
    """Base class: one Caffe layer. Subclasses set the blob-count limits and implement ``setup``,
    ``out_shapes`` and ``forward``."""

    type_names: tuple[str, ...] = ()
    # True for layers whose tops are fed from outside the net (see inputs.NetInput).
    is_input = False
    # Caffe's ExactNumBottomBlobs / MinBottomBlobs / MaxBottomBlobs (None: no limit), same for tops.
    min_bottoms, max_bottoms = 1, 1
    min_tops, max_tops = 1, 1

    def __init__(self, param, bottom_shapes: list[Shape], phase: str):
        super().__init__()
        self.name = param.name
        self.type = param.type
        self.param = param
        self.phase = phase
        self.blobs = nn.ParameterList()
        # (blob index, FillerParameter or None) pairs: how `fill_blobs_` initialises each learnable blob.
        self._fillers: list = []
        self.setup(bottom_shapes)
        # Caffe computes the top shapes at SetUp; asking now reports a bad geometry at construction.
        self.top_shapes = [tuple(s) for s in self.out_shapes(bottom_shapes)]
        for top, shape in zip(param.top, self.top_shapes):
            check_blob_size(param, f"top {top!r}", shape)

    # ------------------------------------------------------------------------------------ to override

    def setup(self, bottom_shapes: list[Shape]) -> None:
        """Read the layer's parameters, check them, create learnable blobs (``add_blob``)."""

    def out_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        """Caffe's ``Reshape``: top shapes from bottom shapes."""
        raise NotImplementedError

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Caffe's ``Layer::AllowForceBackward``: False for inputs that never get a gradient (labels)."""
        return True

    # ------------------------------------------------------------------------------------ helpers

    @classmethod
    def check_counts(cls, param, n_bottoms: int, n_tops: int) -> None:
        for what, n, lo, hi in (("bottom", n_bottoms, cls.min_bottoms, cls.max_bottoms),
                                ("top", n_tops, cls.min_tops, cls.max_tops)):
            if (lo is not None and n < lo) or (hi is not None and n > hi):
                if lo == hi:
                    want = f"exactly {lo}"
                elif hi is None:
                    want = f"at least {lo}"
                else:
                    want = f"{lo} to {hi}"
                raise LayerError(param, f"takes {want} {what} blob(s), got {n}")

    @property
    def caffe_blobs(self) -> list[nn.Parameter]:
        """The learnable blobs in Caffe's order (weight, then bias), in Caffe's shapes."""
        return list(self.blobs)

    def add_blob(self, shape: Sequence[int], filler=None) -> nn.Parameter:
        """Create learnable blob number len(self.blobs) with Caffe shape ``shape``, to be filled by
        ``filler`` (a FillerParameter; None: Caffe's default, constant 0)."""
        shape = tuple(int(d) for d in shape)
        check_blob_size(self.param, f"param {len(self.blobs)}", shape)
        p = nn.Parameter(torch.zeros(shape, dtype=torch.float32))
        self.blobs.append(p)
        self._fillers.append(filler)
        return p

    def fill_blobs_(self, generator=None) -> None:
        """(Re)initialise every learnable blob with its filler, in blob order (Caffe's order)."""
        for blob, filler in zip(self.blobs, self._fillers):
            fill_(blob.data, filler, generator)

    def error(self, message: str) -> LayerError:
        return LayerError(self.param, message)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, type={self.type!r}"


# ------------------------------------------------------------------------------------ shape utilities


def canonical_axis(layer, axis: int, num_axes: int) -> int:
    """Caffe's ``Blob::CanonicalAxisIndex``: a negative axis counts from the end; out of range is an
    error."""
    if not -num_axes <= axis < num_axes:
        raise LayerError(layer, f"axis {axis} out of range for a {num_axes}-D blob")
    return axis + num_axes if axis < 0 else axis


def check_blob_size(layer, what: str, shape: Sequence[int]) -> None:
    """Caffe's Blob::Reshape checks: no negative dim, at most MAX_BLOB_COUNT elements (float32 bytes named)."""
    if any(int(d) < 0 for d in shape):
        raise LayerError(layer, f"{what} has a negative dimension: shape {tuple(shape)}")
    n = count(shape)
    if n > MAX_BLOB_COUNT:
        raise LayerError(layer, f"{what} of shape {tuple(shape)} has {n:,} elements ({4 * n:,} bytes as float32), "
                                f"more than Caffe's blob limit of INT_MAX = {MAX_BLOB_COUNT:,} elements")


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """Caffe's ``Blob::count(start, end)``: the product of dims [start, end)."""
    return math.prod(shape[start:end])


def spatial_param(layer, value_list, h_value, w_value, has_h: bool, default: int, what: str) -> tuple[int, int]:
    """Caffe's rule for kernel/pad/stride: ``*_h``/``*_w`` when given (both), else the repeated field with one
    value for both axes or one per axis, else the default."""
    if has_h:
        return int(h_value), int(w_value)
    values = [int(v) for v in value_list]
    if not values:
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise LayerError(layer, f"{what} has {len(values)} values; 2-D layers take one or two")
