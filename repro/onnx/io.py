"""ONNX interchange, the public face: export a net (verified at once), check a file, read weights, import.

* ``export_onnx(source, out_path, ...)``: a repro.Net, a prototxt (+ weights), a run directory or a
  ``.state.pt`` snapshot → ``out_path`` (written atomically, only after it passed ``check_onnx``);
* ``check_onnx(path, reference=None)``: ONNX checker + onnxruntime vs PyTorch (repro.onnx.verify);
* ``read_onnx_weights(path)``: layer → Caffe blobs, like ``read_caffemodel`` (repro.onnx.importer);
* ``net_from_onnx(path)``: a runnable repro.Net (also ``repro.Net.from_onnx``).

The graph itself is written by repro.onnx.export; docs/ONNX.md documents the naming scheme.
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_write
from ..weights import copy_file, copy_weights, pt_weights, read_weights
from .export import OnnxExportError, caffe_to_onnx
from .importer import (
    OnnxImportError,
    deploy_net,
    filler_generator,
    net_from_onnx,
    onnx_to_caffe,
    read_onnx_weights,
)
from .verify import TOLERANCE, CheckReport, OnnxCheckError, check_onnx

__all__ = ["export_onnx", "check_onnx", "read_onnx_weights", "net_from_onnx", "onnx_to_caffe", "load_weights",
           "copy_from_onnx",
           "OnnxExportError", "OnnxImportError", "OnnxCheckError", "CheckReport", "ExportResult"]

# Metadata keys a run can fill in (docs/ONNX.md); values are stored as strings.
META_KEYS = ("source_prototxt", "weights", "iteration", "split", "half", "kind", "n", "test_accuracy", "cell",
             "source_half", "test_top1_best10_mean", "channel_order", "resize", "crop", "mean", "labels")


def preprocess_meta(prototxt) -> dict:
    """What a user of the exported net must do to an image (tools/classify.py reads it): the TEST Data layer's
    transform (Caffe's DataTransformer) as metadata: channel_order BGR, resize 256 (the store's squash size),
    crop, mean (the mean image as float32 base64, or per-channel values) and labels (the dataset's classes,
    when its source is a prepare_imagenet index list). Empty when the prototxt has no readable Data layer."""
    import base64

    from ..caffemodel import read_mean
    from ..data.store import Store, is_index, is_store, open_index
    from ..prototxt import filter_net, read_net

    try:
        layers = [lp for lp in filter_net(read_net(prototxt), "TEST").layer if lp.type == "Data"]
    except (ValueError, OSError):
        return {}
    if not layers:
        return {}
    lp, base = layers[0], Path(prototxt).parent
    tp, out = lp.transform_param, {"channel_order": "BGR"}

    def find(name):
        for c in (Path(name), Path.cwd() / name, base / name):
            if c.exists():
                return c
        return None

    src = find(lp.data_param.source) if lp.data_param.source else None
    if src is not None and (is_index(src) or is_store(src)):
        view = open_index(src) if is_index(src) else Store(src)
        out["resize"] = json.dumps(list(view.shape[1:]))
        if view.classes:
            out["labels"] = json.dumps(list(view.classes))
    if tp.crop_size:
        out["crop"] = str(int(tp.crop_size))
    mean_file = find(tp.mean_file) if tp.mean_file else None
    if mean_file is not None:
        m = np.asarray(read_mean(mean_file), np.float32)
        m = m.reshape(m.shape[-3:])
        out["mean"] = json.dumps({"shape": list(m.shape), "float32_base64": base64.b64encode(m.tobytes()).decode()})
    elif tp.mean_value:
        out["mean"] = json.dumps([float(v) for v in tp.mean_value])
    return out


@dataclass
class ExportResult:
    path: Path
    report: CheckReport | None  # None with verify=False


# One reader and one copy-by-name for every weights file (repro/weights.py); the names stay here for callers.
load_weights = read_weights


def copy_from_onnx(net, path) -> list[str]:
    """``net.copy_from`` for an ONNX file: Caffe's Net::CopyTrainedLayersFrom rule (repro.weights)."""
    return copy_file(net, path)


