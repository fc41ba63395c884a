"""pycaffe's `caffe.io.Transformer`, as a public API: the preprocessing a deployed net expects, for one image.

A net trained here sees (Caffe's DataTransformer, TEST phase; repro/data/transform.py): the image decoded as BGR
and squashed to 256×256 (convert_imageset), centre-cropped to 227×227, minus the mean image at the crop's
position (or one value per channel). `Transformer` does the same to an H×W×C image you hold, with pycaffe's
setters (`set_transpose`, `set_channel_swap`, `set_raw_scale`, `set_mean`, `set_input_scale`) plus `set_crop`,
which pycaffe lacks: Caffe's TEST centre crop, taking the mean image at the crop's position. Unlike pycaffe it
never resizes silently: an image of another size than the input needs a crop (resizing is `image.read_image`'s
job, with Caffe's INTER_LINEAR squash).

Order of `preprocess` (pycaffe's): crop, transpose, channel swap, raw scale, mean, input scale, all in float32.
`deprocess` undoes it (the crop excepted).
"""
from __future__ import annotations

import numpy as np

from ..errors import ReproError


class TransformerError(ReproError):
    """A setting that does not fit the input (wrong channel count, mean shape, crop larger than the image)."""


class Transformer:
    def __init__(self, inputs: dict[str, tuple[int, ...]]):
        self.inputs = {k: tuple(int(x) for x in v) for k, v in inputs.items()}
        self.transpose, self.channel_swap, self.raw_scale, self.mean, self.input_scale, self.crop = \
            {}, {}, {}, {}, {}, {}

    def _key(self, name: str):
        if name not in self.inputs:
            raise TransformerError(f"{name!r} is not an input ({', '.join(self.inputs)})")

    def set_transpose(self, name: str, order):
        self._key(name)
        if len(order) != len(self.inputs[name]) - 1:
            raise TransformerError(f"{name!r}: transpose order {tuple(order)} must cover the input's "
                                   f"{len(self.inputs[name]) - 1} dimensions")
        self.transpose[name] = tuple(order)

    def set_channel_swap(self, name: str, order):
        self._key(name)
        if len(order) != self.inputs[name][1]:
            raise TransformerError(f"{name!r}: channel swap {tuple(order)} must list {self.inputs[name][1]} channels")
        self.channel_swap[name] = tuple(order)

    def set_raw_scale(self, name: str, scale: float):
        self._key(name)
        self.raw_scale[name] = float(scale)

    def set_input_scale(self, name: str, scale: float):
        self._key(name)
        self.input_scale[name] = float(scale)

    def set_crop(self, name: str, size: int):
        """Caffe's TEST crop: the centre `size`×`size` window ((H - size) / 2, (W - size) / 2)."""
        self._key(name)
        self.crop[name] = int(size)

    def set_mean(self, name: str, mean):
        """One value per channel (C,) or a mean image (C, H, W) of the image before the crop."""
        self._key(name)
        mean = np.asarray(mean, np.float32)
        c = self.inputs[name][1]
        if mean.ndim == 1:
            if mean.shape[0] not in (1, c):
                raise TransformerError(f"{name!r}: {mean.shape[0]} mean values for {c} channels")
            mean = np.broadcast_to(mean.reshape(-1, 1, 1), (c, 1, 1)).copy()
        elif mean.ndim != 3 or mean.shape[0] != c:
            raise TransformerError(f"{name!r}: mean shape {mean.shape} is neither (C,) nor ({c}, H, W)")
        self.mean[name] = mean

    def preprocess(self, name: str, data: np.ndarray) -> np.ndarray:
        """H×W×C image (any dtype) -> float32 C×H'×W' net input."""
        self._key(name)
        x = np.asarray(data, np.float32)
        if x.ndim == 2:
            x = x[:, :, None]
        mean = self.mean.get(name)
        crop = self.crop.get(name)
        if crop:
            H, W = x.shape[:2]
            if crop > H or crop > W:
                raise TransformerError(f"{name!r}: crop {crop} is larger than the {H}×{W} image")
            h, w = (H - crop) // 2, (W - crop) // 2
            x = x[h:h + crop, w:w + crop]
            if mean is not None and mean.shape[1:] != (1, 1):
                if mean.shape[1:] != (H, W):
                    raise TransformerError(f"{name!r}: mean image {mean.shape[1:]} is not the {H}×{W} image's size")
                mean = mean[:, h:h + crop, w:w + crop]
        if name in self.transpose:
            x = x.transpose(self.transpose[name])
        if name in self.channel_swap:
            x = x[list(self.channel_swap[name])]
        if name in self.raw_scale:
            x = x * np.float32(self.raw_scale[name])
        if mean is not None:
            if mean.shape[1:] not in ((1, 1), x.shape[1:]):
                raise TransformerError(f"{name!r}: mean {mean.shape} does not fit the input {x.shape}")
            x = x - mean
        if name in self.input_scale:
            x = x * np.float32(self.input_scale[name])
        want = self.inputs[name][1:]
        if x.shape != want:
            raise TransformerError(f"{name!r}: preprocessed image is {x.shape}, the net takes {want} "
                                   "(squash it to 256×256 first and set_crop)")
        return np.ascontiguousarray(x, np.float32)

    def deprocess(self, name: str, data: np.ndarray) -> np.ndarray:
        """The inverse of `preprocess` (without the crop): C×H×W net input -> H×W×C image."""
        self._key(name)
        x = np.array(data, np.float32).squeeze()
        if x.ndim == 2:
            x = x[None]
        if name in self.input_scale:
            x = x / np.float32(self.input_scale[name])
        if name in self.mean:
            m = self.mean[name]
            if m.shape[1:] != (1, 1) and m.shape[1:] != x.shape[1:]:
                c = self.crop.get(name)
                h, w = (m.shape[1] - c) // 2, (m.shape[2] - c) // 2
                m = m[:, h:h + c, w:w + c]
            x = x + m
        if name in self.raw_scale:
            x = x / np.float32(self.raw_scale[name])
        if name in self.channel_swap:
            x = x[np.argsort(self.channel_swap[name])]
        if name in self.transpose:
            x = x.transpose(np.argsort(self.transpose[name]))
        return x
