"""Verify an ONNX file: the ONNX checker (with shape inference), then onnxruntime against a PyTorch
forward on one deterministic batch.

The PyTorch side is the net that was exported (``export_onnx`` passes it), or, for ``--check-only``, the
repro.Net rebuilt from the file itself (repro.onnx.importer): Caffe-numerics layers on one side,
onnxruntime's kernels on the other, sharing nothing but the weights. The difference is reported per output
as ``max |ort - torch| / max |torch|`` (the golden data's measure); the target is 1e-5.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch

from ..errors import ReproError
from .importer import OnnxImportError, deploy_net, load_model, net_from_onnx, onnx_to_caffe

TOLERANCE = 1e-5


class OnnxCheckError(ReproError):
    """The file fails the ONNX checker, onnxruntime cannot run it, or it disagrees with PyTorch."""


@dataclass
class CheckReport:
    path: str
    provider: str
    batch_shape: tuple
    max_abs: dict = field(default_factory=dict)  # output -> max |ort - torch|
    max_rel: dict = field(default_factory=dict)  # output -> max |ort - torch| / max |torch|

    @property
    def worst_rel(self) -> float:
        return max(self.max_rel.values(), default=0.0)

    def lines(self) -> list[str]:
        out = [f"{self.path}: ONNX checker ok; onnxruntime ({self.provider}) vs PyTorch on a batch {self.batch_shape}:"]
        for k in self.max_abs:
            out.append(f"  {k}: max abs diff {self.max_abs[k]:.3g}, relative {self.max_rel[k]:.3g} "
                       f"(target <= {TOLERANCE:g})")
        return out


def providers() -> list[str]:
    """onnxruntime-gpu's CUDA provider where it is installed and sees a GPU, else the CPU one."""
    import onnxruntime as ort  # here, not on top: importing it costs ~0.5 s, and only a check needs it

    have = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in have else []) + ["CPUExecutionProvider"]


def run_onnx(model, feed: dict[str, np.ndarray]):
    """Outputs of the model (a ModelProto or a file path) under onnxruntime, and the provider that ran it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # onnxruntime's shape warnings are not ours to print
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        sess = ort.InferenceSession(src, sess_options=opts, providers=providers())
        outs = sess.run(None, feed)
    except Exception as e:
        raise OnnxCheckError(f"onnxruntime cannot run the model: {type(e).__name__}: {e}") from None
    return {o.name: y for o, y in zip(sess.get_outputs(), outs)}, sess.get_providers()[0]


def check_structure(model, where: str) -> None:
    """onnx.checker on a ModelProto or a path (a path spares serialising a large model again)."""
    try:
        onnx.checker.check_model(model if isinstance(model, onnx.ModelProto) else str(model),
                                 full_check=True)  # full_check runs strict shape inference too
    except Exception as e:
        raise OnnxCheckError(f"{where}: ONNX checker: {e}") from None


def example_batch(model: onnx.ModelProto, batch_size: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform [-100, 100] floats (the scale of mean-subtracted pixels), from RandomState(seed)."""
    init = {i.name for i in model.graph.initializer}
    feed, rng = {}, np.random.RandomState(seed)
    for inp in model.graph.input:
        if inp.name in init:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        shape = [batch_size if i == 0 and d is None else d for i, d in enumerate(dims)]
        if any(d is None for d in shape):
            raise OnnxCheckError(f"input {inp.name!r} has symbolic sizes {dims} beyond the batch")
        feed[inp.name] = rng.uniform(-100, 100, size=shape).astype(np.float32)
    return feed


def torch_forward(net, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Forward a repro.Net on the feed (on the device its parameters live on) → numpy outputs."""
    params = [p for plist in net.params.values() for p in plist]
    device = params[0].device if params else torch.device("cpu")
    was_training = net.training
    net.eval()
    with torch.no_grad():
        out = net(**{k: torch.from_numpy(v).to(device) for k, v in feed.items()})
    net.train(was_training)
    return {k: v.detach().float().cpu().numpy() for k, v in out.items()}


def check_onnx(source, reference=None, *, batch_size: int = 2, seed: int = 0, tolerance: float = TOLERANCE,
               input_shape=None) -> CheckReport:
    """Check an ONNX file or ModelProto; raise OnnxCheckError unless every output agrees within ``tolerance``.

    ``reference``: a repro.Net (the net that was exported) or a callable ``feed -> {output: array}``;
    default: the repro.Net rebuilt from the file.
    """
    if batch_size < 1:
        # a forward of no images compares nothing, and "verified" would be a lie
        raise ReproError(f"batch_size must be at least 1 to verify an ONNX file (got {batch_size})")
    model, where = load_model(source)
    on_disk = not isinstance(source, onnx.ModelProto)
    try:
        check_structure(where if on_disk else model, where)
    except OnnxCheckError:
        # The checker's message names the first problem in ONNX terms; ours names every missing initializer
        # or unsupported operator at once, when that is what is wrong.
        try:
            onnx_to_caffe(model, input_shape)
        except OnnxImportError as e:
            raise OnnxCheckError(str(e)) from None
        raise
    feed = example_batch(model, batch_size, seed)
    got, provider = run_onnx(where if on_disk else model, feed)
    if reference is None:
        reference = net_from_onnx(model, input_shape=input_shape)
    elif hasattr(reference, "params") and set(getattr(reference, "inputs", feed)) != set(feed):
        # A train_val net wants labels (and runs its loss layers): compare its weights in the exported
        # deploy net instead.
        weights = {k: [p.detach().cpu().float().numpy() for p in v] for k, v in reference.params.items()}
        reference = deploy_net(model, weights, device=next(iter(reference.parameters())).device)
    is_fn = callable(reference) and not hasattr(reference, "params")
    want = reference(feed) if is_fn else torch_forward(reference, feed)
    report = CheckReport(where, provider, tuple(next(iter(feed.values())).shape))
    for name, y in got.items():
        if name not in want:
            raise OnnxCheckError(f"{where}: output {name!r} has no PyTorch counterpart (PyTorch gives {sorted(want)})")
        ref = want[name]
        if y.shape != ref.shape:
            raise OnnxCheckError(f"{where}: output {name!r}: onnxruntime shape {y.shape}, PyTorch {ref.shape}")
        diff = float(np.max(np.abs(y.astype(np.float64) - ref))) if y.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        report.max_abs[name] = diff
        report.max_rel[name] = diff / scale if scale else diff
    if report.worst_rel > tolerance or not np.isfinite(report.worst_rel):
        raise OnnxCheckError("\n".join(report.lines() + [f"{where}: onnxruntime disagrees with PyTorch beyond "
                                                          f"{tolerance:g}"]))
    return report