def _run_dir(path: Path):
    """(prototxt, weights, metadata) of a run directory (repro.train, repro.study.cells: val.prototxt,
    cell.json, final.caffemodel / final.pt; log.jsonl and summary.json for the iteration and accuracy)."""
    protos = [path / n for n in ("val.prototxt", "deploy.prototxt", "train_val.prototxt", "train.prototxt")
              if (path / n).is_file()]
    weights = [path / n for n in ("final.caffemodel", "final.pt") if (path / n).is_file()]
    if not weights:
        weights = sorted(path.glob("*.caffemodel"), key=lambda p: p.stat().st_mtime)[-1:]
    if not protos or not weights:
        raise OnnxExportError(f"{path}: not a run directory (needs val.prototxt or train.prototxt and "
                              f"final.caffemodel / final.pt)")
    return protos[0], weights[0], _run_meta(path)


def _run_meta(path: Path) -> dict:
    """What a run directory says about its net: cell.json (kind, n, split, half) and the test record."""
    meta = {}
    cell = path / "cell.json"
    if cell.is_file():
        try:
            c = json.loads(cell.read_text())
        except json.JSONDecodeError as e:
            raise OnnxExportError(f"{cell}: not JSON ({e})") from None
        meta.update({k: c[k] for k in ("cell", "kind", "n", "split") if c.get(k) not in (None, "")})
        if c.get("target"):
            meta["half"] = c["target"]
        if c.get("source"):
            meta["source_half"] = c["source"]
    meta.update(_last_test(path))
    return meta


