"""ONNX → Caffe net (``NetParameter``) + weights (layer → Caffe blobs), and from there a runnable repro.Net.

Two sources:

* files we exported (repro.onnx.export) carry their deploy prototxt in the metadata (key ``prototxt``):
  the layers come from it verbatim and the weights from the initializers ``L.weight`` / ``L.bias``;
* any other AlexNet-like graph is translated node by node by repro.onnx.translate.

Weights come back in Caffe's shapes, so ``read_onnx_weights`` can stand in for ``read_caffemodel``
(repro.weights.read_weights reads .onnx files with it); they are copied into nets by repro.weights.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
from google.protobuf import text_format
from onnx import numpy_helper

from ..errors import ReproError
from ..proto import caffe_pb2
from ..weights import copy_weights
from .export import PROTOTXT_KEY


class OnnxImportError(ReproError):
    """An ONNX file that cannot become a Caffe net; the message names the file and the nodes at fault."""


def load_model(source) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        return source, "<model>"
    path = Path(source)
    if not path.is_file():
        raise OnnxImportError(f"{path}: no such ONNX file")
    if path.stat().st_size == 0:
        raise OnnxImportError(f"{path}: empty file (0 bytes), not an ONNX model")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, missing external data, ...
        raise OnnxImportError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    # Protobuf decodes many byte strings without complaint (unknown fields are kept); a model must have a graph.
    if not model.graph.node:
        raise OnnxImportError(f"{path}: not an ONNX model (no graph nodes)")
    return model, str(path)


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def onnx_to_caffe(source, input_shape=None):
    """ONNX file or ModelProto → ``(NetParameter, OrderedDict[layer -> list[np.ndarray]])``.

    ``input_shape``: (C, H, W) or (N, C, H, W), for graphs whose input has symbolic spatial sizes."""
    model, where = load_model(source)
    meta = metadata(model)
    if PROTOTXT_KEY in meta:
        return _from_embedded(model, where, meta[PROTOTXT_KEY])
    from .translate import Translator

    return Translator(model, where, input_shape).run()


def read_onnx_weights(source) -> "OrderedDict[str, list[np.ndarray]]":
    """Weights of an ONNX file keyed by Caffe layer name in net order, Caffe shapes, float32 -- what
    ``read_caffemodel`` returns for a .caffemodel (every layer listed; those without blobs with ``[]``)."""
    return onnx_to_caffe(source)[1]


def net_from_onnx(source, phase: str = "TEST", input_shape=None):
    """A runnable repro.Net rebuilt from an ONNX file (ours or AlexNet-like), weights loaded."""
    from ..net import Net

    model, where = load_model(source)
    net_param, weights = onnx_to_caffe(model, input_shape)
    net = Net(net_param, phase=phase, generator=filler_generator())
    copy_weights(net, weights, where, require="all")
    return net


def filler_generator():
    import torch

    # Fillers run before the weights are overwritten; a private generator leaves the global RNG alone.
    return torch.Generator().manual_seed(0)


def deploy_net(model, weights, device=None):
    """The TEST-phase repro.Net of an exported model's embedded prototxt, with ``weights`` copied in: the
    PyTorch side of the check, independent of the file's initializers."""
    from ..net import Net

    text = {p.key: p.value for p in model.metadata_props}[PROTOTXT_KEY]
    net = Net(text, phase="TEST", generator=filler_generator())
    copy_weights(net, weights, "the exported net", require="all")
    return net.to(device) if device is not None else net


def initializer_array(init) -> np.ndarray:
    return np.array(numpy_helper.to_array(init), copy=True)


def _from_embedded(model, where, text):
    try:
        net_param = text_format.Parse(text, caffe_pb2.NetParameter())
    except text_format.ParseError as e:
        raise OnnxImportError(f"{where}: metadata {PROTOTXT_KEY!r} is not a Caffe prototxt ({e})") from None
    inits = {i.name: i for i in model.graph.initializer}
    weights, missing = OrderedDict(), []
    for layer in net_param.layer:
        if layer.type == "Convolution":
            names = [f"{layer.name}.weight"] + ([f"{layer.name}.bias"] if layer.convolution_param.bias_term else [])
        elif layer.type == "InnerProduct":
            names = [f"{layer.name}.weight"] + ([f"{layer.name}.bias"] if layer.inner_product_param.bias_term else [])
        else:  # listed without blobs, as read_caffemodel lists every layer record
            names = [] if layer.type != "Input" else None
        if names is None:
            continue
        missing += [n for n in names if n not in inits]
        weights[layer.name] = [initializer_array(inits[n]) for n in names if n in inits]
    if missing:
        raise OnnxImportError(f"{where}: missing initializers {', '.join(missing)}")
    return net_param, weights
