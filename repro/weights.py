"""Weights by Caffe layer name: read them from any file we support, copy them into a Net by name.

One implementation of Caffe's ``Net::CopyTrainedLayersFrom`` (net.cpp), used by ``Net(weights=...)``,
``Net.copy_from``, the solver's ``weights``, the study's base loader and the ONNX tools:

* ``read_weights(path)``: ``{layer: [blob, ...]}`` (Caffe shapes, float32, file order) from a ``.caffemodel``,
  a ``.pt`` (a repro snapshot state or ``Net.state_dict_caffe()``), an ``.onnx`` (ours or AlexNet-like), or a
  run folder (its ``final.caffemodel`` / ``final.pt`` / ``final.onnx``);
* ``copy_weights(net, weights, where, require=...)``: Caffe's rule -- a source layer the net lacks is skipped
  ("Ignoring source layer"); a net layer the source lacks keeps its initialisation (how a renamed
  ``conv4-new`` starts afresh); a blob count or a shape that differs is an error naming the layer and both
  shapes, where a legacy 4-D (num, channels, height, width) blob matches the same dims padded with leading 1s
  (Blob::ShapeEquals).

Caffe copies whatever matches and says nothing when nothing does; a file of another net then silently leaves
every filler weight in place. Here copying fewer layers than the caller requires is an error: by default at
least one learnable layer must be copied (``require="any"``); ``require="all"`` asks for every learnable layer
of the net, a list of names for exactly those, and ``require=None`` accepts anything (the caller said so).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from . import caffemodel
from .errors import ReproError

# A run folder's final weights, in lookup order (repro/study/cells.py FINAL_WEIGHTS names the same files).
RUN_FOLDER_WEIGHTS = ("final.caffemodel", "final.pt", "final.onnx")


class WeightsError(ReproError):
    """Weights that cannot be read or do not fit the net; the message names the file and the layer."""


class CopyReport(list):
    """What a copy did. The list itself is the layers whose blobs were copied, in source order (what
    ``Net.copy_from`` has always returned); ``skipped``: source layers with blobs that the net lacks;
    ``missing``: the net's learnable layers the source lacks (they keep their initialisation)."""

    def __init__(self, source: str, copied, skipped, missing):
        super().__init__(copied)
        self.source, self.skipped, self.missing = source, list(skipped), list(missing)

    @property
    def copied(self) -> list[str]:
        return list(self)

    def __str__(self) -> str:
        return (f"copied {len(self)} layers from {self.source} ({', '.join(self) or 'none'}); "
                f"not in the net: {', '.join(self.skipped) or 'none'}; kept their initialisation: "
                f"{', '.join(self.missing) or 'none'}")


