"""A foreign ONNX graph (AlexNet-like) → Caffe layers, node by node: Conv, Relu/LeakyRelu,
MaxPool/AveragePool and their Global forms, LRN, Gemm, MatMul(+Add), Dropout, Softmax, Flatten/Reshape,
Concat, Sum/Add/Max, Sigmoid, Tanh, Identity, Constant. Each node becomes the Caffe layer with the same
numerics, named after the node, or the file is refused with an error naming every operator or initializer
that stands in the way (repro.onnx.importer reads our own exports from their embedded prototxt instead).
"""
from __future__ import annotations

import math
from collections import OrderedDict, defaultdict

import numpy as np
import onnx

from ..proto import caffe_pb2
from .importer import OnnxImportError, initializer_array

SUPPORTED_OPS = (
    "Conv", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "MaxPool", "AveragePool", "GlobalMaxPool",
    "GlobalAveragePool", "LRN", "Gemm", "MatMul", "Add", "Sum", "Max", "Dropout", "Softmax", "Flatten",
    "Reshape", "Concat", "Identity", "Constant",
)
_IP_OPS = ("Gemm", "MatMul")  # consumers that flatten their input themselves, as Caffe's InnerProduct does


class Translator:
    """Foreign ONNX graph → Caffe layers, one node at a time (in the graph's topological order)."""

    def __init__(self, model, where, input_shape):
        self.model, self.where, self.g = model, where, model.graph
        self.consts = {i.name: initializer_array(i) for i in self.g.initializer}
        self.consumers = defaultdict(list)
        for node in self.g.node:
            if node.op_type == "Constant":
                self.consts[node.output[0]] = self._constant(node)
            for i in node.input:
                self.consumers[i].append(node)
        self.alias: dict[str, str] = {}
        self.net = caffe_pb2.NetParameter(name=self.g.name or "net")
        self.weights = OrderedDict()
        self.layer_names = set()
        self.input_shape = input_shape

    def fail(self, msg):
        raise OnnxImportError(f"{self.where}: {msg}")

    def _constant(self, node):
        for a in node.attribute:
            if a.name == "value":
                return initializer_array(a.t)
        self.fail(f"Constant node {node.name!r}: only the 'value' attribute is supported")

    # ------------------------------------------------------------------------------------------ checks
    def _check(self):
        bad = defaultdict(list)
        for node in self.g.node:
            if node.op_type not in SUPPORTED_OPS or (node.domain not in ("", "ai.onnx")):
                bad[node.op_type].append(node.name or node.output[0])
        if bad:
            listed = "; ".join(f"{op} (nodes {', '.join(map(repr, names))})" for op, names in bad.items())
            self.fail(f"unsupported ONNX operators: {listed}. Supported: {', '.join(SUPPORTED_OPS)}")
        produced = {o for node in self.g.node for o in node.output}
        inputs = [i for i in self.g.input if i.name not in self.consts]
        missing = []
        for node in self.g.node:
            param_slots = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}.get(node.op_type, ())
            for k, name in enumerate(node.input):
                if not name or name in self.consts or name in produced:
                    continue
                if k in param_slots or name not in {i.name for i in inputs}:
                    missing.append(f"{name} (input {k} of {node.op_type} {node.name or node.output[0]!r})")
        if missing:
            self.fail(f"missing initializers: {'; '.join(missing)}")
        data = [i for i in inputs if any(i.name in n.input for n in self.g.node)]
        if len(data) != 1:
            self.fail(f"expected one data input, found {[i.name for i in data]}")
        return data[0]

    def _shapes(self, data):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in data.type.tensor_type.shape.dim]
        if self.input_shape is not None:
            dims = ([dims[0] if dims and dims[0] else 1] + list(self.input_shape))[-4:]
        if len(dims) != 4 or any(d is None or d <= 0 for d in dims[1:]):
            self.fail(f"input {data.name!r} has shape {dims}; a static (C, H, W) is needed (pass input_shape)")
        dims[0] = dims[0] or 1
        m = onnx.ModelProto()
        m.CopyFrom(self.model)
        graph_input = m.graph.input[[i.name for i in m.graph.input].index(data.name)]
        for d, v in zip(graph_input.type.tensor_type.shape.dim, dims):
            d.Clear()
            d.dim_value = v
        try:
            m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        except Exception as e:
            self.fail(f"ONNX shape inference failed ({e})")
        shapes = {}
        for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input):
            t = vi.type.tensor_type
            if t.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        return dims, shapes

    # ------------------------------------------------------------------------------------------ helpers
    def blob(self, name):
        return self.alias.get(name, name)

    def layer(self, node, ltype, bottoms=None, tops=None):
        name = node.name or node.output[0]
        while name in self.layer_names:
            name += "_"
        self.layer_names.add(name)
        layer = self.net.layer.add(name=name, type=ltype)
        layer.bottom.extend(self.blob(b) for b in (bottoms if bottoms is not None else node.input[:1]))
        layer.top.extend(tops if tops is not None else node.output[:1])
        self.weights[name] = []  # Convolution / InnerProduct fill theirs in
        return layer

    def const(self, node, k, what):
        if k >= len(node.input) or not node.input[k]:
            return None
        if node.input[k] not in self.consts:
            self.fail(f"{node.op_type} {node.name!r}: {what} ({node.input[k]!r}) must be an initializer")
        return self.consts[node.input[k]]

    @staticmethod
    def attrs(node):
        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def flattens_only_into_ip(self, node):
        users = self.consumers[node.output[0]]
        return users and all(u.op_type in _IP_OPS and u.input[0] == node.output[0] for u in users) and \
            node.output[0] not in {o.name for o in self.g.output}

    # ------------------------------------------------------------------------------------------ run
    def run(self):
        data = self._check()
        dims, self.shapes = self._shapes(data)
        inp = self.net.layer.add(name=data.name, type="Input")
        inp.top.append(data.name)
        inp.input_param.shape.add().dim.extend(dims)
        self.layer_names.add(data.name)
        skip = set()
        for node in self.g.node:
            if node.op_type == "Constant" or id(node) in skip:
                continue
            fn = getattr(self, "op_" + node.op_type)
            fn(node, skip)
        return self.net, self.weights

    def op_Identity(self, node, skip):
        self.alias[node.output[0]] = self.blob(node.input[0])

    def _simple(self, node, ltype):
        return self.layer(node, ltype)

    def op_Relu(self, node, skip):
        self._simple(node, "ReLU")

    def op_LeakyRelu(self, node, skip):
        self._simple(node, "ReLU").relu_param.negative_slope = self.attrs(node).get("alpha", 0.01)

    def op_Sigmoid(self, node, skip):
        self._simple(node, "Sigmoid")

    def op_Tanh(self, node, skip):
        self._simple(node, "TanH")

    def op_LRN(self, node, skip):
        a = self.attrs(node)
        p = self._simple(node, "LRN").lrn_param
        # ONNX LRN and Caffe's ACROSS_CHANNELS LRN both divide alpha by the window size.
        p.local_size, p.alpha, p.beta, p.k = a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0)

    def op_Dropout(self, node, skip):
        if len(node.output) > 1 and node.output[1] and self.consumers[node.output[1]]:
            self.fail(f"Dropout {node.name!r}: its mask output is used")
        ratio = self.const(node, 1, "ratio")
        r = float(ratio) if ratio is not None else self.attrs(node).get("ratio", 0.5)
        self.layer(node, "Dropout").dropout_param.dropout_ratio = r

    def op_Softmax(self, node, skip):
        rank = len(self.shapes[node.input[0]])
        opset = max((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), default=13)
        axis = self.attrs(node).get("axis", -1 if opset >= 13 else 1) % rank
        if opset < 13 and axis != rank - 1:  # older Softmax normalises over all axes from `axis` on
            self.fail(f"Softmax {node.name!r}: opset {opset} softmax over axes {axis}.. of a rank-{rank} tensor")
        self._simple(node, "Softmax").softmax_param.axis = axis

    def op_Concat(self, node, skip):
        self.layer(node, "Concat", bottoms=list(node.input)).concat_param.axis = self.attrs(node)["axis"]

    def _eltwise(self, node, op):
        for i in node.input:
            if i in self.consts:
                self.fail(f"{node.op_type} {node.name!r}: adding a constant is only supported as a MatMul bias")
        self.layer(node, "Eltwise", bottoms=list(node.input)).eltwise_param.operation = op

    def op_Add(self, node, skip):
        self._eltwise(node, caffe_pb2.EltwiseParameter.SUM)

    def op_Sum(self, node, skip):
        self._eltwise(node, caffe_pb2.EltwiseParameter.SUM)

    def op_Max(self, node, skip):
        self._eltwise(node, caffe_pb2.EltwiseParameter.MAX)

    def op_Flatten(self, node, skip):
        axis = self.attrs(node).get("axis", 1) % max(len(self.shapes[node.input[0]]), 1)
        if axis != 1:
            self.fail(f"Flatten {node.name!r}: axis {axis} (Caffe flattens from axis 1)")
        if self.flattens_only_into_ip(node):  # Caffe's InnerProduct flattens its bottom itself
            self.alias[node.output[0]] = self.blob(node.input[0])
        else:
            self._simple(node, "Flatten")

    def op_Reshape(self, node, skip):
        src, out = self.shapes[node.input[0]], self.shapes.get(node.output[0])
        if out is None or len(out) != 2 or out[0] != src[0] or out[1] != math.prod(src[1:]):
            self.fail(f"Reshape {node.name!r}: {src} -> {out}; only flattening to (N, -1) is supported")
        if self.flattens_only_into_ip(node):
            self.alias[node.output[0]] = self.blob(node.input[0])
        else:
            self.layer(node, "Flatten")

    def op_Conv(self, node, skip):
        a = self.attrs(node)
        w, b = self.const(node, 1, "weight"), self.const(node, 2, "bias")
        if w.ndim != 4:
            self.fail(f"Conv {node.name!r}: weight of rank {w.ndim}; only 2-D convolution is supported")
        pads = self._pads(node, a, 2)
        layer = self.layer(node, "Convolution")
        p = layer.convolution_param
        p.num_output, p.group, p.bias_term = w.shape[0], a.get("group", 1), b is not None
        p.kernel_h, p.kernel_w = a.get("kernel_shape", w.shape[2:])
        p.stride_h, p.stride_w = a.get("strides", [1, 1])
        p.pad_h, p.pad_w = pads[:2]
        p.dilation.extend(a.get("dilations", [1, 1]))
        bias = [b.astype(np.float32).reshape(-1)] if b is not None else []
        self.weights[layer.name] = [w.astype(np.float32)] + bias

    def _pads(self, node, a, n):
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
            self.fail(f"{node.op_type} {node.name!r}: auto_pad {a['auto_pad']!r} is not supported; export with "
                      "explicit pads")
        return list(a.get("pads", [0] * 2 * n))

    def _pool(self, node, method, global_pooling=False):
        if len(node.output) > 1 and node.output[1]:
            self.fail(f"{node.op_type} {node.name!r}: the Indices output is not supported")
        layer = self.layer(node, "Pooling")
        p = layer.pooling_param
        p.pool = method
        if global_pooling:
            p.global_pooling = True
            return
        a = self.attrs(node)
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            self.fail(f"{node.op_type} {node.name!r}: dilated pooling is not supported")
        (kh, kw), (sh, sw) = a["kernel_shape"], a.get("strides", [1, 1])
        pads = self._pads(node, a, 2)
        if method == caffe_pb2.PoolingParameter.AVE and any(pads) and not a.get("count_include_pad", 0):
            self.fail(f"AveragePool {node.name!r}: count_include_pad=0 with padding (Caffe counts the padding)")
        in_hw, out_hw = self.shapes[node.input[0]][2:], self.shapes[node.output[0]][2:]
        # Caffe takes one pad per axis; an end pad below the begin pad is fine when Caffe's own size rule
        # (PoolingLayer::Reshape drops a last window that starts in the padding) gives the same windows.
        modes = []
        for mode, rnd in ((caffe_pb2.PoolingParameter.CEIL, math.ceil), (caffe_pb2.PoolingParameter.FLOOR, math.floor)):
            ok = True
            for size, k, s, pb, pe, o in zip(in_hw, (kh, kw), (sh, sw), pads[:2], pads[2:], out_hw):
                n = rnd((size + 2 * pb - k) / s) + 1
                if pb and (n - 1) * s >= size + pb:
                    n -= 1
                # AVE divides by the window clipped to H + pad (Caffe) or H + end pad (ONNX): the last window
                # must not reach past the end pad for those to agree.
                ok &= n == o and pe <= pb and (method == caffe_pb2.PoolingParameter.MAX or pe == pb
                                               or (n - 1) * s - pb + k <= size + pe)
            if ok:
                modes.append(mode)
        if not modes:
            self.fail(f"{node.op_type} {node.name!r}: pads {pads} and ceil_mode {a.get('ceil_mode', 0)} give a size "
                      f"{out_hw} from {in_hw} that Caffe's pooling cannot reproduce")
        p.round_mode = modes[0]  # CEIL (Caffe's default) whenever it gives the same windows
        p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w = kh, kw, sh, sw, pads[0], pads[1]

    def op_MaxPool(self, node, skip):
        self._pool(node, caffe_pb2.PoolingParameter.MAX)

    def op_AveragePool(self, node, skip):
        self._pool(node, caffe_pb2.PoolingParameter.AVE)

    def op_GlobalMaxPool(self, node, skip):
        self._pool(node, caffe_pb2.PoolingParameter.MAX, True)

    def op_GlobalAveragePool(self, node, skip):
        self._pool(node, caffe_pb2.PoolingParameter.AVE, True)

    def _ip(self, node, w, b, top):
        layer = self.layer(node, "InnerProduct", tops=[top])
        layer.inner_product_param.num_output, layer.inner_product_param.bias_term = w.shape[0], b is not None
        self.weights[layer.name] = [np.ascontiguousarray(w, np.float32)] + \
            ([np.ascontiguousarray(np.broadcast_to(b.reshape(-1), (w.shape[0],)), np.float32)] if b is not None else [])

    def op_Gemm(self, node, skip):
        a = self.attrs(node)
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            self.fail(f"Gemm {node.name!r}: transA/alpha/beta other than 0/1/1 are not supported")
        w, b = self.const(node, 1, "B"), self.const(node, 2, "C")
        w = w if a.get("transB", 0) else w.T  # Caffe's InnerProduct weight is (out, in)
        self._ip(node, w, b, node.output[0])

    def op_MatMul(self, node, skip):
        w = self.const(node, 1, "the second operand")
        if w.ndim != 2 or len(self.shapes[node.input[0]]) != 2:
            self.fail(f"MatMul {node.name!r}: only (N, K) x (K, M) with a constant (K, M) is supported")
        users, b, top = self.consumers[node.output[0]], None, node.output[0]
        if len(users) == 1 and users[0].op_type == "Add" and node.output[0] not in {o.name for o in self.g.output}:
            add = users[0]
            other = [i for i in add.input if i != node.output[0]]
            if len(other) == 1 and other[0] in self.consts and self.consts[other[0]].size in (1, w.shape[1]):
                b, top = self.consts[other[0]], add.output[0]
                skip.add(id(add))
        self._ip(node, w.T, b, top)