def _state_source(path: Path):
    """(net, metadata, weights) for a ``.pt`` snapshot state or final.pt: the run directory's val.prototxt
    when the file sits in one (``<run>/final.pt``, ``<run>/snapshots/*.state.pt``), else the net its
    solver names."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise OnnxExportError(f"{path}: not a readable .pt file ({type(e).__name__}: {e})") from None
    weights = pt_weights(path, state)
    for run in (path.parent, path.parent.parent):
        if (run / "val.prototxt").is_file():
            meta = _run_meta(run)
            if isinstance(state, dict) and "iter" in state:
                meta["iteration"] = state["iter"]  # these weights' own iteration, not the log's last test
            return run / "val.prototxt", meta, weights
    meta = {"iteration": state["iter"]} if isinstance(state, dict) and "iter" in state else {}
    if isinstance(state, dict) and isinstance(state.get("solver"), str):
        from google.protobuf import text_format

        from ..proto import caffe_pb2

        solver = text_format.Parse(state["solver"], caffe_pb2.SolverParameter())
        if solver.HasField("net_param"):
            return solver.net_param, meta, weights
        for name in (solver.net, solver.train_net):
            if name and Path(name).is_file():
                return Path(name), meta, weights
    raise OnnxExportError(f"{path}: cannot tell which net these weights belong to; pass the prototxt as --model "
                          f"and the .pt as --weights")


def _last_test(path: Path) -> dict:
    """iteration and test_accuracy (top-1) of the run's last test point (repro.runlog), and the paper's metric
    from summary.json, when present."""
    import json

    from ..runlog import RunLogError, read_test_points

    found = {}
    log = path / "log.jsonl"
    if log.is_file():
        try:
            points = read_test_points(log)
        except RunLogError:
            points = []  # metadata only: a damaged log does not stop an export
        if points:
            found = {"iteration": points[-1].iter, "test_accuracy": points[-1].top1}
    summary = path / "summary.json"
    if summary.is_file():
        try:
            s = json.loads(summary.read_text())
        except json.JSONDecodeError:
            s = {}
        if s.get("iter") is not None:
            found["iteration"] = s["iter"]
        if s.get("top1_best10_mean") is not None:
            found["test_top1_best10_mean"] = s["top1_best10_mean"]
    return found


def source_net(source, weights=None, input_shape=None):
    """(repro.Net, its TEST-phase NetParameter, metadata) from any export source (see export_onnx)."""
    from ..net import Net
    from ..prototxt import filter_net, read_net

    meta = {}
    if isinstance(source, Net):
        net = source
        if net.source:
            meta["source_prototxt"] = net.source
    else:
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            proto, found, meta = _run_dir(Path(source))
            weights = weights if weights is not None else found
            source = proto
        elif isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".pt":
            pt = os.fspath(source)
            source, meta, state_weights = _state_source(Path(pt))
            if weights is None:
                weights, meta["weights"] = state_weights, pt
        if isinstance(source, (str, os.PathLike)):
            meta.setdefault("source_prototxt", os.fspath(source))
        kwargs = {}
        if input_shape is not None:
            top = _first_data_top(filter_net(read_net(source), "TEST"))
            kwargs["input_shapes"] = {top: (1, *tuple(int(x) for x in input_shape)[-3:])}
        net = Net(source, phase="TEST", generator=filler_generator(), **kwargs)
    if isinstance(weights, dict):  # already read (a .pt source)
        copy_weights(net, weights, meta.get("weights", "the weights"))
    elif weights is not None:
        meta.setdefault("weights", os.fspath(weights))
        copy_file(net, weights)
    test_param = net.net_param
    if net.phase != "TEST" and net.source:
        # A training net: export its prototxt's TEST phase (the weights are the same layers).
        test_param = filter_net(read_net(net.source), "TEST")
    return net, test_param, meta


def _first_data_top(net_param):
    from .export import DATA_TYPES

    for layer in net_param.layer:
        if layer.type in DATA_TYPES:
            return layer.top[0]
    raise OnnxExportError("the net has no data or Input layer")


def net_weights(net) -> "OrderedDict[str, list[np.ndarray]]":
    return OrderedDict((name, [p.detach().to("cpu").float().numpy() for p in params])
                       for name, params in net.params.items())


def _reference(net, model, blobs):
    """The PyTorch side of the check: the net itself when it is the exported deploy net (TEST phase, the
    same inputs and outputs), else a TEST-phase net of the embedded prototxt with the same weights."""
    graph_in = {i.name for i in model.graph.input}
    graph_out = {o.name for o in model.graph.output}
    if net.phase == "TEST" and set(net.inputs) == graph_in and set(net.outputs) == graph_out:
        return net
    device = next((p.device for blobs_ in net.params.values() for p in blobs_), None)
    return deploy_net(model, blobs, device=device)


def export_onnx(source, out_path, *, weights=None, input_shape=None, metadata=None, verify: bool = True,
                batch_size: int = 2, tolerance: float = TOLERANCE) -> ExportResult:
    """Export the TEST-phase net of ``source`` to ``out_path``.

    source: a repro.Net (either phase: its data, loss and accuracy layers are left out), a prototxt path,
    text or NetParameter, or a run directory; ``weights`` (.caffemodel, .onnx or .pt) are loaded into it
    first. ``metadata``: extra key -> value (see META_KEYS). With ``verify`` the file is checked (ONNX
    checker, then onnxruntime vs a TEST-phase repro.Net with the same weights, on ``batch_size`` inputs)
    before it replaces ``out_path``; a file that fails is not left behind.
    """
    import onnx

    net, test_param, meta = source_net(source, weights, input_shape)
    if meta.get("source_prototxt"):
        meta.update(preprocess_meta(meta["source_prototxt"]))
    meta.update({k: v for k, v in (metadata or {}).items() if v is not None})
    blobs = net_weights(net)
    model = caffe_to_onnx(test_param, blobs, input_shape=input_shape, metadata=meta)
    out_path = Path(out_path)
    report = None

    def write_checked(tmp):  # the file takes its name only after it passed the check
        nonlocal report
        onnx.save(model, tmp)
        if verify:
            report = check_onnx(tmp, reference=_reference(net, model, blobs), batch_size=batch_size,
                                tolerance=tolerance)

    atomic_write(out_path, write_checked)
    if report is not None:
        report.path = os.fspath(out_path)
    return ExportResult(out_path, report)