def read_weights(path) -> "OrderedDict[str, list[np.ndarray]]":
    """``{layer: [blob, ...]}`` from a .caffemodel, .pt, .onnx or run folder (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in RUN_FOLDER_WEIGHTS if (path / n).is_file()]
        if not found:
            raise WeightsError(f"{path}: a folder without final weights (looked for {', '.join(RUN_FOLDER_WEIGHTS)})")
        path = found[0]
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: empty weights file (0 bytes)")
    if path.suffix == ".onnx":
        # onnx is needed only for ONNX files; importing it here keeps repro.net free of it (and of a cycle).
        from .onnx.importer import read_onnx_weights

        return read_onnx_weights(path)
    if path.suffix == ".pt":
        return pt_weights(path)
    return caffemodel.read_caffemodel(path)


def pt_weights(path, state=None) -> "OrderedDict[str, list[np.ndarray]]":
    """Caffe blobs by layer from a ``.pt`` file (or its loaded ``state``): a repro snapshot state (a dict with
    ``weights`` / ``params`` / ``model`` by layer) or ``Net.state_dict_caffe()`` (``{"LAYER/j": tensor}``)."""
    if state is None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle/zip errors of every kind: the file is not a torch save
            raise WeightsError(f"{path}: not a readable .pt file ({type(e).__name__}: {e})") from None
    if isinstance(state, dict):
        for key in ("weights", "params", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    out = OrderedDict()
    if isinstance(state, dict) and state and all(isinstance(v, (list, tuple)) for v in state.values()):
        for name, blobs in state.items():  # layer -> [weight, bias]
            out[name] = [np.asarray(b.detach().cpu().numpy() if hasattr(b, "detach") else b, np.float32)
                         for b in blobs]
    elif isinstance(state, dict) and state and all("/" in k and k.rsplit("/", 1)[1].isdigit() for k in state):
        for key, t in state.items():  # Net.state_dict_caffe(): "LAYER/j"
            name, j = key.rsplit("/", 1)
            out.setdefault(name, []).append((int(j), t.detach().cpu().numpy()))
        out = OrderedDict((n, [a for _, a in sorted(v)]) for n, v in out.items())
    else:
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise WeightsError(f"{path}: no Caffe weights found (expected a snapshot state with 'weights' by "
                           f"layer, or 'LAYER/j' tensors; found {keys})")
    return out


def legacy_shape_equals(arr_shape, shape) -> bool:
    """Caffe's Blob::ShapeEquals for a legacy (num, channels, height, width) blob: the blob's shape padded
    with leading 1s to 4 axes must equal those dims."""
    return len(arr_shape) == 4 and len(shape) <= 4 and tuple(arr_shape) == (1,) * (4 - len(shape)) + tuple(shape)


def copy_weights(net, weights, where: str, require="any") -> CopyReport:
    """Copy ``weights`` ({layer: [blob, ...]}) into ``net`` by layer name (Caffe's CopyTrainedLayersFrom;
    the module docstring gives the rule and ``require``). ``where`` names the source in messages."""
    learnable = [n for n, blobs in net.params.items() if len(blobs)]
    copied, skipped = [], []
    for name, arrays in weights.items():
        arrays = [np.asarray(a) for a in arrays]
        if name not in net.top_names:
            if arrays:
                skipped.append(name)
            continue
        target = net.layer(name).caffe_blobs
        if len(arrays) != len(target):
            raise WeightsError(f"layer {name!r}: incompatible number of blobs: {where} has {len(arrays)}, the "
                               f"net's layer has {len(target)}")
        for j, (arr, blob) in enumerate(zip(arrays, target)):
            shape = tuple(blob.shape)
            if tuple(arr.shape) != shape and not legacy_shape_equals(arr.shape, shape):
                raise WeightsError(f"layer {name!r}: cannot copy param {j}: shape mismatch; {where} has shape "
                                   f"{tuple(arr.shape)}, the net's layer has shape {shape}")
            with torch.no_grad():
                blob.copy_(torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float32)).reshape(shape))
        if arrays:
            copied.append(name)
    report = CopyReport(where, copied, skipped, [n for n in learnable if n not in copied])
    _check_required(report, learnable, require)
    return report


def copy_file(net, path, require="any") -> CopyReport:
    """``copy_weights`` from a file or run folder (``read_weights``)."""
    return copy_weights(net, read_weights(path), f"weights file {os.fspath(path)!r}", require)


def _check_required(report: CopyReport, learnable: list[str], require) -> None:
    if require is None or require is False:
        return
    if require == "any":
        if learnable and not report:
            raise WeightsError(f"{report.source} matches no layer of the net: it has layers "
                               f"{_names(report.skipped)}, the net's learnable layers are {_names(learnable)} "
                               f"(pass require=None to accept copying nothing)")
        return
    wanted = learnable if require == "all" else list(require)
    short = [n for n in wanted if n not in report]
    if short:
        raise WeightsError(f"{report.source} has no weights for layer(s) {', '.join(short)} of the net "
                           f"(copied: {', '.join(report) or 'none'})")


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit]) or "none"
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")
