"""A readable summary of an ONNX file: one row per node (op, output shape, parameters, FLOPs), totals and
the metadata. Shapes come from ONNX shape inference with the batch left symbolic; FLOPs are per sample and
count Conv/Gemm/MatMul only, as 2 x multiply-accumulates (the usual convention; ReLU, pooling and LRN are
cheap by comparison and left out).
"""
from __future__ import annotations

import math

import onnx

from .export import PROTOTXT_KEY
from .importer import OnnxImportError, load_model, metadata


def _dims(vi):
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def layer_rows(model: onnx.ModelProto) -> list[dict]:
    """One dict per node: name, op, out (shape), params (weights it reads), flops (per sample)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:
        raise OnnxImportError(f"ONNX shape inference failed: {e}") from None
    shapes = {vi.name: _dims(vi) for g in (inferred.graph,) for vi in [*g.input, *g.value_info, *g.output]}
    inits = {i.name: i for i in model.graph.initializer}
    rows = []
    for node in model.graph.node:
        weights = [inits[i] for i in node.input if i in inits]
        # Count learnable tensors only: float initializers of rank >= 1 (not a Dropout ratio or a Reshape shape).
        params = sum(math.prod(w.dims) for w in weights if w.data_type == onnx.TensorProto.FLOAT and len(w.dims) >= 1)
        out = shapes.get(node.output[0]) if node.output else None
        rows.append(dict(name=node.name or node.output[0], op=node.op_type, out=out, params=params,
                         flops=_flops(node, out, inits)))
    return rows


def _flops(node, out, inits) -> int:
    if out is None or not all(isinstance(d, int) for d in out[1:]):
        return 0
    per_sample = math.prod(out[1:])
    if node.op_type == "Conv" and node.input[1] in inits:
        w = inits[node.input[1]].dims  # (out, in/group, kh, kw): one MAC per weight per output position
        return 2 * per_sample * math.prod(w[1:])
    if node.op_type in ("Gemm", "MatMul") and node.input[1] in inits:
        w = inits[node.input[1]].dims
        return 2 * per_sample * (w[1] if node.op_type == "Gemm" and _attr(node, "transB", 0) else w[0])
    return 0


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _fmt(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


def describe(source, show_prototxt: bool = False) -> str:
    """The text ``tools/inspect_onnx.py`` prints."""
    model, where = load_model(source)
    g = model.graph
    opset = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    lines = [f"{where}", f"  graph {g.name!r}, IR {model.ir_version}, opset {opset}, producer "
             f"{model.producer_name} {model.producer_version}".rstrip()]
    init = {i.name for i in g.initializer}
    for inp in g.input:
        if inp.name not in init:
            lines.append(f"  input  {inp.name}: {_dims(inp)}")
    for out in g.output:
        lines.append(f"  output {out.name}: {_dims(out)}")
    rows = layer_rows(model)
    w = max([len(r["name"]) for r in rows] + [5])
    lines.append("")
    lines.append(f"  {'layer':<{w}}  {'op':<18} {'output shape':<22} {'params':>11} {'FLOPs':>9}")
    for r in rows:
        shape = "x".join(str(d) for d in r["out"]) if r["out"] is not None else "?"
        lines.append(f"  {r['name']:<{w}}  {r['op']:<18} {shape:<22} {r['params']:>11,} {_fmt(r['flops']):>9}")
    total_p, total_f = sum(r["params"] for r in rows), sum(r["flops"] for r in rows)
    lines.append(f"  {'total':<{w}}  {'':<18} {'':<22} {total_p:>11,} {_fmt(total_f):>9}  (FLOPs per sample)")
    meta = metadata(model)
    if meta:
        lines.append("")
        lines.append("  metadata:")
        for k, v in meta.items():
            if k == PROTOTXT_KEY and not show_prototxt:
                v = f"<{len(v.splitlines())} lines of deploy prototxt; --prototxt prints it>"
            lines.append(f"    {k}: {v}")
    return "\n".join(lines)
