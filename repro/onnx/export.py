"""Caffe net (TEST phase) → ONNX graph, written node by node from the Caffe layer list.

We do not trace the PyTorch module with ``torch.onnx``: the tracer decomposes LRN into
Pad/AveragePool/Pow/Div (unreadable, and tools that read ONNX back no longer see an LRN), and it names
nodes after PyTorch internals. Here every Caffe layer becomes one ONNX node named after the layer, so a
file can be read side by side with its prototxt. The naming scheme (docs/ONNX.md):

* node ``L`` computes Caffe layer ``L``; the one helper node is ``L/flatten`` (with output ``L/flatten``)
  before an InnerProduct on a >2-D bottom;
* initializers ``L.weight`` and ``L.bias`` hold Caffe's blobs 0 and 1 of layer ``L`` **in Caffe's shapes**
  (Convolution ``(out, in/group, kh, kw)`` = ONNX Conv's W; InnerProduct ``(out, in)`` = Gemm's B with
  ``transB=1``), bit for bit; ``L.ratio`` is a Dropout ratio (not a weight);
* value ``B`` holds what Caffe's blob ``B`` holds after ``Net::Forward``; an earlier version of a blob that
  an in-place layer overwrites (``relu1`` on ``conv1``) is ``B@L``, "blob B as layer L wrote it"
  (``conv1@conv1`` is conv1 before its ReLU);
* the graph input is the data layer's first top (``data``), ``[N, C, H, W]`` with a symbolic batch ``N``;
  the graph outputs are the blobs no kept layer consumes (``prob`` for a deploy net, ``fc8`` for a
  train_val net whose loss and accuracy layers are dropped with the ``label`` they read).

Pure numpy/onnx: no torch here (see repro.onnx.io for export from a repro.Net).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Mapping, Sequence

import numpy as np
import onnx
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper

from ..errors import ReproError
from ..proto import caffe_pb2

OPSET = 17  # >= 13: Softmax over one axis (Caffe's semantics), Dropout ratio as an input.
IR_VERSION = 8  # the oldest IR that carries opset 17, so older runtimes and Netron read the files.
PROTOTXT_KEY = "prototxt"  # metadata key of the embedded deploy prototxt (read back by repro.onnx.importer)

# Layers that feed the net: replaced by the graph input (their first top) in the exported graph.
DATA_TYPES = {"Data", "ImageData", "WindowData", "MemoryData", "HDF5Data", "DummyData", "Input", "Python"}
# Layers that only make sense with labels: dropped, with everything that reads their tops.
LOSS_TYPES = {
    "Accuracy", "SoftmaxWithLoss", "EuclideanLoss", "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss",
    "SigmoidCrossEntropyLoss", "ContrastiveLoss", "Silence", "HDF5Output",
}


class OnnxExportError(ReproError):
    """A net that cannot be written as a faithful ONNX graph (the message names the layer and why)."""


def _spatial(rep: Sequence[int], h: int | None, w: int | None, default: int, what: str, layer: str):
    """Caffe: BaseConvolutionLayer::LayerSetUp reads a repeated field (0, 1 or 2 values) or the _h/_w pair."""
    if h is not None or w is not None:
        if rep:
            raise OnnxExportError(f"layer {layer!r}: both {what} and {what}_h/{what}_w are set")
        return int(h if h is not None else default), int(w if w is not None else default)
    if len(rep) == 0:
        return default, default
    if len(rep) == 1:
        return int(rep[0]), int(rep[0])
    if len(rep) == 2:
        return int(rep[0]), int(rep[1])
    raise OnnxExportError(f"layer {layer!r}: {what} has {len(rep)} values; only 2-D convolution is exported")


def _opt(msg, field):
    return getattr(msg, field) if msg.HasField(field) else None


def conv_geometry(layer) -> dict:
    p = layer.convolution_param
    if p.axis != 1:
        raise OnnxExportError(f"layer {layer.name!r}: convolution_param.axis {p.axis} (only 1 is exported)")
    kh, kw = _spatial(p.kernel_size, _opt(p, "kernel_h"), _opt(p, "kernel_w"), 0, "kernel", layer.name)
    if kh <= 0 or kw <= 0:
        raise OnnxExportError(f"layer {layer.name!r}: convolution_param has no kernel_size")
    ph, pw = _spatial(p.pad, _opt(p, "pad_h"), _opt(p, "pad_w"), 0, "pad", layer.name)
    sh, sw = _spatial(p.stride, _opt(p, "stride_h"), _opt(p, "stride_w"), 1, "stride", layer.name)
    dh, dw = _spatial(p.dilation, None, None, 1, "dilation", layer.name)
    return dict(kernel=(kh, kw), pad=(ph, pw), stride=(sh, sw), dilation=(dh, dw), group=p.group,
                num_output=p.num_output, bias_term=p.bias_term)


def pool_geometry(layer, in_hw: tuple[int, int]) -> dict:
    """Caffe: PoolingLayer::LayerSetUp + Reshape, including the output size and the dropped last window."""
    p = layer.pooling_param
    if p.global_pooling:
        kh, kw, ph, pw, sh, sw = in_hw[0], in_hw[1], 0, 0, 1, 1
    else:
        if p.HasField("kernel_size") == (p.HasField("kernel_h") or p.HasField("kernel_w")):
            raise OnnxExportError(f"layer {layer.name!r}: pooling_param needs kernel_size or kernel_h/kernel_w")
        kh, kw = (p.kernel_size,) * 2 if p.HasField("kernel_size") else (p.kernel_h, p.kernel_w)
        ph, pw = (p.pad_h, p.pad_w) if (p.HasField("pad_h") or p.HasField("pad_w")) else (p.pad,) * 2
        sh, sw = (p.stride_h, p.stride_w) if (p.HasField("stride_h") or p.HasField("stride_w")) else (p.stride,) * 2
    ceil = p.round_mode == caffe_pb2.PoolingParameter.CEIL
    out = []
    for size, k, pad, s in zip(in_hw, (kh, kw), (ph, pw), (sh, sw)):
        n = (math.ceil if ceil else math.floor)((size + 2 * pad - k) / s) + 1
        # Caffe: PoolingLayer::Reshape "ensure that the last pooling starts strictly inside the image".
        if pad and (n - 1) * s >= size + pad:
            n -= 1
        out.append(n)
    return dict(kernel=(kh, kw), pad=(ph, pw), stride=(sh, sw), out=tuple(out), ceil=ceil,
                method=p.pool, global_pooling=p.global_pooling)


def onnx_pool_end_pads(in_hw, geo) -> list[int]:
    """End pads that make ONNX's pooling size formula (which has no dropped-last-window rule) give Caffe's
    size: the largest end pad <= pad that does. Where it is below pad, ONNX's size rule puts the last kept
    window's end at or past H + end, and one more pad would add a window, so that window ends exactly at
    H + end: onnxruntime (which clips to H + end) and Caffe (which clips to H + pad) see the same window,
    values and AVE divisor alike. Checked against onnxruntime for every small case (tests/test_onnx.py)."""
    ends = []
    rnd = math.ceil if geo["ceil"] else math.floor
    for size, k, pad, s, n in zip(in_hw, geo["kernel"], geo["pad"], geo["stride"], geo["out"]):
        end = pad
        while end > 0 and rnd((size + pad + end - k) / s) + 1 > n:
            end -= 1
        if rnd((size + pad + end - k) / s) + 1 != n:
            raise OnnxExportError(f"pooling geometry {geo} at input {in_hw} has no ONNX equivalent")
        ends.append(end)
    return ends


class _Graph:
    """Accumulates nodes/initializers and tracks blob versions and shapes while walking the layers."""

    def __init__(self, layers, input_blob: str):
        self.nodes, self.inits = [], []
        self.shapes: dict[str, tuple] = {}
        self.current: dict[str, str] = {}  # Caffe blob -> ONNX value holding its latest version
        # The last writer of each blob gets the plain name (= Caffe's blob after Forward); the input keeps it.
        self.last_writer = {}
        for layer in layers:
            for t in layer.top:
                self.last_writer[t] = layer.name
        self.input_blob = input_blob

    def bottom(self, name):
        return self.current[name]

    def top(self, layer, name):
        if name == self.input_blob or self.last_writer[name] != layer.name:
            value = f"{name}@{layer.name}"
        else:
            value = name
        self.current[name] = value
        return value

    def init(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.require(arr, requirements='C'), name))  # keeps 0-d 0-d
        return name


def _weights_for(layer, weights, shapes: Sequence[tuple]) -> list[np.ndarray]:
    if layer.name not in weights:
        raise OnnxExportError(f"layer {layer.name!r} ({layer.type}) has no weights")
    blobs = list(weights[layer.name])
    if len(blobs) != len(shapes):
        raise OnnxExportError(f"layer {layer.name!r}: {len(blobs)} weight blobs, expected {len(shapes)}")
    out = []
    for i, (b, shape) in enumerate(zip(blobs, shapes)):
        b = np.asarray(b)
        if b.dtype != np.float32:
            raise OnnxExportError(f"layer {layer.name!r} blob {i}: dtype {b.dtype}, expected float32")
        if tuple(b.shape) != tuple(shape):
            raise OnnxExportError(f"layer {layer.name!r} blob {i}: shape {tuple(b.shape)}, expected {tuple(shape)}")
        out.append(b)
    return out


def _emit(g: _Graph, layer, weights) -> None:
    """One Caffe layer → one ONNX node (plus a Flatten before an InnerProduct on a >2-D bottom)."""
    t, name = layer.type, layer.name
    bottoms = [g.bottom(b) for b in layer.bottom]
    shp = [g.shapes[b] for b in layer.bottom]

    def node(op, inputs, out_shape, **attrs):
        top = g.top(layer, layer.top[0])
        g.shapes[layer.top[0]] = tuple(out_shape)
        g.nodes.append(helper.make_node(op, inputs, [top], name=name, **attrs))

    if t == "Convolution":
        geo = conv_geometry(layer)
        (n, c, h, w), (kh, kw) = shp[0], geo["kernel"]
        if c % geo["group"] or geo["num_output"] % geo["group"]:
            raise OnnxExportError(f"layer {name!r}: channels {c} / num_output {geo['num_output']} not divisible "
                                  "by group")
        bias = geo["bias_term"]
        wshapes = [(geo["num_output"], c // geo["group"], kh, kw)] + ([(geo["num_output"],)] if bias else [])
        blobs = _weights_for(layer, weights, wshapes)
        inputs = [bottoms[0], g.init(f"{name}.weight", blobs[0])] + ([g.init(f"{name}.bias", blobs[1])] if bias else [])
        # Caffe: ConvolutionLayer::compute_output_shape, floor((H + 2p - (d(k-1)+1)) / s) + 1.
        out = [(x + 2 * p - (d * (k - 1) + 1)) // s + 1 for x, p, k, s, d in
               zip((h, w), geo["pad"], geo["kernel"], geo["stride"], geo["dilation"])]
        node("Conv", inputs, (n, geo["num_output"], *out), kernel_shape=list(geo["kernel"]),
             strides=list(geo["stride"]), pads=[*geo["pad"], *geo["pad"]], dilations=list(geo["dilation"]),
             group=geo["group"])
    elif t == "InnerProduct":
        p = layer.inner_product_param
        if p.axis != 1:
            raise OnnxExportError(f"layer {name!r}: inner_product_param.axis {p.axis} (only 1 is exported)")
        k = int(np.prod(shp[0][1:]))
        a = bottoms[0]
        if len(shp[0]) > 2:  # Caffe: InnerProductLayer flattens the bottom from `axis` on, C-major
            a = f"{name}/flatten"
            g.nodes.append(helper.make_node("Flatten", [bottoms[0]], [a], name=a, axis=1))
        wshape = (k, p.num_output) if p.transpose else (p.num_output, k)
        blobs = _weights_for(layer, weights, [wshape] + ([(p.num_output,)] if p.bias_term else []))
        inputs = [a, g.init(f"{name}.weight", blobs[0])] + ([g.init(f"{name}.bias", blobs[1])] if p.bias_term else [])
        node("Gemm", inputs, (shp[0][0], p.num_output), transB=0 if p.transpose else 1)
    elif t == "ReLU":
        slope = layer.relu_param.negative_slope
        if slope:
            node("LeakyRelu", bottoms, shp[0], alpha=slope)
        else:
            node("Relu", bottoms, shp[0])
    elif t in ("Sigmoid", "TanH"):
        node({"Sigmoid": "Sigmoid", "TanH": "Tanh"}[t], bottoms, shp[0])
    elif t == "LRN":
        p = layer.lrn_param
        if p.norm_region != caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            raise OnnxExportError(f"layer {name!r}: LRN norm_region WITHIN_CHANNEL has no ONNX operator")
        # Caffe: LRNLayer::CrossChannelForward scale = k + alpha/n * sum x^2 over n channels; ONNX LRN
        # divides alpha by size the same way, so the parameters map one to one.
        node("LRN", bottoms, shp[0], alpha=p.alpha, beta=p.beta, bias=p.k, size=p.local_size)
    elif t == "Pooling":
        n, c, h, w = shp[0]
        geo = pool_geometry(layer, (h, w))
        if geo["method"] == caffe_pb2.PoolingParameter.STOCHASTIC:
            raise OnnxExportError(f"layer {name!r}: STOCHASTIC pooling has no ONNX operator")
        op = "MaxPool" if geo["method"] == caffe_pb2.PoolingParameter.MAX else "AveragePool"
        if geo["global_pooling"]:
            node("Global" + op, bottoms, (n, c, 1, 1))
        else:
            # Caffe: PoolingLayer::Forward_cpu clips each window to the (padded) input, MAX ignores padding
            # and AVE divides by the window clipped to H + pad: onnxruntime's ceil_mode=1 with
            # count_include_pad=1 computes exactly that (tests/test_onnx.py::test_pooling_matches_caffe).
            attrs = dict(count_include_pad=1) if op == "AveragePool" else {}
            node(op, bottoms, (n, c, *geo["out"]), kernel_shape=list(geo["kernel"]), strides=list(geo["stride"]),
                 pads=[*geo["pad"], *onnx_pool_end_pads((h, w), geo)], ceil_mode=int(geo["ceil"]), **attrs)
    elif t == "Dropout":
        # TEST phase: Caffe's DropoutLayer copies its bottom; so does ONNX Dropout at inference.
        ratio = g.init(f"{name}.ratio", np.array(layer.dropout_param.dropout_ratio, np.float32))
        node("Dropout", [bottoms[0], ratio], shp[0])
    elif t == "Softmax":
        axis = layer.softmax_param.axis
        node("Softmax", bottoms, shp[0], axis=axis)  # opset >= 13: over one axis, as Caffe's SoftmaxLayer
    elif t == "Flatten":
        p = layer.flatten_param
        if p.end_axis not in (-1, len(shp[0]) - 1):
            raise OnnxExportError(f"layer {name!r}: Flatten end_axis {p.end_axis} (only the last axis is exported)")
        axis = p.axis % len(shp[0])
        node("Flatten", bottoms, (*shp[0][:axis], int(np.prod(shp[0][axis:]))), axis=axis)
    elif t == "Concat":
        p = layer.concat_param
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        out = list(shp[0])
        out[axis] = sum(s[axis] for s in shp)
        node("Concat", bottoms, out, axis=axis)
    elif t == "Eltwise":
        p = layer.eltwise_param
        if any(c != 1 for c in p.coeff):
            raise OnnxExportError(f"layer {name!r}: Eltwise coefficients other than 1 are not exported")
        op = {caffe_pb2.EltwiseParameter.SUM: "Sum", caffe_pb2.EltwiseParameter.MAX: "Max"}.get(p.operation)
        if op is None:
            raise OnnxExportError(f"layer {name!r}: Eltwise PROD is not exported")
        node(op, bottoms, shp[0])
    elif t == "Split":
        # Caffe: SplitLayer shares its bottom's data with every top; the tops are the same ONNX value.
        for top in layer.top:
            g.current[top] = bottoms[0]
            g.shapes[top] = shp[0]
    else:
        raise OnnxExportError(f"layer {name!r}: type {t!r} is not exported to ONNX")


def deploy_layers(net_param, input_shape=None):
    """The layers an exported graph computes, the input blob and its (C, H, W).

    Data layers give way to the graph input (their first top); loss and accuracy layers are dropped with
    every layer that reads a blob they or the data layers' other tops (``label``) produce.
    """
    kept, dropped_blobs, input_blob, shape = [], set(), None, None
    for layer in net_param.layer:
        if layer.type in DATA_TYPES:
            if input_blob is not None:
                raise OnnxExportError(f"layer {layer.name!r}: a second data layer (only one input is exported)")
            input_blob = layer.top[0]
            dropped_blobs.update(layer.top[1:])
            shape = _data_shape(layer, net_param)
        elif layer.type in LOSS_TYPES or any(b in dropped_blobs for b in layer.bottom):
            dropped_blobs.update(t for t in layer.top if t not in layer.bottom)
        else:
            kept.append(layer)
    if input_blob is None:  # (read_net turns legacy `input:` fields into an Input layer)
        raise OnnxExportError("the net has no data or Input layer")
    if input_shape is not None:
        shape = tuple(int(x) for x in input_shape)[-3:]
    if shape is None or len(shape) != 3:
        raise OnnxExportError(f"cannot tell the (C, H, W) of blob {input_blob!r}; pass input_shape")
    return kept, input_blob, shape


def _data_shape(layer, net_param):
    """(C, H, W) of a data layer's first top, as repro/layers/inputs.py declares it; None if the prototxt
    does not say (the size then comes from the data: pass input_shape)."""
    if layer.type == "Input":
        shapes = layer.input_param.shape
        dims = list(shapes[0].dim) if len(shapes) else []
        return tuple(dims[1:]) if len(dims) == 4 else None
    tp = layer.transform_param
    if layer.type == "MemoryData":
        mp = layer.memory_data_param
        return (mp.channels, mp.height, mp.width) if mp.channels and mp.height and mp.width else None
    if layer.type == "ImageData":
        ip = layer.image_data_param
        hw = (tp.crop_size,) * 2 if tp.crop_size else (ip.new_height, ip.new_width)
        return (3 if ip.is_color else 1, *hw) if all(hw) else None
    if layer.type == "Data" and tp.crop_size:
        # Caffe: DataTransformer crops crop_size squares; datums are colour (3 channels) unless force_gray.
        return (1 if tp.force_gray else 3, tp.crop_size, tp.crop_size)
    return None


def deploy_prototxt(net_param, kept, input_blob, chw) -> str:
    """The exported graph as a deploy prototxt (Input layer + kept layers), embedded in the metadata so
    repro.onnx.importer can rebuild the exact Caffe net (layer parameters, not only what ONNX attributes say)."""
    out = caffe_pb2.NetParameter(name=net_param.name)
    inp = out.layer.add(name=input_blob, type="Input")
    inp.top.append(input_blob)
    inp.input_param.shape.add().dim.extend([1, *chw])
    for layer in kept:
        new = out.layer.add()
        new.CopyFrom(layer)
        del new.include[:]
        del new.exclude[:]
        # filter_net stamps the net's phase on each layer; the file is TEST-phase whoever reads it.
        new.ClearField("phase")
        new.ClearField("blobs")
    return text_format.MessageToString(out)


def caffe_to_onnx(net_param, weights: Mapping[str, Sequence[np.ndarray]], *, input_shape=None,
                  metadata: Mapping[str, object] | None = None, doc: str = "") -> onnx.ModelProto:
    """A TEST-phase ``NetParameter`` and its weights (layer → Caffe blobs, float32 numpy) → ONNX model.

    ``net_param`` must already be filtered to the TEST phase. ``input_shape``: (C, H, W) or (N, C, H, W)
    of the data blob when the net does not say it (a Data layer without crop_size). ``metadata`` values
    are written as strings into ``metadata_props``.
    """
    kept, input_blob, chw = deploy_layers(net_param, input_shape)
    g = _Graph(kept, input_blob)
    g.current[input_blob] = input_blob
    g.shapes[input_blob] = ("N", *chw)
    for layer in kept:
        for b in layer.bottom:
            if b not in g.current:
                raise OnnxExportError(f"layer {layer.name!r}: bottom {b!r} is produced by no kept layer")
        _emit(g, layer, weights)
    produced = OrderedDict((t, None) for layer in kept for t in layer.top)
    read = {b for layer in kept for b in layer.bottom if b not in layer.top}
    outputs = [b for b in produced if b not in read]
    if not outputs:
        raise OnnxExportError("the exported net has no output blob")
    graph_outputs = []
    for b in outputs:
        if b == input_blob:
            raise OnnxExportError(f"blob {b!r} is both the input and an output of the exported net")
        if g.current[b] != b:  # a Split top: its value is the bottom's; give the output its own name
            g.nodes.append(helper.make_node("Identity", [g.current[b]], [b], name=f"{b}/output"))
        graph_outputs.append(helper.make_tensor_value_info(b, TensorProto.FLOAT, list(g.shapes[b])))
    graph = helper.make_graph(
        g.nodes, net_param.name or "net",
        [helper.make_tensor_value_info(input_blob, TensorProto.FLOAT, ["N", *chw])],
        graph_outputs, initializer=g.inits, doc_string=doc)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="repro-transfer", ir_version=IR_VERSION)
    from .. import __version__

    model.producer_version = __version__
    meta = {PROTOTXT_KEY: deploy_prototxt(net_param, kept, input_blob, chw), "repro_version": __version__}
    meta.update({k: v for k, v in (metadata or {}).items() if v is not None})
    helper.set_model_props(model, {k: str(v) for k, v in meta.items()})
    return model
