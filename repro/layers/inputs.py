"""Layers without bottoms: the net's inputs (Input, Data, ImageData, MemoryData) and DummyData.

Input-like layers only declare their tops' shapes; the :class:`repro.net.Net` fills those tops from the
tensors passed to ``net(**inputs)`` or, for Data/ImageData, from the data layer feeder.
"""
from __future__ import annotations

import torch

from ..fillers import fill_
from .base import CaffeLayer, count, register


class NetInput(CaffeLayer):
    """Base for layers whose tops are fed from outside the net."""

    min_bottoms, max_bottoms = 0, 0
    min_tops, max_tops = 1, None
    is_input = True
    # Data/ImageData tops can come from the data layer feeder when not passed in.
    reads_data = False

    def __init__(self, param, bottom_shapes, phase, top_shapes=None):
        self._given = [tuple(int(d) for d in s) for s in top_shapes] if top_shapes else None
        super().__init__(param, bottom_shapes, phase)

    def declared_shapes(self) -> list[tuple]:
        raise NotImplementedError

    def out_shapes(self, bottom_shapes):
        shapes = self._given or self.declared_shapes()
        if len(shapes) != len(self.param.top):
            raise self.error(f"{len(shapes)} shape(s) for {len(self.param.top)} top(s)")
        for top, shape in zip(self.param.top, shapes):
            # Caffe accepts these and fails at the first forward; a net input of no (or negative) size is a
            # typo in the prototxt, said here with the input's name.
            if any(d <= 0 for d in shape):
                raise self.error(f"net input {top!r} has shape {tuple(shape)}: every dimension must be at least 1")
        return shapes

    def forward(self, *bottoms):
        raise RuntimeError(f"layer {self.name!r} ({self.type}) is a net input: pass its tops "
                           f"{list(self.param.top)} to the net")


@register("Input")
class Input(NetInput):
    """Caffe's InputLayer: one shape per top, or one shape for all tops."""

    def declared_shapes(self):
        shapes = [tuple(int(d) for d in s.dim) for s in self.param.input_param.shape]
        ntop = len(self.param.top)
        if len(shapes) == 1 and ntop > 1:
            shapes = shapes * ntop
        if len(shapes) != ntop:
            raise self.error(f"input_param has {len(shapes)} shape(s) for {ntop} top(s); give one, or one per top")
        return shapes


def _image_shapes(layer, batch, crop, height, width, channels):
    """(data, label) shapes of a Caffe image data layer: the crop when set, else the stored size."""
    if crop:
        height = width = crop
    if not (height and width):
        raise layer.error("the image size is not in the prototxt (no crop_size / new_height, new_width): it "
                          "comes from the data; pass the net `input_shapes={top: shape}`")
    shapes = [(batch, channels, height, width)]
    if len(layer.param.top) > 1:
        shapes.append((batch,))
    return shapes


@register("Data")
class Data(NetInput):
    """Caffe's DataLayer (LMDB/LevelDB), as a net input: data (batch_size, C, crop, crop), label
    (batch_size,). C is 1 with ``force_gray``, else 3 (ImageNet's colour datums); the feeder's first batch
    is checked against it."""

    max_tops = 2
    reads_data = True

    def declared_shapes(self):
        tp = self.param.transform_param
        channels = 1 if tp.force_gray else 3
        return _image_shapes(self, int(self.param.data_param.batch_size), int(tp.crop_size), 0, 0, channels)


@register("ImageData")
class ImageData(NetInput):
    """Caffe's ImageDataLayer as a net input: images resized to new_height x new_width, then cropped."""

    max_tops = 2
    reads_data = True

    def declared_shapes(self):
        ip = self.param.image_data_param
        channels = 3 if ip.is_color else 1
        return _image_shapes(self, int(ip.batch_size), int(self.param.transform_param.crop_size),
                             int(ip.new_height), int(ip.new_width), channels)


@register("MemoryData")
class MemoryData(NetInput):
    """Caffe's MemoryDataLayer as a net input: data (batch, channels, height, width), label (batch,)."""

    max_tops = 2

    def declared_shapes(self):
        mp = self.param.memory_data_param
        shapes = [(int(mp.batch_size), int(mp.channels), int(mp.height), int(mp.width))]
        return shapes + ([(int(mp.batch_size),)] if len(self.param.top) > 1 else [])


@register("DummyData")
class DummyData(CaffeLayer):
    """Caffe's DummyDataLayer: tops filled by ``data_filler`` (one, or one per top; default constant 0) on
    every forward (Caffe refills only non-constant fillers; constants give the same values anyway)."""

    min_bottoms, max_bottoms = 0, 0
    min_tops, max_tops = 1, None

    def setup(self, bottom_shapes):
        dp = self.param.dummy_data_param
        ntop = len(self.param.top)
        if len(dp.shape):
            shapes = [tuple(int(d) for d in s.dim) for s in dp.shape]
        else:
            legacy = [list(dp.num), list(dp.channels), list(dp.height), list(dp.width)]
            n = max(len(v) for v in legacy)
            shapes = [tuple(int(v[i] if len(v) > 1 else v[0]) for v in legacy) for i in range(n)] if n else []
        if len(shapes) == 1:
            shapes = shapes * ntop
        if len(shapes) != ntop:
            raise self.error(f"{len(shapes)} shape(s) for {ntop} top(s)")
        fillers = list(dp.data_filler)
        if len(fillers) not in (0, 1, ntop):
            raise self.error(f"{len(fillers)} data_filler(s) for {ntop} top(s); give 0, 1 or one per top")
        self._shapes = shapes
        self._data_fillers = fillers * ntop if len(fillers) == 1 else fillers or [None] * ntop
        self.generator = None

    def out_shapes(self, bottom_shapes):
        return self._shapes

    def forward(self):
        # Filled on the CPU (the fillers' generator is a CPU one); the net moves tops to its device.
        return tuple(fill_(torch.empty(shape, dtype=torch.float32), filler, self.generator) if count(shape)
                     else torch.empty(shape, dtype=torch.float32)
                     for shape, filler in zip(self._shapes, self._data_fillers))
