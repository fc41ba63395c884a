"""Per-layer linear CKA between nets of the study on the same images (the modern reading of the paper's curves).

For two trained nets (e.g. base half0A and a transfer net), every Convolution/InnerProduct layer's output is
computed on the same validation images (centre crop, mean subtracted: Caffe's TEST-phase transform), and
`repro.study.cka.linear_cka` compares them layer by layer. Frozen transferred layers give CKA 1 against their
source; how fast CKA falls above n shows how much the retrained layers re-learn.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..caffemodel import read_mean
from ..data.store import Store
from ..net import Net
from ..weights import copy_weights, read_weights
from .cka import CKAError, linear_cka
from .data import made_if_builtin

REP_TYPES = ("Convolution", "InnerProduct")


def rep_layers(net: Net) -> list[str]:
    return [lp.name for lp in net.net_param.layer if lp.type in REP_TYPES]


def run_weights(run_dir: str | os.PathLike) -> Path:
    """A finished run folder's final.caffemodel (a clear error for anything else)."""
    w = Path(run_dir) / "final.caffemodel"
    if not w.is_file():
        what = "does not exist" if not Path(run_dir).exists() else "has no final.caffemodel (not a finished run)"
        raise CKAError(f"{os.fspath(run_dir)} {what}")
    return w


def load_images(store_dir: str | os.PathLike, mean_file: str | os.PathLike, count: int, crop: int) -> np.ndarray:
    """The first `count` images of a store, centre-cropped to `crop` and mean-subtracted (float32 NCHW)."""
    store_dir, mean_file = made_if_builtin(store_dir), made_if_builtin(mean_file)
    s = Store(store_dir)
    x = np.asarray(s.images[:count], dtype=np.float32)
    h, w = x.shape[2:]
    if crop > min(h, w):
        raise CKAError(f"crop {crop} is larger than the {h}x{w} images of {store_dir}")
    mean = read_mean(mean_file)
    y0, x0 = (h - crop) // 2, (w - crop) // 2   # Caffe's TEST crop: the centre
    return (x - mean[None])[:, :, y0:y0 + crop, x0:x0 + crop]


def representations(deploy, weights, images: np.ndarray, batch: int = 100) -> dict[str, np.ndarray]:
    """{layer: (N, features) float64} for every rep layer of the deploy net loaded with `weights`."""
    net = Net(deploy, phase="TEST", input_shapes={"data": (batch,) + images.shape[1:]})
    layers = rep_layers(net)
    # A transfer net's re-initialised layers are named "<layer>-new" (repro.study.grid); they are the same
    # layer of the deploy net, so their weights are copied under the plain name. Every rep layer must be found:
    # a layer left at its filler values would make CKA meaningless.
    renamed = OrderedDict((name[:-4] if name.endswith("-new") else name, arrays)
                          for name, arrays in read_weights(weights).items())
    found = set(copy_weights(net, renamed, f"weights file {os.fspath(weights)!r}"))
    missing = [n for n in layers if n not in found]
    if missing:
        raise CKAError(f"{os.fspath(weights)}: no weights for layer(s) {missing} of {os.fspath(deploy)}")
    out: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    with torch.no_grad():
        for i in range(0, len(images), batch):
            net.forward(data=torch.from_numpy(np.ascontiguousarray(images[i:i + batch])))
            for n in layers:
                t = net.blobs[net.top_names[n][0]]
                out[n].append(t.reshape(t.shape[0], -1).double().numpy())
    return {n: np.concatenate(v) for n, v in out.items()}


def cka_by_layer(reps_a: dict, reps_b: dict) -> dict[str, float]:
    """{layer: CKA} over the layers both nets have."""
    return {n: linear_cka(reps_a[n], reps_b[n]) for n in reps_a if n in reps_b}


def plot_cka(rows: dict[str, dict[str, float]], path: str | os.PathLike) -> list:
    """CKA against layer, one line per compared net; rows {net name: {layer: cka}}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figures import save_figure
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, by_layer in rows.items():
        ax.plot(range(1, len(by_layer) + 1), list(by_layer.values()), "-o", label=name, ms=4)
    ax.set_xticks(range(1, len(next(iter(rows.values()), {})) + 1))
    ax.set_xticklabels(list(next(iter(rows.values()), {})), fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("layer")
    ax.set_ylabel("linear CKA with the base net")
    ax.legend(fontsize=7)
    return save_figure(fig, Path(path))
