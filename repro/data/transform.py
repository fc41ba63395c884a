"""Caffe's `DataTransformer::Transform`, applied to whole uint8 batches with torch ops on the target device.

Per image Caffe computes, in float32 (Caffe 1.0, data_transformer.cpp):

    do_mirror = mirror && Rand(2)                 # drawn first, only when mirror is set (any phase)
    h_off = Rand(H - crop + 1); w_off = Rand(W - crop + 1)   # TRAIN with crop_size
    h_off = (H - crop) / 2;     w_off = (W - crop) / 2       # otherwise (TEST): centre crop
    top[c, h, mirrored(w)] = (x[c, h_off + h, w_off + w] - mean[c, h_off + h, w_off + w]) * scale

so the mean image is subtracted at the crop's position, and mirroring only moves where the value goes.
`mean_value` replaces the image mean by one value per channel (one value is repeated for all channels).
`Rand(n)` is `rng() % n` on a boost::mt19937 seeded with one 32-bit number; `CaffeRand` reproduces it with
numpy's MT19937 (same generator, same `init_genrand` seeding), so the draw sequence for a given seed is Caffe's.

(The paper-era 2014 DataLayer drew `% (H - crop)`, never the last offset, and drew the mirror coin after the
offsets; we follow Caffe 1.0, named in the golden data.)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import ReproError


class TransformError(ReproError):
    """A transform setting that does not fit the data (crop larger than the image, mean of the wrong shape)."""


class CaffeRand:
    """Caffe's `DataTransformer::Rand(n) = (*rng)() % n` on boost::mt19937(seed), vectorised."""

    def __init__(self, seed: int):
        self._bg = np.random.MT19937()
        # numpy's legacy integer seeding is MT19937's init_genrand, as boost::mt19937(uint32 seed) does.
        self._bg.state = np.random.RandomState(int(seed) & 0xFFFFFFFF).get_state(legacy=False)

    def raw(self, n: int) -> np.ndarray:
        """The next n 32-bit outputs, as uint64."""
        return self._bg.random_raw(n).astype(np.uint64)

    def state_dict(self) -> dict:
        st = self._bg.state["state"]
        return {"key": np.asarray(st["key"]).tolist(), "pos": int(st["pos"])}

    def load_state_dict(self, d: dict):
        self._bg.state = {"bit_generator": "MT19937",
                          "state": {"key": np.asarray(d["key"], dtype=np.uint32), "pos": int(d["pos"])}}


@dataclass
class TransformSpec:
    """The fields of Caffe's TransformationParameter, with the mean file already read."""

    crop_size: int = 0
    mirror: bool = False
    scale: float = 1.0
    mean: np.ndarray | None = None          # (C, H, W) float32, from mean_file
    mean_value: tuple[float, ...] = ()
    force_color: bool = False
    force_gray: bool = False
    mean_file: str = ""                     # for messages only

    def __post_init__(self):
        if self.mean is not None and self.mean_value:
            # Caffe: CHECK(!(has_mean_file && has_mean_values)) in DataTransformer's constructor
            raise TransformError("cannot specify mean_file and mean_value at the same time")
        if self.force_color and self.force_gray:
            raise TransformError("cannot set force_color and force_gray at the same time")
        if self.mean is not None:
            self.mean = np.ascontiguousarray(self.mean, dtype=np.float32)
            if self.mean.ndim == 4 and self.mean.shape[0] == 1:
                self.mean = self.mean[0]
            if self.mean.ndim != 3:
                raise TransformError(f"mean image must be C×H×W, got shape {self.mean.shape}")

    @classmethod
    def from_param(cls, tp, resolve: Callable[[str], Path] | None = None) -> "TransformSpec":
        """From a caffe_pb2.TransformationParameter; `resolve` turns the mean_file string into a path."""
        mean = None
        if tp.HasField("mean_file"):
            path = resolve(tp.mean_file) if resolve else Path(tp.mean_file)
            if not Path(path).is_file():
                raise TransformError(f"mean_file {tp.mean_file!r} not found (looked at {path})")
            from ..caffemodel import read_mean

            mean = read_mean(path)
        return cls(crop_size=int(tp.crop_size), mirror=bool(tp.mirror), scale=float(tp.scale), mean=mean,
                   mean_value=tuple(float(v) for v in tp.mean_value), force_color=bool(tp.force_color),
                   force_gray=bool(tp.force_gray), mean_file=tp.mean_file if tp.HasField("mean_file") else "")


def _mean_values(values: tuple[float, ...], channels: int) -> np.ndarray:
    if len(values) == 1:  # Caffe: one mean_value is used for every channel
        return np.full(channels, values[0], np.float32)
    if len(values) != channels:
        raise TransformError(f"mean_value has {len(values)} values but the data has {channels} channels "
                             "(give 1 or one per channel)")
    return np.asarray(values, np.float32)


class Transformer:
    """Applies a TransformSpec to N×C×H×W batches (uint8 or float32 tensors) on `device`.

    `phase` is "TRAIN" or "TEST". Random draws follow Caffe's order per image; the state (`state_dict`) is
    the MT19937 state, so a resumed run draws the same crops.
    """

    def __init__(self, spec: TransformSpec, phase: str = "TRAIN", seed: int = 0, device: str | torch.device = "cpu"):
        if phase not in ("TRAIN", "TEST"):
            raise ValueError(f"phase must be 'TRAIN' or 'TEST', got {phase!r}")
        self.spec, self.phase, self.device = spec, phase, torch.device(device)
        self.rand = CaffeRand(seed)
        self._mean_cache: dict = {}
        self.force_gather = False  # tests: run the CUDA code path (torch.gather) on CPU

    # -- random draws (host side, a few numbers per image) ----------------------------------------------
    def draw(self, n: int, height: int, width: int):
        """(h_off, w_off, mirror) arrays for n images, drawn in DataTransformer::Transform's order."""
        s, c = self.spec, self.spec.crop_size
        random_crop = bool(c) and self.phase == "TRAIN"
        k = int(s.mirror) + 2 * int(random_crop)
        raw = self.rand.raw(n * k).reshape(n, k) if k else np.zeros((n, 0), np.uint64)
        mirror = (raw[:, 0] % 2).astype(bool) if s.mirror else np.zeros(n, bool)
        if random_crop:
            j = int(s.mirror)
            h_off = (raw[:, j] % np.uint64(height - c + 1)).astype(np.int64)
            w_off = (raw[:, j + 1] % np.uint64(width - c + 1)).astype(np.int64)
        else:
            h_off = np.full(n, (height - c) // 2 if c else 0, np.int64)
            w_off = np.full(n, (width - c) // 2 if c else 0, np.int64)
        return h_off, w_off, mirror

    def _check(self, C: int, H: int, W: int):
        s = self.spec
        if s.crop_size and (s.crop_size > H or s.crop_size > W):
            raise TransformError(f"crop_size {s.crop_size} is larger than the images ({H}×{W})")
        if s.mean is not None and s.mean.shape != (C, H, W):
            # Caffe: CHECK_EQ(datum_channels/height/width, data_mean_...) in Transform(Datum)
            raise TransformError(f"mean_file {s.mean_file!r} is {'×'.join(map(str, s.mean.shape))} but the "
                                 f"images are {C}×{H}×{W}")

    def _mean(self, C: int, device: torch.device) -> torch.Tensor | None:
        key = (C, str(device))
        if key not in self._mean_cache:
            s = self.spec
            if s.mean is not None:
                m = torch.from_numpy(s.mean).to(device)
            elif s.mean_value:
                m = torch.from_numpy(_mean_values(s.mean_value, C)).to(device).view(C, 1, 1)
            else:
                m = None
            self._mean_cache[key] = m
        return self._mean_cache[key]

    # -- the transform -----------------------------------------------------------------------------------
    def __call__(self, batch: torch.Tensor, offsets=None) -> torch.Tensor:
        """Transform a batch; `offsets` = (h_off, w_off, mirror) overrides the draws (tests, replays)."""
        if batch.dim() != 4:
            raise TransformError(f"expected an N×C×H×W batch, got shape {tuple(batch.shape)}")
        N, C, H, W = batch.shape
        self._check(C, H, W)
        x = batch.to(self.device, non_blocking=True)
        h_off, w_off, mirror = offsets if offsets is not None else self.draw(N, H, W)
        c = self.spec.crop_size
        c_h, c_w = (c, c) if c else (H, W)
        mean = self._mean(C, x.device)
        uniform = N == 0 or (not mirror.any() and (h_off == h_off[0]).all() and (w_off == w_off[0]).all())
        if uniform:
            # TEST phase (centre crop, no mirror): a plain slice, no gather.
            h0, w0 = (int(h_off[0]), int(w_off[0])) if N else (0, 0)
            out = x[:, :, h0:h0 + c_h, w0:w0 + c_w].float()
            if mean is not None:
                out = out - (mean[:, h0:h0 + c_h, w0:w0 + c_w] if mean.shape[1] > 1 else mean)
        else:
            out = self._gather(x, mean, h_off, w_off, mirror, c_h, c_w)
        if self.spec.scale != 1.0:
            out = out * self.spec.scale
        return out.contiguous()

    def _gather(self, x, mean, h_off, w_off, mirror, c_h, c_w):
        """Per-image crop + mirror with no per-image Python: on CUDA one gather over flattened H×W indices;
        on CPU numpy's sliding-window view indexed by the offsets (about 5x faster there than torch.gather)."""
        N, C, H, W = x.shape
        if x.device.type == "cpu" and not self.force_gather:
            from numpy.lib.stride_tricks import sliding_window_view as windows

            n = np.arange(N)
            out = torch.from_numpy(windows(x.numpy(), (c_h, c_w), axis=(2, 3))[n, :, h_off, w_off]).float()
            if mean is not None:
                if mean.shape[1] > 1:  # mean image cropped at each image's own offset
                    m = windows(mean.numpy(), (c_h, c_w), axis=(1, 2))[:, h_off, w_off]  # (C, N, c_h, c_w)
                    out -= torch.from_numpy(m).permute(1, 0, 2, 3)
                else:
                    out -= mean.view(1, C, 1, 1)
            if mirror.any():
                sel = torch.from_numpy(np.nonzero(mirror)[0])
                out[sel] = out[sel].flip(-1)  # mirroring moves values; the mean was taken unmirrored
            return out
        dev = x.device
        h = torch.from_numpy(h_off).to(dev)
        w = torch.from_numpy(w_off).to(dev)
        m = torch.from_numpy(mirror).to(dev)
        ar_h = torch.arange(c_h, device=dev)
        ar_w = torch.arange(c_w, device=dev)
        rows = h[:, None] + ar_h                                                   # (N, c_h)
        cols = w[:, None] + torch.where(m[:, None], (c_w - 1) - ar_w, ar_w)        # (N, c_w)
        idx = (rows[:, :, None] * W + cols[:, None, :]).view(N, 1, c_h * c_w).expand(N, C, c_h * c_w)
        out = x.reshape(N, C, H * W).gather(2, idx).float()
        if mean is not None:
            if mean.shape[1] > 1:  # mean image: cropped (and mirrored) at the same position
                out -= mean.reshape(1, C, H * W).expand(N, C, H * W).gather(2, idx)
            else:
                out -= mean.view(1, C, 1)
        return out.view(N, C, c_h, c_w)

    def state_dict(self) -> dict:
        return {"rand": self.rand.state_dict()}

    def load_state_dict(self, d: dict):
        self.rand.load_state_dict(d["rand"])
